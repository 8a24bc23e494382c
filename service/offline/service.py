"""Accepting a redemption provisionally while Capillary cannot be reached, reversing it before it settles, and what
staff see of it. The settler (``settler.py``) records it upstream later.

A redemption qualifies only when nothing was sent (the caller says so), every code was validated online as
redeemable for this customer within the policy's window, every code's series is known from the cache (its
discount comes from there), no series is excluded, and the caps allow it. The record is journaled before the till
is answered; the ledger then holds the answer (replays get the same bytes) and keeps the codes locked.
"""

from __future__ import annotations

import collections
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol

import msgspec
import structlog

from service.idempotency.models import Entry, Reversal, StoredResponse
from service.idempotency.store import LedgerStore, StoreUnavailable
from service.offline.journal import Journal, JournalUnavailable, Line, Provisional
from service.offline_policy import Policy
from service.redemption.catalog import CATALOG
from service.redemption.checks import bill_failure
from service.redemption.flow import AMBIENT, CallLimits, UpstreamFailure, price
from service.redemption.models import CodeOutcome, Failure, Outcome, RedemptionCommand, SeriesSummary

log = structlog.get_logger("service.offline")

#: The local errors that mean "Capillary could not be reached", when nothing was sent.
UNREACHABLE = frozenset({"UPSTREAM_UNAVAILABLE", "UPSTREAM_TIMEOUT", "UPSTREAM_ERROR", "UPSTREAM_BAD_RESPONSE"})
CAPS = ("till_count", "store_count", "transaction_discount", "store_discount")


class OfflineDeclined(UpstreamFailure):
    """Capillary could not be reached and offline acceptance did not apply: ``note`` says why."""

    def __init__(self, cause: UpstreamFailure, note: str) -> None:
        super().__init__(cause.failure, maybe_applied=False, retry_after=cause.retry_after)
        self.note = note


class SeriesKnown(Protocol):
    async def known(self, codes: Sequence[str], *, limits: CallLimits = AMBIENT) -> dict[str, SeriesSummary]: ...


class _Coupon(msgspec.Struct, rename="camel", kw_only=True):
    code: str
    series_id: int | None
    discount: dict[str, object] | None
    redeemed: bool
    provisional: bool
    redemption_id: int | None = None
    error: dict[str, object] | None = None


class _Conflict(msgspec.Struct, rename="camel", kw_only=True):
    reason: str
    message: str
    at: float


