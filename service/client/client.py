"""A typed async client of the gateway's own API: what a checkout service or an operator tool imports.

One ``aiohttp.ClientSession`` with an explicit timeout and the API key as ``Authorization: Bearer``. Answers are
decoded into the gateway's own wire models; an error answer raises :class:`GatewayError`, which carries the
envelope's fields (and, for a refused upload, the pre-flight report).

Validation and redemption refusals are business answers, not errors: ``validate`` and ``redeem`` return them
(``coupons[i].error`` / ``error`` filled in) whatever their HTTP status.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import aiohttp
import msgspec
from yarl import URL

from service.aio import AsyncClosing
from service.backoffice.jobs import UploadKind
from service.redemption.models import SeriesSummary
from service.web.backoffice_schemas import (
    BulkIssueIn,
    BulkIssueOut,
    CouponOut,
    CouponsOut,
    DryRunOut,
    IssueIn,
    JobOut,
    JobsOut,
    ReportOut,
    UploadAcceptedOut,
)
from service.web.errors import UpstreamDetail
from service.web.schemas import CustomerIn, RedeemIn, RedeemOut, ReversalOut, ValidateIn, ValidateOut

M = TypeVar("M")

CHUNK: Final = 256 * 1024
FINAL_STATUSES: Final = frozenset({"finished", "failed"})
_PATHS: Final[Mapping[UploadKind, str]] = {"coupons": "coupon-uploads", "redemptions": "redemption-uploads"}

Progress = Callable[[int], None]
"""Told the number of bytes sent so far."""


class _ErrorIn(msgspec.Struct, rename="camel"):
    code: str
    message: str
    retryable: bool = False
    upstream: UpstreamDetail | None = None
    request_id: str | None = None


class _EnvelopeIn(msgspec.Struct):
    error: _ErrorIn
    report: ReportOut | None = None


_envelope: Final = msgspec.json.Decoder(_EnvelopeIn)
_encoder: Final = msgspec.json.Encoder(decimal_format="string")


@dataclass(eq=False, repr=False)
class GatewayError(Exception):
    """The gateway refused a request: its HTTP status and the error envelope's fields."""

    status: int
    code: str
    message: str
    _: KW_ONLY
    retryable: bool = False
    upstream: UpstreamDetail | None = None
    request_id: str | None = None
    retry_after: float | None = None
    report: ReportOut | None = None

    def __post_init__(self) -> None:
        super().__init__(f"{self.status} {self.code}: {self.message}")


class GatewayUnavailable(GatewayError):
    """The gateway could not be reached, or did not answer in time (no envelope)."""


def _error(status: int, raw: bytes, headers: Mapping[str, str]) -> GatewayError:
    retry_after = headers.get("Retry-After")
    after = float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else None
    try:
        body = _envelope.decode(raw)
    except msgspec.DecodeError:
        text = raw.decode("utf-8", "replace").strip()[:200] or "no error body"
        return GatewayError(status, "HTTP_ERROR", text, retry_after=after)
    error = body.error
    return GatewayError(
        status,
        error.code,
        error.message,
        retryable=error.retryable,
        upstream=error.upstream,
        request_id=error.request_id,
        retry_after=after,
        report=body.report,
    )


