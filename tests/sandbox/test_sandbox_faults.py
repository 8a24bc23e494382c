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
    assert (body["redemption"][0]["id"], body["redemption"][0]["warnings"]) == (-1, [])
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


# ---- warnings on a success -------------------------------------------------------------------------------------

WARNING_704 = {"status": False, "code": 704, "message": "Error sending coupon"}
WARNING_724 = {"status": False, "code": 724, "message": "Unable to communicate to customer"}


@pytest.mark.parametrize("style", ["doc", "nested"])
async def test_warning_fault_consumes_the_coupon_and_answers_a_success_with_the_warning(make_kit, style):
    kit = await make_kit(response_style=style)
    kit.sandbox.faults.add(Fault(FaultKind.WARNING, operation="redeem"))
    status, body = await kit.redeem("ABS-ALICE-1")
    assert status == 200
    assert body["redemptionStatus"] == {"status": True, "code": 700, "message": "Coupon processing successful"}
    assert body["warnings"] == [WARNING_704]
    (item,) = body["redemption"]
    (redemption,) = kit.sandbox.redemptions_of("ABS-ALICE-1")
    assert (item["id"], item["warnings"], item["appendedErrorMessage"]) == (redemption.id, [WARNING_704], "")
    if style == "nested":
        nested = item["redemptionStatus"]
        assert (nested["success"], nested["code"], nested["statusCode"]["status"]) == (True, 700, True)
        assert nested["warnings"] == nested["warningsAsStatusCode"] == [WARNING_704]
    else:
        assert "redemptionStatus" not in item
    assert kit.sandbox.calls[-1].fault == "warning"
    assert redeem_status_code(await kit.redeem("ABS-ALICE-1", txn="again")) == 711  # it was consumed


def redeem_status_code(result):
    return result[1]["redemptionStatus"]["code"]


@pytest.mark.parametrize(("scope", "top", "items"), [("top", True, False), ("items", False, True)])
async def test_warning_fault_scope(kit, scope, top, items):
    kit.sandbox.faults.add(Fault(FaultKind.WARNING, operation="redeem", code=724, scope=scope))
    _, body = await kit.redeem("ABS-ALICE-1")
    assert body["warnings"] == ([WARNING_724] if top else [])
    assert body["redemption"][0]["warnings"] == ([WARNING_724] if items else [])
    assert body["redemptionStatus"]["status"] is True


@pytest.mark.parametrize("style", ["doc", "nested"])
async def test_warning_fault_on_bulk_redeem(make_kit, style):
    kit = await make_kit(response_style=style)
    kit.sandbox.faults.add(Fault(FaultKind.WARNING, operation="bulk_redeem", code=724))
    status, body = await kit.bulk_redeem("ABS-ALICE-1", "PERC-ALICE-1")
    assert (status, body["failureCount"]) == (200, 0)
    for entry in body["response"]:
        assert (entry["errors"], entry["warnings"], entry["result"]["warnings"]) == ([], [WARNING_724], [WARNING_724])
        assert entry["result"]["redemptionStatus"]["success"] is True
        assert entry["result"]["redemptionStatus"]["warningsAsStatusCode"] == [WARNING_724]
    assert kit.active_redemptions() == 3  # two new ones and the seeded one


async def test_warning_fault_leaves_a_refusal_unchanged(kit):
    kit.sandbox.faults.add(Fault(FaultKind.WARNING, operation="redeem"))
    status, body = await kit.redeem("ABS-ALICE-USED")
    assert (status, body["redemptionStatus"]["code"], body["warnings"]) == (400, 711, [])
    assert len(kit.sandbox.faults) == 0  # drawn all the same


async def test_warning_fault_from_json():
    fault = Fault.from_json({"kind": "warning", "operation": "bulk_redeem", "code": 724, "scope": "items"})
    assert (fault.kind, fault.warning_code, fault.warning_scope) == (FaultKind.WARNING, 724, "items")
    assert Fault.from_json(fault.to_json()) == fault
    default = Fault.from_json({"kind": "warning", "operation": "redeem"})
    assert (default.warning_code, default.warning_scope) == (704, "both")


# ---- 5xx answers that name per-code refusals -----------------------------------------------------------------


