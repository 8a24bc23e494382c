"""The gate in front of every ``/v1/`` route: API key and scope, per-key rate limit, body size, then the body itself
and the bulkhead.

Each refusal is answered at once in the error envelope (401, 403, 429 with ``Retry-After``, 413, 503 with
``Retry-After``), before the handler reads anything. Ops routes (health, metrics, the API description) stay open.

A JSON body is read in full before the request takes a bulkhead slot, within ``GATEWAY_BODY_TIMEOUT_SECONDS`` and
the request's deadline: a client that sends its headers and then stalls costs a socket until then (and gets 408
``REQUEST_TIMEOUT``), never a slot other tills need. Uploads are streamed by their handler, which bounds each pause.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Final, Literal

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from service.access.keys import API_KEY, ApiKey, KeyRing
from service.access.limits import Bulkheads, SharedBuckets, TokenBuckets
from service.config import AccessSettings
from service.deadline import time_left
from service.observability.context import bind_fields
from service.observability.metrics import Metrics
from service.redemption.catalog import CATALOG
from service.web.errors import ApiError

RouteClass = Literal["pos", "admin", "upload"]
ROUTE_CLASS: Final = web.RequestKey("route_class", str)

#: The POS routes a ``redeem`` key may call; every other ``/v1/`` route needs ``admin``.
POS_ROUTES: Final = frozenset(
    {
        ("POST", "/v1/redemptions/validate"),
        ("POST", "/v1/redemptions"),
        ("GET", "/v1/redemptions/{ref}"),
        ("POST", "/v1/redemptions/{ref}/reversal"),
        ("GET", "/v1/series/{seriesId}"),
    }
)
_SCOPE: Final = {"pos": "redeem", "admin": "admin", "upload": "admin"}
_CHALLENGE: Final = {"WWW-Authenticate": 'Bearer realm="pos-coupon-gateway"'}


def route_class(method: str, canonical: str) -> RouteClass:
    if (method, canonical) in POS_ROUTES:
        return "pos"
    if method == "POST" and canonical.endswith("-uploads"):
        return "upload"
    return "admin"


@dataclass
class Gate:
    keys: KeyRing
    buckets: TokenBuckets
    bulkheads: Bulkheads
    settings: AccessSettings
    metrics: Metrics
    #: With Redis: each key's rate is shared by every replica (else each replica applies it on its own).
    shared: SharedBuckets | None = None

    @classmethod
    def build(cls, keys: KeyRing, settings: AccessSettings, metrics: Metrics) -> Gate:
        bulkheads = Bulkheads(
            {
                "pos": settings.max_inflight_pos,
                "admin": settings.max_inflight_admin,
                "upload": settings.max_inflight_upload,
            }
        )
        return cls(keys, TokenBuckets(settings.rate_per_second, settings.rate_burst), bulkheads, settings, metrics)

    def _refuse(
        self, reason: str, code: str, message: str | None = None, headers: dict[str, str] | None = None
    ) -> ApiError:
        self.metrics.access_refused.labels(reason).inc()
        return ApiError(CATALOG[code], message, headers=headers)

    def authenticate(self, request: web.Request) -> ApiKey:
        header = request.headers.get("Authorization", "")
        scheme, _, secret = header.partition(" ")
        if not header:
            raise self._refuse("unauthenticated", "UNAUTHENTICATED", headers=_CHALLENGE)
        if scheme.lower() != "bearer" or not secret.strip():
            raise self._refuse(
                "unauthenticated", "UNAUTHENTICATED", "Authorization: use the Bearer scheme", headers=_CHALLENGE
            )
        key = self.keys.find(secret.strip())
        if key is None:
            raise self._refuse("unauthenticated", "UNAUTHENTICATED", "This API key is not known.", headers=_CHALLENGE)
        return key

    async def rate_wait(self, key: ApiKey) -> float:
        """0 when the key's request may go, else the seconds until it may (for ``Retry-After``): shared by every
        replica in Redis when there is one, in this process when there is not or when Redis does not answer."""
        if self.shared is not None:
            rate, burst = self.buckets.limits(key.rate_per_second, key.burst)
            decided = await self.shared.take(f"key:{key.name}", rate, burst, kind="key_rate")
            if decided is not None:
                return max(0.0, -decided)
        return self.buckets.take(key.name, key.rate_per_second, key.burst)

    def body_limit(self, klass: RouteClass) -> int:
        return self.settings.max_upload_bytes if klass == "upload" else self.settings.max_body_bytes

    def middleware(self) -> Middleware:
        gate = self

        @web.middleware
        async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            if not request.path.startswith("/v1/"):
                return await handler(request)
            key = gate.authenticate(request)
            request[API_KEY] = key
            bind_fields(key_name=key.name, till=key.till)  # for the request's log line
            resource = request.match_info.route.resource
            if resource is None:  # 404 or 405: the handler raises it, after the key was checked
                return await handler(request)
            klass = route_class(request.method, resource.canonical)
            if not key.allows(_SCOPE[klass]):
                raise gate._refuse("forbidden", "FORBIDDEN", f"This API key has no {_SCOPE[klass]!r} scope.")
            wait = await gate.rate_wait(key)
            if wait:
                raise gate._refuse("rate_limited", "RATE_LIMITED", headers={"Retry-After": str(math.ceil(wait))})
            size = request.content_length
            limit = gate.body_limit(klass)
            if size is not None and size > limit:
                raise gate._refuse("too_large", "PAYLOAD_TOO_LARGE", f"body: at most {limit} bytes, got {size}")
            request[ROUTE_CLASS] = klass
            return await handler(request)

        return access_middleware

    async def _read_body(self, request: web.Request) -> None:
        """Read a JSON body into the request (``request.read()`` then returns it) within the body timeout and the
        request's deadline, or refuse it with 408 and close the connection."""
        if request.content.is_eof():  # all of it is in already (a till's body comes with its headers): no timer
            await request.read()
            return
        left = time_left()
        budget = self.settings.body_timeout if left is None else min(self.settings.body_timeout, left)
        try:
            async with asyncio.timeout(max(budget, 0.0)):
                await request.read()
        except TimeoutError:
            self.metrics.access_refused.labels("slow_body").inc()
            raise ApiError.too_slow(f"body: not received within {budget:.3g} s") from None

    def admission(self) -> Middleware:
        """After the gate and the deadline: the JSON body read in full, then a bulkhead slot for the handler."""
        gate = self

        @web.middleware
        async def admission_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            klass = request.get(ROUTE_CLASS)
            if klass is None:  # not a /v1/ route the gate let through (ops, 404, 405)
                return await handler(request)
            if klass != "upload" and request.body_exists:
                await gate._read_body(request)
            if not gate.bulkheads.enter(klass):
                raise gate._refuse("shed", "OVERLOADED")
            try:
                return await handler(request)
            finally:
                gate.bulkheads.leave(klass)

        return admission_middleware


SECURITY_HEADERS: Final = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every response: no sniffing, no framing, no caching of API answers, no server internals (no ``Server``
    header at all: aiohttp's default, set before this runs, is removed)."""
    response.headers.update(SECURITY_HEADERS)
    response.headers.popall("Server", None)
    if request.path.startswith("/v1/"):
        response.headers.setdefault("Cache-Control", "no-store")
