"""Each API request's deadline: ``GATEWAY_REQUEST_DEADLINE_SECONDS``, or less when the till asks for less with
``X-Request-Deadline-Ms``. Written here into :mod:`service.deadline`, whose ``current()`` is the one reader: every
upstream call made for the request gets only the time left;
when it is spent the till gets 504 ``UPSTREAM_TIMEOUT`` (a redeem that may have gone through: 202 ``pending``)."""

from __future__ import annotations

from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from service.deadline import reset_deadline, set_deadline
from service.text import digits
from service.web.errors import ApiError

DEADLINE_HEADER: Final = "X-Request-Deadline-Ms"
MAX_HEADER_MS: Final = 3_600_000
#: Less than this leaves no time for the Capillary calls a request needs: refused as a client mistake, not
#: answered with a 504 for a deadline that could never be met.
MIN_HEADER_MS: Final = 200


def _asked(request: web.Request) -> float | None:
    """The till's own deadline in seconds, if it sent one."""
    raw = request.headers.get(DEADLINE_HEADER)
    if raw is None:
        return None
    raw = raw.strip()
    if not digits(raw) or not MIN_HEADER_MS <= int(raw) <= MAX_HEADER_MS:
        raise ApiError.invalid(f"{DEADLINE_HEADER}: whole milliseconds, {MIN_HEADER_MS} to {MAX_HEADER_MS}")
    return int(raw) / 1000.0


def deadline_middleware(default_seconds: float, prefix: str = "/v1/") -> Middleware:
    """Give each request under ``prefix`` its deadline for as long as it is handled."""

    @web.middleware
    async def deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(prefix):
            return await handler(request)
        asked = _asked(request)
        token = set_deadline(default_seconds if asked is None else min(asked, default_seconds))
        try:
            return await handler(request)
        finally:
            reset_deadline(token)

    return deadline