@pytest.mark.parametrize("style", ["doc", "nested"])
async def test_bulk_redeem_500_names_one_code_and_749_for_the_others(make_kit, style):
    kit = await make_kit(response_style=style)
    before = kit.active_redemptions()
    kit.sandbox.faults.add(Fault(FaultKind.CODE, operation="bulk_redeem", code=711, status=500, target="PERC-ALICE-1"))
    status, body = await kit.bulk_redeem("ABS-ALICE-1", "PERC-ALICE-1", "CAP-ALICE-1")
    assert status == 500
    assert [e["errors"] for e in body["response"]] == [
        [{"status": False, "code": 749, "message": MESSAGE_749}],
        [{"status": False, "code": 711, "message": "Coupon is already used"}],
        [{"status": False, "code": 749, "message": MESSAGE_749}],
    ]
    assert [e["result"]["redemptionStatus"]["code"] for e in body["response"]] == [749, 711, 749]
    assert (body["totalCount"], body["failureCount"]) == (3, 3)
    assert kit.active_redemptions() == before  # nothing applied


MESSAGE_749 = "Redeem/isRedeem failed because of failure on other coupons in the batch"


async def test_code_fault_target_absent_from_the_request_names_every_code(kit):
    kit.sandbox.faults.add(Fault(FaultKind.CODE, operation="bulk_redeem", code=748, status=503, target="OTHER"))
    status, body = await kit.bulk_redeem("ABS-ALICE-1", "PERC-ALICE-1")
    assert status == 503
    assert [e["errors"][0]["code"] for e in body["response"]] == [748, 748]


@pytest.mark.parametrize("style", ["doc", "nested"])
async def test_single_redeem_500_with_a_top_level_refusal(make_kit, style):
    kit = await make_kit(response_style=style)
    kit.sandbox.faults.add(Fault(FaultKind.CODE, operation="redeem", code=713, status=500))
    status, body = await kit.redeem("ABS-ALICE-1")
    assert status == 500
    assert body["redemptionStatus"] == {"status": False, "code": 713, "message": "Coupon has expired"}
    (item,) = body["redemption"]
    assert (item["id"], item["code"], "redemptionStatus" in item) == (-1, "ABS-ALICE-1", style == "nested")
    assert kit.sandbox.redemptions_of("ABS-ALICE-1") == []


async def test_is_redeemable_500_names_per_code_refusals(kit):
    kit.sandbox.faults.add(Fault(FaultKind.CODE, operation="is_redeemable", code=702, status=500, target="BAD-1"))
    status, body = await kit.is_redeemable("ABS-ALICE-1", "BAD-1")
    assert status == 500
    assert [(i["code"], i["isRedeemable"], i["warnings"][0]["code"]) for i in body["redemption"]] == [
        ("ABS-ALICE-1", False, 749),
        ("BAD-1", False, 702),
    ]
    assert body["redemptionStatus"] == {"status": False, "code": 702, "message": "Coupon code is invalid"}


# ---- 461 / 521: "try later" ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "message"),
    [(461, "Search engine busy, try later"), (521, "Multiple actions are running for the same customer, try later")],
)
async def test_try_later_statuses_answer_a_flat_body_and_apply_nothing(kit, status, message):
    kit.sandbox.faults.add(Fault(FaultKind.HTTP_ERROR, operation="redeem", status=status))
    response = await redeem_raw(kit)
    assert response.status == status
    assert await response.json() == {"status": False, "code": status, "message": message}
    assert kit.sandbox.redemptions_of("ABS-ALICE-1") == []
    assert (await redeem_raw(kit)).status == 200  # consumed: the retry goes through


async def test_try_later_status_with_an_empty_body(kit):
    kit.sandbox.add_fault(
        Fault.from_json({"kind": "http_error", "operation": "is_redeemable", "status": 521, "body": ""})
    )
    response = await kit.client.get(
        "/v2/coupon/is_redeemable", params={"mobile": "919900000001", "code": "ABS-ALICE-1"}, headers=kit.basic()
    )
    assert response.status == 521
    assert await response.read() == b""


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": FaultKind.WARNING}, "operation"),
        ({"kind": FaultKind.WARNING, "operation": "issue"}, "operation"),
        ({"kind": FaultKind.WARNING, "operation": "redeem", "scope": "everywhere"}, "scope"),
        ({"kind": FaultKind.CODE, "code": 711, "scope": "top"}, "scope"),
        ({"kind": FaultKind.HTTP_ERROR, "target": "X"}, "target"),
    ],
)
def test_invalid_new_faults_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Fault(**kwargs)
