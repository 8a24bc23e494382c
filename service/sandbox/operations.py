"""One function per upstream operation: parse the request (awaiting the body), then hand back a `Prepared`
whose ``apply`` runs the rules and mutates the state synchronously (atomic on the event loop) and whose
``fail`` renders the operation's failure envelope for a business code (used by CODE faults).

Invalid input raises `Rejected` with the reply to send; nothing is applied then.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any, Final

import msgspec
from aiohttp import web
from multidict import MultiMapping

from . import wire
from .config import Style
from .sandbox import Sandbox
from .state import (
    IDENTIFIER_KINDS,
    SUCCESS,
    Coupon,
    Customer,
    CustomerRef,
    DomainError,
    RedemptionRange,
    SandboxState,
    Series,
    UploadKind,
    Verdict,
    is_well_formed,
    message_for,
)
from .uploads import UploadError, coupon_upload_settings, parse_csv, redeemed_upload_settings

MAX_CODES: Final = 50


@dataclass(frozen=True)
class Reply:
    status: int
    body: object = None
    #: Raw body instead of JSON (for HTML / malformed replies).
    text: str | None = None
    content_type: str = "application/json"


class Rejected(Exception):
    """The request is invalid; `reply` says why. Nothing was applied."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        super().__init__(reply.status)


@dataclass(frozen=True)
class Prepared:
    apply: Callable[[], Reply]
    fail: Callable[[int, str], Reply]
    #: Batch operations: the failure envelope where only coupon `target` carries the code, the others 749
    #: (falls back to `fail` when absent, or when the request does not name `target`).
    refuse: Callable[[int, str, str], Reply] | None = None
    #: Redeem operations: the success reply with a warning entry added (`scope`: both, top, items).
    warn: Callable[[Reply, wire.Json, str], Reply] | None = None


@dataclass(frozen=True)
class OpContext:
    request: web.Request
    sandbox: Sandbox
    #: Store the call is attributed to (Basic till's store, attribution header, or the default store).
    store: str
    #: Response style drawn for this call (redeem and bulk redeem only; see `Sandbox.next_style`).
    style: Style = "doc"


Operation = Callable[[OpContext], Awaitable[Prepared]]


# ---- input helpers -------------------------------------------------------------------------------------------


def flat(code: int, message: str | None = None, status: int = 400) -> Reply:
    return Reply(status, wire.flat_error(code, message))


def invalid(what: str) -> Rejected:
    return Rejected(flat(629, f"Invalid Input: {what}"))


