"""Every redemption rule and its status code, through real HTTP requests (redeem and is_redeemable)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal

import pytest

from service.sandbox import DEMO

# (code, bill amount, expected code from /v2/coupon/redeem for alice at store S001)
REDEEM_TABLE = [
    pytest.param("ABS-ALICE-1", "2000", 700, id="700-ok"),
    pytest.param("", "2000", 702, id="702-empty"),
    pytest.param("HAS SPACE", "2000", 702, id="702-whitespace"),
    pytest.param("X" * 51, "2000", 702, id="702-too-long"),
    pytest.param("CODÉ1", "2000", 702, id="702-non-ascii"),
    pytest.param("A,B", "2000", 702, id="702-comma"),
    pytest.param("NOPE-0000", "2000", 719, id="719-unknown"),
    pytest.param("ABS-UNTAGGED-1", "2000", 703, id="703-not-issued"),
    pytest.param("ABS-BOB-1", "2000", 710, id="710-other-customer"),
    pytest.param("ABS-ALICE-USED", "2000", 711, id="711-already-used"),
    pytest.param("EXP-ALICE-1", "2000", 712, id="712-series-expired"),
    pytest.param("ABS-ALICE-EXP", "2000", 713, id="713-coupon-expired"),
    pytest.param("SOON-ALICE-1", "2000", 739, id="739-valid-from-future"),
    pytest.param("WAIT-ALICE-1", "2000", 739, id="739-valid-after-days"),
    pytest.param("RANGE-ALICE-1", "2000", 729, id="729-redemption-range"),
    pytest.param("S002-ALICE-1", "2000", 735, id="735-store"),
    pytest.param("BILL-ALICE-1", "499.99", 733, id="733-below-min"),
    pytest.param("BILL-ALICE-1", "5000.01", 733, id="733-above-max"),
    pytest.param("BILL-ALICE-1", 500, 700, id="700-at-min"),
    pytest.param("BILL-ALICE-1", 5000, 700, id="700-at-max"),
    pytest.param("ANY-0001", "2000", 700, id="700-any-user"),
]


@pytest.mark.parametrize(("code", "bill", "expected"), REDEEM_TABLE)
async def test_redeem_rule_table_nested_style(make_kit, code, bill, expected):
    kit = await make_kit(response_style="nested")
    before = kit.active_redemptions()
    status, body = await kit.redeem(code, bill=bill)
    assert body["redemptionStatus"]["code"] == expected
    item = body["redemption"][0]
    assert item["code"] == code
    assert item["redemptionStatus"]["code"] == expected
    if expected == 700:
        assert status == 200
        assert body["redemptionStatus"]["status"] is True
        assert item["redemptionStatus"]["success"] is True
        assert kit.active_redemptions() == before + 1
    else:
        assert status == 400
        assert body["redemptionStatus"]["status"] is False
        assert item["redemptionStatus"]["success"] is False
        assert item["redemptionStatus"]["statusCode"]["code"] == expected
        assert item["warnings"][0]["code"] == expected
        assert kit.active_redemptions() == before


@pytest.mark.parametrize(("code", "bill", "expected"), REDEEM_TABLE)
async def test_redeem_rule_table_doc_style(kit, code, bill, expected):
    """The default (doc) style: the verdict is only the top-level redemptionStatus; an item has no status."""
    before = kit.active_redemptions()
    status, body = await kit.redeem(code, bill=bill)
    assert body["redemptionStatus"]["code"] == expected
    (item,) = body["redemption"]
    assert item["code"] == code
    assert "redemptionStatus" not in item
    if expected == 700:
        assert status == 200
        assert body["redemptionStatus"]["status"] is True
        assert (item["id"], item["warnings"], item["appendedErrorMessage"]) == (
            kit.sandbox.redemptions_of(code)[-1].id,
            [],
            "",
        )
        assert kit.active_redemptions() == before + 1
    else:
        assert status == 400
        assert body["redemptionStatus"]["status"] is False
        assert (item["id"], item["warnings"]) == (-1, [])  # no code of its own: the top level is the verdict
        assert item["appendedErrorMessage"] == body["redemptionStatus"]["message"]
        assert kit.active_redemptions() == before


# is_redeemable: same rules, 723 instead of 703, and no bill amount (so no 733).
IS_REDEEMABLE_TABLE = [
    ("ABS-ALICE-1", 700),
    ("HAS%20SPACE", 702),
    ("NOPE-0000", 719),
    ("ABS-UNTAGGED-1", 723),
    ("ABS-BOB-1", 710),
    ("ABS-ALICE-USED", 711),
    ("EXP-ALICE-1", 712),
    ("ABS-ALICE-EXP", 713),
    ("SOON-ALICE-1", 739),
    ("WAIT-ALICE-1", 739),
    ("RANGE-ALICE-1", 729),
    ("S002-ALICE-1", 735),
    ("BILL-ALICE-1", 700),
]


@pytest.mark.parametrize(("code", "expected"), IS_REDEEMABLE_TABLE)
async def test_is_redeemable_rule_table(kit, code, expected):
    response = await kit.client.get(
        f"/v2/coupon/is_redeemable?mobile={DEMO.customer('alice').mobile}&code={code}", headers=kit.basic()
    )
    body = await response.json()
    assert response.status == 200
    item = body["redemption"][0]
    assert item["isRedeemable"] is (expected == 700)
    assert body["redemptionStatus"]["code"] == expected
    if expected == 700:
        assert item["warnings"] == []
        assert body["redemptionStatus"] == {"status": True, "code": 700, "message": "Coupon isRedeem successful"}
    else:
        assert item["warnings"][0] == {"status": False, "code": expected, "message": item["appendedErrorMessage"]}
    assert kit.sandbox.call_count("redeem") == 0
    assert kit.active_redemptions() == 1  # only the seeded one: checking never redeems


async def test_single_use_coupon_redeemed_twice_gives_711(kit):
    first_status, first = await kit.redeem("ABS-ALICE-2", txn="T-1")
    second_status, second = await kit.redeem("ABS-ALICE-2", txn="T-2")
    assert (first_status, first["redemptionStatus"]["code"]) == (200, 700)
    assert (second_status, second["redemptionStatus"]["code"]) == (400, 711)
    assert [r.transaction_number for r in kit.sandbox.redemptions_of("ABS-ALICE-2")] == ["T-1"]


async def test_multi_use_per_customer_limit_736_then_series_limit_728(kit):
    results = [(await kit.redeem("MULTI-ALICE-1", txn=f"T{i}"))[1]["redemptionStatus"]["code"] for i in range(3)]
    assert results == [700, 700, 736]  # maxRedemptionsInSeriesPerUser = 2
    _, bob = await kit.redeem("MULTI-BOB-1", customer="bob")
    assert bob["redemptionStatus"]["code"] == 700  # third redemption in the series (maxRedeem = 3)
    _, carol = await kit.redeem("MULTI-CAROL-1", customer="carol")
    assert carol["redemptionStatus"]["code"] == 728
    _, bob_again = await kit.redeem("MULTI-BOB-1", customer="bob")
    assert bob_again["redemptionStatus"]["code"] == 728
    assert len(kit.sandbox.redemptions_of("MULTI-ALICE-1")) == 2


async def test_multi_use_coupon_own_maximum_gives_728(kit):
    series = kit.sandbox.add_series(description="multi, own max", is_multiple_use_allowed=True)
    alice = DEMO.customer("alice").id
    kit.sandbox.issue_coupon(series.id, alice, "OWN-MAX-1", max_redemptions=2)
    codes = [(await kit.redeem("OWN-MAX-1", txn=f"T{i}"))[1]["redemptionStatus"]["code"] for i in range(3)]
    assert codes == [700, 700, 728]


async def test_redemptions_left_counts_down_for_multi_use(kit):
    _, before = await kit.is_redeemable("MULTI-ALICE-1")
    assert before["redemption"][0]["redemptionsLeft"] == 2
    assert before["redemption"][0]["numberOfRedemptionsByUser"] == 0
    await kit.redeem("MULTI-ALICE-1")
    _, after = await kit.is_redeemable("MULTI-ALICE-1")
    assert after["redemption"][0]["redemptionsLeft"] == 1
    assert after["redemption"][0]["numberOfRedemptionsByUser"] == 1
    _, plain = await kit.is_redeemable("ABS-ALICE-1")
    assert plain["redemption"][0]["redemptionsLeft"] == -1


async def test_min_days_between_redemptions_738_until_the_gap_elapses(kit):
    assert redeem_status(await kit.redeem("GAP-ALICE-1", txn="T1")) == 700
    assert redeem_status(await kit.redeem("GAP-ALICE-1", txn="T2")) == 738
    kit.sandbox.advance(timedelta(days=7).total_seconds())
    assert redeem_status(await kit.redeem("GAP-ALICE-1", txn="T3")) == 700


async def test_redemption_range_follows_the_injected_clock(kit):
    assert redeem_status(await kit.redeem("RANGE-ALICE-1")) == 729
    kit.sandbox.advance(timedelta(hours=12).total_seconds())  # 22:00 UTC: the seeded happy hour
    assert redeem_status(await kit.redeem("RANGE-ALICE-1")) == 700


async def test_not_yet_valid_becomes_valid_and_valid_becomes_expired(kit):
    kit.sandbox.advance(timedelta(days=7, seconds=1).total_seconds())
    assert redeem_status(await kit.redeem("SOON-ALICE-1", txn="T1")) == 700
    assert redeem_status(await kit.redeem("WAIT-ALICE-1", txn="T2")) == 700
    kit.sandbox.advance(timedelta(days=366).total_seconds())
    assert redeem_status(await kit.redeem("ABS-ALICE-1", txn="T3")) == 712


@pytest.mark.parametrize(
    ("rules", "owner", "redeem_first", "expected"),
    [
        pytest.param({"valid_days": -1}, "bob", False, 710, id="ownership-before-expiry"),
        pytest.param({"valid_days": -1}, "alice", True, 711, id="already-used-before-expiry"),
        pytest.param({"redeem_at_store": ("S002",), "min_bill_amount": Decimal(5000)}, "alice", False, 735,
                     id="store-before-bill-amount"),
        pytest.param({"min_bill_amount": Decimal(5000), "max_redeem": 1}, "alice", True, 711,
                     id="used-before-bill-and-limits"),
    ],
)  # fmt: skip
async def test_check_order(kit, rules, owner, redeem_first, expected):
    sandbox = kit.sandbox
    rules = dict(rules)
    valid_days = rules.pop("valid_days", 365)
    series = sandbox.add_series(description=f"order {expected}", valid_days=valid_days, **rules)
    coupon = sandbox.issue_coupon(series.id, DEMO.customer(owner).id, "ORDER-1")
    if redeem_first:
        sandbox.state.record_redemption(
            coupon,
            customer_id=DEMO.customer(owner).id,
            now=sandbox.now(),
            store="S001",
            transaction_number="PRE",
            bill_amount=Decimal(1),
            discount=Decimal(1),
        )
    assert redeem_status(await kit.redeem("ORDER-1", bill="100")) == expected


@pytest.mark.parametrize(
    ("code", "bill", "face_value", "discount", "discount_type"),
    [
        ("ABS-ALICE-1", "2000", 100.0, 100.0, "ABS"),
        ("PERC-ALICE-1", "1999.90", 15.0, 299.99, "PERC"),  # 15% rounded half-up to cents
        ("CAP-ALICE-1", "500", 20.0, 100.0, "PERC"),  # 20% under the cap
        ("CAP-ALICE-1", "5000", 20.0, 150.0, "PERC"),  # 20% = 1000, capped by discountUpto 150
    ],
)
@pytest.mark.parametrize("style", ["doc", "nested"])
async def test_discount_of_a_redemption(make_kit, style, code, bill, face_value, discount, discount_type):
    """couponValue is the coupon's face value (the amount, or the percent), as the samples show; the discount
    given on the bill is the sandbox's own record."""
    kit = await make_kit(response_style=style)
    status, body = await kit.redeem(code, bill=bill)
    assert status == 200
    item = body["redemption"][0]
    assert item["couponValue"] == face_value
    assert item["isAbsolute"] is (discount_type == "ABS")
    if style == "nested":
        assert item["discountType"] == discount_type
    else:
        assert "discountType" not in item
    (redemption,) = kit.sandbox.redemptions_of(code)
    assert redemption.discount == Decimal(str(discount))
    assert redemption.bill_amount == Decimal(bill)


