"""The in-memory ledger and series cache stay bounded: ledger records expire with their TTL, and at its cap the
ledger refuses new redemptions rather than forget one; the caches forget their oldest keys."""

from __future__ import annotations

from decimal import Decimal

import pytest

from service.idempotency.models import Entry, State, StoredCommand
from service.idempotency.store import MemoryStore, StoreUnavailable
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


async def test_at_the_cap_new_redemptions_are_refused_and_none_is_forgotten() -> None:
    """Forgetting a record a till may still retry could redeem a multi-use coupon twice: the ledger fails closed."""
    clock = Clock()
    store = MemoryStore(clock, max_entries=5)
    for n in range(5):
        await store.claim(_entry(n), ttl=3600)
    with pytest.raises(StoreUnavailable, match="LEDGER_MEMORY_MAX_ENTRIES"):
        await store.claim(_entry(5), ttl=3600)
    assert all([await store.load(_entry(n).ref) is not None for n in range(5)])
    existing = await store.claim(_entry(0), ttl=3600)  # a replay still finds its record, full or not
    assert existing is not None
    assert existing.ref == _entry(0).ref
    clock.now += 3601
    assert await store.claim(_entry(5), ttl=3600) is None  # room again once records expire
    assert len(store) == 1


async def test_records_of_different_ttls_expire_each_on_time() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    await store.claim(_entry(0, "pending"), ttl=3600)  # a long one first...
    for n in range(1, 50):
        await store.claim(_entry(n), ttl=10)  # ...does not hold up the short ones behind it
    clock.now += 11
    await store.claim(_entry(50), ttl=10)
    assert len(store) == 2
    assert await store.unresolved() == [_entry(0).ref]


async def test_a_record_written_again_expires_by_its_latest_write() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    first = _entry(0, "in_flight")
    await store.claim(first, ttl=60)
    clock.now += 50
    first.state = "done"
    await store.save(first, ttl=60)  # written again: it lives 60 s from now
    clock.now += 20
    await store.claim(_entry(1), ttl=60)
    assert await store.load(first.ref) is not None


async def test_locks_expire_on_time_behind_a_long_one() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    assert await store.lock(["PENDING"], "slow", ttl=3600) == []
    for n in range(100):
        assert await store.lock([f"C{n}"], f"o{n}", ttl=5) == []
        await store.unlock([f"C{n}"], f"o{n}")
    clock.now += 6
    assert await store.lock(["X"], "x", ttl=5) == []
    assert set(store._locks.items) == {"PENDING", "X"}
    assert len(store._locks._heap) <= 2  # the expired writes were swept, not queued behind the long one


async def test_expired_locks_are_swept() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    assert await store.lock(["A", "B"], "one", ttl=5) == []
    assert await store.lock(["A"], "two", ttl=5) == ["A"]
    clock.now += 6
    assert await store.lock(["C"], "two", ttl=5) == []
    assert set(store._locks.items) == {"C"}


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