async def json_object(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        data = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise invalid("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise invalid("request body must be a JSON object")
    return data


def customer_ref(source: Mapping[str, Any], where: str) -> CustomerRef:
    """The first non-empty of id, mobile, email, externalId (empty strings mean "not given")."""
    for kind in IDENTIFIER_KINDS:
        value = source.get(kind)
        if value is None or value == "":
            continue
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise invalid(f"{where}.{kind} must be a string")
        return CustomerRef(kind, str(value))
    raise invalid(f"{where} needs one of id, mobile, email, externalId")


def find_customer(sandbox: Sandbox, ref: CustomerRef) -> Customer:
    customer = sandbox.state.find_customer(ref)
    if customer is None:
        raise Rejected(flat(701))
    return customer


def amount(value: object, name: str) -> Decimal:
    if value is None or value == "":
        raise invalid(f"{name} is required")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise invalid(f"{name} must be a number")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise invalid(f"{name} must be a number") from None
    if not number.is_finite() or number < 0:
        raise invalid(f"{name} must be a non-negative number")
    return number


def split_values(query: MultiMapping[str], name: str) -> list[str]:
    """Repeated and comma-separated values of a query parameter, in order (empty entries kept)."""
    return [part for value in query.getall(name, []) for part in value.split(",")]


def integer(value: object, name: str) -> int:
    if isinstance(value, bool):
        raise invalid(f"{name} must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise invalid(f"{name} must be an integer")


# ---- token ---------------------------------------------------------------------------------------------------


def _token_error(status: int, code: int, message: str) -> Reply:
    return Reply(status, {"data": None, "errors": [{"code": code, "message": message}]})


async def token(ctx: OpContext) -> Prepared:
    raw = await ctx.request.read()
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("key"), str) or not isinstance(body.get("secret"), str):
        raise Rejected(_token_error(400, 400, "Request body must be JSON with string 'key' and 'secret'"))
    key, secret = body["key"], body["secret"]
    sandbox = ctx.sandbox

    def apply() -> Reply:
        if key != sandbox.config.client_key or secret != sandbox.config.client_secret:
            return _token_error(401, 401, "Invalid client key or secret")
        access_token, ttl = sandbox.issue_token()
        return Reply(200, {"data": {"accessToken": access_token, "ttlSeconds": ttl}, "errors": None})

    return Prepared(apply, lambda code, message: _token_error(400, code, message))


# ---- is_redeemable -------------------------------------------------------------------------------------------


_DETAILS_VALUES: Final = ("true", "false", "extended")


async def is_redeemable(ctx: OpContext) -> Prepared:
    query = ctx.request.query
    ref = customer_ref(query, "query")
    raw = query.getall("code", [])
    if not raw or all(value == "" for value in raw):
        raise Rejected(flat(781))
    codes = split_values(query, "code")
    if len(codes) > MAX_CODES:
        raise invalid(f"at most {MAX_CODES} coupon codes per request")
    details = query.get("details", "false").strip().lower()
    if details not in _DETAILS_VALUES:
        raise invalid("details must be true, false or extended")
    sandbox = ctx.sandbox
    customer = find_customer(sandbox, ref)
    # No sample shows what details=true adds: the answer keeps the sample's shape unless the sandbox is told
    # to add each item's seriesId (SANDBOX_IS_REDEEMABLE_SERIES).
    series_id = details != "false" and sandbox.options.is_redeemable_series

    def envelope(items: list[wire.Json], status: Mapping[str, Any]) -> Reply:
        return Reply(
            200,
            {
                "customer": wire.customer_json(customer, identifiers_all=False),
                "redemption": items,
                "redemptionStatus": status,
                "warnings": [],
            },
        )

    def apply() -> Reply:
        verdicts = sandbox.state.evaluate(
            customer, codes, now=sandbox.now(), store=ctx.store, bill_amount=None, not_issued_code=723
        )
        first_bad = next((v for v in verdicts if not v.ok), None)
        sibling_749 = first_bad is not None and sandbox.options.is_redeemable_all_or_nothing
        items = [
            wire.is_redeemable_item(v, status=749 if sibling_749 and v.ok else None, series_id=series_id)
            for v in verdicts
        ]
        if first_bad is None:
            return envelope(items, wire.top_status(SUCCESS, "Coupon isRedeem successful"))
        return envelope(items, wire.top_status(first_bad.status))

    def fail(code: int, message: str) -> Reply:
        items = [wire.is_redeemable_item(Verdict(c, code), message=message) for c in codes]
        return envelope(items, wire.top_status(code, message))

    def refuse(code: int, message: str, target: str) -> Reply:
        if target not in codes:
            return fail(code, message)
        items = [
            wire.is_redeemable_item(Verdict(c, code), message=message)
            if c == target
            else wire.is_redeemable_item(Verdict(c, 749))
            for c in codes
        ]
        return envelope(items, wire.top_status(code, message))

    return Prepared(apply, fail, refuse=refuse)


# ---- redeem / bulk redeem ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _RedeemRequest:
    customer: Customer
    codes: list[str]
    bill_amount: Decimal
    transaction_number: str

    def verdicts(self, ctx: OpContext, now: datetime) -> list[Verdict]:
        """Each code's verdict for this customer, bill and the caller's store."""
        return ctx.sandbox.state.evaluate(
            self.customer, self.codes, now=now, store=ctx.store, bill_amount=self.bill_amount
        )

    def redeem(self, ctx: OpContext, verdicts: list[Verdict], now: datetime, shape: wire.ItemShape) -> list[Redeemed]:
        """Redeem every code (each verdict ok): each redemption's id and its item in ``shape``."""
        state = ctx.sandbox.state
        redemptions = state.redeem(
            self.customer,
            verdicts,
            now=now,
            store=ctx.store,
            transaction_number=self.transaction_number,
            bill_amount=self.bill_amount,
        )
        return [(r.id, wire.redeemed_item(r, state.series[r.series_id], shape)) for r in redemptions]


#: A redemption made: its id and its item as the reply shows it.
Redeemed = tuple[int, wire.Json]


async def _redeem_request(ctx: OpContext, *, max_codes: int) -> _RedeemRequest:
    body = await json_object(ctx.request)
    bill = amount(body.get("billAmount"), "billAmount")
    user = body.get("user")
    if not isinstance(user, dict):
        raise invalid("user is required (an object with one of id, mobile, email, externalId)")
    ref = customer_ref(user, "user")
    entries = body.get("redemptionRequestList")
    if entries is None or entries == []:
        raise Rejected(flat(781))
    if not isinstance(entries, list):
        raise invalid("redemptionRequestList must be a list")
    if len(entries) > max_codes:
        raise invalid(f"at most {max_codes} coupon(s) in redemptionRequestList")
    codes: list[str] = []
    for entry in entries:
        code = entry.get("code") if isinstance(entry, dict) else None
        if code is None:
            raise Rejected(flat(781))
        if not isinstance(code, str):
            raise invalid("redemptionRequestList[].code must be a string")
        codes.append(code)
    txn = body.get("transactionNumber")
    if txn is None:
        txn = ""
    elif isinstance(txn, int) and not isinstance(txn, bool):
        txn = str(txn)
    elif not isinstance(txn, str):
        raise invalid("transactionNumber must be a string")
    time = body.get("redemptionTime")
    if time is not None and not isinstance(time, str):
        raise invalid("redemptionTime must be a string 'YYYY-MM-DD HH:MM:SS'")
    return _RedeemRequest(find_customer(ctx.sandbox, ref), codes, bill, txn.strip())


def _with_warning(
    reply: Reply, items: list[wire.Json], top: list[list[wire.Json]], warning: wire.Json, scope: str
) -> Reply:
    if scope in ("both", "items"):
        for item in items:
            wire.add_warning(item, warning)
    if scope in ("both", "top"):
        for warnings in top:
            warnings.append(dict(warning))
    return reply


async def redeem(ctx: OpContext) -> Prepared:
    req = await _redeem_request(ctx, max_codes=1)
    sandbox = ctx.sandbox
    doc = ctx.style == "doc"
    shape = wire.DOC_ITEM if doc else wire.NESTED_ITEM
    # The "Redeem Coupons" sample's customer has no identifiersAll; the "Redeem Coupon (Single)" one has.
    customer_json = wire.customer_json(req.customer, identifiers_all=not doc)

    def envelope(status: int, items: list[wire.Json], code: int, message: str | None = None) -> Reply:
        return Reply(
            status,
            {
                "redemption": items,
                "redemptionStatus": wire.top_status(code, message),
                "customer": customer_json,
                "warnings": [],
            },
        )

    def fail(code: int, message: str) -> Reply:
        series = _series_of(sandbox, req.codes)
        items = [wire.failed_item(c, s, code, shape, message) for c, s in zip(req.codes, series, strict=True)]
        return envelope(sandbox.options.failure_http_status, items, code, message)

    def apply() -> Reply:
        if not req.transaction_number:
            return fail(718, message_for(718))
        now = sandbox.now()
        verdicts = req.verdicts(ctx, now)
        bad = [v for v in verdicts if not v.ok]
        if bad:
            items = [wire.failed_item(v.code, v.series, v.status, shape) for v in verdicts]
            return envelope(sandbox.options.failure_http_status, items, bad[0].status)
        return envelope(200, [item for _, item in req.redeem(ctx, verdicts, now, shape)], SUCCESS)

    def warn(reply: Reply, warning: wire.Json, scope: str) -> Reply:
        body = reply.body
        if reply.status != 200 or not isinstance(body, dict) or not body["redemptionStatus"]["status"]:
            return reply
        return _with_warning(reply, body["redemption"], [body["warnings"]], warning, scope)

    return Prepared(apply, fail, warn=warn)


def _series_of(sandbox: Sandbox, codes: list[str]) -> list[Series | None]:
    coupons = [sandbox.state.coupon_by_code(c) for c in codes]
    return [None if c is None else sandbox.state.series[c.series_id] for c in coupons]


async def bulk_redeem(ctx: OpContext) -> Prepared:
    if not ctx.request.query.get("source", "").strip():
        raise invalid("query parameter 'source' is required (e.g. INSTORE)")
    dry_run = ctx.request.query.get("is_redeemable", "").lower() == "true"
    req = await _redeem_request(ctx, max_codes=MAX_CODES)
    sandbox = ctx.sandbox
    # The bulk sample's result has the nested status but no redemptionId; the nested style adds it.
    shape = wire.BULK_ITEM if ctx.style == "doc" else wire.NESTED_ITEM

    def failure(entries: list[wire.Json]) -> Reply:
        return Reply(
            sandbox.options.failure_http_status,
            {"response": entries, "totalCount": len(entries), "failureCount": len(entries)},
        )

    def refused(codes: list[int], messages: list[str | None]) -> Reply:
        series = _series_of(sandbox, req.codes)
        return failure(
            [
                {
                    "entityId": -1,
                    "result": wire.failed_item(c, s, code, shape, message),
                    "errors": [wire.status_entry(code, message)],
                }
                for c, s, code, message in zip(req.codes, series, codes, messages, strict=True)
            ]
        )

    def fail(code: int, message: str) -> Reply:
        return refused([code] * len(req.codes), [message] * len(req.codes))

    def refuse(code: int, message: str, target: str) -> Reply:
        if target not in req.codes:
            return fail(code, message)
        return refused(
            [code if c == target else 749 for c in req.codes],
            [message if c == target else None for c in req.codes],
        )

    def apply() -> Reply:
        if not req.transaction_number:
            return fail(718, message_for(718))
        now = sandbox.now()
        verdicts = req.verdicts(ctx, now)
        if not all(v.ok for v in verdicts):
            entries = []
            for v in verdicts:
                code = v.status if not v.ok else 749
                entries.append(
                    {
                        "entityId": -1,
                        "result": wire.failed_item(v.code, v.series, code, shape),
                        "errors": [wire.status_entry(code)],
                    }
                )
            return failure(entries)
        if dry_run:
            entries = [{"entityId": -1, "result": wire.dry_run_item(v, shape), "errors": []} for v in verdicts]
        else:
            entries = [
                {"entityId": rid, "result": item, "errors": []} for rid, item in req.redeem(ctx, verdicts, now, shape)
            ]
        return Reply(200, {"response": entries, "totalCount": len(entries), "failureCount": 0})

    def warn(reply: Reply, warning: wire.Json, scope: str) -> Reply:
        body = reply.body
        if reply.status != 200 or not isinstance(body, dict) or body["failureCount"]:
            return reply
        entries: list[wire.Json] = body["response"]
        if scope in ("both", "top"):
            for entry in entries:
                entry["warnings"] = []
        return _with_warning(
            reply, [e["result"] for e in entries], [e["warnings"] for e in entries if "warnings" in e], warning, scope
        )

    return Prepared(apply, fail, refuse=refuse, warn=warn)


# ---- series --------------------------------------------------------------------------------------------------


async def series_get(ctx: OpContext) -> Prepared:
    raw_ids = [i.strip() for i in split_values(ctx.request.query, "ids")]
    if not any(raw_ids):
        raise Rejected(Reply(400, {"entity": [], "warnings": [wire.status_entry(746)]}))
    sandbox = ctx.sandbox

    def apply() -> Reply:
        entity: list[wire.Json] = []
        warnings: list[wire.Json] = []
        seen: set[int] = set()
        for raw in raw_ids:
            series = sandbox.state.series.get(int(raw)) if raw.lstrip("-").isdigit() else None
            if series is None:
                warnings.append(wire.status_entry(755))
            elif series.id not in seen:
                seen.add(series.id)
                entity.append(wire.series_json(series, sandbox.state.series_stats(series.id)))
        return Reply(200 if entity else 400, {"entity": entity, "warnings": warnings})

    def fail(code: int, message: str) -> Reply:
        return Reply(400, {"entity": [], "warnings": [wire.status_entry(code, message)]})

    return Prepared(apply, fail)


_SERIES_INT_FIELDS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "maxCreate": "max_create",
        "maxRedeem": "max_redeem",
        "maxVouchersPerUser": "max_vouchers_per_user",
        "maxRedemptionsInSeriesPerUser": "max_redemptions_in_series_per_user",
        "minDaysBetweenRedemption": "min_days_between_redemption",
        "redemptionValidAfterDays": "redemption_valid_after_days",
        "expiryStrategyValue": "expiry_strategy_value",
        "randomCodeLength": "random_code_length",
    }
)
_SERIES_BOOL_FIELDS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "anyUser": "any_user",
        "isMultipleUseAllowed": "is_multiple_use_allowed",
        "isMultipleVouchersPerUserAllowed": "is_multiple_vouchers_per_user_allowed",
    }
)
_SERIES_PASSTHROUGH: Final = (
    "validDaysFromCreation",
    "sameUserMultipleRedeem",
    "isReferralExistingUsersAllowed",
    "isValidWithDiscountedItem",
    "smsTemplate",
    "isSMSDisabled",
    "info",
    "doNotResendExistingVoucher",
    "mutualExclusiveSeriesIds",
    "minDaysBetweenVouchers",
    "alphaNumeric",
    "resendMessageEnabled",
    "clientHandlingType",
    "targetUserDetails",
)


