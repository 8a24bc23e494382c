"""The exactly-once state machine as a table: one row per transition, (start state, event, expected state,
expected reply), on a clock moved by hand, the in-memory ledger and a scripted upstream. No sleeps: the till's
deadline is reached by giving the request no time left, lease expiry and settling by moving the clock.

States are those of the record the reply names (else the start's), with whether its idempotency key is still
held: ``in_flight``, ``pending``, ``done``, ``failed`` (the key released), and a ``done`` record's reversal
(``/reversing`` while its outcome is unknown, ``/reversed``). Replies are what the ledger says, in the domain's
words (the web layer picks the HTTP status): the answer (``replayed`` when replayed), ``lookup:<status>`` for
``GET /v1/redemptions/{ref}``, ``refused:<code>`` for the exactly-once rules' refusals, ``raised:<code>`` for an
upstream failure the till is told of, ``-`` for the sweeper (no till).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal as D
from typing import Literal

import msgspec
import pytest

from service.deadline import DEADLINE
from service.idempotency.models import (
    Entry,
    FoundRedemption,
    StoredCommand,
    entry_decoder,
    entry_encoder,
    natural_key,
)
from service.idempotency.service import ExactlyOnce, Refused, Reply, Timing
from service.idempotency.store import MemoryStore, StoreUnavailable
from service.redemption.catalog import CATALOG
from service.redemption.flow import AMBIENT, CallLimits, Redeemed, RedemptionFlow, UpstreamFailure, Verdict, new_ref
from service.redemption.models import CustomerRef, Failure, RedemptionCommand, SeriesSummary
from service.web.redemptions import JsonRenderer, answer_status

TIMING = Timing(deadline=5.0, upstream_timeout=8.0, lease_margin=1.0, reconcile_gap=0.0)
LEASE = TIMING.hard_limit  # 14 s: an in-flight record's owner is presumed gone after it
SETTLE = TIMING.settle  # 22 s: no call of ours can still reach Capillary after it
KEY = "key:S1:k-1"
COMMAND = RedemptionCommand(CustomerRef("mobile", "919900000001"), ("A",), D(1000), "T-1", store="S1")
OTHER_BODY = RedemptionCommand(CustomerRef("mobile", "919900000001"), ("A",), D(2000), "T-1", store="S1")
OTHER_SALE = RedemptionCommand(CustomerRef("mobile", "919900000001"), ("A",), D(1000), "T-2", store="S1")
USED = Failure(CATALOG["COUPON_ALREADY_REDEEMED"], 711, "Coupon is already used")

RedeemAs = Literal["ok", "refuse", "lost", "lost_applied", "down", "hold"]
ReactivateAs = Literal["ok", "lost", "gone"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class ScriptedUpstream:
    """Checks pass; a redeem does what ``redeem_as`` says. Reconciliation sees what was applied."""

    def __init__(self) -> None:
        self.redeem_as: RedeemAs = "ok"
        self.reactivate_as: ReactivateAs = "ok"
        self.applied: dict[str, list[FoundRedemption]] = {}
        self.reactivated: list[int] = []
        self.sent = asyncio.Event()
        self.release = asyncio.Event()
        self.redeems = 0
        self.limits: list[tuple[str, CallLimits]] = []  # each call's name and the limits it was given

    def _apply(self, codes: Sequence[str]) -> dict[str, Redeemed]:
        self.redeems += 1
        ids = {c: 700 + self.redeems * 10 + i for i, c in enumerate(codes)}
        for code, rid in ids.items():
            self.applied.setdefault(code, []).append(FoundRedemption(rid))
        return {c: Redeemed(True, redemption_id=i) for c, i in ids.items()}

    async def check(
        self, customer: CustomerRef, codes: Sequence[str], *, store: str | None, limits: CallLimits = AMBIENT
    ) -> dict[str, Verdict]:
        self.limits.append(("check", limits))
        return {c: Verdict(True) for c in codes}

    async def redeem(
        self, command: RedemptionCommand, codes: Sequence[str], *, limits: CallLimits = AMBIENT
    ) -> dict[str, Redeemed]:
        self.limits.append(("redeem", limits))
        self.sent.set()
        match self.redeem_as:
            case "ok":
                return self._apply(codes)
            case "refuse":
                return {c: Redeemed(False, USED) for c in codes}
            case "lost":  # sent; no answer came; nothing was applied
                raise UpstreamFailure(Failure(CATALOG["UPSTREAM_TIMEOUT"]), maybe_applied=True)
            case "lost_applied":  # sent; applied; its answer was lost
                self._apply(codes)
                raise UpstreamFailure(Failure(CATALOG["UPSTREAM_TIMEOUT"]), maybe_applied=True)
            case "down":  # refused at connect: certainly not applied
                raise UpstreamFailure(Failure(CATALOG["UPSTREAM_UNAVAILABLE"]))
            case "hold":
                await self.release.wait()
                return self._apply(codes)

    async def find_redemptions(
        self, customer: CustomerRef, codes: tuple[str, ...], transaction_number: str, *, limits: CallLimits = AMBIENT
    ) -> dict[str, list[FoundRedemption]]:
        self.limits.append(("find_redemptions", limits))
        return {c: list(self.applied[c]) for c in codes if c in self.applied}

    async def reactivate(self, redemption_ids: list[int], *, limits: CallLimits = AMBIENT) -> None:
        self.limits.append(("reactivate", limits))
        match self.reactivate_as:
            case "ok":
                self.reactivated += redemption_ids
            case "lost":  # applied, its answer lost
                self.reactivated += redemption_ids
                raise UpstreamFailure(Failure(CATALOG["UPSTREAM_TIMEOUT"]), maybe_applied=True)
            case "gone":  # Capillary knows no such active redemption (its 510)
                raise UpstreamFailure(Failure(CATALOG["REDEMPTION_NOT_FOUND"], 510, "Invalid redemption ids"))


class NoSeries:
    async def known(self, codes: Sequence[str], *, limits: CallLimits = AMBIENT) -> dict[str, SeriesSummary]:
        return {}

    async def by_ids(self, ids: Iterable[int], *, limits: CallLimits = AMBIENT) -> dict[int, SeriesSummary]:
        return {}

    async def for_codes(self, codes: Sequence[str], *, limits: CallLimits = AMBIENT) -> dict[str, SeriesSummary]:
        return {}

    async def remember(self, code_series: dict[str, int]) -> None:
        return None


class NotingStore(MemoryStore):
    """The in-memory ledger, noting each ref a redeem starts under (a refused or raised reply names none)."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.begun: list[str] = []

    async def begin(
        self, entry: Entry, ttl: float, lock_ttl: float, *, legacy_key: str | None = None
    ) -> tuple[Entry | None, list[str]]:
        self.begun.append(entry.ref)
        return await super().begin(entry, ttl, lock_ttl, legacy_key=legacy_key)


