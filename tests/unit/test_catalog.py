"""The status-code table, row by row, and its completeness against capillary-notes.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.capillary.codes import CAPILLARY_CODES, for_code, for_failure
from service.capillary.errors import (
    SUCCESS_CODES,
    WARNING_CODES,
    CapillaryBadResponse,
    CapillaryConnectionError,
    CapillaryError,
    CapillaryHTTPError,
    CapillaryTimeoutError,
)
from service.redemption.catalog import CATALOG

#: capillary-notes.md (the design notes on Capillary beyond its documents), vendored beside the documents.
NOTES = Path(__file__).resolve().parents[1] / "fixtures" / "capillary-notes.md"


def _documented_codes() -> set[int]:
    """Every code in the status-code table of capillary-notes.md (rows like ``| 703, 723 |`` or ``786-787``)."""
    text = NOTES.read_text()
    table = text[text.index("## Coupon status codes") :]
    codes: set[int] = set()
    for line in table.splitlines():
        cell = line.split("|")[1] if line.startswith("|") else ""
        for part in re.split(r"[,/]", cell):
            bounds = [int(n) for n in re.findall(r"\d+", part)]
            if len(bounds) == 2 and "-" in part:
                codes.update(range(bounds[0], bounds[1] + 1))
            else:
                codes.update(bounds)
    # codes named in prose: customer-not-found kin
    codes.update(int(n) for n in re.findall(r"also (\d+), (\d+), (\d+), (\d+)", text)[0])
    return codes


def test_every_documented_code_has_a_row() -> None:
    documented = _documented_codes()
    assert len(documented) > 60
    unmapped = documented - set(CAPILLARY_CODES) - SUCCESS_CODES - WARNING_CODES
    assert not unmapped


def test_every_row_names_a_catalog_entry() -> None:
    assert set(CAPILLARY_CODES.values()) <= set(CATALOG)


@pytest.mark.parametrize(
    ("codes", "local"),
    [
        ((713,), "COUPON_EXPIRED"),
        ((711, 716, 747), "COUPON_ALREADY_REDEEMED"),
        ((702, 719, 780), "COUPON_NOT_FOUND"),
        ((701, 8015, 816, 1011, 1012), "CUSTOMER_NOT_FOUND"),
        ((733,), "BILL_AMOUNT_NOT_ELIGIBLE"),
        ((629, 718, 781), "INVALID_REQUEST"),
        ((703, 723), "COUPON_NOT_ISSUED"),
        ((710,), "COUPON_NOT_FOR_CUSTOMER"),
        ((712,), "CAMPAIGN_EXPIRED"),
        ((728, 714), "REDEMPTION_LIMIT_REACHED"),
        ((729,), "OUTSIDE_REDEMPTION_WINDOW"),
        ((735,), "STORE_NOT_ALLOWED"),
        ((736,), "CUSTOMER_LIMIT_REACHED"),
        ((739,), "COUPON_NOT_YET_VALID"),
        ((748,), "UPSTREAM_TIMEOUT"),
        ((749,), "SIBLING_COUPON_FAILED"),
        ((786, 787, 789, 794, 796, 798), "UPSTREAM_UNAVAILABLE"),
        ((788, 795, 799, 715), "UPSTREAM_MISCONFIGURED"),
        ((751, 752), "SERIES_ALREADY_EXISTS"),
        ((707, 755), "SERIES_NOT_FOUND"),
        ((510,), "REDEMPTION_NOT_FOUND"),
        ((99999, 730), "UPSTREAM_ERROR"),
        ((706, 726, 709, 759), "COUPON_NOT_REDEEMABLE"),
        ((705, 725), "COUPON_VALIDATION_REQUIRED"),
    ],
)
def test_codes_map_to_local_errors(codes: tuple[int, ...], local: str) -> None:
    for code in codes:
        assert for_code(code).code == local, code


@pytest.mark.parametrize(
    ("error", "local", "status", "retryable"),
    [
        (CapillaryTimeoutError("redeem", "t", maybe_applied=True), "UPSTREAM_TIMEOUT", 504, True),
        (CapillaryConnectionError("redeem", "c"), "UPSTREAM_UNAVAILABLE", 503, True),
        (CapillaryHTTPError("redeem", "h", http_status=503), "UPSTREAM_UNAVAILABLE", 503, True),
        (CapillaryHTTPError("redeem", "h", http_status=429), "UPSTREAM_UNAVAILABLE", 503, True),
        (CapillaryHTTPError("redeem", "h", http_status=400, code=701), "CUSTOMER_NOT_FOUND", 404, False),
        (CapillaryHTTPError("redeem", "h", http_status=500, code=790), "UPSTREAM_UNAVAILABLE", 503, True),
        (CapillaryHTTPError("redeem", "h", http_status=400), "UPSTREAM_ERROR", 502, False),
        (CapillaryHTTPError("redeem", "h", http_status=403), "UPSTREAM_MISCONFIGURED", 502, False),
        (CapillaryBadResponse("redeem", "b", http_status=200), "UPSTREAM_BAD_RESPONSE", 502, True),
        (CapillaryHTTPError("redeem", "h", http_status=461), "UPSTREAM_UNAVAILABLE", 503, True),
        (CapillaryHTTPError("redeem", "h", http_status=521), "UPSTREAM_UNAVAILABLE", 503, True),
    ],
)
def test_failures_map_by_code_then_kind(error: CapillaryError, local: str, status: int, retryable: bool) -> None:
    mapped = for_failure(error)
    assert (mapped.code, mapped.http_status, mapped.retryable) == (local, status, retryable)


def test_no_upstream_failure_is_a_bare_500() -> None:
    assert all(e.http_status != 500 for e in CATALOG.values() if e.code.startswith("UPSTREAM"))
