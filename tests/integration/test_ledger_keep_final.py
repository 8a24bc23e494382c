"""``resolve(..., keep_final=True)``: how an answer already given is written late or again (the background writer's
every write of a final answer), on each ledger: in memory, one Redis, and a Redis Cluster started here.

- no final record there (none, in flight, pending): ours is written, its ids bound, its codes released;
- a final ``failed`` record and ours forced (Capillary's own answer to this request): ours is written over it;
- any other final record (``done``, reversed, or ``failed`` when ours is not forced): it stands, as it is;
- with no final record there, an id bound to another ref refuses an answer not forced, and not a forced one.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
import pytest

from service.idempotency.models import Entry, Reversal, StoredResponse
from service.idempotency.redis_store import RedisStore
from service.idempotency.store import LedgerStore, MemoryStore
from service.redis_pool import connect
from tests.conftest import clean_redis
from tests.integration.redis_servers import servers
from tests.integration.test_redis_cluster import _entry as entry_of

TTL = 3600.0
PREFIX = "pos_coupon:"


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    with servers() as group:
        nodes = group.cluster(3)
        yield "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in nodes)


@pytest.fixture(params=["memory", "redis", "cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[LedgerStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    if request.param == "redis":
        async with clean_redis() as url:
            ledger = RedisStore(url)
            yield ledger
            await ledger.close()
        return
    client = connect(request.getfixturevalue("cluster_url"), timeout=2.0)
    yield RedisStore(client=client, prefix=f"{PREFIX}{time.monotonic_ns()}:")  # each test its own keys
    await client.aclose()


def _entry(key: str, state: Any = "in_flight", codes: tuple[str, ...] = ("KF-A", "KF-B")) -> Entry:
    return entry_of(key, codes, state)


def _answer(entry: Entry, state: Any, ids: dict[str, int] | None = None, body: bytes = b"ours") -> Entry:
    """``entry`` with a final answer: ``done`` (with ``ids``) or ``failed``."""
    response = StoredResponse("redeemed" if state == "done" else "not_applied", body)
    return msgspec.structs.replace(entry, state=state, response=response, redemption_ids=ids or {})


async def _claimed(store: LedgerStore, key: str) -> Entry:
    entry = _entry(key)
    assert await store.begin(entry, TTL, 30) == (None, [])
    return entry


async def _replayed(store: LedgerStore, entry: Entry) -> str | None:
    """The ref whose record a new request with ``entry``'s key is answered from (a replay; when the key is free,
    the new request claims it: None)."""
    found = await store.claim(_entry(entry.key, codes=("KF-PROBE",)), TTL)
    return None if found is None else found.ref


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("before", ["none", "in_flight", "pending"])
async def test_with_no_final_record_there_the_answer_is_written(store: LedgerStore, before: str, force: bool) -> None:
    entry = await _claimed(store, f"kf-open-{before}-{force}") if before != "none" else _entry(f"kf-none-{force}")
    if before == "pending":
        entry.state = "pending"
        assert await store.save_unresolved(entry, TTL) is None
    ids = {"KF-A": 9_100 + 10 * force + len(before)}
    ours = _answer(entry, "done", ids)

    resolution = await store.resolve(ours, TTL, force=force, keep_final=True)

    assert (resolution.written, resolution.current, resolution.taken) == (True, None, {})
    record = await store.load(entry.ref)
    assert record is not None
    assert (record.state, record.response, record.redemption_ids) == ("done", ours.response, ids)
    assert await store.owners(list(ids.values())) == {ids["KF-A"]: entry.ref}
    assert await store.unresolved() == []
    assert await store.lock(list(entry.command.codes), "someone-else", 30) == []  # released
    assert await _replayed(store, entry) == entry.ref  # the key replays this answer


async def test_a_failed_record_gives_way_to_a_forced_answer(store: LedgerStore) -> None:
    """Another gateway's sweeper concluded "not applied" while this answer (Capillary's own: a redemption that
    went through) waited to be written: the answer is written over it, and the key replays it again."""
    entry = await _claimed(store, "kf-failed-forced")
    assert (await store.resolve(_answer(entry, "failed", body=b"not applied"), TTL)).written
    ours = _answer(entry, "done", {"KF-A": 9_200})

    resolution = await store.resolve(ours, TTL, force=True, keep_final=True)

    assert (resolution.written, resolution.current) == (True, None)
    record = await store.load(entry.ref)
    assert record is not None
    assert (record.state, record.response, record.redemption_ids) == ("done", ours.response, {"KF-A": 9_200})
    assert await store.owners([9_200]) == {9_200: entry.ref}
    assert await _replayed(store, entry) == entry.ref  # "failed" had freed the key: it replays the answer again


async def test_a_failed_record_stands_against_an_answer_not_forced(store: LedgerStore) -> None:
    entry = await _claimed(store, "kf-failed-plain")
    failed = _answer(entry, "failed", body=b"not applied")
    assert (await store.resolve(failed, TTL)).written

    resolution = await store.resolve(_answer(entry, "done", {"KF-A": 9_300}), TTL, keep_final=True)

    assert not resolution.written
    assert resolution.current is not None
    assert (resolution.current.state, resolution.current.response) == ("failed", failed.response)
    record = await store.load(entry.ref)
    assert record is not None
    assert (record.state, record.response) == ("failed", failed.response)
    assert await store.owners([9_300]) in ({}, {9_300: entry.ref})  # never another ref's


@pytest.mark.parametrize("force", [False, True])
async def test_a_done_record_stands_even_against_a_forced_answer(store: LedgerStore, force: bool) -> None:
    entry = await _claimed(store, f"kf-done-{force}")
    first = _answer(entry, "done", {"KF-A": 9_400 + force}, body=b"recorded first")
    assert (await store.resolve(first, TTL, force=True)).written

    later = _answer(entry, "failed", body=b"a late not applied")
    resolution = await store.resolve(later, TTL, force=force, keep_final=True)

    assert not resolution.written
    assert resolution.current is not None
    assert (resolution.current.state, resolution.current.response) == ("done", first.response)
    record = await store.load(entry.ref)
    assert record is not None
    assert (record.state, record.response) == ("done", first.response)
    assert await _replayed(store, entry) == entry.ref  # the key still replays the redemption


async def test_a_reversal_stands_against_the_redeems_own_answer_written_late(store: LedgerStore) -> None:
    """The redeem's answer waited for the ledger; meanwhile another gateway reconciled it as done and reversed it.
    Written late (forced: Capillary's own answer), the answer must not undo the reversal."""
    entry = await _claimed(store, "kf-reversed")
    done = _answer(entry, "done", {"KF-A": 9_500})
    assert (await store.resolve(done, TTL)).written
    done.reversal = Reversal(state="done", key="void-1", response=StoredResponse("reversed", b"reversed"), at=1.0)
    await store.save(done, TTL)

    resolution = await store.resolve(_answer(entry, "done", {"KF-A": 9_500}), TTL, force=True, keep_final=True)

    assert not resolution.written
    assert resolution.current is not None
    assert resolution.current.reversal == done.reversal
    record = await store.load(entry.ref)
    assert record is not None
    assert record.reversal == done.reversal


@pytest.mark.parametrize("force", [False, True])
async def test_an_id_bound_to_another_ref_refuses_only_an_answer_not_forced(store: LedgerStore, force: bool) -> None:
    other = await _claimed(store, f"kf-other-{force}")
    rid = 9_600 + force
    assert (await store.resolve(_answer(other, "done", {"KF-A": rid}), TTL)).written
    entry = _entry(f"kf-taken-{force}", codes=("KF-C",))
    assert await store.begin(entry, TTL, 30) == (None, [])

    resolution = await store.resolve(_answer(entry, "done", {"KF-C": rid}), TTL, force=force, keep_final=True)

    assert resolution.taken == {rid: other.ref}
    assert resolution.written is force
    record = await store.load(entry.ref)
    assert record is not None
    assert record.state == ("done" if force else "in_flight")  # refused: as it was, reconciled later


async def test_a_final_record_stands_before_an_id_is_found_taken(store: LedgerStore) -> None:
    """Written again, an answer not forced whose id another ref holds now (its key lost in a failover, then
    bound by another record) still finds its final record standing: returned (and written again), not refused."""
    entry = await _claimed(store, "kf-stands-taken")
    first = _answer(entry, "done", {"KF-A": 9_800}, body=b"recorded first")
    assert (await store.resolve(first, TTL)).written
    other = await _claimed(store, "kf-stands-other")
    assert (await store.resolve(_answer(other, "done", {"KF-A": 9_800}), TTL, force=True)).taken == {9_800: entry.ref}

    resolution = await store.resolve(_answer(entry, "done", {"KF-A": 9_800}), TTL, keep_final=True)

    assert not resolution.written
    assert resolution.current is not None
    assert resolution.current.response == first.response


async def test_an_answer_written_late_is_counted_unreplicated_once_and_not_when_written_again() -> None:
    """The background writer's first write of a deferred answer goes with ``keep_final``; if the replicas do not
    hold it (here: a primary with no replica, asked for one), it is counted once, as the request path's own write
    is; writing it again (``again``) is not counted a second time."""
    async with clean_redis() as url:
        ledger = RedisStore(client=connect(url, timeout=2.0), wait_replicas=1)
        try:
            entry = _entry("kf-count")
            before = RedisStore.unreplicated
            written = await ledger.resolve(_answer(entry, "done", {"KF-A": 91}), TTL, keep_final=True)
            assert written.written
            assert written.unreplicated is not None
            assert RedisStore.unreplicated == before + 1
            again = await ledger.resolve(_answer(entry, "done", {"KF-A": 91}), TTL, keep_final=True, again=True)
            assert again.unreplicated is not None
            assert RedisStore.unreplicated == before + 1  # once per answer
        finally:
            await ledger.close()
