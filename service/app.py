"""The composition root: the only module that knows every layer.

``create_app`` reads top to bottom: shared state under typed ``AppKey``s, each resource as one
``cleanup_ctx`` generator that fails fast before ``yield`` and always closes after, then the routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Final

from aiohttp import web
from yarl import URL

from service import __version__
from service.capillary.client import CapillaryClient
from service.capillary.coupons import CapillaryCoupons
from service.config import Settings
from service.idempotency.redis_store import RedisStore
from service.idempotency.service import ExactlyOnce, Timing
from service.idempotency.store import LedgerStore, MemoryStore, StoreUnavailable
from service.observability.metrics import CacheView, Metrics, StateCollector
from service.observability.requests import UpstreamObserver, observe_middleware
from service.redemption.flow import RedemptionFlow
from service.series import SeriesCatalog, open_catalog
from service.web.errors import error_middleware
from service.web.redemptions import JsonRenderer, RedemptionHandlers

log = logging.getLogger("service.app")

SETTINGS: Final = web.AppKey("settings", Settings)
CAPILLARY: Final = web.AppKey("capillary", CapillaryClient)
SERIES: Final = web.AppKey("series", SeriesCatalog)
LEDGER_STORE: Final = web.AppKey("ledger_store", LedgerStore)
LEDGER: Final = web.AppKey("ledger", ExactlyOnce)
HANDLERS: Final = web.AppKey("handlers", RedemptionHandlers)
OPENAPI: Final = web.AppKey("openapi", bytes)
METRICS: Final = web.AppKey("metrics", Metrics)
# The classic text format, which every Prometheus 2.x reads (prometheus-client's default now says 1.0.0).
METRICS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


def openapi_document() -> bytes:
    return resources.files("service").joinpath("openapi.yaml").read_bytes()


async def healthz(request: web.Request) -> web.Response:
    """Process liveness: answers without touching any dependency."""
    return web.json_response({"status": "ok", "version": __version__})


async def _reachable(url: str, timeout: float = 1.0) -> bool:
    target = URL(url)
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(target.host, target.port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def readyz(request: web.Request) -> web.Response:
    """Dependencies, one by one. A shared dependency down makes the gateway ``degraded``, not unready: every
    replica would be alike, and validation still works without the ledger."""
    app = request.app
    checks = {"upstream": "up" if await _reachable(app[SETTINGS].capillary.api_url) else "down"}
    try:
        await app[LEDGER_STORE].ping()
        checks["ledger"] = "up"
    except StoreUnavailable:
        checks["ledger"] = "down"
    checks["cache"] = "up" if await app[SERIES].healthy() else "down"
    status = "ready" if all(v == "up" for v in checks.values()) else "degraded"
    return web.json_response({"status": status, "checks": checks, "ledger": app[LEDGER_STORE].backend})


async def metrics(request: web.Request) -> web.Response:
    response = web.Response(body=request.app[METRICS].render())
    response.headers["Content-Type"] = METRICS_CONTENT_TYPE
    return response


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/yaml")


# The POS routes delegate to the handlers built at startup, with their collaborators injected.
async def validate(request: web.Request) -> web.Response:
    return await request.app[HANDLERS].validate(request)


async def redeem(request: web.Request) -> web.Response:
    return await request.app[HANDLERS].redeem(request)


async def redemption(request: web.Request) -> web.Response:
    return await request.app[HANDLERS].status(request)


async def reversal(request: web.Request) -> web.Response:
    return await request.app[HANDLERS].reverse(request)


async def series(request: web.Request) -> web.Response:
    return await request.app[HANDLERS].series(request)


def create_app(
    settings: Settings,
    *,
    capillary: CapillaryClient | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> web.Application:
    """Build the gateway. ``capillary`` may be given (tests); otherwise one is opened from ``settings``.
    ``clock`` is "now" for the series pre-checks."""
    instruments = Metrics()
    app = web.Application(middlewares=[observe_middleware(instruments), error_middleware])
    app[SETTINGS] = settings
    app[OPENAPI] = openapi_document()
    app[METRICS] = instruments

    async def capillary_ctx(app: web.Application) -> AsyncIterator[None]:
        if capillary is not None:
            app[CAPILLARY] = capillary
            yield
            return
        client = CapillaryClient(settings.capillary, observer=UpstreamObserver(instruments))
        app[CAPILLARY] = client
        try:
            yield
        finally:
            await client.close()

    async def series_ctx(app: web.Application) -> AsyncIterator[None]:
        cache = settings.cache
        async with open_catalog(
            app[CAPILLARY],
            cache_url=cache.url,
            ttl=cache.series_ttl,
            timeout=cache.timeout,
            lookup_timeout=cache.lookup_timeout,
        ) as catalog:
            app[SERIES] = catalog
            yield

    async def ledger_ctx(app: web.Application) -> AsyncIterator[None]:
        state = settings.state
        store: LedgerStore
        if state.redis_url:
            store = RedisStore(state.redis_url, timeout=state.timeout)
            log.info("redemption ledger: redis (shared by every replica, kept across restarts)")
        else:
            store = MemoryStore()
            log.warning("redemption ledger: in memory (one process only; lost on restart). Set REDIS_URL for more")
        app[LEDGER_STORE] = store
        coupons = CapillaryCoupons(app[CAPILLARY])
        flow = RedemptionFlow(coupons, app[SERIES], clock=clock)
        timing = Timing(
            deadline=state.redeem_deadline,
            upstream_timeout=settings.capillary.timeout,
            ttl=state.ttl,
            lease_margin=state.lease_margin,
            reconcile_gap=state.reconcile_interval,
        )
        ledger = ExactlyOnce(flow, store, coupons, app[SERIES], JsonRenderer(), timing)
        app[LEDGER] = ledger
        app[HANDLERS] = RedemptionHandlers(flow, app[SERIES], ledger, instruments)
        collector = _state_collector(app, ledger, store.backend)
        instruments.registry.register(collector)
        sweeper = asyncio.create_task(ledger.run_sweeper(state.reconcile_interval))
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await ledger.close()
            await store.close()
            instruments.registry.unregister(collector)

    app.cleanup_ctx.extend([capillary_ctx, series_ctx, ledger_ctx])
    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/readyz", readyz, allow_head=False)
    app.router.add_get("/metrics", metrics, allow_head=False)
    app.router.add_get("/openapi.yaml", openapi, allow_head=False)
    app.router.add_post("/v1/redemptions/validate", validate)
    app.router.add_post("/v1/redemptions", redeem)
    app.router.add_get("/v1/redemptions/{ref}", redemption, allow_head=False)
    app.router.add_post("/v1/redemptions/{ref}/reversal", reversal)
    app.router.add_get("/v1/series/{seriesId}", series, allow_head=False)
    instruments.initialise_routes(
        [(r.resource.canonical, r.method) for r in app.router.routes() if r.resource is not None]
    )
    return app


def _state_collector(app: web.Application, ledger: ExactlyOnce, ledger_backend: str) -> StateCollector:
    catalog, client = app[SERIES], app[CAPILLARY]
    backend = "redis" if app[SETTINGS].cache.url else "memory"
    caches = [CacheView("series", backend, catalog.stats.series), CacheView("code", backend, catalog.stats.code)]
    return StateCollector(
        caches=caches,
        fetch_sizes=lambda: dict(catalog.stats.fetch_sizes),
        token_refreshes=lambda: client.tokens.refreshes if client.tokens else 0,
        pending=lambda: ledger.pending_count,
        reconciliations=lambda: dict(ledger.reconciliations),
    )