def _date(value: object, name: str) -> datetime:
    if not isinstance(value, str):
        raise invalid(f"{name} must be an ISO-8601 date-time string")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise invalid(f"{name} must be an ISO-8601 date-time string") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def series_from_request(spec: Mapping[str, Any], now: datetime) -> Series:
    """Validate a ``CouponSeriesV2`` object (629 naming the field) into a Series with id 0."""
    description = spec.get("description")
    if not isinstance(description, str) or not description.strip():
        raise invalid("description is required")
    discount_type = spec.get("discountType")
    if discount_type not in ("ABS", "PERC"):
        raise invalid("discountType must be ABS or PERC")
    value = amount(spec.get("discountValue"), "discountValue")
    if discount_type == "PERC" and value > 100:
        raise invalid("discountValue of a PERC series must be <= 100")
    series = Series(
        id=0,
        description=description.strip(),
        discount_type=discount_type,
        discount_value=value,
        valid_till=_date(spec["validTillDate"], "validTillDate")
        if spec.get("validTillDate") is not None
        else now + timedelta(days=365),
        created_on=now,
    )
    if spec.get("discountUpto") is not None:
        series.discount_upto = amount(spec["discountUpto"], "discountUpto")
    if spec.get("minBillAmount") is not None:
        series.min_bill_amount = amount(spec["minBillAmount"], "minBillAmount")
    if spec.get("maxBillAmount") is not None:
        series.max_bill_amount = amount(spec["maxBillAmount"], "maxBillAmount")
    if series.min_bill_amount > series.max_bill_amount:
        raise invalid("minBillAmount must not exceed maxBillAmount")
    for key, attr in _SERIES_INT_FIELDS.items():
        if spec.get(key) is not None:
            setattr(series, attr, integer(spec[key], key))
    for key, attr in _SERIES_BOOL_FIELDS.items():
        if spec.get(key) is not None:
            if not isinstance(spec[key], bool):
                raise invalid(f"{key} must be a boolean")
            setattr(series, attr, spec[key])
    for key in ("discountCode", "seriesCode", "discountOn", "expiryStrategyType"):
        if spec.get(key) is not None and not isinstance(spec[key], str):
            raise invalid(f"{key} must be a string")
    series.discount_code = spec.get("discountCode") or "NO_VALUE"
    series.series_code = spec.get("seriesCode") or ""
    series.discount_on = spec.get("discountOn") or "BILL"
    series.expiry_strategy_type = spec.get("expiryStrategyType") or "SERIES_EXPIRY"
    if spec.get("redemptionValidFrom") is not None:
        series.redemption_valid_from = _date(spec["redemptionValidFrom"], "redemptionValidFrom")
    if spec.get("redemptionRange") is not None:
        raw_range = spec["redemptionRange"]
        if not isinstance(raw_range, str | dict):
            raise invalid("redemptionRange must be a JSON string")
        try:
            series.redemption_range = RedemptionRange.parse(raw_range)
        except ValueError as exc:
            raise invalid(str(exc)) from None
    if spec.get("redeemAtStore") is not None:
        series.redeem_at_store = _stores(spec["redeemAtStore"])
    series.extra = {key: spec[key] for key in _SERIES_PASSTHROUGH if spec.get(key) is not None}
    series.extra.setdefault("numTotal", 0)
    return series


