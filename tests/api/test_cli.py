"""The README's promise: ``coupon-gateway serve --sandbox`` needs nothing else and answers /healthz; a bad
setting stops the process with one line naming the variable."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

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


def _post(url: str, body: dict[str, object], key: str | None) -> int:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_serve_with_sandbox_answers_healthz_and_stops_cleanly() -> None:
    gateway, sandbox, metrics = _free_port(), _free_port(), _free_port()
    env = _env(  # no GATEWAY_HOST: --sandbox listens on 127.0.0.1 alone, its demo keys never on the network
        GATEWAY_PORT=str(gateway),
        SANDBOX_PORT=str(sandbox),
        GATEWAY_METRICS_PORT=str(metrics),
    )
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
        validate = f"http://127.0.0.1:{gateway}/v1/redemptions/validate"
        body = {"customer": {"mobile": "919900000001"}, "codes": ["ABS-ALICE-1"], "billAmount": "2000.00"}
        assert _post(validate, body, "sandbox-till-key") == 200  # the demo key printed at start
        assert _post(validate, body, None) == 401
        # metrics and the API description on their own port, and only there
        metrics_status, exposition = _get(f"http://127.0.0.1:{metrics}/metrics")
        assert metrics_status == 200
        validated = rb'pos_coupon_http_requests_total\{[^}]*route="/v1/redemptions/validate"[^}]*status="2xx"\} 1\.0'
        assert re.search(validated, exposition), "the API port's requests are counted on the metrics port"
        assert _get(f"http://127.0.0.1:{metrics}/openapi.yaml")[0] == 200
        for path in ("/metrics", "/openapi.yaml"):
            with pytest.raises(urllib.error.HTTPError) as missing:
                _get(f"http://127.0.0.1:{gateway}{path}")
            assert missing.value.code == 404
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    # Not a terminal: JSON log lines only, the start among them as one event with the real bind address.
    events = [json.loads(line) for line in out.splitlines()]
    (started,) = [e for e in events if e["event"] == "gateway_started"]
    assert started["listen"] == f"http://127.0.0.1:{gateway}"
    assert started["metrics_listen"] == f"http://127.0.0.1:{metrics}"
    assert {k["key"] for k in started["demo_keys"]} == {"sandbox-till-key", "sandbox-admin-key"}
    assert (started["sandbox"], started["capillary"]) == (True, f"http://127.0.0.1:{sandbox}")


def test_the_banner_is_for_a_terminal_and_tells_the_real_address() -> None:
    """On a terminal: a readable banner with the address the socket is bound to (here every interface)."""
    gateway, sandbox = _free_port(), _free_port()
    env = _env(GATEWAY_HOST="0.0.0.0", GATEWAY_PORT=str(gateway), SANDBOX_PORT=str(sandbox))
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--sandbox"], env=env, stdout=terminal, stderr=subprocess.PIPE
    )
    os.close(terminal)
    seen = b""
    try:
        deadline = time.monotonic() + 20
        while b"Demo API key" not in seen and time.monotonic() < deadline and process.poll() is None:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if ready:
                seen += os.read(controller, 65536)
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=20)
        os.close(controller)
    text = seen.decode(errors="replace")
    assert f"listening on http://0.0.0.0:{gateway} (every interface)" in text
    assert f"Capillary sandbox listening on http://127.0.0.1:{sandbox}" in text
    assert "ABS-ALICE-1" in text  # the demo data
    assert "Demo API key (admin+redeem, store S001): sandbox-admin-key" in text


PRODUCTION = {
    "CAPILLARY_AUTH": "oauth",
    "CAPILLARY_API_URL": "https://eu.api.capillarytech.com",
    "CAPILLARY_UPLOAD_URL": "https://eu.intouch.capillarytech.com",
    "CAPILLARY_CLIENT_KEY": "key",
    "CAPILLARY_CLIENT_SECRET": "secret",
}
#: A key file with a key in clear instead of its hash: refused at start.
PLAIN_KEYS = Path(__file__).parent / "data" / "plain-api-keys.json"


@pytest.mark.parametrize(
    ("args", "env", "variable"),
    [
        (["serve", "--sandbox"], {"GATEWAY_PORT": "eighty"}, "GATEWAY_PORT"),
        (["serve"], PRODUCTION, "GATEWAY_API_KEYS_FILE"),
        (["serve"], {**PRODUCTION, "GATEWAY_API_KEYS_FILE": "/nonexistent/keys.json"}, "GATEWAY_API_KEYS_FILE"),
        (["serve", "--sandbox"], {"GATEWAY_API_KEYS_FILE": str(PLAIN_KEYS)}, "GATEWAY_API_KEYS_FILE"),
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


@pytest.mark.parametrize(
    ("args", "env", "problems"),
    [
        (  # an empty environment: every required setting, in one message
            ["serve"],
            {},
            ["CAPILLARY_AUTH", "CAPILLARY_API_URL", "CAPILLARY_UPLOAD_URL", "GATEWAY_API_KEYS_FILE"],
        ),
        (
            ["serve"],
            {"CAPILLARY_AUTH": "oauth", "GATEWAY_PORT": "eighty", "CAPILLARY_TIMEOUT_SECONDS": "0"},
            [
                "CAPILLARY_API_URL",
                "CAPILLARY_UPLOAD_URL",
                "CAPILLARY_CLIENT_KEY",
                "CAPILLARY_CLIENT_SECRET",
                "CAPILLARY_TIMEOUT_SECONDS",
                "GATEWAY_PORT",
                "GATEWAY_API_KEYS_FILE",
            ],
        ),
        (
            ["serve", "--sandbox"],
            {"SANDBOX_LATENCY_MS": "-5", "LOG_LEVEL": "loud"},
            ["SANDBOX_LATENCY_MS", "LOG_LEVEL"],
        ),
    ],
)
def test_every_bad_setting_in_one_message(args: list[str], env: dict[str, str], problems: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", *args], env=_env(**env), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    head, *lines = result.stderr.strip().splitlines()
    assert head == f"coupon-gateway: configuration error: {len(problems)} settings to fix:"
    assert [line.split(":")[0].strip() for line in lines] == problems
    if "CAPILLARY_AUTH" in problems:  # which credentials go with which scheme
        assert "oauth (with CAPILLARY_CLIENT_KEY and CAPILLARY_CLIENT_SECRET) or basic" in result.stderr
