"""Offline acceptance through the front door: the sandbox as Capillary, the journal in Redis or in the SQLite file.

validate online -> outage -> provisional -> nothing at the sandbox -> recovery -> settled once through the
redeemed-coupons upload, with the till's time and transaction number; conflicts, caps, locks, restarts, replicas
and reversal.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from service.sandbox import DEMO, Fault, FaultKind
from tests.api.spec import assert_matches
from tests.conftest import ADMIN_KEY, OTHER_STORE_KEY, GatewayClient, Upstream, bearer
from tests.offline.conftest import MakeGateway

ALICE = {"mobile": DEMO.customer("alice").mobile}
REDEEM = "/v1/redemptions"
ADMIN = bearer(ADMIN_KEY)


def body(*codes: str, txn: str = "T-OFF-1", bill: str = "1000.00", customer: dict[str, str] = ALICE) -> dict[str, Any]:
    return {"customer": customer, "codes": list(codes), "billAmount": bill, "transactionNumber": txn}


def outage(upstream: Upstream) -> None:
    """Capillary answers 503 to every check (nothing is sent to redeem)."""
    upstream.sandbox.add_fault(Fault(FaultKind.HTTP_ERROR, "is_redeemable", times=None))


def recover(upstream: Upstream) -> None:
    upstream.sandbox.faults.clear()


def redeemed(upstream: Upstream, code: str) -> list[Any]:
    return upstream.sandbox.redemptions_of(code, include_reversed=False)


async def validate(gateway: GatewayClient, *codes: str, customer: dict[str, str] = ALICE) -> None:
    response = await gateway.post(f"{REDEEM}/validate", json=body(*codes, customer=customer))
    assert response.status == 200, await response.text()


async def settle(gateway: GatewayClient) -> dict[str, int]:
    response = await gateway.post("/v1/offline/settle", headers=ADMIN)
    assert response.status == 200, await response.text()
    answer = await response.json()
    assert_matches("/v1/offline/settle", "post", 200, answer)
    result: dict[str, int] = answer["result"]
    return result


async def status_of(gateway: GatewayClient, ref: str) -> dict[str, Any]:
    response = await gateway.get(f"{REDEEM}/{ref}")
    assert response.status == 200
    payload: dict[str, Any] = await response.json()
    assert_matches(f"{REDEEM}/{{ref}}", "get", 200, payload)
    return payload


async def test_provisional_then_settled_once_with_the_tills_time_and_number(
    make_gateway: MakeGateway, offline_upstream: Upstream
) -> None:
    gateway = await make_gateway()
    await validate(gateway, "ABS-ALICE-1")
    outage(offline_upstream)
    before = datetime.now(UTC)
    response = await gateway.post(REDEEM, json=body("ABS-ALICE-1"))
    payload = await response.json()
    assert response.status == 200, payload
    assert_matches(REDEEM, "post", 200, payload)
    assert payload["status"] == "provisional"
    assert payload["ref"].startswith("rdm_")
    assert payload["totalDiscount"] == "100.00"
    [coupon] = payload["coupons"]
    assert coupon["redeemed"] is True
    assert coupon["provisional"] is True
    assert coupon["discount"]["amount"] == "100.00"
    assert redeemed(offline_upstream, "ABS-ALICE-1") == []
    assert (await status_of(gateway, payload["ref"]))["status"] == "provisional"

    # Still down: the settler does nothing.
    assert "redeemed" not in await settle(gateway)
    assert redeemed(offline_upstream, "ABS-ALICE-1") == []

    recover(offline_upstream)
    assert (await settle(gateway)).get("redeemed") == 1
    [redemption] = redeemed(offline_upstream, "ABS-ALICE-1")
    assert redemption.transaction_number == "T-OFF-1"
    assert redemption.store == "T1"  # the till
    assert abs((redemption.redeemed_on - before).total_seconds()) < 5  # the till's time, not the settling time
    settled = await status_of(gateway, payload["ref"])
    assert settled["status"] == "redeemed"
    assert settled["coupons"][0]["redemptionId"] == redemption.id

    # Settling again, and the till's replay: nothing more upstream.
    assert await settle(gateway) == {}
    replay = await gateway.post(REDEEM, json=body("ABS-ALICE-1"))
    assert replay.status == 200
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert len(redeemed(offline_upstream, "ABS-ALICE-1")) == 1


async def test_a_code_redeemed_elsewhere_during_the_outage_ends_as_a_conflict(
    make_gateway: MakeGateway, offline_upstream: Upstream
) -> None:
    gateway = await make_gateway()
    await validate(gateway, "ABS-ALICE-2")
    outage(offline_upstream)
    response = await gateway.post(REDEEM, json=body("ABS-ALICE-2", txn="T-OFF-2"))
    ref = (await response.json())["ref"]
    assert response.status == 200
    # Meanwhile the coupon is used at another channel, straight at Capillary.
    coupon = offline_upstream.sandbox.state.coupon_by_code("ABS-ALICE-2")
    assert coupon is not None
    offline_upstream.sandbox.state.record_redemption(
        coupon,
        customer_id=DEMO.customer("alice").id,
        now=datetime.now(UTC),
        store="WEB",
        transaction_number="WEB-1",
        bill_amount=Decimal(0),
        discount=Decimal(100),
        source="INSTORE",
    )
    recover(offline_upstream)
    assert (await settle(gateway)).get("conflict") == 1
    assert [r.transaction_number for r in redeemed(offline_upstream, "ABS-ALICE-2")] == ["WEB-1"]
    state = await status_of(gateway, ref)
    assert state["status"] == "conflict"
    assert state["conflict"]["reason"] == "COUPON_ALREADY_REDEEMED"
    listed = await gateway.get("/v1/offline/conflicts", headers=ADMIN)
    page = await listed.json()
    assert_matches("/v1/offline/conflicts", "get", 200, page)
    assert listed.status == 200
    [item] = page["items"]
    assert item["ref"] == ref
    assert item["reason"] == "COUPON_ALREADY_REDEEMED"
    assert item["store"] == "S001"
    assert item["till"] == "T1"
    assert item["codes"] == ["AB***"]
    assert "ABS-ALICE-2" not in await listed.text()


async def test_not_validated_online_is_refused_as_today_saying_why(
    make_gateway: MakeGateway, offline_upstream: Upstream
) -> None:
    gateway = await make_gateway()
    outage(offline_upstream)
    response = await gateway.post(REDEEM, json=body("ABS-ALICE-1"))
    payload = await response.json()
    assert response.status == 503
    assert payload["error"]["code"] == "UPSTREAM_UNAVAILABLE"
    assert payload["error"]["retryable"] is True
    assert "not validated online" in payload["error"]["message"]


async def test_caps_refuse_with_clear_messages(
    make_gateway: MakeGateway, offline_upstream: Upstream, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"maxPerTill": 1, "maxDiscountPerTransaction": "150.00"}))
    gateway = await make_gateway(policy_file=str(policy))
    await validate(gateway, "ABS-ALICE-1", "ABS-ALICE-2", "CAP-ALICE-1")
    outage(offline_upstream)
    two = await gateway.post(REDEEM, json=body("ABS-ALICE-1", "ABS-ALICE-2", txn="T-CAP-1"))
    assert two.status == 503
    assert "exceeds 150.00 per transaction" in (await two.json())["error"]["message"]
    one = await gateway.post(REDEEM, json=body("ABS-ALICE-1", txn="T-CAP-2"))
    assert one.status == 200
    another = await gateway.post(REDEEM, json=body("ABS-ALICE-2", txn="T-CAP-3"))
    message = (await another.json())["error"]["message"]
    assert another.status == 503
    assert "this till has 1 provisional redemptions outstanding (at most 1)" in message
    metrics = await (await gateway.get("/metrics")).text()
    assert 'pos_coupon_offline_cap_refusals_total{cap="till_count"} 1.0' in metrics
    assert 'pos_coupon_offline_cap_refusals_total{cap="transaction_discount"} 1.0' in metrics


async def test_a_provisional_code_is_not_accepted_twice_across_tills_and_replicas(
    make_gateway: MakeGateway, offline_upstream: Upstream
) -> None:
    first, second = await make_gateway(), await make_gateway(key=ADMIN_KEY)
    await validate(first, "ABS-ALICE-1")
    outage(offline_upstream)
    accepted = await first.post(REDEEM, json=body("ABS-ALICE-1", txn="T-TWO-1"))
    assert accepted.status == 200
    again = await second.post(REDEEM, json=body("ABS-ALICE-1", txn="T-TWO-2"))
    assert again.status in (409, 503)
    assert (await again.json())["error"]["code"] in ("COUPON_IN_USE", "UPSTREAM_UNAVAILABLE")
    recover(offline_upstream)
    # Back online, the code stays locked until it settles.
    online = await second.post(REDEEM, json=body("ABS-ALICE-1", txn="T-TWO-3"))
    assert online.status == 409
    assert (await online.json())["error"]["code"] == "COUPON_IN_USE"
    assert redeemed(offline_upstream, "ABS-ALICE-1") == []


async def test_two_replicas_never_settle_one_twice(make_gateway: MakeGateway, offline_upstream: Upstream) -> None:
    import asyncio

    first, second = await make_gateway(), await make_gateway()
    await validate(first, "ABS-ALICE-1")
    await validate(first, "PERC-ALICE-1")
    outage(offline_upstream)
    for code, txn in (("ABS-ALICE-1", "T-R-1"), ("PERC-ALICE-1", "T-R-2")):
        response = await first.post(REDEEM, json=body(code, txn=txn))
        assert response.status == 200
    recover(offline_upstream)
    results = await asyncio.gather(settle(first), settle(second), settle(first), settle(second))
    await settle(second)  # whatever a busy round left
    assert sum(r.get("redeemed", 0) for r in results) <= 2
    assert len(redeemed(offline_upstream, "ABS-ALICE-1")) == 1
    assert len(redeemed(offline_upstream, "PERC-ALICE-1")) == 1
    uploads = [j for j in offline_upstream.sandbox.state.upload_jobs.values() if j.kind == "redeemed"]
    assert sum(j.total_uploaded_count for j in uploads) == 2


async def test_a_restart_loses_no_provisional_redemption(
    make_gateway: MakeGateway, offline_upstream: Upstream, aiohttp_client: Any
) -> None:
    gateway = await make_gateway()
    await validate(gateway, "ABS-ALICE-1")
    outage(offline_upstream)
    response = await gateway.post(REDEEM, json=body("ABS-ALICE-1", txn="T-RS-1"))
    assert response.status == 200
    ref = (await response.json())["ref"]
    await gateway.close()  # the process ends
    recover(offline_upstream)
    restarted = await make_gateway()
    overview = await (await restarted.get("/v1/offline", headers=ADMIN)).json()
    assert_matches("/v1/offline", "get", 200, overview)
    assert overview["outstanding"] == 1
    assert (await status_of(restarted, ref))["status"] == "provisional"
    assert (await settle(restarted)).get("redeemed") == 1
    assert [r.transaction_number for r in redeemed(offline_upstream, "ABS-ALICE-1")] == ["T-RS-1"]
    # The ref's answer survives too (the in-memory ledger beside the file journal forgot it: the journal has it).
    settled = await status_of(restarted, ref)
    assert settled["status"] == "redeemed"


async def test_reversal_before_settling_makes_no_upstream_call(
    make_gateway: MakeGateway, offline_upstream: Upstream
) -> None:
    gateway = await make_gateway()
    await validate(gateway, "ABS-ALICE-1")
    outage(offline_upstream)
    response = await gateway.post(REDEEM, json=body("ABS-ALICE-1", txn="T-REV-1"))
    ref = (await response.json())["ref"]
    calls = len(offline_upstream.sandbox.calls)
    reversal = await gateway.post(f"{REDEEM}/{ref}/reversal")
    assert reversal.status == 200, await reversal.text()
    reversed_body = await reversal.json()
    assert_matches(f"{REDEEM}/{{ref}}/reversal", "post", 200, reversed_body)
    assert reversed_body["status"] == "reversed"
    assert len(offline_upstream.sandbox.calls) == calls  # no upstream call at all
    recover(offline_upstream)
    assert "redeemed" not in await settle(gateway)
    assert redeemed(offline_upstream, "ABS-ALICE-1") == []
    replay = await gateway.post(REDEEM, json=body("ABS-ALICE-1", txn="T-REV-1"))
    assert replay.status == 409
    assert (await replay.json())["error"]["code"] == "REDEMPTION_REVERSED"
    # The code is free again: online, it redeems.
    online = await gateway.post(REDEEM, json=body("ABS-ALICE-1", txn="T-REV-2"))
    assert online.status == 200
    assert (await online.json())["status"] == "redeemed"


async def test_other_store_cannot_see_the_offline_routes(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway(key=OTHER_STORE_KEY)
    assert (await gateway.get("/v1/offline")).status == 403


async def test_bad_paging_is_a_clear_400(make_gateway: MakeGateway) -> None:
    gateway = await make_gateway()
    response = await gateway.get("/v1/offline/conflicts?limit=x", headers=ADMIN)
    assert response.status == 400
    assert "limit" in (await response.json())["error"]["message"]


async def test_offline_routes_are_404_when_off(gateway: GatewayClient) -> None:
    response = await gateway.get("/v1/offline")
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "NOT_FOUND"


# ------------------------------------------------------------------------ what counts as "not reached"


async def test_a_check_timing_out_gives_provisional(make_gateway: MakeGateway, offline_upstream: Upstream) -> None:
    gateway = await make_gateway()
    await validate(gateway, "PERC-ALICE-1")
    offline_upstream.sandbox.add_fault(Fault(FaultKind.TIMEOUT, "is_redeemable", delay_seconds=3.0, times=None))
    response = await gateway.post(REDEEM, json=body("PERC-ALICE-1", txn="T-TO-1"))
    payload = await response.json()
    assert response.status == 200, payload
    assert_matches(REDEEM, "post", 200, payload)
    assert payload["status"] == "provisional"
    assert payload["coupons"][0]["discount"]["type"] == "PERC"
    assert payload["totalDiscount"] == "150.00"  # 15 % of 1000.00, from the cached series


async def test_an_open_breaker_gives_provisional(make_gateway: MakeGateway, offline_upstream: Upstream) -> None:
    gateway = await make_gateway(breaker_min_calls=1)
    await validate(gateway, "ABS-ALICE-1")
    outage(offline_upstream)
    first = await gateway.post(REDEEM, json=body("ABS-ALICE-2", txn="T-BR-0"))  # opens the breaker
    assert first.status == 503
    calls = len(offline_upstream.sandbox.calls)
    response = await gateway.post(REDEEM, json=body("ABS-ALICE-1", txn="T-BR-1"))
    assert response.status == 200
    assert (await response.json())["status"] == "provisional"
    assert len(offline_upstream.sandbox.calls) == calls  # refused by the breaker: nothing was sent


async def test_a_redeem_sent_without_answer_stays_pending_never_provisional(
    make_gateway: MakeGateway, offline_upstream: Upstream
) -> None:
    gateway = await make_gateway()
    await validate(gateway, "ABS-ALICE-1")
    offline_upstream.sandbox.add_fault(Fault(FaultKind.APPLY_THEN_RESET, "redeem"))
    response = await gateway.post(REDEEM, json=body("ABS-ALICE-1", txn="T-PEND-1"))
    payload = await response.json()
    assert response.status == 202, payload
    assert payload["status"] == "pending"
    overview = await (await gateway.get("/v1/offline", headers=ADMIN)).json()
    assert overview["outstanding"] == 0


async def test_a_refused_connection_gives_provisional(
    make_gateway: MakeGateway, offline_upstream: Upstream, journal: dict[str, Any], aiohttp_client: Any
) -> None:
    """A replica that cannot connect to Capillary at all (the port is closed), beside one that validated. It has
    no series cache of its own (none shared either): the discount comes with the validation's record."""
    import dataclasses

    from service.app import create_app
    from service.config import OfflineSettings, Settings, StateSettings
    from tests.conftest import TEST_ACCESS, TEST_KEYS, TILL_KEY, free_port

    if "redis_url" not in journal:
        pytest.skip("two replicas share the journal through Redis")
    online = await make_gateway()
    await validate(online, "ABS-ALICE-1")
    closed = f"http://127.0.0.1:{free_port()}"
    capillary = dataclasses.replace(offline_upstream.settings(timeout=1.0), api_url=closed, upload_url=closed)
    settings = Settings(
        capillary=capillary,
        state=StateSettings(redis_url=journal["redis_url"], redeem_deadline=2.0),
        access=TEST_ACCESS,
        offline=OfflineSettings(enabled=True, settle_interval=3600.0),
    )
    cut_off = await aiohttp_client(create_app(settings, keys=TEST_KEYS), headers=bearer(TILL_KEY))
    response = await cut_off.post(REDEEM, json=body("ABS-ALICE-1", txn="T-CONN-1"))
    payload = await response.json()
    assert response.status == 200, payload
    assert payload["status"] == "provisional"
    assert (await settle(online)).get("redeemed") == 1  # the replica that reaches Capillary settles it
    assert [r.transaction_number for r in redeemed(offline_upstream, "ABS-ALICE-1")] == ["T-CONN-1"]


