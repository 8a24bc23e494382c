"""The `Sandbox` object: state + clock + tokens + faults + call records, shared by the app and the tests."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Literal

from . import wire
from .config import ResponseStyle, SandboxConfig, Style, Till
from .faults import Fault, FaultQueue
from .seed import seed_state
from .state import (
    ORG_ID,
    Coupon,
    Customer,
    DomainError,
    Redemption,
    RedemptionRange,
    SandboxState,
    Series,
)
from .uploads import process_due_jobs


@dataclass
class SandboxOptions:
    """Behaviour switches that tests may flip at run time."""

    #: HTTP status of redeem / bulk redeem business failures: 400 (default) or 200 ("HTTP 200, status false").
    failure_http_status: int = 400
    #: Extra latency before every operation.
    latency_ms: float = 0
    #: When True, is_redeemable marks the redeemable siblings of a failing code with 749 (the documented
    #: "Redeem/isRedeem failed because of failure on other coupons" variant). Default: per-code answers.
    is_redeemable_all_or_nothing: bool = False
    #: Shape of redeem / bulk redeem answers: "doc", "nested" or "mixed" (see `SandboxConfig.response_style`).
    response_style: ResponseStyle = "doc"
    #: Add ``seriesId`` to every is_redeemable item (not in the documented sample).
    is_redeemable_series: bool = False


@dataclass
class Call:
    """One request the sandbox served (recorded before auth, so 401s are included)."""

    seq: int
    operation: str
    method: str
    path: str
    request_id: str
    at: datetime
    auth: Literal["oauth", "basic"] | None = None
    store: str | None = None
    #: Name of the fault kind enacted on this call ("latency" when only latency was added).
    fault: str | None = None
    #: HTTP status answered; None when the connection was dropped (or the client went away).
    status: int | None = None
    #: Response style drawn by a redeem / bulk redeem call ("doc" or "nested"); None for other operations.
    style: Style | None = None

    def to_json(self) -> dict[str, object]:
        return wire.record_json(self)


class RuleViolation(Exception):
    """Raised by the `Sandbox.redeem` test helper when a rule refuses the redemption."""

    def __init__(self, code: int) -> None:
        self.code = code
        super().__init__(f"redemption refused with {code}")


def _real_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Token:
    expires: datetime
    client_key: str = field(default="")


class Sandbox:
    """Everything the sandbox knows. One per app (``app[SANDBOX_KEY]``); not thread-safe, one event loop."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self._base_clock: Callable[[], datetime] = self.config.clock or _real_now
        self._offset = timedelta(0)
        self.options = SandboxOptions(
            failure_http_status=self.config.failure_http_status,
            latency_ms=self.config.latency_ms,
            response_style=self.config.response_style,
            is_redeemable_series=self.config.is_redeemable_series,
        )
        self._styled_calls = 0
        self.faults = FaultQueue(self.config.faults)
        self.calls: list[Call] = []
        self._tokens: dict[str, _Token] = {}
        self._tills = {t.username: t for t in self.config.tills}
        self.state = self._fresh_state()

    # ---- clock ----------------------------------------------------------------------------------------------

    def now(self) -> datetime:
        return self._base_clock() + self._offset

    def set_now(self, when: datetime) -> None:
        """Move the clock so that `now()` is `when` (it keeps ticking with the base clock afterwards)."""
        if when.tzinfo is None:
            raise ValueError("set_now needs a timezone-aware datetime")
        self._offset = when - self._base_clock()
        self.process_jobs()

    def advance(self, seconds: float) -> None:
        self._offset += timedelta(seconds=seconds)
        self.process_jobs()

    # ---- tokens and credentials -----------------------------------------------------------------------------

    def issue_token(self) -> tuple[str, int]:
        now = self.now()
        ttl = self.config.token_ttl_seconds
        header = _b64({"alg": "HS256", "typ": "JWT", "kid": "sandbox"})
        payload = _b64(
            {
                "iss": "Capillary-Sandbox",
                "iat": int(now.timestamp()),
                "exp": int(now.timestamp()) + ttl,
                "jti": secrets.token_urlsafe(12),
                "client_key": self.config.client_key,
                "org_id": ORG_ID,
                "token_use": "token_access",
            }
        )
        token = f"{header}.{payload}.{secrets.token_urlsafe(32)}"
        self._tokens[token] = _Token(expires=now + timedelta(seconds=ttl), client_key=self.config.client_key)
        return token, ttl

    def token_valid(self, token: str) -> bool:
        issued = self._tokens.get(token)
        return issued is not None and self.now() < issued.expires

    def revoke_tokens(self) -> int:
        """Invalidate every issued token: the next call with one of them gets 401."""
        count = len(self._tokens)
        self._tokens.clear()
        return count

    def till(self, username: str, password_md5: str) -> Till | None:
        """The till whose username and md5(password) lowercase hex match, else None."""
        till = self._tills.get(username)
        if till is None:
            return None
        expected = hashlib.md5(till.password.encode()).hexdigest()
        return till if secrets.compare_digest(expected, password_md5) else None

    def till_by_username(self, username: str) -> Till | None:
        return self._tills.get(username)

    # ---- calls ----------------------------------------------------------------------------------------------

    def record_call(self, operation: str, method: str, path: str, request_id: str) -> Call:
        call = Call(len(self.calls) + 1, operation, method, path, request_id, self.now())
        self.calls.append(call)
        return call

    def call_count(self, operation: str | None = None) -> int:
        """Requests received for `operation` (all operations when None), whatever their outcome."""
        return sum(1 for c in self.calls if operation is None or c.operation == operation)

    def call_counts(self) -> Counter[str]:
        return Counter(c.operation for c in self.calls)

    def calls_of(self, operation: str) -> list[Call]:
        return [c for c in self.calls if c.operation == operation]

    # ---- lifecycle ------------------------------------------------------------------------------------------

    def _fresh_state(self) -> SandboxState:
        state = SandboxState()
        if self.config.seed:
            seed_state(state, self.now())
        return state

    def reset(self) -> None:
        """Reseed the state, clock offset, call records and faults (re-arming the configured ones).
        Issued tokens stay valid, so a client's cached token keeps working across a reset."""
        self._offset = timedelta(0)
        self.calls.clear()
        self.faults.clear()
        for fault in self.config.faults:
            self.faults.add(fault)
        self.options.failure_http_status = self.config.failure_http_status
        self.options.latency_ms = self.config.latency_ms
        self.options.is_redeemable_all_or_nothing = False
        self.options.response_style = self.config.response_style
        self.options.is_redeemable_series = self.config.is_redeemable_series
        self._styled_calls = 0
        self.state = self._fresh_state()

    def next_style(self) -> Style:
        """The shape of the next redeem / bulk redeem answer. Under "mixed" every call draws the next one of
        doc, nested, doc, ... (one sequence for both operations; a reset or a style change restarts it)."""
        style = self.options.response_style
        if style != "mixed":
            return style
        self._styled_calls += 1
        return "doc" if self._styled_calls % 2 == 1 else "nested"

    def set_response_style(self, style: ResponseStyle) -> None:
        self.options.response_style = style
        self._styled_calls = 0

    def process_jobs(self) -> None:
        """Run the upload jobs that are due by the sandbox clock (done on every request, too)."""
        process_due_jobs(self.state, self.now())

    def add_fault(self, fault: Fault) -> None:
        self.faults.add(fault)

    # ---- helpers for tests ----------------------------------------------------------------------------------

    def add_customer(
        self,
        *,
        mobile: str | None = None,
        email: str | None = None,
        external_id: str | None = None,
        first_name: str = "Test",
        last_name: str = "Customer",
        customer_id: int | None = None,
    ) -> Customer:
        return self.state.add_customer(
            Customer(
                id=customer_id if customer_id is not None else self.state.new_customer_id(),
                first_name=first_name,
                last_name=last_name,
                mobile=mobile,
                email=email,
                external_id=external_id,
                updated_on=self.now(),
            )
        )

    def add_series(
        self,
        *,
        description: str,
        discount_type: Literal["ABS", "PERC"] = "ABS",
        discount_value: Decimal | int | str = 10,
        valid_days: float = 365,
        series_id: int | None = None,
        **rules: object,
    ) -> Series:
        """Create a series; `rules` are `Series` field names (e.g. ``max_redeem=2, any_user=True``)."""
        now = self.now()
        series = Series(
            id=series_id if series_id is not None else self.state.new_series_id(),
            description=description,
            discount_type=discount_type,
            discount_value=Decimal(discount_value),
            valid_till=now + timedelta(days=valid_days),
            created_on=now,
        )
        for name, value in rules.items():
            if not hasattr(series, name):
                raise TypeError(f"Series has no field {name!r}")
            if name in ("discount_upto", "min_bill_amount", "max_bill_amount") and not isinstance(value, Decimal):
                value = Decimal(str(value))
            elif name == "redemption_range" and isinstance(value, str):
                value = RedemptionRange.parse(value)
            elif name == "redeem_at_store" and isinstance(value, list):
                value = tuple(value)
            setattr(series, name, value)
        return self.state.add_series(series)

    def issue_coupon(
        self,
        series_id: int,
        customer_id: int | None,
        code: str | None = None,
        *,
        valid_till: datetime | None = None,
        max_redemptions: int = -1,
        enforce_limits: bool = False,
    ) -> Coupon:
        customer = None if customer_id is None else self.state.customers[customer_id]
        return self.state.issue(
            series_id,
            customer,
            now=self.now(),
            code=code,
            valid_till=valid_till,
            max_redemptions=max_redemptions,
            enforce_limits=enforce_limits,
        )

    def redeem(
        self,
        code: str,
        customer_id: int,
        *,
        transaction_number: str = "HELPER-TXN",
        bill_amount: Decimal | int | str = 1000,
        store: str | None = None,
    ) -> Redemption:
        """Redeem through the same rules as the API (raises `RuleViolation` with the status code)."""
        customer = self.state.customers[customer_id]
        now = self.now()
        bill = Decimal(bill_amount)
        where = store or self.config.default_store
        verdicts = self.state.evaluate(customer, [code], now=now, store=where, bill_amount=bill)
        if not verdicts[0].ok:
            raise RuleViolation(verdicts[0].status)
        (redemption,) = self.state.redeem(
            customer, verdicts, now=now, store=where, transaction_number=transaction_number, bill_amount=bill
        )
        return redemption

    def redemptions_of(self, code: str, *, include_reversed: bool = True) -> list[Redemption]:
        return [r for r in self.state.redemptions.values() if r.code == code and (include_reversed or not r.reversed)]

    def coupon(self, code: str) -> Coupon:
        coupon = self.state.coupon_by_code(code)
        if coupon is None:
            raise KeyError(code)
        return coupon

    def reactivate(self, *redemption_ids: int) -> None:
        try:
            self.state.reactivate(list(redemption_ids), now=self.now())
        except DomainError as exc:
            raise RuleViolation(exc.code) from None


def _b64(data: dict[str, object]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
