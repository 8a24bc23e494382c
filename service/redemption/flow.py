"""The redemption flow over two ports: the coupon upstream and the series lookup.

validate: one upstream check for all codes, alongside the series lookup; per-code verdicts with the discount.
redeem:   the same, then no redeem call at all when ``mode=all`` and any code fails; otherwise one redeem call
          (single or bulk) for the codes that pass. In ``partial`` mode a batch refused because of some codes is
          sent once more without them: the refusal was definitive and all-or-nothing, so nothing was applied.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Protocol

from service.redemption.catalog import CATALOG
from service.redemption.checks import local_failure
from service.redemption.discount import ZERO, DiscountRule, allocate, coupon_discount
from service.redemption.models import (
    CodeOutcome,
    CustomerRef,
    Failure,
    Outcome,
    RedemptionCommand,
    SeriesSummary,
)

SIBLING_FAILED = Failure(CATALOG["SIBLING_COUPON_FAILED"])


@dataclass(frozen=True, slots=True)
class Verdict:
    """The upstream's answer for one code at check time."""

    ok: bool
    failure: Failure | None = None


@dataclass(frozen=True, slots=True)
class Redeemed:
    """The upstream's answer for one code at redeem time."""

    ok: bool
    failure: Failure | None = None
    redemption_id: int | None = None
    series_id: int | None = None
    rule: DiscountRule | None = None


class UpstreamFailure(Exception):
    """The upstream could not give verdicts: unreachable, failing, or refusing the request as a whole."""

    def __init__(self, failure: Failure, *, maybe_applied: bool = False, retry_after: int | None = None) -> None:
        super().__init__(failure.error.code)
        self.failure = failure
        self.maybe_applied = maybe_applied
        self.retry_after = retry_after  # seconds, when the upstream said when to come back (breaker, rate budget)


class CouponUpstream(Protocol):
    async def check(self, customer: CustomerRef, codes: Sequence[str], *, store: str | None) -> dict[str, Verdict]: ...

    async def redeem(self, command: RedemptionCommand, codes: Sequence[str]) -> dict[str, Redeemed]:
        """Raises UpstreamFailure with ``maybe_applied`` when the answer never came (or said 748)."""
        ...


class SeriesLookup(Protocol):
    async def for_codes(self, codes: Sequence[str]) -> dict[str, SeriesSummary]: ...

    async def remember(self, code_series: dict[str, int]) -> None: ...


def new_ref() -> str:
    return "rdm_" + uuid.uuid4().hex


def price(outcomes: Sequence[CodeOutcome], bill: Decimal, counted: Callable[[CodeOutcome], bool]) -> Decimal:
    """Set each counted code's discount on this bill (together capped at the bill), zero for the others;
    return the total."""
    counted_codes = [o for o in outcomes if counted(o)]
    alone = [coupon_discount(o.rule, bill) if o.rule else ZERO for o in counted_codes]
    for outcome in outcomes:
        outcome.amount = ZERO if outcome.rule else None
    for outcome, amount in zip(counted_codes, allocate(alone, bill), strict=True):
        outcome.amount = amount
    return sum((o.amount or ZERO for o in counted_codes), ZERO)


def _first_failure(outcomes: Sequence[CodeOutcome]) -> Failure | None:
    """The failure to name at the top: a code's own reason before a sibling's."""
    failures = [o.failure for o in outcomes if o.failure is not None]
    own = [f for f in failures if f.error.code != "SIBLING_COUPON_FAILED"]
    return (own or failures)[0] if failures else None


