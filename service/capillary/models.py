"""Wire models for Capillary's coupon APIs.

Responses are tolerant: unknown fields are ignored and every field we read has a default, because Capillary adds
fields and omits others between clusters and versions. They declare only what the gateway reads. They are decoded
in msgspec's lax mode, so ``"700"`` reads as ``700`` and ``"true"`` as ``True`` (a v1.1 sample sends both).
Money is ``Decimal``: never float.

Requests are encoded with ``omit_defaults`` so optional fields we were not given are not sent.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal, NamedTuple, TypeVar

import msgspec

from service.backoffice.models import SeriesDraft, TargetUsers
from service.capillary.errors import DONE_CODES, SIBLING_FAILURE_CODE

M = TypeVar("M")

DiscountType = Literal["ABS", "PERC"]
IdentifierType = Literal["MOBILE", "EXTERNAL_ID", "EMAIL", "USER_ID", "NOT_TAGGED"]
CouponIdentifierType = Literal["COUPON_ID", "COUPON_CODE"]


class Upstream(msgspec.Struct, rename="camel", kw_only=True):
    """Base of every upstream response model."""


class Outbound(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    """Base of every request body we send."""


_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}


def decode(model: type[M], raw: bytes) -> M:
    """Decode an upstream body into ``model`` in lax mode (decoders are built once per model)."""
    decoder = _decoders.get(model)
    if decoder is None:
        decoder = _decoders[model] = msgspec.json.Decoder(model, strict=False)
    result: M = decoder.decode(raw)
    return result


# --------------------------------------------------------------------------------------------------- shared


class Status(Upstream):
    """``{status, code, message}``: Capillary's status triple, used in many places."""

    status: bool | None = None
    code: int | None = None
    message: str | None = None


class Identifier(Upstream):
    type: str | None = None
    value: str | None = None


class Profile(Upstream):
    first_name: str | None = None
    last_name: str | None = None
    identifiers: list[Identifier] = []
    user_id: int | None = None


class CustomerInfo(Upstream):
    id: int | None = None
    profiles: list[Profile] = []


class Customer(Outbound):
    """Exactly one identifier of a customer, as Capillary accepts it in bodies and query strings."""

    id: int | None = None
    mobile: str | None = None
    email: str | None = None
    external_id: str | None = None

    def __post_init__(self) -> None:
        given = [v for v in (self.id, self.mobile, self.email, self.external_id) if v not in (None, "")]
        if len(given) != 1:
            raise ValueError("a customer needs exactly one of id, mobile, email, externalId")

    def query(self) -> dict[str, str]:
        """The identifier as a query parameter (``mobile=...``)."""
        if self.id is not None:
            return {"id": str(self.id)}
        if self.mobile:
            return {"mobile": self.mobile}
        if self.email:
            return {"email": self.email}
        return {"externalId": self.external_id or ""}


class Said(NamedTuple):
    """What an answer says of one code: done or refused, with Capillary's code and message when it gave them."""

    ok: bool
    code: int | None = None
    message: str | None = None


def status_verdict(status: Status | None) -> Said | None:
    """A ``{status, code, message}`` triple as a verdict: by its numeric code (704/724 count as done: they are
    warnings), by ``status`` only when no code is given; None when it says nothing."""
    if status is None:
        return None
    if status.code is not None:
        return Said(status.code in DONE_CODES, status.code, status.message)
    if status.status is not None:
        return Said(status.status, None, status.message)
    return None


def _reason(warnings: list[Status], appended: str | None) -> tuple[int | None, str | None]:
    """Why an item already known to have failed was refused, from its warnings: the first one that is not a
    notification warning. Never a verdict by itself."""
    for warning in warnings:
        if warning.code is not None and warning.code not in DONE_CODES:
            return warning.code, warning.message or appended or None
    return None, appended or None


def refusal(verdict: Said, warnings: list[Status], appended: str | None) -> Said:
    """A refusal, its reason filled in from the item's warnings or message when the verdict named none."""
    if verdict.code is not None and verdict.code not in DONE_CODES:
        return verdict
    code, message = _reason(warnings, appended)
    return Said(False, code, message or verdict.message)


# --------------------------------------------------------------------------------------------- is_redeemable


