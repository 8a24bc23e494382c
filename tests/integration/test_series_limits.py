"""A series lookup waits for a shared fetch as long as the work it serves may: the request's deadline when the work
gives none, its own when it does (a redeem that outlives its till's wait)."""

from __future__ import annotations

import time

from service.capillary.client import CapillaryClient
from service.deadline import DEADLINE
from service.redemption.flow import CallLimits
from service.sandbox import DEMO, Fault, FaultKind
from service.series import open_catalog
from tests.conftest import Upstream

ABS = DEMO.series_of("abs").id


async def test_a_lookup_waits_until_its_own_deadline_not_the_requests(
    oauth_client: CapillaryClient, upstream: Upstream
) -> None:
    upstream.sandbox.add_fault(Fault(FaultKind.LATENCY, "series_get", delay_seconds=0.6))
    async with open_catalog(oauth_client, cache_url=None, ttl=60, timeout=0.5, lookup_timeout=2) as catalog:
        token = DEADLINE.set(time.monotonic() + 0.1)  # the request's deadline: sooner than the answer
        try:
            started = time.monotonic()
            assert await catalog.by_ids([ABS]) == {}  # gave up at the request's deadline
            assert time.monotonic() - started < 0.5
            found = await catalog.by_ids([ABS], limits=CallLimits(time.monotonic() + 5.0, urgent=True))
        finally:
            DEADLINE.reset(token)
    assert list(found) == [ABS]
    assert upstream.sandbox.call_count("series_get") == 1  # the one fetch, shared by both waits
