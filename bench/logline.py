"""``python -m bench.logline``: microseconds per log line, the gateway's logging against the stdlib route it replaced.

Both write the canonical request line (a request id bound in the context, a masked customer, upstream ids) as JSON
to /dev/null; a debug line under an ``info`` level shows what a filtered line costs. One process, the same lines:
the ratio is what matters, not the absolute figures of a busy machine.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

import msgspec
import structlog

from service.observability.logging import configure_logging, processors

_ENCODER = msgspec.json.Encoder(enc_hook=str)


def _stdlib_route(level: str, stream: IO[str]) -> None:
    """The previous configuration: stdlib loggers and handler, ``ProcessorFormatter``, a str-producing renderer."""
    shared = processors()
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.JSONRenderer(serializer=lambda obj, **_: _ENCODER.encode(obj).decode()),
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _fast_path(level: str, stream: IO[str]) -> None:
    configure_logging(level, console=False, stream=stream)


def _per_line(write: Callable[[], None], lines: int) -> float:
    """Microseconds per call of ``write``, the best of three runs."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(lines):
            write()
        best = min(best, time.perf_counter() - started)
    return best / lines * 1e6


def measure(configure: Callable[[str, IO[str]], None], lines: int) -> tuple[float, float]:
    """(µs per written info line, µs per filtered debug line) under ``configure``."""
    with open("/dev/null", "w") as devnull:  # a text stream with a binary buffer, as stdout is
        structlog.reset_defaults()
        configure("info", devnull)
        log: Any = structlog.get_logger("service.request")
        structlog.contextvars.bind_contextvars(request_id="0b7c4a1e-5d7e-4b1f-9a51-3f0e2b6c8d11", key_name="till-1")

        def info() -> None:
            log.info(
                "request",
                route="/v1/redemptions",
                method="POST",
                status=200,
                duration_ms=3.21,
                outcome="redeemed",
                customer={"mobile": "919900000001"},
                transaction_number="T-1001",
                upstream_request_ids=["cap-1", "cap-2"],
            )

        def debug() -> None:
            log.debug("upstream call", operation="redeem", status=200, seconds=0.004)

        figures = _per_line(info, lines), _per_line(debug, lines)
        structlog.contextvars.clear_contextvars()
        return figures


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.logline", description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=20_000, help="lines per run (three runs, the best counts)")
    args = parser.parse_args(argv)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        before = measure(_stdlib_route, args.lines)
        after = measure(_fast_path, args.lines)
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
        structlog.reset_defaults()
    print(f"{'':34}{'info line':>12}{'filtered debug':>16}")
    print(f"{'stdlib route (before)':34}{before[0]:>10.1f}µs{before[1]:>14.2f}µs")
    print(f"{'structlog fast path (after)':34}{after[0]:>10.1f}µs{after[1]:>14.2f}µs")
    print(f"{'ratio (after / before)':34}{after[0] / before[0]:>12.2f}{after[1] / before[1]:>16.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
