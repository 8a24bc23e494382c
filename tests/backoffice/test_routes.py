"""The back-office routes over real HTTP against the sandbox: issue, bulk issue, coupon details, series; every
answer checked against openapi.yaml, upstream effects read from the sandbox's own state."""

from __future__ import annotations

from typing import Any

import pytest

from service.sandbox import DEMO
from tests.api.spec import assert_matches
from tests.backoffice.conftest import ABS, ALICE, BOB, DAVE, coupon_uploads, form
from tests.conftest import GatewayClient, Upstream

ONE_PER_CUSTOMER = DEMO.series_of("one_per_customer").id
EXPIRED = DEMO.series_of("expired").id


async def _call(
    gateway: GatewayClient, method: str, path: str, status: int, *, template: str | None = None, **options: Any
) -> dict[str, Any]:
    response = await gateway.request(method, path, **options)
    body: dict[str, Any] = await response.json()
    assert response.status == status, body
    assert_matches(template or path, method.lower(), status, body)
    return body


async def test_issue_gives_the_customer_a_coupon_of_the_series(gateway: GatewayClient, upstream: Upstream) -> None:
    body = await _call(
        gateway, "POST", "/v1/coupons/issue", 201, json={"seriesId": ABS, "customer": {"email": BOB.email}}
    )
    assert body["seriesId"] == ABS
    assert body["customerId"] == BOB.id
    issued = upstream.sandbox.coupon(body["code"])
    assert (issued.series_id, issued.customer_id) == (ABS, BOB.id)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"seriesId": ABS, "customer": {"mobile": "919911111111"}}, 404, "CUSTOMER_NOT_FOUND"),
        ({"seriesId": 99999, "customer": {"mobile": ALICE.mobile}}, 404, "SERIES_NOT_FOUND"),
        ({"seriesId": ABS, "customer": {"mobile": ALICE.mobile, "email": ALICE.email}}, 400, "INVALID_REQUEST"),
        ({"seriesId": 0, "customer": {"mobile": ALICE.mobile}}, 400, "INVALID_REQUEST"),
        ({"seriesId": ABS, "customer": {"mobile": ALICE.mobile}, "extra": 1}, 400, "INVALID_REQUEST"),
    ],
)
async def test_issue_refusals_use_the_catalog(
    gateway: GatewayClient, upstream: Upstream, body: dict[str, Any], status: int, code: str
) -> None:
    before = upstream.sandbox.call_count("issue")
    error = await _call(gateway, "POST", "/v1/coupons/issue", status, json=body)
    assert error["error"]["code"] == code
    if status == 400:
        assert upstream.sandbox.call_count("issue") == before  # refused before any upstream call


async def test_issue_over_the_series_limit_carries_the_upstream_code(gateway: GatewayClient) -> None:
    body = {"seriesId": ONE_PER_CUSTOMER, "customer": {"mobile": DAVE.mobile}}
    await _call(gateway, "POST", "/v1/coupons/issue", 201, json=body)
    error = await _call(gateway, "POST", "/v1/coupons/issue", 422, json=body)
    assert error["error"]["code"] == "COUPON_ISSUE_FAILED"
    assert error["error"]["upstream"]["code"] == 722


async def test_bulk_issue_reports_each_series(gateway: GatewayClient, upstream: Upstream) -> None:
    body = {"seriesIds": [ABS, EXPIRED], "customer": {"externalId": BOB.external_id}, "source": "INSTORE"}
    answer = await _call(gateway, "POST", "/v1/coupons/issue/bulk", 200, json=body)
    assert (answer["issued"], answer["failed"]) == (1, 1)
    by_series = {r["seriesId"]: r for r in answer["results"]}
    assert upstream.sandbox.coupon(by_series[ABS]["coupon"]["code"]).customer_id == BOB.id
    assert by_series[EXPIRED]["coupon"] is None
    assert by_series[EXPIRED]["error"]["upstream"]["code"] == 712


async def test_bulk_issue_with_nothing_issued_answers_the_first_failure(gateway: GatewayClient) -> None:
    body = {"seriesIds": [EXPIRED], "customer": {"mobile": BOB.mobile}}
    answer = await _call(gateway, "POST", "/v1/coupons/issue/bulk", 422, json=body)
    assert answer["issued"] == 0
    assert answer["results"][0]["error"]["code"] == "CAMPAIGN_EXPIRED"


