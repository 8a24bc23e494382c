"""Prometheus metrics on a registry owned by the app (never the global one), low-cardinality labels only.

Hot-path counts live in plain objects of the layers that make them (cache stats, token refreshes, the ledger's
pending count) and are read by :class:`StateCollector` at scrape time; request, upstream and business events are
observed directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.registry import Collector

from service import __version__
from service.capillary.client import OPERATIONS as UPSTREAM_OPERATIONS
from service.capillary.client import REJECTION_REASONS
from service.capillary.codes import CAPILLARY_CODES
from service.capillary.resilience import BREAKER_STATES, PRIORITY_NAMES, Breaker, Priority, RetryBudget
from service.redemption.catalog import CATALOG

disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: they double the payload and nothing here reads them

PREFIX: Final = "pos_coupon"
HTTP_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UPSTREAM_OUTCOMES: Final = (
    "ok",
    "business_error",
    "http_4xx",
    "http_5xx",
    "timeout",
    "connection_error",
    "bad_response",
)
RECONCILE_RESULTS: Final = ("redeemed", "not_applied", "still_pending", "upstream_unavailable", "not_ours")
LEDGER_WRITE_RESULTS: Final = ("deferred", "written", "gave_up", "unreplicated_gave_up", "unreplicated_not_kept")
LEDGER_REFUSAL_REASONS: Final = ("full", "store_quota")
STATUS_CLASSES: Final = ("2xx", "3xx", "4xx", "5xx")
NO_ERROR: Final = "none"
ACCESS_REASONS: Final = (
    "unauthenticated",
    "forbidden",
    "rate_limited",
    "too_large",
    "shed",
    "slow_headers",
    "slow_body",
    "malformed_http",
)


def status_class(status: int) -> str:
    return f"{status // 100}xx"


class Metrics:
    """Every instrument the gateway exports, on its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        counter, histogram = self._counter, self._histogram
        self.http_requests = counter(
            "http_requests", "HTTP requests by route template, method and status class.", "route", "method", "status"
        )
        self.http_duration = histogram(
            "http_request_duration_seconds", "HTTP request duration by route template and method.", "route", "method"
        )
        self.upstream_calls = counter(
            "upstream_calls", "Capillary calls by operation and outcome.", "operation", "outcome"
        )
        self.upstream_duration = histogram(
            "upstream_call_duration_seconds", "Capillary call duration by operation.", "operation"
        )
        self.upstream_codes = counter(
            "upstream_status_codes", "Capillary status codes seen, by operation.", "operation", "code"
        )
        self.redemptions = counter(
            "redemptions", "Redeem requests by outcome and local error code.", "outcome", "error_code"
        )
        self.validations = counter(
            "validations",
            "Validate requests by outcome (redeemed, partially_redeemed, refused: what a redeem would do; error) and "
            "the first refused code's local error code.",
            "outcome",
            "error_code",
        )
        self.validated_coupons = counter(
            "validated_coupons",
            "Coupon codes validated, each by its verdict (redeemable, refused) and local error code.",
            "result",
            "error_code",
        )
        self.coupons_redeemed = counter("coupons_redeemed", "Coupons redeemed.")
        self.discount = counter("discount_amount", "Discount granted by redeemed coupons, in currency units.")
        self.replays = counter("idempotent_replays", "Requests answered from the ledger.")
        self.lock_conflicts = counter(
            "lock_conflicts", "Requests refused because a coupon or the request was busy.", "kind"
        )
        self.access_refused = counter(
            "access_refused",
            "Requests refused before any work: unauthenticated, forbidden, rate_limited, too_large, shed, and at the"
            " door: slow_headers, slow_body (408), malformed_http.",
            "reason",
        )
        for reason in ACCESS_REASONS:
            self.access_refused.labels(reason)
        self.build_info = Gauge(f"{PREFIX}_build_info", "Build information.", ["version"], registry=r)
        self.build_info.labels(__version__).set(1)
        ProcessCollector(registry=r)
        # Labelled children of the per-event instruments, by (instrument, label values): prometheus_client's
        # ``labels()`` validates and looks its arguments up under a lock on every call; the label sets are few.
        self._children: dict[tuple[object, ...], Any] = {}
        self._initialise()

    def _child(self, metric: Counter | Histogram, *values: str) -> Any:
        """``metric.labels(*values)``, looked up once."""
        key = (id(metric), *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def _counter(self, name: str, text: str, *labels: str) -> Counter:
        """``pos_coupon_<name>_total`` on this registry (the client adds ``_total``)."""
        return Counter(f"{PREFIX}_{name}", text, labels, registry=self.registry)

    def _histogram(self, name: str, text: str, *labels: str) -> Histogram:
        """``pos_coupon_<name>``, in the request-latency buckets, on this registry."""
        return Histogram(f"{PREFIX}_{name}", text, labels, buckets=HTTP_BUCKETS, registry=self.registry)

    def initialise_routes(self, routes: Iterable[tuple[str, str]]) -> None:
        """Each route's series at zero (and the unmatched one, for 404s)."""
        for route, method in [*routes, ("unmatched", "GET")]:
            self.http_duration.labels(route, method)
            for status in STATUS_CLASSES:
                self.http_requests.labels(route, method, status)

    def _initialise(self) -> None:
        """Every known label set at zero, so dashboards and alerts see the series before the first event."""
        for operation in UPSTREAM_OPERATIONS:
            self.upstream_duration.labels(operation)
            for outcome in UPSTREAM_OUTCOMES:
                self.upstream_calls.labels(operation, outcome)
        for operation in ("is_redeemable", "redeem", "bulk_redeem"):
            for code in CAPILLARY_CODES:
                self.upstream_codes.labels(operation, str(code))
        for outcome in ("redeemed", "partially_redeemed", "pending"):
            self.redemptions.labels(outcome, NO_ERROR)
        self.redemptions.labels("failed", "REDEMPTION_NOT_APPLIED")
        for outcome in ("redeemed", "partially_redeemed"):
            self.validations.labels(outcome, NO_ERROR)
        self.validated_coupons.labels("redeemable", NO_ERROR)
        for error in CATALOG:  # refusals and errors carry the local code
            self.redemptions.labels("rejected", error)
            self.redemptions.labels("error", error)
            self.validations.labels("refused", error)
            self.validations.labels("partially_redeemed", error)
            self.validations.labels("error", error)
            self.validated_coupons.labels("refused", error)
        for kind in ("coupon_in_use", "request_in_progress"):
            self.lock_conflicts.labels(kind)

    # -------------------------------------------------------------------------------------------- events

    def upstream_call(
        self, operation: str, seconds: float, outcome: str, code: int | None, exemplar: dict[str, str] | None = None
    ) -> None:
        child = self._child
        child(self.upstream_calls, operation, outcome).inc()
        child(self.upstream_duration, operation).observe(seconds, exemplar)
        if code is not None:
            child(self.upstream_codes, operation, str(code) if code in CAPILLARY_CODES else "other").inc()

    def redeemed(self, outcome: str, error_code: str | None, coupons: int = 0, discount: Decimal | None = None) -> None:
        self._child(self.redemptions, outcome, error_code or NO_ERROR).inc()
        if coupons:
            self.coupons_redeemed.inc(coupons)
        if discount:
            self.discount.inc(float(discount))

    def validated(self, outcome: str, error_code: str | None, coupons: Iterable[Verdict] = ()) -> None:
        child = self._child
        child(self.validations, outcome, error_code or NO_ERROR).inc()
        for coupon in coupons:
            if coupon.failure is None:
                child(self.validated_coupons, "redeemable", NO_ERROR).inc()
            else:
                child(self.validated_coupons, "refused", coupon.failure.error.code).inc()

    def render(self, *, openmetrics: bool = False) -> bytes:
        """The exposition: Prometheus' text format, or OpenMetrics (which alone carries exemplars)."""
        if openmetrics:
            text: bytes = openmetrics_latest(self.registry)  # type: ignore[no-untyped-call]
            return text
        return generate_latest(self.registry)


class _Error(Protocol):
    @property
    def code(self) -> str: ...


class _Failure(Protocol):
    @property
    def error(self) -> _Error: ...


class Verdict(Protocol):
    """One code's verdict, as the validate handler has it (``CodeOutcome``)."""

    @property
    def failure(self) -> _Failure | None: ...


class CacheCounts(Protocol):
    hits: int
    misses: int
    errors: int


@dataclass(frozen=True)
class CacheView:
    """One cache as the collector reads it."""

    name: str
    backend: str
    counts: CacheCounts


def _by_label(
    name: str, documentation: str, label: str, values: Iterable[str], counts: Mapping[str, float]
) -> CounterMetricFamily:
    """A counter with one label, every known value exported (0 until counted) so dashboards see each series."""
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value in values:
        family.add_metric([value], counts.get(value, 0))
    return family


@dataclass(frozen=True, kw_only=True, eq=False)  # eq=False: hashed by identity, as the registry needs
class StateCollector(Collector):
    """Reads the gateway's own counters at scrape time."""

    caches: Sequence[CacheView]
    fetch_sizes: Callable[[], dict[int, int]]
    token_refreshes: Callable[[], int]
    pending: Callable[[], int]
    reconciliations: Callable[[], dict[str, int]]
    deferred_writes: Callable[[], dict[str, int]] = dict
    unwritten: Callable[[], int] = int
    unreplicated: Callable[[], int] = int
    unreplicated_total: Callable[[], int] = int
    ledger_refusals: Callable[[], dict[str, int]] = dict
    upstream_warnings: Callable[[], dict[str, int]] = dict

    def collect(self) -> Iterable[Metric]:
        requests = CounterMetricFamily(
            f"{PREFIX}_cache_requests",
            "Cache lookups by cache, backend and result.",
            labels=["cache", "backend", "result"],
        )
        for cache in self.caches:
            counts = cache.counts
            for result, value in (("hit", counts.hits), ("miss", counts.misses), ("error", counts.errors)):
                requests.add_metric([cache.name, cache.backend, result], value)
        yield requests

        sizes = self.fetch_sizes()
        buckets, running = [], 0
        for bound in (1, 2, 5, 10, 20, 50):
            running = sum(count for size, count in sizes.items() if size <= bound)
            buckets.append((str(bound), running))
        total = sum(sizes.values())
        buckets.append(("+Inf", total))
        histogram = HistogramMetricFamily(
            f"{PREFIX}_series_fetch_batch_size", "Series fetched per upstream series call."
        )
        histogram.add_metric([], buckets, sum_value=sum(size * count for size, count in sizes.items()))
        yield histogram

        yield CounterMetricFamily(
            f"{PREFIX}_oauth_token_refreshes", "OAuth tokens fetched from Capillary.", value=self.token_refreshes()
        )
        warned = self.upstream_warnings()
        yield _by_label(
            f"{PREFIX}_upstream_warnings",
            "Warnings on redemptions Capillary applied (704/724: the customer was not notified), by code.",
            "code",
            ("704", "724", "other"),
            warned,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_pending_redemptions", "Redemptions whose outcome is being reconciled.", value=self.pending()
        )
        yield _by_label(
            f"{PREFIX}_reconciliations",
            "Reconciliation attempts by result.",
            "result",
            RECONCILE_RESULTS,
            self.reconciliations(),
        )
        yield _by_label(
            f"{PREFIX}_ledger_deferred_writes",
            "Ledger records the store could not take when the answer was given: deferred, then once written when it "
            "was back, or given up (LEDGER_WRITE_RETRY_SECONDS, or shutdown); and answers kept for REDIS_WAIT_REPLICAS "
            "released unacknowledged (unreplicated_gave_up) or not kept, past the cap (unreplicated_not_kept).",
            "result",
            LEDGER_WRITE_RESULTS,
            self.deferred_writes(),
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_ledger_unwritten_records",
            "Answers given to tills and not yet recorded in the ledger (its store is unavailable).",
            value=self.unwritten(),
        )
        # Exported whatever the ledger's store (0 without Redis), so the alert on it always has its series.
        yield CounterMetricFamily(
            f"{PREFIX}_ledger_unreplicated",
            "Final answers given before REDIS_WAIT_REPLICAS replicas acknowledged them (a failover may lose them).",
            value=self.unreplicated_total(),
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_ledger_unreplicated_records",
            "Answers the ledger's primary took but REDIS_WAIT_REPLICAS replicas did not acknowledge: kept by this "
            "process and written again until they do (a failover, or this pod's end, meanwhile may lose them).",
            value=self.unreplicated(),
        )
        refusals = self.ledger_refusals()
        yield _by_label(
            f"{PREFIX}_ledger_refusals",
            "New redemptions refused by the in-memory ledger's bounds: full, or the store at its quota.",
            "reason",
            LEDGER_REFUSAL_REASONS,
            refusals,
        )


class Resilient(Protocol):
    """What :class:`ResilienceCollector` reads from the Capillary client."""

    @property
    def breakers(self) -> tuple[Breaker, ...]: ...

    @property
    def retry_budget(self) -> RetryBudget: ...

    @property
    def retries(self) -> dict[str, int]: ...

    @property
    def rejections(self) -> dict[tuple[str, Priority], int]: ...


class ResilienceCollector(Collector):
    """The upstream breakers, retries and calls refused before being sent, read at scrape time."""

    def __init__(self, client: Resilient) -> None:
        self._client = client

    def collect(self) -> Iterable[Metric]:
        client = self._client
        state = GaugeMetricFamily(
            f"{PREFIX}_upstream_breaker_state",
            "Circuit breaker state per upstream host: 1 for the current state (closed, open, half_open).",
            labels=["host", "state"],
        )
        transitions = CounterMetricFamily(
            f"{PREFIX}_upstream_breaker_transitions",
            "Circuit breaker state changes per upstream host, by the state entered.",
            labels=["host", "state"],
        )
        for breaker in client.breakers:
            for name in BREAKER_STATES:
                state.add_metric([breaker.host, name], 1.0 if breaker.state is name else 0.0)
                transitions.add_metric([breaker.host, name], breaker.transitions[name])
        yield state
        yield transitions
        rejected = CounterMetricFamily(
            f"{PREFIX}_upstream_rejected",
            "Upstream calls refused before being sent: circuit_open, rate_limited (outbound budget), no_time "
            "(deadline spent), by priority.",
            labels=["reason", "priority"],
        )
        for reason in REJECTION_REASONS:
            for priority, label in PRIORITY_NAMES.items():
                rejected.add_metric([reason, label], client.rejections[reason, priority])
        yield rejected
        retries = CounterMetricFamily(
            f"{PREFIX}_upstream_retries",
            "Reads sent again after a transient failure, by operation.",
            labels=["operation"],
        )
        for operation in UPSTREAM_OPERATIONS:
            retries.add_metric([operation], client.retries.get(operation, 0))
        yield retries
        yield CounterMetricFamily(
            f"{PREFIX}_upstream_retry_budget_exhausted",
            "Retries not made because the retry budget was spent.",
            value=client.retry_budget.exhausted,
        )


class UpstreamAuthCollector(Collector):
    """Whether Capillary accepts the gateway's credentials (``service.upstream_auth``), read at scrape time."""

    def __init__(self, failing: Callable[[], bool], checks: Callable[[], dict[str, int]]) -> None:
        self._failing = failing
        self._checks = checks

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            f"{PREFIX}_upstream_auth_failing",
            "1 while Capillary refuses the gateway's credentials (401/403 to a token request or a call), else 0.",
            value=1.0 if self._failing() else 0.0,
        )
        checks = self._checks()
        yield _by_label(
            f"{PREFIX}_upstream_auth_checks",
            "Proofs of the Capillary credentials (start-up and /readyz) by result: ok, refused, unknown.",
            "result",
            ("ok", "refused", "unknown"),
            checks,
        )