def _stores(value: object) -> tuple[str, ...] | None:
    if isinstance(value, str):
        try:
            value = msgspec.json.decode(value)
        except msgspec.DecodeError:
            raise invalid("redeemAtStore must be a JSON list of store codes") from None
    if not isinstance(value, list) or not value:
        raise invalid("redeemAtStore must be a JSON list of store codes")
    stores = tuple(str(v) for v in value)
    return None if "-1" in stores else stores


async def series_create(ctx: OpContext) -> Prepared:
    body = await json_object(ctx.request)
    spec = body.get("CouponSeriesV2")
    if not isinstance(spec, dict):
        raise invalid("CouponSeriesV2 object is required")
    sandbox = ctx.sandbox
    series = series_from_request(spec, sandbox.now())

    def apply() -> Reply:
        series.id = sandbox.state.new_series_id()
        try:
            created = sandbox.state.add_series(series)
        except DomainError as exc:
            return flat(exc.code, exc.message)
        return Reply(200, wire.series_json(created, sandbox.state.series_stats(created.id), created=True))

    return Prepared(apply, lambda code, message: flat(code, message))


# ---- issue ---------------------------------------------------------------------------------------------------


def _series_id(value: object, name: str) -> int:
    if value is None or value == "":
        raise Rejected(flat(746))
    try:
        return integer(value, name)
    except Rejected:
        raise Rejected(flat(707)) from None


