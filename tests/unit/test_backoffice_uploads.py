"""The upload use cases over a fake upstream and the memory job store: sent once, refused before sending, a file
that may have gone stays a duplicate, jobs in the gateway's words, and the wait until the upload host takes calls."""

from __future__ import annotations

import pytest

from service.backoffice.errors import BackOfficeError
from service.backoffice.jobs import JobRecord, JobStoreUnavailable, MemoryJobStore
from service.backoffice.models import Accepted, Checked, UploadRequest
from service.backoffice.preflight import CouponRules, Limits
from service.backoffice.uploads import Uploads, content_key_of, merge
from service.redemption.catalog import CATALOG
from service.redemption.flow import UpstreamFailure
from service.redemption.models import Failure
from tests.unit.backoffice_fakes import KNOWN_SERIES, FakeAdmin, FakeSeries, Received, upstream_job

GOOD = Received(b"code\nUNIT-1\nUNIT-2\n")
NOT_TAGGED = UploadRequest(CouponRules("NOT_TAGGED"))


@pytest.fixture
def admin() -> FakeAdmin:
    return FakeAdmin()


@pytest.fixture
def jobs() -> MemoryJobStore:
    return MemoryJobStore()


@pytest.fixture
def uploads(admin: FakeAdmin, jobs: MemoryJobStore) -> Uploads:
    return Uploads(admin, FakeSeries(), jobs)


async def test_a_file_is_sent_once_and_its_job_recorded(
    uploads: Uploads, admin: FakeAdmin, jobs: MemoryJobStore
) -> None:
    first = await uploads.accept("coupons", KNOWN_SERIES, GOOD, NOT_TAGGED)
    assert isinstance(first, Accepted)
    assert not first.duplicate
    assert first.job.job_id is not None
    assert first.job.status == "queued"
    assert first.job.counts.rows == 2  # the pre-flight count, until the upstream counts
    assert [u[2] for u in admin.uploads] == [GOOD.data]
    record = await jobs.load(first.job.job_id)
    assert record is not None
    assert record.upstream_job_id == first.job.upstream_job_id

    again = await uploads.accept("coupons", KNOWN_SERIES, Received(GOOD.data, "renamed.csv"), NOT_TAGGED)
    assert isinstance(again, Accepted)
    assert again.duplicate
    assert again.report is None
    assert again.job.job_id == first.job.job_id
    assert len(admin.uploads) == 1


async def test_other_options_or_another_series_are_another_upload(uploads: Uploads, admin: FakeAdmin) -> None:
    await uploads.accept("coupons", KNOWN_SERIES, GOOD, NOT_TAGGED)
    mobile = UploadRequest(CouponRules("MOBILE"))
    assert content_key_of("coupons", KNOWN_SERIES, mobile, GOOD.sha256) != content_key_of(
        "coupons", KNOWN_SERIES, NOT_TAGGED, GOOD.sha256
    )
    other = await uploads.accept("coupons", KNOWN_SERIES + 1, GOOD, NOT_TAGGED)
    assert isinstance(other, Accepted)
    assert not other.duplicate
    assert len(admin.uploads) == 2


async def test_a_file_with_problems_is_refused_and_nothing_sent(
    uploads: Uploads, admin: FakeAdmin, jobs: MemoryJobStore
) -> None:
    bad = Received(b"code\nUNIT-1\nUNIT-1\n")
    refused = await uploads.accept("coupons", KNOWN_SERIES, bad, NOT_TAGGED)
    assert isinstance(refused, Checked)
    assert not refused.dry_run
    assert not refused.report.valid
    assert refused.report.errors[0].row == 3
    assert admin.uploads == []
    # the claim was released: the same file is checked (and refused) again, not answered as in flight
    key = content_key_of("coupons", KNOWN_SERIES, NOT_TAGGED, bad.sha256)
    assert await jobs.claim(key, "upl_probe", 60) is None


