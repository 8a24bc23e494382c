"""Deterministic demo data: the same ids and codes on every start; dates relative to the clock at seed time.

`DEMO` describes it (the CLI prints it, tests use it instead of magic strings); `seed_state` creates it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Final, Literal, TypeVar

from . import wire
from .config import DEFAULT_TILLS, SandboxConfig, Till
from .state import ORG_ID, Customer, RedemptionRange, SandboxState, Series

_T = TypeVar("_T")


@dataclass(frozen=True)
class DemoCustomer:
    key: str
    id: int
    first_name: str
    last_name: str
    mobile: str
    email: str | None
    external_id: str


@dataclass(frozen=True)
class DemoSeries:
    key: str
    id: int
    description: str
    demonstrates: str


@dataclass(frozen=True)
class DemoCoupon:
    code: str
    id: int
    series_id: int
    #: None = not issued to anybody.
    customer_id: int | None
    demonstrates: str


@dataclass(frozen=True)
class DemoRedemption:
    id: int
    code: str
    customer_id: int
    transaction_number: str
    store: str


@dataclass(frozen=True)
class DemoData:
    org_id: int
    client_key: str
    client_secret: str
    tills: tuple[Till, ...]
    default_store: str
    customers: tuple[DemoCustomer, ...]
    series: tuple[DemoSeries, ...]
    coupons: tuple[DemoCoupon, ...]
    redemptions: tuple[DemoRedemption, ...]

    def customer(self, key: str) -> DemoCustomer:
        return _one((c for c in self.customers if c.key == key), f"customer {key!r}")

    def series_of(self, key: str) -> DemoSeries:
        return _one((s for s in self.series if s.key == key), f"series {key!r}")

    def coupon(self, code: str) -> DemoCoupon:
        return _one((c for c in self.coupons if c.code == code), f"coupon {code!r}")

    def codes(self, series_key: str, customer_key: str | None = None) -> tuple[str, ...]:
        """Codes of a series (seed order), optionally only those issued to one customer."""
        series_id = self.series_of(series_key).id
        owner = None if customer_key is None else self.customer(customer_key).id
        return tuple(
            c.code
            for c in self.coupons
            if c.series_id == series_id and (customer_key is None or c.customer_id == owner)
        )

    def till(self, store: str) -> Till:
        return _one((t for t in self.tills if t.store == store), f"till of store {store!r}")

    def to_json(self) -> dict[str, object]:
        return {
            "orgId": self.org_id,
            "clientKey": self.client_key,
            "clientSecret": self.client_secret,
            "defaultStore": self.default_store,
            "tills": [wire.record_json(t) for t in self.tills],
            "customers": [
                {
                    "key": c.key,
                    "id": c.id,
                    "name": f"{c.first_name} {c.last_name}",
                    "mobile": c.mobile,
                    "email": c.email,
                    "externalId": c.external_id,
                }
                for c in self.customers
            ],
            "series": [wire.record_json(s) for s in self.series],
            "coupons": [wire.record_json(c) for c in self.coupons],
            "redemptions": [wire.record_json(r) for r in self.redemptions],
        }

    def describe(self) -> str:
        """Human-readable summary, for the CLI to print at start."""
        lines = [
            f"Capillary sandbox demo data (org {self.org_id})",
            f"  OAuth: key={self.client_key} secret={self.client_secret} (default store {self.default_store})",
        ]
        lines += [f"  Basic till: {t.username} / {t.password} (store {t.store})" for t in self.tills]
        lines.append("  Customers:")
        lines += [
            f"    {c.key:<6} id={c.id} mobile={c.mobile} email={c.email or '-'} externalId={c.external_id}"
            for c in self.customers
        ]
        lines.append("  Series:")
        lines += [f"    {s.id} {s.key:<16} {s.description}: {s.demonstrates}" for s in self.series]
        lines.append("  Coupons:")
        owners = {c.id: c.key for c in self.customers}
        lines += [
            f"    {c.code:<16} series {c.series_id} "
            f"{'untagged' if c.customer_id is None else owners[c.customer_id]:<9} {c.demonstrates}"
            for c in self.coupons
        ]
        return "\n".join(lines)


def _one(items: Iterable[_T], what: str) -> _T:
    for item in items:
        return item
    raise KeyError(f"no demo {what}")


_DEFAULTS: Final = SandboxConfig()

_CUSTOMERS: Final = (
    DemoCustomer("alice", 500001, "Alice", "Andrews", "919900000001", "alice@example.com", "EXT-0001"),
    DemoCustomer("bob", 500002, "Bob", "Brown", "919900000002", "bob@example.com", "EXT-0002"),
    DemoCustomer("carol", 500003, "Carol", "Clark", "919900000003", "carol@example.com", "EXT-0003"),
    DemoCustomer("dave", 500004, "Dave", "Davis", "919900000004", None, "EXT-0004"),
)

_SERIES: Final = (
    DemoSeries("abs", 10001, "Flat 100 off", "ABS discount of 100; also 710/711/713/723 via its special codes"),
    DemoSeries("perc", 10002, "15% off", "PERC discount of 15% of the bill, no cap"),
    DemoSeries("perc_capped", 10003, "20% off up to 150", "PERC 20% capped by discountUpto=150"),
    DemoSeries("bill_range", 10004, "50 off bills 500-5000", "min/max bill amount 500..5000 (733 outside)"),
    DemoSeries("expired", 10005, "Expired offer", "series validTillDate in the past (712)"),
    DemoSeries("not_yet_valid", 10006, "Starts next week", "redemptionValidFrom 7 days ahead (739)"),
    DemoSeries(
        "multi_use",
        10007,
        "Multi-use 25 off",
        "isMultipleUseAllowed; maxRedeem=3 series-wide (728), maxRedemptionsInSeriesPerUser=2 (736)",
    ),
    DemoSeries("store_s002", 10008, "40 off at S002 only", 'redeemAtStore=["S002"] (735 elsewhere)'),
    DemoSeries(
        "range_restricted", 10009, "Happy hour 5% off", "redemptionRange: only the hour 12 h after seed time (729)"
    ),
    DemoSeries("any_user", 10010, "Gift card 200", "anyUser: untagged codes anybody can redeem"),
    DemoSeries("gap", 10011, "Weekly 30 off", "multi-use with minDaysBetweenRedemption=7 (738)"),
    DemoSeries("after_days", 10012, "20 off, 3 days after issue", "redemptionValidAfterDays=3 (739)"),
    DemoSeries(
        "one_per_customer", 10013, "10 off, one per customer", "maxVouchersPerUser=1, maxCreate=5: issue gives 722"
    ),
)

_FIRST_COUPON_ID: Final = 300001

#: (code, series key, owner key or None, what it demonstrates)
_COUPON_SPECS: Final[tuple[tuple[str, str, str | None, str], ...]] = (
    ("ABS-ALICE-1", "abs", "alice", "redeemable: 100 off"),
    ("ABS-ALICE-2", "abs", "alice", "redeemable: 100 off"),
    ("ABS-BOB-1", "abs", "bob", "bob's: 710 for anybody else"),
    ("ABS-CAROL-1", "abs", "carol", "redeemable by carol"),
    ("ABS-ALICE-USED", "abs", "alice", "already redeemed at seed (711)"),
    ("ABS-ALICE-EXP", "abs", "alice", "coupon validTill in the past (713)"),
    ("ABS-UNTAGGED-1", "abs", None, "not issued to anybody, series not anyUser (723/703)"),
    ("PERC-ALICE-1", "perc", "alice", "15% of the bill"),
    ("PERC-BOB-1", "perc", "bob", "15% of the bill"),
    ("PERC-CAROL-1", "perc", "carol", "15% of the bill"),
    ("CAP-ALICE-1", "perc_capped", "alice", "20% capped at 150"),
    ("CAP-BOB-1", "perc_capped", "bob", "20% capped at 150"),
    ("BILL-ALICE-1", "bill_range", "alice", "bill must be 500..5000"),
    ("BILL-BOB-1", "bill_range", "bob", "bill must be 500..5000"),
    ("EXP-ALICE-1", "expired", "alice", "series expired (712)"),
    ("EXP-BOB-1", "expired", "bob", "series expired (712)"),
    ("SOON-ALICE-1", "not_yet_valid", "alice", "not yet valid (739)"),
    ("SOON-BOB-1", "not_yet_valid", "bob", "not yet valid (739)"),
    ("MULTI-ALICE-1", "multi_use", "alice", "multi-use: twice per customer, 3 in the series"),
    ("MULTI-BOB-1", "multi_use", "bob", "multi-use: twice per customer, 3 in the series"),
    ("MULTI-CAROL-1", "multi_use", "carol", "multi-use: twice per customer, 3 in the series"),
    ("S002-ALICE-1", "store_s002", "alice", "only at store S002 (735)"),
    ("S002-BOB-1", "store_s002", "bob", "only at store S002 (735)"),
    ("RANGE-ALICE-1", "range_restricted", "alice", "outside the redemption range (729)"),
    ("RANGE-BOB-1", "range_restricted", "bob", "outside the redemption range (729)"),
    ("ANY-0001", "any_user", None, "untagged gift code, anybody"),
    ("ANY-0002", "any_user", None, "untagged gift code, anybody"),
    ("ANY-0003", "any_user", None, "untagged gift code, anybody"),
    ("GIFT+2/X%", "any_user", None, "untagged; needs percent-encoding in URLs (+ / %)"),
    ("GAP-ALICE-1", "gap", "alice", "second redemption within 7 days gives 738"),
    ("WAIT-ALICE-1", "after_days", "alice", "issued at seed time: 739 for 3 days"),
    ("ONE-ALICE-1", "one_per_customer", "alice", "alice already has her one coupon (issue again: 722)"),
)

_SEED_REDEMPTION_ID: Final = 800001

DEMO: Final = DemoData(
    org_id=ORG_ID,
    client_key=_DEFAULTS.client_key,
    client_secret=_DEFAULTS.client_secret,
    tills=DEFAULT_TILLS,
    default_store=_DEFAULTS.default_store,
    customers=_CUSTOMERS,
    series=_SERIES,
    coupons=tuple(
        DemoCoupon(
            code=code,
            id=_FIRST_COUPON_ID + index,
            series_id=next(s.id for s in _SERIES if s.key == series_key),
            customer_id=None if owner is None else next(c.id for c in _CUSTOMERS if c.key == owner),
            demonstrates=note,
        )
        for index, (code, series_key, owner, note) in enumerate(_COUPON_SPECS)
    ),
    redemptions=(
        DemoRedemption(
            id=_SEED_REDEMPTION_ID,
            code="ABS-ALICE-USED",
            customer_id=500001,
            transaction_number="SEED-TXN-0001",
            store="S001",
        ),
    ),
)


def _series(key: str, now: datetime, discount_type: Literal["ABS", "PERC"], value: int) -> Series:
    demo = DEMO.series_of(key)
    return Series(
        id=demo.id,
        description=demo.description,
        discount_type=discount_type,
        discount_value=Decimal(value),
        valid_till=now + timedelta(days=365),
        created_on=now - timedelta(days=60),
        series_code=f"DEMO{demo.id}",
    )


def _demo_series(now: datetime) -> list[Series]:
    happy_hour = (now.hour + 12) % 24
    return [
        _series("abs", now, "ABS", 100),
        _series("perc", now, "PERC", 15),
        replace(_series("perc_capped", now, "PERC", 20), discount_upto=Decimal(150)),
        replace(_series("bill_range", now, "ABS", 50), min_bill_amount=Decimal(500), max_bill_amount=Decimal(5000)),
        replace(_series("expired", now, "ABS", 75), valid_till=now - timedelta(days=1)),
        replace(_series("not_yet_valid", now, "PERC", 10), redemption_valid_from=now + timedelta(days=7)),
        replace(
            _series("multi_use", now, "ABS", 25),
            is_multiple_use_allowed=True,
            max_redeem=3,
            max_redemptions_in_series_per_user=2,
        ),
        replace(_series("store_s002", now, "ABS", 40), redeem_at_store=("S002",)),
        replace(
            _series("range_restricted", now, "PERC", 5),
            redemption_range=RedemptionRange.parse('{"dom":["-1"],"dow":["-1"],"hours":["' + str(happy_hour) + '"]}'),
        ),
        replace(_series("any_user", now, "ABS", 200), any_user=True),
        replace(_series("gap", now, "ABS", 30), is_multiple_use_allowed=True, min_days_between_redemption=7),
        replace(_series("after_days", now, "ABS", 20), redemption_valid_after_days=3),
        replace(
            _series("one_per_customer", now, "ABS", 10),
            max_vouchers_per_user=1,
            is_multiple_vouchers_per_user_allowed=False,
            max_create=5,
        ),
    ]


def seed_state(state: SandboxState, now: datetime) -> None:
    """Create the `DEMO` data in an empty state."""
    for c in DEMO.customers:
        state.add_customer(
            Customer(
                id=c.id,
                first_name=c.first_name,
                last_name=c.last_name,
                mobile=c.mobile,
                email=c.email,
                external_id=c.external_id,
                updated_on=now - timedelta(days=90),
            )
        )
    for series in _demo_series(now):
        state.add_series(series)
    for coupon in DEMO.coupons:
        owner = None if coupon.customer_id is None else state.customers[coupon.customer_id]
        issued_on = now if coupon.code == "WAIT-ALICE-1" else now - timedelta(days=30)
        valid_till = now - timedelta(hours=1) if coupon.code == "ABS-ALICE-EXP" else None
        state.issue(
            coupon.series_id,
            owner,
            now=issued_on,
            code=coupon.code,
            valid_till=valid_till,
            enforce_limits=False,
            coupon_id=coupon.id,
        )
    for seeded in DEMO.redemptions:
        used = state.coupon_by_code(seeded.code)
        assert used is not None
        series = state.series[used.series_id]
        redemption = state.record_redemption(
            used,
            customer_id=seeded.customer_id,
            now=now - timedelta(days=1),
            store=seeded.store,
            transaction_number=seeded.transaction_number,
            bill_amount=Decimal(1000),
            discount=series.discount_for(Decimal(1000)),
            source="SEED",
        )
        assert redemption.id == seeded.id, "seed redemption ids must match DEMO"
