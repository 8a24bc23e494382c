"""One consistent surface: 405 for a wrong method on every route, no ``Server`` header, validation messages in our own
words naming the field and the rule, lookup errors naming their value, the key's name in the request log, and
validate's outcome (redeemed, partially_redeemed, refused) counted per code."""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from service.sandbox import DEMO
from tests.conftest import GatewayClient, LogCapture

ALICE = {"mobile": DEMO.customer("alice").mobile}
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
#: A value for each path parameter, so every route can be asked for.
PARAMETERS = {"ref": f"rdm_{'0' * 32}", "seriesId": "10001", "jobId": "upl_000000000000000000000000"}
#: What a library's own wording looks like: none of it may reach a client.
LIBRARY_TEXT = re.compile(r"Expected `|Object missing|Object contains|Invalid enum|- at `\$|got `")


def _routes(app: web.Application) -> dict[str, set[str]]:
    """Path (parameters filled in) -> the methods it answers."""
    routes: dict[str, set[str]] = {}
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        template = info.get("path") or info.get("formatter")
        if template and route.method != "HEAD":
            path = re.sub(r"\{(\w+)\}", lambda m: PARAMETERS[m[1]], template)
            routes.setdefault(path, set()).add(route.method)
    return routes


async def test_a_wrong_method_is_405_on_every_route(gateway: GatewayClient) -> None:
    routes = _routes(gateway.app)
    assert len(routes) >= 15
    asked = 0
    for path, allowed in routes.items():
        for method in set(METHODS) - allowed:
            response = await gateway.request(method, path)
            assert response.status == 405, (method, path, response.status, await response.text())
            body = await response.json()
            assert body["error"]["code"] == "METHOD_NOT_ALLOWED", (method, path)
            assert set(response.headers["Allow"].split(",")) == allowed, (method, path)
            asked += 1
    assert asked >= 50


async def test_validate_and_the_redemption_lookup_are_not_confused(gateway: GatewayClient) -> None:
    """``GET /v1/redemptions/validate`` used to look up a redemption called "validate"."""
    response = await gateway.get("/v1/redemptions/validate")
    assert (response.status, response.headers["Allow"]) == (405, "POST")
    assert (await gateway.get("/v1/redemptions")).status == 405
    missing = await gateway.get("/v1/redemptions/validated")  # a ref that only looks like it
    assert (missing.status, (await missing.json())["error"]["code"]) == (404, "REDEMPTION_NOT_FOUND")


async def test_no_server_header_at_all(gateway: GatewayClient) -> None:
    for response in [
        await gateway.get("/healthz"),
        await gateway.get("/readyz"),
        await gateway.get("/metrics"),
        await gateway.get("/nothing-here"),
        await gateway.put("/healthz"),
        await gateway.get("/v1/series/10003"),
        await gateway.post("/v1/redemptions/validate", data=b"{"),
    ]:
        assert "Server" not in response.headers, (response.url, response.headers["Server"])


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v1/redemptions/validate", {}, "customer: is required"),
        ("/v1/redemptions/validate", [], "body: must be a JSON object, got a list"),
        (
            "/v1/redemptions/validate",
            {"customer": ALICE, "billAmount": "10"},
            "codes: is required",
        ),
        (
            "/v1/redemptions/validate",
            {"customer": {"phone": "1"}, "codes": ["A"], "billAmount": "10"},
            "customer: unknown field 'phone' (the fields here: mobile, email, externalId, id)",
        ),
        (
            "/v1/redemptions/validate",
            {"customer": {"id": "x"}, "codes": ["A"], "billAmount": "10"},
            "customer.id: must be a whole number or null, got a string",
        ),
        (
            "/v1/redemptions/validate",
            {"customer": ALICE, "codes": [7], "billAmount": "10"},
            "codes[0]: must be a string, got a whole number",
        ),
        (
            "/v1/redemptions/validate",
            {"customer": ALICE, "codes": ["A"], "billAmount": "ten"},
            'billAmount: must be an amount (a string such as "12.50", or a number)',
        ),
        (
            "/v1/redemptions",
            {"customer": ALICE, "codes": ["A"], "billAmount": "10", "transactionNumber": "T", "mode": "some"},
            "mode: must be one of 'all', 'partial', got 'some'",
        ),
        (
            "/v1/redemptions",
            {"customer": ALICE, "codes": ["A"], "billAmount": "10", "transactionNumber": ""},
            "transactionNumber: must have at least 1 character",
        ),
        ("/v1/coupons/issue", {"seriesId": "1", "customer": ALICE}, "seriesId: must be a whole number, got a string"),
        ("/v1/coupons/issue", {"seriesId": 0, "customer": ALICE}, "seriesId: must be 1 or more"),
        ("/v1/coupons/issue/bulk", {"seriesIds": [], "customer": ALICE}, "seriesIds: must have at least 1 item"),
        (
            "/v1/coupons/issue/bulk",
            {"seriesIds": [1], "customer": ALICE, "source": "in store"},
            "source: must match the pattern ^[A-Za-z0-9_]+$",
        ),
        (
            "/v1/series",
            {"description": "d", "discountType": "FREE", "discountValue": 1},
            "discountType: must be one of 'ABS', 'PERC', got 'FREE'",
        ),
    ],
)
async def test_validation_messages_name_the_field_and_the_rule(
    gateway: GatewayClient, path: str, body: Any, message: str
) -> None:
    response = await gateway.post(path, json=body)
    assert response.status == 400
    error = (await response.json())["error"]
    assert (error["code"], error["message"]) == ("INVALID_REQUEST", message)
    assert not LIBRARY_TEXT.search(error["message"])


