"""Exactly once, from the till's point of view.

- The first request under an idempotency key claims it (recorded in flight); its final answer is stored and every
  replay gets those very bytes, without an upstream call. The same key in flight: 409; with another body: 422.
- The coupons are locked across tills and replicas from the check to the end of the redeem; a second transaction
  on a locked code gets 409 ``COUPON_IN_USE`` at once.
- A redeem whose answer never came (timeout, reset, 5xx after sending, 748), or that is still running at the
  till's deadline, is never retried blindly and never reported as failed: it is recorded pending, answered 202,
  and reconciled (in the background, on ``GET /v1/redemptions/{ref}`` and on a replay) by asking Capillary whether
  this transaction's redemption exists. Its codes stay locked until it is resolved. "Not applied" is concluded only
  once no call of ours can still be running (``settle_after``); then the key is released so the till may retry.
- A gateway that dies mid-request leaves an in-flight entry whose lease runs out: the next replay or the sweeper
  takes it as pending.
- Reconciliation adopts only a redemption that fits the request (its codes and transaction number, made after
  the request was claimed, when Capillary shows a date) and that no other record owns: each Capillary redemption
  id is bound to one ref when a record is resolved, in the same atomic write.
- A reversal is part of the record: a replay of a reversed redemption is answered 409 ``REDEMPTION_REVERSED``,
  never as redeemed. Its key is not freed: a till redeems again under a new transaction number or key.
- An answer Capillary gave goes to the till even when the ledger cannot record it at that moment: the write is
  retried in the background (bounded), and until it lands a replay of the same key in this process is answered
  "in progress", never run again.
- With ``REDIS_WAIT_REPLICAS``, an answer whose record the replicas did not acknowledge is kept too, and written
  again until they do, or until it is found or written on a primary a failover put in place; meanwhile a replay of
  its key is answered from the ledger's final record, or "in progress" while the ledger lacks it, never run again.
- An answer written late or again never replaces a final record already there (a reversal saved since, another
  answer recorded first), but for a ``failed`` one, replaced by Capillary's own answer; the record found is what
  is written again from then on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import heapq
import itertools
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

import msgspec
import structlog

from service.deadline import time_left
from service.idempotency.models import Entry, FoundRedemption, Reversal, StoredCommand, StoredResponse, is_natural
from service.idempotency.store import FINAL_STATES, UNACKNOWLEDGED, LedgerStore, Resolution, StoreUnavailable
from service.redemption.catalog import CATALOG, LocalError
from service.redemption.flow import AMBIENT, CallLimits, RedemptionFlow, SeriesLookup, UpstreamFailure, new_ref, price
from service.redemption.models import CodeOutcome, CustomerRef, Failure, Outcome, RedemptionCommand

log = structlog.get_logger("service.idempotency")


class Clock(Protocol):
    """Seconds now: ``time.time`` for the ledger's records (shared by every replica), ``time.monotonic`` for
    durations within this process. Tests move one by hand."""

    def __call__(self) -> float: ...


class Refused(Exception):
    """The request is refused as a whole by the exactly-once rules (409/422/404)."""

    def __init__(self, error: LocalError, message: str | None = None, *, retry_after: int | None = None) -> None:
        super().__init__(message or error.message)
        self.error = error
        self.message = message or error.message
        self.retry_after = retry_after


class Renderer(Protocol):
    """Turns results into the bytes the till gets (and replays get)."""

    def outcome(self, outcome: Outcome, command: RedemptionCommand, request_id: str) -> StoredResponse: ...

    def pending(self, ref: str, command: RedemptionCommand, request_id: str) -> StoredResponse: ...

    def not_applied(self, ref: str, command: RedemptionCommand, request_id: str) -> StoredResponse: ...

    def reversed(self, ref: str, redemption_ids: dict[str, int], request_id: str) -> StoredResponse: ...

    def reversed_redeem(self, entry: Entry, request_id: str) -> StoredResponse:
        """A replay of a redeem whose redemption was reversed (or is being reversed): what is true now."""
        ...


class Reconciling(Protocol):
    """What reconciliation asks the upstream and the series cache."""

    async def find_redemptions(
        self, customer: CustomerRef, codes: tuple[str, ...], transaction_number: str, *, limits: CallLimits = AMBIENT
    ) -> dict[str, list[FoundRedemption]]:
        """The redemptions Capillary shows for each of ``codes`` in this transaction (several for a multi-use
        code redeemed more than once in it)."""
        ...

    async def reactivate(self, redemption_ids: list[int], *, limits: CallLimits = AMBIENT) -> None: ...


class OfflineAcceptance(Protocol):
    """Provisional redemptions while Capillary cannot be reached (``service/offline``; only with OFFLINE_MODE=on)."""

    def applies(self, failure: Failure) -> bool: ...

    async def accept(
        self, entry: Entry, command: RedemptionCommand, till: str | None, cause: UpstreamFailure, limits: CallLimits
    ) -> StoredResponse:
        """The provisional answer, journaled and recorded; raises the cause (with why) when it does not apply.
        ``limits``: the redeem's own."""
        ...

    async def reverse(self, entry: Entry, key: str | None, reversed_body: StoredResponse) -> StoredResponse | None: ...

    async def answer(self, ref: str, store: str | None) -> bytes | None:
        """The journal's answer for a provisional redemption the ledger does not hold."""
        ...

    async def held(self, codes: tuple[str, ...], ref: str) -> str | None:
        """A code held by another outstanding provisional redemption."""
        ...


