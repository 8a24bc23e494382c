"""Readiness that knows bad credentials: a gateway whose Capillary secret is wrong is unready (503 ``upstream_auth``),
says why, logs it once, and sets a metric; with the right secret it is ready. Against the sandbox, both schemes."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.access.keys import key_entry
from service.app import UPSTREAM_AUTH, create_app
from service.config import AuthScheme, Settings
from service.sandbox import DEMO, Fault, FaultKind
from tests.api.spec import assert_matches
from tests.conftest import (
    ADMIN_KEY,
    TEST_ACCESS,
    TEST_KEYS,
    LogCapture,
    StartUpstream,
    Upstream,
    bearer,
    free_port,
)

REFUSED_EVENT = "capillary refuses the gateway's credentials"


async def _gateway(aiohttp_client: Any, upstream: Upstream, auth: AuthScheme, **wrong: str) -> TestClient[Any, Any]:
    capillary = dataclasses.replace(upstream.settings(auth), **wrong)
    app = create_app(Settings(capillary=capillary, access=TEST_ACCESS), keys=TEST_KEYS)
    client: TestClient[Any, Any] = await aiohttp_client(app, headers=bearer(ADMIN_KEY))
    return client


async def _ready(gateway: TestClient[Any, Any]) -> tuple[int, dict[str, Any]]:
    response = await gateway.get("/readyz")
    body: dict[str, Any] = await response.json()
    assert_matches("/readyz", "get", response.status, body)
    return response.status, body


async def _failing(gateway: TestClient[Any, Any]) -> float:
    text = await (await gateway.get("/metrics")).text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "pos_coupon_upstream_auth_failing":
                return float(sample.value)
    raise AssertionError("pos_coupon_upstream_auth_failing is not exported")


def _refusals(logs: LogCapture) -> list[dict[str, Any]]:
    return [line for line in logs.lines() if line["event"] == REFUSED_EVENT]


@pytest.mark.parametrize(
    ("auth", "wrong", "variable"),
    [
        ("oauth", {"client_secret": "not-the-secret"}, "CAPILLARY_CLIENT_SECRET"),
        ("basic", {"till_password": "not-the-password"}, "CAPILLARY_TILL_PASSWORD"),
    ],
)
async def test_wrong_credentials_make_the_gateway_unready_and_are_logged_once(
    aiohttp_client: Any,
    upstream: Upstream,
    captured_logs: LogCapture,
    auth: AuthScheme,
    wrong: dict[str, str],
    variable: str,
) -> None:
    gateway = await _gateway(aiohttp_client, upstream, auth, **wrong)
    for _ in range(3):  # probes keep coming: the verdict is cached, and logged once
        status, body = await _ready(gateway)
        assert status == 503
        assert (body["status"], body["checks"]["upstream_auth"]) == ("unready", "refused")
        assert variable in body["reason"]
    assert await _failing(gateway) == 1
    refusals = _refusals(captured_logs)
    assert len(refusals) == 1
    assert (refusals[0]["level"], refusals[0]["http_status"]) == ("error", 401)
    assert all(value not in captured_logs.text for value in wrong.values())


@pytest.mark.parametrize("auth", ["oauth", "basic"])
async def test_the_right_credentials_are_ready(
    aiohttp_client: Any, upstream: Upstream, captured_logs: LogCapture, auth: AuthScheme
) -> None:
    gateway = await _gateway(aiohttp_client, upstream, auth)
    status, body = await _ready(gateway)
    assert (status, body["status"], body["checks"]["upstream_auth"]) == (200, "ready", "ok")
    assert await _failing(gateway) == 0
    assert not _refusals(captured_logs)
    if auth == "basic":  # the cheap authenticated read: coupon id 0, which is never a coupon
        (probe,) = upstream.sandbox.calls_of("coupon_details")
        assert (probe.path, probe.auth) == ("/v2/coupon?couponIds=0", "basic")
    else:  # the proof is the token the next calls use: no call of its own
        assert upstream.sandbox.call_counts() == {"token": 1}


async def test_a_secret_refused_while_running_shows_at_once_and_recovery_is_logged(
    aiohttp_client: Any, upstream: Upstream, captured_logs: LogCapture
) -> None:
    gateway = await _gateway(aiohttp_client, upstream, "oauth")
    assert (await _ready(gateway))[0] == 200
    # Capillary starts refusing the client (its secret rotated upstream): tokens revoked, token requests refused.
    upstream.sandbox.add_fault(Fault(FaultKind.HTTP_ERROR, "token", status=401, times=None))
    upstream.sandbox.revoke_tokens()
    answer = await gateway.get("/v1/series/10003")
    assert answer.status >= 500  # the call could not be authenticated
    status, body = await _ready(gateway)  # no waiting for the verdict to age: the refused token request told it
    assert (status, body["checks"]["upstream_auth"]) == (503, "refused")
    upstream.sandbox.faults.clear()
    gateway.app[UPSTREAM_AUTH].expire()  # the verdict's time is up
    assert (await _ready(gateway))[0] == 200
    events = [line["event"] for line in captured_logs.lines() if line["logger"] == "service.upstream_auth"]
    assert events == [
        "capillary accepts the gateway's credentials",
        REFUSED_EVENT,
        "capillary accepts the gateway's credentials",
    ]


def _serve_env(upstream: Upstream, port: int, keys: Path, secret: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CAPILLARY_", "GATEWAY_", "SANDBOX_", "OTEL_"))}
    return {
        **base,
        "CAPILLARY_API_URL": upstream.url,
        "CAPILLARY_UPLOAD_URL": upstream.url,
        "CAPILLARY_AUTH": "oauth",
        "CAPILLARY_CLIENT_KEY": DEMO.client_key,
        "CAPILLARY_CLIENT_SECRET": secret,
        "GATEWAY_API_KEYS_FILE": str(keys),
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "LOG_FORMAT": "json",
    }


@pytest.mark.parametrize(("secret", "expected"), [("not-the-secret", 503), (DEMO.client_secret, 200)])
async def test_serve_with_a_wrong_secret_is_not_ready_within_ten_seconds(
    start_upstream: StartUpstream, tmp_path: Path, secret: str, expected: int
) -> None:
    upstream = await start_upstream()
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps([key_entry("k", name="admin", store="S001", scopes=["redeem", "admin"])]))
    port = free_port()
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        "serve",
        env=_serve_env(upstream, port, keys, secret),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    status, body = 0, {}
    try:
        async with aiohttp.ClientSession() as session:
            while time.monotonic() - started < 10:  # a rollout's readiness probe, every 50 ms for 10 s
                if process.returncode is not None:
                    pytest.fail(f"the gateway exited: {await process.communicate()}")
                try:
                    async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                        status, body = response.status, await response.json()
                except aiohttp.ClientError:
                    status = 0
                if status == expected:
                    break
                await asyncio.sleep(0.05)
    finally:
        process.send_signal(signal.SIGINT)
        out, err = await process.communicate()
    assert status == expected, (status, body, err.decode()[-2000:])
    lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    (start,) = [line for line in lines if line["event"] == "gateway_started"]
    assert start["listen"] == f"http://127.0.0.1:{port}"
    refusals = [line for line in lines if line["event"] == REFUSED_EVENT]
    if expected == 503:
        assert body["checks"]["upstream_auth"] == "refused"
        assert "CAPILLARY_CLIENT_SECRET" in body["reason"]
        assert len(refusals) == 1  # once, however many probes
        assert secret not in out.decode()
    else:
        assert (body["status"], body["checks"]["upstream_auth"]) == ("ready", "ok")
        assert refusals == []