async def test_a_dry_run_checks_and_claims_nothing(uploads: Uploads, admin: FakeAdmin) -> None:
    dry_run = UploadRequest(CouponRules("NOT_TAGGED"), dry_run=True)
    checked = await uploads.accept("coupons", KNOWN_SERIES, GOOD, dry_run)
    assert isinstance(checked, Checked)
    assert checked.dry_run
    assert checked.report.valid
    sent = await uploads.accept("coupons", KNOWN_SERIES, GOOD, NOT_TAGGED)
    assert isinstance(sent, Accepted)
    assert not sent.duplicate


def test_an_oversized_file_is_refused_unread(uploads: Uploads) -> None:
    uploads.limits = Limits(max_bytes=10)
    refused = uploads.oversized(GOOD)
    assert not refused.dry_run
    assert not refused.report.complete
    assert refused.report.errors[0].reason == "the file is larger than 10 bytes"


async def test_an_upload_without_an_answer_stays_a_duplicate(uploads: Uploads, admin: FakeAdmin) -> None:
    admin.fail = UpstreamFailure(Failure(CATALOG["UPSTREAM_TIMEOUT"]), maybe_applied=True)
    with pytest.raises(UpstreamFailure):
        await uploads.accept("coupons", KNOWN_SERIES, GOOD, NOT_TAGGED)
    with pytest.raises(BackOfficeError) as caught:
        await uploads.accept("coupons", KNOWN_SERIES, GOOD, NOT_TAGGED)
    assert caught.value.error.code == "REQUEST_IN_PROGRESS"
    assert caught.value.retry_after == 1
    assert admin.uploads == []


async def test_a_refused_upload_may_be_sent_again(uploads: Uploads, admin: FakeAdmin) -> None:
    admin.fail = UpstreamFailure(Failure(CATALOG["UPSTREAM_ERROR"], 500, "boom"))
    with pytest.raises(UpstreamFailure):
        await uploads.accept("coupons", KNOWN_SERIES, GOOD, NOT_TAGGED)
    sent = await uploads.accept("coupons", KNOWN_SERIES, GOOD, NOT_TAGGED)
    assert isinstance(sent, Accepted)
    assert not sent.duplicate
    assert len(admin.uploads) == 1


async def test_uploads_pause_when_the_job_store_is_down(admin: FakeAdmin) -> None:
    class Down(MemoryJobStore):
        async def claim(self, content_key: str, job_id: str, ttl: float) -> str | None:
            raise JobStoreUnavailable("down")

    uploads = Uploads(admin, FakeSeries(), Down())
    with pytest.raises(BackOfficeError) as caught:
        await uploads.accept("coupons", KNOWN_SERIES, GOOD, NOT_TAGGED)
    assert caught.value.error.code == "STATE_STORE_UNAVAILABLE"
    assert admin.uploads == []


# ---- before a byte is read


async def test_ready_answers_the_upload_hosts_cool_down(uploads: Uploads, admin: FakeAdmin) -> None:
    admin.cool_down = 2.2
    with pytest.raises(UpstreamFailure) as caught:
        await uploads.ready("coupons", KNOWN_SERIES)
    assert caught.value.failure.error.code == "UPSTREAM_UNAVAILABLE"
    assert caught.value.retry_after == 3  # whole seconds, rounded up
    admin.cool_down = 0.01
    with pytest.raises(UpstreamFailure) as soon:
        await uploads.ready("coupons", KNOWN_SERIES)
    assert soon.value.retry_after == 1


async def test_ready_asks_the_series_once_the_host_takes_calls(uploads: Uploads, admin: FakeAdmin) -> None:
    await uploads.ready("coupons", KNOWN_SERIES)
    with pytest.raises(BackOfficeError) as caught:
        await uploads.ready("coupons", KNOWN_SERIES + 1)
    assert caught.value.error.code == "SERIES_NOT_FOUND"
    admin.configured = False
    with pytest.raises(BackOfficeError) as unconfigured:
        await uploads.ready("coupons", KNOWN_SERIES)
    assert "upload_coupons" in unconfigured.value.message


