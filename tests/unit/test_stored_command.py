"""``StoredCommand``: what the ledger keeps of a redeem gives the same domain command back, stored or not."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest

from service.idempotency.models import StoredCommand
from service.redemption.models import CustomerRef, RedemptionCommand

COMMANDS = [
    RedemptionCommand(CustomerRef("mobile", "919900000001"), ("A",), Decimal("1000.50"), "T-1", store="S1"),
    RedemptionCommand(
        CustomerRef("email", "bob@example.com"),
        ("B", "A"),
        Decimal(20),
        "T-2",
        redemption_time="2031-01-01 10:00:00",
        mode="partial",
    ),
]


@pytest.mark.parametrize("command", COMMANDS)
def test_the_command_comes_back_whole(command: RedemptionCommand) -> None:
    assert StoredCommand.of(command).command() == command


@pytest.mark.parametrize("command", COMMANDS)
def test_the_command_comes_back_from_the_stored_bytes(command: RedemptionCommand) -> None:
    raw = msgspec.json.encode(StoredCommand.of(command))
    assert msgspec.json.decode(raw, type=StoredCommand).command() == command


def test_a_command_without_transaction_number_comes_back_with_an_empty_one() -> None:
    command = RedemptionCommand(CustomerRef("externalId", "X-1"), ("A",), Decimal(5))
    assert StoredCommand.of(command).command() == RedemptionCommand(
        CustomerRef("externalId", "X-1"), ("A",), Decimal(5), ""
    )
