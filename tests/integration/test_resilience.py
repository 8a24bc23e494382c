"""Deadlines, retries, the circuit breaker and the outbound rate limiter, over real HTTP against the sandbox.

Outcomes are asserted from what the till gets and what the sandbox received (its call counts), never from how
long things took, except for a generous "answered by its deadline" bound.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.config import Settings, StateSettings
from service.sandbox import DEMO, Fault, FaultKind
from tests.conftest import ADMIN_KEY, TEST_ACCESS, TEST_KEYS, GatewayClient, Upstream, bearer

ALICE = {"mobile": DEMO.customer("alice").mobile}
VALIDATE = "/v1/redemptions/validate"
REDEEM = "/v1/redemptions"
ABS, PERC, CAPPED = (DEMO.series_of(k).id for k in ("abs", "perc", "perc_capped"))


def _body(*codes: str, txn: str = "T-RES-1", **extra: Any) -> dict[str, Any]:
    return {"customer": ALICE, "codes": list(codes), "billAmount": "1000.00", "transactionNumber": txn, **extra}


@pytest.fixture
def make_gateway(aiohttp_client: Any, upstream: Upstream) -> Any:
    """A gateway whose Capillary resilience settings the test chooses (``CapillarySettings`` field names)."""

    async def make(
        *, deadline: float = 10.0, timeout: float = 5.0, state: StateSettings | None = None, **capillary: Any
    ) -> GatewayClient:
        settings = Settings(
            capillary=dataclasses.replace(upstream.settings("oauth", timeout=timeout), **capillary),
            state=state or StateSettings(),
            access=TEST_ACCESS,
            request_deadline=deadline,
        )
        app = create_app(settings, keys=TEST_KEYS)
        client: TestClient[Any, Any] = await aiohttp_client(app, headers=bearer(ADMIN_KEY))
        return client

    return make


async def _metrics(gateway: GatewayClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = await (await gateway.get("/metrics")).text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _metric(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def _ready(gateway: GatewayClient) -> dict[str, Any]:
    response = await gateway.get("/readyz")
    assert response.status == 200  # ready or degraded: never unready because of Capillary
    payload: dict[str, Any] = await response.json()
    return payload


def _host(upstream: Upstream) -> str:
    return upstream.url.removeprefix("http://")


# ---------------------------------------------------------------------------------------------- breaker

BREAKER = {"breaker_min_calls": 4, "breaker_open_seconds": 0.5, "breaker_probes": 2, "retry_attempts": 0}


async def _open_the_breaker(gateway: GatewayClient, upstream: Upstream, series_id: int = ABS) -> None:
    """Series reads fail until the breaker opens; then a read is refused without reaching the sandbox."""
    upstream.sandbox.add_fault(Fault(FaultKind.HTTP_ERROR, "series_get", status=503, times=None))
    for _ in range(10):
        before = upstream.sandbox.call_count()
        response = await gateway.get(f"/v1/series/{series_id}")
        payload = await response.json()
        assert (response.status, payload["error"]["code"]) == (503, "UPSTREAM_UNAVAILABLE")
        if upstream.sandbox.call_count() == before:  # refused by the open breaker: nothing sent
            assert int(response.headers["Retry-After"]) >= 1
            break
    else:
        pytest.fail("the breaker never opened")
    assert upstream.sandbox.call_count("series_get") == 4  # min_calls failures, then no more calls


async def test_breaker_opens_half_opens_and_closes(make_gateway: Any, upstream: Upstream) -> None:
    gateway = await make_gateway(**BREAKER)
    host = _host(upstream)
    await _open_the_breaker(gateway, upstream)

    ready = await _ready(gateway)
    assert (ready["status"], ready["breakers"]) == ("degraded", {host: "open"})
    samples = await _metrics(gateway)
    assert _metric(samples, "pos_coupon_upstream_breaker_state", host=host, state="open") == 1
    assert _metric(samples, "pos_coupon_upstream_breaker_state", host=host, state="closed") == 0
    assert _metric(samples, "pos_coupon_upstream_breaker_transitions_total", host=host, state="open") == 1
    assert _metric(samples, "pos_coupon_upstream_rejected_total", reason="circuit_open", priority="check") >= 1

    # Every call to the host is refused while open, validation included: 503 at once, nothing sent.
    before = upstream.sandbox.call_count()
    response = await gateway.post(VALIDATE, json={"customer": ALICE, "codes": ["ABS-ALICE-1"], "billAmount": "10"})
    assert (response.status, (await response.json())["error"]["code"]) == (503, "UPSTREAM_UNAVAILABLE")
    assert response.headers["Retry-After"]
    assert upstream.sandbox.call_count() == before

    upstream.sandbox.faults.clear()  # Capillary recovers
    await asyncio.sleep(0.6)  # the cool-down
    assert (await gateway.get(f"/v1/series/{ABS}")).status == 200  # the first probe
    assert (await _ready(gateway))["breakers"] == {host: "half_open"}
    assert (await gateway.get(f"/v1/series/{PERC}")).status == 200  # the second probe closes it
    ready = await _ready(gateway)
    assert (ready["breakers"], ready["status"]) == ({host: "closed"}, "ready")
    samples = await _metrics(gateway)
    assert _metric(samples, "pos_coupon_upstream_breaker_state", host=host, state="closed") == 1
    for state in ("open", "half_open", "closed"):
        assert _metric(samples, "pos_coupon_upstream_breaker_transitions_total", host=host, state=state) == 1
    validated = await gateway.post(VALIDATE, json={"customer": ALICE, "codes": ["ABS-ALICE-1"], "billAmount": "10"})
    assert validated.status == 200


async def test_a_redeem_refused_by_the_open_breaker_applied_nothing_and_can_be_sent_again(
    make_gateway: Any, upstream: Upstream
) -> None:
    gateway = await make_gateway(**BREAKER)
    await _open_the_breaker(gateway, upstream)
    before = upstream.sandbox.call_count()
    response = await gateway.post(REDEEM, json=_body("ABS-ALICE-1"))
    payload = await response.json()
    assert (response.status, payload["error"]["code"], payload["error"]["retryable"]) == (
        503,
        "UPSTREAM_UNAVAILABLE",
        True,
    )
    assert response.headers["Retry-After"]
    assert upstream.sandbox.call_count() == before  # nothing sent, nothing applied
    upstream.sandbox.faults.clear()
    await asyncio.sleep(0.6)  # the cool-down
    again = await gateway.post(REDEEM, json=_body("ABS-ALICE-1"))  # the same request, natural key
    assert (again.status, (await again.json())["status"]) == (200, "redeemed")
    assert len(upstream.sandbox.redemptions_of("ABS-ALICE-1")) == 1


async def test_a_failing_probe_opens_the_breaker_again(make_gateway: Any, upstream: Upstream) -> None:
    gateway = await make_gateway(**BREAKER)
    await _open_the_breaker(gateway, upstream)
    await asyncio.sleep(0.6)  # cool-down over, Capillary still failing
    calls = upstream.sandbox.call_count("series_get")
    assert (await gateway.get(f"/v1/series/{ABS}")).status == 503  # the probe, sent and failed
    assert upstream.sandbox.call_count("series_get") == calls + 1
    assert (await gateway.get(f"/v1/series/{ABS}")).status == 503  # refused again at once
    assert upstream.sandbox.call_count("series_get") == calls + 1
    samples = await _metrics(gateway)
    host = _host(upstream)
    assert _metric(samples, "pos_coupon_upstream_breaker_transitions_total", host=host, state="open") == 2
    assert (await _ready(gateway))["breakers"] == {host: "open"}


async def test_slow_calls_open_the_breaker(make_gateway: Any, upstream: Upstream) -> None:
    gateway = await make_gateway(
        breaker_min_calls=2, breaker_slow_call_seconds=0.1, breaker_slow_call_ratio=0.5, breaker_open_seconds=30
    )
    upstream.sandbox.add_fault(Fault(FaultKind.LATENCY, "series_get", delay_seconds=0.2, times=None))
    for series_id in (ABS, PERC):
        assert (await gateway.get(f"/v1/series/{series_id}")).status == 200  # slow, but answered
    response = await gateway.get(f"/v1/series/{CAPPED}")
    assert response.status == 503
    assert int(response.headers["Retry-After"]) > 1  # most of the 30 s cool-down
    assert upstream.sandbox.call_count("series_get") == 2
    assert (await _ready(gateway))["breakers"] == {_host(upstream): "open"}


# ---------------------------------------------------------------------------------------------- deadlines


async def test_a_till_gets_504_by_the_deadline_it_asked_for(make_gateway: Any, upstream: Upstream) -> None:
    gateway = await make_gateway()
    upstream.sandbox.add_fault(Fault(FaultKind.LATENCY, "is_redeemable", delay_seconds=3, times=None))
    body = {"customer": ALICE, "codes": ["ABS-ALICE-1"], "billAmount": "10"}
    started = time.monotonic()
    response = await gateway.post(VALIDATE, json=body, headers={"X-Request-Deadline-Ms": "400"})
    assert time.monotonic() - started < 0.4 + 1.0
    payload = await response.json()
    assert (response.status, payload["error"]["code"], payload["error"]["retryable"]) == (504, "UPSTREAM_TIMEOUT", True)


async def test_the_configured_deadline_bounds_every_request(make_gateway: Any, upstream: Upstream) -> None:
    gateway = await make_gateway(deadline=0.4, retry_attempts=2)
    upstream.sandbox.add_fault(Fault(FaultKind.LATENCY, "series_get", delay_seconds=3, times=None))
    started = time.monotonic()
    response = await gateway.get(f"/v1/series/{ABS}")
    assert time.monotonic() - started < 0.4 + 1.0
    assert (response.status, (await response.json())["error"]["code"]) == (504, "UPSTREAM_TIMEOUT")
    assert upstream.sandbox.call_count("series_get") == 1  # no time left to try again


async def test_a_till_cannot_ask_for_more_than_the_configured_deadline(make_gateway: Any, upstream: Upstream) -> None:
    gateway = await make_gateway(deadline=0.4)
    upstream.sandbox.add_fault(Fault(FaultKind.LATENCY, "series_get", delay_seconds=3, times=None))
    response = await gateway.get(f"/v1/series/{ABS}", headers={"X-Request-Deadline-Ms": "60000"})
    assert response.status == 504


async def test_a_short_deadline_does_not_cut_a_shared_lookup_for_the_others(
    make_gateway: Any, upstream: Upstream
) -> None:
    """Two requests wait on one series fetch: the one in a hurry gets its 504, the other its answer."""
    gateway = await make_gateway(deadline=10.0)
    upstream.sandbox.add_fault(Fault(FaultKind.LATENCY, "series_get", delay_seconds=0.6))
    hurried = asyncio.ensure_future(gateway.get(f"/v1/series/{ABS}", headers={"X-Request-Deadline-Ms": "200"}))
    await asyncio.sleep(0.05)  # the hurried request starts the fetch
    patient = await gateway.get(f"/v1/series/{ABS}")
    assert (await hurried).status == 504
    assert patient.status == 200
    assert (await patient.json())["id"] == ABS
    assert upstream.sandbox.call_count("series_get") == 1  # one fetch, shared


@pytest.mark.parametrize("value", ["0", "-5", "1.5", "soon", "99999999999", "199", "²²²"])
async def test_a_bad_deadline_header_is_a_400(make_gateway: Any, upstream: Upstream, value: str) -> None:
    gateway = await make_gateway()
    response = await gateway.get(f"/v1/series/{ABS}", headers={"X-Request-Deadline-Ms": value})
    payload = await response.json()
    assert (response.status, payload["error"]["code"]) == (400, "INVALID_REQUEST")
    assert "X-Request-Deadline-Ms" in payload["error"]["message"]
    assert upstream.sandbox.call_count() == 0


async def test_a_redeem_still_running_at_the_deadline_is_pending_not_failed(
    make_gateway: Any, upstream: Upstream
) -> None:
    """The till's short deadline ends its wait with 202 pending; the redeem already sent is not cut short, and
    the till's retry gets the redeemed answer."""
    state = StateSettings(redeem_deadline=10.0, lease_margin=0.2, reconcile_interval=0.1)
    gateway = await make_gateway(state=state)
    upstream.sandbox.add_fault(Fault(FaultKind.LATENCY, "redeem", delay_seconds=0.8))
    started = time.monotonic()
    response = await gateway.post(REDEEM, json=_body("ABS-ALICE-1"), headers={"X-Request-Deadline-Ms": "300"})
    assert time.monotonic() - started < 0.3 + 1.0
    pending = await response.json()
    assert (response.status, pending["status"]) == (202, "pending")
    for _ in range(50):  # the till polls
        await asyncio.sleep(0.1)
        record = await (await gateway.get(f"{REDEEM}/{pending['ref']}")).json()
        if record["status"] != "pending":
            break
    assert record["status"] == "redeemed"
    assert upstream.sandbox.call_count("redeem") == 1
    assert len(upstream.sandbox.redemptions_of("ABS-ALICE-1")) == 1


