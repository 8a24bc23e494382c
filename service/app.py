"""The composition root: the only module that knows every layer.

``create_app`` reads top to bottom: shared state under typed ``AppKey``s, each resource as one
``cleanup_ctx`` generator that fails fast before ``yield`` and always closes after, then the routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any, Final

from aiohttp import web
from yarl import URL

from service import __version__
from service.access.keys import KeyRing
from service.access.limits import SharedBuckets
from service.backoffice.jobs import JobStore, MemoryJobStore, RedisJobStore
from service.backoffice.preflight import Limits
from service.capillary.client import CapillaryClient
from service.capillary.coupons import CapillaryCoupons
from service.config import Settings
from service.idempotency.models import StoredResponse
from service.idempotency.redis_store import RedisStore
from service.idempotency.service import ExactlyOnce, Timing
from service.idempotency.store import LedgerStore, MemoryStore, StoreUnavailable
from service.observability.metrics import (
    CacheView,
    Metrics,
    RedisCollector,
    ResilienceCollector,
    StateCollector,
    UpstreamAuthCollector,
)
from service.observability.requests import UpstreamObserver, observe_middleware
from service.observability.tracing import server_middlewares
from service.offline.journal import Journal, RedisJournal, SqliteJournal
from service.offline.metrics import OfflineCollector
from service.offline.policy import load_policy
from service.offline.service import Offline, provisional_body
from service.offline.settler import Settler
from service.redemption.flow import RedemptionFlow
from service.redis_pool import RedisPools, RoundTrips
from service.series import SeriesCatalog, open_catalog
from service.upstream_auth import UpstreamAuth
from service.web import backoffice
from service.web import offline as web_offline
from service.web.access import Gate, security_headers
from service.web.deadline import deadline_middleware
from service.web.errors import error_middleware
from service.web.redemptions import JsonRenderer, RedemptionHandlers

log = logging.getLogger("service.app")
OFFLINE_TASK: Final = web.AppKey("offline_task", asyncio.Task[None])

SETTINGS: Final = web.AppKey("settings", Settings)
CAPILLARY: Final = web.AppKey("capillary", CapillaryClient)
SERIES: Final = web.AppKey("series", SeriesCatalog)
LEDGER_STORE: Final = web.AppKey("ledger_store", LedgerStore)
LEDGER: Final = web.AppKey("ledger", ExactlyOnce)
HANDLERS: Final = web.AppKey("handlers", RedemptionHandlers)
OPENAPI: Final = web.AppKey("openapi", bytes)
METRICS: Final = web.AppKey("metrics", Metrics)
KEYS: Final = web.AppKey("keys", KeyRing)
UPSTREAM_AUTH: Final = web.AppKey("upstream_auth", UpstreamAuth)
#: A path segment that is a redemption's ref: anything but ``validate``, whose route answers 405 to a GET.
REF_SEGMENT: Final = r"(?!validate$)[^{}/]+"
#: How long ``/readyz`` waits for a proof of the Capillary credentials before answering with the last verdict.
AUTH_CHECK_WAIT: Final = 2.0


class Lifecycle:
    """Whether the process is draining: set on SIGTERM, read by ``/readyz`` and every response."""

    def __init__(self) -> None:
        self.draining = False


LIFECYCLE: Final = web.AppKey("lifecycle", Lifecycle)
#: The ops app (``/metrics``, ``/openapi.yaml``) when they are served on their own port.
OPS_APP: Final = web.AppKey("ops_app", web.Application)
# The classic text format, which every Prometheus 2.x reads (prometheus-client's default now says 1.0.0).
METRICS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE: Final = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def openapi_document() -> bytes:
    return resources.files("service").joinpath("openapi.yaml").read_bytes()


async def healthz(request: web.Request) -> web.Response:
    """Process liveness: answers without touching any dependency."""
    return web.json_response({"status": "ok", "version": __version__})


async def _reachable(url: str, timeout: float = 1.0) -> bool:
    target = URL(url)
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(target.host, target.port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def readyz(request: web.Request) -> web.Response:
    """Dependencies, one by one. A shared dependency down makes the gateway ``degraded``, not unready: every
    replica would be alike, and validation still works without the ledger. Draining (after SIGTERM): 503."""
    app = request.app
    if app[LIFECYCLE].draining:
        draining = {"status": "draining", "checks": {}, "ledger": app[LEDGER_STORE].backend}
        return web.json_response(draining, status=503)
    checks = {"upstream": "up" if await _reachable(app[SETTINGS].capillary.api_url) else "down"}
    reasons = []
    try:
        await app[LEDGER_STORE].ping()
        checks["ledger"] = "up"
    except StoreUnavailable:
        checks["ledger"] = "down"
    if checks["ledger"] == "up" and (refusing := app[LEDGER_STORE].refusing()) is not None:
        checks["ledger"] = "refusing"  # up, but at its bounds: some or all new redemptions are refused
        reasons.append(refusing)
    if unwritten := app[LEDGER].unwritten_count:
        reasons.append(f"{unwritten} redemption answers not yet recorded in the ledger")
    checks["cache"] = "up" if await app[SERIES].healthy() else "down"
    # Each Capillary host's circuit breaker: one not closed means calls to it are being refused.
    breakers = {b.host: b.state.value for b in app[CAPILLARY].breakers}
    healthy = all(v == "up" for v in checks.values()) and all(v == "closed" for v in breakers.values())
    status = "ready" if healthy and not reasons else "degraded"
    body: dict[str, Any] = {"status": status, "checks": checks, "breakers": breakers}
    body["ledger"] = app[LEDGER_STORE].backend
    if reasons:
        body["reasons"] = reasons
    return await _upstream_auth_check(app, body)


async def _upstream_auth_check(app: web.Application, body: dict[str, Any]) -> web.Response:
    """Capillary refusing the credentials makes the pod unready (503): unlike an outage, a bad secret is this
    deployment's own fault, and a rollout carrying one must stop. Not proven either way: ``degraded``."""
    verdict = await app[UPSTREAM_AUTH].verdict(wait=AUTH_CHECK_WAIT)
    body["checks"]["upstream_auth"] = verdict.state
    if verdict.state == "refused":
        return web.json_response({**body, "status": "unready", "reason": verdict.reason}, status=503)
    if verdict.state == "unknown":
        body["status"] = "degraded"
    return web.json_response(body)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus' text format; OpenMetrics (with the trace ids of the latency exemplars) when the scraper asks."""
    openmetrics = "application/openmetrics-text" in request.headers.get("Accept", "")
    response = web.Response(body=request.app[METRICS].render(openmetrics=openmetrics))
    response.headers["Content-Type"] = OPENMETRICS_CONTENT_TYPE if openmetrics else METRICS_CONTENT_TYPE
    return response


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/yaml")


