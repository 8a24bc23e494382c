"""The ledger backends the exactly-once tests run over: in memory, and the tests' Redis database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from service.config import StateSettings
from tests.conftest import GatewayClient, StartGateway, Upstream, clean_redis

# Short times for tests: the deadline a till waits, and slack before "not applied" may be concluded.
FAST = {"redeem_deadline": 1.0, "lease_margin": 0.2, "reconcile_interval": 0.1}

Gateway = Callable[..., Awaitable[GatewayClient]]


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[str | None]:
    """The ledger backend: None (in memory) or the tests' Redis database."""
    if request.param == "memory":
        yield None
        return
    async with clean_redis() as url:
        yield url


@pytest.fixture
def make_gateway(start_gateway: StartGateway, upstream: Upstream, backend: str | None) -> Gateway:
    """``await make_gateway(timeout=..., key=..., keys=..., **StateSettings fields)``: a gateway on the backend."""

    async def make(timeout: float = 0.5, *, key: str | None = None, keys: Any = None, **state: Any) -> GatewayClient:
        settings = StateSettings(redis_url=backend, **{**FAST, **state})
        options: dict[str, Any] = {"timeout": timeout, "state": settings}
        if key is not None:
            options["key"] = key
        if keys is not None:
            options["keys"] = keys
        return await start_gateway(upstream, **options)

    return make
