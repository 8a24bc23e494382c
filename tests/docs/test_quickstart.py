"""The README's Quick start, run as written: its install-and-serve block is what this test does itself, and every
other shell block runs under bash against a live ``coupon-gateway serve --sandbox`` on free ports (the blocks'
``localhost:8080``/``:8081`` moved there), each command checked: a failing curl (4xx/5xx) or CLI fails the test."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port

README = Path(__file__).resolve().parents[2] / "README.md"
#: The first block: what a newcomer types to install and start (this test has installed, and starts it itself).
SETUP = ["python3 -m venv .venv && . .venv/bin/activate && pip install -e .", "coupon-gateway serve --sandbox"]
#: Every command of a block must succeed, and curl must treat an HTTP error as one.
PRELUDE = 'set -euo pipefail\ncurl() { command curl --fail-with-body --silent --show-error --max-time 10 "$@"; }\n'


def quick_start_blocks() -> list[str]:
    section = README.read_text().split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def test_the_readme_is_short_and_links_the_rest() -> None:
    text = README.read_text()
    assert len(text.splitlines()) < 150
    quick = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    assert len(text.split("\n## Quick start\n")[0].splitlines()) + len(quick.splitlines()) < 80
    assert "Python 3.11" in text
    for page in ("api", "exactly-once", "operations", "deployment", "configuration", "performance"):
        assert f"(docs/{page}.md)" in text
        assert (README.parent / "docs" / f"{page}.md").is_file()


@pytest.fixture(scope="module")
def sandbox_gateway() -> Iterator[tuple[int, int]]:
    """``coupon-gateway serve --sandbox``, as the README starts it, on free ports."""
    gateway, sandbox = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAPILLARY_", "GATEWAY_", "SANDBOX_", "OTEL_"))}
    env.update(GATEWAY_PORT=str(gateway), SANDBOX_PORT=str(sandbox))
    script = Path(sys.executable).parent / "coupon-gateway"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "service"]
    process = subprocess.Popen(
        [*command, "serve", "--sandbox"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{gateway}/healthz", timeout=1) as response:
                    assert response.status == 200
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"serve --sandbox did not start: {process.communicate(timeout=5)}")
                time.sleep(0.1)
        yield gateway, sandbox
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)


def test_the_first_block_installs_and_serves() -> None:
    assert quick_start_blocks()[0].strip().splitlines() == SETUP


@pytest.mark.parametrize("index", range(1, len(quick_start_blocks())))
def test_every_quick_start_example_runs(sandbox_gateway: tuple[int, int], index: int) -> None:
    if shutil.which("curl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("curl must be installed under CI")
        pytest.skip("curl is not installed")
    gateway, sandbox = sandbox_gateway
    block = quick_start_blocks()[index]
    script = re.sub(r"(localhost|127\.0\.0\.1):8080", f"127.0.0.1:{gateway}", block)
    script = re.sub(r"(localhost|127\.0\.0\.1):8081", f"127.0.0.1:{sandbox}", script)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "CAPILLARY_", "SANDBOX_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # coupon-gateway, as installed
    env.update(NO_COLOR="1", COLUMNS="120")
    done = subprocess.run(
        ["bash", "-c", PRELUDE + script], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"block {index} failed:\n{block}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert done.stdout.strip(), f"block {index} printed nothing"
    assert '"error": {' not in done.stdout  # no error envelope, even inside a 2xx answer
