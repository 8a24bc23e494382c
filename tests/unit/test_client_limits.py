"""The deadline and priority of a Capillary call are given to it: per call, or by the client's ambient source for
callers that give none. Against the embedded sandbox."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable

import pytest

from service.capillary.client import Ambient, CapillaryClient
from service.capillary.coupons import CapillaryCoupons
from service.capillary.errors import CapillaryTimeoutError
from service.capillary.resilience import Priority
from service.deadline import DEADLINE, current
from service.redemption.flow import CallLimits, UpstreamFailure
from service.redemption.models import CustomerRef
from service.sandbox import DEMO, Fault, FaultKind
from tests.conftest import Upstream

ABS = DEMO.series_of("abs").id
OpenClient = Callable[..., CapillaryClient]


@pytest.fixture
async def open_client(upstream: Upstream) -> AsyncIterator[OpenClient]:
    clients: list[CapillaryClient] = []

    def open_(ambient: Ambient | None = None) -> CapillaryClient:
        clients.append(CapillaryClient(upstream.settings("oauth"), ambient=ambient))
        return clients[-1]

    yield open_
    for client in clients:
        await client.close()


def past() -> float:
    return time.monotonic() - 1.0


async def test_a_call_past_its_deadline_is_not_sent(open_client: OpenClient, upstream: Upstream) -> None:
    client = open_client()
    with pytest.raises(CapillaryTimeoutError) as caught:
        await client.series([ABS], deadline=past())
    assert caught.value.maybe_applied is False
    assert upstream.sandbox.call_count() == 0
    assert client.rejections["no_time", Priority.CHECK] == 1  # the operation's own priority


async def test_an_explicit_priority_is_the_calls(open_client: OpenClient, upstream: Upstream) -> None:
    client = open_client()
    with pytest.raises(CapillaryTimeoutError):
        await client.series([ABS], deadline=past(), priority=Priority.BACKOFFICE)
    assert client.rejections["no_time", Priority.BACKOFFICE] == 1


async def test_a_slow_answer_ends_at_the_calls_deadline(open_client: OpenClient, upstream: Upstream) -> None:
    upstream.sandbox.add_fault(Fault(FaultKind.LATENCY, "series_get", delay_seconds=3))
    client = open_client()
    started = time.monotonic()
    with pytest.raises(CapillaryTimeoutError):
        await client.series([ABS], deadline=time.monotonic() + 0.4)
    assert time.monotonic() - started < 1.4
    assert upstream.sandbox.call_count("series_get") == 1


async def test_the_ambient_source_serves_calls_given_none(open_client: OpenClient, upstream: Upstream) -> None:
    client = open_client(ambient=lambda: (past(), True))
    with pytest.raises(CapillaryTimeoutError):
        await client.series([ABS])
    assert client.rejections["no_time", Priority.REDEEM] == 1  # urgent work goes first
    assert upstream.sandbox.call_count() == 0
    reply = await client.series([ABS], deadline=time.monotonic() + 5.0)  # a call's own deadline comes first
    assert [s.id for s in reply.entity] == [ABS]


async def test_without_an_ambient_source_the_client_reads_no_context(
    open_client: OpenClient, upstream: Upstream
) -> None:
    deadline = DEADLINE.set(past())
    try:
        assert current()[0] is not None
        reply = await open_client().series([ABS])
    finally:
        DEADLINE.reset(deadline)
    assert [s.id for s in reply.entity] == [ABS]


async def test_the_request_deadline_reaches_the_client_through_current(
    open_client: OpenClient, upstream: Upstream
) -> None:
    client = open_client(ambient=current)
    token = DEADLINE.set(past())
    try:
        with pytest.raises(CapillaryTimeoutError):
            await client.series([ABS])
    finally:
        DEADLINE.reset(token)
    assert client.rejections["no_time", Priority.CHECK] == 1
    assert [s.id for s in (await client.series([ABS])).entity] == [ABS]  # no deadline: the call's own limit


async def test_the_adapter_gives_the_client_a_redeems_limits(open_client: OpenClient, upstream: Upstream) -> None:
    """Urgent work goes first even on an operation of lower priority (the check), under the deadline it gives;
    work that gives none keeps the ambient deadline and each operation's own priority."""
    client = open_client(ambient=lambda: (past(), False))
    coupons = CapillaryCoupons(client)
    alice = CustomerRef("mobile", DEMO.customer("alice").mobile)
    with pytest.raises(UpstreamFailure) as caught:
        await coupons.check(alice, ["ABS-ALICE-1"], store=None, limits=CallLimits(past(), urgent=True))
    assert caught.value.failure.error.code == "UPSTREAM_TIMEOUT"
    assert client.rejections["no_time", Priority.REDEEM] == 1
    with pytest.raises(UpstreamFailure):
        await coupons.check(alice, ["ABS-ALICE-1"], store=None)  # the ambient deadline, already spent
    assert client.rejections["no_time", Priority.CHECK] == 1
    assert upstream.sandbox.call_count() == 0
    verdicts = await coupons.check(alice, ["ABS-ALICE-1"], store=None, limits=CallLimits(math.inf))  # no deadline
    assert verdicts["ABS-ALICE-1"].ok