class GatewayClient(AsyncClosing):
    """The gateway's API as async methods. Use as ``async with GatewayClient(url, api_key) as gateway: ...``."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        upload_timeout: float = 600.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.base_url = URL(base_url.rstrip("/"))
        self.upload_timeout = upload_timeout
        headers = {"Accept": "application/json", "User-Agent": "pos-coupon-gateway-client"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._own_session = session is None
        self._session = session or aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout, connect=min(5.0, timeout)), headers=headers
        )
        self._headers = headers if session is not None else {}

    async def close(self) -> None:
        if self._own_session:
            await self._session.close()

    # ------------------------------------------------------------------------------------------ plumbing

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: object = None,
        params: Sequence[tuple[str, str]] = (),
        headers: Mapping[str, str] | None = None,
        data: Any = None,
        timeout: float | None = None,
    ) -> tuple[int, bytes]:
        all_headers = {**self._headers, **(headers or {})}
        if json_body is not None:
            data = _encoder.encode(json_body)
            all_headers["Content-Type"] = "application/json"
        options: dict[str, Any] = {}
        if timeout is not None:
            options["timeout"] = aiohttp.ClientTimeout(total=timeout, connect=min(5.0, timeout))
        try:
            async with self._session.request(
                method, self.base_url.join(URL(path)), params=list(params), data=data, headers=all_headers, **options
            ) as response:
                raw = await response.read()
                if response.status >= 400:
                    raise _error(response.status, raw, response.headers)
                return response.status, raw
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise GatewayUnavailable(0, "GATEWAY_UNREACHABLE", f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc

    async def _call(self, model: type[M], method: str, path: str, **options: Any) -> M:
        _, raw = await self._request(method, path, **options)
        try:
            return msgspec.json.decode(raw, type=model)
        except msgspec.DecodeError as exc:
            raise GatewayError(502, "BAD_ANSWER", f"the gateway's answer does not decode: {exc}") from exc

    # ---------------------------------------------------------------------------------------- redemption

    async def validate(
        self,
        customer: CustomerIn,
        codes: Sequence[str],
        bill_amount: Decimal,
        *,
        transaction_number: str | None = None,
    ) -> ValidateOut:
        """``POST /v1/redemptions/validate``: which codes would be accepted, and the discount each gives."""
        body = ValidateIn(
            customer=customer, codes=list(codes), bill_amount=bill_amount, transaction_number=transaction_number
        )
        return await self._business(ValidateOut, "/v1/redemptions/validate", body, {})

    async def redeem(
        self,
        customer: CustomerIn,
        codes: Sequence[str],
        bill_amount: Decimal,
        transaction_number: str,
        *,
        mode: Literal["all", "partial"] = "all",
        redemption_time: str | None = None,
        idempotency_key: str | None = None,
    ) -> RedeemOut:
        """``POST /v1/redemptions``. A refusal is returned (``status`` "rejected"); a 202 means "pending"."""
        body = RedeemIn(
            customer=customer,
            codes=list(codes),
            bill_amount=bill_amount,
            transaction_number=transaction_number,
            redemption_time=redemption_time,
            mode=mode,
        )
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return await self._business(RedeemOut, "/v1/redemptions", body, headers)

    async def _business(self, model: type[M], path: str, body: msgspec.Struct, headers: Mapping[str, str]) -> M:
        """A POST whose refusal is a business answer: a 4xx with the outcome's own body, not the envelope."""
        all_headers = {**self._headers, **headers, "Content-Type": "application/json"}
        try:
            async with self._session.post(
                self.base_url.join(URL(path)), data=_encoder.encode(body), headers=all_headers
            ) as response:
                raw = await response.read()
                status, response_headers = response.status, response.headers
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise GatewayUnavailable(0, "GATEWAY_UNREACHABLE", f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
        try:
            return msgspec.json.decode(raw, type=model)
        except msgspec.DecodeError:
            if status < 400:
                raise GatewayError(502, "BAD_ANSWER", "the gateway's answer does not decode") from None
            raise _error(status, raw, response_headers) from None

    async def redemption(self, ref: str) -> RedeemOut:
        """``GET /v1/redemptions/{ref}``: the recorded outcome (possibly still pending)."""
        return await self._call(RedeemOut, "GET", f"/v1/redemptions/{ref}")

    async def reverse(self, ref: str, *, idempotency_key: str | None = None) -> ReversalOut:
        """``POST /v1/redemptions/{ref}/reversal``: give the coupons back (a void or a return)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return await self._call(ReversalOut, "POST", f"/v1/redemptions/{ref}/reversal", headers=headers)

    async def series(self, series_id: int) -> SeriesSummary:
        """``GET /v1/series/{id}``."""
        return await self._call(SeriesSummary, "GET", f"/v1/series/{series_id}")

    # ---------------------------------------------------------------------------------------- back office

    async def issue(self, series_id: int, customer: CustomerIn) -> CouponOut:
        """``POST /v1/coupons/issue``: one coupon of a series to a customer."""
        body = IssueIn(series_id=series_id, customer=customer)
        return await self._call(CouponOut, "POST", "/v1/coupons/issue", json_body=body)

    async def bulk_issue(
        self, series_ids: Sequence[int], customer: CustomerIn, *, source: str | None = None
    ) -> BulkIssueOut:
        """``POST /v1/coupons/issue/bulk``: a coupon of each series (per-series errors inside)."""
        body = BulkIssueIn(series_ids=list(series_ids), customer=customer, source=source)
        return await self._business(BulkIssueOut, "/v1/coupons/issue/bulk", body, {})

    async def coupons(
        self, *, codes: Sequence[str] = (), ids: Sequence[int] = (), customer_ids: Sequence[int] = ()
    ) -> CouponsOut:
        """``GET /v1/coupons``: coupon details by code, id or owner."""
        params = [
            *(("codes", c) for c in codes),
            *(("ids", str(i)) for i in ids),
            *(("customerIds", str(i)) for i in customer_ids),
        ]
        return await self._call(CouponsOut, "GET", "/v1/coupons", params=params)

    async def create_series(self, spec: Mapping[str, Any]) -> SeriesSummary:
        """``POST /v1/series`` with the upstream's series fields (camelCase)."""
        return await self._call(SeriesSummary, "POST", "/v1/series", json_body=dict(spec))

    async def upload_coupons(
        self,
        series_id: int,
        path: str | os.PathLike[str],
        *,
        identifier_type: str,
        identifier_column: int | str | None = None,
        dry_run: bool = False,
        progress: Progress | None = None,
    ) -> UploadAcceptedOut | DryRunOut:
        """``POST /v1/series/{id}/coupon-uploads``: a CSV of coupons, streamed from ``path``."""
        options = {"identifierType": identifier_type}
        if identifier_column is not None:
            options["identifierColumn"] = str(identifier_column)
        return await self._upload("coupons", series_id, Path(path), options, dry_run, progress)

    async def upload_redemptions(
        self,
        series_id: int,
        path: str | os.PathLike[str],
        *,
        customer_identifier: str,
        coupon_identifier: str,
        upload_headers: Mapping[str, int | str],
        details: str | None = None,
        dry_run: bool = False,
        progress: Progress | None = None,
    ) -> UploadAcceptedOut | DryRunOut:
        """``POST /v1/series/{id}/redemption-uploads``: a CSV of redemptions made elsewhere."""
        options = {
            "customerIdentifier": customer_identifier,
            "couponIdentifier": coupon_identifier,
            "uploadHeaders": json.dumps(dict(upload_headers)),
        }
        if details:
            options["details"] = details
        return await self._upload("redemptions", series_id, Path(path), options, dry_run, progress)

    async def _upload(
        self,
        kind: UploadKind,
        series_id: int,
        path: Path,
        options: dict[str, str],
        dry_run: bool,
        progress: Progress | None,
    ) -> UploadAcceptedOut | DryRunOut:
        params = [*options.items(), ("fileName", path.name)]
        if dry_run:
            params.append(("dryRun", "true"))
        _, raw = await self._request(
            "POST",
            f"/v1/series/{series_id}/{_PATHS[kind]}",
            params=params,
            headers={"Content-Type": "text/csv"},
            data=_read_chunks(path, progress),
            timeout=self.upload_timeout,
        )
        model: type[UploadAcceptedOut | DryRunOut] = DryRunOut if dry_run else UploadAcceptedOut
        try:
            return msgspec.json.decode(raw, type=model)
        except msgspec.DecodeError as exc:
            raise GatewayError(502, "BAD_ANSWER", f"the gateway's answer does not decode: {exc}") from exc

    async def upload_jobs(self, series_id: int, kind: UploadKind) -> JobsOut:
        """``GET /v1/series/{id}/{coupon-uploads|redemption-uploads}``: the series' upload jobs, newest first."""
        return await self._call(JobsOut, "GET", f"/v1/series/{series_id}/{_PATHS[kind]}")

    async def upload_job(self, series_id: int, kind: UploadKind, job_id: str) -> JobOut:
        """``GET /v1/series/{id}/{coupon-uploads|redemption-uploads}/{jobId}``."""
        return await self._call(JobOut, "GET", f"/v1/series/{series_id}/{_PATHS[kind]}/{job_id}")

    async def job(self, job_id: str) -> JobOut:
        """``GET /v1/upload-jobs/{jobId}``: a job by its id alone, whatever its kind and series."""
        return await self._call(JobOut, "GET", f"/v1/upload-jobs/{job_id}")

    async def wait_for_job(
        self,
        series_id: int | None,
        kind: UploadKind | None,
        job_id: str,
        *,
        interval: float = 1.0,
        timeout: float | None = None,
        on_update: Callable[[JobOut], None] | None = None,
    ) -> JobOut:
        """Poll a job until it is finished or failed (``TimeoutError`` after ``timeout`` seconds). Without
        ``series_id`` and ``kind``, the job is found by its id alone."""
        async with asyncio.timeout(timeout):
            while True:
                if series_id is None or kind is None:
                    job = await self.job(job_id)
                else:
                    job = await self.upload_job(series_id, kind, job_id)
                if on_update is not None:
                    on_update(job)
                if job.status in FINAL_STATUSES:
                    return job
                await asyncio.sleep(interval)


async def _read_chunks(path: Path, progress: Progress | None) -> AsyncIterator[bytes]:
    """The file in chunks, read in a worker thread, counting what has been handed to the connection."""
    sent = 0
    with path.open("rb") as file:
        while chunk := await asyncio.to_thread(file.read, CHUNK):
            yield chunk
            sent += len(chunk)
            if progress is not None:
                progress(sent)