class IsRedeemableItem(Upstream):
    code: str
    #: The verdict. Absent (never in a sample, but read defensively): the top-level status decides.
    is_redeemable: bool | None = None
    appended_error_message: str | None = None
    warnings: list[Status] = []
    number_of_redemptions_by_user: int | None = None
    redemptions_left: int | None = None
    is_absolute: bool | None = None
    #: ``details=true`` is documented to add the series' details, but no sample shows where: read when present,
    #: else the series is learnt from coupon details.
    series_id: int | None = None


class IsRedeemableResponse(Upstream):
    redemption: list[IsRedeemableItem] = []
    redemption_status: Status | None = None
    customer: CustomerInfo | None = None
    warnings: list[Any] = []

    def verdict(self, item: IsRedeemableItem) -> Said | None:
        """``isRedeemable`` first, else the top-level status; None when the answer says nothing of this code.
        A refusal's reason: the top-level code, else the item's first warning."""
        top = status_verdict(self.redemption_status)
        if item.is_redeemable is True:
            return Said(True)
        if item.is_redeemable is None and (top is None or top.ok):
            return top
        failed = top if top is not None and not top.ok else Said(False)
        own, message = _reason(item.warnings, item.appended_error_message)
        if own is not None:  # the item's own reason beats the aggregate's
            return Said(False, own, message)
        return refusal(failed, item.warnings, item.appended_error_message)

    def named_codes(self) -> list[int]:
        """Every status code the body names (for judging an error status's body)."""
        codes = [w.code for i in self.redemption for w in i.warnings if w.code is not None]
        top = self.redemption_status
        return codes + ([top.code] if top is not None and top.code is not None else [])


# ----------------------------------------------------------------------------------------------------- redeem


class RedeemCode(Outbound):
    code: str


class RedeemRequest(Outbound):
    """Body of ``/v2/coupon/redeem`` and ``/v2/coupon/bulk/redeem``.

    ``billAmount`` goes as a decimal string, as in Capillary's samples: exact, no float rounding.
    """

    bill_amount: Decimal
    transaction_number: str
    user: Customer
    redemption_request_list: list[RedeemCode]
    redemption_time: str | None = None


class ItemRedemptionStatus(Upstream):
    status_code: Status | None = None
    code: int | None = None
    success: bool | None = None
    message: str | None = None


class RedeemItem(Upstream):
    code: str | None = None
    id: int | None = None
    # Newer clusters name the redemption id explicitly; older ones only send ``id``.
    redemption_id: int | None = None
    series_code: int | str | None = None
    is_absolute: bool | None = None
    coupon_value: Decimal | None = None
    discount_type: str | None = None
    discount_value: Decimal | None = None
    discount_upto: Decimal | None = None
    discount_code: str | None = None
    appended_error_message: str | None = None
    warnings: list[Status] = []
    #: Per-item status: in the "Redeem Coupon (Single)" and bulk samples; absent from the "Redeem Coupons"
    #: sample, whose outcome is only the top-level ``redemptionStatus``.
    redemption_status: ItemRedemptionStatus | None = None

    def own_verdict(self) -> Said | None:
        """The item's own status, when it carries one: its numeric code first, then ``success``."""
        status = self.redemption_status
        if status is None:
            return None
        nested = status.status_code
        if nested is not None and nested.code is not None:
            return Said(nested.code in DONE_CODES, nested.code, nested.message or status.message)
        if status.code is not None:
            return Said(status.code in DONE_CODES, status.code, status.message)
        if status.success is not None:
            return Said(status.success, None, status.message)
        return status_verdict(nested)

    def named_codes(self) -> list[int]:
        own = self.own_verdict()
        return [w.code for w in self.warnings if w.code is not None] + (
            [own.code] if own is not None and own.code is not None else []
        )

    @property
    def discount_rule(self) -> tuple[str, Decimal, Decimal | None] | None:
        """What this redemption takes off: ``(kind, value, cap)``. From ``discountType``/``discountValue``/
        ``discountUpto`` where the cluster sends them, else from ``isAbsolute``/``couponValue`` (the "Redeem
        Coupons" sample: the coupon's value, an amount or a percent; its cap, if any, is the series')."""
        if self.discount_type is not None and self.discount_value is not None:
            return self.discount_type, self.discount_value, self.discount_upto
        if self.is_absolute is not None and self.coupon_value is not None:
            return ("ABS" if self.is_absolute else "PERC"), self.coupon_value, None
        return None

    @property
    def capillary_redemption_id(self) -> int | None:
        """The redemption's id, from whichever field this cluster sends (0 and negatives mean none)."""
        for value in (self.redemption_id, self.id):
            if value is not None and value > 0:
                return value
        return None

    @property
    def series_id(self) -> int | None:
        value = self.series_code
        if isinstance(value, int):
            return value
        return int(value) if isinstance(value, str) and value.isdigit() else None


