"""The gateway app over real HTTP: ops routes, the error envelope, and openapi.yaml kept in step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient

from service import __version__
from service.app import create_app
from service.config import CapillarySettings, Settings
from tests.conftest import ADMIN_KEY, TEST_KEYS, bearer

SPEC_PATH = Path(__file__).resolve().parents[2] / "openapi.yaml"
METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


def _settings() -> Settings:
    # An upstream nobody listens on: these routes must never need it.
    capillary = CapillarySettings(api_url="http://127.0.0.1:9", upload_url="http://127.0.0.1:9", auth="oauth")
    return Settings(capillary=capillary)


def _spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text())
    return spec


async def test_healthz(aiohttp_client: Any) -> None:
    client: TestClient[web.Request, web.Application] = await aiohttp_client(create_app(_settings()))
    response = await client.get("/healthz", headers={"X-Request-ID": "till-42-abc"})
    assert response.status == 200
    assert await response.json() == {"status": "ok", "version": __version__}
    assert response.headers["X-Request-ID"] == "till-42-abc"


async def test_openapi_is_served_and_is_the_repository_file(aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_app(_settings()))
    response = await client.get("/openapi.yaml")
    assert response.status == 200
    assert response.content_type == "application/yaml"
    assert await response.read() == SPEC_PATH.read_bytes()


async def test_unknown_route_and_wrong_method_answer_in_the_error_shape(aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_app(_settings(), keys=TEST_KEYS))
    missing = await client.get("/v1/nothing-here", headers=bearer(ADMIN_KEY))
    assert missing.status == 404
    body = await missing.json()
    assert body["error"]["code"] == "NOT_FOUND"
    assert body["error"]["requestId"] == missing.headers["X-Request-ID"]
    assert body["error"]["upstream"] is None
    assert set(body["error"]) == {"code", "message", "retryable", "upstream", "requestId"}

    wrong = await client.post("/healthz")
    assert wrong.status == 405
    assert (await wrong.json())["error"]["code"] == "METHOD_NOT_ALLOWED"
    assert "GET" in wrong.headers["Allow"]


async def test_an_unexpected_exception_becomes_a_500_envelope_without_internals(aiohttp_client: Any) -> None:
    app = create_app(_settings())

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("secret internal detail")

    app.router.add_get("/broken", broken)
    client = await aiohttp_client(app)
    response = await client.get("/broken")
    assert response.status == 500
    text = await response.text()
    assert "secret internal detail" not in text
    assert (await response.json())["error"]["code"] == "INTERNAL_ERROR"


def _app_routes(app: web.Application) -> set[tuple[str, str]]:
    routes = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if path and route.method != "HEAD":
            routes.add((route.method.lower(), path))
    return routes


def test_openapi_describes_exactly_the_routes() -> None:
    spec = _spec()
    documented = {(method, path) for path, ops in spec["paths"].items() for method in ops if method in METHODS}
    assert _app_routes(create_app(_settings())) == documented


def test_openapi_error_codes_include_every_code_the_http_layer_uses() -> None:
    from service.web import errors

    enum = set(_spec()["components"]["schemas"]["Error"]["properties"]["code"]["enum"])
    assert set(errors.HTTP_CODES.values()) | {"HTTP_ERROR", "INTERNAL_ERROR"} <= enum
