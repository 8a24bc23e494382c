"""An upload while the upload host's circuit is open is refused before its file is read, and says when to come
back: the breaker's own cool-down, not a fixed second."""

from __future__ import annotations

import math

from service.app import CAPILLARY
from service.capillary.admin import CapillaryAdmin
from service.capillary.resilience import BreakerState
from tests.backoffice.conftest import ABS, coupon_uploads, post_csv
from tests.conftest import GatewayClient, Upstream


def _open(gateway: GatewayClient) -> float:
    """Open the upload host's breaker with failed calls; its cool-down."""
    breaker = gateway.app[CAPILLARY].breakers[-1]
    while breaker.state is not BreakerState.OPEN:
        breaker.record(breaker.admit(), failed=True, seconds=0.01)
    return breaker.policy.open_seconds


async def test_an_upload_while_the_circuit_is_open_answers_its_cool_down(
    gateway: GatewayClient, upstream: Upstream
) -> None:
    cool_down = _open(gateway)
    status, body = await post_csv(gateway, coupon_uploads(ABS), "code\nCOOL-1\n", identifierType="NOT_TAGGED")
    assert status == 503
    assert body["error"]["code"] == "UPSTREAM_UNAVAILABLE"
    response = await gateway.post(coupon_uploads(ABS), data=b"code\nCOOL-2\n", headers={"Content-Type": "text/csv"})
    wait = int(response.headers["Retry-After"])
    assert 1 < wait <= math.ceil(cool_down)  # the cool-down left (5 s by default), not the fixed 1
    assert upstream.sandbox.call_count("upload_coupons") == 0


async def test_the_adapter_reads_the_upload_hosts_cool_down(gateway: GatewayClient) -> None:
    admin = CapillaryAdmin(gateway.app[CAPILLARY])
    assert admin.upload_retry_after() == 0
    cool_down = _open(gateway)
    assert 0 < admin.upload_retry_after() <= cool_down