async def test_bulk_issue_refuses_a_repeated_series(gateway: GatewayClient) -> None:
    body = {"seriesIds": [ABS, ABS], "customer": {"mobile": BOB.mobile}}
    error = await _call(gateway, "POST", "/v1/coupons/issue/bulk", 400, json=body)
    assert "seriesIds" in error["error"]["message"]


async def test_coupon_details_by_code_id_and_owner(gateway: GatewayClient) -> None:
    coupon = DEMO.coupon("ABS-BOB-1")
    found = await _call(gateway, "GET", "/v1/coupons", 200, params=[("codes", "ABS-ALICE-1"), ("ids", str(coupon.id))])
    assert {c["code"] for c in found["coupons"]} == {"ABS-ALICE-1", "ABS-BOB-1"}
    # Capillary's coupon details name no owner (its sample shows none): the gateway states none rather than guess.
    assert all(c.get("customerId") is None for c in found["coupons"])
    owned = await _call(gateway, "GET", "/v1/coupons", 200, params={"customerIds": str(BOB.id)})
    assert "ABS-BOB-1" in {c["code"] for c in owned["coupons"]}


async def test_coupon_details_partial_and_unknown(gateway: GatewayClient) -> None:
    partial = await _call(gateway, "GET", "/v1/coupons", 200, params=[("codes", "ABS-ALICE-1"), ("codes", "NOPE-1")])
    assert [c["code"] for c in partial["coupons"]] == ["ABS-ALICE-1"]
    assert partial["errors"][0]["code"] == "COUPON_NOT_FOUND"
    missing = await _call(gateway, "GET", "/v1/coupons", 404, params={"codes": "NOPE-1"})
    assert missing["error"]["code"] == "COUPON_NOT_FOUND"
    await _call(gateway, "GET", "/v1/coupons", 400)
    await _call(gateway, "GET", "/v1/coupons", 400, params={"ids": "abc"})


async def test_create_series_then_read_it_through_the_cache(gateway: GatewayClient, upstream: Upstream) -> None:
    spec = {
        "description": "Spring 50 off",
        "discountType": "ABS",
        "discountValue": 50,
        "validTillDate": "2031-01-01T00:00:00Z",
        "minBillAmount": 200,
        "maxRedeem": -1,
    }
    created = await _call(gateway, "POST", "/v1/series", 201, json=spec)
    assert created["description"] == "Spring 50 off"
    assert upstream.sandbox.state.series[created["id"]].description == "Spring 50 off"
    read = await _call(gateway, "GET", f"/v1/series/{created['id']}", 200, template="/v1/series/{seriesId}")
    assert read == created
    # the new series takes uploads at once
    response = await gateway.get(coupon_uploads(created["id"]))
    assert response.status == 200


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"discountType": "ABS", "discountValue": 5}, "description"),
        ({"description": "x", "discountType": "PERC", "discountValue": 150}, "discountValue"),
        ({"description": "x", "discountType": "ABS", "discountValue": -1}, "discountValue"),
        ({"description": "x", "discountType": "BOGO", "discountValue": 5}, "discountType"),
        ({"description": "x", "discountType": "ABS", "discountValue": 5, "colour": "red"}, "colour"),
        ({"description": "x", "discountType": "ABS", "discountValue": 5, "validTillDate": "soon"}, "validTillDate"),
        (
            {"description": "x", "discountType": "ABS", "discountValue": 5, "minBillAmount": 9, "maxBillAmount": 1},
            "minBillAmount",
        ),
    ],
)
async def test_create_series_checks_fields_before_calling_upstream(
    gateway: GatewayClient, upstream: Upstream, spec: dict[str, Any], field: str
) -> None:
    error = await _call(gateway, "POST", "/v1/series", 400, json=spec)
    assert field in error["error"]["message"]
    assert upstream.sandbox.call_count("series_create") == 0


# ---- what reaches a header or the upstream: file names and options

