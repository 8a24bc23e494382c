"""Proof that Capillary accepts the gateway's credentials, for start-up and ``/readyz``.

A gateway whose Capillary secret is wrong answers every till with 502; it must not pass readiness. The proof:

- **OAuth**: a token fetched with the client key and secret (``POST /v3/oauth/token/generate``). The proof is the
  client's own token holder, so a token fetched for the proof is the one the next calls use, and a fresh token
  already held proves the credentials without a call.
- **Basic**: a cheap authenticated read, ``GET /v2/coupon?couponIds=0`` (Capillary's "Get Coupon Details", documented
  as not rate limited): id 0 is never a coupon, so it reads nothing, and any answer but 401/403 means the till's
  credentials were accepted.

A verdict stands for ``CAPILLARY_AUTH_CHECK_SECONDS``; one check runs at a time however many probes ask. 401 or 403
makes the verdict ``refused`` (``/readyz`` answers 503); no answer at all (Capillary unreachable, the breaker open)
makes it ``unknown``, which proves nothing either way. Each change of verdict is logged once: a refusal at error.
Real calls refused with 401/403 are reported here too (see :meth:`UpstreamAuth.observe`), so a secret revoked while
the gateway runs shows without waiting for the next check.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

import structlog

from service.capillary.client import CapillaryClient
from service.capillary.errors import CapillaryError

log = structlog.get_logger("service.upstream_auth")

State = Literal["ok", "refused", "unknown"]
STATES: Final[tuple[State, ...]] = ("ok", "refused", "unknown")
#: The coupon id read by the Basic proof: never a coupon.
PROBE_COUPON_ID: Final = 0
REFUSING: Final = frozenset({401, 403})


@dataclass(frozen=True, slots=True)
class Verdict:
    state: State
    reason: str | None = None  # for ``refused`` and ``unknown``: why, in a line
    http_status: int | None = None
    checked_at: float = 0.0


class UpstreamAuth:
    """The current verdict on the Capillary credentials, re-proven when it is older than ``ttl`` seconds."""

    def __init__(
        self,
        client: CapillaryClient,
        *,
        ttl: float = 30.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._ttl = ttl
        self._timeout = timeout
        self._clock = clock
        self._verdict: Verdict | None = None
        self._running: asyncio.Task[Verdict] | None = None
        self.checks: dict[str, int] = dict.fromkeys(STATES, 0)

    @property
    def scheme(self) -> str:
        return self._client.settings.auth

    @property
    def failing(self) -> bool:
        """Capillary refused the credentials at the last proof (or on a call since)."""
        return self._verdict is not None and self._verdict.state == "refused"

    def _fresh(self) -> Verdict | None:
        verdict = self._verdict
        if verdict is not None and self._clock() - verdict.checked_at < self._ttl:
            return verdict
        return None

    async def verdict(self, *, wait: float | None = None) -> Verdict:
        """The verdict, proving the credentials again when it is stale. ``wait``: give up waiting for a check in
        progress after that many seconds and answer the last verdict (or ``unknown``); the check goes on."""
        fresh = self._fresh()
        if fresh is not None:
            return fresh
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._check())
        try:
            async with asyncio.timeout(wait):
                return await asyncio.shield(self._running)
        except TimeoutError:
            return self._verdict or Verdict("unknown", "the credentials check is still running", None, self._clock())

    def expire(self) -> None:
        """Forget the verdict: the next probe proves the credentials again."""
        self._verdict = None

    def observe(self, operation: str, http_status: int | None, request_id: str | None) -> None:
        """A Capillary call answered ``http_status``. A refused token request is a verdict on its own; any other
        call refused with 401/403 sends the next probe to check again."""
        if http_status not in REFUSING:
            return
        if operation == "token":
            reason = _refusal("oauth", operation, http_status)  # token requests carry the OAuth client
            self._record(Verdict("refused", reason, http_status, self._clock()), request_id, checked=False)
        else:
            self.expire()

    async def close(self) -> None:
        if self._running is not None and not self._running.done():
            self._running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._running

    async def _check(self) -> Verdict:
        request_id = None
        try:
            async with asyncio.timeout(self._timeout):
                if self.scheme == "oauth" and self._client.tokens is not None:
                    await self._client.tokens.token()
                else:  # Basic on the v2 API (its OAuth client, if any, serves only the upload host)
                    await self._client.coupon_details(ids=[PROBE_COUPON_ID], timeout=self._timeout)
        except CapillaryError as exc:
            request_id = exc.request_id
            status = exc.http_status
            if status in REFUSING or (exc.operation == "token" and status is not None and 400 <= status < 500):
                scheme = "oauth" if exc.operation == "token" else self.scheme
                verdict = Verdict("refused", _refusal(scheme, exc.operation, status), status, self._clock())
            elif status is not None and status < 500:  # answered, so authenticated: the probe's query was refused
                verdict = Verdict("ok", None, None, self._clock())
            else:
                verdict = Verdict("unknown", f"Capillary did not answer the check: {exc}", status, self._clock())
        except TimeoutError:
            verdict = Verdict("unknown", f"no answer to the check within {self._timeout:g} s", None, self._clock())
        else:
            verdict = Verdict("ok", None, None, self._clock())
        self._record(verdict, request_id)
        return verdict

    def _record(self, verdict: Verdict, request_id: str | None, *, checked: bool = True) -> None:
        before = self._verdict.state if self._verdict is not None else None
        self._verdict = verdict
        if checked:
            self.checks[verdict.state] += 1
        if verdict.state == before:
            return
        fields = {"scheme": self.scheme, "http_status": verdict.http_status, "cap_request_id": request_id}
        if verdict.state == "refused":
            log.error("capillary refuses the gateway's credentials", reason=verdict.reason, **fields)
        elif verdict.state == "ok":
            log.info("capillary accepts the gateway's credentials", **fields)
        else:
            log.warning("capillary credentials not proven", reason=verdict.reason, **fields)


_VARIABLES: Final = {
    "oauth": "CAPILLARY_CLIENT_KEY and CAPILLARY_CLIENT_SECRET",
    "basic": "CAPILLARY_TILL_USERNAME and CAPILLARY_TILL_PASSWORD",
}


def _refusal(scheme: str, operation: str, http_status: int | None) -> str:
    return f"Capillary answered {http_status} to {operation}: check {_VARIABLES[scheme]}"
