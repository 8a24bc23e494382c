"""The ledger at its edges, with recording fakes and a clock moved by hand:

- it never concludes "not applied" while its own redeem call is still running, whatever its wall clock says (a
  clock stepped forward, a process stalled past the settle time);
- closing it stops its sweeper even when a cancellation is lost on the way (as Python 3.11's asyncio.wait_for,
  inside redis-py, can lose one), instead of hanging the shutdown;
- a claim the Redis client sent twice (its first reply lost) is still the request's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable, Sequence
from decimal import Decimal as D

from service.idempotency.models import Entry, FoundRedemption, natural_key
from service.idempotency.service import ExactlyOnce, Timing
from service.idempotency.store import MemoryStore
from service.redemption.flow import AMBIENT, CallLimits, Redeemed, RedemptionFlow, Verdict
from service.redemption.models import CustomerRef, RedemptionCommand, SeriesSummary
from service.web.redemptions import JsonRenderer, answer_status


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class HeldUpstream:
    """Checks pass; a redeem is applied only when the test lets it go. Reconciliation sees what was applied."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.sent = asyncio.Event()
        self.applied: dict[str, list[FoundRedemption]] = {}
        self.asked = 0

    async def check(
        self, customer: CustomerRef, codes: Sequence[str], *, store: str | None, limits: CallLimits = AMBIENT
    ) -> dict[str, Verdict]:
        return {c: Verdict(True) for c in codes}

    async def redeem(
        self, command: RedemptionCommand, codes: Sequence[str], *, limits: CallLimits = AMBIENT
    ) -> dict[str, Redeemed]:
        self.sent.set()
        await self.release.wait()
        self.applied = {c: [FoundRedemption(700 + i)] for i, c in enumerate(codes)}
        return {c: Redeemed(True, redemption_id=700 + i) for i, c in enumerate(codes)}

    async def find_redemptions(
        self, customer: CustomerRef, codes: tuple[str, ...], transaction_number: str, *, limits: CallLimits = AMBIENT
    ) -> dict[str, list[FoundRedemption]]:
        self.asked += 1
        return dict(self.applied)

    async def reactivate(self, redemption_ids: list[int], *, limits: CallLimits = AMBIENT) -> None:
        raise AssertionError("not reversed here")


class NoSeries:
    async def known(self, codes: Sequence[str], *, limits: CallLimits = AMBIENT) -> dict[str, SeriesSummary]:
        return {}

    async def by_ids(self, ids: Iterable[int], *, limits: CallLimits = AMBIENT) -> dict[int, SeriesSummary]:
        return {}

    async def for_codes(self, codes: Sequence[str], *, limits: CallLimits = AMBIENT) -> dict[str, SeriesSummary]:
        return {}

    async def remember(self, code_series: dict[str, int]) -> None:
        return None


async def test_a_clock_past_the_settle_time_does_not_conclude_while_the_call_runs() -> None:
    clock, upstream = Clock(), HeldUpstream()
    timing = Timing(deadline=0.0, upstream_timeout=8.0, lease_margin=1.0, reconcile_gap=0.0)  # 202 at once
    ledger = ExactlyOnce(
        RedemptionFlow(upstream, NoSeries()), MemoryStore(clock), upstream, NoSeries(), JsonRenderer(), timing, clock
    )
    command = RedemptionCommand(CustomerRef("mobile", "919900000001"), ("A",), D(100), "T-1", store="S1")
    key = natural_key(command)

    first = await ledger.redeem(command, key, "req-1")
    assert answer_status(first.response) == 202
    await upstream.sent.wait()  # the redeem is on its way to Capillary
    clock.now += 3600  # an hour later, by this clock: far past settle_after

    status = await ledger.status(first.ref or "")
    assert json.loads(status.body)["status"] == "pending"  # not "failed": our own call is still running
    replay = await ledger.redeem(command, key, "req-2")
    assert (answer_status(replay.response), replay.ref) == (202, first.ref)  # the same request, not a fresh redeem

    upstream.release.set()
    for task in list(ledger._tasks):
        await task
    done = await ledger.redeem(command, key, "req-3")
    assert (answer_status(done.response), done.ref, done.replayed) == (200, first.ref, True)
    assert json.loads(done.body)["coupons"][0]["redemptionId"] == 700


class LosingStore(MemoryStore):
    """A store whose first sweep read loses the cancellation it gets, as a redis-py write under Python 3.11's
    asyncio.wait_for does when the cancel arrives as the write completes."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = asyncio.Event()
        self.lost = 0

    async def unresolved(self) -> list[str]:
        self.inside.set()
        if self.lost:
            await asyncio.Event().wait()  # from now on a cancel is a cancel
        with contextlib.suppress(asyncio.CancelledError):  # lost: the caller goes on as if nothing had happened
            await asyncio.Event().wait()
        self.lost += 1
        return []


async def test_closing_stops_the_sweeper_even_when_a_cancel_is_lost() -> None:
    store, upstream = LosingStore(), HeldUpstream()
    ledger = ExactlyOnce(RedemptionFlow(upstream, NoSeries()), store, upstream, NoSeries(), JsonRenderer())
    ledger.start_sweeper(0.01)
    await store.inside.wait()
    closing = asyncio.create_task(ledger.close())
    done, _ = await asyncio.wait([closing], timeout=10)  # a guard against a hang, not a measure
    assert closing in done, "closing the ledger hangs on its sweeper"
    assert ledger._sweeper is not None
    assert ledger._sweeper.done()
    assert store.lost == 1


class ResentStore(MemoryStore):
    """A claim whose reply was lost and that the Redis client sent again: the second run finds the first."""

    async def begin(
        self, entry: Entry, ttl: float, lock_ttl: float, *, legacy_key: str | None = None
    ) -> tuple[Entry | None, list[str]]:
        await super().begin(entry, ttl, lock_ttl, legacy_key=legacy_key)
        return await super().begin(entry, ttl, lock_ttl, legacy_key=legacy_key)


async def test_a_claim_sent_twice_is_still_the_requests_own() -> None:
    upstream = HeldUpstream()
    upstream.release.set()
    ledger = ExactlyOnce(RedemptionFlow(upstream, NoSeries()), ResentStore(), upstream, NoSeries(), JsonRenderer())
    command = RedemptionCommand(CustomerRef("mobile", "919900000001"), ("A",), D(100), "T-1", store="S1")
    reply = await ledger.redeem(command, natural_key(command), "req-1")
    assert (answer_status(reply.response), reply.replayed) == (200, False)  # not "in progress" behind itself
