"""Every client method against the sandbox over real HTTP, with both auth schemes."""

from __future__ import annotations

from decimal import Decimal

import pytest

from service.capillary.client import CapillaryClient
from service.capillary.errors import CapillaryHTTPError
from service.capillary.models import Customer, Said, SeriesSpec
from service.sandbox import DEMO
from tests.conftest import Upstream

ALICE = Customer(mobile=DEMO.customer("alice").mobile)
BOB = Customer(mobile=DEMO.customer("bob").mobile)


async def test_is_redeemable_gives_one_verdict_per_code(capillary: CapillaryClient) -> None:
    reply = await capillary.is_redeemable(ALICE, ["ABS-ALICE-1", "ABS-ALICE-USED", "ABS-BOB-1", "NOPE-0000"])
    verdicts = {item.code: reply.verdict(item) for item in reply.redemption}
    assert {code: (v.ok, v.code) if v else None for code, v in verdicts.items()} == {
        "ABS-ALICE-1": (True, None),
        "ABS-ALICE-USED": (False, 711),
        "ABS-BOB-1": (False, 710),
        "NOPE-0000": (False, 719),
    }
    assert reply.customer is not None
    assert reply.customer.id == DEMO.customer("alice").id


async def test_codes_are_url_encoded(capillary: CapillaryClient, upstream: Upstream) -> None:
    reply = await capillary.is_redeemable(Customer(email=DEMO.customer("alice").email), ["GIFT+2/X%", "ANY-0001"])
    assert [(i.code, i.is_redeemable) for i in reply.redemption] == [("GIFT+2/X%", True), ("ANY-0001", True)]


async def test_a_code_with_a_comma_is_refused_before_any_call(
    oauth_client: CapillaryClient, upstream: Upstream
) -> None:
    with pytest.raises(ValueError, match="comma"):
        await oauth_client.is_redeemable(ALICE, ["A,B"])
    assert upstream.sandbox.call_count("is_redeemable") == 0


async def test_redeem_one_code(capillary: CapillaryClient, upstream: Upstream) -> None:
    reply = await capillary.redeem(ALICE, "ABS-ALICE-1", bill_amount=Decimal("2000.00"), transaction_number="T-1")
    item = reply.redemption[0]
    assert reply.verdict(item) == Said(True, 700, "Coupon processing successful")
    assert item.series_id == DEMO.series_of("abs").id
    assert item.discount_rule is not None
    assert item.discount_rule[:2] == ("ABS", Decimal(100))
    [redemption] = upstream.sandbox.redemptions_of("ABS-ALICE-1")
    assert item.capillary_redemption_id == redemption.id
    assert (redemption.transaction_number, redemption.bill_amount) == ("T-1", Decimal("2000.00"))


async def test_a_refused_redeem_returns_its_verdict(capillary: CapillaryClient, upstream: Upstream) -> None:
    reply = await capillary.redeem(ALICE, "ABS-ALICE-USED", bill_amount=Decimal(10), transaction_number="T-2")
    verdict = reply.verdict(reply.redemption[0])
    assert verdict is not None
    assert (verdict.ok, verdict.code) == (False, 711)
    assert len(upstream.sandbox.redemptions_of("ABS-ALICE-USED")) == 1  # only the seeded one


async def test_bulk_redeem_and_its_all_or_nothing_refusal(capillary: CapillaryClient, upstream: Upstream) -> None:
    refused = await capillary.bulk_redeem(
        ALICE, ["ABS-ALICE-2", "ABS-ALICE-EXP"], bill_amount=Decimal(500), transaction_number="T-3"
    )
    assert {e.result.code: getattr(refused.verdict(e), "code", None) for e in refused.response if e.result} == {
        "ABS-ALICE-2": 749,
        "ABS-ALICE-EXP": 713,
    }
    assert not upstream.sandbox.redemptions_of("ABS-ALICE-2")

    done = await capillary.bulk_redeem(
        ALICE, ["ABS-ALICE-2", "PERC-ALICE-1"], bill_amount=Decimal(500), transaction_number="T-4"
    )
    assert all(getattr(done.verdict(e), "ok", False) for e in done.response)
    assert {e.result.code for e in done.response if e.result} == {"ABS-ALICE-2", "PERC-ALICE-1"}
    assert [r.transaction_number for r in upstream.sandbox.redemptions_of("PERC-ALICE-1")] == ["T-4"]


async def test_unknown_customer_is_a_typed_refusal(capillary: CapillaryClient) -> None:
    with pytest.raises(CapillaryHTTPError) as caught:
        await capillary.bulk_redeem(
            Customer(mobile="919911111111"),
            ["ABS-ALICE-1", "ABS-ALICE-2"],
            bill_amount=Decimal(1),
            transaction_number="T",
        )
    assert (caught.value.http_status, caught.value.code) == (400, 701)
    assert caught.value.request_id
    assert not caught.value.maybe_applied


async def test_reactivate_undoes_a_redemption(capillary: CapillaryClient, upstream: Upstream) -> None:
    reply = await capillary.redeem(ALICE, "ABS-ALICE-1", bill_amount=Decimal(300), transaction_number="T-5")
    redemption_id = reply.redemption[0].capillary_redemption_id
    assert redemption_id is not None
    assert (await capillary.reactivate([redemption_id])).success
    again = await capillary.redeem(ALICE, "ABS-ALICE-1", bill_amount=Decimal(300), transaction_number="T-6")
    assert getattr(again.verdict(again.redemption[0]), "ok", False)
    with pytest.raises(CapillaryHTTPError) as caught:
        await capillary.reactivate([987654321])
    assert caught.value.code == 510