class Machine:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.store = NotingStore(self.clock)
        self.upstream = ScriptedUpstream()
        series = NoSeries()
        flow = RedemptionFlow(self.upstream, series)
        self.ledger = ExactlyOnce(flow, self.store, self.upstream, series, JsonRenderer(), TIMING, self.clock)
        self.key = KEY
        self.ref: str | None = None  # the start's record
        self.first: Reply | None = None  # the start's answer, when it has one
        self.till: asyncio.Task[Reply] | None = None  # a till still waiting for its answer

    async def redeem(self, command: RedemptionCommand = COMMAND, key: str | None = None) -> Reply:
        return await self.ledger.redeem(command, key or self.key, f"req-{new_ref()}")

    async def close(self) -> None:
        self.upstream.release.set()
        if self.till is not None:
            await self.till
        await self.ledger.close()


# ------------------------------------------------------------------------------------------------ start states

Step = Callable[[Machine], Awaitable[Reply | None]]


def redeemed_as(how: RedeemAs) -> Step:
    async def step(m: Machine) -> Reply:
        m.upstream.redeem_as = how
        return await m.redeem()

    return step


async def _free(m: Machine) -> None:
    return None


async def _answered(m: Machine, how: RedeemAs) -> None:
    m.first = await redeemed_as(how)(m)
    m.ref = m.first.ref


async def _done(m: Machine) -> None:
    await _answered(m, "ok")


async def _done_natural(m: Machine) -> None:
    m.key = natural_key(COMMAND, "till-1")
    await _answered(m, "ok")


async def _rejected(m: Machine) -> None:
    await _answered(m, "refuse")


async def _pending(m: Machine) -> None:
    await _answered(m, "lost")


async def _pending_applied(m: Machine) -> None:
    await _answered(m, "lost_applied")


