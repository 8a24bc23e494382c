"""The listening side of the gateway: aiohttp's HTTP/1.1 server with time limits and clean refusals at the door.

aiohttp 3.14 bounds an idle connection (``keepalive_timeout``, which also runs from the moment a connection opens)
but has no header read timeout, and answers a request it cannot parse with a plain-text 400 that echoes the raw
request line, logged as an ERROR with its traceback, once per request. Neither reaches the application: middlewares
only see requests whose headers were parsed. aiohttp offers no setting or hook for them, so the gateway listens with
a small subclass of aiohttp's protocol, ``RequestHandler``:

- **Header timeout.** From the first byte of a request to the end of its headers: at most ``header_timeout``, then
  408 ``REQUEST_TIMEOUT`` (in the error envelope) and the connection closed. A connection with nothing to say is
  closed after ``keepalive`` (aiohttp's own timer), and so is anything this timer does not watch (headers of a
  pipelined request that start arriving while the one before is handled).
- **Malformed requests.** Answered 400 ``MALFORMED_HTTP`` in the error envelope, with a message that names the kind
  of problem and echoes nothing of the input (a request line may carry an API key); logged as one warning line at
  most per peer per minute, without a traceback, and counted in ``pos_coupon_access_refused_total``.
- **Requests per connection.** After ``max_requests`` answers a connection gets ``Connection: close``, so tills
  behind a long-lived keep-alive spread to replicas added since.
- **Slow bodies.** The application answers a body that does not arrive in time with 408 (service/web/access.py);
  the connection is then closed at once, instead of draining the rest of the body as aiohttp otherwise would.

The subclass relies on details of aiohttp 3.14's protocol that are not public API: ``_request_count`` (requests whose
headers were parsed), ``_request_in_progress`` (a handler is running), ``_waiter`` (a future pending while the
connection waits for the next request's headers), and ``handle_error``/``finish_response`` being called for every
error and every answer. tests/api/test_front_door.py exercises each through real sockets, so an aiohttp
upgrade that changes them fails there first.

Handlers are not cancelled when a client goes away (aiohttp's ``handler_cancellation`` stays off): a redeem already
sent to Capillary must run to its end and be recorded, whoever is still listening.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import structlog
from aiohttp import hdrs, web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server
from yarl import URL

from service.config import AccessSettings
from service.observability.metrics import Metrics
from service.redemption.catalog import CATALOG
from service.web.access import SECURITY_HEADERS
from service.web.errors import REQUEST_ID_HEADER, encoder, error_body, error_response, new_request_id

log = structlog.get_logger("service.web.server")

#: Longest request line: a back-office lookup of 50 codes fits (aiohttp's default, 8190 bytes, does not).
MAX_REQUEST_LINE: Final = 32 * 1024
#: Longest header line (aiohttp's default).
MAX_FIELD_SIZE: Final = 8190

#: What the client is told for each kind of parse failure: the kind only, never the input.
_PROBLEMS: Final[tuple[tuple[type[BaseException], str], ...]] = (
    (LineTooLong, "the request line or a header line is too long"),
    (BadHttpMethod, "bad method in the request line"),
    (BadStatusLine, "bad request line"),
    (InvalidURLError, "bad request target"),
    (InvalidHeader, "bad header"),
    (PayloadEncodingError, "bad transfer or content encoding"),
)


def _problem(exc: BaseException | None) -> str:
    for kind, text in _PROBLEMS:
        if isinstance(exc, kind):
            return text
    return "it could not be parsed"


@dataclass(frozen=True, slots=True)
class DoorLimits:
    """How long a client may take, and how much a connection may carry."""

    header_timeout: float = 10.0
    keepalive: float = 75.0
    max_requests: int = 1000  # answers per connection; 0: no limit
    lingering: float = 5.0  # how long an unread body is drained after the answer before the connection closes
    max_line_size: int = MAX_REQUEST_LINE
    max_field_size: int = MAX_FIELD_SIZE

    @classmethod
    def of(cls, access: AccessSettings) -> DoorLimits:
        return cls(
            header_timeout=access.header_timeout,
            keepalive=access.keepalive,
            max_requests=access.max_requests_per_connection,
            lingering=access.body_timeout,  # a client gets no longer to finish a body we did not read
        )


class PeerLog:
    """At most one line per peer per ``window`` seconds; the next line says how many were held back meanwhile.
    Remembers at most ``max_peers`` peers: beyond them, lines of new peers are held back (they are still counted
    in metrics), so a flood from many addresses cannot grow this table or the log."""

    def __init__(
        self, window: float = 60.0, max_peers: int = 4096, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window = window
        self.max_peers = max_peers
        self._clock = clock
        self._seen: dict[str, tuple[float, int]] = {}  # peer -> (when its last line was written, held back since)

    def admit(self, peer: str) -> int | None:
        """None: hold this line back. Otherwise write it, with this many of the peer's lines held back before."""
        now = self._clock()
        entry = self._seen.pop(peer, None)
        if entry is not None and now - entry[0] < self.window:
            self._seen[peer] = (entry[0], entry[1] + 1)
            return None
        self._expire(now)
        if len(self._seen) >= self.max_peers:
            return None
        self._seen[peer] = (now, 0)  # re-inserted last: the table stays in the order of the lines written
        return entry[1] if entry is not None else 0

    def _expire(self, now: float) -> None:
        while self._seen:
            peer, (written, _) = next(iter(self._seen.items()))
            if now - written < self.window:
                return
            del self._seen[peer]


