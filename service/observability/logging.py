"""structlog configuration: JSON lines on stdout (console rendering on a terminal or on request), every stdlib
logger routed through the same processors, customer identifiers masked and secrets removed everywhere.

The path of a line is structlog's fast one: a level filter compiled into the bound logger's class (a line below
the level costs one no-op call and nothing is copied, stamped or redacted), the processors, one msgspec encoder
producing bytes, and a write of those bytes to stdout's binary buffer. Records of the stdlib's loggers (aiohttp,
libraries) pass through the same processors and the same encoder into the same stream."""

from __future__ import annotations

import io
import logging
import re
import sys
import threading
from collections.abc import Callable, Mapping
from typing import IO, Any, Final

import msgspec
import structlog
from structlog.typing import EventDict, Processor

from service.observability.context import merge_fields
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


_ENCODER: Final = msgspec.json.Encoder(enc_hook=str)  # anything msgspec cannot encode is written as its str()


def render_json(_: Any, __: str, event_dict: EventDict) -> bytes:
    """The last processor of the JSON stream: the event as one line of JSON bytes (msgspec, no str detour)."""
    return _ENCODER.encode(event_dict)


def _console() -> Processor:
    renderer = structlog.dev.ConsoleRenderer(colors=False)

    def render_console(logger: Any, method_name: str, event_dict: EventDict) -> bytes:
        """The last processor on a terminal: structlog's readable line, as the bytes the sink writes."""
        return str(renderer(logger, method_name, event_dict)).encode()

    return render_console


def _nowhere(*_: object) -> None:
    return None


class _Sink:
    """Where every line goes, whoever wrote it: one binary stream, one lock, one flush per line. Retargeted (not
    replaced) when logging is configured again, so the loggers structlog has cached write to the new place."""

    __slots__ = ("_flush", "_lock", "_write")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # No logger of ours exists before configure_logging() targets the sink: nothing to write until then.
        self._write: Callable[[bytes], object] = _nowhere
        self._flush: Callable[[], object] = _nowhere

    def target(self, stream: IO[Any]) -> None:
        """A text stream is written through its binary buffer when it has one (stdout has one); one without (a
        ``StringIO``) gets each line decoded; a binary stream gets the bytes."""
        binary = getattr(stream, "buffer", None)
        if binary is not None:
            stream.flush()  # what was printed before goes out before the first line
            self._write, self._flush = binary.write, binary.flush
        elif _is_text(stream):
            self._write, self._flush = (lambda line: stream.write(line.decode())), stream.flush
        else:
            self._write, self._flush = stream.write, stream.flush

    def write(self, line: bytes | str) -> None:
        """One line. A str comes only from a renderer of structlog's defaults (after a reset in tests)."""
        if isinstance(line, str):
            line = line.encode()
        with self._lock:
            self._write(line + b"\n")
            self._flush()


def _is_text(stream: object) -> bool:
    return isinstance(stream, io.TextIOBase)


_SINK: Final = _Sink()


class LineLogger:
    """structlog's logger: hands each rendered line to the sink. Its ``name`` is the one given to
    ``structlog.get_logger(name)``, for :func:`structlog.stdlib.add_logger_name`."""

    __slots__ = ("name",)

    def __init__(self, name: str | None = None) -> None:
        self.name = name

    def msg(self, line: bytes | str) -> None:
        _SINK.write(line)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


def _logger_factory(*args: Any) -> LineLogger:
    return LineLogger(args[0] if args and isinstance(args[0], str) else None)


class _ForeignHandler(logging.Handler):
    """The stdlib root's handler: a record of aiohttp or a library (already filtered by level) goes through the
    same processors and encoder as a structlog event, into the same sink."""

    def __init__(self, chain: list[Processor]) -> None:
        super().__init__()
        self._chain = chain

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line: Any = {"event": record.getMessage(), "_record": record}
            if record.exc_info:
                line["exc_info"] = record.exc_info
            if record.stack_info:
                line["stack_info"] = record.stack_info
            method = record.levelname.lower()
            for processor in self._chain:
                line = processor(None, method, line)
            _SINK.write(line)
        except Exception:
            self.handleError(record)


def _drop_record(_: Any, __: str, event_dict: EventDict) -> EventDict:
    event_dict.pop("_record", None)
    return event_dict


def processors() -> list[Processor]:
    """The chain shared by structlog's loggers and the stdlib's records, up to the renderer."""
    return [
        merge_fields,  # the request's fields (service.observability.context.bind_fields)
        structlog.contextvars.merge_contextvars,  # fields bound with structlog's own bind_contextvars
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact,
    ]


#: The processors of structlog's loggers. Changed in place by :func:`configure_logging`, so that a logger cached
#: under an earlier configuration renders as the latest one says.
_CHAIN: Final[list[Processor]] = []


def configure_logging(level: str = "info", *, console: bool | None = None, stream: IO[Any] | None = None) -> None:
    """Configure structlog and the stdlib root logger for the process: ``level`` (``debug``, ``info``, ...), a
    readable console rendering or JSON lines (by default: console on a terminal), written to ``stream`` (stdout).

    The level is compiled into the loggers' class: configure once, before the first line (a logger structlog has
    cached keeps the level it was built with, and follows the rest of a later configuration)."""
    stream = stream or sys.stdout
    if console is None:
        console = stream.isatty()
    _SINK.target(stream)
    renderer = _console() if console else render_json
    _CHAIN[:] = [*processors(), renderer]
    structlog.configure(
        processors=_CHAIN,
        # A line below the level is dropped first, before anything is copied, stamped or redacted.
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=_logger_factory,
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    root.handlers[:] = [_ForeignHandler([*processors(), _drop_record, renderer])]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # the canonical line replaces it
