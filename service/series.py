"""Coupon-series data for discounts and local pre-checks, read through two caches (:mod:`service.cache`):

- ``code -> series id``: learnt from coupon details or a redeem answer; it never changes, so kept long (in memory,
  at most ``CODE_CACHE_MAX`` codes, the oldest forgotten first; on Redis, written behind the request).
- ``series id -> SeriesSummary``: kept ``SERIES_CACHE_TTL_SECONDS`` (in memory, at most ``SERIES_CACHE_MAX``).

Memory by default, Redis when ``CACHE_URL`` is set. A cache error counts as a miss and never fails the till.
Concurrent misses for the same series share one upstream call, and the misses of one request are fetched in one
``series?ids=..&ids=..`` call; Capillary's series are read into summaries by :mod:`service.capillary.series`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import math
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, Final

import redis.asyncio as redis
import structlog

from service.cache import Cache, open_cache
from service.capillary.client import CapillaryClient
from service.capillary.coupons import priority_of, upstream_failure
from service.capillary.errors import CapillaryError, CapillaryTimeoutError
from service.capillary.series import summarize
from service.deadline import time_left
from service.redemption.flow import AMBIENT, CallLimits
from service.redemption.models import SeriesSummary
from service.redis_pool import connect

__all__ = ["CODE_CACHE_MAX", "SERIES_CACHE_MAX", "CatalogStats", "SeriesCatalog", "open_catalog", "summarize"]

log = structlog.get_logger("service.series")

SERIES_CACHE_MAX: Final = 10_000  # series summaries kept in memory
CODE_CACHE_MAX: Final = 20_000  # code -> series id pairs kept in memory (a few MB)
#: Codes are kept this long: a code's series never changes.
CODE_TTL: Final = 30 * 24 * 3600


class CacheStats:
    """Plain counters, read by the metrics collector at scrape time (nothing on the hot path but ``+=``)."""

    def __init__(self) -> None:
        self.hits = self.misses = self.errors = 0


class CatalogStats:
    def __init__(self) -> None:
        self.series = CacheStats()
        self.code = CacheStats()
        self.fetch_sizes: collections.Counter[int] = collections.Counter()  # series per upstream fetch


class CountedCache:
    """A cache as the catalog reads it: a failure is a miss (never the till's problem), and every lookup is
    counted as a hit, a miss or an error."""

    def __init__(self, cache: Cache, stats: CacheStats, ttl: float) -> None:
        self.cache = cache
        self.stats = stats
        self.ttl = ttl

    async def get(self, keys: Sequence[str]) -> list[Any]:
        if not keys:
            return []
        stats = self.stats
        try:
            values: list[Any] = await self.cache.multi_get(list(keys))
        except Exception as exc:
            stats.errors += 1
            stats.misses += len(keys)
            log.warning("cache_read_failed", error=type(exc).__name__, detail=str(exc))
            return [None] * len(keys)
        found = sum(v is not None for v in values)
        stats.hits += found
        stats.misses += len(keys) - found
        return values

    async def set(self, pairs: list[tuple[str, Any]]) -> None:
        if not pairs:
            return
        try:
            await self.cache.multi_set(pairs, ttl=self.ttl)
        except Exception as exc:
            self.stats.errors += 1
            log.warning("cache_write_failed", error=type(exc).__name__, detail=str(exc))


def _left(limits: CallLimits) -> float | None:
    """Seconds the waiting work may still wait: before its own deadline, else its request's; ``None``: no end."""
    if limits.deadline is None:
        return time_left()
    return None if limits.deadline == math.inf else limits.deadline - time.monotonic()


async def _within_deadline(
    future: asyncio.Future[SeriesSummary | None], limits: CallLimits = AMBIENT
) -> SeriesSummary | None:
    """Wait for a shared fetch no longer than the waiting work's own deadline (the fetch goes on for others)."""
    left = _left(limits)
    if left is None:
        return await asyncio.shield(future)
    try:
        async with asyncio.timeout(max(left, 0.0)):
            return await asyncio.shield(future)
    except TimeoutError:
        raise CapillaryTimeoutError("series_get", "no time left before the deadline", maybe_applied=False) from None


class SeriesCatalog:
    """Series summaries by id and by coupon code, through the caches, fetched from Capillary on a miss."""

    def __init__(
        self,
        client: CapillaryClient,
        *,
        series_cache: Cache,
        code_cache: Cache,
        ttl: float,
        code_ttl: float,
        lookup_timeout: float,
    ) -> None:
        self.stats = CatalogStats()
        self._client = client
        self._series = CountedCache(series_cache, self.stats.series, ttl)
        self._codes = CountedCache(code_cache, self.stats.code, code_ttl)
        self._timeout = lookup_timeout
        self._inflight: dict[int, asyncio.Future[SeriesSummary | None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # --------------------------------------------------------------------------------------------- series

    async def get_many(self, ids: Iterable[int], *, limits: CallLimits = AMBIENT) -> dict[int, SeriesSummary]:
        """Summaries of the series that exist among ``ids``; upstream failures leave them out. ``limits``: how long
        this work waits for a fetch."""
        wanted = sorted(set(ids))
        cached = await self._series.get([str(i) for i in wanted])
        result = {i: v for i, v in zip(wanted, cached, strict=True) if v is not None}
        missing = [i for i in wanted if i not in result]
        waits = {i: self._inflight[i] for i in missing if i in self._inflight}
        to_fetch = [i for i in missing if i not in waits]
        if to_fetch:
            waits.update(self._start_fetch(to_fetch))
        for series_id, future in waits.items():
            with contextlib.suppress(CapillaryError):
                if (summary := await _within_deadline(future, limits)) is not None:
                    result[series_id] = summary
        return result

    def _start_fetch(self, ids: list[int]) -> dict[int, asyncio.Future[SeriesSummary | None]]:
        loop = asyncio.get_running_loop()
        futures = {i: loop.create_future() for i in ids}
        self._inflight.update(futures)

        async def fetch() -> None:
            try:
                self.stats.fetch_sizes[len(ids)] += 1
                reply = await self._client.series(ids, timeout=self._timeout)
                found = {s.id: summarize(s) for s in reply.entity}
                await self._series.set([(str(k), v) for k, v in found.items()])
                for series_id, future in futures.items():
                    future.set_result(found.get(series_id))
            except CapillaryError as exc:
                found_nothing = exc.code in (755, 707)
                for future in futures.values():
                    if found_nothing:
                        future.set_result(None)
                    else:
                        future.set_exception(exc)
            finally:
                for series_id, future in futures.items():
                    self._inflight.pop(series_id, None)
                    if not future.done():
                        future.cancel()
                    elif not future.cancelled():
                        future.exception()  # mark retrieved: a waiter may have given up

        # A context of its own: the fetch is shared by every request that waits on it, so it must not run under
        # the deadline (or the priority, or the log fields) of the one that happened to start it.
        task = loop.create_task(fetch(), context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return futures

    async def get(self, series_id: int) -> SeriesSummary | None:
        """One series: None when Capillary does not know it. Raises UpstreamFailure when it cannot say."""
        cached = await self._series.get([str(series_id)])
        if cached[0] is not None:
            return cached[0]  # type: ignore[no-any-return]
        future = self._inflight.get(series_id) or self._start_fetch([series_id])[series_id]
        try:
            return await _within_deadline(future)
        except CapillaryError as exc:
            raise upstream_failure(exc) from exc

    async def healthy(self) -> bool:
        """Whether the cache backend answers (always, in memory)."""
        try:
            await self._series.cache.exists("__health__")
        except Exception:
            return False
        return True

    # ---------------------------------------------------------------------------------------------- codes

    async def remember(self, code_series: dict[str, int]) -> None:
        """Record code -> series pairs learnt elsewhere (a redeem answer's ``seriesCode``)."""
        await self._codes.set(list(code_series.items()))

    async def _cached_ids(self, codes: Sequence[str]) -> dict[str, int]:
        cached = await self._codes.get(codes)
        return {c: v for c, v in zip(codes, cached, strict=True) if v is not None}

    async def series_ids(self, codes: Sequence[str], *, limits: CallLimits = AMBIENT) -> dict[str, int]:
        """Each code's series: from the cache, else one coupon-details call for all the others."""
        known = await self._cached_ids(codes)
        missing = [c for c in codes if c not in known]
        if missing:
            try:
                reply = await self._client.coupon_details(
                    codes=missing, timeout=self._timeout, deadline=limits.deadline, priority=priority_of(limits)
                )
            except CapillaryError as exc:
                log.warning("coupon_details_failed", detail=str(exc))
                return known
            learnt = {c.code: c.series_id for c in reply.data if c.code in missing and c.series_id is not None}
            known.update(learnt)
            await self.remember(learnt)
        return known

    async def for_codes(self, codes: Sequence[str], *, limits: CallLimits = AMBIENT) -> dict[str, SeriesSummary]:
        """The series of each code where it can be learnt; never raises for an upstream or cache failure."""
        ids = await self.series_ids(codes, limits=limits)
        summaries = await self.get_many(ids.values(), limits=limits)
        return {code: summaries[sid] for code, sid in ids.items() if sid in summaries}

    async def known(self, codes: Sequence[str], *, limits: CallLimits = AMBIENT) -> dict[str, SeriesSummary]:
        """The series of the codes whose series is already known (learnt from an earlier check, lookup or
        redeem answer): no upstream call to learn a code's series. Never raises for an upstream or cache
        failure."""
        ids = await self._cached_ids(codes)
        if not ids:
            return {}
        summaries = await self.get_many(ids.values(), limits=limits)
        return {code: summaries[sid] for code, sid in ids.items() if sid in summaries}

    async def by_ids(self, ids: Iterable[int], *, limits: CallLimits = AMBIENT) -> dict[int, SeriesSummary]:
        """Summaries of the series among ``ids`` that exist (one upstream call for all those not cached)."""
        return await self.get_many(ids, limits=limits)


@contextlib.asynccontextmanager
async def open_catalog(
    client: CapillaryClient,
    *,
    cache_url: str | None,
    ttl: float,
    timeout: float,
    lookup_timeout: float,
    redis_client: redis.Redis | None = None,
) -> AsyncIterator[SeriesCatalog]:
    """``redis_client``: the process's shared client for ``cache_url`` (else the caches open their own)."""
    if cache_url and redis_client is None:
        redis_client = connect(cache_url, timeout=timeout)
        owned: redis.Redis | None = redis_client
    else:
        owned = None
    series_cache: Cache = open_cache(
        cache_url, "pos_coupon:series:", SeriesSummary, timeout, SERIES_CACHE_MAX, client=redis_client
    )
    # A code's series never changes: its in-process copy is kept as long as the cache keeps it (bounded by
    # CODE_CACHE_MAX), and written to Redis behind the request.
    code_ttl = CODE_TTL
    code_cache: Cache = open_cache(
        cache_url,
        "pos_coupon:code:",
        int,
        timeout,
        CODE_CACHE_MAX,
        client=redis_client,
        near_ttl=code_ttl,
        write_behind=True,
    )
    try:
        yield SeriesCatalog(
            client,
            series_cache=series_cache,
            code_cache=code_cache,
            ttl=ttl,
            code_ttl=code_ttl,
            lookup_timeout=lookup_timeout,
        )
    finally:
        await asyncio.gather(series_cache.close(), code_cache.close(), return_exceptions=True)
        if owned is not None:
            await owned.aclose()
