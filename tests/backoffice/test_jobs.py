"""Upload jobs over real HTTP: the gateway's job id maps to the upstream job, whose state is normalised (queued,
running, finished, failed) with its counts and file names, for both kinds of upload as the sandbox moves them on
its clock; the same file sent again answers with the first job."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from service.backoffice.jobs import normalise
from service.config import StateSettings
from service.sandbox import Fault, FaultKind
from service.web.backoffice import BACKOFFICE
from tests.api.spec import assert_matches
from tests.backoffice.conftest import (
    ABS,
    ALICE,
    ANY,
    BOB,
    CAROL,
    MULTI,
    coupon_uploads,
    form,
    post_csv,
    redemption_uploads,
)
from tests.conftest import GatewayClient, StartGateway, Upstream, free_port

JOB_SECONDS = 0.5  # the sandbox fixture's upload_job_seconds
COUPONS = f"mobile,code\n{BOB.mobile},JOB-BOB-1\n{CAROL.mobile},JOB-CAROL-1\n{ALICE.mobile},ABS-ALICE-1\n"
REDEEM_MAP = '{"couponCode": "code", "mobile": "mobile", "redeemedDateInMillis": "date", "redeemedAt": "store"}'
REDEMPTIONS = (
    "code,mobile,date,store\n"
    f"ABS-ALICE-1,{ALICE.mobile},1893456000000,S009\n"
    f"ABS-BOB-1,{BOB.mobile},1893456000000,S009\n"
    f"ABS-ALICE-USED,{ALICE.mobile},1893456000000,S009\n"  # already redeemed: an upstream row error
)
REDEMPTION_FIELDS = {"customerIdentifier": "MOBILE", "couponIdentifier": "COUPON_CODE", "uploadHeaders": REDEEM_MAP}


async def _job(gateway: GatewayClient, path: str, job_id: str) -> dict[str, Any]:
    response = await gateway.get(f"{path}/{job_id}")
    body: dict[str, Any] = await response.json()
    assert response.status == 200, body
    template = "/v1/series/{seriesId}/" + path.rsplit("/", 1)[1] + "/{jobId}"
    assert_matches(template, "get", 200, body)
    return body


@pytest.mark.parametrize(
    ("upstream_status", "status"),
    [
        (None, "queued"),
        ("", "queued"),
        ("QUEUED", "queued"),
        ("STARTED", "running"),
        ("PROCESSING", "running"),
        ("in progress", "running"),
        ("FINISHED", "finished"),
        ("COMPLETED", "finished"),
        ("Failed", "failed"),
        ("ERROR", "failed"),
        ("SOMETHING_NEW", "running"),
    ],
)
def test_upstream_statuses_in_four_words(upstream_status: str | None, status: str) -> None:
    assert normalise(upstream_status) == status


async def test_coupon_upload_runs_to_finished_with_counts(gateway: GatewayClient, upstream: Upstream) -> None:
    status, accepted = await post_csv(gateway, coupon_uploads(ABS), COUPONS, identifierType="MOBILE")
    assert status == 202, accepted
    assert_matches("/v1/series/{seriesId}/coupon-uploads", "post", 202, accepted)
    job = accepted["job"]
    assert job["jobId"].startswith("upl_")
    assert (job["status"], job["upstreamStatus"]) == ("running", "STARTED")
    assert job["counts"] == {"rows": 3, "uploaded": 0, "errors": 0}  # rows from the pre-flight count
    assert job["fileName"] == "coupons.csv"
    (upstream_job,) = upstream.sandbox.state.jobs_of(ABS, "coupons")
    assert job["upstreamJobId"] == upstream_job.job_id
    assert job["upstreamFileName"] == upstream_job.uploaded_file_url

    upstream.sandbox.advance(JOB_SECONDS / 2)
    halfway = await _job(gateway, coupon_uploads(ABS), job["jobId"])
    assert (halfway["status"], halfway["upstreamStatus"]) == ("running", "PROCESSING")

    upstream.sandbox.advance(JOB_SECONDS / 2)
    done = await _job(gateway, coupon_uploads(ABS), job["jobId"])
    assert (done["status"], done["upstreamStatus"]) == ("finished", "FINISHED")
    assert done["counts"] == {"rows": 3, "uploaded": 2, "errors": 1}  # ABS-ALICE-1 exists already
    assert done["errorFileName"].startswith("error_")
    assert upstream.sandbox.coupon("JOB-BOB-1").customer_id == BOB.id
    assert upstream.sandbox.coupon("JOB-CAROL-1").customer_id == CAROL.id


async def test_coupon_upload_where_every_row_fails_is_failed(gateway: GatewayClient, upstream: Upstream) -> None:
    data = "mobile,code\n919911111111,JOB-X-1\n919922222222,JOB-X-2\n"  # well formed, but nobody's
    status, accepted = await post_csv(gateway, coupon_uploads(ABS), data, identifierType="MOBILE")
    assert status == 202
    upstream.sandbox.advance(JOB_SECONDS)
    done = await _job(gateway, coupon_uploads(ABS), accepted["job"]["jobId"])
    assert (done["status"], done["upstreamStatus"]) == ("failed", "FAILED")
    assert done["counts"] == {"rows": 2, "uploaded": 0, "errors": 2}
    assert done["errorFileName"]


async def test_redemption_upload_goes_queued_running_finished(gateway: GatewayClient, upstream: Upstream) -> None:
    status, accepted = await post_csv(
        gateway, redemption_uploads(ABS), REDEMPTIONS, details="till 7 offline", **REDEMPTION_FIELDS
    )
    assert status == 202, accepted
    assert_matches("/v1/series/{seriesId}/redemption-uploads", "post", 202, accepted)
    job = accepted["job"]
    assert (job["kind"], job["status"], job["upstreamStatus"]) == ("redemptions", "queued", "QUEUED")
    (upstream_job,) = upstream.sandbox.state.jobs_of(ABS, "redeemed")
    # the map's header names went upstream as column indexes
    assert upstream_job.settings["columns"] == {
        "couponCode": 0,
        "mobile": 1,
        "redeemedDateInMillis": 2,
        "redeemedAt": 3,
    }
    assert upstream_job.settings["details"] == "till 7 offline"

    upstream.sandbox.advance(JOB_SECONDS / 2)
    assert (await _job(gateway, redemption_uploads(ABS), job["jobId"]))["status"] == "running"

    upstream.sandbox.advance(JOB_SECONDS / 2)
    done = await _job(gateway, redemption_uploads(ABS), job["jobId"])
    assert (done["status"], done["upstreamStatus"]) == ("finished", "COMPLETED")
    assert done["counts"] == {"rows": 3, "uploaded": 2, "errors": 1}
    assert done["errorFileName"].startswith("error_redemption_upload_")
    (redemption,) = upstream.sandbox.redemptions_of("ABS-BOB-1")
    assert (redemption.store, redemption.source) == ("S009", "UPLOAD")


async def test_redemption_upload_where_every_row_fails_is_failed(gateway: GatewayClient, upstream: Upstream) -> None:
    data = f"code,mobile,date,store\nABS-ALICE-USED,{ALICE.mobile},1893456000000,S001\n"
    status, accepted = await post_csv(gateway, redemption_uploads(ABS), data, **REDEMPTION_FIELDS)
    assert status == 202
    upstream.sandbox.advance(JOB_SECONDS)
    done = await _job(gateway, redemption_uploads(ABS), accepted["job"]["jobId"])
    assert (done["status"], done["upstreamStatus"], done["counts"]["errors"]) == ("failed", "FAILED", 1)


async def test_job_lists_show_every_upstream_job_newest_first(gateway: GatewayClient, upstream: Upstream) -> None:
    status, first = await post_csv(gateway, coupon_uploads(ANY), "code\nLIST-1\n", identifierType="NOT_TAGGED")
    assert status == 202
    # a job made directly upstream, not through the gateway
    upstream.sandbox.state.new_upload_job(
        kind="coupons",
        series_id=ANY,
        now=upstream.sandbox.now(),
        due_on=upstream.sandbox.now(),
        file_name="direct.csv",
        rows=[["LIST-2"]],
        settings={"customerIdentifier": "NOT_TAGGED", "customerIdentifierColumn": 0},
    )
    response = await gateway.get(coupon_uploads(ANY))
    listing = await response.json()
    assert response.status == 200
    assert_matches("/v1/series/{seriesId}/coupon-uploads", "get", 200, listing)
    assert [j["jobId"] for j in listing["jobs"]] == [None, first["job"]["jobId"]]
    assert listing["jobs"][0]["fileName"] == "direct.csv"
    assert listing["jobs"][0]["status"] == "finished"

    response = await gateway.get(redemption_uploads(ANY))
    assert (await response.json())["jobs"] == []


async def test_unknown_jobs_are_not_found(gateway: GatewayClient) -> None:
    status, accepted = await post_csv(gateway, coupon_uploads(ABS), COUPONS, identifierType="MOBILE")
    assert status == 202
    job_id = accepted["job"]["jobId"]
    for path in (
        f"{coupon_uploads(ABS)}/upl_0000",
        f"{redemption_uploads(ABS)}/{job_id}",
        f"{coupon_uploads(ANY)}/{job_id}",
    ):
        response = await gateway.get(path)
        body = await response.json()
        assert response.status == 404, path
        assert body["error"]["code"] == "UPLOAD_JOB_NOT_FOUND"


# ---- duplicates


async def test_the_same_file_again_answers_with_the_first_job(gateway: GatewayClient, upstream: Upstream) -> None:
    status, first = await post_csv(gateway, coupon_uploads(ABS), COUPONS, identifierType="MOBILE")
    assert status == 202
    upstream.sandbox.advance(JOB_SECONDS)
    status, again = await post_csv(gateway, coupon_uploads(ABS), COUPONS, identifierType="MOBILE", dryRun="false")
    assert status == 200
    assert_matches("/v1/series/{seriesId}/coupon-uploads", "post", 200, again)
    assert again["duplicate"] is True
    assert again["job"]["jobId"] == first["job"]["jobId"]
    assert again["job"]["status"] == "finished"  # the first job's state now
    assert upstream.sandbox.call_count("upload_coupons") == 1

    # as a text/csv body, under another file name: the same bytes all the same
    response = await gateway.post(
        coupon_uploads(ABS),
        data=COUPONS.encode(),
        params={"identifierType": "MOBILE", "fileName": "renamed.csv"},
        headers={"Content-Type": "text/csv"},
    )
    assert response.status == 200
    assert (await response.json())["job"]["jobId"] == first["job"]["jobId"]
    assert upstream.sandbox.call_count("upload_coupons") == 1


async def test_other_series_options_or_bytes_are_new_uploads(gateway: GatewayClient, upstream: Upstream) -> None:
    data = "code\nNEW-1\n"
    statuses = [
        (await post_csv(gateway, coupon_uploads(ANY), data, identifierType="NOT_TAGGED"))[0],
        (await post_csv(gateway, coupon_uploads(MULTI), data, identifierType="NOT_TAGGED"))[0],
        (await post_csv(gateway, coupon_uploads(ANY), data + "NEW-2\n", identifierType="NOT_TAGGED"))[0],
        (await post_csv(gateway, coupon_uploads(ANY), "mobile\n" + BOB.mobile + "\n", identifierType="MOBILE"))[0],
        (
            await post_csv(
                gateway,
                coupon_uploads(ANY),
                "mobile\n" + BOB.mobile + "\n",
                identifierType="MOBILE",
                identifierColumn="mobile",
            )
        )[0],
    ]
    assert statuses == [202] * 5
    assert upstream.sandbox.call_count("upload_coupons") == 5


async def test_after_the_window_the_same_file_is_uploaded_again(gateway: GatewayClient, upstream: Upstream) -> None:
    gateway.app[BACKOFFICE].uploads.duplicate_window = 0
    data = "code\nWIN-1\n"
    first = await post_csv(gateway, coupon_uploads(ANY), data, identifierType="NOT_TAGGED")
    second = await post_csv(gateway, coupon_uploads(ANY), data, identifierType="NOT_TAGGED")
    assert (first[0], second[0]) == (202, 202)
    assert first[1]["job"]["jobId"] != second[1]["job"]["jobId"]


async def test_a_refused_or_failed_upload_is_no_duplicate(gateway: GatewayClient, upstream: Upstream) -> None:
    upstream.sandbox.add_fault(Fault(FaultKind.HTTP_ERROR, operation="upload_coupons", status=500))
    status, body = await post_csv(gateway, coupon_uploads(ABS), COUPONS, identifierType="MOBILE")
    assert status in (502, 503), body
    assert body["error"]["code"] in ("UPSTREAM_ERROR", "UPSTREAM_UNAVAILABLE")
    status, body = await post_csv(gateway, coupon_uploads(ABS), COUPONS, identifierType="MOBILE")
    assert status == 202, body
    assert body["duplicate"] is False


async def test_concurrent_identical_uploads_make_one_job(gateway: GatewayClient, upstream: Upstream) -> None:
    upstream.sandbox.add_fault(Fault(FaultKind.LATENCY, operation="upload_coupons", delay_seconds=0.3))

    async def send() -> tuple[int, dict[str, Any]]:
        response = await gateway.post(coupon_uploads(ABS), data=form(COUPONS, identifierType="MOBILE"))
        return response.status, await response.json()

    results = await asyncio.gather(send(), send())
    assert sorted(status for status, _ in results) == [202, 409]
    busy = next(body for status, body in results if status == 409)
    assert busy["error"]["code"] == "REQUEST_IN_PROGRESS"
    assert upstream.sandbox.call_count("upload_coupons") == 1


async def test_jobs_are_kept_in_redis_when_configured(
    start_gateway: StartGateway, upstream: Upstream, redis_db: str
) -> None:
    state = StateSettings(redis_url=redis_db)
    first_gateway = await start_gateway(upstream, state=state)
    status, accepted = await post_csv(first_gateway, coupon_uploads(ABS), COUPONS, identifierType="MOBILE")
    assert status == 202
    job_id = accepted["job"]["jobId"]
    # another replica sees the job and the fingerprint
    other = await start_gateway(upstream, state=state)
    upstream.sandbox.advance(JOB_SECONDS)
    assert (await _job(other, coupon_uploads(ABS), job_id))["status"] == "finished"
    status, again = await post_csv(other, coupon_uploads(ABS), COUPONS, identifierType="MOBILE")
    assert (status, again["job"]["jobId"]) == (200, job_id)
    listing = await (await other.get(coupon_uploads(ABS))).json()
    assert [j["jobId"] for j in listing["jobs"]] == [job_id]


async def test_without_its_job_store_the_gateway_uploads_nothing(
    start_gateway: StartGateway, upstream: Upstream
) -> None:
    gateway = await start_gateway(upstream, state=StateSettings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    status, body = await post_csv(gateway, coupon_uploads(ABS), COUPONS, identifierType="MOBILE")
    assert status == 503, body
    assert body["error"]["code"] == "STATE_STORE_UNAVAILABLE"
    assert upstream.sandbox.call_count("upload_coupons") == 0
    # a dry run needs no store
    status, body = await post_csv(gateway, coupon_uploads(ABS), COUPONS, identifierType="MOBILE", dryRun="true")
    assert (status, body["report"]["valid"]) == (200, True)


async def test_an_upload_without_an_answer_is_never_sent_twice(start_gateway: Any, upstream: Upstream) -> None:
    """Capillary takes the file but the answer never comes: the same file is refused until the job list is
    checked, never loaded a second time."""
    gateway = await start_gateway(upstream)
    upstream.sandbox.add_fault(Fault(FaultKind.APPLY_THEN_RESET, operation="upload_coupons"))
    status, body = await post_csv(gateway, coupon_uploads(ABS), COUPONS, identifierType="MOBILE")
    assert status == 503, body
    assert body["error"]["code"] == "UPSTREAM_UNAVAILABLE"
    status, body = await post_csv(gateway, coupon_uploads(ABS), COUPONS, identifierType="MOBILE")
    assert status == 409, body
    assert "may have gone through" in body["error"]["message"]
    assert upstream.sandbox.call_count("upload_coupons") == 1
