"""Domain types of a redemption: what the till asked, what the series allows, what each code got."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal

import msgspec

from service.redemption.catalog import LocalError
from service.redemption.discount import DiscountRule

IdentifierKind = Literal["mobile", "email", "externalId", "id"]
Mode = Literal["all", "partial"]


@dataclass(frozen=True, slots=True)
class CustomerRef:
    kind: IdentifierKind
    value: str


@dataclass(frozen=True, slots=True)
class RedemptionCommand:
    customer: CustomerRef
    codes: tuple[str, ...]
    bill_amount: Decimal
    transaction_number: str | None = None
    redemption_time: str | None = None
    mode: Mode = "all"
    store: str | None = None


class RedemptionRange(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    """When a series may be redeemed; ``None`` means any. Days of week: 1 = Sunday .. 7 = Saturday."""

    days_of_month: tuple[int, ...] | None = None
    days_of_week: tuple[int, ...] | None = None
    hours: tuple[int, ...] | None = None

    def allows(self, moment: datetime) -> bool:
        weekday = moment.isoweekday() % 7 + 1  # Monday=1 -> 2, Sunday=7 -> 1
        return (
            (self.days_of_month is None or moment.day in self.days_of_month)
            and (self.days_of_week is None or weekday in self.days_of_week)
            and (self.hours is None or moment.hour in self.hours)
        )


class SeriesSummary(msgspec.Struct, frozen=True, rename="camel", kw_only=True):
    """What the gateway keeps of a coupon series: enough for discounts and local pre-checks."""

    id: int
    description: str | None = None
    discount_type: str | None = None
    discount_value: Decimal | None = None
    discount_upto: Decimal | None = None
    min_bill_amount: Decimal | None = None
    max_bill_amount: Decimal | None = None
    valid_till: datetime | None = None
    redemption_valid_from: datetime | None = None
    redemption_range: RedemptionRange | None = None
    stores: tuple[str, ...] | None = None  # None: every store
    multiple_use: bool = False

    @property
    def rule(self) -> DiscountRule | None:
        return DiscountRule.parse(self.discount_type, self.discount_value, self.discount_upto)


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a code was refused: the local error, and Capillary's code and message when it came from there."""

    error: LocalError
    upstream_code: int | None = None
    upstream_message: str | None = None


@dataclass(slots=True)
class CodeOutcome:
    """One requested code's verdict. ``amount`` is the discount on this bill (after the bill-total cap)."""

    code: str
    series_id: int | None = None
    rule: DiscountRule | None = None
    amount: Decimal | None = None
    ok: bool = False
    redemption_id: int | None = None
    failure: Failure | None = None
    cap_unknown: bool = False  # a percent whose cap neither the answer nor the series could tell: no amount


@dataclass(slots=True)
class Outcome:
    """The result of a validate or redeem: every code's verdict, and the request-level failure if any."""

    codes: list[CodeOutcome]
    failure: Failure | None = None
    total_discount: Decimal = Decimal("0.00")
    ref: str | None = None