async def _failed(m: Machine) -> None:
    await _pending(m)
    m.clock.now += SETTLE
    await m.ledger.sweep()


async def _in_flight_here(m: Machine) -> None:
    """This process's redeem is with Capillary; its till still waits."""
    m.upstream.redeem_as = "hold"
    m.till = asyncio.create_task(m.redeem())
    await m.upstream.sent.wait()
    m.ref = m.store.begun[-1]


async def _claimed_elsewhere(m: Machine, *, applied: bool, lease_over: bool) -> None:
    """Another gateway claimed the request and was at work on it (or died: its lease ran out)."""
    now = m.clock()
    stored = StoredCommand.of(COMMAND)
    entry = Entry(
        ref=new_ref(),
        key=m.key,
        fingerprint=stored.fingerprint(),
        state="in_flight",
        command=stored,
        request_id="req-elsewhere",
        created_at=now,
        lease_until=now + LEASE,
        settle_after=now + SETTLE,
    )
    assert await m.store.begin(entry, TIMING.ttl, LEASE) == (None, [])
    m.ref = entry.ref
    if applied:
        m.upstream._apply(COMMAND.codes)
    if lease_over:
        m.clock.now += LEASE


async def _in_flight_elsewhere(m: Machine) -> None:
    await _claimed_elsewhere(m, applied=False, lease_over=False)


async def _lease_expired(m: Machine) -> None:
    await _claimed_elsewhere(m, applied=False, lease_over=True)


async def _lease_expired_applied(m: Machine) -> None:
    await _claimed_elsewhere(m, applied=True, lease_over=True)


async def _reversing(m: Machine) -> None:
    """Reversed upstream, but the answer was lost: the outcome of the reversal is unknown."""
    await _done(m)
    m.upstream.reactivate_as = "lost"
    with pytest.raises(UpstreamFailure):
        await m.ledger.reverse(m.ref or "", None, "req-rev")


async def _reversed(m: Machine) -> None:
    await _done(m)
    await m.ledger.reverse(m.ref or "", None, "req-rev")


START: dict[str, Callable[[Machine], Awaitable[None]]] = {
    "free": _free,
    "in_flight (here)": _in_flight_here,
    "in_flight (elsewhere)": _in_flight_elsewhere,
    "in_flight (lease over)": _lease_expired,
    "in_flight (lease over, applied)": _lease_expired_applied,
    "pending": _pending,
    "pending (applied)": _pending_applied,
    "done": _done,
    "done (natural key)": _done_natural,
    "done (rejected)": _rejected,
    "failed": _failed,
    "done/reversing": _reversing,
    "done/reversed": _reversed,
}

# ----------------------------------------------------------------------------------------------------- events


def later(seconds: float, step: Step) -> Step:
    async def moved(m: Machine) -> Reply | None:
        m.clock.now += seconds
        return await step(m)

    return moved


async def replay(m: Machine) -> Reply:
    return await m.redeem()


async def at_deadline(m: Machine) -> Reply:
    """A redeem still with Capillary when its till's deadline comes."""
    m.upstream.redeem_as = "hold"
    token = DEADLINE.set(time.monotonic())  # no time left
    try:
        return await m.redeem()
    finally:
        DEADLINE.reset(token)


async def other_body(m: Machine) -> Reply:
    return await m.redeem(OTHER_BODY)


async def other_sale(m: Machine) -> Reply:
    """Another transaction on the same code, under its own key."""
    return await m.redeem(OTHER_SALE, key="key:S1:k-2")


async def status(m: Machine) -> Reply:
    return await m.ledger.status(m.ref or new_ref())


def reverse_as(how: ReactivateAs, key: str | None = None) -> Step:
    async def step(m: Machine) -> Reply:
        m.upstream.reactivate_as = how
        return await m.ledger.reverse(m.ref or new_ref(), key, "req-rev-2")

    return step


async def sweep(m: Machine) -> None:
    await m.ledger.sweep()


# ------------------------------------------------------------------------------------------------------ table


@dataclass(frozen=True)
class Row:
    start: str
    event: Step
    state: str
    reply: str
    id: str


