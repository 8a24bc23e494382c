"""SIGTERM to a real gateway process in the middle of a burst of redemptions: it turns unready at once, keeps
listening for its grace period, then refuses new connections while every accepted request finishes. No accepted
request fails, no redemption is lost, none is made without its answer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from service.access.keys import key_entry
from tests.conftest import StartUpstream, bearer, free_port, serve_env

KEY = "shutdown-test-key"
BURST = 60
SIGTERM_AFTER = 20  # requests sent before the signal
INTERVAL = 0.025  # between two requests of the burst


async def _wait_healthy(base: str, process: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            if process.returncode is not None:
                raise AssertionError(f"gateway exited with {process.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{base}/healthz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise AssertionError("gateway did not start")


async def test_sigterm_mid_burst_fails_no_accepted_request_and_loses_none(
    start_upstream: StartUpstream, tmp_path: Path
) -> None:
    upstream = await start_upstream(latency_ms=60, clock=lambda: datetime.now(UTC))
    sandbox = upstream.sandbox
    series = sandbox.add_series(description="shutdown burst", discount_value=5)
    codes: list[tuple[str, str]] = []
    for i in range(BURST):
        customer = sandbox.add_customer(mobile=f"91880000{i:04d}")
        codes.append((customer.mobile or "", sandbox.issue_coupon(series.id, customer.id).code))

    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps([key_entry(KEY, name="burst", store="S001", scopes=["redeem"])]))
    port = free_port()
    env = serve_env(
        upstream.url,
        str(keys),
        port,
        GATEWAY_RATE_LIMIT_PER_SECOND="10000",
        GATEWAY_SHUTDOWN_GRACE_SECONDS="0.4",
        GATEWAY_SHUTDOWN_TIMEOUT_SECONDS="15",
        LOG_LEVEL="warning",
        LOG_FORMAT="json",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        "serve",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        await _wait_healthy(base, process)
        # a new connection per request, so "accepted" is unambiguous: refused at connect, or answered
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector, headers=bearer(KEY)) as session:

            async def redeem(index: int) -> tuple[int, str, int | str]:
                mobile, code = codes[index]
                body = {
                    "customer": {"mobile": mobile},
                    "codes": [code],
                    "billAmount": "500.00",
                    "transactionNumber": f"T-BURST-{index}",
                }
                try:
                    async with session.post(f"{base}/v1/redemptions", json=body) as response:
                        return index, code, response.status
                except aiohttp.ClientConnectorError:
                    return index, code, "refused"
                except aiohttp.ClientError as exc:
                    return index, code, type(exc).__name__

            tasks = []
            readiness: list[int] = []
            for index in range(BURST):
                tasks.append(asyncio.ensure_future(redeem(index)))
                if index == SIGTERM_AFTER:
                    process.send_signal(signal.SIGTERM)
                    await asyncio.sleep(0.05)
                    with contextlib.suppress(aiohttp.ClientError):
                        async with session.get(f"{base}/readyz") as response:
                            readiness.append(response.status)
                await asyncio.sleep(INTERVAL)
            results = await asyncio.gather(*tasks)
        exit_code = await asyncio.wait_for(process.wait(), timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    outcomes = {index: outcome for index, _, outcome in results}
    assert exit_code == 0, (await process.stderr.read()).decode() if process.stderr else exit_code
    assert readiness == [503], "unready at once after SIGTERM"
    unexpected = {i: o for i, o in outcomes.items() if o not in (200, "refused")}
    assert not unexpected, f"accepted requests must be answered, and answered well: {unexpected}"
    assert all(outcomes[i] == 200 for i in range(SIGTERM_AFTER + 1)), "in flight at SIGTERM: finished"
    assert "refused" in outcomes.values(), "after the grace, new connections are refused"
    answered = {code for _, code, outcome in results if outcome == 200}
    redeemed = {code for _, code in codes if sandbox.redemptions_of(code)}
    assert redeemed == answered, "every answered redemption was made, and nothing was made unanswered"
