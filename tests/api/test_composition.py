"""The composition root: handlers registered directly on the router, and given their parts at startup."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from service.app import CAPILLARY, COUPONS, FLOW, LEDGER, LEDGER_STORE, SERIES, UPSTREAM_AUTH, create_app
from service.config import CapillarySettings, Settings
from service.observability.metrics import Metrics
from service.web.offline import OfflineHandlers
from service.web.redemptions import RedemptionHandlers
from tests.conftest import ADMIN_KEY, TEST_KEYS, Upstream

POS_ROUTES = {
    ("POST", "/v1/redemptions/validate"): "validate",
    ("POST", "/v1/redemptions"): "redeem",
    ("GET", "/v1/redemptions/{ref}"): "status",
    ("POST", "/v1/redemptions/{ref}/reversal"): "reverse",
    ("GET", "/v1/series/{seriesId}"): "series",
}


def _settings() -> Settings:
    capillary = CapillarySettings(api_url="http://127.0.0.1:9", upload_url="http://127.0.0.1:9", auth="oauth")
    return Settings(capillary=capillary)


def _handlers(app: web.Application) -> dict[tuple[str, str], Any]:
    found = {}
    for route in app.router.routes():
        if route.resource is None:
            continue
        info = route.resource.get_info()
        path = info.get("path") or info.get("formatter") or ""
        found[(route.method, path.replace(f"{{ref:{'(?!validate$)[^{}/]+'}}}", "{ref}"))] = route.handler
    return found


def test_the_pos_routes_are_methods_of_one_handlers_object() -> None:
    handlers = _handlers(create_app(_settings()))
    owners = set()
    for route, name in POS_ROUTES.items():
        handler = handlers[route]
        assert handler.__name__ == name, route  # the method itself, not a function in front of it
        assert isinstance(handler.__self__, RedemptionHandlers)
        owners.add(id(handler.__self__))
    assert len(owners) == 1


def test_the_offline_routes_are_methods_of_their_handlers() -> None:
    handlers = _handlers(create_app(_settings()))
    for route in [("GET", "/v1/offline"), ("GET", "/v1/offline/conflicts"), ("POST", "/v1/offline/settle")]:
        assert isinstance(handlers[route].__self__, OfflineHandlers)


async def test_handlers_used_before_startup_say_so() -> None:
    handlers = RedemptionHandlers(Metrics())
    with pytest.raises(RuntimeError, match="before the app has started"):
        await handlers.series(None)  # type: ignore[arg-type]


async def test_startup_opens_every_resource_before_the_handlers_are_bound(
    aiohttp_client: Any, upstream: Upstream
) -> None:
    app = create_app(Settings(capillary=upstream.settings()), keys=TEST_KEYS)
    client = await aiohttp_client(app)
    for key in (CAPILLARY, COUPONS, SERIES, LEDGER_STORE, FLOW, LEDGER, UPSTREAM_AUTH):
        assert key in app, key
    response = await client.get("/v1/series/10003", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert response.status == 200
    assert (await response.json())["id"] == 10003
