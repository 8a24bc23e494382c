"""``python -m bench``: run the benchmark, print the table, optionally write every figure as JSON."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import msgspec

from bench.harness import SCENARIOS, Options, run
from bench.procs import ChildFailed
from bench.report import derive, render


def _floats(raw: str) -> list[float]:
    values = [float(v) for v in raw.split(",") if v.strip()]
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("a comma-separated list of positive numbers")
    return values


def parse(argv: Sequence[str] | None) -> tuple[Options, Path | None, Path | None]:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the gateway against a direct-call floor and a bare pass-through baseline.",
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs (under 2 minutes)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write every figure to PATH")
    parser.add_argument(
        "--redis", action="store_true", help="gateway cache and ledger in Redis at 127.0.0.1:6379 (db 13)"
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="start N gateways on one Redis (implies --redis), the load spread across them; cpu is their sum",
    )
    parser.add_argument("--latency-ms", type=float, help="upstream latency per call (default 20)")
    parser.add_argument("--rates", type=_floats, help="fixed rates per second, comma-separated (default 50,200,500)")
    parser.add_argument("--ref-rate", type=float, help="rate at which added latency and CPU are compared (200)")
    parser.add_argument("--duration", type=float, help="seconds per fixed-rate run (full 3, quick 1.5)")
    parser.add_argument("--warmup", type=int, help="warm-up requests per target and scenario (full 100, quick 50)")
    parser.add_argument("--search-duration", type=float, help="seconds per max-rate search step (full 2, quick 1.5)")
    parser.add_argument("--search-steps", type=int, help="max-rate search steps per target (full 4, quick 3)")
    parser.add_argument("--p99-limit-ms", type=float, help="p99 limit of the max sustainable rate (100)")
    parser.add_argument("--long-requests", type=int, help="requests of the long run (full 100000, quick 5000)")
    parser.add_argument(
        "--long-rate",
        type=float,
        help="rate of the long run (default 0.9 x the gateway's max one-code redeem rate, or faster to end in 240 s)",
    )
    loop = parser.add_mutually_exclusive_group()
    loop.add_argument(
        "--uvloop",
        action="store_true",
        help="run the gateway and the baseline on uvloop (the default when it is installed; fail if it is not)",
    )
    loop.add_argument(
        "--asyncio",
        action="store_true",
        help="run the gateway and the baseline on asyncio's own event loop even when uvloop is installed",
    )
    parser.add_argument("--long-max-seconds", type=float, help="stop the long run after this long (full 360, quick 30)")
    parser.add_argument("--timeout", type=float, help="per-request timeout, seconds (5)")
    parser.add_argument(
        "--scenarios", help=f"comma-separated subset of {','.join(s.name for s in SCENARIOS)} (default all)"
    )
    parser.add_argument("--log-dir", type=Path, help="keep the processes' logs here (default: a temporary directory)")
    args = parser.parse_args(argv)
    opts = Options.quick_defaults() if args.quick else Options()
    for name in (
        "latency_ms",
        "rates",
        "ref_rate",
        "duration",
        "warmup",
        "search_duration",
        "search_steps",
        "p99_limit_ms",
        "long_requests",
        "long_rate",
        "long_max_seconds",
        "timeout",
    ):
        value = getattr(args, name)
        if value is not None:
            setattr(opts, name, value)
    if args.scenarios:
        opts.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    opts.redis = args.redis or args.replicas > 1
    opts.replicas = args.replicas
    if args.replicas < 1:
        parser.error("--replicas: at least 1")
    if args.uvloop or args.asyncio:
        opts.uvloop = args.uvloop
    if opts.duration <= 0 or opts.search_duration <= 0 or opts.timeout <= 0:
        parser.error("durations and the timeout must be positive")
    if opts.warmup < 0 or opts.search_steps < 0 or opts.long_requests < 0:
        parser.error("counts must not be negative")
    return opts, args.json, args.log_dir


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    opts, json_path, log_dir = parse(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    try:
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            results = run(opts, log_dir)
        else:
            with tempfile.TemporaryDirectory(prefix="bench-logs-") as tmp:
                results = run(opts, Path(tmp))
    except KeyboardInterrupt:
        print("bench: interrupted; every process it started has been stopped", file=sys.stderr)
        return 130
    except (ChildFailed, ValueError, OSError) as exc:
        print(f"bench: failed: {exc}", file=sys.stderr)
        return 1
    results["summary"] = derive(results)
    print(render(results))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_bytes(msgspec.json.format(msgspec.json.encode(results), indent=2) + b"\n")
        print(f"\nJSON: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
