"""The redemption flow over two ports: the coupon upstream and the series lookup.

Capillary decides; the gateway adds only what Capillary cannot know. ``is_redeemable`` takes no bill amount, so the
bill against the series' limits and the discount preview are the gateway's; every other verdict is Capillary's.

validate: one upstream check for all codes (``details=true``) and, beside it, the series of the codes: from the
          cache, else one batched coupon-details call for all the codes not known. Once the check is seen to name
          each code's series itself, the lookup waits for it and asks only about passing codes it did not name.
          Per-code verdicts with the discount on this bill.
redeem:   the same check, with only the series already known (no lookup that costs an upstream call before the
          redeem: Capillary checks the bill itself at redeem); no redeem call at all when ``mode=all`` and any code
          fails; otherwise one redeem call (single or bulk) for the codes that pass. The answer names each code's
          series and discount, so two upstream calls in all once a series' summary is cached. In ``partial`` mode
          a batch refused because of some codes is sent once more without them: the refusal was definitive and
          all-or-nothing, so nothing was applied.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, Final, Protocol

from service.redemption.catalog import CATALOG
from service.redemption.checks import bill_failure
from service.redemption.discount import ZERO, DiscountRule, allocate, coupon_discount
from service.redemption.models import (
    CodeOutcome,
    CustomerRef,
    Failure,
    Mode,
    Outcome,
    RedemptionCommand,
    SeriesSummary,
)

SIBLING_FAILED = Failure(CATALOG["SIBLING_COUPON_FAILED"])


@dataclass(frozen=True, slots=True)
class Verdict:
    """The upstream's answer for one code at check time (and the code's series, when the answer names it)."""

    ok: bool
    failure: Failure | None = None
    series_id: int | None = None


@dataclass(frozen=True, slots=True)
class Redeemed:
    """The upstream's answer for one code at redeem time. ``rule`` is the discount the answer states;
    ``cap_stated`` says whether it stated the cap (``discountUpto``) too, or whether the series must tell it."""

    ok: bool
    failure: Failure | None = None
    redemption_id: int | None = None
    series_id: int | None = None
    rule: DiscountRule | None = None
    cap_stated: bool = True


class UpstreamFailure(Exception):
    """The upstream could not give verdicts: unreachable, failing, or refusing the request as a whole."""

    def __init__(self, failure: Failure, *, maybe_applied: bool = False, retry_after: int | None = None) -> None:
        super().__init__(failure.error.code)
        self.failure = failure
        self.maybe_applied = maybe_applied
        self.retry_after = retry_after  # seconds, when the upstream said when to come back (breaker, rate budget)


@dataclass(frozen=True, slots=True)
class CallLimits:
    """What bounds the upstream calls made for one piece of work, given by whoever owns that work.

    ``deadline``: monotonic seconds by which the calls must be over; ``None``: the request's own (the one the web
    layer set, or none in the background); ``math.inf``: none at all. ``urgent``: a redeem's work, served first
    when Capillary's request budget runs short."""

    deadline: float | None = None
    urgent: bool = False


#: The limits of work that gives none of its own: the request's deadline, and no urgency.
AMBIENT: Final = CallLimits()


class CouponUpstream(Protocol):
    async def check(
        self, customer: CustomerRef, codes: Sequence[str], *, store: str | None, limits: CallLimits = AMBIENT
    ) -> dict[str, Verdict]: ...

    async def redeem(
        self, command: RedemptionCommand, codes: Sequence[str], *, limits: CallLimits = AMBIENT
    ) -> dict[str, Redeemed]:
        """Raises UpstreamFailure with ``maybe_applied`` when the answer never came (or said 748)."""
        ...


class SeriesLookup(Protocol):
    """The series of codes and ids. ``limits`` bounds the wait for a lookup made for this work (a shared fetch goes
    on for others)."""

    async def known(self, codes: Sequence[str], *, limits: CallLimits = AMBIENT) -> dict[str, SeriesSummary]:
        """The series of the codes whose series is already known (no upstream call to learn a code's series)."""
        ...

    async def for_codes(self, codes: Sequence[str], *, limits: CallLimits = AMBIENT) -> dict[str, SeriesSummary]:
        """The series of each code where it can be learnt (one batched upstream call for those not known)."""
        ...

    async def by_ids(self, ids: Iterable[int], *, limits: CallLimits = AMBIENT) -> dict[int, SeriesSummary]: ...

    async def remember(self, code_series: dict[str, int]) -> None: ...


