"""OAuth tokens, Basic till credentials, store attribution, request ids and routing errors."""

from __future__ import annotations

import base64
import hashlib

import aiohttp
import pytest

from service.sandbox import DEMO

UNAUTHORIZED = {"status": False, "code": 401, "message": "Unauthorized"}


async def test_token_generate_shape(kit):
    response = await kit.client.post(
        "/v3/oauth/token/generate", json={"key": DEMO.client_key, "secret": DEMO.client_secret}
    )
    assert response.status == 200
    body = await response.json()
    assert set(body) == {"data", "errors"}
    assert body["errors"] is None
    assert body["data"]["ttlSeconds"] == 300
    assert body["data"]["accessToken"].count(".") == 2  # JWT-like
    assert response.headers["X-Cap-Requestid"]


async def test_token_ttl_comes_from_config(make_kit):
    kit = await make_kit(token_ttl_seconds=42)
    response = await kit.client.post(
        "/v3/oauth/token/generate", json={"key": DEMO.client_key, "secret": DEMO.client_secret}
    )
    assert (await response.json())["data"]["ttlSeconds"] == 42


@pytest.mark.parametrize(
    "credentials",
    [
        {"key": "wrong", "secret": DEMO.client_secret},
        {"key": DEMO.client_key, "secret": "wrong"},
    ],
)
async def test_token_wrong_credentials_401(kit, credentials):
    response = await kit.client.post("/v3/oauth/token/generate", json=credentials)
    assert response.status == 401
    body = await response.json()
    assert body["data"] is None
    assert body["errors"][0]["code"] == 401


async def test_token_bad_body_400(kit):
    response = await kit.client.post("/v3/oauth/token/generate", data=b"key=x")
    assert response.status == 400
    assert (await response.json())["errors"][0]["code"] == 400


async def test_oauth_token_authenticates_and_header_name_is_case_insensitive(kit):
    token = await kit.token()
    status, _ = await kit.is_redeemable("ABS-ALICE-1", headers={"x-cap-api-oauth-token": token})
    assert status == 200
    assert kit.sandbox.calls[-1].auth == "oauth"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="none"),
        pytest.param({"X-CAP-API-OAUTH-TOKEN": "not-a-token"}, id="unknown-token"),
        pytest.param({"X-CAP-API-OAUTH-TOKEN": ""}, id="empty-token"),
        pytest.param({"Authorization": "Bearer whatever"}, id="bearer-on-v2"),
        pytest.param({"Authorization": "Basic !!!"}, id="basic-not-base64"),
        pytest.param({"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()}, id="basic-no-colon"),
    ],
)
async def test_missing_or_bad_credentials_401_and_nothing_processed(kit, headers):
    response = await kit.client.post("/v2/coupon/redeem", json=kit.redeem_body("ABS-ALICE-1"), headers=headers)
    assert response.status == 401
    assert await response.json() == UNAUTHORIZED
    assert response.headers["X-Cap-Requestid"]
    assert kit.sandbox.redemptions_of("ABS-ALICE-1") == []
    assert kit.sandbox.calls[-1].operation == "redeem"
    assert kit.sandbox.calls[-1].status == 401


async def test_bearer_token_accepted_on_v1_upload_routes(kit):
    token = await kit.token()
    series = DEMO.series_of("abs").id
    ok = await kit.client.get(
        f"/coupon/api/v1/upload/getUploadStatus/{series}", headers={"Authorization": f"Bearer {token}"}
    )
    assert ok.status == 200
    bad = await kit.client.get(
        f"/coupon/api/v1/upload/getUploadStatus/{series}", headers={"Authorization": "Bearer nope"}
    )
    assert bad.status == 401


async def test_expired_token_401(kit):
    headers = await kit.oauth()
    assert (await kit.is_redeemable("ABS-ALICE-1", headers=headers))[0] == 200
    kit.sandbox.advance(299)
    assert (await kit.is_redeemable("ABS-ALICE-1", headers=headers))[0] == 200
    kit.sandbox.advance(1)
    status, body = await kit.is_redeemable("ABS-ALICE-1", headers=headers)
    assert (status, body) == (401, UNAUTHORIZED)
    assert (await kit.is_redeemable("ABS-ALICE-1", headers=await kit.oauth()))[0] == 200


async def test_revoke_tokens_401_until_a_new_token(kit):
    headers = await kit.oauth()
    assert kit.sandbox.revoke_tokens() == 1
    assert (await kit.is_redeemable("ABS-ALICE-1", headers=headers))[0] == 401
    assert (await kit.is_redeemable("ABS-ALICE-1", headers=await kit.oauth()))[0] == 200


