"""v1 CSV uploads: request validation, jobs progressing on the sandbox clock, and their effects on state."""

from __future__ import annotations

import aiohttp
import pytest

from service.sandbox import DEMO

ABS = DEMO.series_of("abs").id
ANY = DEMO.series_of("any_user").id


def form(csv_text: str, file_name: str = "coupons.csv", **fields: str) -> aiohttp.FormData:
    data = aiohttp.FormData()
    data.add_field("file", csv_text.encode(), filename=file_name, content_type="text/csv")
    for name, value in fields.items():
        data.add_field(name, value)
    return data


async def upload(kit, path: str, data: aiohttp.FormData):
    response = await kit.client.post(path, data=data, headers=await kit.oauth())
    return response.status, await response.json()


async def status_of(kit, path: str):
    response = await kit.client.get(path, headers={"x-cap-api-oauth-token": await kit.token()})
    assert response.status == 200
    return await response.json()


async def test_coupon_upload_tagged_by_mobile_progresses_to_finished(kit, now):
    csv_text = (
        "customerIdentifier,coupon code\n"
        f"{DEMO.customer('bob').mobile},UPL-BOB-1\n"
        f"{DEMO.customer('carol').mobile},UPL-CAROL-1\n"
        "910000000000,UPL-NOBODY-1\n"  # unknown customer
        f"{DEMO.customer('bob').mobile},ABS-ALICE-1\n"  # code already exists
        f"{DEMO.customer('bob').mobile},BAD CODE\n"  # malformed code
        "\n"
    )
    status, body = await upload(
        kit,
        f"/coupon/api/v1/upload/file/{ABS}",
        form(csv_text, customerIdentifier="MOBILE", customerIdentifierColumn="0"),
    )
    assert status == 200
    assert body["success"] is True
    assert body["result"]["couponSeriesId"] == ABS
    (job,) = body["result"]["uploadJobStatuses"]
    assert job["uploadStatus"] == "STARTED"
    assert (job["actualRowCount"], job["totalUploadedCount"], job["errorCount"]) == (0, 0, 0)
    assert job["createdOn"] == str(int(now.timestamp() * 1000))
    assert job["uploadedFileName"] == "coupons.csv"
    assert body["result"]["fileName"] == job["uploadedFileUrl"]
    assert kit.sandbox.state.coupon_by_code("UPL-BOB-1") is None  # not processed yet

    kit.sandbox.advance(0.5)
    listing = await status_of(kit, f"/coupon/api/v1/upload/getUploadStatus/{ABS}")
    assert listing["result"]["uploadJobStatuses"][0]["uploadStatus"] == "PROCESSING"

    kit.sandbox.advance(0.5)
    listing = await status_of(kit, f"/coupon/api/v1/upload/getUploadStatus/{ABS}")
    (done,) = listing["result"]["uploadJobStatuses"]
    assert done["jobId"] == job["jobId"]
    assert done["uploadStatus"] == "FINISHED"
    assert (done["actualRowCount"], done["totalUploadedCount"], done["errorCount"]) == (5, 2, 3)
    assert done["errorFileUrl"]
    assert done["updatedOn"] == str(int(now.timestamp() * 1000) + 1000)
    assert kit.sandbox.coupon("UPL-BOB-1").customer_id == DEMO.customer("bob").id
    assert kit.sandbox.coupon("UPL-CAROL-1").customer_id == DEMO.customer("carol").id
    assert kit.sandbox.state.coupon_by_code("UPL-NOBODY-1") is None
    assert [n for n, _ in kit.sandbox.state.upload_jobs[job["jobId"]].row_errors] == [3, 4, 5]
    assert redeem_code(await kit.redeem("UPL-BOB-1", customer="bob")) == 700


async def test_coupon_upload_not_tagged_without_header_and_generated_codes(kit):
    status, _ = await upload(
        kit, f"/coupon/api/v1/upload/file/{ANY}", form("GIFT-U1\nGIFT-U2\n", customerIdentifier="NOT_TAGGED")
    )
    assert status == 200
    kit.sandbox.advance(1)
    listing = await status_of(kit, f"/coupon/api/v1/upload/getUploadStatus/{ANY}")
    job = listing["result"]["uploadJobStatuses"][0]
    assert (job["actualRowCount"], job["totalUploadedCount"], job["errorCount"]) == (2, 2, 0)
    assert job["errorFileUrl"] is None
    assert kit.sandbox.coupon("GIFT-U1").customer_id is None
    assert redeem_code(await kit.redeem("GIFT-U2", customer="dave")) == 700

    # identifiers only: codes are generated
    status, _ = await upload(
        kit,
        f"/coupon/api/v1/upload/file/{ABS}",
        form("userId\n500004\n", customerIdentifier="USER_ID", customerIdentifierColumn="0"),
    )
    assert status == 200
    before = {c.id for c in kit.sandbox.state.coupons_of(500004)}
    kit.sandbox.advance(1)
    await status_of(kit, f"/coupon/api/v1/upload/getUploadStatus/{ABS}")
    assert len({c.id for c in kit.sandbox.state.coupons_of(500004)} - before) == 1


