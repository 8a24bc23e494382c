"""The offline journal: provisional redemptions, the upload batches settling them, the online validations that
qualify a code, and the settler's lease. Durable before a till is answered: in Redis (shared by every replica),
or in an embedded SQLite file in WAL mode (one host; several processes may share the file).

Both backends are the same few primitives over JSON records; ``exclusive()`` serialises the read-check-write of
an acceptance, a reversal and a batch's marking across replicas (a Redis lock from redis-py; SQLite's own
``BEGIN IMMEDIATE`` write lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable
from decimal import Decimal
from typing import Any, Literal, Protocol, TypeVar

import msgspec
import redis.asyncio as redis
from redis.exceptions import LockError, RedisError

from service.redemption.models import IdentifierKind
from service.redis_pool import connect, is_cluster

T = TypeVar("T")

LineState = Literal["open", "sent", "ok", "refused"]
ItemState = Literal["provisional", "conflict"]


class Line(msgspec.Struct, kw_only=True):
    """One code of a provisional redemption."""

    code: str
    series_id: int
    discount: Decimal  # the amount on this bill
    kind: str = "ABS"  # the series' rule, as shown to the till
    value: Decimal | None = None
    state: LineState = "open"
    batch: str | None = None
    reason: str | None = None
    redemption_id: int | None = None


class Provisional(msgspec.Struct, kw_only=True):
    ref: str
    key: str
    request_id: str
    store: str
    till: str | None
    customer_kind: IdentifierKind
    customer: str
    transaction_number: str
    bill_amount: Decimal
    at: float  # epoch seconds: the redemption's own time
    total: Decimal
    lines: list[Line]
    state: ItemState = "provisional"
    reason: str | None = None
    resolved_at: float | None = None

    @property
    def codes(self) -> list[str]:
        return [line.code for line in self.lines]


class Batch(msgspec.Struct, kw_only=True):
    """One redeemed-coupons upload: recorded before it is sent, so a lost answer is found in the job list."""

    id: str  # also the uploaded file's name: how the job is recognised in the job list
    series_id: int
    customer_kind: IdentifierKind
    rows: list[tuple[str, str]]  # (ref, code), in the file's row order
    created_at: float
    job_id: int | None = None


class JournalUnavailable(Exception):
    pass


_encoder = msgspec.json.Encoder(decimal_format="string")


class Journal(Protocol):
    backend: str

    def exclusive(self) -> contextlib.AbstractAsyncContextManager[None]: ...
    async def note_valid(self, name: str, record: bytes, ttl: float) -> None: ...
    async def valid_at(self, names: list[str]) -> dict[str, bytes]: ...
    async def outstanding(self) -> list[Provisional]: ...
    async def get(self, ref: str) -> Provisional | None: ...
    async def put(self, item: Provisional) -> None: ...
    async def remove(self, ref: str) -> None: ...
    async def held(self, codes: list[str]) -> dict[str, str]:
        """The codes among ``codes`` held by an outstanding provisional redemption, and its ref."""
        ...

    async def conflicts(self) -> list[Provisional]: ...
    async def settled(self, ref: str, body: bytes, ttl: float) -> None:
        """Keep a settled redemption's answer (its status, even where the ledger forgot it: a memory ledger)."""
        ...

    async def settled_answer(self, ref: str) -> bytes | None: ...
    async def conflict(self, item: Provisional) -> None:
        """Move ``item`` (state conflict) from the outstanding ones to the conflicts."""
        ...

    async def batches(self) -> list[Batch]: ...
    async def put_batch(self, batch: Batch) -> None: ...
    async def remove_batch(self, batch_id: str) -> None: ...
    async def lease(self, name: str, owner: str, seconds: float) -> bool: ...
    async def release(self, name: str, owner: str) -> None: ...
    async def close(self) -> None: ...