# ----------------------------------------------------------------------------------- settling edge cases


async def test_an_upload_whose_answer_was_lost_is_found_in_the_job_list_not_sent_again(
    make_gateway: MakeGateway, offline_upstream: Upstream
) -> None:
    gateway = await make_gateway()
    await validate(gateway, "ABS-ALICE-1")
    outage(offline_upstream)
    assert (await gateway.post(REDEEM, json=body("ABS-ALICE-1", txn="T-LOST-1"))).status == 200
    recover(offline_upstream)
    offline_upstream.sandbox.add_fault(Fault(FaultKind.APPLY_THEN_RESET, "upload_redeemed"))
    await settle(gateway)
    assert (await settle(gateway)).get("redeemed") == 1
    uploads = [j for j in offline_upstream.sandbox.state.upload_jobs.values() if j.kind == "redeemed"]
    assert len(uploads) == 1  # one upload, never resent
    assert [r.transaction_number for r in redeemed(offline_upstream, "ABS-ALICE-1")] == ["T-LOST-1"]


async def test_an_upload_that_never_arrived_is_sent_in_a_later_batch(
    make_gateway: MakeGateway, offline_upstream: Upstream
) -> None:
    gateway = await make_gateway()
    await validate(gateway, "ABS-ALICE-1")
    outage(offline_upstream)
    assert (await gateway.post(REDEEM, json=body("ABS-ALICE-1", txn="T-NEVER-1"))).status == 200
    recover(offline_upstream)
    offline_upstream.sandbox.add_fault(Fault(FaultKind.RESET, "upload_redeemed"))  # refused before applying
    first = await settle(gateway)
    assert "redeemed" not in first
    assert (await settle(gateway)).get("redeemed") == 1
    uploads = [j for j in offline_upstream.sandbox.state.upload_jobs.values() if j.kind == "redeemed"]
    assert len(uploads) == 1
    assert len(redeemed(offline_upstream, "ABS-ALICE-1")) == 1


