"""Reading an upstream answer: the usable body of a call, or the typed failure its transport, status or body says.

Pure functions over what came back, used by the pipeline's :class:`~service.capillary.pipeline.Attempt` stage.
"""

from __future__ import annotations

from typing import Any, Final, TypeVar

import aiohttp
import msgspec

from service.capillary import errors
from service.capillary.errors import (
    DONE_CODES,
    SUCCESS_CODES,
    TRY_LATER_STATUSES,
    UNKNOWN_OUTCOME_CODE,
    CapillaryError,
    extract_status,
)
from service.capillary.models import decode
from service.capillary.operations import Operation

M = TypeVar("M")

#: Capillary's id of a request, for support: logged, and kept with each failure.
REQUEST_ID_HEADER: Final = "X-Cap-Requestid"
_any_decoder: Final = msgspec.json.Decoder()


def transport_error(operation: str, exc: aiohttp.ClientError | TimeoutError) -> CapillaryError:
    """The typed failure of a call that got no answer; ``maybe_applied`` is false only when it never connected."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return errors.CapillaryTimeoutError(operation, f"connect timeout: {exc}", maybe_applied=False)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return errors.CapillaryConnectionError(operation, f"cannot connect: {exc}", maybe_applied=False)
    if isinstance(exc, TimeoutError):
        return errors.CapillaryTimeoutError(operation, "no answer in time", maybe_applied=True)
    message = f"connection failed: {type(exc).__name__}: {exc}".rstrip(": ")
    return errors.CapillaryConnectionError(operation, message, maybe_applied=True)


def outcome_of(error: CapillaryError) -> str:
    """The observer's outcome label of a failed attempt."""
    if isinstance(error, errors.CapillaryTimeoutError):
        return "timeout"
    if isinstance(error, errors.CapillaryConnectionError):
        return "connection_error"
    if isinstance(error, errors.CapillaryBadResponse):
        return "bad_response"
    if (error.http_status or 0) >= 500:
        return "http_5xx"
    return "business_error" if error.code is not None else "http_4xx"


def _names_refusals(value: Any, status: int, operation: str, request_id: str | None) -> bool:
    """Is an error status's body one to read per code? Only when it names refusals and nothing done: such a body
    is a refusal whatever the HTTP status (a 5xx included). A body that names a code as done under an error
    status contradicts itself: its outcome is unknown (raised, and never read as a refusal). A body naming no
    code says nothing: the HTTP status decides (the caller raises by status)."""
    codes: list[int] = value.named_codes()
    if not codes:
        return False
    if any(c in DONE_CODES for c in codes) and not any(c == UNKNOWN_OUTCOME_CODE for c in codes):
        raise errors.CapillaryBadResponse(
            operation,
            f"HTTP {status} with a body that reports success",
            http_status=status,
            request_id=request_id,
            maybe_applied=True,
        )
    return True


def interpret(op: Operation[M], status: int, raw: bytes, request_id: str | None) -> M:
    """The usable answer in a body, or the typed failure it (or its status) says."""
    ok = 200 <= status < 300
    operation = op.name
    if ok or (op.per_item_errors and status >= 400 and status != 401 and status not in TRY_LATER_STATUSES):
        try:
            value = decode(op.model, raw)
        except msgspec.DecodeError:
            pass
        else:
            if op.usable(value) and (ok or _names_refusals(value, status, operation, request_id)):
                return value
    try:
        found = extract_status(_any_decoder.decode(raw)) if raw else None
    except msgspec.DecodeError:
        found = None
    code, message = found or (None, None)
    if ok and (code is None or code in SUCCESS_CODES):
        raise errors.CapillaryBadResponse(
            operation,
            "answer does not match the documented shape",
            http_status=status,
            request_id=request_id,
            maybe_applied=True,
        )
    error = errors.CapillaryAuthError if status == 401 else errors.CapillaryHTTPError
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
