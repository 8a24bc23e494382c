"""A fake of the back office's upstream port, and a received file in memory, for the use cases' unit tests."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO

from service.backoffice.errors import BackOfficeError
from service.backoffice.jobs import UploadKind, normalise
from service.backoffice.models import (
    Coupon,
    Details,
    Issued,
    JobCounts,
    JobView,
    Lookup,
    SeriesDraft,
    Uploaded,
    UploadRequest,
)
from service.backoffice.preflight import Report
from service.redemption.catalog import CATALOG
from service.redemption.flow import UpstreamFailure
from service.redemption.models import CustomerRef, SeriesSummary

KNOWN_SERIES = 10001


def upstream_job(kind: UploadKind, series_id: int, job_id: int, status: str | None, rows: int = 0) -> JobView:
    """A job as the upstream lists it: no gateway id."""
    return JobView(
        job_id=None,
        kind=kind,
        series_id=series_id,
        status=normalise(status),
        upstream_status=status,
        upstream_job_id=job_id,
        counts=JobCounts(rows=rows, uploaded=0, errors=0),
        file_name=None,
        upstream_file_name=f"file-{job_id}.csv",
        error_file_name=None,
        success_file_name=None,
        created_at=None,
        updated_at=None,
    )


def coupon(code: str, *, id: int = 1, owner: int | None = None) -> Coupon:
    return Coupon(
        code=code,
        id=id,
        series_id=KNOWN_SERIES,
        customer_id=owner,
        description=None,
        valid_till=None,
        discount_type=None,
        discount_value=None,
        discount_upto=None,
        redemption_count=None,
    )


@dataclass
class FakeAdmin:
    """The upstream's back office in memory: every upload makes a job; ``fail`` is raised by the next upload."""

    cool_down: float = 0.0
    configured: bool = True
    fail: UpstreamFailure | None = None
    uploads: list[tuple[UploadKind, int, bytes, UploadRequest]] = field(default_factory=list)
    listed: dict[tuple[UploadKind, int], list[JobView]] = field(default_factory=dict)
    details_answer: Details = field(default_factory=lambda: Details([], []))
    issued: list[Issued] = field(default_factory=list)
    drafts: list[SeriesDraft] = field(default_factory=list)

    def require_uploads(self, kind: UploadKind) -> None:
        if not self.configured:
            raise BackOfficeError(CATALOG["UPSTREAM_UNAVAILABLE"], f"upload_{kind}: set the OAuth credentials")

    def upload_retry_after(self) -> float:
        return self.cool_down

    async def issue(self, series_id: int, customer: CustomerRef) -> Coupon:
        return coupon(f"ISSUED-{series_id}")

    async def bulk_issue(self, series_ids: Sequence[int], customer: CustomerRef, source: str | None) -> list[Issued]:
        return self.issued

    async def details(self, lookup: Lookup) -> Details:
        return self.details_answer

    async def create_series(self, draft: SeriesDraft) -> SeriesSummary:
        self.drafts.append(draft)
        return SeriesSummary(id=20001, description=draft.description)

    async def upload(
        self, kind: UploadKind, series_id: int, file: IO[bytes], file_name: str, request: UploadRequest, report: Report
    ) -> Uploaded:
        if self.fail is not None:
            failure, self.fail = self.fail, None
            raise failure
        self.uploads.append((kind, series_id, file.read(), request))
        jobs = self.listed.setdefault((kind, series_id), [])
        job = upstream_job(kind, series_id, 500 + len(self.uploads), "QUEUED")
        jobs.append(job)
        return Uploaded(job.upstream_file_name, list(jobs))

    async def jobs(self, kind: UploadKind, series_id: int) -> list[JobView]:
        return list(self.listed.get((kind, series_id), []))


class FakeSeries:
    """One series known: ``KNOWN_SERIES``; ``failure`` is raised when set (the upstream cannot say)."""

    def __init__(self) -> None:
        self.failure: UpstreamFailure | None = None

    async def get(self, series_id: int) -> SeriesSummary | None:
        if self.failure is not None:
            raise self.failure
        return SeriesSummary(id=series_id) if series_id == KNOWN_SERIES else None


class Received:
    """A received file, in memory."""

    def __init__(self, data: bytes, file_name: str = "coupons.csv") -> None:
        self.data = data
        self.file_name = file_name

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def rewind(self) -> IO[bytes]:
        return io.BytesIO(self.data)
