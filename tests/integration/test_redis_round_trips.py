"""Round trips to Redis per request, counted where redis-py sends and exported per route: a first redeem is two
(claim and lock, then record and unlock), a replay is one, and the series cache answers from its in-process copy."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.cache import open_cache
from service.config import CacheSettings, StateSettings
from service.sandbox import DEMO
from tests.conftest import GatewayClient, StartGateway, Upstream, clean_redis
from tests.integration.conftest import FAST

CACHE_URL = f"redis://127.0.0.1:6379/{os.environ.get('TEST_REDIS_CACHE_DB', '14')}"
ALICE = {"mobile": DEMO.customer("alice").mobile}
ROUTE = "/v1/redemptions"


@pytest.fixture
async def redis_gateway(start_gateway: StartGateway, upstream: Upstream) -> AsyncIterator[GatewayClient]:
    async with clean_redis() as url:
        state = StateSettings(redis_url=url, **FAST)  # type: ignore[arg-type]
        yield await start_gateway(upstream, state=state, cache=CacheSettings(url=CACHE_URL))
    for namespace in ("pos_coupon:series:", "pos_coupon:code:"):
        cache = open_cache(CACHE_URL, namespace, int, 1.0)
        await cache.clear(namespace=namespace)
        await cache.close()


async def _trips(gateway: GatewayClient) -> tuple[float, float]:
    """(requests observed, round trips in total) of the redeem route."""
    text = await (await gateway.get("/metrics")).text()
    found = {"count": 0.0, "sum": 0.0}
    for family in text_string_to_metric_families(text):
        if family.name != "pos_coupon_redis_round_trips_per_request":
            continue
        for sample in family.samples:
            if sample.labels.get("route") == ROUTE and sample.name.endswith(("_count", "_sum")):
                found[sample.name.rsplit("_", 1)[1]] = sample.value
    return found["count"], found["sum"]


async def _redeem_trips(gateway: GatewayClient, code: str, key: str) -> tuple[int, float]:
    before = await _trips(gateway)
    body = {"customer": ALICE, "codes": [code], "billAmount": "1000.00", "transactionNumber": f"T-{key}"}
    response = await gateway.post(ROUTE, json=body, headers={"Idempotency-Key": key})
    await response.read()
    after = await _trips(gateway)
    assert after[0] == before[0] + 1
    return response.status, after[1] - before[1]


async def test_a_redeem_costs_two_round_trips_and_a_replay_one(redis_gateway: GatewayClient) -> None:
    first, second = DEMO.codes("abs", "alice")[:2]
    validate = {"customer": ALICE, "codes": [first, second], "billAmount": "1000.00"}
    response = await redis_gateway.post("/v1/redemptions/validate", json=validate)
    assert response.status == 200  # the codes' series are now known to this process

    status, trips = await _redeem_trips(redis_gateway, first, "rt-1")
    assert (status, trips) == (200, 2)  # begin (claim + lock), resolve (record + unlock)
    status, trips = await _redeem_trips(redis_gateway, first, "rt-1")
    assert (status, trips) == (200, 1)  # the replay: one read


async def test_a_code_this_process_never_saw_costs_one_more_read(redis_gateway: GatewayClient) -> None:
    code = DEMO.codes("abs", "alice")[0]  # a gateway of its own: never seen here
    status, trips = await _redeem_trips(redis_gateway, code, "rt-fresh")
    # begin, the code's series looked up in Redis (one MGET; a miss here), resolve; the series learnt from the
    # answer is written behind the request, in a batch of its own
    assert (status, trips) == (200, 3)
