"""Gateways with offline acceptance on, in front of the sandbox: the journal in the tests' Redis database, or in a
SQLite file of the test's own."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from service.app import create_app
from service.config import CacheSettings, OfflineSettings, Settings, StateSettings
from tests.conftest import TEST_ACCESS, TEST_KEYS, TILL_KEY, GatewayClient, StartUpstream, Upstream, bearer, clean_redis

#: Short times: the till's wait and the ledger's slack; the settler runs only when a test asks (POST settle).
FAST = {"redeem_deadline": 2.0, "lease_margin": 0.2, "reconcile_interval": 0.1}

MakeGateway = Callable[..., Awaitable[GatewayClient]]


@pytest.fixture
async def offline_upstream(start_upstream: StartUpstream) -> Upstream:
    """The sandbox with upload jobs processed as soon as they are polled."""
    return await start_upstream(upload_job_seconds=0)


@pytest.fixture(params=["redis", "sqlite"])
async def journal(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """Where the journal (and the ledger) live: Redis for both, or the SQLite file with the in-memory ledger."""
    if request.param == "redis":
        async with clean_redis() as url:
            yield {"redis_url": url}
        return
    yield {"journal_path": str(tmp_path / "offline.sqlite3")}


@pytest.fixture
def make_gateway(aiohttp_client: Any, offline_upstream: Upstream, journal: dict[str, Any]) -> MakeGateway:
    """``await make_gateway(key=TILL_KEY, policy_file=..., app_out=[])``: a gateway with OFFLINE_MODE=on."""

    async def make(
        *,
        key: str = TILL_KEY,
        policy_file: str | None = None,
        breaker_min_calls: int = 1000,
        cache: CacheSettings | None = None,
        **state: Any,
    ) -> GatewayClient:
        capillary = dataclasses.replace(
            offline_upstream.settings(timeout=1.0), breaker_min_calls=breaker_min_calls, retry_attempts=0
        )
        settings = Settings(
            capillary=capillary,
            cache=cache or CacheSettings(),
            state=StateSettings(redis_url=journal.get("redis_url"), **{**FAST, **state}),
            access=TEST_ACCESS,
            offline=OfflineSettings(
                enabled=True,
                policy_file=policy_file,
                journal_path=journal.get("journal_path"),
                settle_interval=3600.0,
                job_poll_interval=0.01,
            ),
        )
        client: TestClient[Any, Any] = await aiohttp_client(create_app(settings, keys=TEST_KEYS), headers=bearer(key))
        return client

    return make
