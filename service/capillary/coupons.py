"""The redemption flow's upstream port, implemented over the Capillary client.

This is where Capillary's envelopes become domain verdicts: each code's status code mapped onto the local catalog,
749 kept as a sibling failure, the redemption id and series read from whichever field the cluster sends.
"""

from __future__ import annotations

from collections.abc import Sequence

from service.capillary import codes
from service.capillary.client import CapillaryClient
from service.capillary.errors import SUCCESS_CODES, CapillaryError, CapillaryUnavailable
from service.capillary.models import BulkRedeemResponse, Customer, RedeemItem, RedeemResponse
from service.capillary.resilience import retry_after_seconds
from service.idempotency.models import FoundRedemption, latest_moment
from service.redemption.catalog import CATALOG
from service.redemption.discount import DiscountRule
from service.redemption.flow import Redeemed, UpstreamFailure, Verdict
from service.redemption.models import CustomerRef, Failure, RedemptionCommand


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


def _redeemed(item: RedeemItem, entry_failure: Failure | None = None) -> Redeemed:
    rule = DiscountRule.parse(item.discount_type, item.discount_value, item.discount_upto)
    if entry_failure is None and item.succeeded:
        return Redeemed(True, redemption_id=item.capillary_redemption_id, series_id=item.series_id, rule=rule)
    failure = entry_failure or failure_of(item.status_code, item.status_message)
    return Redeemed(False, failure=failure, series_id=item.series_id, rule=rule)


UNKNOWN_OUTCOME_CODE = 748  # "Coupon service timed out": Capillary itself does not know


def _check_known(results: dict[str, Redeemed]) -> dict[str, Redeemed]:
    """A 748 on any code leaves the whole call's outcome unknown: never report it as a refusal."""
    for result in results.values():
        if result.failure is not None and result.failure.upstream_code == UNKNOWN_OUTCOME_CODE:
            raise UpstreamFailure(result.failure, maybe_applied=True)
    return results


def _single(reply: RedeemResponse) -> dict[str, Redeemed]:
    return _check_known({item.code: _redeemed(item) for item in reply.redemption if item.code})


def _bulk(reply: BulkRedeemResponse, sent: Sequence[str]) -> dict[str, Redeemed]:
    results: dict[str, Redeemed] = {}
    for position, entry in enumerate(reply.response):
        code = entry.result.code if entry.result and entry.result.code else None
        if code is None and len(reply.response) == len(sent):
            code = sent[position]  # an entry without its code: Capillary answers in request order
        if code is None:
            continue
        failure = failure_of(entry.status_code, entry.status_message) if entry.errors else None
        if entry.result is not None:
            results[code] = _redeemed(entry.result, failure)
        else:
            results[code] = Redeemed(False, failure=failure or failure_of(None, None))
    return _check_known(results)


class CapillaryCoupons:
    def __init__(self, client: CapillaryClient) -> None:
        self._client = client

    async def check(self, customer: CustomerRef, codes: Sequence[str], *, store: str | None) -> dict[str, Verdict]:
        try:
            reply = await self._client.is_redeemable(customer_of(customer), codes, store=store)
        except CapillaryError as exc:
            raise upstream_failure(exc) from exc
        verdicts = {}
        for item in reply.redemption:
            if item.is_redeemable:
                verdicts[item.code] = Verdict(True)
            else:
                code, message = item.status_code, item.status_message
                if code is None and reply.redemption_status is not None:
                    code, message = reply.redemption_status.code, reply.redemption_status.message
                verdicts[item.code] = Verdict(False, failure_of(code, message))
        return verdicts

    async def redeem(self, command: RedemptionCommand, codes: Sequence[str]) -> dict[str, Redeemed]:
        customer = customer_of(command.customer)
        bill, number = command.bill_amount, command.transaction_number or ""
        time, store = command.redemption_time, command.store
        try:
            if len(codes) == 1:
                single = await self._client.redeem(
                    customer, codes[0], bill_amount=bill, transaction_number=number, redemption_time=time, store=store
                )
                return _single(single)
            bulk = await self._client.bulk_redeem(
                customer, codes, bill_amount=bill, transaction_number=number, redemption_time=time, store=store
            )
            return _bulk(bulk, codes)
        except CapillaryError as exc:
            raise upstream_failure(exc) from exc

    async def find_redemptions(
        self, customer: CustomerRef, codes: Sequence[str], transaction_number: str
    ) -> dict[str, list[FoundRedemption]]:
        """The redemptions Capillary shows for each of ``codes`` in this transaction, with their ids and dates.

        Reads the customer's coupons with their redemptions' transaction numbers; where that lookup is refused
        outright, falls back to ``is_redeemable``: a single-use code we hold the lock on that now says
        "already used" (711/716/747) went through with us (its redemption id and date then unknown).
        """
        try:
            reply = await self._client.customer_coupons(customer_of(customer))
        except CapillaryError as exc:
            if exc.maybe_applied or (exc.http_status or 0) >= 500 or exc.http_status in (None, 429):
                raise upstream_failure(exc) from exc
            return {c: [FoundRedemption(i)] for c, i in (await self._find_by_verdicts(customer, codes)).items()}
        found: dict[str, list[FoundRedemption]] = {}
        for coupon in reply.data:
            if coupon.code is not None and coupon.code in codes:
                for redemption in coupon.redemptions:
                    if redemption.transaction_number == transaction_number:
                        latest = latest_moment(redemption.date)
                        found.setdefault(coupon.code, []).append(FoundRedemption(redemption.id or 0, latest))
        return found

    async def reactivate(self, redemption_ids: list[int]) -> None:
        """Undo redemptions; a refusal (510 unknown ids, 661 none) or an unanswered call raises UpstreamFailure."""
        try:
            reply = await self._client.reactivate(redemption_ids)
        except CapillaryError as exc:
            raise upstream_failure(exc) from exc
        if not reply.success:
            first = reply.errors[0] if reply.errors else None
            raise UpstreamFailure(failure_of(first.code if first else None, first.message if first else None))

    async def _find_by_verdicts(self, customer: CustomerRef, codes: Sequence[str]) -> dict[str, int]:
        verdicts = await self.check(customer, codes, store=None)
        used = {"COUPON_ALREADY_REDEEMED"}
        return {c: 0 for c, v in verdicts.items() if v.failure is not None and v.failure.error.code in used}
