"""The back office's wire models: inbound bodies (strict, camelCase, upstream field names) and the answers.

Shared by the gateway's handlers and by its own client (``service.client``), so the two cannot drift.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

import msgspec

from service.backoffice.jobs import JobStatus, UploadKind
from service.web.errors import ErrorDetail
from service.web.schemas import CustomerIn, Inbound

MAX_SERIES_PER_BULK_ISSUE = 20
MAX_LOOKUPS = 50

SeriesId = Annotated[int, msgspec.Meta(ge=1)]
Source = Annotated[str, msgspec.Meta(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_]+$")]


class IssueIn(Inbound):
    series_id: SeriesId
    customer: CustomerIn


class BulkIssueIn(Inbound):
    series_ids: Annotated[list[SeriesId], msgspec.Meta(min_length=1, max_length=MAX_SERIES_PER_BULK_ISSUE)]
    customer: CustomerIn
    source: Source | None = None


class Outbound(msgspec.Struct, rename="camel", kw_only=True):
    pass


class CouponOut(Outbound):
    code: str | None
    id: int | None
    series_id: int | None
    customer_id: int | None
    description: str | None
    valid_till: str | None
    discount_type: str | None
    discount_value: Decimal | None
    discount_upto: Decimal | None
    redemption_count: int | None


class BulkIssuedOut(Outbound):
    series_id: int
    coupon: CouponOut | None
    error: ErrorDetail | None


class BulkIssueOut(Outbound):
    results: list[BulkIssuedOut]
    issued: int
    failed: int


class LookupErrorOut(ErrorDetail, frozen=True, omit_defaults=True):
    """One value of a lookup that found nothing: the error, and which value it was when the answer tells."""

    coupon_code: str | None = None
    coupon_id: int | None = None
    customer_id: int | None = None


class CouponsOut(Outbound):
    coupons: list[CouponOut]
    errors: list[LookupErrorOut]


# ------------------------------------------------------------------------------------------------- uploads


class RowErrorOut(Outbound):
    row: int | None
    column: str | None
    reason: str


class ReportOut(Outbound):
    """The pre-flight report of a CSV: ``errors`` lists the first problems, ``errorCount`` counts them all."""

    valid: bool
    complete: bool
    bytes: int
    sha256: str
    rows: int
    header: list[str]
    error_count: int
    errors: list[RowErrorOut]


class JobCounts(Outbound):
    rows: int
    uploaded: int
    errors: int


class JobOut(Outbound):
    """An upload job, normalised. ``jobId`` is the gateway's id (None for a job the gateway did not upload)."""

    job_id: str | None
    kind: UploadKind
    series_id: int
    status: JobStatus
    upstream_status: str | None
    upstream_job_id: int | None
    counts: JobCounts
    file_name: str | None
    upstream_file_name: str | None
    error_file_name: str | None
    success_file_name: str | None
    created_at: datetime | None
    updated_at: datetime | None


class UploadAcceptedOut(Outbound):
    job: JobOut
    report: ReportOut | None
    duplicate: bool


class DryRunOut(Outbound):
    dry_run: Literal[True]
    report: ReportOut


class JobsOut(Outbound):
    jobs: list[JobOut]


class InvalidUploadOut(Outbound):
    """``400 INVALID_UPLOAD``: the error envelope, and the report beside it."""

    error: ErrorDetail
    report: ReportOut


def json_schema_components() -> dict[str, Any]:
    """The schemas of every back-office model (for checking openapi.yaml)."""
    models = (IssueIn, BulkIssueIn, CouponOut, BulkIssueOut, CouponsOut, ReportOut, JobOut, UploadAcceptedOut)
    _, components = msgspec.json.schema_components([*models, DryRunOut, JobsOut, InvalidUploadOut])
    return components
