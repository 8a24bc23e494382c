"""The ledger in Redis, shared by every replica and surviving restarts.

Keys (all under ``pos_coupon:``, all with TTLs):
- ``idem:<sha256 of the idempotency key>`` -> ref
- ``rdm:<ref>``                            -> the entry (msgspec JSON)
- ``lock:<coupon code>``                   -> the ref holding it
- ``rid:<Capillary redemption id>``        -> the ref that owns that redemption (no other may adopt it)
- ``unresolved``                           -> set of refs in flight or pending, for the sweeper

Every multi-key change is one Lua script or one MULTI, so a crash never leaves half of it. (Scripts touch keys
they compute; that is fine on one Redis, not on Redis Cluster.)

A first redeem costs two round trips: ``begin`` (claim the key and lock the codes, one script) and ``resolve``
(record the answer, bind its redemption ids, unlock: one script). A replay is one: ``begin`` finds the record and
returns it.
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Sequence
from typing import Any

import redis.asyncio as redis
import structlog
from redis.exceptions import NoScriptError, RedisError

from service.idempotency.models import Entry, entry_decoder, entry_encoder
from service.idempotency.store import UNRESOLVED_STATES, Resolution, StoreUnavailable
from service.redis_pool import connect

_CLAIM = """
local function live(key)
  if not key then return false end
  local existing = redis.call('GET', key)
  if existing then
    local record = redis.call('GET', ARGV[4] .. existing)
    if record then return record end
  end
  return false
end
local found = live(KEYS[1]) or live(KEYS[4])
if found then return found end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('SADD', KEYS[3], ARGV[1])
return false
"""

# KEYS: idempotency key, record, unresolved set, [legacy idempotency key], then the codes' lock keys.
# ARGV: ref, entry, ttl (ms), record prefix, lock ttl (ms), 1 when a legacy key is given.
# Returns {1, record} for a key already taken (a replay), {2, {busy lock indexes}}, or {0} once claimed and locked.
_BEGIN = """
local ref = ARGV[1]
local function live(key)
  local existing = redis.call('GET', key)
  if existing and existing ~= ref then
    local record = redis.call('GET', ARGV[4] .. existing)
    if record then return record end
  end
  return false
end
local first = 4
if ARGV[6] == '1' then first = 5 end
local found = live(KEYS[1])
if (not found) and first == 5 then found = live(KEYS[4]) end
if found then return {1, found} end
local busy = {}
for i = first, #KEYS do
  local holder = redis.call('GET', KEYS[i])
  if holder and holder ~= ref then table.insert(busy, i - first + 1) end
end
if #busy > 0 then return {2, busy} end
redis.call('SET', KEYS[1], ref, 'PX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('SADD', KEYS[3], ref)
for i = first, #KEYS do redis.call('SET', KEYS[i], ref, 'PX', ARGV[5]) end
return {0}
"""

_FINAL = """
local function final(record)
  if not record then return false end
  local state = cjson.decode(record)['state']
  return state == 'done' or state == 'failed'
end
"""

_SAVE_UNRESOLVED = (
    _FINAL
    + """
local current = redis.call('GET', KEYS[1])
if final(current) then return current end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[1])
return false
"""
)

# KEYS: idempotency key, record, unresolved set, then n ``rid:`` keys, then the codes' lock keys.
# ARGV: ref, entry, ttl (ms), state, force (1/0), n.
_RESOLVE = (
    _FINAL
    + """
local ref, ttl, n = ARGV[1], ARGV[3], tonumber(ARGV[6])
local taken = {}
for i = 1, n do
  local owner = redis.call('GET', KEYS[3 + i])
  if owner and owner ~= ref then
    table.insert(taken, i)
    table.insert(taken, owner)
  end
end
if ARGV[5] ~= '1' then
  local current = redis.call('GET', KEYS[2])
  if final(current) then return {1, current} end
  if #taken > 0 then return {2, taken} end
end
for i = 1, n do redis.call('SET', KEYS[3 + i], ref, 'PX', ttl) end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ttl)
redis.call('SREM', KEYS[3], ref)
local holder = redis.call('GET', KEYS[1])
if ARGV[4] == 'failed' then
  if holder == ref then redis.call('DEL', KEYS[1]) end
