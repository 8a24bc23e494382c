"""The shared token buckets against a real Redis: one bucket for every replica, priorities kept, and a Redis
that does not answer hands the decision back to the process (counted)."""

from __future__ import annotations

from service.access.limits import SharedBuckets
from service.capillary.resilience import OutboundLimiter, Priority
from service.redis_pool import connect


async def test_two_replicas_draw_from_one_bucket(redis_db: str) -> None:
    one, two = connect(redis_db, timeout=1.0), connect(redis_db, timeout=1.0)
    try:
        first, second = SharedBuckets(one), SharedBuckets(two)
        decisions = [await b.take("key:till", 0.01, 5) for _ in range(4) for b in (first, second)]
        assert decisions.count(0.0) == 5  # the bucket's five, whichever replica asked
        assert all(d is not None and d < 0 for d in decisions if d != 0.0)  # the rest refused, with the wait
    finally:
        await one.aclose()
        await two.aclose()


async def test_redeems_keep_their_share_of_the_capillary_budget(redis_db: str) -> None:
    client = connect(redis_db, timeout=1.0)
    try:
        back_office, redeems = OutboundLimiter(60), OutboundLimiter(60)  # two replicas, 6 tokens, 1 a second
        back_office.share(SharedBuckets(client))
        redeems.share(SharedBuckets(client))
        taken = 0
        while await back_office.acquire(Priority.BACKOFFICE, 0.0) == 0.0:
            taken += 1
        assert taken < back_office.capacity  # back office stops short, leaving the reserve
        assert await redeems.acquire(Priority.REDEEM, 0.0) == 0.0  # which redeems may still spend
        assert back_office.shed[Priority.BACKOFFICE] == 1
    finally:
        await client.aclose()


async def test_an_unreachable_redis_leaves_the_decision_to_the_process() -> None:
    client = connect("redis://127.0.0.1:1/0", timeout=0.2)
    try:
        buckets = SharedBuckets(client)
        assert await buckets.take("key:till", 1.0, 2.0, kind="key_rate") is None
        limiter = OutboundLimiter(60)
        limiter.share(buckets)
        assert await limiter.acquire(Priority.REDEEM, 0.0) == 0.0  # this process's own bucket decided
        assert buckets.unavailable == {"key_rate": 1, "capillary_budget": 1}
    finally:
        await client.aclose()
