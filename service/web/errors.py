"""The one error envelope of the API, built in one place, and the middleware that guarantees it.

``{"error": {"code", "message", "retryable", "upstream": {"code", "message"} | null, "requestId"}}``

Every route family (POS, back office, offline, the door in :mod:`service.web.server`) builds it with
:func:`error_detail` (the inner object, also carried per coupon in answers) and :func:`error_body` (the whole
envelope); the HTTP status of a refusal comes from the catalog (:func:`refusal_status`).
"""

from __future__ import annotations

import re
from typing import Final

import msgspec
import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler

from service.observability.context import (
    REQUEST_ID,
    REQUEST_ID_HEADER,
    SAFE_REQUEST_ID,
    assign_request_id,
    new_request_id,
    request_id_of,
)
from service.redemption.catalog import CATALOG, LocalError
from service.redemption.flow import UpstreamFailure
from service.redemption.models import Failure
from service.text import digits

__all__ = [
    "REQUEST_ID",
    "REQUEST_ID_HEADER",
    "SAFE_REQUEST_ID",
    "ApiError",
    "ErrorBody",
    "ErrorDetail",
    "UpstreamDetail",
    "error_body",
    "error_detail",
    "error_middleware",
    "error_response",
    "json_response",
    "new_request_id",
    "refusal_status",
    "request_id_of",
    "retry_headers",
]

log = structlog.get_logger("service.web")


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


def upstream_detail(code: int | None, message: str | None) -> UpstreamDetail | None:
    """What Capillary itself said, when it said anything."""
    return UpstreamDetail(code, message) if code is not None or message is not None else None


def error_detail(
    error: LocalError,
    request_id: str,
    *,
    message: str | None = None,
    upstream: UpstreamDetail | None = None,
) -> ErrorDetail:
    """The envelope's inner object: one catalog entry, the message (the catalog's own unless given), what
    Capillary said and the request's id. Every error the API answers, whole or per coupon, is built here."""
    text = error.message if message is None else message
    return ErrorDetail(error.code, text, error.retryable, upstream, request_id)


def error_body(
    error: LocalError, request_id: str, *, message: str | None = None, upstream: UpstreamDetail | None = None
) -> ErrorBody:
    """The whole envelope: ``{"error": ...}``."""
    return ErrorBody(error_detail(error, request_id, message=message, upstream=upstream))


def detail(failure: Failure, request_id: str) -> ErrorDetail:
    """The envelope's inner object for a failure (of a whole request or of one coupon)."""
    upstream = upstream_detail(failure.upstream_code, failure.upstream_message)
    return error_detail(failure.error, request_id, upstream=upstream)


def refusal_status(error: LocalError) -> int:
    """The status of an answer that refuses a request's coupons: the first reason's own status from the catalog
    (409 for a coupon already used, 404 for an unknown customer, ...), 422 when that status is not a client's."""
    status = error.http_status
    return status if 400 <= status < 500 else 422


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
    upstream = upstream_detail(failure.upstream_code, failure.upstream_message)
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
    body = error_body(error, request_id, message=message, upstream=upstream)
    return web.Response(
        status=status or error.http_status,
        body=encoder.encode(body),
        content_type="application/json",
        headers={**retry_headers(error), **(headers or {})},
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request an id (echoed back) and turn every failure into the error envelope: no HTML
    error pages, no internals in a 500."""
    request_id, _ = assign_request_id(request)
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
        log.info("malformed_request_body", problem=type(exc).__name__, request_id=request_id)
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
        log.exception("unhandled_error", request_id=request_id)
        error = CATALOG["INTERNAL_ERROR"]
        response = error_response(error, error.message, request_id=request_id)
    response.headers[REQUEST_ID_HEADER] = request_id
    return response
