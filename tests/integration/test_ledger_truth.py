"""What the ledger answers must stay true after the fact, on both backends, over real HTTP against the sandbox:

- a reversed redemption is never replayed as redeemed (issue 14, item 1);
- reconciliation adopts only a redemption of its own request, never another record's (item 2);
- one store cannot fill the in-memory ledger, and what redeemed nothing is not kept for days (item 5);
- the natural key is the till's own, and its 422 speaks of the transaction (item 6).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as redis

from service.access.keys import ApiKey, KeyRing, digest_of
from service.app import LEDGER_STORE
from service.config import StateSettings
from service.idempotency.store import MemoryStore
from service.sandbox import Fault, FaultKind
from tests.api.spec import assert_matches
from tests.conftest import (
    ADMIN_KEY,
    OTHER_STORE_KEY,
    GatewayClient,
    StartGateway,
    StartUpstream,
    Upstream,
    bearer,
)
from tests.integration.conftest import FAST, Gateway
from tests.integration.test_exactly_once import REDEEM, _body, till

MULTI = "MULTI-ALICE-1"  # multi-use: Capillary redeems it again in another request, even in the same transaction


def _active(upstream: Upstream, code: str) -> list[int]:
    return sorted(r.id for r in upstream.sandbox.redemptions_of(code, include_reversed=False))


async def _json(response: Any) -> dict[str, Any]:
    payload: dict[str, Any] = await response.json()
    return payload


# ------------------------------------------------------------------------------------ 1. reversal is the record


async def test_a_reversed_redemption_is_never_replayed_as_redeemed(make_gateway: Gateway, upstream: Upstream) -> None:
    gateway = await make_gateway()
    for headers in ({}, {"Idempotency-Key": "till-7-rev"}):  # the natural key, then a key of the till's own
        txn = f"T-REV-{len(headers)}"
        code = "ABS-ALICE-1" if not headers else "ABS-ALICE-2"
        redeemed = await _json(await gateway.post(REDEEM, json=_body(code, txn=txn), headers=headers))
        assert redeemed["status"] == "redeemed"
        reversal = await gateway.post(f"{REDEEM}/{redeemed['ref']}/reversal")
        assert reversal.status == 200
        assert _active(upstream, code) == []  # the coupon is active again upstream

        calls = upstream.sandbox.call_count()
        replay = await gateway.post(REDEEM, json=_body(code, txn=txn), headers=headers)
        payload = await _json(replay)
        assert replay.status == 409, payload
        assert_matches(REDEEM, "post", 409, payload)
        assert (payload["ref"], payload["status"]) == (redeemed["ref"], "reversed")
        assert payload["error"]["code"] == "REDEMPTION_REVERSED"
        assert redeemed["ref"] in payload["error"]["message"]
        assert "new transaction number" in payload["error"]["message"]
        assert payload["totalDiscount"] == "0.00"
        [coupon] = payload["coupons"]
        assert (coupon["redeemed"], coupon["redemptionId"]) == (False, redeemed["coupons"][0]["redemptionId"])
        assert upstream.sandbox.call_count() == calls  # answered from the record
        assert _active(upstream, code) == []


async def test_after_a_void_the_same_transaction_is_not_redeemed_again_but_a_new_one_is(
    make_gateway: Gateway, upstream: Upstream
) -> None:
    """The natural key stays bound to the reversed record: a late retry of the voided request must not redeem it
    again behind the cashier's back. The till redeems again with a new transaction number (or a new key)."""
    gateway = await make_gateway()
    redeemed = await _json(await gateway.post(REDEEM, json=_body(MULTI, txn="T-VOID")))
    assert (await gateway.post(f"{REDEEM}/{redeemed['ref']}/reversal")).status == 200

    late = await gateway.post(REDEEM, json=_body(MULTI, txn="T-VOID"))
    assert late.status == 409
    assert _active(upstream, MULTI) == []

    again = await _json(await gateway.post(REDEEM, json=_body(MULTI, txn="T-VOID-2")))
    assert (again["status"], again["ref"] != redeemed["ref"]) == ("redeemed", True)
    keyed = await gateway.post(REDEEM, json=_body(MULTI, txn="T-VOID"), headers={"Idempotency-Key": "after-void"})
    assert (await _json(keyed))["status"] == "redeemed"
    assert len(_active(upstream, MULTI)) == 2