# ------------------------------------------------------------------------------------------------ retries


@pytest.mark.parametrize(
    "fault",
    [
        Fault(FaultKind.HTTP_ERROR, "is_redeemable", status=503),
        Fault(FaultKind.RATE_LIMIT, "is_redeemable"),
        Fault(FaultKind.RESET, "is_redeemable"),
        Fault(FaultKind.HTTP_ERROR, "is_redeemable", status=502, times=2),
    ],
    ids=lambda f: f"{f.kind.value}x{f.times}",
)
async def test_reads_are_retried(make_gateway: Any, upstream: Upstream, fault: Fault) -> None:
    gateway = await make_gateway()
    upstream.sandbox.add_fault(fault)
    response = await gateway.post(VALIDATE, json={"customer": ALICE, "codes": ["ABS-ALICE-1"], "billAmount": "10"})
    assert response.status == 200
    assert (await response.json())["coupons"][0]["redeemable"] is True
    assert upstream.sandbox.call_count("is_redeemable") == 1 + (fault.times or 1)
    if fault.kind is not FaultKind.RESET:  # a reset keep-alive connection is retried by aiohttp itself, for a GET
        samples = await _metrics(gateway)
        assert _metric(samples, "pos_coupon_upstream_retries_total", operation="is_redeemable") == fault.times


