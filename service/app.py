"""The composition root: the only module that knows every layer.

``create_app`` reads top to bottom as the list of what the gateway is made of: the middlewares, then one
``setup_*`` per concern, then the routes. Each resource is one ``cleanup_ctx`` generator that opens it (failing
fast) before ``yield``, keeps it under a typed ``AppKey``, and always closes it after. Handlers are objects
registered on the router as the app is built (aiohttp freezes its routes at startup); what they call stands on
those resources, so an async factory hands it to them at startup, after every cleanup context has opened.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any, Final

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware
from yarl import URL

from service import __version__
from service.access.keys import KeyRing
from service.access.limits import SharedBuckets
from service.backoffice.jobs import JobStore, MemoryJobStore, RedisJobStore
from service.backoffice.preflight import Limits
from service.capillary.admin import CapillaryAdmin
from service.capillary.client import CapillaryClient
from service.capillary.coupons import CapillaryCoupons
from service.config import AccessSettings, Settings, StateSettings
from service.deadline import current as current_deadline
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
from service.observability.tracing import client_middlewares, server_middlewares
from service.offline.journal import Journal, RedisJournal, SqliteJournal
from service.offline.metrics import OfflineCollector
from service.offline.service import Offline, provisional_body
from service.offline.settler import Settler
from service.offline_policy import load_policy
from service.redemption.flow import RedemptionFlow
from service.redis_pool import RedisPools, RoundTrips
from service.series import SeriesCatalog, open_catalog
from service.upstream_auth import UpstreamAuth
from service.web import backoffice
from service.web import offline as web_offline
from service.web.access import Gate, security_headers
from service.web.deadline import deadline_middleware
from service.web.errors import error_middleware
from service.web.redemptions import JsonRenderer, RedemptionHandlers, RedemptionParts

log = structlog.get_logger("service.app")
OFFLINE_TASK: Final = web.AppKey("offline_task", asyncio.Task[None])

SETTINGS: Final = web.AppKey("settings", Settings)
CAPILLARY: Final = web.AppKey("capillary", CapillaryClient)
SERIES: Final = web.AppKey("series", SeriesCatalog)
LEDGER_STORE: Final = web.AppKey("ledger_store", LedgerStore)
LEDGER: Final = web.AppKey("ledger", ExactlyOnce)
COUPONS: Final = web.AppKey("coupons", CapillaryCoupons)
FLOW: Final = web.AppKey("flow", RedemptionFlow)
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


def create_app(
    settings: Settings,
    *,
    capillary: CapillaryClient | None = None,
    keys: KeyRing | None = None,
) -> web.Application:
    """Build the gateway: what it is made of, in the order it opens (and, reversed, closes).

    ``capillary`` may be given (tests); otherwise one is opened from ``settings``. ``keys``: the API keys, else read
    from ``settings.access.keys_file`` (none: every ``/v1/`` call is refused)."""
    metrics = Metrics()
    keys = keys if keys is not None else _load_keys(settings.access)
    pools = RedisPools(settings.state.timeout)  # one pool per Redis URL: ledger, cache, jobs and limits share it
    shared = _shared_buckets(settings, pools)
    app = web.Application(
        middlewares=_middlewares(settings, metrics, keys, shared),
        client_max_size=settings.access.max_body_bytes,  # JSON bodies; uploads are streamed under their own limit
    )
    setup_state(app, settings, metrics, keys)
    setup_redis(app, pools)
    setup_keys(app, keys, settings.access)
    setup_capillary(app, settings, capillary, shared)
    setup_series(app, settings, pools)
    setup_ledger(app, settings, pools)
    offline_handlers = setup_offline(app, settings, pools)
    handlers = setup_redemptions(app)
    setup_collectors(app)

    backoffice_handlers = setup_backoffice(app, settings, pools)
    setup_health_routes(app)
    setup_ops_routes(app, settings, metrics)
    setup_pos_routes(app.router, handlers)
    backoffice.add_routes(app.router, backoffice_handlers)
    web_offline.add_routes(app.router, offline_handlers)  # 404 unless OFFLINE_MODE=on
    metrics.initialise_routes([(r.resource.canonical, r.method) for r in app.router.routes() if r.resource is not None])
    return app


# ------------------------------------------------------------------------------------------------ the door


def _load_keys(access: AccessSettings) -> KeyRing:
    return KeyRing.load(access.keys_file) if access.keys_file else KeyRing({})


def _shared_buckets(settings: Settings, pools: RedisPools) -> SharedBuckets | None:
    """With Redis, each key's rate and the Capillary budget hold for all the replicas together."""
    return SharedBuckets(pools.client(settings.state.redis_url)) if settings.state.redis_url else None


