"""Series get/create, issue (single and bulk), coupon details, customer coupons, reactivate."""

from __future__ import annotations

import copy

import pytest

from service.sandbox import DEMO

SERIES_SPEC = {
    "description": "NEW 5 OFF",
    "discountCode": "NEW5",
    "validTillDate": "2031-05-10T00:00:00+05:30",
    "maxCreate": -1,
    "maxRedeem": -1,
    "anyUser": False,
    "isMultipleUseAllowed": False,
    "discountValue": 5,
    "discountType": "ABS",
    "minBillAmount": 100,
    "maxBillAmount": 20000,
    "redemptionRange": '{"dom" : [1], "dow": [1], "hours": [1]}',
}


async def create_series(kit, **changes):
    spec = {**copy.deepcopy(SERIES_SPEC), **changes}
    return await kit.post("/v2/coupon/series", {"CouponSeriesV2": spec})


# ---- series ----------------------------------------------------------------------------------------------------


async def test_series_get_returns_requested_series(kit):
    status, body = await kit.get("/v2/coupon/series", [("ids", "10001"), ("ids", "10003")])
    assert status == 200
    assert [s["id"] for s in body["entity"]] == [10001, 10003]
    capped = body["entity"][1]
    assert (capped["discountType"], capped["discountValue"], capped["discountUpto"]) == ("PERC", 20, 150)
    assert body["warnings"] == []


async def test_series_get_counts_issued_and_redeemed(kit):
    _, body = await kit.get("/v2/coupon/series", {"ids": "10001"})
    assert (body["entity"][0]["numIssued"], body["entity"][0]["numRedeemed"]) == (6, 1)
    await kit.redeem("ABS-ALICE-1")
    _, body = await kit.get("/v2/coupon/series", {"ids": "10001"})
    assert body["entity"][0]["numRedeemed"] == 2


async def test_series_get_unknown_ids_are_warnings(kit):
    status, body = await kit.get("/v2/coupon/series", [("ids", "10001"), ("ids", "999"), ("ids", "abc")])
    assert status == 200
    assert [s["id"] for s in body["entity"]] == [10001]
    assert body["warnings"] == [{"status": False, "code": 755, "message": "Invalid coupon series id"}] * 2


async def test_series_get_nothing_found_is_400(kit):
    status, body = await kit.get("/v2/coupon/series", {"ids": "999"})
    assert status == 400
    assert body == {"entity": [], "warnings": [{"status": False, "code": 755, "message": "Invalid coupon series id"}]}
    status, body = await kit.get("/v2/coupon/series")
    assert status == 400
    assert body["warnings"][0]["code"] == 746


async def test_series_create_then_get_and_issue_from_it(kit):
    status, created = await create_series(kit)
    assert status == 200
    assert created["description"] == "NEW 5 OFF"
    assert created["validTillDate"] == "2031-05-09T18:30:00Z"
    assert created["warnings"] == []
    assert isinstance(created["seriesCode"], str)
    _, fetched = await kit.get("/v2/coupon/series", {"ids": str(created["id"])})
    assert fetched["entity"][0]["discountCode"] == "NEW5"
    status, coupon = await kit.post(
        "/v2/coupon/issue", {"seriesId": created["id"], "customer": {"mobile": DEMO.customer("bob").mobile}}
    )
    assert status == 200
    assert coupon["seriesId"] == created["id"]


async def test_series_create_duplicate_751(kit):
    assert (await create_series(kit))[0] == 200
    status, body = await create_series(kit)
    assert (status, body["code"]) == (400, 751)
    status, body = await create_series(kit, description="other", seriesCode="DEMO10001")
    assert (status, body["code"]) == (400, 751)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"discountType": "BOGO"}, "discountType"),
        ({"discountValue": -1}, "discountValue"),
        ({"discountType": "PERC", "discountValue": 101}, "discountValue"),
        ({"minBillAmount": 500, "maxBillAmount": 100}, "minBillAmount"),
        ({"validTillDate": "next tuesday"}, "validTillDate"),
        ({"redemptionRange": "{not json"}, "redemptionRange"),
        ({"redemptionRange": '{"hours": [25]}'}, "redemptionRange"),
        ({"description": ""}, "description"),
        ({"maxRedeem": "many"}, "maxRedeem"),
        ({"anyUser": "yes"}, "anyUser"),
    ],
)
async def test_series_create_invalid_input_629_names_the_field(kit, changes, field):
    status, body = await create_series(kit, **changes)
    assert (status, body["code"]) == (400, 629)
    assert field in body["message"]


