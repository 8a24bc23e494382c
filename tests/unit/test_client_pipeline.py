"""Each stage of the Capillary client's pipeline alone, over real HTTP: a small aiohttp app on loopback is the far
end, answering from a script, and counting what it received."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from service.capillary import operations as ops
from service.capillary.errors import (
    CapillaryBadResponse,
    CapillaryConnectionError,
    CapillaryError,
    CapillaryHTTPError,
    CapillaryTimeoutError,
    CapillaryUnavailable,
)
from service.capillary.models import SeriesListResponse
from service.capillary.operations import Operation
from service.capillary.pipeline import (
    Attempt,
    BreakerGuard,
    Call,
    CallReport,
    DeadlineGuard,
    Observe,
    RateGuard,
    Rejections,
    Retry,
    Stage,
    bind,
)
from service.capillary.reading import REQUEST_ID_HEADER
from service.capillary.resilience import (
    REJECTED,
    Breaker,
    BreakerPolicy,
    BreakerState,
    OutboundLimiter,
    Priority,
    RetryBudget,
)

SERIES = b'{"entity": [{"id": 7, "description": "x"}]}'
REFUSAL = b'{"status": false, "code": 707, "message": "series not found"}'
Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


def reply(status: int = 200, body: bytes = SERIES, *, delay: float = 0.0, request_id: str = "cap-1") -> Answer:
    async def answer(request: web.Request) -> web.StreamResponse:
        if delay:
            await asyncio.sleep(delay)
        return web.Response(status=status, body=body, headers={REQUEST_ID_HEADER: request_id})

    return answer


async def dropped(request: web.Request) -> web.StreamResponse:
    """Closes the connection without an answer."""
    assert request.transport is not None
    request.transport.close()
    raise ConnectionResetError


class FarEnd:
    """The upstream: answers each request with the next scripted answer (the last one repeats)."""

    def __init__(self) -> None:
        self.script: list[Answer] = [reply()]
        self.received = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.received += 1
        answer = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        return await answer(request)


@pytest.fixture
async def far() -> AsyncIterator[FarEnd]:
    end = FarEnd()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", end.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    end.url = str(server.make_url("/v2/coupon/series"))
    yield end
    await server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=1.0)) as s:
        yield s


def new_call(
    op: Operation[Any] = ops.SERIES_GET,
    *,
    limit: float = 2.0,
    deadline: float | None = None,
    priority: Priority | None = None,
) -> Call[Any]:
    return Call(op, limit=limit, long_call=False, deadline=deadline, priority=priority or op.priority)


async def send(
    session: aiohttp.ClientSession, far: FarEnd, call: Call[Any], stages: Sequence[Stage]
) -> SeriesListResponse:
    """One call through ``stages`` then the Attempt stage, as the client sends it."""
    middlewares = bind(call, (*stages, Attempt()), ())
    async with session.request(call.op.method, far.url, middlewares=middlewares):
        value: SeriesListResponse = call.result()
        return value


def rejections() -> Rejections:
    return {(reason, p): 0 for reason in ("circuit_open", "rate_limited", "no_time") for p in Priority}


class Reports:
    """A recording observer."""

    def __init__(self) -> None:
        self.calls: list[CallReport] = []

    def on_call(self, call: CallReport) -> None:
        self.calls.append(call)


def no_pause(attempt: int) -> float:
    return 0.0


# ---------------------------------------------------------------------------------------------- attempt


async def test_the_attempt_reads_the_answer_into_its_model(session: aiohttp.ClientSession, far: FarEnd) -> None:
    value = await send(session, far, new_call(), ())
    assert [s.id for s in value.entity] == [7]


async def test_the_attempt_turns_an_error_status_into_a_typed_failure(
    session: aiohttp.ClientSession, far: FarEnd
) -> None:
    far.script = [reply(404, REFUSAL, request_id="cap-9")]
    with pytest.raises(CapillaryHTTPError) as caught:
        await send(session, far, new_call(), ())
    assert (caught.value.http_status, caught.value.code, caught.value.request_id) == (404, 707, "cap-9")
    assert caught.value.maybe_applied is False


async def test_a_200_in_another_shape_is_a_bad_response(session: aiohttp.ClientSession, far: FarEnd) -> None:
    far.script = [reply(200, b"<html>maintenance</html>")]
    with pytest.raises(CapillaryBadResponse):
        await send(session, far, new_call(), ())


async def test_the_attempt_ends_at_its_budget_and_may_have_applied(session: aiohttp.ClientSession, far: FarEnd) -> None:
    far.script = [reply(delay=2.0)]
    started = time.monotonic()
    with pytest.raises(CapillaryTimeoutError) as caught:
        await send(session, far, new_call(ops.REDEEM, limit=0.2), ())
    assert time.monotonic() - started < 1.0
    assert caught.value.maybe_applied is True


async def test_nobody_listening_applied_nothing(session: aiohttp.ClientSession, far: FarEnd) -> None:
    far.url = "http://127.0.0.1:9/v2/coupon/series"  # discard port: nothing listens
    with pytest.raises(CapillaryConnectionError) as caught:
        await send(session, far, new_call(ops.REDEEM), ())
    assert caught.value.maybe_applied is False


async def test_a_dropped_connection_is_tried_once_more_for_a_read_never_for_a_write(
    session: aiohttp.ClientSession, far: FarEnd
) -> None:
    far.script = [dropped, reply()]
    assert (await send(session, far, new_call(), ())).entity
    assert far.received == 2
    far.script, far.received = [dropped, reply()], 0
    with pytest.raises(CapillaryConnectionError) as caught:
        await send(session, far, new_call(ops.REACTIVATE), ())
    assert (far.received, caught.value.maybe_applied) == (1, True)


async def test_a_redirect_is_followed_and_the_answer_read_where_it_leads(
    session: aiohttp.ClientSession, far: FarEnd
) -> None:
    async def moved(request: web.Request) -> web.StreamResponse:
        raise web.HTTPTemporaryRedirect("/v2/coupon/series?moved=1")

    far.script = [moved, reply()]
    reports = Reports()
    assert (await send(session, far, new_call(), (Observe(reports),))).entity
    assert far.received == 2
    assert [r.http_status for r in reports.calls] == [307, 200]


# ------------------------------------------------------------------------------------------------ retry


async def test_a_read_is_retried_until_it_succeeds(session: aiohttp.ClientSession, far: FarEnd) -> None:
    far.script = [reply(503, b""), reply(502, b""), reply()]
    retries = dict.fromkeys(ops.OPERATIONS, 0)
    retry = Retry(2, RetryBudget(0.1), retries, pause=no_pause)
    assert (await send(session, far, new_call(), (retry,))).entity
    assert (far.received, retries["series_get"]) == (3, 2)


async def test_retries_stop_after_the_attempts_allowed(session: aiohttp.ClientSession, far: FarEnd) -> None:
    far.script = [reply(503, b"")]
    retries = dict.fromkeys(ops.OPERATIONS, 0)
    with pytest.raises(CapillaryHTTPError):
        await send(session, far, new_call(), (Retry(1, RetryBudget(0.1), retries, pause=no_pause),))
    assert (far.received, retries["series_get"]) == (2, 1)


async def test_a_write_that_may_have_gone_through_is_never_retried(session: aiohttp.ClientSession, far: FarEnd) -> None:
    far.script = [reply(503, b"")]
    retries = dict.fromkeys(ops.OPERATIONS, 0)
    with pytest.raises(CapillaryHTTPError):
        await send(session, far, new_call(ops.REACTIVATE), (Retry(2, RetryBudget(0.1), retries, pause=no_pause),))
    assert (far.received, retries["reactivate"]) == (1, 0)


async def test_retries_stop_when_the_budget_is_spent(session: aiohttp.ClientSession, far: FarEnd) -> None:
    far.script = [reply(503, b"")]
    budget = RetryBudget(0.0, floor=1.0)
    retry = Retry(5, budget, dict.fromkeys(ops.OPERATIONS, 0), pause=no_pause)
    with pytest.raises(CapillaryHTTPError):
        await send(session, far, new_call(), (retry,))
    assert (far.received, budget.exhausted) == (2, 1)  # the one token, then no more


async def test_no_retry_without_time_left_for_it(session: aiohttp.ClientSession, far: FarEnd) -> None:
    far.script = [reply(503, b"")]
    retry = Retry(2, RetryBudget(0.1), dict.fromkeys(ops.OPERATIONS, 0), pause=lambda attempt: 0.3)
    with pytest.raises(CapillaryHTTPError):
        await send(session, far, new_call(deadline=time.monotonic() + 0.2), (retry,))
    assert far.received == 1


# --------------------------------------------------------------------------------------------- deadline


async def test_no_attempt_without_time_left(session: aiohttp.ClientSession, far: FarEnd) -> None:
    counts = rejections()
    with pytest.raises(CapillaryTimeoutError) as caught:
        await send(session, far, new_call(deadline=time.monotonic() - 0.1), (DeadlineGuard(counts),))
    assert (far.received, caught.value.maybe_applied) == (0, False)
    assert counts["no_time", Priority.CHECK] == 1


async def test_the_attempt_gets_what_is_left_of_the_deadline(session: aiohttp.ClientSession, far: FarEnd) -> None:
    far.script = [reply(delay=2.0)]
    call = new_call(limit=5.0, deadline=time.monotonic() + 0.3)
    started = time.monotonic()
    with pytest.raises(CapillaryTimeoutError):
        await send(session, far, call, (DeadlineGuard(rejections()),))
    assert time.monotonic() - started < 1.0
    assert call.budget <= 0.3


# ---------------------------------------------------------------------------------------------- breaker

POLICY = BreakerPolicy(failure_ratio=0.5, slow_call_seconds=1.0, min_calls=2, window=4, open_seconds=60, probes=1)


async def test_outages_open_the_breaker_and_then_nothing_is_sent(session: aiohttp.ClientSession, far: FarEnd) -> None:
    far.script = [reply(503, b"")]
    breaker, counts = Breaker("far", POLICY), rejections()
    guard = BreakerGuard(breaker, counts)
    for _ in range(2):
        with pytest.raises(CapillaryHTTPError):
            await send(session, far, new_call(), (guard,))
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(CapillaryUnavailable) as caught:
        await send(session, far, new_call(ops.REDEEM), (guard,))
    assert (caught.value.reason, far.received, counts["circuit_open", Priority.REDEEM]) == ("circuit_open", 2, 1)
    assert caught.value.retry_after > 0


async def test_a_business_refusal_is_no_outage(session: aiohttp.ClientSession, far: FarEnd) -> None:
    far.script = [reply(404, REFUSAL)]
    breaker = Breaker("far", POLICY)
    for _ in range(4):
        with pytest.raises(CapillaryHTTPError):
            await send(session, far, new_call(), (BreakerGuard(breaker, rejections()),))
    assert breaker.state is BreakerState.CLOSED


async def test_a_call_cut_short_by_the_deadline_says_nothing_about_the_host(
    session: aiohttp.ClientSession, far: FarEnd
) -> None:
    """A half-open breaker's one probe, cut short by the till's deadline: released, so the next call probes."""
    far.script = [reply(delay=2.0), reply()]
    breaker = Breaker("far", BreakerPolicy(min_calls=1, window=1, open_seconds=0.0, probes=1))
    ticket = breaker.admit()
    breaker.record(ticket, failed=True, seconds=0.0)  # open; at once half-open (no cool-down)
    stages = (DeadlineGuard(rejections()), BreakerGuard(breaker, rejections()))
    with pytest.raises(CapillaryTimeoutError):
        await send(session, far, new_call(limit=5.0, deadline=time.monotonic() + 0.2), stages)
    assert breaker.state is BreakerState.HALF_OPEN
    assert (await send(session, far, new_call(), stages)).entity  # the probe slot was given back
    assert breaker.state is BreakerState.CLOSED


async def test_a_timeout_with_its_full_time_counts_against_the_host(
    session: aiohttp.ClientSession, far: FarEnd
) -> None:
    far.script = [reply(delay=2.0)]
    breaker = Breaker("far", BreakerPolicy(min_calls=1, window=1, open_seconds=60.0))
    with pytest.raises(CapillaryTimeoutError):
        await send(session, far, new_call(limit=0.2), (BreakerGuard(breaker, rejections()),))
    assert breaker.state is BreakerState.OPEN


# ----------------------------------------------------------------------------------------------- limiter


async def test_the_limiter_sheds_a_call_it_cannot_serve_in_time_and_frees_the_breaker_probe(
    session: aiohttp.ClientSession, far: FarEnd
) -> None:
    limiter, counts = OutboundLimiter(60.0), rejections()  # one a second, a burst of a few
    while limiter.reserve(Priority.BACKOFFICE, 0.0) >= 0:
        pass  # spend the back office's share
    breaker = Breaker("far", BreakerPolicy(min_calls=1, window=1, open_seconds=0.0, probes=1))
    breaker.record(breaker.admit(), failed=True, seconds=0.0)  # half-open: one probe
    stages = (BreakerGuard(breaker, counts), RateGuard(limiter, counts))
    with pytest.raises(CapillaryUnavailable) as caught:
        await send(session, far, new_call(ops.ISSUE, limit=0.3), stages)
    assert (caught.value.reason, far.received, counts["rate_limited", Priority.BACKOFFICE]) == ("rate_limited", 0, 1)
    assert caught.value.retry_after > 0
    assert breaker.admit() != REJECTED  # the probe's slot is free again


async def test_a_redeem_takes_the_reserve_the_back_office_may_not(session: aiohttp.ClientSession, far: FarEnd) -> None:
    limiter = OutboundLimiter(60.0)
    while limiter.reserve(Priority.BACKOFFICE, 0.0) >= 0:
        pass
    value = await send(session, far, new_call(priority=Priority.REDEEM), (RateGuard(limiter, rejections()),))
    assert value.entity
    assert far.received == 1


# ---------------------------------------------------------------------------------------------- observer


async def test_the_observer_hears_of_every_attempt(session: aiohttp.ClientSession, far: FarEnd) -> None:
    far.script = [reply(503, b"", request_id="cap-a"), reply(request_id="cap-b")]
    reports = Reports()
    retry = Retry(2, RetryBudget(0.1), dict.fromkeys(ops.OPERATIONS, 0), pause=no_pause)
    await send(session, far, new_call(), (retry, Observe(reports)))
    seen = [(r.operation, r.outcome, r.http_status, r.request_id) for r in reports.calls]
    assert seen == [("series_get", "http_5xx", 503, "cap-a"), ("series_get", "ok", 200, "cap-b")]
    assert all(r.seconds >= 0 for r in reports.calls)


async def test_the_observer_is_not_told_of_a_call_refused_before_it_was_sent(
    session: aiohttp.ClientSession, far: FarEnd
) -> None:
    reports = Reports()
    with pytest.raises(CapillaryError):
        await send(
            session, far, new_call(deadline=time.monotonic() - 1), (DeadlineGuard(rejections()), Observe(reports))
        )
    assert reports.calls == []