class RedeemResponse(Upstream):
    redemption: list[RedeemItem] = []
    redemption_status: Status | None = None
    customer: CustomerInfo | None = None
    warnings: list[Any] = []

    def verdict(self, item: RedeemItem) -> Said | None:
        """The item's own status, else the top-level ``redemptionStatus`` (a top-level failure refuses every
        code without its own success); None when the body says nothing (the HTTP status decides). Warnings
        never turn a success into a failure; they may name the reason of a failure."""
        found = item.own_verdict() or status_verdict(self.redemption_status)
        if found is None or found.ok:
            return found
        return refusal(found, item.warnings, item.appended_error_message)

    def named_codes(self) -> list[int]:
        top = self.redemption_status
        codes = [c for item in self.redemption for c in item.named_codes()]
        return codes + ([top.code] if top is not None and top.code is not None else [])


class BulkRedeemEntry(Upstream):
    entity_id: int | None = None
    result: RedeemItem | None = None
    errors: list[Status] = []

    def own_verdict(self) -> Said | None:
        """``errors[0]`` (a refusal, unless its code says done), then the result's own status."""
        for error in self.errors:
            if error.code is not None and error.code not in DONE_CODES:
                return Said(False, error.code, error.message)
        if self.errors and self.errors[0].code is None:
            return Said(False, None, self.errors[0].message)
        return self.result.own_verdict() if self.result is not None else None

    def named_codes(self) -> list[int]:
        codes = [e.code for e in self.errors if e.code is not None]
        return codes + (self.result.named_codes() if self.result is not None else [])


class BulkRedeemResponse(Upstream):
    response: list[BulkRedeemEntry] = []
    total_count: int | None = None
    failure_count: int | None = None

    def verdict(self, entry: BulkRedeemEntry) -> Said | None:
        """The entry's own verdict; else, when the batch reports failures or any entry its own refusal, a sibling's
        failure (all or nothing: 749); else None (the HTTP status decides)."""
        found = entry.own_verdict()
        if found is None and (self.failure_count or self.refuses_any()):
            return Said(False, SIBLING_FAILURE_CODE, None)  # all or nothing: a sibling's refusal refused it too
        if found is None or found.ok:
            return found
        result = entry.result
        return refusal(found, result.warnings if result else [], result.appended_error_message if result else None)

    def named_codes(self) -> list[int]:
        return [c for entry in self.response for c in entry.named_codes()]

    def refuses_any(self) -> bool:
        """Whether any entry carries a refusal of its own."""
        return any((v := e.own_verdict()) is not None and not v.ok for e in self.response)


# ----------------------------------------------------------------------------------------------------- series


class Series(Upstream):
    """A coupon series (offer): the fields the gateway reads for local checks and discounts."""

    id: int
    org_id: int | None = None
    description: str | None = None
    discount_code: str | None = None
    series_code: str | int | None = None
    discount_type: str | None = None
    discount_value: Decimal | None = None
    discount_upto: Decimal | None = None
    discount_on: str | None = None
    min_bill_amount: Decimal | None = None
    max_bill_amount: Decimal | None = None
    valid_till_date: str | None = None
    redemption_valid_from: str | None = None
    redemption_valid_after_days: int | None = None
    redemption_range: str | None = None
    redeem_at_store: str | None = None
    store_ids_json: str | None = None
    max_redeem: int | None = None
    max_create: int | None = None
    is_multiple_use_allowed: bool | None = None
    same_user_multiple_redeem: bool | None = None
    any_user: bool | None = None
    max_redemptions_in_series_per_user: int | None = None
    min_days_between_redemption: int | None = None
    expiry_strategy_type: str | None = None
    expiry_strategy_value: int | None = None
    fixed_expiry_date: int | None = None
    num_issued: int | None = None
    num_redeemed: int | None = None
    warnings: list[Any] = []


