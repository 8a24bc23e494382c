"""The in-memory ledger and series cache stay bounded: records expire with their TTL and the oldest go first
beyond the cap, without ever forgetting a redemption whose outcome is still open."""

from __future__ import annotations

from decimal import Decimal

import pytest

from service.idempotency.models import Entry, State, StoredCommand
from service.idempotency.store import MemoryStore
from service.redemption.models import SeriesSummary
from service.series import MemoryCache, MsgspecSerializer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _entry(n: int, state: State = "done") -> Entry:
    command = StoredCommand(
        customer_kind="mobile",
        customer="919900000001",
        codes=(f"C{n}",),
        bill_amount=Decimal(100),
        transaction_number=f"T{n}",
    )
    return Entry(
        ref=f"rdm_{n:032x}",
        key=f"natural:-:T{n}:C{n}",
        fingerprint="f",
        state=state,
        command=command,
        request_id="r",
        created_at=0.0,
    )


async def test_records_expire_with_their_ttl_as_the_ledger_is_written() -> None:
    clock = Clock()
    store = MemoryStore(clock, max_entries=100)
    for n in range(10):
        assert await store.claim(_entry(n), ttl=60) is None
    assert len(store) == 10
    clock.now += 61
    await store.claim(_entry(10), ttl=60)
    assert len(store) == 1  # the ten expired ones swept, key and record alike
    assert len(store._keys) == 1
    assert await store.load(_entry(0).ref) is None
    assert await store.claim(_entry(0), ttl=60) is None  # its key is free again


async def test_beyond_the_cap_the_oldest_go_first_and_the_newest_are_kept() -> None:
    store = MemoryStore(Clock(), max_entries=5)
    for n in range(12):
        await store.claim(_entry(n), ttl=3600)
    assert len(store) == 5
    assert len(store._keys) == 5
    assert [await store.load(_entry(n).ref) is not None for n in range(12)] == [False] * 7 + [True] * 5
    existing = await store.claim(_entry(11), ttl=3600)  # a replay of a kept request still finds its record
    assert existing is not None
    assert existing.ref == _entry(11).ref


async def test_a_record_written_again_is_kept_by_its_latest_write() -> None:
    clock = Clock()
    store = MemoryStore(clock, max_entries=3)
    first = _entry(0, "in_flight")
    await store.claim(first, ttl=60)
    for n in range(1, 3):
        await store.claim(_entry(n), ttl=60)
    first.state = "done"
    await store.save(first, ttl=60)  # written again: now the newest
    await store.claim(_entry(3), ttl=60)
    assert await store.load(first.ref) is not None
    assert await store.load(_entry(1).ref) is None  # the oldest write went instead


async def test_an_unresolved_redemption_is_never_evicted_by_the_cap() -> None:
    store = MemoryStore(Clock(), max_entries=3)
    pending = _entry(0, "pending")
    await store.claim(pending, ttl=3600)
    for n in range(1, 10):
        await store.claim(_entry(n), ttl=3600)
    assert await store.load(pending.ref) is not None
    assert await store.unresolved() == [pending.ref]
    assert len(store) == 3


async def test_expired_locks_are_swept() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    assert await store.lock(["A", "B"], "one", ttl=5) == []
    assert await store.lock(["A"], "two", ttl=5) == ["A"]
    clock.now += 6
    assert await store.lock(["C"], "two", ttl=5) == []
    assert set(store._locks) == {"C"}


def test_the_cap_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        MemoryStore(max_entries=0)


def _cache(max_size: int, clock: Clock) -> MemoryCache:
    return MemoryCache(MsgspecSerializer(int), max_size, clock)


async def test_memory_cache_forgets_the_oldest_keys_beyond_its_size() -> None:
    cache = _cache(3, Clock())
    for n in range(10):
        await cache.multi_set([(f"k{n}", n)], ttl=60)
    assert len(cache) == 3
    assert await cache.multi_get(["k0", "k6", "k7", "k8", "k9"]) == [None, None, 7, 8, 9]


async def test_memory_cache_entries_expire_and_are_swept_on_write() -> None:
    clock = Clock()
    cache = _cache(100, clock)
    await cache.multi_set([("a", 1), ("b", 2)], ttl=10)
    assert await cache.exists("a")
    clock.now += 10
    assert not await cache.exists("a")
    assert await cache.multi_get(["a"]) == [None]
    await cache.multi_set([("c", 3)], ttl=10)
    assert len(cache) == 1  # "b" expired too, swept by the write


async def test_memory_cache_rewriting_a_key_makes_it_the_newest() -> None:
    cache = _cache(2, Clock())
    await cache.multi_set([("a", 1), ("b", 2)], ttl=60)
    await cache.multi_set([("a", 10)], ttl=60)
    await cache.multi_set([("c", 3)], ttl=60)
    assert await cache.multi_get(["a", "b", "c"]) == [10, None, 3]


async def test_memory_cache_hands_out_copies() -> None:
    cache = MemoryCache(MsgspecSerializer(SeriesSummary), 10, Clock())
    await cache.multi_set([("1", SeriesSummary(id=1))], ttl=60)
    one, two = (await cache.multi_get(["1"]))[0], (await cache.multi_get(["1"]))[0]
    assert one == two == SeriesSummary(id=1)
    assert one is not two
