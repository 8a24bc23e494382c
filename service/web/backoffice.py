"""Handlers for the back-office routes (``admin`` scope): issue coupons, coupon details, series, CSV uploads and
their jobs. Each maps onto one Capillary endpoint; upstream failures come back in the one error envelope.

Uploads are streamed: the body (a multipart part named ``file``, or a ``text/csv`` body) goes to a temporary file
chunk by chunk while its SHA-256 is computed, then the pre-flight checks read that file line by line in a worker
thread, and the upload sends it upstream from disk. Memory stays bounded whatever the file's size. A client may
pause at most ``body_timeout`` between two pieces of the file and take at most ``RECEIVE_TIMEOUT`` in all, or it
gets 408 and the connection is closed.

The file name and the options are checked before they go anywhere: a file name travels upstream in a multipart
header, so one with a line break or any other control character is refused (400 naming ``file`` or ``fileName``),
as is an option with a control character.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import tempfile
import time
import unicodedata
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import IO, Any, Final

import msgspec
import structlog
from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.typedefs import Handler

from service.backoffice.jobs import (
    DUPLICATE_WINDOW,
    JOB_TTL,
    JobRecord,
    JobStore,
    JobStoreUnavailable,
    UploadKind,
    new_job_id,
    normalise,
)
from service.backoffice.preflight import (
    MAX_UPLOAD_BYTES,
    CouponRules,
    Limits,
    RedemptionRules,
    Report,
    RowError,
    RulesError,
    check_csv,
)
from service.backoffice.schemas import (
    MAX_LOOKUPS,
    BulkIssuedOut,
    BulkIssueIn,
    BulkIssueOut,
    CouponOut,
    CouponsOut,
    DryRunOut,
    InvalidUploadOut,
    IssueIn,
    JobCounts,
    JobOut,
    JobsOut,
    LookupErrorOut,
    ReportOut,
    RowErrorOut,
    UploadAcceptedOut,
)
from service.capillary import codes
from service.capillary.client import CapillaryClient
from service.capillary.coupons import customer_of, upstream_failure
from service.capillary.errors import (
    CapillaryConnectionError,
    CapillaryError,
    CapillaryNotConfigured,
    CapillaryTimeoutError,
)
from service.capillary.models import Coupon, Customer, SeriesSpec, UploadJob, UploadResponse
from service.deadline import DEADLINE
from service.redemption.catalog import CATALOG, LocalError
from service.redemption.flow import UpstreamFailure
from service.series import SeriesCatalog, summarize
from service.text import digits
from service.web.errors import (
    REQUEST_ID,
    ApiError,
    ErrorDetail,
    UpstreamDetail,
    json_response,
    retry_headers,
    series_id_of,
    upstream_error,
)
from service.web.json_keys import refuse_duplicate_keys
from service.web.schemas import CustomerIn, InvalidRequest
from service.web.schemas import _customer as customer_ref
from service.web.validation import describe

__all__ = ["BACKOFFICE", "MAX_UPLOAD_BYTES", "BackOfficeHandlers", "add_routes"]

CHUNK: Final = 64 * 1024
MAX_FIELD_BYTES: Final = 16 * 1024
MAX_FORM_PARTS: Final = 32  # the file and its few options; more is not a form of ours
#: An upload of a large file may take much longer than an ordinary call.
UPLOAD_TIMEOUT: Final = 300.0
#: The longest a client may take to send a whole file (its pauses are bounded by the body timeout).
RECEIVE_TIMEOUT: Final = 300.0
MAX_FILE_NAME: Final = 255
DEFAULT_FILE_NAME: Final = "upload.csv"
#: The options of an upload, by their field (or query) name: the only ones read, so the only ones checked.
OPTIONS: Final = (
    "identifierType",
    "identifierColumn",
    "uploadHeaders",
    "customerIdentifier",
    "couponIdentifier",
    "details",
    "dryRun",
    "fileName",
)
CSV_TYPES: Final = ("text/csv", "application/csv", "text/plain")
MAX_AMOUNT: Final = Decimal(1_000_000_000)
CENT: Final = Decimal("0.01")

_ISSUE: Final = msgspec.json.Decoder(IssueIn)
_BULK_ISSUE: Final = msgspec.json.Decoder(BulkIssueIn)
_OBJECT: Final = msgspec.json.Decoder(dict[str, Any])
_SERIES_FIELDS: Final = frozenset(f.encode_name for f in msgspec.structs.fields(SeriesSpec))

log = structlog.get_logger("service.backoffice")


def _upstream_error(exc: CapillaryError) -> ApiError:
    if isinstance(exc, CapillaryNotConfigured):  # a missing setting: say which
        return ApiError(CATALOG["UPSTREAM_UNAVAILABLE"], exc.args[0])
    return upstream_error(upstream_failure(exc))


def _detail(error: LocalError, request_id: str, code: int | None = None, message: str | None = None) -> ErrorDetail:
    upstream = UpstreamDetail(code, message) if code is not None or message is not None else None
    return ErrorDetail(error.code, error.message, error.retryable, upstream, request_id)


def _customer(customer: CustomerIn) -> Customer:
    try:
        ref = customer_ref(customer)
    except InvalidRequest as exc:
        raise ApiError.invalid(str(exc)) from None
    return customer_of(ref)


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


def coupon_out(coupon: Coupon) -> CouponOut:
    customer_id = coupon.customer.id if coupon.customer else None  # coupon details name no owner
    return CouponOut(
        code=coupon.code,
        id=coupon.id,
        series_id=coupon.series_id,
        customer_id=customer_id if customer_id and customer_id > 0 else None,
        description=coupon.description,
        valid_till=coupon.valid_till,
        discount_type=coupon.discount_type,
        discount_value=coupon.discount_value,
        discount_upto=coupon.discount_upto,
        redemption_count=coupon.redemption_count,
    )


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


def _time(value: str | int | None) -> datetime | None:
    text = str(value).strip() if value is not None else ""
    if digits(text):
        return datetime.fromtimestamp(int(text) / 1000, UTC)
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def job_out(
    kind: UploadKind, series_id: int, upstream: UploadJob | None, record: JobRecord | None, job_id: str | None = None
) -> JobOut:
    """A job in the gateway's words: the upstream's state when it is known, the gateway's record otherwise."""
    uploaded = (upstream.total_uploaded_count or 0) if upstream else 0
    errors = (upstream.error_count or 0) if upstream else 0
    rows = (upstream.actual_row_count or 0) if upstream else 0
    status = normalise(upstream.status) if upstream else "queued"
    if record is not None and status in ("queued", "running") and not rows:
        rows = record.rows  # counted by the pre-flight checks until the upstream has counted
    return JobOut(
        job_id=record.job_id if record else job_id,
        kind=kind,
        series_id=series_id,
        status=status,
        upstream_status=upstream.status if upstream else None,
        upstream_job_id=upstream.job_id if upstream else (record.upstream_job_id if record else None),
        counts=JobCounts(rows=rows, uploaded=uploaded, errors=errors),
        file_name=(upstream.uploaded_file_name if upstream else None) or (record.file_name if record else None),
        upstream_file_name=(upstream.uploaded_file_url if upstream else None)
        or (record.upstream_file_name if record else None),
        error_file_name=upstream.error_file_url if upstream else None,
        success_file_name=upstream.success_file_url if upstream else None,
        created_at=_time(upstream.created_on) if upstream else None,
        updated_at=_time(upstream.updated_on) if upstream else None,
    )