async def test_redeemed_upload_progresses_to_completed_and_records_redemptions(kit):
    headers = '{"redeemedDateInMillis": 0, "redeemedAt": 1, "mobile": 2, "couponCode": 3, "billId": 4, "billNumber": 5}'
    csv_text = (
        "redeemed date in millis, redeemed at, mobile, coupon code, bill id, bill number\n"
        f"1893456000000,S009,{DEMO.customer('alice').mobile},ABS-ALICE-1,B1,BN-1\n"
        f"1893456000000,S009,{DEMO.customer('alice').mobile},ABS-ALICE-USED,B2,BN-2\n"  # already redeemed
        f"1893456000000,S009,{DEMO.customer('alice').mobile},ABS-BOB-1,B3,BN-3\n"  # another customer's
        f"yesterday,S009,{DEMO.customer('bob').mobile},ABS-BOB-1,B4,BN-4\n"  # bad date
        f"1893456000000,S009,{DEMO.customer('alice').mobile},PERC-ALICE-1,B5,BN-5\n"  # other series
    )
    status, body = await upload(
        kit,
        f"/coupon/api/v1/upload/redeemFile/{ABS}",
        form(
            csv_text,
            customerIdentifier="MOBILE",
            couponIdentifier="COUPON_CODE",
            uploadHeaders=headers,
            Details="imported from POS",
        ),
    )
    assert status == 200
    (job,) = body["result"]["redeemUploadJobStatuses"]
    assert job["uploadRedeemedCouponStatus"] == "QUEUED"
    assert "audienceGroupId" not in job
    assert kit.sandbox.redemptions_of("ABS-ALICE-1") == []

    kit.sandbox.advance(1)
    listing = await status_of(kit, f"/coupon/api/v1/upload/getUploadRedeemedCouponStatus/{ABS}")
    (done,) = listing["result"]["redeemUploadJobStatuses"]
    assert done["uploadRedeemedCouponStatus"] == "COMPLETED"
    assert (done["actualRowCount"], done["totalUploadedCount"], done["errorCount"]) == (5, 1, 4)
    assert done["errorFileUrl"].startswith("error_redemption_upload_")
    (redemption,) = kit.sandbox.redemptions_of("ABS-ALICE-1")
    assert (redemption.store, redemption.transaction_number, redemption.source) == ("S009", "BN-1", "UPLOAD")
    assert int(redemption.redeemed_on.timestamp() * 1000) == 1893456000000
    assert redeem_code(await kit.redeem("ABS-ALICE-1")) == 711


async def test_redeemed_upload_by_user_id_and_coupon_id(kit):
    coupon = DEMO.coupon("PERC-BOB-1")
    headers = '{"redeemedDateInMillis": 0, "redeemedAt": 1, "userId": 2, "couponId": 3}'
    status, _ = await upload(
        kit,
        f"/coupon/api/v1/upload/redeemFile/{coupon.series_id}",
        form(f"1893456000000,S001,{coupon.customer_id},{coupon.id}\n", customerIdentifier="USER_ID",
             couponIdentifier="COUPON_ID", uploadHeaders=headers),
    )  # fmt: skip
    assert status == 200
    kit.sandbox.advance(1)
    kit.sandbox.process_jobs()
    assert len(kit.sandbox.redemptions_of("PERC-BOB-1")) == 1


async def test_jobs_complete_immediately_with_zero_delay(make_kit):
    kit = await make_kit(upload_job_seconds=0)
    _, body = await upload(kit, f"/coupon/api/v1/upload/file/{ANY}", form("ZERO-1\n", customerIdentifier="NOT_TAGGED"))
    assert body["result"]["uploadJobStatuses"][0]["uploadStatus"] == "STARTED"
    listing = await status_of(kit, f"/coupon/api/v1/upload/getUploadStatus/{ANY}")
    assert listing["result"]["uploadJobStatuses"][0]["uploadStatus"] == "FINISHED"