def _middlewares(settings: Settings, metrics: Metrics, keys: KeyRing, shared: SharedBuckets | None) -> list[Middleware]:
    """Traces, then the request's log line and metrics, then errors, then the gate, deadline and admission: logs
    and metrics see the status the error middleware mapped."""
    gate = Gate.build(keys, settings.access, metrics)
    gate.shared = shared
    redis_metrics = (
        RedisCollector(
            metrics.registry,
            lambda: RoundTrips.total,
            lambda: dict(shared.unavailable) if shared else {},
        )
        if settings.state.redis_url or settings.cache.url
        else None
    )
    return [
        *server_middlewares(),  # traces (OTEL_EXPORTER_OTLP_ENDPOINT): outermost, around everything
        observe_middleware(metrics, redis_metrics),
        error_middleware,
        gate.middleware(),
        deadline_middleware(settings.request_deadline),
        gate.admission(),  # the body read within the deadline, then a bulkhead slot
    ]


def setup_state(app: web.Application, settings: Settings, metrics: Metrics, keys: KeyRing) -> None:
    """What every part reads: the settings, the API description, the metrics, the keys, and whether draining."""
    app[SETTINGS] = settings
    app[OPENAPI] = openapi_document()
    app[METRICS] = metrics
    app[KEYS] = keys
    lifecycle = app[LIFECYCLE] = Lifecycle()

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        await security_headers(request, response)
        if lifecycle.draining:
            response.force_close()  # send tills to another replica for their next request

    app.on_response_prepare.append(on_prepare)


# ------------------------------------------------------------------------------------------- the resources


def setup_redis(app: web.Application, pools: RedisPools) -> None:
    """The process's Redis clients: opened on first use, closed last (after everything that used them)."""

    async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        await pools.close()

    app.cleanup_ctx.append(redis_ctx)


def setup_keys(app: web.Application, keys: KeyRing, access: AccessSettings) -> None:
    """The API keys' file, watched for changes while the app runs."""

    async def keys_ctx(app: web.Application) -> AsyncIterator[None]:
        if not len(keys):
            log.warning("no_api_keys", detail="every /v1/ request will be refused (set GATEWAY_API_KEYS_FILE)")
        watcher = asyncio.create_task(keys.watch(access.keys_reload_interval)) if access.keys_file else None
        yield
        await _cancel(watcher)

    app.cleanup_ctx.append(keys_ctx)


def setup_capillary(
    app: web.Application, settings: Settings, given: CapillaryClient | None, shared: SharedBuckets | None
) -> None:
    """The Capillary client (``given``, or one opened here), the proof of its credentials, and the coupons port
    over it."""

    async def capillary_ctx(app: web.Application) -> AsyncIterator[None]:
        observer = UpstreamObserver(app[METRICS]) if given is None else None
        client = given or _capillary_client(settings, observer, shared)
        app[CAPILLARY] = client
        app[COUPONS] = CapillaryCoupons(client)
        auth = app[UPSTREAM_AUTH] = _upstream_auth(app, client)
        if observer is not None:
            observer.on_status = auth.observe  # a call refused for its credentials is heard at once
        try:
            yield
        finally:
            await auth.close()
            if given is None:
                await client.close()

    app.cleanup_ctx.append(capillary_ctx)


def _capillary_client(
    settings: Settings, observer: UpstreamObserver | None, shared: SharedBuckets | None
) -> CapillaryClient:
    # Traces as the client's last middlewares; the request's deadline from its one reader, service.deadline.current.
    client = CapillaryClient(
        settings.capillary, observer=observer, middlewares=client_middlewares(), ambient=current_deadline
    )
    if not client.uploads_configured:
        log.warning(
            "uploads_disabled",
            detail="the upload host takes OAuth only; set CAPILLARY_CLIENT_KEY and CAPILLARY_CLIENT_SECRET "
            "to use them (POS routes are unaffected)",
        )
    if shared is not None:
        client.limiter.share(shared)
    return client


def setup_series(app: web.Application, settings: Settings, pools: RedisPools) -> None:
    """The series catalog and its caches (memory, or Redis behind a near copy)."""
    cache = settings.cache

    async def series_ctx(app: web.Application) -> AsyncIterator[None]:
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

    app.cleanup_ctx.append(series_ctx)