async def test_series_create_without_envelope_629(kit):
    status, body = await kit.post("/v2/coupon/series", SERIES_SPEC)
    assert (status, body["code"]) == (400, 629)


# ---- issue ----------------------------------------------------------------------------------------------------


async def test_issue_creates_a_coupon_for_the_customer(kit):
    bob = DEMO.customer("bob")
    status, body = await kit.post(
        "/v2/coupon/issue", {"seriesId": 10002, "customer": {"id": "", "mobile": "", "email": bob.email}}
    )
    assert status == 200
    coupon = kit.sandbox.coupon(body["code"])
    assert coupon.customer_id == bob.id
    assert coupon.id == body["id"]
    assert body["customer"]["id"] == bob.id
    assert body["discountType"] == "PERC"
    assert body["discountValue"] == 15.0
    assert body["redemptionCount"] == 0
    assert redeem_code(await kit.redeem(body["code"], customer="bob")) == 700


async def test_issue_codes_are_deterministic(make_kit):
    codes = []
    for _ in range(2):
        kit = await make_kit()
        _, body = await kit.post("/v2/coupon/issue", {"seriesId": 10001, "customer": {"id": 500002}})
        codes.append(body["code"])
    assert codes[0] == codes[1]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        pytest.param({"seriesId": 424242, "customer": {"id": 500001}}, 707, id="unknown-series"),
        pytest.param({"seriesId": "abc", "customer": {"id": 500001}}, 707, id="bad-series"),
        pytest.param({"customer": {"id": 500001}}, 746, id="no-series"),
        pytest.param({"seriesId": 10001, "customer": {"mobile": "910000000000"}}, 701, id="unknown-customer"),
        pytest.param({"seriesId": 10001}, 629, id="no-customer"),
        pytest.param({"seriesId": 10013, "customer": {"id": 500001}}, 722, id="max-vouchers-per-user"),
        pytest.param({"seriesId": 10005, "customer": {"id": 500001}}, 712, id="expired-series"),
    ],
)
async def test_issue_errors_are_flat(kit, body, code):
    before = len(kit.sandbox.state.coupons)
    status, answer = await kit.post("/v2/coupon/issue", body)
    assert status == 400
    assert answer["status"] is False
    assert answer["code"] == code
    assert len(kit.sandbox.state.coupons) == before


async def test_issue_max_create_722(kit):
    customers = [kit.sandbox.add_customer(mobile=f"91880000000{i}") for i in range(5)]
    results = [
        (await kit.post("/v2/coupon/issue", {"seriesId": 10013, "customer": {"id": c.id}}))[0] for c in customers
    ]
    assert results == [200, 200, 200, 200, 400]  # maxCreate 5, one seeded


async def test_bulk_issue_reports_per_series(kit):
    status, body = await kit.post(
        "/v2/coupon/bulk/issue",
        {"seriesIds": [10001, 424242, 10013], "customer": {"id": "500001"}},
        params={"source": "INSTORE"},
    )
    assert status == 200
    assert (body["totalCount"], body["failureCount"]) == (3, 2)
    first, unknown, limited = body["response"]
    assert first["entityId"] == 10001
    assert first["errors"] == []
    assert kit.sandbox.coupon(first["result"]["code"]).customer_id == 500001
    assert (unknown["entityId"], unknown["errors"][0]["code"], unknown["result"]) == (424242, 707, None)
    assert limited["errors"][0]["code"] == 722


