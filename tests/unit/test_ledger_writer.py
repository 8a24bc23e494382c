"""The ledger's background writer: answers given while the store could not take them are written later, each on
a backoff of its own, so one that keeps failing (a Redis Cluster node gone that serves its slot, a record the store
refuses) does not hold back the others; and a replay of a key whose answer is still waiting is never run again.
The in-memory ledger with a store that fails on command, the scripted upstream of the state-machine table."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator, Sequence
from decimal import Decimal as D
from typing import Any

import pytest

from service.deadline import DEADLINE
from service.idempotency import service
from service.idempotency.models import Entry
from service.idempotency.service import LOGGED_REFS, WRITE_PAUSE, WRITE_RESULTS, WRITERS, Refused
from service.idempotency.store import UNACKNOWLEDGED, Resolution, StoreUnavailable
from service.observability.metrics import LEDGER_WRITE_RESULTS
from service.redemption.models import CustomerRef, RedemptionCommand
from tests.unit.test_exactly_once_machine import TIMING, FakeClock, Machine, NotingStore


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


# ---------------------------------------------------------------------------- answers kept for the replicas


class Replicas(NotingStore):
    """The in-memory ledger behind a primary whose replicas acknowledge nothing while ``unacked`` (``WAIT`` timed
    out), and that refuses every write while ``down``. Each final write is noted with its options; a ref in
    ``stuck`` hangs until ``unstick`` is set (a ``WAIT`` that never returns, a node gone); the writes under way
    are counted. ``lose`` drops a record and its key, as a failover to a replica that missed them does."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.down = False
        self.unacked = False
        self.primary = "primary-1"
        self.calls: list[tuple[str, dict[str, Any]]] = []  # (ref, options) of each final write tried
        self.finished = 0  # final writes that returned
        self.stuck: set[str] = set()
        self.unstick = asyncio.Event()
        self.gate = asyncio.Event()  # while clear, the writer's writes wait for it
        self.gate.set()
        self.under_way = 0
        self.most = 0  # the most final writes under way at once

    async def resolve(self, entry: Entry, ttl: float, **options: Any) -> Resolution:
        self.calls.append((entry.ref, options))
        self.under_way += 1
        self.most = max(self.most, self.under_way)
        try:
            if options.get("keep_final"):  # the writer's (a request's own write never waits)
                await self.gate.wait()
            if entry.ref in self.stuck:
                await self.unstick.wait()
            if self.down:
                raise StoreUnavailable("refused")
            resolution = await super().resolve(entry, ttl, **options)
        finally:
            self.under_way -= 1
        self.finished += 1
        if self.unacked:
            return dataclasses.replace(resolution, unreplicated=UNACKNOWLEDGED, primary=self.primary)
        return resolution

    def tries(self, ref: str | None) -> int:
        return sum(r == ref for r, _ in self.calls)

    def lose(self, ref: str) -> None:
        entry = self._entries.get(ref)
        assert entry is not None
        self._keys.delete(self._codec.decode(entry).key)
        self._entries.delete(ref)


class Monotonic:
    """The ledger's monotonic clock, moved by hand (``write_retry`` counts on it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _kept_machine() -> tuple[Machine, Replicas, Monotonic]:
    m = Machine()
    store = Replicas(m.clock)
    m.store = m.ledger.store = store
    m.ledger.monotonic = mono = Monotonic()
    return m, store, mono


class _Lines:
    """The ledger's log lines, as events with their fields (whatever the process's logging is configured as)."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.lines.append({"event": event, "level": level, **fields})

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.lines)


@contextlib.contextmanager
def _logs() -> Iterator[_Lines]:
    lines, logger = _Lines(), service.log
    service.log = lines  # type: ignore[assignment]
    try:
        yield lines
    finally:
        service.log = logger


async def _until(condition: Any, what: str) -> None:
    """Wait for the background writer to make ``condition()`` true (a bound against hanging, not a timing)."""
    give_up = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < give_up, what
        await asyncio.sleep(0.01)