def setup_ledger(app: web.Application, settings: Settings, pools: RedisPools) -> None:
    """The exactly-once ledger: its store (Redis when ``REDIS_URL`` is set, else memory), the redemption flow it
    runs, and its sweeper of pending redemptions."""
    state = settings.state

    async def ledger_ctx(app: web.Application) -> AsyncIterator[None]:
        store = _ledger_store(state, pools)
        app[LEDGER_STORE] = store
        flow = app[FLOW] = RedemptionFlow(app[COUPONS], app[SERIES])
        ledger = ExactlyOnce(flow, store, app[COUPONS], app[SERIES], JsonRenderer(), _timing(settings))
        app[LEDGER] = ledger
        ledger.start_sweeper(state.reconcile_interval)
        try:
            yield
        finally:
            await ledger.close()  # the sweeper and the background writes too
            await store.close()

    app.cleanup_ctx.append(ledger_ctx)


def _ledger_store(state: StateSettings, pools: RedisPools) -> LedgerStore:
    if state.redis_url:
        log.info("redemption_ledger", backend="redis", detail="shared by every replica, kept across restarts")
        return RedisStore(client=pools.client(state.redis_url), wait_replicas=state.wait_replicas)
    log.warning("redemption_ledger", backend="memory", detail="one process only; lost on restart. Set REDIS_URL")
    return MemoryStore(max_entries=state.memory_max_entries, max_per_store=state.memory_max_per_store)


def _timing(settings: Settings) -> Timing:
    """The ledger's clocks: the till's deadline, one upstream call, and the state settings of the same name."""
    state = settings.state
    same = {name: getattr(state, name) for name in ("ttl", "lease_margin", "refused_ttl", "clock_skew", "write_retry")}
    return Timing(
        deadline=state.redeem_deadline,
        upstream_timeout=settings.capillary.timeout,
        reconcile_gap=state.reconcile_interval,
        **same,
    )


def setup_offline(app: web.Application, settings: Settings, pools: RedisPools) -> web_offline.OfflineHandlers:
    """OFFLINE_MODE=on: the policy, the journal (Redis when REDIS_URL is set, else the SQLite file), the hook in
    the ledger, and the settler in the background; its handlers are given them at startup. Off: handlers that
    answer 404."""
    handlers = web_offline.OfflineHandlers()
    if not settings.offline.enabled:
        return handlers

    async def offline_ctx(app: web.Application) -> AsyncIterator[None]:
        policy = load_policy(settings.offline.policy_file)
        journal = _journal(settings, pools)
        ttl = max(settings.state.ttl, policy.expire_after_seconds * 2)
        offline = app[web_offline.OFFLINE] = Offline(journal, policy, app[SERIES], app[LEDGER_STORE], ttl)
        app[LEDGER].offline = offline
        settler = app[web_offline.SETTLER] = Settler(
            offline,
            app[CAPILLARY],
            app[COUPONS],
            lambda item, ids: StoredResponse("redeemed", provisional_body(item, "redeemed", ids), status=200),
            poll_interval=settings.offline.job_poll_interval,
        )
        task = app[OFFLINE_TASK] = asyncio.create_task(settler.run(settings.offline.settle_interval))
        log.info("offline_acceptance_on", journal=journal.backend)
        try:
            yield
        finally:
            await _cancel(task)
            await journal.close()

    async def build(app: web.Application) -> None:
        handlers.bind(app[web_offline.OFFLINE], app[web_offline.SETTLER])

    app.cleanup_ctx.append(offline_ctx)
    app.on_startup.append(build)  # after every cleanup context has opened
    return handlers


def _journal(settings: Settings, pools: RedisPools) -> Journal:
    if settings.state.redis_url:
        return RedisJournal(client=pools.client(settings.state.redis_url))  # the shared pool
    if settings.offline.journal_path:
        return SqliteJournal(settings.offline.journal_path)
    raise RuntimeError("OFFLINE_MODE=on needs REDIS_URL or OFFLINE_JOURNAL_PATH for its journal")


def setup_redemptions(app: web.Application) -> RedemptionHandlers:
    """The POS handlers, registered before the app starts (aiohttp freezes its routes then); what they call is
    built at startup, once the resources it stands on are open, by this async factory."""
    handlers = RedemptionHandlers(app[METRICS])

    async def build(app: web.Application) -> None:
        offline = app.get(web_offline.OFFLINE)
        handlers.bind(RedemptionParts(app[FLOW], app[SERIES], app[LEDGER], offline))

    app.on_startup.append(build)  # after every cleanup context has opened
    return handlers


