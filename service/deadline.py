"""The deadline of the request in progress: when the till stops waiting for it.

Held in a context variable with one writer, the web layer (:func:`service.web.deadline.deadline_middleware`,
through :func:`set_deadline`), and one reader, :func:`current` (:func:`time_left` is built on it): the composition
root hands :func:`current` to the Capillary client as its ambient source, so every upstream call made on the
request's behalf without a deadline of its own gets the time that is left and no more. Work with limits of its own
passes them with each call (a redeem, which outlives the till's wait and goes first; an upload; the sweeper). The
client itself reads no context variable. Monotonic seconds; ``None`` means no deadline (background work bounded by
its own timeouts).
"""

from __future__ import annotations

import contextvars
import time
from typing import Final

DEADLINE: Final[contextvars.ContextVar[float | None]] = contextvars.ContextVar("deadline", default=None)


def current() -> tuple[float | None, bool]:
    """The deadline in force (monotonic seconds, ``None``: none) and whether the work is urgent: never, for a
    request's own work (urgent work, a redeem's, says so with each call)."""
    return DEADLINE.get(), False


def time_left() -> float | None:
    """Seconds left before the current deadline (may be negative); ``None`` without one."""
    deadline = current()[0]
    return None if deadline is None else deadline - time.monotonic()


def set_deadline(seconds: float) -> contextvars.Token[float | None]:
    """Give the current context a deadline ``seconds`` from now, never later than the one it already has."""
    deadline = time.monotonic() + seconds
    current_deadline = current()[0]
    return DEADLINE.set(deadline if current_deadline is None else min(current_deadline, deadline))


def reset_deadline(token: contextvars.Token[float | None]) -> None:
    """Give back the deadline in force before :func:`set_deadline` returned ``token``."""
    DEADLINE.reset(token)