def _new_upstream_job(reply: UploadResponse) -> UploadJob | None:
    """The job an upload just made: the one named by the reply's file name, else the newest."""
    jobs = reply.result.jobs if reply.result else []
    if not jobs:
        return None
    file_name = reply.result.file_name if reply.result else None
    named = [j for j in jobs if file_name and j.uploaded_file_url == file_name]
    return max(named or jobs, key=lambda j: j.job_id)


# -------------------------------------------------------------------------------------------- receiving files


class _MaybeUploaded(Exception):
    """An upload that got no answer after it was sent: Capillary may have taken it."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error


def _file_name(value: str | None, field: str) -> str:
    """The name of the received file, as it will be sent upstream (in a multipart header) and recorded: at most
    ``MAX_FILE_NAME`` characters, none of them a control character or a line break; none given: the default."""
    name = (value or "").strip()
    if not name:
        return DEFAULT_FILE_NAME
    if len(name) > MAX_FILE_NAME or not all(_printable(c) for c in name):
        raise ApiError.invalid(
            f"{field}: a file name of 1 to {MAX_FILE_NAME} characters without control characters or line breaks"
        )
    return name


def _printable(char: str) -> bool:
    """Not a control, format, private-use or unassigned character (Unicode category C*), nor a line separator."""
    return not unicodedata.category(char).startswith(("C", "Zl", "Zp"))


def _check_options(options: dict[str, str]) -> None:
    """Options reach the pre-flight checks, the job record and, for ``details``, the upstream: no control
    characters in them (tabs and line breaks aside in ``details``, a free text)."""
    for name in OPTIONS:
        value = options.get(name)
        if value is None:
            continue
        allowed = "\t\r\n" if name == "details" else ""
        if any(unicodedata.category(c) == "Cc" and c not in allowed for c in value):
            raise ApiError.invalid(f"{name}: control characters are not allowed")


class _Pace:
    """The time limits of receiving a file: no pause longer than ``idle`` seconds between two pieces of it, and all
    of it within ``total``. ``timeout`` is the context to receive in; call ``progress()`` for each piece."""

    def __init__(self, idle: float, total: float) -> None:
        self._loop = asyncio.get_running_loop()
        self.idle = idle
        self.total = total
        self.end = self._loop.time() + total
        self.timeout = asyncio.timeout_at(min(self._loop.time() + idle, self.end))

    def progress(self) -> None:
        self.timeout.reschedule(min(self._loop.time() + self.idle, self.end))

    def refusal(self) -> ApiError:
        if self._loop.time() >= self.end:
            return ApiError.too_slow(f"body: the file was not received within {self.total:.3g} s")
        return ApiError.too_slow(f"body: nothing received for {self.idle:.3g} s")


class _Spool:
    """The received file on disk, with its size and SHA-256."""

    def __init__(self) -> None:
        self.file: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self.size = 0
        self.digest = hashlib.sha256()
        self.too_large = False
        self.file_name = DEFAULT_FILE_NAME

    @property
    def sha256(self) -> str:
        return self.digest.hexdigest()

    async def take(self, chunks: AsyncIterator[bytes], limit: int, progress: Callable[[], None]) -> None:
        async for chunk in chunks:
            progress()
            self.size += len(chunk)
            if self.size > limit:
                self.too_large = True
                return
            self.digest.update(chunk)
            self.file.write(chunk)

    def rewind(self) -> IO[bytes]:
        self.file.flush()
        self.file.seek(0)
        return self.file

    def close(self) -> None:
        self.file.close()


async def _part_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(CHUNK):
        yield chunk


async def _body_chunks(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(CHUNK):
        yield chunk


async def _field(part: BodyPartReader, progress: Callable[[], None]) -> str:
    data = bytearray()
    while chunk := await part.read_chunk(CHUNK):
        progress()
        data += chunk
        if len(data) > MAX_FIELD_BYTES:
            raise ApiError.invalid(f"{part.name}: at most {MAX_FIELD_BYTES} bytes")
    return data.decode("utf-8", "replace").strip()


async def _read_form(
    request: web.Request, spool: _Spool, options: dict[str, str], limit: int, progress: Callable[[], None]
) -> bool:
    """Stream the part named ``file`` to ``spool``; take the other parts as options. Whether a file came."""
    reader = await request.multipart()
    found = False
    fields = 0
    while (part := await reader.next()) is not None:
        progress()
        if isinstance(part, MultipartReader):
            raise ApiError.invalid("body: nested multipart parts are not taken")
        fields += 1
        if fields > MAX_FORM_PARTS:
            raise ApiError.invalid(f"body: at most {MAX_FORM_PARTS} form parts")
        if part.name == "file":
            if found:
                raise ApiError.invalid("file: send one file per upload")
            found = True
            spool.file_name = _file_name(part.filename, "file")
            await spool.take(_part_chunks(part), limit, progress)
            if spool.too_large:
                break
        elif part.name:
            options[part.name] = await _field(part, progress)
    return found


async def _receive(request: web.Request, limit: int, idle: float) -> tuple[_Spool, dict[str, str]]:
    """Stream the file to disk; return it with the options (form fields over query parameters)."""
    options = dict(request.query.items())
    spool = _Spool()
    pace = _Pace(idle, RECEIVE_TIMEOUT)
    try:
        try:
            async with pace.timeout:
                await _receive_into(request, spool, options, limit, pace.progress)
        except TimeoutError:
            raise pace.refusal() from None
        _check_options(options)
    except BaseException:
        spool.close()
        raise
    return spool, options


async def _receive_into(
    request: web.Request, spool: _Spool, options: dict[str, str], limit: int, progress: Callable[[], None]
) -> None:
    if request.content_type == "multipart/form-data":
        try:
            found = await _read_form(request, spool, options, limit, progress)
        except ValueError as exc:  # aiohttp's word for a broken multipart body
            raise ApiError.invalid(f"body: not a valid multipart body ({exc})") from None
        if not found:
            raise ApiError.invalid("file: send the CSV as a multipart part named 'file'")
    elif request.content_type in CSV_TYPES:
        spool.file_name = _file_name(options.pop("fileName", None), "fileName")
        await spool.take(_body_chunks(request), limit, progress)
    else:
        raise ApiError(
            CATALOG["UNSUPPORTED_MEDIA_TYPE"], "Send the CSV as multipart/form-data (part 'file') or text/csv."
        )


def _flag(options: dict[str, str], name: str) -> bool:
    value = options.get(name, "").strip().lower()
    if value in ("", "false", "0", "no"):
        return False
    if value in ("true", "1", "yes"):
        return True
    raise ApiError.invalid(f"{name}: true or false")


def _column(value: str | None) -> int | str | None:
    if value is None or not value.strip():
        return None
    value = value.strip()
    return int(value) if digits(value) else value


def _coupon_rules(options: dict[str, str]) -> CouponRules:
    identifier = options.get("identifierType", "").strip().upper()
    try:
        return CouponRules(identifier, _column(options.get("identifierColumn")))  # type: ignore[arg-type]
    except RulesError as exc:
        raise ApiError.invalid(str(exc)) from None


def _redemption_rules(options: dict[str, str]) -> RedemptionRules:
    raw = options.get("uploadHeaders", "").strip()
    if not raw:
        raise ApiError.invalid("uploadHeaders: a JSON object of upstream key -> column index or header name")
    try:
        mapping = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        raise ApiError.invalid("uploadHeaders: not valid JSON") from None
    refuse_duplicate_keys(raw.encode(), dict[str, Any], field="uploadHeaders")
    if not isinstance(mapping, dict) or not all(isinstance(v, int | str) for v in mapping.values()):
        raise ApiError.invalid("uploadHeaders: a JSON object of upstream key -> column index or header name")
    try:
        return RedemptionRules(
            options.get("customerIdentifier", "").strip().upper(),  # type: ignore[arg-type]
            options.get("couponIdentifier", "").strip().upper(),  # type: ignore[arg-type]
            mapping,
        )
    except RulesError as exc:
        raise ApiError.invalid(str(exc)) from None


def _content_key(kind: UploadKind, series_id: int, options: dict[str, Any], sha256: str) -> str:
    canonical = json.dumps([kind, series_id, options, sha256], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


# ------------------------------------------------------------------------------------------------- handlers


class BackOfficeHandlers:
    """The back-office routes, with their collaborators injected. ``limits`` may be replaced at run time."""

    def __init__(
        self,
        client: CapillaryClient,
        series: SeriesCatalog,
        jobs: JobStore,
        *,
        limits: Limits | None = None,
        duplicate_window: float = DUPLICATE_WINDOW,
        body_timeout: float = 5.0,
    ) -> None:
        self._client = client
        self._series = series
        self._jobs = jobs
        self.limits = limits or Limits()
        self.duplicate_window = duplicate_window
        self.body_timeout = body_timeout  # the longest pause while a file is received

    # ---- coupons

    async def issue(self, request: web.Request) -> web.Response:
        body: IssueIn = _decode(_ISSUE, await request.read())
        customer = _customer(body.customer)
        try:
            coupon = await self._client.issue(body.series_id, customer)
        except CapillaryError as exc:
            raise _upstream_error(exc) from None
        return json_response(201, coupon_out(coupon))

    async def bulk_issue(self, request: web.Request) -> web.Response:
        body: BulkIssueIn = _decode(_BULK_ISSUE, await request.read())
        if len(set(body.series_ids)) != len(body.series_ids):
            raise ApiError.invalid("seriesIds: each series once")
        customer = _customer(body.customer)
        try:
            reply = await self._client.bulk_issue(body.series_ids, customer, source=body.source)
        except CapillaryError as exc:
            raise _upstream_error(exc) from None
        request_id = request[REQUEST_ID]
        results: list[BulkIssuedOut] = []
        first_error: LocalError | None = None
        for index, entry in enumerate(reply.response):
            series_id = entry.entity_id or (body.series_ids[index] if index < len(body.series_ids) else 0)
            if entry.errors or entry.result is None or not entry.result.code:
                problem = entry.errors[0] if entry.errors else None
                code = problem.code if problem else None
                error = codes.for_code(code) if code is not None else CATALOG["COUPON_ISSUE_FAILED"]
                first_error = first_error or error
                detail = _detail(error, request_id, code, problem.message if problem else None)
                results.append(BulkIssuedOut(series_id=series_id, coupon=None, error=detail))
            else:
                results.append(BulkIssuedOut(series_id=series_id, coupon=coupon_out(entry.result), error=None))
        issued = sum(1 for r in results if r.coupon is not None)
        status = 200 if issued or first_error is None else first_error.http_status
        return json_response(status, BulkIssueOut(results=results, issued=issued, failed=len(results) - issued))

    async def coupons(self, request: web.Request) -> web.Response:
        query = request.query
        wanted_codes = [c.strip() for value in query.getall("codes", []) for c in value.split(",") if c.strip()]
        ids = [i.strip() for value in query.getall("ids", []) for i in value.split(",") if i.strip()]
        owners = [i.strip() for value in query.getall("customerIds", []) for i in value.split(",") if i.strip()]
        unknown = set(query) - {"codes", "ids", "customerIds"}
        if unknown:
            raise ApiError.invalid(f"query: unknown parameter {sorted(unknown)[0]!r}")
        if not (wanted_codes or ids or owners):
            raise ApiError.invalid("query: give codes, ids or customerIds")
        if len(wanted_codes) + len(ids) + len(owners) > MAX_LOOKUPS:
            raise ApiError.invalid(f"query: at most {MAX_LOOKUPS} codes, ids and customer ids together")
        for name, values in (("ids", ids), ("customerIds", owners)):
            if not all(digits(v) and 0 < int(v) < 2**63 for v in values):
                raise ApiError.invalid(f"{name}: positive numbers")
        try:
            reply = await self._client.coupon_details(
                codes=wanted_codes, ids=[int(i) for i in ids], customer_ids=[int(i) for i in owners]
            )
        except ValueError as exc:
            raise ApiError.invalid(str(exc)) from None
        except CapillaryError as exc:
            raise _upstream_error(exc) from None
        request_id = request[REQUEST_ID]
        named = _lookups_not_found(reply.data, wanted_codes, ids, owners, len(reply.errors))
        errors = [
            LookupErrorOut(
                **msgspec.structs.asdict(_detail(codes.for_code(e.code), request_id, e.code, e.message)), **n
            )
            for e, n in zip(reply.errors, named, strict=True)
        ]
        if not reply.data and errors:
            first, which = reply.errors[0], _naming(named[0])
            error = codes.for_code(first.code)
            message = f"{which}: {error.message}" if which else error.message
            raise ApiError(error, message, upstream=UpstreamDetail(first.code, first.message))
        return json_response(200, CouponsOut(coupons=[coupon_out(c) for c in reply.data], errors=errors))

    # ---- series

    async def create_series(self, request: web.Request) -> web.Response:
        spec = self._series_spec(await request.read())
        try:
            created = await self._client.create_series(spec)
        except CapillaryError as exc:
            raise _upstream_error(exc) from None
        return json_response(201, summarize(created))

    @staticmethod
    def _series_spec(raw: bytes) -> SeriesSpec:
        body = _decode(_OBJECT, raw)
        unknown = sorted(set(body) - _SERIES_FIELDS)
        if unknown:
            raise ApiError.invalid(f"body: unknown field {unknown[0]!r}")
        try:
            spec = msgspec.convert(body, SeriesSpec)
        except msgspec.ValidationError as exc:
            raise ApiError.invalid(describe(exc, SeriesSpec)) from None
        if not spec.description.strip() or len(spec.description) > 255:
            raise ApiError.invalid("description: 1 to 255 characters")
        if not spec.discount_value.is_finite() or spec.discount_value <= 0:
            raise ApiError.invalid("discountValue: a positive amount")
        if spec.discount_type == "PERC" and spec.discount_value > 100:
            raise ApiError.invalid("discountValue: a percentage of at most 100")
        if spec.discount_value > MAX_AMOUNT:
            raise ApiError.invalid(f"discountValue: at most {MAX_AMOUNT}")
        for name in ("discount_value", "discount_upto", "min_bill_amount", "max_bill_amount"):
            value = getattr(spec, name)
            if value is not None and (not value.is_finite() or not 0 <= value <= MAX_AMOUNT):
                raise ApiError.invalid(f"{_camel(name)}: from 0 to {MAX_AMOUNT}")
            if value is not None and value != value.quantize(CENT):
                raise ApiError.invalid(f"{_camel(name)}: at most 2 decimals")
        if (
            spec.min_bill_amount is not None
            and spec.max_bill_amount is not None
            and spec.min_bill_amount > spec.max_bill_amount
        ):
            raise ApiError.invalid("minBillAmount: not more than maxBillAmount")
        for name in ("valid_till_date", "redemption_valid_from"):
            value = getattr(spec, name)
            if value is not None:
                try:
                    datetime.fromisoformat(value)
                except ValueError:
                    raise ApiError.invalid(f"{_camel(name)}: an ISO-8601 date-time") from None
        for name in ("max_create", "max_redeem", "max_vouchers_per_user", "max_redemptions_in_series_per_user"):
            value = getattr(spec, name)
            if value is not None and value < -1:
                raise ApiError.invalid(f"{_camel(name)}: -1 (no limit) or more")
        return spec

    async def _known_series(self, series_id: int) -> None:
        """404 for a series the upstream does not know, asked of the series cache (``GET /v1/series/{id}``'s)."""
        try:
            found = await self._series.get(series_id)
        except UpstreamFailure as exc:
            failure = exc.failure
            upstream = None
            if failure.upstream_code is not None or failure.upstream_message is not None:
                upstream = UpstreamDetail(failure.upstream_code, failure.upstream_message)
            raise ApiError(failure.error, upstream=upstream, headers=retry_headers(failure.error)) from None
        if found is None:
            raise ApiError(CATALOG["SERIES_NOT_FOUND"])

    # ---- uploads

    async def upload_coupons(self, request: web.Request) -> web.Response:
        return await self._upload(request, "coupons")

    async def upload_redemptions(self, request: web.Request) -> web.Response:
        return await self._upload(request, "redemptions")

    async def _upload(self, request: web.Request, kind: UploadKind) -> web.Response:
        series_id = series_id_of(request)
        try:
            self._client.require_uploads(f"upload_{kind}")  # before reading a byte of the file
        except CapillaryError as exc:
            raise _upstream_error(exc) from None
        await self._known_series(series_id)
        limits = self.limits
        spool, options = await _receive(request, limits.max_bytes, self.body_timeout)
        try:
            return await self._accept(request, kind, series_id, spool, options, limits)
        finally:
            spool.close()

    async def _accept(
        self,
        request: web.Request,
        kind: UploadKind,
        series_id: int,
        spool: _Spool,
        options: dict[str, str],
        limits: Limits,
    ) -> web.Response:
        structlog.contextvars.bind_contextvars(upload_kind=kind, series_id=series_id, upload_bytes=spool.size)
        if spool.too_large:
            report = Report(bytes=spool.size, complete=False, error_count=1)
            report.errors.append(RowError(None, None, f"the file is larger than {limits.max_bytes} bytes"))
            return self._refused(request, report, spool.sha256)
        dry_run = _flag(options, "dryRun")
        rules: CouponRules | RedemptionRules = (
            _coupon_rules(options) if kind == "coupons" else _redemption_rules(options)
        )
        details = options.get("details", "").strip() or None

        content_key = ""
        job_id = new_job_id()
        if not dry_run:
            fingerprint = {"rules": repr(rules), "details": details}
            content_key = _content_key(kind, series_id, fingerprint, spool.sha256)
            # Held only while the upload is in flight (a crash must not block the file for the whole window)...
            held = await self._claim(content_key, job_id, min(self.duplicate_window, UPLOAD_TIMEOUT + 60))
            if held is not None:
                return await self._duplicate(kind, series_id, held)

        try:
            report = await asyncio.to_thread(check_csv, spool.rewind(), rules, limits, spool.size)
            structlog.contextvars.bind_contextvars(upload_rows=report.rows, upload_errors=report.error_count)
            if dry_run:
                return json_response(200, DryRunOut(dry_run=True, report=report_out(report, spool.sha256)))
            if not report.valid:
                await self._release(content_key, job_id)
                return self._refused(request, report, spool.sha256)
            reply = await self._send(kind, series_id, spool, rules, report, details)
        except _MaybeUploaded as exc:
            # No answer, but Capillary may have taken the file: the same file stays refused for the whole window
            # rather than risk loading it twice; the series' job list tells whether it went in.
            await self._keep(content_key, job_id)
            raise exc.error from None
        except BaseException:
            if content_key:
                await self._release(content_key, job_id)
            raise
        upstream = _new_upstream_job(reply)
        record = JobRecord(
            job_id=job_id,
            kind=kind,
            series_id=series_id,
            upstream_job_id=upstream.job_id if upstream else None,
            file_name=spool.file_name,
            upstream_file_name=(reply.result.file_name if reply.result else None)
            or (upstream.uploaded_file_url if upstream else None),
            sha256=spool.sha256,
            bytes=spool.size,
            rows=report.rows,
            created_at=time.time(),
            options={"rules": repr(rules), "details": details},
        )
        await self._keep(content_key, job_id)  # ...then for the whole window, first: it guards the upload
        try:
            await self._jobs.save(record, JOB_TTL)
        except JobStoreUnavailable:
            log.warning("upload job not recorded", job_id=job_id)
        structlog.contextvars.bind_contextvars(upload_job=job_id, upstream_job=record.upstream_job_id)
        body = UploadAcceptedOut(
            job=job_out(kind, series_id, upstream, record), report=report_out(report, spool.sha256), duplicate=False
        )
        return json_response(202, body)

    async def _send(
        self,
        kind: UploadKind,
        series_id: int,
        spool: _Spool,
        rules: CouponRules | RedemptionRules,
        report: Report,
        details: str | None,
    ) -> UploadResponse:
        # A large file takes longer than a till's request budget: the upload's own timeout bounds it instead.
        token = DEADLINE.set(None)
        try:
            if isinstance(rules, CouponRules):
                return await self._client.upload_coupons(
                    series_id,
                    spool.rewind(),
                    identifier_type=rules.identifier_type,
                    identifier_column=report.columns.get("identifier"),
                    filename=spool.file_name,
                    timeout=UPLOAD_TIMEOUT,
                )
            return await self._client.upload_redeemed_coupons(
                series_id,
                spool.rewind(),
                customer_identifier=rules.customer_identifier,
                coupon_identifier=rules.coupon_identifier,
                upload_headers={k: v for k, v in report.columns.items() if k in rules.upload_headers},
                details=details,
                filename=spool.file_name,
                timeout=UPLOAD_TIMEOUT,
            )
        except CapillaryError as exc:
            # a timeout or a dropped connection after the file went out; an error status means it was refused
            if exc.maybe_applied and isinstance(exc, CapillaryTimeoutError | CapillaryConnectionError):
                raise _MaybeUploaded(_upstream_error(exc)) from None
            raise _upstream_error(exc) from None
        finally:
            DEADLINE.reset(token)

    def _refused(self, request: web.Request, report: Report, sha256: str) -> web.Response:
        error = CATALOG["INVALID_UPLOAD"]
        detail = ErrorDetail(error.code, error.message, error.retryable, None, request[REQUEST_ID])
        return json_response(error.http_status, InvalidUploadOut(error=detail, report=report_out(report, sha256)))

    async def _claim(self, content_key: str, job_id: str, ttl: float) -> str | None:
        try:
            return await self._jobs.claim(content_key, job_id, ttl)
        except JobStoreUnavailable:
            error = CATALOG["STATE_STORE_UNAVAILABLE"]
            message = "Uploads are paused: the gateway cannot record their jobs."
            raise ApiError(error, message, headers=retry_headers(error)) from None

    async def _keep(self, content_key: str, job_id: str) -> None:
        try:
            await self._jobs.keep(content_key, job_id, self.duplicate_window)
        except JobStoreUnavailable:
            log.warning("upload fingerprint not kept", job_id=job_id)

    async def _release(self, content_key: str, job_id: str) -> None:
        if content_key:
            try:
                await self._jobs.release(content_key, job_id)
            except JobStoreUnavailable:
                log.warning("upload fingerprint not released", job_id=job_id)

    async def _duplicate(self, kind: UploadKind, series_id: int, job_id: str) -> web.Response:
        record = await self._load(job_id)
        if record is None:
            error = CATALOG["REQUEST_IN_PROGRESS"]
            message = (
                "The same file is being uploaded right now, or its last upload got no answer and may have gone"
                " through: check the series' upload jobs before sending it again."
            )
            raise ApiError(error, message, headers={"Retry-After": "1"})
        upstream = await self._upstream_job(record.kind, record.series_id, record.upstream_job_id)
        structlog.contextvars.bind_contextvars(upload_job=job_id, duplicate=True)
        body = UploadAcceptedOut(job=job_out(kind, series_id, upstream, record), report=None, duplicate=True)
        return json_response(200, body)

    # ---- jobs

    async def _load(self, job_id: str) -> JobRecord | None:
        try:
            return await self._jobs.load(job_id)
        except JobStoreUnavailable:
            error = CATALOG["STATE_STORE_UNAVAILABLE"]
            raise ApiError(error, "The gateway cannot read its upload jobs.", headers=retry_headers(error)) from None

    async def _upstream_jobs(self, kind: UploadKind, series_id: int) -> list[UploadJob]:
        try:
            if kind == "coupons":
                reply = await self._client.upload_status(series_id)
            else:
                reply = await self._client.redeemed_upload_status(series_id)
        except CapillaryError as exc:
            raise _upstream_error(exc) from None
        return reply.result.jobs if reply.result else []

    async def _upstream_job(self, kind: UploadKind, series_id: int, upstream_job_id: int | None) -> UploadJob | None:
        if upstream_job_id is None:
            return None
        return next((j for j in await self._upstream_jobs(kind, series_id) if j.job_id == upstream_job_id), None)

    async def coupon_jobs(self, request: web.Request) -> web.Response:
        return await self._jobs_of(request, "coupons")

    async def redemption_jobs(self, request: web.Request) -> web.Response:
        return await self._jobs_of(request, "redemptions")

    async def coupon_job(self, request: web.Request) -> web.Response:
        return await self._job(request, "coupons")

    async def redemption_job(self, request: web.Request) -> web.Response:
        return await self._job(request, "redemptions")

    async def upload_job(self, request: web.Request) -> web.Response:
        """A job by its id alone: the record knows its kind and series."""
        record = await self._load(request.match_info["jobId"])
        if record is None:
            raise ApiError(CATALOG["UPLOAD_JOB_NOT_FOUND"])
        upstream = await self._upstream_job(record.kind, record.series_id, record.upstream_job_id)
        return json_response(200, job_out(record.kind, record.series_id, upstream, record))

    async def _jobs_of(self, request: web.Request, kind: UploadKind) -> web.Response:
        series_id = series_id_of(request)
        await self._known_series(series_id)
        upstream = await self._upstream_jobs(kind, series_id)
        try:
            ours = await self._jobs.of_series(kind, series_id)
        except JobStoreUnavailable:
            ours = {}
        listing = [
            job_out(kind, series_id, job, None, ours.get(job.job_id))
            for job in sorted(upstream, key=lambda j: j.job_id, reverse=True)
        ]
        return json_response(200, JobsOut(jobs=listing))

    async def _job(self, request: web.Request, kind: UploadKind) -> web.Response:
        series_id = series_id_of(request)
        record = await self._load(request.match_info["jobId"])
        if record is None or record.kind != kind or record.series_id != series_id:
            raise ApiError(CATALOG["UPLOAD_JOB_NOT_FOUND"])
        upstream = await self._upstream_job(kind, series_id, record.upstream_job_id)
        return json_response(200, job_out(kind, series_id, upstream, record))


def _lookups_not_found(
    found: list[Coupon], wanted_codes: list[str], ids: list[str], owners: list[str], errors: int
) -> list[dict[str, Any]]:
    """Which value each of Capillary's ``errors`` is about. Capillary's errors do not say, but they come in the order
    asked (codes, then ids, then customers), one for each value that found nothing: when the values that found
    nothing are exactly as many as the errors, each error is named; otherwise none is (no guess)."""
    codes_found = {c.code for c in found if c.code}
    ids_found = {c.id for c in found if c.id is not None}
    # Coupon details name no owner (no sample shows one): an owner counts as found only where an answer says so.
    owners_found = {c.customer.id for c in found if c.customer and c.customer.id}
    missing: list[dict[str, Any]] = [
        *({"coupon_code": c} for c in wanted_codes if c not in codes_found),
        *({"coupon_id": int(i)} for i in ids if int(i) not in ids_found),
        *({"customer_id": int(o)} for o in owners if int(o) not in owners_found),
    ]
    return missing if len(missing) == errors else [{} for _ in range(errors)]


def _naming(which: dict[str, Any]) -> str:
    names = {"coupon_code": "coupon code", "coupon_id": "coupon id", "customer_id": "customer id"}
    return next((f"{names[k]} {v}" for k, v in which.items()), "")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


BACKOFFICE: Final = web.AppKey("backoffice", BackOfficeHandlers)


def _route(name: str) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        method: Handler = getattr(request.app[BACKOFFICE], name)
        return await method(request)

    handle.__name__ = name
    return handle


def add_routes(router: web.UrlDispatcher) -> None:
    """The back-office routes; their handlers are ``app[BACKOFFICE]``, built at startup."""
    series = "/v1/series/{seriesId}"
    router.add_post("/v1/coupons/issue", _route("issue"))
    router.add_post("/v1/coupons/issue/bulk", _route("bulk_issue"))
    router.add_get("/v1/coupons", _route("coupons"), allow_head=False)
    router.add_post("/v1/series", _route("create_series"))
    router.add_post(f"{series}/coupon-uploads", _route("upload_coupons"))
    router.add_post(f"{series}/redemption-uploads", _route("upload_redemptions"))
    router.add_get(f"{series}/coupon-uploads", _route("coupon_jobs"), allow_head=False)
    router.add_get(f"{series}/redemption-uploads", _route("redemption_jobs"), allow_head=False)
    router.add_get(f"{series}/coupon-uploads/{{jobId}}", _route("coupon_job"), allow_head=False)
    router.add_get(f"{series}/redemption-uploads/{{jobId}}", _route("redemption_job"), allow_head=False)
    router.add_get("/v1/upload-jobs/{jobId}", _route("upload_job"), allow_head=False)
