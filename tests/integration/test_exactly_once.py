"""Exactly once from the till's point of view, over real HTTP, against the sandbox, on both ledger backends.

The simulated till retries until it gets a definitive answer. For every fault, the sandbox must show each coupon
redeemed at most once, and the till's final answer must match the sandbox's state.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from service.config import StateSettings
from service.sandbox import DEMO, Fault, FaultKind
from tests.api.spec import assert_matches
from tests.conftest import RESPONSE_STYLES, GatewayClient, StartGateway, Upstream
from tests.integration.conftest import FAST, Gateway


@pytest.fixture(params=RESPONSE_STYLES)
def response_style(request: pytest.FixtureRequest) -> str:
    """Every test here runs against each shape of Capillary's redeem answers."""
    style: str = request.param
    return style


ALICE = {"mobile": DEMO.customer("alice").mobile}
REDEEM = "/v1/redemptions"
RETRYABLE = {409, 503, 504}


def _body(*codes: str, txn: str = "T-EO-1", **extra: Any) -> dict[str, Any]:
    return {"customer": ALICE, "codes": list(codes), "billAmount": "1000.00", "transactionNumber": txn, **extra}


async def till(
    gateways: list[GatewayClient], body: dict[str, Any], key: str | None = None, *, budget: float = 15.0
) -> tuple[int, dict[str, Any], list[int]]:
    """Send until the answer is definitive: retry on 409/503/504, poll a 202's ref. Alternates gateways."""
    headers = {"Idempotency-Key": key} if key else {}
    seen: list[int] = []
    deadline = time.monotonic() + budget
    attempt = 0
    while time.monotonic() < deadline:
        gateway = gateways[attempt % len(gateways)]
        attempt += 1
        response = await gateway.post(REDEEM, json=body, headers=headers)
        payload = await response.json()
        seen.append(response.status)
        assert_matches(REDEEM, "post", response.status, payload)
        if response.status == 202:
            assert payload["status"] == "pending"
            while time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                polled = await gateways[attempt % len(gateways)].get(f"{REDEEM}/{payload['ref']}")
                state = await polled.json()
                seen.append(polled.status)
                if state.get("status") != "pending":
                    break
            continue  # replay the request: it returns the resolved answer, or runs again if not applied
        if response.status in RETRYABLE and payload.get("error", {}).get("retryable"):
            await asyncio.sleep(0.1)
            continue
        return response.status, payload, seen
    pytest.fail(f"no definitive answer in {budget}s: {seen[:5]}..{seen[-5:]} ({len(seen)} answers)")


async def _until(reached: Callable[[], bool], budget: float = 5.0) -> None:
    """Wait until ``reached`` holds (a guard against a hang, not a measure)."""
    deadline = time.monotonic() + budget
    while not reached():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.01)


async def _settled(gateway: GatewayClient, ref: str, budget: float = 5.0) -> dict[str, Any]:
    """The record of ``ref`` once it is no longer pending."""
    deadline = time.monotonic() + budget
    while True:
        record: dict[str, Any] = await (await gateway.get(f"{REDEEM}/{ref}")).json()
        if record["status"] != "pending" or time.monotonic() >= deadline:
            return record
        await asyncio.sleep(0.05)


def _redeemed(upstream: Upstream, code: str) -> int:
    return len(upstream.sandbox.redemptions_of(code, include_reversed=False))


# --------------------------------------------------------------------------------------------- fault matrix

FAULTS = {
    "timeout before send": Fault(FaultKind.TIMEOUT, "is_redeemable", delay_seconds=1.0),
    "timeout after apply": Fault(FaultKind.APPLY_THEN_TIMEOUT, "redeem", delay_seconds=1.0),
    "reset after apply": Fault(FaultKind.APPLY_THEN_RESET, "redeem"),
    "5xx after apply": Fault(FaultKind.APPLY_THEN_ERROR, "redeem", status=502),
    "5xx before apply": Fault(FaultKind.HTTP_ERROR, "redeem", status=503),
    "748 not applied": Fault(FaultKind.CODE, "redeem", code=748),
    "748 applied": Fault(FaultKind.CODE, "redeem", code=748, apply=True),
    "reset after apply, bulk": Fault(FaultKind.APPLY_THEN_RESET, "bulk_redeem"),
    "5xx before apply, bulk": Fault(FaultKind.HTTP_ERROR, "bulk_redeem", status=500),
}