async def test_status_lists_every_job_of_the_series_only(kit):
    for name in ("a.csv", "b.csv"):
        await upload(kit, f"/coupon/api/v1/upload/file/{ANY}", form("X1\n", name, customerIdentifier="NOT_TAGGED"))
    listing = await status_of(kit, f"/coupon/api/v1/upload/getUploadStatus/{ANY}")
    assert [j["uploadedFileName"] for j in listing["result"]["uploadJobStatuses"]] == ["a.csv", "b.csv"]
    other = await status_of(kit, f"/coupon/api/v1/upload/getUploadStatus/{ABS}")
    assert other["result"]["uploadJobStatuses"] == []
    redeemed = await status_of(kit, f"/coupon/api/v1/upload/getUploadRedeemedCouponStatus/{ANY}")
    assert redeemed["result"]["redeemUploadJobStatuses"] == []


@pytest.mark.parametrize(
    ("path", "fields", "message"),
    [
        pytest.param(f"file/{ABS}", {"customerIdentifier": "PHONE"}, "customerIdentifier", id="bad-identifier"),
        pytest.param(f"file/{ABS}", {}, "customerIdentifier", id="missing-identifier"),
        pytest.param(f"file/{ABS}", {"customerIdentifier": "MOBILE", "customerIdentifierColumn": "x"},
                     "customerIdentifierColumn", id="bad-column"),
        pytest.param("file/424242", {"customerIdentifier": "NOT_TAGGED"}, "series", id="unknown-series"),
        pytest.param("file/abc", {"customerIdentifier": "NOT_TAGGED"}, "series", id="bad-series"),
        pytest.param(f"redeemFile/{ABS}", {"customerIdentifier": "MOBILE", "couponIdentifier": "COUPON_CODE"},
                     "uploadHeaders", id="no-upload-headers"),
        pytest.param(f"redeemFile/{ABS}", {"customerIdentifier": "NOT_TAGGED", "couponIdentifier": "COUPON_CODE",
                     "uploadHeaders": "{}"}, "customerIdentifier", id="not-tagged-redeem"),
        pytest.param(f"redeemFile/{ABS}", {"customerIdentifier": "MOBILE", "couponIdentifier": "CODE",
                     "uploadHeaders": "{}"}, "couponIdentifier", id="bad-coupon-identifier"),
        pytest.param(f"redeemFile/{ABS}", {"customerIdentifier": "MOBILE", "couponIdentifier": "COUPON_CODE",
                     "uploadHeaders": '{"redeemedDateInMillis": 0, "redeemedAt": 1, "couponCode": 3}'},
                     "mobile", id="headers-miss-customer"),
        pytest.param(f"redeemFile/{ABS}", {"customerIdentifier": "MOBILE", "couponIdentifier": "COUPON_CODE",
                     "uploadHeaders": '{"redeemedAt": 1, "mobile": 2, "couponCode": 3}'},
                     "redeemedDateInMillis", id="headers-miss-date"),
        pytest.param(f"redeemFile/{ABS}", {"customerIdentifier": "MOBILE", "couponIdentifier": "COUPON_CODE",
                     "uploadHeaders": "not json"}, "uploadHeaders", id="headers-not-json"),
    ],
)  # fmt: skip
async def test_upload_bad_requests_400(kit, path, fields, message):
    status, body = await upload(kit, f"/coupon/api/v1/upload/{path}", form("a,b\n", **fields))
    assert status == 400
    assert body["success"] is False
    assert body["status"] == 400
    assert message in body["message"]
    assert kit.sandbox.state.upload_jobs == {}


async def test_upload_requires_multipart_and_a_file(kit):
    response = await kit.client.post(
        f"/coupon/api/v1/upload/file/{ABS}", json={"customerIdentifier": "MOBILE"}, headers=await kit.oauth()
    )
    assert response.status == 400
    assert "multipart" in (await response.json())["message"]
    data = aiohttp.FormData()
    data.add_field("customerIdentifier", "NOT_TAGGED")
    data.add_field("dummy", b"x", filename="x.bin")
    status, body = await upload(kit, f"/coupon/api/v1/upload/file/{ABS}", data)
    assert status == 400
    assert "file" in body["message"]


async def test_upload_unknown_series_status_400(kit):
    response = await kit.client.get("/coupon/api/v1/upload/getUploadStatus/424242", headers=await kit.oauth())
    assert response.status == 400
    assert await response.json() == {"success": False, "status": 400, "message": "Invalid coupon series id"}


