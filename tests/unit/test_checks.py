"""The one local check (the bill against the series' limits), and proof that nothing else a series describes
overrules Capillary: a series from the documents' own sample, on its last valid day, in another store, outside the
window its ``redemptionRange`` might seem to give, passes."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from service.capillary.models import Series, decode
from service.capillary.series import summarize
from service.redemption.checks import bill_failure
from service.redemption.models import SeriesSummary
from tests.contract.samples import load_samples

OPEN = SeriesSummary(id=1, discount_type="ABS", discount_value=D(10))


@pytest.mark.parametrize(
    ("series", "bill", "expected"),
    [
        (OPEN, D(1), None),
        (SeriesSummary(id=1, min_bill_amount=D(100)), D("99.99"), "BILL_AMOUNT_NOT_ELIGIBLE"),
        (SeriesSummary(id=1, min_bill_amount=D(100)), D("100.00"), None),
        (SeriesSummary(id=1, max_bill_amount=D(500)), D("500.00"), None),
        (SeriesSummary(id=1, max_bill_amount=D(500)), D("500.01"), "BILL_AMOUNT_NOT_ELIGIBLE"),
    ],
)
def test_bill_failure(series: SeriesSummary, bill: D, expected: str | None) -> None:
    assert bill_failure(series, bill) == expected


def _documented_series() -> SeriesSummary:
    """The "Create Card Series" response sample: validTillDate 2021-05-09, a dom/dow/hours range, [-1] stores."""
    sample = next(s for s in load_samples() if s.heading == "Create Card Series" and s.role == "response")
    return summarize(decode(Series, sample.raw))


def test_the_documented_series_limits_only_the_bill() -> None:
    series = _documented_series()
    assert (series.min_bill_amount, series.max_bill_amount) == (D(100), D(20000))
    assert bill_failure(series, D(2000)) is None  # whatever the day, hour or store: Capillary decides those
    assert bill_failure(series, D(99)) == "BILL_AMOUNT_NOT_ELIGIBLE"
