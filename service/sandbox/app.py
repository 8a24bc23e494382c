"""The sandbox as an aiohttp application: one app serves both the v2 host and the v1 "intouch" upload host.

Request pipeline for every upstream operation (see `_Dispatcher.dispatch`):

1. record the call (operation name, request id) and run the upload jobs that are due;
2. global latency (``options.latency_ms``);
3. authentication (all operations but ``token``): ``X-CAP-API-OAUTH-TOKEN`` (or ``Authorization: Bearer``
   on the v1 upload routes) with a live token, or, on the v2 routes only, ``Authorization: Basic
   base64(till:md5hex)`` (the upload host documents OAuth only); else 401; redeem and bulk redeem then draw
   their response style (`Sandbox.next_style`);
4. fault lookup (only authenticated calls draw faults, so a client's re-authentication does not eat them):
   latency faults sleep; HTTP_ERROR / RATE_LIMIT / RESET / MALFORMED / TIMEOUT answer without parsing or
   applying anything;
5. parse (invalid input answers 4xx, nothing applied), then apply atomically (no await between the rule
   checks and the state change), or answer a CODE fault's envelope without applying;
6. APPLY_THEN_* faults act after the apply.

Sleeps end early when the client hangs up, and they never sit between a check and its apply.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final

import msgspec
import structlog
from aiohttp import web

from . import operations as ops
from .config import RESPONSE_STYLES, SandboxConfig, Style
from .faults import PRE_APPLY_KINDS, TRY_LATER_MESSAGES, Fault, FaultKind
from .operations import OpContext, Operation, Prepared, Rejected, Reply
from .sandbox import Call, Sandbox
from .seed import DEMO
from .state import message_for
from .uploads import error_file_csv
from .wire import status_entry

SANDBOX_KEY: Final = web.AppKey("sandbox", Sandbox)
REQUEST_ID_KEY: Final = web.RequestKey("sandbox_request_id", str)
ADMIN_PREFIX: Final = "/__sandbox"
_UPLOAD_PREFIX: Final = "/coupon/api/v1/"
#: Operations whose answers take the configured response style (doc / nested / mixed).
_STYLED_OPERATIONS: Final = frozenset({"redeem", "bulk_redeem"})
_MAX_UPLOAD_BYTES: Final = 160 * 1024 * 1024  # CSV uploads: above the gateway's own default limit (128 MiB)

_log = structlog.get_logger("service.sandbox")

_HTML_PAGES: Final[Mapping[int, str]] = MappingProxyType(
    {502: "502 Bad Gateway", 503: "503 Service Temporarily Unavailable", 504: "504 Gateway Time-out"}
)


def create_sandbox_app(config: SandboxConfig | None = None) -> web.Application:
    """Build the sandbox app; ``app[SANDBOX_KEY]`` is its `Sandbox` (state, faults, calls, clock)."""
    sandbox = Sandbox(config)
    app = web.Application(middlewares=[_envelope_middleware], client_max_size=_MAX_UPLOAD_BYTES)
    app[SANDBOX_KEY] = sandbox
    dispatcher = _Dispatcher(sandbox)
    routes: list[tuple[str, str, str, Operation]] = [
        ("POST", "/v3/oauth/token/generate", "token", ops.token),
        ("GET", "/v2/coupon/is_redeemable", "is_redeemable", ops.is_redeemable),
        ("POST", "/v2/coupon/redeem", "redeem", ops.redeem),
        ("POST", "/v2/coupon/bulk/redeem", "bulk_redeem", ops.bulk_redeem),
        ("GET", "/v2/coupon/series", "series_get", ops.series_get),
        ("POST", "/v2/coupon/series", "series_create", ops.series_create),
        ("POST", "/v2/coupon/issue", "issue", ops.issue),
        ("POST", "/v2/coupon/bulk/issue", "bulk_issue", ops.bulk_issue),
        ("GET", "/v2/coupon", "coupon_details", ops.coupon_details),
        ("GET", "/v2/customers/coupons", "customer_coupons", ops.customer_coupons),
        ("POST", "/v2/coupon/reactivate", "reactivate", ops.reactivate),
        ("POST", "/coupon/api/v1/upload/file/{seriesId}", "upload_coupons", ops.upload_coupons),
        ("POST", "/coupon/api/v1/upload/redeemFile/{seriesId}", "upload_redeemed", ops.upload_redeemed),
        ("GET", "/coupon/api/v1/upload/getUploadStatus/{seriesId}", "upload_status", ops.upload_status),
        (
            "GET",
            "/coupon/api/v1/upload/getUploadRedeemedCouponStatus/{seriesId}",
            "redeemed_upload_status",
            ops.redeemed_upload_status,
        ),
    ]
    for method, path, name, operation in routes:
        app.router.add_route(method, path, dispatcher.handler(name, operation), name=name)
    _add_admin_routes(app, sandbox)
    return app


# ---- responses -----------------------------------------------------------------------------------------------


def _respond(reply: Reply) -> web.Response:
    if reply.text is not None:
        return web.Response(status=reply.status, text=reply.text, content_type=reply.content_type)
    return web.Response(status=reply.status, body=msgspec.json.encode(reply.body), content_type="application/json")


def _json(status: int, body: object) -> web.Response:
    return _respond(Reply(status, body))


def _html_error(status: int) -> Reply:
    title = _HTML_PAGES.get(status, f"{status} Error")
    page = (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n"
        "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )
    return Reply(status, text=page, content_type="text/html")


def _custom_body(status: int, body: str) -> Reply:
    looks_json = body.lstrip()[:1] in ("{", "[")
    return Reply(status, text=body, content_type="application/json" if looks_json else "text/html")


_UNAUTHORIZED: Final = Reply(401, {"status": False, "code": 401, "message": "Unauthorized"})


@web.middleware
async def _envelope_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Request id on every response; JSON bodies for routing errors and unexpected exceptions."""
    request_id = uuid.uuid4().hex
    request[REQUEST_ID_KEY] = request_id
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = _json(exc.status, {"status": False, "code": exc.status, "message": exc.reason})
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
    except Exception:
        _log.exception("sandbox_unexpected_error", method=request.method, path=request.path, request_id=request_id)
        response = _json(500, {"status": False, "code": 500, "message": "Internal Server Error"})
    response.headers["X-Cap-Requestid"] = request_id
    return response


