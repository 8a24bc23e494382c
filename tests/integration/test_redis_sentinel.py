"""The ledger on a Redis that Sentinel watches (``redis+sentinel://``): real servers started here (a primary, a
replica, a sentinel). A primary killed mid-burst is replaced by its replica; no redemption a till was told of is
lost, and none is made twice: not even those answered while its link to the replica was held, which the replica
lacks when it is promoted (the gateway kept them, and writes them again)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench import data
from bench.upstream import seed
from service.config import StateSettings
from tests.conftest import StartGateway, Upstream
from tests.integration.conftest import FAST
from tests.integration.redis_servers import servers

REDEEM = "/v1/redemptions"
SERVICE = "gateway"


def _body(index: int) -> dict[str, Any]:
    mobile, codes = data.request_codes(0, index, 1)
    return {"customer": {"mobile": mobile}, "codes": codes, "billAmount": "2000.00", "transactionNumber": f"F-{index}"}


async def test_a_primary_lost_mid_burst_loses_no_answered_redemption(
    start_gateway: StartGateway, upstream: Upstream
) -> None:
    before, after = 60, 10  # redeems sent from before the primary dies, and once its replica has taken over
    seed(upstream.sandbox, [0], (before + after) // data.CODES_PER_CUSTOMER + 1)
    with servers() as group:
        primary = group.redis()
        link = group.relay(primary)
        replica = group.replica_of(primary, via=link)
        sentinel = group.sentinel(primary, SERVICE)
        url = f"redis+sentinel://127.0.0.1:{sentinel.port}/{SERVICE}"
        # WAIT waits half of the Redis timeout: a second gives a busy machine's replica room to acknowledge.
        state = StateSettings(redis_url=url, wait_replicas=1, timeout=1.0, **FAST)  # type: ignore[arg-type]
        gateway = await start_gateway(upstream, state=state, timeout=2.0)

        answered: dict[int, tuple[int, bytes]] = {}
        some_answered = asyncio.Event()

        async def till(indexes: range) -> None:
            """Redeems one after another, each retried until it gets an answer that is not "come back later"
            (the ledger away: 503)."""
            for index in indexes:
                give_up = time.monotonic() + 30
                while time.monotonic() < give_up:
                    headers = {"Idempotency-Key": f"fo-{index}"}
                    response = await gateway.post(REDEEM, json=_body(index), headers=headers)
                    body = await response.read()
                    if response.status in (200, 422):
                        answered[index] = (response.status, body)
                        if len(answered) >= 12:
                            some_answered.set()
                        break
                    await asyncio.sleep(0.05)

        tills = [asyncio.create_task(till(range(t, before, 6))) for t in range(6)]  # six tills, ten redeems each
        await some_answered.wait()  # some answered on the first primary...
        link.hold()  # ...some more that never reach its replica (the gateway keeps them: not acknowledged)...
        give_up, unacknowledged = time.monotonic() + 20, len(answered) + 6
        while len(answered) < unacknowledged:
            assert time.monotonic() < give_up, "no answer while the replica's link was held"
            await asyncio.sleep(0.02)
        primary.kill()  # ...and the rest span the failover, to a replica that lacks those
        link.close()
        with sentinel.client() as watcher:
            give_up = time.monotonic() + 20
            while watcher.sentinel_get_master_addr_by_name(SERVICE)[1] != replica.port:
                assert time.monotonic() < give_up, "the sentinel did not promote the replica"
                await asyncio.sleep(0.1)
        await asyncio.gather(*tills, till(range(before, before + after)))  # and some once it has

        assert len(answered) == before + after
        for index, (status, body) in answered.items():  # every answer given is what the ledger replays
            give_up = time.monotonic() + 20
            while True:  # "in progress" (409) while an answer given during the failover is still being recorded
                response = await gateway.post(REDEEM, json=_body(index), headers={"Idempotency-Key": f"fo-{index}"})
                replayed = (response.status, await response.read())
                if response.status != 409 or time.monotonic() > give_up:
                    break
                await asyncio.sleep(0.1)
            assert replayed == (status, body), index
        codes = {data.request_codes(0, i, 1)[1][0] for i in range(before + after)}
        per_code = {code: len(upstream.sandbox.redemptions_of(code)) for code in codes}
        assert all(n == 1 for n in per_code.values()), per_code  # none twice, none missing
