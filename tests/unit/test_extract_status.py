"""Where Capillary's status code hides, in the order capillary-notes.md gives."""

from __future__ import annotations

from typing import Any

import pytest

from service.capillary.errors import extract_status

ITEM_FAIL = {"code": "A", "redemptionStatus": {"statusCode": {"status": False, "code": 713, "message": "expired"}}}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # bulk: the coupon's own error beats a sibling's 749, whatever the order
        (
            {
                "response": [
                    {"errors": [{"code": 749, "message": "sibling"}]},
                    {"errors": [{"code": 711, "message": "used"}]},
                ]
            },
            (711, "used"),
        ),
        ({"response": [{"errors": [{"code": 749, "message": "sibling"}]}]}, (749, "sibling")),
        ({"response": [{"errors": [], "result": ITEM_FAIL}]}, (713, "expired")),
        ({"response": [{"result": {"redemptionStatus": {"code": 702, "message": "m"}}}]}, (702, "m")),
        # single redeem: nested status, then item warnings, then the aggregate
        ({"redemption": [ITEM_FAIL], "redemptionStatus": {"code": 709}}, (713, "expired")),
        ({"redemption": [{"warnings": [{"code": "735", "message": "store"}]}]}, (735, "store")),
        ({"redemption": [{"warnings": []}], "redemptionStatus": {"code": 710, "message": "x"}}, (710, "x")),
        # flat bodies and error lists
        ({"status": False, "code": 701, "message": "customer"}, (701, "customer")),
        ({"data": None, "errors": [{"code": 401, "message": "bad key"}]}, (401, "bad key")),
        ({"entity": [], "warnings": [{"status": False, "code": 755, "message": "series"}]}, (755, "series")),
    ],
)
def test_code_is_found(body: Any, expected: tuple[int, str]) -> None:
    assert extract_status(body) == expected


@pytest.mark.parametrize(
    "body", [None, [], "error", {}, {"success": False, "status": 400, "message": "m"}, {"code": True}]
)
def test_no_code_is_invented(body: Any) -> None:
    assert extract_status(body) is None
