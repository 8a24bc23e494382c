"""Bytes per record of the in-memory ledger: ``python -m bench.ledger_memory [--records N]``.

Runs N first redeems through :class:`~service.idempotency.store.MemoryStore` as the gateway does (``begin``: the
key claimed and the codes locked; ``resolve``: the answer recorded, the redemption ids bound, the codes unlocked),
with the default TTL (nothing expires meanwhile), and prints what tracemalloc counts as still allocated per record,
and the process's RSS growth. Each request has two codes, an ``Idempotency-Key`` and the answer a till gets
(rendered by the gateway's own renderer), so the record is the size of a real one.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import sys
import time
import tracemalloc
from decimal import Decimal

from service.idempotency.models import Entry, StoredCommand
from service.idempotency.store import MemoryStore
from service.redemption.flow import new_ref
from service.redemption.models import CodeOutcome, CustomerRef, Outcome, RedemptionCommand
from service.web.redemptions import JsonRenderer

TTL = 72 * 3600.0  # IDEMPOTENCY_TTL_SECONDS' default
LOCK_TTL = 20.0


def _entry(i: int, now: float) -> Entry:
    command = RedemptionCommand(
        customer=CustomerRef("mobile", f"91990{i:07d}"),
        codes=(f"ABS-{i:08d}", f"CAP-{i:08d}"),
        bill_amount=Decimal("2000.00"),
        transaction_number=f"T-{i:09d}",
        store=f"S{i % 50:03d}",
    )
    stored = StoredCommand.of(command)
    return Entry(
        ref=new_ref(),
        key=f"till-{i % 400:03d}-{i:012d}",
        fingerprint=stored.fingerprint(),
        state="in_flight",
        command=stored,
        request_id=f"req-{i:016x}",
        created_at=now,
        lease_until=now + 30,
        settle_after=now + 40,
    )


def _answer(entry: Entry, i: int) -> Entry:
    command = entry.command.command()
    codes = [
        CodeOutcome(code, series_id=10001 + n, amount=Decimal("100.00"), ok=True, redemption_id=5_000_000 + 2 * i + n)
        for n, code in enumerate(command.codes)
    ]
    outcome = Outcome(codes, total_discount=Decimal("200.00"), ref=entry.ref)
    entry.state = "done"
    entry.response = JsonRenderer().outcome(outcome, command, entry.request_id)
    entry.redemption_ids = {c.code: c.redemption_id or 0 for c in codes}
    return entry


async def _fill(store: MemoryStore, records: int) -> None:
    now = time.time()
    for i in range(records):
        entry = _entry(i, now)
        existing, busy = await store.begin(entry, TTL, LOCK_TTL)
        assert existing is None
        assert not busy
        resolution = await store.resolve(_answer(entry, i), TTL)
        assert resolution.written


def _rss_kib() -> int:
    with open("/proc/self/status") as status:  # the current RSS (ru_maxrss is the peak)
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def measure(records: int) -> tuple[float, float, int]:
    """(tracemalloc bytes per record, RSS growth in MiB, body bytes of one answer). The RSS is measured first,
    without tracemalloc (whose own bookkeeping would count), then the store is dropped and filled again traced."""
    sample = _answer(_entry(0, time.time()), 0)
    gc.collect()
    rss = _rss_kib()
    store = MemoryStore(max_entries=records + 1)
    asyncio.run(_fill(store, records))
    gc.collect()
    grown = (_rss_kib() - rss) / 1024
    assert len(store) == records
    del store
    gc.collect()
    store = MemoryStore(max_entries=records + 1)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    asyncio.run(_fill(store, records))
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    body = sample.response.body if sample.response else b""
    return (after - before) / records, grown, len(body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000, help="first redeems to record (default 100000)")
    args = parser.parse_args(argv)
    per_record, grown, body = measure(args.records)
    print(f"records:            {args.records}")
    print(f"answer body:        {body} bytes")
    print(f"bytes per record:   {per_record:,.0f} (tracemalloc)")
    print(f"RSS growth:         {grown:,.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
