"""Offline acceptance's metrics, read at scrape time from what the offline service and its settler keep (the
outstanding ones as of the settler's last look at the journal). Exported with OFFLINE_MODE off too (all zero, and
``pos_coupon_offline_enabled`` 0), so dashboards and alerts find every series."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from service.offline.service import Offline
    from service.offline.settler import Settler

CAPS = ("till_count", "store_count", "transaction_discount", "store_discount", "code_outstanding")
REASONS = (
    "COUPON_ALREADY_REDEEMED",
    "CUSTOMER_NOT_FOUND",
    "COUPON_NOT_FOR_CUSTOMER",
    "COUPON_NOT_FOUND",
    "COUPON_EXPIRED",
    "REJECTED_BY_CAPILLARY",
    "EXPIRED_OFFLINE",
)


class OfflineCollector(Collector):
    def __init__(self, offline: Offline | None = None, settler: Settler | None = None) -> None:
        self._offline = offline
        self._settler = settler

    def collect(self) -> Iterator[Metric]:
        offline = self._offline
        snapshot = offline.snapshot if offline is not None else []
        yield GaugeMetricFamily(
            "pos_coupon_offline_enabled", "1 when offline acceptance is on (OFFLINE_MODE=on)", value=int(bool(offline))
        )
        total = sum((item.total for item in snapshot), Decimal(0))
        yield GaugeMetricFamily(
            "pos_coupon_offline_outstanding", "Provisional redemptions not yet settled", value=len(snapshot)
        )
        yield GaugeMetricFamily(
            "pos_coupon_offline_outstanding_discount",
            "Discount given provisionally and not yet settled",
            value=float(total),
        )
        count = GaugeMetricFamily(
            "pos_coupon_offline_store_outstanding",
            "Provisional redemptions not yet settled, by store",
            labels=["store"],
        )
        discount = GaugeMetricFamily(
            "pos_coupon_offline_store_discount",
            "Discount given provisionally, not yet settled, by store",
            labels=["store"],
        )
        stores: dict[str, tuple[int, Decimal]] = {}
        for item in snapshot:
            n, d = stores.get(item.store, (0, Decimal(0)))
            stores[item.store] = (n + 1, d + item.total)
        for store, (n, d) in sorted(stores.items()):
            count.add_metric([store], n)
            discount.add_metric([store], float(d))
        yield count
        yield discount
        oldest = min((item.at for item in snapshot), default=None)
        age = offline.clock() - oldest if offline is not None and oldest is not None else 0.0
        yield GaugeMetricFamily(
            "pos_coupon_offline_oldest_age_seconds", "Age of the oldest outstanding provisional redemption", value=age
        )
        accepted = CounterMetricFamily("pos_coupon_offline_accepted", "Redemptions accepted provisionally")
        accepted.add_metric([], offline.accepted if offline is not None else 0)
        yield accepted
        settled = CounterMetricFamily(
            "pos_coupon_offline_settled", "Provisional redemptions settled, by result", labels=["result"]
        )
        for result in ("redeemed", "reversed"):
            settled.add_metric([result], offline.settled[result] if offline is not None else 0)
        yield settled
        conflicts = CounterMetricFamily(
            "pos_coupon_offline_conflicts", "Provisional redemptions Capillary refused, by reason", labels=["reason"]
        )
        for reason in REASONS:
            conflicts.add_metric([reason], offline.conflicts_by_reason[reason] if offline is not None else 0)
        yield conflicts
        refusals = CounterMetricFamily(
            "pos_coupon_offline_cap_refusals", "Offline acceptances refused by a cap, by cap", labels=["cap"]
        )
        for cap in CAPS:
            refusals.add_metric([cap], offline.refusals[cap] if offline is not None else 0)
        yield refusals