async def issue(ctx: OpContext) -> Prepared:
    body = await json_object(ctx.request)
    series_id = _series_id(body.get("seriesId"), "seriesId")
    sandbox = ctx.sandbox
    series = sandbox.state.series.get(series_id)
    if series is None:
        raise Rejected(flat(707))
    raw_customer = body.get("customer")
    if not isinstance(raw_customer, dict):
        raise invalid("customer is required (an object with one of id, mobile, email, externalId)")
    customer = find_customer(sandbox, customer_ref(raw_customer, "customer"))

    def apply() -> Reply:
        try:
            coupon = sandbox.state.issue(series_id, customer, now=sandbox.now())
        except DomainError as exc:
            return flat(exc.code, exc.message)
        return Reply(200, wire.issued_coupon_json(coupon, series, customer, 0))

    return Prepared(apply, lambda code, message: flat(code, message))


async def bulk_issue(ctx: OpContext) -> Prepared:
    if not ctx.request.query.get("source", "").strip():
        raise invalid("query parameter 'source' is required (e.g. INSTORE)")
    body = await json_object(ctx.request)
    raw_ids = body.get("seriesIds")
    if raw_ids is None or raw_ids == []:
        raise Rejected(flat(746))
    if not isinstance(raw_ids, list):
        raise invalid("seriesIds must be a list")
    series_ids = [integer(v, "seriesIds[]") for v in raw_ids]
    raw_customer = body.get("customer")
    if not isinstance(raw_customer, dict):
        raise invalid("customer is required (an object with one of id, mobile, email, externalId)")
    sandbox = ctx.sandbox
    customer = find_customer(sandbox, customer_ref(raw_customer, "customer"))

    def apply() -> Reply:
        now = sandbox.now()
        entries: list[wire.Json] = []
        for series_id in series_ids:
            try:
                coupon = sandbox.state.issue(series_id, customer, now=now)
            except DomainError as exc:
                entries.append(
                    {
                        "entityId": series_id,
                        "result": None,
                        "errors": [wire.status_entry(exc.code, exc.message)],
                        "warnings": [],
                    }
                )
                continue
            result = wire.bulk_issued_coupon_json(coupon, sandbox.state.series[series_id], 0)
            entries.append({"entityId": series_id, "result": result, "errors": [], "warnings": []})
        failures = sum(1 for e in entries if e["errors"])
        return Reply(200, {"response": entries, "totalCount": len(entries), "failureCount": failures})

    return Prepared(apply, lambda code, message: flat(code, message))


