"""The request's identity, shared by every layer that observes a request: its id, given once per request.

It lives here, below the web layer, so that tracing and the request log line can read it without importing the
handlers' package (the web layer imports observability, never the other way round).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, MutableMapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any, Final

from aiohttp import web

REQUEST_ID_HEADER: Final = "X-Request-ID"
REQUEST_ID: Final = web.RequestKey("request_id", str)
#: What a caller's ``X-Request-ID`` may be to be echoed and logged as it is: anything else is replaced by one of ours
#: (no spaces, quotes, control or non-ASCII characters can reach a header we send or a log line).
SAFE_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")


#: The log fields of the work in progress (a request): bound by each layer that handles it, merged into each of its
#: lines by :func:`merge_fields`. One variable holding the whole mapping, replaced (never changed in place) on each
#: binding, so that a task started meanwhile keeps the fields as they were then, as with structlog's own context
#: variables; but one variable set per binding where structlog sets one per field, and one read per line where
#: structlog's merge walks every variable of the context.
_FIELDS: Final[ContextVar[Mapping[str, Any]]] = ContextVar("log_fields", default=MappingProxyType({}))


def start_fields(**fields: Any) -> None:
    """The first log fields of a piece of work (a request): whatever was bound before is not carried over."""
    _FIELDS.set(fields)


def bind_fields(**fields: Any) -> None:
    """Add log fields (or replace their values) for the rest of the work in progress."""
    _FIELDS.set({**_FIELDS.get(), **fields})


def log_fields() -> Mapping[str, Any]:
    """The log fields bound so far."""
    return _FIELDS.get()


def merge_fields(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Processor: the bound log fields into the line; a field the line sets itself keeps the line's value."""
    for key, value in _FIELDS.get().items():
        event_dict.setdefault(key, value)
    return event_dict


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_id_of(request: web.BaseRequest) -> tuple[str, bool]:
    """The request's id: the caller's ``X-Request-ID`` when it is in the safe set, else a new one; and whether a
    caller's id was replaced."""
    sent = request.headers.get(REQUEST_ID_HEADER)
    if sent is None:
        return new_request_id(), False
    if SAFE_REQUEST_ID.fullmatch(sent):
        return sent, False
    return new_request_id(), True


def assign_request_id(request: web.Request) -> tuple[str, bool]:
    """The request's id, given on first use and kept under ``REQUEST_ID`` for every later reader; and whether the
    caller's own id was replaced (only ever true for the first reader)."""
    found = request.get(REQUEST_ID)
    if found is not None:
        return found, False
    request_id, replaced = request_id_of(request)
    request[REQUEST_ID] = request_id
    return request_id, replaced
