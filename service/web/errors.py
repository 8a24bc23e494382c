"""The one error envelope of the API, built in one place, and the middleware that guarantees it.

``{"error": {"code", "message", "retryable", "upstream": {"code", "message"} | null, "requestId"}}``
"""

from __future__ import annotations

import logging
import uuid
from typing import Final

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler

REQUEST_ID_HEADER: Final = "X-Request-ID"
REQUEST_ID = web.RequestKey("request_id", str)

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


_encoder = msgspec.json.Encoder()

# Local codes for failures of HTTP itself (the redemption catalog adds the business ones).
_HTTP_CODES: Final = {
    400: "INVALID_REQUEST",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
}


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    request_id: str,
    retryable: bool = False,
    upstream: UpstreamDetail | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = ErrorBody(ErrorDetail(code, message, retryable, upstream, request_id))
    return web.Response(status=status, body=_encoder.encode(body), content_type="application/json", headers=headers)


def _request_id(request: web.Request) -> str:
    sent = request.headers.get(REQUEST_ID_HEADER, "")
    if 0 < len(sent) <= 128 and sent.isprintable():
        return sent
    return uuid.uuid4().hex


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request an id (echoed back) and turn every failure into the error envelope: no HTML
    error pages, no internals in a 500."""
    request_id = request[REQUEST_ID] = _request_id(request)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "HTTP_ERROR")
        message = exc.reason if exc.text is None or exc.text.startswith(f"{exc.status}:") else exc.text
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        response = error_response(exc.status, code, message, request_id=request_id, headers=allow)
    except Exception:
        log.exception("unhandled error", extra={"request_id": request_id})
        response = error_response(
            500, "INTERNAL_ERROR", "Internal error; quote the request id to support", request_id=request_id
        )
    response.headers[REQUEST_ID_HEADER] = request_id
    return response