async def test_a_reversal_whose_answer_was_lost_already_stops_the_redeem_replay(
    make_gateway: Gateway, upstream: Upstream
) -> None:
    gateway = await make_gateway()
    redeemed = await _json(await gateway.post(REDEEM, json=_body("ABS-ALICE-1")))
    upstream.sandbox.add_fault(Fault(FaultKind.APPLY_THEN_RESET, "reactivate"))
    lost = await gateway.post(f"{REDEEM}/{redeemed['ref']}/reversal")
    assert lost.status >= 500  # the reactivation went through; its answer did not

    replay = await gateway.post(REDEEM, json=_body("ABS-ALICE-1"))
    payload = await _json(replay)
    assert (replay.status, payload["error"]["code"]) == (409, "REDEMPTION_REVERSED")
    assert "being reversed" in payload["error"]["message"]

    settled = await gateway.post(f"{REDEEM}/{redeemed['ref']}/reversal")  # the retry finds it done upstream
    assert settled.status == 200
    again = await _json(await gateway.post(REDEEM, json=_body("ABS-ALICE-1")))
    assert "was reversed at" in again["error"]["message"]


async def test_a_refused_reversal_leaves_the_redemption_standing(make_gateway: Gateway, upstream: Upstream) -> None:
    gateway = await make_gateway()
    first = await gateway.post(REDEEM, json=_body("ABS-ALICE-1"))
    upstream.sandbox.add_fault(Fault(FaultKind.CODE, "reactivate", code=510))
    refused = await gateway.post(f"{REDEEM}/{(await _json(first))['ref']}/reversal")
    assert refused.status >= 400
    assert (await _json(refused))["error"]["upstream"]["code"] == 510
    replay = await gateway.post(REDEEM, json=_body("ABS-ALICE-1"))
    assert (replay.status, await replay.read()) == (200, await first.read())
    assert len(_active(upstream, "ABS-ALICE-1")) == 1


# ---------------------------------------------------------------------- 2. reconciliation adopts only its own


async def test_reconciliation_never_adopts_another_requests_redemption(
    make_gateway: Gateway, upstream: Upstream
) -> None:
    """Key A redeems a multi-use coupon in transaction T; key B sends the same body, and its redeem fails with
    nothing applied. Capillary shows A's redemption under T: B must not take it, and reversing B must not
    reverse A."""
    gateway = await make_gateway()
    first = await _json(await gateway.post(REDEEM, json=_body(MULTI), headers={"Idempotency-Key": "key-A"}))
    [a_id] = _active(upstream, MULTI)
    assert first["coupons"][0]["redemptionId"] == a_id

    upstream.sandbox.add_fault(Fault(FaultKind.HTTP_ERROR, "redeem", status=503))  # sent, nothing applied
    pending = await _json(await gateway.post(REDEEM, json=_body(MULTI), headers={"Idempotency-Key": "key-B"}))
    assert pending["status"] == "pending"
    record = await _json(await gateway.get(f"{REDEEM}/{pending['ref']}"))
    assert record["status"] == "pending"  # A's redemption is there, and it is not B's

    status, payload, seen = await till([gateway], _body(MULTI), key="key-B")
    assert (status, payload["status"]) == (200, "redeemed"), seen
    b_id = payload["coupons"][0]["redemptionId"]
    assert b_id != a_id
    assert _active(upstream, MULTI) == sorted([a_id, b_id])
    assert (await _json(await gateway.get(f"{REDEEM}/{pending['ref']}")))["status"] == "failed"

    reversed_b = await gateway.post(f"{REDEEM}/{payload['ref']}/reversal")
    assert reversed_b.status == 200
    assert _active(upstream, MULTI) == [a_id]  # A's redemption stands


