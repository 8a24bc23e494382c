"""The typed client of the gateway's own API, against a live gateway: redemption calls, back-office calls, uploads
with progress, and the error envelope as a typed exception."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest

from service.client import GatewayClient, GatewayError, GatewayUnavailable
from service.web.backoffice_schemas import DryRunOut, UploadAcceptedOut
from service.web.schemas import CustomerIn
from tests.backoffice.conftest import ABS, ALICE, ANY, BOB
from tests.conftest import ADMIN_KEY, TILL_KEY, Upstream, free_port
from tests.conftest import GatewayClient as TestGateway

ALICE_IN = CustomerIn(mobile=ALICE.mobile)


@pytest.fixture
async def client(gateway: TestGateway) -> AsyncIterator[GatewayClient]:
    async with GatewayClient(str(gateway.make_url("")), ADMIN_KEY, timeout=10) as client:
        yield client


async def test_validate_redeem_status_and_reverse(client: GatewayClient, upstream: Upstream) -> None:
    checked = await client.validate(ALICE_IN, ["ABS-ALICE-1", "ABS-ALICE-USED"], Decimal("500.00"))
    verdicts = {c.code: c for c in checked.coupons}
    assert verdicts["ABS-ALICE-1"].redeemable is True
    assert verdicts["ABS-ALICE-USED"].error is not None
    assert verdicts["ABS-ALICE-USED"].error.code == "COUPON_ALREADY_REDEEMED"

    redeemed = await client.redeem(ALICE_IN, ["ABS-ALICE-1"], Decimal("500.00"), "T-CLIENT-1", idempotency_key="k-1")
    assert redeemed.status == "redeemed"
    assert redeemed.total_discount == Decimal("100.00")
    again = await client.redeem(ALICE_IN, ["ABS-ALICE-1"], Decimal("500.00"), "T-CLIENT-1", idempotency_key="k-1")
    assert again.ref == redeemed.ref  # replayed
    assert len(upstream.sandbox.redemptions_of("ABS-ALICE-1")) == 1

    assert (await client.redemption(redeemed.ref)).status == "redeemed"
    reversal = await client.reverse(redeemed.ref)
    assert reversal.status == "reversed"
    assert upstream.sandbox.redemptions_of("ABS-ALICE-1", include_reversed=False) == []

    refused = await client.redeem(ALICE_IN, ["ABS-ALICE-USED"], Decimal("500.00"), "T-CLIENT-2")
    assert refused.status == "rejected"
    assert refused.error is not None


async def test_errors_are_typed(client: GatewayClient, gateway: TestGateway) -> None:
    with pytest.raises(GatewayError) as caught:
        await client.series(99999)
    assert (caught.value.status, caught.value.code) == (404, "SERIES_NOT_FOUND")
    assert caught.value.request_id
    with pytest.raises(GatewayError) as caught:
        await client.issue(ABS, CustomerIn(mobile="919911111111"))
    assert caught.value.code == "CUSTOMER_NOT_FOUND"
    assert caught.value.upstream is not None
    assert caught.value.upstream.code == 701
    async with GatewayClient(str(gateway.make_url("")), TILL_KEY) as till:
        with pytest.raises(GatewayError) as caught:
            await till.coupons(codes=["ABS-ALICE-1"])
        assert (caught.value.status, caught.value.code) == (403, "FORBIDDEN")
    async with GatewayClient(f"http://127.0.0.1:{free_port()}", ADMIN_KEY, timeout=2) as nowhere:
        with pytest.raises(GatewayUnavailable):
            await nowhere.series(ABS)


async def test_back_office_calls(client: GatewayClient, upstream: Upstream) -> None:
    coupon = await client.issue(ABS, CustomerIn(id=BOB.id))
    assert coupon.customer_id == BOB.id
    found = await client.coupons(codes=[coupon.code or ""])
    assert [c.id for c in found.coupons] == [coupon.id]
    bulk = await client.bulk_issue([ABS, ANY], CustomerIn(mobile=BOB.mobile))
    assert bulk.issued == 2
    series = await client.create_series({"description": "Client 10 off", "discountType": "ABS", "discountValue": 10})
    assert (await client.series(series.id)).description == "Client 10 off"


async def test_upload_with_progress_then_wait(client: GatewayClient, upstream: Upstream, tmp_path: Path) -> None:
    path = tmp_path / "codes.csv"
    path.write_text("code\n" + "".join(f"CLIENT-{i:04d}\n" for i in range(2000)))
    size = path.stat().st_size
    sent: list[int] = []

    dry = await client.upload_coupons(ANY, path, identifier_type="NOT_TAGGED", dry_run=True)
    assert isinstance(dry, DryRunOut)
    assert (dry.report.valid, dry.report.rows) == (True, 2000)

    accepted = await client.upload_coupons(ANY, path, identifier_type="NOT_TAGGED", progress=sent.append)
    assert isinstance(accepted, UploadAcceptedOut)
    assert sent[-1] == size
    assert sent == sorted(sent)
    assert accepted.job.job_id is not None

    async def tick() -> None:
        while True:
            await asyncio.sleep(0.05)
            upstream.sandbox.advance(0.2)

    ticker = asyncio.create_task(tick())
    seen: list[str] = []
    try:
        done = await client.wait_for_job(
            ANY, "coupons", accepted.job.job_id, interval=0.05, timeout=20, on_update=lambda j: seen.append(j.status)
        )
    finally:
        ticker.cancel()
    assert done.status == "finished"
    assert done.counts.uploaded == 2000
    assert seen[-1] == "finished"
    assert upstream.sandbox.coupon("CLIENT-1999").series_id == ANY

    path.write_text("code\nCLIENT-X\nCLIENT-X\n")
    with pytest.raises(GatewayError) as caught:
        await client.upload_coupons(ANY, path, identifier_type="NOT_TAGGED")
    assert caught.value.code == "INVALID_UPLOAD"
    assert caught.value.report is not None
    assert [(e.row, e.column) for e in caught.value.report.errors] == [(3, "code")]
