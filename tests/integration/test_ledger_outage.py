"""The ledger's Redis goes away while a redeem is in flight (issue 14, item 3).

Each test runs a Redis server of its own on a free port (never the shared one), kills it while Capillary is
applying a redeem, and starts it again, empty, as a Redis restarted without persistence would be. What Capillary
answered goes to the till with its ref; a replay meanwhile is "in progress", never a second redeem; the record is
written once the store is back, and another gateway then reads it there.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as redis

from service.config import StateSettings
from service.sandbox import Fault, FaultKind
from tests.conftest import GatewayClient, StartGateway, Upstream, free_port
from tests.integration.conftest import FAST
from tests.integration.test_exactly_once import REDEEM, _body, _until

MULTI = "MULTI-ALICE-1"  # multi-use: a second redeem would be applied, so a replay that runs again shows


class RedisServer:
    """A redis-server process of the test's own: started, killed and started again on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url)
        try:
            for _ in range(200):
                try:
                    if await client.ping():
                        return
                except (redis.ConnectionError, OSError):
                    await asyncio.sleep(0.02)
        finally:
            await client.aclose()
        raise AssertionError(f"redis-server did not start on port {self.port}")

    async def kill(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()


@pytest.fixture
async def own_redis() -> AsyncIterator[RedisServer]:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server must be installed under CI")
        pytest.skip("no redis-server to start")
    server = RedisServer()
    await server.start()
    try:
        yield server
    finally:
        await server.kill()


async def _redeem_while_redis_dies(
    gateway: GatewayClient, upstream: Upstream, server: RedisServer, key: str
) -> tuple[int, dict[str, Any]]:
    """Send a redeem; once Capillary has it (and holds its answer), kill Redis; return what the till got."""
    request = asyncio.create_task(gateway.post(REDEEM, json=_body(MULTI), headers={"Idempotency-Key": key}))
    await _until(lambda: upstream.sandbox.call_count("redeem") > 0, budget=10.0)  # by the clock, not by a count
    assert upstream.sandbox.call_count("redeem") == 1
    await server.kill()
    response = await request
    payload: dict[str, Any] = await response.json()
    return response.status, payload


async def _written(gateway: GatewayClient) -> float:
    text = await (await gateway.get("/metrics")).text()
    for line in text.splitlines():
        if line.startswith('pos_coupon_ledger_deferred_writes_total{result="written"}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no pos_coupon_ledger_deferred_writes_total in /metrics")


async def _until_recorded(gateway: GatewayClient, count: float = 1.0) -> None:
    for _ in range(300):
        if await _written(gateway) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the answer was not recorded after the ledger came back")


async def test_an_applied_redemption_is_answered_and_recorded_when_the_ledger_is_back(
    start_gateway: StartGateway, upstream: Upstream, own_redis: RedisServer
) -> None:
    state = StateSettings(redis_url=own_redis.url, timeout=0.2, **{**FAST, "redeem_deadline": 10.0})
    gateway = await start_gateway(upstream, timeout=2.0, state=state)
    upstream.sandbox.add_fault(Fault(FaultKind.LATENCY, "redeem", delay_seconds=0.5))
    status, payload = await _redeem_while_redis_dies(gateway, upstream, own_redis, "till-9-a")
    [redemption] = upstream.sandbox.redemptions_of(MULTI)
    assert (status, payload["status"]) == (200, "redeemed")  # as Capillary answered, with its ref
    assert payload["coupons"][0]["redemptionId"] == redemption.id

    replay = await gateway.post(REDEEM, json=_body(MULTI), headers={"Idempotency-Key": "till-9-a"})
    assert (replay.status, (await replay.json())["error"]["code"]) == (409, "REQUEST_IN_PROGRESS")
    ready = await (await gateway.get("/readyz")).json()
    assert ready["status"] == "degraded"
    assert any("not yet recorded" in reason for reason in ready["reasons"])

    await own_redis.start()  # back, and empty: it kept nothing
    await _until_recorded(gateway)
    replay = await gateway.post(REDEEM, json=_body(MULTI), headers={"Idempotency-Key": "till-9-a"})
    assert replay.status == 200
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert (await replay.json()) == payload
    other = await start_gateway(upstream, timeout=2.0, state=state)  # another replica reads it from Redis
    assert (await (await other.get(f"{REDEEM}/{payload['ref']}")).json()) == payload
    assert upstream.sandbox.call_count("redeem") == 1
    assert len(upstream.sandbox.redemptions_of(MULTI)) == 1


async def test_past_the_deadline_the_till_gets_its_ref_not_a_503(
    start_gateway: StartGateway, upstream: Upstream, own_redis: RedisServer
) -> None:
    state = StateSettings(redis_url=own_redis.url, timeout=0.2, **{**FAST, "redeem_deadline": 0.5})
    # The till's answer comes at the 0.5 s deadline; the redeem goes on behind it for up to deadline + upstream
    # timeout (5.7 s): room for a busy machine to send it before the gateway gives up on it.
    gateway = await start_gateway(upstream, timeout=5.0, state=state)
    upstream.sandbox.add_fault(Fault(FaultKind.LATENCY, "redeem", delay_seconds=1.0))
    status, payload = await _redeem_while_redis_dies(gateway, upstream, own_redis, "till-9-b")
    assert (status, payload["status"]) == (202, "pending")  # not 503 "paused" with no ref
    ref = payload["ref"]

    replay = await gateway.post(REDEEM, json=_body(MULTI), headers={"Idempotency-Key": "till-9-b"})
    assert (replay.status, (await replay.json())["error"]["code"]) == (409, "REQUEST_IN_PROGRESS")
    for _ in range(300):  # this gateway answers for the ref while the ledger is away
        record = await (await gateway.get(f"{REDEEM}/{ref}")).json()
        if record["status"] != "pending":
            break
        await asyncio.sleep(0.05)
    [redemption] = upstream.sandbox.redemptions_of(MULTI)
    assert (record["status"], record["coupons"][0]["redemptionId"]) == ("redeemed", redemption.id)

    await own_redis.start()
    await _until_recorded(gateway)
    replay = await gateway.post(REDEEM, json=_body(MULTI), headers={"Idempotency-Key": "till-9-b"})
    answer = await replay.json()
    assert (replay.status, answer["ref"], answer["status"]) == (200, ref, "redeemed")
    assert upstream.sandbox.call_count("redeem") == 1
    metrics = await (await gateway.get("/metrics")).text()
    assert 'pos_coupon_ledger_deferred_writes_total{result="gave_up"} 0.0' in metrics
    assert "pos_coupon_ledger_unwritten_records 0.0" in metrics
