"""The redemption flow as a functional core: fake ports that record what they were asked, plain data out."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from decimal import Decimal as D

import pytest

from service.redemption.catalog import CATALOG
from service.redemption.discount import DiscountRule
from service.redemption.flow import AMBIENT, CallLimits, Redeemed, RedemptionFlow, UpstreamFailure, Verdict
from service.redemption.models import CustomerRef, Failure, Mode, RedemptionCommand, SeriesSummary

USED = Failure(CATALOG["COUPON_ALREADY_REDEEMED"], 711, "Coupon is already used")
SIBLING = Failure(CATALOG["SIBLING_COUPON_FAILED"], 749, "failure on other coupons")
SERIES = {
    "A": SeriesSummary(id=1, discount_type="ABS", discount_value=D(100)),
    "B": SeriesSummary(id=2, discount_type="PERC", discount_value=D(10)),
    "C": SeriesSummary(id=3, discount_type="ABS", discount_value=D(50), min_bill_amount=D(5000)),
}


class FakeUpstream:
    """Answers from scripted verdicts; a redeem of a batch holding a bad code fails all-or-nothing."""

    def __init__(self, bad_at_redeem: dict[str, Failure] | None = None) -> None:
        self.bad_at_redeem = bad_at_redeem or {}
        self.checked: list[tuple[str, ...]] = []
        self.redeemed: list[tuple[str, ...]] = []

    async def check(
        self, customer: CustomerRef, codes: Sequence[str], *, store: str | None, limits: CallLimits = AMBIENT
    ) -> dict[str, Verdict]:
        self.checked.append(tuple(codes))
        return {c: Verdict(False, USED) if c.startswith("USED") else Verdict(True) for c in codes}

    async def redeem(
        self, command: RedemptionCommand, codes: Sequence[str], *, limits: CallLimits = AMBIENT
    ) -> dict[str, Redeemed]:
        self.redeemed.append(tuple(codes))
        if any(c in self.bad_at_redeem for c in codes):
            return {c: Redeemed(False, self.bad_at_redeem.get(c, SIBLING)) for c in codes}
        return {c: Redeemed(True, redemption_id=100 + i) for i, c in enumerate(codes)}


class FakeSeries:
    """The series of ``SERIES``; ``cached`` codes are known without a lookup (all of them by default). Records the
    lookups that would cost an upstream call."""

    def __init__(self, cached: set[str] | None = None) -> None:
        self.cached = set(SERIES) if cached is None else cached
        self.learnt: dict[str, int] = {}
        self.looked_up: list[tuple[str, ...]] = []
        self.fetched: list[tuple[int, ...]] = []

    async def known(self, codes: Sequence[str], *, limits: CallLimits = AMBIENT) -> dict[str, SeriesSummary]:
        return {c: SERIES[c] for c in codes if c in SERIES and (c in self.cached or c in self.learnt)}

    async def for_codes(self, codes: Sequence[str], *, limits: CallLimits = AMBIENT) -> dict[str, SeriesSummary]:
        self.looked_up.append(tuple(codes))
        return {c: SERIES[c] for c in codes if c in SERIES}

    async def by_ids(self, ids: Iterable[int], *, limits: CallLimits = AMBIENT) -> dict[int, SeriesSummary]:
        wanted = tuple(sorted(set(ids)))
        self.fetched.append(wanted)
        return {s.id: s for s in SERIES.values() if s.id in wanted}

    async def remember(self, code_series: dict[str, int]) -> None:
        self.learnt.update(code_series)


def _command(*codes: str, mode: Mode = "all", bill: str = "1000") -> RedemptionCommand:
    return RedemptionCommand(CustomerRef("mobile", "919900000001"), codes, D(bill), "T-1", mode=mode)


def _flow(upstream: FakeUpstream, series: FakeSeries | None = None) -> RedemptionFlow:
    return RedemptionFlow(upstream, series or FakeSeries())


async def test_validate_prices_each_code_and_caps_the_total_at_the_bill() -> None:
    outcome = await _flow(FakeUpstream()).validate(_command("A", "B", bill="105"))
    assert [(o.code, o.ok, o.amount) for o in outcome.codes] == [("A", True, D("100.00")), ("B", True, D("5.00"))]
    assert outcome.total_discount == D("105.00")


async def test_mode_all_makes_no_redeem_call_when_a_code_fails() -> None:
    upstream = FakeUpstream()
    outcome = await _flow(upstream).redeem(_command("A", "USED-1", "C"))
    assert upstream.redeemed == []
    failures = {o.code: o.failure.error.code if o.failure else None for o in outcome.codes}
    assert failures == {
        "A": "SIBLING_COUPON_FAILED",
        "USED-1": "COUPON_ALREADY_REDEEMED",
        "C": "BILL_AMOUNT_NOT_ELIGIBLE",
    }
    assert outcome.failure == USED  # the first own reason, not a sibling's
    assert outcome.total_discount == D("0.00")


async def test_mode_partial_redeems_what_passes() -> None:
    upstream = FakeUpstream()
    outcome = await _flow(upstream).redeem(_command("A", "USED-1", "B", mode="partial"))
    assert upstream.redeemed == [("A", "B")]
    assert [(o.code, o.ok, o.redemption_id) for o in outcome.codes] == [
        ("A", True, 100),
        ("USED-1", False, None),
        ("B", True, 101),
    ]
    assert outcome.failure is None
    assert outcome.total_discount == D("200.00")


async def test_partial_resends_the_siblings_once_after_an_all_or_nothing_refusal() -> None:
    """is_redeemable passed B, but by redeem time another till used it: the batch was refused whole."""
    upstream = FakeUpstream(bad_at_redeem={"B": USED})
    outcome = await _flow(upstream).redeem(_command("A", "B", mode="partial"))
    assert upstream.redeemed == [("A", "B"), ("A",)]
    by_code = {o.code: o for o in outcome.codes}
    assert by_code["A"].ok
    assert by_code["B"].failure == USED
    assert outcome.failure is None


async def test_mode_all_never_resends() -> None:
    upstream = FakeUpstream(bad_at_redeem={"B": USED})
    outcome = await _flow(upstream).redeem(_command("A", "B"))
    assert upstream.redeemed == [("A", "B")]
    assert outcome.failure == USED
    assert {o.code: o.failure.error.code for o in outcome.codes if o.failure} == {
        "A": "SIBLING_COUPON_FAILED",
        "B": "COUPON_ALREADY_REDEEMED",
    }


async def test_a_business_refusal_of_the_whole_request_names_every_code() -> None:
    class UnknownCustomer(FakeUpstream):
        async def check(
            self, customer: CustomerRef, codes: Sequence[str], *, store: str | None, limits: CallLimits = AMBIENT
        ) -> dict[str, Verdict]:
            raise UpstreamFailure(Failure(CATALOG["CUSTOMER_NOT_FOUND"], 701, "not found"))

    outcome = await _flow(UnknownCustomer()).redeem(_command("A", "B"))
    assert outcome.failure is not None
    assert outcome.failure.error.code == "CUSTOMER_NOT_FOUND"
    assert all(o.failure == outcome.failure for o in outcome.codes)


async def test_an_upstream_outage_is_raised_not_hidden() -> None:
    class Down(FakeUpstream):
        async def check(
            self, customer: CustomerRef, codes: Sequence[str], *, store: str | None, limits: CallLimits = AMBIENT
        ) -> dict[str, Verdict]:
            raise UpstreamFailure(Failure(CATALOG["UPSTREAM_UNAVAILABLE"]))

    with pytest.raises(UpstreamFailure):
        await _flow(Down()).validate(_command("A"))


async def test_a_failed_check_answers_at_once_and_cancels_the_series_lookup_beside_it() -> None:
    """The lookup runs beside the check: a check that fails does not wait for it, and it is not left running."""
    lookup_started, lookup_ended = asyncio.Event(), asyncio.Event()

    class SlowSeries(FakeSeries):
        async def known(self, codes: Sequence[str], *, limits: CallLimits = AMBIENT) -> dict[str, SeriesSummary]:
            lookup_started.set()
            try:
                await asyncio.Event().wait()  # a lookup waiting on a series fetch that never ends
            finally:
                lookup_ended.set()
            return {}

    class Down(FakeUpstream):
        async def check(
            self, customer: CustomerRef, codes: Sequence[str], *, store: str | None, limits: CallLimits = AMBIENT
        ) -> dict[str, Verdict]:
            await lookup_started.wait()
            raise UpstreamFailure(Failure(CATALOG["UPSTREAM_UNAVAILABLE"]))

    with pytest.raises(UpstreamFailure) as raised:
        await asyncio.wait_for(_flow(Down(), SlowSeries()).redeem(_command("A")), timeout=5)
    assert raised.value.failure.error.code == "UPSTREAM_UNAVAILABLE"
    await asyncio.wait_for(lookup_ended.wait(), timeout=5)  # cancelled, not left waiting


async def test_series_learnt_from_the_redeem_answer_is_remembered() -> None:
    class WithSeries(FakeUpstream):
        async def redeem(
            self, command: RedemptionCommand, codes: Sequence[str], *, limits: CallLimits = AMBIENT
        ) -> dict[str, Redeemed]:
            return {c: Redeemed(True, redemption_id=7, series_id=42) for c in codes}

    series = FakeSeries()
    outcome = await RedemptionFlow(WithSeries(), series).redeem(_command("NEW-1"))
    assert outcome.codes[0].series_id == 42
    assert series.learnt == {"NEW-1": 42}


async def test_a_redeem_looks_up_no_series_before_it_is_sent() -> None:
    """Codes never seen: no coupon-details lookup before the redeem (Capillary checks the bill itself)."""
    series = FakeSeries(cached=set())
    upstream = FakeUpstream()
    outcome = await _flow(upstream, series).redeem(_command("A", "C", bill="1000"))
    assert series.looked_up == []
    assert upstream.redeemed == [("A", "C")]  # C's min bill was unknown: Capillary's to judge
    assert all(o.ok for o in outcome.codes)


async def test_validate_learns_the_series_of_passing_codes_once_for_all() -> None:
    """The documented check names no series: one lookup for all the codes, beside the check (no added latency)."""
    series = FakeSeries(cached={"A"})
    outcome = await _flow(FakeUpstream(), series).validate(_command("A", "B", "USED-1", "C"))
    assert series.looked_up == [("A", "B", "USED-1", "C")]  # one batched lookup (the cache answers for A)
    assert {o.code: o.failure.error.code for o in outcome.codes if o.failure} == {
        "USED-1": "COUPON_ALREADY_REDEEMED",
        "C": "BILL_AMOUNT_NOT_ELIGIBLE",
    }


async def test_validate_takes_the_series_the_check_names() -> None:
    class Detailed(FakeUpstream):
        async def check(
            self, customer: CustomerRef, codes: Sequence[str], *, store: str | None, limits: CallLimits = AMBIENT
        ) -> dict[str, Verdict]:
            return {c: Verdict(True, series_id=SERIES[c].id) for c in codes}

    series = FakeSeries(cached=set())
    flow = _flow(Detailed(), series)
    await flow.validate(_command("A", bill="1000"))  # the first answer shows the checks name series
    assert flow.checks_name_series
    series.looked_up.clear()
    outcome = await flow.validate(_command("A", "B", bill="1000"))
    assert series.looked_up == []  # from then on, no lookup: the check named them
    assert series.fetched[-1] == (1, 2)
    assert series.learnt == {"A": 1, "B": 2}
    assert [o.amount for o in outcome.codes] == [D("100.00"), D("100.00")]


class StatedDiscounts(FakeUpstream):
    """Answers in the documented "Redeem Coupons" shape: a value and isAbsolute, no cap."""

    def __init__(self, rules: dict[str, tuple[int, DiscountRule]]) -> None:
        super().__init__()
        self.rules = rules

    async def redeem(
        self, command: RedemptionCommand, codes: Sequence[str], *, limits: CallLimits = AMBIENT
    ) -> dict[str, Redeemed]:
        self.redeemed.append(tuple(codes))
        return {
            c: Redeemed(True, redemption_id=9, series_id=self.rules[c][0], rule=self.rules[c][1], cap_stated=False)
            for c in codes
        }


async def test_the_discount_is_the_one_the_answer_states() -> None:
    upstream = StatedDiscounts({"A": (1, DiscountRule("ABS", D(150)))})  # the cached series said 100
    outcome = await _flow(upstream).redeem(_command("A", bill="1000"))
    assert (outcome.codes[0].amount, outcome.total_discount) == (D("150.00"), D("150.00"))


async def test_a_percent_without_its_cap_takes_the_series_cap() -> None:
    capped = SeriesSummary(id=5, discount_type="PERC", discount_value=D(10), discount_upto=D(30))
    SERIES["CAPPED"] = capped
    try:
        series = FakeSeries(cached=set())
        upstream = StatedDiscounts({"CAPPED": (5, DiscountRule("PERC", D(10)))})
        outcome = await _flow(upstream, series).redeem(_command("CAPPED", bill="1000"))
        assert series.fetched == [(5,)]  # learnt from the answer's seriesCode, fetched once
        assert outcome.codes[0].amount == D("30.00")
    finally:
        del SERIES["CAPPED"]


async def test_a_percent_whose_cap_cannot_be_learnt_states_no_amount() -> None:
    series = FakeSeries(cached=set())
    upstream = StatedDiscounts({"NEW": (77, DiscountRule("PERC", D(10)))})  # series 77: not to be had
    outcome = await _flow(upstream, series).redeem(_command("NEW", bill="1000"))
    assert outcome.codes[0].ok
    assert outcome.codes[0].amount is None  # never a guess: 100.00 could be over its cap
    assert outcome.total_discount == D("0.00")