ROWS = [
    # claim -> an answer
    Row("free", redeemed_as("ok"), "done; key held", "redeemed", "claim, redeemed"),
    Row("free", redeemed_as("refuse"), "done; key held", "rejected", "claim, refused upstream"),
    Row("free", redeemed_as("down"), "failed; key free", "raised:UPSTREAM_UNAVAILABLE", "claim, not sent: released"),
    Row("free", redeemed_as("lost"), "pending; key held", "pending", "claim, answer lost: pending"),
    Row("free", at_deadline, "pending; key held", "pending", "claim, still running at the deadline: pending"),
    Row("free", status, "none", "refused:REDEMPTION_NOT_FOUND", "status of an unknown ref"),
    # in flight
    Row("in_flight (here)", replay, "in_flight; key held", "refused:REQUEST_IN_PROGRESS", "in flight, replay"),
    Row("in_flight (here)", other_sale, "in_flight; key held", "refused:COUPON_IN_USE", "in flight, code locked"),
    Row("in_flight (here)", status, "in_flight; key held", "lookup:pending", "in flight, status"),
    Row(
        "in_flight (here)",
        later(SETTLE * 10, status),
        "in_flight; key held",
        "lookup:pending",
        "in flight here, clock far past settle: never concluded while its call runs",
    ),
    Row("in_flight (elsewhere)", replay, "in_flight; key held", "refused:REQUEST_IN_PROGRESS", "other gateway's"),
    Row("in_flight (elsewhere)", sweep, "in_flight; key held", "-", "other gateway's, within its lease: not swept"),
    # lease expiry
    Row("in_flight (lease over)", replay, "pending; key held", "pending replayed", "lease over, replay: pending"),
    Row("in_flight (lease over)", sweep, "pending; key held", "-", "lease over, sweep: pending"),
    Row(
        "in_flight (lease over, applied)", replay, "done; key held", "redeemed replayed", "lease over, found: resolved"
    ),
    # pending
    Row("pending", replay, "pending; key held", "pending replayed", "pending, replay before settle"),
    Row("pending", other_sale, "pending; key held", "refused:COUPON_IN_USE", "pending keeps its codes locked"),
    Row("pending", status, "pending; key held", "lookup:pending", "pending, status"),
    Row("pending", reverse_as("ok"), "pending; key held", "refused:REDEMPTION_PENDING", "pending, reversal"),
    Row("pending (applied)", replay, "done; key held", "redeemed replayed", "pending, found: resolved"),
    Row("pending (applied)", sweep, "done; key held", "-", "pending, found by the sweeper: resolved"),
    Row("pending (applied)", status, "done; key held", "lookup:redeemed", "pending, found on status: resolved"),
    Row("pending", later(SETTLE, sweep), "failed; key free", "-", "pending, settled, not found: failed"),
    Row(
        "pending",
        later(SETTLE, redeemed_as("ok")),
        "done; key held",
        "redeemed",
        "pending, settled, not found, replay: released and run again",
    ),
    # failed
    Row("failed", status, "failed; key free", "lookup:failed", "failed, status"),
    Row("failed", redeemed_as("ok"), "done; key held", "redeemed", "failed, the request runs again"),
    # done: replays and conflicting payloads
    Row("done", replay, "done; key held", "redeemed replayed", "done, replay"),
    Row("done (rejected)", replay, "done; key held", "rejected replayed", "rejected, replay"),
    Row("done", other_body, "done; key held", "refused:IDEMPOTENCY_KEY_REUSED", "done, same key, other body"),
    Row("done (natural key)", other_body, "done; key held", "refused:TRANSACTION_REUSED", "natural key, other body"),
    Row("done", status, "done; key held", "lookup:redeemed", "done, status"),
    Row("done (rejected)", reverse_as("ok"), "done; key held", "refused:NOTHING_TO_REVERSE", "rejected, reversal"),
    # reversal
    Row("done", reverse_as("ok"), "done/reversed; key held", "reversed", "reversal"),
    Row("done", reverse_as("lost"), "done/reversing; key held", "raised:UPSTREAM_TIMEOUT", "reversal, answer lost"),
    Row("done", reverse_as("gone"), "done; key held", "raised:REDEMPTION_NOT_FOUND", "reversal refused: stands"),
    Row("done/reversing", replay, "done/reversing; key held", "reversed_redeem replayed", "reversing, replay"),
    Row(
        "done/reversing",
        reverse_as("gone"),
        "done/reversed; key held",
        "reversed",
        "reversing, retried, no longer active upstream: the first went through",
    ),
    Row("done/reversing", reverse_as("ok"), "done/reversed; key held", "reversed", "reversing, retried"),
    Row("done/reversed", replay, "done/reversed; key held", "reversed_redeem replayed", "reversed, replay redeem"),
    Row("done/reversed", reverse_as("ok"), "done/reversed; key held", "reversed replayed", "reversed, replay"),
    Row(
        "done/reversed",
        reverse_as("ok", key="key:S1:other"),
        "done/reversed; key held",
        "refused:ALREADY_REVERSED",
        "reversed, under another key",
    ),
    Row("done/reversed", status, "done/reversed; key held", "lookup:reversed", "reversed, status"),
]


