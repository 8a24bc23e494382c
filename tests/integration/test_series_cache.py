"""The series cache on both backends: Redis shared between gateways, memory by default, and a cache that fails
counting as a miss instead of failing the till."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager

import pytest

from service.app import SERIES
from service.cache import open_cache
from service.capillary.client import CapillaryClient
from service.config import CacheSettings
from service.sandbox import DEMO
from service.series import SeriesCatalog, open_catalog
from tests.conftest import StartGateway, Upstream

# The tests' own database, emptied of our keys after each test.
REDIS_URL = f"redis://127.0.0.1:6379/{os.environ.get('TEST_REDIS_CACHE_DB', '14')}"
NAMESPACES = ("pos_coupon:series:", "pos_coupon:code:")


def _redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    if not _redis_up():
        if os.environ.get("CI") == "true":
            pytest.fail("Redis must answer at 127.0.0.1:6379 under CI")
        pytest.skip("no Redis at 127.0.0.1:6379")
    yield REDIS_URL
    for namespace in NAMESPACES:
        cache = open_cache(REDIS_URL, namespace, int, 1.0)
        await cache.clear(namespace=namespace)
        await cache.close()


def _catalog(client: CapillaryClient, url: str | None) -> AbstractAsyncContextManager[SeriesCatalog]:
    return open_catalog(client, cache_url=url, ttl=60, timeout=0.5, lookup_timeout=2)


async def test_two_gateways_share_the_redis_cache(
    oauth_client: CapillaryClient, upstream: Upstream, redis_url: str
) -> None:
    codes = list(DEMO.codes("perc_capped"))
    async with _catalog(oauth_client, redis_url) as first:
        found = await first.for_codes(codes)
    assert {s.id for s in found.values()} == {DEMO.series_of("perc_capped").id}
    assert found[codes[0]].discount_upto == 150
    calls = upstream.sandbox.call_count()

    async with _catalog(oauth_client, redis_url) as second:
        again = await second.for_codes(codes)
        assert again == found
        assert (second.stats.code.hits, second.stats.series.hits) == (len(codes), 1)  # the codes, then their one series
    assert upstream.sandbox.call_count() == calls  # a second replica asks Capillary nothing


async def test_memory_cache_hands_out_copies(oauth_client: CapillaryClient) -> None:
    async with _catalog(oauth_client, None) as catalog:
        one = await catalog.get(DEMO.series_of("abs").id)
        two = await catalog.get(DEMO.series_of("abs").id)
        assert one == two
        assert one is not two  # decoded from the stored bytes, like Redis
        assert (catalog.stats.series.hits, catalog.stats.series.misses) == (1, 1)


async def test_a_failing_cache_is_a_miss_not_an_outage(start_gateway: StartGateway, upstream: Upstream) -> None:
    gateway = await start_gateway(upstream, cache=CacheSettings(url="redis://127.0.0.1:1/0", timeout=0.2))
    body = {"customer": {"mobile": DEMO.customer("alice").mobile}, "codes": ["ABS-ALICE-1"], "billAmount": "500"}
    response = await gateway.post("/v1/redemptions/validate", json=body)
    payload = await response.json()
    assert response.status == 200
    assert payload["coupons"][0]["discount"]["amount"] == "100.00"
    assert gateway.app[SERIES].stats.code.errors >= 1
    assert gateway.app[SERIES].stats.series.errors >= 1