def new_ref() -> str:
    return "rdm_" + uuid.uuid4().hex


def price(outcomes: Sequence[CodeOutcome], bill: Decimal, counted: Callable[[CodeOutcome], bool]) -> Decimal:
    """Set each counted code's discount on this bill (together capped at the bill), zero for the others;
    return the total. A code whose cap is unknown gets no amount (None) and is left out of the total."""
    counted_codes = [o for o in outcomes if counted(o) and not o.cap_unknown]
    alone = [coupon_discount(o.rule, bill) if o.rule else ZERO for o in counted_codes]
    for outcome in outcomes:
        outcome.amount = ZERO if outcome.rule and not (outcome.cap_unknown and counted(outcome)) else None
    for outcome, amount in zip(counted_codes, allocate(alone, bill), strict=True):
        outcome.amount = amount
    return sum((o.amount or ZERO for o in counted_codes), ZERO)


def _first_failure(outcomes: Sequence[CodeOutcome]) -> Failure | None:
    """The failure to name at the top: a code's own reason before a sibling's."""
    failures = [o.failure for o in outcomes if o.failure is not None]
    own = [f for f in failures if f.error.code != "SIBLING_COUPON_FAILED"]
    return (own or failures)[0] if failures else None


def refuses_request(failure: UpstreamFailure) -> bool:
    """Whether the upstream refused the request as a whole, for good (an unknown customer): answered as a
    refusal of every code. Otherwise (unreachable, failing, retryable) the failure is raised."""
    return not failure.failure.error.retryable and failure.failure.error.http_status < 500


def plan_redeem(mode: Mode, outcomes: Sequence[CodeOutcome]) -> tuple[str, ...]:
    """The codes the redeem call carries, given each code's check verdict: the passing ones; with ``mode=all``,
    none unless every code passes (no call at all)."""
    passing = tuple(o.code for o in outcomes if o.ok)
    if mode == "all" and len(passing) < len(outcomes):
        return ()
    return passing


def hold_back(outcomes: Sequence[CodeOutcome], sending: Sequence[str]) -> None:
    """Before the call, no code is redeemed yet; a passing code left out of it is refused as a sibling's."""
    for outcome in outcomes:
        outcome.ok = False
        if outcome.failure is None and outcome.code not in sending:
            outcome.failure = SIBLING_FAILED


def read_answer(by_code: dict[str, CodeOutcome], sent: Sequence[str], results: dict[str, Redeemed]) -> list[str]:
    """Read one redeem answer into the outcomes of the codes ``sent``; return those refused only because
    another code in the batch was (Capillary's all-or-nothing), in the order sent."""
    siblings = []
    for code in sent:
        outcome, result = by_code[code], results.get(code)
        if result is None:
            outcome.failure = Failure(CATALOG["UPSTREAM_ERROR"], None, "Capillary gave no result for this code")
        elif result.ok:
            outcome.ok, outcome.redemption_id, outcome.failure = True, result.redemption_id, None
        elif result.failure is not None and result.failure.error.code == "SIBLING_COUPON_FAILED":
            outcome.failure = SIBLING_FAILED
            siblings.append(code)
        else:
            outcome.failure = result.failure
    return siblings


def plan_retry(
    mode: Mode, by_code: dict[str, CodeOutcome], sent: Sequence[str], siblings: Sequence[str]
) -> tuple[str, ...]:
    """After a first answer: in ``partial`` mode, a batch refused because of some of its codes is sent once more
    without them (the refusal was definitive and all-or-nothing, so nothing was applied). Otherwise nothing."""
    own_failures = any(by_code[c].failure not in (None, SIBLING_FAILED) for c in sent)
    return tuple(siblings) if mode == "partial" and own_failures else ()


