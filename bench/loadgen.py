"""Open-loop load generator, run as its own process: ``python -m bench.loadgen`` reads one JSON command per line on
stdin and answers one JSON line on stdout per command (``{"op": "run", ...}`` or ``{"op": "quit"}``).

A run sends ``n`` requests at a fixed arrival rate: request ``i`` is due at ``t0 + i / rate`` whatever happened to
the earlier ones (open loop), and its latency is measured from that intended send time, not from when it actually
left, so a stalled server or a busy generator shows up in the latency (coordinated-omission correction, as wrk2).
Each request uses coupons never used before (see `bench.data`). Two kinds of target:

- ``http``: the gateway or the baseline, ``POST /v1/redemptions/validate`` or ``POST /v1/redemptions``;
- ``floor``: the generator itself makes the upstream calls (``is_redeemable``, then ``redeem`` / ``bulk/redeem``)
  with one token fetched once: the least any pass-through could take.

Everything is bounded: requests are capped in flight (a request waiting for a slot keeps its intended time), each
has a timeout, and a run ends at most ``timeout`` seconds after its last request was due.
"""

from __future__ import annotations

import asyncio
import gc
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import msgspec

from bench import data

_JSON: Final = {"Content-Type": "application/json", "Accept": "application/json"}


class RunSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    op: str = "run"
    kind: str  # "http" or "floor"
    base: str  # target base URL (for "floor", the upstream's); several, comma-separated: request i goes to the i-th
    scenario: str  # "validate" or "redeem"
    codes: int = 1
    rate: float
    n: int
    first_unit: int
    run_id: str = "r"
    timeout: float = 10.0
    max_inflight: int = 2000
    #: Sent as ``Authorization: Bearer <api_key>`` to an ``http`` target (the baseline ignores it).
    api_key: str | None = None


def check_loopback(url: str) -> None:
    """The benchmark only ever talks to this machine."""
    host = urlsplit(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"refusing to send load to {url!r}: only 127.0.0.1 is allowed")


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summarize(latencies: list[float]) -> dict[str, float | None]:
    """Milliseconds, rounded to microseconds."""
    ordered = sorted(latencies)

    def ms(value: float) -> float | None:
        return None if math.isnan(value) else round(value * 1000, 3)

    return {
        "min": ms(ordered[0] if ordered else math.nan),
        "p50": ms(percentile(ordered, 50)),
        "p90": ms(percentile(ordered, 90)),
        "p99": ms(percentile(ordered, 99)),
        "p999": ms(percentile(ordered, 99.9)),
        "max": ms(ordered[-1] if ordered else math.nan),
        "mean": ms(sum(ordered) / len(ordered) if ordered else math.nan),
    }


@dataclass
class _Run:
    spec: RunSpec
    latencies: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    #: Intended send time of each request not finished yet.
    pending: dict[int, float] = field(default_factory=dict)
    ok: int = 0
    last_done: float = 0.0