class SeriesListResponse(Upstream):
    entity: list[Series] = []
    warnings: list[Status] = []


class TargetUserDetails(TargetUsers, omit_defaults=True):
    """``targetUserDetails`` as sent: the draft's, without the fields not given."""


class SeriesSpec(SeriesDraft, omit_defaults=True):
    """The fields of ``CouponSeriesV2`` when creating a series (all of the documented sample): the back office's
    draft, by the same names, sent without the fields not given."""

    target_user_details: TargetUserDetails | None = None


class CreateSeriesRequest(Outbound):
    series: SeriesSpec = msgspec.field(name="CouponSeriesV2")


# ------------------------------------------------------------------------------------------- issue / details


class IssueRequest(Outbound):
    series_id: int
    customer: Customer


class BulkIssueRequest(Outbound):
    series_ids: list[int]
    customer: Customer


class Coupon(Upstream):
    """An issued coupon, as returned by issue, bulk issue and coupon details."""

    code: str | None = None
    id: int | None = None
    series_id: int | None = None
    description: str | None = None
    discount_code: str | None = None
    valid_till: str | None = None
    discount_type: str | None = None
    discount_value: Decimal | None = None
    discount_upto: Decimal | None = None
    discount_on: str | None = None
    detailed_info: str | None = None
    redemption_count: int | None = None
    #: The owner, as issue answers show it; coupon details show none (the owner is then unknown).
    customer: CustomerInfo | None = None
    warnings: list[Any] = []


class BulkIssueEntry(Upstream):
    entity_id: int | None = None
    result: Coupon | None = None
    errors: list[Status] = []
    warnings: list[Any] = []


class BulkIssueResponse(Upstream):
    response: list[BulkIssueEntry] = []
    total_count: int | None = None
    failure_count: int | None = None


class CouponDetailsResponse(Upstream):
    data: list[Coupon] = []
    warnings: list[Any] = []
    errors: list[Status] = []


class CouponRedemption(Upstream):
    id: int | None = None
    date: str | None = None
    transaction_number: str | None = None
    redeemed_at: Any = None


class CustomerCoupon(Coupon):
    """A customer's coupon with its redemptions (``/v2/customers/coupons``): how reconciliation finds a
    transaction's redemption. The same coupon entity coupon details return, with its redemption history."""

    redemptions: list[CouponRedemption] = []


class CustomerCouponsResponse(Upstream):
    data: list[CustomerCoupon] = []
    warnings: list[Any] = []
    errors: list[Status] = []


# ------------------------------------------------------------------------------------------------ reactivate


class ReactivateRequest(Outbound):
    redemption_ids: list[int]


class ReactivateResponse(Upstream):
    success: bool = False
    warnings: list[Any] = []
    errors: list[Status] = []


# ----------------------------------------------------------------------------------------------------- oauth


class TokenRequest(Outbound):
    key: str
    secret: str


class TokenData(Upstream):
    access_token: str
    ttl_seconds: int


class TokenResponse(Upstream):
    data: TokenData | None = None
    errors: list[Status] | None = None


# ---------------------------------------------------------------------------------------------- v1 uploads


class UploadJob(Upstream):
    """One upload job. Coupon uploads report ``uploadStatus``; redeemed-coupon uploads
    ``uploadRedeemedCouponStatus``; ``status`` gives whichever is present."""

    job_id: int
    upload_status: str | None = None
    upload_redeemed_coupon_status: str | None = None
    created_on: str | int | None = None
    updated_on: str | int | None = None
    error_file_url: str | None = None
    success_file_url: str | None = None
    uploaded_file_url: str | None = None
    uploaded_file_name: str | None = None
    total_uploaded_count: int | None = None
    actual_row_count: int | None = None
    error_count: int | None = None

    @property
    def status(self) -> str | None:
        return self.upload_status or self.upload_redeemed_coupon_status


class UploadResult(Upstream):
    org_id: int | None = None
    coupon_series_id: int | None = None
    upload_job_statuses: list[UploadJob] = []
    redeem_upload_job_statuses: list[UploadJob] = []
    file_name: str | None = None

    @property
    def jobs(self) -> list[UploadJob]:
        return self.upload_job_statuses or self.redeem_upload_job_statuses


class UploadResponse(Upstream):
    success: bool = False
    status: int | None = None
    result: UploadResult | None = None
