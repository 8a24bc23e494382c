"""The sandbox's model of Capillary: customers, coupon series, coupons, redemptions, upload jobs.

Pure domain: no I/O, no aiohttp, no clock of its own (every rule takes ``now``). The HTTP layer parses
requests, calls these methods synchronously (so check-and-apply is atomic on the event loop) and renders
the results with `wire.py`.

Rule order for one code (the first failing rule wins; see `SandboxState.evaluate`):

    702 malformed code -> 719 unknown code -> 716 same code twice in one request
    -> 723 (is_redeemable) / 703 (redeem) not issued and series not anyUser -> 710 issued to another customer
    -> 711 single-use and already redeemed -> 712 series expired -> 713 coupon expired
    -> 739 not yet valid (redemptionValidFrom / redemptionValidAfterDays) -> 729 outside redemptionRange
    -> 735 store not allowed -> 733 bill amount outside [minBillAmount, maxBillAmount] (redeem only)
    -> 728 coupon's own max (multi-use) -> 728 series maxRedeem -> 736 maxRedemptionsInSeriesPerUser
    -> 738 minDaysBetweenRedemption

A well-formed code is 1..50 printable ASCII characters without whitespace or commas (the comma separates
codes in is_redeemable). ``+``, ``/``, ``%`` etc. are allowed, so clients must percent-encode them.
Codes are matched case-sensitively. Limits of -1 (or 0) mean unlimited.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from types import MappingProxyType
from typing import Any, Final, Literal

ORG_ID: Final = 100458
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
MAX_BILL_AMOUNT: Final = Decimal(9007199254740991)
MAX_CODE_LENGTH: Final = 50

SUCCESS: Final = 700

MESSAGES: Final[Mapping[int, str]] = MappingProxyType(
    {
        510: "Invalid redemption ids",
        629: "Invalid Input",
        660: "Coupon code has been revoked",
        661: "No redemption id passed",
        700: "Coupon processing successful",
        701: "The customer could not be found",
        702: "Coupon code is invalid",
        703: "Coupon not issued to this customer",
        704: "Error sending coupon",
        705: "Both coupon code and validation code are invalid",
        706: "Cannot redeem same voucher multiple times",
        707: "Coupon Series ID is invalid",
        709: "Coupon processing failed",
        710: "Coupon is not meant for this customer",
        711: "Coupon is already used",
        712: "Coupon Series / Campaign has expired",
        713: "Coupon has expired",
        714: "Campaign over, it was first come first serve",
        715: "Invalid organization",
        716: "Cannot redeem same Coupon multiple times",
        718: "Transaction number needed for redemption",
        719: "Coupon code does not exist",
        720: "Coupon is a test Coupon. Cannot be redeemed",
        721: "Invalid customer",
        722: "Unable to create coupon",
        723: "Coupon not issued to this customer",
        724: "Unable to communicate to customer",
        725: "Validation required",
        726: "Validation not required",
        728: "Maximum number of redemptions reached",
        729: "Invalid redemption range for coupon series",
        730: "Unknown error",
        731: "Coupon redemption successful",
        733: "Invalid transaction amount",
        735: "Invalid store",
        736: "Allowed redemption consumed",
        738: "Allowed redemption gap is invalid",
        739: "Allowed redemption date is invalid",
        740: "Fraud customer",
        742: "Coupon issue and redemption blocked for customer",
        746: "Please provide series id",
        747: "Multiple redemption not allowed",
        748: "Coupon service timed out",
        749: "Redeem/isRedeem failed because of failure on other coupons in the batch",
        751: "Series with same series code already present",
        755: "Invalid coupon series id",
        759: "Coupon redemption failed",
        780: "Coupon not found",
        781: "Either coupon ID or coupon code is missing",
    }
)


def message_for(code: int) -> str:
    return MESSAGES.get(code, "Coupon processing failed, please try again later")


IdentifierKind = Literal["id", "mobile", "email", "externalId"]
IDENTIFIER_KINDS: Final[tuple[IdentifierKind, ...]] = ("id", "mobile", "email", "externalId")


class DomainError(Exception):
    """A business rule refused the operation; `code` is the Capillary status code."""

    def __init__(self, code: int, message: str | None = None) -> None:
        self.code = code
        self.message = message or message_for(code)
        super().__init__(f"{code}: {self.message}")


def is_well_formed(code: str) -> bool:
    return 0 < len(code) <= MAX_CODE_LENGTH and all("!" <= ch <= "~" and ch != "," for ch in code)


# --------------------------------------------------------------------------------------------------------------
# Entities


@dataclass(frozen=True)
class CustomerRef:
    """One customer identifier as sent by a client."""

    kind: IdentifierKind
    value: str


@dataclass
class Customer:
    id: int
    first_name: str
    last_name: str
    mobile: str | None = None
    email: str | None = None
    external_id: str | None = None
    updated_on: datetime = EPOCH


@dataclass(frozen=True)
class RedemptionRange:
    """Series ``redemptionRange``: allowed days of month, days of week (1 = Sunday .. 7 = Saturday, as
    java.util.Calendar) and hours (0..23), all evaluated in UTC. None = any ("-1")."""

    raw: str
    dom: frozenset[int] | None = None
    dow: frozenset[int] | None = None
    hours: frozenset[int] | None = None

    @classmethod
    def parse(cls, raw: str | Mapping[str, Any]) -> RedemptionRange:
        if isinstance(raw, str):
            try:
                data = json.loads(raw)
            except json.JSONDecodeError:
                raise ValueError("redemptionRange must be a JSON object") from None
            text = raw
        else:
            data = dict(raw)
            text = json.dumps(data, separators=(",", ":"))
        if not isinstance(data, dict):
            raise ValueError("redemptionRange must be a JSON object")
        parts: dict[str, frozenset[int] | None] = {}
        for key, low, high in (("dom", 1, 31), ("dow", 1, 7), ("hours", 0, 23)):
            parts[key] = _range_part(data.get(key, ["-1"]), key, low, high)
        return cls(raw=text, dom=parts["dom"], dow=parts["dow"], hours=parts["hours"])

    @classmethod
    def any(cls) -> RedemptionRange:
        return cls(raw='{"dom":["-1"],"dow":["-1"],"hours":["-1"]}')

    def allows(self, when: datetime) -> bool:
        utc = when.astimezone(UTC)
        java_dow = (utc.weekday() + 1) % 7 + 1  # Monday=0 -> 2, Sunday=6 -> 1
        return (
            (self.dom is None or utc.day in self.dom)
            and (self.dow is None or java_dow in self.dow)
            and (self.hours is None or utc.hour in self.hours)
        )


def _range_part(value: object, key: str, low: int, high: int) -> frozenset[int] | None:
    if not isinstance(value, list):
        raise ValueError(f"redemptionRange.{key} must be a list")
    numbers: set[int] = set()
    for item in value:
        try:
            number = int(item)
        except (TypeError, ValueError):
            raise ValueError(f"redemptionRange.{key} has a non-integer entry {item!r}") from None
        if number == -1:
            return None
        if not low <= number <= high:
            raise ValueError(f"redemptionRange.{key} entry {number} is outside {low}..{high}")
        numbers.add(number)
    return frozenset(numbers)


@dataclass
class Series:
    id: int
    description: str
    discount_type: Literal["ABS", "PERC"]
    discount_value: Decimal
    valid_till: datetime
    created_on: datetime
    series_code: str = ""
    discount_code: str = "NO_VALUE"
    discount_upto: Decimal = Decimal(0)
    discount_on: str = "BILL"
    min_bill_amount: Decimal = Decimal(0)
    max_bill_amount: Decimal = MAX_BILL_AMOUNT
    max_create: int = -1
    max_redeem: int = -1
    max_vouchers_per_user: int = -1
    max_redemptions_in_series_per_user: int = -1
    min_days_between_redemption: int = -1
    any_user: bool = False
    is_multiple_use_allowed: bool = False
    is_multiple_vouchers_per_user_allowed: bool = True
    redemption_valid_from: datetime = EPOCH
    redemption_valid_after_days: int = 0
    #: None = every store ("[-1]"); otherwise the store codes where the series can be redeemed.
    redeem_at_store: tuple[str, ...] | None = None
    redemption_range: RedemptionRange = field(default_factory=RedemptionRange.any)
    expiry_strategy_type: str = "SERIES_EXPIRY"
    expiry_strategy_value: int = 1
    random_code_length: int = 8
    #: Pass-through wire fields (smsTemplate, info, ...) that carry no rule; they override rendering defaults.
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_absolute(self) -> bool:
        return self.discount_type == "ABS"

    def redeem_at_store_json(self) -> str:
        if self.redeem_at_store is None:
            return "[-1]"
        return json.dumps(list(self.redeem_at_store))

    def discount_for(self, bill_amount: Decimal | None) -> Decimal:
        """ABS: the discount value. PERC: value% of the bill (2 decimals), capped by discountUpto when > 0."""
        if self.discount_type == "ABS":
            return self.discount_value
        if bill_amount is None:
            return Decimal(0)
        amount = (bill_amount * self.discount_value / 100).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
        if self.discount_upto > 0:
            amount = min(amount, self.discount_upto)
        return amount

    def coupon_valid_till(self, issued_on: datetime) -> datetime:
        if self.expiry_strategy_type == "DAYS" and self.expiry_strategy_value > 0:
            return min(self.valid_till, issued_on + timedelta(days=self.expiry_strategy_value))
        return self.valid_till


@dataclass
class Coupon:
    id: int
    code: str
    series_id: int
    customer_id: int | None
    issued_on: datetime
    valid_till: datetime
    #: Own limit of a multi-use coupon (-1 = unlimited); a single-use coupon is limited by 711 instead.
    max_redemptions: int = -1
    uploaded: bool = False


@dataclass
class Redemption:
    id: int
    coupon_id: int
    code: str
    series_id: int
    customer_id: int
    transaction_number: str
    bill_amount: Decimal
    discount: Decimal
    store: str
    redeemed_on: datetime
    source: Literal["API", "UPLOAD", "SEED"] = "API"
    reversed_on: datetime | None = None

    @property
    def reversed(self) -> bool:
        return self.reversed_on is not None


UploadKind = Literal["coupons", "redeemed"]


@dataclass
class UploadJob:
    job_id: int
    kind: UploadKind
    series_id: int
    created_on: datetime
    due_on: datetime
    file_name: str
    uploaded_file_url: str
    rows: list[list[str]]
    #: Upload settings: customerIdentifier, customerIdentifierColumn / couponIdentifier, columns, details.
    settings: dict[str, Any]
    updated_on: datetime = EPOCH
    #: When processing begins (half way to ``due_on``); None: straight from waiting to done.
    starts_on: datetime | None = None
    started: bool = False
    done: bool = False
    #: Done, but nothing was uploaded: every row failed (or there was none).
    failed: bool = False
    actual_row_count: int = 0
    total_uploaded_count: int = 0
    error_count: int = 0
    error_file_url: str | None = None
    upload_table_name: str | None = None
    #: (1-based data row number, reason) of every rejected row.
    row_errors: list[tuple[int, str]] = field(default_factory=list)

    @property
    def status(self) -> str:
        """Coupons: STARTED -> PROCESSING -> FINISHED | FAILED; redeemed coupons: QUEUED -> IN_PROGRESS ->
        COMPLETED | FAILED. The documents show STARTED, FINISHED, QUEUED and COMPLETED; the others are the
        sandbox's stand-ins for the upstream's in-between and failure states."""
        if self.done:
            if self.failed:
                return "FAILED"
            return "FINISHED" if self.kind == "coupons" else "COMPLETED"
        if self.started:
            return "PROCESSING" if self.kind == "coupons" else "IN_PROGRESS"
        return "STARTED" if self.kind == "coupons" else "QUEUED"


@dataclass(frozen=True)
class Verdict:
    """Outcome of the rules for one requested code (see module docstring for the order)."""

    code: str
    status: int
    coupon: Coupon | None = None
    series: Series | None = None
    discount: Decimal = Decimal(0)
    #: Active (committed) redemptions of this coupon by the customer.
    redemptions_by_user: int = 0
    #: Smallest remaining allowance among the coupon/series/per-user limits, counting earlier codes of the
    #: same request; -1 when no numeric limit applies (as upstream shows for ordinary single-use coupons).
    redemptions_left: int = -1

    @property
    def ok(self) -> bool:
        return self.status == SUCCESS


@dataclass(frozen=True)
class SeriesStats:
    num_issued: int
    num_redeemed: int
    num_uploaded_total: int
    num_uploaded_non_issued: int
    latest_issual: datetime | None
    latest_redemption: datetime | None


# --------------------------------------------------------------------------------------------------------------
# State


_CODE_ALPHABET: Final = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


class SandboxState:
    """All upstream data. Ids are allocated from counters; generated codes come from a seeded RNG."""

    def __init__(self, *, rng_seed: int = 20240601) -> None:
        self.customers: dict[int, Customer] = {}
        self.series: dict[int, Series] = {}
        self.coupons: dict[int, Coupon] = {}
        self.redemptions: dict[int, Redemption] = {}
        self.upload_jobs: dict[int, UploadJob] = {}
        self._codes: dict[str, int] = {}
        # Indexes (the dicts above stay the source of truth; entries are shared objects).
        self._customer_keys: dict[tuple[str, str], int] = {}
        self._coupons_by_series: dict[int, list[Coupon]] = {}
        self._coupons_by_customer: dict[int, list[Coupon]] = {}
        self._redemptions_by_coupon: dict[int, list[Redemption]] = {}
        self._redemptions_by_series: dict[int, list[Redemption]] = {}
        self._redemptions_by_customer: dict[int, list[Redemption]] = {}
        self._redemptions_by_user_in_series: dict[tuple[int, int], list[Redemption]] = {}
        self._active_in_series: Counter[int] = Counter()
        self._active_by_user_in_series: Counter[tuple[int, int]] = Counter()
        self._rng = random.Random(rng_seed)
        self._next_customer_id = 600001
        self._next_series_id = 20001
        self._next_coupon_id = 400001
        self._next_redemption_id = 800001
        self._next_job_id = 9001

    # ---- lookups --------------------------------------------------------------------------------------------

    def find_customer(self, ref: CustomerRef) -> Customer | None:
        value = ref.value.strip()
        if ref.kind == "id":
            try:
                return self.customers.get(int(value))
            except ValueError:
                return None
        key = value.lower() if ref.kind == "email" else value
        customer_id = self._customer_keys.get((ref.kind, key))
        return None if customer_id is None else self.customers[customer_id]

    def coupon_by_code(self, code: str) -> Coupon | None:
        coupon_id = self._codes.get(code)
        return None if coupon_id is None else self.coupons[coupon_id]

    def active_redemptions(
        self, *, coupon_id: int | None = None, series_id: int | None = None, customer_id: int | None = None
    ) -> list[Redemption]:
        if coupon_id is not None:
            candidates: Iterable[Redemption] = self._redemptions_by_coupon.get(coupon_id, ())
        elif series_id is not None:
            candidates = self._redemptions_by_series.get(series_id, ())
        elif customer_id is not None:
            candidates = self._redemptions_by_customer.get(customer_id, ())
        else:
            candidates = self.redemptions.values()
        return [
            r
            for r in candidates
            if not r.reversed
            and (coupon_id is None or r.coupon_id == coupon_id)
            and (series_id is None or r.series_id == series_id)
            and (customer_id is None or r.customer_id == customer_id)
        ]

    def coupons_of(self, customer_id: int) -> list[Coupon]:
        return list(self._coupons_by_customer.get(customer_id, ()))

    def series_stats(self, series_id: int) -> SeriesStats:
        coupons = self._coupons_by_series.get(series_id, [])
        redemptions = self.active_redemptions(series_id=series_id)
        uploaded = [c for c in coupons if c.uploaded]
        return SeriesStats(
            num_issued=sum(1 for c in coupons if c.customer_id is not None),
            num_redeemed=self._active_in_series[series_id],
            num_uploaded_total=len(uploaded),
            num_uploaded_non_issued=sum(1 for c in uploaded if c.customer_id is None),
            latest_issual=max((c.issued_on for c in coupons), default=None),
            latest_redemption=max((r.redeemed_on for r in redemptions), default=None),
        )

    # ---- creation -------------------------------------------------------------------------------------------

    def new_series_id(self) -> int:
        series_id = self._next_series_id
        self._next_series_id += 1
        return series_id

    def new_customer_id(self) -> int:
        customer_id = self._next_customer_id
        self._next_customer_id += 1
        return customer_id

    def add_customer(self, customer: Customer) -> Customer:
        if customer.id in self.customers:
            raise ValueError(f"customer id {customer.id} already exists")
        for kind, value in (
            ("mobile", customer.mobile),
            ("email", customer.email),
            ("externalId", customer.external_id),
        ):
            if value is not None and (kind, value.lower() if kind == "email" else value) in self._customer_keys:
                raise ValueError(f"another customer already has {kind} {value}")
        self.customers[customer.id] = customer
        for kind, value in (
            ("mobile", customer.mobile),
            ("email", customer.email),
            ("externalId", customer.external_id),
        ):
            if value is not None:
                self._customer_keys[(kind, value.lower() if kind == "email" else value)] = customer.id
        self._next_customer_id = max(self._next_customer_id, customer.id + 1)
        return customer

    def add_series(self, series: Series) -> Series:
        """Register a series; 751 when its seriesCode, or its discountCode + description, is already taken."""
        if series.id in self.series:
            raise ValueError(f"series id {series.id} already exists")
        for other in self.series.values():
            same_code = series.series_code and other.series_code == series.series_code
            same_offer = (other.discount_code, other.description) == (series.discount_code, series.description)
            if same_code or same_offer:
                raise DomainError(751)
        if not series.series_code:
            series.series_code = "".join(self._rng.choice("0123456789ABCDEF") for _ in range(20))
        self.series[series.id] = series
        self._next_series_id = max(self._next_series_id, series.id + 1)
        return series

    def generate_code(self, length: int = 8) -> str:
        length = max(4, min(length, MAX_CODE_LENGTH))
        while True:
            code = "".join(self._rng.choice(_CODE_ALPHABET) for _ in range(length))
            if code not in self._codes:
                return code

    def issue(
        self,
        series_id: int,
        customer: Customer | None,
        *,
        now: datetime,
        code: str | None = None,
        valid_till: datetime | None = None,
        max_redemptions: int = -1,
        enforce_limits: bool = True,
        uploaded: bool = False,
        coupon_id: int | None = None,
    ) -> Coupon:
        """Create a coupon. With `enforce_limits` (the issue APIs): 707 unknown series, 712 series expired,
        722 maxCreate reached or the customer's maxVouchersPerUser (or single voucher) reached."""
        series = self.series.get(series_id)
        if series is None:
            raise DomainError(707)
        if enforce_limits:
            if series.valid_till < now:
                raise DomainError(712)
            in_series = self._coupons_by_series.get(series_id, [])
            if series.max_create > 0 and len(in_series) >= series.max_create:
                raise DomainError(722, "Unable to create coupon: maxCreate reached for the series")
            if customer is not None:
                owned = sum(1 for c in self._coupons_by_customer.get(customer.id, ()) if c.series_id == series_id)
                limit = series.max_vouchers_per_user if series.is_multiple_vouchers_per_user_allowed else 1
                if limit > 0 and owned >= limit:
                    raise DomainError(722, "Unable to create coupon: maxVouchersPerUser reached")
        if code is None:
            code = self.generate_code(series.random_code_length)
        elif not is_well_formed(code):
            raise DomainError(702)
        elif code in self._codes:
            raise DomainError(722, f"Unable to create coupon: code {code} already exists")
        new_id = coupon_id if coupon_id is not None else self._next_coupon_id
        if new_id in self.coupons:
            raise ValueError(f"coupon id {new_id} already exists")
        coupon = Coupon(
            id=new_id,
            code=code,
            series_id=series_id,
            customer_id=None if customer is None else customer.id,
            issued_on=now,
            valid_till=valid_till if valid_till is not None else series.coupon_valid_till(now),
            max_redemptions=max_redemptions,
            uploaded=uploaded,
        )
        self.coupons[coupon.id] = coupon
        self._coupons_by_series.setdefault(series_id, []).append(coupon)
        if coupon.customer_id is not None:
            self._coupons_by_customer.setdefault(coupon.customer_id, []).append(coupon)
        self._codes[code] = coupon.id
        self._next_coupon_id = max(self._next_coupon_id, new_id + 1)
        return coupon

    # ---- redemption rules -----------------------------------------------------------------------------------

    def evaluate(
        self,
        customer: Customer,
        codes: Sequence[str],
        *,
        now: datetime,
        store: str,
        bill_amount: Decimal | None,
        not_issued_code: int = 703,
    ) -> list[Verdict]:
        """Check every code as if the previous ones in the list had been redeemed (bulk semantics)."""
        verdicts: list[Verdict] = []
        for code in codes:
            verdicts.append(
                self._check(
                    customer,
                    code,
                    verdicts,
                    now=now,
                    store=store,
                    bill_amount=bill_amount,
                    not_issued_code=not_issued_code,
                )
            )
        return verdicts

    def _check(
        self,
        customer: Customer,
        code: str,
        earlier: Sequence[Verdict],
        *,
        now: datetime,
        store: str,
        bill_amount: Decimal | None,
        not_issued_code: int,
    ) -> Verdict:
        """One code's verdict, counting the ``earlier`` codes of the same request as redeemed when they passed."""
        if not is_well_formed(code):
            return Verdict(code, 702)
        coupon = self.coupon_by_code(code)
        if coupon is None:
            return Verdict(code, 719)
        series = self.series[coupon.series_id]
        pending = [(v.coupon, v.series) for v in earlier if v.ok and v.coupon is not None and v.series is not None]

        # Counters, not scans: a benchmark may pile up many redemptions in one series.
        of_coupon = self.active_redemptions(coupon_id=coupon.id)
        pending_in_series = sum(1 for _, s in pending if s.id == series.id)
        coupon_uses = len(of_coupon) + sum(1 for c, _ in pending if c.id == coupon.id)
        series_uses = self._active_in_series[series.id] + pending_in_series
        user_key = (series.id, customer.id)
        user_uses = self._active_by_user_in_series[user_key] + pending_in_series
        left = _redemptions_left(series, coupon, coupon_uses, series_uses, user_uses)
        by_user = sum(1 for r in of_coupon if r.customer_id == customer.id)

        def verdict(status: int) -> Verdict:
            discount = series.discount_for(bill_amount) if status == SUCCESS else Decimal(0)
            return Verdict(code, status, coupon, series, discount, by_user, left)

        if any(v.code == code for v in earlier):
            return verdict(716)
        if not series.any_user:
            if coupon.customer_id is None:
                return verdict(not_issued_code)
            if coupon.customer_id != customer.id:
                return verdict(710)
        if not series.is_multiple_use_allowed and coupon_uses > 0:
            return verdict(711)
        if series.valid_till < now:
            return verdict(712)
        if coupon.valid_till < now:
            return verdict(713)
        if now < series.redemption_valid_from or (
            series.redemption_valid_after_days > 0
            and now < coupon.issued_on + timedelta(days=series.redemption_valid_after_days)
        ):
            return verdict(739)
        if not series.redemption_range.allows(now):
            return verdict(729)
        if series.redeem_at_store is not None and store not in series.redeem_at_store:
            return verdict(735)
        if bill_amount is not None and not series.min_bill_amount <= bill_amount <= series.max_bill_amount:
            return verdict(733)
        if series.is_multiple_use_allowed and coupon.max_redemptions > 0 and coupon_uses >= coupon.max_redemptions:
            return verdict(728)
        if series.max_redeem > 0 and series_uses >= series.max_redeem:
            return verdict(728)
        if series.max_redemptions_in_series_per_user > 0 and user_uses >= series.max_redemptions_in_series_per_user:
            return verdict(736)
        if series.min_days_between_redemption > 0:
            user_series = self._redemptions_by_user_in_series.get(user_key, [])
            last = max((r.redeemed_on for r in user_series if not r.reversed), default=None)
            if pending_in_series:
                last = now
            if last is not None and now - last < timedelta(days=series.min_days_between_redemption):
                return verdict(738)
        return verdict(SUCCESS)

    def redeem(
        self,
        customer: Customer,
        verdicts: Iterable[Verdict],
        *,
        now: datetime,
        store: str,
        transaction_number: str,
        bill_amount: Decimal,
        source: Literal["API", "UPLOAD", "SEED"] = "API",
    ) -> list[Redemption]:
        """Apply already-evaluated, all-successful verdicts (call without awaiting in between)."""
        verdicts = list(verdicts)
        if not all(v.ok and v.coupon is not None for v in verdicts):
            raise ValueError("redeem() needs successful verdicts only")
        return [
            self.record_redemption(
                v.coupon,  # type: ignore[arg-type]  # checked above
                customer_id=customer.id,
                now=now,
                store=store,
                transaction_number=transaction_number,
                bill_amount=bill_amount,
                discount=v.discount,
                source=source,
            )
            for v in verdicts
        ]

    def record_redemption(
        self,
        coupon: Coupon,
        *,
        customer_id: int,
        now: datetime,
        store: str,
        transaction_number: str,
        bill_amount: Decimal,
        discount: Decimal,
        source: Literal["API", "UPLOAD", "SEED"] = "API",
    ) -> Redemption:
        redemption = Redemption(
            id=self._next_redemption_id,
            coupon_id=coupon.id,
            code=coupon.code,
            series_id=coupon.series_id,
            customer_id=customer_id,
            transaction_number=transaction_number,
            bill_amount=bill_amount,
            discount=discount,
            store=store,
            redeemed_on=now,
            source=source,
        )
        self._next_redemption_id += 1
        self.redemptions[redemption.id] = redemption
        self._redemptions_by_coupon.setdefault(redemption.coupon_id, []).append(redemption)
        self._redemptions_by_series.setdefault(redemption.series_id, []).append(redemption)
        self._redemptions_by_customer.setdefault(redemption.customer_id, []).append(redemption)
        user_key = (redemption.series_id, redemption.customer_id)
        self._redemptions_by_user_in_series.setdefault(user_key, []).append(redemption)
        self._active_in_series[redemption.series_id] += 1
        self._active_by_user_in_series[user_key] += 1
        return redemption

    def reactivate(self, redemption_ids: Sequence[int], *, now: datetime) -> None:
        """Reverse redemptions, all or nothing: 661 none given, 510 any unknown or already reversed."""
        if not redemption_ids:
            raise DomainError(661)
        targets = [self.redemptions.get(rid) for rid in redemption_ids]
        if any(r is None or r.reversed for r in targets):
            raise DomainError(510)
        for redemption in targets:
            assert redemption is not None
            redemption.reversed_on = now
            self._active_in_series[redemption.series_id] -= 1
            self._active_by_user_in_series[(redemption.series_id, redemption.customer_id)] -= 1

    # ---- upload jobs ----------------------------------------------------------------------------------------

    def new_upload_job(
        self,
        *,
        kind: UploadKind,
        series_id: int,
        now: datetime,
        due_on: datetime,
        file_name: str,
        rows: list[list[str]],
        settings: dict[str, Any],
    ) -> UploadJob:
        stem = file_name[:-4] if file_name.lower().endswith(".csv") else file_name
        millis = (now - EPOCH) // timedelta(milliseconds=1)
        job = UploadJob(
            job_id=self._next_job_id,
            kind=kind,
            series_id=series_id,
            created_on=now,
            due_on=due_on,
            file_name=file_name,
            uploaded_file_url=f"{stem or 'upload'}_{millis}_{series_id}.csv",
            rows=rows,
            settings=settings,
            updated_on=now,
            starts_on=now + (due_on - now) / 2 if due_on > now else None,
        )
        self._next_job_id += 1
        self.upload_jobs[job.job_id] = job
        return job

    def jobs_of(self, series_id: int, kind: UploadKind) -> list[UploadJob]:
        return [j for j in self.upload_jobs.values() if j.series_id == series_id and j.kind == kind]


def _redemptions_left(series: Series, coupon: Coupon, coupon_uses: int, series_uses: int, user_uses: int) -> int:
    if not series.is_multiple_use_allowed and coupon_uses > 0:
        return 0
    limits: list[int] = []
    if series.is_multiple_use_allowed and coupon.max_redemptions > 0:
        limits.append(coupon.max_redemptions - coupon_uses)
    if series.max_redeem > 0:
        limits.append(series.max_redeem - series_uses)
    if series.max_redemptions_in_series_per_user > 0:
        limits.append(series.max_redemptions_in_series_per_user - user_uses)
    return max(0, min(limits)) if limits else -1