async def test_customer_coupons_show_redemptions_with_transaction_numbers(capillary: CapillaryClient) -> None:
    await capillary.redeem(ALICE, "CAP-ALICE-1", bill_amount=Decimal(1000), transaction_number="T-7")
    reply = await capillary.customer_coupons(ALICE)
    by_code = {c.code: c for c in reply.data}
    assert [r.transaction_number for r in by_code["CAP-ALICE-1"].redemptions] == ["T-7"]
    assert [r.transaction_number for r in by_code["ABS-ALICE-USED"].redemptions] == ["SEED-TXN-0001"]


async def test_series_details_in_one_call(capillary: CapillaryClient, upstream: Upstream) -> None:
    capped, perc = DEMO.series_of("perc_capped").id, DEMO.series_of("perc").id
    reply = await capillary.series([capped, perc, 99999])
    by_id = {s.id: s for s in reply.entity}
    assert set(by_id) == {capped, perc}
    assert (by_id[capped].discount_type, by_id[capped].discount_value, by_id[capped].discount_upto) == (
        "PERC",
        Decimal(20),
        Decimal(150),
    )
    assert [w.code for w in reply.warnings] == [755]
    assert upstream.sandbox.call_count("series_get") == 1
    with pytest.raises(CapillaryHTTPError) as caught:
        await capillary.series([99999])
    assert caught.value.code == 755


async def test_create_series_then_issue_from_it(capillary: CapillaryClient) -> None:
    spec = SeriesSpec(
        description="Integration 12% off",
        discount_type="PERC",
        discount_value=Decimal(12),
        discount_upto=Decimal(60),
        discount_code="INTEG12",
        valid_till_date="2031-01-01T00:00:00+00:00",
        min_bill_amount=Decimal(100),
        max_bill_amount=Decimal(10000),
    )
    series = await capillary.create_series(spec)
    assert (series.discount_type, series.discount_value, series.discount_upto) == ("PERC", Decimal(12), Decimal(60))
    with pytest.raises(CapillaryHTTPError) as caught:
        await capillary.create_series(spec)
    assert caught.value.code == 751

    coupon = await capillary.issue(series.id, BOB)
    assert coupon.code
    assert coupon.series_id == series.id
    details = await capillary.coupon_details(codes=[coupon.code])
    assert [(c.code, c.series_id) for c in details.data] == [(coupon.code, series.id)]


async def test_issue_refusals(capillary: CapillaryClient) -> None:
    with pytest.raises(CapillaryHTTPError) as unknown_customer:
        await capillary.issue(DEMO.series_of("abs").id, Customer(mobile="919911111111"))
    assert unknown_customer.value.code == 701
    with pytest.raises(CapillaryHTTPError) as limit:
        await capillary.issue(DEMO.series_of("one_per_customer").id, ALICE)
    assert limit.value.code == 722


async def test_bulk_issue_reports_each_series(capillary: CapillaryClient) -> None:
    reply = await capillary.bulk_issue([DEMO.series_of("abs").id, DEMO.series_of("one_per_customer").id], ALICE)
    by_series = {e.entity_id: e for e in reply.response}
    assert by_series[DEMO.series_of("abs").id].result is not None
    assert [e.code for e in by_series[DEMO.series_of("one_per_customer").id].errors] == [722]


async def test_coupon_details_by_customer(capillary: CapillaryClient) -> None:
    reply = await capillary.coupon_details(customer_ids=[DEMO.customer("carol").id])
    assert {c.code for c in reply.data} == set(DEMO.codes("abs", "carol") + DEMO.codes("perc", "carol")) | set(
        DEMO.codes("multi_use", "carol")
    )


async def test_coupon_upload_job_progresses(capillary: CapillaryClient, upstream: Upstream) -> None:
    series_id = DEMO.series_of("any_user").id
    csv = b"mobile,code\n919900000002,UPL-0001\n919900000003,UPL-0002\nnot-a-mobile,UPL-0003\n"
    started = await capillary.upload_coupons(series_id, csv, identifier_type="MOBILE", identifier_column=0)
    assert started.result is not None
    [job] = started.result.jobs
    assert job.status == "STARTED"
    upstream.sandbox.advance(5)
    status = await capillary.upload_status(series_id)
    assert status.result is not None
    finished = next(j for j in status.result.jobs if j.job_id == job.job_id)
    assert finished.status == "FINISHED"
    assert (finished.actual_row_count, finished.total_uploaded_count, finished.error_count) == (3, 2, 1)
    assert upstream.sandbox.coupon("UPL-0001").series_id == series_id


async def test_redeemed_upload_job_progresses(capillary: CapillaryClient, upstream: Upstream) -> None:
    series_id = DEMO.series_of("perc").id
    csv = b"redeemedDateInMillis,redeemedAt,mobile,couponCode\n1893456000000,S001,919900000002,PERC-BOB-1\n"
    headers = {"redeemedDateInMillis": 0, "redeemedAt": 1, "mobile": 2, "couponCode": 3}
    queued = await capillary.upload_redeemed_coupons(
        series_id,
        csv,
        customer_identifier="MOBILE",
        coupon_identifier="COUPON_CODE",
        upload_headers=headers,
        details="till offline",
    )
    assert queued.result is not None
    [job] = queued.result.jobs
    assert job.status == "QUEUED"
    upstream.sandbox.advance(5)
    status = await capillary.redeemed_upload_status(series_id)
    assert status.result is not None
    done = next(j for j in status.result.jobs if j.job_id == job.job_id)
    assert (done.status, done.total_uploaded_count, done.error_count) == ("COMPLETED", 1, 0)
    assert len(upstream.sandbox.redemptions_of("PERC-BOB-1")) == 1