async def test_redemption_record_keeps_transaction_customer_store_and_time(kit, now):
    status, body = await kit.redeem("ABS-ALICE-1", bill=1234.5, txn="POS-77", headers=kit.basic("S002"))
    assert status == 200
    (redemption,) = kit.sandbox.redemptions_of("ABS-ALICE-1")
    assert body["redemption"][0]["id"] == redemption.id
    assert redemption.transaction_number == "POS-77"
    assert redemption.customer_id == DEMO.customer("alice").id
    assert redemption.series_id == DEMO.series_of("abs").id
    assert redemption.store == "S002"
    assert redemption.bill_amount == Decimal("1234.5")
    assert redemption.redeemed_on == now  # redemptionTime from the request is not stored (upstream behaviour)
    assert redemption.reversed is False


@pytest.mark.parametrize("identifier", ["mobile", "email", "externalId", "id"])
async def test_customer_can_be_named_by_any_identifier(kit, identifier):
    alice = DEMO.customer("alice")
    value = {"mobile": alice.mobile, "email": alice.email, "externalId": alice.external_id, "id": alice.id}
    body = kit.redeem_body("ABS-ALICE-1")
    body["user"] = {identifier: value[identifier]}
    status, answer = await kit.post("/v2/coupon/redeem", body)
    assert status == 200
    assert answer["customer"]["id"] == alice.id