# ---- coupon details / customer coupons -----------------------------------------------------------------------


def _listing_failure(code: int, message: str) -> Reply:
    return Reply(400, {"data": [], "warnings": [], "errors": [wire.status_entry(code, message)]})


def _coupon_by_code(state: SandboxState, code: str) -> list[Coupon] | int:
    """The coupon of one ``couponCodes`` value, or its error: 702 malformed, 780 unknown."""
    if not is_well_formed(code):
        return 702
    coupon = state.coupon_by_code(code)
    return 780 if coupon is None else [coupon]


def _coupon_by_id(state: SandboxState, raw: str) -> list[Coupon] | int:
    """The coupon of one ``couponIds`` value, or 780 when it is not a known id."""
    coupon = state.coupons.get(int(raw)) if raw.isdigit() else None
    return 780 if coupon is None else [coupon]


def _coupons_of_owner(state: SandboxState, raw: str) -> list[Coupon] | int:
    """The coupons issued to one ``issuedToIds`` customer (by id), or 701 when there is no such customer."""
    owner = state.customers.get(int(raw)) if raw.isdigit() else None
    return 701 if owner is None else sorted(state.coupons_of(owner.id), key=lambda c: c.id)


async def coupon_details(ctx: OpContext) -> Prepared:
    query = ctx.request.query
    codes = [c for c in split_values(query, "couponCodes") if c != ""]
    ids = [c.strip() for c in split_values(query, "couponIds") if c.strip()]
    owners = [c.strip() for c in split_values(query, "issuedToIds") if c.strip()]
    if not (codes or ids or owners):
        raise Rejected(flat(781))
    sandbox = ctx.sandbox

    def apply() -> Reply:
        state = sandbox.state
        found: list[Coupon] = []
        errors: list[wire.Json] = []
        for values, find in ((codes, _coupon_by_code), (ids, _coupon_by_id), (owners, _coupons_of_owner)):
            for value in values:
                got = find(state, value)
                if isinstance(got, int):
                    errors.append(wire.status_entry(got))
                else:
                    found.extend(got)
        data, seen = [], set()
        for coupon in found:
            if coupon.id in seen:
                continue
            seen.add(coupon.id)
            count = len(state.active_redemptions(coupon_id=coupon.id))
            data.append(wire.coupon_details_json(coupon, state.series[coupon.series_id], count))
        return Reply(200, {"data": data, "warnings": [], "errors": errors})

    return Prepared(apply, _listing_failure)


