"""Thin handlers for the POS routes: decode, hand to the flow, encode."""

from __future__ import annotations

import re
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal, TypeVar

import msgspec
from aiohttp import web

from service.access.keys import API_KEY
from service.idempotency.models import Answer, Entry, StoredResponse, natural_key
from service.idempotency.service import ExactlyOnce, Refused, Reply
from service.idempotency.store import StoreUnavailable
from service.observability.context import bind_fields
from service.observability.logging import mask
from service.observability.metrics import Metrics
from service.offline.service import Offline
from service.redemption.catalog import CATALOG
from service.redemption.discount import ZERO
from service.redemption.flow import RedemptionFlow, UpstreamFailure
from service.redemption.models import CodeOutcome, Outcome, RedemptionCommand
from service.series import SeriesCatalog
from service.web.errors import (
    REQUEST_ID,
    ApiError,
    ErrorDetail,
    detail,
    encoder,
    error_detail,
    json_response,
    refusal_status,
    retry_headers,
    series_id_of,
    upstream_error,
)
from service.web.json_keys import refuse_duplicate_keys
from service.web.schemas import (
    DiscountOut,
    InvalidRequest,
    RedeemedCoupon,
    RedeemIn,
    RedeemOut,
    RedeemStatus,
    ReversalOut,
    ReversedCoupon,
    ValidatedCoupon,
    ValidateIn,
    ValidateOut,
    command_from,
    series_out,
)
from service.web.validation import describe

B = TypeVar("B", ValidateIn, RedeemIn)

VALIDATE_DECODER: Final = msgspec.json.Decoder(ValidateIn)
REDEEM_DECODER: Final = msgspec.json.Decoder(RedeemIn)


def _store(request: web.Request) -> str | None:
    """The store of the API key: a till redeems for its own store only (a body cannot name another)."""
    key = request.get(API_KEY)
    return key.store if key is not None else None


def _till(request: web.Request) -> str | None:
    """The till the API key names, if it names one."""
    key = request.get(API_KEY)
    return key.till if key is not None else None


async def _command(request: web.Request, decoder: msgspec.json.Decoder[B]) -> RedemptionCommand:
    return parse_command(await request.read(), decoder, _store(request))


def parse_command(raw: bytes, decoder: msgspec.json.Decoder[B], store: str | None) -> RedemptionCommand:
    """A request body as a command, or ``ApiError`` (400 naming the field): nothing else escapes."""
    if not raw.strip():
        raise ApiError.invalid("body: a JSON object is required")
    try:
        body = decoder.decode(raw)
        refuse_duplicate_keys(raw, decoder.type)
        return command_from(body, store=store)
    except msgspec.ValidationError as exc:
        raise ApiError.invalid(describe(exc, decoder.type)) from None
    except msgspec.DecodeError:
        raise ApiError.invalid("body: not valid JSON") from None
    except RecursionError:
        raise ApiError.invalid("body: nested too deeply") from None
    except InvalidRequest as exc:
        raise ApiError.invalid(str(exc)) from None


def _discount(outcome: CodeOutcome) -> DiscountOut | None:
    if outcome.rule is None:
        return None
    return DiscountOut(type=outcome.rule.kind, value=outcome.rule.value, amount=outcome.amount)


IDEMPOTENCY_KEY_HEADER: Final = "Idempotency-Key"
_REF = re.compile(r"^rdm_[0-9a-f]{32}$")


def _idempotency_key(request: web.Request) -> str | None:
    if IDEMPOTENCY_KEY_HEADER not in request.headers:
        return None
    key = request.headers[IDEMPOTENCY_KEY_HEADER]
    if not 1 <= len(key) <= 255 or not key.isprintable() or not key.isascii():
        raise ApiError.invalid(f"{IDEMPOTENCY_KEY_HEADER}: 1 to 255 printable ASCII characters")
    return f"key:{_store(request) or '-'}:{key}"  # each store's keys apart: one store never replays another's


def _ref(request: web.Request) -> str:
    ref = request.match_info["ref"]
    if not _REF.match(ref):
        raise ApiError(CATALOG["REDEMPTION_NOT_FOUND"])
    return ref


def _reply(reply: Reply) -> web.Response:
    headers = {"Idempotent-Replayed": "true"} if reply.replayed else None
    status = 200 if reply.lookup else answer_status(reply.response)
    return web.Response(status=status, body=reply.response.body, content_type="application/json", headers=headers)


def answer_status(response: StoredResponse) -> int:
    """The HTTP status of a recorded answer, from what it says: the same for the first answer and every replay.
    A record of an earlier release carries the status it was sent with."""
    if response.status is not None:
        return response.status
    if response.answer == "pending":
        return 202
    if response.error is None:
        return 200
    error = CATALOG[response.error]
    return refusal_status(error) if response.answer == "rejected" else error.http_status