@dataclass(frozen=True)
class Reply:
    """What the ledger answers: the stored response (its bytes, and what it says; the HTTP status is the web
    layer's choice), whether it is a replay, and, with ``lookup``, that it is a record shown on request
    (``GET /v1/redemptions/{ref}``) rather than the answer to a redeem or a reversal."""

    response: StoredResponse
    replayed: bool = False
    ref: str | None = None
    lookup: bool = False
    # what it says, for metrics and the log line (not for replays)
    outcome: str = "unknown"
    error_code: str | None = None
    redeemed: int = 0
    discount: Decimal = Decimal(0)

    @property
    def body(self) -> bytes:
        """The bytes the till gets."""
        return self.response.body


def _summary(outcome: Outcome) -> dict[str, Any]:
    redeemed = sum(o.ok for o in outcome.codes)
    state = "rejected" if not redeemed else "redeemed" if redeemed == len(outcome.codes) else "partially_redeemed"
    return {
        "outcome": state,
        "error_code": outcome.failure.error.code if outcome.failure else None,
        "redeemed": redeemed,
        "discount": outcome.total_discount,
    }


@dataclass(frozen=True)
class Timing:
    deadline: float = 10.0  # the till's wait for a redeem answer
    upstream_timeout: float = 8.0  # one Capillary call at most
    ttl: float = 72 * 3600.0  # how long records are kept
    lease_margin: float = 5.0
    reconcile_gap: float = 5.0  # the least time between two upstream checks of one pending redemption
    refused_ttl: float = 900.0  # how long a record that redeemed nothing is kept (replays within it are answered)
    clock_skew: float = 300.0  # how far Capillary's clock may be behind ours when it dates a redemption
    write_retry: float = 600.0  # how long an answer the ledger could not record is retried in the background

    @property
    def hard_limit(self) -> float:
        """No redeem work of ours runs longer than this after its request started."""
        return self.deadline + self.upstream_timeout + self.lease_margin

    @property
    def settle(self) -> float:
        """Time after which no call of ours, started within the hard limit, can still reach Capillary."""
        return self.hard_limit + self.upstream_timeout


async def _stop(task: asyncio.Task[None] | None) -> None:
    """Cancel a background task and wait until it has ended. One cancel is not always enough on Python 3.11:
    ``asyncio.wait_for`` (redis-py wraps its socket writes in it) returns the inner result instead of raising
    when the cancel arrives as that inner write completes, and the task runs on. So: cancel until it ends."""
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=1.0)
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("background_task_failed", task=task.get_name(), error=type(error).__name__)


#: The writer's backoff, per answer: from this, doubled after each failure up to :data:`WRITE_PAUSE_MAX`.
WRITE_PAUSE = 0.05
WRITE_PAUSE_MAX = 2.0
#: How many answers the writer writes at once: one slow write (a ``WAIT`` that runs its whole timeout, a Cluster
#: node gone) holds one of them, not the answers behind it.
WRITERS = 16
#: At most this many answers the primary took but its replicas did not acknowledge are kept to be written again;
#: past it, a new one is counted and logged, not kept (it stands on the primary). An answer the ledger does not hold
#: at all is always kept, whatever the count.
KEPT_MAX = 10_000
#: At most this many refs in one log line (a shutdown's leftovers).
LOGGED_REFS = 20


@dataclass
class _Unwritten:
    """An answer given to a till but not yet in the ledger (written again when the store is back), or, with
    ``written``, in the ledger but not acknowledged by its replicas (written again until they hold it)."""

    entry: Entry
    ttl: float
    final: bool  # a final answer (resolve), or a pending one (save unless resolved)
    force: bool
    since: float  # when it was first deferred (monotonic)
    written: bool = False  # the primary took it; its replicas did not acknowledge it
    primary: str | None = None  # written: the primary that took it last (its replication id)
    due: float = 0.0  # when it is tried next (time.monotonic: the backoff is real time)
    pause: float = WRITE_PAUSE
    #: counted ``deferred`` (the store could not take it when given), and not yet ``written`` or ``gave_up``
    counted: bool = False


#: ``pos_coupon_ledger_deferred_writes_total{result}`` (the metrics' ``LEDGER_WRITE_RESULTS``): an answer the
#: store could not take is counted ``deferred``, then once ``written`` (the store took it) or ``gave_up``; an answer
#: kept for its replicas and released without their acknowledgement, ``unreplicated_gave_up``; one not kept at all
#: (:data:`KEPT_MAX`), ``unreplicated_not_kept``.
WRITE_RESULTS = ("deferred", "written", "gave_up", "unreplicated_gave_up", "unreplicated_not_kept")
#: The sweeper's work answers no request: no deadline, each call bounded by its own timeout.
BACKGROUND = CallLimits(math.inf)


