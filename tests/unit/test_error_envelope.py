"""The one error builder: the envelope's inner object, the whole envelope, and a refusal's status from the catalog."""

from __future__ import annotations

import msgspec
import pytest

from service.redemption.catalog import CATALOG
from service.redemption.models import Failure
from service.web.errors import detail, error_body, error_detail, refusal_status, upstream_detail

ENCODE = msgspec.json.encode


def test_the_catalog_message_unless_one_is_given() -> None:
    error = CATALOG["COUPON_EXPIRED"]
    assert error_detail(error, "r1").message == error.message
    assert error_detail(error, "r1", message="Expired on 1 May.").message == "Expired on 1 May."
    assert error_detail(error, "r1", message="").message == ""  # an empty message is still the one given


def test_the_envelope_on_the_wire() -> None:
    error = CATALOG["UPSTREAM_ERROR"]
    body = error_body(error, "r2", upstream=upstream_detail(500, "Internal"))
    assert msgspec.json.decode(ENCODE(body)) == {
        "error": {
            "code": "UPSTREAM_ERROR",
            "message": error.message,
            "retryable": False,
            "upstream": {"code": 500, "message": "Internal"},
            "requestId": "r2",
        }
    }


def test_upstream_is_null_unless_capillary_said_something() -> None:
    assert upstream_detail(None, None) is None
    assert upstream_detail(None, "x") is not None
    assert upstream_detail(0, None) is not None


def test_a_failure_and_the_builder_give_the_same_detail() -> None:
    failure = Failure(CATALOG["COUPON_ALREADY_REDEEMED"], upstream_code=700, upstream_message="used")
    built = error_detail(failure.error, "r3", upstream=upstream_detail(700, "used"))
    assert ENCODE(detail(failure, "r3")) == ENCODE(built)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("COUPON_ALREADY_REDEEMED", 409),
        ("CUSTOMER_NOT_FOUND", 404),
        ("COUPON_NOT_FOUND", 404),
        ("COUPON_EXPIRED", 422),
        ("BILL_AMOUNT_NOT_ELIGIBLE", 422),
        ("INVALID_REQUEST", 400),
        ("UPSTREAM_ERROR", 422),  # not a client's status: the refusal is still the client's answer
        ("REDEMPTION_NOT_APPLIED", 422),
    ],
)
def test_a_refusal_takes_its_status_from_the_catalog(code: str, status: int) -> None:
    assert refusal_status(CATALOG[code]) == status
