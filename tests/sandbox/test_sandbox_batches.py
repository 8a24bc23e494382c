"""is_redeemable with several codes, and bulk redeem's all-or-nothing semantics."""

from __future__ import annotations

import pytest

from service.sandbox import DEMO


async def test_is_redeemable_answers_per_code_in_request_order(kit):
    status, body = await kit.is_redeemable("ABS-ALICE-1", "ABS-BOB-1", "PERC-ALICE-1", "ABS-ALICE-USED")
    assert status == 200
    assert [i["code"] for i in body["redemption"]] == ["ABS-ALICE-1", "ABS-BOB-1", "PERC-ALICE-1", "ABS-ALICE-USED"]
    assert [i["isRedeemable"] for i in body["redemption"]] == [True, False, True, False]
    assert body["redemptionStatus"] == {
        "status": False,
        "code": 710,
        "message": "Coupon is not meant for this customer",
    }  # the first failing item's code
    assert body["customer"]["id"] == DEMO.customer("alice").id


async def test_is_redeemable_all_redeemable_is_700(kit):
    _, body = await kit.is_redeemable("ABS-ALICE-1", "PERC-ALICE-1")
    assert body["redemptionStatus"] == {"status": True, "code": 700, "message": "Coupon isRedeem successful"}
    assert all(i["isRedeemable"] for i in body["redemption"])


async def test_is_redeemable_accepts_repeated_code_parameters_and_percent_encoding(kit):
    params = [("id", str(DEMO.customer("bob").id)), ("code", "GIFT+2/X%"), ("code", "ABS-BOB-1")]
    status, body = await kit.get("/v2/coupon/is_redeemable", params)
    assert status == 200
    assert [(i["code"], i["isRedeemable"]) for i in body["redemption"]] == [("GIFT+2/X%", True), ("ABS-BOB-1", True)]


async def test_is_redeemable_unencoded_plus_arrives_as_space_and_is_malformed(kit):
    response = await kit.client.get(
        f"/v2/coupon/is_redeemable?mobile={DEMO.customer('bob').mobile}&code=GIFT+2/X%25", headers=kit.basic()
    )
    body = await response.json()
    assert body["redemption"][0]["code"] == "GIFT 2/X%"
    assert body["redemption"][0]["warnings"][0]["code"] == 702


async def test_is_redeemable_all_or_nothing_variant_marks_siblings_749(kit):
    kit.sandbox.options.is_redeemable_all_or_nothing = True
    _, body = await kit.is_redeemable("ABS-ALICE-1", "ABS-BOB-1")
    first, second = body["redemption"]
    assert (first["isRedeemable"], first["warnings"][0]["code"]) == (False, 749)
    assert second["warnings"][0]["code"] == 710
    assert body["redemptionStatus"]["code"] == 710


@pytest.mark.parametrize(
    ("query", "code"),
    [
        pytest.param("mobile=910000000000&code=ABS-ALICE-1", 701, id="unknown-customer"),
        pytest.param("mobile=919900000001", 781, id="no-code"),
        pytest.param("mobile=919900000001&code=", 781, id="empty-code"),
        pytest.param("mobile=919900000001&code=" + ",".join(f"C{i}" for i in range(51)), 629, id="51-codes"),
        pytest.param("code=ABS-ALICE-1", 629, id="no-customer"),
    ],
)
async def test_is_redeemable_request_errors_are_flat(kit, query, code):
    response = await kit.client.get(f"/v2/coupon/is_redeemable?{query}", headers=kit.basic())
    assert response.status == 400
    body = await response.json()
    assert body["status"] is False
    assert body["code"] == code


async def test_is_redeemable_fifty_codes_is_the_limit(kit):
    status, body = await kit.is_redeemable(*[f"C{i}" for i in range(50)])
    assert status == 200
    assert len(body["redemption"]) == 50


async def test_is_redeemable_duplicate_code_second_occurrence_716(kit):
    _, body = await kit.is_redeemable("ABS-ALICE-1", "ABS-ALICE-1")
    assert [i["isRedeemable"] for i in body["redemption"]] == [True, False]
    assert body["redemption"][1]["warnings"][0]["code"] == 716


async def test_bulk_redeem_success_redeems_every_code(kit):
    status, body = await kit.bulk_redeem("ABS-ALICE-1", "PERC-ALICE-1", bill="1000", txn="BULK-1")
    assert status == 200
    assert body["totalCount"] == 2
    assert body["failureCount"] == 0
    ids = [r.id for code in ("ABS-ALICE-1", "PERC-ALICE-1") for r in kit.sandbox.redemptions_of(code)]
    assert [e["entityId"] for e in body["response"]] == ids
    assert [e["result"]["couponValue"] for e in body["response"]] == [100.0, 15.0]  # face values (ABS, PERC)
    assert all(e["errors"] == [] for e in body["response"])
    assert {r.transaction_number for r in kit.sandbox.state.redemptions.values() if r.id in ids} == {"BULK-1"}


