"""The ledger's port and its in-memory implementation (one process; state lost on restart).

Records are kept encoded, like in Redis, so both backends hand out copies and behave alike.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from service.idempotency.models import Entry, entry_decoder, entry_encoder

UNRESOLVED_STATES = ("in_flight", "pending")

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


class MemoryStore:
    """The ledger in this process's memory, bounded.

    Every record expires with its TTL, swept in insertion order as the ledger is written (a deque of expiry
    times: O(1) amortised per write, nothing scanned). And at most ``max_entries`` records and as many keys are
    kept: past that the oldest go first, whatever their TTL, except a redemption still in flight or pending (the
    sweeper needs it). The memory ledger is for one process; Redis keeps every record for its whole TTL.
    """

    backend = "memory"

    #: Enough for the replays of a busy till's last minutes; each record is about a kilobyte.
    DEFAULT_MAX_ENTRIES = 10_000

    def __init__(self, clock: Callable[[], float] = time.time, *, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._clock = clock
        self._max = max_entries
        self._keys: dict[str, tuple[str, float]] = {}
        self._entries: dict[str, tuple[bytes, float]] = {}
        self._locks: dict[str, tuple[str, float]] = {}
        self._unresolved: set[str] = set()
        # (table, name, the value written) in the order written; stale once the table holds another value.
        self._order: collections.deque[tuple[dict[str, tuple[Any, float]], str, tuple[Any, float]]] = (
            collections.deque()
        )
        self._lock_order: collections.deque[tuple[float, str]] = collections.deque()

    def __len__(self) -> int:
        """Ledger records held (entries), for tests and diagnostics."""
        return len(self._entries)

    def _alive(self, table: dict[str, tuple[T, float]], name: str) -> T | None:
        found = table.get(name)
        if found is None:
            return None
        if found[1] <= self._clock():
            self._drop(table, name)
            return None
        return found[0]

    def _drop(self, table: dict[str, tuple[Any, float]], name: str) -> None:
        del table[name]
        if table is self._entries:
            self._unresolved.discard(name)

    def _put(self, table: dict[str, tuple[T, float]], name: str, value: T, ttl: float) -> None:
        written = table[name] = (value, self._clock() + ttl)
        self._order.append((table, name, written))
        self._prune()

    def _prune(self) -> None:
        """Drop what has expired from the front of the order, then the oldest while over the bound."""
        order, now = self._order, self._clock()
        while order and order[0][2][1] <= now:
            table, name, written = order.popleft()
            if table.get(name) is written:
                self._drop(table, name)
        kept: list[tuple[dict[str, tuple[Any, float]], str, tuple[Any, float]]] = []
        while order and (len(self._entries) > self._max or len(self._keys) > self._max):
            record = order.popleft()
            table, name, written = record
            if table.get(name) is not written:
                continue  # stale: removed, or written again later (a newer record follows)
            if table is self._entries and name in self._unresolved:
                kept.append(record)  # never forget a redemption whose outcome is still open
                continue
            self._drop(table, name)
        order.extendleft(reversed(kept))

    def _prune_locks(self) -> None:
        order, now = self._lock_order, self._clock()
        while order and order[0][0] <= now:
            _, code = order.popleft()
            found = self._locks.get(code)
            if found is not None and found[1] <= now:
                del self._locks[code]

    async def claim(self, entry: Entry, ttl: float) -> Entry | None:
        ref = self._alive(self._keys, entry.key)
        if ref is not None and (existing := await self.load(ref)) is not None:
            return existing
        await self.save(entry, ttl)
        self._put(self._keys, entry.key, entry.ref, ttl)
        return None

    async def save(self, entry: Entry, ttl: float) -> None:
        if entry.state in UNRESOLVED_STATES:
            self._unresolved.add(entry.ref)
        else:
            self._unresolved.discard(entry.ref)
        self._put(self._entries, entry.ref, entry_encoder.encode(entry), ttl)

    async def load(self, ref: str) -> Entry | None:
        raw = self._alive(self._entries, ref)
        return None if raw is None else entry_decoder.decode(raw)

    async def release_key(self, key: str, ref: str) -> None:
        if self._alive(self._keys, key) == ref:
            del self._keys[key]

    async def unresolved(self) -> list[str]:
        self._prune()
        for ref in [r for r in self._unresolved if self._alive(self._entries, r) is None]:
            self._unresolved.discard(ref)
        return sorted(self._unresolved)

    async def lock(self, codes: Sequence[str], owner: str, ttl: float) -> list[str]:
        self._prune_locks()
        busy = [c for c in codes if (holder := self._alive(self._locks, c)) is not None and holder != owner]
        if not busy:
            until = self._clock() + ttl
            for code in codes:
                self._locks[code] = (owner, until)
                self._lock_order.append((until, code))
        return busy

    async def unlock(self, codes: Sequence[str], owner: str) -> None:
        for code in codes:
            if self._alive(self._locks, code) == owner:
                del self._locks[code]

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
