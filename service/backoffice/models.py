"""The back office's domain values: what its use cases take and answer, in the gateway's words.

Apart from Capillary's models (which build on the series draft, not the other way round) and from the API's inbound
structs. The values the API shows as they are (a coupon, a job) and the series draft it takes are named in camelCase
when encoded, so the API's structs subclass them instead of repeating their fields; a series draft keeps the
upstream's own field names, its vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Final, Literal

import msgspec

from service.backoffice.jobs import JobStatus, UploadKind
from service.backoffice.preflight import CouponRules, RedemptionRules, Report
from service.redemption.models import CustomerRef, Failure

DiscountType = Literal["ABS", "PERC"]
#: A count where -1 means "no limit".
Limit = Annotated[int, msgspec.Meta(ge=-1)]


class TargetUsers(msgspec.Struct, rename="camel", kw_only=True):
    """Who may be given the series' coupons (the upstream's ``targetUserDetails``)."""

    valid_max_user_transaction_limit: int | None = None
    valid_user_registration_start_time: int | None = None
    valid_user_registration_end_time: int | None = None


class SeriesDraft(msgspec.Struct, rename="camel", kw_only=True):
    """A coupon series to create: every field the upstream takes, named as the upstream names them (the API takes
    them so). Bounds a type can say are declared here; the rules between fields (a percentage of at most 100, a
    minimum bill not above the maximum, amounts in cents, ISO-8601 dates) are checked by
    :func:`service.backoffice.coupons.series_problem`."""

    description: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    discount_type: DiscountType
    discount_value: Decimal
    discount_code: str | None = None
    valid_till_date: str | None = None
    expiry_strategy_type: str | None = None
    expiry_strategy_value: int | None = None
    max_create: Limit | None = None
    max_redeem: Limit | None = None
    any_user: bool | None = None
    same_user_multiple_redeem: bool | None = None
    is_referral_existing_users_allowed: bool | None = None
    is_multiple_use_allowed: bool | None = None
    is_valid_with_discounted_item: bool | None = None
    sms_template: str | None = msgspec.field(default=None, name="smsTemplate")
    is_sms_disabled: bool | None = msgspec.field(default=None, name="isSMSDisabled")
    info: str | None = None
    is_multiple_vouchers_per_user_allowed: bool | None = None
    do_not_resend_existing_voucher: bool | None = None
    mutual_exclusive_series_ids: str | None = None
    max_vouchers_per_user: Limit | None = None
    min_days_between_vouchers: int | None = None
    discount_upto: Decimal | None = None
    redemption_range: str | None = None
    min_bill_amount: Decimal | None = None
    max_bill_amount: Decimal | None = None
    max_redemptions_in_series_per_user: Limit | None = None
    min_days_between_redemption: int | None = None
    redemption_valid_from: str | None = None
    redemption_valid_after_days: int | None = None
    product_info: list[Any] | None = None
    redemption_org_entity_details: list[Any] | None = None
    target_user_details: TargetUsers | None = None
    alpha_numeric: bool | None = None
    random_code_length: int | None = None
    resend_message_enabled: bool | None = None
    client_handling_type: str | None = None
    custom_property_map: dict[str, str] | None = None


class Coupon(msgspec.Struct, rename="camel", kw_only=True):
    """A coupon as the back office shows it. ``customer_id`` is its owner, when the upstream names one."""

    code: str | None
    id: int | None
    series_id: int | None
    customer_id: int | None
    description: str | None
    valid_till: str | None
    discount_type: str | None
    discount_value: Decimal | None
    discount_upto: Decimal | None
    redemption_count: int | None


class JobCounts(msgspec.Struct, kw_only=True):
    rows: int
    uploaded: int
    errors: int


class JobView(msgspec.Struct, rename="camel", kw_only=True):
    """An upload job, normalised. ``job_id`` is the gateway's id (None for a job the gateway did not upload)."""

    job_id: str | None
    kind: UploadKind
    series_id: int
    status: JobStatus
    upstream_status: str | None
    upstream_job_id: int | None
    counts: JobCounts
    file_name: str | None
    upstream_file_name: str | None
    error_file_name: str | None
    success_file_name: str | None
    created_at: datetime | None
    updated_at: datetime | None

    @classmethod
    def queued(cls, kind: UploadKind, series_id: int) -> JobView:
        """A job the upstream has said nothing of yet."""
        unsaid: dict[str, Any] = dict.fromkeys(_UNSAID)
        nothing = JobCounts(rows=0, uploaded=0, errors=0)
        return cls(kind=kind, series_id=series_id, status="queued", counts=nothing, **unsaid)


