"""The gate in front of ``/v1/``: API keys and scopes, store binding, rate limits, body limits, bulkheads,
security headers, and key-file reloads, over real HTTP with the sandbox as the upstream."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from service.access.keys import KeyRing, key_entry
from service.app import create_app
from service.config import AccessSettings, Settings
from service.sandbox import DEMO, Fault, FaultKind
from tests.conftest import (
    ADMIN_KEY,
    OTHER_STORE_KEY,
    TEST_ACCESS,
    TEST_KEYS,
    TILL_KEY,
    GatewayClient,
    StartGateway,
    Upstream,
    bearer,
)

ALICE = {"mobile": DEMO.customer("alice").mobile}
OPS_ROUTES = ("/healthz", "/readyz", "/metrics", "/openapi.yaml")


def _redeem_body(*codes: str, txn: str = "T-ACCESS-1") -> dict[str, Any]:
    return {"customer": ALICE, "codes": list(codes), "billAmount": "2000.00", "transactionNumber": txn}


async def _error(response: Any) -> dict[str, Any]:
    body = await response.json()
    error: dict[str, Any] = body["error"]
    return error


async def test_every_v1_route_needs_a_bearer_key(start_gateway: StartGateway, upstream: Upstream) -> None:
    client = await start_gateway(upstream, key=None)
    for headers, message in [
        ({}, "Send a valid API key"),
        (bearer("not-a-key"), "not known"),
        ({"Authorization": f"Basic {ADMIN_KEY}"}, "Bearer scheme"),
        ({"Authorization": "Bearer "}, "Bearer scheme"),
    ]:
        response = await client.post("/v1/redemptions/validate", json=_redeem_body("ABS-ALICE-1"), headers=headers)
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        error = await _error(response)
        assert error["code"] == "UNAUTHENTICATED"
        assert message in error["message"]
    raw = await client.post(  # a key that is not even UTF-8 is just another unknown key
        "/v1/redemptions/validate", json=_redeem_body("ABS-ALICE-1"), headers={"Authorization": "Bearer \udcff\udcfe"}
    )
    assert raw.status == 401
    # an unknown /v1/ path tells nothing without a key
    assert (await client.get("/v1/no-such-route")).status == 401
    assert upstream.sandbox.call_count() == 0  # nothing reached Capillary
    for path in OPS_ROUTES:
        assert (await client.get(path)).status == 200, path


async def test_a_till_key_may_only_use_the_pos_routes(aiohttp_client: Any, upstream: Upstream) -> None:
    app = create_app(Settings(capillary=upstream.settings(), access=TEST_ACCESS), keys=TEST_KEYS)

    async def back_office(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.router.add_get("/v1/back-office-probe", back_office)  # any /v1/ route outside the POS set is admin-only
    client = await aiohttp_client(app)
    routes = {
        (r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None and r.resource.canonical.startswith("/v1/") and r.method != "HEAD"
    }
    assert ("GET", "/v1/back-office-probe") in routes
    from service.web.access import POS_ROUTES

    assert routes >= POS_ROUTES, "every POS route exists"
    for method, path in sorted(routes):
        url = re.sub(r"\{[^}]+\}", "1", path)
        response = await client.request(method, url, headers=bearer(TILL_KEY))
        if (method, path) in POS_ROUTES:
            assert response.status not in (401, 403), (method, path)
        else:
            assert response.status == 403, (method, path)
            assert (await _error(response))["code"] == "FORBIDDEN"
    assert (await client.get("/v1/back-office-probe", headers=bearer(ADMIN_KEY))).status == 200


async def test_a_redemption_is_made_for_the_keys_store_and_attributed_upstream(
    start_gateway: StartGateway, upstream: Upstream
) -> None:
    """S002-ALICE-1 is redeemable only at store S002: the store comes from the key, reaches the sandbox in the
    attribution headers, and a body cannot name another store."""
    client = await start_gateway(upstream, key=None)
    s001, s002, admin = bearer(TILL_KEY), bearer(OTHER_STORE_KEY), bearer(ADMIN_KEY)
    refused = await client.post("/v1/redemptions", json=_redeem_body("S002-ALICE-1", txn="T-S001"), headers=s001)
    assert refused.status == 422
    assert (await refused.json())["coupons"][0]["error"]["code"] == "STORE_NOT_ALLOWED"

    claim = {**_redeem_body("S002-ALICE-1", txn="T-S001"), "store": "S002"}
    claimed = await client.post("/v1/redemptions", json=claim, headers=s001)
    assert claimed.status == 400
    assert "store" in (await _error(claimed))["message"]

    done = await client.post("/v1/redemptions", json=_redeem_body("S002-ALICE-1", txn="T-S002"), headers=s002)
    assert done.status == 200, await done.text()
    ref = (await done.json())["ref"]
    (redemption,) = upstream.sandbox.redemptions_of("S002-ALICE-1")
    assert redemption.store == "S002"

    # another store's till can neither see nor reverse it; the back office (admin) may look, not reverse
    assert (await client.get(f"/v1/redemptions/{ref}", headers=s001)).status == 404
    assert (await client.post(f"/v1/redemptions/{ref}/reversal", headers=s001)).status == 404
    assert (await client.get(f"/v1/redemptions/{ref}", headers=admin)).status == 200
    assert (await client.post(f"/v1/redemptions/{ref}/reversal", headers=admin)).status == 404
    assert upstream.sandbox.redemptions_of("S002-ALICE-1", include_reversed=False)
    reversed_ = await client.post(f"/v1/redemptions/{ref}/reversal", headers=s002)
    assert reversed_.status == 200
    assert not upstream.sandbox.redemptions_of("S002-ALICE-1", include_reversed=False)


async def test_idempotency_keys_of_two_stores_never_meet(start_gateway: StartGateway, upstream: Upstream) -> None:
    client = await start_gateway(upstream, key=None)
    same_key = {"Idempotency-Key": "till-1-receipt-1"}
    first = await client.post(
        "/v1/redemptions", json=_redeem_body("ABS-ALICE-1", txn="T-A"), headers={**same_key, **bearer(TILL_KEY)}
    )
    other = await client.post(
        "/v1/redemptions",
        json=_redeem_body("S002-ALICE-1", txn="T-B"),
        headers={**same_key, **bearer(OTHER_STORE_KEY)},
    )
    assert first.status == 200
    assert other.status == 200  # not IDEMPOTENCY_KEY_REUSED, and not S001's answer replayed
    assert "Idempotent-Replayed" not in other.headers
    assert (await other.json())["coupons"][0]["code"] == "S002-ALICE-1"


async def test_a_key_over_its_rate_gets_429_with_retry_after(start_gateway: StartGateway, upstream: Upstream) -> None:
    access = AccessSettings(rate_per_second=0.5, rate_burst=2)
    client = await start_gateway(upstream, access=access)
    statuses = [(await client.get("/v1/series/10003")).status for _ in range(3)]
    assert statuses == [200, 200, 429]
    limited = await client.get("/v1/series/10003")
    assert limited.status == 429
    assert int(limited.headers["Retry-After"]) >= 1
    error = await _error(limited)
    assert (error["code"], error["retryable"]) == ("RATE_LIMITED", True)
    # the bucket is the key's own: another key still passes
    assert (await client.get("/v1/series/10003", headers=bearer(TILL_KEY))).status == 200
    metrics = await (await client.get("/metrics")).text()
    assert 'pos_coupon_access_refused_total{reason="rate_limited"} 2.0' in metrics


async def test_a_key_may_carry_its_own_rate(aiohttp_client: Any, upstream: Upstream, tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    entry = key_entry("checkout-key", name="checkout", store="S001", scopes=["redeem"])
    path.write_text(json.dumps([{**entry, "ratePerSecond": 0.5, "burst": 1}]))
    settings = Settings(capillary=upstream.settings(), access=AccessSettings(keys_file=str(path)))
    client = await aiohttp_client(create_app(settings))
    statuses = [(await client.get("/v1/series/10003", headers=bearer("checkout-key"))).status for _ in range(2)]
    assert statuses == [200, 429]


async def test_a_body_over_the_limit_gets_413_before_it_is_read(
    start_gateway: StartGateway, upstream: Upstream
) -> None:
    client = await start_gateway(upstream, access=AccessSettings(max_body_bytes=1024, rate_per_second=1000))
    body = json.dumps({**_redeem_body("ABS-ALICE-1"), "padding": "x" * 2000}).encode()
    declared = await client.post("/v1/redemptions", data=body, headers={"Content-Type": "application/json"})
    assert declared.status == 413
    said = await _error(declared)
    assert said["code"] == "PAYLOAD_TOO_LARGE"
    assert said["message"].startswith("body: at most 1024 bytes, got ")

    async def chunks() -> Any:  # no Content-Length: the read itself stops at the limit
        for _ in range(4):
            yield b" " * 600

    chunked = await client.post("/v1/redemptions", data=chunks(), headers={"Content-Type": "application/json"})
    assert chunked.status == 413
    assert (await _error(chunked))["message"].startswith("body: at most 1024 bytes")  # one wording for both
    assert upstream.sandbox.call_count() == 0


async def test_a_full_bulkhead_sheds_with_503_instead_of_queueing(
    start_gateway: StartGateway, upstream: Upstream
) -> None:
    client = await start_gateway(
        upstream, access=AccessSettings(max_inflight_pos=1, rate_per_second=1000, rate_burst=1000)
    )
    upstream.sandbox.add_fault(Fault(FaultKind.LATENCY, "is_redeemable", delay_seconds=0.5))
    body = {"customer": ALICE, "codes": ["ABS-ALICE-1"], "billAmount": "2000.00"}
    slow = asyncio.ensure_future(client.post("/v1/redemptions/validate", json=body))
    for _ in range(500):  # until the first request is in flight upstream
        if upstream.sandbox.call_count("is_redeemable"):
            break
        await asyncio.sleep(0.01)
    shed = await client.post("/v1/redemptions/validate", json=body)
    assert shed.status == 503
    assert shed.headers["Retry-After"] == "1"
    error = await _error(shed)
    assert (error["code"], error["retryable"]) == ("OVERLOADED", True)
    assert (await slow).status == 200
    assert (await client.post("/v1/redemptions/validate", json=body)).status == 200  # the slot is free again


async def test_security_headers_on_every_response(gateway: GatewayClient) -> None:
    for response in [
        await gateway.get("/healthz"),
        await gateway.get("/v1/redemptions/rdm_nope"),
        await gateway.post("/v1/redemptions", data=b"{"),
    ]:
        headers = response.headers
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Frame-Options"] == "DENY"
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        assert "Server" not in headers  # no server software or version, ours or aiohttp's
    assert (await gateway.get("/v1/series/10003")).headers["Cache-Control"] == "no-store"


async def test_the_key_file_is_reloaded_when_it_changes(
    aiohttp_client: Any, upstream: Upstream, tmp_path: Path
) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps([key_entry("old-key", name="old", store="S001", scopes=["redeem"])]))
    access = AccessSettings(keys_file=str(path), keys_reload_interval=0.05)
    client = await aiohttp_client(create_app(Settings(capillary=upstream.settings(), access=access)))
    assert (await client.get("/v1/series/10003", headers=bearer("old-key"))).status == 200

    path.write_text(json.dumps([key_entry("new-key", name="new", store="S001", scopes=["redeem"])]))
    for _ in range(200):
        if (await client.get("/v1/series/10003", headers=bearer("new-key"))).status == 200:
            break
        await asyncio.sleep(0.05)
    assert (await client.get("/v1/series/10003", headers=bearer("new-key"))).status == 200
    assert (await client.get("/v1/series/10003", headers=bearer("old-key"))).status == 401

    path.write_text("[{not json")  # a broken file keeps the keys in force
    await asyncio.sleep(0.3)
    assert (await client.get("/v1/series/10003", headers=bearer("new-key"))).status == 200


def test_a_key_file_with_plain_keys_or_duplicates_is_refused(tmp_path: Path) -> None:
    from service.access.keys import KeyFileError

    path = tmp_path / "keys.json"
    good = key_entry("k1", name="a", store="S001", scopes=["redeem"])
    for entries, problem in [
        ([{**good, "keySha256": "k1"}], "64 hex digits"),
        ([good, {**good, "name": "b"}], "listed twice"),
        ([good, key_entry("k2", name="a", store="S001", scopes=["redeem"])], "used twice"),
        ([{**good, "scopes": ["everything"]}], "scopes"),
        ([{**good, "scopes": []}], "scopes"),
        ([{**good, "stores": "S002"}], "stores"),
        ([{**good, "store": "S0:01"}], "store"),
    ]:
        path.write_text(json.dumps(entries))
        with pytest.raises(KeyFileError, match=problem):
            KeyRing.load(str(path))
    path.write_text(json.dumps([good]))
    ring = KeyRing.load(str(path))
    key = ring.find("k1")
    assert key is not None
    assert (key.store, key.allows("redeem"), key.allows("admin")) == ("S001", True, False)
    assert ring.find("k2") is None
    assert ring.find("") is None
    assert "k1" not in path.read_text()  # only the hash is at rest