async def test_each_lookup_error_names_its_value(gateway: GatewayClient) -> None:
    query = [("codes", "ABS-ALICE-1"), ("codes", "NOPE-1"), ("codes", "NOPE-2"), ("ids", "987654321")]
    response = await gateway.get("/v1/coupons", params=query)
    assert response.status == 200
    found = await response.json()
    assert [c["code"] for c in found["coupons"]] == ["ABS-ALICE-1"]
    named = [(e["code"], e.get("couponCode"), e.get("couponId")) for e in found["errors"]]
    assert named == [
        ("COUPON_NOT_FOUND", "NOPE-1", None),
        ("COUPON_NOT_FOUND", "NOPE-2", None),
        ("COUPON_NOT_FOUND", None, 987654321),
    ]
    alone = await gateway.get("/v1/coupons", params={"codes": "NOPE-3"})
    assert alone.status == 404
    assert "NOPE-3" in (await alone.json())["error"]["message"]


async def test_the_request_log_names_the_key_never_the_secret(
    gateway: GatewayClient, captured_logs: LogCapture
) -> None:
    await gateway.get("/v1/series/10003", headers={"X-Request-ID": "key-name-1"})
    (line,) = [x for x in captured_logs.lines() if x.get("request_id") == "key-name-1" and x["event"] == "request"]
    assert line["key_name"] == "admin-s001"
    assert "api_key" not in line
    assert "[redacted]" not in str(line)


async def _samples(gateway: GatewayClient, name: str) -> dict[tuple[str, str], float]:
    text = await (await gateway.get("/metrics")).text()
    return {
        (s.labels.get("outcome") or s.labels["result"], s.labels["error_code"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


async def test_validate_outcomes_are_counted_per_code(gateway: GatewayClient, captured_logs: LogCapture) -> None:
    async def validate(request_id: str, *codes: str) -> None:
        body = {"customer": ALICE, "codes": list(codes), "billAmount": "2000.00"}
        response = await gateway.post("/v1/redemptions/validate", json=body, headers={"X-Request-ID": request_id})
        assert response.status == 200

    await validate("all", "ABS-ALICE-1", "PERC-ALICE-1")
    await validate("mixed", "ABS-ALICE-1", "CAP-ALICE-1", "ABS-ALICE-USED")
    await validate("none", "ABS-ALICE-USED")
    lines = {x["request_id"]: x for x in captured_logs.lines() if x["event"] == "request"}
    assert [lines[r]["outcome"] for r in ("all", "mixed", "none")] == ["redeemed", "partially_redeemed", "refused"]
    assert lines["mixed"]["error_code"] == "COUPON_ALREADY_REDEEMED"
    requests = await _samples(gateway, "pos_coupon_validations_total")
    assert requests[("redeemed", "none")] == 1
    assert requests[("partially_redeemed", "COUPON_ALREADY_REDEEMED")] == 1
    assert requests[("refused", "COUPON_ALREADY_REDEEMED")] == 1
    coupons = await _samples(gateway, "pos_coupon_validated_coupons_total")
    assert coupons[("redeemable", "none")] == 4
    assert coupons[("refused", "COUPON_ALREADY_REDEEMED")] == 2