_UNSAID: Final = (
    "job_id",
    "upstream_status",
    "upstream_job_id",
    "file_name",
    "upstream_file_name",
    "error_file_name",
    "success_file_name",
    "created_at",
    "updated_at",
)


# ------------------------------------------------------------------------------------ what the upstream answers


@dataclass(frozen=True, slots=True)
class Issued:
    """One series of a bulk issue: its coupon, or why none was issued."""

    series_id: int
    coupon: Coupon | None
    failure: Failure | None


@dataclass(frozen=True, slots=True)
class Lookup:
    """What a coupon-details lookup asks for: codes, coupon ids and owners' customer ids."""

    codes: list[str]
    ids: list[int]
    customer_ids: list[int]

    @property
    def size(self) -> int:
        return len(self.codes) + len(self.ids) + len(self.customer_ids)


@dataclass(frozen=True, slots=True)
class Details:
    """The upstream's answer to a lookup: the coupons found, and one failure per value that found nothing
    (in the order asked, without saying which value)."""

    coupons: list[Coupon]
    failures: list[Failure]


@dataclass(frozen=True, slots=True)
class Uploaded:
    """The upstream's answer to an upload: the name it gave the file, and the series' jobs (as the upstream knows
    them: no gateway job id)."""

    file_name: str | None
    jobs: list[JobView]


# --------------------------------------------------------------------------------------------- use case answers


@dataclass(frozen=True, slots=True)
class BulkIssued:
    results: list[Issued]

    @property
    def issued(self) -> int:
        return sum(1 for r in self.results if r.coupon is not None)

    @property
    def first_failure(self) -> Failure | None:
        return next((r.failure for r in self.results if r.failure is not None), None)


@dataclass(frozen=True, slots=True)
class Miss:
    """One value of a lookup that found nothing: why, and which value when the answer tells."""

    failure: Failure
    coupon_code: str | None = None
    coupon_id: int | None = None
    customer_id: int | None = None


@dataclass(frozen=True, slots=True)
class Found:
    coupons: list[Coupon]
    misses: list[Miss]


@dataclass(frozen=True, slots=True)
class UploadRequest:
    """An upload's options, read: what the file holds (the rules it is checked against), whether only to check it,
    and the free text sent with a redemption upload."""

    rules: CouponRules | RedemptionRules
    dry_run: bool = False
    details: str | None = None


@dataclass(frozen=True, slots=True)
class Checked:
    """The file was checked and not sent: a dry run (``dry_run``), or a file with problems (refused)."""

    report: Report
    sha256: str
    dry_run: bool


@dataclass(frozen=True, slots=True)
class Accepted:
    """The file went upstream (``report`` set), or it had already gone within the window (``duplicate``)."""

    job: JobView
    report: Report | None
    sha256: str
    duplicate: bool


UploadOutcome = Checked | Accepted


__all__ = [
    "Accepted",
    "BulkIssued",
    "Checked",
    "Coupon",
    "CustomerRef",
    "Details",
    "Found",
    "Issued",
    "JobCounts",
    "JobView",
    "Lookup",
    "Miss",
    "SeriesDraft",
    "TargetUsers",
    "UploadOutcome",
    "UploadRequest",
    "Uploaded",
]
