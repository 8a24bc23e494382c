"""The ledger's port and its in-memory implementation (one process; state lost on restart).

Records are kept encoded, like in Redis, so both backends hand out copies and behave alike. In memory a record
is kept compact, as it is held for the whole TTL (72 hours by default): MessagePack (the answer's bytes as they
are, not base64), a final one deflated against a dictionary learnt from the first final record (the field names
and the answer's shape repeat from record to record), and one slotted holder per table row with one heap item.
``python -m bench.ledger_memory`` measures the bytes per record.
"""

from __future__ import annotations

import collections
import heapq
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import msgspec
import structlog

from service.idempotency.models import Entry

UNRESOLVED_STATES = ("in_flight", "pending")

log = structlog.get_logger("service.ledger")

T = TypeVar("T")
K = TypeVar("K", str, int)


class StoreUnavailable(Exception):
    """The ledger cannot be read or written: nothing may be redeemed without it."""


FINAL_STATES = ("done", "failed")


#: Why a final answer is not known to be held by ``REDIS_WAIT_REPLICAS`` replicas (see :class:`Resolution`).
UNACKNOWLEDGED = "unacknowledged"  # replicas are connected but did not acknowledge it in time: a failover may lose it
SHORT_OF_REPLICAS = "short_of_replicas"  # the primary has fewer replicas than asked: none waited for


@dataclass(frozen=True)
class Resolution:
    """What :meth:`LedgerStore.resolve` did."""

    written: bool
    current: Entry | None = None  # not written: the final entry already recorded (its answer wins)
    taken: dict[int, str] = field(default_factory=dict)  # redemption ids already bound to another ref
    #: With ``REDIS_WAIT_REPLICAS``: None when the replicas acknowledged the record (written, or found final),
    #: else why not (:data:`UNACKNOWLEDGED`, :data:`SHORT_OF_REPLICAS`); and the primary that holds it (its
    #: replication id, which a failover changes), as last read.
    unreplicated: str | None = None
    primary: str | None = None


def _stands(current: Entry, *, force: bool, keep_final: bool) -> bool:
    """Whether the record ``current`` stands against a new answer (see :meth:`LedgerStore.resolve`): a final one
    does, unless the answer is forced and either not ``keep_final`` or the record is ``failed``."""
    if current.state not in FINAL_STATES:
        return False
    return not force or (keep_final and current.state != "failed")


class LedgerStore(Protocol):
    backend: str
    #: New redemptions refused by the store's own bounds, by reason (for metrics).
    refusals: collections.Counter[str]

    async def claim(self, entry: Entry, ttl: float, *, legacy_key: str | None = None) -> Entry | None:
        """Record ``entry`` under its idempotency key if that key is free (returns None); otherwise change
        nothing and return the entry the key already points to. ``legacy_key``: another key the same request
        was recorded under by earlier releases; a live record there is returned as well."""

    async def begin(
        self, entry: Entry, ttl: float, lock_ttl: float, *, legacy_key: str | None = None
    ) -> tuple[Entry | None, list[str]]:
        """A first redeem's start, all at once: :meth:`claim` the key and :meth:`lock` the entry's codes for
        ``lock_ttl``. Returns ``(existing, [])`` when the key is taken by another ref (nothing changed: a replay),
        ``(None, busy codes)`` when another owner holds a code (nothing changed), else ``(None, [])``: claimed
        and locked. A key already held by this very ref (a claim sent twice) is this request's own."""

    async def save(self, entry: Entry, ttl: float) -> None:
        """Store ``entry`` (by its ref), replacing what was there."""

    async def save_unresolved(self, entry: Entry, ttl: float) -> Entry | None:
        """Store an in-flight or pending ``entry`` unless its record is already final: then return that."""

    async def resolve(
        self,
        entry: Entry,
        ttl: float,
        *,
        force: bool = False,
        unlock: bool = True,
        keep_final: bool = False,
        again: bool = False,
    ) -> Resolution:
        """Record a final answer (``done`` or ``failed``), all at once:

        - unless ``force``, a record already final is left as it is and returned (the first answer wins), and a
          redemption id already bound to another ref refuses the whole write (returned in ``taken``); ``force``
          (Capillary's own answer to this request): written whatever is there, its ids bound whoever held them;
        - ``keep_final``: an answer already given, written late or again (its first write may have been lost, or
          not reached the replicas): a final record there stands, is left as it is (written again as it is, so
          that a ``WAIT`` after it covers it) and returned, except a ``failed`` one when ``force`` (no reversal in
          it: Capillary's answer overwrites it). With no final record there, as without ``keep_final``;
        - ``again``: this answer was written before (its replicas did not acknowledge it): not counted again as
          an answer the replicas do not hold;
        - each redemption id of a ``done`` entry is bound to its ref (``redemption id -> ref``), so no other
          record can adopt it;
        - the idempotency key: ``failed`` frees it (the same request may run again); ``done`` keeps it for
          ``ttl`` (set again if the store lost it);
        - the entry leaves the unresolved set, and with ``unlock`` its codes' locks held by it are released.
        """

    async def owners(self, redemption_ids: Sequence[int]) -> dict[int, str]:
        """The ref each of these Capillary redemption ids is bound to, for those bound."""

    async def load(self, ref: str) -> Entry | None: ...

    async def unresolved(self) -> list[str]:
        """Refs of the entries still in flight or pending, for the sweeper."""

    async def lock(self, codes: Sequence[str], owner: str, ttl: float) -> list[str]:
        """Take every code for ``owner`` (or extend its hold); if another owner holds any, take none and return
        those codes."""

    async def unlock(self, codes: Sequence[str], owner: str) -> None:
        """Release the codes ``owner`` holds."""

    def refusing(self) -> str | None:
        """Why new redemptions are being refused right now, if they are (for ``/readyz``)."""

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


