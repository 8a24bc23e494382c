"""The v1 CSV upload jobs: validating an upload, and processing it when it falls due (pure, no I/O).

A job is created STARTED (coupons) / QUEUED (redeemed coupons), shows PROCESSING / IN_PROGRESS from half way, and
is processed lazily once the sandbox clock reaches ``created + upload_job_seconds``, ending FINISHED / COMPLETED, or
FAILED when not one row could be uploaded: every request to the sandbox (and `Sandbox.process_jobs`) runs the
due jobs first, so the outcome is deterministic under an injected clock. Processing happens "at" the due
time: ``updatedOn`` and the issue time of uploaded coupons are the due time, not the time it was noticed.

Header rows: the first non-blank row is skipped as a header when (coupons) one of its cells is a known column
name (``customerIdentifier``, ``coupon code``, ``mobile`` ...) or contains whitespace, or (redeemed coupons)
its ``redeemedDateInMillis`` cell is not an integer. Blank rows are ignored and not counted.

Coupon uploads: tagged files have the customer identifier in ``customerIdentifierColumn`` and the code in the
first other column (no other column = a generated code); NOT_TAGGED files have the code in column 0. A row
fails when the customer is unknown or the code is malformed or already exists. Upload bypasses the issue
limits (maxCreate, maxVouchersPerUser).

Redeemed uploads: the customer column is ``userId`` when mapped (the docs give it preference), else the key
of ``customerIdentifier``; the coupon column is ``couponId`` when mapped, else ``couponCode``. A row fails
when the customer or coupon is unknown, the coupon is of another series or issued to another customer
(unless the series is anyUser), a single-use coupon is already redeemed, the date is not epoch millis, or
``redeemedAt`` is empty. Good rows become redemptions (source UPLOAD, store = redeemedAt, transaction number
= billNumber or billId, bill amount 0) dated ``redeemedDateInMillis``.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final

from .state import (
    EPOCH,
    ORG_ID,
    CustomerRef,
    DomainError,
    IdentifierKind,
    SandboxState,
    UploadJob,
    is_well_formed,
)

COUPON_CUSTOMER_IDENTIFIERS: Final = ("MOBILE", "EXTERNAL_ID", "EMAIL", "USER_ID", "NOT_TAGGED")
REDEEM_CUSTOMER_IDENTIFIERS: Final = ("MOBILE", "EXTERNAL_ID", "EMAIL", "USER_ID")
COUPON_IDENTIFIERS: Final = ("COUPON_ID", "COUPON_CODE")

_IDENTIFIER_KIND: Final[Mapping[str, IdentifierKind]] = MappingProxyType(
    {"MOBILE": "mobile", "EXTERNAL_ID": "externalId", "EMAIL": "email", "USER_ID": "id"}
)
_HEADER_KEY: Final[Mapping[str, str]] = MappingProxyType(
    {"MOBILE": "mobile", "EXTERNAL_ID": "externalId", "EMAIL": "email", "USER_ID": "userId"}
)
_KEY_KIND: Final[Mapping[str, IdentifierKind]] = MappingProxyType(
    {"userId": "id", "mobile": "mobile", "email": "email", "externalId": "externalId"}
)
_UPLOAD_HEADER_KEYS: Final = frozenset(
    {
        "redeemedDateInMillis",
        "redeemedAt",
        "userId",
        "mobile",
        "email",
        "externalId",
        "couponId",
        "couponCode",
        "billId",
        "billNumber",
        "details",
    }
)
_HEADER_WORDS: Final = frozenset(
    {
        "customeridentifier",
        "customer",
        "identifier",
        "couponcode",
        "coupon",
        "code",
        "couponid",
        "mobile",
        "email",
        "externalid",
        "userid",
        "redeemeddateinmillis",
        "redeemedat",
        "billid",
        "billnumber",
        "details",
    }
)


class UploadError(ValueError):
    """The upload request itself is invalid (HTTP 400, nothing queued)."""


def parse_csv(data: bytes) -> list[list[str]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UploadError("file must be a UTF-8 encoded CSV") from None
    try:
        rows = [[cell.strip() for cell in row] for row in csv.reader(io.StringIO(text))]
    except csv.Error as exc:
        raise UploadError(f"file is not a valid CSV: {exc}") from None
    return [row for row in rows if any(row)]


def coupon_upload_settings(customer_identifier: str | None, column: str | None) -> dict[str, Any]:
    if customer_identifier not in COUPON_CUSTOMER_IDENTIFIERS:
        raise UploadError(f"customerIdentifier must be one of {', '.join(COUPON_CUSTOMER_IDENTIFIERS)}")
    index = 0
    if column not in (None, ""):
        try:
            index = int(column)
        except ValueError:
            raise UploadError("customerIdentifierColumn must be a non-negative integer") from None
        if index < 0:
            raise UploadError("customerIdentifierColumn must be a non-negative integer")
    return {"customerIdentifier": customer_identifier, "customerIdentifierColumn": index}


def redeemed_upload_settings(
    customer_identifier: str | None, coupon_identifier: str | None, upload_headers: str | None, details: str | None
) -> dict[str, Any]:
    if customer_identifier not in REDEEM_CUSTOMER_IDENTIFIERS:
        raise UploadError(f"customerIdentifier must be one of {', '.join(REDEEM_CUSTOMER_IDENTIFIERS)}")
    if coupon_identifier not in COUPON_IDENTIFIERS:
        raise UploadError(f"couponIdentifier must be one of {', '.join(COUPON_IDENTIFIERS)}")
    if not upload_headers:
        raise UploadError("uploadHeaders is required (stringified JSON of column indexes)")
    try:
        mapping = json.loads(upload_headers)
    except json.JSONDecodeError:
        raise UploadError("uploadHeaders must be stringified JSON") from None
    if not isinstance(mapping, dict):
        raise UploadError("uploadHeaders must be a JSON object")
    columns: dict[str, int] = {}
    for key, value in mapping.items():
        if key not in _UPLOAD_HEADER_KEYS:
            raise UploadError(f"uploadHeaders has an unknown key {key!r}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UploadError(f"uploadHeaders.{key} must be a column index (integer >= 0)")
        columns[key] = value
    for required in ("redeemedDateInMillis", "redeemedAt"):
        if required not in columns:
            raise UploadError(f"uploadHeaders must map {required!r}")
    customer_key = next((k for k in ("userId", _HEADER_KEY[customer_identifier]) if k in columns), None)
    if customer_key is None:
        raise UploadError(f"uploadHeaders must map {_HEADER_KEY[customer_identifier]!r}")
    coupon_key = next((k for k in ("couponId", "couponCode") if k in columns), None)
    if coupon_key is None:
        expected = "couponId" if coupon_identifier == "COUPON_ID" else "couponCode"
        raise UploadError(f"uploadHeaders must map {expected!r}")
    return {
        "customerIdentifier": customer_identifier,
        "couponIdentifier": coupon_identifier,
        "customerKey": customer_key,
        "couponKey": coupon_key,
        "columns": columns,
        "details": details or "",
    }


def process_due_jobs(state: SandboxState, now: datetime) -> list[UploadJob]:
    """Start every job whose start time has come, then run every job whose due time has come, oldest first.
    Returns the jobs processed now."""
    for job in state.upload_jobs.values():
        if not job.done and not job.started and job.starts_on is not None and job.starts_on <= now:
            job.started = True
            job.updated_on = job.starts_on
    due = sorted((j for j in state.upload_jobs.values() if not j.done and j.due_on <= now), key=lambda j: j.job_id)
    for job in due:
        if job.kind == "coupons":
            _process_coupons(state, job)
        else:
            _process_redeemed(state, job)
        _finish(job)
    return due


@dataclass
class _Rows:
    header: list[str] | None
    data: list[list[str]]


def _split_header(rows: list[list[str]], is_header: bool) -> _Rows:
    if rows and is_header:
        return _Rows(rows[0], rows[1:])
    return _Rows(None, rows)


def _looks_like_header(row: list[str]) -> bool:
    return any(re.sub(r"[^a-z0-9]", "", cell.lower()) in _HEADER_WORDS or re.search(r"\s", cell) for cell in row)


def _cell(row: list[str], index: int | None) -> str:
    if index is None or index >= len(row):
        return ""
    return row[index]


def _process_coupons(state: SandboxState, job: UploadJob) -> None:
    identifier = job.settings["customerIdentifier"]
    id_column: int = job.settings["customerIdentifierColumn"]
    rows = _split_header(job.rows, bool(job.rows) and _looks_like_header(job.rows[0]))
    job.actual_row_count = len(rows.data)
    for number, row in enumerate(rows.data, start=1):
        customer = None
        if identifier == "NOT_TAGGED":
            code: str | None = _cell(row, 0)
            if not code:
                job.row_errors.append((number, "coupon code is missing"))
                continue
        else:
            value = _cell(row, id_column)
            customer = state.find_customer(CustomerRef(_IDENTIFIER_KIND[identifier], value)) if value else None
            if customer is None:
                job.row_errors.append((number, f"customer not found: {value!r}"))
                continue
            others = [i for i in range(len(row)) if i != id_column]
            code = row[others[0]] if others and row[others[0]] else None
        if code is not None and not is_well_formed(code):
            job.row_errors.append((number, f"coupon code is invalid: {code!r}"))
            continue
        if code is not None and state.coupon_by_code(code) is not None:
            job.row_errors.append((number, f"coupon code already exists: {code!r}"))
            continue
        try:
            state.issue(job.series_id, customer, now=job.due_on, code=code, enforce_limits=False, uploaded=True)
        except DomainError as exc:
            job.row_errors.append((number, exc.message))
            continue
        job.total_uploaded_count += 1


def _process_redeemed(state: SandboxState, job: UploadJob) -> None:
    columns: dict[str, int] = job.settings["columns"]
    customer_key: str = job.settings["customerKey"]
    coupon_key: str = job.settings["couponKey"]
    date_column = columns["redeemedDateInMillis"]
    first_is_header = bool(job.rows) and not _cell(job.rows[0], date_column).isdigit()
    rows = _split_header(job.rows, first_is_header)
    job.actual_row_count = len(rows.data)
    series = state.series[job.series_id]
    for number, row in enumerate(rows.data, start=1):
        ident = _cell(row, columns[customer_key])
        customer = state.find_customer(CustomerRef(_KEY_KIND[customer_key], ident)) if ident else None
        if customer is None:
            job.row_errors.append((number, f"customer not found: {ident!r}"))
            continue
        ref = _cell(row, columns[coupon_key])
        if coupon_key == "couponId":
            coupon = state.coupons.get(int(ref)) if ref.isdigit() else None
        else:
            coupon = state.coupon_by_code(ref) if ref else None
        if coupon is None:
            job.row_errors.append((number, f"coupon not found: {ref!r}"))
            continue
        if coupon.series_id != job.series_id:
            job.row_errors.append((number, f"coupon {coupon.code} is not of series {job.series_id}"))
            continue
        if coupon.customer_id not in (None, customer.id) and not series.any_user:
            job.row_errors.append((number, f"coupon {coupon.code} is not issued to this customer"))
            continue
        if not series.is_multiple_use_allowed and state.active_redemptions(coupon_id=coupon.id):
            job.row_errors.append((number, f"coupon {coupon.code} is already redeemed"))
            continue
        millis = _cell(row, date_column)
        if not millis.isdigit():
            job.row_errors.append((number, f"redeemedDateInMillis is not epoch millis: {millis!r}"))
            continue
        store = _cell(row, columns["redeemedAt"])
        if not store:
            job.row_errors.append((number, "redeemedAt is missing"))
            continue
        transaction = _cell(row, columns.get("billNumber")) or _cell(row, columns.get("billId"))
        state.record_redemption(
            coupon,
            customer_id=customer.id,
            now=EPOCH + timedelta(milliseconds=int(millis)),
            store=store,
            transaction_number=transaction,
            bill_amount=Decimal(0),
            discount=series.discount_for(None),
            source="UPLOAD",
        )
        job.total_uploaded_count += 1


def error_file_csv(job: UploadJob) -> str:
    """A job's error file: the header (the file's own when it had one), then each rejected row with its reason."""
    date_column = job.settings.get("columns", {}).get("redeemedDateInMillis") if job.kind == "redeemed" else None
    if job.kind == "redeemed":
        has_header = bool(job.rows) and not _cell(job.rows[0], date_column).isdigit()
    else:
        has_header = bool(job.rows) and _looks_like_header(job.rows[0])
    rows = _split_header(job.rows, has_header)
    width = max((len(r) for r in job.rows), default=0)
    header = rows.header or [f"column{i}" for i in range(width)]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*header, "error"])
    for number, reason in job.row_errors:
        writer.writerow([*rows.data[number - 1], reason])
    return out.getvalue()


def _finish(job: UploadJob) -> None:
    done_at = job.due_on
    job.done = True
    job.started = True
    job.updated_on = done_at
    job.error_count = len(job.row_errors)
    job.failed = job.total_uploaded_count == 0
    millis = (done_at - EPOCH) // timedelta(milliseconds=1) % 1000
    prefix = "temp" if job.kind == "coupons" else "temp_redemption_upload"
    job.upload_table_name = f"{prefix}_{ORG_ID}_{done_at:%Y%m%d_%H%M%S}{millis:03d}"
    if job.row_errors:
        prefix = "error" if job.kind == "coupons" else "error_redemption_upload"
        job.error_file_url = f"{prefix}_{ORG_ID}_{job.series_id}{done_at:%Y_%m_%d_%H_%M_%S}"