async def test_bulk_issue_needs_source_and_series(kit):
    body = {"seriesIds": [10001], "customer": {"id": 500001}}
    assert (await kit.post("/v2/coupon/bulk/issue", body))[1]["code"] == 629
    status, answer = await kit.post(
        "/v2/coupon/bulk/issue", {"seriesIds": [], "customer": {"id": 500001}}, params={"source": "INSTORE"}
    )
    assert (status, answer["code"]) == (400, 746)


# ---- coupon details / customer coupons ------------------------------------------------------------------------


async def test_coupon_details_by_codes_ids_and_owner(kit):
    status, body = await kit.get(
        "/v2/coupon", [("couponCodes", "ABS-ALICE-1"), ("couponCodes", "GIFT+2/X%"), ("couponIds", "300008")]
    )
    assert status == 200
    assert [c["code"] for c in body["data"]] == ["ABS-ALICE-1", "GIFT+2/X%", "PERC-ALICE-1"]
    assert [c["issuedTo"] for c in body["data"]] == [500001, -1, 500001]
    assert body["errors"] == []
    _, owned = await kit.get("/v2/coupon", {"issuedToIds": "500002"})
    assert {c["code"] for c in owned["data"]} == set(DEMO.codes("abs", "bob")) | {
        code for key in ("perc", "perc_capped", "bill_range", "expired", "not_yet_valid", "multi_use",
                         "store_s002", "range_restricted") for code in DEMO.codes(key, "bob")
    }  # fmt: skip


async def test_coupon_details_redemption_count(kit):
    _, body = await kit.get("/v2/coupon", {"couponCodes": "ABS-ALICE-USED"})
    assert body["data"][0]["redemptionCount"] == 1


async def test_coupon_details_unknown_codes_are_errors(kit):
    status, body = await kit.get("/v2/coupon", [("couponCodes", "NOPE"), ("couponCodes", "ABS-ALICE-1")])
    assert status == 200
    assert [c["code"] for c in body["data"]] == ["ABS-ALICE-1"]
    assert body["errors"] == [{"status": False, "code": 780, "message": "Coupon not found"}]


async def test_coupon_details_errors_per_parameter_in_order_and_one_entry_per_coupon(kit):
    alice_1 = DEMO.coupon("ABS-ALICE-1").id
    status, body = await kit.get(
        "/v2/coupon",
        [
            ("couponCodes", "ABS ALICE"),  # malformed: 702
            ("couponCodes", "ABS-ALICE-1"),
            ("couponIds", "999999"),  # unknown id: 780
            ("couponIds", "x1"),  # not an id: 780
            ("couponIds", str(alice_1)),  # the same coupon again: listed once
            ("issuedToIds", "123"),  # no such customer: 701
            ("issuedToIds", str(DEMO.customer("dave").id)),  # a customer with no coupons
        ],
    )
    assert status == 200
    assert [c["code"] for c in body["data"]] == ["ABS-ALICE-1"]
    assert [e["code"] for e in body["errors"]] == [702, 780, 780, 701]


async def test_coupon_details_without_parameters_781(kit):
    status, body = await kit.get("/v2/coupon")
    assert (status, body["code"]) == (400, 781)


async def test_customer_coupons_lists_redemptions_with_transaction_numbers(kit):
    await kit.redeem("ABS-ALICE-1", txn="POS-1")
    await kit.redeem("MULTI-ALICE-1", txn="POS-2")
    await kit.redeem("MULTI-ALICE-1", txn="POS-3")
    await kit.redeem("ANY-0002", txn="POS-4")
    status, body = await kit.get(
        "/v2/customers/coupons", {"mobile": DEMO.customer("alice").mobile, "status": "REDEEMED"}
    )
    assert status == 200
    redeemed = {c["code"]: [r["transactionNumber"] for r in c["redemptions"]] for c in body["data"]}
    assert redeemed == {
        "ABS-ALICE-1": ["POS-1"],
        "ABS-ALICE-USED": ["SEED-TXN-0001"],
        "MULTI-ALICE-1": ["POS-2", "POS-3"],
        "ANY-0002": ["POS-4"],  # an anyUser coupon the customer redeemed
    }
    entry = next(c for c in body["data"] if c["code"] == "ABS-ALICE-1")
    assert set(entry) == {
        "id", "code", "seriesId", "discountType", "discountValue", "validTill", "redemptionCount", "redemptions"
    }  # fmt: skip
    assert set(entry["redemptions"][0]) == {"id", "date", "transactionNumber", "redeemedAt"}
    assert entry["redemptions"][0]["redeemedAt"] == "S001"
    assert entry["redemptions"][0]["id"] == kit.sandbox.redemptions_of("ABS-ALICE-1")[0].id


