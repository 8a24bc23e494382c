"""A gateway killed between Capillary applying a redeem and the till getting the answer: the till's retry,
through another gateway sharing the Redis ledger, gets the redemption that went through, and nothing twice."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from service.access.keys import key_entry
from service.config import StateSettings
from service.sandbox import Fault, FaultKind
from tests.conftest import ADMIN_KEY, RESPONSE_STYLES, StartGateway, StartUpstream, bearer, free_port, serve_env
from tests.integration.test_exactly_once import FAST, _body, till


@pytest.fixture(params=RESPONSE_STYLES)
def response_style(request: pytest.FixtureRequest) -> str:
    """Every test here runs against each shape of Capillary's redeem answers."""
    style: str = request.param
    return style


STATE_ENV = {"REDEEM_DEADLINE_SECONDS": "2", "LEASE_MARGIN_SECONDS": "0.2", "RECONCILE_INTERVAL_SECONDS": "0.2"}


async def _wait_healthy(url: str, process: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            if process.returncode is not None:
                raise AssertionError(f"gateway exited: {await process.communicate()}")
            try:
                async with session.get(f"{url}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("gateway did not start")


async def test_gateway_killed_between_apply_and_answer(
    start_upstream: StartUpstream, start_gateway: StartGateway, redis_db: str, tmp_path: Path
) -> None:
    upstream = await start_upstream()
    port = free_port()
    keys = tmp_path / "keys.json"  # the same key (store S001) as the fixtures' gateway that takes over
    keys.write_text(json.dumps([key_entry(ADMIN_KEY, name="admin-s001", store="S001", scopes=["redeem", "admin"])]))
    env = serve_env(
        upstream.url,
        str(keys),
        port,
        CAPILLARY_TIMEOUT_SECONDS="1",
        CAPILLARY_CONNECT_TIMEOUT_SECONDS="0.5",
        REDIS_URL=redis_db,
        **STATE_ENV,
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "serve", env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        await _wait_healthy(f"http://127.0.0.1:{port}", process)
        # Capillary applies the redeem, then holds the answer: the gateway is killed while it waits.
        upstream.sandbox.add_fault(Fault(FaultKind.APPLY_THEN_TIMEOUT, "redeem", delay_seconds=30))
        async with aiohttp.ClientSession() as session:
            request = asyncio.create_task(
                session.post(
                    f"http://127.0.0.1:{port}/v1/redemptions",
                    json=_body("ABS-ALICE-1"),
                    headers={"Idempotency-Key": "till-42", **bearer(ADMIN_KEY)},
                )
            )
            for _ in range(100):
                if upstream.sandbox.redemptions_of("ABS-ALICE-1"):
                    break
                await asyncio.sleep(0.02)
            assert len(upstream.sandbox.redemptions_of("ABS-ALICE-1")) == 1
            process.send_signal(signal.SIGKILL)
            await process.wait()
            with contextlib.suppress(aiohttp.ClientError):
                await request  # the till lost its answer
    finally:
        if process.returncode is None:
            process.kill()
        await process.communicate()

    upstream.sandbox.faults.clear()
    state = StateSettings(redis_url=redis_db, **FAST)
    other = await start_gateway(upstream, timeout=1.0, state=state)
    status, payload, seen = await till([other], _body("ABS-ALICE-1"), key="till-42")
    assert status == 200, seen
    assert payload["status"] == "redeemed"
    [redemption] = upstream.sandbox.redemptions_of("ABS-ALICE-1")
    assert payload["coupons"][0]["redemptionId"] == redemption.id
    assert 409 in seen  # the dead gateway's lease was honoured first
    assert upstream.sandbox.call_count("redeem") == 1


async def test_the_sweeper_resolves_pending_redemptions_alone(
    start_gateway: StartGateway, start_upstream: StartUpstream
) -> None:
    from service.app import LEDGER_STORE

    upstream = await start_upstream()
    gateway = await start_gateway(upstream, timeout=0.5, state=StateSettings(**FAST))
    upstream.sandbox.add_fault(Fault(FaultKind.APPLY_THEN_RESET, "redeem"))
    response = await gateway.post("/v1/redemptions", json=_body("ABS-ALICE-1"))
    pending: dict[str, Any] = await response.json()
    assert pending["status"] == "pending"
    store = gateway.app[LEDGER_STORE]
    for _ in range(50):
        entry = await store.load(pending["ref"])
        assert entry is not None
        if entry.state == "done":
            break
        await asyncio.sleep(0.05)
    assert entry.state == "done"
    assert entry.redemption_ids == {"ABS-ALICE-1": upstream.sandbox.redemptions_of("ABS-ALICE-1")[0].id}
    assert await store.unresolved() == []