class Door:
    """What every connection of one listening socket shares: the limits, the malformed-request log, and a counter
    of refusals (``refused(reason)``: ``malformed_http``, ``slow_headers``)."""

    def __init__(
        self, limits: DoorLimits, *, refused: Callable[[str], None] | None = None, log_window: float = 60.0
    ) -> None:
        self.limits = limits
        self.peer_log = PeerLog(log_window)
        self._refused = refused

    def refuse(self, reason: str) -> None:
        if self._refused is not None:
            self._refused(reason)

    def malformed(self, peer: str | None, exc: BaseException | None) -> None:
        self.refuse("malformed_http")
        held_back = self.peer_log.admit(peer or "unknown")
        if held_back is not None:
            # The kind of problem only: the input itself (which may hold a key) is neither echoed nor logged.
            log.warning(
                "malformed request refused",
                peer=peer,
                problem=type(exc).__name__ if exc is not None else None,
                held_back=held_back,
            )


def _raw_error(status: int, reason: str, code: str, message: str) -> bytes:
    """A whole HTTP/1.1 answer in the error envelope, for a connection on which no request could be read."""
    error = CATALOG[code]
    request_id = new_request_id()
    body = encoder.encode(error_body(error, request_id, message=message))
    head = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        f"{REQUEST_ID_HEADER}: {request_id}",
        *(f"{name}: {value}" for name, value in SECURITY_HEADERS.items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


class _Anonymous(web.Response):
    """An answer without aiohttp's ``Server`` header, which names the software and its version. (Answers of the
    application lose it in its response-prepare hook; these answers, given outside the application, have none.)"""

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        self.headers.popall(hdrs.SERVER, None)


class DoorRequestHandler(RequestHandler):
    """aiohttp's HTTP/1.1 protocol with the header timeout, the error envelope for malformed requests and the
    per-connection request limit (see the module's description)."""

    __slots__ = ("_door", "_header_timer", "_served")

    def __init__(self, manager: Server, door: Door, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._door = door
        self._header_timer: asyncio.TimerHandle | None = None
        self._served = 0

    def data_received(self, data: bytes) -> None:
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:  # a request's headers are all in: it is handled, timed by its deadline
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            return
        if not data or self._header_timer is not None or self.transport is None or self._request_in_progress:
            return  # nothing new, already timed, closing, or the body of the request being handled
        waiter = self._waiter
        if waiter is None or not waiter.done():  # bytes of headers still incomplete (not of a parsed request)
            self._header_timer = self._loop.call_later(self._door.limits.header_timeout, self._headers_too_slow)

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        waiter = self._waiter
        if self.transport is None or waiter is None or waiter.done():
            return
        self._door.refuse("slow_headers")
        limit = f"{self._door.limits.header_timeout:.3g}"
        message = f"headers: not received within {limit} s of the request's first byte"
        self.transport.write(_raw_error(408, "Request Timeout", "REQUEST_TIMEOUT", message))
        self.force_close()  # the answer is flushed, then the socket closed

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    async def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        self._served += 1
        limit = self._door.limits.max_requests
        if limit and self._served >= limit:
            resp.force_close()  # ``Connection: close``: the client's next request opens a new connection
        result = await super().finish_response(request, resp, start_time)
        if resp.status == 408:
            # Too slow to send its request: not worth draining the rest of its body (aiohttp's lingering close).
            # The answer is already written; closing flushes it before the socket goes.
            self.force_close()
        return result

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A request aiohttp could not parse (400), or a failure that escaped the application: answered in the
        error envelope, echoing nothing, and the connection closed."""
        if request.writer.output_size > 0:  # as aiohttp: an answer already started cannot be replaced
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        request_id = new_request_id()
        if status >= 500:
            log.error("request failed outside the application", status=status, exc_info=exc)
            error = CATALOG["INTERNAL_ERROR"]
            response = error_response(error, error.message, request_id=request_id, status=status)
        else:
            self._door.malformed(request.remote, exc)
            error = CATALOG["MALFORMED_HTTP"]
            message = f"The request is not valid HTTP: {_problem(exc)}."
            response = error_response(error, message, request_id=request_id)
        response.headers.update(SECURITY_HEADERS)
        response.headers[REQUEST_ID_HEADER] = request_id
        assert isinstance(response.body, bytes)
        anonymous = _Anonymous(status=response.status, body=response.body, headers=response.headers)
        anonymous.force_close()
        return anonymous


class DoorSite(web.BaseSite):
    """A TCP site whose connections are served by :class:`DoorRequestHandler` (aiohttp's ``TCPSite`` takes its
    protocol from the runner's server, which always builds the plain one)."""

    __slots__ = ("_door", "_host", "_port")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, door: Door) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._door = door

    @property
    def name(self) -> str:
        return str(URL.build(scheme="http", host=self._host, port=self._port))

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        door = self._door
        limits = door.limits
        options: dict[str, Any] = {
            "loop": loop,
            "keepalive_timeout": limits.keepalive,
            "lingering_time": limits.lingering,
            "max_line_size": limits.max_line_size,
            "max_field_size": limits.max_field_size,
            "access_log": None,  # the canonical request line replaces aiohttp's access log
        }

        def protocol() -> DoorRequestHandler:
            return DoorRequestHandler(server, door, **options)

        self._server = await loop.create_server(protocol, self._host, self._port, backlog=self._backlog)


async def serve(
    app: web.Application,
    host: str,
    port: int,
    *,
    limits: DoorLimits,
    shutdown_timeout: float,
    metrics: Metrics | None = None,
) -> web.AppRunner:
    """Start serving ``app`` on ``host:port`` (0: any free port; ``runner.addresses`` tells which) behind the door's
    limits; refusals at the door are counted in ``metrics`` (``pos_coupon_access_refused_total``) when given. The
    caller cleans the runner up."""
    refused = None if metrics is None else (lambda reason: metrics.access_refused.labels(reason).inc())
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        await DoorSite(runner, host, port, Door(limits, refused=refused)).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
