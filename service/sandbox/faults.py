"""Fault injection for the sandbox: what can go wrong, on which operation, how many times.

Pure data and a FIFO queue; the aiohttp layer (`app.py`) decides how each kind is enacted.

Matching rules (documented in the package docstring too):
- A fault with ``operation=None`` matches every operation **except** ``token``: token faults must name it,
  so that a blanket "everything is slow/broken" fault does not also lock the client out of authentication.
- Faults are consumed in FIFO order. ``times`` counts down per matched request; ``None`` = until cleared.
- ``LATENCY`` faults stack: every matching LATENCY fault adds its delay (and is consumed), and on top of that
  the first matching non-latency fault (if any) is consumed and enacted. So "slow, then a timeout" works.

JSON shapes of the kinds added for the documented answers (admin ``POST /__sandbox/faults`` and SANDBOX_FAULTS):

- ``{"kind": "warning", "operation": "redeem"|"bulk_redeem", "code": 704, "scope": "both"}``: the call is
  served normally (the coupons *are* consumed) and the success answer carries the warning
  ``{"status": false, "code": 704, "message": "Error sending coupon"}`` (``code`` defaults to 704; 724 is the
  other notification warning). ``scope``: ``items`` (each item's ``warnings``, and in the nested shapes its
  ``redemptionStatus.warnings`` / ``warningsAsStatusCode``), ``top`` (redeem: the top-level ``warnings``;
  bulk redeem: each entry's ``warnings`` next to ``errors``) or ``both`` (default). The top-level
  ``redemptionStatus`` stays ``{status: true, code: 700}``. A refused call is answered unchanged.
- ``{"kind": "code", "operation": ..., "code": 711, "status": 500, "target": "ABS-ALICE-2"}``: a CODE fault
  with a 5xx ``status`` is a 5xx whose body names per-code refusals (nothing applied unless ``apply``). With
  ``target`` (a coupon code of the request) only that code carries ``code`` and the others 749 (bulk redeem:
  ``errors[0]`` of each entry; is_redeemable: each item); without it (or when the request lacks it) every
  code carries ``code``. Single redeem: top-level ``redemptionStatus {status: false, code, message}``, items
  in the call's response style.
- ``{"kind": "http_error", "status": 461}`` / ``521``: Capillary's "try later" statuses ("Search engine busy,
  try later" / "Multiple actions are running for the same customer, try later"). The capillary notes list
  them among the request-level HTTP conventions, so they come as the HTTP status itself with the flat body
  ``{"status": false, "code": 461, "message": "..."}``; ``"body": ""`` sends them with an empty body. Other
  HTTP_ERROR statuses keep the nginx HTML page. Nothing applied.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, TypeVar

from service.capillary.operations import OPERATIONS as CLIENT_OPERATIONS

_T = TypeVar("_T")

#: The operations a fault can target: the client's own names.
OPERATIONS: Final[frozenset[str]] = frozenset(CLIENT_OPERATIONS)


class FaultKind(enum.StrEnum):
    """What the sandbox does instead of (or after) serving the operation normally."""

    LATENCY = "latency"  # sleep `delay_seconds` (default 1), then serve normally
    HTTP_ERROR = "http_error"  # answer `status` (default 503), nothing applied
    RATE_LIMIT = "rate_limit"  # answer 429, nothing applied
    RESET = "reset"  # drop the connection without a response, nothing applied
    MALFORMED = "malformed"  # HTTP 200 (or `status`) with a non-JSON body (or `body`), nothing applied
    TIMEOUT = "timeout"  # sleep `delay_seconds` (default 30), then answer 504, nothing applied
    APPLY_THEN_TIMEOUT = "apply_then_timeout"  # apply, sleep `delay_seconds` (default 30), then answer normally
    APPLY_THEN_RESET = "apply_then_reset"  # apply, then drop the connection
    APPLY_THEN_ERROR = "apply_then_error"  # apply, then answer `status` (default 502)
    CODE = "code"  # answer the operation's failure envelope with business `code` (apply first if `apply`)
    WARNING = "warning"  # apply, then answer the success with warning `code` (default 704) in its warnings[]


#: Kinds enacted before the request is even parsed: the operation is never applied.
PRE_APPLY_KINDS: Final[frozenset[FaultKind]] = frozenset(
    {FaultKind.HTTP_ERROR, FaultKind.RATE_LIMIT, FaultKind.RESET, FaultKind.MALFORMED, FaultKind.TIMEOUT}
)

_DEFAULT_DELAY: Final[Mapping[FaultKind, float]] = MappingProxyType(
    {
        FaultKind.LATENCY: 1.0,
        FaultKind.TIMEOUT: 30.0,
        FaultKind.APPLY_THEN_TIMEOUT: 30.0,
    }
)
_DEFAULT_STATUS: Final[Mapping[FaultKind, int]] = MappingProxyType(
    {
        FaultKind.HTTP_ERROR: 503,
        FaultKind.RATE_LIMIT: 429,
        FaultKind.MALFORMED: 200,
        FaultKind.TIMEOUT: 504,
        FaultKind.APPLY_THEN_ERROR: 502,
    }
)

_JSON_KEYS: Final[frozenset[str]] = frozenset(
    {"kind", "operation", "times", "status", "delaySeconds", "code", "apply", "body", "target", "scope"}
)

#: Operations whose success answers can carry a WARNING fault's warning.
WARNING_OPERATIONS: Final[frozenset[str]] = frozenset({"redeem", "bulk_redeem"})
WARNING_SCOPES: Final[tuple[str, ...]] = ("both", "top", "items")
DEFAULT_WARNING_CODE: Final = 704

#: HTTP statuses Capillary itself answers with a flat ``{status, code, message}`` body ("try later").
TRY_LATER_MESSAGES: Final[Mapping[int, str]] = MappingProxyType(
    {
        461: "Search engine busy, try later",
        521: "Multiple actions are running for the same customer, try later",
    }
)


@dataclass(frozen=True)
class Fault:
    """One injected fault. Validated on construction (ValueError)."""

    kind: FaultKind
    operation: str | None = None
    times: int | None = 1
    status: int | None = None
    delay_seconds: float | None = None
    code: int | None = None
    apply: bool = False
    body: str | None = None
    #: CODE only: the coupon code that carries `code`; the request's other codes carry 749.
    target: str | None = None
    #: WARNING only: where the warning goes: "both" (default), "top" or "items".
    scope: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kind, FaultKind):
            raise ValueError(f"kind must be a FaultKind, got {self.kind!r}")
        if self.operation is not None and self.operation not in OPERATIONS:
            raise ValueError(f"unknown operation {self.operation!r}; known: {', '.join(sorted(OPERATIONS))}")
        if self.times is not None and (isinstance(self.times, bool) or self.times < 1):
            raise ValueError(f"times must be a positive integer or null, got {self.times!r}")
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError(f"status must be an HTTP status (100..599), got {self.status!r}")
        if self.delay_seconds is not None and self.delay_seconds < 0:
            raise ValueError(f"delaySeconds must be >= 0, got {self.delay_seconds!r}")
        if self.kind is FaultKind.CODE and self.code is None:
            raise ValueError("a 'code' fault needs a business code (e.g. 748)")
        if self.target is not None and self.kind is not FaultKind.CODE:
            raise ValueError("target is only for 'code' faults")
        if self.kind is FaultKind.WARNING:
            if self.operation not in WARNING_OPERATIONS:
                raise ValueError(f"a 'warning' fault needs operation {' or '.join(sorted(WARNING_OPERATIONS))}")
            if self.scope is not None and self.scope not in WARNING_SCOPES:
                raise ValueError(f"scope must be one of {', '.join(WARNING_SCOPES)}, got {self.scope!r}")
        elif self.scope is not None:
            raise ValueError("scope is only for 'warning' faults")

    @property
    def delay(self) -> float:
        """Seconds to sleep for the sleeping kinds (their default when not given)."""
        if self.delay_seconds is not None:
            return self.delay_seconds
        return _DEFAULT_DELAY.get(self.kind, 0.0)

    @property
    def http_status(self) -> int | None:
        """HTTP status to answer with (the kind's default when not given); None for CODE without status."""
        if self.status is not None:
            return self.status
        return _DEFAULT_STATUS.get(self.kind)

    @property
    def warning_code(self) -> int:
        return DEFAULT_WARNING_CODE if self.code is None else self.code

    @property
    def warning_scope(self) -> str:
        return self.scope or "both"

    def matches(self, operation: str) -> bool:
        if self.operation is None:
            return operation != "token"
        return self.operation == operation

    @classmethod
    def from_json(cls, data: object) -> Fault:
        """Build from the admin/env JSON shape (camelCase keys, lowercase kind names)."""
        if not isinstance(data, Mapping):
            raise ValueError("a fault must be a JSON object")
        unknown = set(data) - _JSON_KEYS
        if unknown:
            raise ValueError(f"unknown fault field(s): {', '.join(sorted(map(str, unknown)))}")
        raw_kind = data.get("kind")
        if not isinstance(raw_kind, str):
            raise ValueError("fault 'kind' is required (one of: " + ", ".join(k.value for k in FaultKind) + ")")
        try:
            kind = FaultKind(raw_kind.lower())
        except ValueError:
            raise ValueError(
                f"unknown fault kind {raw_kind!r} (one of: {', '.join(k.value for k in FaultKind)})"
            ) from None
        return cls(
            kind=kind,
            operation=_opt(data, "operation", str),
            times=_opt_int(data, "times", default=1),
            status=_opt_int(data, "status", default=None),
            delay_seconds=_opt_float(data, "delaySeconds"),
            code=_opt_int(data, "code", default=None),
            apply=bool(_opt(data, "apply", bool) or False),
            body=_opt(data, "body", str),
            target=_opt(data, "target", str),
            scope=_opt(data, "scope", str),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "operation": self.operation,
            "times": self.times,
            "status": self.status,
            "delaySeconds": self.delay_seconds,
            "code": self.code,
            "apply": self.apply,
            "body": self.body,
            "target": self.target,
            "scope": self.scope,
        }


def _opt(data: Mapping[str, object], key: str, typ: type[_T]) -> _T | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, typ) or (typ is not bool and isinstance(value, bool)):
        raise ValueError(f"fault field {key!r} must be a {typ.__name__}, got {value!r}")
    return value