class _Body(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    ref: str
    status: str
    transaction_number: str
    coupons: list[_Coupon]
    total_discount: Decimal
    conflict: _Conflict | None = None


_encoder = msgspec.json.Encoder(decimal_format="string")


class Validated(msgspec.Struct, frozen=True):
    """An online validation: when Capillary said redeemable, and the code's series as then known (its discount
    and bill limits, kept here for the whole window: the series cache may keep it for less)."""

    at: float
    series: SeriesSummary | None = None


def validation_name(kind: str, customer: str, code: str) -> str:
    """The key of an online validation: the customer is hashed (no identifier in the journal's key names)."""
    return hashlib.sha256(f"{kind}\0{customer}\0{code}".encode()).hexdigest()[:40]


def provisional_body(item: Provisional, status: str = "provisional", ids: dict[str, int] | None = None) -> bytes:
    """The answer of a provisional redemption: as given to the till, then as settled (``redeemed`` with its
    redemption ids, or ``conflict`` with the reason)."""
    coupons = [
        _Coupon(
            code=line.code,
            series_id=line.series_id,
            discount={"type": line.kind, "value": str(line.value or line.discount), "amount": str(line.discount)},
            redeemed=status != "conflict" or line.state == "ok",
            provisional=status == "provisional",
            redemption_id=(ids or {}).get(line.code) or None,
        )
        for line in item.lines
    ]
    conflict = None
    if status == "conflict":
        conflict = _Conflict(reason=item.reason or "REJECTED", message=conflict_message(item), at=item.resolved_at or 0)
    total = item.total if status != "conflict" else Decimal("0.00")
    body = _Body(
        ref=item.ref,
        status=status,
        transaction_number=item.transaction_number,
        coupons=coupons,
        total_discount=total,
        conflict=conflict,
    )
    return _encoder.encode(body)


def conflict_message(item: Provisional) -> str:
    refused = [f"{line.code[:2]}***: {line.reason}" for line in item.lines if line.state == "refused"]
    recorded = [line.code[:2] + "***" for line in item.lines if line.state == "ok"]
    text = f"Provisional redemption not recorded by Capillary ({item.reason})"
    if refused:
        text += "; refused: " + ", ".join(refused)
    if recorded:
        text += "; recorded: " + ", ".join(recorded)
    return text + ". Staff must settle it with the customer or reverse it in Capillary."


@dataclass
class Offline:
    journal: Journal
    policy: Policy
    series: SeriesKnown
    ledger: LedgerStore
    ttl: float  # how long the ledger keeps the record (longer than the policy's expiry)
    clock: Callable[[], float] = time.time
    refusals: collections.Counter[str] = field(default_factory=collections.Counter)
    accepted: int = 0
    settled: collections.Counter[str] = field(default_factory=collections.Counter)
    conflicts_by_reason: collections.Counter[str] = field(default_factory=collections.Counter)
    #: The outstanding ones as last read from the journal (for the metrics, read at scrape time).
    snapshot: list[Provisional] = field(default_factory=list)

    # ----------------------------------------------------------------------------------- validations

    async def note_validated(self, command: RedemptionCommand, outcome: Outcome) -> None:
        """Remember the codes Capillary said were redeemable for this customer just now (best effort)."""
        now = self.clock()
        passing = [o.code for o in outcome.codes if o.ok]
        known = await self.series.known(passing) if passing else {}
        for code in passing:
            name = validation_name(command.customer.kind, command.customer.value, code)
            record = _encoder.encode(Validated(now, known.get(code)))
            try:
                await self.journal.note_valid(name, record, self.policy.validated_within_seconds)
            except JournalUnavailable as exc:
                log.warning("offline_validation_not_noted", error=str(exc))
                return

    # ---------------------------------------------------------------------------------------- accept

    @staticmethod
    def applies(failure: Failure) -> bool:
        return failure.error.code in UNREACHABLE

    async def accept(
        self, entry: Entry, command: RedemptionCommand, till: str | None, cause: UpstreamFailure, limits: CallLimits
    ) -> StoredResponse:
        """Journal ``command`` as provisional and record its answer in the ledger; or raise OfflineDeclined.
        ``limits``: the redeem's, bounding the wait for its series."""
        item = await self._qualify(entry, command, till, cause, limits)
        try:
            async with self.journal.exclusive():
                refusal = self._capped(item, await self.journal.outstanding())
                if refusal is None:
                    await self.journal.put(item)
        except JournalUnavailable as exc:
            raise OfflineDeclined(cause, f"the offline journal is unavailable ({exc})") from None
        if refusal is not None:
            cap, message = refusal
            self.refusals[cap] += 1
            raise OfflineDeclined(cause, message)
        response = StoredResponse("provisional", provisional_body(item), status=200)  # status: see StoredResponse
        entry.state, entry.response, entry.redemption_ids = "done", response, {}
        try:
            await self.ledger.resolve(entry, self.ttl, force=True, unlock=False)
            await self.ledger.lock(command.codes, entry.ref, self.ttl)  # held until it settles or is reversed
        except StoreUnavailable:
            await self.journal.remove(item.ref)
            raise
        self.accepted += 1
        log.warning("redemption_accepted_provisionally", ref=item.ref, cause=cause.failure.error.code)
        return response

    async def _qualify(
        self, entry: Entry, command: RedemptionCommand, till: str | None, cause: UpstreamFailure, limits: CallLimits
    ) -> Provisional:
        if command.store is None:
            raise OfflineDeclined(cause, "the API key names no store")
        names = {c: validation_name(command.customer.kind, command.customer.value, c) for c in command.codes}
        try:
            found = await self.journal.valid_at(list(names.values()))
        except JournalUnavailable as exc:
            raise OfflineDeclined(cause, f"the offline journal is unavailable ({exc})") from None
        valid = {c: msgspec.json.decode(found[n], type=Validated) for c, n in names.items() if n in found}
        unknown = [c for c in command.codes if c in valid and valid[c].series is None]
        known = await self.series.known(unknown, limits=limits) if unknown else {}
        now, window = self.clock(), self.policy.validated_within_seconds
        outcomes = []
        for code in command.codes:
            validated = valid.get(code)
            if validated is None or now - validated.at > window:
                minutes = f"{window / 60:g}"
                raise OfflineDeclined(
                    cause, f"coupon {code} was not validated online for this customer in the last {minutes} minutes"
                )
            series = validated.series or known.get(code)
            if series is None or series.rule is None:
                raise OfflineDeclined(cause, f"the discount of coupon {code} is not known offline")
            if (own := self.policy.for_series(series.id)) is not None and own.excluded:
                raise OfflineDeclined(cause, f"series {series.id} is excluded from offline acceptance by policy")
            if bill_failure(series, command.bill_amount):
                raise OfflineDeclined(cause, f"the bill is outside the limits of series {series.id}")
            outcomes.append(CodeOutcome(code, series_id=series.id, rule=series.rule, ok=True))
        total = price(outcomes, command.bill_amount, lambda o: o.ok)
        if any(o.amount is None for o in outcomes):
            raise OfflineDeclined(cause, "a discount cannot be computed offline")
        lines = [
            Line(
                code=o.code,
                series_id=o.series_id or 0,
                discount=o.amount or Decimal(0),
                kind=o.rule.kind if o.rule else "ABS",
                value=o.rule.value if o.rule else None,
            )
            for o in outcomes
        ]
        return Provisional(
            ref=entry.ref,
            key=entry.key,
            request_id=entry.request_id,
            store=command.store,
            till=till,
            customer_kind=command.customer.kind,
            customer=command.customer.value,
            transaction_number=command.transaction_number or "",
            bill_amount=command.bill_amount,
            at=now,
            total=total,
            lines=lines,
        )

    def _capped(self, item: Provisional, outstanding: list[Provisional]) -> tuple[str, str] | None:
        """The cap this acceptance would break (its name and a message), or None."""
        held = {line.code for other in outstanding for line in other.lines}
        if taken := [c for c in item.codes if c in held]:
            return "code_outstanding", f"coupon {taken[0]} is already accepted provisionally, not yet settled"
        policy = self.policy
        store = [o for o in outstanding if o.store == item.store]
        till = [o for o in store if item.till is not None and o.till == item.till]
        if item.total > policy.max_discount_per_transaction:
            return "transaction_discount", f"the discount exceeds {policy.max_discount_per_transaction} per transaction"
        if item.till is not None and len(till) + 1 > policy.max_per_till:
            return (
                "till_count",
                f"this till has {len(till)} provisional redemptions outstanding (at most {policy.max_per_till})",
            )
        if len(store) + 1 > policy.max_per_store:
            return (
                "store_count",
                f"this store has {len(store)} provisional redemptions outstanding (at most {policy.max_per_store})",
            )
        if sum((o.total for o in store), Decimal(0)) + item.total > policy.max_discount_per_store:
            return (
                "store_discount",
                f"the store's outstanding provisional discount would exceed {policy.max_discount_per_store}",
            )
        for series_id in sorted({line.series_id for line in item.lines}):
            own = policy.for_series(series_id)
            if own is None:
                continue
            mine = sum((line.discount for line in item.lines if line.series_id == series_id), Decimal(0))

            def lines_of(items: list[Provisional], series_id: int = series_id) -> list[Line]:
                return [line for o in items for line in o.lines if line.series_id == series_id]

            if own.max_discount_per_transaction is not None and mine > own.max_discount_per_transaction:
                return (
                    "transaction_discount",
                    f"series {series_id}: the discount exceeds {own.max_discount_per_transaction} per transaction",
                )
            if own.max_per_till is not None and item.till is not None and len(lines_of(till)) + 1 > own.max_per_till:
                return "till_count", f"series {series_id}: at most {own.max_per_till} provisional redemptions per till"
            if own.max_per_store is not None and len(lines_of(store)) + 1 > own.max_per_store:
                return (
                    "store_count",
                    f"series {series_id}: at most {own.max_per_store} provisional redemptions per store",
                )
            spent = sum((line.discount for line in lines_of(store)), Decimal(0))
            if own.max_discount_per_store is not None and spent + mine > own.max_discount_per_store:
                return (
                    "store_discount",
                    f"series {series_id}: the store's provisional discount would exceed {own.max_discount_per_store}",
                )
        return None

    async def held(self, codes: Sequence[str], ref: str) -> str | None:
        """A code among ``codes`` held by another outstanding provisional redemption (every replica, and every
        ledger backend, sees the journal)."""
        try:
            holders = await self.journal.held(list(codes))
        except JournalUnavailable as exc:
            raise StoreUnavailable(str(exc)) from None
        return next((code for code, holder in holders.items() if holder != ref), None)

    async def answer(self, ref: str, store: str | None) -> bytes | None:
        """A provisional redemption's answer from the journal (the ledger no longer has it: a memory ledger after
        a restart); None when the journal does not know ``ref`` (or it is another store's)."""
        try:
            item = await self.journal.get(ref)
            if item is not None:
                if store is not None and item.store != store:
                    return None
                return provisional_body(item, item.state)
            kept = await self.journal.settled_answer(ref)  # b"<store>\n<body>"
            if kept is None:
                return None
            owner, _, body = kept.partition(b"\n")
            return body if store is None or owner == store.encode() else None
        except JournalUnavailable:
            return None

    # -------------------------------------------------------------------------------------- reversal

    async def reverse(self, entry: Entry, key: str | None, reversed_body: StoredResponse) -> StoredResponse | None:
        """Cancel a provisional redemption not yet sent upstream (no upstream call); None when ``entry`` is not
        an outstanding provisional one. A redemption already in an upload: ``REDEMPTION_PENDING`` (retry)."""
        from service.idempotency.service import Refused  # the ledger's refusal (import here: no cycle at load)

        async with self.journal.exclusive():
            item = await self.journal.get(entry.ref)
            if item is None or item.state != "provisional":
                return None
            if any(line.state != "open" for line in item.lines):
                raise Refused(
                    CATALOG["REDEMPTION_PENDING"],
                    "This provisional redemption is being recorded in Capillary now; try the reversal again shortly.",
                    retry_after=5,
                )
            await self.journal.remove(entry.ref)
        entry.reversal = Reversal(state="done", key=key, response=reversed_body, at=self.clock())
        await self.ledger.save(entry, self.ttl)
        await self.ledger.unlock(list(item.codes), entry.ref)
        self.settled["reversed"] += 1
        log.info("provisional_redemption_reversed", ref=entry.ref)  # before it settled
        return reversed_body

    # ---------------------------------------------------------------------------------------- views

    async def overview(self) -> dict[str, object]:
        outstanding = self.snapshot = await self.journal.outstanding()
        now = self.clock()
        counts: collections.Counter[str] = collections.Counter()
        discounts: dict[str, Decimal] = collections.defaultdict(Decimal)
        for item in outstanding:
            counts[item.store] += 1
            discounts[item.store] += item.total
        policy = self.policy
        return {
            "outstanding": len(outstanding),
            "oldestAgeSeconds": round(now - outstanding[0].at, 3) if outstanding else None,
            "byStore": {s: {"outstanding": n, "discount": str(discounts[s])} for s, n in sorted(counts.items())},
            "caps": msgspec.to_builtins(policy),
            "journal": self.journal.backend,
        }
