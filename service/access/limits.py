"""Per-key token buckets and per-route-class bulkheads: both answer at once, neither queues."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class TokenBuckets:
    """A token bucket per name: ``rate`` tokens a second, at most ``burst`` saved up.

    ``take`` returns 0 when the request may go, else the seconds until a token is back (for ``Retry-After``).
    The names are the configured keys, so the table is bounded by the key file.
    """

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, name: str, rate: float | None = None, burst: float | None = None) -> float:
        """Take a token from ``name``'s bucket (``rate``/``burst``: that name's own limits, else the defaults)."""
        rate = rate or self.rate
        burst = max(burst or (rate * 2 if rate != self.rate else self.burst), 1.0)
        now = self._clock()
        bucket = self._buckets.get(name)
        if bucket is None:
            bucket = self._buckets[name] = _Bucket(burst, now)
        else:
            bucket.tokens = min(burst, bucket.tokens + (now - bucket.at) * rate)
            bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / rate

    def forget_except(self, names: set[str]) -> None:
        """Drop the buckets of keys no longer configured."""
        for name in [n for n in self._buckets if n not in names]:
            del self._buckets[name]


class Bulkheads:
    """At most ``limits[name]`` requests in flight per route class; beyond that a request is shed, not queued."""

    def __init__(self, limits: dict[str, int]) -> None:
        self.limits = dict(limits)
        self.in_flight = dict.fromkeys(limits, 0)

    def enter(self, name: str) -> bool:
        if self.in_flight[name] >= self.limits[name]:
            return False
        self.in_flight[name] += 1
        return True

    def leave(self, name: str) -> None:
        self.in_flight[name] -= 1