async def test_retries_stop_after_the_configured_attempts(make_gateway: Any, upstream: Upstream) -> None:
    gateway = await make_gateway(retry_attempts=1)
    upstream.sandbox.add_fault(Fault(FaultKind.HTTP_ERROR, "is_redeemable", status=503, times=None))
    response = await gateway.post(VALIDATE, json={"customer": ALICE, "codes": ["ABS-ALICE-1"], "billAmount": "10"})
    assert response.status == 503
    assert upstream.sandbox.call_count("is_redeemable") == 2


@pytest.mark.parametrize(
    ("fault", "codes"),
    [
        (Fault(FaultKind.HTTP_ERROR, "redeem", status=503), ("ABS-ALICE-1",)),
        (Fault(FaultKind.RATE_LIMIT, "redeem"), ("ABS-ALICE-1",)),
        (Fault(FaultKind.APPLY_THEN_RESET, "redeem"), ("ABS-ALICE-1",)),
        (Fault(FaultKind.HTTP_ERROR, "bulk_redeem", status=503), ("ABS-ALICE-1", "PERC-ALICE-1")),
        (Fault(FaultKind.APPLY_THEN_ERROR, "bulk_redeem", status=502), ("ABS-ALICE-1", "PERC-ALICE-1")),
    ],
    ids=lambda v: f"{v.operation}-{v.kind.value}" if isinstance(v, Fault) else None,
)
async def test_writes_are_never_sent_twice(
    make_gateway: Any, upstream: Upstream, fault: Fault, codes: tuple[str, ...]
) -> None:
    # Room for the check before the write (a 0.5 s call timeout inside a 1 s deadline once left none on a busy
    # CI run: the write was never sent); the answers are the same: the write's fault is what decides them.
    state = StateSettings(redeem_deadline=3.0, lease_margin=0.2, reconcile_interval=0.1)
    gateway = await make_gateway(timeout=2.0, state=state)
    upstream.sandbox.add_fault(fault)
    response = await gateway.post(REDEEM, json=_body(*codes))
    assert response.status in (202, 409, 503)  # pending, or refused: never redeemed by a second send
    assert upstream.sandbox.call_count(fault.operation) == 1
    samples = await _metrics(gateway)
    assert _metric(samples, "pos_coupon_upstream_retries_total", operation=fault.operation or "") == 0
    applied = fault.kind in (FaultKind.APPLY_THEN_RESET, FaultKind.APPLY_THEN_ERROR)
    for code in codes:
        assert len(upstream.sandbox.redemptions_of(code)) == (1 if applied else 0)