@dataclass
class ExactlyOnce:
    flow: RedemptionFlow
    store: LedgerStore
    upstream: Reconciling
    series: SeriesLookup
    render: Renderer
    timing: Timing = field(default_factory=Timing)
    clock: Clock = time.time
    monotonic: Clock = time.monotonic
    _guards: dict[str, asyncio.Lock] = field(default_factory=dict)
    _tasks: set[asyncio.Task[Reply]] = field(default_factory=set)
    _running: dict[str, Entry] = field(default_factory=dict)  # by ref: redeems still at work in this process
    _running_keys: dict[str, str] = field(default_factory=dict)  # idempotency key -> ref
    _unwritten: dict[str, _Unwritten] = field(default_factory=dict)  # by ref
    _unwritten_keys: dict[str, str] = field(default_factory=dict)  # idempotency key -> ref
    _kept: set[str] = field(default_factory=set)  # refs of the written ones (kept for their replicas)
    _queue: list[tuple[float, int, _Unwritten]] = field(default_factory=list)  # (due, seq, item): a heap
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _pulse: asyncio.Future[None] | None = None  # set to wake the writer: an answer was deferred
    _writer: asyncio.Task[None] | None = None
    _sweeper: asyncio.Task[None] | None = None
    _stopping: bool = False
    _closed: bool = False
    kept_max: int = KEPT_MAX
    offline: OfflineAcceptance | None = None
    # read by the metrics collector
    pending_count: int = 0
    reconciliations: collections.Counter[str] = field(default_factory=collections.Counter)
    deferred_writes: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def unwritten_count(self) -> int:
        """Answers given and not in the ledger yet."""
        return sum(not item.written for item in self._unwritten.values())

    @property
    def unreplicated_count(self) -> int:
        """Answers in the ledger that its replicas have not acknowledged yet, kept to be written again."""
        return len(self._kept)

    # ------------------------------------------------------------------------------------------ redeem

    async def redeem(
        self,
        command: RedemptionCommand,
        key: str,
        request_id: str,
        *,
        legacy_key: str | None = None,
        till: str | None = None,
    ) -> Reply:
        """``legacy_key``: the key earlier releases recorded this same request under (a record there is
        replayed too)."""
        stored = StoredCommand.of(command)
        if (kept := self._unwritten.get(self._unwritten_keys.get(key, ""))) is not None:
            # answered here, not yet recorded (or replicated): never run again meanwhile
            reply = await self._replay_kept(kept, stored.fingerprint(), request_id)
            if reply is not None:
                return reply
        now = self.clock()
        entry = Entry(
            ref=new_ref(),
            key=key,
            fingerprint=stored.fingerprint(),
            state="in_flight",
            command=stored,
            request_id=request_id,
            created_at=now,
            lease_until=now + self.timing.hard_limit,
            settle_after=now + self.timing.settle,
        )
        for _ in range(2):  # a second round only after a pending entry resolved as "not applied"
            try:  # one round trip: the key claimed and the codes locked, or the record a replay answers from
                existing, busy = await self.store.begin(
                    entry, self.timing.ttl, self.timing.hard_limit, legacy_key=legacy_key
                )
            except StoreUnavailable:
                if key in self._running_keys:  # the ledger is away, but this very request is at work here
                    raise Refused(CATALOG["REQUEST_IN_PROGRESS"], retry_after=1) from None
                raise
            if busy:  # nothing was claimed: the till may simply try again
                message = f"Coupon {busy[0]} is being redeemed in another transaction right now."
                raise Refused(CATALOG["COUPON_IN_USE"], message, retry_after=1)
            if existing is None or existing.ref == entry.ref:  # ours: a claim that landed, then was sent again
                return await self._first(entry, command, till)
            reply = await self._replay(existing, entry.fingerprint, request_id)
            if reply is not None:
                return reply
        raise Refused(CATALOG["REQUEST_IN_PROGRESS"], retry_after=1)

    async def _first(self, entry: Entry, command: RedemptionCommand, till: str | None = None) -> Reply:
        if self.offline is not None:  # a code a provisional redemption holds is in use, online too
            try:
                held = await self.offline.held(command.codes, entry.ref)
            except StoreUnavailable:
                await self._drop(entry)  # nothing was sent; recorded now or when the store is back
                raise
            if held is not None:
                await self._drop(entry)  # frees the key and the codes the claim locked
                message = f"Coupon {held} is being redeemed in another transaction right now."
                raise Refused(CATALOG["COUPON_IN_USE"], message, retry_after=1)
        task = asyncio.create_task(self._run(entry, command, till))
        self._tasks.add(task)
        self._running[entry.ref] = entry
        self._running_keys[entry.key] = entry.ref
        task.add_done_callback(functools.partial(self._settled, entry.ref))
        remaining = entry.created_at + self.timing.deadline - self.clock()
        if (asked := time_left()) is not None:  # the request's own deadline, if sooner
            remaining = min(remaining, asked)
        try:
            return await asyncio.wait_for(asyncio.shield(task), max(0.0, remaining))
        except TimeoutError:
            async with self._guard(entry.ref):
                if task.done():
                    return task.result()
                return await self._pend(entry)

    async def _run(self, entry: Entry, command: RedemptionCommand, till: str | None = None) -> Reply:
        sent = False

        def on_send() -> None:
            nonlocal sent
            sent = True

        # This task outlives the till's wait when it must (the till then has 202 pending): its upstream calls are
        # bounded by the redeem's own hard limit, not by the request's deadline, so a redeem sent is not cut short;
        # and they are urgent, first when Capillary's request budget runs short.
        limit = self.timing.hard_limit - self.timing.lease_margin
        limits = CallLimits(time.monotonic() + limit, urgent=True)  # the deadline's own clock, the client's
        try:
            async with asyncio.timeout(limit):
                outcome = await self.flow.redeem(command, ref=entry.ref, on_send=on_send, limits=limits)
        except UpstreamFailure as exc:
            if sent and exc.maybe_applied:
                async with self._guard(entry.ref):
                    return await self._pend(entry)
            if (reply := await self._provisional(entry, command, till, exc, sent, limits)) is not None:
                return reply
            await self._drop(entry)  # nothing was applied: the till may simply try again
            raise
        except TimeoutError:
            if sent:
                async with self._guard(entry.ref):
                    return await self._pend(entry)
            timeout = UpstreamFailure(Failure(CATALOG["UPSTREAM_TIMEOUT"]))
            if (reply := await self._provisional(entry, command, till, timeout, sent, limits)) is not None:
                return reply
            await self._drop(entry)
            raise timeout from None
        response = self.render.outcome(outcome, command, entry.request_id)
        async with self._guard(entry.ref):
            await self._finish(entry, outcome, response, force=True)  # Capillary's own answer: the truth
        return Reply(response, ref=entry.ref, **_summary(outcome))

    async def _provisional(
        self,
        entry: Entry,
        command: RedemptionCommand,
        till: str | None,
        cause: UpstreamFailure,
        sent: bool,
        limits: CallLimits,
    ) -> Reply | None:
        """Offline acceptance, when Capillary could not be reached before anything was sent (a redeem call refused
        at connect counts as not sent). Declined: the entry is dropped and the cause raised, saying why."""
        if self.offline is None or not self.offline.applies(cause.failure):
            return None
        if sent and (cause.maybe_applied or cause.failure.error.code != "UPSTREAM_UNAVAILABLE"):
            return None
        try:
            async with self._guard(entry.ref):
                response = await self.offline.accept(entry, command, till, cause, limits)
        except UpstreamFailure:
            await self._drop(entry)
            raise
        except StoreUnavailable:
            await self._drop(entry)
            raise cause from None
        return Reply(response, ref=entry.ref, outcome="provisional")  # not redeemed (yet)

    def _settled(self, ref: str, task: asyncio.Task[Reply]) -> None:
        """A redeem that outlived its till's deadline ends with nobody awaiting it: its error is logged here."""
        self._tasks.discard(task)
        entry = self._running.pop(ref, None)
        if entry is not None and self._running_keys.get(entry.key) == ref:
            del self._running_keys[entry.key]
        if not task.cancelled() and (error := task.exception()) is not None and not isinstance(error, Refused):
            log.info("redeem_finished_late", ref=ref, error=type(error).__name__)

    # ------------------------------------------------------------------------------------ transitions

    @contextlib.asynccontextmanager
    async def _guard(self, ref: str) -> AsyncIterator[None]:
        """Serialises this process's own writes to one entry (the request and its deadline)."""
        lock = self._guards.setdefault(ref, asyncio.Lock())
        async with lock:
            yield
        if not lock.locked():
            self._guards.pop(ref, None)

    def _ttl(self, entry: Entry) -> float:
        """A final record that redeemed nothing is kept for the shorter ``refused_ttl``: once it expires a replay
        simply runs again, and nothing it could find upstream was applied under it."""
        if entry.state in ("done", "failed") and not entry.redemption_ids:
            return self.timing.refused_ttl
        return self.timing.ttl

    async def _drop(self, entry: Entry, *, locked: bool = True) -> None:
        """Forget an attempt that applied nothing: free its key and codes. Its record says so."""
        entry.state = "failed"
        entry.response = self.render.not_applied(entry.ref, entry.command.command(), entry.request_id)
        await self._resolve(entry, force=True, unlock=locked)

    async def _pend(self, entry: Entry) -> Reply:
        response = self.render.pending(entry.ref, entry.command.command(), entry.request_id)
        entry.state, entry.response = "pending", response
        try:
            current = await self.store.save_unresolved(entry, self.timing.ttl)
            if current is None:
                await self.store.lock(entry.command.codes, entry.ref, self.timing.ttl)  # held until resolved
        except StoreUnavailable:
            # The redeem may be applied upstream: the till gets its ref, and the record follows the store back.
            self._defer(_Unwritten(entry, self.timing.ttl, final=False, force=False, since=self.monotonic()))
            current = None
        if current is not None:
            assert current.response is not None
            return Reply(current.response, ref=entry.ref)
        log.warning("redemption_pending", ref=entry.ref)
        return Reply(response, ref=entry.ref, outcome="pending")

    async def _finish(self, entry: Entry, outcome: Outcome, response: StoredResponse, *, force: bool) -> Resolution:
        entry.state, entry.response = "done", response
        entry.redemption_ids = {o.code: o.redemption_id or 0 for o in outcome.codes if o.ok}
        return await self._resolve(entry, force=force)

    async def _resolve(self, entry: Entry, *, force: bool, unlock: bool = True) -> Resolution:
        """Record a final answer; when the ledger is down, the till still gets the answer and the record is
        written when the store is back (meanwhile this process answers replays of its key "in progress"). A record
        the replicas did not acknowledge is kept and written again until they do (see :meth:`_write`)."""
        try:
            resolution = await self.store.resolve(entry, self._ttl(entry), force=force, unlock=unlock)
        except StoreUnavailable:
            log.error("redemption_not_recorded_yet", ref=entry.ref, state=entry.state)
            self._defer(_Unwritten(entry, self._ttl(entry), final=True, force=force, since=self.monotonic()))
            return Resolution(False)
        self._release(entry.ref)  # an older answer still waiting for the store is superseded
        if resolution.unreplicated == UNACKNOWLEDGED and (resolution.written or resolution.current is not None):
            # The answer given (ours, or the one recorded first) is on the primary only: a failover now loses it.
            answer = resolution.current or entry
            item = _Unwritten(answer, self._ttl(answer), final=True, force=force, since=self.monotonic())
            item.written, item.primary = True, resolution.primary
            self._defer(item)
        if resolution.taken:
            # Written anyway (forced: Capillary answered this very request with these ids), but another record
            # holds one of them: that record adopted a redemption that was not its own.
            log.error(
                "redemption_ids_bound_elsewhere",
                ref=entry.ref,
                redemption_ids=sorted(resolution.taken),
                bound_to=sorted(set(resolution.taken.values())),
            )
        return resolution

    # ------------------------------------------------------------------------- writes the ledger missed

    def _defer(self, item: _Unwritten) -> None:
        item.entry = msgspec.structs.replace(item.entry)  # as it is now: the request goes on changing its own
        ref = item.entry.ref
        previous = self._unwritten.get(ref)
        if previous is not None and previous.final and not item.final:
            return  # a final answer waiting already: a pending one adds nothing
        if previous is not None:
            item.since = previous.since
            if previous.counted:  # the same answer's count goes on: deferred once
                if item.written:  # and the store took it now
                    self._release(ref)
                    previous = None
                else:
                    item.counted = True
        if item.written and previous is None and len(self._kept) >= self.kept_max:
            # On the primary, not acknowledged; kept no more past the cap (memory): the next failover may lose it.
            self.deferred_writes["unreplicated_not_kept"] += 1
            log.warning("redemption_not_kept_unreplicated", ref=ref, kept=len(self._kept))
            return
        if not item.written and not item.counted:
            item.counted = True
            self.deferred_writes["deferred"] += 1
        if self._closed:  # shut down: no writer runs any more
            self._give_up(item, why="closed")
            return
        self._unwritten[ref] = item
        self._unwritten_keys[item.entry.key] = ref
        if item.written:
            self._kept.add(ref)
        else:
            self._kept.discard(ref)
        self._schedule(item)
        if self._stopping:
            return  # the shutdown's last pass tries it
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_unwritten())
        elif self._pulse is not None and not self._pulse.done():
            self._pulse.set_result(None)

    def _schedule(self, item: _Unwritten) -> None:
        item.due = time.monotonic() + item.pause
        heapq.heappush(self._queue, (item.due, next(self._seq), item))

    async def _write_unwritten(self) -> None:
        """Write what the ledger missed, or its replicas do not hold yet, oldest due first, up to :data:`WRITERS`
        at once, each on a backoff of its own and for at most ``write_retry`` (checked before each try: one past
        it is given up, not tried once more). One that keeps failing (a Redis Cluster node gone that serves its
        slot) or is slow (a ``WAIT`` that runs its whole timeout) holds one place, not the answers behind it."""
        writing: set[asyncio.Task[bool]] = set()
        try:
            while self._unwritten or writing:
                now = time.monotonic()
                while self._queue and len(writing) < WRITERS and self._queue[0][0] <= now:
                    due, _, item = heapq.heappop(self._queue)
                    if self._unwritten.get(item.entry.ref) is not item or item.due != due:
                        continue  # written, replaced or scheduled again meanwhile
                    if self.monotonic() - item.since >= self.timing.write_retry:
                        self._give_up(item)
                        continue
                    writing.add(asyncio.create_task(self._try(item)))
                if not self._queue and not writing:
                    if not self._unwritten:
                        break
                    for item in self._unwritten.values():  # never left unscheduled
                        self._schedule(item)
                timeout = None
                if self._queue and len(writing) < WRITERS:
                    timeout = max(0.0, self._queue[0][0] - time.monotonic())
                self._pulse = pulse = asyncio.get_running_loop().create_future()
                waits: set[asyncio.Future[Any]] = {*writing, pulse}
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                pulse.cancel()
                writing = {task for task in writing if not task.done()}
            self._queue.clear()  # nothing held: what it still lists was written, replaced or given up
        finally:
            for task in writing:
                task.cancel()
            if writing:
                await asyncio.wait(writing)

    async def _try(self, item: _Unwritten) -> bool:
        """One try at writing ``item`` under its ref's guard (so the request that answered it is not writing it
        at the same moment); True when it is done with."""
        ref = item.entry.ref
        try:
            async with self._guard(ref):
                if self._unwritten.get(ref) is not item:
                    return True  # written, or replaced by a later answer, meanwhile
                done = await self._write(item)
        except StoreUnavailable:
            done = False
        except Exception as exc:  # one answer's write must not end the writer for all the others
            log.error("ledger_write_failed", ref=ref, error=type(exc).__name__)
            done = False
        if self._unwritten.get(ref) is not item:
            return True
        if done:
            self._release(ref)
        else:
            item.pause = min(item.pause * 2, WRITE_PAUSE_MAX)
            self._schedule(item)
        return done

    def _give_up(self, item: _Unwritten, *, why: str = "write_retry") -> None:
        """Stop writing ``item``: counted and logged (at shutdown the kept ones are logged together, not each)."""
        entry = item.entry
        if self._unwritten.get(entry.ref) is item:
            self._pop(entry.ref)
        if item.written:  # recorded on the primary, which may still hold it: not lost, not replicated
            self.deferred_writes["unreplicated_gave_up"] += 1
            if why != "shutdown":
                log.warning("redemption_left_unreplicated", ref=entry.ref, after=self.timing.write_retry)
            return
        self.deferred_writes["gave_up"] += 1
        item.counted = False
        log.error(
            "redemption_not_recorded",
            ref=entry.ref,
            why=why,
            gave_up_after=self.timing.write_retry,
            state=entry.state,
            codes=list(entry.command.codes),
            redemption_ids=entry.redemption_ids,
        )

    def _pop(self, ref: str) -> _Unwritten | None:
        item = self._unwritten.pop(ref, None)
        self._kept.discard(ref)
        if item is not None and self._unwritten_keys.get(item.entry.key) == ref:
            del self._unwritten_keys[item.entry.key]
        return item

    def _release(self, ref: str) -> None:
        """Done with ``ref``'s answer: the store holds it (or a later answer of the same ref)."""
        item = self._pop(ref)
        if item is not None:
            self._landed(item)

    def _landed(self, item: _Unwritten) -> None:
        """The store took a deferred answer (or another answer of its ref): counted ``written``, once."""
        if item.counted:
            item.counted = False
            self.deferred_writes["written"] += 1

    async def _write(self, item: _Unwritten) -> bool:
        """One try at writing ``item``; True once nothing more is to be done for it. A final answer is written
        with ``keep_final``: a final record already there (this one, or another answer recorded first) is left as
        it is, written again and adopted, so that what is written from then on is what the ledger holds (a
        reversal saved meanwhile included); only a ``failed`` one gives way, and only to a forced answer
        (Capillary's own). Done when the replicas acknowledge it, or when it is on a primary that a failover put
        in place and that has no replica to acknowledge it (it holds the record now, and a replica that joins it
        later copies the whole ledger)."""
        entry = item.entry
        if not item.final:
            if await self.store.save_unresolved(entry, item.ttl) is None:
                await self.store.lock(entry.command.codes, entry.ref, item.ttl)
            self._recorded_late(item)
            return True
        resolution = await self.store.resolve(entry, item.ttl, force=item.force, keep_final=True, again=item.written)
        current = resolution.current
        if current is not None:
            if (current.state, current.response) != (entry.state, entry.response):
                log.warning("ledger_holds_another_answer", ref=entry.ref, state=current.state)  # it stands
            item.entry, item.ttl = current, self._ttl(current)
        if not resolution.written and current is None:  # refused: its redemption ids are another record's
            self._recorded_late(item)
            return True
        if resolution.unreplicated is None:
            self._recorded_late(item)
            return True
        if resolution.unreplicated == UNACKNOWLEDGED:  # on this primary only: written again until replicated
            if not item.written:
                self._recorded_late(item)
                if len(self._kept) >= self.kept_max:
                    self.deferred_writes["unreplicated_not_kept"] += 1
                    log.warning("redemption_not_kept_unreplicated", ref=entry.ref, kept=len(self._kept))
                    return True
                item.written = True
                self._kept.add(entry.ref)
            item.primary = resolution.primary
            return False
        # A primary short of replicas: done if it took the record first, or if a failover put it in place.
        done = not item.written or resolution.primary != item.primary
        if done:
            self._recorded_late(item)
        return done

    def _recorded_late(self, item: _Unwritten) -> None:
        if item.written:
            log.info("redemption_replicated_late", ref=item.entry.ref)
        elif item.counted:
            self._landed(item)
            log.info("redemption_recorded_late", ref=item.entry.ref)

    # -------------------------------------------------------------------------------- replay, reconcile

    async def _replay_kept(self, kept: _Unwritten, fingerprint: str, request_id: str) -> Reply | None:
        """A replay of a key whose answer this process holds, not yet in the ledger (or not replicated): the
        ledger's final record when it has one, else "in progress" until the answer is written back."""
        if kept.written:
            with contextlib.suppress(StoreUnavailable):
                record = await self.store.load(kept.entry.ref)
                if record is not None and record.state in FINAL_STATES:
                    return await self._replay(record, fingerprint, request_id)
        raise Refused(CATALOG["REQUEST_IN_PROGRESS"], retry_after=1)

    async def _replay(self, entry: Entry, fingerprint: str, request_id: str) -> Reply | None:
        """The answer for a request whose key is taken; None when it turned out free to run again."""
        if entry.fingerprint != fingerprint:
            raise self._reused(entry)
        if entry.ref in self._unwritten and entry.state not in FINAL_STATES:  # its answer is here, not there yet
            raise Refused(CATALOG["REQUEST_IN_PROGRESS"], retry_after=1)
        if entry.state == "in_flight" and self.clock() < entry.lease_until:
            raise Refused(CATALOG["REQUEST_IN_PROGRESS"], retry_after=1)
        if entry.state in ("in_flight", "pending"):
            entry = await self.reconcile(entry)
        if entry.state == "failed":
            return None
        if entry.state == "in_flight":
            raise Refused(CATALOG["REQUEST_IN_PROGRESS"], retry_after=1)
        if entry.reversal is not None:  # what is true now: reversed, or being reversed
            response = self.render.reversed_redeem(entry, request_id)
            return Reply(response, replayed=True, ref=entry.ref, outcome="error", error_code="REDEMPTION_REVERSED")
        assert entry.response is not None
        return Reply(entry.response, replayed=True, ref=entry.ref)

    @staticmethod
    def _reused(entry: Entry) -> Refused:
        if is_natural(entry.key):  # the till sent no key: speak of what it did send
            number = entry.command.transaction_number
            message = (
                f"Transaction {number} was already sent with these coupons but another customer, bill amount, mode "
                "or redemption time: send it again unchanged, or use a new transaction number."
            )
            return Refused(CATALOG["TRANSACTION_REUSED"], message)
        return Refused(CATALOG["IDEMPOTENCY_KEY_REUSED"])

    async def reconcile(self, entry: Entry, *, limits: CallLimits = AMBIENT) -> Entry:
        """Ask Capillary whether this pending redemption went through; record what it says. ``limits``: those of
        the request that asks (a replay, a lookup, a reversal), or the sweeper's (none)."""
        if entry.ref in self._running or entry.ref in self._unwritten:
            return entry  # this very process is still at work on it, or holds its answer: nothing to conclude
        now = self.clock()
        if entry.state == "in_flight":
            if now < entry.lease_until:
                return entry  # its own request is still at work
            entry.state = "pending"  # the gateway that owned it is gone
            entry.response = self.render.pending(entry.ref, entry.command.command(), entry.request_id)
        if entry.state != "pending":
            return entry
        if now - entry.checked_at < self.timing.reconcile_gap:
            return entry  # asked very recently: spare Capillary's rate budget
        command = entry.command.command()
        entry.attempts += 1
        entry.checked_at = now
        try:
            found = await self.upstream.find_redemptions(
                command.customer, command.codes, command.transaction_number or "", limits=limits
            )
        except UpstreamFailure as exc:
            log.warning("reconcile_upstream_unavailable", ref=entry.ref, error_code=exc.failure.error.code)
            self.reconciliations["upstream_unavailable"] += 1
            return await self._save_if_unresolved(entry)
        ours = await self._ours(entry, found)
        if ours:
            outcome = await self._found_outcome(entry, command, ours, limits)
            response = self.render.outcome(outcome, command, entry.request_id)
            resolution = await self._finish(entry, outcome, response, force=False)
            if resolution.current is not None:
                return resolution.current  # resolved meanwhile: that answer stands
            if resolution.taken:  # another record bound one of them first: look again next time
                self.reconciliations["not_ours"] += 1
                entry.state, entry.redemption_ids = "pending", {}
                entry.response = self.render.pending(entry.ref, command, entry.request_id)
                return await self._save_if_unresolved(entry)
            self.reconciliations["redeemed"] += 1
            log.info("redemption_resolved", ref=entry.ref, outcome="redeemed")
        elif now >= entry.settle_after:
            entry.state = "failed"
            entry.response = self.render.not_applied(entry.ref, command, entry.request_id)
            resolution = await self._resolve(entry, force=False)
            if resolution.current is not None:
                return resolution.current
            self.reconciliations["not_applied"] += 1
            log.info("redemption_resolved", ref=entry.ref, outcome="not_applied")
        else:
            self.reconciliations["still_pending"] += 1
            return await self._save_if_unresolved(entry)
        return entry

    async def _ours(self, entry: Entry, found: dict[str, list[FoundRedemption]]) -> dict[str, int]:
        """Of the redemptions Capillary shows for this transaction, the one per code this request may adopt: not
        bound to another record, and not made before this request was claimed (when Capillary dates it)."""
        ids = sorted({r.id for rs in found.values() for r in rs if r.id > 0})
        owners = await self.store.owners(ids) if ids else {}
        earliest = entry.created_at - self.timing.clock_skew
        ours: dict[str, int] = {}
        for code in entry.command.codes:
            for redemption in sorted(found.get(code, ()), key=lambda r: r.id):
                if redemption.id > 0 and owners.get(redemption.id, entry.ref) != entry.ref:
                    continue  # another record's
                if redemption.latest is not None and redemption.latest.timestamp() < earliest:
                    continue  # made before this request existed
                ours[code] = redemption.id
                break
        if found and len(ours) < sum(1 for c in entry.command.codes if found.get(c)):
            self.reconciliations["not_ours"] += 1
            log.info("reconcile_found_another_requests_redemption", ref=entry.ref)
        return ours

    async def _save_if_unresolved(self, entry: Entry) -> Entry:
        """Record a still-pending entry, unless someone resolved it meanwhile (their answer wins)."""
        current = await self.store.save_unresolved(entry, self.timing.ttl)
        return entry if current is None else current

    async def _found_outcome(
        self, entry: Entry, command: RedemptionCommand, found: dict[str, int], limits: CallLimits
    ) -> Outcome:
        series = await self.series.for_codes(command.codes, limits=limits)
        not_here = Failure(CATALOG["COUPON_NOT_REDEEMABLE"], None, "Not redeemed in this transaction")
        codes = []
        for code in command.codes:
            known = series.get(code)
            outcome = CodeOutcome(code, series_id=known.id if known else None, rule=known.rule if known else None)
            if code in found:
                outcome.ok, outcome.redemption_id = True, found[code] or None
            else:
                outcome.failure = not_here
            codes.append(outcome)
        total = price(codes, command.bill_amount, lambda o: o.ok)
        return Outcome(codes, total_discount=total, ref=entry.ref)

    async def status(self, ref: str, *, store: str | None = None) -> Reply:
        """``GET /v1/redemptions/{ref}``: the recorded answer, reconciling a pending one first. With ``store``,
        only a redemption of that store is found."""
        unwritten, away = self._unwritten.get(ref), False
        try:
            if unwritten is not None and not unwritten.written:
                entry: Entry | None = unwritten.entry  # the answer we hold
            else:
                entry = await self.store.load(ref)
        except StoreUnavailable:
            if unwritten is None and ref not in self._running:
                raise
            entry = None
            away = unwritten is None
            if away:
                entry = self._running[ref]  # the ledger is away; this process is still at work on it
        if unwritten is not None and (entry is None or entry.state not in FINAL_STATES):
            entry = unwritten.entry  # not (or not yet again) in the ledger: the answer we hold
        if entry is None and self.offline is not None and (body := await self.offline.answer(ref, store)):
            return Reply(StoredResponse("provisional", body), ref=ref, lookup=True)
        if entry is None or (store is not None and entry.command.store != store):
            raise Refused(CATALOG["REDEMPTION_NOT_FOUND"])
        if away:
            response = self.render.pending(entry.ref, entry.command.command(), entry.request_id)
            return Reply(response, ref=ref, lookup=True)
        if entry.state in ("in_flight", "pending"):
            entry = await self.reconcile(entry)
        if entry.reversal is not None and entry.reversal.state == "done" and entry.reversal.response:
            return Reply(entry.reversal.response, ref=ref, lookup=True)
        if entry.response is None:  # in flight, within its lease
            response = self.render.pending(entry.ref, entry.command.command(), entry.request_id)
            return Reply(response, ref=ref, lookup=True)
        return Reply(entry.response, ref=ref, lookup=True)

    async def sweep(self) -> int:
        """Reconcile every unresolved entry whose owner is done with it; returns how many were looked at."""
        looked = 0
        unresolved = await self.store.unresolved()
        self.pending_count = len(unresolved)
        for ref in unresolved:
            entry = await self.store.load(ref)
            if entry is None or ref in self._guards:
                continue
            if entry.state == "in_flight" and self.clock() < entry.lease_until:
                continue
            looked += 1
            try:
                await self.reconcile(entry, limits=BACKGROUND)
            except Exception:
                log.exception("reconcile_failed", ref=ref)
        return looked

    def start_sweeper(self, interval: float) -> None:
        self._sweeper = asyncio.create_task(self.run_sweeper(interval))

    async def run_sweeper(self, interval: float) -> None:
        while not self._stopping:
            try:
                await self.sweep()
            except StoreUnavailable as exc:
                log.warning("sweeper_store_unavailable", error=str(exc))
            if not self._stopping:
                await asyncio.sleep(interval)

    async def close(self) -> None:
        """Stop the sweeper; wait (bounded) for redeems still running: what is cut off stays pending for the
        sweepers of the other replicas. Answers the ledger missed, and those kept for its replicas, get a last
        chance to be written: each tried once, up to :data:`WRITERS` at once, within ``lease_margin``."""
        self._stopping = True
        await _stop(self._sweeper)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.timing.deadline)
        for task in list(self._tasks):
            task.cancel()
        await _stop(self._writer)
        await self._last_pass()
        self._closed = True
        left = list(self._unwritten.values())
        for item in left:
            self._give_up(item, why="shutdown")
        if unwritten := sorted(i.entry.ref for i in left if not i.written):
            log.error("shutdown_with_answers_not_recorded", count=len(unwritten), refs=unwritten[:LOGGED_REFS])
        if kept := sorted(i.entry.ref for i in left if i.written):
            log.warning("shutdown_with_answers_not_replicated", count=len(kept), refs=kept[:LOGGED_REFS])

    async def _last_pass(self) -> None:
        """Every answer held, tried once (due or not), at most :data:`WRITERS` at once, within ``lease_margin``."""
        if not self._unwritten:
            return
        gate = asyncio.Semaphore(WRITERS)

        async def once(item: _Unwritten) -> None:
            async with gate:
                await self._try(item)

        tries = [asyncio.create_task(once(item)) for item in list(self._unwritten.values())]
        await asyncio.wait(tries, timeout=self.timing.lease_margin)
        for task in tries:
            await _stop(task)

    # ------------------------------------------------------------------------------------------- reversal

    async def reverse(self, ref: str, key: str | None, request_id: str, *, store: str | None = None) -> Reply:
        owner = f"reversal:{new_ref()}"
        guard = [f"reversal:{ref}"]
        if await self.store.lock(guard, owner, self.timing.hard_limit):
            raise Refused(CATALOG["REQUEST_IN_PROGRESS"], retry_after=1)
        try:
            entry = await self.store.load(ref)  # read under the guard: another reversal may just have ended
            if entry is None or (store is not None and entry.command.store != store):
                raise Refused(CATALOG["REDEMPTION_NOT_FOUND"])
            if entry.state in ("in_flight", "pending"):
                entry = await self.reconcile(entry)
            if entry.state in ("in_flight", "pending"):
                raise Refused(CATALOG["REDEMPTION_PENDING"], retry_after=5)
            reversal = entry.reversal
            if reversal is not None and reversal.state == "done" and reversal.response is not None:
                if key is None or key == reversal.key:
                    return Reply(reversal.response, replayed=True, ref=ref)
                raise Refused(CATALOG["ALREADY_REVERSED"])
            if self.offline is not None and entry.state == "done" and not entry.redemption_ids:
                codes = dict.fromkeys(entry.command.codes, 0)
                cancelled = self.render.reversed(entry.ref, codes, request_id)
                if (response := await self.offline.reverse(entry, key, cancelled)) is not None:
                    return Reply(response, ref=ref)
            if entry.state == "failed" or not entry.redemption_ids:
                raise Refused(CATALOG["NOTHING_TO_REVERSE"])
            return await self._reactivate(entry, key, request_id)
        finally:
            await self.store.unlock(guard, owner)

    async def _reactivate(self, entry: Entry, key: str | None, request_id: str) -> Reply:
        ids = [i for i in entry.redemption_ids.values() if i > 0]
        if not ids:
            raise UpstreamFailure(Failure(CATALOG["NOTHING_TO_REVERSE"], None, "no redemption ids known"))
        previous = entry.reversal
        tried_before = previous is not None and previous.state in ("unknown", "in_flight")
        # Recorded before the call: from now on a replay of the redeem must not be answered "redeemed".
        entry.reversal = Reversal(state="in_flight", key=key, at=self.clock())
        await self.store.save(entry, self.timing.ttl)
        try:
            await self.upstream.reactivate(ids)
        except UpstreamFailure as exc:
            # The upstream no longer knows these redemptions as active: our earlier attempt went through.
            already = tried_before and exc.failure.error.code == "REDEMPTION_NOT_FOUND"
            if not already:
                # Maybe applied: it stays "unknown" until a retry settles it; refused: the redemption stands.
                entry.reversal = Reversal(state="unknown", key=key, at=self.clock()) if exc.maybe_applied else previous
                await self.store.save(entry, self.timing.ttl)
                raise
        response = self.render.reversed(entry.ref, entry.redemption_ids, request_id)
        entry.reversal = Reversal(state="done", key=key, response=response, at=self.clock())
        await self.store.save(entry, self.timing.ttl)
        return Reply(response, ref=entry.ref)
