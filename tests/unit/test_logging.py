"""The logging configuration: structlog's filtering loggers writing msgspec-encoded JSON bytes, stdlib records in
the same stream through the same processors, identifiers masked and secrets removed, the level applied first."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from service.observability.context import bind_fields, start_fields
from service.observability.logging import configure_logging

log = structlog.get_logger("service.test_logging")  # module level, as the service's loggers are


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.contextvars.clear_contextvars()
        structlog.reset_defaults()


def _lines(stream: io.BytesIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_an_event_is_one_json_line_of_bytes_with_its_fields_masked() -> None:
    out = io.BytesIO()
    configure_logging("info", console=False, stream=out)
    structlog.contextvars.bind_contextvars(request_id="r-1")
    log.info(
        "coupon_redeemed",
        ref="rdm_1",
        customer={"mobile": "919900000001"},
        email="alice@example.com",
        client_secret="s3cret",
        note="call 919900000002 back",
    )
    (line,) = _lines(out)
    assert line["event"] == "coupon_redeemed"
    assert (line["level"], line["logger"], line["request_id"], line["ref"]) == (
        "info",
        "service.test_logging",
        "r-1",
        "rdm_1",
    )
    assert line["timestamp"].endswith("Z")
    assert line["customer"] == {"mobile": "91******0001"}
    assert line["email"] == "a***@example.com"
    assert line["client_secret"] == "[redacted]"
    assert line["note"] == "call 91******0002 back"
    assert b"s3cret" not in out.getvalue()


class _Watched:
    """A field value that notes whether any processor looked at it."""

    seen = False

    def __str__(self) -> str:
        _Watched.seen = True
        return "watched"


def test_a_line_below_the_level_never_reaches_a_processor() -> None:
    out = io.BytesIO()
    configure_logging("info", console=False, stream=out)
    log.debug("upstream_call", customer=_Watched())
    assert out.getvalue() == b""
    assert not _Watched.seen  # redact() would have masked str(value)
    log.warning("upstream_slow", customer=_Watched())
    assert _lines(out)[0]["level"] == "warning"
    assert _Watched.seen


def test_stdlib_records_join_the_same_stream_through_the_same_processors() -> None:
    out = io.BytesIO()
    configure_logging("info", console=False, stream=out)
    structlog.contextvars.bind_contextvars(request_id="r-2")
    log.info("before")
    logging.getLogger("aiohttp.server").info("written at info")
    logging.getLogger("aiohttp.server").debug("ignored")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("aiohttp.server").exception("Error handling request from %s", "919900000003")
    logging.getLogger("aiohttp.access").info("an access line: the canonical line replaces it")
    log.info("after")
    before, info_line, foreign, after = _lines(out)
    assert (before["event"], info_line["event"], after["event"]) == ("before", "written at info", "after")
    assert foreign["logger"] == "aiohttp.server"
    assert (foreign["level"], foreign["request_id"]) == ("error", "r-2")
    assert foreign["event"] == "Error handling request from 91******0003"
    assert "RuntimeError: boom" in foreign["exception"]
    assert "_record" not in foreign


def test_the_console_rendering_is_readable_text() -> None:
    out = io.BytesIO()
    configure_logging("debug", console=True, stream=out)
    log.info("gateway_started", port=8080, mobile="919900000001")
    logging.getLogger("redis").warning("a library's warning")
    first, second = out.getvalue().decode().splitlines()
    assert "gateway_started" in first
    assert "port=8080" in first
    assert "91******0001" in first
    assert not first.startswith("{")
    assert "a library's warning" in second


def test_a_text_stream_gets_the_lines_in_order_with_what_was_printed_before() -> None:
    binary = io.BytesIO()
    text = io.TextIOWrapper(binary, encoding="utf-8", write_through=False)
    text.write("printed first\n")
    configure_logging("info", console=False, stream=text)
    log.info("logged_second")
    plain = io.StringIO()  # no binary buffer: each line decoded for it
    configure_logging("info", console=False, stream=plain)
    log.info("logged_into_text")
    first, second = binary.getvalue().decode().splitlines()
    assert first == "printed first"
    assert json.loads(second)["event"] == "logged_second"
    assert json.loads(plain.getvalue())["event"] == "logged_into_text"


def test_a_logger_used_before_a_new_configuration_follows_it() -> None:
    first, second = io.BytesIO(), io.BytesIO()
    configure_logging("info", console=False, stream=first)
    log.info("one")  # cached from here on
    configure_logging("info", console=False, stream=second)
    log.info("two")
    assert [line["event"] for line in _lines(first)] == ["one"]
    assert [line["event"] for line in _lines(second)] == ["two"]


def test_by_default_it_writes_to_stdout(capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    configure_logging("info", console=False)
    log.info("to_stdout", n=1)
    sys.stdout.flush()
    (line,) = [json.loads(x) for x in capfdbinary.readouterr().out.splitlines() if x.startswith(b"{")]
    assert (line["event"], line["n"]) == ("to_stdout", 1)


def test_the_log_line_benchmark_measures_both_configurations(capsys: pytest.CaptureFixture[str]) -> None:
    from bench import logline

    before = logging.getLogger().handlers[:]
    logline.main(["--lines", "50"])
    rows = capsys.readouterr().out.splitlines()
    assert [row.split("  ")[0] for row in rows[1:]] == [
        "stdlib route (before)",
        "structlog fast path (after)",
        "ratio (after / before)",
    ]
    figures = [float(x.removesuffix("µs")) for row in rows[1:3] for x in row.split()[-2:]]
    assert all(f > 0 for f in figures)
    assert logging.getLogger().handlers == before  # its handlers on /dev/null do not stay behind


async def test_request_fields_join_every_line_and_a_task_keeps_those_bound_when_it_started() -> None:
    out = io.BytesIO()
    configure_logging("info", console=False, stream=out)

    async def request() -> None:
        start_fields(request_id="r-3")
        bind_fields(key_name="till-1")
        started = asyncio.Event()
        go_on = asyncio.Event()

        async def beside() -> None:
            started.set()
            await go_on.wait()
            log.info("in the task")

        task = asyncio.create_task(beside())
        await started.wait()
        bind_fields(outcome="redeemed")  # after the task started: not its field
        go_on.set()
        await task
        log.info("request", key_name="the line's own")

    await asyncio.create_task(request())
    log.info("after the request")
    in_task, line, after = _lines(out)
    assert (in_task["request_id"], in_task["key_name"]) == ("r-3", "till-1")
    assert "outcome" not in in_task
    assert (line["request_id"], line["outcome"]) == ("r-3", "redeemed")
    assert line["key_name"] == "the line's own"  # a field the line sets itself wins
    assert "request_id" not in after  # the request's fields ended with its task
