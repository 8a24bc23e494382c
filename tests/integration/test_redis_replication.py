"""``REDIS_WAIT_REPLICAS`` against real servers started here: a primary, and a replica the test pauses (SIGSTOP), so
that ``WAIT`` goes unacknowledged every time rather than now and then.

An answer whose record the replica did not acknowledge is still given (Capillary applied it), kept by the gateway
and written again until the replica holds it; a replay meanwhile never runs the redeem again, even when the
primary has lost the record (as a failover to a replica that missed it would). A primary with no replica at all is
not waited on."""

from __future__ import annotations

import asyncio
import json
import time

from service.app import LEDGER
from service.config import StateSettings
from tests.conftest import GatewayClient, StartGateway, Upstream
from tests.integration.conftest import FAST
from tests.integration.redis_servers import servers
from tests.integration.test_exactly_once import REDEEM, _body

MULTI = "MULTI-ALICE-1"  # multi-use: a replay that ran again would be applied again, so it would show
PREFIX = "pos_coupon:"


async def _metric(gateway: GatewayClient, name: str) -> float:
    text = await (await gateway.get("/metrics")).text()
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} in /metrics")


async def _unreplicated_total(gateway: GatewayClient) -> float:
    return await _metric(gateway, "pos_coupon_ledger_unreplicated_total")


async def test_an_answer_its_replica_did_not_acknowledge_is_kept_and_written_again_never_run_again(
    start_gateway: StartGateway, upstream: Upstream
) -> None:
    key = "till-7-repl"
    headers = {"Idempotency-Key": key}
    with servers() as group:
        primary = group.redis()
        replica = group.replica_of(primary)
        # A till's deadline far past WAIT's half second: the answer is the redeem's, never a 202 on a busy machine.
        state = StateSettings(
            redis_url=f"redis://127.0.0.1:{primary.port}/0",
            wait_replicas=1,
            timeout=1.0,
            **{**FAST, "redeem_deadline": 10.0},  # type: ignore[arg-type]
        )
        gateway = await start_gateway(upstream, state=state, timeout=2.0)
        ledger = gateway.app[LEDGER]
        before = await _unreplicated_total(gateway)
        replica.pause()
        try:
            response = await gateway.post(REDEEM, json=_body(MULTI), headers=headers)
            first = (response.status, await response.read())
            assert first[0] == 200  # Capillary applied it: the till is told, acknowledged or not
            ref = json.loads(first[1])["ref"]
            assert ledger.unreplicated_count == 1  # kept, to be written again
            assert await _unreplicated_total(gateway) == before + 1
            assert await _metric(gateway, "pos_coupon_ledger_unreplicated_records") == 1  # what SREs see

            replay = await gateway.post(REDEEM, json=_body(MULTI), headers=headers)
            assert (replay.status, await replay.read()) == first  # the primary holds it: replayed from the ledger

            record = f"{PREFIX}rdm:{ref}"
            with primary.client() as client:  # lost on the primary, as on a replica promoted before it had it
                [idem] = client.keys(f"{PREFIX}idem:*")  # the till's key, as the gateway scopes it
                assert client.get(idem) == ref.encode()
                client.delete(record, idem)
            replay = await gateway.post(REDEEM, json=_body(MULTI), headers=headers)
            answer = (replay.status, await replay.read())
            if answer[0] == 409:  # the ledger lacks it: "in progress" until it is written back
                assert json.loads(answer[1])["error"]["code"] == "REQUEST_IN_PROGRESS"
            else:  # or already written back: the same answer
                assert answer == first
            assert upstream.sandbox.call_count("redeem") == 1  # never run again
            # Written back on the primary before the replica comes back: a rewrite sent before the deletion above
            # (still in its WAIT) would otherwise be acknowledged with the deletion after it in the replication
            # stream, a deletion no failover makes (it stands for the record a promoted replica never had).
            give_up = time.monotonic() + 20
            with primary.client() as client:
                while client.get(record) is None:
                    assert time.monotonic() < give_up, "the kept answer was not written back to the primary"
                    await asyncio.sleep(0.05)  # the gateway's writer runs on this loop
        finally:
            replica.resume()

        give_up = time.monotonic() + 20
        while ledger.unreplicated_count:  # written again until the replica acknowledged it
            assert time.monotonic() < give_up, "the kept answer was not written again and acknowledged"
            await asyncio.sleep(0.05)
        with replica.client() as client:  # the replica holds it, though it was deleted after the first write
            assert client.get(record) is not None
            assert client.get(idem) == ref.encode()
        replay = await gateway.post(REDEEM, json=_body(MULTI), headers=headers)
        assert (replay.status, await replay.read()) == first
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert await _unreplicated_total(gateway) == before + 1  # counted once per answer, not per write
        assert await _metric(gateway, "pos_coupon_ledger_unreplicated_records") == 0
        assert len(upstream.sandbox.redemptions_of(MULTI)) == 1


async def test_a_primary_without_a_replica_is_not_waited_on_and_its_answers_are_counted(
    start_gateway: StartGateway, upstream: Upstream
) -> None:
    """As a promoted replica whose old primary is gone: ``WAIT`` there would wait its whole timeout (5 s here) for
    nobody, past the till's 3 s deadline (a 202 "pending" instead of the answer)."""
    with servers() as group:
        primary = group.redis()
        state = StateSettings(
            redis_url=f"redis://127.0.0.1:{primary.port}/0",
            wait_replicas=1,
            timeout=10.0,
            **{**FAST, "redeem_deadline": 3.0},  # type: ignore[arg-type]
        )
        gateway = await start_gateway(upstream, state=state, timeout=2.0)
        before = await _unreplicated_total(gateway)
        response = await gateway.post(REDEEM, json=_body(MULTI), headers={"Idempotency-Key": "till-7-alone"})
        assert response.status == 200
        assert (await response.json())["status"] == "redeemed"
        assert await _unreplicated_total(gateway) == before + 1  # honest: no replica holds it
        assert gateway.app[LEDGER].unreplicated_count == 0  # nothing to fail over to: not kept


async def test_a_primary_that_refuses_info_is_waited_on_for_every_answer(
    start_gateway: StartGateway, upstream: Upstream
) -> None:
    """Some managed Redis services refuse ``INFO``: the gateway then cannot tell how many replicas there are, and
    sends ``WAIT`` with every answer, as configured, rather than failing the write."""
    with servers() as group:
        primary = group.redis("--rename-command", "INFO", "")
        group.replica_of(primary)
        state = StateSettings(
            redis_url=f"redis://127.0.0.1:{primary.port}/0",
            wait_replicas=1,
            timeout=1.0,
            **{**FAST, "redeem_deadline": 10.0},  # type: ignore[arg-type]
        )
        gateway = await start_gateway(upstream, state=state, timeout=2.0)
        response = await gateway.post(REDEEM, json=_body(MULTI), headers={"Idempotency-Key": "till-7-noinfo"})
        assert response.status == 200
        replay = await gateway.post(REDEEM, json=_body(MULTI), headers={"Idempotency-Key": "till-7-noinfo"})
        assert (replay.status, replay.headers["Idempotent-Replayed"]) == (200, "true")
        assert len(upstream.sandbox.redemptions_of(MULTI)) == 1
