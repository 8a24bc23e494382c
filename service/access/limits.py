"""Per-key token buckets and per-route-class bulkheads: both answer at once, neither queues. With Redis, the
buckets are shared by every replica (:class:`SharedBuckets`)."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from service.redis_pool import untallied


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
        rate, burst = self.limits(rate, burst)
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

    def limits(self, rate: float | None, burst: float | None) -> tuple[float, float]:
        """A name's rate and burst: its own, else the defaults (a rate of its own without a burst: twice it)."""
        rate = rate or self.rate
        return rate, max(burst or (rate * 2 if rate != self.rate else self.burst), 1.0)

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


# A token bucket in Redis: ``rate`` tokens a second, at most ``capacity``; a taker leaves ``floor`` tokens for
# others (the priorities of the Capillary budget) and takes up to ``want`` at once. Short of a token it may reserve
# the next one if that comes within ``max_wait`` seconds (the balance goes below zero: later takers wait behind
# it). Redis's own clock, so the replicas' clocks do not matter. Returns {granted, wait seconds as a string}.
_TAKE = """
local rate, cap, floor = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local want, max_wait = tonumber(ARGV[4]), tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]), tonumber(state[2])
if not tokens then tokens, at = cap, now end
tokens = math.min(cap, tokens + math.max(0, now - at) * rate)
local granted, wait = 0, 0
local spare = tokens - floor
if spare >= 1 then
  granted = math.min(want, math.floor(spare))
  tokens = tokens - granted
else
  wait = (1 - spare) / rate
  if wait <= max_wait then
    granted = 1
    tokens = tokens - 1
  end
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(cap / rate * 1000) + 1000)
return {granted, tostring(wait)}
"""


class SharedBuckets:
    """Token buckets in Redis, shared by every replica (one Lua script per decision, atomic).

    To spare a round trip per request, a replica takes a few tokens at once (what ``lease`` seconds of the rate
    give, at least one) and spends them locally for at most ``hold`` seconds; tokens it did not spend by then are
    dropped, never given back: the replicas together never exceed the bucket, they may only fall a little short
    of it. Written here rather than with the ``limits`` library: its async Redis strategies make one round trip
    per hit and have neither a floor left for higher priorities nor a reservation within a deadline.

    When Redis does not answer, :meth:`take` returns None and the caller falls back to its own per-process limit
    (it fails open to that, never closed); ``unavailable`` counts those decisions for the metrics.
    """

    def __init__(
        self, client: Any, prefix: str = "pos_coupon:limit:", *, lease: float = 0.2, hold: float = 1.0
    ) -> None:
        self._redis = client
        self._take = client.register_script(_TAKE)
        self._prefix = prefix
        self._lease = lease
        self._hold = hold
        self._stock: dict[str, tuple[float, float]] = {}  # name/floor -> (tokens in hand, until when, monotonic)
        self._leasing: dict[str, asyncio.Future[None]] = {}
        self.unavailable: collections.Counter[str] = collections.Counter()

    async def take(
        self, name: str, rate: float, capacity: float, *, floor: float = 0.0, max_wait: float = 0.0, kind: str = ""
    ) -> float | None:
        """0: go now; > 0: go after waiting that long (the token is reserved); < 0: refused, -(the wait it would
        have needed); None: Redis did not answer (decide locally)."""
        stock = f"{name}/{floor:g}"
        while True:
            if self._spend(stock):
                return 0.0
            leasing = self._leasing.get(stock)
            if leasing is None:
                break
            await asyncio.shield(leasing)  # one lease at a time per bucket: the others spend what it brings
        want = max(1, min(int(rate * self._lease), int(capacity / 4)))
        leasing = self._leasing[stock] = asyncio.get_running_loop().create_future()
        try:
            with untallied():  # a lease serves the next few requests: not one request's round trip
                granted, wait = await self._take(
                    keys=[self._prefix + name], args=[rate, capacity, floor, want, max(0.0, max_wait)]
                )
        except Exception:  # RedisError, OSError, a timeout: the shared limit cannot decide
            self.unavailable[kind or name] += 1
            return None
        finally:
            del self._leasing[stock]
            leasing.set_result(None)
        granted, seconds = int(granted), float(wait)
        if granted == 0:
            return -seconds
        if granted > 1:
            now = time.monotonic()
            held = self._stock.get(stock)
            left = held[0] if held is not None and held[1] > now else 0.0
            self._stock[stock] = (left + granted - 1.0, now + self._hold)
        return seconds

    def _spend(self, stock: str) -> bool:
        held = self._stock.get(stock)
        if held is not None and held[0] >= 1.0 and held[1] > time.monotonic():
            self._stock[stock] = (held[0] - 1.0, held[1])
            return True
        return False
