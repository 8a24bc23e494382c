"""The sandbox's redeemed-coupons upload as the settler uses it: rows recorded with their own time, place and bill
number; refused rows (coupon already used, unknown customer) in the job's error file, served at its errorFileUrl."""

from __future__ import annotations

import csv
import io

import aiohttp
from yarl import URL

from service.capillary.client import CapillaryClient
from service.offline.settler import reason_of
from service.sandbox import DEMO
from tests.conftest import Upstream

ALICE = DEMO.customer("alice").mobile


async def test_refused_rows_are_in_the_error_file_with_their_reason(
    oauth_client: CapillaryClient, upstream: Upstream
) -> None:
    series = upstream.sandbox.state.coupon_by_code("ABS-ALICE-1").series_id  # type: ignore[union-attr]
    rows = (
        "redeemedDateInMillis,redeemedAt,mobile,couponCode,billNumber\n"
        f"1893456000000,T7,{ALICE},ABS-ALICE-1,BN-1\n"
        f"1893456000000,T7,{ALICE},ABS-ALICE-USED,BN-2\n"
        "1893456000000,T7,919999999999,ABS-ALICE-2,BN-3\n"
    )
    headers = {"redeemedDateInMillis": 0, "redeemedAt": 1, "mobile": 2, "couponCode": 3, "billNumber": 4}
    reply = await oauth_client.upload_redeemed_coupons(
        series,
        rows.encode(),
        customer_identifier="MOBILE",
        coupon_identifier="COUPON_CODE",
        upload_headers=headers,
        filename="offline_test.csv",
    )
    assert reply.result is not None
    upstream.sandbox.advance(1)
    listing = await oauth_client.redeemed_upload_status(series)
    assert listing.result is not None
    [job] = [j for j in listing.result.jobs if j.uploaded_file_name == "offline_test.csv"]
    assert (job.status, job.total_uploaded_count, job.error_count) == ("COMPLETED", 1, 2)
    [recorded] = upstream.sandbox.redemptions_of("ABS-ALICE-1")
    assert (recorded.store, recorded.transaction_number) == ("T7", "BN-1")
    assert int(recorded.redeemed_on.timestamp() * 1000) == 1893456000000

    assert job.error_file_url is not None
    url = URL(upstream.url + "/").join(URL(job.error_file_url))
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        assert response.content_type == "text/csv"
        table = list(csv.DictReader(io.StringIO(await response.text())))
    reasons = {row["couponCode"]: reason_of(row["error"]) for row in table}
    assert reasons == {"ABS-ALICE-USED": "COUPON_ALREADY_REDEEMED", "ABS-ALICE-2": "CUSTOMER_NOT_FOUND"}
    assert table[0]["billNumber"] == "BN-2"
