"""Every upstream fault becomes the right typed error, with what the gateway needs to decide: the HTTP status,
Capillary's code, the X-Cap-Requestid, and whether the request may have been applied."""

from __future__ import annotations

import socket
from decimal import Decimal

import pytest

from service.capillary.client import CapillaryClient
from service.capillary.errors import (
    CapillaryBadResponse,
    CapillaryConnectionError,
    CapillaryError,
    CapillaryHTTPError,
    CapillaryTimeoutError,
)
from service.capillary.models import Customer
from service.config import CapillarySettings
from service.sandbox import DEMO, Fault, FaultKind
from tests.conftest import Upstream

ALICE = Customer(mobile=DEMO.customer("alice").mobile)


async def _redeem(client: CapillaryClient, code: str = "ABS-ALICE-1", timeout: float | None = None) -> None:
    await client.redeem(ALICE, code, bill_amount=Decimal(500), transaction_number="T-F", timeout=timeout)


@pytest.mark.parametrize(
    ("fault", "error_type", "http_status", "maybe_applied"),
    [
        (Fault(FaultKind.HTTP_ERROR, "redeem", status=503), CapillaryHTTPError, 503, True),
        (Fault(FaultKind.HTTP_ERROR, "redeem", status=500), CapillaryHTTPError, 500, True),
        (Fault(FaultKind.RATE_LIMIT, "redeem"), CapillaryHTTPError, 429, False),
        (Fault(FaultKind.RESET, "redeem"), CapillaryConnectionError, None, True),
        (Fault(FaultKind.MALFORMED, "redeem"), CapillaryBadResponse, 200, True),
        (Fault(FaultKind.TIMEOUT, "redeem", delay_seconds=2), CapillaryTimeoutError, None, True),
    ],
    ids=lambda v: v.kind.value if isinstance(v, Fault) else None,
)
async def test_faults_before_apply(
    oauth_client: CapillaryClient,
    upstream: Upstream,
    fault: Fault,
    error_type: type[CapillaryError],
    http_status: int | None,
    maybe_applied: bool,
) -> None:
    assert oauth_client.tokens is not None
    await oauth_client.tokens.token()  # the token first: the call's half second is the faulted redeem's alone
    upstream.sandbox.add_fault(fault)
    with pytest.raises(error_type) as caught:
        await _redeem(oauth_client, timeout=0.5)
    error = caught.value
    assert type(error) is error_type
    assert (error.operation, error.http_status, error.maybe_applied) == ("redeem", http_status, maybe_applied)
    if http_status is not None:
        assert error.request_id, "the X-Cap-Requestid is kept for support"
    assert not upstream.sandbox.redemptions_of("ABS-ALICE-1")  # these faults apply nothing


@pytest.mark.parametrize(
    ("fault", "error_type"),
    [
        (Fault(FaultKind.APPLY_THEN_TIMEOUT, "redeem", delay_seconds=2), CapillaryTimeoutError),
        (Fault(FaultKind.APPLY_THEN_RESET, "redeem"), CapillaryConnectionError),
        (Fault(FaultKind.APPLY_THEN_ERROR, "redeem", status=502), CapillaryHTTPError),
    ],
    ids=lambda v: v.kind.value if isinstance(v, Fault) else None,
)
async def test_faults_after_apply_say_the_outcome_is_unknown(
    oauth_client: CapillaryClient, upstream: Upstream, fault: Fault, error_type: type[CapillaryError]
) -> None:
    upstream.sandbox.add_fault(fault)
    with pytest.raises(error_type) as caught:
        await _redeem(oauth_client, timeout=0.5)
    assert caught.value.maybe_applied
    assert len(upstream.sandbox.redemptions_of("ABS-ALICE-1")) == 1  # it went through upstream


async def test_business_code_fault_748(oauth_client: CapillaryClient, upstream: Upstream) -> None:
    upstream.sandbox.add_fault(Fault(FaultKind.CODE, "redeem", code=748))
    reply = await oauth_client.redeem(ALICE, "ABS-ALICE-1", bill_amount=Decimal(500), transaction_number="T")
    verdict = reply.verdict(reply.redemption[0])
    assert verdict is not None
    assert (verdict.ok, verdict.code) == (False, 748)


async def test_a_failing_http_200_is_never_taken_for_success(oauth_client: CapillaryClient, upstream: Upstream) -> None:
    upstream.sandbox.options.failure_http_status = 200
    reply = await oauth_client.redeem(ALICE, "ABS-ALICE-USED", bill_amount=Decimal(500), transaction_number="T")
    verdict = reply.verdict(reply.redemption[0])
    assert verdict is not None
    assert (verdict.ok, verdict.code) == (False, 711)


async def test_a_garbage_body_on_a_read_is_an_upstream_fault(oauth_client: CapillaryClient, upstream: Upstream) -> None:
    upstream.sandbox.add_fault(Fault(FaultKind.MALFORMED, "series_get", body='{"entity": "not a list"}'))
    with pytest.raises(CapillaryBadResponse) as caught:
        await oauth_client.series([DEMO.series_of("abs").id])
    assert not isinstance(caught.value, ValueError)  # never mistaken for the client's own bad input


async def test_a_fault_on_the_token_call(upstream: Upstream) -> None:
    upstream.sandbox.add_fault(Fault(FaultKind.HTTP_ERROR, "token", status=503))
    async with CapillaryClient(upstream.settings("oauth")) as client:
        with pytest.raises(CapillaryHTTPError) as caught:
            await client.is_redeemable(ALICE, ["ABS-ALICE-1"])
        assert (caught.value.operation, caught.value.http_status) == ("token", 503)
        assert upstream.sandbox.call_count("is_redeemable") == 0
        reply = await client.is_redeemable(ALICE, ["ABS-ALICE-1"])  # the next call fetches a token again
        assert reply.redemption[0].is_redeemable


async def test_nobody_listening_is_a_connection_error_that_applied_nothing() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    settings = CapillarySettings(api_url=url, upload_url=url, auth="basic", till_username="t", till_password="p")
    async with CapillaryClient(settings) as client:
        with pytest.raises(CapillaryConnectionError) as caught:
            await _redeem(client)
    assert not caught.value.maybe_applied
    assert caught.value.http_status is None


async def test_latency_within_the_timeout_is_fine(oauth_client: CapillaryClient, upstream: Upstream) -> None:
    upstream.sandbox.add_fault(Fault(FaultKind.LATENCY, "is_redeemable", delay_seconds=0.1))
    reply = await oauth_client.is_redeemable(ALICE, ["ABS-ALICE-1"], timeout=2)
    assert reply.redemption[0].is_redeemable
