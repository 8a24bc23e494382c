"""The ledger's port and its in-memory implementation (one process; state lost on restart).

Records are kept encoded, like in Redis, so both backends hand out copies and behave alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

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
    """The ledger in this process's memory."""

    backend = "memory"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._keys: dict[str, tuple[str, float]] = {}
        self._entries: dict[str, tuple[bytes, float]] = {}
        self._locks: dict[str, tuple[str, float]] = {}
        self._unresolved: set[str] = set()

    def _alive(self, table: dict[str, tuple[T, float]], name: str) -> T | None:
        found = table.get(name)
        if found is None:
            return None
        if found[1] <= self._clock():
            del table[name]
            return None
        return found[0]

    async def claim(self, entry: Entry, ttl: float) -> Entry | None:
        ref = self._alive(self._keys, entry.key)
        if ref is not None and (existing := await self.load(ref)) is not None:
            return existing
        self._keys[entry.key] = (entry.ref, self._clock() + ttl)
        await self.save(entry, ttl)
        return None

    async def save(self, entry: Entry, ttl: float) -> None:
        self._entries[entry.ref] = (entry_encoder.encode(entry), self._clock() + ttl)
        if entry.state in UNRESOLVED_STATES:
            self._unresolved.add(entry.ref)
        else:
            self._unresolved.discard(entry.ref)

    async def load(self, ref: str) -> Entry | None:
        raw = self._alive(self._entries, ref)
        return None if raw is None else entry_decoder.decode(raw)

    async def release_key(self, key: str, ref: str) -> None:
        if self._alive(self._keys, key) == ref:
            del self._keys[key]

    async def unresolved(self) -> list[str]:
        for ref in [r for r in self._unresolved if self._alive(self._entries, r) is None]:
            self._unresolved.discard(ref)
        return sorted(self._unresolved)

    async def lock(self, codes: Sequence[str], owner: str, ttl: float) -> list[str]:
        busy = [c for c in codes if (holder := self._alive(self._locks, c)) is not None and holder != owner]
        if not busy:
            until = self._clock() + ttl
            for code in codes:
                self._locks[code] = (owner, until)
        return busy

    async def unlock(self, codes: Sequence[str], owner: str) -> None:
        for code in codes:
            if self._alive(self._locks, code) == owner:
                del self._locks[code]

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