def redeem_code(result):
    return result[1]["redemptionStatus"]["code"]


async def test_jobs_show_their_progress_and_fail_when_no_row_goes_in(kit):
    coupons = f"/coupon/api/v1/upload/getUploadStatus/{ABS}"
    redeemed = f"/coupon/api/v1/upload/getUploadRedeemedCouponStatus/{ABS}"
    await upload(kit, f"/coupon/api/v1/upload/file/{ABS}", form("mobile,code\n910000000000,NOBODY-1\n",
                 customerIdentifier="MOBILE"))  # fmt: skip
    headers = '{"redeemedDateInMillis": 0, "redeemedAt": 1, "mobile": 2, "couponCode": 3}'
    await upload(kit, f"/coupon/api/v1/upload/redeemFile/{ABS}", form(
        f"1893456000000,S001,{DEMO.customer('alice').mobile},ABS-ALICE-USED\n", customerIdentifier="MOBILE",
        couponIdentifier="COUPON_CODE", uploadHeaders=headers))  # fmt: skip

    kit.sandbox.advance(0.5)
    assert (await status_of(kit, coupons))["result"]["uploadJobStatuses"][0]["uploadStatus"] == "PROCESSING"
    assert (await status_of(kit, redeemed))["result"]["redeemUploadJobStatuses"][0][
        "uploadRedeemedCouponStatus"
    ] == "IN_PROGRESS"

    kit.sandbox.advance(0.5)
    (job,) = (await status_of(kit, coupons))["result"]["uploadJobStatuses"]
    assert (job["uploadStatus"], job["totalUploadedCount"], job["errorCount"]) == ("FAILED", 0, 1)
    assert job["errorFileUrl"]
    (job,) = (await status_of(kit, redeemed))["result"]["redeemUploadJobStatuses"]
    assert (job["uploadRedeemedCouponStatus"], job["errorCount"]) == ("FAILED", 1)


# ---- documented field names only -------------------------------------------------------------------------------

REDEEMED_FIELDS = {
    "customerIdentifier": "MOBILE",
    "couponIdentifier": "COUPON_CODE",
    "uploadHeaders": '{"redeemedDateInMillis": 0, "redeemedAt": 1, "mobile": 2, "couponCode": 3}',
}
REDEEMED_ROW = f"1893456000000,S001,{DEMO.customer('alice').mobile},ABS-ALICE-1\n"


async def test_redeemed_upload_takes_the_documented_Details_field(kit):
    data = form(REDEEMED_ROW, Details="imported from POS", **REDEEMED_FIELDS)
    status, _ = await upload(kit, f"/coupon/api/v1/upload/redeemFile/{ABS}", data)
    assert status == 200
    (job,) = kit.sandbox.state.upload_jobs.values()
    assert job.settings["details"] == "imported from POS"


async def test_redeemed_upload_refuses_a_lowercase_details_field(kit):
    """Refused, not ignored: a client sending ``details`` learns here that the documented name is ``Details``."""
    data = form(REDEEMED_ROW, details="imported from POS", **REDEEMED_FIELDS)
    status, body = await upload(kit, f"/coupon/api/v1/upload/redeemFile/{ABS}", data)
    assert (status, body) == (
        400,
        {"success": False, "status": 400, "message": "unknown field 'details'; the documented field is 'Details'"},
    )
    assert kit.sandbox.state.upload_jobs == {}


@pytest.mark.parametrize(
    ("path", "fields", "unknown"),
    [
        (f"file/{ABS}", {"customerIdentifier": "NOT_TAGGED", "seriesId": "1"}, "seriesId"),
        (
            f"file/{ABS}",
            {"customerIdentifier": "NOT_TAGGED", "customeridentifiercolumn": "0"},
            "customeridentifiercolumn",
        ),
        (f"redeemFile/{ABS}", {**REDEEMED_FIELDS, "notes": "x"}, "notes"),
    ],
)
async def test_uploads_refuse_undocumented_fields(kit, path, fields, unknown):
    status, body = await upload(kit, f"/coupon/api/v1/upload/{path}", form("SOME-CODE\n", **fields))
    assert status == 400
    assert body["message"].startswith(f"unknown field {unknown!r}")
    if unknown.lower() == "customeridentifiercolumn":
        assert body["message"].endswith("the documented field is 'customerIdentifierColumn'")
    assert kit.sandbox.state.upload_jobs == {}
