"""The POS API's wire models: inbound bodies (strict: unknown fields refused) and outbound answers.

Inbound checks that msgspec cannot express are made in :func:`command_from`, each naming the offending field.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

import msgspec

from service.redemption.models import CustomerRef, IdentifierKind, RedemptionCommand, SeriesSummary
from service.web.errors import ErrorDetail

MAX_CODES = 50
MAX_BILL = Decimal("1000000000")

Code = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
TransactionNumber = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class InvalidRequest(ValueError):
    """A client mistake, named by its field: answered 400 ``INVALID_REQUEST``."""


class Inbound(msgspec.Struct, forbid_unknown_fields=True, rename="camel", kw_only=True):
    pass


class CustomerIn(Inbound):
    mobile: str | None = None
    email: str | None = None
    external_id: str | None = None
    id: int | None = None


class ValidateIn(Inbound):
    customer: CustomerIn
    codes: list[str]
    bill_amount: Decimal
    transaction_number: TransactionNumber | None = None


class RedeemIn(Inbound):
    customer: CustomerIn
    codes: list[str]
    bill_amount: Decimal
    transaction_number: TransactionNumber
    redemption_time: str | None = None
    mode: Literal["all", "partial"] = "all"


_MOBILE = re.compile(r"^\+?[0-9]{6,16}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_CODE = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII without spaces


def _customer(customer: CustomerIn) -> CustomerRef:
    candidates: tuple[tuple[IdentifierKind, str | int | None], ...] = (
        ("mobile", customer.mobile),
        ("email", customer.email),
        ("externalId", customer.external_id),
        ("id", customer.id),
    )
    given = [(kind, str(value).strip()) for kind, value in candidates if value is not None and str(value).strip()]
    if len(given) != 1:
        raise InvalidRequest("customer: give exactly one of mobile, email, externalId, id")
    kind, value = given[0]
    if kind == "mobile" and not _MOBILE.match(value):
        raise InvalidRequest("customer.mobile: 6 to 16 digits, country code first (e.g. 919900000001)")
    if kind == "email" and (len(value) > 254 or not _EMAIL.match(value)):
        raise InvalidRequest("customer.email: not an email address")
    if kind == "externalId" and len(value) > 128:
        raise InvalidRequest("customer.externalId: at most 128 characters")
    if kind == "id" and int(value) <= 0:
        raise InvalidRequest("customer.id: a positive number")
    return CustomerRef(kind, value.lstrip("+") if kind == "mobile" else value)


def _codes(codes: list[str]) -> tuple[str, ...]:
    if not 1 <= len(codes) <= MAX_CODES:
        raise InvalidRequest(f"codes: between 1 and {MAX_CODES} coupon codes, got {len(codes)}")
    seen: set[str] = set()
    for index, raw in enumerate(codes):
        code = raw.strip()
        if not code or len(code) > 64 or not _CODE.match(code) or "," in code:
            raise InvalidRequest(f"codes[{index}]: 1 to 64 printable characters, no spaces or commas")
        if code in seen:
            raise InvalidRequest(f"codes[{index}]: {code!r} is given twice")
        seen.add(code)
    return tuple(c.strip() for c in codes)


def _amount(amount: Decimal) -> Decimal:
    if not amount.is_finite() or amount < 0 or amount > MAX_BILL:
        raise InvalidRequest(f"billAmount: a number from 0 to {MAX_BILL}")
    if amount != amount.quantize(Decimal("0.01")):
        raise InvalidRequest("billAmount: at most 2 decimals")
    return amount.quantize(Decimal("0.01"))


def _time(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        datetime.strptime(value, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        raise InvalidRequest("redemptionTime: YYYY-MM-DD HH:MM:SS") from None
    return value


def _transaction_number(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not value or not value.isprintable():
        raise InvalidRequest("transactionNumber: 1 to 64 printable characters")
    return value


def command_from(body: ValidateIn | RedeemIn, store: str | None = None) -> RedemptionCommand:
    command = RedemptionCommand(
        customer=_customer(body.customer),
        codes=_codes(body.codes),
        bill_amount=_amount(body.bill_amount),
        transaction_number=_transaction_number(body.transaction_number),
        store=store,
    )
    if isinstance(body, RedeemIn):
        return dataclasses.replace(command, redemption_time=_time(body.redemption_time), mode=body.mode)
    return command


# ------------------------------------------------------------------------------------------------ outbound


class Outbound(msgspec.Struct, rename="camel", kw_only=True):
    pass


class DiscountOut(Outbound):
    type: str
    value: Decimal
    amount: Decimal | None


class ValidatedCoupon(Outbound):
    code: str
    series_id: int | None
    discount: DiscountOut | None
    redeemable: bool
    error: ErrorDetail | None


class RedeemedCoupon(Outbound):
    code: str
    series_id: int | None
    discount: DiscountOut | None
    redeemed: bool
    redemption_id: int | None
    error: ErrorDetail | None


class ValidateOut(Outbound):
    coupons: list[ValidatedCoupon]
    total_discount: Decimal
    error: ErrorDetail | None = None


RedeemStatus = Literal["redeemed", "partially_redeemed", "rejected", "pending", "failed", "reversed"]


class RedeemOut(Outbound):
    ref: str
    status: RedeemStatus
    transaction_number: str
    coupons: list[RedeemedCoupon]
    total_discount: Decimal
    error: ErrorDetail | None = None


class ReversedCoupon(Outbound):
    code: str
    redemption_id: int | None
    reversed: bool


class ReversalOut(Outbound):
    ref: str
    status: Literal["reversed"]
    coupons: list[ReversedCoupon]


class RedemptionRangeOut(Outbound, omit_defaults=True):
    """When a series may be redeemed (days of month, days of week 1 = Sunday .. 7 = Saturday, hours)."""

    days_of_month: tuple[int, ...] | None = None
    days_of_week: tuple[int, ...] | None = None
    hours: tuple[int, ...] | None = None


class SeriesOut(Outbound):
    """``GET /v1/series/{seriesId}``: what the gateway knows of a series (None: no limit)."""

    id: int
    description: str | None
    discount_type: str | None
    discount_value: Decimal | None
    discount_upto: Decimal | None
    min_bill_amount: Decimal | None
    max_bill_amount: Decimal | None
    valid_till: datetime | None
    redemption_valid_from: datetime | None
    redemption_range: RedemptionRangeOut | None
    stores: tuple[str, ...] | None  # None: every store
    multiple_use: bool


def series_out(summary: SeriesSummary) -> SeriesOut:
    """The API's body for a series: the summary's fields, field for field (a field the summary gains and the body
    does not declare fails here, not silently on the wire)."""
    fields = msgspec.structs.asdict(summary)
    window = summary.redemption_range
    fields["redemption_range"] = None if window is None else RedemptionRangeOut(**msgspec.structs.asdict(window))
    return SeriesOut(**fields)
