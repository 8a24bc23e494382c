"""The in-memory ledger keeps each record compact: final records deflated against the first one, one heap item
per row however often it is written, and the same answers as before (byte for byte)."""

from __future__ import annotations

from decimal import Decimal

from bench.ledger_memory import measure
from service.idempotency.models import Entry, State, StoredCommand, StoredResponse, entry_encoder
from service.idempotency.store import MemoryStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _entry(n: int, state: State = "in_flight") -> Entry:
    command = StoredCommand(
        customer_kind="mobile",
        customer="919900000001",
        codes=(f"A{n}", f"B{n}"),
        bill_amount=Decimal("2000.00"),
        transaction_number=f"T{n}",
        store="S001",
    )
    return Entry(
        ref=f"rdm_{n:032x}",
        key=f"key-{n}",
        fingerprint="f" * 64,
        state=state,
        command=command,
        request_id=f"req-{n}",
        created_at=1000.0,
    )


def _done(entry: Entry, n: int) -> Entry:
    entry.state = "done"
    body = b'{"ref":"%s","status":"redeemed","coupons":[{"code":"A%d","redeemed":true}]}' % (entry.ref.encode(), n)
    entry.response = StoredResponse("redeemed", body, status=200)
    entry.redemption_ids = {f"A{n}": 7000 + 2 * n, f"B{n}": 7001 + 2 * n}
    return entry


async def test_final_records_read_back_as_written_and_take_a_fraction_of_their_json() -> None:
    store = MemoryStore(Clock())
    written = []
    for n in range(20):
        entry = _entry(n)
        assert await store.begin(entry, 3600, 20) == (None, [])
        assert (await store.resolve(_done(entry, n), 3600)).written
        written.append(entry)
    for entry in written:
        loaded = await store.load(entry.ref)
        assert loaded is not None
        assert entry_encoder.encode(loaded) == entry_encoder.encode(entry)  # every field, the body byte for byte
    held = [store._entries.items[e.ref].value for e in written[1:]]  # the first is the dictionary, kept whole
    assert all(blob[:1] == b"\x00" for blob in held)
    assert max(len(b) for b in held) * 2 < min(len(entry_encoder.encode(e)) for e in written)


async def test_unresolved_records_stay_plain_and_a_reversal_rewrites_a_final_one() -> None:
    store = MemoryStore(Clock())
    first, second = _entry(1), _entry(2)
    await store.begin(first, 3600, 20)
    await store.resolve(_done(first, 1), 3600)
    await store.begin(second, 3600, 20)
    assert store._entries.items[second.ref].value[:1] != b"\x00"  # in flight: written again soon, not deflated
    await store.resolve(_done(second, 2), 3600)
    second.response = StoredResponse("reversed", b'{"status":"reversed"}', status=200)
    await store.save(second, 7200)
    loaded = await store.load(second.ref)
    assert loaded is not None
    assert loaded.response == StoredResponse("reversed", b'{"status":"reversed"}', status=200)


async def test_a_row_written_again_and_again_keeps_one_heap_item_and_expires_by_its_last_write() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    entry = _entry(1)
    await store.claim(entry, ttl=60)
    for _ in range(50):
        clock.now += 10
        await store.save(entry, ttl=60)
    assert len(store._entries._heap) == 1
    clock.now += 59
    assert await store.load(entry.ref) is not None
    clock.now += 2
    assert await store.load(entry.ref) is None


async def test_a_shorter_ttl_written_later_is_kept_and_swept_on_time() -> None:
    """A refused answer's record lives 15 minutes, not the 72 hours its claim gave it: it leaves the ledger (and
    its per-store count) when its own TTL ends, not when the claim's would have."""
    clock = Clock()
    store = MemoryStore(clock, max_entries=10, max_per_store=1)
    entry = _entry(1)
    await store.begin(entry, 72 * 3600, 20)
    entry.state, entry.response = "failed", StoredResponse("rejected", b"{}", error="COUPON_NOT_REDEEMABLE", status=422)
    await store.resolve(entry, 900)
    clock.now += 901
    assert store.refusing() is None  # swept: the store's quota of one is free again
    assert len(store) == 0


def test_the_benchmark_reports_the_bytes_of_a_record() -> None:
    per_record, _, body = measure(300)
    assert body > 200
    assert 300 < per_record < 2500