async def test_reconciliation_ignores_a_redemption_made_before_the_request(
    start_upstream: StartUpstream, start_gateway: StartGateway, backend: str | None
) -> None:
    """A redemption of the same code and transaction number that no record of this ledger owns (made through
    another integration, or whose record expired), dated before this request was claimed, is not this request's."""
    upstream = await start_upstream(clock=lambda: datetime.now(UTC))
    elsewhere = await start_gateway(upstream)  # another integration, with a ledger of its own
    upstream.sandbox.set_now(datetime.now(UTC) - timedelta(hours=1))
    old = await _json(await elsewhere.post(REDEEM, json=_body(MULTI)))
    [old_id] = _active(upstream, MULTI)
    assert old["coupons"][0]["redemptionId"] == old_id
    upstream.sandbox.set_now(datetime.now(UTC))

    gateway = await start_gateway(upstream, timeout=0.5, state=StateSettings(redis_url=backend, **FAST))
    upstream.sandbox.add_fault(Fault(FaultKind.HTTP_ERROR, "redeem", status=503))
    status, payload, seen = await till([gateway], _body(MULTI), key="after-an-hour")
    assert (status, payload["status"]) == (200, "redeemed"), seen
    assert payload["coupons"][0]["redemptionId"] != old_id
    assert len(_active(upstream, MULTI)) == 2


# --------------------------------------------------------------------- 4. bounds of the in-memory ledger


async def test_one_store_cannot_fill_the_memory_ledger_for_every_store(
    start_gateway: StartGateway, upstream: Upstream
) -> None:
    state = StateSettings(memory_max_entries=1000, memory_max_per_store=3, **FAST)
    gateway = await start_gateway(upstream, state=state)  # its key: store S001
    assert (await _json(await gateway.get("/readyz")))["status"] == "ready"
    refusals = [await gateway.post(REDEEM, json=_body("ABS-ALICE-USED", txn=f"T-Q{n}")) for n in range(3)]
    assert [r.status for r in refusals] == [409, 409, 409]  # each a record

    refused = await gateway.post(REDEEM, json=_body("ABS-ALICE-1", txn="T-Q3"))
    payload = await _json(refused)
    assert (refused.status, payload["error"]["code"]) == (503, "STATE_STORE_UNAVAILABLE")
    assert upstream.sandbox.call_count("redeem") == 0
    ready = await _json(await gateway.get("/readyz"))
    assert (ready["status"], ready["checks"]["ledger"]) == ("degraded", "refusing")
    assert any("S001" in reason for reason in ready["reasons"])

    replay = await gateway.post(REDEEM, json=_body("ABS-ALICE-USED", txn="T-Q0"))  # its records still answer
    assert (replay.status, replay.headers["Idempotent-Replayed"]) == (409, "true")
    other_store = await gateway.post(REDEEM, json=_body("ABS-ALICE-2", txn="T-Q9"), headers=bearer(OTHER_STORE_KEY))
    assert (await _json(other_store))["status"] == "redeemed"
    metrics = await (await gateway.get("/metrics")).text()
    assert 'pos_coupon_ledger_refusals_total{reason="store_quota"} 1.0' in metrics


async def _expires_in(gateway: GatewayClient, backend: str | None, ref: str) -> float:
    store = gateway.app[LEDGER_STORE]
    if isinstance(store, MemoryStore):
        left = store.expires_in(ref)
        assert left is not None
        return left
    assert backend is not None
    client = redis.Redis.from_url(backend)
    try:
        return float(await client.pttl(f"pos_coupon:rdm:{ref}")) / 1000
    finally:
        await client.aclose()