def conclude(outcomes: list[CodeOutcome], bill: Decimal, ref: str) -> Outcome:
    """The redeem's outcome: the redeemed codes priced on the bill; the first failure named when none was."""
    total = price(outcomes, bill, lambda o: o.ok)
    failure = None if any(o.ok for o in outcomes) else _first_failure(outcomes)
    return Outcome(outcomes, failure=failure, total_discount=total, ref=ref)


def _drop(task: asyncio.Future[Any]) -> None:
    """Cancel a task whose result is no longer wanted; an exception it already ended with counts as seen."""
    if not task.cancel() and not task.cancelled():
        task.exception()


class RedemptionFlow:
    def __init__(self, upstream: CouponUpstream, series: SeriesLookup) -> None:
        self._upstream = upstream
        self._series = series
        #: Whether this Capillary's ``is_redeemable`` names each code's series (``details=true`` is documented to
        #: add series details, but no sample shows them). Until one answer does, a validate learns unknown series
        #: beside the check, so the lookup costs no latency; once one does, after it, and only where still needed.
        self.checks_name_series = False

    async def _assess(self, command: RedemptionCommand, *, learn: bool, limits: CallLimits) -> list[CodeOutcome]:
        """The upstream check beside the series already known; with ``learn``, the series of passing codes not
        yet known are learnt after it. Then each code's verdict: Capillary's, then the bill against its series."""
        ahead = learn and not self.checks_name_series
        # The lookup runs in a task beside the check, which runs in this one: a task fewer than a task group of
        # both. The lookup never raises for an upstream or cache failure; a failed check cancels it.
        lookup = self._series.for_codes if ahead else self._series.known
        looking = asyncio.create_task(lookup(command.codes, limits=limits))
        try:
            verdicts = await self._upstream.check(command.customer, command.codes, store=command.store, limits=limits)
        except UpstreamFailure as failure:
            _drop(looking)
            raise failure from None
        except BaseException:
            _drop(looking)
            raise
        known = await looking
        if any(v.series_id is not None for v in verdicts.values()):
            self.checks_name_series = True
        if learn and not ahead:
            known.update(await self._learn(command.codes, verdicts, known, limits))
        outcomes = []
        for code in command.codes:
            series = known.get(code)
            outcome = CodeOutcome(code, series_id=series.id if series else None, rule=series.rule if series else None)
            verdict = verdicts.get(code)
            if verdict is None:
                outcome.failure = Failure(CATALOG["UPSTREAM_ERROR"], None, "Capillary gave no verdict for this code")
            elif not verdict.ok:
                outcome.failure = verdict.failure
                outcome.series_id = outcome.series_id or verdict.series_id
            elif series is not None and (local := bill_failure(series, command.bill_amount)):
                outcome.failure = Failure(CATALOG[local])
            outcome.ok = outcome.failure is None
            outcomes.append(outcome)
        return outcomes

    async def _learn(
        self, codes: Sequence[str], verdicts: dict[str, Verdict], known: dict[str, SeriesSummary], limits: CallLimits
    ) -> dict[str, SeriesSummary]:
        """The series of the passing codes not yet known: from the series the check named, else from a lookup."""
        wanted = [c for c in codes if c not in known and (v := verdicts.get(c)) is not None and v.ok]
        named = {c: verdicts[c].series_id for c in wanted if verdicts[c].series_id is not None}
        found: dict[str, SeriesSummary] = {}
        if named:
            await self._series.remember({c: i for c, i in named.items() if i is not None})
            summaries = await self._series.by_ids((i for i in named.values() if i is not None), limits=limits)
            found = {c: summaries[i] for c, i in named.items() if i in summaries}
        rest = [c for c in wanted if c not in named]
        if rest:
            found.update(await self._series.for_codes(rest, limits=limits))
        return found

    @staticmethod
    def _refused(failure: Failure, command: RedemptionCommand, ref: str | None = None) -> Outcome:
        """The whole request refused for one reason (an unknown customer): every code carries it."""
        codes = [CodeOutcome(code, failure=failure) for code in command.codes]
        return Outcome(codes, failure=failure, ref=ref)

    async def validate(self, command: RedemptionCommand, *, limits: CallLimits = AMBIENT) -> Outcome:
        """Each code's verdict and its discount on this bill, nothing redeemed."""
        try:
            outcomes = await self._assess(command, learn=True, limits=limits)
        except UpstreamFailure as exc:
            if not refuses_request(exc):
                raise
            return self._refused(exc.failure, command)
        total = price(outcomes, command.bill_amount, lambda o: o.ok)
        return Outcome(outcomes, total_discount=total)

    async def redeem(
        self,
        command: RedemptionCommand,
        *,
        ref: str | None = None,
        on_send: Callable[[], None] | None = None,
        limits: CallLimits = AMBIENT,
    ) -> Outcome:
        """The check, then the redeem call(s) the plan asks for, then the answers read into each code's outcome.
        ``on_send`` is called just before each upstream redeem call: from then on, a failure without an answer
        leaves the outcome unknown. ``limits`` bounds every upstream call and lookup made for it."""
        ref = ref or new_ref()
        try:
            outcomes = await self._assess(command, learn=False, limits=limits)
        except UpstreamFailure as exc:
            if not refuses_request(exc):
                raise
            return self._refused(exc.failure, command, ref)
        sending = plan_redeem(command.mode, outcomes)
        hold_back(outcomes, sending)
        answers = await self._send(command, outcomes, sending, on_send, limits)
        await self._apply_answers(outcomes, answers, limits)
        return conclude(outcomes, command.bill_amount, ref)

    async def _send(
        self,
        command: RedemptionCommand,
        outcomes: Sequence[CodeOutcome],
        sending: tuple[str, ...],
        on_send: Callable[[], None] | None,
        limits: CallLimits,
    ) -> dict[str, Redeemed]:
        """The redeem call for ``sending``, and in ``partial`` mode at most one more for the codes refused only
        because of others (see :func:`plan_retry`). Returns the answer for each code that got one."""
        by_code = {o.code: o for o in outcomes}
        answers: dict[str, Redeemed] = {}
        for attempt in range(2):
            if not sending:
                break
            if on_send is not None:
                on_send()
            results = await self._upstream.redeem(command, sending, limits=limits)
            answers.update({c: r for c in sending if (r := results.get(c)) is not None})
            siblings = read_answer(by_code, sending, results)
            sending = plan_retry(command.mode, by_code, sending, siblings) if attempt == 0 else ()
        return answers

    async def _apply_answers(
        self, outcomes: list[CodeOutcome], answers: dict[str, Redeemed], limits: CallLimits
    ) -> None:
        """Each code's series and discount as the redeem answer states them. Where the answer gives a percent
        without its cap (the documented "Redeem Coupons" shape), the cap is the series': known before the
        redeem, or fetched once for all such series (then cached). A cap that cannot be learnt leaves that
        code's amount unstated (null) rather than a guess."""
        learnt = {c: r.series_id for c, r in answers.items() if r.series_id is not None}
        if learnt:
            await self._series.remember(learnt)

        def cap_missing(outcome: CodeOutcome) -> bool:
            result = answers.get(outcome.code)
            return (
                outcome.ok
                and result is not None
                and result.rule is not None
                and result.rule.kind == "PERC"
                and not result.cap_stated
                and outcome.rule is None
            )

        wanted = {i for o in outcomes if cap_missing(o) and (i := answers[o.code].series_id or o.series_id)}
        fetched = await self._series.by_ids(wanted, limits=limits) if wanted else {}
        for outcome in outcomes:
            result = answers.get(outcome.code)
            if result is None:
                continue
            outcome.series_id = result.series_id or outcome.series_id
            rule = result.rule
            if rule is None:
                continue  # the answer states no discount: the series' rule stands
            if rule.kind == "PERC" and not result.cap_stated:
                source = outcome.rule or (fetched[outcome.series_id].rule if outcome.series_id in fetched else None)
                if source is not None:
                    rule = replace(rule, cap=source.cap)
                elif outcome.ok:
                    outcome.cap_unknown = True
            outcome.rule = rule
