"""Thin handlers for the POS routes: decode, hand to the flow, encode."""

from __future__ import annotations

from typing import Final, TypeVar

import msgspec
from aiohttp import web

from service.redemption.catalog import CATALOG
from service.redemption.flow import RedemptionFlow, UpstreamFailure
from service.redemption.models import CodeOutcome, Outcome, RedemptionCommand
from service.series import SeriesCatalog
from service.web.errors import REQUEST_ID, ApiError, UpstreamDetail, detail, encoder, retry_headers
from service.web.schemas import (
    DiscountOut,
    InvalidRequest,
    RedeemedCoupon,
    RedeemIn,
    RedeemOut,
    RedeemStatus,
    ValidatedCoupon,
    ValidateIn,
    ValidateOut,
    command_from,
)

B = TypeVar("B", ValidateIn, RedeemIn)

_VALIDATE: Final = msgspec.json.Decoder(ValidateIn)
_REDEEM: Final = msgspec.json.Decoder(RedeemIn)


def _json(status: int, body: msgspec.Struct, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=encoder.encode(body), content_type="application/json", headers=headers)


async def _command(request: web.Request, decoder: msgspec.json.Decoder[B]) -> RedemptionCommand:
    raw = await request.read()
    if not raw.strip():
        raise ApiError.invalid("body: a JSON object is required")
    try:
        body = decoder.decode(raw)
        return command_from(body)
    except msgspec.ValidationError as exc:
        raise ApiError.invalid(f"body: {exc}") from None
    except msgspec.DecodeError:
        raise ApiError.invalid("body: not valid JSON") from None
    except InvalidRequest as exc:
        raise ApiError.invalid(str(exc)) from None


def _discount(outcome: CodeOutcome) -> DiscountOut | None:
    if outcome.rule is None:
        return None
    return DiscountOut(type=outcome.rule.kind, value=outcome.rule.value, amount=outcome.amount)


def _upstream_error(exc: UpstreamFailure) -> ApiError:
    failure = exc.failure
    upstream = None
    if failure.upstream_code is not None or failure.upstream_message is not None:
        upstream = UpstreamDetail(failure.upstream_code, failure.upstream_message)
    return ApiError(failure.error, upstream=upstream, headers=retry_headers(failure.error))


def _refusal_status(outcome: Outcome) -> int:
    """409 when a coupon was already used, 404 for an unknown customer, else the first reason's own status."""
    assert outcome.failure is not None
    code = outcome.failure.error.code
    if code == "COUPON_ALREADY_REDEEMED":
        return 409
    if code == "CUSTOMER_NOT_FOUND":
        return 404
    status = outcome.failure.error.http_status
    return status if 400 <= status < 500 else 422


class RedemptionHandlers:
    def __init__(self, flow: RedemptionFlow, series: SeriesCatalog) -> None:
        self._flow = flow
        self._series = series

    async def validate(self, request: web.Request) -> web.Response:
        command = await _command(request, _VALIDATE)
        try:
            outcome = await self._flow.validate(command)
        except UpstreamFailure as exc:
            raise _upstream_error(exc) from None
        request_id = request[REQUEST_ID]
        coupons = [
            ValidatedCoupon(
                code=o.code,
                series_id=o.series_id,
                discount=_discount(o),
                redeemable=o.ok,
                error=detail(o.failure, request_id) if o.failure else None,
            )
            for o in outcome.codes
        ]
        error = detail(outcome.failure, request_id) if outcome.failure else None
        body = ValidateOut(coupons=coupons, total_discount=outcome.total_discount, error=error)
        return _json(_refusal_status(outcome) if outcome.failure else 200, body)

    async def redeem(self, request: web.Request) -> web.Response:
        command = await _command(request, _REDEEM)
        try:
            outcome = await self._flow.redeem(command)
        except UpstreamFailure as exc:
            raise _upstream_error(exc) from None
        request_id = request[REQUEST_ID]
        coupons = [
            RedeemedCoupon(
                code=o.code,
                series_id=o.series_id,
                discount=_discount(o),
                redeemed=o.ok,
                redemption_id=o.redemption_id,
                error=detail(o.failure, request_id) if o.failure else None,
            )
            for o in outcome.codes
        ]
        redeemed = sum(o.ok for o in outcome.codes)
        status: RedeemStatus = "rejected"
        if redeemed:
            status = "redeemed" if redeemed == len(coupons) else "partially_redeemed"
        body = RedeemOut(
            ref=outcome.ref or "",
            status=status,
            transaction_number=command.transaction_number or "",
            coupons=coupons,
            total_discount=outcome.total_discount,
            error=detail(outcome.failure, request_id) if outcome.failure else None,
        )
        return _json(200 if redeemed else _refusal_status(outcome), body)

    async def series(self, request: web.Request) -> web.Response:
        raw = request.match_info["seriesId"]
        if not raw.isdigit() or not 0 < int(raw) < 2**63:
            raise ApiError.invalid("seriesId: a positive number")
        try:
            summary = await self._series.get(int(raw))
        except UpstreamFailure as exc:
            raise _upstream_error(exc) from None
        if summary is None:
            raise ApiError(CATALOG["SERIES_NOT_FOUND"])
        return _json(200, summary)
