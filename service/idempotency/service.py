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
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from service.deadline import DEADLINE, URGENT, time_left
from service.idempotency.models import Entry, Reversal, StoredCommand, StoredResponse
from service.idempotency.store import LedgerStore, StoreUnavailable
from service.redemption.catalog import CATALOG, LocalError
from service.redemption.flow import RedemptionFlow, UpstreamFailure, new_ref, price
from service.redemption.models import CodeOutcome, CustomerRef, Failure, Outcome, RedemptionCommand, SeriesSummary

log = logging.getLogger("service.idempotency")


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


class Reconciling(Protocol):
    """What reconciliation asks the upstream and the series cache."""

    async def find_redemptions(
        self, customer: CustomerRef, codes: tuple[str, ...], transaction_number: str
    ) -> dict[str, int]: ...

    async def reactivate(self, redemption_ids: list[int]) -> None: ...


class SeriesLookup(Protocol):
    async def for_codes(self, codes: tuple[str, ...]) -> dict[str, SeriesSummary]: ...


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    replayed: bool = False
    ref: str | None = None
    # what it says, for metrics and the log line (not for replays)
    outcome: str = "unknown"
    error_code: str | None = None
    redeemed: int = 0
    discount: Decimal = Decimal(0)


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

    @property
    def hard_limit(self) -> float:
        """No redeem work of ours runs longer than this after its request started."""
        return self.deadline + self.upstream_timeout + self.lease_margin

    @property
    def settle(self) -> float:
        """Time after which no call of ours, started within the hard limit, can still reach Capillary."""
        return self.hard_limit + self.upstream_timeout