async def test_the_retry_budget_caps_retries(make_gateway: Any, upstream: Upstream) -> None:
    """Under a failing upstream, retries stop once they would exceed their share of calls."""
    gateway = await make_gateway(retry_budget_ratio=0.1, breaker_min_calls=1000)
    upstream.sandbox.add_fault(Fault(FaultKind.HTTP_ERROR, "is_redeemable", status=503, times=None))
    body = {"customer": ALICE, "codes": ["ABS-ALICE-1"], "billAmount": "10"}
    for _ in range(30):
        assert (await gateway.post(VALIDATE, json=body)).status == 503
    samples = await _metrics(gateway)
    retries = _metric(samples, "pos_coupon_upstream_retries_total", operation="is_redeemable")
    assert retries <= 10 + 0.1 * 60  # the floor, plus a tenth of the calls made
    assert _metric(samples, "pos_coupon_upstream_retry_budget_exhausted_total") > 0
    assert upstream.sandbox.call_count("is_redeemable") == 30 + retries


# ------------------------------------------------------------------------------------------------ limiter


async def test_the_outbound_limiter_sheds_checks_and_keeps_redeems_going(make_gateway: Any, upstream: Upstream) -> None:
    """30 requests a minute (a burst of 3): validation is refused with 503 and Retry-After, at once, when no
    token is in sight within its deadline, while a redeem (its check included) still goes through."""
    gateway = await make_gateway(rate_limit_per_minute=30)
    body = {"customer": ALICE, "codes": ["ABS-ALICE-1"], "billAmount": "10"}
    short = {"X-Request-Deadline-Ms": "300"}
    statuses = [(await gateway.post(VALIDATE, json=body, headers=short)).status for _ in range(3)]
    assert statuses[0] == 200
    assert 503 in statuses
    calls = upstream.sandbox.call_count("is_redeemable")
    shed = await gateway.post(VALIDATE, json=body, headers=short)
    payload = await shed.json()
    assert (shed.status, payload["error"]["code"]) == (503, "UPSTREAM_UNAVAILABLE")
    assert int(shed.headers["Retry-After"]) >= 1
    assert upstream.sandbox.call_count("is_redeemable") == calls  # shed before sending

    redeemed = await gateway.post(REDEEM, json=_body("ABS-ALICE-1"))  # waits its turn within its deadline
    assert redeemed.status == 200
    assert (await redeemed.json())["status"] == "redeemed"
    samples = await _metrics(gateway)
    assert _metric(samples, "pos_coupon_upstream_rejected_total", reason="rate_limited", priority="check") >= 2
    assert upstream.sandbox.call_count("redeem") == 1


