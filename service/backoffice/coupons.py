"""The back office's coupon and series use cases: issue coupons, look them up, create a series.

Pure over the :class:`~service.backoffice.ports.CouponAdmin` port: the upstream's answers come in domain words,
and what is refused is refused with a catalog entry (:class:`~service.backoffice.errors.BackOfficeError`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from service.backoffice.errors import BackOfficeError
from service.backoffice.models import BulkIssued, Coupon, Found, Lookup, Miss, SeriesDraft
from service.backoffice.ports import CouponAdmin
from service.redemption.models import CustomerRef, Failure, SeriesSummary

MAX_AMOUNT: Final = Decimal(1_000_000_000)
CENT: Final = Decimal("0.01")
#: The draft's amounts and dates, by their field name and the name the API gives them.
_AMOUNTS: Final = (
    ("discount_value", "discountValue"),
    ("discount_upto", "discountUpto"),
    ("min_bill_amount", "minBillAmount"),
    ("max_bill_amount", "maxBillAmount"),
)
_DATES: Final = (("valid_till_date", "validTillDate"), ("redemption_valid_from", "redemptionValidFrom"))


class CouponOffice:
    """Issue coupons, find them, create series: one upstream call each, after the checks the upstream leaves out."""

    def __init__(self, admin: CouponAdmin) -> None:
        self._admin = admin

    async def issue(self, series_id: int, customer: CustomerRef) -> Coupon:
        return await self._admin.issue(series_id, customer)

    async def bulk_issue(self, series_ids: Sequence[int], customer: CustomerRef, source: str | None) -> BulkIssued:
        if len(set(series_ids)) != len(series_ids):
            raise BackOfficeError.invalid("seriesIds: each series once")
        return BulkIssued(await self._admin.bulk_issue(series_ids, customer, source))

    async def find(self, lookup: Lookup) -> Found:
        """The coupons found, and a miss for each value that found none; nothing found at all is refused with the
        first miss's error."""
        details = await self._admin.details(lookup)
        misses = name_misses(details.coupons, lookup, details.failures)
        if not details.coupons and misses:
            first = misses[0]
            which = _naming(first)
            error = first.failure.error
            raise BackOfficeError(error, f"{which}: {error.message}" if which else error.message, said=first.failure)
        return Found(details.coupons, misses)

    async def create_series(self, draft: SeriesDraft) -> SeriesSummary:
        problem = series_problem(draft)
        if problem:
            raise BackOfficeError.invalid(problem)
        return await self._admin.create_series(draft)


def name_misses(found: list[Coupon], lookup: Lookup, failures: Sequence[Failure]) -> list[Miss]:
    """Which value each of the upstream's ``failures`` is about. Its errors do not say, but they come in the order
    asked (codes, then ids, then customers), one for each value that found nothing: when the values that found
    nothing are exactly as many as the errors, each error is named; otherwise none is (no guess)."""
    codes_found = {c.code for c in found if c.code}
    ids_found = {c.id for c in found if c.id is not None}
    # Coupon details name no owner (no sample shows one): an owner counts as found only where an answer says so.
    owners_found = {c.customer_id for c in found if c.customer_id}
    missing: list[dict[str, Any]] = [
        *({"coupon_code": c} for c in lookup.codes if c not in codes_found),
        *({"coupon_id": i} for i in lookup.ids if i not in ids_found),
        *({"customer_id": o} for o in lookup.customer_ids if o not in owners_found),
    ]
    if len(missing) != len(failures):
        missing = [{} for _ in failures]
    return [Miss(failure, **which) for failure, which in zip(failures, missing, strict=True)]


def _naming(miss: Miss) -> str:
    if miss.coupon_code is not None:
        return f"coupon code {miss.coupon_code}"
    if miss.coupon_id is not None:
        return f"coupon id {miss.coupon_id}"
    if miss.customer_id is not None:
        return f"customer id {miss.customer_id}"
    return ""


def series_problem(draft: SeriesDraft) -> str | None:
    """What is wrong with a series to create, beyond what its types say (None: nothing), naming the field."""
    if not draft.description.strip():
        return "description: 1 to 255 characters"
    value = draft.discount_value
    if not value.is_finite() or value <= 0:
        return "discountValue: a positive amount"
    if draft.discount_type == "PERC" and value > 100:
        return "discountValue: a percentage of at most 100"
    if value > MAX_AMOUNT:
        return f"discountValue: at most {MAX_AMOUNT}"
    for name, field in _AMOUNTS:
        amount: Decimal | None = getattr(draft, name)
        if amount is not None and (not amount.is_finite() or not 0 <= amount <= MAX_AMOUNT):
            return f"{field}: from 0 to {MAX_AMOUNT}"
        if amount is not None and amount != amount.quantize(CENT):
            return f"{field}: at most 2 decimals"
    low, high = draft.min_bill_amount, draft.max_bill_amount
    if low is not None and high is not None and low > high:
        return "minBillAmount: not more than maxBillAmount"
    for name, field in _DATES:
        text: str | None = getattr(draft, name)
        if text is not None and not _iso(text):
            return f"{field}: an ISO-8601 date-time"
    return None


def _iso(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True
