"""The README's promise: ``coupon-gateway serve --sandbox`` needs nothing else and answers /healthz; a bad
setting stops the process with one line naming the variable."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAPILLARY_", "GATEWAY_", "SANDBOX_"))}
    return {**env, **extra}


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status, response.read()


def test_serve_with_sandbox_answers_healthz_and_stops_cleanly() -> None:
    gateway, sandbox = _free_port(), _free_port()
    env = _env(GATEWAY_HOST="127.0.0.1", GATEWAY_PORT=str(gateway), SANDBOX_PORT=str(sandbox))
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--sandbox"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                status, body = _get(f"http://127.0.0.1:{gateway}/healthz")
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"gateway did not start: {process.communicate(timeout=5)}")
                time.sleep(0.1)
        assert status == 200
        assert json.loads(body)["status"] == "ok"
        demo_status, demo = _get(f"http://127.0.0.1:{sandbox}/__sandbox/demo")
        assert demo_status == 200
        assert b"919900000001" in demo
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert f"listening on http://127.0.0.1:{gateway}" in out
    assert f"Capillary sandbox listening on http://127.0.0.1:{sandbox}" in out
    assert "ABS-ALICE-1" in out  # the demo codes are printed


@pytest.mark.parametrize(
    ("args", "env", "variable"),
    [
        (["serve"], {}, "CAPILLARY_AUTH"),
        (
            ["serve"],
            {"CAPILLARY_AUTH": "oauth", "CAPILLARY_API_URL": "https://x.example", "CAPILLARY_UPLOAD_URL": "nope"},
            "CAPILLARY_UPLOAD_URL",
        ),
        (["serve", "--sandbox"], {"GATEWAY_PORT": "eighty"}, "GATEWAY_PORT"),
        (["sandbox"], {"SANDBOX_LATENCY_MS": "-5"}, "SANDBOX_LATENCY_MS"),
    ],
)
def test_a_bad_setting_stops_with_one_line_naming_it(args: list[str], env: dict[str, str], variable: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", *args], env=_env(**env), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
