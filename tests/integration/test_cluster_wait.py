"""``REDIS_WAIT_REPLICAS`` on a Redis Cluster when the node that served the record's slot is gone: the answer is
never reported as held by a replica unless the ``WAIT`` that followed its write, on the connection of that write,
said so.

The cluster client's own pipeline, sent again after a connection error, routes the script by its key (to the
replica promoted meanwhile) and the keyless ``WAIT`` to its default node: another primary, whose replica answers
at once for a write it never saw. So the script and ``WAIT`` go to the slot's node on one connection, sent once,
and any failure there writes the record the ordinary way and reports it unacknowledged (kept, written again)."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

import msgspec
import pytest
import redis

from service.idempotency import redis_store
from service.idempotency.models import Entry, StoredCommand, StoredResponse
from service.idempotency.redis_store import RedisStore
from service.idempotency.store import UNACKNOWLEDGED
from service.redis_pool import connect
from tests.integration.redis_servers import Server, servers


def _entry(key: str) -> Entry:
    command = StoredCommand(
        customer_kind="mobile",
        customer="919900000001",
        codes=("CW-A",),
        bill_amount=Decimal(100),
        transaction_number=f"T-{key}",
    )
    return Entry(
        ref=f"rdm_{key}",
        key=key,
        fingerprint="f",
        state="in_flight",
        command=command,
        request_id="r",
        created_at=0.0,
    )


def _primary_of(nodes: list[Server], slot: int) -> Server:
    with nodes[0].client() as client:
        for start, end, (_, port, *_rest), *_ in client.execute_command("CLUSTER SLOTS"):
            if int(start) <= slot <= int(end):
                return next(n for n in nodes if n.port == int(port))
    raise AssertionError(f"slot {slot} is not served")


def _failed_over(nodes: list[Server], dead: Server) -> bool:
    """Every slot served by a live primary (not ``dead``), as a live node tells."""
    watcher = next(n for n in nodes if n is not dead)
    with watcher.client() as client:
        try:
            if client.cluster("info").get("cluster_state") != "ok":
                return False
            ranges = client.execute_command("CLUSTER SLOTS")
        except redis.RedisError:
            return False
    served = [int(end) - int(start) + 1 for start, end, (_, port, *_r), *_ in ranges if int(port) != dead.port]
    return sum(served) == 16384


async def test_an_answer_written_as_its_slots_node_fails_over_is_never_reported_replicated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The node's replicas as read just before it died (read again only after a minute): the write goes to it.
    monkeypatch.setattr(redis_store, "REPLICATION_READ_EVERY", 60.0)
    with servers() as group:
        nodes = group.cluster(3, replicas=1)
        client: Any = connect("redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in nodes), timeout=1.0)
        store = RedisStore(client=client, wait_replicas=1)
        steps = store._cluster
        assert steps is not None
        try:
            # A key whose record is not on the node serving slot 0 (the client's default node after it learns
            # the cluster again), so a WAIT sent there would find a replica and say "acknowledged".
            default = _primary_of(nodes, 0)
            key = next(
                k
                for k in (f"cw-{i}" for i in range(1000))
                if _primary_of(nodes, client.keyslot(steps._prefix(redis_store._digest(k)))) is not default
            )
            entry = _entry(key)
            assert await store.begin(entry, 3600, 30) == (None, [])
            record = steps._prefix(redis_store._digest(key)) + entry.ref
            node = client.get_node_from_key(record)
            assert await steps._replicas_of(node) == 1  # read now, trusted from here on
            # No live connection to it left in the pool (as after a topology refresh, which marks them all for
            # reconnecting): the next command to it connects first, and that fails once it is dead.
            await node.disconnect()

            dead = next(n for n in nodes if n.port == int(node.port))
            dead.kill()
            give_up = time.monotonic() + 30
            while not _failed_over(nodes, dead):  # its replica promoted; this client does not know it yet
                assert time.monotonic() < give_up, "no replica took the dead primary's slots"
                await asyncio.sleep(0.1)

            done = msgspec.structs.replace(entry, state="done", response=StoredResponse("redeemed", b"ok"))
            resolution = await store.resolve(done, 3600)

            assert resolution.written  # on the promoted replica, which has no replica of its own
            assert resolution.unreplicated == UNACKNOWLEDGED  # so kept, and written again until one holds it
            found = await store.load(entry.ref)
            assert found is not None
            assert found.state == "done"
        finally:
            await client.aclose()