async def test_past_the_policy_expiry_it_is_a_conflict_not_settled(
    make_gateway: MakeGateway, offline_upstream: Upstream, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"expireAfterSeconds": 0}))
    gateway = await make_gateway(policy_file=str(policy))
    await validate(gateway, "ABS-ALICE-1")
    outage(offline_upstream)
    ref = (await (await gateway.post(REDEEM, json=body("ABS-ALICE-1", txn="T-EXP-1"))).json())["ref"]
    recover(offline_upstream)
    assert (await settle(gateway)).get("expired") == 1
    assert redeemed(offline_upstream, "ABS-ALICE-1") == []
    state = await status_of(gateway, ref)
    assert state["status"] == "conflict"
    assert state["conflict"]["reason"] == "EXPIRED_OFFLINE"


async def test_an_excluded_series_is_never_provisional(
    make_gateway: MakeGateway, offline_upstream: Upstream, tmp_path: Path
) -> None:
    series_id = offline_upstream.sandbox.state.coupon_by_code("ABS-ALICE-1").series_id  # type: ignore[union-attr]
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"series": {str(series_id): {"excluded": True}}}))
    gateway = await make_gateway(policy_file=str(policy))
    await validate(gateway, "ABS-ALICE-1")
    outage(offline_upstream)
    response = await gateway.post(REDEEM, json=body("ABS-ALICE-1", txn="T-EXCL-1"))
    assert response.status == 503
    assert f"series {series_id} is excluded" in (await response.json())["error"]["message"]


