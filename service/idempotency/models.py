"""What the ledger keeps of a redemption, keyed by its ``ref``."""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Literal

import msgspec

from service.redemption.models import CustomerRef, IdentifierKind, Mode, RedemptionCommand

# in_flight: a gateway is working on it (until ``lease_until``; past that its process is presumed gone)
# pending:   the redeem may have reached Capillary but its answer never came; reconciliation will tell
# done:      the final answer is stored and replayed
# failed:    resolved as not applied upstream; the idempotency key is released so the till may try again
State = Literal["in_flight", "pending", "done", "failed"]


class StoredCommand(msgspec.Struct, frozen=True, kw_only=True):
    customer_kind: IdentifierKind
    customer: str
    codes: tuple[str, ...]
    bill_amount: Decimal
    transaction_number: str
    redemption_time: str | None = None
    mode: Mode = "all"
    store: str | None = None

    @classmethod
    def of(cls, command: RedemptionCommand) -> StoredCommand:
        return cls(
            customer_kind=command.customer.kind,
            customer=command.customer.value,
            codes=command.codes,
            bill_amount=command.bill_amount,
            transaction_number=command.transaction_number or "",
            redemption_time=command.redemption_time,
            mode=command.mode,
            store=command.store,
        )

    def command(self) -> RedemptionCommand:
        """The domain command back: every field but the flattened customer carries over by name."""
        fields = msgspec.structs.asdict(self)
        customer = CustomerRef(fields.pop("customer_kind"), fields.pop("customer"))
        return RedemptionCommand(customer=customer, **fields)

    def fingerprint(self) -> str:
        """Same request, same fingerprint: the codes' order does not matter."""
        canonical = msgspec.structs.replace(self, codes=tuple(sorted(self.codes)))
        return hashlib.sha256(msgspec.json.encode(canonical)).hexdigest()


#: What an answer says, in the domain's words; the web layer chooses its HTTP status from it (and from ``error``).
#: redeemed / partially_redeemed / rejected: Capillary's verdict on the redeem (found by reconciliation, too);
#: pending: the outcome is not known yet; not_applied: concluded not applied, the request may run again;
#: reversed: the reversal's own answer; reversed_redeem: a redeem replayed after its reversal;
#: provisional: accepted offline, to be recorded in Capillary later.
Answer = Literal[
    "redeemed",
    "partially_redeemed",
    "rejected",
    "pending",
    "not_applied",
    "reversed",
    "reversed_redeem",
    "provisional",
]


class StoredResponse(msgspec.Struct, frozen=True, omit_defaults=True):
    """An answer as sent, replayed byte for byte: its body, what it says, and the catalog code of the reason it
    names at its top (a refusal's). ``status``: the HTTP status the web layer chose, kept so that replays answer as
    the first answer did and so that replicas of the previous release (which read only ``status`` and ``body``)
    replay records of this one during a rolling deploy; a record without it gets its status from ``answer``."""

    answer: Answer = "redeemed"
    body: bytes = b""
    error: str | None = None
    status: int | None = None


class Reversal(msgspec.Struct, frozen=True, kw_only=True):
    state: Literal["in_flight", "unknown", "done"]
    key: str | None = None
    response: StoredResponse | None = None
    at: float = 0.0


class Entry(msgspec.Struct, kw_only=True):
    ref: str
    key: str
    fingerprint: str
    state: State
    command: StoredCommand
    request_id: str
    created_at: float
    lease_until: float = 0.0  # in_flight: until when the owning request may still be running
    settle_after: float = 0.0  # pending: "not applied" may be concluded only after this time
    sent_codes: tuple[str, ...] = ()  # the codes of the redeem call whose answer never came
    response: StoredResponse | None = None  # done/failed: the final answer; pending: the 202 answer
    redemption_ids: dict[str, int] = {}  # done: Capillary's redemption id of each redeemed code
    reversal: Reversal | None = None
    attempts: int = 0  # reconciliation attempts
    checked_at: float = 0.0  # when Capillary was last asked about it


NATURAL = "natural"


def natural_key(command: RedemptionCommand, till: str | None = None) -> str:
    """A key for a till that sends no Idempotency-Key: its store, its till (when its API key names one), the
    transaction number and the sorted codes. Two tills of one store may use the same transaction numbers."""
    codes = sorted(command.codes)
    if till is None:  # the format of the first releases, kept: records made before the till was in the key
        return f"{NATURAL}:{command.store or '-'}:{command.transaction_number}:{','.join(codes)}"
    parts = [command.store or "-", till, command.transaction_number or "", codes]
    return f"{NATURAL}-till:{msgspec.json.encode(parts).decode()}"  # JSON: no separator inside a part can fool it


def is_natural(key: str) -> bool:
    return key.startswith(NATURAL)


#: How far a date without a zone may be from UTC (zones run from UTC-12 to UTC+14).
_ANY_ZONE = timedelta(hours=14)


def latest_moment(shown: str | None) -> datetime | None:
    """The latest moment a redemption dated ``shown`` can have been made: its date-time plus the precision it is
    given in (a second; a whole day for a bare date), widened by any time zone when it names none. None when
    there is no date or it cannot be read: then the date rules nothing out."""
    if not shown:
        return None
    text = shown.strip()
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if len(text) <= 10:  # a bare date: any time that day
        when = datetime.combine(date.fromisoformat(text), datetime.min.time()) + timedelta(days=1)
    else:
        when += timedelta(seconds=1)  # shown to the second: it may be up to a second later
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC) + _ANY_ZONE
    return when.astimezone(UTC)


class FoundRedemption(msgspec.Struct, frozen=True):
    """A redemption Capillary shows for a code and a transaction number, as reconciliation reads it."""

    id: int  # Capillary's redemption id; 0 when it could not be learnt
    latest: datetime | None = None  # the latest moment it can have been made, from the date shown (None: no date)


entry_encoder = msgspec.json.Encoder()
entry_decoder = msgspec.json.Decoder(Entry)
