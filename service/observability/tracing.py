"""Traces with OpenTelemetry: off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (and the ``otel`` extra installed).

When on, every request gets a server span continuing the caller's W3C ``traceparent`` (a till or a checkout that
traces), named by its route template and carrying the gateway's request id and the API key's store and till,
masked; every Capillary call made for it gets a client span, and its ``traceparent`` goes out with the call, so one
trace runs from the till through the gateway to Capillary. The latency histograms carry the trace id as an exemplar
(``/metrics`` in OpenMetrics, when the scraper asks for it).

The spans are made by the hooks here, not by an instrumentation package: aiohttp's server and client each take one
small middleware, and the client's must skip nothing the resilience layer does (every attempt is its own span).
OpenTelemetry's tracer provider is process-wide by design; :func:`install` sets the one these hooks use (tests install
an in-memory one), and the hooks read it when the app and the Capillary client are built.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Final

from aiohttp import ClientHandlerType, ClientRequest, ClientResponse, web
from aiohttp.typedefs import Handler, Middleware

from service import __version__
from service.access.keys import API_KEY
from service.observability.context import REQUEST_ID, log_fields

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

SERVICE_NAME: Final = "pos-coupon-gateway"
CAPILLARY_REQUEST_ID: Final = "X-Cap-Requestid"

_installed: list[TracerProvider] = []  # the process's provider while traces are on (at most one)


def install(provider: TracerProvider) -> None:
    """Turn traces on with ``provider`` (before the app and its Capillary client are built)."""
    _installed[:] = [provider]


def uninstall() -> None:
    _installed.clear()


def install_otlp() -> TracerProvider:
    """Traces to the OTLP/HTTP collector that OpenTelemetry's own variables name (``OTEL_EXPORTER_OTLP_ENDPOINT``,
    ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_SERVICE_NAME``, ``OTEL_TRACES_SAMPLER``...), batched."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes = {"service.version": __version__}
    if not os.environ.get("OTEL_SERVICE_NAME"):  # OpenTelemetry's own variable wins
        attributes["service.name"] = SERVICE_NAME
    resource = Resource.create(attributes)
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    install(provider)
    return provider


def shutdown() -> None:
    """Send what is buffered, then stop."""
    for provider in _installed:
        provider.shutdown()
    uninstall()


def current_trace_id() -> str | None:
    """The trace id of the span in force (32 hex digits), if traces are on and it is sampled."""
    if not _installed:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid or not context.trace_flags.sampled:
        return None
    return format(context.trace_id, "032x")


def exemplar() -> dict[str, str] | None:
    """The exemplar of a latency observation: the trace it belongs to."""
    trace_id = current_trace_id()
    return {"trace_id": trace_id} if trace_id else None


def masked(value: str | None) -> str | None:
    """A store or till code for a span: enough to tell two apart at a glance, not the code itself."""
    if not value:
        return None
    keep = 2 if len(value) > 6 else 1
    return value[:keep] + "*" * max(1, len(value) - 2 * keep) + (value[-keep:] if len(value) > 2 else "")


def server_middlewares() -> tuple[Middleware, ...]:
    """The server span's middleware (outermost), or nothing when traces are off."""
    if not _installed:
        return ()
    return (_server_middleware(_installed[0]),)


def client_middlewares() -> tuple[Any, ...]:
    """The Capillary client's span middleware, or nothing when traces are off."""
    if not _installed:
        return ()
    return (ClientSpans(_installed[0]),)


def _server_middleware(provider: TracerProvider) -> Middleware:
    from opentelemetry.trace import SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    tracer = provider.get_tracer("service.web", __version__)
    propagator = TraceContextTextMapPropagator()

    @web.middleware
    async def trace_request(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        attributes = {"http.request.method": request.method, "http.route": route, "url.scheme": request.scheme}
        parent = propagator.extract(request.headers)
        with tracer.start_as_current_span(
            f"{request.method} {route}", context=parent, kind=SpanKind.SERVER, attributes=attributes
        ) as span:
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                span.set_attribute("http.response.status_code", status)
                if (request_id := request.get(REQUEST_ID)) is not None:
                    span.set_attribute("pos.request_id", request_id)
                if (key := request.get(API_KEY)) is not None:
                    for name, value in (("pos.store", masked(key.store)), ("pos.till", masked(key.till))):
                        if value:
                            span.set_attribute(name, value)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))

    return trace_request


class ClientSpans:
    """aiohttp client middleware: a client span per Capillary request (each attempt), its ``traceparent`` sent."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._tracer = provider.get_tracer("service.capillary", __version__)
        self._propagator = TraceContextTextMapPropagator()

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        url = request.url
        attributes: dict[str, Any] = {
            "http.request.method": request.method,
            "server.address": url.host or "",
            "server.port": url.port or 0,
            "url.path": url.path,  # never the query: it carries customer identifiers
        }
        request_id = log_fields().get("request_id")
        if request_id:
            attributes["pos.request_id"] = request_id
        with self._tracer.start_as_current_span(
            f"{request.method} {url.path}", kind=SpanKind.CLIENT, attributes=attributes
        ) as span:
            self._propagator.inject(request.headers)
            response = await handler(request)
            span.set_attribute("http.response.status_code", response.status)
            if cap_request_id := response.headers.get(CAPILLARY_REQUEST_ID):
                span.set_attribute("capillary.request_id", cap_request_id)
            if response.status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            return response