async def test_once_settled_a_reversal_reactivates_upstream(
    make_gateway: MakeGateway, offline_upstream: Upstream
) -> None:
    gateway = await make_gateway()
    await validate(gateway, "ABS-ALICE-1")
    outage(offline_upstream)
    ref = (await (await gateway.post(REDEEM, json=body("ABS-ALICE-1", txn="T-SREV-1"))).json())["ref"]
    recover(offline_upstream)
    assert (await settle(gateway)).get("redeemed") == 1
    reversal = await gateway.post(f"{REDEEM}/{ref}/reversal")
    assert reversal.status == 200, await reversal.text()
    assert redeemed(offline_upstream, "ABS-ALICE-1") == []  # reactivated in Capillary


async def test_a_transaction_partly_recorded_is_a_conflict_naming_what_was_recorded(
    make_gateway: MakeGateway, offline_upstream: Upstream
) -> None:
    gateway = await make_gateway()
    await validate(gateway, "ABS-ALICE-1", "ABS-ALICE-2")
    outage(offline_upstream)
    response = await gateway.post(REDEEM, json=body("ABS-ALICE-1", "ABS-ALICE-2", txn="T-PART-1"))
    payload = await response.json()
    assert response.status == 200, payload
    assert payload["totalDiscount"] == "200.00"
    used = offline_upstream.sandbox.state.coupon_by_code("ABS-ALICE-2")
    assert used is not None
    offline_upstream.sandbox.state.record_redemption(
        used,
        customer_id=DEMO.customer("alice").id,
        now=datetime.now(UTC),
        store="WEB",
        transaction_number="WEB-2",
        bill_amount=Decimal(0),
        discount=Decimal(100),
        source="INSTORE",
    )
    recover(offline_upstream)
    assert (await settle(gateway)).get("conflict") == 1
    assert [r.transaction_number for r in redeemed(offline_upstream, "ABS-ALICE-1")] == ["T-PART-1"]
    state = await status_of(gateway, payload["ref"])
    assert state["status"] == "conflict"
    assert [c["redeemed"] for c in state["coupons"]] == [True, False]
    page = await (await gateway.get("/v1/offline/conflicts", headers=ADMIN)).json()
    assert page["items"][0]["recorded"] == ["AB***"]


async def test_two_tills_racing_for_the_last_slot_get_one_provisional(
    make_gateway: MakeGateway, offline_upstream: Upstream, tmp_path: Path
) -> None:
    import asyncio

    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"maxPerStore": 1}))
    first, second = await make_gateway(policy_file=str(policy)), await make_gateway(policy_file=str(policy))
    await validate(first, "ABS-ALICE-1", "ABS-ALICE-2")
    outage(offline_upstream)
    answers = await asyncio.gather(
        first.post(REDEEM, json=body("ABS-ALICE-1", txn="T-RACE-1")),
        second.post(REDEEM, json=body("ABS-ALICE-2", txn="T-RACE-2")),
    )
    assert sorted(a.status for a in answers) == [200, 503]
    overview = await (await first.get("/v1/offline", headers=ADMIN)).json()
    assert overview["outstanding"] == 1
    assert overview["byStore"] == {"S001": {"outstanding": 1, "discount": "100.00"}}