async def test_unknown_customer_is_a_flat_701(kit):
    body = kit.redeem_body("ABS-ALICE-1")
    body["user"] = {"mobile": "910000000000"}
    status, answer = await kit.post("/v2/coupon/redeem", body)
    assert (status, answer) == (400, {"status": False, "code": 701, "message": "The customer could not be found"})


async def test_missing_transaction_number_gives_718_and_applies_nothing(kit):
    status, body = await kit.redeem("ABS-ALICE-1", txn=None)
    assert status == 400
    assert body["redemptionStatus"]["code"] == 718
    assert body["redemption"][0]["id"] == -1
    assert kit.sandbox.redemptions_of("ABS-ALICE-1") == []


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        pytest.param(lambda b: b["redemptionRequestList"].append({"code": "ABS-ALICE-2"}), 629, id="two-codes"),
        pytest.param(lambda b: b.update(billAmount="lots"), 629, id="bad-bill"),
        pytest.param(lambda b: b.update(billAmount=-1), 629, id="negative-bill"),
        pytest.param(lambda b: b.pop("billAmount"), 629, id="no-bill"),
        pytest.param(lambda b: b.pop("user"), 629, id="no-user"),
        pytest.param(lambda b: b.update(user={"mobile": ""}), 629, id="empty-user"),
        pytest.param(lambda b: b.update(redemptionRequestList=[]), 781, id="no-codes"),
        pytest.param(lambda b: b.update(redemptionRequestList=[{}]), 781, id="entry-without-code"),
    ],
)
async def test_invalid_redeem_input_is_a_flat_error(kit, mutate, expected):
    body = kit.redeem_body("ABS-ALICE-1")
    mutate(body)
    status, answer = await kit.post("/v2/coupon/redeem", body)
    assert status == 400
    assert answer["status"] is False
    assert answer["code"] == expected
    assert kit.sandbox.redemptions_of("ABS-ALICE-1") == []