@pytest.mark.parametrize("case", list(FAULTS))
async def test_fault_matrix(case: str, make_gateway: Gateway, upstream: Upstream) -> None:
    gateway = await make_gateway()
    codes = ("ABS-ALICE-1", "PERC-ALICE-1") if "bulk" in case else ("ABS-ALICE-1",)
    upstream.sandbox.add_fault(FAULTS[case])
    status, payload, seen = await till([gateway], _body(*codes), key=f"till-{uuid.uuid4()}")
    assert status == 200, (seen, payload)
    assert payload["status"] == "redeemed"
    for coupon in payload["coupons"]:
        [redemption] = upstream.sandbox.redemptions_of(coupon["code"])  # at most once: exactly once here
        assert coupon["redemptionId"] == redemption.id
        assert redemption.transaction_number == "T-EO-1"
    assert payload["totalDiscount"] == ("250.00" if "bulk" in case else "100.00")


async def test_slow_upstream_past_the_deadline(make_gateway: Gateway, upstream: Upstream) -> None:
    # Capillary answers 2.5 s after the redeem deadline: the 202 comes at the deadline, before the redeem is applied
    # (and a machine busy enough to stall this process for a second still sees it well before).
    gateway = await make_gateway(timeout=5.0, redeem_deadline=0.5)
    upstream.sandbox.add_fault(Fault(FaultKind.LATENCY, "redeem", delay_seconds=3.0))
    started = time.monotonic()
    response = await gateway.post(REDEEM, json=_body("ABS-ALICE-1"))
    assert response.status == 202  # within the till's deadline
    assert _redeemed(upstream, "ABS-ALICE-1") == 0  # answered before Capillary did
    assert time.monotonic() - started < 2.0
    pending = await response.json()
    status, payload, _ = await till([gateway], _body("ABS-ALICE-1"))  # the natural key: the same request
    assert (status, payload["ref"]) == (200, pending["ref"])
    assert _redeemed(upstream, "ABS-ALICE-1") == 1


async def test_a_check_failing_after_the_deadline_frees_the_request(make_gateway: Gateway, upstream: Upstream) -> None:
    """Answered 202 at the deadline, then the check failed before any redeem was sent: the record says
    ``failed`` (not applied) and the till's next try redeems normally."""
    gateway = await make_gateway(timeout=3.0, redeem_deadline=0.5)
    upstream.sandbox.add_fault(Fault(FaultKind.LATENCY, "is_redeemable", delay_seconds=0.8))
    # the check is a read: retried twice after its first attempt, so it fails three times
    upstream.sandbox.add_fault(Fault(FaultKind.HTTP_ERROR, "is_redeemable", status=503, times=3))
    first = await gateway.post(REDEEM, json=_body("ABS-ALICE-1"))
    assert first.status == 202
    ref = (await first.json())["ref"]
    record = await _settled(gateway, ref)  # the failed check, in the background, frees the request
    assert record["status"] == "failed"
    assert record["error"]["code"] == "REDEMPTION_NOT_APPLIED"
    assert upstream.sandbox.call_count("redeem") == 0
    status, payload, _ = await till([gateway], _body("ABS-ALICE-1"))
    assert (status, payload["status"]) == (200, "redeemed")
    assert _redeemed(upstream, "ABS-ALICE-1") == 1