elseif (not holder) or holder == ref then
  redis.call('SET', KEYS[1], ref, 'PX', ttl)
end
for i = 4 + n, #KEYS do
  if redis.call('GET', KEYS[i]) == ref then redis.call('DEL', KEYS[i]) end
end
return {0, taken}
"""
)

_LOCK = """
local busy = {}
for i, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  if holder and holder ~= ARGV[1] then table.insert(busy, i) end
end
if #busy > 0 then return busy end
for _, key in ipairs(KEYS) do redis.call('SET', key, ARGV[1], 'PX', ARGV[2]) end
return busy
"""

_UNLOCK = """
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then redis.call('DEL', key) end
end
return 1
"""


log = structlog.get_logger("service.ledger")


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisStore:
    backend = "redis"
    #: Final answers a replica did not acknowledge in time (with ``wait_replicas``), in this process, for the metrics.
    unreplicated = 0

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str = "pos_coupon:",
        timeout: float = 0.5,
        client: redis.Redis | None = None,
        wait_replicas: int = 0,
    ) -> None:
        """``client``: the process's shared one (see :mod:`service.redis_pool`, then not closed here), else one of
        its own for ``url``. Every call here may run twice (the client retries once on a fresh connection;
        scripts write the same state again; a claim that had landed finds itself), so nobody sees a 503 for a
        stale socket."""
        self.refusals: collections.Counter[str] = collections.Counter()  # none: Redis has no bounds of ours
        self._owned: redis.Redis | None = None
        if client is None:
            if url is None:
                raise ValueError("a Redis URL or client is needed")
            client = self._owned = connect(url, timeout=timeout)
        self._redis: redis.Redis = client
        self._prefix = prefix
        self._wait = wait_replicas
        self._wait_ms = max(1, int(timeout * 500))  # half the call's time for the replicas to acknowledge
        self._begin = self._redis.register_script(_BEGIN)
        self._claim = self._redis.register_script(_CLAIM)
        self._save_unresolved = self._redis.register_script(_SAVE_UNRESOLVED)
        self._resolve = self._redis.register_script(_RESOLVE)
        self._lock = self._redis.register_script(_LOCK)
        self._unlock = self._redis.register_script(_UNLOCK)

    def _key(self, key: str) -> str:
        return f"{self._prefix}idem:{hashlib.sha256(key.encode()).hexdigest()}"

    def _record(self, ref: str = "") -> str:
        return f"{self._prefix}rdm:{ref}"

    def _code(self, code: str) -> str:
        return f"{self._prefix}lock:{code}"

    def _bound(self, redemption_id: int) -> str:
        return f"{self._prefix}rid:{redemption_id}"

    @property
    def _unresolved_set(self) -> str:
        return f"{self._prefix}unresolved"

    async def _run(self, call: Any) -> Any:
        try:
            return await call
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc

    async def claim(self, entry: Entry, ttl: float, *, legacy_key: str | None = None) -> Entry | None:
        keys = [self._key(entry.key), self._record(entry.ref), self._unresolved_set]
        if legacy_key is not None:
            keys.append(self._key(legacy_key))
        found = await self._run(
            self._claim(keys=keys, args=[entry.ref, entry_encoder.encode(entry), _ms(ttl), self._record()])
        )
        return None if found is None else entry_decoder.decode(found)

    async def begin(
        self, entry: Entry, ttl: float, lock_ttl: float, *, legacy_key: str | None = None
    ) -> tuple[Entry | None, list[str]]:
        codes = entry.command.codes
        keys = [self._key(entry.key), self._record(entry.ref), self._unresolved_set]
        if legacy_key is not None:
            keys.append(self._key(legacy_key))
        keys += [self._code(c) for c in codes]
        args: list[str | bytes | int] = [entry.ref, entry_encoder.encode(entry), _ms(ttl), self._record()]
        args += [_ms(lock_ttl), 1 if legacy_key is not None else 0]
        found = await self._run(self._begin(keys=keys, args=args))
        status = int(found[0])
        if status == 1:
            return entry_decoder.decode(found[1]), []
        if status == 2:
            return None, [codes[int(i) - 1] for i in found[1]]
        return None, []

    async def save(self, entry: Entry, ttl: float) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._record(entry.ref), entry_encoder.encode(entry), px=_ms(ttl))
            if entry.state in UNRESOLVED_STATES:
                pipe.sadd(self._unresolved_set, entry.ref)
            else:
                pipe.srem(self._unresolved_set, entry.ref)
            await self._run(pipe.execute())

    async def save_unresolved(self, entry: Entry, ttl: float) -> Entry | None:
        found = await self._run(
            self._save_unresolved(
                keys=[self._record(entry.ref), self._unresolved_set],
                args=[entry.ref, entry_encoder.encode(entry), _ms(ttl)],
            )
        )
        return None if found is None else entry_decoder.decode(found)

    async def resolve(self, entry: Entry, ttl: float, *, force: bool = False, unlock: bool = True) -> Resolution:
        ids = [i for i in entry.redemption_ids.values() if i > 0] if entry.state == "done" else []
        keys = [self._key(entry.key), self._record(entry.ref), self._unresolved_set]
        keys += [self._bound(i) for i in ids]
        if unlock:
            keys += [self._code(c) for c in entry.command.codes]
        args: list[str | bytes | int] = [
            entry.ref,
            entry_encoder.encode(entry),
            _ms(ttl),
            entry.state,
            "1" if force else "0",
            len(ids),
        ]
        status, detail = await self._run(self._resolve_replicated(keys, args))
        if int(status) == 1:
            return Resolution(False, current=entry_decoder.decode(detail))
        pairs = list(detail or [])
        taken = {ids[int(pairs[i]) - 1]: pairs[i + 1].decode() for i in range(0, len(pairs), 2)}
        return Resolution(int(status) == 0, taken=taken)

    async def _resolve_replicated(self, keys: list[str], args: list[str | bytes | int]) -> Any:
        """The resolve script; with ``wait_replicas``, followed by ``WAIT`` in the same round trip (a pipeline),
        so the till gets an answer the replicas hold: a failover right after it does not lose it."""
        if not self._wait:
            return await self._resolve(keys=keys, args=args)
        for _ in range(2):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.evalsha(self._resolve.sha, len(keys), *keys, *args)
                pipe.execute_command("WAIT", self._wait, self._wait_ms)
                found, acked = await pipe.execute(raise_on_error=False)
            if isinstance(found, NoScriptError):
                await self._redis.script_load(_RESOLVE)
                continue
            if isinstance(found, Exception):
                raise found
            if isinstance(acked, Exception) or int(acked) < self._wait:
                RedisStore.unreplicated += 1
                log.warning("redis: a final answer not acknowledged by the replicas in time", wait_replicas=self._wait)
            return found
        raise NoScriptError("the resolve script could not be loaded")

    async def owners(self, redemption_ids: Sequence[int]) -> dict[int, str]:
        if not redemption_ids:
            return {}
        found = await self._run(self._redis.mget([self._bound(i) for i in redemption_ids]))
        return {i: ref.decode() for i, ref in zip(redemption_ids, found, strict=True) if ref is not None}

    async def load(self, ref: str) -> Entry | None:
        raw = await self._run(self._redis.get(self._record(ref)))
        return None if raw is None else entry_decoder.decode(raw)

    async def unresolved(self) -> list[str]:
        refs = sorted(r.decode() for r in await self._run(self._redis.smembers(self._unresolved_set)))
        if not refs:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for ref in refs:
                pipe.exists(self._record(ref))
            alive = await self._run(pipe.execute())
        gone = [ref for ref, exists in zip(refs, alive, strict=True) if not exists]
        if gone:  # expired entries leave the set too
            await self._run(self._redis.srem(self._unresolved_set, *gone))
        return [ref for ref in refs if ref not in gone]

    async def lock(self, codes: Sequence[str], owner: str, ttl: float) -> list[str]:
        busy = await self._run(self._lock(keys=[self._code(c) for c in codes], args=[owner, _ms(ttl)]))
        return [codes[int(i) - 1] for i in busy]

    async def unlock(self, codes: Sequence[str], owner: str) -> None:
        await self._run(self._unlock(keys=[self._code(c) for c in codes], args=[owner]))

    def refusing(self) -> str | None:
        return None  # Redis holds what its memory holds; an unreachable Redis shows in ping

    async def ping(self) -> None:
        await self._run(self._redis.ping())

    async def close(self) -> None:
        if self._owned is not None:
            await self._owned.aclose()
