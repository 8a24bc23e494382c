"""The stages every Capillary call goes through, as aiohttp client middlewares.

Outermost first: :class:`Retry` (jittered backoff under a shared retry budget), :class:`DeadlineGuard` (the time
this attempt may take, or no attempt at all), :class:`BreakerGuard` (the host's circuit breaker),
:class:`RateGuard` (the outbound rate limiter, by priority), :class:`Observe` (the observer hears of every attempt
sent), then :class:`Attempt` (the attempt's own time limit, the body read and read into a typed answer or a typed
:mod:`~service.capillary.errors` failure), then the session's own middlewares (auth, traces).

Each stage holds only what is shared across calls (a breaker, a limiter, counters); what is particular to one call
travels in its :class:`Call`, which the client binds to each stage (``functools.partial``) and hands to
``ClientSession.request(middlewares=...)``. The deadline and priority are plain fields of the call, given by the
client's caller: no stage reads a context variable.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, Final, Generic, Protocol, TypeVar

import aiohttp
import msgspec
from aiohttp import ClientHandlerType, ClientMiddlewareType, ClientRequest, ClientResponse

from service.capillary.errors import CapillaryError, CapillaryTimeoutError, CapillaryUnavailable
from service.capillary.operations import Operation
from service.capillary.reading import REQUEST_ID_HEADER, interpret, outcome_of, transport_error
from service.capillary.resilience import (
    REJECTED,
    Breaker,
    OutboundLimiter,
    Priority,
    RetryBudget,
    backoff,
    is_outage,
    may_retry,
)

M = TypeVar("M")

# Why a call was refused before being sent (metrics label).
REJECTION_REASONS: Final = ("circuit_open", "rate_limited", "no_time")
# Less time than this left before the deadline: the call is not even started.
MIN_ATTEMPT_SECONDS: Final = 0.01
# A retry needs at least this much time left after its pause.
MIN_RETRY_SECONDS: Final = MIN_ATTEMPT_SECONDS * 5

Rejections = dict[tuple[str, Priority], int]
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})


class CallObserver(Protocol):
    """Told of every upstream attempt sent: for metrics and logs, kept out of the client."""

    def on_call(self, call: CallReport) -> None: ...


class CallReport(msgspec.Struct, frozen=True, gc=False):
    """How one attempt went: ``outcome`` is ``ok``, ``business_error``, ``http_4xx``, ``http_5xx``,
    ``timeout``, ``connection_error`` or ``bad_response``."""

    operation: str
    seconds: float
    outcome: str
    http_status: int | None
    code: int | None
    request_id: str | None


class Call(Generic[M]):
    """One upstream call: what is called, by when and at whose priority (given), and how it is going (kept by the
    stages). ``limit`` bounds each attempt; ``deadline`` (monotonic seconds, ``None``: none) bounds them all."""

    __slots__ = ("budget", "deadline", "limit", "long_call", "op", "priority", "started", "value")

    def __init__(
        self, op: Operation[M], *, limit: float, long_call: bool, deadline: float | None, priority: Priority
    ) -> None:
        # ``long_call``: given more time than the usual (a file upload), so not judged slow by the usual yardstick.
        self.op, self.limit, self.long_call, self.deadline, self.priority = op, limit, long_call, deadline, priority
        self.budget = limit  # this attempt's time, set by DeadlineGuard, less any wait for the rate limiter
        self.started = 0.0  # when the attempt left (monotonic seconds), after any wait for the rate limiter
        self.value: M | None = None

    def result(self) -> M:
        """The decoded answer; set by :class:`Attempt` whenever the call did not raise."""
        assert self.value is not None
        return self.value


class Stage(Protocol):
    """A stage: handles one call's request, sending it on through ``handler`` (the next stage, or aiohttp)."""

    def __call__(self, call: Call[Any], request: ClientRequest, handler: ClientHandlerType) -> Any: ...


