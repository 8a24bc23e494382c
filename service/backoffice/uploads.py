"""The back office's upload use cases: accept a CSV (once), and tell how its job is doing.

Accepting a file, in order: the same file for the same series with the same options is claimed (a second sender
gets the job made the first time), the pre-flight checks read it (a file with problems is refused and nothing is
sent), it goes upstream within its own time limit, and its job is recorded. A file that got no answer after it
went out may have been taken: it stays claimed for the whole window rather than risk loading it twice.

Pure over three ports: the upstream (:class:`~service.backoffice.ports.CouponAdmin`), the series it knows
(:class:`~service.backoffice.ports.SeriesReader`) and the job store (:class:`~service.backoffice.jobs.JobStore`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from typing import IO, Any, Final, Protocol

import msgspec
import structlog

from service.backoffice.errors import BackOfficeError
from service.backoffice.jobs import (
    DUPLICATE_WINDOW,
    JOB_TTL,
    JobRecord,
    JobStore,
    JobStoreUnavailable,
    UploadKind,
    new_job_id,
)
from service.backoffice.models import (
    Accepted,
    Checked,
    JobView,
    Uploaded,
    UploadOutcome,
    UploadRequest,
)
from service.backoffice.ports import CouponAdmin, SeriesReader
from service.backoffice.preflight import Limits, Report, RowError, check_csv
from service.redemption.catalog import CATALOG
from service.redemption.flow import UpstreamFailure
from service.redemption.models import Failure

#: An upload of a large file may take much longer than an ordinary call.
UPLOAD_TIMEOUT: Final = 300.0
#: How long to wait before asking again about a file whose upload is in flight, or was never answered.
IN_FLIGHT_RETRY: Final = 1

log = structlog.get_logger("service.backoffice")


class Spooled(Protocol):
    """A received file, kept where it can be read more than once: its size, digest and name."""

    @property
    def size(self) -> int: ...

    @property
    def sha256(self) -> str: ...

    @property
    def file_name(self) -> str: ...

    def rewind(self) -> IO[bytes]:
        """The file, from its first byte."""


class Uploads:
    """Uploads and their jobs. ``limits`` and ``duplicate_window`` may be replaced at run time."""

    def __init__(
        self,
        admin: CouponAdmin,
        series: SeriesReader,
        jobs: JobStore,
        *,
        limits: Limits | None = None,
        duplicate_window: float = DUPLICATE_WINDOW,
    ) -> None:
        self._admin = admin
        self._series = series
        self._jobs = jobs
        self.limits = limits or Limits()
        self.duplicate_window = duplicate_window

    # ------------------------------------------------------------------------------------------ accepting

    async def ready(self, kind: UploadKind, series_id: int) -> None:
        """Whether a file for this series may be sent at all, asked before a byte of it is read: uploads
        configured, the upload host taking calls (else the time until it does), the series known."""
        self._admin.require_uploads(kind)
        wait = self._admin.upload_retry_after()
        if wait > 0:
            error = CATALOG["UPSTREAM_UNAVAILABLE"]
            raise UpstreamFailure(Failure(error), retry_after=max(1, math.ceil(wait)))
        await self.known_series(series_id)

    def oversized(self, file: Spooled) -> Checked:
        """A file larger than the limit: refused with a report saying so, without reading it."""
        report = Report(bytes=file.size, complete=False, error_count=1)
        report.errors.append(RowError(None, None, f"the file is larger than {self.limits.max_bytes} bytes"))
        return Checked(report, file.sha256, dry_run=False)

    async def accept(self, kind: UploadKind, series_id: int, file: Spooled, request: UploadRequest) -> UploadOutcome:
        """Check the file and, unless it is a dry run, send it once."""
        job_id = new_job_id()
        content_key = ""
        if not request.dry_run:
            content_key = content_key_of(kind, series_id, request, file.sha256)
            # Held only while the upload is in flight (a crash must not block the file for the whole window)...
            held = await self._claim(content_key, job_id, min(self.duplicate_window, UPLOAD_TIMEOUT + 60))
            if held is not None:
                return await self._duplicate(kind, series_id, held, file.sha256)
        try:
            report = await asyncio.to_thread(check_csv, file.rewind(), request.rules, self.limits, file.size)
            structlog.contextvars.bind_contextvars(upload_rows=report.rows, upload_errors=report.error_count)
            if request.dry_run:
                return Checked(report, file.sha256, dry_run=True)
            if not report.valid:
                await self._release(content_key, job_id)
                return Checked(report, file.sha256, dry_run=False)
            reply = await self._admin.upload(kind, series_id, file.rewind(), file.file_name, request, report)
        except UpstreamFailure as exc:
            if exc.maybe_applied:
                # No answer, but the upstream may have taken the file: the same file stays refused for the whole
                # window rather than risk loading it twice; the series' job list tells whether it went in.
                await self._keep(content_key, job_id)
            else:
                await self._release(content_key, job_id)
            raise
        except BaseException:
            await self._release(content_key, job_id)
            raise
        record = _record(job_id, kind, series_id, file, request, report, reply)
        await self._keep(content_key, job_id)  # ...then for the whole window, first: it guards the upload
        try:
            await self._jobs.save(record, JOB_TTL)
        except JobStoreUnavailable:
            log.warning("upload_job_not_recorded", job_id=job_id)
        structlog.contextvars.bind_contextvars(upload_job=job_id, upstream_job=record.upstream_job_id)
        job = merge(kind, series_id, _new_upstream_job(reply), record)
        return Accepted(job, report, file.sha256, duplicate=False)

    async def _duplicate(self, kind: UploadKind, series_id: int, job_id: str, sha256: str) -> Accepted:
        record = await self._load(job_id)
        if record is None:
            raise BackOfficeError(
                CATALOG["REQUEST_IN_PROGRESS"],
                "The same file is being uploaded right now, or its last upload got no answer and may have gone"
                " through: check the series' upload jobs before sending it again.",
                retry_after=IN_FLIGHT_RETRY,
            )
        upstream = await self._upstream_job(record.kind, record.series_id, record.upstream_job_id)
        structlog.contextvars.bind_contextvars(upload_job=job_id, duplicate=True)
        return Accepted(merge(kind, series_id, upstream, record), None, sha256, duplicate=True)

    async def _claim(self, content_key: str, job_id: str, ttl: float) -> str | None:
        try:
            return await self._jobs.claim(content_key, job_id, ttl)
        except JobStoreUnavailable:
            error = CATALOG["STATE_STORE_UNAVAILABLE"]
            raise BackOfficeError(error, "Uploads are paused: the gateway cannot record their jobs.") from None

    async def _keep(self, content_key: str, job_id: str) -> None:
        if content_key:
            try:
                await self._jobs.keep(content_key, job_id, self.duplicate_window)
            except JobStoreUnavailable:
                log.warning("upload_fingerprint_not_kept", job_id=job_id)

    async def _release(self, content_key: str, job_id: str) -> None:
        if content_key:
            try:
                await self._jobs.release(content_key, job_id)
            except JobStoreUnavailable:
                log.warning("upload_fingerprint_not_released", job_id=job_id)

    # ------------------------------------------------------------------------------------------ jobs

    async def known_series(self, series_id: int) -> None:
        """Refused (404) for a series the upstream does not know, asked of the series lookup (and its cache)."""
        if await self._series.get(series_id) is None:
            raise BackOfficeError(CATALOG["SERIES_NOT_FOUND"])

    async def jobs_of(self, kind: UploadKind, series_id: int) -> list[JobView]:
        """The series' jobs of this kind, newest first, with the gateway's id where the gateway made them."""
        await self.known_series(series_id)
        upstream = await self._admin.jobs(kind, series_id)
        try:
            ours = await self._jobs.of_series(kind, series_id)
        except JobStoreUnavailable:
            ours = {}
        newest_first = sorted(upstream, key=_upstream_id, reverse=True)
        return [merge(kind, series_id, job, None, ours.get(_upstream_id(job))) for job in newest_first]

    async def job(self, job_id: str, kind: UploadKind | None = None, series_id: int | None = None) -> JobView:
        """A job the gateway made, by its id; when ``kind`` and ``series_id`` are given, it must be of them."""
        record = await self._load(job_id)
        if record is None or (kind is not None and (record.kind, record.series_id) != (kind, series_id)):
            raise BackOfficeError(CATALOG["UPLOAD_JOB_NOT_FOUND"])
        upstream = await self._upstream_job(record.kind, record.series_id, record.upstream_job_id)
        return merge(record.kind, record.series_id, upstream, record)

    async def _load(self, job_id: str) -> JobRecord | None:
        try:
            return await self._jobs.load(job_id)
        except JobStoreUnavailable:
            error = CATALOG["STATE_STORE_UNAVAILABLE"]
            raise BackOfficeError(error, "The gateway cannot read its upload jobs.") from None

    async def _upstream_job(self, kind: UploadKind, series_id: int, upstream_job_id: int | None) -> JobView | None:
        if upstream_job_id is None:
            return None
        return next((j for j in await self._admin.jobs(kind, series_id) if j.upstream_job_id == upstream_job_id), None)


def content_key_of(kind: UploadKind, series_id: int, request: UploadRequest, sha256: str) -> str:
    """What makes two uploads the same: kind, series, options and the file's bytes."""
    options: dict[str, Any] = {"rules": repr(request.rules), "details": request.details}
    canonical = json.dumps([kind, series_id, options, sha256], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def merge(
    kind: UploadKind, series_id: int, upstream: JobView | None, record: JobRecord | None, job_id: str | None = None
) -> JobView:
    """A job in the gateway's words: the upstream's state when it is known, the gateway's record otherwise."""
    said = upstream or JobView.queued(kind, series_id)
    view = msgspec.structs.replace(said, job_id=record.job_id if record else job_id, kind=kind, series_id=series_id)
    if record is None:
        return view
    counts = view.counts
    if view.status in ("queued", "running") and not counts.rows:
        counts = msgspec.structs.replace(counts, rows=record.rows)  # counted by the pre-flight checks until then
    return msgspec.structs.replace(
        view,
        counts=counts,
        upstream_job_id=record.upstream_job_id if view.upstream_job_id is None else view.upstream_job_id,
        file_name=view.file_name or record.file_name,
        upstream_file_name=view.upstream_file_name or record.upstream_file_name,
    )


def _upstream_id(job: JobView) -> int:
    return job.upstream_job_id or 0


def _new_upstream_job(reply: Uploaded) -> JobView | None:
    """The job an upload just made: the one named by the reply's file name, else the newest."""
    if not reply.jobs:
        return None
    named = [j for j in reply.jobs if reply.file_name and j.upstream_file_name == reply.file_name]
    return max(named or reply.jobs, key=_upstream_id)


def _record(
    job_id: str,
    kind: UploadKind,
    series_id: int,
    file: Spooled,
    request: UploadRequest,
    report: Report,
    reply: Uploaded,
) -> JobRecord:
    upstream = _new_upstream_job(reply)
    return JobRecord(
        job_id=job_id,
        kind=kind,
        series_id=series_id,
        upstream_job_id=upstream.upstream_job_id if upstream else None,
        file_name=file.file_name,
        upstream_file_name=reply.file_name or (upstream.upstream_file_name if upstream else None),
        sha256=file.sha256,
        bytes=file.size,
        rows=report.rows,
        created_at=time.time(),
        options={"rules": repr(request.rules), "details": request.details},
    )