class _Held(Generic[T]):
    """One value of an :class:`_Expiring` table: the value, when it expires, when the table's heap next looks at
    it (``due``: never later than ``until``), and ``tag`` (the ledger keeps a record's store there)."""

    __slots__ = ("due", "tag", "until", "value")

    def __init__(self, value: T, until: float, tag: str | None) -> None:
        self.value = value
        self.until = until
        self.due = until
        self.tag = tag


class _Expiring(Generic[K, T]):
    """A table whose values expire: a dict of :class:`_Held`, and a heap of due times swept as the table is
    written. A value has one heap item, pushed when it is first written or when a write brings its expiry
    forward; a write that pushes its expiry back only moves ``until``, and the sweep that pops its due time
    queues it again for then. So a value written many times costs one heap item, not one per write."""

    def __init__(self, clock: Callable[[], float], on_drop: Callable[[K, str | None], None] | None = None) -> None:
        self.items: dict[K, _Held[T]] = {}
        self._heap: list[tuple[float, K]] = []
        self._clock = clock
        self._on_drop: Callable[[K, str | None], None] | None = on_drop

    def __len__(self) -> int:
        return len(self.items)

    def held(self, name: K) -> _Held[T] | None:
        """The live value's holder (an expired one is dropped)."""
        found = self.items.get(name)
        if found is not None and found.until <= self._clock():
            self.delete(name)
            return None
        return found

    def get(self, name: K) -> T | None:
        found = self.held(name)
        return None if found is None else found.value

    def put(self, name: K, value: T, until: float, tag: str | None = None) -> None:
        """Hold ``value`` under ``name`` until the time ``until`` (``tag``: kept only by the first write)."""
        found = self.items.get(name)
        if found is None:
            self.items[name] = _Held(value, until, tag)
            heapq.heappush(self._heap, (until, name))
        else:
            found.value, found.until = value, until
            if until < found.due:
                found.due = until
                heapq.heappush(self._heap, (until, name))
        self.sweep()

    def delete(self, name: K) -> None:
        found = self.items.pop(name, None)
        if found is not None and self._on_drop is not None:
            self._on_drop(name, found.tag)

    def sweep(self) -> None:
        heap, now = self._heap, self._clock()
        while heap and heap[0][0] <= now:
            due, name = heapq.heappop(heap)
            found = self.items.get(name)
            if found is None or found.due != due:
                continue  # removed, or queued again for an earlier time
            if found.until <= now:
                self.delete(name)
            else:  # written again meanwhile for longer: looked at again then
                found.due = found.until
                heapq.heappush(heap, (found.until, name))


