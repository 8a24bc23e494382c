"""A JSON object that gives a key twice is refused with 400 naming the key, in every body the gateway decodes (the
POS routes and the back office), before anything reaches Capillary; msgspec alone would silently keep the last."""

from __future__ import annotations

import pytest

from service.sandbox import DEMO
from tests.api.spec import assert_matches
from tests.backoffice.conftest import form
from tests.conftest import GatewayClient, Upstream

MOBILE = DEMO.customer("alice").mobile
ABS = DEMO.series_of("abs").id
CUSTOMER = f'{{"mobile": "{MOBILE}"}}'
REDEEM_TAIL = '"codes": ["ABS-ALICE-1"], "transactionNumber": "T-DUP-1"'

POS = {
    "top level": (
        "/v1/redemptions/validate",
        f'{{"customer": {CUSTOMER}, "codes": ["ABS-ALICE-1"], "billAmount": "10.00", "billAmount": "9000.00"}}',
        "billAmount",
    ),
    "nested": (
        "/v1/redemptions/validate",
        f'{{"customer": {{"mobile": "{MOBILE}", "mobile": "919900000009"}}, "codes": ["X"], "billAmount": 10}}',
        "customer.mobile",
    ),
    "escaped": (
        "/v1/redemptions",
        f'{{"customer": {CUSTOMER}, {REDEEM_TAIL}, "billAmount": 10, "bill\\u0041mount": 9000}}',
        "billAmount",
    ),
    "whole object twice": (
        "/v1/redemptions",
        f'{{"customer": {CUSTOMER}, "customer": {{"id": 1}}, {REDEEM_TAIL}, "billAmount": 10}}',
        "customer",
    ),
}


@pytest.mark.parametrize(("path", "body", "key"), POS.values(), ids=POS.keys())
async def test_pos_bodies_with_a_repeated_key_are_refused(
    gateway: GatewayClient, upstream: Upstream, path: str, body: str, key: str
) -> None:
    response = await gateway.post(path, data=body, headers={"Content-Type": "application/json"})
    answer = await response.json()
    assert response.status == 400, answer
    assert_matches(path, "post", 400, answer)
    assert answer["error"]["code"] == "INVALID_REQUEST"
    assert answer["error"]["message"] == f"{key}: given twice in one object (a JSON key may appear once)"
    assert upstream.sandbox.call_count() == 0


async def test_the_same_key_in_two_objects_is_no_duplicate(gateway: GatewayClient) -> None:
    body = f'{{"customer": {CUSTOMER}, "codes": ["mobile", "ABS-ALICE-1"], "billAmount": "2000.00"}}'
    response = await gateway.post("/v1/redemptions/validate", data=body, headers={"Content-Type": "application/json"})
    assert response.status == 200, await response.text()


BACK_OFFICE = {
    "issue": ("/v1/coupons/issue", f'{{"seriesId": {ABS}, "seriesId": 1, "customer": {CUSTOMER}}}', "seriesId"),
    "bulk issue": (
        "/v1/coupons/issue/bulk",
        f'{{"seriesIds": [{ABS}], "customer": {{"email": "a@b.co", "email": "c@d.co"}}}}',
        "customer.email",
    ),
    "series": (
        "/v1/series",
        '{"description": "x", "discountType": "ABS", "discountValue": 5, "discountValue": 500}',
        "discountValue",
    ),
}


@pytest.mark.parametrize(("path", "body", "key"), BACK_OFFICE.values(), ids=BACK_OFFICE.keys())
async def test_back_office_bodies_with_a_repeated_key_are_refused(
    gateway: GatewayClient, upstream: Upstream, path: str, body: str, key: str
) -> None:
    response = await gateway.post(path, data=body, headers={"Content-Type": "application/json"})
    answer = await response.json()
    assert response.status == 400, answer
    assert_matches(path, "post", 400, answer)
    assert answer["error"]["message"] == f"{key}: given twice in one object (a JSON key may appear once)"
    assert upstream.sandbox.call_count() == 0


async def test_an_upload_column_map_with_a_repeated_key_is_refused(gateway: GatewayClient, upstream: Upstream) -> None:
    fields = {
        "customerIdentifier": "MOBILE",
        "couponIdentifier": "COUPON_CODE",
        "uploadHeaders": '{"couponCode": "code", "couponCode": "other", "mobile": "mobile", '
        '"redeemedDateInMillis": "date", "redeemedAt": "store"}',
    }
    response = await gateway.post(f"/v1/series/{ABS}/redemption-uploads", data=form("code\n", **fields))
    answer = await response.json()
    assert response.status == 400, answer
    assert (
        answer["error"]["message"] == "uploadHeaders.couponCode: given twice in one object (a JSON key may appear once)"
    )
    assert upstream.sandbox.call_count("upload_redeemed") == 0


@pytest.mark.parametrize("path", ["/v1/series", "/v1/redemptions/validate", "/v1/coupons/issue"])
async def test_a_body_nested_thousands_deep_is_a_400(gateway: GatewayClient, path: str) -> None:
    body = '{"description": ' + "[" * 20_000 + "]" * 20_000 + "}"
    response = await gateway.post(path, data=body, headers={"Content-Type": "application/json"})
    answer = await response.json()
    assert response.status == 400, answer
    assert answer["error"]["code"] == "INVALID_REQUEST"