# The POS routes delegate to the handlers built at startup, with their collaborators injected.
async def validate(request: web.Request) -> web.Response:
    return await request.app[HANDLERS].validate(request)


async def redeem(request: web.Request) -> web.Response:
    return await request.app[HANDLERS].redeem(request)


async def redemption(request: web.Request) -> web.Response:
    return await request.app[HANDLERS].status(request)


async def reversal(request: web.Request) -> web.Response:
    return await request.app[HANDLERS].reverse(request)


async def series(request: web.Request) -> web.Response:
    return await request.app[HANDLERS].series(request)


def create_app(
    settings: Settings,
    *,
    capillary: CapillaryClient | None = None,
    keys: KeyRing | None = None,
) -> web.Application:
    """Build the gateway. ``capillary`` may be given (tests); otherwise one is opened from ``settings``.
    ``keys``: the API keys, else read from ``settings.access.keys_file`` (none: every ``/v1/`` call is refused)."""
    instruments = Metrics()
    access = settings.access
    if keys is None:
        keys = KeyRing.load(access.keys_file) if access.keys_file else KeyRing({})
    gate = Gate.build(keys, access, instruments)
    pools = RedisPools(settings.state.timeout)  # one pool per Redis URL: ledger, cache, jobs and limits share it
    # With Redis, each key's rate and the Capillary budget hold for all the replicas together.
    shared = SharedBuckets(pools.client(settings.state.redis_url)) if settings.state.redis_url else None
    gate.shared = shared
    redis_metrics = (
        RedisCollector(
            instruments.registry,
            lambda: RoundTrips.total,
            lambda: dict(shared.unavailable) if shared else {},
            lambda: RedisStore.unreplicated,
        )
        if settings.state.redis_url or settings.cache.url
        else None
    )
    app = web.Application(
        middlewares=[
            *server_middlewares(),  # traces (OTEL_EXPORTER_OTLP_ENDPOINT): outermost, around everything
            observe_middleware(instruments, redis_metrics),
            error_middleware,
            gate.middleware(),
            deadline_middleware(settings.request_deadline),
            gate.admission(),  # the body read within the deadline, then a bulkhead slot
        ],
        client_max_size=access.max_body_bytes,  # JSON bodies; uploads are streamed under their own limit
    )
    app[SETTINGS] = settings
    app[OPENAPI] = openapi_document()
    app[METRICS] = instruments
    app[KEYS] = keys
    lifecycle = app[LIFECYCLE] = Lifecycle()

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        await security_headers(request, response)
        if lifecycle.draining:
            response.force_close()  # send tills to another replica for their next request

    app.on_response_prepare.append(on_prepare)

    async def keys_ctx(app: web.Application) -> AsyncIterator[None]:
        if not len(keys):
            log.warning("no API keys configured: every /v1/ request will be refused (set GATEWAY_API_KEYS_FILE)")
        watcher = asyncio.create_task(keys.watch(access.keys_reload_interval)) if access.keys_file else None
        yield
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def capillary_ctx(app: web.Application) -> AsyncIterator[None]:
        if capillary is not None:
            app[CAPILLARY] = capillary
            _watch_credentials(app, capillary)
            yield
            await app[UPSTREAM_AUTH].close()
            return
        observer = UpstreamObserver(instruments)
        client = CapillaryClient(settings.capillary, observer=observer)
        app[CAPILLARY] = client
        if not client.uploads_configured:
            log.warning(
                "uploads disabled: the upload host takes OAuth only; set CAPILLARY_CLIENT_KEY and "
                "CAPILLARY_CLIENT_SECRET to use them (POS routes are unaffected)"
            )
        observer.on_status = _watch_credentials(app, client)
        if shared is not None:
            client.limiter.share(shared)
        try:
            yield
        finally:
            await app[UPSTREAM_AUTH].close()
            await client.close()

    async def series_ctx(app: web.Application) -> AsyncIterator[None]:
        cache = settings.cache
        async with open_catalog(
            app[CAPILLARY],
            cache_url=cache.url,
            ttl=cache.series_ttl,
            timeout=cache.timeout,
            lookup_timeout=cache.lookup_timeout,
            redis_client=pools.client(cache.url) if cache.url else None,
        ) as catalog:
            app[SERIES] = catalog
            yield

    async def ledger_ctx(app: web.Application) -> AsyncIterator[None]:
        state = settings.state
        store: LedgerStore
        if state.redis_url:
            store = RedisStore(client=pools.client(state.redis_url), wait_replicas=state.wait_replicas)
            log.info("redemption ledger: redis (shared by every replica, kept across restarts)")
        else:
            store = MemoryStore(max_entries=state.memory_max_entries, max_per_store=state.memory_max_per_store)
            log.warning("redemption ledger: in memory (one process only; lost on restart). Set REDIS_URL for more")
        app[LEDGER_STORE] = store
        coupons = CapillaryCoupons(app[CAPILLARY])
        flow = RedemptionFlow(coupons, app[SERIES])
        timing = Timing(
            deadline=state.redeem_deadline,
            upstream_timeout=settings.capillary.timeout,
            ttl=state.ttl,
            lease_margin=state.lease_margin,
            reconcile_gap=state.reconcile_interval,
            refused_ttl=state.refused_ttl,
            clock_skew=state.clock_skew,
            write_retry=state.write_retry,
        )
        ledger = ExactlyOnce(flow, store, coupons, app[SERIES], JsonRenderer(), timing)
        app[LEDGER] = ledger
        offline = await _setup_offline(app, ledger, store, coupons, pools) if settings.offline.enabled else None
        offline_metrics = OfflineCollector(offline, app.get(web_offline.SETTLER))
        instruments.registry.register(offline_metrics)
        app[HANDLERS] = RedemptionHandlers(flow, app[SERIES], ledger, instruments, offline)
        collector = _state_collector(app, ledger, store, coupons)
        instruments.registry.register(collector)
        resilience = ResilienceCollector(app[CAPILLARY])
        instruments.registry.register(resilience)
        ledger.start_sweeper(state.reconcile_interval)
        try:
            yield
        finally:
            if offline is not None:
                await _stop_offline(app)
            await ledger.close()  # the sweeper and the background writes too
            await store.close()
            instruments.registry.unregister(collector)
            instruments.registry.unregister(resilience)
            instruments.registry.unregister(offline_metrics)

    async def backoffice_ctx(app: web.Application) -> AsyncIterator[None]:
        # Upload jobs live beside the ledger: in memory, or in Redis when the ledger is there.
        jobs: JobStore = (
            RedisJobStore(client=pools.client(settings.state.redis_url))
            if settings.state.redis_url
            else MemoryJobStore()
        )
        limits = Limits(max_bytes=settings.access.max_upload_bytes)  # one knob: GATEWAY_MAX_UPLOAD_BYTES
        app[backoffice.BACKOFFICE] = backoffice.BackOfficeHandlers(
            app[CAPILLARY], app[SERIES], jobs, limits=limits, body_timeout=settings.access.body_timeout
        )
        try:
            yield
        finally:
            await jobs.close()

    async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        await pools.close()  # last: after everything that used them

    app.cleanup_ctx.extend([redis_ctx, keys_ctx, capillary_ctx, series_ctx, ledger_ctx, backoffice_ctx])
    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/readyz", readyz, allow_head=False)
    if settings.metrics_port is None:
        _ops_routes(app)
    else:  # on their own port: the runner in ``__main__`` serves this app there
        ops = web.Application()
        ops[OPENAPI], ops[METRICS] = app[OPENAPI], instruments
        ops.on_response_prepare.append(security_headers)
        _ops_routes(ops)
        app[OPS_APP] = ops
    app.router.add_post("/v1/redemptions/validate", validate)
    app.router.add_post("/v1/redemptions", redeem)
    # A ref is never the literal segment of a sibling route: GET /v1/redemptions/validate is 405, not a lookup.
    app.router.add_get(f"/v1/redemptions/{{ref:{REF_SEGMENT}}}", redemption, allow_head=False)
    app.router.add_post(f"/v1/redemptions/{{ref:{REF_SEGMENT}}}/reversal", reversal)
    app.router.add_get("/v1/series/{seriesId}", series, allow_head=False)
    backoffice.add_routes(app.router)
    web_offline.add_routes(app.router)  # 404 unless OFFLINE_MODE=on
    instruments.initialise_routes(
        [(r.resource.canonical, r.method) for r in app.router.routes() if r.resource is not None]
    )
    return app