_COUPON_STATUSES: Final = ("ACTIVE", "REDEEMED", "ACTIVE_REDEEMED")


async def customer_coupons(ctx: OpContext) -> Prepared:
    query = ctx.request.query
    ref = customer_ref(query, "query")
    wanted = query.get("status", "").strip().upper()
    if wanted and wanted not in _COUPON_STATUSES:
        raise invalid(f"status must be one of {', '.join(_COUPON_STATUSES)}")
    sandbox = ctx.sandbox
    customer = find_customer(sandbox, ref)

    def apply() -> Reply:
        state = sandbox.state
        now = sandbox.now()
        mine = {c.id: c for c in state.coupons_of(customer.id)}
        for r in state.active_redemptions(customer_id=customer.id):
            mine.setdefault(r.coupon_id, state.coupons[r.coupon_id])
        data = []
        for coupon in sorted(mine.values(), key=lambda c: c.id):
            series = state.series[coupon.series_id]
            redemptions = sorted(
                state.active_redemptions(coupon_id=coupon.id, customer_id=customer.id), key=lambda r: r.id
            )
            redeemed = bool(redemptions)
            active = not redeemed and coupon.valid_till >= now and series.valid_till >= now
            if (
                not wanted
                or (wanted == "ACTIVE" and active)
                or (wanted == "REDEEMED" and redeemed)
                or (wanted == "ACTIVE_REDEEMED" and (active or redeemed))
            ):
                data.append(wire.customer_coupon_json(coupon, series, redemptions))
        return Reply(200, {"data": data, "warnings": [], "errors": []})

    return Prepared(apply, _listing_failure)


# ---- reactivate ----------------------------------------------------------------------------------------------


def _reactivate_reply(status: int, code: int | None = None, message: str | None = None) -> Reply:
    errors = [] if code is None else [{"code": code, "message": message or message_for(code)}]
    return Reply(status, {"warnings": [], "errors": errors, "success": code is None})


async def reactivate(ctx: OpContext) -> Prepared:
    body = await json_object(ctx.request)
    raw_ids = body.get("redemptionIds")
    if raw_ids is None or raw_ids == []:
        raise Rejected(_reactivate_reply(400, 661))
    if not isinstance(raw_ids, list):
        raise Rejected(_reactivate_reply(400, 629, "Invalid Input: redemptionIds must be a list"))
    ids: list[int] = []
    for raw in raw_ids:
        if isinstance(raw, int) and not isinstance(raw, bool):
            ids.append(raw)
        elif isinstance(raw, str) and raw.strip().isdigit():
            ids.append(int(raw))
        else:
            raise Rejected(_reactivate_reply(400, 510))
    sandbox = ctx.sandbox

    def apply() -> Reply:
        try:
            sandbox.state.reactivate(list(dict.fromkeys(ids)), now=sandbox.now())
        except DomainError as exc:
            return _reactivate_reply(400, exc.code, exc.message)
        return _reactivate_reply(200)

    return Prepared(apply, lambda code, message: _reactivate_reply(400, code, message))


# ---- v1 uploads ----------------------------------------------------------------------------------------------


def _v1_reject(message: str) -> Rejected:
    return Rejected(Reply(400, wire.v1_error(400, message)))


def _v1_fail(code: int, message: str) -> Reply:
    return Reply(400, wire.v1_error(400, message, code))


def _path_series(ctx: OpContext) -> Series:
    raw = ctx.request.match_info.get("seriesId", "")
    series = ctx.sandbox.state.series.get(int(raw)) if raw.isdigit() else None
    if series is None:
        raise _v1_reject("Invalid coupon series id")
    return series


