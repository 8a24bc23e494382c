"""The composition root: the only module that knows every layer.

``create_app`` reads top to bottom: shared state under typed ``AppKey``s, each resource as one
``cleanup_ctx`` generator that fails fast before ``yield`` and always closes after, then the routes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from importlib import resources
from typing import Final

from aiohttp import web

from service import __version__
from service.capillary.client import CapillaryClient
from service.config import Settings
from service.web.errors import error_middleware

SETTINGS: Final = web.AppKey("settings", Settings)
CAPILLARY: Final = web.AppKey("capillary", CapillaryClient)
OPENAPI: Final = web.AppKey("openapi", bytes)


def openapi_document() -> bytes:
    return resources.files("service").joinpath("openapi.yaml").read_bytes()


async def healthz(request: web.Request) -> web.Response:
    """Process liveness: answers without touching any dependency."""
    return web.json_response({"status": "ok", "version": __version__})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/yaml")


def create_app(settings: Settings, *, capillary: CapillaryClient | None = None) -> web.Application:
    """Build the gateway. ``capillary`` may be given (tests); otherwise one is opened from ``settings``."""
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

    app.cleanup_ctx.append(capillary_ctx)
    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/openapi.yaml", openapi, allow_head=False)
    return app