async def _answers(m: Machine, n: int, first: int = 0) -> list[str]:
    refs = []
    for i in range(first, first + n):
        reply = await m.ledger.redeem(_command(f"C{i}", f"T-{i}"), f"key:S1:k-{i}", f"r-{i}")
        assert reply.outcome == "redeemed"
        assert reply.ref is not None
        refs.append(reply.ref)
    return refs


async def test_the_writer_writes_at_most_writers_answers_at_once() -> None:
    m, store, _ = _kept_machine()
    try:
        store.unacked = True
        store.gate.clear()  # the writer's writes wait: it starts as many as it may
        refs = await _answers(m, WRITERS * 2 + 8)
        assert m.ledger.unreplicated_count == len(refs)  # all kept
        calls = len(store.calls)
        await _until(lambda: store.under_way == WRITERS, "the writer did not write its answers side by side")
        await asyncio.sleep(4 * WRITE_PAUSE)  # every kept answer is due by now: none beyond the bound starts
        assert (store.under_way, len(store.calls) - calls) == (WRITERS, WRITERS)
        store.unacked = False
        store.gate.set()
        await _until(lambda: m.ledger.unreplicated_count == 0, "the kept answers were not all written again")
        assert store.most == WRITERS
    finally:
        store.gate.set()
        await m.close()


async def test_a_write_that_hangs_holds_one_place_and_the_answers_behind_it_are_written() -> None:
    m, store, _ = _kept_machine()
    try:
        store.unacked = True
        [slow, *others] = await _answers(m, 20)
        store.stuck.add(slow)  # its next write never returns (a WAIT that hangs, a node gone)
        await _until(lambda: store.under_way == 1, "the slow answer was not written again")
        store.unacked = False  # the replicas acknowledge again
        await _until(lambda: m.ledger.unreplicated_count == 1, "the answers behind a hanging write waited for it")
        assert store.under_way == 1  # the hanging one is still at it, alone
        assert all(store.tries(ref) >= 2 for ref in others)  # each written again, and now acknowledged
        store.unstick.set()
        await _until(lambda: m.ledger.unreplicated_count == 0, "the slow answer was not released")
    finally:
        store.unstick.set()
        await m.close()


async def test_an_answer_never_recorded_is_given_up_past_write_retry_without_another_try() -> None:
    m, store, mono = _kept_machine()
    try:
        store.down = True
        reply = await m.ledger.redeem(_command("A", "T-1"), "key:S1:k-1", "r-1")
        assert reply.outcome == "redeemed"  # the till has Capillary's answer
        await _until(lambda: store.tries(reply.ref) >= 2, "the answer the store refused was not tried again")
        with _logs() as logs:
            mono.now += TIMING.write_retry  # its time is up...
            tried = store.tries(reply.ref)
            store.down = False  # ...as the store comes back
            await _until(lambda: m.ledger.unwritten_count == 0, "the answer past write_retry was not given up")
        assert store.tries(reply.ref) == tried  # not tried once more: given up first
        assert dict(m.ledger.deferred_writes) == {"deferred": 1, "gave_up": 1}
        assert [e["ref"] for e in logs if e["event"] == "redemption_not_recorded"] == [reply.ref]
    finally:
        await m.close()


async def test_a_kept_answer_is_released_past_write_retry_without_another_try_counted_and_logged() -> None:
    m, store, mono = _kept_machine()
    try:
        store.unacked = True
        [ref] = await _answers(m, 1)
        await _until(lambda: store.tries(ref) >= 2, "the kept answer was not written again")
        with _logs() as logs:
            mono.now += TIMING.write_retry
            tried = store.tries(ref)
            await _until(lambda: m.ledger.unreplicated_count == 0, "the kept answer past write_retry was kept on")
        assert store.tries(ref) == tried
        assert dict(m.ledger.deferred_writes) == {"unreplicated_gave_up": 1}
        assert [e["ref"] for e in logs if e["event"] == "redemption_left_unreplicated"] == [ref]
        assert (await store.load(ref)) is not None  # on the primary still: released, not lost
    finally:
        await m.close()


