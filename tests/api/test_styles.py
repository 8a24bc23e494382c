"""The same till session against each shape of Capillary's redeem answers gives the same answers.

One gateway in front of a sandbox that answers in the documented shape, another in front of one answering in the
nested shape, a third in front of one alternating between them: validate, redeem one code, redeem five, a refused
code, partial mode. Every answer must be the same but for what is unique to a run (refs, redemption ids, request
ids).
"""

from __future__ import annotations

from typing import Any

from service.sandbox import DEMO
from tests.conftest import StartGateway, StartUpstream

ALICE = {"mobile": DEMO.customer("alice").mobile}
BOB = {"mobile": DEMO.customer("bob").mobile}
UNIQUE = {"ref", "redemptionId", "requestId"}

SESSION: list[tuple[str, dict[str, Any]]] = [
    ("validate", {"customer": ALICE, "codes": ["ABS-ALICE-1", "PERC-ALICE-1", "ABS-ALICE-USED"], "billAmount": "2000"}),
    ("redeem", {"customer": ALICE, "codes": ["ABS-ALICE-1"], "billAmount": "2000", "transactionNumber": "S-1"}),
    (
        "redeem",
        {
            "customer": ALICE,
            "codes": ["ABS-ALICE-2", "PERC-ALICE-1", "CAP-ALICE-1", "ANY-0001", "GIFT+2/X%"],
            "billAmount": "5000",
            "transactionNumber": "S-2",
        },
    ),
    ("redeem", {"customer": ALICE, "codes": ["ABS-ALICE-USED"], "billAmount": "2000", "transactionNumber": "S-3"}),
    (
        "redeem",
        {
            "customer": BOB,
            "codes": ["ABS-BOB-1", "ABS-ALICE-EXP"],
            "billAmount": "900",
            "transactionNumber": "S-4",
            "mode": "partial",
        },
    ),
]


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("<unique>" if k in UNIQUE and v is not None else _stable(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


async def _session(start_upstream: StartUpstream, start_gateway: StartGateway, style: str) -> list[Any]:
    upstream = await start_upstream(response_style=style)
    gateway = await start_gateway(upstream)
    answers = []
    for route, body in SESSION:
        path = "/v1/redemptions/validate" if route == "validate" else "/v1/redemptions"
        response = await gateway.post(path, json=body)
        answers.append((response.status, _stable(await response.json())))
    return answers


async def test_every_answer_shape_gives_the_same_answers(
    start_upstream: StartUpstream, start_gateway: StartGateway
) -> None:
    doc = await _session(start_upstream, start_gateway, "doc")
    assert [status for status, _ in doc] == [200, 200, 200, 409, 200]
    assert doc[1][1]["status"] == "redeemed"
    assert doc[2][1]["status"] == "redeemed"
    assert doc[4][1]["status"] == "partially_redeemed"
    assert await _session(start_upstream, start_gateway, "nested") == doc
    assert await _session(start_upstream, start_gateway, "mixed") == doc
