"""Per-request observation: the request id, the canonical log line, HTTP metrics, and the upstream calls made on
the request's behalf (their ``X-Cap-Requestid``s go into its log line)."""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from service.capillary.pipeline import CallReport
from service.observability.context import REQUEST_ID_HEADER, assign_request_id, start_fields
from service.observability.metrics import Metrics, RedisCollector, status_class
from service.observability.tracing import exemplar
from service.redis_pool import end_tally, start_tally

log = structlog.get_logger("service.request")
upstream_log = structlog.get_logger("service.upstream")

UPSTREAM_IDS: Final[contextvars.ContextVar[list[str] | None]] = contextvars.ContextVar("upstream_ids", default=None)
UNMATCHED: Final = "unmatched"
QUIET_ROUTES: Final = frozenset({"/healthz", "/readyz", "/metrics"})  # no canonical line for probes and scrapes
_upstream_std = logging.getLogger("service.upstream")  # its level decides whether a debug line is built at all


def route_of(request: web.Request) -> str:
    """The route template (never the raw path: unbounded); ``unmatched`` for a 404."""
    resource = request.match_info.route.resource
    if resource is None:
        return UNMATCHED
    return resource.canonical


def observe_middleware(metrics: Metrics, redis: RedisCollector | None = None) -> web.middleware:  # type: ignore[valid-type]
    """``redis``: set while Redis is in use: each request's round trips to it are observed per route."""
    # The labelled children, resolved once per (route, method, status class) instead of on every request.
    counters: dict[tuple[str, str, str], Any] = {}
    durations: dict[tuple[str, str], Any] = {}

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Outermost: sees the status the error middleware mapped, times everything, writes one log line."""
        request_id, replaced = assign_request_id(request)
        if replaced:  # the caller's own is not logged: it is what could not be trusted
            start_fields(request_id=request_id, request_id_replaced=True)
        else:
            start_fields(request_id=request_id)
        upstream_ids: list[str] = []
        token = UPSTREAM_IDS.set(upstream_ids)
        started = time.perf_counter()
        status = 500
        trips = start_tally() if redis is not None else None
        try:
            response = await handler(request)
            status = response.status
            response.headers[REQUEST_ID_HEADER] = request_id
            return response
        finally:
            seconds = time.perf_counter() - started
            route, method = route_of(request), request.method
            if trips is not None and redis is not None:
                end_tally(trips[0])
                if route not in QUIET_ROUTES:
                    redis.per_request.labels(route).observe(trips[1][0])
            key = (route, method, status_class(status))
            counter = counters.get(key)
            if counter is None:
                counter = counters[key] = metrics.http_requests.labels(*key)
            counter.inc()
            duration = durations.get(key[:2])
            if duration is None:
                duration = durations[key[:2]] = metrics.http_duration.labels(route, method)
            duration.observe(seconds, exemplar())  # the trace id, when traces are on
            if route not in QUIET_ROUTES:
                log.info(
                    "request",
                    route=route,
                    method=method,
                    status=status,
                    duration_ms=round(seconds * 1000, 2),
                    upstream_request_ids=upstream_ids,
                )
            UPSTREAM_IDS.reset(token)
            # No clearing of the bindings after the line: aiohttp runs each request in a task of its own, whose
            # context ends with it (clearing walked every context variable once more per request).

    return observe


class UpstreamObserver:
    """The Capillary client's observer: metrics, a debug line per call, and the request's upstream ids."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        #: Told (operation, HTTP status, Capillary request id) of every answered call: the credentials' watch.
        self.on_status: Callable[[str, int | None, str | None], None] | None = None

    def on_call(self, call: CallReport) -> None:
        self._metrics.upstream_call(call.operation, call.seconds, call.outcome, call.code, exemplar())
        if self.on_status is not None and call.http_status is not None:
            self.on_status(call.operation, call.http_status, call.request_id)
        ids = UPSTREAM_IDS.get()
        if ids is not None and call.request_id:
            ids.append(call.request_id)
        if not _upstream_std.isEnabledFor(logging.DEBUG):
            return
        upstream_log.debug(
            "upstream call",
            operation=call.operation,
            outcome=call.outcome,
            http_status=call.http_status,
            capillary_code=call.code,
            cap_request_id=call.request_id,
            duration_ms=round(call.seconds * 1000, 2),
        )
