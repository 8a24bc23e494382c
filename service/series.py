"""Coupon-series data for discounts and local pre-checks, read through a cache.

Two caches (in-process memory by default, Redis when ``CACHE_URL`` is set), one explicit msgspec serializer for
both backends so each behaves alike (both hand out a fresh copy of what was stored):

- ``code -> series id``: learnt from coupon details or a redeem answer; it never changes, so kept long (in memory,
  at most ``CODE_CACHE_MAX`` codes, the oldest forgotten first).
- ``series id -> SeriesSummary``: kept ``SERIES_CACHE_TTL_SECONDS`` (in memory, at most ``SERIES_CACHE_MAX``).

The memory backend is a plain bounded dict of encoded values with their expiry time: no timer per key, no timeout
around each call (aiocache's memory backend has both, and its keys live until their timers fire).

On Redis, a small in-process copy (``NEAR_TTL`` seconds) stands in front of it: a busy gateway reads each series
and code from Redis once every few seconds, not once per request, and a value it already holds is not written
again. Reads of several keys are one ``MGET``, on the process's shared pool (:mod:`service.redis_pool`).

A cache error counts as a miss and never fails the till. Concurrent misses for the same series share one upstream
call, and the misses of one request are fetched in one ``series?ids=..&ids=..`` call.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Generic, Protocol, TypeVar

import msgspec
import redis.asyncio as redis
import structlog
from aiocache.serializers import BaseSerializer

from service.capillary.client import CapillaryClient
from service.capillary.coupons import upstream_failure
from service.capillary.errors import CapillaryError, CapillaryTimeoutError
from service.capillary.models import Series
from service.deadline import time_left
from service.redemption.models import RedemptionRange, SeriesSummary
from service.redis_pool import connect, mget

log = structlog.get_logger("service.series")

V = TypeVar("V")

NO_LIMIT_BILL = 9007199254740991  # Capillary's "no maximum" (2^53 - 1)
SERIES_CACHE_MAX: Final = 10_000  # series summaries kept in memory
CODE_CACHE_MAX: Final = 20_000  # code -> series id pairs kept in memory (a few MB)
NEAR_TTL: Final = 5.0  # seconds a value read from Redis is also kept in this process


class MsgspecSerializer(BaseSerializer, Generic[V]):  # type: ignore[misc]
    """aiocache serializer: msgspec JSON bytes of one declared type, the same for every backend."""

    DEFAULT_ENCODING = None

    def __init__(self, kind: type[V]) -> None:
        super().__init__()
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(kind)

    def dumps(self, value: V) -> bytes:
        return self._encoder.encode(value)

    def loads(self, value: bytes | None) -> V | None:
        return None if value is None else self._decoder.decode(value)


class SeriesCache(Protocol):
    """What the catalog uses of a cache (aiocache's interface): `MemoryCache`, `NearCache` over `RedisCache`."""

    async def multi_get(self, keys: list[str]) -> list[Any]: ...

    async def multi_set(self, pairs: list[tuple[str, Any]], ttl: float) -> Any: ...

    async def exists(self, key: str) -> bool: ...

    async def close(self) -> Any: ...


class MemoryCache:
    """In-process cache: key -> (encoded value, expiry time), oldest first, at most ``max_size`` keys.

    A read of an expired key drops it; a write drops what has expired from the front and the oldest keys beyond
    ``max_size`` (O(1) amortised). With one TTL per cache, as here, the oldest written is also the first to expire.
    """

    def __init__(
        self, serializer: MsgspecSerializer[Any], max_size: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self._dumps, self._loads = serializer.dumps, serializer.loads
        self._max = max_size
        self._clock = clock
        self._data: collections.OrderedDict[str, tuple[bytes, float]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    async def multi_get(self, keys: list[str]) -> list[Any]:
        data, now = self._data, self._clock()
        values: list[Any] = []
        for key in keys:
            found = data.get(key)
            if found is None:
                values.append(None)
            elif found[1] <= now:
                del data[key]
                values.append(None)
            else:
                values.append(self._loads(found[0]))
        return values

    async def multi_set(self, pairs: list[tuple[str, Any]], ttl: float) -> bool:
        data, now = self._data, self._clock()
        expiry = now + ttl
        for key, value in pairs:
            data[key] = (self._dumps(value), expiry)
            data.move_to_end(key)
        while data:
            oldest = next(iter(data.values()))
            if oldest[1] > now and len(data) <= self._max:
                break
            data.popitem(last=False)
        return True

    async def exists(self, key: str) -> bool:
        found = self._data.get(key)
        return found is not None and found[1] > self._clock()

    def holds(self, key: str, value: Any) -> bool:
        """Whether ``key`` holds ``value`` now (compared encoded)."""
        found = self._data.get(key)
        return found is not None and found[1] > self._clock() and found[0] == self._dumps(value)

    async def clear(self, namespace: str | None = None) -> bool:
        self._data.clear()
        return True

    async def close(self) -> None:
        return None


class RedisCache:
    """The cache in Redis: ``namespace + key`` -> encoded value with its TTL. Several keys are read with one
    ``MGET`` and written with one pipeline; each call is bounded by ``timeout``."""

    def __init__(
        self, client: redis.Redis, namespace: str, serializer: MsgspecSerializer[Any], timeout: float, *, owned: bool
    ) -> None:
        self._redis = client
        self._namespace = namespace
        self._dumps, self._loads = serializer.dumps, serializer.loads
        self._timeout = timeout
        self._owned = owned

    async def multi_get(self, keys: list[str]) -> list[Any]:
        ns = self._namespace
        async with asyncio.timeout(self._timeout):
            found: list[Any] = await mget(self._redis, [ns + k for k in keys])  # per slot on a Cluster
        return [None if v is None else self._loads(v) for v in found]  # bytes: the client does not decode

    async def multi_set(self, pairs: list[tuple[str, Any]], ttl: float) -> bool:
        ms = max(1, int(ttl * 1000))
        async with asyncio.timeout(self._timeout):
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, value in pairs:
                    pipe.set(self._namespace + key, self._dumps(value), px=ms)
                await pipe.execute()
        return True

    async def exists(self, key: str) -> bool:
        async with asyncio.timeout(self._timeout):
            return bool(await self._redis.exists(self._namespace + key))

    async def clear(self, namespace: str | None = None) -> bool:
        """Delete this cache's keys (tests and operators; never on the request path)."""
        batch: list[Any] = []
        async for key in self._redis.scan_iter(match=(namespace or self._namespace) + "*", count=500):
            batch.append(key)
            if len(batch) >= 500:
                await self._redis.delete(*batch)
                batch = []
        if batch:
            await self._redis.delete(*batch)
        return True

    async def close(self) -> None:
        if self._owned:
            await self._redis.aclose()


class NearCache:
    """An in-process copy (``ttl`` seconds, at most ``max_size`` keys) in front of a shared cache.

    Reads take what the copy holds and ask the shared cache for the rest in one call; writes go to both, but a
    value the copy already holds is not written to the shared cache again. A value changed in the shared cache
    by another replica is seen here at most ``ttl`` seconds later.

    With ``write_behind``, writes reach the copy at once and the shared cache a moment later (``WRITE_BEHIND``
    seconds), the writes of every request in that moment in one pipeline, off the request's path: for values
    that never change (a code's series), where a write lost to a crash costs one lookup later, nothing more.
    """

    WRITE_BEHIND: Final = 0.02

    def __init__(
        self,
        shared: SeriesCache,
        serializer: MsgspecSerializer[Any],
        max_size: int,
        ttl: float = NEAR_TTL,
        *,
        write_behind: bool = False,
    ) -> None:
        self.shared = shared
        self._near = MemoryCache(serializer, max_size)
        self._ttl = ttl
        self._write_behind = write_behind
        self._queued: dict[str, tuple[Any, float]] = {}
        self._flusher: asyncio.Task[None] | None = None

    async def multi_get(self, keys: list[str]) -> list[Any]:
        values = await self._near.multi_get(keys)
        missing = [i for i, v in enumerate(values) if v is None]
        if not missing:
            return values
        found = await self.shared.multi_get([keys[i] for i in missing])
        learnt = []
        for i, value in zip(missing, found, strict=True):
            if value is not None:
                values[i] = value
                learnt.append((keys[i], value))
        if learnt:
            await self._near.multi_set(learnt, self._ttl)
        return values

    async def multi_set(self, pairs: list[tuple[str, Any]], ttl: float) -> bool:
        new = [(k, v) for k, v in pairs if not self._near.holds(k, v)]
        if not new:
            return True
        if not self._write_behind:
            await self.shared.multi_set(new, ttl=ttl)
        else:
            for key, value in new:
                self._queued[key] = (value, ttl)
            if self._flusher is None or self._flusher.done():
                # its own context: the write is nobody's request (not counted among a request's round trips)
                self._flusher = asyncio.get_running_loop().create_task(self._flush(), context=contextvars.Context())
        await self._near.multi_set(new, min(ttl, self._ttl))
        return True

    async def _flush(self, pause: float = WRITE_BEHIND) -> None:
        if pause:
            await asyncio.sleep(pause)
        queued, self._queued = self._queued, {}
        by_ttl: dict[float, list[tuple[str, Any]]] = {}
        for key, (value, ttl) in queued.items():
            by_ttl.setdefault(ttl, []).append((key, value))
        for ttl, pairs in by_ttl.items():
            try:
                await self.shared.multi_set(pairs, ttl=ttl)
            except Exception as exc:  # a lost write is a later miss, never the till's problem
                log.warning("cache write failed", error=type(exc).__name__, detail=str(exc))

    async def exists(self, key: str) -> bool:
        return await self.shared.exists(key)

    async def clear(self, namespace: str | None = None) -> bool:
        await self._near.clear()
        return bool(await self.shared.clear(namespace))  # type: ignore[attr-defined]

    async def close(self) -> None:
        if self._flusher is not None and not self._flusher.done():
            with contextlib.suppress(Exception):
                await self._flusher
        if self._queued:
            await self._flush(0)
        await self.shared.close()


def open_cache(
    url: str | None,
    namespace: str,
    kind: type[Any],
    timeout: float,
    max_size: int = SERIES_CACHE_MAX,
    *,
    client: redis.Redis | None = None,
    near_ttl: float = NEAR_TTL,
    write_behind: bool = False,
) -> Any:
    """A cache for values of ``kind``: Redis at ``url`` (``redis://host:port/db``; on ``client``, the process's
    shared one, when given) behind a short in-process copy, or this process's memory without one (a
    `MemoryCache` of at most ``max_size`` keys)."""
    serializer = MsgspecSerializer(kind)
    if url:
        shared = RedisCache(
            client or connect(url, timeout=timeout), namespace, serializer, timeout, owned=client is None
        )
        return NearCache(shared, serializer, max_size, near_ttl, write_behind=write_behind)
    return MemoryCache(serializer, max_size)


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _json_list(value: str | None) -> list[Any] | None:
    if not value:
        return None
    try:
        parsed = msgspec.json.decode(value)
    except msgspec.DecodeError:
        return None
    return parsed if isinstance(parsed, list) else None


def _stores(series: Series) -> tuple[str, ...] | None:
    """Stores the series may be redeemed at; None for all (``[-1]``, or nothing we can read)."""
    stores = _json_list(series.redeem_at_store)
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
    if not value:
        return None
    try:
        parsed = msgspec.json.decode(value)
    except msgspec.DecodeError:
        return None
    if not isinstance(parsed, dict):
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


class CacheStats:
    """Plain counters, read by the metrics collector at scrape time (nothing on the hot path but ``+=``)."""

    def __init__(self) -> None:
        self.hits = self.misses = self.errors = 0


class CatalogStats:
    def __init__(self) -> None:
        self.series = CacheStats()
        self.code = CacheStats()
        self.fetch_sizes: collections.Counter[int] = collections.Counter()  # series per upstream fetch


async def _within_deadline(future: asyncio.Future[SeriesSummary | None]) -> SeriesSummary | None:
    """Wait for a shared fetch no longer than the waiting request's own deadline (the fetch goes on for others)."""
    left = time_left()
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
        series_cache: SeriesCache,
        code_cache: SeriesCache,
        ttl: float,
        code_ttl: float,
        lookup_timeout: float,
    ) -> None:
        self._client = client
        self._series = series_cache
        self._codes = code_cache
        self._ttl = ttl
        self._code_ttl = code_ttl
        self._timeout = lookup_timeout
        self._inflight: dict[int, asyncio.Future[SeriesSummary | None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats = CatalogStats()

    # ------------------------------------------------------------------------------------------- cache I/O

    async def _cache_get(self, cache: SeriesCache, stats: CacheStats, keys: Sequence[str]) -> list[Any]:
        if not keys:
            return []
        try:
            values: list[Any] = await cache.multi_get(list(keys))
        except Exception as exc:  # a cache failure is a miss, never the till's problem
            stats.errors += 1
            stats.misses += len(keys)
            log.warning("cache read failed", error=type(exc).__name__, detail=str(exc))
            return [None] * len(keys)
        found = sum(v is not None for v in values)
        stats.hits += found
        stats.misses += len(keys) - found
        return values

    async def _cache_set(self, cache: SeriesCache, stats: CacheStats, pairs: list[tuple[str, Any]], ttl: float) -> None:
        if not pairs:
            return
        try:
            await cache.multi_set(pairs, ttl=ttl)
        except Exception as exc:
            stats.errors += 1
            log.warning("cache write failed", error=type(exc).__name__, detail=str(exc))

    # --------------------------------------------------------------------------------------------- series

    async def get_many(self, ids: Iterable[int]) -> dict[int, SeriesSummary]:
        """Summaries of the series that exist among ``ids``; upstream failures leave them out."""
        wanted = sorted(set(ids))
        cached = await self._cache_get(self._series, self.stats.series, [str(i) for i in wanted])
        result = {i: v for i, v in zip(wanted, cached, strict=True) if v is not None}
        missing = [i for i in wanted if i not in result]
        waits = {i: self._inflight[i] for i in missing if i in self._inflight}
        to_fetch = [i for i in missing if i not in waits]
        if to_fetch:
            waits.update(self._start_fetch(to_fetch))
        for series_id, future in waits.items():
            with contextlib.suppress(CapillaryError):
                if (summary := await _within_deadline(future)) is not None:
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
                await self._cache_set(
                    self._series, self.stats.series, [(str(k), v) for k, v in found.items()], self._ttl
                )
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
        cached = await self._cache_get(self._series, self.stats.series, [str(series_id)])
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
            await self._series.exists("__health__")
        except Exception:
            return False
        return True

    # ---------------------------------------------------------------------------------------------- codes

    async def remember(self, code_series: dict[str, int]) -> None:
        """Record code -> series pairs learnt elsewhere (a redeem answer's ``seriesCode``)."""
        await self._cache_set(self._codes, self.stats.code, list(code_series.items()), self._code_ttl)

    async def _cached_ids(self, codes: Sequence[str]) -> dict[str, int]:
        cached = await self._cache_get(self._codes, self.stats.code, codes)
        return {c: v for c, v in zip(codes, cached, strict=True) if v is not None}

    async def series_ids(self, codes: Sequence[str]) -> dict[str, int]:
        """Each code's series: from the cache, else one coupon-details call for all the others."""
        known = await self._cached_ids(codes)
        missing = [c for c in codes if c not in known]
        if missing:
            try:
                reply = await self._client.coupon_details(codes=missing, timeout=self._timeout)
            except CapillaryError as exc:
                log.warning("coupon details failed", detail=str(exc))
                return known
            learnt = {c.code: c.series_id for c in reply.data if c.code in missing and c.series_id is not None}
            known.update(learnt)
            await self.remember(learnt)
        return known

    async def for_codes(self, codes: Sequence[str]) -> dict[str, SeriesSummary]:
        """The series of each code where it can be learnt; never raises for an upstream or cache failure."""
        ids = await self.series_ids(codes)
        summaries = await self.get_many(ids.values())
        return {code: summaries[sid] for code, sid in ids.items() if sid in summaries}

    async def known(self, codes: Sequence[str]) -> dict[str, SeriesSummary]:
        """The series of the codes whose series is already known (learnt from an earlier check, lookup or
        redeem answer): no upstream call to learn a code's series. Never raises for an upstream or cache
        failure."""
        ids = await self._cached_ids(codes)
        if not ids:
            return {}
        summaries = await self.get_many(ids.values())
        return {code: summaries[sid] for code, sid in ids.items() if sid in summaries}

    async def by_ids(self, ids: Iterable[int]) -> dict[int, SeriesSummary]:
        """Summaries of the series among ``ids`` that exist (one upstream call for all those not cached)."""
        return await self.get_many(ids)


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
    series_cache: SeriesCache = open_cache(
        cache_url, "pos_coupon:series:", SeriesSummary, timeout, SERIES_CACHE_MAX, client=redis_client
    )
    # A code's series never changes: its in-process copy is kept as long as the cache keeps it (bounded by
    # CODE_CACHE_MAX), and written to Redis behind the request.
    code_ttl = 30 * 24 * 3600
    code_cache: SeriesCache = open_cache(
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
