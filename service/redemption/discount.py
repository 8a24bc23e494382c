"""What a coupon takes off a bill. Pure ``Decimal`` arithmetic, rounded to cents half-up.

- ``ABS``: its value, never more than the bill.
- ``PERC``: value % of the bill, capped by ``discountUpto`` when that is above zero.
- Several coupons on one bill: each in turn, and together never more than the bill.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

CENT = Decimal("0.01")
ZERO = Decimal("0.00")
HUNDRED = Decimal(100)

DiscountKind = Literal["ABS", "PERC"]


@dataclass(frozen=True, slots=True)
class DiscountRule:
    kind: DiscountKind
    value: Decimal
    cap: Decimal | None = None  # discountUpto; None or <= 0 means no cap

    @classmethod
    def parse(cls, kind: str | None, value: Decimal | None, cap: Decimal | None = None) -> DiscountRule | None:
        """A rule from upstream fields, or None when they do not describe one."""
        kind = (kind or "").upper()
        if kind not in ("ABS", "PERC") or value is None or value < 0:
            return None
        return cls("ABS" if kind == "ABS" else "PERC", plain(value), cap if cap is not None and cap > 0 else None)


def plain(value: Decimal) -> Decimal:
    """One spelling per value, whichever JSON number type the upstream used: ``15.0`` and ``15`` are ``15``,
    ``10.50`` is ``10.5``."""
    if value == value.to_integral_value():
        return value.quantize(Decimal(1))
    return value.normalize()


def cents(amount: Decimal) -> Decimal:
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def coupon_discount(rule: DiscountRule, bill: Decimal) -> Decimal:
    """The discount one coupon gives on ``bill`` on its own."""
    if bill <= 0:
        return ZERO
    if rule.kind == "ABS":
        amount = rule.value
    else:
        amount = bill * min(rule.value, HUNDRED) / HUNDRED
        if rule.cap is not None:
            amount = min(amount, rule.cap)
    return cents(min(amount, bill))


def allocate(amounts: Sequence[Decimal], bill: Decimal) -> list[Decimal]:
    """Each coupon's discount in order, trimmed so the total never exceeds the bill."""
    left = max(cents(bill), ZERO)
    result = []
    for amount in amounts:
        taken = min(amount, left)
        result.append(taken)
        left -= taken
    return result