async def _setup_offline(
    app: web.Application, ledger: ExactlyOnce, store: LedgerStore, coupons: CapillaryCoupons, pools: RedisPools
) -> Offline:
    """OFFLINE_MODE=on: the policy, the journal (Redis when REDIS_URL is set, else the SQLite file), the hook in
    the ledger, the settler in the background, and its metrics."""
    settings = app[SETTINGS]
    policy = load_policy(settings.offline.policy_file)
    journal: Journal
    if settings.state.redis_url:
        journal = RedisJournal(client=pools.client(settings.state.redis_url))  # the shared pool
    elif settings.offline.journal_path:
        journal = SqliteJournal(settings.offline.journal_path)
    else:
        raise RuntimeError("OFFLINE_MODE=on needs REDIS_URL or OFFLINE_JOURNAL_PATH for its journal")
    ttl = max(settings.state.ttl, policy.expire_after_seconds * 2)
    offline = Offline(journal, policy, app[SERIES], store, ttl)
    ledger.offline = offline
    settler = Settler(
        offline,
        app[CAPILLARY],
        coupons,
        lambda item, ids: StoredResponse(200, provisional_body(item, "redeemed", ids)),
        poll_interval=settings.offline.job_poll_interval,
    )
    app[web_offline.OFFLINE] = offline
    app[web_offline.SETTLER] = settler
    app[OFFLINE_TASK] = asyncio.create_task(settler.run(settings.offline.settle_interval))
    log.info("offline acceptance on: journal %s", journal.backend)
    return offline