async def _exactly_once(call: Awaitable[Reply]) -> Reply:
    """Await an exactly-once operation, turning its refusals into the error envelope."""
    try:
        return await call
    except Refused as exc:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        raise ApiError(exc.error, exc.message, headers=headers) from None
    except StoreUnavailable:
        error = CATALOG["STATE_STORE_UNAVAILABLE"]
        raise ApiError(error, headers=retry_headers(error)) from None
    except UpstreamFailure as exc:
        refused = upstream_error(exc)
        note = getattr(exc, "note", None)  # offline acceptance was tried and did not apply: say why
        if note:
            message = f"{refused.message} Offline acceptance did not apply: {note}."
            raise ApiError(refused.error, message, upstream=refused.upstream, headers=refused.headers) from None
        raise refused from None


def _refusal_status(outcome: Outcome) -> int:
    """A refused outcome's status, from the catalog entry of its reason."""
    assert outcome.failure is not None
    return refusal_status(outcome.failure.error)


def _bind(command: RedemptionCommand) -> None:
    """The request's business fields, for its canonical log line (identifiers are masked by the logger)."""
    bind_fields(
        transaction_number=command.transaction_number,
        customer={command.customer.kind: mask(command.customer.value)},
        codes=len(command.codes),
        store=command.store,
        mode=command.mode,
    )


def validation_outcome(outcome: Outcome) -> str:
    """What redeeming these codes now would do: ``redeemed`` (every code passes), ``partially_redeemed`` (some do:
    a ``partial`` redeem takes those) or ``refused`` (none does, or the request as a whole is refused)."""
    passing = sum(o.ok for o in outcome.codes)
    if outcome.failure is not None or not passing:
        return "refused"
    return "redeemed" if passing == len(outcome.codes) else "partially_redeemed"


@dataclass(frozen=True, slots=True)
class RedemptionParts:
    """What the POS handlers call: built at startup, once the resources they stand on are open."""

    flow: RedemptionFlow
    series: SeriesCatalog
    ledger: ExactlyOnce
    offline: Offline | None = None  # OFFLINE_MODE=on: online validations are noted for offline acceptance


class RedemptionHandlers:
    """The POS routes: each decodes, calls the flow or the ledger, and renders. Registered on the router when the
    app is built (aiohttp freezes its routes at startup); their parts are given by :meth:`bind` at startup."""

    def __init__(self, metrics: Metrics, parts: RedemptionParts | None = None) -> None:
        self._metrics = metrics
        self._bound = parts

    def bind(self, parts: RedemptionParts) -> None:
        self._bound = parts

    @property
    def _parts(self) -> RedemptionParts:
        if self._bound is None:
            raise RuntimeError("the POS handlers are used before the app has started")
        return self._bound

    async def validate(self, request: web.Request) -> web.Response:
        try:
            command = await _command(request, VALIDATE_DECODER)
            _bind(command)
            try:
                outcome = await self._parts.flow.validate(command)
            except UpstreamFailure as exc:
                raise upstream_error(exc) from None
        except ApiError as exc:
            self._metrics.validated("error", exc.error.code)
            bind_fields(outcome="error", error_code=exc.error.code)
            raise
        if (offline := self._parts.offline) is not None and outcome.failure is None:
            await offline.note_validated(command, outcome)
        refused = outcome.failure or next((o.failure for o in outcome.codes if o.failure), None)
        result = validation_outcome(outcome)
        self._metrics.validated(result, refused.error.code if refused else None, outcome.codes)
        bind_fields(outcome=result, error_code=refused.error.code if refused else None)
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
        return json_response(_refusal_status(outcome) if outcome.failure else 200, body)

    async def redeem(self, request: web.Request) -> web.Response:
        try:
            command = await _command(request, REDEEM_DECODER)
            _bind(command)
            key, legacy = _idempotency_key(request), None
            if key is None:
                till = _till(request)
                key = natural_key(command, till)
                # A till's records made before the till was part of the natural key stay theirs for their TTL.
                legacy = natural_key(command) if till is not None else None
            redeeming = self._parts.ledger.redeem(
                command, key, request[REQUEST_ID], legacy_key=legacy, till=_till(request)
            )
            reply = await _exactly_once(redeeming)
        except ApiError as exc:
            code = exc.error.code
            if code in ("COUPON_IN_USE", "REQUEST_IN_PROGRESS"):
                self._metrics.lock_conflicts.labels(code.lower()).inc()
            self._metrics.redeemed("error", code)
            bind_fields(outcome="error", error_code=code)
            raise
        if reply.replayed:
            self._metrics.replays.inc()
        else:
            self._metrics.redeemed(reply.outcome, reply.error_code, reply.redeemed, reply.discount)
        bind_fields(
            ref=reply.ref,
            outcome="replayed" if reply.replayed else reply.outcome,
            error_code=reply.error_code,
            replayed=reply.replayed,
        )
        return _reply(reply)

    async def status(self, request: web.Request) -> web.Response:
        ref = _ref(request)
        key = request.get(API_KEY)
        store = None if key is None or key.allows("admin") else key.store  # back office may look at any store
        return _reply(await _exactly_once(self._parts.ledger.status(ref, store=store)))

    async def reverse(self, request: web.Request) -> web.Response:
        ref = _ref(request)
        raw = (await request.read()).strip()
        if raw and raw != b"{}":
            raise ApiError.invalid("body: send no body, or {}")
        key = _idempotency_key(request)
        reply = self._parts.ledger.reverse(ref, key, request[REQUEST_ID], store=_store(request))
        return _reply(await _exactly_once(reply))

    async def series(self, request: web.Request) -> web.Response:
        try:
            summary = await self._parts.series.get(series_id_of(request))
        except UpstreamFailure as exc:
            raise upstream_error(exc) from None
        if summary is None:
            raise ApiError(CATALOG["SERIES_NOT_FOUND"])
        return json_response(200, series_out(summary))


