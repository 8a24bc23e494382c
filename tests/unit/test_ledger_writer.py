"""The ledger's background writer: answers given while the store could not take them are written later, each on
a backoff of its own, so one that keeps failing (a Redis Cluster node gone that serves its slot, a record the store
refuses) does not hold back the others; and a replay of a key whose answer is still waiting is never run again.
The in-memory ledger with a store that fails on command, the scripted upstream of the state-machine table."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal as D
from typing import Any

import pytest

from service.idempotency.models import Entry
from service.idempotency.service import Refused
from service.idempotency.store import Resolution, StoreUnavailable
from service.redemption.models import CustomerRef, RedemptionCommand
from tests.unit.test_exactly_once_machine import FakeClock, Machine, NotingStore


class Refusing(NotingStore):
    """Refuses every final record while ``down``, and always those of the refs in ``broken``."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.down = False
        self.broken: set[str] = set()
        self.writes: list[str] = []  # the refs of the final records written

    async def resolve(self, entry: Entry, ttl: float, **options: Any) -> Resolution:
        if self.down or entry.ref in self.broken:
            raise StoreUnavailable("refused")
        self.writes.append(entry.ref)
        return await super().resolve(entry, ttl, **options)


def _command(code: str, number: str) -> RedemptionCommand:
    return RedemptionCommand(CustomerRef("mobile", "919900000001"), (code,), D(1000), number, store="S1")


async def test_an_answer_that_keeps_failing_does_not_hold_back_those_behind_it() -> None:
    m = Machine()
    store = Refusing(m.clock)
    m.store = m.ledger.store = store
    try:
        store.down = True
        stuck = await m.ledger.redeem(_command("A", "T-1"), "key:S1:stuck", "r-1")
        behind = await m.ledger.redeem(_command("B", "T-2"), "key:S1:behind", "r-2")
        assert (stuck.outcome, behind.outcome) == ("redeemed", "redeemed")  # the tills got Capillary's answers
        assert m.ledger.unwritten_count == 2
        assert stuck.ref is not None
        assert behind.ref is not None

        store.broken.add(stuck.ref)  # the oldest one keeps failing...
        store.down = False  # ...while the store takes the others again
        give_up = time.monotonic() + 10
        while behind.ref not in store.writes:
            assert time.monotonic() < give_up, "the answer behind a failing one was never written"
            await asyncio.sleep(0.01)
        assert m.ledger.unwritten_count == 1

        replay = await m.ledger.redeem(_command("B", "T-2"), "key:S1:behind", "r-3")
        assert (replay.replayed, replay.body) == (True, behind.body)
        with pytest.raises(Refused) as refused:  # the stuck one's answer is held here, not in the ledger
            await m.ledger.redeem(_command("A", "T-1"), "key:S1:stuck", "r-4")
        assert refused.value.error.code == "REQUEST_IN_PROGRESS"  # never run again
        assert m.upstream.redeems == 2
    finally:
        await m.close()
