"""What keeps the gateway fast while Capillary misbehaves: a circuit breaker per upstream host, an outbound rate
limiter with priorities, and a retry budget with jittered backoff for the calls that are safe to repeat.

Written here rather than taken from a library: the asyncio breakers on PyPI (aiobreaker, circuitbreaker, purgatory)
count consecutive failures, with neither a slow-call ratio nor a bounded number of half-open probes; aiolimiter is
a fair leaky bucket without priorities or a "will there be room before my deadline" answer; tenacity and backoff
retry without a budget shared across calls and allocate per call. Each piece below is plain synchronous state
(no lock needed on one event loop, no task, no allocation per call), put to work by the client pipeline's stages
(:mod:`service.capillary.pipeline`).
"""

from __future__ import annotations

import enum
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from service.capillary.errors import (
    TRY_LATER_STATUSES,
    CapillaryAuthError,
    CapillaryBadResponse,
    CapillaryConnectionError,
    CapillaryError,
    CapillaryHTTPError,
    CapillaryTimeoutError,
    CapillaryUnavailable,
)

Clock = Callable[[], float]


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


BREAKER_STATES: Final = tuple(BreakerState)
REJECTED = -1  # the ticket of a call the breaker refuses


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a host's circuit opens, and how it closes again.

    Over the last ``window`` calls (once at least ``min_calls`` are in), it opens when the share of failures
    reaches ``failure_ratio`` or the share of calls slower than ``slow_call_seconds`` reaches ``slow_call_ratio``.
    Open, it refuses every call for ``open_seconds``; then it lets ``probes`` calls through (half-open): all of
    them fine closes it, any of them failing or slow opens it again.
    """

    failure_ratio: float = 0.5
    slow_call_seconds: float = 2.0
    slow_call_ratio: float = 0.8
    min_calls: int = 10
    window: int = 20
    open_seconds: float = 5.0
    probes: int = 3


class Breaker:
    """The circuit breaker of one upstream host (count-based sliding window).

    ``admit()`` returns a ticket for the call, or :data:`REJECTED`; the call's end is told with ``record(ticket,
    ...)`` or, when it gave no verdict on the host (cancelled, cut short by the till's own deadline), ``release``.
    A ticket from before a state change is ignored, so a slow call admitted while closed never decides a probe.
    """

    def __init__(self, host: str, policy: BreakerPolicy, *, clock: Clock = time.monotonic) -> None:
        self.host = host
        self.policy = policy
        self._clock = clock
        self.state = BreakerState.CLOSED
        self.transitions = dict.fromkeys(BREAKER_STATES, 0)
        self.rejected = 0
        self._generation = 0
        self._window = max(policy.window, policy.min_calls, 1)
        self._failed = bytearray(self._window)
        self._slow = bytearray(self._window)
        self._next = 0
        self._count = 0
        self._failures = 0
        self._slows = 0
        self._opened_at = 0.0
        self._probing = 0
        self._probed = 0

    # ------------------------------------------------------------------------------------------ calls

    def admit(self) -> int:
        state = self.state
        if state is BreakerState.CLOSED:
            return self._generation
        if state is BreakerState.OPEN:
            if self._clock() - self._opened_at < self.policy.open_seconds:
                self.rejected += 1
                return REJECTED
            self._move(BreakerState.HALF_OPEN)
        if self._probing + self._probed >= self.policy.probes:
            self.rejected += 1
            return REJECTED
        self._probing += 1
        return self._generation

    def retry_after(self) -> float:
        """Seconds until the breaker lets a call through again (a probe's turn)."""
        if self.state is BreakerState.OPEN:
            return max(0.0, self.policy.open_seconds - (self._clock() - self._opened_at))
        return 0.0

    def record(self, ticket: int, *, failed: bool, seconds: float) -> None:
        if ticket != self._generation:
            return
        slow = seconds >= self.policy.slow_call_seconds
        if self.state is BreakerState.HALF_OPEN:
            self._probing -= 1
            if failed or slow:
                self._move(BreakerState.OPEN)
                return
            self._probed += 1
            if self._probed >= self.policy.probes:
                self._move(BreakerState.CLOSED)
            return
        i = self._next
        if self._count == self._window:
            self._failures -= self._failed[i]
            self._slows -= self._slow[i]
        else:
            self._count += 1
        self._failed[i], self._slow[i] = failed, slow
        self._failures += failed
        self._slows += slow
        self._next = (i + 1) % self._window
        count = self._count
        if count >= self.policy.min_calls and (
            self._failures >= self.policy.failure_ratio * count or self._slows >= self.policy.slow_call_ratio * count
        ):
            self._move(BreakerState.OPEN)

    def release(self, ticket: int) -> None:
        if ticket == self._generation and self.state is BreakerState.HALF_OPEN:
            self._probing -= 1

    # ------------------------------------------------------------------------------------------ state

    def _move(self, state: BreakerState) -> None:
        self.state = state
        self.transitions[state] += 1
        self._generation += 1
        self._probing = self._probed = 0
        if state is BreakerState.OPEN:
            self._opened_at = self._clock()
        elif state is BreakerState.CLOSED:
            self._count = self._failures = self._slows = self._next = 0


# ---------------------------------------------------------------------------------------------- limiter


class Priority(enum.IntEnum):
    """Who gets Capillary's budget first when it runs short."""

    REDEEM = 0  # redeem, bulk redeem, reactivate, and reconciling redeems already sent
    CHECK = 1  # validate's is_redeemable, and the series data the POS checks need
    BACKOFFICE = 2  # issue, series creation, uploads and their status


PRIORITY_NAMES: Final = {p: p.name.lower() for p in Priority}


class SharedBucket(Protocol):
    """A token bucket every replica shares (``service.access.limits.SharedBuckets``)."""

    async def take(
        self, name: str, rate: float, capacity: float, *, floor: float = 0.0, max_wait: float = 0.0, kind: str = ""
    ) -> float | None: ...


class OutboundLimiter:
    """A token bucket holding Capillary's requests-per-minute budget, shared by every call of this process.

    A call that finds no token reserves the next one and waits for it, if that is sooner than it can afford
    (its deadline); otherwise it is refused at once with the wait it would have needed, so nothing queues beyond
    a deadline. Priorities: a lower class may only take tokens while a share of the bucket (``reserve``) is left
    for the classes above it, so under pressure back-office calls wait and are shed first, then validation, and
    redeems last. ``per_minute=0`` turns the limiter off.

    With :meth:`share` (Redis), the bucket is one for every replica, priorities included: ten pods spend the
    brand's budget once, not ten times. When Redis does not answer, each decision falls back to this process's
    own bucket (fail open to the per-process limit; counted in ``SharedBuckets.unavailable``).
    """

    RESERVE: Final = (0.0, 0.2, 0.4)  # share of the bucket each priority must leave untouched

    def __init__(self, per_minute: float, *, clock: Clock = time.monotonic) -> None:
        self.enabled = per_minute > 0
        self.rate = per_minute / 60.0
        # A burst of six seconds' worth; at least enough that every class can hold its reserve and still take one
        # (a tiny budget would otherwise starve validation and back office for good).
        self.capacity = max(1.0 / (1.0 - max(self.RESERVE)) + 1.0, per_minute / 10.0)
        self._floors = tuple(share * self.capacity for share in self.RESERVE)
        self._clock = clock
        self._tokens = self.capacity
        self._at = clock()
        self.shed = dict.fromkeys(Priority, 0)
        self.delayed = dict.fromkeys(Priority, 0)

    _shared: SharedBucket | None = None

    def share(self, bucket: SharedBucket) -> None:
        self._shared = bucket

    async def acquire(self, priority: Priority, max_wait: float) -> float:
        """:meth:`reserve`, from the shared bucket when there is one."""
        if not self.enabled:
            return 0.0
        if self._shared is not None:
            decided = await self._shared.take(
                "capillary",
                self.rate,
                self.capacity,
                floor=self._floors[priority],
                max_wait=max_wait,
                kind="capillary_budget",
            )
            if decided is not None:
                if decided < 0:
                    self.shed[priority] += 1
                elif decided > 0:
                    self.delayed[priority] += 1
                return decided
        return self.reserve(priority, max_wait)

    def reserve(self, priority: Priority, max_wait: float) -> float:
        """Take a token: 0 to go now, the seconds to wait first, or -(the seconds it would take) if refused."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now
        short = self._floors[priority] + 1.0 - tokens
        if short <= 0:
            self._tokens = tokens - 1.0
            return 0.0
        wait = short / self.rate
        if wait > max_wait:
            self._tokens = tokens
            self.shed[priority] += 1
            return -wait
        self._tokens = tokens - 1.0  # may go below zero: later callers wait behind this one
        self.delayed[priority] += 1
        return wait


# ---------------------------------------------------------------------------------------------- retries


class RetryBudget:
    """Retries may be at most ``ratio`` of calls (plus a small floor, for a quiet gateway): a token bucket
    credited ``ratio`` per call and debited one per retry, so a failing upstream never sees its load multiplied."""

    def __init__(self, ratio: float, *, floor: float = 10.0) -> None:
        self.ratio = ratio
        self.cap = floor
        self._tokens = floor
        self.exhausted = 0

    def deposit(self) -> None:
        tokens = self._tokens + self.ratio
        self._tokens = tokens if tokens < self.cap else self.cap

    def withdraw(self) -> bool:
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.exhausted += 1
        return False


BACKOFF_BASE: Final = 0.05
BACKOFF_CAP: Final = 1.0


def backoff(attempt: int, rand: Callable[[], float] = random.random) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)) before retry number ``attempt`` (0-based)."""
    return rand() * min(BACKOFF_CAP, BACKOFF_BASE * (1 << attempt))


RETRYABLE_STATUSES: Final = frozenset({429, 461, 500, 502, 503, 504, 521})


def is_outage(error: CapillaryError) -> bool:
    """Does this failure say the host is unwell (for its breaker)? A business refusal or bad credentials do not."""
    if isinstance(error, CapillaryAuthError):
        return False
    if isinstance(error, CapillaryHTTPError):
        status = error.http_status or 0
        return (status >= 500 or status == 429) and status not in TRY_LATER_STATUSES
    return isinstance(error, CapillaryConnectionError | CapillaryTimeoutError | CapillaryBadResponse)


def may_retry(error: CapillaryError, *, safe: bool) -> bool:
    """May a call that failed so be sent again? A read (GET), after a transient failure; a write, only when it
    provably never left (the connection was not even made): a write that may have been sent is never repeated."""
    if isinstance(error, CapillaryUnavailable):
        return False
    if not safe:
        return not error.maybe_applied and isinstance(error, CapillaryConnectionError | CapillaryTimeoutError)
    if isinstance(error, CapillaryConnectionError | CapillaryTimeoutError):
        return True
    return isinstance(error, CapillaryHTTPError) and error.http_status in RETRYABLE_STATUSES


def retry_after_seconds(seconds: float) -> int:
    """A Retry-After value: whole seconds, at least one."""
    return max(1, math.ceil(seconds))
