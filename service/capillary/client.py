"""The Capillary client: one async method per upstream coupon endpoint.

One ``ClientSession`` per upstream host (the v2 API host and the v1 "intouch" upload host), each with explicit
timeouts and the auth middleware. Every endpoint is a row of :mod:`~service.capillary.operations`, and every call
goes through the stages of :mod:`~service.capillary.pipeline`, as aiohttp client middlewares: retry under a budget,
the deadline, the host's circuit breaker, the outbound rate limiter, the observer, then the attempt that turns
transport failures, error statuses and undecodable bodies into typed :mod:`~service.capillary.errors`. Reads (GET)
are retried with jittered backoff; writes are never sent twice.

Each call's deadline (monotonic seconds) and priority are given explicitly (``deadline=``, ``priority=``). A caller
that gives none gets the client's ``ambient`` source's, if it has one: the composition root passes
:func:`service.deadline.current`, the one reader of the request's deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import IO, Any, Final, NotRequired, TypedDict, TypeVar, Unpack

import aiohttp
import msgspec
from aiohttp import ClientMiddlewareType
from multidict import CIMultiDict
from yarl import URL

from service.aio import AsyncClosing
from service.capillary import operations as ops
from service.capillary.auth import BasicAuth, OAuthTokens
from service.capillary.errors import CapillaryError, CapillaryNotConfigured
from service.capillary.models import (
    BulkIssueRequest,
    BulkIssueResponse,
    BulkRedeemResponse,
    Coupon,
    CouponDetailsResponse,
    CouponIdentifierType,
    CreateSeriesRequest,
    Customer,
    CustomerCouponsResponse,
    IdentifierType,
    IsRedeemableResponse,
    IssueRequest,
    ReactivateRequest,
    ReactivateResponse,
    RedeemCode,
    RedeemRequest,
    RedeemResponse,
    Series,
    SeriesListResponse,
    SeriesSpec,
    TokenData,
    TokenRequest,
    UploadResponse,
)
from service.capillary.operations import OPERATIONS, Operation
from service.capillary.pipeline import (
    REJECTION_REASONS,
    Attempt,
    BreakerGuard,
    Call,
    CallObserver,
    DeadlineGuard,
    Observe,
    RateGuard,
    Retry,
    Stage,
    bind,
)
from service.capillary.reading import transport_error
from service.capillary.resilience import Breaker, BreakerPolicy, OutboundLimiter, Priority, RetryBudget
from service.config import CapillarySettings

__all__ = [
    "MAX_CODES_PER_CALL",
    "OPERATIONS",
    "REJECTION_REASONS",
    "Ambient",
    "CallObserver",
    "CapillaryClient",
    "Limits",
    "host_of",
]

M = TypeVar("M")

ATTRIBUTION_TYPE_HEADER: Final = "X-CAP-API-ATTRIBUTION-ENTITY-TYPE"
ATTRIBUTION_CODE_HEADER: Final = "X-CAP-API-ATTRIBUTION-ENTITY-CODE"
MAX_CODES_PER_CALL: Final = 50
_JSON: Final = "application/json"

# Bill amounts go as decimal strings, as the redeem samples send them ("billAmount": "2000"); a new series' amounts
# as numbers, as the create-series sample sends them ("discountValue": 500).
_encoder = msgspec.json.Encoder(decimal_format="string")
_number_encoder = msgspec.json.Encoder(decimal_format="number")

#: The deadline (monotonic seconds, or ``None``) and urgency of the work in progress, for callers that give none.
Ambient = Callable[[], tuple[float | None, bool]]


class Limits(TypedDict):
    """What bounds one call, every endpoint method's keyword arguments.

    ``timeout``: seconds per attempt (default: the configured upstream timeout); ``deadline``: monotonic seconds
    by which every attempt must be over (``math.inf``: none, not even the ambient one); ``priority``: whose turn
    when the outbound budget runs short (default: the operation's own, or a redeem's for urgent work).
    """

    timeout: NotRequired[float | None]
    deadline: NotRequired[float | None]
    priority: NotRequired[Priority | None]


def _check_codes(codes: Sequence[str]) -> list[str]:
    """Codes as Capillary takes them in one comma-separated ``code=`` value: none empty, none with a comma."""
    if not 1 <= len(codes) <= MAX_CODES_PER_CALL:
        raise ValueError(f"between 1 and {MAX_CODES_PER_CALL} coupon codes per call, got {len(codes)}")
    for code in codes:
        if not code or "," in code:
            raise ValueError(f"coupon code {code!r} cannot be sent: empty or contains a comma")
    return list(codes)


def host_of(url: URL) -> str:
    """``host[:port]``: the breaker's key and metrics label (bounded: the two configured hosts)."""
    return f"{url.host}:{url.explicit_port}" if url.explicit_port else url.host or ""


