"""Shared fixtures: the embedded Capillary sandbox on a real loopback server, a Capillary client pointed at it,
and the gateway app over real HTTP with the sandbox as its upstream."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis.asyncio as redis
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from service.access.keys import ApiKey, KeyRing, digest_of
from service.app import create_app
from service.capillary.client import CapillaryClient
from service.config import AccessSettings, AuthScheme, CacheSettings, CapillarySettings, Settings, StateSettings
from service.observability.logging import configure_logging
from service.sandbox import DEMO, SANDBOX_KEY, Sandbox, SandboxConfig, create_sandbox_app

#: A Tuesday, 10:00 UTC: the sandbox's clock in tests (its "range_restricted" series only allows 22:00).
SANDBOX_NOW = datetime(2030, 1, 15, 10, 0, tzinfo=UTC)


@dataclass
class Upstream:
    """A running sandbox: its state for assertions, and its base URL."""

    sandbox: Sandbox
    url: str

    def settings(self, auth: AuthScheme = "oauth", *, timeout: float = 5.0, store: str = "S001") -> CapillarySettings:
        till = DEMO.till(store)
        return CapillarySettings(
            api_url=self.url,
            upload_url=self.url,
            auth=auth,
            client_key=DEMO.client_key,
            client_secret=DEMO.client_secret,
            till_username=till.username,
            till_password=till.password,
            connect_timeout=min(1.0, timeout),
            timeout=timeout,
        )


StartUpstream = Callable[..., Awaitable[Upstream]]


@pytest.fixture
def response_style() -> str:
    """The sandbox's answer shapes: the documented ones. Modules that must hold under every shape Capillary
    sends override this fixture with ``params=RESPONSE_STYLES``."""
    return "doc"


#: The redeem answer shapes Capillary sends (see the sandbox's ``SANDBOX_RESPONSE_STYLE``).
RESPONSE_STYLES = ("doc", "nested")


@pytest.fixture
async def start_upstream(aiohttp_server: Any, response_style: str) -> StartUpstream:
    """Start a sandbox server: ``await start_upstream(token_ttl_seconds=5, ...)`` (SandboxConfig fields)."""

    async def start(**config: Any) -> Upstream:
        config.setdefault("clock", lambda: SANDBOX_NOW)
        config.setdefault("response_style", response_style)
        config.setdefault("upload_job_seconds", 0.5)
        app = create_sandbox_app(SandboxConfig(**config))
        server: TestServer = await aiohttp_server(app)
        return Upstream(app[SANDBOX_KEY], str(server.make_url("")).rstrip("/"))

    return start


@pytest.fixture
async def upstream(start_upstream: StartUpstream) -> Upstream:
    return await start_upstream()


@pytest.fixture(params=["oauth", "basic"])
async def capillary(request: pytest.FixtureRequest, upstream: Upstream) -> AsyncIterator[CapillaryClient]:
    """A client of the sandbox, once per auth scheme."""
    client = CapillaryClient(upstream.settings(request.param))
    yield client
    await client.close()


@pytest.fixture
async def oauth_client(upstream: Upstream) -> AsyncIterator[CapillaryClient]:
    client = CapillaryClient(upstream.settings("oauth"))
    yield client
    await client.close()


GatewayClient = TestClient[web.Request, web.Application]

# The tests' API keys: an admin of store S001 (the default of the gateway fixtures), a till of S001 that may only
# redeem, and a till of another store.
ADMIN_KEY = "test-admin-key-S001"
TILL_KEY = "test-till-key-S001"
OTHER_STORE_KEY = "test-till-key-S002"
TEST_KEYS = KeyRing.of(
    ApiKey("admin-s001", "S001", None, frozenset({"redeem", "admin"}), digest_of(ADMIN_KEY)),
    ApiKey("till-s001", "S001", "T1", frozenset({"redeem"}), digest_of(TILL_KEY)),
    ApiKey("till-s002", "S002", "T1", frozenset({"redeem"}), digest_of(OTHER_STORE_KEY)),
)
#: No rate limit to speak of, so bursts in tests measure the gateway, not the limiter (tests of it set their own).
TEST_ACCESS = AccessSettings(rate_per_second=100_000, rate_burst=100_000)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


StartGateway = Callable[..., Awaitable[GatewayClient]]


@pytest.fixture
async def start_gateway(aiohttp_client: Any) -> StartGateway:
    """Start a gateway in front of a sandbox: ``await start_gateway(upstream, timeout=0.5, state=...)``."""

    async def start(
        upstream: Upstream,
        *,
        auth: AuthScheme = "oauth",
        timeout: float = 5.0,
        cache: CacheSettings | None = None,
        state: StateSettings | None = None,
        access: AccessSettings | None = None,
        key: str | None = ADMIN_KEY,
        keys: KeyRing = TEST_KEYS,
    ) -> GatewayClient:
        """``key``: the API key the client sends on every request (None: no Authorization header)."""
        settings = Settings(
            capillary=upstream.settings(auth, timeout=timeout),
            cache=cache or CacheSettings(),
            state=state or StateSettings(),
            access=access or TEST_ACCESS,
        )
        app = create_app(settings, keys=keys)
        client: GatewayClient = await aiohttp_client(app, headers=bearer(key) if key else None)
        return client

    return start


@pytest.fixture
async def gateway(start_gateway: StartGateway, upstream: Upstream) -> GatewayClient:
    """The gateway over real HTTP, with the sandbox as its upstream."""
    return await start_gateway(upstream)


def serve_env(upstream_url: str, keys_file: str, port: int, **settings: str) -> dict[str, str]:
    """The environment of a real ``coupon-gateway serve`` in front of a sandbox: this process's environment without
    any gateway, Capillary or sandbox setting, then OAuth to the sandbox, the key file, 127.0.0.1:``port``, and
    ``settings`` on top."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAPILLARY_", "GATEWAY_", "SANDBOX_"))}
    return env | {
        "CAPILLARY_API_URL": upstream_url,
        "CAPILLARY_UPLOAD_URL": upstream_url,
        "CAPILLARY_AUTH": "oauth",
        "CAPILLARY_CLIENT_KEY": DEMO.client_key,
        "CAPILLARY_CLIENT_SECRET": DEMO.client_secret,
        "GATEWAY_API_KEYS_FILE": keys_file,
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        **settings,
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


#: The tests' own database; our keys are removed after each test. Two checkouts testing side by side on one Redis
#: set ``TEST_REDIS_DB`` (and ``TEST_REDIS_CACHE_DB``) to different numbers; ``TEST_REDIS_URL`` names another Redis
#: (``redis://host:port``, as ``python -m bench.stress`` does with one of its own).
REDIS_TEST_SERVER = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")
REDIS_TEST_DB = f"{REDIS_TEST_SERVER}/{os.environ.get('TEST_REDIS_DB', '15')}"
_REDIS_ADDRESS = (urlsplit(REDIS_TEST_SERVER).hostname or "127.0.0.1", urlsplit(REDIS_TEST_SERVER).port or 6379)
#: Which test session uses the database now. Two sessions on one database share every natural key of the tests
#: and delete each other's keys: one's replay is answered from the other's record (the failure of issue 14, item
#: 7). So a session holds the database while it uses it, and a second one is stopped with a clear message.
SESSION_HOLDER_KEY = "pos_coupon_test:session"
SESSION_HOLDER = f"{socket.gethostname()}:{os.getpid()}"
SESSION_HOLD_MS = 150_000  # longer than any one test (120 s); refreshed before and after each test using it


def redis_up() -> bool:
    try:
        with socket.create_connection(_REDIS_ADDRESS, timeout=0.5):
            return True
    except OSError:
        return False


def _holder_gone(holder: str) -> bool:
    """A holder on this machine whose process no longer exists (killed before it could let go)."""
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


async def _hold_database(client: redis.Redis) -> None:
    if await client.set(SESSION_HOLDER_KEY, SESSION_HOLDER, nx=True, px=SESSION_HOLD_MS):
        return
    holder = (await client.get(SESSION_HOLDER_KEY) or b"").decode()
    if holder == SESSION_HOLDER or not holder or _holder_gone(holder):
        await client.set(SESSION_HOLDER_KEY, SESSION_HOLDER, px=SESSION_HOLD_MS)
        return
    pytest.fail(
        f"{REDIS_TEST_DB} is in use by another test session ({holder}): two sessions on one database answer each "
        "other's replays. Set TEST_REDIS_DB (and TEST_REDIS_CACHE_DB) to a database of your own."
    )


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Let go of the test database (if this session held it)."""
    if not redis_up():
        return
    import redis as sync_redis

    with contextlib.suppress(sync_redis.RedisError), sync_redis.Redis.from_url(REDIS_TEST_DB) as client:
        if client.get(SESSION_HOLDER_KEY) == SESSION_HOLDER.encode():
            client.delete(SESSION_HOLDER_KEY)


@contextlib.asynccontextmanager
async def clean_redis() -> AsyncIterator[str]:
    """The tests' Redis database, held by this session and emptied of the gateway's keys before and after. Skips
    without Redis, except under CI, where Redis is required."""
    if not redis_up():
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis must answer at {REDIS_TEST_SERVER} under CI")
        pytest.skip(f"no Redis at {REDIS_TEST_SERVER}")
    client = redis.Redis.from_url(REDIS_TEST_DB)

    async def clean() -> None:
        await _hold_database(client)
        keys = [k async for k in client.scan_iter(match="pos_coupon:*")]
        if keys:
            await client.delete(*keys)

    try:
        await clean()
        yield REDIS_TEST_DB
    finally:
        try:
            await clean()
        finally:
            await client.aclose()


@pytest.fixture
async def redis_db() -> AsyncIterator[str]:
    async with clean_redis() as url:
        yield url


class LogCapture:
    """The JSON log lines written while it is active (the production logging configuration, into a buffer)."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines() if line.strip()]


# What must never reach a log line: every demo identifier unmasked, and every secret.
FORBIDDEN_IN_LOGS = (
    *(value for c in DEMO.customers for value in (c.mobile, c.email, c.external_id) if value),
    DEMO.client_secret,
    *(t.password for t in DEMO.tills),
    "eyJ",  # the start of every JWT (OAuth tokens)
)


@pytest.fixture
def captured_logs() -> Iterator[LogCapture]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    capture = LogCapture()
    configure_logging("debug", console=False, stream=capture.stream)
    try:
        yield capture
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()
