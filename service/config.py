"""Settings: one frozen object built once from the environment, passed explicitly.

Every problem names the variable at fault, so a bad deployment stops with one clear line.
Secrets are kept out of ``repr`` so the settings can be logged safely.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from service.redis_pool import parse_cluster_url, parse_sentinel_url
from service.text import digits

AuthScheme = Literal["oauth", "basic"]


class ConfigError(ValueError):
    """A setting is missing or invalid; ``str()`` is a one-line message naming the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


class ConfigErrors(ConfigError):
    """Every missing or invalid setting found in one pass: ``problems`` holds each (``variable`` is the first's);
    ``str()`` is one line a problem."""

    def __init__(self, problems: Sequence[ConfigError]) -> None:
        if not problems:
            raise ValueError("ConfigErrors needs at least one problem")
        ValueError.__init__(self, "\n".join(str(p) for p in problems))
        self.variable = problems[0].variable
        self.problems = tuple(problems)


def settle(problems: Sequence[ConfigError]) -> None:
    """Raise every problem found at once (nothing when there is none)."""
    if problems:
        raise ConfigErrors(problems)


@dataclass(frozen=True, slots=True)
class CapillarySettings:
    """How to reach and authenticate against Capillary."""

    api_url: str
    upload_url: str
    auth: AuthScheme
    client_key: str = ""
    client_secret: str = field(default="", repr=False)
    till_username: str = ""
    till_password: str = field(default="", repr=False)
    connect_timeout: float = 2.0
    timeout: float = 8.0
    source: str = "INSTORE"
    account_id: str | None = None
    # Resilience (service/capillary/resilience.py): Capillary's budget, retries of reads, the per-host breaker.
    rate_limit_per_minute: float = 100_000.0  # 0: no limit
    retry_attempts: int = 2  # retries of a read (GET) after its first attempt
    retry_budget_ratio: float = 0.1  # retries at most this share of calls
    breaker_failure_ratio: float = 0.5
    breaker_slow_call_seconds: float = 2.0
    breaker_slow_call_ratio: float = 0.8
    breaker_min_calls: int = 10  # the window is twice this many calls
    breaker_open_seconds: float = 5.0
    breaker_probes: int = 3
    # How long a proof of the credentials (a token fetched, or an authenticated read) stands before /readyz asks
    # again (service/upstream_auth.py).
    auth_check_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """The series cache: in-memory without ``url``, Redis with one."""

    url: str | None = field(default=None, repr=False)  # may carry a password
    series_ttl: float = 300.0
    timeout: float = 0.1
    lookup_timeout: float = 2.0


@dataclass(frozen=True, slots=True)
class StateSettings:
    """The exactly-once ledger and locks: in memory without ``redis_url``, Redis with one."""

    redis_url: str | None = field(default=None, repr=False)
    redeem_deadline: float = 10.0
    ttl: float = 72 * 3600.0
    reconcile_interval: float = 5.0
    timeout: float = 0.5
    lease_margin: float = 5.0  # slack on top of the deadline and an upstream call before presuming a gateway gone
    memory_max_entries: int = 100_000  # the in-memory ledger's bound: full, it refuses new redemptions
    memory_max_per_store: int = 20_000  # one store's share of it: past that, that store's redemptions are refused
    refused_ttl: float = 900.0  # how long a redemption that redeemed nothing is remembered (its replays answered)
    clock_skew: float = 300.0  # reconciliation: how far Capillary's redemption dates may lag our clock
    write_retry: float = 600.0  # how long an answer the ledger missed is retried in the background
    wait_replicas: int = 0  # a final answer is acknowledged by this many Redis replicas before the till gets it


@dataclass(frozen=True, slots=True)
class AccessSettings:
    """Who may call the API and how much: API keys, per-key rate limits, body limits and bulkheads, and how long a
    client may take to send a request (service/web/server.py)."""

    keys_file: str | None = None  # JSON list of hashed keys; re-read on SIGHUP or when it changes
    keys_reload_interval: float = 5.0
    rate_per_second: float = 20.0  # per key, per replica
    rate_burst: float = 40.0
    max_body_bytes: int = 64 * 1024  # JSON routes
    max_upload_bytes: int = 128 * 1024 * 1024  # CSV uploads, streamed
    max_inflight_pos: int = 256  # requests in flight per route class; beyond that, 503 at once
    max_inflight_admin: int = 32
    max_inflight_upload: int = 4
    header_timeout: float = 10.0  # from a request's first byte to the end of its headers; then 408 and closed
    body_timeout: float = 5.0  # a JSON body, within the request's deadline too; an upload's longest pause
    keepalive: float = 75.0  # an idle connection is closed after this (longer than load balancers' 60 s)
    max_requests_per_connection: int = 1000  # then ``Connection: close``, so load spreads to new replicas; 0: none