NAMES = {
    "CR LF": "evil%0D%0AX-Injected%3A%201.csv",
    "LF": "a%0Ab.csv",
    "NUL": "a%00b.csv",
    "tab": "a%09b.csv",
    "line separator": "a%E2%80%A8b.csv",
    "right-to-left override": "invoice%E2%80%AEvsc.exe",
    "too long": "a" * 256 + ".csv",
}


def _multipart(file_name: str) -> bytes:
    return (
        b'--XX\r\nContent-Disposition: form-data; name="identifierType"\r\n\r\nNOT_TAGGED\r\n'
        b"--XX\r\nContent-Disposition: form-data; name=\"file\"; filename*=utf-8''" + file_name.encode() + b"\r\n"
        b"Content-Type: text/csv\r\n\r\ncode\r\nNAMED-1\r\n--XX--\r\n"
    )


@pytest.mark.parametrize("file_name", NAMES.values(), ids=NAMES.keys())
async def test_a_file_name_with_control_characters_is_a_bad_request(
    gateway: GatewayClient, upstream: Upstream, file_name: str
) -> None:
    """A file name goes upstream in a multipart header and into the job record: 400 naming the field, not a 500."""
    multipart = await gateway.post(
        coupon_uploads(ABS), data=_multipart(file_name), headers={"Content-Type": "multipart/form-data; boundary=XX"}
    )
    body = await multipart.json()
    assert multipart.status == 400, body
    assert_matches(coupon_uploads(ABS).replace(str(ABS), "{seriesId}"), "post", 400, body)
    assert (body["error"]["code"], body["error"]["message"].split(":")[0]) == ("INVALID_REQUEST", "file")

    query = await gateway.post(
        f"{coupon_uploads(ABS)}?identifierType=NOT_TAGGED&fileName={file_name}",
        data=b"code\nNAMED-2\n",
        headers={"Content-Type": "text/csv"},
    )
    body = await query.json()
    assert query.status == 400, body
    assert body["error"]["message"].startswith("fileName: ")
    assert upstream.sandbox.call_count("upload_coupons") == 0


async def test_a_plain_unicode_file_name_is_taken(gateway: GatewayClient, upstream: Upstream) -> None:
    multipart = {"Content-Type": "multipart/form-data; boundary=XX"}
    response = await gateway.post(coupon_uploads(ABS), data=_multipart("%C3%A9t%C3%A9%202030.csv"), headers=multipart)
    assert response.status == 202, await response.text()
    assert upstream.sandbox.call_count("upload_coupons") == 1


REDEEM_MAP = '{"couponCode": "code", "mobile": "mobile", "redeemedDateInMillis": "date", "redeemedAt": "store"}'


@pytest.mark.parametrize(
    ("option", "value"),
    [("details", "note\x00hidden"), ("identifierColumn", "code\x1b[2J"), ("details", "line\x7f")],
)
async def test_an_option_with_control_characters_is_a_bad_request(
    gateway: GatewayClient, upstream: Upstream, option: str, value: str
) -> None:
    fields = {"identifierType": "NOT_TAGGED", option: value}
    if option == "details":
        fields = {
            "customerIdentifier": "MOBILE",
            "couponIdentifier": "COUPON_CODE",
            "uploadHeaders": REDEEM_MAP,
            option: value,
        }
        path = f"/v1/series/{ABS}/redemption-uploads"
    else:
        path = coupon_uploads(ABS)
    response = await gateway.post(path, data=form("code,mobile,date,store\n", **fields))
    body = await response.json()
    assert response.status == 400, body
    assert body["error"]["message"] == f"{option}: control characters are not allowed"
    assert upstream.sandbox.call_count("upload_coupons") + upstream.sandbox.call_count("upload_redeemed") == 0


async def test_details_may_span_lines(gateway: GatewayClient, upstream: Upstream) -> None:
    fields = {
        "customerIdentifier": "MOBILE",
        "couponIdentifier": "COUPON_CODE",
        "uploadHeaders": REDEEM_MAP,
        "details": "offline store 12\r\nbatch 3\tlate",
        "dryRun": "true",
    }
    csv = f"code,mobile,date,store\nABS-BOB-1,{BOB.mobile},1893456000000,S001\n"
    response = await gateway.post(f"/v1/series/{ABS}/redemption-uploads", data=form(csv, **fields))
    assert response.status == 200, await response.text()
