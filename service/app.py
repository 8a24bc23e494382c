"""The composition root: the only module that knows every layer.

``create_app`` reads top to bottom: shared state under typed ``AppKey``s, each resource as one
``cleanup_ctx`` generator that fails fast before ``yield`` and always closes after, then the routes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Final

from aiohttp import web

from service import __version__
from service.capillary.client import CapillaryClient
from service.capillary.coupons import CapillaryCoupons
from service.config import Settings
from service.redemption.flow import RedemptionFlow
from service.series import SeriesCatalog, open_catalog
from service.web.errors import error_middleware
from service.web.redemptions import RedemptionHandlers

SETTINGS: Final = web.AppKey("settings", Settings)
CAPILLARY: Final = web.AppKey("capillary", CapillaryClient)
SERIES: Final = web.AppKey("series", SeriesCatalog)
HANDLERS: Final = web.AppKey("handlers", RedemptionHandlers)
OPENAPI: Final = web.AppKey("openapi", bytes)


def openapi_document() -> bytes:
    return resources.files("service").joinpath("openapi.yaml").read_bytes()


async def healthz(request: web.Request) -> web.Response:
    """Process liveness: answers without touching any dependency."""
    return web.json_response({"status": "ok", "version": __version__})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/yaml")


# The POS routes delegate to the handlers built at startup, with their collaborators injected.
async def validate(request: web.Request) -> web.Response:
    return await request.app[HANDLERS].validate(request)


async def redeem(request: web.Request) -> web.Response:
    return await request.app[HANDLERS].redeem(request)


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
    app = web.Application(middlewares=[error_middleware])
    app[SETTINGS] = settings
    app[OPENAPI] = openapi_document()

    async def capillary_ctx(app: web.Application) -> AsyncIterator[None]:
        if capillary is not None:
            app[CAPILLARY] = capillary
            yield
            return
        client = CapillaryClient(settings.capillary)
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
            flow = RedemptionFlow(CapillaryCoupons(app[CAPILLARY]), catalog, clock=clock)
            app[HANDLERS] = RedemptionHandlers(flow, catalog)
            yield

    app.cleanup_ctx.extend([capillary_ctx, series_ctx])
    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/openapi.yaml", openapi, allow_head=False)
    app.router.add_post("/v1/redemptions/validate", validate)
    app.router.add_post("/v1/redemptions", redeem)
    app.router.add_get("/v1/series/{seriesId}", series, allow_head=False)
    return app
