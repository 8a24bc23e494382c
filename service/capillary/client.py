"""The Capillary client: one async method per upstream coupon endpoint.

One ``ClientSession`` per upstream host (the v2 API host and the v1 "intouch" upload host), each with explicit
timeouts and the auth middleware. Every call goes through :meth:`CapillaryClient._call`, the one place where
transport failures, error statuses and undecodable bodies become typed :mod:`~service.capillary.errors`, and where
:mod:`~service.capillary.resilience` applies: the deadline in force (:mod:`service.deadline`) bounds each attempt,
the host's circuit breaker and the outbound rate limiter may refuse a call before it is sent (503, nothing applied),
and reads (GET) are retried with jittered backoff under a retry budget. Writes are never sent twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import IO, Any, Final, Generic, Protocol, TypeVar

import aiohttp
import msgspec
from multidict import CIMultiDict
from yarl import URL

from service.capillary.auth import BasicAuth, OAuthTokens
from service.capillary.errors import (
    DONE_CODES,
    SUCCESS_CODES,
    TRY_LATER_STATUSES,
    UNKNOWN_OUTCOME_CODE,
    CapillaryAuthError,
    CapillaryBadResponse,
    CapillaryConnectionError,
    CapillaryError,
    CapillaryHTTPError,
    CapillaryNotConfigured,
    CapillaryTimeoutError,
    CapillaryUnavailable,
    extract_status,
)
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
    TokenResponse,
    UploadResponse,
    decode,
)
from service.capillary.resilience import (
    REJECTED,
    Breaker,
    BreakerPolicy,
    OutboundLimiter,
    Priority,
    RetryBudget,
    backoff,
    is_outage,
    may_retry,
)
from service.config import CapillarySettings
from service.deadline import DEADLINE, URGENT
from service.observability.tracing import client_middlewares

M = TypeVar("M")

REQUEST_ID_HEADER: Final = "X-Cap-Requestid"
ATTRIBUTION_TYPE_HEADER: Final = "X-CAP-API-ATTRIBUTION-ENTITY-TYPE"
ATTRIBUTION_CODE_HEADER: Final = "X-CAP-API-ATTRIBUTION-ENTITY-CODE"
MAX_CODES_PER_CALL: Final = 50
# The operation name of every call (metrics and logs label calls with it).
OPERATIONS: Final = (
    "token",
    "is_redeemable",
    "redeem",
    "bulk_redeem",
    "series_get",
    "series_create",
    "issue",
    "bulk_issue",
    "coupon_details",
    "customer_coupons",
    "reactivate",
    "upload_coupons",
    "upload_redeemed",
    "upload_status",
    "redeemed_upload_status",
)
# Whose turn first when the outbound budget runs short (see OutboundLimiter); the rest are back-office calls.
PRIORITIES: Final = {
    "redeem": Priority.REDEEM,
    "bulk_redeem": Priority.REDEEM,
    "reactivate": Priority.REDEEM,
    "customer_coupons": Priority.REDEEM,  # reconciling redeems already sent
    "is_redeemable": Priority.CHECK,
    "series_get": Priority.CHECK,
    "coupon_details": Priority.CHECK,  # learning a code's series for the POS checks
}
# Why a call was refused before being sent (metrics label).
REJECTION_REASONS: Final = ("circuit_open", "rate_limited", "no_time")
# Less time than this left before the deadline: the call is not even started.
MIN_ATTEMPT_SECONDS: Final = 0.01

# Bill amounts go as decimal strings, as the redeem samples send them ("billAmount": "2000"); a new series' amounts
# as numbers, as the create-series sample sends them ("discountValue": 500).
_encoder = msgspec.json.Encoder(decimal_format="string")
_number_encoder = msgspec.json.Encoder(decimal_format="number")
_any_decoder = msgspec.json.Decoder()


class _Reader(Generic[M]):
    """A decoder built once per response type, plus what makes a decoded body usable."""

    def __init__(self, model: type[M], usable: Callable[[M], bool] | None = None) -> None:
        self.model = model
        self.usable = usable or (lambda _: True)


_IS_REDEEMABLE = _Reader(IsRedeemableResponse, lambda r: bool(r.redemption))
_REDEEM = _Reader(RedeemResponse, lambda r: bool(r.redemption))
_BULK_REDEEM = _Reader(BulkRedeemResponse, lambda r: bool(r.response))
_SERIES_LIST = _Reader(SeriesListResponse, lambda r: bool(r.entity))
_SERIES = _Reader(Series)
_COUPON = _Reader(Coupon, lambda c: bool(c.code))
_BULK_ISSUE = _Reader(BulkIssueResponse, lambda r: bool(r.response))
_COUPON_DETAILS = _Reader(CouponDetailsResponse)
_CUSTOMER_COUPONS = _Reader(CustomerCouponsResponse)
_REACTIVATE = _Reader(ReactivateResponse, lambda r: r.success)
_TOKEN = _Reader(TokenResponse, lambda r: r.data is not None and bool(r.data.access_token))
_UPLOAD = _Reader(UploadResponse, lambda r: r.success and r.result is not None)


def _names_refusals(reader: _Reader[Any], value: Any, status: int, operation: str, request_id: str | None) -> bool:
    """Is an error status's body one to read per code? Only when it names refusals and nothing done: such a body
    is a refusal whatever the HTTP status (a 5xx included). A body that names a code as done under an error
    status contradicts itself: its outcome is unknown (raised, and never read as a refusal). A body naming no
    code says nothing: the HTTP status decides (the caller raises by status)."""
    codes: list[int] = value.named_codes()
    if not codes:
        return False
    if any(c in DONE_CODES for c in codes) and not any(c == UNKNOWN_OUTCOME_CODE for c in codes):
        raise CapillaryBadResponse(
            operation,
            f"HTTP {status} with a body that reports success",
            http_status=status,
            request_id=request_id,
            maybe_applied=True,
        )
    return True


def _check_codes(codes: Sequence[str]) -> list[str]:
    """Codes as Capillary takes them in one comma-separated ``code=`` value: none empty, none with a comma."""
    if not 1 <= len(codes) <= MAX_CODES_PER_CALL:
        raise ValueError(f"between 1 and {MAX_CODES_PER_CALL} coupon codes per call, got {len(codes)}")
    for code in codes:
        if not code or "," in code:
            raise ValueError(f"coupon code {code!r} cannot be sent: empty or contains a comma")
    return list(codes)


class CallObserver(Protocol):
    """Told of every upstream call: for metrics and logs, kept out of the client."""

    def on_call(
        self,
        operation: str,
        seconds: float,
        outcome: str,
        http_status: int | None,
        code: int | None,
        request_id: str | None,
    ) -> None: ...


def host_of(url: URL) -> str:
    """``host[:port]``: the breaker's key and metrics label (bounded: the two configured hosts)."""
    return f"{url.host}:{url.explicit_port}" if url.explicit_port else url.host or ""


