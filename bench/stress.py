"""``python -m bench.stress``: the exactly-once and resilience tests, several runs side by side, failures counted.

Not part of CI: it loads the machine on purpose (three pytest processes on two cores), to shake out tests and code
that only pass when they have the CPU to themselves. Each run gets a Redis database of its own on a Redis server
started for the occasion on a free port (never the shared one), so the runs share CPU and nothing else. A test
that fails here is a bug to understand, not a test to retry.

    python -m bench.stress                 # 3 runs side by side of the default tests
    python -m bench.stress --runs 4 tests/integration/test_exactly_once.py

Prints one line per run and the total count of failed and errored tests; exits 0 only when it is 0.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TESTS = (
    "tests/integration/test_exactly_once.py",
    "tests/integration/test_resilience.py",
    "tests/integration/test_restart.py",
    "tests/integration/test_ledger_truth.py",
    "tests/integration/test_ledger_outage.py",
)


@dataclass
class Result:
    run: int
    returncode: int
    seconds: float
    tests: int = 0
    failed: list[str] = field(default_factory=list)
    skipped: int = 0
    log: Path | None = None

    @property
    def passed(self) -> int:
        return self.tests - len(self.failed) - self.skipped


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _start_redis(port: int) -> subprocess.Popen[bytes]:
    server = shutil.which("redis-server")
    if server is None:
        sys.exit("redis-server is not installed: install it, or pass --redis-url of a Redis you may use")
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as connection:
                connection.sendall(b"PING\r\n")
                if connection.recv(16).startswith(b"+PONG"):
                    return process
        except OSError:
            pass
        time.sleep(0.05)
    process.kill()
    sys.exit(f"redis-server did not start on port {port}")


def _read_junit(path: Path, result: Result) -> None:
    if not path.exists():
        result.failed.append("(no report: pytest did not finish)")
        return
    root = ET.parse(path).getroot()
    for case in root.iter("testcase"):
        result.tests += 1
        if case.find("failure") is not None or case.find("error") is not None:
            result.failed.append(f"{case.get('classname', '')}::{case.get('name', '')}")
        elif case.find("skipped") is not None:
            result.skipped += 1


def stress(runs: int, tests: Sequence[str], redis_url: str | None, workdir: Path) -> list[Result]:
    server = None
    if redis_url is None:
        port = _free_port()
        server = _start_redis(port)
        redis_url = f"redis://127.0.0.1:{port}"
    processes = []
    try:
        for run in range(1, runs + 1):
            env = {
                **os.environ,
                "TEST_REDIS_URL": redis_url,
                "TEST_REDIS_DB": str(run),  # a database per run: its own keys, its own session hold
                "TEST_REDIS_CACHE_DB": str(runs + run),
            }
            log = workdir / f"run-{run}.log"
            command = [
                sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "console_output_style=classic",
                f"--junitxml={workdir / f'run-{run}.xml'}", *tests,
            ]  # fmt: skip
            with log.open("wb") as output:
                started = time.monotonic()
                process = subprocess.Popen(command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT)
            processes.append((run, process, started, log))
        results = []
        for run, process, started, log in processes:
            returncode = process.wait()
            result = Result(run, returncode, time.monotonic() - started, log=log)
            _read_junit(workdir / f"run-{run}.xml", result)
            if returncode not in (0, 1) and not result.failed:  # interrupted, or an internal/usage error
                result.failed.append(f"(pytest exited with {returncode})")
            results.append(result)
        return results
    finally:
        for _, process, _, _ in processes:
            if process.poll() is None:
                process.kill()
        if server is not None:
            server.kill()
            server.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stress", description=__doc__.split("\n\n")[0])
    parser.add_argument("tests", nargs="*", help=f"test files or ids (default: {' '.join(DEFAULT_TESTS)})")
    parser.add_argument("--runs", type=int, default=3, help="pytest processes side by side (default 3)")
    parser.add_argument(
        "--redis-url",
        help="a Redis to use (redis://host:port; databases 1..2N) instead of starting one of its own",
    )
    parser.add_argument("--keep-logs", type=Path, metavar="DIR", help="keep each run's output and report in DIR")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    tests = args.tests or list(DEFAULT_TESTS)
    print(f"{args.runs} runs side by side on {os.cpu_count()} cores: {' '.join(tests)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="stress-") as scratch:
        workdir = args.keep_logs or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        results = stress(args.runs, tests, args.redis_url, workdir)
        for r in results:
            print(
                f"run {r.run}: {r.passed} passed, {len(r.failed)} failed, {r.skipped} skipped in {r.seconds:.0f} s",
                flush=True,
            )
            for name in r.failed:
                print(f"  FAILED {name}")
            if r.failed and r.log is not None:
                print("  " + "\n  ".join(r.log.read_text(errors="replace").splitlines()[-15:]))
    failures = sum(len(r.failed) for r in results)
    print(f"failures: {failures}")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
