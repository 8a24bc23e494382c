"""Upload jobs as the gateway tracks them: records, status normalisation, and the job store (memory or Redis).

A record maps the gateway's job id to the upstream job in the series' list. The store also keeps, for a window,
the content hash of each accepted file (kind + series + options + SHA-256 of the bytes) so that the same file sent
again answers with the job already made instead of uploading it twice.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any, Final, Literal, Protocol

import msgspec
import redis.asyncio as redis
from redis.exceptions import RedisError

from service.redis_pool import is_cluster

UploadKind = Literal["coupons", "redemptions"]
JobStatus = Literal["queued", "running", "finished", "failed"]

#: Re-sending the same file for the same series within this window answers with the first job.
DUPLICATE_WINDOW: Final = 24 * 3600.0
#: How long a job record is kept.
JOB_TTL: Final = 30 * 24 * 3600.0

_STATUSES: Final[dict[str, JobStatus]] = {
    **dict.fromkeys(("QUEUED", "PENDING", "CREATED", "SUBMITTED", "NEW", "WAITING", "SCHEDULED"), "queued"),
    **dict.fromkeys(
        ("STARTED", "RUNNING", "PROCESSING", "IN_PROGRESS", "INPROGRESS", "UPLOADING", "VALIDATING"), "running"
    ),
    **dict.fromkeys(
        ("FINISHED", "COMPLETED", "COMPLETE", "SUCCESS", "SUCCEEDED", "DONE", "PARTIALLY_COMPLETED"), "finished"
    ),
    **dict.fromkeys(("FAILED", "FAILURE", "ERROR", "ABORTED", "CANCELLED", "CANCELED", "REJECTED"), "failed"),
}


def normalise(upstream_status: str | None) -> JobStatus:
    """The upstream's job status in one of four words. No status yet means queued; a word never seen before
    means running (not final, so a caller keeps watching rather than believing a result)."""
    if not upstream_status or not upstream_status.strip():
        return "queued"
    key = upstream_status.strip().upper().replace(" ", "_").replace("-", "_")
    return _STATUSES.get(key, "running")


def new_job_id() -> str:
    return f"upl_{secrets.token_hex(12)}"


class JobRecord(msgspec.Struct, kw_only=True):
    """What the gateway remembers of an accepted upload."""

    job_id: str
    kind: UploadKind
    series_id: int
    upstream_job_id: int | None
    file_name: str
    upstream_file_name: str | None
    sha256: str
    bytes: int
    rows: int
    created_at: float  # epoch seconds
    options: dict[str, Any] = {}


_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(JobRecord)


class JobStoreUnavailable(Exception):
    """The job store cannot be read or written."""


class JobStore(Protocol):
    backend: str

    async def claim(self, content_key: str, job_id: str, ttl: float) -> str | None:
        """Point ``content_key`` at ``job_id`` if it is free (returns None); else return the job id it holds."""

    async def release(self, content_key: str, job_id: str) -> None:
        """Free ``content_key`` if it still points at ``job_id`` (the upload did not go through)."""

    async def keep(self, content_key: str, job_id: str, ttl: float) -> None:
        """Hold ``content_key`` for ``job_id`` for ``ttl`` more seconds (the upload went through)."""

    async def save(self, record: JobRecord, ttl: float) -> None: ...

    async def load(self, job_id: str) -> JobRecord | None: ...

    async def of_series(self, kind: UploadKind, series_id: int) -> dict[int, str]:
        """Upstream job id -> gateway job id, for the jobs of one series."""

    async def close(self) -> None: ...


class MemoryJobStore:
    """Jobs in this process's memory (one replica; lost on restart). Records are kept encoded, like in Redis."""

    backend = "memory"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._keys: dict[str, tuple[str, float]] = {}
        self._jobs: dict[str, tuple[bytes, float]] = {}
        self._series: dict[tuple[str, int], dict[int, str]] = {}

    def _sweep(self) -> None:
        now = self._clock()
        for key in [k for k, (_, until) in self._keys.items() if until <= now]:
            del self._keys[key]
        for job_id in [k for k, (_, until) in self._jobs.items() if until <= now]:
            record = _decoder.decode(self._jobs.pop(job_id)[0])
            if record.upstream_job_id is not None:
                self._series.get((record.kind, record.series_id), {}).pop(record.upstream_job_id, None)

    async def claim(self, content_key: str, job_id: str, ttl: float) -> str | None:
        self._sweep()
        held = self._keys.get(content_key)
        if held is not None:
            return held[0]
        self._keys[content_key] = (job_id, self._clock() + ttl)
        return None

    async def release(self, content_key: str, job_id: str) -> None:
        held = self._keys.get(content_key)
        if held is not None and held[0] == job_id:
            del self._keys[content_key]

    async def keep(self, content_key: str, job_id: str, ttl: float) -> None:
        self._keys[content_key] = (job_id, self._clock() + ttl)

    async def save(self, record: JobRecord, ttl: float) -> None:
        self._jobs[record.job_id] = (_encoder.encode(record), self._clock() + ttl)
        if record.upstream_job_id is not None:
            self._series.setdefault((record.kind, record.series_id), {})[record.upstream_job_id] = record.job_id

    async def load(self, job_id: str) -> JobRecord | None:
        self._sweep()
        found = self._jobs.get(job_id)
        return _decoder.decode(found[0]) if found else None

    async def of_series(self, kind: UploadKind, series_id: int) -> dict[int, str]:
        self._sweep()
        return dict(self._series.get((kind, series_id), {}))

    async def close(self) -> None:
        return None


