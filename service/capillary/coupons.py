"""The redemption flow's upstream port, implemented over the Capillary client.

This is where Capillary's envelopes become domain verdicts: each code's status code mapped onto the local catalog,
749 kept as a sibling failure, the redemption id and series read from whichever field the cluster sends.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from service.capillary import codes
from service.capillary.client import CapillaryClient, Limits
from service.capillary.errors import (
    SUCCESS_CODES,
    UNKNOWN_OUTCOME_CODE,
    WARNING_CODES,
    CapillaryError,
    CapillaryUnavailable,
)
from service.capillary.models import BulkRedeemResponse, Customer, RedeemItem, RedeemResponse, Said
from service.capillary.resilience import Priority, retry_after_seconds
from service.idempotency.models import FoundRedemption, latest_moment
from service.redemption.catalog import CATALOG
from service.redemption.discount import DiscountRule
from service.redemption.flow import AMBIENT, CallLimits, Redeemed, UpstreamFailure, Verdict
from service.redemption.models import CustomerRef, Failure, RedemptionCommand

log = structlog.get_logger("service.capillary")

# "Already used" in the words of each cluster: 711, 716, 747, and 706 ("cannot redeem the same voucher multiple
# times"). Reconciliation reads them as "our redeem went through" for a single-use code we hold the lock on.
USED_CODES = frozenset({706, 711, 716, 747})


def customer_of(ref: CustomerRef) -> Customer:
    if ref.kind == "id":
        return Customer(id=int(ref.value))
    if ref.kind == "mobile":
        return Customer(mobile=ref.value)
    if ref.kind == "email":
        return Customer(email=ref.value)
    return Customer(external_id=ref.value)


def failure_of(code: int | None, message: str | None) -> Failure:
    local = codes.for_code(code)
    if code is None or code in SUCCESS_CODES:  # refused without saying why
        local = CATALOG["COUPON_NOT_REDEEMABLE"]
    return Failure(local, code, message)


def upstream_failure(error: CapillaryError) -> UpstreamFailure:
    failure = Failure(codes.for_failure(error), error.code, error.upstream_message)
    retry_after = retry_after_seconds(error.retry_after) if isinstance(error, CapillaryUnavailable) else None
    return UpstreamFailure(failure, maybe_applied=error.maybe_applied, retry_after=retry_after)


def priority_of(limits: CallLimits) -> Priority | None:
    """A redeem's work goes first when the budget runs short; other work keeps each operation's own priority."""
    return Priority.REDEEM if limits.urgent else None


def client_limits(limits: CallLimits) -> Limits:
    """The client's keyword arguments for work under ``limits`` (``None``: the client's ambient deadline)."""
    return {"deadline": limits.deadline, "priority": priority_of(limits)}


def _rule(item: RedeemItem | None) -> tuple[DiscountRule | None, bool]:
    """The discount an answer states for an item, and whether it stated the cap too."""
    stated = item.discount_rule if item is not None else None
    if stated is None:
        return None, True
    kind, value, cap = stated
    return DiscountRule.parse(kind, value, cap), cap is not None or kind.upper() != "PERC"


def _redeemed(item: RedeemItem | None, verdict: Said | None) -> Redeemed:
    """One code's result. No verdict anywhere in the body: the HTTP status decides, and the client returns a
    body without verdicts only for a 2xx: done."""
    rule, cap_stated = _rule(item)
    series_id = item.series_id if item is not None else None
    if verdict is None or verdict.ok:
        redemption_id = item.capillary_redemption_id if item is not None else None
        return Redeemed(True, redemption_id=redemption_id, series_id=series_id, rule=rule, cap_stated=cap_stated)
    failure = failure_of(verdict.code, verdict.message)
    return Redeemed(False, failure=failure, series_id=series_id, rule=rule, cap_stated=cap_stated)


def _warned(item: RedeemItem | None, verdict: Said | None, counts: dict[str, int]) -> None:
    """Count and log the warnings on a code that went through (never a refusal)."""
    if item is None or not item.warnings or (verdict is not None and not verdict.ok):
        return
    for warning in item.warnings:
        if warning.code is not None:
            label = str(warning.code) if warning.code in WARNING_CODES else "other"
            counts[label] = counts.get(label, 0) + 1
            log.info("redeemed with a warning", code=item.code, warning=warning.code, message=warning.message)


def _check_known(results: dict[str, Redeemed]) -> dict[str, Redeemed]:
    """A 748 on any code leaves the whole call's outcome unknown: never report it as a refusal."""
    for result in results.values():
        if result.failure is not None and result.failure.upstream_code == UNKNOWN_OUTCOME_CODE:
            raise UpstreamFailure(result.failure, maybe_applied=True)
    return results


def _single(reply: RedeemResponse, warnings: dict[str, int]) -> dict[str, Redeemed]:
    results = {}
    for item in reply.redemption:
        if item.code:
            verdict = reply.verdict(item)
            _warned(item, verdict, warnings)
            results[item.code] = _redeemed(item, verdict)
    return _check_known(results)


