"""The gateway against an upstream that answers only in the shapes Capillary's documents show.

The bodies are the documents' own samples (vendored in tests/fixtures/capillary-docs), changed only where a
scenario needs it (a refusal's code, a warning): never the sandbox's shapes. A redeem refused in the documented
shape is never answered as redeemed; a success that carries a warning is redeemed, with its redemption id.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from tests.api.spec import assert_matches
from tests.conftest import GatewayClient, StartGateway, Upstream
from tests.contract.samples import load_samples

VALIDATE, REDEEM = "/v1/redemptions/validate", "/v1/redemptions"
CUSTOMER = {"mobile": "919999000000"}


def _sample(heading: str) -> dict[str, Any]:
    found = next(s for s in load_samples() if s.heading == heading and s.role == "response")
    payload: dict[str, Any] = found.payload
    return payload


REDEEM_DOC = _sample("Redeem Coupons")  # items without their own status; the outcome at the top
BULK_DOC = _sample("Redeem Customer Coupons (Bulk)")
CHECK_DOC = _sample("Check if Coupon is Redeemable")
SERIES_DOC = _sample("Get Coupon Series Details")


def single_answer(code: str, *, status: bool = True, result: int = 700, warning: int | None = None) -> dict[str, Any]:
    body = copy.deepcopy(REDEEM_DOC)
    item = body["redemption"][0]
    item["code"] = code
    if warning is not None:
        item["warnings"] = [{"status": False, "code": warning, "message": "Error sending coupon"}]
    if not status:
        item["id"] = -1
    body["redemptionStatus"] = {"status": status, "code": result, "message": f"status {result}"}
    return body


def bulk_answer(codes: list[str], refusals: dict[str, int]) -> dict[str, Any]:
    """The bulk sample's entry shape, once per code; refused codes carry ``errors`` (749 for their siblings)."""
    template = BULK_DOC["response"][0]
    entries = []
    for position, code in enumerate(codes):
        entry = copy.deepcopy(template)
        entry["result"]["code"] = code
        entry["result"]["id"] = entry["entityId"] = 369454015 + position
        if refusals:
            failed = refusals.get(code, 749)
            entry["result"]["id"] = entry["entityId"] = -1
            entry["result"]["redemptionStatus"]["statusCode"] = {"status": False, "message": "refused", "code": failed}
            entry["result"]["redemptionStatus"].update(code=failed, success=False, message="refused")
            entry["errors"] = [{"status": False, "code": failed, "message": "refused"}]
        entries.append(entry)
    return {"response": entries, "totalCount": len(codes), "failureCount": len(codes) if refusals else 0}


@dataclass
class DocUpstream:
    """Capillary as its documents show it. ``redeem``/``bulk``: (HTTP status, body) of the next redeem calls."""

    redeem: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    bulk: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v3/oauth/token/generate", self.token)
        app.router.add_get("/v2/coupon/is_redeemable", self.check)
        app.router.add_post("/v2/coupon/redeem", self.single)
        app.router.add_post("/v2/coupon/bulk/redeem", self.many)
        app.router.add_get("/v2/coupon/series", self.series)
        app.router.add_get("/v2/coupon", self.details)
        return app

    def count(self, name: str) -> int:
        return self.calls.count(name)

    async def token(self, request: web.Request) -> web.Response:
        return web.json_response({"data": {"accessToken": "doc-token", "ttlSeconds": 300}, "errors": None})

    async def check(self, request: web.Request) -> web.Response:
        self.calls.append("is_redeemable")
        body = copy.deepcopy(CHECK_DOC)
        template = body["redemption"][0]
        body["redemption"] = [{**template, "code": c} for c in request.query["code"].split(",")]
        return web.json_response(body)

    async def single(self, request: web.Request) -> web.Response:
        self.calls.append("redeem")
        status, body = self.redeem.pop(0)
        return web.json_response(body, status=status)

    async def many(self, request: web.Request) -> web.Response:
        self.calls.append("bulk_redeem")
        status, body = self.bulk.pop(0)
        return web.json_response(body, status=status)

    async def series(self, request: web.Request) -> web.Response:
        self.calls.append("series_get")
        body = copy.deepcopy(SERIES_DOC)
        entity = body["entity"][0]
        body["entity"] = [{**entity, "id": int(i), "discountUpto": 150} for i in request.query.getall("ids")]
        return web.json_response(body)

    async def details(self, request: web.Request) -> web.Response:
        self.calls.append("coupon_details")
        return web.json_response({"data": [], "warnings": [], "errors": []})


@pytest.fixture
async def doc(
    start_gateway: StartGateway, upstream: Upstream, aiohttp_server: Any
) -> tuple[GatewayClient, DocUpstream]:
    fake = DocUpstream()
    server = await aiohttp_server(fake.app())
    gateway = await start_gateway(Upstream(upstream.sandbox, str(server.make_url("")).rstrip("/")))
    return gateway, fake


async def _redeem(gateway: GatewayClient, codes: list[str], status: int, **extra: Any) -> dict[str, Any]:
    body = {"customer": CUSTOMER, "codes": codes, "billAmount": "2000", "transactionNumber": "T-9", **extra}
    response = await gateway.post(REDEEM, json=body)
    payload: dict[str, Any] = await response.json()
    assert response.status == status, payload
    assert_matches(REDEEM, "post", status, payload)
    return payload


