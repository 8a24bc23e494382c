"""Admin endpoints (/__sandbox/...), SandboxConfig.from_env, and the seeded demo data vs DEMO."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import aiohttp
import pytest

from service.sandbox import DEMO, OPERATIONS, SANDBOX_KEY, Fault, FaultKind, SandboxConfig, create_sandbox_app

# ---- admin -----------------------------------------------------------------------------------------------------


async def test_admin_fault_endpoint_arms_a_fault_with_camel_case_keys(kit):
    response = await kit.client.post(
        "/__sandbox/faults",
        json={"kind": "apply_then_timeout", "operation": "redeem", "delaySeconds": 0.3, "times": 1},
    )
    assert response.status == 201
    assert kit.sandbox.faults.pending[0][0] == Fault(FaultKind.APPLY_THEN_TIMEOUT, "redeem", delay_seconds=0.3)
    with pytest.raises(TimeoutError):
        await kit.client.post(
            "/v2/coupon/redeem",
            json=kit.redeem_body("ABS-ALICE-1"),
            headers=kit.basic(),
            timeout=aiohttp.ClientTimeout(total=0.1),
        )
    assert len(kit.sandbox.redemptions_of("ABS-ALICE-1")) == 1


async def test_admin_fault_list_add_many_and_clear(kit):
    response = await kit.client.post(
        "/__sandbox/faults", json=[{"kind": "rate_limit", "times": None}, {"kind": "code", "code": 748}]
    )
    assert response.status == 201
    listing = await (await kit.client.get("/__sandbox/faults")).json()
    assert [(f["kind"], f["remaining"]) for f in listing["faults"]] == [("rate_limit", None), ("code", 1)]
    cleared = await (await kit.client.delete("/__sandbox/faults")).json()
    assert cleared == {"cleared": 2}
    assert len(kit.sandbox.faults) == 0


@pytest.mark.parametrize(
    "body",
    [{"kind": "explode"}, {"kind": "code"}, {"kind": "reset", "operation": "nope"}, {"operation": "redeem"}],
)
async def test_admin_rejects_bad_faults(kit, body):
    response = await kit.client.post("/__sandbox/faults", json=body)
    assert response.status == 400
    assert "error" in await response.json()
    assert len(kit.sandbox.faults) == 0


async def test_admin_state_summary(kit):
    await kit.redeem("ABS-ALICE-1", txn="POS-9")
    state = await (await kit.client.get("/__sandbox/state")).json()
    assert state["counts"]["customers"] == len(DEMO.customers)
    assert state["counts"]["coupons"] == len(DEMO.coupons)
    assert state["counts"]["redemptions"] == 2
    last = state["redemptions"][-1]
    assert (last["code"], last["transactionNumber"], last["billAmount"], last["reversed"]) == (
        "ABS-ALICE-1",
        "POS-9",
        "2000",
        False,
    )


async def test_admin_calls_record_operations(kit):
    await kit.token()
    await kit.is_redeemable("ABS-ALICE-1")
    await kit.redeem("ABS-BOB-1")
    body = await (await kit.client.get("/__sandbox/calls")).json()
    assert [c["operation"] for c in body["calls"]] == ["token", "is_redeemable", "redeem"]
    assert [c["status"] for c in body["calls"]] == [200, 200, 400]
    assert body["counts"] == {"token": 1, "is_redeemable": 1, "redeem": 1}
    assert kit.sandbox.call_count("redeem") == 1
    assert kit.sandbox.call_count("bulk_redeem") == 0
    assert kit.sandbox.call_count() == 3
    assert (await (await kit.client.delete("/__sandbox/calls")).json()) == {"cleared": 3}
    assert kit.sandbox.call_count() == 0


async def test_admin_call_record_fields_in_camel_case(kit):
    await kit.token()
    (call,) = (await (await kit.client.get("/__sandbox/calls")).json())["calls"]
    assert list(call) == [
        "seq", "operation", "method", "path", "requestId", "at", "auth", "store", "fault", "status", "style",
    ]  # fmt: skip
    assert (call["operation"], call["method"], call["status"], call["style"]) == ("token", "POST", 200, None)
    assert datetime.fromisoformat(call["at"]) == kit.sandbox.calls[0].at
    assert call["requestId"] == kit.sandbox.calls[0].request_id


async def test_admin_reset_reseeds(kit):
    kit.sandbox.faults.add(Fault(FaultKind.RESET, operation="series_get"))
    await kit.redeem("ABS-ALICE-1")
    kit.sandbox.add_customer(mobile="918888888888")
    kit.sandbox.advance(3600)
    token_headers = await kit.oauth()
    response = await kit.client.post("/__sandbox/reset")
    assert response.status == 200
    assert len(kit.sandbox.state.customers) == len(DEMO.customers)
    assert kit.sandbox.redemptions_of("ABS-ALICE-1") == []
    assert len(kit.sandbox.faults) == 0
    assert kit.sandbox.calls == []
    assert (await kit.is_redeemable("ABS-ALICE-1", headers=token_headers))[0] == 200  # tokens survive


async def test_admin_clock_moves_the_sandbox_clock(kit, now):
    body = await (await kit.client.post("/__sandbox/clock", json={"advanceSeconds": 90})).json()
    assert datetime.fromisoformat(body["now"]) == now + timedelta(seconds=90)
    target = datetime(2031, 2, 1, 22, 0, tzinfo=UTC)
    body = await (await kit.client.post("/__sandbox/clock", json={"now": target.isoformat()})).json()
    assert datetime.fromisoformat(body["now"]) == target
    assert kit.sandbox.now() == target
    assert (await kit.client.post("/__sandbox/clock", json={"now": "soon"})).status == 400
    assert (await kit.client.post("/__sandbox/clock", json={})).status == 400


async def test_admin_clock_expires_tokens_and_runs_jobs(kit):
    headers = await kit.oauth()
    await kit.client.post("/__sandbox/clock", json={"advanceSeconds": 301})
    assert (await kit.is_redeemable("ABS-ALICE-1", headers=headers))[0] == 401


async def test_admin_revoke_tokens_and_options(kit):
    headers = await kit.oauth()
    assert (await (await kit.client.post("/__sandbox/tokens/revoke")).json()) == {"revoked": 1}
    assert (await kit.is_redeemable("ABS-ALICE-1", headers=headers))[0] == 401
    response = await kit.client.post("/__sandbox/options", json={"failureHttpStatus": 200})
    assert (await response.json())["failureHttpStatus"] == 200
    assert (await kit.redeem("ABS-BOB-1"))[0] == 200
    assert (await kit.client.post("/__sandbox/options", json={"failureHttpStatus": 500})).status == 400


async def test_admin_demo_endpoint(kit):
    body = await (await kit.client.get("/__sandbox/demo")).json()
    assert body == DEMO.to_json()
    assert body["clientKey"] == "sandbox-client-key"
    assert body["tills"][0] == {"username": "till.s001", "password": "s001-secret", "store": "S001"}
    assert body["series"][0] == {
        "key": "abs",
        "id": 10001,
        "description": "Flat 100 off",
        "demonstrates": "ABS discount of 100; also 710/711/713/723 via its special codes",
    }
    untagged = DEMO.coupon("ABS-UNTAGGED-1")
    assert {"code": "ABS-UNTAGGED-1", "id": untagged.id, "seriesId": 10001, "customerId": None} == {
        k: v
        for k, v in next(c for c in body["coupons"] if c["code"] == "ABS-UNTAGGED-1").items()
        if k != "demonstrates"
    }
    assert list(body["redemptions"][0]) == ["id", "code", "customerId", "transactionNumber", "store"]


# ---- config ----------------------------------------------------------------------------------------------------


def test_from_env_defaults_and_values():
    assert SandboxConfig.from_env({}) == SandboxConfig()
    config = SandboxConfig.from_env(
        {
            "SANDBOX_LATENCY_MS": "25",
            "SANDBOX_TOKEN_TTL_SECONDS": "60",
            "SANDBOX_UPLOAD_JOB_SECONDS": "0.5",
            "SANDBOX_CLIENT_KEY": "k",
            "SANDBOX_CLIENT_SECRET": "s",
            "SANDBOX_FAULTS": '[{"kind": "rate_limit", "operation": "redeem", "times": 2}]',
            "SANDBOX_FAILURE_HTTP_STATUS": "200",
        }
    )
    assert (config.latency_ms, config.token_ttl_seconds, config.upload_job_seconds) == (25.0, 60, 0.5)
    assert (config.client_key, config.client_secret, config.failure_http_status) == ("k", "s", 200)
    assert config.faults == (Fault(FaultKind.RATE_LIMIT, operation="redeem", times=2),)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SANDBOX_LATENCY_MS", "slow"),
        ("SANDBOX_LATENCY_MS", "-1"),
        ("SANDBOX_LATENCY_MS", "nan"),
        ("SANDBOX_TOKEN_TTL_SECONDS", "0"),
        ("SANDBOX_TOKEN_TTL_SECONDS", "1.5"),
        ("SANDBOX_UPLOAD_JOB_SECONDS", "-2"),
        ("SANDBOX_CLIENT_KEY", " "),
        ("SANDBOX_CLIENT_SECRET", ""),
        ("SANDBOX_FAULTS", "not json"),
        ("SANDBOX_FAULTS", '[{"kind": "explode"}]'),
        ("SANDBOX_FAULTS", '"reset"'),
        ("SANDBOX_FAILURE_HTTP_STATUS", "500"),
    ],
)
def test_from_env_errors_name_the_variable(name, value):
    with pytest.raises(ValueError, match=name):
        SandboxConfig.from_env({name: value})


async def test_env_faults_are_armed_at_start(aiohttp_client):
    config = SandboxConfig.from_env({"SANDBOX_FAULTS": '{"kind": "http_error", "operation": "series_get"}'})
    client = await aiohttp_client(create_sandbox_app(config))
    till = DEMO.till("S001")
    auth = base64.b64encode(f"{till.username}:{hashlib.md5(till.password.encode()).hexdigest()}".encode())
    headers = {"Authorization": f"Basic {auth.decode()}"}
    assert (await client.get("/v2/coupon/series?ids=10001", headers=headers)).status == 503
    assert (await client.get("/v2/coupon/series?ids=10001", headers=headers)).status == 200


# ---- demo data -------------------------------------------------------------------------------------------------


def test_seeded_state_matches_demo(now):
    sandbox = create_sandbox_app(SandboxConfig(clock=lambda: now))[SANDBOX_KEY]
    state = sandbox.state
    assert {c.id: (c.mobile, c.email, c.external_id) for c in state.customers.values()} == {
        c.id: (c.mobile, c.email, c.external_id) for c in DEMO.customers
    }
    assert {s.id: s.description for s in state.series.values()} == {s.id: s.description for s in DEMO.series}
    assert {c.code: (c.id, c.series_id, c.customer_id) for c in state.coupons.values()} == {
        c.code: (c.id, c.series_id, c.customer_id) for c in DEMO.coupons
    }
    assert [(r.id, r.code, r.transaction_number, r.store) for r in state.redemptions.values()] == [
        (r.id, r.code, r.transaction_number, r.store) for r in DEMO.redemptions
    ]
    assert set(OPERATIONS) >= {"token", "redeem", "bulk_redeem", "upload_redeemed"}


def test_seed_is_deterministic_even_at_another_time(now):
    later = now + timedelta(days=100, hours=5)
    first = create_sandbox_app(SandboxConfig(clock=lambda: now))[SANDBOX_KEY].state
    second = create_sandbox_app(SandboxConfig(clock=lambda: later))[SANDBOX_KEY].state
    assert [(c.id, c.code) for c in first.coupons.values()] == [(c.id, c.code) for c in second.coupons.values()]
    assert [s.series_code for s in first.series.values()] == [s.series_code for s in second.series.values()]


def test_seed_can_be_disabled():
    sandbox = create_sandbox_app(SandboxConfig(seed=False))[SANDBOX_KEY]
    assert (sandbox.state.customers, sandbox.state.coupons) == ({}, {})


def test_demo_lookups_and_description():
    assert DEMO.customer("alice").mobile == "919900000001"
    assert DEMO.series_of("perc_capped").id == 10003
    assert DEMO.codes("multi_use", "bob") == ("MULTI-BOB-1",)
    assert DEMO.coupon("GIFT+2/X%").customer_id is None
    assert "ABS-ALICE-1" in DEMO.describe()
    with pytest.raises(KeyError):
        DEMO.customer("mallory")


# What each seeded coupon demonstrates, checked for alice at store S001 with a 2000 bill.
DEMONSTRATED = {
    "ABS-ALICE-1": 700,
    "ABS-BOB-1": 710,
    "ABS-ALICE-USED": 711,
    "ABS-ALICE-EXP": 713,
    "ABS-UNTAGGED-1": 703,
    "PERC-ALICE-1": 700,
    "CAP-ALICE-1": 700,
    "BILL-ALICE-1": 700,
    "EXP-ALICE-1": 712,
    "SOON-ALICE-1": 739,
    "MULTI-ALICE-1": 700,
    "S002-ALICE-1": 735,
    "RANGE-ALICE-1": 729,
    "ANY-0003": 700,
    "GIFT+2/X%": 700,
    "GAP-ALICE-1": 700,
    "WAIT-ALICE-1": 739,
    "ONE-ALICE-1": 700,
}


@pytest.mark.parametrize(("code", "expected"), DEMONSTRATED.items())
def test_demo_coupons_demonstrate_what_they_say(now, code, expected):
    sandbox = create_sandbox_app(SandboxConfig(clock=lambda: now))[SANDBOX_KEY]
    alice = sandbox.state.customers[DEMO.customer("alice").id]
    (verdict,) = sandbox.state.evaluate(alice, [code], now=now, store="S001", bill_amount=Decimal(2000))
    assert verdict.status == expected