def _outcome_of(error: CapillaryError) -> str:
    if isinstance(error, CapillaryTimeoutError):
        return "timeout"
    if isinstance(error, CapillaryConnectionError):
        return "connection_error"
    if isinstance(error, CapillaryBadResponse):
        return "bad_response"
    if (error.http_status or 0) >= 500:
        return "http_5xx"
    return "business_error" if error.code is not None else "http_4xx"


class CapillaryClient:
    """Async client for Capillary's coupon APIs. Create with :meth:`open` inside a running event loop."""

    def __init__(
        self,
        settings: CapillarySettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        observer: CallObserver | None = None,
    ) -> None:
        """Build the client and its sessions; call inside a running event loop, and :meth:`close` after.
        ``clock`` times token lifetimes (monotonic seconds)."""
        self.settings = settings
        self.observer = observer
        self._api_url = URL(settings.api_url)
        self._upload_url = URL(settings.upload_url)
        self.tokens: OAuthTokens | None = None
        auth: BasicAuth | OAuthTokens
        if settings.auth == "oauth" or (settings.client_key and settings.client_secret):
            self.tokens = OAuthTokens(self._fetch_token, clock=clock)
        if settings.auth == "oauth":
            auth = self.tokens or OAuthTokens(self._fetch_token, clock=clock)
        else:
            auth = BasicAuth(settings.till_username, settings.till_password)
        # The v1 upload host documents OAuth only: with Basic for the v2 API, uploads use OAuth when client
        # credentials are given, and are not sent at all without them.
        upload_auth = self.tokens
        policy = BreakerPolicy(
            failure_ratio=settings.breaker_failure_ratio,
            slow_call_seconds=settings.breaker_slow_call_seconds,
            slow_call_ratio=settings.breaker_slow_call_ratio,
            min_calls=settings.breaker_min_calls,
            window=2 * settings.breaker_min_calls,
            open_seconds=settings.breaker_open_seconds,
            probes=settings.breaker_probes,
        )
        api_host, upload_host = host_of(self._api_url), host_of(self._upload_url)
        self._api_breaker = Breaker(api_host, policy)
        self._upload_breaker = self._api_breaker if upload_host == api_host else Breaker(upload_host, policy)
        self.limiter = OutboundLimiter(settings.rate_limit_per_minute)
        self.retry_budget = RetryBudget(settings.retry_budget_ratio)
        self.retries = dict.fromkeys(OPERATIONS, 0)
        self.rejections = {(reason, p): 0 for reason in REJECTION_REASONS for p in Priority}
        timeout = aiohttp.ClientTimeout(total=settings.timeout, connect=settings.connect_timeout)
        self._api, self._upload = (
            aiohttp.ClientSession(
                timeout=timeout,
                middlewares=(*middlewares, *client_middlewares()),  # traces: a span per call, traceparent sent
                headers={"Accept": "application/json", "User-Agent": "pos-coupon-gateway"},
            )
            for middlewares in ((auth,), (upload_auth,) if upload_auth is not None else ())
        )

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
        api, upload = self._api_breaker, self._upload_breaker
        return (api,) if upload is api else (api, upload)

    async def close(self) -> None:
        await asyncio.gather(self._api.close(), self._upload.close())

    async def __aenter__(self) -> CapillaryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------------------------------ plumbing

    async def _call(
        self,
        operation: str,
        method: str,
        url: URL,
        reader: _Reader[M],
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float | None = None,
        authenticate: bool = True,
        **options: Any,
    ) -> M:
        """One call: within the deadline in force, through the host's breaker and the outbound limiter, retried
        when that is safe (see :func:`~service.capillary.resilience.may_retry`); the observer hears of every
        attempt sent. ``timeout`` bounds each attempt (default: the configured upstream timeout)."""
        session = session or self._api
        deadline = DEADLINE.get()
        if not authenticate:  # the token call, made from inside another call's attempt: that call is guarded
            if deadline is not None:
                left = max(MIN_ATTEMPT_SECONDS, deadline - time.monotonic())
                timeout = min(timeout or self.settings.timeout, left)
            return await self._observed(operation, method, url, reader, session, timeout, authenticate, options)
        breaker = self._upload_breaker if session is self._upload else self._api_breaker
        priority = Priority.REDEEM if URGENT.get() else PRIORITIES.get(operation, Priority.BACKOFFICE)
        limit = timeout or self.settings.timeout
        # A call given more time than the usual (a file upload) is not judged slow by the usual yardstick.
        long_call = limit > self.settings.timeout
        self.retry_budget.deposit()
        attempt = 0
        while True:
            budget = limit
            if deadline is not None:
                left = deadline - time.monotonic()
                if left < MIN_ATTEMPT_SECONDS:
                    self.rejections["no_time", priority] += 1
                    raise CapillaryTimeoutError(operation, "no time left before the deadline", maybe_applied=False)
                budget = min(limit, left)
            ticket = breaker.admit()
            if ticket == REJECTED:
                self.rejections["circuit_open", priority] += 1
                raise CapillaryUnavailable(
                    operation,
                    f"circuit open for {breaker.host}",
                    reason="circuit_open",
                    retry_after=breaker.retry_after(),
                )
            try:
                wait = await self.limiter.acquire(priority, budget - MIN_ATTEMPT_SECONDS)
            except BaseException:  # cancelled while Redis decided: the breaker's ticket is not spent
                breaker.release(ticket)
                raise
            if wait < 0:
                breaker.release(ticket)
                self.rejections["rate_limited", priority] += 1
                raise CapillaryUnavailable(
                    operation, "outbound rate budget spent", reason="rate_limited", retry_after=-wait
                )
            try:
                if wait:
                    await asyncio.sleep(wait)
                    budget -= wait
                started = time.monotonic()
                per_call = None if budget == self.settings.timeout else budget  # None: the session's own timeout
                value = await self._observed(operation, method, url, reader, session, per_call, authenticate, options)
            except CapillaryError as exc:
                seconds = 0.0 if long_call else time.monotonic() - started
                if is_outage(exc) and (
                    not isinstance(exc, CapillaryTimeoutError)
                    or budget >= limit
                    or budget >= breaker.policy.slow_call_seconds
                ):
                    breaker.record(ticket, failed=True, seconds=seconds)
                elif isinstance(exc, CapillaryTimeoutError):
                    breaker.release(ticket)  # cut short by the till's deadline: says nothing about the host
                else:
                    breaker.record(ticket, failed=False, seconds=seconds)
                if (
                    exc.operation != operation  # the token call failed: the auth middleware's concern
                    or attempt >= self.settings.retry_attempts
                    or not may_retry(exc, safe=method == "GET")
                ):
                    raise
                pause = backoff(attempt)
                if deadline is not None and deadline - time.monotonic() - pause < MIN_ATTEMPT_SECONDS * 5:
                    raise
                if not self.retry_budget.withdraw():
                    raise
                attempt += 1
                self.retries[operation] += 1
                await asyncio.sleep(pause)
                continue
            except BaseException:
                breaker.release(ticket)
                raise
            breaker.record(ticket, failed=False, seconds=0.0 if long_call else time.monotonic() - started)
            return value

    async def _observed(
        self,
        operation: str,
        method: str,
        url: URL,
        reader: _Reader[M],
        session: aiohttp.ClientSession,
        timeout: float | None,
        authenticate: bool,
        options: dict[str, Any],
    ) -> M:
        """One attempt through :meth:`_send`, telling the observer how it went."""
        started = time.perf_counter()
        try:
            value, status, request_id = await self._send(
                operation, method, url, reader, session=session, timeout=timeout, authenticate=authenticate, **options
            )
        except CapillaryError as exc:
            if self.observer is not None and exc.operation == operation:  # not a token call made on its behalf
                seconds = time.perf_counter() - started
                self.observer.on_call(operation, seconds, _outcome_of(exc), exc.http_status, exc.code, exc.request_id)
            raise
        if self.observer is not None:
            outcome = "business_error" if status >= 400 else "ok"
            self.observer.on_call(operation, time.perf_counter() - started, outcome, status, None, request_id)
        return value

    async def _send(
        self,
        operation: str,
        method: str,
        url: URL,
        reader: _Reader[M],
        *,
        session: aiohttp.ClientSession | None = None,
        params: Iterable[tuple[str, str]] | None = None,
        body: msgspec.Struct | None = None,
        form: aiohttp.FormData | None = None,
        store: str | None = None,
        per_item_errors: bool = False,
        timeout: float | None = None,
        authenticate: bool = True,
    ) -> tuple[M, int, str | None]:
        """Send one request and return its decoded, usable body, or raise a typed CapillaryError.

        ``per_item_errors``: an error status (4xx or 5xx) whose body names per-coupon refusals (redeem,
        is_redeemable) is returned like a 200, since the caller needs each coupon's verdict.
        """
        headers: CIMultiDict[str] = CIMultiDict()
        data: bytes | aiohttp.FormData | None = form
        if body is not None:
            data = (_number_encoder if isinstance(body, CreateSeriesRequest) else _encoder).encode(body)
            headers["Content-Type"] = "application/json"
        if store:
            headers[ATTRIBUTION_TYPE_HEADER] = "STORE_CODE"
            headers[ATTRIBUTION_CODE_HEADER] = store
        kwargs: dict[str, Any] = {}
        if timeout is not None:
            connect = min(self.settings.connect_timeout, timeout)
            kwargs["timeout"] = aiohttp.ClientTimeout(total=timeout, connect=connect)
        if not authenticate:
            kwargs["middlewares"] = ()
        session = session or self._api
        try:
            async with session.request(
                method, url, params=list(params or ()), data=data, headers=headers, **kwargs
            ) as response:
                raw = await response.read()
                status = response.status
                request_id = response.headers.get(REQUEST_ID_HEADER)
        except CapillaryError:
            raise  # the token call inside the auth middleware failed, with its own typed error
        except aiohttp.ConnectionTimeoutError as exc:
            raise CapillaryTimeoutError(operation, f"connect timeout: {exc}", maybe_applied=False) from exc
        except aiohttp.ClientConnectorError as exc:
            raise CapillaryConnectionError(operation, f"cannot connect: {exc}", maybe_applied=False) from exc
        except TimeoutError as exc:
            raise CapillaryTimeoutError(operation, "no answer in time", maybe_applied=True) from exc
        except aiohttp.ClientError as exc:
            message = f"connection failed: {type(exc).__name__}: {exc}".rstrip(": ")
            raise CapillaryConnectionError(operation, message, maybe_applied=True) from exc
        return self._interpret(operation, reader, status, raw, request_id, per_item_errors), status, request_id

    @staticmethod
    def _interpret(
        operation: str,
        reader: _Reader[M],
        status: int,
        raw: bytes,
        request_id: str | None,
        per_item_errors: bool,
    ) -> M:
        ok = 200 <= status < 300
        if ok or (per_item_errors and status >= 400 and status != 401 and status not in TRY_LATER_STATUSES):
            try:
                value = decode(reader.model, raw)
            except msgspec.DecodeError:
                pass
            else:
                if reader.usable(value) and (ok or _names_refusals(reader, value, status, operation, request_id)):
                    return value
        try:
            found = extract_status(_any_decoder.decode(raw)) if raw else None
        except msgspec.DecodeError:
            found = None
        code, message = found or (None, None)
        if ok and (code is None or code in SUCCESS_CODES):
            raise CapillaryBadResponse(
                operation,
                "answer does not match the documented shape",
                http_status=status,
                request_id=request_id,
                maybe_applied=True,
            )
        error = CapillaryAuthError if status == 401 else CapillaryHTTPError
        raise error(
            operation,
            "credentials refused" if status == 401 else "request refused",
            http_status=status,
            code=code,
            upstream_message=message,
            request_id=request_id,
            # A 5xx may come after the action was applied; "busy, try later" (461, 521) refused it.
            maybe_applied=status >= 500 and status not in TRY_LATER_STATUSES,
        )

    def _v2(self, path: str) -> URL:
        return self._api_url / "v2" / path

    def _v1_upload(self, path: str, series_id: int) -> URL:
        return self._upload_url / "coupon/api/v1/upload" / path / str(series_id)

    # -------------------------------------------------------------------------------------------- oauth

    async def generate_token(self) -> TokenData:
        """``POST /v3/oauth/token/generate``: a fresh OAuth access token and its lifetime."""
        settings = self.settings
        reply = await self._call(
            "token",
            "POST",
            self._api_url / "v3/oauth/token/generate",
            _TOKEN,
            body=TokenRequest(key=settings.client_key, secret=settings.client_secret),
            authenticate=False,
        )
        assert reply.data is not None  # guaranteed by _TOKEN's usable check
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
        timeout: float | None = None,
    ) -> IsRedeemableResponse:
        """``GET /v2/coupon/is_redeemable``: one verdict per code, in one call for all codes. ``details=true``
        asks for the series' details too (documented; no sample shows them, so they are read where present)."""
        params = [
            *customer.query().items(),
            ("code", ",".join(_check_codes(codes))),
            ("details", "true" if details else "false"),
        ]
        return await self._call(
            "is_redeemable",
            "GET",
            self._v2("coupon/is_redeemable"),
            _IS_REDEEMABLE,
            params=params,
            store=store,
            per_item_errors=True,
            timeout=timeout,
        )

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

    async def redeem(
        self,
        customer: Customer,
        code: str,
        *,
        bill_amount: Decimal,
        transaction_number: str,
        redemption_time: str | None = None,
        store: str | None = None,
        timeout: float | None = None,
    ) -> RedeemResponse:
        """``POST /v2/coupon/redeem`` for one code. A refusal with per-coupon detail is returned, not raised."""
        return await self._call(
            "redeem",
            "POST",
            self._v2("coupon/redeem"),
            _REDEEM,
            body=self._redeem_body(customer, [code], bill_amount, transaction_number, redemption_time),
            store=store,
            per_item_errors=True,
            timeout=timeout,
        )

    async def bulk_redeem(
        self,
        customer: Customer,
        codes: Sequence[str],
        *,
        bill_amount: Decimal,
        transaction_number: str,
        redemption_time: str | None = None,
        store: str | None = None,
        timeout: float | None = None,
    ) -> BulkRedeemResponse:
        """``POST /v2/coupon/bulk/redeem``: all or nothing; siblings of a failing code carry 749."""
        params = [("source", self.settings.source)]
        if self.settings.account_id:
            params.append(("accountId", self.settings.account_id))
        return await self._call(
            "bulk_redeem",
            "POST",
            self._v2("coupon/bulk/redeem"),
            _BULK_REDEEM,
            params=params,
            body=self._redeem_body(customer, codes, bill_amount, transaction_number, redemption_time),
            store=store,
            per_item_errors=True,
            timeout=timeout,
        )

    async def reactivate(
        self, redemption_ids: Sequence[int], *, store: str | None = None, timeout: float | None = None
    ) -> ReactivateResponse:
        """``POST /v2/coupon/reactivate``: undo redemptions (a void or return at the till)."""
        if not redemption_ids:
            raise ValueError("reactivate needs at least one redemption id")
        return await self._call(
            "reactivate",
            "POST",
            self._v2("coupon/reactivate"),
            _REACTIVATE,
            body=ReactivateRequest(redemption_ids=list(redemption_ids)),
            store=store,
            timeout=timeout,
        )

    async def customer_coupons(
        self, customer: Customer, *, status: str = "ACTIVE_REDEEMED", timeout: float | None = None
    ) -> CustomerCouponsResponse:
        """``GET /v2/customers/coupons``: a customer's coupons with their redemptions' transaction numbers."""
        return await self._call(
            "customer_coupons",
            "GET",
            self._v2("customers/coupons"),
            _CUSTOMER_COUPONS,
            params=[*customer.query().items(), ("status", status)],
            timeout=timeout,
        )

    # -------------------------------------------------------------------------------------- series, issue

    async def series(self, ids: Sequence[int], *, timeout: float | None = None) -> SeriesListResponse:
        """``GET /v2/coupon/series?ids=..&ids=..``: several series in one call."""
        if not ids:
            raise ValueError("series needs at least one id")
        return await self._call(
            "series_get",
            "GET",
            self._v2("coupon/series"),
            _SERIES_LIST,
            params=[("ids", str(i)) for i in ids],
            timeout=timeout,
        )

    async def create_series(self, spec: SeriesSpec, *, timeout: float | None = None) -> Series:
        """``POST /v2/coupon/series``."""
        return await self._call(
            "series_create",
            "POST",
            self._v2("coupon/series"),
            _SERIES,
            body=CreateSeriesRequest(series=spec),
            timeout=timeout,
        )

    async def issue(
        self, series_id: int, customer: Customer, *, store: str | None = None, timeout: float | None = None
    ) -> Coupon:
        """``POST /v2/coupon/issue``: one coupon of a series to a customer."""
        return await self._call(
            "issue",
            "POST",
            self._v2("coupon/issue"),
            _COUPON,
            body=IssueRequest(series_id=series_id, customer=customer),
            store=store,
            timeout=timeout,
        )

    async def bulk_issue(
        self,
        series_ids: Sequence[int],
        customer: Customer,
        *,
        source: str | None = None,
        store: str | None = None,
        timeout: float | None = None,
    ) -> BulkIssueResponse:
        """``POST /v2/coupon/bulk/issue``: a coupon of each series; per-series errors inside."""
        if not series_ids:
            raise ValueError("bulk issue needs at least one series id")
        params = [("source", source or self.settings.source)]
        if self.settings.account_id:
            params.append(("accountId", self.settings.account_id))
        return await self._call(
            "bulk_issue",
            "POST",
            self._v2("coupon/bulk/issue"),
            _BULK_ISSUE,
            params=params,
            body=BulkIssueRequest(series_ids=list(series_ids), customer=customer),
            store=store,
            timeout=timeout,
        )

    async def coupon_details(
        self,
        *,
        codes: Sequence[str] = (),
        ids: Sequence[int] = (),
        customer_ids: Sequence[int] = (),
        timeout: float | None = None,
    ) -> CouponDetailsResponse:
        """``GET /v2/coupon?couponCodes=..&couponIds=..&issuedToIds=..``."""
        params = [
            *(("couponCodes", c) for c in codes),
            *(("couponIds", str(i)) for i in ids),
            *(("issuedToIds", str(i)) for i in customer_ids),
        ]
        if not params:
            raise ValueError("coupon details needs codes, ids or customer ids")
        return await self._call(
            "coupon_details", "GET", self._v2("coupon"), _COUPON_DETAILS, params=params, timeout=timeout
        )

    # ------------------------------------------------------------------------------------------ uploads

    async def upload_coupons(
        self,
        series_id: int,
        csv: bytes | IO[bytes],
        *,
        identifier_type: IdentifierType,
        identifier_column: int | None = None,
        filename: str = "coupons.csv",
        timeout: float | None = None,
    ) -> UploadResponse:
        """``POST {upload host}/coupon/api/v1/upload/file/{seriesId}`` (multipart CSV)."""
        form = aiohttp.FormData()
        form.add_field("file", csv, filename=filename, content_type="text/csv")
        form.add_field("customerIdentifier", identifier_type)
        if identifier_column is not None:
            form.add_field("customerIdentifierColumn", str(identifier_column))
        self.require_uploads("upload_coupons")
        return await self._call(
            "upload_coupons",
            "POST",
            self._v1_upload("file", series_id),
            _UPLOAD,
            session=self._upload,
            form=form,
            timeout=timeout,
        )

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
        timeout: float | None = None,
    ) -> UploadResponse:
        """``POST {upload host}/coupon/api/v1/upload/redeemFile/{seriesId}``: redemptions made elsewhere."""
        form = aiohttp.FormData()
        form.add_field("file", csv, filename=filename, content_type="text/csv")
        form.add_field("customerIdentifier", customer_identifier)
        form.add_field("couponIdentifier", coupon_identifier)
        form.add_field("uploadHeaders", _encoder.encode(dict(upload_headers)).decode())
        if details is not None:
            form.add_field("Details", details)  # capitalised, as documented
        self.require_uploads("upload_redeemed")
        return await self._call(
            "upload_redeemed",
            "POST",
            self._v1_upload("redeemFile", series_id),
            _UPLOAD,
            session=self._upload,
            form=form,
            timeout=timeout,
        )

    async def upload_status(self, series_id: int, *, timeout: float | None = None) -> UploadResponse:
        """``GET {upload host}/coupon/api/v1/upload/getUploadStatus/{seriesId}``."""
        self.require_uploads("upload_status")
        return await self._call(
            "upload_status",
            "GET",
            self._v1_upload("getUploadStatus", series_id),
            _UPLOAD,
            session=self._upload,
            timeout=timeout,
        )

    async def redeemed_upload_status(self, series_id: int, *, timeout: float | None = None) -> UploadResponse:
        """``GET {upload host}/coupon/api/v1/upload/getUploadRedeemedCouponStatus/{seriesId}``."""
        self.require_uploads("redeemed_upload_status")
        return await self._call(
            "redeemed_upload_status",
            "GET",
            self._v1_upload("getUploadRedeemedCouponStatus", series_id),
            _UPLOAD,
            session=self._upload,
            timeout=timeout,
        )
