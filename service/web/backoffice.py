"""The back-office routes (``admin`` scope): issue coupons, coupon details, series, CSV uploads and their jobs.

Each handler decodes the request, calls one use case of ``service.backoffice`` and renders its answer; the use
cases' refusals (``BackOfficeError``, ``UpstreamFailure``) become the one error envelope here. Receiving a file
(streamed to disk, its options read) is ``service.web.uploads``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final

import msgspec
from aiohttp import web
from multidict import MultiMapping

from service.backoffice.coupons import CouponOffice
from service.backoffice.errors import BackOfficeError
from service.backoffice.jobs import DUPLICATE_WINDOW, JobStore, UploadKind
from service.backoffice.models import Accepted, Coupon, JobView, Lookup, UploadOutcome
from service.backoffice.ports import CouponAdmin, SeriesReader
from service.backoffice.preflight import MAX_UPLOAD_BYTES, Limits, Report
from service.backoffice.uploads import Uploads
from service.observability.context import bind_fields
from service.redemption.catalog import CATALOG
from service.redemption.flow import UpstreamFailure
from service.redemption.models import CustomerRef
from service.text import digits
from service.web.backoffice_schemas import (
    MAX_LOOKUPS,
    BulkIssuedOut,
    BulkIssueIn,
    BulkIssueOut,
    CouponOut,
    CouponsOut,
    DryRunOut,
    InvalidUploadOut,
    IssueIn,
    JobOut,
    JobsOut,
    LookupErrorOut,
    ReportOut,
    RowErrorOut,
    SeriesIn,
    UploadAcceptedOut,
)
from service.web.errors import (
    REQUEST_ID,
    ApiError,
    detail,
    error_detail,
    json_response,
    series_id_of,
    upstream_detail,
    upstream_error,
)
from service.web.json_keys import refuse_duplicate_keys
from service.web.schemas import CustomerIn, InvalidRequest, series_out
from service.web.schemas import _customer as customer_ref
from service.web.uploads import receive, upload_request
from service.web.validation import describe

__all__ = ["BACKOFFICE", "MAX_UPLOAD_BYTES", "BackOfficeHandlers", "add_routes", "backoffice_handlers"]

_ISSUE: Final = msgspec.json.Decoder(IssueIn)
_BULK_ISSUE: Final = msgspec.json.Decoder(BulkIssueIn)
_SERIES: Final = msgspec.json.Decoder(SeriesIn)
_LOOKUP_KEYS: Final = frozenset({"codes", "ids", "customerIds"})

Handler = Callable[["BackOfficeHandlers", web.Request], Awaitable[web.Response]]


def _speaks_http(handler: Handler) -> Handler:
    """The use cases' refusals as the API's errors."""

    @functools.wraps(handler)
    async def handle(self: BackOfficeHandlers, request: web.Request) -> web.Response:
        with refusals():
            return await handler(self, request)

    return handle


@contextlib.contextmanager
def refusals() -> Iterator[None]:
    """``BackOfficeError`` and ``UpstreamFailure`` raised inside, as ``ApiError``: the catalog entry, Capillary's
    words, and when to try again (the breaker's cool-down when the upstream is shut off)."""
    try:
        yield
    except BackOfficeError as exc:
        said = exc.said
        upstream = upstream_detail(said.upstream_code, said.upstream_message) if said else None
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        raise ApiError(exc.error, exc.message, upstream=upstream, headers=headers) from None
    except UpstreamFailure as exc:
        raise upstream_error(exc) from None


class BackOfficeHandlers:
    """The back-office routes. Registered before the app starts, given their use cases when it does
    (:meth:`bind`): the upstream client and the series catalog open with the app."""

    def __init__(self, *, body_timeout: float = 5.0) -> None:
        self.body_timeout = body_timeout  # the longest pause while a file is received
        self._use_cases: tuple[CouponOffice, Uploads] | None = None

    def bind(self, coupons: CouponOffice, uploads: Uploads) -> None:
        self._use_cases = (coupons, uploads)

    @property
    def coupon_office(self) -> CouponOffice:
        return self._served[0]

    @property
    def uploads(self) -> Uploads:
        return self._served[1]

    @property
    def _served(self) -> tuple[CouponOffice, Uploads]:
        if self._use_cases is None:
            raise RuntimeError("the back office is not bound yet: the app has not started")
        return self._use_cases

    # ---- coupons and series

    @_speaks_http
    async def issue(self, request: web.Request) -> web.Response:
        body: IssueIn = _decode(_ISSUE, await request.read())
        coupon = await self.coupon_office.issue(body.series_id, _customer(body.customer))
        return json_response(201, coupon_out(coupon))

    @_speaks_http
    async def bulk_issue(self, request: web.Request) -> web.Response:
        body: BulkIssueIn = _decode(_BULK_ISSUE, await request.read())
        done = await self.coupon_office.bulk_issue(body.series_ids, _customer(body.customer), body.source)
        request_id = request[REQUEST_ID]
        results = [
            BulkIssuedOut(
                series_id=r.series_id,
                coupon=coupon_out(r.coupon) if r.coupon else None,
                error=detail(r.failure, request_id) if r.failure else None,
            )
            for r in done.results
        ]
        first = done.first_failure
        status = 200 if done.issued or first is None else first.error.http_status
        answer = BulkIssueOut(results=results, issued=done.issued, failed=len(results) - done.issued)
        return json_response(status, answer)

    @_speaks_http
    async def coupons(self, request: web.Request) -> web.Response:
        found = await self.coupon_office.find(_lookup(request.query))
        request_id = request[REQUEST_ID]
        errors = [
            LookupErrorOut(
                **msgspec.structs.asdict(detail(m.failure, request_id)),
                coupon_code=m.coupon_code,
                coupon_id=m.coupon_id,
                customer_id=m.customer_id,
            )
            for m in found.misses
        ]
        return json_response(200, CouponsOut(coupons=[coupon_out(c) for c in found.coupons], errors=errors))

    @_speaks_http
    async def create_series(self, request: web.Request) -> web.Response:
        draft: SeriesIn = _decode(_SERIES, await request.read())
        return json_response(201, series_out(await self.coupon_office.create_series(draft)))

    # ---- uploads

    @_speaks_http
    async def upload_coupons(self, request: web.Request) -> web.Response:
        return await self._upload(request, "coupons")

    @_speaks_http
    async def upload_redemptions(self, request: web.Request) -> web.Response:
        return await self._upload(request, "redemptions")

    async def _upload(self, request: web.Request, kind: UploadKind) -> web.Response:
        series_id = series_id_of(request)
        uploads = self.uploads
        await uploads.ready(kind, series_id)  # before reading a byte of the file
        spool, options = await receive(request, uploads.limits.max_bytes, self.body_timeout)
        with contextlib.closing(spool):
            bind_fields(upload_kind=kind, series_id=series_id, upload_bytes=spool.size)
            if spool.too_large:
                outcome: UploadOutcome = uploads.oversized(spool)
            else:
                outcome = await uploads.accept(kind, series_id, spool, upload_request(kind, options))
        return _rendered(outcome, request[REQUEST_ID])

    # ---- jobs

    @_speaks_http
    async def coupon_jobs(self, request: web.Request) -> web.Response:
        return _jobs(await self.uploads.jobs_of("coupons", series_id_of(request)))

    @_speaks_http
    async def redemption_jobs(self, request: web.Request) -> web.Response:
        return _jobs(await self.uploads.jobs_of("redemptions", series_id_of(request)))

    @_speaks_http
    async def coupon_job(self, request: web.Request) -> web.Response:
        series_id = series_id_of(request)
        return json_response(200, job_out(await self.uploads.job(request.match_info["jobId"], "coupons", series_id)))

    @_speaks_http
    async def redemption_job(self, request: web.Request) -> web.Response:
        series_id = series_id_of(request)
        job = await self.uploads.job(request.match_info["jobId"], "redemptions", series_id)
        return json_response(200, job_out(job))

    @_speaks_http
    async def upload_job(self, request: web.Request) -> web.Response:
        """A job by its id alone: the record knows its kind and series."""
        return json_response(200, job_out(await self.uploads.job(request.match_info["jobId"])))


async def backoffice_handlers(
    admin: CouponAdmin,
    series: SeriesReader,
    jobs: JobStore,
    *,
    limits: Limits | None = None,
    duplicate_window: float = DUPLICATE_WINDOW,
    body_timeout: float = 5.0,
    handlers: BackOfficeHandlers | None = None,
) -> BackOfficeHandlers:
    """The back office's handlers over its ports (``handlers``: ones already registered, to serve now)."""
    handlers = handlers or BackOfficeHandlers(body_timeout=body_timeout)
    uploads = Uploads(admin, series, jobs, limits=limits, duplicate_window=duplicate_window)
    handlers.bind(CouponOffice(admin), uploads)
    return handlers


BACKOFFICE: Final = web.AppKey("backoffice", BackOfficeHandlers)


def add_routes(router: web.UrlDispatcher, handlers: BackOfficeHandlers) -> None:
    series = "/v1/series/{seriesId}"
    router.add_post("/v1/coupons/issue", handlers.issue)
    router.add_post("/v1/coupons/issue/bulk", handlers.bulk_issue)
    router.add_get("/v1/coupons", handlers.coupons, allow_head=False)
    router.add_post("/v1/series", handlers.create_series)
    router.add_post(f"{series}/coupon-uploads", handlers.upload_coupons)
    router.add_post(f"{series}/redemption-uploads", handlers.upload_redemptions)
    router.add_get(f"{series}/coupon-uploads", handlers.coupon_jobs, allow_head=False)
    router.add_get(f"{series}/redemption-uploads", handlers.redemption_jobs, allow_head=False)
    router.add_get(f"{series}/coupon-uploads/{{jobId}}", handlers.coupon_job, allow_head=False)
    router.add_get(f"{series}/redemption-uploads/{{jobId}}", handlers.redemption_job, allow_head=False)
    router.add_get("/v1/upload-jobs/{jobId}", handlers.upload_job, allow_head=False)


# ------------------------------------------------------------------------------------------ decoding and rendering


def _decode(decoder: msgspec.json.Decoder[Any], raw: bytes) -> Any:
    if not raw.strip():
        raise ApiError.invalid("body: a JSON object is required")
    try:
        body = decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise ApiError.invalid(describe(exc, decoder.type)) from None
    except msgspec.DecodeError:
        raise ApiError.invalid("body: not valid JSON") from None
    except RecursionError:  # msgspec's answer to a body of free shape nested thousands deep
        raise ApiError.invalid("body: nested too deeply") from None
    refuse_duplicate_keys(raw, decoder.type)
    return body


def _customer(customer: CustomerIn) -> CustomerRef:
    try:
        return customer_ref(customer)
    except InvalidRequest as exc:
        raise ApiError.invalid(str(exc)) from None


def _listed(query: MultiMapping[str], name: str) -> list[str]:
    """A query parameter's values, given repeated or comma-separated."""
    return [v.strip() for value in query.getall(name, []) for v in value.split(",") if v.strip()]


def _lookup(query: MultiMapping[str]) -> Lookup:
    codes, ids, owners = (_listed(query, name) for name in ("codes", "ids", "customerIds"))
    unknown = set(query) - _LOOKUP_KEYS
    if unknown:
        raise ApiError.invalid(f"query: unknown parameter {sorted(unknown)[0]!r}")
    if not (codes or ids or owners):
        raise ApiError.invalid("query: give codes, ids or customerIds")
    if len(codes) + len(ids) + len(owners) > MAX_LOOKUPS:
        raise ApiError.invalid(f"query: at most {MAX_LOOKUPS} codes, ids and customer ids together")
    for name, values in (("ids", ids), ("customerIds", owners)):
        if not all(digits(v) and 0 < int(v) < 2**63 for v in values):
            raise ApiError.invalid(f"{name}: positive numbers")
    return Lookup(codes, [int(i) for i in ids], [int(i) for i in owners])


def coupon_out(coupon: Coupon) -> CouponOut:
    return msgspec.convert(coupon, CouponOut, from_attributes=True)


def job_out(job: JobView) -> JobOut:
    return msgspec.convert(job, JobOut, from_attributes=True)


def _jobs(jobs: list[JobView]) -> web.Response:
    return json_response(200, JobsOut(jobs=[job_out(j) for j in jobs]))


def report_out(report: Report, sha256: str) -> ReportOut:
    return ReportOut(
        valid=report.valid,
        complete=report.complete,
        bytes=report.bytes,
        sha256=sha256,
        rows=report.rows,
        header=report.header,
        error_count=report.error_count,
        errors=[RowErrorOut(row=e.row, column=e.column, reason=e.reason) for e in report.errors],
    )


def _rendered(outcome: UploadOutcome, request_id: str) -> web.Response:
    """An upload's outcome: 202 sent, 200 already sent (or only checked), 400 ``INVALID_UPLOAD`` with the report."""
    if isinstance(outcome, Accepted):
        report = report_out(outcome.report, outcome.sha256) if outcome.report else None
        body = UploadAcceptedOut(job=job_out(outcome.job), report=report, duplicate=outcome.duplicate)
        return json_response(200 if outcome.duplicate else 202, body)
    report = report_out(outcome.report, outcome.sha256)
    if outcome.dry_run:
        return json_response(200, DryRunOut(dry_run=True, report=report))
    error = CATALOG["INVALID_UPLOAD"]
    refused = InvalidUploadOut(error=error_detail(error, request_id), report=report)
    return json_response(error.http_status, refused)