@dataclass
class _Form:
    fields: dict[str, str] = field(default_factory=dict)
    file_name: str | None = None
    file_data: bytes | None = None


async def _multipart(request: web.Request) -> _Form:
    if not request.content_type.startswith("multipart/form-data"):
        raise _v1_reject("Content-Type must be multipart/form-data")
    try:
        post = await request.post()
    except (ValueError, msgspec.DecodeError) as exc:
        raise _v1_reject(f"malformed multipart body: {exc}") from None
    form = _Form()
    for name, value in post.items():
        if isinstance(value, web.FileField):
            data = value.file.read()
            if name == "file":
                form.file_name, form.file_data = value.filename or "upload.csv", data
            else:
                form.fields[name] = data.decode("utf-8", "replace").strip()
        elif isinstance(value, bytes | bytearray):
            form.fields[name] = bytes(value).decode("utf-8", "replace").strip()
        else:
            form.fields[name] = value.strip()
    if form.file_data is None:
        raise _v1_reject("file is required (a multipart file part named 'file')")
    return form


#: The form fields each upload documents (besides ``file``). Field names are case-sensitive.
_COUPON_UPLOAD_FIELDS: Final = ("customerIdentifier", "customerIdentifierColumn")
_REDEEMED_UPLOAD_FIELDS: Final = ("customerIdentifier", "couponIdentifier", "uploadHeaders", "Details")


def _documented_fields(form: _Form, documented: tuple[str, ...]) -> None:
    """Only documented field names: an undocumented one (e.g. ``details`` for ``Details``) is refused with 400
    rather than ignored, so a client that misspells a field learns it here and not in production."""
    for name in form.fields:
        if name in documented:
            continue
        twin = next((d for d in documented if d.lower() == name.lower()), None)
        hint = f"; the documented field is {twin!r}" if twin else f"; documented fields: file, {', '.join(documented)}"
        raise _v1_reject(f"unknown field {name!r}{hint}")


def _rows(form: _Form) -> list[list[str]]:
    assert form.file_data is not None
    try:
        return parse_csv(form.file_data)
    except UploadError as exc:
        raise _v1_reject(str(exc)) from None


def _due(sandbox: Sandbox, now: datetime) -> datetime:
    seconds = sandbox.config.upload_job_seconds
    return now + timedelta(seconds=seconds if math.isfinite(seconds) else 0)


async def _upload(
    ctx: OpContext, kind: UploadKind, documented: tuple[str, ...], settings_of: Callable[..., dict[str, Any]]
) -> Prepared:
    """Either upload: the documented form fields only, their settings (``settings_of`` takes the fields' values in
    ``documented`` order), the CSV's rows; a job of ``kind`` when it applies."""
    series = _path_series(ctx)
    form = await _multipart(ctx.request)
    _documented_fields(form, documented)
    try:
        settings = settings_of(*(form.fields.get(name) for name in documented))
    except UploadError as exc:
        raise _v1_reject(str(exc)) from None
    rows = _rows(form)
    sandbox = ctx.sandbox

    def apply() -> Reply:
        now = sandbox.now()
        job = sandbox.state.new_upload_job(
            kind=kind,
            series_id=series.id,
            now=now,
            due_on=_due(sandbox, now),
            file_name=form.file_name or "upload.csv",
            rows=rows,
            settings=settings,
        )
        return Reply(200, wire.upload_envelope(series.id, [job], kind=kind, file_name=job.uploaded_file_url))

    return Prepared(apply, _v1_fail)


async def upload_coupons(ctx: OpContext) -> Prepared:
    return await _upload(ctx, "coupons", _COUPON_UPLOAD_FIELDS, coupon_upload_settings)


async def upload_redeemed(ctx: OpContext) -> Prepared:
    return await _upload(ctx, "redeemed", _REDEEMED_UPLOAD_FIELDS, redeemed_upload_settings)


def _jobs(ctx: OpContext, kind: UploadKind) -> Prepared:
    """The series' upload jobs of ``kind``, as either status operation answers them."""
    series = _path_series(ctx)
    sandbox = ctx.sandbox

    def apply() -> Reply:
        return Reply(200, wire.upload_envelope(series.id, sandbox.state.jobs_of(series.id, kind), kind=kind))

    return Prepared(apply, _v1_fail)


async def upload_status(ctx: OpContext) -> Prepared:
    return _jobs(ctx, "coupons")


async def redeemed_upload_status(ctx: OpContext) -> Prepared:
    return _jobs(ctx, "redeemed")
