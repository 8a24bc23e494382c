"""The upload host documents OAuth only. Under ``CAPILLARY_AUTH=basic`` the gateway uses OAuth there when client
credentials are given (the sandbox refuses Basic on that host, as the documents say), and without them answers the
upload routes with a clear 503 naming the settings, sending nothing."""

from __future__ import annotations

import dataclasses
from typing import Any

from aiohttp.test_utils import TestClient

from service.app import create_app
from service.config import Settings
from tests.backoffice.conftest import ABS, BOB, coupon_uploads, post_csv
from tests.conftest import ADMIN_KEY, TEST_ACCESS, TEST_KEYS, Upstream, bearer


async def _gateway(aiohttp_client: Any, upstream: Upstream, **capillary: str) -> TestClient[Any, Any]:
    settings = dataclasses.replace(upstream.settings("basic"), **capillary)
    app = create_app(Settings(capillary=settings, access=TEST_ACCESS), keys=TEST_KEYS)
    client: TestClient[Any, Any] = await aiohttp_client(app, headers=bearer(ADMIN_KEY))
    return client


async def test_basic_auth_uploads_with_oauth_when_client_credentials_are_given(
    aiohttp_client: Any, upstream: Upstream
) -> None:
    gateway = await _gateway(aiohttp_client, upstream)
    status, accepted = await post_csv(
        gateway, coupon_uploads(ABS), f"mobile,code\n{BOB.mobile},BASIC-1\n", identifierType="MOBILE"
    )
    assert status == 202, accepted
    assert upstream.sandbox.call_count("upload_coupons") == 1
    assert upstream.sandbox.call_count("token") >= 1  # the upload went with a token, not the till's Basic header


async def test_basic_auth_without_client_credentials_refuses_uploads_naming_the_settings(
    aiohttp_client: Any, upstream: Upstream
) -> None:
    gateway = await _gateway(aiohttp_client, upstream, client_key="", client_secret="")
    status, refused = await post_csv(
        gateway, coupon_uploads(ABS), f"mobile,code\n{BOB.mobile},BASIC-2\n", identifierType="MOBILE"
    )
    assert status == 503
    assert refused["error"]["code"] == "UPSTREAM_UNAVAILABLE"
    assert "CAPILLARY_CLIENT_KEY" in refused["error"]["message"]
    jobs = await gateway.get(coupon_uploads(ABS))
    assert jobs.status == 503
    assert "CAPILLARY_CLIENT_SECRET" in (await jobs.json())["error"]["message"]
    assert upstream.sandbox.call_count("upload_coupons") + upstream.sandbox.call_count("upload_status") == 0
    validate = await gateway.post(
        "/v1/redemptions/validate",
        json={"customer": {"mobile": BOB.mobile}, "codes": ["ABS-BOB-1"], "billAmount": "500"},
    )
    assert validate.status == 200  # the POS routes go on with Basic