@pytest.mark.parametrize("http_status", [400, 200])
@pytest.mark.parametrize(("code", "local"), [(711, "COUPON_ALREADY_REDEEMED"), (713, "COUPON_EXPIRED")])
async def test_a_single_refusal_in_the_documented_shape_is_never_redeemed(
    doc: tuple[GatewayClient, DocUpstream], http_status: int, code: int, local: str
) -> None:
    gateway, fake = doc
    fake.redeem.append((http_status, single_answer("JL07UAZ3", status=False, result=code)))
    payload = await _redeem(gateway, ["JL07UAZ3"], 409 if code == 711 else 422)
    assert payload["status"] == "rejected"
    [coupon] = payload["coupons"]
    assert coupon["redeemed"] is False
    assert coupon["redemptionId"] is None
    assert (coupon["error"]["code"], coupon["error"]["upstream"]["code"]) == (local, code)


@pytest.mark.parametrize("http_status", [400, 200, 500])
async def test_a_bulk_refusal_in_the_documented_shape_is_never_redeemed(
    doc: tuple[GatewayClient, DocUpstream], http_status: int
) -> None:
    """Whatever the HTTP status, a 500 included: the body names the refusals, so nothing is pending."""
    gateway, fake = doc
    codes = ["U6ER8MJ5", "U6ER8MH9"]
    fake.bulk.append((http_status, bulk_answer(codes, {"U6ER8MH9": 711})))
    payload = await _redeem(gateway, codes, 409)
    assert payload["status"] == "rejected"
    assert {c["code"]: (c["redeemed"], c["error"]["code"]) for c in payload["coupons"]} == {
        "U6ER8MJ5": (False, "SIBLING_COUPON_FAILED"),
        "U6ER8MH9": (False, "COUPON_ALREADY_REDEEMED"),
    }


async def test_partial_mode_resends_after_a_500_that_names_the_refusal(doc: tuple[GatewayClient, DocUpstream]) -> None:
    gateway, fake = doc
    codes = ["U6ER8MJ5", "U6ER8MH9"]
    fake.bulk.append((500, bulk_answer(codes, {"U6ER8MH9": 711})))
    fake.redeem.append((200, single_answer("U6ER8MJ5")))
    payload = await _redeem(gateway, codes, 200, mode="partial")
    assert payload["status"] == "partially_redeemed"
    assert (fake.count("bulk_redeem"), fake.count("redeem")) == (1, 1)
    assert {c["code"]: c["redeemed"] for c in payload["coupons"]} == {"U6ER8MJ5": True, "U6ER8MH9": False}


@pytest.mark.parametrize("warning", [704, 724])
async def test_a_success_with_a_notification_warning_is_redeemed(
    doc: tuple[GatewayClient, DocUpstream], warning: int
) -> None:
    gateway, fake = doc
    fake.redeem.append((200, single_answer("JL07UAZ3", warning=warning)))
    payload = await _redeem(gateway, ["JL07UAZ3"], 200)
    assert payload["status"] == "redeemed"
    [coupon] = payload["coupons"]
    assert (coupon["redeemed"], coupon["redemptionId"], coupon["error"]) == (True, 33138363, None)
    metrics = await (await gateway.get("/metrics")).text()
    assert f'pos_coupon_upstream_warnings_total{{code="{warning}"}} 1.0' in metrics  # counted, never a refusal


async def test_a_top_level_warning_code_is_a_success_too(doc: tuple[GatewayClient, DocUpstream]) -> None:
    gateway, fake = doc
    fake.redeem.append((200, single_answer("JL07UAZ3", result=724)))
    payload = await _redeem(gateway, ["JL07UAZ3"], 200)
    assert payload["coupons"][0]["redemptionId"] == 33138363


async def test_the_documented_answer_gives_series_and_discount_in_two_calls(
    doc: tuple[GatewayClient, DocUpstream],
) -> None:
    """The sample: seriesCode 14162, a 10 % coupon (isAbsolute false, couponValue 10.0). On a bill of 2000 that is
    200, capped by the series' discountUpto (150 here), learnt once and then cached."""
    gateway, fake = doc
    fake.redeem.extend([(200, single_answer("JL07UAZ3")), (200, single_answer("JL07UAZ4"))])
    first = await _redeem(gateway, ["JL07UAZ3"], 200)
    assert first["coupons"][0]["seriesId"] == 14162
    assert first["coupons"][0]["discount"] == {"type": "PERC", "value": "10", "amount": "150.00"}
    assert first["totalDiscount"] == "150.00"
    assert fake.calls == ["is_redeemable", "redeem", "series_get"]
    fake.calls.clear()
    second = await _redeem(gateway, ["JL07UAZ4"], 200, transactionNumber="T-10")
    assert second["totalDiscount"] == "150.00"
    assert fake.calls == ["is_redeemable", "redeem"]  # the series summary is cached: two calls a redeem


async def test_a_500_that_says_nothing_leaves_the_outcome_unknown(doc: tuple[GatewayClient, DocUpstream]) -> None:
    gateway, fake = doc
    fake.redeem.append((500, {"message": "Internal Server Error"}))
    payload = await _redeem(gateway, ["JL07UAZ3"], 202)
    assert payload["status"] == "pending"
