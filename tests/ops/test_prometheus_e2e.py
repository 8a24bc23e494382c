"""A real Prometheus server on loopback scrapes a gateway (with the sandbox) under a short burst of redemptions,
and its HTTP API reads back a non-zero redemption rate."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import aiohttp

from service.sandbox import DEMO
from tests.conftest import GatewayClient, free_port
from tests.ops.conftest import tool


async def test_prometheus_scrapes_the_gateway(gateway: GatewayClient, tmp_path: Path) -> None:
    target = f"{gateway.server.host}:{gateway.server.port}"
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: pos-coupon-gateway\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    process = await asyncio.create_subprocess_exec(
        tool("prometheus"),
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        await _query_until_positive(url, 'up{job="pos-coupon-gateway"}', budget=20)  # scraping has begun
        alice = DEMO.customer("alice").mobile
        for index, code in enumerate(DEMO.codes("perc", "alice") + DEMO.codes("abs", "alice")[:2]):
            body = {
                "customer": {"mobile": alice},
                "codes": [code],
                "billAmount": "100",
                "transactionNumber": f"P-{index}",
            }
            assert (await gateway.post("/v1/redemptions", json=body)).status == 200
            await asyncio.sleep(0.5)  # a burst spread over a few scrapes
        query = 'sum(increase(pos_coupon_redemptions_total{outcome="redeemed"}[1m]))'
        value = await _query_until_positive(url, query, budget=20)
        assert value > 0
    finally:
        process.terminate()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _query_until_positive(url: str, query: str, *, budget: float) -> float:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    async with aiohttp.ClientSession() as session:
        while loop.time() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{url}/api/v1/query", params={"query": query}) as response:
                    payload: dict[str, Any] = await response.json()
                    result = payload.get("data", {}).get("result", [])
                    if result and float(result[0]["value"][1]) > 0:
                        return float(result[0]["value"][1])
            await asyncio.sleep(0.5)
    raise AssertionError(f"Prometheus never saw a redemption: {query}")
