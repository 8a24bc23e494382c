"""The ledger's port and its in-memory implementation (one process; state lost on restart).

Records are kept encoded, like in Redis, so both backends hand out copies and behave alike.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

from service.idempotency.models import Entry, entry_decoder, entry_encoder

UNRESOLVED_STATES = ("in_flight", "pending")

log = logging.getLogger("service.ledger")

T = TypeVar("T")


class StoreUnavailable(Exception):
    """The ledger cannot be read or written: nothing may be redeemed without it."""


class LedgerStore(Protocol):
    backend: str

    async def claim(self, entry: Entry, ttl: float) -> Entry | None:
        """Record ``entry`` under its idempotency key if that key is free (returns None); otherwise change
        nothing and return the entry the key already points to."""

    async def save(self, entry: Entry, ttl: float) -> None:
        """Store ``entry`` (by its ref), replacing what was there."""

    async def load(self, ref: str) -> Entry | None: ...

    async def release_key(self, key: str, ref: str) -> None:
        """Free an idempotency key, if it still points to ``ref``, so the same request may run again."""

    async def unresolved(self) -> list[str]:
        """Refs of the entries still in flight or pending, for the sweeper."""

    async def lock(self, codes: Sequence[str], owner: str, ttl: float) -> list[str]:
        """Take every code for ``owner`` (or extend its hold); if another owner holds any, take none and return
        those codes."""

    async def unlock(self, codes: Sequence[str], owner: str) -> None:
        """Release the codes ``owner`` holds."""

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


class _Expiring(Generic[T]):
    """A table whose values expire: a dict, and a heap of expiry times swept as the table is written (each sweep
    pops only what has expired; a stale heap item, for a value written again or removed, is skipped)."""

    def __init__(self, clock: Callable[[], float], on_drop: Callable[[str], None] | None = None) -> None:
        self.items: dict[str, tuple[T, float]] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._clock = clock
        self._on_drop = on_drop

    def __len__(self) -> int:
        return len(self.items)

    def get(self, name: str) -> T | None:
        found = self.items.get(name)
        if found is None:
            return None
        if found[1] <= self._clock():
            self.delete(name)
            return None
        return found[0]

    def put(self, name: str, value: T, ttl: float) -> None:
        until = self._clock() + ttl
        self.items[name] = (value, until)
        heapq.heappush(self._heap, (until, next(self._seq), name))
        self.sweep()

    def delete(self, name: str) -> None:
        if self.items.pop(name, None) is not None and self._on_drop is not None:
            self._on_drop(name)

    def sweep(self) -> None:
        heap, now = self._heap, self._clock()
        while heap and heap[0][0] <= now:
            _, _, name = heapq.heappop(heap)
            found = self.items.get(name)
            if found is not None and found[1] <= now:
                self.delete(name)


class MemoryStore:
    """The ledger in this process's memory, bounded.

    Every record expires with its TTL (``IDEMPOTENCY_TTL_SECONDS``), swept as the ledger is written. A record is
    never dropped before then: forgetting a redemption a till may still retry could redeem a multi-use coupon
    twice. So at most ``max_entries`` records are held, and past that a new redemption is refused as the ledger
    being unavailable (503, nothing redeemed) until records expire: it fails closed, never open. The memory
    ledger is for one process; Redis holds as many as it has memory for.
    """

    backend = "memory"

    #: About a kilobyte each: 100 MB or so when full.
    DEFAULT_MAX_ENTRIES = 100_000

    def __init__(self, clock: Callable[[], float] = time.time, *, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._clock = clock
        self._max = max_entries
        self._unresolved: set[str] = set()
        self._keys: _Expiring[str] = _Expiring(clock)
        self._entries: _Expiring[bytes] = _Expiring(clock, self._unresolved.discard)
        self._locks: _Expiring[str] = _Expiring(clock)

    def __len__(self) -> int:
        """Ledger records held (entries), for tests and diagnostics."""
        return len(self._entries)

    async def claim(self, entry: Entry, ttl: float) -> Entry | None:
        ref = self._keys.get(entry.key)
        if ref is not None and (existing := await self.load(ref)) is not None:
            return existing
        self._entries.sweep()
        self._keys.sweep()
        if len(self._entries) >= self._max or len(self._keys) >= self._max:
            log.warning("in-memory ledger full (%d redemptions): new redemptions are refused", self._max)
            raise StoreUnavailable(
                f"the in-memory ledger holds {self._max} redemptions not yet expired: set REDIS_URL, or raise "
                "LEDGER_MEMORY_MAX_ENTRIES or lower IDEMPOTENCY_TTL_SECONDS"
            )
        await self.save(entry, ttl)
        self._keys.put(entry.key, entry.ref, ttl)
        return None

    async def save(self, entry: Entry, ttl: float) -> None:
        if entry.state in UNRESOLVED_STATES:
            self._unresolved.add(entry.ref)
        else:
            self._unresolved.discard(entry.ref)
        self._entries.put(entry.ref, entry_encoder.encode(entry), ttl)

    async def load(self, ref: str) -> Entry | None:
        raw = self._entries.get(ref)
        return None if raw is None else entry_decoder.decode(raw)

    async def release_key(self, key: str, ref: str) -> None:
        if self._keys.get(key) == ref:
            self._keys.delete(key)

    async def unresolved(self) -> list[str]:
        self._entries.sweep()
        for ref in [r for r in self._unresolved if self._entries.get(r) is None]:
            self._unresolved.discard(ref)
        return sorted(self._unresolved)

    async def lock(self, codes: Sequence[str], owner: str, ttl: float) -> list[str]:
        busy = [c for c in codes if (holder := self._locks.get(c)) is not None and holder != owner]
        if not busy:
            for code in codes:
                self._locks.put(code, owner, ttl)
        return busy

    async def unlock(self, codes: Sequence[str], owner: str) -> None:
        for code in codes:
            if self._locks.get(code) == owner:
                self._locks.delete(code)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
