"""One canonical JSON line per request, with its request id and what a support engineer needs; identifiers
masked; nothing secret."""

from __future__ import annotations

from service.sandbox import DEMO, Fault, FaultKind
from tests.conftest import FORBIDDEN_IN_LOGS, GatewayClient, LogCapture, Upstream


async def test_one_canonical_line_per_request(
    gateway: GatewayClient, upstream: Upstream, captured_logs: LogCapture
) -> None:
    alice, bob = DEMO.customer("alice"), DEMO.customer("bob")
    requests = [
        (
            "redeem-1",
            "/v1/redemptions",
            {
                "customer": {"email": alice.email},
                "codes": ["ABS-ALICE-1"],
                "billAmount": "500",
                "transactionNumber": "T-LOG-1",
            },
        ),
        (
            "validate-1",
            "/v1/redemptions/validate",
            {"customer": {"externalId": bob.external_id}, "codes": ["PERC-BOB-1"], "billAmount": "500"},
        ),
        ("bad-1", "/v1/redemptions", {"customer": {"mobile": bob.mobile}}),
    ]
    for request_id, path, body in requests:
        response = await gateway.post(path, json=body, headers={"X-Request-ID": request_id})
        assert response.headers["X-Request-ID"] == request_id
    await gateway.get("/v1/series/10001", headers={"X-Request-ID": "series-1"})

    canonical = [line for line in captured_logs.lines() if line.get("event") == "request"]
    assert [line["request_id"] for line in canonical] == ["redeem-1", "validate-1", "bad-1", "series-1"]
    redeem = canonical[0]
    assert (redeem["route"], redeem["method"], redeem["status"], redeem["outcome"]) == (
        "/v1/redemptions",
        "POST",
        200,
        "redeemed",
    )
    assert redeem["transaction_number"] == "T-LOG-1"
    assert redeem["customer"] == {"email": "a***@example.com"}
    assert redeem["ref"].startswith("rdm_")
    assert len(redeem["upstream_request_ids"]) >= 2
    assert redeem["duration_ms"] > 0
    assert canonical[1]["customer"] == {"externalId": "EX****02"}
    assert (canonical[2]["status"], canonical[2]["error_code"]) == (400, "INVALID_REQUEST")
    assert all(line["level"] == "info" and line["timestamp"] for line in canonical)

    upstream_lines = [line for line in captured_logs.lines() if line.get("event") == "upstream call"]
    assert {line["operation"] for line in upstream_lines} >= {"is_redeemable", "redeem"}
    assert all(line["level"] == "debug" for line in upstream_lines)
    assert not [v for v in FORBIDDEN_IN_LOGS if v in captured_logs.text]


async def test_a_failing_call_logs_its_capillary_request_id(
    gateway: GatewayClient, upstream: Upstream, captured_logs: LogCapture
) -> None:
    # a read: the first attempt and its two retries fail
    upstream.sandbox.add_fault(Fault(FaultKind.HTTP_ERROR, "is_redeemable", status=503, times=3))
    body = {"customer": {"mobile": DEMO.customer("carol").mobile}, "codes": ["ABS-CAROL-1"], "billAmount": "9"}
    response = await gateway.post("/v1/redemptions/validate", json=body)
    assert response.status == 503
    [line] = [line for line in captured_logs.lines() if line.get("event") == "request"]
    calls = upstream.sandbox.calls_of("is_redeemable")
    assert len(calls) == 3
    assert all(call.request_id in line["upstream_request_ids"] for call in calls)
    assert line["customer"] == {"mobile": "91******0003"}
