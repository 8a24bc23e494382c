"""Reading a verdict per code from the shapes the documents show, the silent cases included."""

from __future__ import annotations

import msgspec

from service.capillary.models import BulkRedeemResponse, RedeemResponse, Said, decode


def _bulk(*entries: dict[str, object], **top: object) -> BulkRedeemResponse:
    return decode(BulkRedeemResponse, msgspec.json.encode({"response": list(entries), **top}))


def _entry(code: str, errors: list[dict[str, object]] | None = None) -> dict[str, object]:
    """The bulk sample's entry, without the nested per-item status (a result that says nothing of itself)."""
    return {"entityId": 1, "result": {"id": 1, "code": code, "warnings": []}, "errors": errors or []}


def test_a_silent_entry_beside_a_refused_one_was_refused_too() -> None:
    """All or nothing: without failureCount, an entry that says nothing is a sibling of the refusal, never done."""
    reply = _bulk(_entry("A", [{"status": False, "code": 711, "message": "used"}]), _entry("B"))
    a, b = reply.response
    assert reply.verdict(a) == Said(False, 711, "used")
    assert reply.verdict(b) == Said(False, 749, None)


def test_silent_entries_of_a_call_with_no_refusal_leave_it_to_the_http_status() -> None:
    reply = _bulk(_entry("A"), _entry("B"), totalCount=2, failureCount=0)
    assert [reply.verdict(e) for e in reply.response] == [None, None]


def test_a_warning_is_no_verdict_and_names_a_failures_reason_only() -> None:
    warned = {"code": 704, "status": False, "message": "Error sending coupon"}
    done = decode(
        RedeemResponse,
        msgspec.json.encode(
            {
                "redemption": [{"id": 5, "code": "A", "warnings": [warned]}],
                "redemptionStatus": {"status": True, "code": 700, "message": "ok"},
            }
        ),
    )
    assert done.verdict(done.redemption[0]) == Said(True, 700, "ok")
    refused = decode(
        RedeemResponse,
        msgspec.json.encode(
            {
                "redemption": [{"id": -1, "code": "A", "warnings": [{"code": 713, "message": "expired"}]}],
                "redemptionStatus": {"status": False, "code": 709, "message": "failed"},
            }
        ),
    )
    assert refused.verdict(refused.redemption[0]) == Said(False, 709, "failed")
    vague = decode(
        RedeemResponse,
        msgspec.json.encode(
            {
                "redemption": [{"id": -1, "code": "A", "warnings": [{"code": 713, "message": "expired"}]}],
                "redemptionStatus": {"status": False, "message": "failed"},
            }
        ),
    )
    assert vague.verdict(vague.redemption[0]) == Said(False, 713, "expired")  # the warning names the reason