def _bulk(reply: BulkRedeemResponse, sent: Sequence[str], warnings: dict[str, int]) -> dict[str, Redeemed]:
    results: dict[str, Redeemed] = {}
    for position, entry in enumerate(reply.response):
        code = entry.result.code if entry.result and entry.result.code else None
        if code is None and len(reply.response) == len(sent):
            code = sent[position]  # an entry without its code: Capillary answers in request order
        if code is None:
            continue
        verdict = reply.verdict(entry)
        _warned(entry.result, verdict, warnings)
        results[code] = _redeemed(entry.result, verdict)
    return _check_known(results)


class CapillaryCoupons:
    def __init__(self, client: CapillaryClient) -> None:
        self._client = client
        #: Warnings on redemptions that went through (704/724: the customer was not notified), by code: counted
        #: and logged, never a refusal.
        self.warnings: dict[str, int] = {}

    async def check(
        self, customer: CustomerRef, codes: Sequence[str], *, store: str | None, limits: CallLimits = AMBIENT
    ) -> dict[str, Verdict]:
        """``is_redeemable`` with ``details=true`` (the series' details, where the answer carries them). A code
        the answer gives no verdict for, when it names none at all, makes the answer unusable: a 502 the till
        may retry (``UPSTREAM_BAD_RESPONSE``)."""
        try:
            reply = await self._client.is_redeemable(
                customer_of(customer), codes, details=True, store=store, **client_limits(limits)
            )
        except CapillaryError as exc:
            raise upstream_failure(exc) from exc
        verdicts = {}
        for item in reply.redemption:
            verdict = reply.verdict(item)
            if verdict is None:
                failure = Failure(CATALOG["UPSTREAM_BAD_RESPONSE"], None, "Capillary's check gave no verdict")
                raise UpstreamFailure(failure)
            if verdict.ok:
                verdicts[item.code] = Verdict(True, series_id=item.series_id)
            else:
                failure = failure_of(verdict.code, verdict.message)
                verdicts[item.code] = Verdict(False, failure, series_id=item.series_id)
        return verdicts

    async def redeem(
        self, command: RedemptionCommand, codes: Sequence[str], *, limits: CallLimits = AMBIENT
    ) -> dict[str, Redeemed]:
        buyer = customer_of(command.customer)
        bill, txn = command.bill_amount, command.transaction_number or ""
        at, store, bound = command.redemption_time, command.store, client_limits(limits)
        try:
            if len(codes) == 1:
                single = await self._client.redeem(
                    buyer, codes[0], bill_amount=bill, transaction_number=txn, redemption_time=at, store=store, **bound
                )
                return _single(single, self.warnings)
            bulk = await self._client.bulk_redeem(
                buyer, codes, bill_amount=bill, transaction_number=txn, redemption_time=at, store=store, **bound
            )
            return _bulk(bulk, codes, self.warnings)
        except CapillaryError as exc:
            raise upstream_failure(exc) from exc

    async def find_redemptions(
        self, customer: CustomerRef, codes: Sequence[str], transaction_number: str, *, limits: CallLimits = AMBIENT
    ) -> dict[str, list[FoundRedemption]]:
        """The redemptions Capillary shows for each of ``codes`` in this transaction, with their ids and dates.

        Reads the customer's coupons with their redemptions' transaction numbers; where that lookup is refused
        outright, falls back to ``is_redeemable``: a single-use code we hold the lock on that now says
        "already used" (711/716/747) went through with us (its redemption id and date then unknown).
        """
        try:
            reply = await self._client.customer_coupons(customer_of(customer), **client_limits(limits))
        except CapillaryError as exc:
            if exc.maybe_applied or (exc.http_status or 0) >= 500 or exc.http_status in (None, 429):
                raise upstream_failure(exc) from exc
            found_ids = await self._find_by_verdicts(customer, codes, limits)
            return {c: [FoundRedemption(i)] for c, i in found_ids.items()}
        found: dict[str, list[FoundRedemption]] = {}
        for coupon in reply.data:
            if coupon.code is not None and coupon.code in codes:
                for redemption in coupon.redemptions:
                    if redemption.transaction_number == transaction_number:
                        latest = latest_moment(redemption.date)
                        found.setdefault(coupon.code, []).append(FoundRedemption(redemption.id or 0, latest))
        return found

    async def reactivate(self, redemption_ids: list[int], *, limits: CallLimits = AMBIENT) -> None:
        """Undo redemptions; a refusal (510 unknown ids, 661 none) or an unanswered call raises UpstreamFailure."""
        try:
            reply = await self._client.reactivate(redemption_ids, **client_limits(limits))
        except CapillaryError as exc:
            raise upstream_failure(exc) from exc
        if not reply.success:
            first = reply.errors[0] if reply.errors else None
            raise UpstreamFailure(failure_of(first.code if first else None, first.message if first else None))

    async def _find_by_verdicts(
        self, customer: CustomerRef, codes: Sequence[str], limits: CallLimits
    ) -> dict[str, int]:
        verdicts = await self.check(customer, codes, store=None, limits=limits)
        return {c: 0 for c, v in verdicts.items() if v.failure is not None and v.failure.upstream_code in USED_CODES}
