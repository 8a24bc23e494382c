"""Helpers for the back-office tests: CSV bodies as multipart forms or text/csv, and the sandbox's job clock."""

from __future__ import annotations

from typing import Any

import aiohttp

from service.sandbox import DEMO

ABS = DEMO.series_of("abs").id
ANY = DEMO.series_of("any_user").id
MULTI = DEMO.series_of("multi_use").id
ALICE, BOB, CAROL, DAVE = (DEMO.customer(k) for k in ("alice", "bob", "carol", "dave"))


def form(csv_text: str | bytes, file_name: str = "coupons.csv", **fields: str) -> aiohttp.FormData:
    data = aiohttp.FormData()
    for name, value in fields.items():
        data.add_field(name, value)
    body = csv_text.encode() if isinstance(csv_text, str) else csv_text
    data.add_field("file", body, filename=file_name, content_type="text/csv")
    return data


async def post_csv(gateway: Any, path: str, csv_text: str | bytes, **fields: str) -> tuple[int, dict[str, Any]]:
    response = await gateway.post(path, data=form(csv_text, **fields))
    return response.status, await response.json()


def coupon_uploads(series: int) -> str:
    return f"/v1/series/{series}/coupon-uploads"


def redemption_uploads(series: int) -> str:
    return f"/v1/series/{series}/redemption-uploads"