async def test_error_statuses_whose_bodies_name_refusals_are_no_outage(make_gateway: Any, upstream: Upstream) -> None:
    """A run of bad scans answered 500 with per-code refusals: each is a refusal, never retried, never counted
    against the breaker, so other stores keep their circuit closed."""
    gateway = await make_gateway(breaker_min_calls=4, retry_attempts=2)
    for _ in range(8):
        upstream.sandbox.add_fault(Fault(FaultKind.CODE, "is_redeemable", code=711, status=500, times=1))
        body = {"customer": ALICE, "codes": ["ABS-ALICE-1"], "billAmount": "1000.00"}
        response = await gateway.post("/v1/redemptions/validate", json=body)
        payload = await response.json()
        assert response.status == 200, payload
        assert payload["coupons"][0]["error"]["code"] == "COUPON_ALREADY_REDEEMED"
    assert upstream.sandbox.call_count("is_redeemable") == 8  # none retried
    ready = await (await gateway.get("/readyz")).json()
    assert set(ready["breakers"].values()) == {"closed"}
    fine = await gateway.post(
        "/v1/redemptions/validate", json={"customer": ALICE, "codes": ["ABS-ALICE-1"], "billAmount": "1000.00"}
    )
    assert fine.status == 200
    assert (await fine.json())["coupons"][0]["redeemable"] is True


async def test_try_later_statuses_are_retried_reads_and_no_outage(make_gateway: Any, upstream: Upstream) -> None:
    """461 "search engine busy" and 521 "multiple actions for the same customer": a read tries again; they say
    nothing of the host's health."""
    gateway = await make_gateway(breaker_min_calls=2, retry_attempts=2)
    for status in (461, 521, 461, 521):
        upstream.sandbox.add_fault(Fault(FaultKind.HTTP_ERROR, "is_redeemable", status=status, times=1))
        body = {"customer": ALICE, "codes": ["ABS-ALICE-1"], "billAmount": "1000.00"}
        response = await gateway.post("/v1/redemptions/validate", json=body)
        assert response.status == 200, await response.json()  # the retry went through
    assert upstream.sandbox.call_count("is_redeemable") == 8
    ready = await (await gateway.get("/readyz")).json()
    assert set(ready["breakers"].values()) == {"closed"}