async def test_basic_till_credentials(kit):
    till = DEMO.till("S002")
    assert (await kit.is_redeemable("ABS-ALICE-1", headers=kit.basic_for(till.username, till.password)))[0] == 200
    assert kit.sandbox.calls[-1].auth == "basic"
    assert kit.sandbox.calls[-1].store == "S002"


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(lambda t: (t.username, hashlib.md5(b"wrong").hexdigest()), id="wrong-password"),
        pytest.param(lambda t: (t.username, t.password), id="plain-password-not-md5"),
        pytest.param(lambda t: (t.username, hashlib.md5(t.password.encode()).hexdigest().upper()), id="upper-hex"),
        pytest.param(lambda t: ("till.unknown", hashlib.md5(t.password.encode()).hexdigest()), id="unknown-till"),
    ],
)
async def test_basic_wrong_credentials_401(kit, authorization):
    username, secret = authorization(DEMO.till("S001"))
    raw = base64.b64encode(f"{username}:{secret}".encode()).decode()
    status, body = await kit.is_redeemable("ABS-ALICE-1", headers={"Authorization": f"Basic {raw}"})
    assert (status, body) == (401, UNAUTHORIZED)


async def test_store_of_basic_till_drives_735(kit):
    assert (await kit.redeem("S002-ALICE-1", headers=kit.basic("S001")))[1]["redemptionStatus"]["code"] == 735
    assert (await kit.redeem("S002-ALICE-1", headers=kit.basic("S002")))[1]["redemptionStatus"]["code"] == 700
    assert kit.sandbox.redemptions_of("S002-ALICE-1")[0].store == "S002"


async def test_store_of_oauth_call_from_attribution_header_else_default(kit):
    status, body = await kit.redeem("S002-BOB-1", customer="bob", headers=await kit.oauth())
    assert body["redemptionStatus"]["code"] == 735  # default store S001
    status, body = await kit.redeem("S002-BOB-1", customer="bob", headers=await kit.oauth(store="S002"))
    assert (status, body["redemptionStatus"]["code"]) == (200, 700)
    assert kit.sandbox.redemptions_of("S002-BOB-1")[0].store == "S002"


async def test_till_attribution_maps_to_the_tills_store(kit):
    headers = {
        **await kit.oauth(),
        "X-CAP-API-ATTRIBUTION-ENTITY-TYPE": "TILL",
        "X-CAP-API-ATTRIBUTION-ENTITY-CODE": DEMO.till("S002").username,
    }
    _, body = await kit.is_redeemable("S002-ALICE-1", headers=headers)
    assert body["redemption"][0]["isRedeemable"] is True


async def test_default_store_is_configurable(make_kit):
    kit = await make_kit(default_store="S002")
    _, body = await kit.is_redeemable("S002-ALICE-1", headers=await kit.oauth())
    assert body["redemption"][0]["isRedeemable"] is True


async def test_every_response_has_a_unique_request_id(kit):
    responses = [
        await kit.client.get("/v2/coupon/series?ids=10001", headers=kit.basic()),
        await kit.client.get("/v2/coupon/series?ids=10001"),
        await kit.client.get("/no/such/route"),
        await kit.client.post("/v3/oauth/token/generate", json={"key": "x", "secret": "y"}),
    ]
    ids = [r.headers["X-Cap-Requestid"] for r in responses]
    assert [r.status for r in responses] == [200, 401, 404, 401]
    assert len(set(ids)) == 4


async def test_unknown_route_and_method_are_json(kit):
    response = await kit.client.get("/v2/nothing-here")
    assert response.status == 404
    assert (await response.json())["code"] == 404
    response = await kit.client.delete("/v2/coupon/redeem")
    assert response.status == 405
    assert (await response.json())["code"] == 405


V1_ROUTES = [
    pytest.param("POST", "/coupon/api/v1/upload/file/{series}", id="upload-file"),
    pytest.param("POST", "/coupon/api/v1/upload/redeemFile/{series}", id="upload-redeemFile"),
    pytest.param("GET", "/coupon/api/v1/upload/getUploadStatus/{series}", id="getUploadStatus"),
    pytest.param("GET", "/coupon/api/v1/upload/getUploadRedeemedCouponStatus/{series}", id="getRedeemedStatus"),
]


def _upload_form():
    data = aiohttp.FormData()
    data.add_field("file", b"SOME-CODE\n", filename="c.csv", content_type="text/csv")
    data.add_field("customerIdentifier", "NOT_TAGGED")
    return data


@pytest.mark.parametrize(("method", "path"), V1_ROUTES)
async def test_upload_host_refuses_basic_credentials(kit, method, path):
    """The upload host documents OAuth only: valid till credentials there get 401 and nothing is queued."""
    url = path.format(series=DEMO.series_of("abs").id)
    data = _upload_form() if method == "POST" else None
    response = await kit.client.request(method, url, data=data, headers=kit.basic())
    assert response.status == 401
    assert await response.json() == UNAUTHORIZED
    assert kit.sandbox.state.upload_jobs == {}
    assert kit.sandbox.calls[-1].auth is None
    ok = await kit.client.request(method, url, headers={"x-cap-api-oauth-token": await kit.token()})
    assert ok.status in (200, 400)  # authenticated (a POST without a form is then a 400 about the form)


async def test_v2_routes_keep_both_schemes(kit):
    assert (await kit.is_redeemable("ABS-ALICE-1", headers=kit.basic()))[0] == 200
    assert (await kit.is_redeemable("ABS-ALICE-1", headers=await kit.oauth()))[0] == 200