async def test_pending_codes_stay_locked_until_resolved(make_gateway: Gateway, upstream: Upstream) -> None:
    gateway = await make_gateway()
    upstream.sandbox.add_fault(Fault(FaultKind.HTTP_ERROR, "redeem", status=503))
    first = await gateway.post(REDEEM, json=_body("ABS-ALICE-1", txn="T-A"))
    assert first.status == 202
    other = await gateway.post(REDEEM, json=_body("ABS-ALICE-1", txn="T-B"))
    assert other.status == 409
    assert (await other.json())["error"]["code"] == "COUPON_IN_USE"
    assert other.headers["Retry-After"]
    assert upstream.sandbox.call_count("redeem") == 1


# ------------------------------------------------------------------------------------------ idempotency


async def test_a_replay_is_byte_for_byte_the_same_without_an_upstream_call(
    make_gateway: Gateway, upstream: Upstream
) -> None:
    gateway = await make_gateway()
    first = await gateway.post(REDEEM, json=_body("CAP-ALICE-1"), headers={"Idempotency-Key": "k-1"})
    calls = upstream.sandbox.call_count()
    again = await gateway.post(REDEEM, json=_body("CAP-ALICE-1"), headers={"Idempotency-Key": "k-1"})
    assert (first.status, again.status) == (200, 200)
    assert await again.read() == await first.read()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert upstream.sandbox.call_count() == calls


async def test_without_a_key_the_natural_key_deduplicates(make_gateway: Gateway, upstream: Upstream) -> None:
    gateway = await make_gateway()
    first = await gateway.post(REDEEM, json=_body("ABS-ALICE-1", "PERC-ALICE-1"))
    again = await gateway.post(REDEEM, json=_body("PERC-ALICE-1", "ABS-ALICE-1"))  # same codes, other order
    assert await again.read() == await first.read()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert upstream.sandbox.call_count("bulk_redeem") == 1


async def test_a_refusal_is_replayed_too(make_gateway: Gateway, upstream: Upstream) -> None:
    gateway = await make_gateway()
    first = await gateway.post(REDEEM, json=_body("ABS-ALICE-USED"))
    again = await gateway.post(REDEEM, json=_body("ABS-ALICE-USED"))
    assert (first.status, again.status) == (409, 409)
    assert await again.read() == await first.read()
    assert upstream.sandbox.call_count("is_redeemable") == 1


