"""``python -m bench.ab TREE [TREE...]``: this tree's gateway against other trees', CPU per 1,000 requests.

The gateways (``python -m service serve`` started in each tree: checkouts of the commits before a change, say,
made with ``git worktree add``) and the baseline run side by side on one sandbox and one load generator, as
in ``python -m bench``, and take the same load in turns: short fixed-rate runs, one per target per round, each
target first in turn. Whatever else runs on the machine then weighs on each target alike, which two
benchmark runs minutes apart do not give: on these two shared cores their CPU figures move by a tenth or more from
one run to the next, more than most single changes are worth.

Per scenario it prints each target's CPU seconds per 1,000 requests round by round, their means, and the ratios
(each gateway / the baseline, this tree's / each other's) as the mean of the per-round ratios with their spread.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import msgspec

from bench.harness import (
    ROOT,
    SCENARIOS,
    Bench,
    Options,
    _initial_customers,
    _start_all,
    _stderr,
    clear_redis,
    gateway_environment,
    redis_answers,
)
from bench.procs import ChildFailed, LineChannel, Processes

THIS, BASELINE = "gateway", "baseline"


def _spread(values: Sequence[float]) -> str:
    mean = statistics.fmean(values)
    deviation = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {deviation:.3f}"


def _ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    return [x / y for x, y in zip(a, b, strict=True) if y]


def _report(results: dict[str, dict[str, list[float]]], names: dict[str, str]) -> str:
    lines = ["CPU s per 1,000 requests, by target (" + ", ".join(f"{k}: {v}" for k, v in names.items()) + ")"]
    for scenario, by_target in results.items():
        targets = list(by_target)
        rounds = len(by_target[THIS])
        lines.append(f"\n{scenario}: {rounds} rounds")
        lines.append("  round " + " ".join(f"{t:>10}" for t in targets))
        for i in range(rounds):
            lines.append(f"  {i + 1:>5} " + " ".join(f"{by_target[t][i]:>10.3f}" for t in targets))
        lines.append("   mean " + " ".join(f"{statistics.fmean(by_target[t]):>10.3f}" for t in targets))
        for target in targets:
            if target != BASELINE:
                ratios = _ratios(by_target[target], by_target[BASELINE])
                lines.append(f"  {target} / {BASELINE}: {_spread(ratios)}")
        for target in targets:
            if target not in (THIS, BASELINE):
                ratios = _ratios(by_target[THIS], by_target[target])
                lines.append(f"  {THIS} / {target}: {_spread(ratios)}")
    lines.append("(ratios: the mean of the per-round ratios ± their standard deviation)")
    return "\n".join(lines)


def run(others: list[Path], opts: Options, rate: float, seconds: float, rounds: int, log_dir: Path) -> dict[str, Any]:
    if opts.redis:
        if not redis_answers():
            raise ChildFailed("--redis: no Redis answers at 127.0.0.1:6379")
        clear_redis()
    procs = Processes(log_dir)
    channel: LineChannel | None = None
    try:
        customers = _initial_customers(opts)
        upstream, upstream_url, targets, loadgen = _start_all(opts, procs, _stderr, customers)
        names = {THIS: str(ROOT)}
        for other in others:
            name = other.name
            env = {**os.environ, "PYTHONPATH": str(other)}
            other_env = gateway_environment(opts, env, upstream_url, log_dir)
            gateway = procs.start(name, [sys.executable, "-m", "service", "serve"], env=other_env, cwd=other)
            line = gateway.wait_for_line('"event":"gateway_started"', timeout=60)
            targets[name] = (gateway, msgspec.json.decode(line)["listen"])
            names[name] = str(other)
            _stderr(f"{name} gateway ({other}) on {targets[name][1]}")
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
            progress=_stderr,
        )
        order = [*names, BASELINE]
        n = max(1, round(rate * seconds))
        results: dict[str, dict[str, list[float]]] = {}
        for scenario in bench.scenarios():
            for target in order:
                bench.measure(target, scenario, min(rate, 100.0), opts.warmup, "warmup")
            by_target: dict[str, list[float]] = {t: [] for t in order}
            for i in range(rounds):
                turn = order[i % len(order) :] + order[: i % len(order)]  # each target goes first in turn
                for target in turn:
                    measured = bench.measure(target, scenario, rate, n, f"round {i + 1}")
                    by_target[target].append(measured["cpu_seconds_per_1000"])
            results[scenario.name] = by_target
        return {"trees": names, "rate": rate, "seconds": seconds, "cpu_seconds_per_1000": results}
    finally:
        if channel is not None:
            channel.close()
        procs.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("others", type=Path, nargs="+", metavar="TREE", help="other trees (worktrees of other commits)")
    parser.add_argument("--scenarios", default="redeem-1,validate", help="comma-separated (default redeem-1,validate)")
    parser.add_argument("--rate", type=float, default=400.0, help="requests per second of each run (400)")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per run (4)")
    parser.add_argument("--rounds", type=int, default=6, help="runs of each target per scenario (6)")
    parser.add_argument("--warmup", type=int, default=300, help="warm-up requests per target and scenario (300)")
    parser.add_argument("--redis", action="store_true", help="the gateways' cache and ledger in Redis (db 13)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the figures to PATH")
    args = parser.parse_args(argv)
    others = [tree.resolve() for tree in args.others]
    for tree in others:
        if not (tree / "service" / "__main__.py").is_file():
            parser.error(f"{tree}: not a tree of this project (no service/__main__.py)")
    if len({tree.name for tree in others} | {THIS, BASELINE}) != len(others) + 2:
        parser.error("the trees need distinct directory names, other than gateway and baseline")
    scenarios = [s for s in args.scenarios.split(",") if s]
    if unknown := set(scenarios) - {s.name for s in SCENARIOS}:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if args.rounds < 1 or args.rate <= 0 or args.seconds <= 0:
        parser.error("--rounds, --rate and --seconds must be positive")
    opts = Options(scenarios=scenarios, warmup=args.warmup, redis=args.redis, rates=[args.rate])

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp:
        try:
            result = run(others, opts, args.rate, args.seconds, args.rounds, Path(tmp))
        except ChildFailed as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 1
    print(_report(result["cpu_seconds_per_1000"], result["trees"]))
    if args.json:
        args.json.write_bytes(msgspec.json.format(msgspec.json.encode(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
