"""The ledger on a Redis that Sentinel watches (``redis+sentinel://``): real servers started here (a primary, a
replica, a sentinel). A primary killed mid-burst is replaced by its replica; no redemption a till was told of is
lost, and none is made twice."""

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
    count = 60
    seed(upstream.sandbox, [0], count // data.CODES_PER_CUSTOMER + 1)
    with servers() as group:
        primary = group.redis()
        replica = group.replica_of(primary)
        sentinel = group.sentinel(primary, SERVICE)
        url = f"redis+sentinel://127.0.0.1:{sentinel.port}/{SERVICE}"
        state = StateSettings(redis_url=url, wait_replicas=1, **FAST)  # type: ignore[arg-type]
        gateway = await start_gateway(upstream, state=state, timeout=2.0)

        answered: dict[int, tuple[int, bytes]] = {}

        async def till(index: int) -> None:
            """Retries until it gets an answer that is not "come back later" (the ledger away: 503)."""
            give_up = time.monotonic() + 30
            while time.monotonic() < give_up:
                response = await gateway.post(REDEEM, json=_body(index), headers={"Idempotency-Key": f"fo-{index}"})
                body = await response.read()
                if response.status in (200, 422):
                    answered[index] = (response.status, body)
                    return
                await asyncio.sleep(0.05)

        burst = [asyncio.create_task(till(i)) for i in range(count)]
        await asyncio.sleep(0.2)  # some answered on the first primary...
        primary.kill()  # ...the rest span the failover
        await asyncio.gather(*burst)

        assert len(answered) == count
        with sentinel.client() as watcher:  # the replica took over
            assert watcher.sentinel_get_master_addr_by_name(SERVICE)[1] == replica.port
        for index, (status, body) in answered.items():  # every answer given is what the ledger replays
            give_up = time.monotonic() + 20
            while True:  # "in progress" (409) while an answer given during the failover is still being recorded
                response = await gateway.post(REDEEM, json=_body(index), headers={"Idempotency-Key": f"fo-{index}"})
                replayed = (response.status, await response.read())
                if response.status != 409 or time.monotonic() > give_up:
                    break
                await asyncio.sleep(0.1)
            assert replayed == (status, body), index
        redeemed = [c for c in upstream.sandbox.calls if c.operation == "redeem"]
        codes = {data.request_codes(0, i, 1)[1][0] for i in range(count)}
        per_code = {code: len(upstream.sandbox.redemptions_of(code)) for code in codes}
        assert all(n == 1 for n in per_code.values()), per_code  # none twice, none missing
        assert len(redeemed) >= count