class Generator:
    def __init__(self) -> None:
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._tokens: dict[str, str] = {}

    def _session(self, base: str) -> aiohttp.ClientSession:
        session = self._sessions.get(base)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
            session = aiohttp.ClientSession(connector=connector)
            self._sessions[base] = session
        return session

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()

    async def _token(self, base: str) -> str:
        token = self._tokens.get(base)
        if token is None:
            body = {"key": data.CLIENT_KEY, "secret": data.CLIENT_SECRET}
            async with self._session(base).post(f"{base}/v3/oauth/token/generate", json=body) as response:
                response.raise_for_status()
                token = str((await response.json())["data"]["accessToken"])
            self._tokens[base] = token
        return token

    async def _sender(self, spec: RunSpec) -> Callable[[int], Awaitable[int]]:
        """A coroutine function sending request ``i`` of the run; returns the final HTTP status."""
        session = self._session(spec.base)
        timeout = aiohttp.ClientTimeout(total=spec.timeout)
        codes, first, run_id = spec.codes, spec.first_unit, spec.run_id
        redeem = spec.scenario == "redeem"
        if spec.scenario not in ("validate", "redeem"):
            raise ValueError(f"unknown scenario {spec.scenario!r}")
        if spec.kind == "http":
            path = "/v1/redemptions" if redeem else "/v1/redemptions/validate"
            bases = spec.base.split(",")  # replicas: the load spread over them in turn
            urls = [f"{b}{path}" for b in bases]
            sessions = [self._session(b) for b in bases]
            headers = {**_JSON, "Authorization": f"Bearer {spec.api_key}"} if spec.api_key else _JSON

            async def send_http(i: int) -> int:
                mobile, batch = data.request_codes(first, i, codes)
                body: dict[str, Any] = {"customer": {"mobile": mobile}, "codes": batch, "billAmount": data.BILL_AMOUNT}
                if redeem:
                    body["transactionNumber"] = f"B-{run_id}-{i}"
                k = i % len(urls)
                async with sessions[k].post(
                    urls[k], data=msgspec.json.encode(body), headers=headers, timeout=timeout
                ) as r:
                    await r.read()
                    return r.status

            return send_http
        if spec.kind != "floor":
            raise ValueError(f"unknown kind {spec.kind!r}")
        token = await self._token(spec.base)
        headers = {**_JSON, "X-CAP-API-OAUTH-TOKEN": token}
        check_url = f"{spec.base}/v2/coupon/is_redeemable"
        redeem_url = f"{spec.base}/v2/coupon/redeem" if codes == 1 else f"{spec.base}/v2/coupon/bulk/redeem"
        redeem_params = {} if codes == 1 else {"source": "INSTORE"}

        async def send_floor(i: int) -> int:
            mobile, batch = data.request_codes(first, i, codes)
            params = {"mobile": mobile, "code": ",".join(batch), "details": "false"}
            async with session.get(check_url, params=params, headers=headers, timeout=timeout) as r:
                await r.read()
                if r.status != 200 or not redeem:
                    return r.status
            body = {
                "billAmount": data.BILL_AMOUNT,
                "transactionNumber": f"F-{run_id}-{i}",
                "user": {"mobile": mobile},
                "redemptionRequestList": [{"code": c} for c in batch],
            }
            async with session.post(
                redeem_url, params=redeem_params, data=msgspec.json.encode(body), headers=headers, timeout=timeout
            ) as r:
                await r.read()
                return r.status

        return send_floor

    async def run(self, spec: RunSpec) -> dict[str, Any]:
        for base in spec.base.split(","):
            check_loopback(base)
        if spec.rate <= 0 or spec.n < 0:
            raise ValueError("rate must be positive and n non-negative")
        send = await self._sender(spec)
        loop = asyncio.get_running_loop()
        state = _Run(spec)
        slots = asyncio.Semaphore(spec.max_inflight)
        interval = 1.0 / spec.rate

        async def one(i: int, intended: float) -> None:
            try:
                status = str(await send(i))
            except TimeoutError:
                status = "timeout"
            except aiohttp.ClientError as exc:
                status = type(exc).__name__
            finally:
                slots.release()
            done = loop.time()
            del state.pending[i]
            state.last_done = max(state.last_done, done)
            state.latencies.append(done - intended)
            state.statuses[status] += 1
            if status == "200":
                state.ok += 1

        cpu_before = os.times()
        t0 = loop.time() + 0.05
        tasks: set[asyncio.Task[None]] = set()
        for i in range(spec.n):
            intended = t0 + i * interval
            delay = intended - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await slots.acquire()
            state.lags.append(loop.time() - intended)
            state.pending[i] = intended
            task = loop.create_task(one(i, intended))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        sent_by = loop.time()
        if tasks:
            _, pending = await asyncio.wait(set(tasks), timeout=spec.timeout + 2)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2)
                cut = loop.time()
                state.latencies.extend(cut - intended for intended in state.pending.values())
                state.statuses["unfinished"] += len(state.pending)
        cpu_after = os.times()
        span = max(state.last_done, sent_by) - t0
        lag = summarize(state.lags)
        return {
            "kind": spec.kind,
            "scenario": spec.scenario,
            "codes": spec.codes,
            "rate": spec.rate,
            "requests": spec.n,
            "ok": state.ok,
            "errors": spec.n - state.ok,
            "statuses": dict(state.statuses),
            "seconds": round(span, 3),
            "achieved_rate": round(state.ok / span, 1) if span > 0 else None,
            "latency_ms": summarize(state.latencies),
            "send_lag_ms": {"p99": lag["p99"], "max": lag["max"]},
            "generator_cpu_seconds": round(
                (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system), 3
            ),
        }


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(msgspec.json.encode(message).decode() + "\n")
    sys.stdout.flush()


async def serve() -> None:
    generator = Generator()
    loop = asyncio.get_running_loop()
    try:
        _emit({"ready": True, "pid": os.getpid()})
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            try:
                command = msgspec.json.decode(line)
                if command.get("op") == "quit":
                    return
                started = time.perf_counter()
                result = await generator.run(msgspec.convert(command, RunSpec))
                result["wall_seconds"] = round(time.perf_counter() - started, 3)
                _emit({"result": result})
            except Exception as exc:  # report and keep serving: the harness decides
                _emit({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        await generator.close()


def main() -> int:
    gc.collect()
    gc.freeze()  # what is imported is never collected: keeps the generator's own collections short
    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
