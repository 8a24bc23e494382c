"""Capillary's status codes (capillary-notes.md) mapped onto the local error catalog.

Every documented code has a row; an unknown code maps to ``UPSTREAM_ERROR``, which still carries the upstream code
and message. HTTP-level failures (no code) map by kind and status.
"""

from __future__ import annotations

from typing import Final

from service.capillary.errors import (
    SUCCESS_CODES,
    TRY_LATER_STATUSES,
    CapillaryBadResponse,
    CapillaryConnectionError,
    CapillaryError,
    CapillaryTimeoutError,
)
from service.redemption.catalog import CATALOG, LocalError


def _rows(code: str, *upstream: int | range) -> dict[int, str]:
    result = {}
    for item in upstream:
        for value in item if isinstance(item, range) else (item,):
            result[value] = code
    return result


CAPILLARY_CODES: Final[dict[int, str]] = {
    **_rows("INVALID_REQUEST", 629, 718, 746, 781, 661),
    **_rows("COUPON_REVOKED", 660),
    **_rows("CUSTOMER_NOT_FOUND", 701, 8015, 816, 1011, 1012),
    **_rows("COUPON_NOT_FOUND", 702, 719, 780),
    **_rows("COUPON_NOT_ISSUED", 703, 723),
    **_rows("COUPON_VALIDATION_REQUIRED", 705, 725),
    # 726 "validation not required": never a reason the till can act on; 706 is generic in v1.1 wording and
    # "cannot redeem same voucher multiple times" elsewhere (reconciliation reads it as used; see coupons.py).
    **_rows("COUPON_NOT_REDEEMABLE", 706, 709, 726, 759),
    **_rows("SERIES_NOT_FOUND", 707, 755),
    **_rows("COUPON_NOT_FOR_CUSTOMER", 710),
    **_rows("COUPON_ALREADY_REDEEMED", 711, 716, 747),
    **_rows("CAMPAIGN_EXPIRED", 712),
    **_rows("COUPON_EXPIRED", 713),
    **_rows("REDEMPTION_LIMIT_REACHED", 714, 728),
    **_rows("UPSTREAM_MISCONFIGURED", 715, 788, 795, 799),
    **_rows("COUPON_TEST_ONLY", 720),
    **_rows("CUSTOMER_INVALID", 721),
    **_rows("COUPON_ISSUE_FAILED", 722),
    **_rows("OUTSIDE_REDEMPTION_WINDOW", 729),
    **_rows("UPSTREAM_ERROR", 730),
    **_rows("BILL_AMOUNT_NOT_ELIGIBLE", 733),
    **_rows("STORE_NOT_ALLOWED", 735),
    **_rows("CUSTOMER_LIMIT_REACHED", 736),
    **_rows("REDEMPTION_TOO_SOON", 738),
    **_rows("COUPON_NOT_YET_VALID", 739),
    **_rows("CUSTOMER_BLOCKED", 740, 742, 750),
    **_rows("UPSTREAM_TIMEOUT", 748),
    **_rows("SIBLING_COUPON_FAILED", 749),
    **_rows("SERIES_ALREADY_EXISTS", 751, 752),
    **_rows("UPSTREAM_UNAVAILABLE", range(786, 788), range(789, 795), range(796, 799)),
    **_rows("REDEMPTION_NOT_FOUND", 510),
}


def for_code(code: int | None) -> LocalError:
    """The local error for a Capillary status code (an unknown one gives ``UPSTREAM_ERROR``)."""
    if code is None or code in SUCCESS_CODES:
        return CATALOG["UPSTREAM_ERROR"]
    return CATALOG[CAPILLARY_CODES.get(code, "UPSTREAM_ERROR")]


def for_failure(error: CapillaryError) -> LocalError:
    """The local error for an upstream failure: its Capillary code first, then its kind and HTTP status."""
    if error.code is not None and error.code in CAPILLARY_CODES:
        return CATALOG[CAPILLARY_CODES[error.code]]
    if isinstance(error, CapillaryTimeoutError):
        return CATALOG["UPSTREAM_TIMEOUT"]
    if isinstance(error, CapillaryConnectionError):
        return CATALOG["UPSTREAM_UNAVAILABLE"]
    if isinstance(error, CapillaryBadResponse):  # a check's answer we cannot read: asking again may help
        return CATALOG["UPSTREAM_BAD_RESPONSE"]
    status = error.http_status or 0
    if status == 429 or status >= 500 or status in TRY_LATER_STATUSES:  # 461: "search engine busy, try later"
        return CATALOG["UPSTREAM_UNAVAILABLE"]
    if status in (401, 403):
        return CATALOG["UPSTREAM_MISCONFIGURED"]
    return CATALOG["UPSTREAM_ERROR"]
