"""Capillary's coupon series read into the gateway's :class:`SeriesSummary`.

Capillary writes some limits as JSON inside strings (``redeemAtStore``, ``redemptionRange``), dates in several
ISO forms, and "no limit" as sentinels (``-1``, 0, 2^53 - 1). Those are read here, at the edge: what the domain
gets has None for "no limit" and nothing of Capillary's spelling.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from service.capillary.models import Series
from service.redemption.models import RedemptionRange, SeriesSummary

NO_LIMIT_BILL: Final = 9007199254740991  # Capillary's "no maximum" (2^53 - 1)


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _embedded_json(value: str | None, kind: type[Any]) -> Any:
    """A JSON value of ``kind`` written inside a string; None when absent, unreadable or of another kind."""
    if not value:
        return None
    try:
        parsed = msgspec.json.decode(value)
    except msgspec.DecodeError:
        return None
    return parsed if isinstance(parsed, kind) else None


def _stores(series: Series) -> tuple[str, ...] | None:
    """Stores the series may be redeemed at; None for all (``[-1]``, or nothing we can read)."""
    stores = _embedded_json(series.redeem_at_store, list)
    if not stores or any(str(s) == "-1" for s in stores):
        return None
    return tuple(str(s) for s in stores)


def _range_part(value: Any) -> tuple[int, ...] | None:
    if not isinstance(value, list):
        return None
    numbers = []
    for item in value:
        try:
            number = int(item)
        except (TypeError, ValueError):
            return None
        if number == -1:
            return None
        numbers.append(number)
    return tuple(numbers) or None


def _range(value: str | None) -> RedemptionRange | None:
    parsed = _embedded_json(value, dict)
    if parsed is None:
        return None
    found = RedemptionRange(
        days_of_month=_range_part(parsed.get("dom")),
        days_of_week=_range_part(parsed.get("dow")),
        hours=_range_part(parsed.get("hours")),
    )
    return None if found == RedemptionRange() else found


def summarize(series: Series) -> SeriesSummary:
    """The gateway's summary of an upstream series; values meaning "no limit" become None."""
    max_bill = series.max_bill_amount
    min_bill = series.min_bill_amount
    valid_from = _parse_time(series.redemption_valid_from)
    return SeriesSummary(
        id=series.id,
        description=series.description,
        discount_type=series.discount_type,
        discount_value=series.discount_value,
        discount_upto=series.discount_upto if series.discount_upto and series.discount_upto > 0 else None,
        min_bill_amount=min_bill if min_bill is not None and min_bill > 0 else None,
        max_bill_amount=max_bill if max_bill is not None and 0 <= max_bill < NO_LIMIT_BILL else None,
        valid_till=_parse_time(series.valid_till_date),
        redemption_valid_from=valid_from if valid_from and valid_from.year > 1970 else None,
        redemption_range=_range(series.redemption_range),
        stores=_stores(series),
        multiple_use=bool(series.is_multiple_use_allowed),
    )
