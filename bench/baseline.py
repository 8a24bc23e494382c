"""The bare pass-through baseline: the smallest aiohttp app doing what the gateway must do for the same request.

decode -> ``is_redeemable`` -> (redeem: ``redeem`` for one code, ``bulk/redeem`` for several) -> encode, against
the same upstream, with one reused ``ClientSession`` and one OAuth token fetched at start. No series lookup, no
error catalog, no retries, no cache, no logging: what is left of the gateway's cost when all its features are gone.

``python -m bench.baseline --upstream http://127.0.0.1:PORT`` prints ``READY <port>`` once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Final

import aiohttp
import msgspec
from aiohttp import web

from bench import data


class Customer(msgspec.Struct):
    mobile: str


class RedemptionIn(msgspec.Struct, rename="camel"):
    customer: Customer
    codes: list[str]
    bill_amount: str
    transaction_number: str | None = None


class Item(msgspec.Struct, rename="camel"):
    code: str = ""
    is_redeemable: bool = False


class IsRedeemable(msgspec.Struct):
    redemption: list[Item] = []


class CodeOut(msgspec.Struct):
    code: str
    ok: bool


class Out(msgspec.Struct):
    status: str
    coupons: list[CodeOut]


class Upstream:
    """One session, one token, two calls."""

    def __init__(self, base: str, session: aiohttp.ClientSession, token: str) -> None:
        self._session = session
        self._headers = {"X-CAP-API-OAUTH-TOKEN": token, "Accept": "application/json"}
        self._post_headers = {**self._headers, "Content-Type": "application/json"}
        self._is_redeemable = f"{base}/v2/coupon/is_redeemable"
        self._redeem = f"{base}/v2/coupon/redeem"
        self._bulk_redeem = f"{base}/v2/coupon/bulk/redeem?source=INSTORE"

    @staticmethod
    async def open(base: str) -> Upstream:
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=8, connect=2))
        try:
            body = {"key": data.CLIENT_KEY, "secret": data.CLIENT_SECRET}
            async with session.post(f"{base}/v3/oauth/token/generate", json=body) as response:
                response.raise_for_status()
                token = (await response.json())["data"]["accessToken"]
        except BaseException:
            await session.close()
            raise
        return Upstream(base, session, token)

    async def close(self) -> None:
        await self._session.close()

    async def check(self, body: RedemptionIn) -> tuple[int, IsRedeemable]:
        params = {"mobile": body.customer.mobile, "code": ",".join(body.codes), "details": "false"}
        async with self._session.get(self._is_redeemable, params=params, headers=self._headers) as response:
            raw = await response.read()
            return response.status, _IS_REDEEMABLE.decode(raw) if response.status < 500 else IsRedeemable()

    async def redeem(self, body: RedemptionIn) -> int:
        wire = {
            "billAmount": body.bill_amount,
            "transactionNumber": body.transaction_number,
            "user": {"mobile": body.customer.mobile},
            "redemptionRequestList": [{"code": c} for c in body.codes],
        }
        url = self._redeem if len(body.codes) == 1 else self._bulk_redeem
        async with self._session.post(url, data=_ENCODER.encode(wire), headers=self._post_headers) as response:
            await response.read()
            return response.status


UPSTREAM: Final = web.AppKey("upstream", Upstream)
_VALIDATE: Final = msgspec.json.Decoder(RedemptionIn)
_IS_REDEEMABLE: Final = msgspec.json.Decoder(IsRedeemable)
_ENCODER: Final = msgspec.json.Encoder()


def _reply(status: int, state: str, coupons: list[CodeOut]) -> web.Response:
    return web.Response(status=status, body=_ENCODER.encode(Out(state, coupons)), content_type="application/json")


async def _assess(request: web.Request) -> tuple[RedemptionIn, int, list[CodeOut]] | web.Response:
    try:
        body = _VALIDATE.decode(await request.read())
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return web.Response(status=400, text=str(exc))
    status, reply = await request.app[UPSTREAM].check(body)
    coupons = [CodeOut(i.code, i.is_redeemable) for i in reply.redemption]
    return body, status, coupons


async def validate(request: web.Request) -> web.Response:
    assessed = await _assess(request)
    if isinstance(assessed, web.Response):
        return assessed
    _, status, coupons = assessed
    ok = status == 200 and bool(coupons) and all(c.ok for c in coupons)
    return _reply(200 if ok else 409, "valid" if ok else "invalid", coupons)


async def redeem(request: web.Request) -> web.Response:
    assessed = await _assess(request)
    if isinstance(assessed, web.Response):
        return assessed
    body, status, coupons = assessed
    if status != 200 or not coupons or not all(c.ok for c in coupons):
        return _reply(409, "rejected", coupons)
    redeemed = await request.app[UPSTREAM].redeem(body)
    if redeemed != 200:
        return _reply(502 if redeemed >= 500 else 409, "rejected", coupons)
    return _reply(200, "redeemed", coupons)


def create_app(upstream_url: str) -> web.Application:
    app = web.Application()

    async def upstream_ctx(app: web.Application) -> AsyncIterator[None]:
        app[UPSTREAM] = await Upstream.open(upstream_url)
        try:
            yield
        finally:
            await app[UPSTREAM].close()

    app.cleanup_ctx.append(upstream_ctx)
    app.router.add_post("/v1/redemptions/validate", validate)
    app.router.add_post("/v1/redemptions", redeem)
    return app


async def serve(host: str, port: int, upstream_url: str) -> None:
    runner = web.AppRunner(create_app(upstream_url), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=1024).start()
        print(f"READY {runner.addresses[0][1]}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__)
    parser.add_argument("--upstream", required=True, help="the sandbox's base URL")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop (must be installed)")
    args = parser.parse_args(argv)
    if args.uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(serve(args.host, args.port, args.upstream))
    return 0


if __name__ == "__main__":
    sys.exit(main())