def _said(reply: Reply) -> str:
    if reply.lookup:
        return f"lookup:{json.loads(reply.body)['status']}"
    return reply.response.answer + (" replayed" if reply.replayed else "")


async def _outcome(m: Machine, event: Step) -> tuple[str, str | None]:
    """What the event said, and the ref of the record it concerns: the one the reply names, else the one a
    raised redeem started, else the start's."""
    begun = len(m.store.begun)
    try:
        reply = await event(m)
    except Refused as exc:
        return f"refused:{exc.error.code}", m.ref
    except UpstreamFailure as exc:
        started = m.store.begun[begun:]
        return f"raised:{exc.failure.error.code}", started[-1] if started else m.ref
    if reply is None:
        return "-", m.ref
    if reply.replayed and m.first is not None and reply.response.answer == m.first.response.answer:
        assert reply.body == m.first.body  # a replay is the first answer, byte for byte
    return _said(reply), reply.ref


async def _state(m: Machine, ref: str | None) -> str:
    entry = await m.store.load(ref) if ref else None
    if entry is None:
        return "none"
    state: str = entry.state
    if entry.reversal is not None:
        state += "/reversed" if entry.reversal.state == "done" else "/reversing"
    probe = msgspec.structs.replace(entry, ref=new_ref())
    held = await m.store.claim(probe, TIMING.ttl) is not None  # a free key is claimed by the probe
    return f"{state}; key {'held' if held else 'free'}"


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
async def test_transition(row: Row) -> None:
    m = Machine()
    try:
        await START[row.start](m)
        said, ref = await _outcome(m, row.event)
        assert (await _state(m, ref), said) == (row.state, row.reply)
    finally:
        await m.close()


# ------------------------------------------------------------------------------------------ racers and edges


async def test_two_racers_on_one_code_one_redeems_the_other_is_told_it_is_in_use() -> None:
    m = Machine()
    try:
        results = await asyncio.gather(
            m.redeem(COMMAND, key="key:S1:till-1"), m.redeem(OTHER_SALE, key="key:S1:till-2"), return_exceptions=True
        )
        replies = [r for r in results if isinstance(r, Reply)]
        refusals = [r.error.code for r in results if isinstance(r, Refused)]
        assert ([_said(r) for r in replies], refusals) == (["redeemed"], ["COUPON_IN_USE"])
        assert m.upstream.redeems == 1
    finally:
        await m.close()


async def test_two_racers_under_one_key_one_redeems_the_other_is_told_it_is_in_progress() -> None:
    m = Machine()
    try:
        results = await asyncio.gather(m.redeem(), m.redeem(), return_exceptions=True)
        replies = [r for r in results if isinstance(r, Reply)]
        refusals = [r.error.code for r in results if isinstance(r, Refused)]
        assert ([_said(r) for r in replies], refusals) == (["redeemed"], ["REQUEST_IN_PROGRESS"])
        assert m.upstream.redeems == 1
        again = await m.redeem()  # once answered, the loser's retry is a replay
        assert (_said(again), again.body) == ("redeemed replayed", replies[0].body)
    finally:
        await m.close()


async def test_a_replay_gets_the_first_answers_status_and_bytes() -> None:
    """The web layer chooses the status from what the answer says: the same for the first answer and replays."""
    for start, status_code in (("done", 200), ("done (rejected)", 409), ("pending", 202)):
        m = Machine()
        try:
            await START[start](m)
            assert m.first is not None
            again = await m.redeem()
            assert (answer_status(m.first.response), answer_status(again.response)) == (status_code, status_code)
            assert again.body == m.first.body
        finally:
            await m.close()


async def test_a_settled_not_applied_record_answers_its_own_status() -> None:
    m = Machine()
    try:
        await _failed(m)
        entry = await m.store.load(m.ref or "")
        assert entry is not None
        assert entry.response is not None
        assert (entry.response.answer, answer_status(entry.response)) == ("not_applied", 503)
    finally:
        await m.close()