# ---- dispatch ------------------------------------------------------------------------------------------------


class _Auth:
    __slots__ = ("scheme", "store")

    def __init__(self, scheme: str, store: str) -> None:
        self.scheme = scheme
        self.store = store


async def _sleep_while_connected(request: web.Request, seconds: float) -> bool:
    """Sleep; return False as soon as the client has hung up (so nothing more is done for it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        transport = request.transport
        if transport is None or transport.is_closing():
            return False
        remaining = deadline - loop.time()
        if remaining <= 0:
            return True
        await asyncio.sleep(min(remaining, 0.05))


def _drop_connection(request: web.Request) -> web.Response:
    """Close the connection without writing a response (the client sees a disconnect)."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    # aiohttp fails to write this to the aborted transport and ignores it ("premature disconnection").
    return web.Response(status=499)


class _Dispatcher:
    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    def handler(self, name: str, operation: Operation) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self.dispatch(request, name, operation)

        return handle

    async def dispatch(self, request: web.Request, name: str, operation: Operation) -> web.StreamResponse:
        sandbox = self._sandbox
        call = sandbox.record_call(name, request.method, request.path_qs, request[REQUEST_ID_KEY])
        sandbox.process_jobs()
        latency = sandbox.options.latency_ms / 1000
        if latency > 0 and not await _sleep_while_connected(request, latency):
            return self._gone(request)

        store = sandbox.config.default_store
        if name != "token":
            auth = self._authenticate(request, upload_host=request.path.startswith(_UPLOAD_PREFIX))
            if auth is None:
                return self._finish(call, _UNAUTHORIZED)
            call.auth = "oauth" if auth.scheme == "oauth" else "basic"
            call.store = store = auth.store
        style: Style = "doc"
        if name in _STYLED_OPERATIONS:
            call.style = style = sandbox.next_style()

        taken = sandbox.faults.take(name)
        fault = taken.fault
        if taken.latency > 0:
            call.fault = FaultKind.LATENCY.value
            if not await _sleep_while_connected(request, taken.latency):
                return self._gone(request)
        if fault is not None:
            call.fault = fault.kind.value
            if fault.kind in PRE_APPLY_KINDS:
                return await self._fault_without_apply(request, call, fault)

        try:
            prepared = await operation(OpContext(request=request, sandbox=sandbox, store=store, style=style))
        except Rejected as rejected:
            return self._finish(call, rejected.reply)

        if fault is not None and fault.kind is FaultKind.CODE and not fault.apply:
            return self._finish(call, self._code_reply(prepared, fault))
        reply = prepared.apply()  # synchronous: rule checks and state change happen together
        if fault is None:
            return self._finish(call, reply)
        return await self._fault_after_apply(request, call, fault, prepared, reply)

    # ---- auth -----------------------------------------------------------------------------------------------

    def _authenticate(self, request: web.Request, *, upload_host: bool) -> _Auth | None:
        """v2: the OAuth token header or Basic till credentials. The v1 upload host documents OAuth only: the
        ``x-cap-api-oauth-token`` header, or (as the redeemFile sample's curl sends it) ``Authorization: Bearer``
        with the same token; Basic credentials there get 401."""
        sandbox = self._sandbox
        headers = request.headers
        token = headers.get("X-CAP-API-OAUTH-TOKEN")
        authorization = headers.get("Authorization", "").strip()
        scheme, _, credentials = authorization.partition(" ")
        if token is None and upload_host and scheme.lower() == "bearer":
            token = credentials
        if token is not None:
            if not sandbox.token_valid(token.strip()):
                return None
            return _Auth("oauth", self._attributed_store(request))
        if scheme.lower() == "basic" and not upload_host:
            try:
                decoded = base64.b64decode(credentials.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return None
            username, sep, password_md5 = decoded.partition(":")
            till = sandbox.till(username, password_md5) if sep else None
            return None if till is None else _Auth("basic", till.store)
        return None

    def _attributed_store(self, request: web.Request) -> str:
        """STORE_CODE attribution names the store; TILL attribution names a till (its store, if known)."""
        entity_type = request.headers.get("X-CAP-API-ATTRIBUTION-ENTITY-TYPE", "").strip().upper()
        entity_code = request.headers.get("X-CAP-API-ATTRIBUTION-ENTITY-CODE", "").strip()
        if entity_code and entity_type == "STORE_CODE":
            return entity_code
        if entity_code and entity_type == "TILL":
            till = self._sandbox.till_by_username(entity_code)
            if till is not None:
                return till.store
        return self._sandbox.config.default_store

    # ---- faults ---------------------------------------------------------------------------------------------

    async def _fault_without_apply(self, request: web.Request, call: Call, fault: Fault) -> web.StreamResponse:
        status = fault.http_status or 503
        match fault.kind:
            case FaultKind.RESET:
                return self._gone(request)
            case FaultKind.RATE_LIMIT:
                reply = (
                    _custom_body(status, fault.body)
                    if fault.body is not None
                    else Reply(status, {"status": False, "code": status, "message": "Too Many Requests"})
                )
                return self._finish(call, reply)
            case FaultKind.MALFORMED:
                text = fault.body if fault.body is not None else "<html><body><h1>Service Unavailable</h1>"
                return self._finish(call, Reply(status, text=text, content_type="text/html"))
            case FaultKind.TIMEOUT:
                if not await _sleep_while_connected(request, fault.delay):
                    return self._gone(request)
                return self._finish(call, _html_error(status))
            case _:  # HTTP_ERROR
                body = fault.body
                if body is not None:
                    return self._finish(call, _custom_body(status, body))
                if status in TRY_LATER_MESSAGES:
                    flat = {"status": False, "code": status, "message": TRY_LATER_MESSAGES[status]}
                    return self._finish(call, Reply(status, flat))
                return self._finish(call, _html_error(status))

    async def _fault_after_apply(
        self, request: web.Request, call: Call, fault: Fault, prepared: Prepared, reply: Reply
    ) -> web.StreamResponse:
        match fault.kind:
            case FaultKind.APPLY_THEN_TIMEOUT:
                if not await _sleep_while_connected(request, fault.delay):
                    return self._gone(request)
                return self._finish(call, reply)
            case FaultKind.APPLY_THEN_RESET:
                return self._gone(request)
            case FaultKind.APPLY_THEN_ERROR:
                status = fault.http_status or 502
                body = fault.body
                return self._finish(call, _custom_body(status, body) if body is not None else _html_error(status))
            case FaultKind.CODE:
                return self._finish(call, self._code_reply(prepared, fault))
            case FaultKind.WARNING:
                if prepared.warn is None:
                    return self._finish(call, reply)
                code = fault.warning_code
                return self._finish(call, prepared.warn(reply, status_entry(code), fault.warning_scope))
            case _:
                return self._finish(call, reply)

    @staticmethod
    def _code_reply(prepared: Prepared, fault: Fault) -> Reply:
        code = fault.code if fault.code is not None else 709
        if fault.target is not None and prepared.refuse is not None:
            reply = prepared.refuse(code, message_for(code), fault.target)
        else:
            reply = prepared.fail(code, message_for(code))
        if fault.status is not None:
            return Reply(fault.status, reply.body, reply.text, reply.content_type)
        return reply

    @staticmethod
    def _finish(call: Call, reply: Reply) -> web.Response:
        call.status = reply.status
        return _respond(reply)

    @staticmethod
    def _gone(request: web.Request) -> web.Response:
        return _drop_connection(request)


# ---- admin ---------------------------------------------------------------------------------------------------


def _add_admin_routes(app: web.Application, sandbox: Sandbox) -> None:
    admin = _Admin(sandbox)
    router = app.router
    router.add_get(f"{ADMIN_PREFIX}/demo", admin.demo)
    router.add_get(f"{ADMIN_PREFIX}/state", admin.state)
    router.add_post(f"{ADMIN_PREFIX}/reset", admin.reset)
    router.add_get(f"{ADMIN_PREFIX}/faults", admin.list_faults)
    router.add_post(f"{ADMIN_PREFIX}/faults", admin.add_faults)
    router.add_delete(f"{ADMIN_PREFIX}/faults", admin.clear_faults)
    router.add_get(f"{ADMIN_PREFIX}/calls", admin.calls)
    router.add_delete(f"{ADMIN_PREFIX}/calls", admin.clear_calls)
    router.add_get(f"{ADMIN_PREFIX}/clock", admin.clock)
    router.add_post(f"{ADMIN_PREFIX}/clock", admin.move_clock)
    router.add_post(f"{ADMIN_PREFIX}/tokens/revoke", admin.revoke_tokens)
    router.add_get(f"{ADMIN_PREFIX}/options", admin.options)
    router.add_post(f"{ADMIN_PREFIX}/options", admin.set_options)
    # A finished job's errorFileUrl, relative to the upload host: the rejected rows with their reasons.
    router.add_get(r"/{name:error_[A-Za-z0-9_]+}", admin.error_file)


_OPTION_KEYS: Final = (
    "failureHttpStatus",
    "latencyMs",
    "isRedeemableAllOrNothing",
    "responseStyle",
    "isRedeemableSeries",
)


def _admin_error(message: str, status: int = 400) -> web.Response:
    return _json(status, {"error": message})


async def _admin_body(request: web.Request) -> Any:
    try:
        return msgspec.json.decode(await request.read())
    except msgspec.DecodeError:
        raise web.HTTPBadRequest(reason="body is not valid JSON") from None


class _Admin:
    """Unauthenticated control endpoints for tests and curl users (never part of the upstream contract)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    async def demo(self, request: web.Request) -> web.Response:
        return _json(200, DEMO.to_json())

    async def error_file(self, request: web.Request) -> web.Response:
        """The error file of an upload job: its header row (or ``column0..``) plus ``error``, then each rejected
        row as uploaded with its reason (CSV)."""
        self._sandbox.process_jobs()
        name = request.match_info["name"]
        job = next((j for j in self._sandbox.state.upload_jobs.values() if j.error_file_url == name), None)
        if job is None:
            raise web.HTTPNotFound(text="no such error file")
        return web.Response(text=error_file_csv(job), content_type="text/csv")

    async def state(self, request: web.Request) -> web.Response:
        sandbox = self._sandbox
        sandbox.process_jobs()
        state = sandbox.state
        redemptions = list(state.redemptions.values())
        return _json(
            200,
            {
                "now": sandbox.now().isoformat(),
                "counts": {
                    "customers": len(state.customers),
                    "series": len(state.series),
                    "coupons": len(state.coupons),
                    "redemptions": len(redemptions),
                    "activeRedemptions": sum(1 for r in redemptions if not r.reversed),
                    "uploadJobs": len(state.upload_jobs),
                    "faults": len(sandbox.faults),
                    "calls": len(sandbox.calls),
                },
                "redemptions": [
                    {
                        "id": r.id,
                        "code": r.code,
                        "couponId": r.coupon_id,
                        "seriesId": r.series_id,
                        "customerId": r.customer_id,
                        "transactionNumber": r.transaction_number,
                        "billAmount": str(r.bill_amount),
                        "discount": str(r.discount),
                        "store": r.store,
                        "redeemedOn": r.redeemed_on.isoformat(),
                        "source": r.source,
                        "reversed": r.reversed,
                    }
                    for r in redemptions
                ],
                "uploadJobs": [
                    {
                        "jobId": j.job_id,
                        "kind": j.kind,
                        "seriesId": j.series_id,
                        "status": j.status,
                        "actualRowCount": j.actual_row_count,
                        "totalUploadedCount": j.total_uploaded_count,
                        "errorCount": j.error_count,
                        "rowErrors": [{"row": n, "reason": why} for n, why in j.row_errors],
                    }
                    for j in state.upload_jobs.values()
                ],
            },
        )

    async def reset(self, request: web.Request) -> web.Response:
        self._sandbox.reset()
        return _json(200, {"reset": True, "now": self._sandbox.now().isoformat()})

    async def list_faults(self, request: web.Request) -> web.Response:
        return _json(200, {"faults": self._pending()})

    def _pending(self) -> list[dict[str, Any]]:
        return [{**fault.to_json(), "remaining": left} for fault, left in self._sandbox.faults.pending]

    async def add_faults(self, request: web.Request) -> web.Response:
        body = await _admin_body(request)
        items = body if isinstance(body, list) else [body]
        try:
            faults = [Fault.from_json(item) for item in items]
        except ValueError as exc:
            return _admin_error(str(exc))
        for fault in faults:
            self._sandbox.faults.add(fault)
        return _json(201, {"added": [f.to_json() for f in faults], "faults": self._pending()})

    async def clear_faults(self, request: web.Request) -> web.Response:
        return _json(200, {"cleared": self._sandbox.faults.clear()})

    async def calls(self, request: web.Request) -> web.Response:
        sandbox = self._sandbox
        return _json(
            200,
            {"calls": [c.to_json() for c in sandbox.calls], "counts": dict(sandbox.call_counts())},
        )

    async def clear_calls(self, request: web.Request) -> web.Response:
        count = len(self._sandbox.calls)
        self._sandbox.calls.clear()
        return _json(200, {"cleared": count})

    async def clock(self, request: web.Request) -> web.Response:
        return _json(200, {"now": self._sandbox.now().isoformat()})

    async def move_clock(self, request: web.Request) -> web.Response:
        body = await _admin_body(request)
        if not isinstance(body, dict) or not ({"now", "advanceSeconds"} & set(body)):
            return _admin_error('expected {"advanceSeconds": <number>} or {"now": "<ISO-8601 with offset>"}')
        if "now" in body:
            try:
                when = datetime.fromisoformat(str(body["now"]))
                self._sandbox.set_now(when)
            except ValueError as exc:
                return _admin_error(f"now: {exc}")
        if "advanceSeconds" in body:
            seconds = body["advanceSeconds"]
            if isinstance(seconds, bool) or not isinstance(seconds, int | float):
                return _admin_error("advanceSeconds must be a number")
            self._sandbox.advance(float(seconds))
        return _json(200, {"now": self._sandbox.now().isoformat()})

    async def revoke_tokens(self, request: web.Request) -> web.Response:
        return _json(200, {"revoked": self._sandbox.revoke_tokens()})

    async def options(self, request: web.Request) -> web.Response:
        return _json(200, self._options_json())

    def _options_json(self) -> dict[str, Any]:
        options = self._sandbox.options
        return {
            "failureHttpStatus": options.failure_http_status,
            "latencyMs": options.latency_ms,
            "isRedeemableAllOrNothing": options.is_redeemable_all_or_nothing,
            "responseStyle": options.response_style,
            "isRedeemableSeries": options.is_redeemable_series,
        }

    async def set_options(self, request: web.Request) -> web.Response:
        body = await _admin_body(request)
        if not isinstance(body, dict):
            return _admin_error("expected a JSON object")
        options = self._sandbox.options
        unknown = set(body) - set(_OPTION_KEYS)
        if unknown:
            return _admin_error(f"unknown option(s): {', '.join(sorted(unknown))}")
        status = body.get("failureHttpStatus", options.failure_http_status)
        latency = body.get("latencyMs", options.latency_ms)
        all_or_nothing = body.get("isRedeemableAllOrNothing", options.is_redeemable_all_or_nothing)
        style = body.get("responseStyle", options.response_style)
        series = body.get("isRedeemableSeries", options.is_redeemable_series)
        if status not in (200, 400):
            return _admin_error("failureHttpStatus must be 200 or 400")
        if isinstance(latency, bool) or not isinstance(latency, int | float) or latency < 0:
            return _admin_error("latencyMs must be a non-negative number")
        if not isinstance(all_or_nothing, bool):
            return _admin_error("isRedeemableAllOrNothing must be a boolean")
        if style not in RESPONSE_STYLES:
            return _admin_error(f"responseStyle must be one of {', '.join(RESPONSE_STYLES)}")
        if not isinstance(series, bool):
            return _admin_error("isRedeemableSeries must be a boolean")
        options.failure_http_status = status
        options.latency_ms = float(latency)
        options.is_redeemable_all_or_nothing = all_or_nothing
        options.is_redeemable_series = series
        if "responseStyle" in body:
            self._sandbox.set_response_style(style)
        return _json(200, self._options_json())