@dataclass(frozen=True, slots=True)
class OfflineSettings:
    """Offline acceptance (service/offline, docs/offline.md): off unless ``OFFLINE_MODE=on``."""

    enabled: bool = False
    policy_file: str | None = None  # JSON; the contract's defaults without one
    journal_path: str | None = None  # the SQLite file journal when REDIS_URL is not set
    settle_interval: float = 30.0  # how often the settler looks for work
    job_poll_interval: float = 2.0  # how often an upload job is polled while it runs


@dataclass(frozen=True, slots=True)
class Settings:
    capillary: CapillarySettings
    cache: CacheSettings = CacheSettings()
    state: StateSettings = StateSettings()
    access: AccessSettings = AccessSettings()
    offline: OfflineSettings = OfflineSettings()
    metrics_port: int | None = None  # serve /metrics and /openapi.yaml on their own port instead of the API's
    host: str = "0.0.0.0"
    port: int = 8080
    log_level: str = "info"
    log_format: str = "auto"  # json | console | auto (console on a terminal)
    shutdown_timeout: float = 20.0
    request_deadline: float = 10.0  # a POS request's whole budget (a till may ask for less)
    shutdown_grace: float = 3.0  # after SIGTERM: unready at once, new connections refused after this grace
    otlp_endpoint: str | None = None  # traces to this OTLP/HTTP collector (OpenTelemetry, the `otel` extra); None: off


_LOG_LEVELS = ("debug", "info", "warning", "error")


