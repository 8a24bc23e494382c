"""The back office's upstream port (:class:`~service.backoffice.ports.CouponAdmin`) over the Capillary client.

Where Capillary's back-office answers become domain values: coupons and their owners, per-series issue results
with their status codes mapped onto the local catalog, upload jobs with their status in the gateway's four words;
and where its failures become :class:`~service.redemption.flow.UpstreamFailure` (or a ``BackOfficeError`` naming
the settings a call lacks).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import IO, Any, Final

import msgspec

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
from service.backoffice.preflight import CouponRules, Report
from service.backoffice.uploads import UPLOAD_TIMEOUT
from service.capillary import codes
from service.capillary.client import CapillaryClient
from service.capillary.coupons import customer_of, upstream_failure
from service.capillary.errors import (
    CapillaryConnectionError,
    CapillaryError,
    CapillaryNotConfigured,
    CapillaryTimeoutError,
)
from service.capillary.models import Coupon as UpstreamCoupon
from service.capillary.models import SeriesSpec, UploadJob, UploadResponse
from service.capillary.series import summarize
from service.redemption.catalog import CATALOG
from service.redemption.flow import UpstreamFailure
from service.redemption.models import CustomerRef, Failure, SeriesSummary
from service.text import digits

#: The fields of a coupon the upstream names as the back office does.
_COUPON_FIELDS: Final = tuple(f.name for f in msgspec.structs.fields(Coupon) if f.name != "customer_id")
#: The back office's names of an upload job's fields, and the upstream's.
_JOB_FIELDS: Final = {
    "upstream_status": "status",
    "upstream_job_id": "job_id",
    "file_name": "uploaded_file_name",
    "upstream_file_name": "uploaded_file_url",
    "error_file_name": "error_file_url",
    "success_file_name": "success_file_url",
}


class CapillaryAdmin:
    """:class:`~service.backoffice.ports.CouponAdmin` over a :class:`CapillaryClient`. ``upload_timeout`` bounds
    a file's upload instead of the till's request budget: a large file takes longer."""

    def __init__(self, client: CapillaryClient, *, upload_timeout: float = UPLOAD_TIMEOUT) -> None:
        self._client = client
        self._upload_timeout = upload_timeout

    def require_uploads(self, kind: UploadKind) -> None:
        with domain_errors():
            self._client.require_uploads(f"upload_{kind}")

    def upload_retry_after(self) -> float:
        # The upload host's breaker is the client's last (the only one when both hosts are the same).
        return self._client.upload_retry_after()

    async def issue(self, series_id: int, customer: CustomerRef) -> Coupon:
        with domain_errors():
            return coupon_of(await self._client.issue(series_id, customer_of(customer)))

    async def bulk_issue(self, series_ids: Sequence[int], customer: CustomerRef, source: str | None) -> list[Issued]:
        with domain_errors():
            reply = await self._client.bulk_issue(series_ids, customer_of(customer), source=source)
        results: list[Issued] = []
        for index, entry in enumerate(reply.response):
            series_id = entry.entity_id or (series_ids[index] if index < len(series_ids) else 0)
            if entry.errors or entry.result is None or not entry.result.code:
                problem = entry.errors[0] if entry.errors else None
                code = problem.code if problem else None
                error = codes.for_code(code) if code is not None else CATALOG["COUPON_ISSUE_FAILED"]
                failure = Failure(error, code, problem.message if problem else None)
                results.append(Issued(series_id, None, failure))
            else:
                results.append(Issued(series_id, coupon_of(entry.result), None))
        return results

    async def details(self, lookup: Lookup) -> Details:
        with domain_errors():
            try:
                reply = await self._client.coupon_details(
                    codes=lookup.codes, ids=lookup.ids, customer_ids=lookup.customer_ids
                )
            except ValueError as exc:
                raise BackOfficeError.invalid(str(exc)) from None
        failures = [Failure(codes.for_code(e.code), e.code, e.message) for e in reply.errors]
        return Details([coupon_of(c) for c in reply.data], failures)

    async def create_series(self, draft: SeriesDraft) -> SeriesSummary:
        spec = msgspec.convert(draft, SeriesSpec, from_attributes=True)
        with domain_errors():
            return summarize(await self._client.create_series(spec))

    async def upload(
        self, kind: UploadKind, series_id: int, file: IO[bytes], file_name: str, request: UploadRequest, report: Report
    ) -> Uploaded:
        rules = request.rules
        # A large file takes longer than a till's request budget: no deadline, the upload's own timeout bounds it.
        with domain_errors(upload=True):
            reply: UploadResponse
            if isinstance(rules, CouponRules):
                reply = await self._client.upload_coupons(
                    series_id,
                    file,
                    identifier_type=rules.identifier_type,
                    identifier_column=report.columns.get("identifier"),
                    filename=file_name,
                    timeout=self._upload_timeout,
                    deadline=math.inf,
                )
            else:
                reply = await self._client.upload_redeemed_coupons(
                    series_id,
                    file,
                    customer_identifier=rules.customer_identifier,
                    coupon_identifier=rules.coupon_identifier,
                    upload_headers={k: v for k, v in report.columns.items() if k in rules.upload_headers},
                    details=request.details,
                    filename=file_name,
                    timeout=self._upload_timeout,
                    deadline=math.inf,
                )
        return _uploaded(kind, series_id, reply)

    async def jobs(self, kind: UploadKind, series_id: int) -> list[JobView]:
        with domain_errors():
            if kind == "coupons":
                reply = await self._client.upload_status(series_id)
            else:
                reply = await self._client.redeemed_upload_status(series_id)
        return _uploaded(kind, series_id, reply).jobs


@contextlib.contextmanager
def domain_errors(*, upload: bool = False) -> Iterator[None]:
    """Capillary's failures in the domain's words. For an upload, only a timeout or a dropped connection after the
    file went out may have been taken; an error status means it was refused."""
    try:
        yield
    except CapillaryNotConfigured as exc:  # a missing setting: say which
        raise BackOfficeError(CATALOG["UPSTREAM_UNAVAILABLE"], exc.args[0]) from None
    except CapillaryError as exc:
        failure = upstream_failure(exc)
        if upload and not isinstance(exc, CapillaryTimeoutError | CapillaryConnectionError):
            failure = UpstreamFailure(failure.failure, retry_after=failure.retry_after)
        raise failure from None


def coupon_of(coupon: UpstreamCoupon) -> Coupon:
    """The coupon with its owner's id: coupon details name no owner, and a placeholder id is none."""
    owner = coupon.customer.id if coupon.customer else None
    same: dict[str, Any] = {name: getattr(coupon, name) for name in _COUPON_FIELDS}
    return Coupon(customer_id=owner if owner and owner > 0 else None, **same)


def _uploaded(kind: UploadKind, series_id: int, reply: UploadResponse) -> Uploaded:
    result = reply.result
    jobs = [job_of(kind, series_id, job) for job in (result.jobs if result else [])]
    return Uploaded(result.file_name if result else None, jobs)


def job_of(kind: UploadKind, series_id: int, job: UploadJob) -> JobView:
    """An upstream job in the gateway's words (no gateway job id: the job store knows it)."""
    renamed: dict[str, Any] = {ours: getattr(job, theirs) for ours, theirs in _JOB_FIELDS.items()}
    counts = JobCounts(
        rows=job.actual_row_count or 0, uploaded=job.total_uploaded_count or 0, errors=job.error_count or 0
    )
    return JobView(
        job_id=None,
        kind=kind,
        series_id=series_id,
        status=normalise(job.status),
        counts=counts,
        created_at=_time(job.created_on),
        updated_at=_time(job.updated_on),
        **renamed,
    )


def _time(value: str | int | None) -> datetime | None:
    """Capillary's times: epoch milliseconds, or ISO-8601 text; anything else is no time."""
    text = str(value).strip() if value is not None else ""
    if digits(text):
        return datetime.fromtimestamp(int(text) / 1000, UTC)
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None
