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


class OfflineHandlers:
    """The offline routes. Registered when the app is built; given the offline service and its settler at
    startup when OFFLINE_MODE=on. Without them these routes do not exist (404)."""

    def __init__(self) -> None:
        self._bound: tuple[Offline, Settler] | None = None

    def bind(self, offline: Offline, settler: Settler) -> None:
        self._bound = offline, settler

    def _offline(self) -> Offline:
        if self._bound is None:
            raise ApiError(CATALOG["NOT_FOUND"])
        return self._bound[0]

    def _settler(self) -> Settler:
        if self._bound is None:
            raise ApiError(CATALOG["NOT_FOUND"])
        return self._bound[1]

    async def overview(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(await self._offline().overview())
        except JournalUnavailable:
            error = CATALOG["STATE_STORE_UNAVAILABLE"]
            raise ApiError(error, headers=retry_headers(error)) from None

    async def conflicts(self, request: web.Request) -> web.Response:
        offline = self._offline()
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

    async def settle(self, request: web.Request) -> web.Response:
        settler = self._settler()
        raw = (await request.read()).strip()
        if raw and raw != b"{}":
            raise ApiError.invalid("body: send no body, or {}")
        # Shielded: a caller that stops waiting does not cut a round short (it would be taken up by the next one).
        try:
            done = await asyncio.shield(asyncio.ensure_future(settler.settle()))
        except (JournalUnavailable, StoreUnavailable):
            error = CATALOG["STATE_STORE_UNAVAILABLE"]
            raise ApiError(error, headers=retry_headers(error)) from None
        return web.json_response({"result": done})


def add_routes(router: web.UrlDispatcher, handlers: OfflineHandlers) -> None:
    router.add_get("/v1/offline", handlers.overview, allow_head=False)
    router.add_get("/v1/offline/conflicts", handlers.conflicts, allow_head=False)
    router.add_post("/v1/offline/settle", handlers.settle)