class _Then:
    """A middleware with the handler it hands the request on to: called with the request alone."""

    __slots__ = ("_handler", "_middleware")

    def __init__(self, middleware: ClientMiddlewareType, handler: ClientHandlerType) -> None:
        self._middleware = middleware
        self._handler = handler

    def __call__(self, request: ClientRequest) -> Awaitable[ClientResponse]:
        return self._middleware(request, self._handler)


class _Stages:
    """The stages of one call, then the session's own middlewares (auth, traces), as a single aiohttp middleware.
    aiohttp wraps every middleware of a request in a closure and a coroutine of its own, built anew on each
    request; here each stage is handed the next one directly (bound to the call), so an attempt runs one coroutine
    per stage and the chain is built once per call, outermost stage first."""

    __slots__ = ("_call", "_stages", "_tail")

    def __init__(self, call: Call[Any], stages: Sequence[Stage], tail: Sequence[ClientMiddlewareType]) -> None:
        self._call = call
        self._stages = stages
        self._tail = tail

    def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> Any:
        for middleware in reversed(self._tail):
            handler = _Then(middleware, handler)
        call = self._call
        for stage in reversed(self._stages):
            handler = partial(stage, call, handler=handler)
        return handler(request)


def bind(call: Call[Any], stages: Sequence[Stage], tail: Sequence[ClientMiddlewareType]) -> tuple[Any, ...]:
    """The middlewares of one call: its stages, bound to it, then the session's own (``tail``), as one middleware."""
    return (_Stages(call, stages, tail),)


# ------------------------------------------------------------------------------------------------- stages