class _Codec:
    """A ledger record's bytes in memory: MessagePack; a final record (kept for the TTL, never written again but
    by a reversal) also deflated with a preset dictionary: the first final record this store encodes, which is
    kept as it is and serves as the dictionary from then on (about 160 bytes instead of 900 for a two-code
    answer, for some 20 us once per redeem). Only this process reads these bytes, so the dictionary need not
    be stable across runs."""

    _DEFLATED = b"\x00"  # never the first byte of a MessagePack map (an Entry), so it marks a deflated record

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(Entry)
        self._dictionary: bytes | None = None

    def encode(self, entry: Entry) -> bytes:
        packed = self._encoder.encode(entry)
        if entry.state not in FINAL_STATES:
            return packed
        if self._dictionary is None:
            self._dictionary = packed
            return packed
        deflate = zlib.compressobj(1, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, self._dictionary)
        return self._DEFLATED + deflate.compress(packed) + deflate.flush()

    def decode(self, blob: bytes) -> Entry:
        if blob[:1] == self._DEFLATED and self._dictionary is not None:
            inflate = zlib.decompressobj(-15, self._dictionary)
            blob = inflate.decompress(memoryview(blob)[1:]) + inflate.flush()
        return self._decoder.decode(blob)


class MemoryStore:
    """The ledger in this process's memory, bounded.

    Every record expires with its TTL (``IDEMPOTENCY_TTL_SECONDS``, or the shorter ``LEDGER_REFUSED_TTL_SECONDS``
    for one that redeemed nothing), swept as the ledger is written. A record is never dropped before then:
    forgetting a redemption a till may still retry could redeem a multi-use coupon twice. So at most
    ``max_entries`` records are held, and at most ``max_per_store`` of one store (one store's tills cannot fill
    the ledger for every store); past either, a new redemption is refused as the ledger being unavailable (503,
    nothing redeemed) until records expire: it fails closed, never open. The memory ledger is for one process;
    Redis holds as many as it has memory for.
    """

    backend = "memory"

    #: About 1.2 kB each with their indexes (``python -m bench.ledger_memory``): some 150 MB of RSS when full.
    DEFAULT_MAX_ENTRIES = 100_000
    DEFAULT_MAX_PER_STORE = 20_000

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_per_store: int | None = None,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._clock = clock
        self._max = max_entries
        self._max_per_store = min(max_entries, max_per_store or max_entries)
        self._unresolved: set[str] = set()
        self._per_store: collections.Counter[str] = collections.Counter()
        self._keys: _Expiring[str, str] = _Expiring(clock)  # idempotency key -> ref
        self._entries: _Expiring[str, bytes] = _Expiring(clock, self._forget)  # ref -> record (tag: its store)
        self._locks: _Expiring[str, str] = _Expiring(clock)  # code -> owner
        self._bound: _Expiring[int, str] = _Expiring(clock)  # Capillary redemption id -> ref
        self._codec = _Codec()
        #: Claims refused, by reason (``full``, ``store_quota``), read by the metrics collector.
        self.refusals: collections.Counter[str] = collections.Counter()
        self._refusing: str | None = None

    def __len__(self) -> int:
        """Ledger records held (entries), for tests and diagnostics."""
        return len(self._entries)

    def _forget(self, ref: str, store: str | None) -> None:
        self._unresolved.discard(ref)
        if store is not None:
            self._per_store[store] -= 1
            if self._per_store[store] <= 0:
                del self._per_store[store]

    def _sweep(self) -> None:
        for table in (self._entries, self._keys, self._bound):
            table.sweep()

    def _refuse(self, reason: str, message: str) -> StoreUnavailable:
        self.refusals[reason] += 1
        if self._refusing != message:  # once per change, not once per refused request
            log.warning("ledger_memory_refusing", reason=message)
            self._refusing = message
        return StoreUnavailable(message)

    async def claim(self, entry: Entry, ttl: float, *, legacy_key: str | None = None) -> Entry | None:
        for key in (entry.key, legacy_key):
            ref = None if key is None else self._keys.get(key)
            if ref is not None and (existing := await self.load(ref)) is not None:
                return existing
        self._sweep()
        if len(self._entries) >= self._max or len(self._keys) >= self._max:
            raise self._refuse(
                "full",
                f"the in-memory ledger holds {self._max} redemptions not yet expired: set REDIS_URL, or raise "
                "LEDGER_MEMORY_MAX_ENTRIES or lower IDEMPOTENCY_TTL_SECONDS",
            )
        store = entry.command.store or "-"
        if self._per_store[store] >= self._max_per_store:
            raise self._refuse(
                "store_quota",
                f"store {store} has {self._max_per_store} redemptions in the in-memory ledger, its share "
                "(LEDGER_MEMORY_MAX_PER_STORE): its new redemptions are refused until records expire",
            )
        self._refusing = None
        until = self._clock() + ttl
        self._save(entry, until)
        self._keys.put(entry.key, entry.ref, until)
        return None

    async def begin(
        self, entry: Entry, ttl: float, lock_ttl: float, *, legacy_key: str | None = None
    ) -> tuple[Entry | None, list[str]]:
        for key in (entry.key, legacy_key):
            ref = None if key is None else self._keys.get(key)
            if ref is not None and ref != entry.ref and (existing := await self.load(ref)) is not None:
                return existing, []
        codes = entry.command.codes
        busy = [c for c in codes if (holder := self._locks.get(c)) is not None and holder != entry.ref]
        if busy:
            return None, busy
        if self._keys.get(entry.key) != entry.ref:
            await self.claim(entry, ttl, legacy_key=legacy_key)
        await self.lock(codes, entry.ref, lock_ttl)
        return None, []

    def refusing(self) -> str | None:
        self._sweep()
        if len(self._entries) >= self._max or len(self._keys) >= self._max:
            return f"in-memory ledger full ({self._max} redemptions): new redemptions are refused"
        full = sorted(s for s, n in self._per_store.items() if n >= self._max_per_store)
        if full:
            named = ", ".join(full[:5]) + (f" and {len(full) - 5} more" if len(full) > 5 else "")
            return f"in-memory ledger: store {named} at its quota ({self._max_per_store}): its redemptions are refused"
        return None

    async def save(self, entry: Entry, ttl: float) -> None:
        self._save(entry, self._clock() + ttl)

    def _save(self, entry: Entry, until: float) -> None:
        """Write ``entry`` to expire at ``until`` (one float shared with its key's and ids' rows)."""
        if entry.state in UNRESOLVED_STATES:
            self._unresolved.add(entry.ref)
        else:
            self._unresolved.discard(entry.ref)
        store = None
        if entry.ref not in self._entries.items:  # counted once per record, until it is dropped
            store = sys.intern(entry.command.store or "-")  # one string per store, not one per record
            self._per_store[store] += 1
        self._entries.put(entry.ref, self._codec.encode(entry), until, store)

    async def save_unresolved(self, entry: Entry, ttl: float) -> Entry | None:
        current = await self.load(entry.ref)
        if current is not None and current.state in FINAL_STATES:
            return current
        await self.save(entry, ttl)
        return None

    async def resolve(
        self,
        entry: Entry,
        ttl: float,
        *,
        force: bool = False,
        unlock: bool = True,
        keep_final: bool = False,
        again: bool = False,
    ) -> Resolution:
        ids = [i for i in entry.redemption_ids.values() if i > 0] if entry.state == "done" else []
        taken = {i: owner for i in ids if (owner := self._bound.get(i)) is not None and owner != entry.ref}
        if not force or keep_final:
            current = await self.load(entry.ref)
            if current is not None and _stands(current, force=force, keep_final=keep_final):
                return Resolution(False, current=current)
        if taken and not force:
            return Resolution(False, taken=taken)
        until = self._clock() + ttl
        for i in ids:
            self._bound.put(i, entry.ref, until)
        self._save(entry, until)
        holder = self._keys.get(entry.key)
        if entry.state == "failed":
            if holder == entry.ref:
                self._keys.delete(entry.key)
        elif holder is None or holder == entry.ref:
            self._keys.put(entry.key, entry.ref, until)
        if unlock:
            await self.unlock(entry.command.codes, entry.ref)
        return Resolution(True, taken=taken)

    async def owners(self, redemption_ids: Sequence[int]) -> dict[int, str]:
        return {i: ref for i in redemption_ids if (ref := self._bound.get(i)) is not None}

    def expires_in(self, ref: str) -> float | None:
        """Seconds until the record of ``ref`` expires (None: no such record), for tests and diagnostics."""
        found = self._entries.items.get(ref)
        return None if found is None else found.until - self._clock()

    async def load(self, ref: str) -> Entry | None:
        raw = self._entries.get(ref)
        return None if raw is None else self._codec.decode(raw)

    async def unresolved(self) -> list[str]:
        self._entries.sweep()
        for ref in [r for r in self._unresolved if self._entries.get(r) is None]:
            self._unresolved.discard(ref)
        return sorted(self._unresolved)

    async def lock(self, codes: Sequence[str], owner: str, ttl: float) -> list[str]:
        busy = [c for c in codes if (holder := self._locks.get(c)) is not None and holder != owner]
        if not busy:
            until = self._clock() + ttl
            for code in codes:
                self._locks.put(code, owner, until)
        return busy

    async def unlock(self, codes: Sequence[str], owner: str) -> None:
        for code in codes:
            if self._locks.get(code) == owner:
                self._locks.delete(code)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
