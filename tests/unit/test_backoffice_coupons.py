"""The coupon and series use cases over a fake upstream, and the Capillary adapter's mapping of answers and
failures into the back office's words."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from service.backoffice.coupons import CouponOffice, series_problem
from service.backoffice.errors import BackOfficeError
from service.backoffice.models import Details, Issued, Lookup, SeriesDraft
from service.capillary.admin import coupon_of, domain_errors, job_of
from service.capillary.errors import (
    CapillaryConnectionError,
    CapillaryHTTPError,
    CapillaryNotConfigured,
    CapillaryTimeoutError,
    CapillaryUnavailable,
)
from service.capillary.models import Coupon as UpstreamCoupon
from service.capillary.models import CustomerInfo, SeriesSpec, UploadJob
from service.redemption.catalog import CATALOG
from service.redemption.flow import UpstreamFailure
from service.redemption.models import CustomerRef, Failure
from tests.unit.backoffice_fakes import KNOWN_SERIES, FakeAdmin, coupon

ALICE = CustomerRef("mobile", "919900000001")
NOT_FOUND = Failure(CATALOG["COUPON_NOT_FOUND"], 702, "Coupon code not found")


async def test_a_bulk_issue_names_each_series_once() -> None:
    admin = FakeAdmin(issued=[Issued(1, coupon("A"), None), Issued(2, None, NOT_FOUND)])
    office = CouponOffice(admin)
    with pytest.raises(BackOfficeError) as caught:
        await office.bulk_issue([1, 1], ALICE, None)
    assert caught.value.message == "seriesIds: each series once"
    done = await office.bulk_issue([1, 2], ALICE, None)
    assert (done.issued, done.first_failure) == (1, NOT_FOUND)


async def test_misses_are_named_when_they_match_the_values_that_found_nothing() -> None:
    admin = FakeAdmin(details_answer=Details([coupon("FOUND-1", id=5)], [NOT_FOUND, NOT_FOUND]))
    found = await CouponOffice(admin).find(Lookup(["FOUND-1", "GONE-1"], [6], []))
    assert [(m.coupon_code, m.coupon_id) for m in found.misses] == [("GONE-1", None), (None, 6)]
    # one error for two values that found nothing: no guess
    admin.details_answer = Details([coupon("FOUND-1", id=5)], [NOT_FOUND])
    found = await CouponOffice(admin).find(Lookup(["FOUND-1", "GONE-1"], [6], []))
    assert [(m.coupon_code, m.coupon_id, m.failure) for m in found.misses] == [(None, None, NOT_FOUND)]


async def test_a_lookup_that_finds_nothing_is_refused_naming_the_value() -> None:
    admin = FakeAdmin(details_answer=Details([], [NOT_FOUND]))
    with pytest.raises(BackOfficeError) as caught:
        await CouponOffice(admin).find(Lookup(["GONE-1"], [], []))
    assert caught.value.error.code == "COUPON_NOT_FOUND"
    assert caught.value.message == f"coupon code GONE-1: {CATALOG['COUPON_NOT_FOUND'].message}"
    assert caught.value.said == NOT_FOUND


def _draft(**fields: Any) -> SeriesDraft:
    body = {"description": "Spring", "discountType": "ABS", "discountValue": "5", **fields}
    return msgspec.convert(body, SeriesDraft)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"description": "   "}, "description: 1 to 255 characters"),
        ({"discountValue": "0"}, "discountValue: a positive amount"),
        ({"discountType": "PERC", "discountValue": "101"}, "discountValue: a percentage of at most 100"),
        ({"discountValue": "1000000001"}, "discountValue: at most 1000000000"),
        ({"discountUpto": "-1"}, "discountUpto: from 0 to 1000000000"),
        ({"minBillAmount": "1.005"}, "minBillAmount: at most 2 decimals"),
        ({"minBillAmount": "9", "maxBillAmount": "1"}, "minBillAmount: not more than maxBillAmount"),
        ({"redemptionValidFrom": "soon"}, "redemptionValidFrom: an ISO-8601 date-time"),
        ({"validTillDate": "2031-01-01T00:00:00+00:00", "minBillAmount": "1.50"}, None),
    ],
)
def test_the_rules_of_a_series_between_its_fields(fields: dict[str, Any], problem: str | None) -> None:
    assert series_problem(_draft(**fields)) == problem


async def test_a_series_with_a_problem_is_not_sent() -> None:
    admin = FakeAdmin()
    with pytest.raises(BackOfficeError):
        await CouponOffice(admin).create_series(_draft(discountType="PERC", discountValue="150"))
    created = await CouponOffice(admin).create_series(_draft())
    assert created.description == "Spring"
    assert len(admin.drafts) == 1


def test_a_draft_becomes_the_upstreams_series_by_the_same_names() -> None:
    draft = _draft(isSMSDisabled=True, targetUserDetails={"validMaxUserTransactionLimit": 2}, maxRedeem=-1)
    spec = msgspec.convert(draft, SeriesSpec, from_attributes=True)
    sent = msgspec.json.decode(msgspec.json.encode(spec))
    assert sent == {
        "description": "Spring",
        "discountType": "ABS",
        "discountValue": "5",
        "isSMSDisabled": True,
        "maxRedeem": -1,
        "targetUserDetails": {"validMaxUserTransactionLimit": 2},
    }


# ---- the Capillary adapter


def test_a_coupons_owner_is_named_only_when_the_upstream_names_one() -> None:
    owned = UpstreamCoupon(code="C-1", id=9, series_id=KNOWN_SERIES, customer=CustomerInfo(id=42))
    assert (coupon_of(owned).code, coupon_of(owned).customer_id, coupon_of(owned).id) == ("C-1", 42, 9)
    assert coupon_of(UpstreamCoupon(code="C-2", customer=CustomerInfo(id=-1))).customer_id is None
    assert coupon_of(UpstreamCoupon(code="C-3")).customer_id is None


def test_an_upstream_job_in_the_gateways_words() -> None:
    job = UploadJob(
        job_id=7,
        upload_redeemed_coupon_status="Completed",
        created_on=1_800_000_000_000,
        updated_on="2027-01-15T10:00:00+00:00",
        uploaded_file_name="mine.csv",
        uploaded_file_url="stored-7.csv",
        error_file_url="errors-7.csv",
        total_uploaded_count=3,
        actual_row_count=4,
        error_count=1,
    )
    view = job_of("redemptions", KNOWN_SERIES, job)
    assert (view.job_id, view.upstream_job_id, view.status, view.upstream_status) == (None, 7, "finished", "Completed")
    assert (view.counts.rows, view.counts.uploaded, view.counts.errors) == (4, 3, 1)
    assert (view.file_name, view.upstream_file_name) == ("mine.csv", "stored-7.csv")
    assert view.error_file_name == "errors-7.csv"
    assert view.created_at is not None
    assert view.created_at.year == 2027
    assert view.updated_at is not None
    assert view.updated_at.month == 1
    assert job_of("coupons", KNOWN_SERIES, UploadJob(job_id=8, created_on="later")).created_at is None


@pytest.mark.parametrize(
    ("error", "upload", "maybe_applied"),
    [
        (CapillaryTimeoutError("upload_coupons", "read timeout", maybe_applied=True), True, True),
        (CapillaryConnectionError("upload_coupons", "reset", maybe_applied=True), True, True),
        (CapillaryHTTPError("upload_coupons", "bad", http_status=500, maybe_applied=True), True, False),
        (CapillaryTimeoutError("issue", "read timeout", maybe_applied=True), False, True),
    ],
)
def test_only_an_unanswered_upload_may_have_been_taken(error: Exception, upload: bool, maybe_applied: bool) -> None:
    with pytest.raises(UpstreamFailure) as caught, domain_errors(upload=upload):
        raise error
    assert caught.value.maybe_applied is maybe_applied


def test_a_missing_setting_is_named_and_an_open_circuit_says_when() -> None:
    with pytest.raises(BackOfficeError) as caught, domain_errors():
        raise CapillaryNotConfigured("upload_coupons", "set CAPILLARY_CLIENT_KEY")
    assert (caught.value.error.code, caught.value.message) == ("UPSTREAM_UNAVAILABLE", "set CAPILLARY_CLIENT_KEY")
    with pytest.raises(UpstreamFailure) as shut, domain_errors(upload=True):
        raise CapillaryUnavailable("upload_coupons", "circuit open", reason="circuit_open", retry_after=2.5)
    assert (shut.value.failure.error.code, shut.value.retry_after) == ("UPSTREAM_UNAVAILABLE", 3)
