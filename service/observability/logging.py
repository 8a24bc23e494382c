"""structlog configuration: JSON lines on stdout (console rendering on a terminal or on request), every stdlib
logger routed through the same processors, customer identifiers masked and secrets removed everywhere."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, Final, TextIO

import msgspec
import structlog
from structlog.typing import EventDict, Processor

from service.text import mask as mask  # re-exported: the layers that log identifiers mask them
from service.text import scrub

_MASKED_KEYS: Final = frozenset({"mobile", "email", "externalid", "external_id", "customer"})
_SECRET_KEYS: Final = re.compile(r"token|secret|password|authorization|api_?key", re.I)
_KEY_KINDS: dict[str, int] = {}  # field name -> _PLAIN, _SECRET or _MASKED (names are few: the code's own)
_KEY_KINDS_MAX: Final = 4096
_PLAIN, _SECRET, _MASKED = 0, 1, 2


def _kind(key: str) -> int:
    kind = _KEY_KINDS.get(key)
    if kind is None:
        kind = _SECRET if _SECRET_KEYS.search(key) else _MASKED if key.lower() in _MASKED_KEYS else _PLAIN
        if len(_KEY_KINDS) < _KEY_KINDS_MAX:
            _KEY_KINDS[key] = kind
    return kind


def _clean(key: str, value: Any) -> Any:
    kind = _kind(key)
    if kind == _PLAIN:
        return scrub(value) if isinstance(value, str) else value
    if kind == _SECRET:
        return "[redacted]"
    if isinstance(value, Mapping):
        return {k: mask(str(v)) if v is not None else None for k, v in value.items()}
    return mask(str(value)) if value is not None else None


def redact(_: Any, __: str, event_dict: EventDict) -> EventDict:
    """Processor: no customer identifier unmasked, no secret, in any field of any line."""
    return {key: _clean(key, value) for key, value in event_dict.items()}


_ENCODER: Final = msgspec.json.Encoder(enc_hook=str)


def _json(obj: Any, **_: Any) -> str:
    # structlog passes ``default=``; msgspec's encoder takes ``enc_hook``: one prebuilt encoder with it.
    return _ENCODER.encode(obj).decode()


def processors() -> list[Processor]:
    """The chain shared by structlog's loggers and the stdlib's (whose records are already filtered by level)."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact,
    ]


def configure_logging(level: str = "info", *, console: bool | None = None, stream: TextIO | None = None) -> None:
    """Configure structlog and the stdlib root logger once for the process."""
    stream = stream or sys.stdout
    if console is None:
        console = stream.isatty()
    renderer: Processor = (
        structlog.dev.ConsoleRenderer(colors=False) if console else structlog.processors.JSONRenderer(serializer=_json)
    )
    shared = processors()
    structlog.configure(
        # A line below the logger's level is dropped first, before anything is copied, stamped or redacted.
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # the canonical line replaces it
