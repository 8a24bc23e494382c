"""The series API body is its own struct (``SeriesOut``), and says exactly what the summary holds."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import msgspec

from service.redemption.models import RedemptionRange, SeriesSummary
from service.web.schemas import SeriesOut, series_out

FULL = SeriesSummary(
    id=10003,
    description="10% off, up to 200",
    discount_type="PERC",
    discount_value=Decimal("10"),
    discount_upto=Decimal("200.00"),
    min_bill_amount=Decimal("500.00"),
    max_bill_amount=Decimal("100000.00"),
    valid_till=datetime(2027, 1, 31, 18, 30, tzinfo=UTC),
    redemption_valid_from=datetime(2026, 1, 1, tzinfo=UTC),
    redemption_range=RedemptionRange(days_of_week=(2, 3, 4), hours=(9, 10, 11)),
    stores=("S001", "S002"),
    multiple_use=True,
)


def test_a_full_summary_is_sent_field_for_field() -> None:
    body = series_out(FULL)
    assert isinstance(body, SeriesOut)
    assert msgspec.json.encode(body) == msgspec.json.encode(FULL)
    assert msgspec.json.decode(msgspec.json.encode(body))["redemptionRange"] == {
        "daysOfWeek": [2, 3, 4],
        "hours": [9, 10, 11],
    }


def test_a_bare_summary_says_none_for_every_limit() -> None:
    bare = SeriesSummary(id=7)
    sent = msgspec.json.decode(msgspec.json.encode(series_out(bare)))
    assert sent == msgspec.json.decode(msgspec.json.encode(bare))
    assert sent["redemptionRange"] is None
    assert sent["stores"] is None
    assert sent["multipleUse"] is False
