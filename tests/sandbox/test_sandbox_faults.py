"""Fault injection: every kind, over real HTTP, with its effect (or non-effect) on state."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from service.sandbox import Fault, FaultKind, FaultQueue

SHORT = 0.3  # seconds a sleeping fault waits
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=0.1)


async def redeem_raw(kit, code="ABS-ALICE-1", timeout=None):
    return await kit.client.post("/v2/coupon/redeem", json=kit.redeem_body(code), headers=kit.basic(), timeout=timeout)


async def test_latency_fault_delays_then_serves(kit):
    kit.sandbox.faults.add(Fault(FaultKind.LATENCY, operation="redeem", delay_seconds=SHORT))
    started = time.monotonic()
    response = await redeem_raw(kit)
    assert time.monotonic() - started >= SHORT
    assert response.status == 200
    assert len(kit.sandbox.redemptions_of("ABS-ALICE-1")) == 1
    assert kit.sandbox.calls[-1].fault == "latency"


async def test_global_latency_applies_to_every_operation(make_kit):
    kit = await make_kit(latency_ms=150)
    started = time.monotonic()
    await kit.token()
    await kit.is_redeemable("ABS-ALICE-1")
    assert time.monotonic() - started >= 0.3


@pytest.mark.parametrize(("status", "expected"), [(None, 503), (500, 500)])
async def test_http_error_fault_applies_nothing(kit, status, expected):
    kit.sandbox.faults.add(Fault(FaultKind.HTTP_ERROR, operation="redeem", status=status))
    response = await redeem_raw(kit)
    assert response.status == expected
    assert response.content_type == "text/html"
    assert response.headers["X-Cap-Requestid"]
    assert kit.sandbox.redemptions_of("ABS-ALICE-1") == []
    assert (await redeem_raw(kit)).status == 200  # consumed: times=1


async def test_rate_limit_fault_429(kit):
    kit.sandbox.faults.add(Fault(FaultKind.RATE_LIMIT, operation="redeem"))
    response = await redeem_raw(kit)
    assert response.status == 429
    assert (await response.json())["code"] == 429
    assert kit.sandbox.redemptions_of("ABS-ALICE-1") == []


async def test_reset_fault_drops_the_connection_and_applies_nothing(kit):
    kit.sandbox.faults.add(Fault(FaultKind.RESET, operation="redeem"))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await redeem_raw(kit)
    assert kit.sandbox.redemptions_of("ABS-ALICE-1") == []
    assert kit.sandbox.calls[-1].status is None
    assert (await redeem_raw(kit)).status == 200  # the server is fine afterwards


async def test_malformed_fault_200_with_html(kit):
    kit.sandbox.faults.add(Fault(FaultKind.MALFORMED, operation="redeem"))
    response = await redeem_raw(kit)
    assert response.status == 200
    assert response.content_type == "text/html"
    with pytest.raises(aiohttp.ContentTypeError):
        await response.json()
    assert kit.sandbox.redemptions_of("ABS-ALICE-1") == []


async def test_malformed_fault_with_custom_wrong_shape_json(kit):
    kit.sandbox.faults.add(Fault(FaultKind.MALFORMED, operation="redeem", body='{"unexpected": true}'))
    response = await redeem_raw(kit)
    assert response.status == 200
    assert await response.text() == '{"unexpected": true}'
    assert kit.sandbox.redemptions_of("ABS-ALICE-1") == []


async def test_timeout_fault_client_times_out_and_nothing_applied(kit):
    kit.sandbox.faults.add(Fault(FaultKind.TIMEOUT, operation="redeem", delay_seconds=SHORT))
    with pytest.raises(asyncio.TimeoutError):
        await redeem_raw(kit, timeout=CLIENT_TIMEOUT)
    await asyncio.sleep(SHORT + 0.1)
    assert kit.sandbox.redemptions_of("ABS-ALICE-1") == []


async def test_timeout_fault_answers_504_after_the_delay(kit):
    kit.sandbox.faults.add(Fault(FaultKind.TIMEOUT, operation="redeem", delay_seconds=0.05))
    response = await redeem_raw(kit)
    assert response.status == 504
    assert kit.sandbox.redemptions_of("ABS-ALICE-1") == []


async def test_apply_then_timeout_applies_before_sleeping(kit):
    kit.sandbox.faults.add(Fault(FaultKind.APPLY_THEN_TIMEOUT, operation="redeem", delay_seconds=SHORT))
    with pytest.raises(asyncio.TimeoutError):
        await redeem_raw(kit, timeout=CLIENT_TIMEOUT)
    assert len(kit.sandbox.redemptions_of("ABS-ALICE-1")) == 1  # applied although the client gave up
    retry = await redeem_raw(kit)
    assert (await retry.json())["redemptionStatus"]["code"] == 711


async def test_apply_then_timeout_with_patient_client_gets_the_real_answer(kit):
    kit.sandbox.faults.add(Fault(FaultKind.APPLY_THEN_TIMEOUT, operation="redeem", delay_seconds=0.05))
    response = await redeem_raw(kit)
    body = await response.json()
    assert response.status == 200
    assert body["redemption"][0]["id"] == kit.sandbox.redemptions_of("ABS-ALICE-1")[0].id


async def test_apply_then_reset_applies_and_drops(kit):
    kit.sandbox.faults.add(Fault(FaultKind.APPLY_THEN_RESET, operation="redeem"))
    with pytest.raises(aiohttp.ClientConnectionError):
        await redeem_raw(kit)
    assert len(kit.sandbox.redemptions_of("ABS-ALICE-1")) == 1


@pytest.mark.parametrize(("status", "expected"), [(None, 502), (500, 500)])
async def test_apply_then_error_applies_and_answers_error(kit, status, expected):
    kit.sandbox.faults.add(Fault(FaultKind.APPLY_THEN_ERROR, operation="redeem", status=status))
    response = await redeem_raw(kit)
    assert response.status == expected
    assert len(kit.sandbox.redemptions_of("ABS-ALICE-1")) == 1


async def test_code_fault_answers_the_envelope_without_applying(kit):
    kit.sandbox.faults.add(Fault(FaultKind.CODE, operation="redeem", code=748))
    response = await redeem_raw(kit)
    body = await response.json()
    assert response.status == 400
    assert body["redemptionStatus"] == {"status": False, "code": 748, "message": "Coupon service timed out"}
    assert body["redemption"][0]["warnings"][0]["code"] == 748
    assert kit.sandbox.redemptions_of("ABS-ALICE-1") == []


async def test_code_fault_with_apply_applies_then_answers_failure(kit):
    kit.sandbox.faults.add(Fault(FaultKind.CODE, operation="redeem", code=748, apply=True, status=500))
    response = await redeem_raw(kit)
    assert response.status == 500
    assert (await response.json())["redemptionStatus"]["code"] == 748
    assert len(kit.sandbox.redemptions_of("ABS-ALICE-1")) == 1


async def test_code_fault_on_bulk_redeem_and_is_redeemable_use_their_envelopes(kit):
    kit.sandbox.faults.add(Fault(FaultKind.CODE, operation="bulk_redeem", code=748))
    kit.sandbox.faults.add(Fault(FaultKind.CODE, operation="is_redeemable", code=730))
    status, bulk = await kit.bulk_redeem("ABS-ALICE-1", "PERC-ALICE-1")
    assert status == 400
    assert [e["errors"][0]["code"] for e in bulk["response"]] == [748, 748]
    status, check = await kit.is_redeemable("ABS-ALICE-1")
    assert status == 200
    assert check["redemption"][0]["isRedeemable"] is False
    assert check["redemptionStatus"]["code"] == 730
    assert kit.active_redemptions() == 1


async def test_code_fault_on_other_operations_is_flat(kit):
    kit.sandbox.faults.add(Fault(FaultKind.CODE, operation="issue", code=722))
    status, body = await kit.post("/v2/coupon/issue", {"seriesId": 10001, "customer": {"mobile": "919900000002"}})
    assert (status, body["code"]) == (400, 722)
    assert len(kit.sandbox.state.coupons) == 32  # nothing issued


async def test_times_counts_down_and_none_means_until_cleared(kit):
    kit.sandbox.faults.add(Fault(FaultKind.HTTP_ERROR, operation="series_get", times=2))
    statuses = [(await kit.client.get("/v2/coupon/series?ids=10001", headers=kit.basic())).status for _ in range(3)]
    assert statuses == [503, 503, 200]
    kit.sandbox.faults.add(Fault(FaultKind.RATE_LIMIT, operation="series_get", times=None))
    statuses = [(await kit.client.get("/v2/coupon/series?ids=10001", headers=kit.basic())).status for _ in range(3)]
    assert statuses == [429, 429, 429]
    assert kit.sandbox.faults.clear() == 1
    assert (await kit.client.get("/v2/coupon/series?ids=10001", headers=kit.basic())).status == 200


async def test_fault_without_operation_matches_everything_but_token(kit):
    kit.sandbox.faults.add(Fault(FaultKind.HTTP_ERROR, times=None))
    token = await kit.token()  # token is not affected
    status = (await kit.client.get("/v2/coupon/series?ids=10001", headers={"X-CAP-API-OAUTH-TOKEN": token})).status
    assert status == 503
    kit.sandbox.faults.clear()
    kit.sandbox.faults.add(Fault(FaultKind.HTTP_ERROR, operation="token"))
    response = await kit.client.post("/v3/oauth/token/generate", json={"key": "k", "secret": "s"})
    assert response.status == 503


async def test_faults_are_drawn_only_by_authenticated_calls(kit):
    kit.sandbox.faults.add(Fault(FaultKind.HTTP_ERROR, operation="redeem"))
    unauthenticated = await kit.client.post("/v2/coupon/redeem", json=kit.redeem_body("ABS-ALICE-1"))
    assert unauthenticated.status == 401
    assert (await redeem_raw(kit)).status == 503


async def test_faults_only_hit_their_operation(kit):
    kit.sandbox.faults.add(Fault(FaultKind.HTTP_ERROR, operation="redeem"))
    status, _ = await kit.is_redeemable("ABS-ALICE-1")
    assert status == 200
    assert (await redeem_raw(kit)).status == 503


async def test_fault_on_v1_upload_status(kit):
    kit.sandbox.faults.add(Fault(FaultKind.RATE_LIMIT, operation="upload_status"))
    response = await kit.client.get("/coupon/api/v1/upload/getUploadStatus/10001", headers=await kit.oauth())
    assert response.status == 429


def test_fault_queue_is_fifo_and_latency_stacks():
    queue = FaultQueue()
    queue.add(Fault(FaultKind.LATENCY, operation="redeem", delay_seconds=0.5))
    queue.add(Fault(FaultKind.HTTP_ERROR, operation="redeem"))
    queue.add(Fault(FaultKind.RESET))
    queue.add(Fault(FaultKind.LATENCY, delay_seconds=0.25, times=None))
    first = queue.take("redeem")
    assert (first.latency, first.fault.kind if first.fault else None) == (0.75, FaultKind.HTTP_ERROR)
    second = queue.take("redeem")
    assert (second.latency, second.fault.kind if second.fault else None) == (0.25, FaultKind.RESET)
    third = queue.take("redeem")
    assert (third.latency, third.fault) == (0.25, None)
    assert queue.take("token").latency == 0.0
    assert len(queue) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": FaultKind.CODE}, "code"),
        ({"kind": FaultKind.HTTP_ERROR, "operation": "nope"}, "operation"),
        ({"kind": FaultKind.HTTP_ERROR, "times": 0}, "times"),
        ({"kind": FaultKind.HTTP_ERROR, "status": 99}, "status"),
        ({"kind": FaultKind.TIMEOUT, "delay_seconds": -1}, "delaySeconds"),
    ],
)
def test_invalid_faults_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Fault(**kwargs)


def test_fault_json_round_trip_and_defaults():
    fault = Fault.from_json({"kind": "apply_then_timeout", "operation": "redeem", "delaySeconds": 1.5})
    assert fault == Fault(FaultKind.APPLY_THEN_TIMEOUT, operation="redeem", delay_seconds=1.5)
    assert Fault.from_json(fault.to_json()) == fault
    assert Fault.from_json({"kind": "TIMEOUT"}).delay == 30.0
    assert Fault.from_json({"kind": "http_error", "times": None}).times is None
    with pytest.raises(ValueError, match="unknown fault kind"):
        Fault.from_json({"kind": "explode"})
    with pytest.raises(ValueError, match="unknown fault field"):
        Fault.from_json({"kind": "reset", "delay_seconds": 1})