async def test_what_redeemed_nothing_is_kept_minutes_and_a_redemption_days(
    make_gateway: Gateway, backend: str | None
) -> None:
    """A refusal applied nothing upstream: once its short record expires, a replay simply runs again (and is
    refused again, or succeeds legitimately). A redemption is kept the full IDEMPOTENCY_TTL_SECONDS."""
    gateway = await make_gateway(refused_ttl=600)
    refused = await _json(await gateway.post(REDEEM, json=_body("ABS-ALICE-USED", txn="T-R1")))
    redeemed = await _json(await gateway.post(REDEEM, json=_body("ABS-ALICE-1", txn="T-R2")))
    assert 500 < await _expires_in(gateway, backend, refused["ref"]) <= 600
    assert await _expires_in(gateway, backend, redeemed["ref"]) > 71 * 3600


# ---------------------------------------------------------------------------------- 5. the till's natural key

TILL_1, TILL_2 = "test-till-1-S001", "test-till-2-S001"
TILLS = KeyRing.of(
    ApiKey("admin-s001", "S001", None, frozenset({"redeem", "admin"}), digest_of(ADMIN_KEY)),
    ApiKey("till-1", "S001", "T1", frozenset({"redeem"}), digest_of(TILL_1)),
    ApiKey("till-2", "S001", "T2", frozenset({"redeem"}), digest_of(TILL_2)),
)


async def test_two_tills_of_one_store_may_use_the_same_transaction_number(
    make_gateway: Gateway, upstream: Upstream
) -> None:
    gateway = await make_gateway(keys=TILLS)
    one = await gateway.post(REDEEM, json=_body(MULTI, txn="T-1"), headers=bearer(TILL_1))
    two = await gateway.post(REDEEM, json=_body(MULTI, txn="T-1"), headers=bearer(TILL_2))
    first, second = await _json(one), await _json(two)
    assert (one.status, two.status) == (200, 200)
    assert "Idempotent-Replayed" not in two.headers
    assert first["ref"] != second["ref"]
    assert len(_active(upstream, MULTI)) == 2
    again = await gateway.post(REDEEM, json=_body(MULTI, txn="T-1"), headers=bearer(TILL_2))  # its own replay
    assert (again.headers["Idempotent-Replayed"], (await _json(again))["ref"]) == ("true", second["ref"])


async def test_the_natural_key_422_speaks_of_the_transaction(make_gateway: Gateway) -> None:
    gateway = await make_gateway(keys=TILLS)
    await gateway.post(REDEEM, json=_body("ABS-ALICE-1", txn="T-1"), headers=bearer(TILL_1))
    other_bill = await gateway.post(
        REDEEM, json=_body("ABS-ALICE-1", txn="T-1", billAmount="500.00"), headers=bearer(TILL_1)
    )
    payload = await _json(other_bill)
    assert other_bill.status == 422
    assert_matches(REDEEM, "post", 422, payload)
    assert payload["error"]["code"] == "TRANSACTION_REUSED"
    assert "Transaction T-1 was already sent" in payload["error"]["message"]
    assert "Idempotency-Key" not in payload["error"]["message"]
    keyed = {"Idempotency-Key": "k-422"}
    await gateway.post(REDEEM, json=_body("ABS-ALICE-2", txn="T-2"), headers={**keyed, **bearer(TILL_1)})
    reused = await gateway.post(REDEEM, json=_body("ABS-ALICE-2", txn="T-3"), headers={**keyed, **bearer(TILL_1)})
    assert (await _json(reused))["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"  # a key the till did send


async def test_a_record_made_under_the_store_wide_natural_key_is_still_replayed(
    make_gateway: Gateway, upstream: Upstream
) -> None:
    """Records made before the till was part of the natural key (the store-wide key, still used by keys naming
    no till) are replayed to a till of that store for their lifetime: no second redemption at an upgrade."""
    gateway = await make_gateway(keys=TILLS)
    before = await gateway.post(REDEEM, json=_body(MULTI, txn="T-UP"))  # the admin key names no till
    after = await gateway.post(REDEEM, json=_body(MULTI, txn="T-UP"), headers=bearer(TILL_1))
    assert (after.headers["Idempotent-Replayed"], await after.read()) == ("true", await before.read())
    assert len(_active(upstream, MULTI)) == 1
