"""Local pre-checks from cached series data: a coupon that cannot pass costs no upstream redeem call.

Pure: series, bill, time and store in, the local error code (or None) out.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from service.redemption.models import SeriesSummary


def local_failure(series: SeriesSummary, bill: Decimal, now: datetime, store: str | None) -> str | None:
    """The first rule of ``series`` this redemption breaks, as a local error code; None if it passes.

    Checked in the order Capillary reports them: expiry, start, window, store, bill amount.
    """
    if series.valid_till is not None and now > series.valid_till:
        return "CAMPAIGN_EXPIRED"
    if series.redemption_valid_from is not None and now < series.redemption_valid_from:
        return "COUPON_NOT_YET_VALID"
    if series.redemption_range is not None and not series.redemption_range.allows(now):
        return "OUTSIDE_REDEMPTION_WINDOW"
    if store is not None and series.stores is not None and store not in series.stores:
        return "STORE_NOT_ALLOWED"
    if series.min_bill_amount is not None and bill < series.min_bill_amount:
        return "BILL_AMOUNT_NOT_ELIGIBLE"
    if series.max_bill_amount is not None and bill > series.max_bill_amount:
        return "BILL_AMOUNT_NOT_ELIGIBLE"
    return None
