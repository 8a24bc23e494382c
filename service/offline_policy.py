"""The offline policy: who qualifies for a provisional redemption, and the caps on the risk taken.

Read once at startup from ``OFFLINE_POLICY_FILE`` (JSON); every field is optional and defaults to the contract's::

    {"validatedWithinSeconds": 900, "maxPerTill": 20, "maxPerStore": 200,
     "maxDiscountPerTransaction": "1000.00", "maxDiscountPerStore": "10000.00", "expireAfterSeconds": 86400,
     "series": {"123": {"excluded": true}, "456": {"maxPerTill": 5, "maxDiscountPerTransaction": "50.00"}}}

It sits beside ``config`` (which reads it once at startup, so a bad file stops the start), below every package.

A series entry may exclude the series or give it its own caps (the count and discount of its own outstanding
provisional redemptions, per till, per store and per transaction), on top of the global caps.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import msgspec


class SeriesPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="camel"):
    excluded: bool = False
    max_per_till: int | None = None
    max_per_store: int | None = None
    max_discount_per_transaction: Decimal | None = None
    max_discount_per_store: Decimal | None = None


class Policy(msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="camel"):
    validated_within_seconds: float = 900.0
    max_per_till: int = 20
    max_per_store: int = 200
    max_discount_per_transaction: Decimal = Decimal("1000.00")
    max_discount_per_store: Decimal = Decimal("10000.00")
    expire_after_seconds: float = 24 * 3600.0
    series: dict[int, SeriesPolicy] = {}

    def for_series(self, series_id: int | None) -> SeriesPolicy | None:
        return self.series.get(series_id) if series_id is not None else None


class PolicyError(ValueError):
    pass


def load_policy(path: str | None) -> Policy:
    """The policy in ``path`` (the defaults without one); a clear one-line error naming what is wrong."""
    if path is None:
        return Policy()
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise PolicyError(f"cannot read {path}: {exc.strerror}") from None
    try:
        policy = msgspec.json.decode(raw, type=Policy)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise PolicyError(f"{path}: {exc}") from None
    numbers = [policy.validated_within_seconds, policy.expire_after_seconds, policy.max_per_till, policy.max_per_store]
    if any(n < 0 for n in numbers) or policy.max_discount_per_transaction < 0 or policy.max_discount_per_store < 0:
        raise PolicyError(f"{path}: limits must not be negative")
    return policy
