"""Caches of encoded values: in this process's memory, or in Redis behind a short in-process copy.

One explicit msgspec serializer serves every backend, so each behaves alike (each hands out a fresh copy of what
was stored, where aiocache's memory backend hands out the stored object itself).

- :class:`MemoryCache`: a plain bounded dict of encoded values with their expiry time: no timer per key, no timeout
  around each call (aiocache's memory backend has both, and its keys live until their timers fire).
- :class:`RedisCache`: ``namespace + key`` in Redis; several keys are read with one ``MGET`` and written with one
  pipeline, on the process's shared pool (:mod:`service.redis_pool`), each call bounded by a timeout.
- :class:`NearCache`: a small in-process copy (``NEAR_TTL`` seconds) in front of a shared cache, so a busy gateway
  reads each key from Redis once every few seconds, not once per request, and does not write again a value it
  already holds; optionally writing behind the request.

What a cache failure means is the caller's to decide (the series catalog counts it as a miss).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import time
from collections.abc import Callable
from typing import Any, Final, Generic, Protocol, TypeVar

import msgspec
import redis.asyncio as redis
import structlog
from aiocache.serializers import BaseSerializer

from service.redis_pool import connect, mget

log = structlog.get_logger("service.cache")

V = TypeVar("V")

DEFAULT_MAX_SIZE: Final = 10_000  # keys kept in memory
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


class Cache(Protocol):
    """What a cache offers (aiocache's interface): `MemoryCache`, `NearCache` over `RedisCache`."""

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
        shared: Cache,
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
                log.warning("cache_write_failed", error=type(exc).__name__, detail=str(exc))

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
    max_size: int = DEFAULT_MAX_SIZE,
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
