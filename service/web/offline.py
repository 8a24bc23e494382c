"""The back office's view of offline acceptance (admin scope): what is outstanding, the conflicts staff must
resolve, and settling now."""

from __future__ import annotations

import asyncio
from typing import Final

from aiohttp import web

from service.idempotency.store import StoreUnavailable
from service.offline.journal import JournalUnavailable
from service.offline.service import Offline, conflict_message
from service.offline.settler import Settler
from service.redemption.catalog import CATALOG
from service.web.errors import ApiError, retry_headers

OFFLINE: Final = web.AppKey("offline", Offline)
SETTLER: Final = web.AppKey("offline_settler", Settler)
MAX_LIMIT: Final = 200


def _offline(request: web.Request) -> Offline:
    """The offline service; without OFFLINE_MODE=on these routes do not exist (404)."""
    offline = request.app.get(OFFLINE)
    if offline is None:
        raise ApiError(CATALOG["NOT_FOUND"])
    return offline


def _mask(code: str) -> str:
    """Codes as elsewhere in logs and back-office lists: the first two characters, then stars."""
    return code[:2] + "***"


def _int(request: web.Request, name: str, default: int, minimum: int, maximum: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not minimum <= int(raw) <= maximum:
        raise ApiError.invalid(f"{name}: a whole number from {minimum} to {maximum}")
    return int(raw)


async def overview(request: web.Request) -> web.Response:
    try:
        return web.json_response(await _offline(request).overview())
    except JournalUnavailable:
        error = CATALOG["STATE_STORE_UNAVAILABLE"]
        raise ApiError(error, headers=retry_headers(error)) from None


async def conflicts(request: web.Request) -> web.Response:
    offline = _offline(request)
    limit = _int(request, "limit", 50, 1, MAX_LIMIT)
    offset = _int(request, "offset", 0, 0, 10_000_000)
    try:
        found = await offline.journal.conflicts()
    except JournalUnavailable:
        error = CATALOG["STATE_STORE_UNAVAILABLE"]
        raise ApiError(error, headers=retry_headers(error)) from None
    page = found[offset : offset + limit]
    items = [
        {
            "ref": item.ref,
            "reason": item.reason,
            "message": conflict_message(item),
            "store": item.store,
            "till": item.till,
            "transactionNumber": item.transaction_number,
            "codes": [_mask(line.code) for line in item.lines],
            "recorded": [_mask(line.code) for line in item.lines if line.state == "ok"],
            "totalDiscount": str(item.total),
            "redeemedAt": item.at,
            "conflictAt": item.resolved_at,
        }
        for item in page
    ]
    more = offset + limit < len(found)
    return web.json_response({"items": items, "total": len(found), "nextOffset": offset + limit if more else None})


async def settle(request: web.Request) -> web.Response:
    _offline(request)
    raw = (await request.read()).strip()
    if raw and raw != b"{}":
        raise ApiError.invalid("body: send no body, or {}")
    # Shielded: a caller that stops waiting does not cut a round short (it would be taken up by the next one).
    try:
        done = await asyncio.shield(asyncio.ensure_future(request.app[SETTLER].settle()))
    except (JournalUnavailable, StoreUnavailable):
        error = CATALOG["STATE_STORE_UNAVAILABLE"]
        raise ApiError(error, headers=retry_headers(error)) from None
    return web.json_response({"result": done})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/v1/offline", overview, allow_head=False)
    router.add_get("/v1/offline/conflicts", conflicts, allow_head=False)
    router.add_post("/v1/offline/settle", settle)