async def test_without_the_ledger_nothing_is_sent() -> None:
    class Away(NotingStore):
        async def begin(
            self, entry: Entry, ttl: float, lock_ttl: float, *, legacy_key: str | None = None
        ) -> tuple[Entry | None, list[str]]:
            raise StoreUnavailable("down")

    m = Machine()
    m.store = Away(m.clock)
    m.ledger.store = m.store
    try:
        with pytest.raises(StoreUnavailable):
            await m.redeem()
        assert m.upstream.redeems == 0
    finally:
        await m.close()


def test_a_record_of_an_earlier_release_replays_with_the_status_it_was_sent_with() -> None:
    """Records kept before answers were named carry their HTTP status: replayed as they were, for their TTL."""
    stored = StoredCommand.of(COMMAND)
    legacy = {
        **msgspec.to_builtins(
            Entry(
                ref=new_ref(),
                key=KEY,
                fingerprint=stored.fingerprint(),
                state="done",
                command=stored,
                request_id="req-old",
                created_at=1.0,
            )
        ),
        "response": {"status": 409, "body": "eyJzdGF0dXMiOiJyZWplY3RlZCJ9"},  # base64 of {"status":"rejected"}
    }
    entry = entry_decoder.decode(msgspec.json.encode(legacy))
    assert entry.response is not None
    assert (answer_status(entry.response), entry.response.body) == (409, b'{"status":"rejected"}')
    renewed = entry_decoder.decode(entry_encoder.encode(entry))  # written again: the status stays with it
    assert renewed.response == entry.response


class _PreviousReleaseResponse(msgspec.Struct, frozen=True):
    """How the previous release reads a recorded answer: its status and body, nothing else."""

    status: int
    body: bytes


async def test_every_record_this_release_writes_replays_on_a_replica_of_the_previous_release() -> None:
    """A rolling deploy runs both releases on one Redis: each recorded answer carries the status the previous
    release reads, equal to what this one answers, with the same bytes."""
    for start in ("done", "done (rejected)", "pending"):
        m = Machine()
        try:
            await START[start](m)
            assert m.ref is not None
            entry = await m.store.load(m.ref)
            assert entry is not None
            assert entry.response is not None
            raw = msgspec.json.decode(entry_encoder.encode(entry))["response"]
            previous = msgspec.convert(raw, _PreviousReleaseResponse)
            assert (previous.status, previous.body) == (answer_status(entry.response), entry.response.body)
        finally:
            await m.close()


# ------------------------------------------------------------------------------------------ the calls' limits


async def test_a_redeem_calls_upstream_under_its_own_deadline_and_goes_first() -> None:
    """The redeem outlives its till's wait when it must: its calls get its own limit, not the request's deadline
    (here almost spent), and are urgent."""
    m = Machine()
    own = TIMING.hard_limit - TIMING.lease_margin
    token = DEADLINE.set(time.monotonic() + 0.5)  # the request's deadline, far sooner than the redeem's own
    try:
        before = time.monotonic()
        reply = await m.redeem()
        after = time.monotonic()
    finally:
        DEADLINE.reset(token)
        await m.close()
    assert reply.outcome == "redeemed"
    assert [name for name, _ in m.upstream.limits] == ["check", "redeem"]
    for _, limits in m.upstream.limits:
        assert limits.urgent is True
        assert limits.deadline is not None
        assert before + own <= limits.deadline <= after + own


async def test_the_sweeper_reconciles_with_no_deadline_and_a_request_with_its_own() -> None:
    m = Machine()
    try:
        await _pending(m)
        m.upstream.limits.clear()
        await m.ledger.sweep()
        assert m.upstream.limits == [("find_redemptions", CallLimits(math.inf))]  # no request: no deadline
        m.upstream.limits.clear()
        await status(m)
        assert m.upstream.limits == [("find_redemptions", AMBIENT)]  # the request's deadline, through the client
    finally:
        await m.close()


async def test_a_reversal_reactivates_under_its_requests_deadline() -> None:
    m = Machine()
    try:
        await _done(m)
        m.upstream.limits.clear()
        await reverse_as("ok")(m)
        assert m.upstream.limits == [("reactivate", AMBIENT)]
    finally:
        await m.close()
