from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest

from service.redemption.checks import local_failure
from service.redemption.models import RedemptionRange, SeriesSummary

NOW = datetime(2026, 11, 22, 10, 15, tzinfo=UTC)  # a Sunday
OPEN = SeriesSummary(id=1, discount_type="ABS", discount_value=D(10))


@pytest.mark.parametrize(
    ("series", "bill", "store", "expected"),
    [
        (OPEN, D(1), None, None),
        (SeriesSummary(id=1, valid_till=NOW - timedelta(seconds=1)), D(1), None, "CAMPAIGN_EXPIRED"),
        (SeriesSummary(id=1, valid_till=NOW + timedelta(days=1)), D(1), None, None),
        (SeriesSummary(id=1, redemption_valid_from=NOW + timedelta(hours=1)), D(1), None, "COUPON_NOT_YET_VALID"),
        (SeriesSummary(id=1, min_bill_amount=D(100)), D("99.99"), None, "BILL_AMOUNT_NOT_ELIGIBLE"),
        (SeriesSummary(id=1, min_bill_amount=D(100)), D("100.00"), None, None),
        (SeriesSummary(id=1, max_bill_amount=D(500)), D("500.01"), None, "BILL_AMOUNT_NOT_ELIGIBLE"),
        (SeriesSummary(id=1, stores=("S002",)), D(1), "S001", "STORE_NOT_ALLOWED"),
        (SeriesSummary(id=1, stores=("S002",)), D(1), "S002", None),
        (SeriesSummary(id=1, stores=("S002",)), D(1), None, None),  # store unknown: Capillary decides
        (SeriesSummary(id=1, redemption_range=RedemptionRange(hours=(9, 10))), D(1), None, None),
        (SeriesSummary(id=1, redemption_range=RedemptionRange(hours=(11,))), D(1), None, "OUTSIDE_REDEMPTION_WINDOW"),
        (SeriesSummary(id=1, redemption_range=RedemptionRange(days_of_week=(1,))), D(1), None, None),  # Sunday
        (
            SeriesSummary(id=1, redemption_range=RedemptionRange(days_of_week=(2,))),
            D(1),
            None,
            "OUTSIDE_REDEMPTION_WINDOW",
        ),
        (SeriesSummary(id=1, redemption_range=RedemptionRange(days_of_month=(22,))), D(1), None, None),
        (
            SeriesSummary(id=1, redemption_range=RedemptionRange(days_of_month=(1,))),
            D(1),
            None,
            "OUTSIDE_REDEMPTION_WINDOW",
        ),
    ],
)
def test_local_failure(series: SeriesSummary, bill: D, store: str | None, expected: str | None) -> None:
    assert local_failure(series, bill, NOW, store) == expected
