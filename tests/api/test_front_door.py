"""The front door through real sockets on loopback: the gateway served as in production (service/web/server.py), the
sandbox as its upstream. A slow client costs a socket, never a bulkhead slot; half-sent headers, stalled bodies and
idle connections are closed within their limits; malformed HTTP gets the error envelope, echoes nothing and is
logged once per peer per minute; request ids are echoed only when safe.

Every wait is bounded: a read that does not end within its limit fails the test instead of hanging it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from service.access.keys import key_entry
from service.app import METRICS, create_app
from service.config import AccessSettings, Settings
from service.sandbox import DEMO
from service.web.server import DoorLimits, serve
from tests.api.spec import assert_matches
from tests.conftest import (
    ADMIN_KEY,
    TEST_KEYS,
    TILL_KEY,
    LogCapture,
    StartUpstream,
    Upstream,
    bearer,
    free_port,
    serve_env,
)

SERIES = DEMO.series_of("abs").id
VALIDATE = {"customer": {"mobile": DEMO.customer("alice").mobile}, "codes": ["ABS-ALICE-1"], "billAmount": "2000.00"}
#: Room for a loaded machine on top of a limit: a read still open after limit + SLACK fails the test.
SLACK = 10.0


@dataclass
class Door:
    """A gateway listening on loopback."""

    app: web.Application
    runner: web.AppRunner
    port: int

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def refused(self, reason: str) -> float:
        return self.app[METRICS].access_refused.labels(reason)._value.get()  # type: ignore[no-any-return]

    @property
    def requests_seen(self) -> int:
        """Requests whose headers the server parsed (aiohttp's count), answered or not."""
        server = self.runner.server
        assert server is not None
        return server.requests_count


StartDoor = Callable[..., Awaitable[Door]]


@pytest.fixture
async def start_door(upstream: Upstream) -> AsyncIterator[StartDoor]:
    runners: list[web.AppRunner] = []

    async def start(**access: Any) -> Door:
        settings = Settings(
            capillary=upstream.settings(),
            access=AccessSettings(**{"rate_per_second": 100_000, "rate_burst": 100_000, **access}),
        )
        app = create_app(settings, keys=TEST_KEYS)
        runner = await serve(
            app,
            "127.0.0.1",
            0,
            limits=DoorLimits.of(settings.access),
            shutdown_timeout=1.0,
            metrics=app[METRICS],
        )
        runners.append(runner)
        return Door(app, runner, runner.addresses[0][1])

    yield start
    for runner in runners:
        await runner.cleanup()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    raw: bytes = field(repr=False)

    def error(self) -> dict[str, Any]:
        assert self.headers.get("content-type", "").startswith("application/json"), self.headers
        error: dict[str, Any] = json.loads(self.body)["error"]
        assert error["requestId"] == self.headers["x-request-id"]
        return error


def _answer(raw: bytes) -> Answer:
    head, separator, rest = raw.partition(b"\r\n\r\n")
    assert separator, f"not an HTTP answer: {raw[:200]!r}"
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", len(rest)))
    return Answer(int(lines[0].split()[1]), headers, rest[:length], raw)


async def _connect(door: Door | int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", door if isinstance(door, int) else door.port)


async def _until_closed(reader: asyncio.StreamReader, limit: float) -> bytes:
    """All the gateway sends until it closes the connection; fails if it is still open after ``limit`` + SLACK."""
    return await asyncio.wait_for(reader.read(), timeout=limit + SLACK)


async def _one_answer(reader: asyncio.StreamReader) -> Answer:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=SLACK)
    answer = _answer(head)
    body = await asyncio.wait_for(reader.readexactly(int(answer.headers["content-length"])), timeout=SLACK)
    return Answer(answer.status, answer.headers, body, head + body)


async def _exchange(door: Door | int, data: bytes) -> Answer:
    """Send ``data`` on a connection of its own; the answer, once the gateway has closed the connection."""
    reader, writer = await _connect(door)
    try:
        writer.write(data)
        await writer.drain()
        return _answer(await _until_closed(reader, 0))
    finally:
        writer.close()


async def _until(condition: Callable[[], bool], what: str) -> None:
    """Poll a condition the test cannot await: at most 500 times, 20 ms apart."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


def _post_head(path: str, key: str, length: int, *extra: str) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: gateway",
        f"Authorization: Bearer {key}",
        "Content-Type: application/json",
        f"Content-Length: {length}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# ---- slow clients


async def test_stalled_bodies_hold_no_pos_slot_and_are_answered_408(start_door: StartDoor, upstream: Upstream) -> None:
    """More sockets than the POS bulkhead has slots send their headers and one byte of a 100-byte body, then stall:
    a till's request still goes through meanwhile, and each stalled socket gets 408 and is closed."""
    bulkhead, stalled_count, body_timeout = 3, 5, 1.0
    door = await start_door(max_inflight_pos=bulkhead, body_timeout=body_timeout)
    stalled = []
    for _ in range(stalled_count):
        reader, writer = await _connect(door)
        writer.write(_post_head("/v1/redemptions/validate", TILL_KEY, 100) + b"{")
        await writer.drain()
        stalled.append((reader, writer))
    try:
        await _until(lambda: door.requests_seen >= stalled_count, "every stalled request reached the gateway")
        async with (
            aiohttp.ClientSession(headers=bearer(TILL_KEY)) as session,
            session.post(door.url("/v1/redemptions/validate"), json=VALIDATE) as response,
        ):
            assert response.status == 200, await response.text()
            assert (await response.json())["coupons"][0]["redeemable"] is True
        for reader, _ in stalled:
            answer = _answer(await _until_closed(reader, body_timeout))
            assert answer.status == 408
            assert answer.headers["connection"] == "close"
            error = answer.error()
            assert (error["code"], error["retryable"]) == ("REQUEST_TIMEOUT", True)
            assert error["message"].startswith("body: not received within")
    finally:
        for _, writer in stalled:
            writer.close()
    assert door.refused("slow_body") == stalled_count
    assert door.refused("shed") == 0
    assert upstream.sandbox.call_count("is_redeemable") == 1, "only the till's request went upstream"


async def test_the_requests_deadline_bounds_its_body(start_door: StartDoor) -> None:
    """A body timeout far away, a till's deadline of 300 ms: the stalled body is refused at the deadline."""
    door = await start_door(body_timeout=120.0)
    reader, writer = await _connect(door)
    try:
        writer.write(_post_head("/v1/redemptions", TILL_KEY, 100, "X-Request-Deadline-Ms: 300") + b"{")
        await writer.drain()
        answer = _answer(await _until_closed(reader, 0.3))  # well before the body timeout
    finally:
        writer.close()
    assert answer.status == 408
    assert answer.error()["message"] == "body: not received within 0.3 s"


async def test_half_sent_headers_are_answered_408_and_closed(start_door: StartDoor) -> None:
    """Fifty sockets send half a header set and stall: each is answered 408 and closed at the header timeout, long
    before the keep-alive timeout could have closed it."""
    sockets, header_timeout = 50, 0.5
    door = await start_door(header_timeout=header_timeout, keepalive=600.0)
    connections = [await _connect(door) for _ in range(sockets)]
    try:
        for _, writer in connections:
            writer.write(b"POST /v1/redemptions HTTP/1.1\r\nHost: gateway\r\nAuthoriz")
            await writer.drain()
        answers = [_answer(await _until_closed(reader, header_timeout)) for reader, _ in connections]
    finally:
        for _, writer in connections:
            writer.close()
    for answer in answers:
        assert answer.status == 408
        assert answer.error()["code"] == "REQUEST_TIMEOUT"
        assert answer.headers["connection"] == "close"
        assert answer.headers["x-content-type-options"] == "nosniff"
    assert door.refused("slow_headers") == sockets


async def test_idle_connections_are_closed_after_the_keepalive(start_door: StartDoor) -> None:
    door = await start_door(keepalive=1.0)
    reader, writer = await _connect(door)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        await writer.drain()
        assert (await _one_answer(reader)).status == 200
        assert await _until_closed(reader, 1.0) == b"", "closed once idle for the keep-alive timeout"
        silent, silent_writer = await _connect(door)  # a connection that never says anything
        assert await _until_closed(silent, 1.0) == b""
        silent_writer.close()
    finally:
        writer.close()


async def test_a_connection_carries_at_most_max_requests(start_door: StartDoor) -> None:
    door = await start_door(max_requests_per_connection=3)
    reader, writer = await _connect(door)
    try:
        answers = []
        for _ in range(3):
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
            await writer.drain()
            answers.append(await _one_answer(reader))
        assert await _until_closed(reader, 0) == b""
    finally:
        writer.close()
    assert [a.status for a in answers] == [200, 200, 200]
    assert [a.headers.get("connection") for a in answers] == [None, None, "close"]


async def test_a_stalled_upload_is_answered_408_and_frees_its_slot(start_door: StartDoor) -> None:
    """Uploads stream under their own bulkhead: a pause longer than the body timeout ends the upload with 408."""
    door = await start_door(max_inflight_upload=1, body_timeout=0.5)
    path = f"/v1/series/{SERIES}/coupon-uploads?identifierType=NOT_TAGGED&dryRun=true"
    head = _post_head(path, ADMIN_KEY, 1000).replace(b"application/json", b"text/csv")
    reader, writer = await _connect(door)
    try:
        writer.write(head + b"code\nSTALLED-1\n")
        await writer.drain()
        answer = _answer(await _until_closed(reader, 0.5))
    finally:
        writer.close()
    assert answer.status == 408
    assert answer.error()["message"] == "body: nothing received for 0.5 s"
    async with (
        aiohttp.ClientSession(headers=bearer(ADMIN_KEY)) as session,
        session.post(door.url(path), data=b"code\nNEXT-1\n", headers={"Content-Type": "text/csv"}) as response,
    ):
        assert response.status == 200, await response.text()  # the upload slot is free again


# ---- malformed HTTP

SECRET = ADMIN_KEY.encode()
MALFORMED = {
    "bad method, a key in the target": b"GE\x01T /v1/coupons?apiKey=" + SECRET + b" HTTP/1.1\r\nHost: g\r\n\r\n",
    "garbage": b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + SECRET + b"\r\n\r\n",
    "a key in a broken request line": b"POST /v1/redemptions HTTP/1.1 " + SECRET + b"\r\nHost: g\r\n\r\n",
    "over-long header": b"GET /healthz HTTP/1.1\r\nAuthorization: Bearer " + SECRET + b"A" * 9000 + b"\r\n\r\n",
    "over-long request line": b"GET /v1/coupons?codes=" + b"C" * 40_000 + SECRET + b" HTTP/1.1\r\n\r\n",
    "bad header name": b"GET /healthz HTTP/1.1\r\nX-Key " + SECRET + b": 1\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_http_gets_the_envelope_and_echoes_nothing(
    start_door: StartDoor, captured_logs: LogCapture, request_bytes: bytes
) -> None:
    door = await start_door()
    answer = await _exchange(door, request_bytes)
    assert answer.status == 400
    error = answer.error()
    assert (error["code"], error["retryable"], error["upstream"]) == ("MALFORMED_HTTP", False, None)
    assert error["message"].startswith("The request is not valid HTTP: ")
    assert SECRET not in answer.raw
    assert not re.search(rb"GE.T|coupons|redemptions|AAAA|CCCC|X-Key|\x16", answer.raw)
    assert answer.headers["x-frame-options"] == "DENY"
    assert "server" not in answer.headers  # no software, no version: not even aiohttp's own
    assert_matches("/v1/redemptions", "post", 400, json.loads(answer.body))
    assert ADMIN_KEY not in captured_logs.text
    assert door.refused("malformed_http") == 1


async def test_a_flood_of_malformed_requests_from_one_peer_logs_one_line(
    start_door: StartDoor, captured_logs: LogCapture
) -> None:
    door = await start_door()
    kinds = list(MALFORMED.values())
    answers = [await _exchange(door, kinds[i % len(kinds)]) for i in range(20)]
    assert {a.status for a in answers} == {400}
    lines = [line for line in captured_logs.lines() if line.get("logger") in ("service.web.server", "aiohttp.server")]
    assert len(lines) == 1, lines
    (line,) = lines
    assert (line["event"], line["level"], line["peer"], line["held_back"]) == (
        "malformed request refused",
        "warning",
        "127.0.0.1",
        0,
    )
    assert "exception" not in line
    assert "Traceback" not in captured_logs.text
    assert door.refused("malformed_http") == 20


# ---- request ids


async def _request_id_answer(door: Door, value: bytes) -> Answer:
    head = f"GET /v1/series/{SERIES} HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {TILL_KEY}\r\n"
    return await _exchange(door, head.encode() + b"X-Request-ID: " + value + b"\r\nConnection: close\r\n\r\n")


@pytest.mark.parametrize("sent", [b"abc-123", b"till-7:txn.42_A", b"x" * 128], ids=["plain", "punctuation", "128"])
async def test_a_safe_request_id_is_echoed(start_door: StartDoor, sent: bytes, captured_logs: LogCapture) -> None:
    door = await start_door()
    answer = await _request_id_answer(door, sent)
    assert answer.status == 200
    assert answer.headers["x-request-id"] == sent.decode()
    (line,) = [line for line in captured_logs.lines() if line.get("event") == "request"]
    assert line["request_id"] == sent.decode()
    assert "request_id_replaced" not in line


UNSAFE = {
    "unicode": "tïll-☃".encode(),
    "space": b"till 7",
    "overlong": b"x" * 129,
    "quote": b'a"b',
    "angle brackets": b"<script>",
    "percent": b"a%0d%0ab",
    "header injection": b"evil\r\n\tSet-Cookie: stolen=1",  # a folded line: still one header value
}


@pytest.mark.parametrize("sent", UNSAFE.values(), ids=UNSAFE.keys())
async def test_an_unsafe_request_id_is_replaced_and_logged_as_replaced(
    start_door: StartDoor, sent: bytes, captured_logs: LogCapture
) -> None:
    door = await start_door()
    answer = await _request_id_answer(door, sent)
    assert b"stolen" not in answer.raw
    assert b"Set-Cookie" not in answer.raw
    if answer.status == 400:  # refused by the parser before any id was read: the envelope, with an id of ours
        assert answer.error()["code"] == "MALFORMED_HTTP"
        return
    assert answer.status == 200
    replaced = answer.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", replaced)
    (line,) = [line for line in captured_logs.lines() if line.get("event") == "request"]
    assert (line["request_id"], line["request_id_replaced"]) == (replaced, True)
    assert sent.decode("utf-8", "replace") not in captured_logs.text


@pytest.mark.parametrize("sent", [b"ab\rcd", b"ab\ncd: x", b"ab\x00cd", b"ab\x7fcd"], ids=["CR", "LF", "NUL", "DEL"])
async def test_line_breaks_and_controls_in_a_request_id_never_reach_an_answer(
    start_door: StartDoor, sent: bytes
) -> None:
    door = await start_door()
    answer = await _request_id_answer(door, sent)
    assert answer.status in (200, 400)
    assert re.fullmatch(r"[0-9a-f]{32}", answer.headers["x-request-id"])
    if answer.status == 400:
        assert answer.error()["code"] == "MALFORMED_HTTP"


# ---- the real command


async def test_serve_applies_the_door_limits_from_its_environment(
    start_upstream: StartUpstream, tmp_path: Path
) -> None:
    """``coupon-gateway serve`` (on uvloop, as in production) with the limits set by environment variables."""
    upstream = await start_upstream()
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps([key_entry(TILL_KEY, name="till", store="S001", scopes=["redeem"])]))
    port = free_port()
    env = serve_env(
        upstream.url,
        str(keys),
        port,
        GATEWAY_HEADER_TIMEOUT_SECONDS="0.5",
        GATEWAY_BODY_TIMEOUT_SECONDS="0.5",
        GATEWAY_KEEPALIVE_SECONDS="600",
        GATEWAY_SHUTDOWN_GRACE_SECONDS="0",
        LOG_LEVEL="warning",
        LOG_FORMAT="json",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "serve", env=env, stdout=asyncio.subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(300):  # until it answers, at most 30 s
                assert process.returncode is None, f"gateway exited with {process.returncode}"
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{base}/healthz") as response:
                        if response.status == 200:
                            break
                await asyncio.sleep(0.1)
            half = await _exchange(port, b"GET /healthz HTTP/1.1\r\nHost: ga")
            reader, writer = await _connect(port)
            writer.write(_post_head("/v1/redemptions/validate", TILL_KEY, 100) + b"{")
            stalled = _answer(await _until_closed(reader, 0.5))
            writer.close()
            malformed = await _exchange(port, MALFORMED["bad method, a key in the target"])
            async with session.get(f"{base}/metrics") as response:
                metrics = await response.text()
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), timeout=30)
    assert (half.status, half.error()["code"]) == (408, "REQUEST_TIMEOUT")
    assert (stalled.status, stalled.error()["code"]) == (408, "REQUEST_TIMEOUT")
    assert (malformed.status, malformed.error()["code"]) == (400, "MALFORMED_HTTP")
    for reason in ("slow_headers", "slow_body", "malformed_http"):
        assert f'pos_coupon_access_refused_total{{reason="{reason}"}} 1.0' in metrics