class _Env:
    """Typed reads of environment variables; every failure names the variable.

    Given a ``problems`` list, a read that fails records its problem there and returns the default (or an empty
    placeholder) instead of raising, so that one pass over the environment finds every bad setting at once.
    """

    def __init__(self, env: Mapping[str, str], problems: list[ConfigError] | None = None) -> None:
        self._env = env
        self._problems = problems

    def fail(self, name: str, problem: str) -> None:
        """Record (or raise) a problem with ``name``."""
        error = ConfigError(name, problem)
        if self._problems is None:
            raise error
        if all(p.variable != name for p in self._problems):  # one problem a variable: the first found
            self._problems.append(error)

    def text(self, name: str, default: str | None = None) -> str:
        value = self._env.get(name, "").strip()
        if value:
            return value
        if default is None:
            self.fail(name, "is required")
            return ""
        return default

    def optional(self, name: str) -> str | None:
        return self._env.get(name, "").strip() or None

    def url(self, name: str) -> str:
        value = self.text(name)
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            self.fail(name, f"must be an http(s) URL like https://eu.api.capillarytech.com, got {value!r}")
        elif parts.query or parts.fragment:
            self.fail(name, "must not carry a query string or fragment")
        return value.rstrip("/")

    def redis_url(self, name: str) -> str | None:
        value = self.optional(name)
        if value is None:
            return None
        scheme = urlsplit(value).scheme
        if scheme not in ("redis", "rediss", "redis+sentinel", "rediss+sentinel", "redis+cluster", "rediss+cluster"):
            self.fail(name, "must be a redis://, rediss://, redis+sentinel:// or redis+cluster:// URL (rediss: TLS)")
            return None
        if "+" in scheme:
            try:
                (parse_sentinel_url if "sentinel" in scheme else parse_cluster_url)(value)
            except ValueError as exc:
                self.fail(name, str(exc))
                return None
        return value

    def number(self, name: str, default: float, *, minimum: float, maximum: float, integer: bool = False) -> float:
        raw = self.optional(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            self.fail(name, f"must be a number, got {raw!r}")
            return default
        if integer and not value.is_integer():
            self.fail(name, f"must be a whole number, got {raw!r}")
            return default
        if not minimum <= value <= maximum:
            self.fail(name, f"must be between {minimum:g} and {maximum:g}, got {raw}")
            return default
        return value

    def port(self, name: str, default: int) -> int:
        raw = self.optional(name)
        if raw is None:
            return default
        if not digits(raw) or not 0 <= int(raw) <= 65535:
            self.fail(name, f"must be a TCP port number (0-65535), got {raw!r}")
            return default
        return int(raw)

    def choice(self, name: str, choices: tuple[str, ...], default: str | None = None) -> str:
        value = self.text(name, default).lower()
        if value and value not in choices:
            self.fail(name, f"must be one of {', '.join(choices)}, got {value!r}")
            return default or ""
        return value


_AUTH_REQUIRED = (
    "is required: oauth (with CAPILLARY_CLIENT_KEY and CAPILLARY_CLIENT_SECRET) or basic (with"
    " CAPILLARY_TILL_USERNAME and CAPILLARY_TILL_PASSWORD)"
)


def capillary_from_env(env: Mapping[str, str], problems: list[ConfigError] | None = None) -> CapillarySettings:
    """Capillary's settings; with ``problems``, every problem is recorded there instead of raised."""
    read = _Env(env, problems)
    scheme = ""
    if read.optional("CAPILLARY_AUTH") is None:
        read.fail("CAPILLARY_AUTH", _AUTH_REQUIRED)
    else:
        scheme = read.choice("CAPILLARY_AUTH", ("oauth", "basic"))
    auth: AuthScheme = "basic" if scheme == "basic" else "oauth"
    api_url = read.url("CAPILLARY_API_URL")
    upload_url = read.url("CAPILLARY_UPLOAD_URL")
    key = secret = username = password = ""
    if scheme == "oauth":
        key = read.text("CAPILLARY_CLIENT_KEY")
        secret = read.text("CAPILLARY_CLIENT_SECRET")
    elif scheme == "basic":
        username = read.text("CAPILLARY_TILL_USERNAME")
        password = read.text("CAPILLARY_TILL_PASSWORD")
        # The upload host takes OAuth only: client credentials, when given, serve the uploads.
        key = read.optional("CAPILLARY_CLIENT_KEY") or ""
        secret = read.optional("CAPILLARY_CLIENT_SECRET") or ""
    connect_timeout = read.number("CAPILLARY_CONNECT_TIMEOUT_SECONDS", 2.0, minimum=0.05, maximum=60)
    timeout = read.number("CAPILLARY_TIMEOUT_SECONDS", 8.0, minimum=0.1, maximum=300)
    if connect_timeout > timeout:
        read.fail("CAPILLARY_CONNECT_TIMEOUT_SECONDS", f"must not exceed CAPILLARY_TIMEOUT_SECONDS ({timeout:g})")
    source = read.text("CAPILLARY_SOURCE", "INSTORE").upper()
    if not source.replace("_", "").isalnum():
        read.fail("CAPILLARY_SOURCE", f"must be a Capillary source name like INSTORE, got {source!r}")
    return CapillarySettings(
        api_url=api_url,
        upload_url=upload_url,
        auth=auth,
        client_key=key,
        client_secret=secret,
        till_username=username,
        till_password=password,
        connect_timeout=connect_timeout,
        timeout=timeout,
        source=source,
        account_id=read.optional("CAPILLARY_ACCOUNT_ID"),
        rate_limit_per_minute=read.number("CAPILLARY_RATE_LIMIT_PER_MINUTE", 100_000, minimum=0, maximum=10_000_000),
        retry_attempts=int(read.number("CAPILLARY_RETRY_ATTEMPTS", 2, minimum=0, maximum=5, integer=True)),
        retry_budget_ratio=read.number("CAPILLARY_RETRY_BUDGET_RATIO", 0.1, minimum=0, maximum=1),
        breaker_failure_ratio=read.number("CAPILLARY_BREAKER_FAILURE_RATIO", 0.5, minimum=0.01, maximum=1),
        breaker_slow_call_seconds=read.number("CAPILLARY_BREAKER_SLOW_CALL_SECONDS", 2.0, minimum=0.01, maximum=300),
        breaker_slow_call_ratio=read.number("CAPILLARY_BREAKER_SLOW_CALL_RATIO", 0.8, minimum=0.01, maximum=1),
        breaker_min_calls=int(read.number("CAPILLARY_BREAKER_MIN_CALLS", 10, minimum=1, maximum=1000, integer=True)),
        breaker_open_seconds=read.number("CAPILLARY_BREAKER_OPEN_SECONDS", 5.0, minimum=0.1, maximum=600),
        breaker_probes=int(read.number("CAPILLARY_BREAKER_PROBES", 3, minimum=1, maximum=100, integer=True)),
        auth_check_seconds=read.number("CAPILLARY_AUTH_CHECK_SECONDS", 30.0, minimum=1, maximum=3600),
    )


def cache_from_env(env: Mapping[str, str], problems: list[ConfigError] | None = None) -> CacheSettings:
    read = _Env(env, problems)
    return CacheSettings(
        url=read.redis_url("CACHE_URL"),
        series_ttl=read.number("SERIES_CACHE_TTL_SECONDS", 300.0, minimum=1, maximum=7 * 24 * 3600),
        timeout=read.number("CACHE_TIMEOUT_SECONDS", 0.1, minimum=0.005, maximum=5),
        lookup_timeout=read.number("SERIES_LOOKUP_TIMEOUT_SECONDS", 2.0, minimum=0.05, maximum=60),
    )


def state_from_env(env: Mapping[str, str], problems: list[ConfigError] | None = None) -> StateSettings:
    read = _Env(env, problems)
    ttl = read.number("IDEMPOTENCY_TTL_SECONDS", 72 * 3600.0, minimum=60, maximum=30 * 24 * 3600)
    max_entries = int(read.number("LEDGER_MEMORY_MAX_ENTRIES", 100_000, minimum=100, maximum=10_000_000, integer=True))
    per_store = int(read.number("LEDGER_MEMORY_MAX_PER_STORE", 20_000, minimum=100, maximum=10_000_000, integer=True))
    refused_ttl = read.number("LEDGER_REFUSED_TTL_SECONDS", 900.0, minimum=10, maximum=30 * 24 * 3600)
    redis_url = read.redis_url("REDIS_URL")
    wait_replicas = int(read.number("REDIS_WAIT_REPLICAS", 0, minimum=0, maximum=10, integer=True))
    return StateSettings(
        redis_url=redis_url,
        redeem_deadline=read.number("REDEEM_DEADLINE_SECONDS", 10.0, minimum=0.5, maximum=120),
        wait_replicas=wait_replicas,
        ttl=ttl,
        reconcile_interval=read.number("RECONCILE_INTERVAL_SECONDS", 5.0, minimum=0.05, maximum=3600),
        timeout=read.number("REDIS_TIMEOUT_SECONDS", 0.5, minimum=0.01, maximum=10),
        lease_margin=read.number("LEASE_MARGIN_SECONDS", 5.0, minimum=0.05, maximum=600),
        memory_max_entries=max_entries,
        memory_max_per_store=min(per_store, max_entries),  # a share of the whole, never more
        refused_ttl=min(refused_ttl, ttl),  # never longer than any record is kept
        clock_skew=read.number("RECONCILE_CLOCK_SKEW_SECONDS", 300.0, minimum=0, maximum=24 * 3600),
        write_retry=read.number("LEDGER_WRITE_RETRY_SECONDS", 600.0, minimum=1, maximum=24 * 3600),
    )


def offline_from_env(env: Mapping[str, str], problems: list[ConfigError] | None = None) -> OfflineSettings:
    read = _Env(env, problems)
    enabled = read.choice("OFFLINE_MODE", ("on", "off"), "off") == "on"
    journal = read.optional("OFFLINE_JOURNAL_PATH")
    if enabled and journal is None and read.optional("REDIS_URL") is None:
        read.fail(
            "OFFLINE_MODE",
            "is on, but neither REDIS_URL nor OFFLINE_JOURNAL_PATH is set: provisional redemptions need a journal",
        )
    policy_file = read.optional("OFFLINE_POLICY_FILE")
    if enabled and policy_file is not None:
        from service.offline_policy import PolicyError, load_policy  # read once here, so a bad file stops startup

        try:
            load_policy(policy_file)
        except PolicyError as exc:
            read.fail("OFFLINE_POLICY_FILE", str(exc))
    return OfflineSettings(
        enabled=enabled,
        policy_file=policy_file,
        journal_path=journal,
        settle_interval=read.number("OFFLINE_SETTLE_INTERVAL_SECONDS", 30.0, minimum=0.05, maximum=3600),
        job_poll_interval=read.number("OFFLINE_JOB_POLL_SECONDS", 2.0, minimum=0.01, maximum=600),
    )


def access_from_env(
    env: Mapping[str, str], *, keys_required: bool = True, problems: list[ConfigError] | None = None
) -> AccessSettings:
    read = _Env(env, problems)
    keys_file = read.text("GATEWAY_API_KEYS_FILE") if keys_required else read.optional("GATEWAY_API_KEYS_FILE")
    rate = read.number("GATEWAY_RATE_LIMIT_PER_SECOND", 20.0, minimum=0.1, maximum=100_000)
    burst = read.number("GATEWAY_RATE_LIMIT_BURST", max(rate * 2, 1.0), minimum=1, maximum=1_000_000)
    return AccessSettings(
        keys_file=keys_file,
        keys_reload_interval=read.number("GATEWAY_API_KEYS_RELOAD_SECONDS", 5.0, minimum=0.1, maximum=3600),
        rate_per_second=rate,
        rate_burst=burst,
        max_body_bytes=int(
            read.number("GATEWAY_MAX_BODY_BYTES", 64 * 1024, minimum=1024, maximum=16 * 1024**2, integer=True)
        ),
        max_upload_bytes=int(
            read.number("GATEWAY_MAX_UPLOAD_BYTES", 128 * 1024**2, minimum=1024, maximum=4 * 1024**3, integer=True)
        ),
        max_inflight_pos=int(read.number("GATEWAY_MAX_INFLIGHT_POS", 256, minimum=1, maximum=100_000, integer=True)),
        max_inflight_admin=int(read.number("GATEWAY_MAX_INFLIGHT_ADMIN", 32, minimum=1, maximum=100_000, integer=True)),
        max_inflight_upload=int(read.number("GATEWAY_MAX_INFLIGHT_UPLOADS", 4, minimum=1, maximum=1000, integer=True)),
        header_timeout=read.number("GATEWAY_HEADER_TIMEOUT_SECONDS", 10.0, minimum=0.1, maximum=300),
        body_timeout=read.number("GATEWAY_BODY_TIMEOUT_SECONDS", 5.0, minimum=0.1, maximum=300),
        keepalive=read.number("GATEWAY_KEEPALIVE_SECONDS", 75.0, minimum=1, maximum=3600),
        max_requests_per_connection=int(
            read.number("GATEWAY_MAX_REQUESTS_PER_CONNECTION", 1000, minimum=0, maximum=1_000_000, integer=True)
        ),
    )


def gateway_from_env(
    env: Mapping[str, str],
    capillary: CapillarySettings,
    *,
    keys_required: bool = True,
    default_host: str = "0.0.0.0",
    problems: list[ConfigError] | None = None,
) -> Settings:
    """The gateway's settings around ``capillary``. ``default_host``: where to listen without ``GATEWAY_HOST``
    (``serve --sandbox`` keeps its demo keys on 127.0.0.1). With ``problems``, every problem is recorded there."""
    read = _Env(env, problems)
    port = read.port("GATEWAY_PORT", 8080)
    metrics_port = read.port("GATEWAY_METRICS_PORT", 0) if read.optional("GATEWAY_METRICS_PORT") else None
    if metrics_port is not None and metrics_port in (0, port):
        read.fail("GATEWAY_METRICS_PORT", f"must be a port of its own, not 0 or GATEWAY_PORT ({port})")
        metrics_port = None
    return Settings(
        capillary=capillary,
        cache=cache_from_env(env, problems),
        state=state_from_env(env, problems),
        access=access_from_env(env, keys_required=keys_required, problems=problems),
        offline=offline_from_env(env, problems),
        metrics_port=metrics_port,
        host=read.text("GATEWAY_HOST", default_host),
        port=port,
        log_level=read.choice("LOG_LEVEL", _LOG_LEVELS, "info"),
        log_format=read.choice("LOG_FORMAT", ("auto", "json", "console"), "auto"),
        shutdown_timeout=read.number("GATEWAY_SHUTDOWN_TIMEOUT_SECONDS", 20.0, minimum=0, maximum=600),
        request_deadline=read.number("GATEWAY_REQUEST_DEADLINE_SECONDS", 10.0, minimum=0.1, maximum=300),
        shutdown_grace=read.number("GATEWAY_SHUTDOWN_GRACE_SECONDS", 3.0, minimum=0, maximum=120),
        otlp_endpoint=_otlp_endpoint(read),
    )


def _otlp_endpoint(read: _Env) -> str | None:
    """OpenTelemetry's own variable (its SDK reads it too): set, traces are on and sent there over OTLP/HTTP."""
    if read.optional("OTEL_EXPORTER_OTLP_ENDPOINT") is None:
        return None
    endpoint = read.url("OTEL_EXPORTER_OTLP_ENDPOINT")
    try:
        import opentelemetry.sdk.trace  # noqa: F401  # the optional extra
    except ImportError:
        read.fail(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "is set, but OpenTelemetry is not installed: pip install 'pos-coupon-gateway[otel]' (or unset it)",
        )
        return None
    return endpoint


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read every setting from ``env`` (default: the process environment); raise :class:`ConfigErrors` naming
    every problem at once."""
    env = os.environ if env is None else env
    problems: list[ConfigError] = []
    settings = gateway_from_env(env, capillary_from_env(env, problems), problems=problems)
    settle(problems)
    return settings


def sandbox_address(env: Mapping[str, str], problems: list[ConfigError] | None = None) -> tuple[str, int]:
    """Where the embedded sandbox listens: ``SANDBOX_HOST`` (default 127.0.0.1), ``SANDBOX_PORT`` (8081)."""
    read = _Env(env, problems)
    return read.text("SANDBOX_HOST", "127.0.0.1"), read.port("SANDBOX_PORT", 8081)
