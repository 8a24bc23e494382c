"""The back office's wire models: inbound bodies (strict, camelCase, upstream field names) and the answers.

Inbound structs refuse unknown fields and declare the bounds a type can say (``msgspec.Meta``); the use cases'
remaining rules live with them (``service.backoffice``). Outbound structs that show a domain value as it is
subclass it with camelCase names. Shared by the gateway's handlers and by its own client (``service.client``), so
the two cannot drift.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from service.backoffice.models import Coupon, JobView, SeriesDraft
from service.backoffice.models import JobCounts as JobCounts  # shown as they are
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


class SeriesIn(SeriesDraft, forbid_unknown_fields=True):
    """``POST /v1/series``: the upstream's ``CouponSeriesV2`` fields, by the upstream's names; no other."""


class Outbound(msgspec.Struct, rename="camel", kw_only=True):
    pass


class CouponOut(Coupon):
    """A coupon, as the back office shows it."""


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


class JobOut(JobView):
    """An upload job, normalised. ``jobId`` is the gateway's id (None for a job the gateway did not upload)."""


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
    models = (IssueIn, BulkIssueIn, SeriesIn, CouponOut, BulkIssueOut, CouponsOut, ReportOut, JobOut, UploadAcceptedOut)
    _, components = msgspec.json.schema_components([*models, DryRunOut, JobsOut, InvalidUploadOut])
    return components