class RedemptionFlow:
    def __init__(
        self,
        upstream: CouponUpstream,
        series: SeriesLookup,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._upstream = upstream
        self._series = series
        self._clock = clock

    async def _assess(self, command: RedemptionCommand) -> list[CodeOutcome]:
        """Upstream check and series lookup side by side; then each code's verdict, upstream first."""
        try:
            async with asyncio.TaskGroup() as group:
                checking = group.create_task(self._upstream.check(command.customer, command.codes, store=command.store))
                looking = group.create_task(self._series.for_codes(command.codes))
        except* UpstreamFailure as failures:
            raise failures.exceptions[0] from None
        verdicts, known = checking.result(), looking.result()
        now = self._clock()
        outcomes = []
        for code in command.codes:
            series = known.get(code)
            outcome = CodeOutcome(code, series_id=series.id if series else None, rule=series.rule if series else None)
            verdict = verdicts.get(code)
            if verdict is None:
                outcome.failure = Failure(CATALOG["UPSTREAM_ERROR"], None, "Capillary gave no verdict for this code")
            elif not verdict.ok:
                outcome.failure = verdict.failure
            elif series is not None and (local := local_failure(series, command.bill_amount, now, command.store)):
                outcome.failure = Failure(CATALOG[local])
            outcome.ok = outcome.failure is None
            outcomes.append(outcome)
        return outcomes

    @staticmethod
    def _refused(failure: Failure, command: RedemptionCommand, ref: str | None = None) -> Outcome:
        """The whole request refused for one reason (an unknown customer): every code carries it."""
        codes = [CodeOutcome(code, failure=failure) for code in command.codes]
        return Outcome(codes, failure=failure, ref=ref)

    async def validate(self, command: RedemptionCommand) -> Outcome:
        try:
            outcomes = await self._assess(command)
        except UpstreamFailure as exc:
            if exc.failure.error.retryable or exc.failure.error.http_status >= 500:
                raise
            return self._refused(exc.failure, command)
        total = price(outcomes, command.bill_amount, lambda o: o.ok)
        return Outcome(outcomes, total_discount=total)

    async def redeem(
        self, command: RedemptionCommand, *, ref: str | None = None, on_send: Callable[[], None] | None = None
    ) -> Outcome:
        """``on_send`` is called just before each upstream redeem call: from then on, a failure without an
        answer leaves the outcome unknown."""
        ref = ref or new_ref()
        try:
            outcomes = await self._assess(command)
        except UpstreamFailure as exc:
            if exc.failure.error.retryable or exc.failure.error.http_status >= 500:
                raise
            return self._refused(exc.failure, command, ref)
        by_code = {o.code: o for o in outcomes}
        passing = [o.code for o in outcomes if o.ok]
        if command.mode == "all" and len(passing) < len(outcomes):
            passing = []
        for outcome in outcomes:
            outcome.ok = False
            if outcome.failure is None and outcome.code not in passing:
                outcome.failure = SIBLING_FAILED
        learnt: dict[str, int] = {}
        for attempt in range(2):
            if not passing:
                break
            if on_send is not None:
                on_send()
            results = await self._upstream.redeem(command, passing)
            retry = []
            for code in passing:
                outcome, result = by_code[code], results.get(code)
                if result is None:
                    outcome.failure = Failure(CATALOG["UPSTREAM_ERROR"], None, "Capillary gave no result for this code")
                    continue
                if result.series_id is not None:
                    learnt[code] = result.series_id
                    outcome.series_id = outcome.series_id or result.series_id
                outcome.rule = result.rule or outcome.rule
                if result.ok:
                    outcome.ok, outcome.redemption_id, outcome.failure = True, result.redemption_id, None
                elif result.failure is not None and result.failure.error.code == "SIBLING_COUPON_FAILED":
                    outcome.failure = SIBLING_FAILED
                    retry.append(code)
                else:
                    outcome.failure = result.failure
            own_failures = any(by_code[c].failure not in (None, SIBLING_FAILED) for c in passing)
            passing = retry if command.mode == "partial" and own_failures and attempt == 0 else []
        if learnt:
            await self._series.remember(learnt)
        total = price(outcomes, command.bill_amount, lambda o: o.ok)
        failure = None if any(o.ok for o in outcomes) else _first_failure(outcomes)
        return Outcome(outcomes, failure=failure, total_discount=total, ref=ref)
