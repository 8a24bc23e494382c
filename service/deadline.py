"""The deadline of the work in progress (when the till stops waiting for it), and whether it is urgent.

Held in a context variable (set per POS request by the web layer, per background redeem by the ledger), so every
upstream call made on the request's behalf, however deep, gets the time that is left and no more. Monotonic
seconds; ``None`` means no deadline (background work bounded by its own timeouts).
"""

from __future__ import annotations

import contextvars
import time
from typing import Final

DEADLINE: Final[contextvars.ContextVar[float | None]] = contextvars.ContextVar("deadline", default=None)
#: Set for the work of a redeem in progress: all its upstream calls, the check included, go first when Capillary's
#: request budget runs short (see service.capillary.resilience.OutboundLimiter).
URGENT: Final[contextvars.ContextVar[bool]] = contextvars.ContextVar("urgent", default=False)


def time_left() -> float | None:
    """Seconds left before the current deadline (may be negative); ``None`` without one."""
    deadline = DEADLINE.get()
    return None if deadline is None else deadline - time.monotonic()


def set_deadline(seconds: float) -> contextvars.Token[float | None]:
    """Give the current context a deadline ``seconds`` from now, never later than the one it already has."""
    deadline = time.monotonic() + seconds
    current = DEADLINE.get()
    return DEADLINE.set(deadline if current is None else min(current, deadline))