def _redeemed_coupons(outcome: Outcome, request_id: str) -> list[RedeemedCoupon]:
    return [
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


def _waiting_coupons(command: RedemptionCommand) -> list[RedeemedCoupon]:
    return [
        RedeemedCoupon(code=c, series_id=None, discount=None, redeemed=False, redemption_id=None, error=None)
        for c in command.codes
    ]


def _unsettled(
    ref: str, command: RedemptionCommand, status: RedeemStatus, error: ErrorDetail | None = None
) -> RedeemOut:
    """A redemption with nothing redeemed under it (yet): each code waiting, no discount."""
    return RedeemOut(
        ref=ref,
        status=status,
        transaction_number=command.transaction_number or "",
        coupons=_waiting_coupons(command),
        total_discount=ZERO,
        error=error,
    )


def _sent(answer: Answer, body: bytes, error: str | None = None) -> StoredResponse:
    """A recorded answer, its HTTP status written beside what it says: replicas of the previous release, in a rolling
    deploy on one Redis, read only ``status`` (this one reads it first too, so every replay keeps the first status)."""
    response = StoredResponse(answer, body, error)
    return msgspec.structs.replace(response, status=answer_status(response))


class JsonRenderer:
    """The bytes of every redemption answer: what the till gets, and what replays get again."""

    def outcome(self, outcome: Outcome, command: RedemptionCommand, request_id: str) -> StoredResponse:
        redeemed = sum(o.ok for o in outcome.codes)
        status: Literal["redeemed", "partially_redeemed", "rejected"] = "rejected"
        if redeemed:
            status = "redeemed" if redeemed == len(outcome.codes) else "partially_redeemed"
        # What happened, and a refusal's reason: ``answer_status`` chooses the HTTP status from them.
        error = outcome.failure.error.code if outcome.failure and not redeemed else None
        body = RedeemOut(
            ref=outcome.ref or "",
            status=status,
            transaction_number=command.transaction_number or "",
            coupons=_redeemed_coupons(outcome, request_id),
            total_discount=outcome.total_discount,
            error=detail(outcome.failure, request_id) if outcome.failure else None,
        )
        return _sent(status, encoder.encode(body), error)

    def pending(self, ref: str, command: RedemptionCommand, request_id: str) -> StoredResponse:
        return _sent("pending", encoder.encode(_unsettled(ref, command, "pending")))

    def not_applied(self, ref: str, command: RedemptionCommand, request_id: str) -> StoredResponse:
        error = CATALOG["REDEMPTION_NOT_APPLIED"]
        body = _unsettled(ref, command, "failed", error_detail(error, request_id))
        return _sent("not_applied", encoder.encode(body), error.code)

    def reversed(self, ref: str, redemption_ids: dict[str, int], request_id: str) -> StoredResponse:
        coupons = [ReversedCoupon(code=c, redemption_id=i or None, reversed=True) for c, i in redemption_ids.items()]
        return _sent("reversed", encoder.encode(ReversalOut(ref=ref, status="reversed", coupons=coupons)))

    def reversed_redeem(self, entry: Entry, request_id: str) -> StoredResponse:
        """409 ``REDEMPTION_REVERSED``: the redemption as it stands now, with the ids that were reversed."""
        assert entry.reversal is not None
        error = CATALOG["REDEMPTION_REVERSED"]
        when = datetime.fromtimestamp(entry.reversal.at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if entry.reversal.state == "done":
            what = f"Redemption {entry.ref} was reversed at {when}: nothing is redeemed under it now."
        else:
            what = f"Redemption {entry.ref} is being reversed (since {when}): give no discount for it."
        message = f"{what} To redeem again, send a new transaction number (or a new Idempotency-Key)."
        coupons = [
            RedeemedCoupon(code=c, series_id=None, discount=None, redeemed=False, redemption_id=i or None, error=None)
            for c, i in entry.redemption_ids.items()
        ]
        body = RedeemOut(
            ref=entry.ref,
            status="reversed",
            transaction_number=entry.command.transaction_number,
            coupons=coupons,
            total_discount=ZERO,
            error=error_detail(error, request_id, message=message),
        )
        return _sent("reversed_redeem", encoder.encode(body), error.code)
