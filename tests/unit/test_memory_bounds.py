"""The in-memory ledger and series cache stay bounded: ledger records expire with their TTL, and at its cap the
ledger refuses new redemptions rather than forget one; the caches forget their oldest keys."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest

from service.cache import MemoryCache, MsgspecSerializer
from service.idempotency.models import Entry, State, StoredCommand
from service.idempotency.store import MemoryStore, StoreUnavailable
from service.redemption.models import SeriesSummary


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


def _of_store(n: int, store: str) -> Entry:
    entry = _entry(n)
    entry.command = msgspec.structs.replace(entry.command, store=store)
    entry.key = f"natural:{store}:T{n}:C{n}"
    return entry


async def test_one_store_gets_its_quota_and_no_more() -> None:
    """A till flooding the ledger (every refused redeem is a record) cannot take the room of the other stores."""
    clock = Clock()
    store = MemoryStore(clock, max_entries=100, max_per_store=3)
    for n in range(3):
        assert await store.claim(_of_store(n, "S1"), ttl=60) is None
    assert store.refusing() is not None
    assert "S1" in (store.refusing() or "")
    with pytest.raises(StoreUnavailable, match="LEDGER_MEMORY_MAX_PER_STORE"):
        await store.claim(_of_store(3, "S1"), ttl=60)
    assert await store.claim(_of_store(4, "S2"), ttl=60) is None  # another store is not held back
    assert (await store.claim(_of_store(0, "S1"), ttl=60) or _entry(99)).ref == _of_store(0, "S1").ref
    assert store.refusals == {"store_quota": 1}
    clock.now += 61
    assert await store.claim(_of_store(3, "S1"), ttl=60) is None  # its records expired: room again
    assert store.refusing() is None


async def test_resolving_binds_redemption_ids_to_one_record() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    one, two = _entry(1, "in_flight"), _entry(2, "in_flight")
    await store.claim(one, ttl=3600)
    await store.claim(two, ttl=3600)
    one.state, one.redemption_ids = "done", {"C1": 501}
    assert (await store.resolve(one, ttl=3600)).written
    assert await store.owners([501, 502]) == {501: one.ref}
    two.state, two.redemption_ids = "done", {"C2": 501}  # the same redemption: not two's to take
    refused = await store.resolve(two, ttl=3600)
    assert (refused.written, refused.taken) == (False, {501: one.ref})
    two.state, two.redemption_ids = "failed", {}
    assert (await store.resolve(two, ttl=60)).written
    assert await store.claim(_entry(2), ttl=60) is None  # "failed" freed its key
    again = await store.resolve(one, ttl=3600)  # a second resolution of a final record changes nothing
    assert again.current is not None
    assert again.current.ref == one.ref