_PREFIX: Final = "pos_coupon:upload:"

_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisJobStore:
    """Jobs in Redis, shared by every replica and kept across restarts. Keys under ``pos_coupon:upload:``:
    ``hash:<content key>`` -> job id, ``job:<job id>`` -> the record (JSON), ``series:<kind>:<id>`` -> hash of
    upstream job id -> job id. All with TTLs."""

    backend = "redis"

    def __init__(self, url: str | None = None, *, timeout: float = 0.5, client: redis.Redis | None = None) -> None:
        """``client``: the process's shared one (not closed here), else one of its own for ``url``."""
        self._owned: redis.Redis | None = None
        if client is None:
            client = self._owned = redis.Redis.from_url(
                url or "", socket_timeout=timeout, socket_connect_timeout=timeout
            )
        self._redis: redis.Redis = client

    async def claim(self, content_key: str, job_id: str, ttl: float) -> str | None:
        key = f"{_PREFIX}hash:{content_key}"
        try:
            if await self._redis.set(key, job_id, nx=True, px=max(1, int(ttl * 1000))):
                return None
            held = await self._redis.get(key)
        except RedisError as exc:
            raise JobStoreUnavailable(str(exc)) from exc
        if held is None:  # expired in between: try again
            return await self.claim(content_key, job_id, ttl)
        return held.decode() if isinstance(held, bytes) else str(held)

    async def release(self, content_key: str, job_id: str) -> None:
        try:
            await self._redis.eval(_RELEASE, 1, f"{_PREFIX}hash:{content_key}", job_id)
        except RedisError as exc:
            raise JobStoreUnavailable(str(exc)) from exc

    async def keep(self, content_key: str, job_id: str, ttl: float) -> None:
        try:
            await self._redis.set(f"{_PREFIX}hash:{content_key}", job_id, px=max(1, int(ttl * 1000)))
        except RedisError as exc:
            raise JobStoreUnavailable(str(exc)) from exc

    async def save(self, record: JobRecord, ttl: float) -> None:
        millis = int(ttl * 1000)
        try:
            # One MULTI on one Redis; on a Cluster the keys lie on two slots, which no MULTI spans: two writes.
            async with self._redis.pipeline(transaction=not is_cluster(self._redis)) as pipe:
                pipe.set(f"{_PREFIX}job:{record.job_id}", _encoder.encode(record), px=millis)
                if record.upstream_job_id is not None:
                    series = f"{_PREFIX}series:{record.kind}:{record.series_id}"
                    pipe.hset(series, str(record.upstream_job_id), record.job_id)
                    pipe.pexpire(series, millis)
                await pipe.execute()
        except RedisError as exc:
            raise JobStoreUnavailable(str(exc)) from exc

    async def load(self, job_id: str) -> JobRecord | None:
        try:
            raw = await self._redis.get(f"{_PREFIX}job:{job_id}")
        except RedisError as exc:
            raise JobStoreUnavailable(str(exc)) from exc
        return _decoder.decode(raw) if raw else None

    async def of_series(self, kind: UploadKind, series_id: int) -> dict[int, str]:
        try:
            found = await self._redis.hgetall(f"{_PREFIX}series:{kind}:{series_id}")
        except RedisError as exc:
            raise JobStoreUnavailable(str(exc)) from exc
        return {int(k): v.decode() if isinstance(v, bytes) else str(v) for k, v in found.items()}

    async def close(self) -> None:
        if self._owned is not None:
            await self._owned.aclose()
