"""Typed upstream failures.

Every way a Capillary call can fail becomes one of these, carrying what the gateway needs to answer the till
honestly: the HTTP status, Capillary's own status code and message when the body has one, the
``X-Cap-Requestid`` for support, and whether the request may have reached Capillary (``maybe_applied``),
which decides if a write's outcome is unknown.
"""

from __future__ import annotations

from typing import Any

# Capillary codes that mean "this item succeeded".
SUCCESS_CODES = frozenset({200, 700, 731})
# "Error sending coupon" / "unable to communicate to customer": a notification failed while the main action
# succeeded. Warnings, never verdicts: a redeem that carries one consumed the coupon.
WARNING_CODES = frozenset({704, 724})
# Codes under which the action itself went through.
DONE_CODES = SUCCESS_CODES | WARNING_CODES
# "Coupon service timed out": Capillary itself does not know whether a redeem was applied.
UNKNOWN_OUTCOME_CODE = 748
# Request-level HTTP statuses that say "busy, try later" and refuse the call: 461 "search engine busy", 521
# "multiple actions are running for the same customer". Nothing applied; not a sign of a host outage.
TRY_LATER_STATUSES = frozenset({461, 521})
# "Failed because another coupon in the batch failed": never the coupon's own fault.
SIBLING_FAILURE_CODE = 749


class CapillaryError(Exception):
    """Base of every upstream failure."""

    kind = "error"

    def __init__(
        self,
        operation: str,
        message: str,
        *,
        http_status: int | None = None,
        code: int | None = None,
        upstream_message: str | None = None,
        request_id: str | None = None,
        maybe_applied: bool = False,
    ) -> None:
        super().__init__(message)
        self.operation = operation
        self.http_status = http_status
        self.code = code
        self.upstream_message = upstream_message
        self.request_id = request_id
        self.maybe_applied = maybe_applied

    def __str__(self) -> str:
        parts = [f"{self.operation}: {self.args[0]}"]
        if self.http_status is not None:
            parts.append(f"http={self.http_status}")
        if self.code is not None:
            parts.append(f"code={self.code}")
        if self.upstream_message:
            parts.append(f"upstream={self.upstream_message!r}")
        if self.request_id:
            parts.append(f"capRequestId={self.request_id}")
        return " ".join(parts)


class CapillaryConnectionError(CapillaryError):
    """No usable answer because the connection failed: refused, reset, closed early.

    ``maybe_applied`` is False only when the connection was never established.
    """

    kind = "connection"


class CapillaryUnavailable(CapillaryConnectionError):
    """Not sent at all: the host's circuit breaker is open, or the outbound rate budget has no room within the
    request's deadline. Nothing was applied; ``retry_after`` is when trying again makes sense (seconds)."""

    kind = "unavailable"

    def __init__(self, operation: str, message: str, *, reason: str, retry_after: float) -> None:
        super().__init__(operation, message, maybe_applied=False)
        self.reason = reason
        self.retry_after = retry_after


class CapillaryNotConfigured(CapillaryUnavailable):
    """Not sent: the gateway lacks the settings this call needs (named in the message)."""

    kind = "not_configured"

    def __init__(self, operation: str, message: str) -> None:
        super().__init__(operation, message, reason="not_configured", retry_after=60.0)


class CapillaryTimeoutError(CapillaryError):
    """No answer within the deadline. ``maybe_applied`` is False only for a connect timeout."""

    kind = "timeout"


class CapillaryHTTPError(CapillaryError):
    """Capillary answered with an error status (4xx/5xx) and no result we can use."""

    kind = "http"


class CapillaryAuthError(CapillaryHTTPError):
    """Capillary refused our credentials (401), even after one token refresh."""

    kind = "auth"


class CapillaryBadResponse(CapillaryError):
    """Capillary answered with a body we cannot decode: an upstream fault (502), never a client error."""

    kind = "bad_response"


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _status_of(obj: Any) -> tuple[int, str | None] | None:
    """``(code, message)`` of a ``{status, code, message}``-like object, if it has a numeric code."""
    if not isinstance(obj, dict):
        return None
    code = _as_int(obj.get("code"))
    if code is None:
        return None
    message = obj.get("message")
    return code, message if isinstance(message, str) else None


def _first_in_list(items: Any) -> tuple[int, str | None] | None:
    if isinstance(items, list) and items:
        return _status_of(items[0])
    return None


def _item_status(item: Any) -> tuple[int, str | None] | None:
    """The code of one redeem/is_redeemable item: nested status first, then its first warning."""
    if not isinstance(item, dict):
        return None
    status = item.get("redemptionStatus")
    if isinstance(status, dict):
        found = _status_of(status.get("statusCode")) or _status_of(status)
        if found:
            return found
    return _first_in_list(item.get("warnings"))


def _prefer_failure(found: list[tuple[int, str | None]]) -> tuple[int, str | None] | None:
    """Among codes found in per-item arrays, the first own failure beats a sibling failure beats success."""
    for code, message in found:
        if code not in SUCCESS_CODES and code != SIBLING_FAILURE_CODE:
            return code, message
    for code, message in found:
        if code not in SUCCESS_CODES:
            return code, message
    return found[0] if found else None


def extract_status(body: Any) -> tuple[int, str | None] | None:
    """Find Capillary's status code and message in any known envelope.

    Searched in the order of capillary-notes.md: ``response[i].errors[0]``,
    ``response[i].result.redemptionStatus(.statusCode)``, ``redemption[i].redemptionStatus``,
    ``redemption[i].warnings[0]``, top-level ``redemptionStatus``, a flat ``{status, code, message}``,
    top-level ``errors[0]``. Within the per-item arrays a coupon's own failure is preferred over a 749
    sibling failure, and both over success.
    """
    if not isinstance(body, dict):
        return None
    response = body.get("response")
    if isinstance(response, list):
        found = [s for e in response if isinstance(e, dict) for s in [_first_in_list(e.get("errors"))] if s]
        found += [s for e in response if isinstance(e, dict) for s in [_item_status(e.get("result"))] if s]
        if (best := _prefer_failure(found)) is not None:
            return best
    redemption = body.get("redemption")
    if isinstance(redemption, list):
        found = [s for item in redemption for s in [_item_status(item)] if s]
        if (best := _prefer_failure(found)) is not None:
            return best
    return (
        _status_of(body.get("redemptionStatus"))
        or _status_of(body)
        or _first_in_list(body.get("errors"))
        or _first_in_list(body.get("warnings"))
    )