def setup_backoffice(app: web.Application, settings: Settings, pools: RedisPools) -> backoffice.BackOfficeHandlers:
    """The back-office handlers, registered before the app starts; their use cases are built once the upstream
    client and the series catalog have opened, over the upload jobs' store: in memory, or in Redis when the ledger
    is there."""
    handlers = backoffice.BackOfficeHandlers(body_timeout=settings.access.body_timeout)

    async def backoffice_ctx(app: web.Application) -> AsyncIterator[None]:
        redis_url = settings.state.redis_url
        jobs: JobStore = RedisJobStore(client=pools.client(redis_url)) if redis_url else MemoryJobStore()
        limits = Limits(max_bytes=settings.access.max_upload_bytes)  # one knob: GATEWAY_MAX_UPLOAD_BYTES
        app[backoffice.BACKOFFICE] = await backoffice.backoffice_handlers(
            CapillaryAdmin(app[CAPILLARY]), app[SERIES], jobs, limits=limits, handlers=handlers
        )
        try:
            yield
        finally:
            await jobs.close()

    app.cleanup_ctx.append(backoffice_ctx)
    return handlers


def setup_collectors(app: web.Application) -> None:
    """The metrics read at scrape time from the parts built above: caches, ledger, upstream, offline."""

    async def collectors_ctx(app: web.Application) -> AsyncIterator[None]:
        registry = app[METRICS].registry
        collectors = [
            _state_collector(app),
            ResilienceCollector(app[CAPILLARY]),
            OfflineCollector(app.get(web_offline.OFFLINE), app.get(web_offline.SETTLER)),
        ]
        for collector in collectors:
            registry.register(collector)
        yield
        for collector in collectors:
            registry.unregister(collector)

    app.cleanup_ctx.append(collectors_ctx)


# ----------------------------------------------------------------------------------------------- the routes


def setup_health_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/readyz", readyz, allow_head=False)


def setup_ops_routes(app: web.Application, settings: Settings, metrics: Metrics) -> None:
    """``/metrics`` and ``/openapi.yaml``: on the app, or on an app of their own when ``metrics_port`` is set (the
    runner in ``__main__`` serves it there)."""
    if settings.metrics_port is None:
        _ops_routes(app)
        return
    ops = web.Application()
    ops[OPENAPI], ops[METRICS] = app[OPENAPI], metrics
    ops.on_response_prepare.append(security_headers)
    _ops_routes(ops)
    app[OPS_APP] = ops


def setup_pos_routes(router: web.UrlDispatcher, handlers: RedemptionHandlers) -> None:
    router.add_post("/v1/redemptions/validate", handlers.validate)
    router.add_post("/v1/redemptions", handlers.redeem)
    # A ref is never the literal segment of a sibling route: GET /v1/redemptions/validate is 405, not a lookup.
    router.add_get(f"/v1/redemptions/{{ref:{REF_SEGMENT}}}", handlers.status, allow_head=False)
    router.add_post(f"/v1/redemptions/{{ref:{REF_SEGMENT}}}/reversal", handlers.reverse)
    router.add_get("/v1/series/{seriesId}", handlers.series, allow_head=False)


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _upstream_auth(app: web.Application, client: CapillaryClient) -> UpstreamAuth:
    """The proof of the Capillary credentials (``/readyz``) and its metrics; its ``observe`` hears refused calls."""
    capillary = app[SETTINGS].capillary
    auth = UpstreamAuth(client, ttl=capillary.auth_check_seconds, timeout=min(capillary.timeout, 5.0))
    app[METRICS].registry.register(UpstreamAuthCollector(lambda: auth.failing, lambda: dict(auth.checks)))
    return auth


def _ops_routes(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics, allow_head=False)
    app.router.add_get("/openapi.yaml", openapi, allow_head=False)


def _state_collector(app: web.Application) -> StateCollector:
    catalog, client, ledger, store, coupons = app[SERIES], app[CAPILLARY], app[LEDGER], app[LEDGER_STORE], app[COUPONS]
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
        unreplicated=lambda: ledger.unreplicated_count,
        unreplicated_total=lambda: RedisStore.unreplicated,
        ledger_refusals=lambda: dict(store.refusals),
        upstream_warnings=lambda: dict(coupons.warnings),
    )
