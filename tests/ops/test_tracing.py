"""Traces across the hop: a till's ``traceparent`` continues through the gateway's server span and its client spans to
the ``traceparent`` Capillary receives, with the request id and the masked store as attributes and the trace id as a
latency exemplar; off without an endpoint; and a real ``serve`` exporting to a live OTLP/HTTP receiver."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from service.app import create_app
from service.config import Settings
from service.observability import tracing
from service.sandbox import DEMO, SANDBOX_KEY, SandboxConfig, create_sandbox_app
from tests.conftest import ADMIN_KEY, SANDBOX_NOW, TEST_ACCESS, TEST_KEYS, Upstream, bearer, free_port

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
VALIDATE = {"customer": {"mobile": DEMO.customer("alice").mobile}, "codes": ["ABS-ALICE-1"], "billAmount": "500"}


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.uninstall()
        provider.shutdown()


async def _traced_sandbox(aiohttp_server: Any) -> tuple[Upstream, list[str | None]]:
    """A sandbox that records the ``traceparent`` of every request it receives (None: none sent)."""
    received: list[str | None] = []

    async def record(request: web.Request, response: web.StreamResponse) -> None:
        received.append(request.headers.get("traceparent"))

    app = create_sandbox_app(SandboxConfig(clock=lambda: SANDBOX_NOW))
    app.on_response_prepare.append(record)
    server: TestServer = await aiohttp_server(app)
    return Upstream(app[SANDBOX_KEY], str(server.make_url("")).rstrip("/")), received


async def _gateway(aiohttp_client: Any, upstream: Upstream) -> TestClient[Any, Any]:
    settings = Settings(capillary=upstream.settings("oauth"), access=TEST_ACCESS)
    app = create_app(settings, keys=TEST_KEYS)
    client: TestClient[Any, Any] = await aiohttp_client(app, headers=bearer(ADMIN_KEY))
    return client


def _hex(value: int, digits: int) -> str:
    return format(value, f"0{digits}x")


async def test_one_trace_from_the_till_through_the_gateway_to_capillary(
    aiohttp_server: Any, aiohttp_client: Any, spans: InMemorySpanExporter
) -> None:
    upstream, received = await _traced_sandbox(aiohttp_server)
    gateway = await _gateway(aiohttp_client, upstream)
    headers = {"traceparent": TRACEPARENT, "X-Request-ID": "till-7-trace"}
    response = await gateway.post("/v1/redemptions/validate", json=VALIDATE, headers=headers)
    assert response.status == 200

    finished: tuple[ReadableSpan, ...] = spans.get_finished_spans()
    (server,) = [s for s in finished if s.kind is SpanKind.SERVER]
    clients = [s for s in finished if s.kind is SpanKind.CLIENT]
    assert server.context is not None
    assert server.parent is not None
    assert _hex(server.context.trace_id, 32) == TRACE_ID  # the till's trace, continued
    assert _hex(server.parent.span_id, 16) == PARENT_ID
    assert server.name == "POST /v1/redemptions/validate"
    attributes = dict(server.attributes or {})
    assert attributes["pos.request_id"] == "till-7-trace"
    assert attributes["http.response.status_code"] == 200
    assert attributes["pos.store"] == "S**1"  # masked: S001
    # The request's own calls are in its trace; a series lookup shared by concurrent requests runs on its own.
    in_trace = [s for s in clients if s.context is not None and _hex(s.context.trace_id, 32) == TRACE_ID]
    assert {s.name for s in in_trace} >= {"GET /v2/coupon/is_redeemable"}
    for client in in_trace:
        assert client.parent is not None
        assert client.parent.span_id == server.context.span_id
        assert dict(client.attributes or {})["pos.request_id"] == "till-7-trace"
    assert "919900000001" not in str([s.attributes for s in clients])  # the query (identifiers) is not recorded

    # What Capillary received: each call's traceparent names one of the gateway's client spans, the request's own
    # calls in the till's trace.
    sent = [header for header in received if header is not None]
    client_ids = {_hex(s.context.span_id, 16) for s in clients if s.context is not None}
    assert len(sent) == len(clients)
    for header in sent:
        version, _, parent_id, flags = header.split("-")
        assert (version, int(flags, 16) & 1, parent_id in client_ids) == ("00", 1, True)  # sampled
    assert sum(header.split("-")[1] == TRACE_ID for header in sent) == len(in_trace) >= 1

    # The latency histogram carries the trace id as an exemplar, in OpenMetrics.
    scrape = await gateway.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert scrape.headers["Content-Type"].startswith("application/openmetrics-text")
    text = await scrape.text()
    assert f'trace_id="{TRACE_ID}"' in text
    assert "# EOF" in text


async def test_without_an_endpoint_there_are_no_traces(aiohttp_server: Any, aiohttp_client: Any) -> None:
    assert tracing.server_middlewares() == ()
    assert tracing.client_middlewares() == ()
    upstream, received = await _traced_sandbox(aiohttp_server)
    gateway = await _gateway(aiohttp_client, upstream)
    response = await gateway.post("/v1/redemptions/validate", json=VALIDATE, headers={"traceparent": TRACEPARENT})
    assert response.status == 200
    assert received
    assert all(header is None for header in received)  # nothing sent on: no trace of ours
    assert "trace_id" not in await (await gateway.get("/metrics")).text()


@contextlib.asynccontextmanager
async def _otlp_receiver() -> AsyncIterator[tuple[str, list[ExportTraceServiceRequest], asyncio.Event]]:
    """A tiny OTLP/HTTP collector on loopback: ``POST /v1/traces`` with protobuf bodies."""
    exports: list[ExportTraceServiceRequest] = []
    arrived = asyncio.Event()

    async def traces(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.read())
        exports.append(export)
        arrived.set()
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", exports, arrived
    finally:
        await runner.cleanup()


def _exported_spans(exports: list[ExportTraceServiceRequest]) -> list[Any]:
    return [span for e in exports for rs in e.resource_spans for ss in rs.scope_spans for span in ss.spans]


async def test_serve_exports_the_trace_to_an_otlp_collector() -> None:
    async with _otlp_receiver() as (endpoint, exports, arrived):
        port, sandbox = free_port(), free_port()
        base = {
            k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "CAPILLARY_", "SANDBOX_", "OTEL_"))
        }
        env = {
            **base,
            "GATEWAY_PORT": str(port),
            "SANDBOX_PORT": str(sandbox),
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "50",  # export within 50 ms instead of 5 s
            "OTEL_SERVICE_NAME": "gateway-under-test",
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service", "serve", "--sandbox", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession(headers=bearer("sandbox-till-key")) as session:
                for _ in range(400):  # until it listens
                    with contextlib.suppress(aiohttp.ClientError):
                        async with session.get(f"{url}/healthz") as ready:
                            if ready.status == 200:
                                break
                    if process.returncode is not None:
                        pytest.fail(f"serve exited: {await process.communicate()}")
                    await asyncio.sleep(0.05)
                headers = {"traceparent": TRACEPARENT}
                async with session.post(f"{url}/v1/redemptions/validate", json=VALIDATE, headers=headers) as answer:
                    assert answer.status == 200
            async with asyncio.timeout(20):
                while not any(s.kind == 2 and s.trace_id.hex() == TRACE_ID for s in _exported_spans(exports)):
                    arrived.clear()
                    await arrived.wait()
        finally:
            process.send_signal(signal.SIGINT)
            await process.communicate()
    exported = _exported_spans(exports)
    server = next(s for s in exported if s.kind == 2 and s.trace_id.hex() == TRACE_ID)  # SPAN_KIND_SERVER
    assert (server.trace_id.hex(), server.parent_span_id.hex()) == (TRACE_ID, PARENT_ID)
    assert any(s.kind == 3 and s.trace_id.hex() == TRACE_ID for s in exported)  # SPAN_KIND_CLIENT
    names = {a.value.string_value for e in exports for rs in e.resource_spans for a in rs.resource.attributes}
    assert "gateway-under-test" in names