async def test_past_the_cap_an_unacknowledged_answer_is_not_kept_but_one_the_ledger_lacks_always_is() -> None:
    m, store, _ = _kept_machine()
    m.ledger.kept_max = 2
    try:
        store.unacked = True
        with _logs() as logs:
            kept = await _answers(m, 3)
        assert m.ledger.unreplicated_count == 2  # the third: counted, logged, not kept
        assert [e["ref"] for e in logs if e["event"] == "redemption_not_kept_unreplicated"] == [kept[2]]
        assert m.ledger.deferred_writes["unreplicated_not_kept"] == 1

        store.down = True  # the store refuses for a while...
        [missing] = await _answers(m, 1, first=3)
        assert m.ledger.unwritten_count == 1  # ...and the answer it lacks is kept, whatever the cap
        await _until(lambda: store.tries(missing) >= 2, "the answer the store refused was not tried again")
        assert m.ledger.unwritten_count == 1
        store.down = False
        await _until(lambda: m.ledger.unwritten_count == 0, "the answer the ledger lacked was not written")
        assert (await store.load(missing)) is not None  # written; on the primary only, and past the cap: not kept
        assert dict(m.ledger.deferred_writes) == {"deferred": 1, "written": 1, "unreplicated_not_kept": 2}
        assert m.ledger.unreplicated_count == 2
    finally:
        await m.close()


async def test_a_kept_answer_adopts_the_ledgers_record_so_a_reversal_survives_a_later_failover() -> None:
    m, store, _ = _kept_machine()
    try:
        store.unacked = True
        [ref] = await _answers(m, 1)
        voided = await m.ledger.reverse(ref, None, "r-void")  # the cashier voids at once: saved on the primary
        assert json.loads(voided.body)["status"] == "reversed"
        finished = store.finished
        await _until(lambda: store.finished > finished, "the kept answer was not written again")
        store.lose(ref)  # a failover to a replica that lacks the record
        finished = store.finished
        await _until(lambda: store.finished > finished, "the kept answer was not written to the new primary")
        store.unacked = False
        await _until(lambda: m.ledger.unreplicated_count == 0, "the kept answer was not released")
        record = await store.load(ref)
        assert record is not None
        assert record.reversal is not None
        assert record.reversal.state == "done"  # written back with the reversal, never the pre-reversal copy
        replay = await m.ledger.redeem(_command("C0", "T-0"), "key:S1:k-0", "r-again")
        assert replay.error_code == "REDEMPTION_REVERSED"
        assert m.upstream.redeems == 1
    finally:
        await m.close()


async def test_every_deferred_or_kept_final_answer_is_written_keeping_a_final_record_with_its_force() -> None:
    """The store's side (a final ``failed`` record gives way to a forced answer, any other stands) is the
    store's tests'; here: the writer always asks for it, and says whether the answer is Capillary's own."""
    m, store, _ = _kept_machine()
    try:
        store.down = True
        [deferred] = await _answers(m, 1)
        store.down, store.unacked = False, True
        await _until(lambda: store.tries(deferred) >= 3, "the deferred answer was not written, then again")
        store.unacked = False
        await _until(lambda: m.ledger.unreplicated_count == 0, "the answer was not released")
        by_writer = [options for ref, options in store.calls[1:] if ref == deferred]
        assert by_writer
        assert all((o["force"], o["keep_final"]) == (True, True) for o in by_writer)
        # its first write is counted if the replicas do not hold it; the writes made again are not
        assert [o["again"] for o in by_writer] == [False] + [True] * (len(by_writer) - 1)
        assert dict(m.ledger.deferred_writes) == {"deferred": 1, "written": 1}  # once, though kept in between
    finally:
        await m.close()