REDIS_ROUND_TRIP_BUCKETS: Final = (0, 1, 2, 3, 4, 6, 8, 12, 16)
SHARED_LIMITS: Final = ("key_rate", "capillary_budget")


class RedisCollector(Collector):
    """Redis round trips per request (observed by the request middleware while Redis is in use) and in total
    (read at scrape time from :class:`service.redis_pool.RoundTrips`)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        total: Callable[[], int],
        unavailable: Callable[[], dict[str, int]],
    ) -> None:
        self.per_request = Histogram(
            f"{PREFIX}_redis_round_trips_per_request",
            "Round trips to Redis (one command, script or pipeline each) made for one request, by route.",
            ["route"],
            buckets=REDIS_ROUND_TRIP_BUCKETS,
            registry=registry,
        )
        self._total = total
        self._unavailable = unavailable
        registry.register(self)

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily(
            f"{PREFIX}_redis_round_trips",
            "Round trips to Redis by this process (requests, background work, probes).",
            value=self._total(),
        )
        unavailable = self._unavailable()
        yield _by_label(
            f"{PREFIX}_shared_limit_unavailable",
            "Limit decisions Redis could not make (unreachable, slow): made by this process alone instead, by"
            " limit: key_rate, capillary_budget.",
            "limit",
            SHARED_LIMITS,
            unavailable,
        )
