"""Offline acceptance's metrics, read at scrape time from what the offline service and its settler keep (the
outstanding ones as of the settler's last look at the journal)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from service.offline.service import Offline
    from service.offline.settler import Settler


class OfflineCollector(Collector):
    def __init__(self, offline: Offline, settler: Settler) -> None:
        self._offline = offline
        self._settler = settler

    def collect(self) -> Iterator[Metric]:
        offline = self._offline
        count = GaugeMetricFamily(
            "gateway_offline_outstanding", "Provisional redemptions not yet settled, by store", labels=["store"]
        )
        discount = GaugeMetricFamily(
            "gateway_offline_outstanding_discount", "Discount given provisionally and not yet settled", labels=["store"]
        )
        stores: dict[str, tuple[int, Decimal]] = {}
        for item in offline.snapshot:
            n, d = stores.get(item.store, (0, Decimal(0)))
            stores[item.store] = (n + 1, d + item.total)
        for store, (n, d) in sorted(stores.items()):
            count.add_metric([store], n)
            discount.add_metric([store], float(d))
        yield count
        yield discount
        oldest = min((item.at for item in offline.snapshot), default=None)
        age = offline.clock() - oldest if oldest is not None else 0.0
        yield GaugeMetricFamily(
            "gateway_offline_oldest_age_seconds", "Age of the oldest outstanding provisional redemption", value=age
        )
        accepted = CounterMetricFamily("gateway_offline_accepted", "Redemptions accepted provisionally")
        accepted.add_metric([], offline.accepted)
        yield accepted
        settled = CounterMetricFamily(
            "gateway_offline_settled", "Provisional redemptions settled, by result", labels=["result"]
        )
        for result in ("redeemed", "reversed"):
            settled.add_metric([result], offline.settled[result])
        yield settled
        conflicts = CounterMetricFamily(
            "gateway_offline_conflicts", "Provisional redemptions Capillary refused, by reason", labels=["reason"]
        )
        for reason, n in sorted(offline.conflicts_by_reason.items()):
            conflicts.add_metric([reason], n)
        yield conflicts
        refusals = CounterMetricFamily(
            "gateway_offline_cap_refusals", "Offline acceptances refused by a cap, by cap", labels=["cap"]
        )
        for cap in ("till_count", "store_count", "transaction_discount", "store_discount", "code_outstanding"):
            refusals.add_metric([cap], offline.refusals[cap])
        yield refusals
        up = GaugeMetricFamily(
            "gateway_offline_upstream_healthy", "1 when every Capillary breaker is closed (the settler may run)"
        )
        up.add_metric([], 1.0 if self._settler.healthy() else 0.0)
        yield up