async def _stop_offline(app: web.Application) -> None:
    task = app[OFFLINE_TASK]
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await app[web_offline.OFFLINE].journal.close()


def _watch_credentials(app: web.Application, client: CapillaryClient) -> Callable[[str, int | None, str | None], None]:
    """The proof of the Capillary credentials (``/readyz``), its metrics, and the hook that reports refused calls."""
    capillary = app[SETTINGS].capillary
    auth = app[UPSTREAM_AUTH] = UpstreamAuth(
        client, ttl=capillary.auth_check_seconds, timeout=min(capillary.timeout, 5.0)
    )
    app[METRICS].registry.register(UpstreamAuthCollector(lambda: auth.failing, lambda: dict(auth.checks)))
    return auth.observe


def _ops_routes(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics, allow_head=False)
    app.router.add_get("/openapi.yaml", openapi, allow_head=False)


def _state_collector(
    app: web.Application, ledger: ExactlyOnce, store: LedgerStore, coupons: CapillaryCoupons
) -> StateCollector:
    catalog, client = app[SERIES], app[CAPILLARY]
    backend = "redis" if app[SETTINGS].cache.url else "memory"
    caches = [CacheView("series", backend, catalog.stats.series), CacheView("code", backend, catalog.stats.code)]
    return StateCollector(
        caches=caches,
        fetch_sizes=lambda: dict(catalog.stats.fetch_sizes),
        token_refreshes=lambda: client.tokens.refreshes if client.tokens else 0,
        pending=lambda: ledger.pending_count,
        reconciliations=lambda: dict(ledger.reconciliations),
        deferred_writes=lambda: dict(ledger.deferred_writes),
        unwritten=lambda: ledger.unwritten_count,
        ledger_refusals=lambda: dict(store.refusals),
        upstream_warnings=lambda: dict(coupons.warnings),
    )