class SlowSaves(Replicas):
    """Refuses saves of unresolved records while ``down``; once back, a save that lands waits for ``landed``."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.saves_down = True
        self.landed = asyncio.Event()
        self.saved = asyncio.Event()
        self.held: list[str] = []  # the owner of each lock taken (or extended) for the records' TTL

    async def save_unresolved(self, entry: Entry, ttl: float) -> Entry | None:
        if self.saves_down:
            raise StoreUnavailable("refused")
        current = await super().save_unresolved(entry, ttl)
        self.saved.set()
        await self.landed.wait()
        return current

    async def lock(self, codes: Sequence[str], owner: str, ttl: float) -> list[str]:
        busy = await super().lock(codes, owner, ttl)
        if ttl == TIMING.ttl:  # a pending record's: held until it is resolved
            self.held.append(owner)
        return busy


async def test_a_pending_answers_late_write_leaves_no_code_lock_once_its_redeem_ends() -> None:
    """The writer writes the pending record and locks its codes for the TTL; the redeem, answered meanwhile,
    resolves and unlocks. Under the ref's guard the two never interleave, so no lock outlives the redeem."""
    m = Machine()
    store = SlowSaves(m.clock)
    m.store = m.ledger.store = store
    try:
        m.upstream.redeem_as = "hold"
        token = DEADLINE.set(time.monotonic())  # the till's deadline comes while the redeem is with Capillary
        try:
            reply = await m.ledger.redeem(_command("A", "T-1"), "key:S1:k-1", "r-1")
        finally:
            DEADLINE.reset(token)
        assert reply.outcome == "pending"  # its record could not be saved: held here
        store.saves_down = False
        await store.saved.wait()  # the writer's save landed; its lock is next
        m.upstream.release.set()  # Capillary answers: the redeem resolves its record
        await _until(lambda: m.upstream.redeems == 1, "the redeem was not applied")
        for _ in range(10):
            await asyncio.sleep(0)  # the redeem runs as far as it may
        store.landed.set()
        await _until(lambda: reply.ref in store.held, "the writer did not lock the pending record's codes")
        await _until(lambda: not m.ledger._tasks and m.ledger.unwritten_count == 0, "the redeem did not end")
        record = await store.load(reply.ref or "")
        assert record is not None
        assert record.state == "done"
        assert await store.lock(["A"], "another-till", 10.0) == []  # the code is free
    finally:
        store.landed.set()
        await m.close()


async def test_shutdown_tries_every_kept_answer_once_then_counts_and_logs_them_in_one_line() -> None:
    m, store, _ = _kept_machine()
    store.unacked = True
    refs = await _answers(m, LOGGED_REFS + 5)
    await _until(lambda: all(store.tries(ref) >= 2 for ref in refs), "the kept answers were not written again")
    calls = {ref: store.tries(ref) for ref in refs}
    with _logs() as logs:  # closing stops the writer at once: the tries from here are the shutdown's
        await m.close()
    assert all(store.tries(ref) > calls[ref] for ref in refs)  # each tried once more at shutdown
    assert m.ledger.unreplicated_count == 0
    assert m.ledger.deferred_writes["unreplicated_gave_up"] == len(refs)
    [line] = [e for e in logs if e["event"] == "shutdown_with_answers_not_replicated"]
    assert (line["count"], line["refs"]) == (len(refs), sorted(refs)[:LOGGED_REFS])
    assert not [e for e in logs if e["event"] == "redemption_left_unreplicated"]  # one line, not one each


async def test_an_answer_deferred_after_shutdown_starts_no_writer_and_is_given_up_at_once() -> None:
    m, store, _ = _kept_machine()
    await m.close()
    store.down = True
    reply = await m.ledger.redeem(_command("A", "T-1"), "key:S1:k-1", "r-1")
    assert reply.outcome == "redeemed"
    assert dict(m.ledger.deferred_writes) == {"deferred": 1, "gave_up": 1}
    assert m.ledger.unwritten_count == 0
    assert asyncio.all_tasks() == {asyncio.current_task()}  # no writer left running


def test_the_writers_results_are_the_metrics_label_values() -> None:
    assert WRITE_RESULTS == LEDGER_WRITE_RESULTS
