"""The one local check: the bill amount against the series' limits. Pure: series and bill in, the local error
code (or None) out.

Capillary's ``is_redeemable`` takes no bill amount, so the series' ``minBillAmount``/``maxBillAmount`` (shown in
the series samples) are the gateway's to check before it spends a redeem call. Everything else a series
describes (expiry, start, stores, redemption window, per-user limits) Capillary evaluates itself, and its
verdict is never overruled: those fields' exact meanings are not documented.
"""

from __future__ import annotations

from decimal import Decimal

from service.redemption.models import SeriesSummary


def bill_failure(series: SeriesSummary, bill: Decimal) -> str | None:
    """``BILL_AMOUNT_NOT_ELIGIBLE`` when ``bill`` is outside the series' limits; None if it passes."""
    if series.min_bill_amount is not None and bill < series.min_bill_amount:
        return "BILL_AMOUNT_NOT_ELIGIBLE"
    if series.max_bill_amount is not None and bill > series.max_bill_amount:
        return "BILL_AMOUNT_NOT_ELIGIBLE"
    return None