def _opt_int(data: Mapping[str, object], key: str, *, default: int | None) -> int | None:
    if key not in data:
        return default
    value = data[key]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"fault field {key!r} must be an integer, got {value!r}")
    return value


def _opt_float(data: Mapping[str, object], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"fault field {key!r} must be a number, got {value!r}")
    return float(value)


@dataclass
class _Entry:
    fault: Fault
    remaining: int | None


@dataclass(frozen=True)
class Taken:
    """What one request drew from the queue."""

    latency: float = 0.0
    fault: Fault | None = None


class FaultQueue:
    """Pending faults, consumed in FIFO order (see module docstring)."""

    def __init__(self, initial: Iterable[Fault] = ()) -> None:
        self._entries: list[_Entry] = []
        for fault in initial:
            self.add(fault)

    def add(self, fault: Fault) -> None:
        self._entries.append(_Entry(fault, fault.times))

    def clear(self) -> int:
        count = len(self._entries)
        self._entries.clear()
        return count

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def pending(self) -> tuple[tuple[Fault, int | None], ...]:
        """(fault, remaining uses; None = unlimited) in queue order."""
        return tuple((e.fault, e.remaining) for e in self._entries)

    def take(self, operation: str) -> Taken:
        latency = 0.0
        chosen: Fault | None = None
        for entry in list(self._entries):
            if not entry.fault.matches(operation):
                continue
            if entry.fault.kind is FaultKind.LATENCY:
                latency += entry.fault.delay
            elif chosen is None:
                chosen = entry.fault
            else:
                continue
            self._consume(entry)
        return Taken(latency=latency, fault=chosen)

    def _consume(self, entry: _Entry) -> None:
        if entry.remaining is None:
            return
        entry.remaining -= 1
        if entry.remaining <= 0:
            self._entries.remove(entry)
