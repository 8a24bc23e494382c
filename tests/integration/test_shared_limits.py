"""Limits that hold across replicas: three real gateway processes on one Redis spend one Capillary budget between
them (and one rate per API key), not one each."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from service.access.keys import key_entry
from service.sandbox import DEMO
from tests.conftest import ADMIN_KEY, StartUpstream, Upstream, bearer, free_port
from tests.integration.test_restart import _wait_healthy

BUDGET = 120  # Capillary calls per minute for the whole brand: 2 a second, a burst of 12 (six seconds' worth)
BURST = max(1.0 / 0.6 + 1.0, BUDGET / 10.0)  # OutboundLimiter's capacity for that budget
REPLICAS = 3


@contextlib.asynccontextmanager
async def _gateways(
    upstream: Upstream, redis_url: str, tmp_path: Path, env: dict[str, str]
) -> AsyncIterator[list[str]]:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps([key_entry(ADMIN_KEY, name="admin-s001", store="S001", scopes=["redeem", "admin"])]))
    base = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CAPILLARY_", "GATEWAY_", "SANDBOX_"))},
        "CAPILLARY_API_URL": upstream.url,
        "CAPILLARY_UPLOAD_URL": upstream.url,
        "CAPILLARY_AUTH": "oauth",
        "CAPILLARY_CLIENT_KEY": DEMO.client_key,
        "CAPILLARY_CLIENT_SECRET": DEMO.client_secret,
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_API_KEYS_FILE": str(keys),
        "LOG_LEVEL": "warning",
        "REDIS_URL": redis_url,
        "GATEWAY_REQUEST_DEADLINE_SECONDS": "0.5",  # a call short of budget waits for it no longer than this
        "GATEWAY_SHUTDOWN_GRACE_SECONDS": "0",
        "GATEWAY_SHUTDOWN_TIMEOUT_SECONDS": "2",
        **env,
    }
    processes, urls = [], []
    try:
        for _ in range(REPLICAS):
            port = free_port()
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "service",
                "serve",
                env={**base, "GATEWAY_PORT": str(port)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            processes.append(process)
            urls.append(f"http://127.0.0.1:{port}")
        for url, process in zip(urls, processes, strict=True):
            await _wait_healthy(url, process)
        yield urls
    finally:
        for process in processes:
            if process.returncode is None:
                process.terminate()
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                try:
                    await asyncio.wait_for(process.communicate(), 10)
                except TimeoutError:
                    process.kill()
                    await process.wait()


def _limited_calls(upstream: Upstream) -> int:
    """Capillary calls under the budget: all but the token requests (they are never held back)."""
    counts = upstream.sandbox.call_counts()
    return sum(n for operation, n in counts.items() if operation != "token")


async def test_three_replicas_spend_one_capillary_budget(
    start_upstream: StartUpstream, redis_db: str, tmp_path: Path
) -> None:
    upstream = await start_upstream()
    env = {"CAPILLARY_RATE_LIMIT_PER_MINUTE": str(BUDGET), "GATEWAY_RATE_LIMIT_PER_SECOND": "1000"}
    async with _gateways(upstream, redis_db, tmp_path, env) as urls:
        body = {"customer": {"mobile": DEMO.customer("alice").mobile}, "codes": ["ABS-ALICE-1"], "billAmount": "500"}
        statuses: list[int] = []
        async with aiohttp.ClientSession(headers=bearer(ADMIN_KEY)) as session:

            async def till(url: str) -> None:
                for _ in range(8):
                    async with session.post(f"{url}/v1/redemptions/validate", json=body) as response:
                        await response.read()
                        statuses.append(response.status)

            before, started = _limited_calls(upstream), time.monotonic()
            await asyncio.gather(*(till(url) for url in urls for _ in range(4)))  # 4 tills on each replica
            elapsed = time.monotonic() - started
        spent = _limited_calls(upstream) - before
    allowed = BURST + BUDGET / 60.0 * elapsed
    # Each replica on its own would have let through a burst of its own: three times as much.
    assert spent <= allowed + 1, f"{spent} Capillary calls in {elapsed:.1f} s; the shared budget allows {allowed:.0f}"
    assert spent >= BURST / 2  # it did spend the budget
    assert 200 in statuses
    assert {429, 503} & set(statuses)  # past the budget, tills were told to come back later


async def test_three_replicas_share_each_keys_rate(
    start_upstream: StartUpstream, redis_db: str, tmp_path: Path
) -> None:
    upstream = await start_upstream()
    env = {"GATEWAY_RATE_LIMIT_PER_SECOND": "1", "GATEWAY_RATE_LIMIT_BURST": "6"}
    async with _gateways(upstream, redis_db, tmp_path, env) as urls:
        statuses: list[int] = []
        async with aiohttp.ClientSession(headers=bearer(ADMIN_KEY)) as session:
            started = time.monotonic()
            for _ in range(6):
                for url in urls:
                    async with session.get(f"{url}/v1/series/{DEMO.series_of('abs').id}") as response:
                        await response.read()
                        statuses.append(response.status)
            elapsed = time.monotonic() - started
    admitted = sum(1 for s in statuses if s != 429)
    assert admitted <= 6 + 1.0 * elapsed + 1  # one key's burst and rate across the three, not three times them
    assert admitted >= 6  # the key's burst was there to spend, whichever replica its requests reached
