"""The benchmark's upstream: the Capillary sandbox in its own process, seeded with fresh coupons before it serves.

``python -m bench.upstream --latency-ms 20 --customers 1000`` prints ``READY <port>`` once it listens on 127.0.0.1.
Besides the sandbox's own routes it answers two benchmark-only admin routes (no auth):

    GET  /__bench/calls[?clear=1]   {"counts": {operation: n}, "total": n}; ``clear=1`` then forgets the calls
    POST /__bench/seed              {"customers": n}: make sure customers 0..n-1 exist with their fresh codes

It runs without the cyclic garbage collector (see `main`), so its pauses do not show up in every target's latency.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import sys
import time
from collections.abc import Sequence
from typing import Final

from aiohttp import web

from bench import data
from service.sandbox import SANDBOX_KEY, Sandbox, SandboxConfig, create_sandbox_app

#: Customer ids of the benchmark's customers start here, far from the demo customers.
FIRST_CUSTOMER_ID: Final = 5_000_000
SEEDED: Final = web.AppKey("bench_seeded", list)


def seed(sandbox: Sandbox, seeded: list[int], customers: int) -> int:
    """Create customers ``seeded[0]..customers-1`` with their codes; return how many were added."""
    if data.SERIES_ID not in sandbox.state.series:
        sandbox.add_series(
            description="bench: 100 off, no limits",
            discount_type="ABS",
            discount_value=100,
            valid_days=3650,
            series_id=data.SERIES_ID,
        )
    start = seeded[0]
    for index in range(start, customers):
        customer = sandbox.add_customer(mobile=data.mobile(index), customer_id=FIRST_CUSTOMER_ID + index)
        first = index * data.CODES_PER_CUSTOMER
        for unit in range(first, first + data.CODES_PER_CUSTOMER):
            sandbox.issue_coupon(data.SERIES_ID, customer.id, data.code(unit))
    seeded[0] = max(start, customers)
    return max(0, customers - start)


async def calls(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX_KEY]
    counts = dict(sandbox.call_counts())
    body = {"counts": counts, "total": sum(counts.values())}
    if request.query.get("clear") == "1":
        sandbox.calls.clear()
    return web.json_response(body)


async def seed_more(request: web.Request) -> web.Response:
    body = await request.json()
    customers = body.get("customers") if isinstance(body, dict) else None
    if not isinstance(customers, int) or not 0 <= customers <= 5_000_000:
        return web.json_response({"error": "customers: an integer 0..5000000"}, status=400)
    started = time.perf_counter()
    added = seed(request.app[SANDBOX_KEY], request.app[SEEDED], customers)
    return web.json_response(
        {"customers": request.app[SEEDED][0], "added": added, "seconds": round(time.perf_counter() - started, 3)}
    )


def build(latency_ms: float, customers: int, token_ttl: int) -> web.Application:
    app = create_sandbox_app(
        SandboxConfig(
            client_key=data.CLIENT_KEY,
            client_secret=data.CLIENT_SECRET,
            latency_ms=latency_ms,
            token_ttl_seconds=token_ttl,
        )
    )
    app[SEEDED] = [0]
    seed(app[SANDBOX_KEY], app[SEEDED], customers)
    app.router.add_get(data.CALLS_PATH, calls)
    app.router.add_post(data.SEED_PATH, seed_more)
    return app


async def serve(host: str, port: int, app: web.Application) -> None:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        print(f"READY {runner.addresses[0][1]}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--customers", type=int, default=0, help="customers to seed before serving")
    parser.add_argument("--token-ttl", type=int, default=86_400, help="OAuth token lifetime, seconds")
    args = parser.parse_args(argv)
    app = build(args.latency_ms, args.customers, args.token_ttl)
    # The stand-in upstream holds a large, growing state (every coupon and redemption): its cyclic collections would
    # pause every target alike and blur their tails, so it runs without them (it is not what is measured).
    gc.collect()
    gc.freeze()
    gc.disable()
    asyncio.run(serve(args.host, args.port, app))
    return 0


if __name__ == "__main__":
    sys.exit(main())
