"""The ledger never concludes "not applied" while its own redeem call is still running, whatever its wall clock
says (a clock stepped forward, a process stalled past the settle time): recording fakes, a clock moved by hand."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from decimal import Decimal as D

from service.idempotency.models import FoundRedemption, natural_key
from service.idempotency.service import ExactlyOnce, Timing
from service.idempotency.store import MemoryStore
from service.redemption.flow import Redeemed, RedemptionFlow, Verdict
from service.redemption.models import CustomerRef, RedemptionCommand, SeriesSummary
from service.web.redemptions import JsonRenderer


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

    async def check(self, customer: CustomerRef, codes: Sequence[str], *, store: str | None) -> dict[str, Verdict]:
        return {c: Verdict(True) for c in codes}

    async def redeem(self, command: RedemptionCommand, codes: Sequence[str]) -> dict[str, Redeemed]:
        self.sent.set()
        await self.release.wait()
        self.applied = {c: [FoundRedemption(700 + i)] for i, c in enumerate(codes)}
        return {c: Redeemed(True, redemption_id=700 + i) for i, c in enumerate(codes)}

    async def find_redemptions(
        self, customer: CustomerRef, codes: tuple[str, ...], transaction_number: str
    ) -> dict[str, list[FoundRedemption]]:
        self.asked += 1
        return dict(self.applied)

    async def reactivate(self, redemption_ids: list[int]) -> None:
        raise AssertionError("not reversed here")


class NoSeries:
    async def for_codes(self, codes: Sequence[str]) -> dict[str, SeriesSummary]:
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
    assert first.status == 202
    await upstream.sent.wait()  # the redeem is on its way to Capillary
    clock.now += 3600  # an hour later, by this clock: far past settle_after

    status = await ledger.status(first.ref or "")
    assert json.loads(status.body)["status"] == "pending"  # not "failed": our own call is still running
    replay = await ledger.redeem(command, key, "req-2")
    assert (replay.status, replay.ref) == (202, first.ref)  # the same request, not a fresh redeem

    upstream.release.set()
    for task in list(ledger._tasks):
        await task
    done = await ledger.redeem(command, key, "req-3")
    assert (done.status, done.ref, done.replayed) == (200, first.ref, True)
    assert json.loads(done.body)["coupons"][0]["redemptionId"] == 700
