"""Authentication against Capillary, as aiohttp client middlewares.

- Basic: ``Authorization: Basic base64(<till username>:<md5(password) hex>)``, computed once.
- OAuth: a token from ``POST /v3/oauth/token/generate``, sent as ``X-CAP-API-OAUTH-TOKEN``; refreshed before it
  expires (from the ``ttlSeconds`` Capillary returns, never a fixed lifetime), one refresh at a time however many
  calls need it, and on a 401 refreshed once and the call retried once.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import Awaitable, Callable

from aiohttp import ClientHandlerType, ClientRequest, ClientResponse

OAUTH_HEADER = "X-CAP-API-OAUTH-TOKEN"

# (token, ttl_seconds) from the token endpoint.
TokenFetcher = Callable[[], Awaitable[tuple[str, int]]]


def basic_header(username: str, password: str) -> str:
    digest = hashlib.md5(password.encode(), usedforsecurity=False).hexdigest()
    return "Basic " + base64.b64encode(f"{username}:{digest}".encode()).decode("ascii")


class BasicAuth:
    """Client middleware adding the till's Basic credentials."""

    def __init__(self, username: str, password: str) -> None:
        self._header = basic_header(username, password)

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        request.headers["Authorization"] = self._header
        return await handler(request)


class OAuthTokens:
    """Holds the current OAuth token and refreshes it; a client middleware for every Capillary call.

    ``refresh_margin`` is the share of the lifetime left when a token is renewed ahead of expiry (at least one
    second, at most a minute), so a call never leaves with a token about to lapse in flight.
    """

    def __init__(
        self,
        fetch: TokenFetcher,
        *,
        clock: Callable[[], float] = time.monotonic,
        refresh_margin: float = 0.1,
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._margin = refresh_margin
        self._token: str | None = None
        self._renew_at = 0.0
        self._lock = asyncio.Lock()
        self.refreshes = 0

    def _fresh(self) -> str | None:
        if self._token is not None and self._clock() < self._renew_at:
            return self._token
        return None

    async def token(self) -> str:
        """A token valid for a while yet; fetches one if needed (one fetch at a time)."""
        if (token := self._fresh()) is not None:
            return token
        async with self._lock:
            if (token := self._fresh()) is not None:  # another caller refreshed while we waited
                return token
            return await self._refresh()

    async def _refresh(self) -> str:
        started = self._clock()
        token, ttl = await self._fetch()
        margin = min(60.0, max(1.0, ttl * self._margin))
        self._token, self._renew_at = token, started + max(0.0, ttl - margin)
        self.refreshes += 1
        return token

    async def renew(self, rejected: str) -> str:
        """A new token after Capillary refused ``rejected``, unless another caller already replaced it."""
        async with self._lock:
            if self._token is not None and self._token != rejected and self._fresh() is not None:
                return self._token
            return await self._refresh()

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        token = await self.token()
        request.headers[OAUTH_HEADER] = token
        response = await handler(request)
        if response.status != 401:
            return response
        response.release()
        request.headers[OAUTH_HEADER] = await self.renew(token)
        return await handler(request)
