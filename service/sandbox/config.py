"""Sandbox settings: one frozen object, optionally read from the environment."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal, TypeVar

import msgspec

from .faults import Fault


@dataclass(frozen=True)
class Till:
    """A store till's Basic-auth credentials. The password is plain; clients send md5(password) hex."""

    username: str
    password: str
    store: str


#: The shape one redeem / bulk redeem answer takes.
Style = Literal["doc", "nested"]
#: The configured style: one of the shapes, or "mixed" (alternating per call, doc first).
ResponseStyle = Literal["doc", "nested", "mixed"]
RESPONSE_STYLES: Final[tuple[ResponseStyle, ...]] = ("doc", "nested", "mixed")

DEFAULT_TILLS: Final[tuple[Till, ...]] = (
    Till(username="till.s001", password="s001-secret", store="S001"),
    Till(username="till.s002", password="s002-secret", store="S002"),
)


@dataclass(frozen=True)
class SandboxConfig:
    client_key: str = "sandbox-client-key"
    client_secret: str = "sandbox-client-secret"
    token_ttl_seconds: int = 300
    tills: tuple[Till, ...] = DEFAULT_TILLS
    #: Store of OAuth calls that carry no STORE_CODE/TILL attribution header.
    default_store: str = "S001"
    #: Added before every operation (token included).
    latency_ms: float = 0
    #: Time for an upload job to go STARTED/QUEUED -> FINISHED/COMPLETED/FAILED (on the sandbox clock; half way
    #: it shows PROCESSING/IN_PROGRESS).
    upload_job_seconds: float = 2.0
    #: Injectable "now" (tz-aware UTC); default real time. The sandbox adds its own offset (set_now/advance).
    clock: Callable[[], datetime] | None = None
    #: Faults armed at start (and re-armed by a reset).
    faults: tuple[Fault, ...] = ()
    #: Seed the deterministic demo data (see `DEMO`).
    seed: bool = True
    #: HTTP status of redeem / bulk redeem business failures (400 upstream; 200 = "HTTP 200 with status false").
    failure_http_status: int = 400
    #: Shape of redeem / bulk redeem answers: ``doc`` (the documents' "Redeem Coupons" sample: flat items, the
    #: verdict only in the top-level ``redemptionStatus``), ``nested`` (per-item nested ``redemptionStatus``,
    #: ``redemptionId``, ``discountType``...), or ``mixed`` (doc, nested, doc, ... per redeem or bulk redeem call).
    response_style: ResponseStyle = "doc"
    #: Add ``seriesId`` to every ``is_redeemable`` item (no sample shows series details; off = the sample shape).
    is_redeemable_series: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SandboxConfig:
        """Read SANDBOX_* variables; a bad value raises ValueError naming the variable."""
        defaults = cls()
        return cls(
            client_key=_string(env, "SANDBOX_CLIENT_KEY", defaults.client_key),
            client_secret=_string(env, "SANDBOX_CLIENT_SECRET", defaults.client_secret),
            token_ttl_seconds=_positive_int(env, "SANDBOX_TOKEN_TTL_SECONDS", defaults.token_ttl_seconds),
            latency_ms=_non_negative(env, "SANDBOX_LATENCY_MS", defaults.latency_ms),
            upload_job_seconds=_non_negative(env, "SANDBOX_UPLOAD_JOB_SECONDS", defaults.upload_job_seconds),
            faults=_faults(env, "SANDBOX_FAULTS"),
            failure_http_status=_http_status(env, "SANDBOX_FAILURE_HTTP_STATUS", defaults.failure_http_status),
            response_style=_response_style(env, "SANDBOX_RESPONSE_STYLE", defaults.response_style),
            is_redeemable_series=_switch(env, "SANDBOX_IS_REDEEMABLE_SERIES", defaults.is_redeemable_series),
        )

    def __post_init__(self) -> None:
        if self.response_style not in RESPONSE_STYLES:
            raise ValueError(f"response_style must be one of {', '.join(RESPONSE_STYLES)}, got {self.response_style!r}")


_N = TypeVar("_N", int, float)


def _string(env: Mapping[str, str], name: str, default: str) -> str:
    if name not in env:
        return default
    value = env[name].strip()
    if not value:
        raise ValueError(f"{name} must not be empty")
    return value


def _number(
    env: Mapping[str, str], name: str, default: _N, parse: Callable[[str], _N], valid: Callable[[_N], bool], what: str
) -> _N:
    """``name`` parsed by ``parse`` and accepted by ``valid``, else ValueError saying it must be ``what``."""
    if name not in env:
        return default
    raw = env[name].strip()
    try:
        value = parse(raw)
    except ValueError:
        raise ValueError(f"{name} must be {what}, got {raw!r}") from None
    if not valid(value):
        raise ValueError(f"{name} must be {what}, got {raw!r}")
    return value


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    return _number(env, name, default, int, lambda v: v > 0, "a positive integer")


def _non_negative(env: Mapping[str, str], name: str, default: float) -> float:
    return _number(env, name, default, float, lambda v: math.isfinite(v) and v >= 0, "a non-negative number")


def _http_status(env: Mapping[str, str], name: str, default: int) -> int:
    if name not in env:
        return default
    raw = env[name].strip()
    if raw not in {"200", "400"}:
        raise ValueError(f"{name} must be 200 or 400, got {raw!r}")
    return int(raw)


def _response_style(env: Mapping[str, str], name: str, default: ResponseStyle) -> ResponseStyle:
    if name not in env:
        return default
    raw = env[name].strip().lower()
    if raw not in RESPONSE_STYLES:
        raise ValueError(f"{name} must be one of {', '.join(RESPONSE_STYLES)}, got {env[name]!r}")
    return raw


_ON: Final = frozenset({"on", "true", "1", "yes"})
_OFF: Final = frozenset({"off", "false", "0", "no", ""})


def _switch(env: Mapping[str, str], name: str, default: bool) -> bool:
    if name not in env:
        return default
    raw = env[name].strip().lower()
    if raw in _ON:
        return True
    if raw in _OFF:
        return False
    raise ValueError(f"{name} must be on or off, got {env[name]!r}")


def _faults(env: Mapping[str, str], name: str) -> tuple[Fault, ...]:
    raw = env.get(name, "").strip()
    if not raw:
        return ()
    try:
        data = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ValueError(f"{name} must be a JSON list of fault objects: {exc}") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ValueError(f"{name} must be a JSON list of fault objects")
    faults = []
    for index, item in enumerate(data):
        try:
            faults.append(Fault.from_json(item))
        except ValueError as exc:
            raise ValueError(f"{name}[{index}]: {exc}") from None
    return tuple(faults)
