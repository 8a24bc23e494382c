"""How late a redemption dated by Capillary can have been made: the date's precision and zone, table-driven."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from service.idempotency.models import is_natural, latest_moment, natural_key
from service.redemption.models import CustomerRef, RedemptionCommand

NOON = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("shown", "latest"),
    [
        ("2030-01-15T12:00:00Z", datetime(2030, 1, 15, 12, 0, 1, tzinfo=UTC)),  # to the second: up to 1 s later
        ("2030-01-15T12:00:00+05:30", datetime(2030, 1, 15, 6, 30, 1, tzinfo=UTC)),
        ("2030-01-15 12:00:00", datetime(2030, 1, 16, 2, 0, 1, tzinfo=UTC)),  # no zone: any zone, up to UTC+14
        ("2030-01-15", datetime(2030, 1, 16, 14, 0, tzinfo=UTC)),  # a bare date: the end of that day, any zone
        ("", None),
        (None, None),
        ("15/01/2030", None),  # unreadable: rules nothing out
    ],
)
def test_latest_moment(shown: str | None, latest: datetime | None) -> None:
    assert latest_moment(shown) == latest


def _command(store: str | None, number: str, *codes: str) -> RedemptionCommand:
    return RedemptionCommand(CustomerRef("mobile", "919900000001"), codes, 100, number, store=store)  # type: ignore[arg-type]


def test_the_natural_key_is_per_till_and_keeps_its_old_form_without_one() -> None:
    command = _command("S1", "T-1", "B", "A")
    assert natural_key(command) == "natural:S1:T-1:A,B"  # the form earlier releases recorded
    assert natural_key(command, "T1") != natural_key(command, "T2")
    assert natural_key(command, "T1") == natural_key(_command("S1", "T-1", "A", "B"), "T1")
    # a separator inside a part cannot make two different requests one key
    assert natural_key(_command("S1:T1", "x", "A"), "y") != natural_key(_command("S1", "T1:x", "A"), "y")
    assert all(is_natural(natural_key(command, till)) for till in (None, "T1"))