async def test_the_same_key_with_another_body_is_422(make_gateway: Gateway) -> None:
    gateway = await make_gateway()
    await gateway.post(REDEEM, json=_body("ABS-ALICE-1"), headers={"Idempotency-Key": "k-2"})
    other = await gateway.post(REDEEM, json=_body("ABS-ALICE-2"), headers={"Idempotency-Key": "k-2"})
    assert other.status == 422
    assert (await other.json())["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"


async def test_bad_input_is_not_recorded(make_gateway: Gateway) -> None:
    gateway = await make_gateway()
    bad = await gateway.post(REDEEM, json=_body("ABS-ALICE-1", billAmount="-1"), headers={"Idempotency-Key": "k-3"})
    assert bad.status == 400
    good = await gateway.post(REDEEM, json=_body("ABS-ALICE-1"), headers={"Idempotency-Key": "k-3"})
    assert good.status == 200


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there", "ключ"])
async def test_a_bad_idempotency_key_is_400(make_gateway: Gateway, key: str) -> None:
    gateway = await make_gateway()
    response = await gateway.post(REDEEM, json=_body("ABS-ALICE-1"), headers={"Idempotency-Key": key})
    assert response.status == 400
    assert "Idempotency-Key" in (await response.json())["error"]["message"]


async def test_the_same_key_in_flight_is_409(make_gateway: Gateway, upstream: Upstream) -> None:
    gateway = await make_gateway(timeout=2.0)
    upstream.sandbox.add_fault(Fault(FaultKind.LATENCY, "redeem", delay_seconds=0.4))
    first = asyncio.create_task(gateway.post(REDEEM, json=_body("ABS-ALICE-1")))
    await _until(lambda: upstream.sandbox.call_count("redeem") == 1)  # the first is with Capillary now
    second = await gateway.post(REDEEM, json=_body("ABS-ALICE-1"))
    assert second.status == 409
    payload = await second.json()
    assert (payload["error"]["code"], payload["error"]["retryable"]) == ("REQUEST_IN_PROGRESS", True)
    assert second.headers["Retry-After"] == "1"
    assert (await first).status == 200


# ------------------------------------------------------------------------------------------ concurrency


async def test_fifty_identical_requests_make_one_redeem(make_gateway: Gateway, upstream: Upstream) -> None:
    # What is asserted is deduplication, not speed: the till waits long enough for fifty requests at once to be
    # answered on a busy machine (with the 1 s of the other tests, the first could rightly be 202 pending).
    gateway = await make_gateway(timeout=2.0, redeem_deadline=10.0)
    upstream.sandbox.add_fault(Fault(FaultKind.LATENCY, "redeem", delay_seconds=0.2))
    responses = await asyncio.gather(*(gateway.post(REDEEM, json=_body("ABS-ALICE-1")) for _ in range(50)))
    statuses = [r.status for r in responses]
    assert set(statuses) <= {200, 409}
    bodies = {await r.read() for r in responses if r.status == 200}
    assert len(bodies) == 1  # the original and every replay say the same
    codes = {(await r.json())["error"]["code"] for r in responses if r.status == 409}
    assert codes <= {"REQUEST_IN_PROGRESS"}
    assert upstream.sandbox.call_count("redeem") == 1
    assert _redeemed(upstream, "ABS-ALICE-1") == 1


async def test_twenty_transactions_racing_for_one_code(make_gateway: Gateway, upstream: Upstream) -> None:
    gateway = await make_gateway(timeout=2.0)
    upstream.sandbox.add_fault(Fault(FaultKind.LATENCY, "redeem", delay_seconds=0.1))
    responses = await asyncio.gather(
        *(gateway.post(REDEEM, json=_body("ABS-ALICE-2", txn=f"T-{i}")) for i in range(20))
    )
    statuses = sorted(r.status for r in responses)
    assert statuses == [200] + [409] * 19
    codes = {(await r.json())["error"]["code"] for r in responses if r.status == 409}
    assert codes <= {"COUPON_IN_USE", "COUPON_ALREADY_REDEEMED"}
    assert _redeemed(upstream, "ABS-ALICE-2") == 1


# ----------------------------------------------------------------------------------- status and reversal


async def test_status_of_a_redemption(make_gateway: Gateway) -> None:
    gateway = await make_gateway()
    redeemed = await (await gateway.post(REDEEM, json=_body("ABS-ALICE-1"))).json()
    response = await gateway.get(f"{REDEEM}/{redeemed['ref']}")
    assert response.status == 200
    payload = await response.json()
    assert_matches("/v1/redemptions/{ref}", "get", 200, payload)
    assert payload == redeemed
    missing = await gateway.get(f"{REDEEM}/rdm_{'0' * 32}")
    assert missing.status == 404
    assert (await missing.json())["error"]["code"] == "REDEMPTION_NOT_FOUND"


async def test_reversal(make_gateway: Gateway, upstream: Upstream) -> None:
    gateway = await make_gateway()
    redeemed = await (await gateway.post(REDEEM, json=_body("ABS-ALICE-1", "PERC-ALICE-1"))).json()
    ref = redeemed["ref"]
    response = await gateway.post(f"{REDEEM}/{ref}/reversal", headers={"Idempotency-Key": "rev-1"})
    payload = await response.json()
    assert response.status == 200, payload
    assert_matches("/v1/redemptions/{ref}/reversal", "post", 200, payload)
    assert payload["status"] == "reversed"
    assert {c["code"] for c in payload["coupons"] if c["reversed"]} == {"ABS-ALICE-1", "PERC-ALICE-1"}
    assert _redeemed(upstream, "ABS-ALICE-1") == 0
    assert upstream.sandbox.call_count("reactivate") == 1

    again = await gateway.post(f"{REDEEM}/{ref}/reversal", headers={"Idempotency-Key": "rev-1"})
    assert again.status == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await again.read() == await response.read()
    other = await gateway.post(f"{REDEEM}/{ref}/reversal", headers={"Idempotency-Key": "rev-2"})
    assert other.status == 409
    assert (await other.json())["error"]["code"] == "ALREADY_REVERSED"
    assert upstream.sandbox.call_count("reactivate") == 1
    assert (await (await gateway.get(f"{REDEEM}/{ref}")).json())["status"] == "reversed"


async def test_reversal_refusals(make_gateway: Gateway, upstream: Upstream) -> None:
    gateway = await make_gateway()
    unknown = await gateway.post(f"{REDEEM}/rdm_{'0' * 32}/reversal")
    assert unknown.status == 404
    refused = await (await gateway.post(REDEEM, json=_body("ABS-ALICE-USED"))).json()
    nothing = await gateway.post(f"{REDEEM}/{refused['ref']}/reversal", json={})
    assert nothing.status == 409
    assert (await nothing.json())["error"]["code"] == "NOTHING_TO_REVERSE"

    upstream.sandbox.add_fault(Fault(FaultKind.HTTP_ERROR, "redeem", status=503))
    pending = await (await gateway.post(REDEEM, json=_body("ABS-ALICE-1", txn="T-P"))).json()
    assert pending["status"] == "pending"
    waiting = await gateway.post(f"{REDEEM}/{pending['ref']}/reversal")
    assert waiting.status == 409
    assert (await waiting.json())["error"]["code"] == "REDEMPTION_PENDING"

    bad_body = await gateway.post(f"{REDEEM}/{pending['ref']}/reversal", json={"why": "x"})
    assert bad_body.status == 400


# ------------------------------------------------------------------------------------------------ Redis


async def test_redis_down_redeem_fails_fast_and_validate_works(start_gateway: StartGateway, upstream: Upstream) -> None:
    gateway = await start_gateway(upstream, state=StateSettings(redis_url="redis://127.0.0.1:1/0", timeout=0.2))
    response = await gateway.post(REDEEM, json=_body("ABS-ALICE-1"))
    payload = await response.json()
    assert response.status == 503
    assert (payload["error"]["code"], payload["error"]["retryable"]) == ("STATE_STORE_UNAVAILABLE", True)
    assert response.headers["Retry-After"]
    assert upstream.sandbox.call_count() == 0  # never redeem without the ledger
    validate = await gateway.post(
        "/v1/redemptions/validate", json={"customer": ALICE, "codes": ["ABS-ALICE-1"], "billAmount": "10"}
    )
    assert validate.status == 200
    ready = await (await gateway.get("/readyz")).json()
    assert (ready["status"], ready["checks"]["ledger"]) == ("degraded", "down")


async def test_two_gateways_sharing_redis_behave_as_one(
    start_gateway: StartGateway, upstream: Upstream, redis_db: str
) -> None:
    state = StateSettings(redis_url=redis_db, **FAST)
    one, two = [await start_gateway(upstream, timeout=2.0, state=state) for _ in range(2)]
    upstream.sandbox.add_fault(Fault(FaultKind.LATENCY, "redeem", delay_seconds=0.2))
    responses = await asyncio.gather(
        *((one if i % 2 else two).post(REDEEM, json=_body("ABS-ALICE-1")) for i in range(20)),
        *((two if i % 2 else one).post(REDEEM, json=_body("ABS-ALICE-2", txn=f"T-{i}")) for i in range(10)),
    )
    assert upstream.sandbox.call_count("redeem") == 2
    assert (_redeemed(upstream, "ABS-ALICE-1"), _redeemed(upstream, "ABS-ALICE-2")) == (1, 1)
    assert sorted(r.status for r in responses[20:]) == [200] + [409] * 9
    status, payload, _ = await till([one, two], _body("ABS-ALICE-1"))
    assert status == 200
    replay = await (await two.get(f"{REDEEM}/{payload['ref']}")).json()
    assert replay == payload