PREFIX = "pos_coupon:offline:"
_LEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class RedisJournal:
    """The journal in Redis under ``pos_coupon:offline:``; on a Redis Cluster under ``{pos_coupon:offline}:``, one
    hash slot, so its ``MULTI`` writes and reads of several keys stay whole (the journal is small: provisional
    redemptions of an outage)."""

    backend = "redis"

    def __init__(self, url: str | None = None, *, timeout: float = 0.5, client: redis.Redis | None = None) -> None:
        """``client``: the process's shared one (see :mod:`service.redis_pool`; not closed here), else one of its
        own for ``url``."""
        self._owned: redis.Redis | None = None
        if client is None:
            if url is None:
                raise ValueError("a Redis URL or client is needed")
            client = self._owned = connect(url, timeout=max(timeout, 1.0))
        self._redis: redis.Redis = client
        self._prefix = "{pos_coupon:offline}:" if is_cluster(client) else PREFIX
        self._lease = self._redis.register_script(_LEASE)
        self._release = self._redis.register_script(_RELEASE)

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        lock = self._redis.lock(self._prefix + "mutex", timeout=10.0, blocking_timeout=3.0)
        try:
            if not await lock.acquire():
                raise JournalUnavailable("the offline journal is busy")
        except RedisError as exc:
            raise JournalUnavailable(str(exc)) from None
        try:
            yield
        finally:
            with contextlib.suppress(LockError, RedisError):
                await lock.release()

    async def _do(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except RedisError as exc:
            raise JournalUnavailable(str(exc)) from None

    async def note_valid(self, name: str, record: bytes, ttl: float) -> None:
        await self._do(self._redis.set(self._prefix + "valid:" + name, record, px=max(1, int(ttl * 1000))))

    async def valid_at(self, names: list[str]) -> dict[str, bytes]:
        if not names:
            return {}
        values = await self._do(self._redis.mget([self._prefix + "valid:" + n for n in names]))
        assert isinstance(values, list)
        return {n: v for n, v in zip(names, values, strict=True) if isinstance(v, bytes)}

    async def outstanding(self) -> list[Provisional]:
        values = await self._do(self._redis.hgetall(self._prefix + "items"))
        assert isinstance(values, dict)
        return sorted((msgspec.json.decode(v, type=Provisional) for v in values.values()), key=lambda p: p.at)

    async def get(self, ref: str) -> Provisional | None:
        for kind in ("items", "conflicts"):
            value = await self._do(self._redis.hget(self._prefix + kind, ref))
            if value is not None:
                assert isinstance(value, bytes)
                return msgspec.json.decode(value, type=Provisional)
        return None

    async def put(self, item: Provisional) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(self._prefix + "items", item.ref, _encoder.encode(item))
        pipe.hset(self._prefix + "codes", mapping=dict.fromkeys(item.codes, item.ref))
        await self._do(pipe.execute())

    async def _release_codes(self, pipe: Any, ref: str) -> None:
        item = await self.get(ref)
        if item is not None and item.codes:
            pipe.hdel(self._prefix + "codes", *item.codes)

    async def remove(self, ref: str) -> None:
        pipe = self._redis.pipeline(transaction=True)
        await self._release_codes(pipe, ref)
        pipe.hdel(self._prefix + "items", ref)
        await self._do(pipe.execute())

    async def held(self, codes: list[str]) -> dict[str, str]:
        if not codes:
            return {}
        values = await self._do(self._redis.hmget(self._prefix + "codes", codes))
        assert isinstance(values, list)
        return {c: v.decode() for c, v in zip(codes, values, strict=True) if isinstance(v, bytes)}

    async def settled(self, ref: str, body: bytes, ttl: float) -> None:
        await self._do(self._redis.set(self._prefix + "settled:" + ref, body, px=max(1, int(ttl * 1000))))

    async def settled_answer(self, ref: str) -> bytes | None:
        value = await self._do(self._redis.get(self._prefix + "settled:" + ref))
        return value if isinstance(value, bytes) else None

    async def conflicts(self) -> list[Provisional]:
        values = await self._do(self._redis.hgetall(self._prefix + "conflicts"))
        assert isinstance(values, dict)
        items = (msgspec.json.decode(v, type=Provisional) for v in values.values())
        return sorted(items, key=lambda p: (p.resolved_at or 0, p.ref), reverse=True)

    async def conflict(self, item: Provisional) -> None:
        pipe = self._redis.pipeline(transaction=True)
        await self._release_codes(pipe, item.ref)
        pipe.hset(self._prefix + "conflicts", item.ref, _encoder.encode(item))
        pipe.hdel(self._prefix + "items", item.ref)
        await self._do(pipe.execute())

    async def batches(self) -> list[Batch]:
        values = await self._do(self._redis.hgetall(self._prefix + "batches"))
        assert isinstance(values, dict)
        return sorted((msgspec.json.decode(v, type=Batch) for v in values.values()), key=lambda b: b.created_at)

    async def put_batch(self, batch: Batch) -> None:
        await self._do(self._redis.hset(self._prefix + "batches", batch.id, _encoder.encode(batch)))

    async def remove_batch(self, batch_id: str) -> None:
        await self._do(self._redis.hdel(self._prefix + "batches", batch_id))

    async def lease(self, name: str, owner: str, seconds: float) -> bool:
        """Take the lease, or extend it when ``owner`` holds it (one atomic step)."""
        args: list[str | int] = [owner, int(seconds * 1000)]
        return bool(await self._do(self._lease(keys=[self._prefix + "lease:" + name], args=args)))

    async def release(self, name: str, owner: str) -> None:
        with contextlib.suppress(RedisError):
            await self._release(keys=[self._prefix + "lease:" + name], args=[owner])

    async def close(self) -> None:
        if self._owned is not None:
            await self._owned.aclose()


_INSIDE: contextvars.ContextVar[bool] = contextvars.ContextVar("offline_sqlite_inside", default=False)


class SqliteJournal:
    """The embedded journal: one SQLite file in WAL mode, each record a JSON row. Its calls are short local
    writes made on the event loop (synchronous ``sqlite3``, fsynced at commit)."""

    backend = "sqlite"

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, timeout=5.0, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS records (kind TEXT NOT NULL, name TEXT NOT NULL, value BLOB NOT NULL,"
            " expires REAL, PRIMARY KEY (kind, name))"
        )
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise JournalUnavailable(str(exc)) from None
            token = _INSIDE.set(True)
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")
            finally:
                _INSIDE.reset(token)

    @contextlib.asynccontextmanager
    async def _op(self) -> AsyncIterator[sqlite3.Connection]:
        try:
            if _INSIDE.get():
                yield self._db
            else:
                async with self._lock:
                    yield self._db
        except sqlite3.Error as exc:
            raise JournalUnavailable(str(exc)) from None

    async def _set(self, kind: str, name: str, value: bytes, expires: float | None = None) -> None:
        async with self._op() as db:
            db.execute("INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?)", (kind, name, value, expires))

    async def _get(self, kind: str, name: str) -> bytes | None:
        async with self._op() as db:
            row = db.execute(
                "SELECT value FROM records WHERE kind = ? AND name = ? AND (expires IS NULL OR expires > ?)",
                (kind, name, time.time()),
            ).fetchone()
        return bytes(row[0]) if row else None

    async def _all(self, kind: str) -> list[bytes]:
        async with self._op() as db:
            rows = db.execute("SELECT value FROM records WHERE kind = ?", (kind,)).fetchall()
        return [bytes(r[0]) for r in rows]

    async def _delete(self, kind: str, name: str) -> None:
        async with self._op() as db:
            db.execute("DELETE FROM records WHERE kind = ? AND name = ?", (kind, name))

    async def note_valid(self, name: str, record: bytes, ttl: float) -> None:
        async with self._op() as db:
            db.execute("DELETE FROM records WHERE kind = 'valid' AND expires <= ?", (time.time(),))
        await self._set("valid", name, record, time.time() + ttl)

    async def valid_at(self, names: list[str]) -> dict[str, bytes]:
        found = {}
        for name in names:
            value = await self._get("valid", name)
            if value is not None:
                found[name] = value
        return found

    async def outstanding(self) -> list[Provisional]:
        items = [msgspec.json.decode(v, type=Provisional) for v in await self._all("item")]
        return sorted(items, key=lambda p: p.at)

    async def get(self, ref: str) -> Provisional | None:
        for kind in ("item", "conflict"):
            value = await self._get(kind, ref)
            if value is not None:
                return msgspec.json.decode(value, type=Provisional)
        return None

    async def put(self, item: Provisional) -> None:
        async with self._op() as db:
            db.execute("INSERT OR REPLACE INTO records VALUES ('item', ?, ?, NULL)", (item.ref, _encoder.encode(item)))
            for code in item.codes:
                db.execute("INSERT OR REPLACE INTO records VALUES ('code', ?, ?, NULL)", (code, item.ref.encode()))

    async def remove(self, ref: str) -> None:
        async with self._op() as db:
            db.execute("DELETE FROM records WHERE kind = 'code' AND value = ?", (ref.encode(),))
            db.execute("DELETE FROM records WHERE kind = 'item' AND name = ?", (ref,))

    async def held(self, codes: list[str]) -> dict[str, str]:
        found = {}
        for code in codes:
            value = await self._get("code", code)
            if value is not None:
                found[code] = value.decode()
        return found

    async def settled(self, ref: str, body: bytes, ttl: float) -> None:
        await self._set("settled", ref, body, time.time() + ttl)

    async def settled_answer(self, ref: str) -> bytes | None:
        return await self._get("settled", ref)

    async def conflicts(self) -> list[Provisional]:
        items = [msgspec.json.decode(v, type=Provisional) for v in await self._all("conflict")]
        return sorted(items, key=lambda p: (p.resolved_at or 0, p.ref), reverse=True)

    async def conflict(self, item: Provisional) -> None:
        async with self._op() as db:
            db.execute(
                "INSERT OR REPLACE INTO records VALUES ('conflict', ?, ?, NULL)", (item.ref, _encoder.encode(item))
            )
            db.execute("DELETE FROM records WHERE kind = 'item' AND name = ?", (item.ref,))
            db.execute("DELETE FROM records WHERE kind = 'code' AND value = ?", (item.ref.encode(),))

    async def batches(self) -> list[Batch]:
        batches = [msgspec.json.decode(v, type=Batch) for v in await self._all("batch")]
        return sorted(batches, key=lambda b: b.created_at)

    async def put_batch(self, batch: Batch) -> None:
        await self._set("batch", batch.id, _encoder.encode(batch))

    async def remove_batch(self, batch_id: str) -> None:
        await self._delete("batch", batch_id)

    async def lease(self, name: str, owner: str, seconds: float) -> bool:
        """Take the lease, or extend it when ``owner`` holds it (in one write transaction)."""
        now = time.time()
        async with self.exclusive() if not _INSIDE.get() else contextlib.nullcontext(), self._op() as db:
            row = db.execute(
                "SELECT value FROM records WHERE kind = 'lease' AND name = ? AND expires > ?", (name, now)
            ).fetchone()
            mine = row is None or bytes(row[0]) == owner.encode()
            if mine:
                db.execute(
                    "INSERT OR REPLACE INTO records VALUES ('lease', ?, ?, ?)", (name, owner.encode(), now + seconds)
                )
        return mine

    async def release(self, name: str, owner: str) -> None:
        async with self._op() as db:
            db.execute("DELETE FROM records WHERE kind = 'lease' AND name = ? AND value = ?", (name, owner.encode()))

    async def close(self) -> None:
        self._db.close()
