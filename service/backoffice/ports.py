"""The back office's ports: the coupon upstream's administrative side, and the series it knows.

The upload jobs' store is the third port (:class:`service.backoffice.jobs.JobStore`). Adapters raise
:class:`~service.redemption.flow.UpstreamFailure` when the upstream fails (``maybe_applied`` only where it may have
acted on a request it gave no answer to) and :class:`~service.backoffice.errors.BackOfficeError` for anything else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import IO, Protocol

from service.backoffice.jobs import UploadKind
from service.backoffice.models import Coupon, Details, Issued, JobView, Lookup, SeriesDraft, Uploaded, UploadRequest
from service.backoffice.preflight import Report
from service.redemption.models import CustomerRef, SeriesSummary


class CouponAdmin(Protocol):
    """The upstream's back office: issue coupons, look them up, create series, take CSV uploads and list their
    jobs."""

    def require_uploads(self, kind: UploadKind) -> None:
        """Raise ``BackOfficeError`` naming the settings uploads need, when they are missing."""

    def upload_retry_after(self) -> float:
        """Seconds until the upload host takes a call again (its circuit breaker's cool-down); 0: now."""

    async def issue(self, series_id: int, customer: CustomerRef) -> Coupon: ...

    async def bulk_issue(self, series_ids: Sequence[int], customer: CustomerRef, source: str | None) -> list[Issued]:
        """One result per series, in the order asked."""

    async def details(self, lookup: Lookup) -> Details: ...

    async def create_series(self, draft: SeriesDraft) -> SeriesSummary: ...

    async def upload(
        self, kind: UploadKind, series_id: int, file: IO[bytes], file_name: str, request: UploadRequest, report: Report
    ) -> Uploaded:
        """Send a checked file (``report`` holds its resolved columns). ``UpstreamFailure`` with ``maybe_applied``
        when it went out and no answer came back: the upstream may have taken it."""

    async def jobs(self, kind: UploadKind, series_id: int) -> list[JobView]:
        """The series' upload jobs of this kind, as the upstream lists them."""


class SeriesReader(Protocol):
    async def get(self, series_id: int) -> SeriesSummary | None:
        """One series, None when the upstream does not know it. Raises ``UpstreamFailure`` when it cannot say."""