class Retry:
    """Sends a call again when that is safe (:func:`~service.capillary.resilience.may_retry`), after a jittered
    pause, while the retry budget and the deadline allow. Counts retries per operation."""

    def __init__(
        self,
        attempts: int,
        budget: RetryBudget,
        retries: dict[str, int],
        *,
        pause: Callable[[int], float] = backoff,
    ) -> None:
        self.attempts = attempts
        self.budget = budget
        self.retries = retries
        self._pause = pause

    async def __call__(self, call: Call[Any], request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        self.budget.deposit()
        attempt = 0
        while True:
            try:
                return await handler(request)
            except CapillaryError as exc:
                if (
                    exc.operation != call.op.name  # the token call failed: the auth middleware's concern
                    or attempt >= self.attempts
                    or not may_retry(exc, safe=call.op.method == "GET")
                ):
                    raise
                pause = self._pause(attempt)
                if call.deadline is not None and call.deadline - time.monotonic() - pause < MIN_RETRY_SECONDS:
                    raise
                if not self.budget.withdraw():
                    raise
            attempt += 1
            self.retries[call.op.name] += 1
            await asyncio.sleep(pause)


class DeadlineGuard:
    """Gives the attempt the time left before the call's deadline (at most its limit); refuses to start one with
    less than :data:`MIN_ATTEMPT_SECONDS` left (``no_time``: nothing sent)."""

    def __init__(self, rejections: Rejections) -> None:
        self.rejections = rejections

    async def __call__(self, call: Call[Any], request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        budget = call.limit
        if call.deadline is not None:
            left = call.deadline - time.monotonic()
            if left < MIN_ATTEMPT_SECONDS:
                self.rejections["no_time", call.priority] += 1
                raise CapillaryTimeoutError(call.op.name, "no time left before the deadline", maybe_applied=False)
            if left < budget:
                budget = left
        call.budget = budget
        return await handler(request)


class BreakerGuard:
    """The host's circuit breaker: refuses the call while open (``circuit_open``: nothing sent), and tells it how
    each attempt went. A failure that says nothing about the host (a business refusal, a call cut short by the
    till's deadline rather than its own limit, a refusal of a later stage) is not held against it."""

    def __init__(self, breaker: Breaker, rejections: Rejections) -> None:
        self.breaker = breaker
        self.rejections = rejections

    async def __call__(self, call: Call[Any], request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        breaker = self.breaker
        ticket = breaker.admit()
        if ticket == REJECTED:
            self.rejections["circuit_open", call.priority] += 1
            raise CapillaryUnavailable(
                call.op.name,
                f"circuit open for {breaker.host}",
                reason="circuit_open",
                retry_after=breaker.retry_after(),
            )
        call.started = time.monotonic()  # again after any wait for the rate limiter
        try:
            response = await handler(request)
        except CapillaryUnavailable:
            breaker.release(ticket)  # refused by the rate limiter: never sent
            raise
        except CapillaryError as exc:
            seconds = 0.0 if call.long_call else time.monotonic() - call.started
            if not isinstance(exc, CapillaryTimeoutError):
                breaker.record(ticket, failed=is_outage(exc), seconds=seconds)
            elif call.budget >= call.limit or call.budget >= breaker.policy.slow_call_seconds:
                breaker.record(ticket, failed=True, seconds=seconds)
            else:
                breaker.release(ticket)  # cut short by the till's deadline: says nothing about the host
            raise
        except BaseException:
            breaker.release(ticket)
            raise
        breaker.record(ticket, failed=False, seconds=0.0 if call.long_call else time.monotonic() - call.started)
        return response


class RateGuard:
    """The outbound rate limiter: waits for a token when it comes within the attempt's time, else refuses the
    call (``rate_limited``: nothing sent, with the wait it would have needed as ``retry_after``)."""

    def __init__(self, limiter: OutboundLimiter, rejections: Rejections) -> None:
        self.limiter = limiter
        self.rejections = rejections

    async def __call__(self, call: Call[Any], request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        wait = await self.limiter.acquire(call.priority, call.budget - MIN_ATTEMPT_SECONDS)
        if wait < 0:
            self.rejections["rate_limited", call.priority] += 1
            raise CapillaryUnavailable(
                call.op.name, "outbound rate budget spent", reason="rate_limited", retry_after=-wait
            )
        if wait:
            await asyncio.sleep(wait)
            call.budget -= wait
        call.started = time.monotonic()
        return await handler(request)


class Observe:
    """Tells the observer of every attempt sent: its operation, time, outcome, HTTP status, Capillary code and
    ``X-Cap-Requestid``. A failed token call made on the attempt's behalf is the token call's to report."""

    def __init__(self, observer: CallObserver) -> None:
        self.observer = observer

    async def __call__(self, call: Call[Any], request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        started = time.perf_counter()
        name = call.op.name
        try:
            response = await handler(request)
        except CapillaryError as exc:
            if exc.operation == name:
                seconds = time.perf_counter() - started
                self.observer.on_call(
                    CallReport(name, seconds, outcome_of(exc), exc.http_status, exc.code, exc.request_id)
                )
            raise
        status = response.status
        outcome = "business_error" if status >= 400 else "ok"
        request_id = response.headers.get(REQUEST_ID_HEADER)
        self.observer.on_call(CallReport(name, time.perf_counter() - started, outcome, status, None, request_id))
        return response


class Attempt:
    """One attempt within its time: sent, its body read, and read into the call's typed answer, or raised as a
    typed failure. A dropped keep-alive connection is tried once more for a read, and a redirect is left for
    aiohttp to follow, as aiohttp itself does for a plain request."""

    async def __call__(self, call: Call[Any], request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        name = call.op.name
        try:
            async with asyncio.timeout(call.budget):
                try:
                    response = await handler(request)
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                    if call.op.method != "GET" or isinstance(exc, aiohttp.ClientConnectorError):
                        raise
                    response = await handler(request)
                raw = await response.read()
        except CapillaryError:
            raise  # the token call inside the auth middleware failed, with its own typed error
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise transport_error(name, exc) from exc
        status = response.status
        if status in _REDIRECTS:  # aiohttp follows it, and the next request goes through the stages again
            return response
        call.value = interpret(call.op, status, raw, response.headers.get(REQUEST_ID_HEADER))
        return response
