"""The one error envelope of the API, built in one place, and the middleware that guarantees it.

``{"error": {"code", "message", "retryable", "upstream": {"code", "message"} | null, "requestId"}}``
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Final

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler

from service.redemption.catalog import CATALOG, LocalError
from service.redemption.flow import UpstreamFailure
from service.redemption.models import Failure
from service.text import digits

REQUEST_ID_HEADER: Final = "X-Request-ID"
REQUEST_ID = web.RequestKey("request_id", str)
#: What a caller's ``X-Request-ID`` may be to be echoed and logged as it is: anything else is replaced by one of ours
#: (no spaces, quotes, control or non-ASCII characters can reach a header we send or a log line).
SAFE_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")

log = logging.getLogger("service.web")


class UpstreamDetail(msgspec.Struct, frozen=True):
    code: int | None
    message: str | None


class ErrorDetail(msgspec.Struct, frozen=True, rename="camel"):
    code: str
    message: str
    retryable: bool
    upstream: UpstreamDetail | None
    request_id: str


class ErrorBody(msgspec.Struct, frozen=True):
    error: ErrorDetail


encoder: Final = msgspec.json.Encoder()

# aiohttp's text for a body beyond ``client_max_size`` (read in chunks, so no Content-Length said so first).
_TOO_LARGE: Final = re.compile(r"Maximum request body size (\d+) exceeded(?:, actual body size (\d+))?")

# Local codes for failures of HTTP itself.
HTTP_CODES: Final = {
    400: "INVALID_REQUEST",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
}


class ApiError(Exception):
    """A whole request refused with one catalog entry; the middleware writes the envelope."""

    def __init__(
        self,
        error: LocalError,
        message: str | None = None,
        *,
        upstream: UpstreamDetail | None = None,
        headers: dict[str, str] | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(message or error.message)
        self.error = error
        self.message = message or error.message
        self.upstream = upstream
        self.headers = headers or {}
        self.close = close  # answer, then close the connection (the rest of the request cannot be trusted)

    @classmethod
    def invalid(cls, message: str) -> ApiError:
        return cls(CATALOG["INVALID_REQUEST"], message)

    @classmethod
    def too_slow(cls, message: str) -> ApiError:
        """408: the client did not send its request in time. The connection is closed after the answer."""
        return cls(CATALOG["REQUEST_TIMEOUT"], message, close=True)


def detail(failure: Failure, request_id: str) -> ErrorDetail:
    """The envelope's inner object for a failure (of a whole request or of one coupon)."""
    upstream = None
    if failure.upstream_code is not None or failure.upstream_message is not None:
        upstream = UpstreamDetail(failure.upstream_code, failure.upstream_message)
    error = failure.error
    return ErrorDetail(error.code, error.message, error.retryable, upstream, request_id)


def retry_headers(error: LocalError) -> dict[str, str]:
    return {"Retry-After": "1"} if error.http_status in (429, 503) else {}


def series_id_of(request: web.Request) -> int:
    """The ``{seriesId}`` of a route, or a 400 naming it."""
    raw = request.match_info["seriesId"]
    if not digits(raw) or not 0 < int(raw) < 2**63:
        raise ApiError.invalid("seriesId: a positive number")
    return int(raw)


def json_response(status: int, body: msgspec.Struct, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=encoder.encode(body), content_type="application/json", headers=headers)


def upstream_error(exc: UpstreamFailure) -> ApiError:
    """A whole request refused because of Capillary: its local code, Capillary's own, and when to try again."""
    failure = exc.failure
    upstream = None
    if failure.upstream_code is not None or failure.upstream_message is not None:
        upstream = UpstreamDetail(failure.upstream_code, failure.upstream_message)
    headers = retry_headers(failure.error)
    if exc.retry_after is not None:  # the breaker's cool-down, or when the outbound budget has room again
        headers["Retry-After"] = str(exc.retry_after)
    return ApiError(failure.error, upstream=upstream, headers=headers)


def error_response(
    error: LocalError,
    message: str,
    *,
    request_id: str,
    status: int | None = None,
    upstream: UpstreamDetail | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = ErrorBody(ErrorDetail(error.code, message, error.retryable, upstream, request_id))
    return web.Response(
        status=status or error.http_status,
        body=encoder.encode(body),
        content_type="application/json",
        headers={**retry_headers(error), **(headers or {})},
    )


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_id_of(request: web.BaseRequest) -> tuple[str, bool]:
    """The request's id: the caller's ``X-Request-ID`` when it is in the safe set, else a new one; and whether a
    caller's id was replaced."""
    sent = request.headers.get(REQUEST_ID_HEADER)
    if sent is None:
        return new_request_id(), False
    if SAFE_REQUEST_ID.fullmatch(sent):
        return sent, False
    return new_request_id(), True


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request an id (echoed back) and turn every failure into the error envelope: no HTML
    error pages, no internals in a 500."""
    request_id = request.get(REQUEST_ID) or request_id_of(request)[0]
    request[REQUEST_ID] = request_id
    try:
        response = await handler(request)
    except ApiError as exc:
        response = error_response(
            exc.error, exc.message, request_id=request_id, upstream=exc.upstream, headers=exc.headers
        )
        if exc.close:
            response.force_close()
    except HttpProcessingError as exc:  # a malformed body part (multipart headers, chunking): the client's fault
        error = CATALOG["INVALID_REQUEST"]
        log.info("malformed request body: %s", type(exc).__name__, extra={"request_id": request_id})
        response = error_response(error, "body: malformed (a multipart part or chunk)", request_id=request_id)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = CATALOG[HTTP_CODES.get(exc.status, "HTTP_ERROR")]
        message = exc.reason if exc.text is None or exc.text.startswith(f"{exc.status}:") else exc.text
        if exc.status == 413 and (sizes := _TOO_LARGE.search(exc.text or "")):  # aiohttp's own words, as the gate's
            message = f"body: at most {sizes[1]} bytes" + (f", got {sizes[2]}" if sizes[2] else "")
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        response = error_response(error, message, request_id=request_id, status=exc.status, headers=allow)
    except Exception:
        log.exception("unhandled error", extra={"request_id": request_id})
        error = CATALOG["INTERNAL_ERROR"]
        response = error_response(error, error.message, request_id=request_id)
    response.headers[REQUEST_ID_HEADER] = request_id
    return response
