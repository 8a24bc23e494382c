"""What the ledger keeps of a redemption, keyed by its ``ref``."""

from __future__ import annotations

import hashlib
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
        return RedemptionCommand(
            customer=CustomerRef(self.customer_kind, self.customer),
            codes=self.codes,
            bill_amount=self.bill_amount,
            transaction_number=self.transaction_number,
            redemption_time=self.redemption_time,
            mode=self.mode,
            store=self.store,
        )

    def fingerprint(self) -> str:
        """Same request, same fingerprint: the codes' order does not matter."""
        canonical = msgspec.structs.replace(self, codes=tuple(sorted(self.codes)))
        return hashlib.sha256(msgspec.json.encode(canonical)).hexdigest()


class StoredResponse(msgspec.Struct, frozen=True):
    """An answer as sent, replayed byte for byte."""

    status: int
    body: bytes


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


def natural_key(command: RedemptionCommand) -> str:
    """A key for a till that sends no Idempotency-Key: its store, the transaction number and the sorted codes."""
    return f"natural:{command.store or '-'}:{command.transaction_number}:{','.join(sorted(command.codes))}"


entry_encoder = msgspec.json.Encoder()
entry_decoder = msgspec.json.Decoder(Entry)
