from __future__ import annotations

from decimal import Decimal as D

import pytest

from service.redemption.discount import DiscountRule, allocate, coupon_discount


@pytest.mark.parametrize(
    ("rule", "bill", "expected"),
    [
        (DiscountRule("ABS", D(100)), D("2000"), D("100.00")),
        (DiscountRule("ABS", D(100)), D("60.50"), D("60.50")),  # never more than the bill
        (DiscountRule("ABS", D("0")), D("10"), D("0.00")),
        (DiscountRule("PERC", D(15)), D("2000"), D("300.00")),
        (DiscountRule("PERC", D(15)), D("19.99"), D("3.00")),  # 2.9985 half-up
        (DiscountRule("PERC", D(10)), D("0.05"), D("0.01")),  # 0.005 half-up
        (DiscountRule("PERC", D(10)), D("0.04"), D("0.00")),
        (DiscountRule("PERC", D(20), cap=D(150)), D("2000"), D("150.00")),  # capped
        (DiscountRule("PERC", D(20), cap=D(150)), D("500"), D("100.00")),  # under the cap
        (DiscountRule("PERC", D(150)), D("80"), D("80.00")),  # more than 100 % is the whole bill
        (DiscountRule("ABS", D(10)), D("0"), D("0.00")),
    ],
)
def test_coupon_discount(rule: DiscountRule, bill: D, expected: D) -> None:
    assert coupon_discount(rule, bill) == expected
    assert str(coupon_discount(rule, bill)) == str(expected)  # always two decimals


def test_parse_ignores_what_is_not_a_rule() -> None:
    assert DiscountRule.parse("perc", D(10), D(0)) == DiscountRule("PERC", D(10), None)
    assert DiscountRule.parse("ABS", D(5), D(50)) == DiscountRule("ABS", D(5), D(50))
    assert DiscountRule.parse("FREE_ITEM", D(1)) is None
    assert DiscountRule.parse("ABS", None) is None
    assert DiscountRule.parse("ABS", D(-1)) is None


def test_total_never_exceeds_the_bill() -> None:
    assert allocate([D("60.00"), D("50.00"), D("5.00")], D("100")) == [D("60.00"), D("40.00"), D("0.00")]
    assert allocate([D("10.00"), D("20.00")], D("100")) == [D("10.00"), D("20.00")]
    assert allocate([D("10.00")], D("0")) == [D("0.00")]
