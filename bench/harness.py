"""One benchmark run: start the processes, drive them, collect every figure.

Plan (each step bounded in count and time; all traffic to 127.0.0.1):

1. the upstream (`bench.upstream`: the sandbox, fixed latency, faults off), the gateway (``python -m service
   serve``, LOG_LEVEL=info, in-memory series cache and ledger, or both in Redis), the baseline (`bench.baseline`)
   and the load generator (`bench.loadgen`), each its own process; a short warm-up of each target;
2. for each scenario (validate, redeem 1 code, redeem 5 codes) and each fixed rate: the floor, the baseline and the
   gateway one after the other, each with fresh coupons: latency percentiles, CPU seconds per 1,000 requests of
   the target process (``/proc/<pid>/stat``), upstream calls per request (the sandbox's call counts);
3. for each scenario, a short search for the highest rate at which p99 stays under the limit, for the baseline and
   the gateway (starting from what the fixed rates showed);
4. a long run of the gateway (redeem, one code) in chunks, sampling its RSS after each chunk: RSS growth and peak.
   It runs at 0.9 x the gateway's sustainable rate, or faster when that would take longer than ``long_seconds``;
   requests are then capped in flight, so above the gateway's capacity the run is throughput-bound (its latency
   is reported but is not a latency figure: the memory is what it measures).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import msgspec

from bench import data
from bench.procs import Child, ChildFailed, LineChannel, Processes, cpu_seconds, memory_mb

ROOT: Final = Path(__file__).resolve().parent.parent
REDIS_URL: Final = "redis://127.0.0.1:6379/13"
REDIS_PREFIX: Final = "pos_coupon:"


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # "validate" or "redeem"
    codes: int


SCENARIOS: Final = (
    Scenario("validate", "validate", 1),
    Scenario("redeem-1", "redeem", 1),
    Scenario("redeem-5", "redeem", 5),
)
TARGETS: Final = ("floor", "baseline", "gateway")


@dataclass
class Options:
    quick: bool = False
    latency_ms: float = 20.0
    rates: list[float] = field(default_factory=lambda: [50.0, 200.0, 500.0])
    ref_rate: float = 200.0
    duration: float = 3.0
    warmup: int = 100
    search_duration: float = 2.0
    search_steps: int = 4
    search_cap: float = 5000.0
    p99_limit_ms: float = 100.0
    long_requests: int = 100_000
    long_rate: float | None = None
    long_chunks: int = 10
    #: The long run is paced to take at most about this long; above the gateway's capacity it is throughput-bound.
    long_seconds: float = 240.0
    #: Hard bound on the long run's wall time: it stops after the chunk that crosses it (fewer requests, reported).
    long_max_seconds: float = 360.0
    long_inflight: int = 128
    timeout: float = 5.0
    redis: bool = False
    #: Gateways started on one Redis, the load spread across them (1: the usual single gateway).
    replicas: int = 1
    #: Both the gateway and the baseline on uvloop: what ``coupon-gateway serve`` runs on when it is installed.
    uvloop: bool = field(default_factory=lambda: importlib.util.find_spec("uvloop") is not None)
    scenarios: list[str] = field(default_factory=lambda: [s.name for s in SCENARIOS])

    @staticmethod
    def quick_defaults() -> Options:
        return Options(
            quick=True,
            duration=1.5,
            warmup=50,
            search_duration=1.5,
            search_steps=3,
            long_requests=5000,
            long_chunks=5,
            long_seconds=20.0,
            long_max_seconds=30.0,
        )


Progress = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _http_json(url: str, body: dict[str, Any] | None = None, timeout: float = 60.0) -> dict[str, Any]:
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"refusing {url!r}: the benchmark only talks to 127.0.0.1")
    payload = None if body is None else msgspec.json.encode(body)
    request = urllib.request.Request(url, data=payload, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        decoded = msgspec.json.decode(response.read())
    if not isinstance(decoded, dict):
        raise ChildFailed(f"{url} answered {decoded!r}")
    return decoded


def redis_answers() -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def clear_redis() -> int:
    """Remove the gateway's keys from the benchmark's Redis database (13); returns how many."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        removed = 0
        batch: list[bytes] = []
        for key in client.scan_iter(match=REDIS_PREFIX + "*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                removed += int(client.delete(*batch))
                batch.clear()
        if batch:
            removed += int(client.delete(*batch))
        return removed
    finally:
        client.close()


class Bench:
    """Drives one run once every process is up."""

    def __init__(
        self,
        opts: Options,
        *,
        upstream: Child,
        upstream_url: str,
        targets: dict[str, tuple[Child, str]],
        loadgen: Child,
        channel: LineChannel,
        customers: int,
        progress: Progress,
    ) -> None:
        self.opts = opts
        self.upstream = upstream
        self.upstream_url = upstream_url
        self.targets = targets
        self.loadgen = loadgen
        self.channel = channel
        self.customers = customers
        self.cursor = 0
        self.runs: list[dict[str, Any]] = []
        self.progress = progress
        self._run_seq = 0

    # ---- coupons ------------------------------------------------------------------------------------------

    def _allocate(self, n: int, codes: int) -> int:
        per = data.units_per_request(codes)
        if per > 1:
            self.cursor = -(-self.cursor // data.CODES_PER_CUSTOMER) * data.CODES_PER_CUSTOMER
        first = self.cursor
        self.cursor += n * per
        needed = -(-self.cursor // data.CODES_PER_CUSTOMER)
        if needed > self.customers:
            wanted = max(needed, int(self.customers * 1.25))
            reply = _http_json(f"{self.upstream_url}{data.SEED_PATH}", {"customers": wanted}, timeout=300)
            self.customers = int(reply["customers"])
        return first

    # ---- one load run -------------------------------------------------------------------------------------

    def _target_pid(self, target: str) -> int:
        return self.loadgen.pid if target == "floor" else self.targets[target][0].pid

    def _target_cpu(self, target: str) -> float:
        """CPU seconds of the target so far: of every replica, for the gateway."""
        extra = REPLICAS if target == "gateway" else []
        return cpu_seconds(self._target_pid(target)) + sum(cpu_seconds(c.pid) for c in extra)

    def measure(
        self, target: str, scenario: Scenario, rate: float, n: int, phase: str, max_inflight: int = 2000
    ) -> dict[str, Any]:
        first = self._allocate(n, scenario.codes)
        base = self.upstream_url if target == "floor" else self.targets[target][1]
        self._run_seq += 1
        spec = {
            "op": "run",
            "kind": "floor" if target == "floor" else "http",
            "base": base,
            "scenario": scenario.kind,
            "codes": scenario.codes,
            "rate": rate,
            "n": n,
            "first_unit": first,
            "run_id": f"{self._run_seq}",
            "timeout": self.opts.timeout,
            "max_inflight": max_inflight,
            "api_key": None if target == "floor" else data.API_KEY,
        }
        _http_json(f"{self.upstream_url}{data.CALLS_PATH}?clear=1")
        pid = self._target_pid(target)
        cpu_before = self._target_cpu(target)
        upstream_before = cpu_seconds(self.upstream.pid)
        self.channel.send(spec)
        # a run capped in flight may be throughput-bound: allow for a target three times slower than the rate
        answer = self.channel.receive(timeout=3 * n / rate + self.opts.timeout + 30)
        if "result" not in answer:
            raise ChildFailed(f"load generator: {answer.get('error', answer)}")
        cpu = self._target_cpu(target) - cpu_before
        upstream_cpu = cpu_seconds(self.upstream.pid) - upstream_before
        calls = _http_json(f"{self.upstream_url}{data.CALLS_PATH}?clear=1")
        result: dict[str, Any] = answer["result"]
        counts: dict[str, int] = calls["counts"]
        run = {
            "phase": phase,
            "target": target,
            "scenario": scenario.name,
            **{k: result[k] for k in ("rate", "requests", "ok", "errors", "statuses", "seconds", "achieved_rate")},
            "latency_ms": result["latency_ms"],
            "send_lag_ms": result["send_lag_ms"],
            "cpu_seconds": round(cpu, 3),
            "cpu_seconds_per_1000": round(cpu / n * 1000, 3) if n else None,
            "upstream_cpu_seconds_per_1000": round(upstream_cpu / n * 1000, 3) if n else None,
            "generator_cpu_seconds": result["generator_cpu_seconds"],
            "upstream_calls": counts,
            "memory_mb": memory_mb(pid),
        }
        self.runs.append(run)
        lat = result["latency_ms"]
        self.progress(
            f"  {phase:<7} {target:<8} {scenario.name:<9} {rate:>7.0f}/s  p50 {lat['p50']:>8.2f}"
            f"  p99 {lat['p99']:>8.2f}  max {lat['max']:>8.2f} ms  ok {result['ok']}/{n}"
            f"  cpu {run['cpu_seconds_per_1000'] or 0:.2f} s/1000"
        )
        return run

    # ---- the plan -----------------------------------------------------------------------------------------

    def warm_up(self) -> None:
        if self.opts.warmup <= 0:
            return
        rate = min(100.0, max(self.opts.rates))
        for scenario in self.scenarios():
            for target in TARGETS:
                self.measure(target, scenario, rate, self.opts.warmup, "warmup")

    def scenarios(self) -> list[Scenario]:
        return [s for s in SCENARIOS if s.name in self.opts.scenarios]

    def fixed(self) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
        out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
        for scenario in self.scenarios():
            by_target: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in TARGETS}
            for rate in self.opts.rates:
                n = max(1, round(rate * self.opts.duration))
                for target in TARGETS:
                    by_target[target][_rate_key(rate)] = self.measure(target, scenario, rate, n, "fixed")
            out[scenario.name] = by_target
        return out

    def passes(self, run: dict[str, Any]) -> bool:
        p99 = run["latency_ms"]["p99"]
        return run["errors"] == 0 and p99 is not None and p99 < self.opts.p99_limit_ms

    def search(self, scenario: Scenario, target: str, fixed_runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Largest rate with p99 under the limit: doubling up from the fixed rates' verdicts, then bisection."""
        good = [r["rate"] for r in fixed_runs.values() if self.passes(r)]
        bad = [r["rate"] for r in fixed_runs.values() if not self.passes(r)]
        lo: float | None = max(good) if good else None
        hi: float | None = min((r for r in bad if lo is None or r > lo), default=None)
        steps: list[dict[str, Any]] = []
        for _ in range(self.opts.search_steps):
            if lo is not None and hi is not None and hi / lo <= 1.1:
                break
            if lo is None:
                rate = (hi or 100.0) / 2
            elif hi is None:
                rate = min(lo * 2, self.opts.search_cap)
            else:
                rate = (lo + hi) / 2
            if lo is not None and rate <= lo:  # reached the cap
                break
            rate = round(rate)
            if rate < 1:
                break
            n = max(1, round(rate * self.opts.search_duration))
            run = self.measure(target, scenario, rate, n, "search")
            ok = self.passes(run)
            steps.append({"rate": rate, "p99_ms": run["latency_ms"]["p99"], "errors": run["errors"], "passed": ok})
            if ok:
                lo = rate
            else:
                hi = rate
        return {
            "rate": lo,
            "first_failing_rate": hi,
            "capped": lo is not None and hi is None,
            "p99_limit_ms": self.opts.p99_limit_ms,
            "steps": steps,
        }

    def long_run(self, rate: float) -> dict[str, Any]:
        """The gateway under one-code redeems for ``long_requests`` requests, in chunks; RSS after each."""
        child = self.targets["gateway"][0]
        scenario = next(s for s in SCENARIOS if s.name == "redeem-1")
        total, chunks = self.opts.long_requests, max(1, self.opts.long_chunks)
        before = memory_mb(child.pid)
        samples: list[dict[str, float]] = [{"requests": 0, "rss_mb": before["rss"]}]
        latencies: list[dict[str, Any]] = []
        done = errors = 0
        started = time.monotonic()
        stopped_early = False
        for index in range(chunks):
            n = total // chunks + (1 if index < total % chunks else 0)
            if n <= 0:
                continue
            if done and time.monotonic() - started >= self.opts.long_max_seconds:
                stopped_early = True
                break
            run = self.measure("gateway", scenario, rate, n, "long", max_inflight=self.opts.long_inflight)
            done += n
            errors += run["errors"]
            latencies.append(run["latency_ms"])
            samples.append({"requests": done, "rss_mb": run["memory_mb"]["rss"]})
        after = memory_mb(child.pid)
        growth = round(after["rss"] - before["rss"], 2)
        seconds = time.monotonic() - started
        return {
            "scenario": scenario.name,
            "rate": rate,
            "achieved_rate": round(done / seconds, 1) if seconds > 0 else None,
            "max_inflight": self.opts.long_inflight,
            "requests": done,
            "requests_planned": total,
            "stopped_at_time_limit": stopped_early,
            "errors": errors,
            "seconds": round(seconds, 1),
            "rss_before_mb": before["rss"],
            "rss_after_mb": after["rss"],
            "rss_growth_mb": growth,
            "rss_growth_mb_per_100k": round(growth * 100_000 / done, 2) if done else None,
            "peak_rss_mb": after["peak"],
            "samples": samples,
            "p99_ms_by_chunk": [lat["p99"] for lat in latencies],
        }


def _rate_key(rate: float) -> str:
    return f"{rate:g}"


#: The gateway's own entry point on asyncio's event loop (``--asyncio``: it runs on uvloop when that is installed).
_GATEWAY_ON_ASYNCIO: Final = (
    "import asyncio, sys; import service.__main__ as cli; cli._run = asyncio.run; sys.exit(cli.main(['serve']))"
)


def _write_keys(directory: Path) -> Path:
    """The gateway's API key file (the generator sends ``data.API_KEY``)."""
    path = directory / "api-keys.json"
    path.write_text(data.api_keys_json())
    return path


def gateway_environment(opts: Options, env: dict[str, str], upstream_url: str, log_dir: Path) -> dict[str, str]:
    """The environment of a gateway under test: the sandbox as Capillary, one API key, limits out of the way."""
    gateway_env = {
        **env,
        "CAPILLARY_API_URL": upstream_url,
        "CAPILLARY_UPLOAD_URL": upstream_url,
        "CAPILLARY_AUTH": "oauth",
        "CAPILLARY_CLIENT_KEY": data.CLIENT_KEY,
        "CAPILLARY_CLIENT_SECRET": data.CLIENT_SECRET,
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": "0",
        "LOG_LEVEL": "info",
        "GATEWAY_SHUTDOWN_TIMEOUT_SECONDS": "2",
        # One API key for the generator; its rate limit and Capillary's outbound budget far above any rate the
        # benchmark sends (they are still checked on every request: their cost is measured, not their refusals).
        "GATEWAY_API_KEYS_FILE": str(_write_keys(log_dir)),
        "GATEWAY_RATE_LIMIT_PER_SECOND": "100000",
        "GATEWAY_RATE_LIMIT_BURST": "100000",
        "CAPILLARY_RATE_LIMIT_PER_MINUTE": "10000000",
        # The in-memory ledger keeps every redemption until its TTL and refuses new ones when full (it never
        # forgets one early): replays are kept a minute here, so a run of several 100,000 redemptions fits.
        "IDEMPOTENCY_TTL_SECONDS": "60",
        # Every request comes from one store: its quota (20,000 records by default) would refuse the long run's
        # redemptions past it (a minute at more than 333/s); let it hold the whole ledger, as the key's rate limit.
        "LEDGER_MEMORY_MAX_PER_STORE": "100000",
    }
    gateway_env.pop("CACHE_URL", None)
    gateway_env.pop("REDIS_URL", None)
    if opts.redis:  # the series cache and the redemption ledger
        gateway_env["CACHE_URL"] = gateway_env["REDIS_URL"] = REDIS_URL
    return gateway_env


def _start_all(
    opts: Options, procs: Processes, progress: Progress, customers: int
) -> tuple[Child, str, dict[str, tuple[Child, str]], Child]:
    python = sys.executable
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    upstream = procs.start(
        "upstream",
        [python, "-m", "bench.upstream", "--latency-ms", f"{opts.latency_ms:g}", "--customers", str(customers)],
        env=env,
        cwd=ROOT,
    )
    port = int(upstream.wait_for_line("READY", timeout=120).split()[1])
    upstream_url = f"http://127.0.0.1:{port}"
    progress(f"upstream (sandbox, {opts.latency_ms:g} ms per call) on {upstream_url}, {customers} customers seeded")
    gateway_env = gateway_environment(opts, env, upstream_url, procs.log_dir)
    gateway_argv = [python, "-m", "service", "serve"]
    baseline_argv = [python, "-m", "bench.baseline", "--upstream", upstream_url]
    if opts.uvloop:
        baseline_argv.append("--uvloop")
    elif importlib.util.find_spec("uvloop") is not None:
        gateway_argv = [python, "-c", _GATEWAY_ON_ASYNCIO]
    gateway = procs.start("gateway", gateway_argv, env=gateway_env, cwd=ROOT)
    others = [procs.start(f"gateway-{n}", gateway_argv, env=gateway_env, cwd=ROOT) for n in range(2, opts.replicas + 1)]
    baseline = procs.start("baseline", baseline_argv, env=env, cwd=ROOT)
    loadgen = procs.start("loadgen", [python, "-m", "bench.loadgen"], env=env, cwd=ROOT, pipe=True)
    line = gateway.wait_for_line('"event":"gateway_started"', timeout=60)  # the start, as a JSON log event
    gateway_url = json.loads(line)["listen"]
    for other in others:  # replicas: one target, its URLs comma-separated (see bench.loadgen); CPU summed
        gateway_url += "," + json.loads(other.wait_for_line('"event":"gateway_started"', timeout=60))["listen"]
        REPLICAS.append(other)
    if not all(url.startswith("http://127.0.0.1:") for url in gateway_url.split(",")):
        raise ChildFailed(f"gateway listens on {gateway_url!r}, not on 127.0.0.1")
    baseline_url = f"http://127.0.0.1:{int(baseline.wait_for_line('READY', timeout=60).split()[1])}"
    backends = "Redis" if opts.redis else "in-memory"
    progress(f"gateway on {gateway_url} ({backends} cache and ledger), baseline on {baseline_url}")
    return upstream, upstream_url, {"gateway": (gateway, gateway_url), "baseline": (baseline, baseline_url)}, loadgen


def _revision() -> dict[str, Any]:
    """The commit measured, and the service files that differed from it (the gateway runs the work tree)."""
    import subprocess

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    try:
        changed = git("status", "--porcelain", "--", "service")
        return {"commit": git("rev-parse", "--short", "HEAD") or None, "uncommitted": changed.splitlines()}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "uncommitted": []}


#: The gateways started beside the first with ``--replicas``.
REPLICAS: list[Child] = []


def redis_round_trips(gateway_urls: str) -> dict[str, float]:
    """Redis round trips per request, by route, over the whole run (the gateways' own counts, from /metrics)."""
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[str, dict[str, float]] = {}
    for gateway_url in gateway_urls.split(","):
        with urllib.request.urlopen(f"{gateway_url}/metrics", timeout=10) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            if family.name != "pos_coupon_redis_round_trips_per_request":
                continue
            for sample in family.samples:
                kind = sample.name.rsplit("_", 1)[1]
                if kind in ("sum", "count"):
                    found = sums.setdefault(sample.labels["route"], {})
                    found[kind] = found.get(kind, 0.0) + sample.value
    return {route: round(v["sum"] / v["count"], 3) for route, v in sums.items() if v.get("count")}


def _initial_customers(opts: Options) -> int:
    """Customers for the warm-up and the fixed-rate runs; the search and the long run seed more on demand."""
    units = 0
    for scenario in SCENARIOS:
        if scenario.name not in opts.scenarios:
            continue
        per = data.units_per_request(scenario.codes)
        requests = opts.warmup * len(TARGETS) + sum(max(1, round(r * opts.duration)) for r in opts.rates) * len(TARGETS)
        units += requests * per + data.CODES_PER_CUSTOMER
    return units // data.CODES_PER_CUSTOMER + 1


def run(opts: Options, log_dir: Path, progress: Progress = _stderr) -> dict[str, Any]:
    """Run the whole benchmark and return every figure (see `bench.report` for the derived ones)."""
    unknown = set(opts.scenarios) - {s.name for s in SCENARIOS}
    if unknown:
        raise ValueError(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if opts.uvloop:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            raise ChildFailed("--uvloop: uvloop is not installed (pip install uvloop)") from None
    if opts.redis:
        if not redis_answers():
            raise ChildFailed("--redis: no Redis answers at 127.0.0.1:6379")
        clear_redis()
    started = time.monotonic()
    started_at = datetime.now(UTC)
    procs = Processes(log_dir)
    channel: LineChannel | None = None
    try:
        customers = _initial_customers(opts)
        upstream, upstream_url, targets, loadgen = _start_all(opts, procs, progress, customers)
        channel = LineChannel(loadgen)
        hello = channel.receive(timeout=60)
        if not hello.get("ready"):
            raise ChildFailed(f"load generator: {hello}")
        bench = Bench(
            opts,
            upstream=upstream,
            upstream_url=upstream_url,
            targets=targets,
            loadgen=loadgen,
            channel=channel,
            customers=customers,
            progress=progress,
        )
        progress("warm-up")
        bench.warm_up()
        progress("fixed rates")
        fixed = bench.fixed()
        progress(f"max sustainable rate (p99 < {opts.p99_limit_ms:g} ms)")
        max_rate: dict[str, dict[str, Any]] = {}
        for scenario in bench.scenarios():
            found = fixed[scenario.name]
            max_rate[scenario.name] = {t: bench.search(scenario, t, found[t]) for t in ("baseline", "gateway")}
        long_rate = opts.long_rate
        if long_rate is None:  # 0.9 x the sustainable rate, unless that would take longer than long_seconds
            sustainable = max_rate.get("redeem-1", {}).get("gateway", {}).get("rate") or 200.0
            long_rate = float(round(max(100, 0.9 * sustainable, opts.long_requests / opts.long_seconds)))
        memory: dict[str, Any] = {}
        if opts.long_requests > 0:
            progress(f"long run: {opts.long_requests} one-code redeems at {long_rate:g}/s through the gateway")
            memory["gateway_long_run"] = bench.long_run(long_rate)
        memory["peak_rss_mb"] = {
            name: memory_mb(child.pid)["peak"]
            for name, child in [("gateway", targets["gateway"][0]), ("baseline", targets["baseline"][0])]
        }
        memory["peak_rss_mb"]["upstream"] = memory_mb(upstream.pid)["peak"]
        redis = redis_round_trips(targets["gateway"][1]) if opts.redis else {}
        return {
            "redis": redis,
            "meta": {
                "mode": "quick" if opts.quick else "full",
                "started_at": started_at.isoformat(timespec="seconds"),
                "seconds": round(time.monotonic() - started, 1),
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                },
                "options": asdict(opts),
                "cache": "redis" if opts.redis else "memory",
                "replicas": opts.replicas,
                "revision": _revision(),
                "coupons_seeded": bench.customers * data.CODES_PER_CUSTOMER,
                "notes": [
                    "latency is measured from each request's intended send time (open loop, coordinated omission"
                    " corrected); percentiles are nearest-rank over every request of the run, errors included",
                    "gateway: python -m service serve, LOG_LEVEL=info, metrics on, one API key (Authorization: Bearer)",
                    "baseline: bench/baseline.py, the smallest aiohttp app making the same two upstream calls",
                    "all processes share the machine's cores: the sandbox and the generator compete with the target",
                ],
            },
            "fixed": fixed,
            "max_rate": max_rate,
            "memory": memory,
            "runs": bench.runs,
        }
    finally:
        if channel is not None:
            with contextlib.suppress(OSError):
                channel.send({"op": "quit"})
            channel.close()
        procs.close()
        REPLICAS.clear()
        if opts.redis:
            try:
                clear_redis()
            except Exception as exc:  # cleanup is best effort: report, don't mask the run's own error
                progress(f"could not clear the benchmark's Redis keys: {exc}")