@dataclass
class ExactlyOnce:
    flow: RedemptionFlow
    store: LedgerStore
    upstream: Reconciling
    series: SeriesLookup
    render: Renderer
    timing: Timing = field(default_factory=Timing)
    clock: Callable[[], float] = time.time
    _guards: dict[str, asyncio.Lock] = field(default_factory=dict)
    _tasks: set[asyncio.Task[Reply]] = field(default_factory=set)
    # read by the metrics collector
    pending_count: int = 0
    reconciliations: collections.Counter[str] = field(default_factory=collections.Counter)

    # ------------------------------------------------------------------------------------------ redeem

    async def redeem(self, command: RedemptionCommand, key: str, request_id: str) -> Reply:
        stored = StoredCommand.of(command)
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
            existing = await self.store.claim(entry, self.timing.ttl)
            if existing is None:
                return await self._first(entry, command)
            reply = await self._replay(existing, entry.fingerprint)
            if reply is not None:
                return reply
        raise Refused(CATALOG["REQUEST_IN_PROGRESS"], retry_after=1)

    async def _first(self, entry: Entry, command: RedemptionCommand) -> Reply:
        try:
            busy = await self.store.lock(command.codes, entry.ref, self.timing.hard_limit)
        except StoreUnavailable:
            with contextlib.suppress(StoreUnavailable):
                await self._drop(entry)
            raise
        if busy:
            await self._drop(entry, locked=False)
            message = f"Coupon {busy[0]} is being redeemed in another transaction right now."
            raise Refused(CATALOG["COUPON_IN_USE"], message, retry_after=1)
        task = asyncio.create_task(self._run(entry, command))
        self._tasks.add(task)
        task.add_done_callback(self._settled)
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

    async def _run(self, entry: Entry, command: RedemptionCommand) -> Reply:
        sent = False

        def on_send() -> None:
            nonlocal sent
            sent = True

        # This task outlives the till's wait when it must (the till then has 202 pending): its upstream calls are
        # bounded by the redeem's own hard limit, not by the request's deadline, so a redeem sent is not cut short.
        limit = self.timing.hard_limit - self.timing.lease_margin
        DEADLINE.set(time.monotonic() + limit)
        URGENT.set(True)
        try:
            async with asyncio.timeout(limit):
                outcome = await self.flow.redeem(command, ref=entry.ref, on_send=on_send)
        except UpstreamFailure as exc:
            if sent and exc.maybe_applied:
                async with self._guard(entry.ref):
                    return await self._pend(entry)
            await self._drop(entry)  # nothing was applied: the till may simply try again
            raise
        except TimeoutError:
            if sent:
                async with self._guard(entry.ref):
                    return await self._pend(entry)
            await self._drop(entry)
            raise UpstreamFailure(Failure(CATALOG["UPSTREAM_TIMEOUT"])) from None
        response = self.render.outcome(outcome, command, entry.request_id)
        async with self._guard(entry.ref):
            await self._finish(entry, outcome, response)
        return Reply(response.status, response.body, ref=entry.ref, **_summary(outcome))

    def _settled(self, task: asyncio.Task[Reply]) -> None:
        """A redeem that outlived its till's deadline ends with nobody awaiting it: its error is logged here."""
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None and not isinstance(error, Refused):
            log.info("redeem finished after its deadline with %s", type(error).__name__)

    # ------------------------------------------------------------------------------------ transitions

    @contextlib.asynccontextmanager
    async def _guard(self, ref: str) -> AsyncIterator[None]:
        """Serialises this process's own writes to one entry (the request and its deadline)."""
        lock = self._guards.setdefault(ref, asyncio.Lock())
        async with lock:
            yield
        if not lock.locked():
            self._guards.pop(ref, None)

    async def _drop(self, entry: Entry, *, locked: bool = True) -> None:
        """Forget an attempt that applied nothing: free its key and codes. Its record says so."""
        entry.state = "failed"
        entry.response = self.render.not_applied(entry.ref, entry.command.command(), entry.request_id)
        await self.store.save(entry, self.timing.ttl)
        await self.store.release_key(entry.key, entry.ref)
        if locked:
            await self.store.unlock(entry.command.codes, entry.ref)

    async def _pend(self, entry: Entry) -> Reply:
        current = await self.store.load(entry.ref)
        if current is not None and current.state in ("done", "failed"):
            assert current.response is not None
            return Reply(current.response.status, current.response.body, ref=entry.ref)
        response = self.render.pending(entry.ref, entry.command.command(), entry.request_id)
        entry.state, entry.response = "pending", response
        await self.store.save(entry, self.timing.ttl)
        await self.store.lock(entry.command.codes, entry.ref, self.timing.ttl)  # held until resolved
        log.warning("redemption %s pending: outcome unknown, reconciling", entry.ref)
        return Reply(response.status, response.body, ref=entry.ref, outcome="pending")

    async def _finish(self, entry: Entry, outcome: Outcome, response: StoredResponse) -> None:
        entry.state, entry.response = "done", response
        entry.redemption_ids = {o.code: o.redemption_id or 0 for o in outcome.codes if o.ok}
        try:
            await self.store.save(entry, self.timing.ttl)
        except StoreUnavailable:
            # The answer is true and goes to the till; the entry stays in flight until its lease runs out,
            # and reconciliation then finds this very redemption.
            log.error("redemption %s done but not recorded: the ledger is unavailable", entry.ref)
            return
        await self.store.unlock(entry.command.codes, entry.ref)

    # -------------------------------------------------------------------------------- replay, reconcile

    async def _replay(self, entry: Entry, fingerprint: str) -> Reply | None:
        """The answer for a request whose key is taken; None when it turned out free to run again."""
        if entry.fingerprint != fingerprint:
            raise Refused(CATALOG["IDEMPOTENCY_KEY_REUSED"])
        if entry.state == "in_flight" and self.clock() < entry.lease_until:
            raise Refused(CATALOG["REQUEST_IN_PROGRESS"], retry_after=1)
        if entry.state in ("in_flight", "pending"):
            entry = await self.reconcile(entry)
        if entry.state == "failed":
            return None
        if entry.state == "in_flight":
            raise Refused(CATALOG["REQUEST_IN_PROGRESS"], retry_after=1)
        assert entry.response is not None
        return Reply(entry.response.status, entry.response.body, replayed=True, ref=entry.ref)

    async def reconcile(self, entry: Entry) -> Entry:
        """Ask Capillary whether this pending redemption went through; record what it says."""
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
                command.customer, command.codes, command.transaction_number or ""
            )
        except UpstreamFailure as exc:
            log.warning("reconciling %s: upstream unavailable (%s)", entry.ref, exc.failure.error.code)
            self.reconciliations["upstream_unavailable"] += 1
            return await self._save_if_unresolved(entry)
        if found:
            outcome = await self._found_outcome(entry, command, found)
            response = self.render.outcome(outcome, command, entry.request_id)
            await self._finish(entry, outcome, response)
            self.reconciliations["redeemed"] += 1
            log.info("redemption %s resolved: redeemed", entry.ref)
        elif now >= entry.settle_after:
            await self._drop(entry)
            self.reconciliations["not_applied"] += 1
            log.info("redemption %s resolved: not applied", entry.ref)
        else:
            self.reconciliations["still_pending"] += 1
            return await self._save_if_unresolved(entry)
        return entry

    async def _save_if_unresolved(self, entry: Entry) -> Entry:
        """Record a still-pending entry, unless someone resolved it meanwhile (their answer wins)."""
        current = await self.store.load(entry.ref)
        if current is not None and current.state in ("done", "failed"):
            return current
        await self.store.save(entry, self.timing.ttl)
        return entry

    async def _found_outcome(self, entry: Entry, command: RedemptionCommand, found: dict[str, int]) -> Outcome:
        series = await self.series.for_codes(command.codes)
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
        entry = await self.store.load(ref)
        if entry is None or (store is not None and entry.command.store != store):
            raise Refused(CATALOG["REDEMPTION_NOT_FOUND"])
        if entry.state in ("in_flight", "pending"):
            entry = await self.reconcile(entry)
        if entry.reversal is not None and entry.reversal.state == "done" and entry.reversal.response:
            return Reply(200, entry.reversal.response.body, ref=ref)
        if entry.response is None:  # in flight, within its lease
            response = self.render.pending(entry.ref, entry.command.command(), entry.request_id)
            return Reply(200, response.body, ref=ref)
        return Reply(200, entry.response.body, ref=ref)

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
                await self.reconcile(entry)
            except Exception:
                log.exception("reconciling %s failed", ref)
        return looked

    async def run_sweeper(self, interval: float) -> None:
        while True:
            try:
                await self.sweep()
            except StoreUnavailable as exc:
                log.warning("sweeper: %s", exc)
            await asyncio.sleep(interval)

    async def close(self) -> None:
        """Wait (bounded) for redeems still running; what is cut off stays pending for the sweeper."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.timing.deadline)
        for task in list(self._tasks):
            task.cancel()

    # ------------------------------------------------------------------------------------------- reversal

    async def reverse(self, ref: str, key: str | None, request_id: str, *, store: str | None = None) -> Reply:
        entry = await self.store.load(ref)
        if entry is None or (store is not None and entry.command.store != store):
            raise Refused(CATALOG["REDEMPTION_NOT_FOUND"])
        if entry.state in ("in_flight", "pending"):
            entry = await self.reconcile(entry)
        if entry.state in ("in_flight", "pending"):
            raise Refused(CATALOG["REDEMPTION_PENDING"], retry_after=5)
        if entry.state == "failed" or not entry.redemption_ids:
            raise Refused(CATALOG["NOTHING_TO_REVERSE"])
        reversal = entry.reversal
        if reversal is not None and reversal.state == "done" and reversal.response is not None:
            if key is None or key == reversal.key:
                return Reply(reversal.response.status, reversal.response.body, replayed=True, ref=ref)
            raise Refused(CATALOG["ALREADY_REVERSED"])
        owner = f"reversal:{new_ref()}"
        guard = [f"reversal:{ref}"]
        if await self.store.lock(guard, owner, self.timing.hard_limit):
            raise Refused(CATALOG["REQUEST_IN_PROGRESS"], retry_after=1)
        try:
            return await self._reactivate(entry, key, request_id)
        finally:
            await self.store.unlock(guard, owner)

    async def _reactivate(self, entry: Entry, key: str | None, request_id: str) -> Reply:
        ids = [i for i in entry.redemption_ids.values() if i > 0]
        tried_before = entry.reversal is not None and entry.reversal.state == "unknown"
        try:
            if not ids:
                raise UpstreamFailure(Failure(CATALOG["NOTHING_TO_REVERSE"], None, "no redemption ids known"))
            await self.upstream.reactivate(ids)
        except UpstreamFailure as exc:
            already = tried_before and exc.failure.upstream_code == 510  # our earlier attempt went through
            if not already:
                if exc.maybe_applied:
                    entry.reversal = Reversal(state="unknown", key=key, at=self.clock())
                    await self.store.save(entry, self.timing.ttl)
                raise
        response = self.render.reversed(entry.ref, entry.redemption_ids, request_id)
        entry.reversal = Reversal(state="done", key=key, response=response, at=self.clock())
        await self.store.save(entry, self.timing.ttl)
        return Reply(response.status, response.body, ref=entry.ref)