async def test_a_failed_series_lookup_keeps_its_retry_after(admin: FakeAdmin, jobs: MemoryJobStore) -> None:
    series = FakeSeries()
    series.failure = UpstreamFailure(Failure(CATALOG["UPSTREAM_UNAVAILABLE"]), retry_after=4)
    with pytest.raises(UpstreamFailure) as caught:
        await Uploads(admin, series, jobs).ready("coupons", KNOWN_SERIES)
    assert caught.value.retry_after == 4


# ---- jobs


async def test_jobs_are_listed_newest_first_with_the_gateways_ids(uploads: Uploads, admin: FakeAdmin) -> None:
    sent = await uploads.accept("coupons", KNOWN_SERIES, GOOD, NOT_TAGGED)
    assert isinstance(sent, Accepted)
    admin.listed[("coupons", KNOWN_SERIES)].append(upstream_job("coupons", KNOWN_SERIES, 900, "COMPLETED", rows=7))
    listed = await uploads.jobs_of("coupons", KNOWN_SERIES)
    assert [(j.upstream_job_id, j.job_id, j.status) for j in listed] == [
        (900, None, "finished"),
        (sent.job.upstream_job_id, sent.job.job_id, "queued"),
    ]
    assert listed[0].counts.rows == 7


async def test_a_job_is_found_by_its_id_and_only_under_its_kind_and_series(uploads: Uploads) -> None:
    sent = await uploads.accept("coupons", KNOWN_SERIES, GOOD, NOT_TAGGED)
    assert isinstance(sent, Accepted)
    assert sent.job.job_id is not None
    assert (await uploads.job(sent.job.job_id)).job_id == sent.job.job_id
    assert (await uploads.job(sent.job.job_id, "coupons", KNOWN_SERIES)).kind == "coupons"
    for kind, series_id in (("redemptions", KNOWN_SERIES), ("coupons", KNOWN_SERIES + 1)):
        with pytest.raises(BackOfficeError) as caught:
            await uploads.job(sent.job.job_id, kind, series_id)  # type: ignore[arg-type]
        assert caught.value.error.code == "UPLOAD_JOB_NOT_FOUND"


@pytest.mark.parametrize(
    ("status", "rows", "shown", "counted"),
    [
        ("QUEUED", 0, "queued", 12),  # not counted upstream yet: the pre-flight count
        ("In Progress", 0, "running", 12),
        ("COMPLETED", 0, "finished", 0),  # final: the upstream's count, even zero
        ("ABORTED", 3, "failed", 3),
        ("SOMETHING NEW", 5, "running", 5),  # an unknown word is not final
        (None, 0, "queued", 12),
    ],
)
def test_a_jobs_status_and_rows_in_the_gateways_words(status: str | None, rows: int, shown: str, counted: int) -> None:
    record = JobRecord(
        job_id="upl_1",
        kind="coupons",
        series_id=KNOWN_SERIES,
        upstream_job_id=77,
        file_name="mine.csv",
        upstream_file_name="theirs.csv",
        sha256="0" * 64,
        bytes=10,
        rows=12,
        created_at=0.0,
    )
    job = merge("coupons", KNOWN_SERIES, upstream_job("coupons", KNOWN_SERIES, 77, status, rows=rows), record)
    assert (job.job_id, job.status, job.upstream_status, job.counts.rows) == ("upl_1", shown, status, counted)
    assert job.file_name == "mine.csv"
    assert job.upstream_file_name == "file-77.csv"
    unseen = merge("coupons", KNOWN_SERIES, None, record)
    assert (unseen.status, unseen.upstream_job_id, unseen.counts.rows) == ("queued", 77, 12)
    assert unseen.upstream_file_name == "theirs.csv"