async def test_bulk_redeem_is_all_or_nothing_with_749_siblings(kit):
    before = kit.active_redemptions()
    status, body = await kit.bulk_redeem("ABS-ALICE-1", "ABS-BOB-1", "PERC-ALICE-1")
    assert status == 400
    assert body["totalCount"] == 3
    assert body["failureCount"] == 3
    errors = [e["errors"][0]["code"] for e in body["response"]]
    assert errors == [749, 710, 749]
    assert [e["result"]["redemptionStatus"]["code"] for e in body["response"]] == [749, 710, 749]
    assert all(e["entityId"] == -1 for e in body["response"])
    assert kit.active_redemptions() == before
    assert kit.sandbox.redemptions_of("ABS-ALICE-1") == []
    assert kit.sandbox.redemptions_of("PERC-ALICE-1") == []


async def test_bulk_redeem_failure_can_be_http_200(kit):
    kit.sandbox.options.failure_http_status = 200
    status, body = await kit.bulk_redeem("ABS-ALICE-1", "NOPE-0000")
    assert status == 200
    assert [e["errors"][0]["code"] for e in body["response"]] == [749, 719]


async def test_bulk_redeem_duplicate_code_fails_the_batch_with_716(kit):
    status, body = await kit.bulk_redeem("ABS-ALICE-1", "ABS-ALICE-1")
    assert status == 400
    assert [e["errors"][0]["code"] for e in body["response"]] == [749, 716]
    assert kit.sandbox.redemptions_of("ABS-ALICE-1") == []


async def test_bulk_redeem_counts_earlier_codes_of_the_batch_against_limits(kit):
    alice = DEMO.customer("alice").id
    extra = kit.sandbox.issue_coupon(DEMO.series_of("multi_use").id, alice, "MULTI-ALICE-2")
    status, body = await kit.bulk_redeem("MULTI-ALICE-1", extra.code, "MULTI-ALICE-1")
    assert status == 400
    assert [e["errors"][0]["code"] for e in body["response"]] == [749, 749, 716]
    status, body = await kit.bulk_redeem("MULTI-ALICE-1", "MULTI-ALICE-1")
    assert [e["errors"][0]["code"] for e in body["response"]] == [749, 716]
    kit.sandbox.redeem("MULTI-ALICE-1", alice)
    status, body = await kit.bulk_redeem("MULTI-ALICE-1", extra.code)
    assert [e["errors"][0]["code"] for e in body["response"]] == [749, 736]  # per-user limit 2


async def test_bulk_redeem_dry_run_applies_nothing(kit):
    status, body = await kit.bulk_redeem(
        "ABS-ALICE-1", "PERC-ALICE-1", params={"source": "INSTORE", "is_redeemable": "true"}
    )
    assert status == 200
    assert [e["entityId"] for e in body["response"]] == [-1, -1]
    assert [e["result"]["redemptionStatus"]["code"] for e in body["response"]] == [700, 700]
    assert kit.sandbox.redemptions_of("ABS-ALICE-1") == []


@pytest.mark.parametrize(
    ("codes", "params", "customer_mobile", "code"),
    [
        pytest.param(["ABS-ALICE-1"], {}, None, 629, id="no-source"),
        pytest.param([f"C{i}" for i in range(51)], None, None, 629, id="51-codes"),
        pytest.param([], None, None, 781, id="no-codes"),
        pytest.param(["ABS-ALICE-1"], None, "910000000000", 701, id="unknown-customer"),
    ],
)
async def test_bulk_redeem_request_errors_are_flat(kit, codes, params, customer_mobile, code):
    body = kit.redeem_body(*codes)
    if customer_mobile is not None:
        body["user"] = {"mobile": customer_mobile}
    query = {"source": "INSTORE"} if params is None else params
    status, answer = await kit.post("/v2/coupon/bulk/redeem", body, params=query)
    assert status == 400
    assert answer["status"] is False
    assert answer["code"] == code


async def test_bulk_redeem_missing_transaction_number_718_everywhere(kit):
    status, body = await kit.bulk_redeem("ABS-ALICE-1", "PERC-ALICE-1", txn="")
    assert status == 400
    assert [e["errors"][0]["code"] for e in body["response"]] == [718, 718]
    assert kit.sandbox.redemptions_of("ABS-ALICE-1") == []


async def test_bulk_redeem_fifty_codes_accepted(kit):
    sandbox = kit.sandbox
    series = sandbox.add_series(description="fifty")
    alice = DEMO.customer("alice").id
    codes = [sandbox.issue_coupon(series.id, alice).code for _ in range(50)]
    status, body = await kit.bulk_redeem(*codes)
    assert status == 200
    assert body["totalCount"] == 50
    assert sum(len(sandbox.redemptions_of(c)) for c in codes) == 50