class _Host:
    """One upstream host: its session, its stages, and the middlewares that follow them (auth, traces)."""

    __slots__ = ("base", "breaker", "session", "stages", "tail")

    def __init__(
        self,
        base: URL,
        session: aiohttp.ClientSession,
        breaker: Breaker,
        stages: tuple[Stage, ...],
        tail: tuple[ClientMiddlewareType, ...],
    ) -> None:
        self.base, self.session, self.breaker, self.stages, self.tail = base, session, breaker, stages, tail


class CapillaryClient(AsyncClosing):
    """Async client for Capillary's coupon APIs. Create inside a running event loop; :meth:`close` after.

    Every endpoint method takes :class:`Limits` as keyword arguments (``timeout``, ``deadline``, ``priority``)."""

    def __init__(
        self,
        settings: CapillarySettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        observer: CallObserver | None = None,
        middlewares: Sequence[ClientMiddlewareType] = (),
        ambient: Ambient | None = None,
    ) -> None:
        """Build the client and its sessions; call inside a running event loop, and :meth:`close` after.
        ``clock`` times token lifetimes (monotonic seconds); ``middlewares`` run last on every call (traces);
        ``ambient`` gives the deadline and urgency of calls made without them."""
        self.settings = settings
        self.observer = observer
        self._ambient = ambient
        self._api_url = URL(settings.api_url)
        self._upload_url = URL(settings.upload_url)
        #: Each API operation's URL, built on its first call (joining paths builds a new URL object each time).
        self._v2_urls: dict[str, URL] = {}
        self.tokens: OAuthTokens | None = None
        auth: BasicAuth | OAuthTokens
        if settings.auth == "oauth" or (settings.client_key and settings.client_secret):
            self.tokens = OAuthTokens(self._fetch_token, clock=clock)
        if settings.auth == "oauth":
            auth = self.tokens or OAuthTokens(self._fetch_token, clock=clock)
        else:
            auth = BasicAuth(settings.till_username, settings.till_password)
        policy = BreakerPolicy(
            failure_ratio=settings.breaker_failure_ratio,
            slow_call_seconds=settings.breaker_slow_call_seconds,
            slow_call_ratio=settings.breaker_slow_call_ratio,
            min_calls=settings.breaker_min_calls,
            window=2 * settings.breaker_min_calls,
            open_seconds=settings.breaker_open_seconds,
            probes=settings.breaker_probes,
        )
        self.limiter = OutboundLimiter(settings.rate_limit_per_minute)
        self.retry_budget = RetryBudget(settings.retry_budget_ratio)
        self.retries = dict.fromkeys(OPERATIONS, 0)
        self.rejections = {(reason, p): 0 for reason in REJECTION_REASONS for p in Priority}
        retry = Retry(settings.retry_attempts, self.retry_budget, self.retries)
        deadline, rate = DeadlineGuard(self.rejections), RateGuard(self.limiter, self.rejections)
        self._observing: tuple[Stage, ...] = (Observe(observer), Attempt()) if observer else (Attempt(),)
        # The per-request ``timeout`` bounds connecting only: each attempt's total is the Attempt stage's, so that a
        # retry gets its own time rather than what the first attempt left.
        self._timeout = aiohttp.ClientTimeout(total=None, connect=settings.connect_timeout)
        tracing = tuple(middlewares)
        api_breaker = Breaker(host_of(self._api_url), policy)
        upload_breaker = api_breaker
        if host_of(self._upload_url) != api_breaker.host:
            upload_breaker = Breaker(host_of(self._upload_url), policy)
        # The v1 upload host documents OAuth only: with Basic for the v2 API, uploads use OAuth when client
        # credentials are given, and are not sent at all without them.
        upload_auth = (self.tokens,) if self.tokens is not None else ()
        self._hosts = {
            name: _Host(
                base,
                aiohttp.ClientSession(
                    timeout=self._timeout,
                    headers={"Accept": _JSON, "User-Agent": "pos-coupon-gateway"},
                ),
                breaker,
                (retry, deadline, BreakerGuard(breaker, self.rejections), rate, *self._observing),
                (*host_auth, *tracing),
            )
            for name, base, breaker, host_auth in (
                ("api", self._api_url, api_breaker, (auth,)),
                ("upload", self._upload_url, upload_breaker, upload_auth),
            )
        }

    @property
    def uploads_configured(self) -> bool:
        """Whether the upload host can be called: it takes OAuth only."""
        return self.tokens is not None

    def require_uploads(self, operation: str) -> None:
        """Raise ``CapillaryNotConfigured`` naming the settings the upload host needs, if they are missing."""
        if self.tokens is None:
            raise CapillaryNotConfigured(
                operation,
                "the upload host takes OAuth only: set CAPILLARY_CLIENT_KEY and CAPILLARY_CLIENT_SECRET "
                "(alongside CAPILLARY_AUTH=basic) to use uploads and their job status",
            )

    @property
    def breakers(self) -> tuple[Breaker, ...]:
        """One per upstream host."""
        api, upload = self._hosts["api"].breaker, self._hosts["upload"].breaker
        return (api,) if upload is api else (api, upload)

    def upload_retry_after(self) -> float:
        """Seconds until the upload host's circuit breaker lets a call through again (0 when it does now)."""
        return self._hosts["upload"].breaker.retry_after()

    async def close(self) -> None:
        await asyncio.gather(*(host.session.close() for host in self._hosts.values()))

    # ------------------------------------------------------------------------------------------ plumbing

    async def _call(
        self,
        op: Operation[M],
        url: URL,
        *,
        params: Sequence[tuple[str, str]] = (),
        body: msgspec.Struct | None = None,
        form: aiohttp.FormData | None = None,
        store: str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
        priority: Priority | None = None,
    ) -> M:
        """One call of ``op`` through its host's pipeline; its decoded, usable answer or a typed failure."""
        if deadline is None and self._ambient is not None:
            deadline, urgent = self._ambient()
            if urgent and priority is None:
                priority = Priority.REDEEM
        limit = timeout or self.settings.timeout
        call = Call(
            op,
            limit=limit,
            long_call=limit > self.settings.timeout,
            deadline=deadline,
            priority=op.priority if priority is None else priority,
        )
        host = self._hosts[op.host]
        return await self._send(call, url, host.session, bind(call, host.stages, host.tail), params, body, form, store)

    async def _send(
        self,
        call: Call[M],
        url: URL,
        session: aiohttp.ClientSession,
        middlewares: tuple[Any, ...],
        params: Sequence[tuple[str, str]],
        body: msgspec.Struct | None,
        form: aiohttp.FormData | None,
        store: str | None,
    ) -> M:
        """Send ``call`` through ``middlewares``: the stages set its answer or raise its typed failure. Connecting
        may take no longer than the first attempt may; each attempt's whole time is the Attempt stage's."""
        headers: CIMultiDict[str] = CIMultiDict()
        data: bytes | aiohttp.FormData | None = form
        if body is not None:
            data = (_number_encoder if isinstance(body, CreateSeriesRequest) else _encoder).encode(body)
            headers["Content-Type"] = _JSON
        if store:
            headers[ATTRIBUTION_TYPE_HEADER] = "STORE_CODE"
            headers[ATTRIBUTION_CODE_HEADER] = store
        timeout = self._timeout
        first = call.limit if call.deadline is None else min(call.limit, call.deadline - time.monotonic())
        if first < self.settings.connect_timeout:  # connecting may not take longer than the first attempt may
            timeout = aiohttp.ClientTimeout(total=None, connect=max(first, 0.001))
        try:
            async with session.request(
                call.op.method, url, params=params, data=data, headers=headers, timeout=timeout, middlewares=middlewares
            ):
                return call.result()
        except CapillaryError:
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:  # failed before the pipeline (a bad URL...)
            raise transport_error(call.op.name, exc) from exc

    def _v2(self, op: Operation[Any]) -> URL:
        url = self._v2_urls.get(op.name)
        if url is None:
            url = self._v2_urls[op.name] = self._api_url / "v2" / op.path
        return url

    def _v1_upload(self, op: Operation[Any], series_id: int) -> URL:
        return self._upload_url / "coupon/api/v1/upload" / op.path / str(series_id)

    # -------------------------------------------------------------------------------------------- oauth

    async def generate_token(self) -> TokenData:
        """``POST /v3/oauth/token/generate``: a fresh OAuth access token and its lifetime.

        Sent from inside another call's attempt (the auth middleware), which bounds it: no retry, breaker or
        limiter of its own, and the observer hears of it."""
        settings = self.settings
        op = ops.TOKEN
        call = Call(op, limit=settings.timeout, long_call=False, deadline=None, priority=op.priority)
        middlewares = bind(call, self._observing, ())
        body = TokenRequest(key=settings.client_key, secret=settings.client_secret)
        reply = await self._send(
            call, self._api_url / op.path, self._hosts["api"].session, middlewares, (), body, None, None
        )
        assert reply.data is not None  # guaranteed by the operation's usable check
        return reply.data

    async def _fetch_token(self) -> tuple[str, int]:
        data = await self.generate_token()
        return data.access_token, data.ttl_seconds

    # --------------------------------------------------------------------------------------- redemption

    async def is_redeemable(
        self,
        customer: Customer,
        codes: Sequence[str],
        *,
        details: bool = False,
        store: str | None = None,
        **limits: Unpack[Limits],
    ) -> IsRedeemableResponse:
        """``GET /v2/coupon/is_redeemable``: one verdict per code, in one call for all codes. ``details=true``
        asks for the series' details too (documented; no sample shows them, so they are read where present)."""
        params = [
            *customer.query().items(),
            ("code", ",".join(_check_codes(codes))),
            ("details", "true" if details else "false"),
        ]
        op = ops.IS_REDEEMABLE
        return await self._call(op, self._v2(op), params=params, store=store, **limits)

    def _redeem_body(
        self,
        customer: Customer,
        codes: Sequence[str],
        bill_amount: Decimal,
        transaction_number: str,
        redemption_time: str | None,
    ) -> RedeemRequest:
        if not transaction_number:
            raise ValueError("a redemption needs a transaction number")
        return RedeemRequest(
            bill_amount=bill_amount,
            transaction_number=transaction_number,
            user=customer,
            redemption_request_list=[RedeemCode(code=c) for c in _check_codes(codes)],
            redemption_time=redemption_time,
        )

    def _source_params(self, source: str | None = None) -> list[tuple[str, str]]:
        """``source`` and, when configured, ``accountId``: the bulk endpoints' query."""
        params = [("source", source or self.settings.source)]
        if self.settings.account_id:
            params.append(("accountId", self.settings.account_id))
        return params

    async def redeem(
        self,
        customer: Customer,
        code: str,
        *,
        bill_amount: Decimal,
        transaction_number: str,
        redemption_time: str | None = None,
        store: str | None = None,
        **limits: Unpack[Limits],
    ) -> RedeemResponse:
        """``POST /v2/coupon/redeem`` for one code. A refusal with per-coupon detail is returned, not raised."""
        body = self._redeem_body(customer, [code], bill_amount, transaction_number, redemption_time)
        return await self._call(ops.REDEEM, self._v2(ops.REDEEM), body=body, store=store, **limits)

    async def bulk_redeem(
        self,
        customer: Customer,
        codes: Sequence[str],
        *,
        bill_amount: Decimal,
        transaction_number: str,
        redemption_time: str | None = None,
        store: str | None = None,
        **limits: Unpack[Limits],
    ) -> BulkRedeemResponse:
        """``POST /v2/coupon/bulk/redeem``: all or nothing; siblings of a failing code carry 749."""
        body = self._redeem_body(customer, codes, bill_amount, transaction_number, redemption_time)
        op = ops.BULK_REDEEM
        return await self._call(op, self._v2(op), params=self._source_params(), body=body, store=store, **limits)

    async def reactivate(
        self, redemption_ids: Sequence[int], *, store: str | None = None, **limits: Unpack[Limits]
    ) -> ReactivateResponse:
        """``POST /v2/coupon/reactivate``: undo redemptions (a void or return at the till)."""
        if not redemption_ids:
            raise ValueError("reactivate needs at least one redemption id")
        body = ReactivateRequest(redemption_ids=list(redemption_ids))
        return await self._call(ops.REACTIVATE, self._v2(ops.REACTIVATE), body=body, store=store, **limits)

    async def customer_coupons(
        self, customer: Customer, *, status: str = "ACTIVE_REDEEMED", **limits: Unpack[Limits]
    ) -> CustomerCouponsResponse:
        """``GET /v2/customers/coupons``: a customer's coupons with their redemptions' transaction numbers."""
        params = [*customer.query().items(), ("status", status)]
        return await self._call(ops.CUSTOMER_COUPONS, self._v2(ops.CUSTOMER_COUPONS), params=params, **limits)

    # -------------------------------------------------------------------------------------- series, issue

    async def series(self, ids: Sequence[int], **limits: Unpack[Limits]) -> SeriesListResponse:
        """``GET /v2/coupon/series?ids=..&ids=..``: several series in one call."""
        if not ids:
            raise ValueError("series needs at least one id")
        params = [("ids", str(i)) for i in ids]
        return await self._call(ops.SERIES_GET, self._v2(ops.SERIES_GET), params=params, **limits)

    async def create_series(self, spec: SeriesSpec, **limits: Unpack[Limits]) -> Series:
        """``POST /v2/coupon/series``."""
        body = CreateSeriesRequest(series=spec)
        return await self._call(ops.SERIES_CREATE, self._v2(ops.SERIES_CREATE), body=body, **limits)

    async def issue(
        self, series_id: int, customer: Customer, *, store: str | None = None, **limits: Unpack[Limits]
    ) -> Coupon:
        """``POST /v2/coupon/issue``: one coupon of a series to a customer."""
        body = IssueRequest(series_id=series_id, customer=customer)
        return await self._call(ops.ISSUE, self._v2(ops.ISSUE), body=body, store=store, **limits)

    async def bulk_issue(
        self,
        series_ids: Sequence[int],
        customer: Customer,
        *,
        source: str | None = None,
        store: str | None = None,
        **limits: Unpack[Limits],
    ) -> BulkIssueResponse:
        """``POST /v2/coupon/bulk/issue``: a coupon of each series; per-series errors inside."""
        if not series_ids:
            raise ValueError("bulk issue needs at least one series id")
        body = BulkIssueRequest(series_ids=list(series_ids), customer=customer)
        op, params = ops.BULK_ISSUE, self._source_params(source)
        return await self._call(op, self._v2(op), params=params, body=body, store=store, **limits)

    async def coupon_details(
        self,
        *,
        codes: Sequence[str] = (),
        ids: Sequence[int] = (),
        customer_ids: Sequence[int] = (),
        **limits: Unpack[Limits],
    ) -> CouponDetailsResponse:
        """``GET /v2/coupon?couponCodes=..&couponIds=..&issuedToIds=..``."""
        params = [
            *(("couponCodes", c) for c in codes),
            *(("couponIds", str(i)) for i in ids),
            *(("issuedToIds", str(i)) for i in customer_ids),
        ]
        if not params:
            raise ValueError("coupon details needs codes, ids or customer ids")
        return await self._call(ops.COUPON_DETAILS, self._v2(ops.COUPON_DETAILS), params=params, **limits)

    # ------------------------------------------------------------------------------------------ uploads

    async def _upload(
        self, op: Operation[UploadResponse], series_id: int, form: aiohttp.FormData | None, limits: Limits
    ) -> UploadResponse:
        self.require_uploads(op.name)
        return await self._call(op, self._v1_upload(op, series_id), form=form, **limits)

    @staticmethod
    def _csv_form(csv: bytes | IO[bytes], filename: str, customer_identifier: IdentifierType) -> aiohttp.FormData:
        form = aiohttp.FormData()
        form.add_field("file", csv, filename=filename, content_type="text/csv")
        form.add_field("customerIdentifier", customer_identifier)
        return form

    async def upload_coupons(
        self,
        series_id: int,
        csv: bytes | IO[bytes],
        *,
        identifier_type: IdentifierType,
        identifier_column: int | None = None,
        filename: str = "coupons.csv",
        **limits: Unpack[Limits],
    ) -> UploadResponse:
        """``POST {upload host}/coupon/api/v1/upload/file/{seriesId}`` (multipart CSV)."""
        form = self._csv_form(csv, filename, identifier_type)
        if identifier_column is not None:
            form.add_field("customerIdentifierColumn", str(identifier_column))
        return await self._upload(ops.UPLOAD_COUPONS, series_id, form, limits)

    async def upload_redeemed_coupons(
        self,
        series_id: int,
        csv: bytes | IO[bytes],
        *,
        customer_identifier: IdentifierType,
        coupon_identifier: CouponIdentifierType,
        upload_headers: Mapping[str, int],
        details: str | None = None,
        filename: str = "redeemed.csv",
        **limits: Unpack[Limits],
    ) -> UploadResponse:
        """``POST {upload host}/coupon/api/v1/upload/redeemFile/{seriesId}``: redemptions made elsewhere."""
        form = self._csv_form(csv, filename, customer_identifier)
        form.add_field("couponIdentifier", coupon_identifier)
        form.add_field("uploadHeaders", _encoder.encode(dict(upload_headers)).decode())
        if details is not None:
            form.add_field("Details", details)  # capitalised, as documented
        return await self._upload(ops.UPLOAD_REDEEMED, series_id, form, limits)

    async def upload_status(self, series_id: int, **limits: Unpack[Limits]) -> UploadResponse:
        """``GET {upload host}/coupon/api/v1/upload/getUploadStatus/{seriesId}``."""
        return await self._upload(ops.UPLOAD_STATUS, series_id, None, limits)

    async def redeemed_upload_status(self, series_id: int, **limits: Unpack[Limits]) -> UploadResponse:
        """``GET {upload host}/coupon/api/v1/upload/getUploadRedeemedCouponStatus/{seriesId}``."""
        return await self._upload(ops.REDEEMED_UPLOAD_STATUS, series_id, None, limits)