async def test_non_json_body_is_a_flat_629(kit):
    response = await kit.client.post("/v2/coupon/redeem", data=b"billAmount=1", headers=kit.basic())
    assert response.status == 400
    assert (await response.json())["code"] == 629


async def test_failure_http_status_can_be_200_with_status_false(kit):
    kit.sandbox.options.failure_http_status = 200
    status, body = await kit.redeem("ABS-BOB-1")
    assert status == 200
    assert body["redemptionStatus"] == {
        "status": False,
        "code": 710,
        "message": "Coupon is not meant for this customer",
    }


async def test_concurrent_redeems_of_one_coupon_apply_once(make_kit):
    kit = await make_kit(latency_ms=20)
    results = await asyncio.gather(*(kit.redeem("ABS-ALICE-2", txn=f"T{i}") for i in range(5)))
    codes = sorted(body["redemptionStatus"]["code"] for _, body in results)
    assert codes == [700, 711, 711, 711, 711]
    assert len(kit.sandbox.redemptions_of("ABS-ALICE-2")) == 1


def redeem_status(result):
    return result[1]["redemptionStatus"]["code"]


async def test_add_series_helper_accepts_plain_values(make_kit):
    kit = await make_kit(response_style="nested")
    series = kit.sandbox.add_series(
        description="helper values",
        discount_type="PERC",
        discount_value=50,
        discount_upto=30,
        redemption_range='{"dom":["-1"],"dow":["-1"],"hours":["10"]}',
        redeem_at_store=["S001"],
    )
    kit.sandbox.issue_coupon(series.id, DEMO.customer("alice").id, "HELPER-1")
    status, body = await kit.redeem("HELPER-1", bill="100")
    item = body["redemption"][0]
    assert (status, item["couponValue"], item["discountUpto"]) == (200, 50.0, 30)
    assert kit.sandbox.redemptions_of("HELPER-1")[0].discount == Decimal(30)