@pytest.mark.parametrize(
    ("status_filter", "included", "excluded"),
    [
        ("ACTIVE", "ABS-ALICE-1", "ABS-ALICE-USED"),
        ("REDEEMED", "ABS-ALICE-USED", "ABS-ALICE-1"),
        ("ACTIVE_REDEEMED", "ABS-ALICE-USED", "ABS-ALICE-EXP"),
        ("", "ABS-ALICE-EXP", "ABS-BOB-1"),
    ],
)
async def test_customer_coupons_status_filter(kit, status_filter, included, excluded):
    _, body = await kit.get("/v2/customers/coupons", {"id": "500001", "status": status_filter})
    codes = {c["code"] for c in body["data"]}
    assert included in codes
    assert excluded not in codes


async def test_customer_coupons_errors(kit):
    assert (await kit.get("/v2/customers/coupons", {"mobile": "910000000000"}))[1]["code"] == 701
    assert (await kit.get("/v2/customers/coupons", {"id": "500001", "status": "USED"}))[1]["code"] == 629


# ---- reactivate ------------------------------------------------------------------------------------------------


async def test_reactivate_makes_the_coupon_redeemable_again(kit):
    _, first = await kit.redeem("ABS-ALICE-1", txn="T-1")
    redemption_id = first["redemption"][0]["id"]
    assert redeem_code(await kit.redeem("ABS-ALICE-1", txn="T-2")) == 711
    status, body = await kit.post("/v2/coupon/reactivate", {"redemptionIds": [redemption_id]})
    assert (status, body) == (200, {"warnings": [], "errors": [], "success": True})
    reversed_one = kit.sandbox.state.redemptions[redemption_id]
    assert reversed_one.reversed is True  # kept, marked reversed
    assert redeem_code(await kit.redeem("ABS-ALICE-1", txn="T-3")) == 700
    assert [(r.transaction_number, r.reversed) for r in kit.sandbox.redemptions_of("ABS-ALICE-1")] == [
        ("T-1", True),
        ("T-3", False),
    ]
    _, listing = await kit.get("/v2/customers/coupons", {"id": "500001", "status": "REDEEMED"})
    entry = next(c for c in listing["data"] if c["code"] == "ABS-ALICE-1")
    assert [r["transactionNumber"] for r in entry["redemptions"]] == ["T-3"]


@pytest.mark.parametrize(
    ("ids", "code"),
    [
        pytest.param([424242], 510, id="unknown"),
        pytest.param([800001, 424242], 510, id="one-unknown"),
        pytest.param(["x"], 510, id="not-a-number"),
        pytest.param([], 661, id="empty"),
        pytest.param(None, 661, id="missing"),
    ],
)
async def test_reactivate_errors(kit, ids, code):
    body = {} if ids is None else {"redemptionIds": ids}
    status, answer = await kit.post("/v2/coupon/reactivate", body)
    assert status == 400
    assert answer["success"] is False
    assert answer["errors"][0]["code"] == code
    assert not kit.sandbox.state.redemptions[800001].reversed  # all or nothing


async def test_reactivate_twice_is_510(kit):
    assert (await kit.post("/v2/coupon/reactivate", {"redemptionIds": [800001]}))[0] == 200
    status, body = await kit.post("/v2/coupon/reactivate", {"redemptionIds": [800001]})
    assert (status, body["errors"][0]["code"]) == (400, 510)


def redeem_code(result):
    return result[1]["redemptionStatus"]["code"]
