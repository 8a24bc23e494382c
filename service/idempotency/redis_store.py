"""The ledger in Redis, shared by every replica and surviving restarts.

Keys (all under ``pos_coupon:``, all with TTLs):
- ``idem:<sha256 of the idempotency key>`` -> ref
- ``rdm:<ref>``                            -> the entry (msgspec JSON)
- ``lock:<coupon code>``                   -> the ref holding it
- ``rid:<Capillary redemption id>``        -> the ref that owns that redemption (no other may adopt it)
- ``unresolved``                           -> set of refs in flight or pending, for the sweeper

Every multi-key change is one Lua script or one MULTI, so a crash never leaves half of it.

A first redeem costs two round trips: ``begin`` (claim the key and lock the codes, one script) and ``resolve``
(record the answer, bind its redemption ids, unlock: one script). A replay is one: ``begin`` finds the record and
returns it.

On a Redis Cluster (``redis+cluster://``) a script may only touch keys of one hash slot, so one redemption's own
keys carry its key's hash as a hash tag and share a slot (``idem:{<hash>}``, ``rdm:{<hash>}:<ref>``), a pointer
``at:<ref>`` -> hash finds a record by its ref, and the steps that span slots run in an order that a crash
between any two of them leaves safe (see :class:`_ClusterSteps`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import math
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as redis
import structlog
from redis.asyncio.cluster import PipelineCommand
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError

from service.idempotency.models import Entry, entry_decoder, entry_encoder
from service.idempotency.store import (
    SHORT_OF_REPLICAS,
    UNACKNOWLEDGED,
    UNRESOLVED_STATES,
    Resolution,
    StoreUnavailable,
)
from service.redis_pool import connect, is_cluster, mget, socket_timeout, untallied

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
local function state_of(record)
  if not record then return false end
  return cjson.decode(record)['state']
end
local function final(record)
  local state = state_of(record)
  return state == 'done' or state == 'failed'
end
-- Whether the final record ``current`` stands against a write in ``mode`` (see ``_RESOLVE``): always in modes 0
-- and 2; in mode 3 unless it is ``failed`` (Capillary's own answer to this request says otherwise); never in 1.
local function stands(current, mode)
  if mode == '1' or not final(current) then return false end
  return not (mode == '3' and state_of(current) == 'failed')
end
"""

# The idempotency key (KEYS[1]) once ``ref``'s answer is final (state in ARGV[4]): ``failed`` frees it, ``done``
# keeps it for ``ttl`` (set again if lost), unless another ref holds it now.
_KEEP_KEY = """
local holder = redis.call('GET', KEYS[1])
if ARGV[4] == 'failed' then
  if holder == ref then redis.call('DEL', KEYS[1]) end
elseif (not holder) or holder == ref then
  redis.call('SET', KEYS[1], ref, 'PX', ttl)
end
"""

# KEYS: record, [unresolved set: not on a Cluster, where it lies on another slot]. ARGV: ref, entry, ttl (ms).
_SAVE_UNRESOLVED = (
    _FINAL
    + """
local current = redis.call('GET', KEYS[1])
if final(current) then return current end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
if #KEYS > 1 then redis.call('SADD', KEYS[2], ARGV[1]) end
return false
"""
)

# KEYS: idempotency key, record, unresolved set, then n ``rid:`` keys, then the codes' lock keys.
# ARGV: ref, entry, ttl (ms), state, mode, n. Mode 0: a final record wins, a taken id refuses; 1 (force): written
# whatever is there, the ids bound whoever held them. Modes 2 and 3 (keep_final: an answer given already, written
# again or late; 3 when forced): a final record wins and is itself written again, as it is, except that in mode 3
# a ``failed`` one is overwritten; with none there, as modes 0 and 1 (2: a taken id refuses; 3: bound anyway).
_RESOLVE = (
    _FINAL
    + """
local ref, ttl, n, mode = ARGV[1], ARGV[3], tonumber(ARGV[6]), ARGV[5]
local taken = {}
for i = 1, n do
  local owner = redis.call('GET', KEYS[3 + i])
  if owner and owner ~= ref then
    table.insert(taken, i)
    table.insert(taken, owner)
  end
end
local current = redis.call('GET', KEYS[2])
if stands(current, mode) then
  -- Written again as it is (modes 2, 3): a WAIT after this script then waits for this very record to reach the
  -- replicas (after a script that wrote nothing, WAIT would count an earlier write of the connection's).
  if mode ~= '0' then redis.call('SET', KEYS[2], current, 'KEEPTTL') end
  return {1, current}
end
if #taken > 0 and (mode == '0' or mode == '2') then return {2, taken} end
for i = 1, n do redis.call('SET', KEYS[3 + i], ref, 'PX', ttl) end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ttl)
redis.call('SREM', KEYS[3], ref)
"""
    + _KEEP_KEY
    + """for i = 4 + n, #KEYS do
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

# Cluster: claim the key in its slot. KEYS: idempotency key, record. ARGV: ref, entry, ttl (ms), record prefix of
# that slot. Returns the live record of another ref (a replay), else claims (a claim sent twice finds itself).
_CLUSTER_CLAIM = """
local ref = ARGV[1]
local existing = redis.call('GET', KEYS[1])
if existing and existing ~= ref then
  local record = redis.call('GET', ARGV[4] .. existing)
  if record then return record end
end
redis.call('SET', KEYS[1], ref, 'PX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return false
"""

# Cluster: the live record another ref holds under a key (a legacy key's), without claiming it.
_CLUSTER_LIVE = """
local existing = redis.call('GET', KEYS[1])
if existing and existing ~= ARGV[1] then return redis.call('GET', ARGV[2] .. existing) end
return false
"""

# Cluster: undo a claim whose codes could not be locked. KEYS: idempotency key, record. ARGV: ref.
_CLUSTER_DROP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('DEL', KEYS[2])
return 1
"""

# Cluster: bind redemption ids of one slot. KEYS: rid keys. ARGV: ref, ttl (ms), force (1/0).
# Returns {0, taken} (nothing bound: another ref holds one) or {1, taken, fresh}: all bound, ``fresh`` newly.
_CLUSTER_BIND = """
local ref = ARGV[1]
local taken, fresh = {}, {}
for i, key in ipairs(KEYS) do
  local owner = redis.call('GET', key)
  if owner and owner ~= ref then
    table.insert(taken, i)
    table.insert(taken, owner)
  end
  if owner ~= ref then table.insert(fresh, i) end
end
if #taken > 0 and ARGV[3] ~= '1' then return {0, taken} end
for _, key in ipairs(KEYS) do redis.call('SET', key, ref, 'PX', ARGV[2]) end
return {1, taken, fresh}
"""

# Cluster: the record's part of resolve. KEYS: idempotency key, record. ARGV: ref, entry, ttl, state, mode (as in
# ``_RESOLVE``; the ids are bound before, slot by slot), 1 when an id is taken and the answer is not forced (mode
# 2: refused, unless a final record stands). Returns the final record that stands, 0 when refused, else false.
_CLUSTER_FINISH = (
    _FINAL
    + """
local ref, ttl = ARGV[1], ARGV[3]
local current = redis.call('GET', KEYS[2])
if stands(current, ARGV[5]) then
  if ARGV[5] ~= '0' then redis.call('SET', KEYS[2], current, 'KEEPTTL') end
  return current
end
if ARGV[6] == '1' then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ttl)
"""
    + _KEEP_KEY
    + """return false
"""
)


log = structlog.get_logger("service.ledger")


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


#: How long a reading of the primary's replication (``INFO replication``) is trusted: read again after this, and
#: at once after a ``WAIT`` that was not acknowledged (a replica gone, or a failover).
REPLICATION_READ_EVERY = 1.0


def _mode(force: bool, keep_final: bool) -> str:
    """The resolve scripts' mode (see ``_RESOLVE``): 0 first answer wins, 1 forced, 2 keep_final, 3 both."""
    return str(2 * keep_final + force)


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
        # Half the client's own read timeout for the replicas to acknowledge (the client's, not ``timeout``: a
        # shared client was made with the process's REDIS_TIMEOUT_SECONDS, and WAIT must answer within it).
        self._wait_ms = max(1, int(socket_timeout(client, timeout) * 500))
        # The primary as last read: its replication id (a failover changes it) and its connected replicas.
        self._primary: str | None = None
        self._replicas = 0
        self._read_at = -math.inf
        self._short_logged: bool | None = None
        self._begin = self._redis.register_script(_BEGIN)
        self._claim = self._redis.register_script(_CLAIM)
        self._save_unresolved = self._redis.register_script(_SAVE_UNRESOLVED)
        self._resolve = self._redis.register_script(_RESOLVE)
        self._lock = self._redis.register_script(_LOCK)
        self._unlock = self._redis.register_script(_UNLOCK)
        self._cluster = _ClusterSteps(self) if is_cluster(client) else None

    def _key(self, key: str) -> str:
        digest = _digest(key)
        return f"{self._prefix}idem:{{{digest}}}" if self._cluster else f"{self._prefix}idem:{digest}"

    def _record(self, ref: str = "") -> str:
        return f"{self._prefix}rdm:{ref}"

    def _code(self, code: str) -> str:
        return f"{self._prefix}lock:{code}"

    def _bound(self, redemption_id: int) -> str:
        return f"{self._prefix}rid:{redemption_id}"

    def _pointer(self, ref: str) -> str:
        return f"{self._prefix}at:{ref}"

    @property
    def _unresolved_set(self) -> str:
        return f"{self._prefix}unresolved"

    async def _run(self, call: Any) -> Any:
        try:
            return await call
        except (RedisError, RedisClusterException, OSError) as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc

    async def claim(self, entry: Entry, ttl: float, *, legacy_key: str | None = None) -> Entry | None:
        if self._cluster is not None:
            return await self._cluster.claim(entry, ttl, legacy_key)
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
        if self._cluster is not None:
            return await self._cluster.begin(entry, ttl, lock_ttl, legacy_key)
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
        if self._cluster is not None:
            await self._cluster.save(entry, ttl)
            return
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._record(entry.ref), entry_encoder.encode(entry), px=_ms(ttl))
            if entry.state in UNRESOLVED_STATES:
                pipe.sadd(self._unresolved_set, entry.ref)
            else:
                pipe.srem(self._unresolved_set, entry.ref)
            await self._run(pipe.execute())

    async def save_unresolved(self, entry: Entry, ttl: float) -> Entry | None:
        if self._cluster is not None:
            return await self._cluster.save_unresolved(entry, ttl)
        found = await self._run(
            self._save_unresolved(
                keys=[self._record(entry.ref), self._unresolved_set],
                args=[entry.ref, entry_encoder.encode(entry), _ms(ttl)],
            )
        )
        return None if found is None else entry_decoder.decode(found)

    async def resolve(
        self,
        entry: Entry,
        ttl: float,
        *,
        force: bool = False,
        unlock: bool = True,
        keep_final: bool = False,
        again: bool = False,
    ) -> Resolution:
        ids = [i for i in entry.redemption_ids.values() if i > 0] if entry.state == "done" else []
        if self._cluster is not None:
            return await self._cluster.resolve(
                entry, ids, ttl, force=force, unlock=unlock, keep_final=keep_final, again=again
            )
        keys = [self._key(entry.key), self._record(entry.ref), self._unresolved_set]
        keys += [self._bound(i) for i in ids]
        if unlock:
            keys += [self._code(c) for c in entry.command.codes]
        args: list[str | bytes | int] = [
            entry.ref,
            entry_encoder.encode(entry),
            _ms(ttl),
            entry.state,
            _mode(force, keep_final),
            len(ids),
        ]
        (status, detail), unreplicated, (primary, replicas) = await self._run(self._resolve_replicated(keys, args))
        self._note(entry, unreplicated, replicas, again)
        if int(status) == 1:
            return Resolution(False, entry_decoder.decode(detail), unreplicated=unreplicated, primary=primary)
        pairs = list(detail or [])
        taken = {ids[int(pairs[i]) - 1]: pairs[i + 1].decode() for i in range(0, len(pairs), 2)}
        return Resolution(int(status) == 0, taken=taken, unreplicated=unreplicated, primary=primary)

    def _note(self, entry: Entry, unreplicated: str | None, replicas: int, again: bool) -> None:
        """Count (once per answer, not per writing it again) and log an answer the replicas do not hold."""
        if unreplicated is not None and not again:
            RedisStore.unreplicated += 1
            if unreplicated == UNACKNOWLEDGED:
                log.warning("ledger_answer_unreplicated", ref=entry.ref, replicas=replicas, wait_ms=self._wait_ms)

    async def _replication(self) -> int:
        """The primary's connected replicas, read (``INFO replication``, one round trip shared by the requests of
        a second, so not counted for any one of them) at most every :data:`REPLICATION_READ_EVERY`."""
        if time.monotonic() - self._read_at < REPLICATION_READ_EVERY:
            return self._replicas
        with untallied():
            try:
                info = await self._redis.info("replication")
            except ResponseError as exc:  # INFO refused (a managed Redis's ACL): WAIT on every answer, as asked
                if self._short_logged is not False:
                    log.warning("ledger_replication_unreadable", error=str(exc))
                self._short_logged, self._replicas, self._read_at = False, self._wait, time.monotonic()
                return self._replicas
        self._primary = str(info.get("master_replid") or "") or None
        self._replicas = int(info.get("connected_slaves") or 0)
        self._read_at = time.monotonic()
        short = self._replicas < self._wait
        if short != self._short_logged:  # once per change, not once per answer
            self._short_logged = short
            if short:
                log.warning("ledger_primary_short_of_replicas", replicas=self._replicas, wait_replicas=self._wait)
            else:
                log.info("ledger_primary_replicated", replicas=self._replicas, wait_replicas=self._wait)
        return self._replicas

    async def _resolve_replicated(
        self, keys: list[str], args: list[str | bytes | int]
    ) -> tuple[Any, str | None, tuple[str | None, int]]:
        """The resolve script's reply; why its record is not known to be replicated (None: it is, or no replicas
        are asked for); and the reading of the primary it was sent under (its replication id and connected
        replicas, read before the write: never of a primary later than the one written to).

        With ``wait_replicas``, ``WAIT`` follows in the same round trip (a pipeline), so the till gets an answer
        the replicas hold and a failover right after it does not lose it. A primary with fewer replicas than
        asked (a promoted one, its old primary gone) is not waited on: ``WAIT`` would spend its whole timeout on
        every answer for replicas that are not there."""
        if not self._wait:
            return await self._resolve(keys=keys, args=args), None, (None, 0)
        replicas = await self._replication()
        reading = (self._primary, replicas)  # as read (no await since): of the primary written to, or an earlier one
        if replicas < self._wait:
            return await self._resolve(keys=keys, args=args), SHORT_OF_REPLICAS, reading
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
                self._read_at = -math.inf  # a replica gone, or a failover: read the primary again next time
                return found, UNACKNOWLEDGED, reading
            return found, None, reading
        raise NoScriptError("the resolve script could not be loaded")

    async def owners(self, redemption_ids: Sequence[int]) -> dict[int, str]:
        if not redemption_ids:
            return {}
        found = await self._run(mget(self._redis, [self._bound(i) for i in redemption_ids]))
        return {i: ref.decode() for i, ref in zip(redemption_ids, found, strict=True) if ref is not None}

    async def load(self, ref: str) -> Entry | None:
        if self._cluster is not None:
            return await self._cluster.load(ref)
        raw = await self._run(self._redis.get(self._record(ref)))
        return None if raw is None else entry_decoder.decode(raw)

    async def unresolved(self) -> list[str]:
        refs = sorted(r.decode() for r in await self._run(self._redis.smembers(self._unresolved_set)))
        if not refs:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for ref in refs:  # on a Cluster, the pointer to the record (it lives as long)
                pipe.exists(self._record(ref) if self._cluster is None else self._pointer(ref))
            alive = await self._run(pipe.execute())
        gone = [ref for ref, exists in zip(refs, alive, strict=True) if not exists]
        if gone:  # expired entries leave the set too
            await self._run(self._redis.srem(self._unresolved_set, *gone))
        return [ref for ref in refs if ref not in gone]

    async def lock(self, codes: Sequence[str], owner: str, ttl: float) -> list[str]:
        if self._cluster is not None:
            return await self._cluster.lock(codes, owner, ttl)
        busy = await self._run(self._lock(keys=[self._code(c) for c in codes], args=[owner, _ms(ttl)]))
        return [codes[int(i) - 1] for i in busy]

    async def unlock(self, codes: Sequence[str], owner: str) -> None:
        if self._cluster is not None:
            await self._cluster.unlock(codes, owner)
            return
        await self._run(self._unlock(keys=[self._code(c) for c in codes], args=[owner]))

    def refusing(self) -> str | None:
        return None  # Redis holds what its memory holds; an unreachable Redis shows in ping

    async def ping(self) -> None:
        await self._run(self._redis.ping())

    async def close(self) -> None:
        if self._owned is not None:
            await self._owned.aclose()


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class _ClusterSteps:
    """The ledger's steps on a Redis Cluster, where one script or ``MULTI`` reaches one hash slot only.

    One redemption's key and record share a slot (tagged with the key's hash), so a replay is still one round
    trip and the record's state changes are still one script each. What spans slots is done in steps, ordered
    so that a crash (or a Redis error) between two steps leaves nothing unsafe:

    - begin: claim the key (record written, in its slot); list the ref as unresolved and write the pointer
      ``at:<ref>``; lock the codes, slot by slot in the codes' sorted order, each slot's all or nothing; a busy
      code rolls back the locks taken and the claim. Nothing is sent upstream before the last step. A crash
      after the claim leaves an in-flight record: a retry of the request finds it and, past its lease,
      reconciles it like any crashed request; its locks expire with their TTL.
    - resolve: bind the redemption ids (per slot, all or nothing, rolled back if a later slot refuses or the
      record turns out final already); write the record (its slot, one script: the first final answer wins);
      then leave the unresolved set and release the codes. A crash after the binding leaves ids bound to a
      request still unresolved: its reconciliation finds them its own. A resolve that stops after the record is
      completed by the next resolve of that ref (the answer then is final already; the rest is done anyway).
    - A claim whose next step fails is taken back at once (best effort), so the till's retry is not kept
      waiting for its lease.
    """

    def __init__(self, store: RedisStore) -> None:
        self._store = store
        self._redis = store._redis
        scripts = (_CLUSTER_CLAIM, _CLUSTER_LIVE, _CLUSTER_DROP, _CLUSTER_BIND, _CLUSTER_FINISH)
        self._claim, self._live, self._drop, self._bind, self._finish = map(self._redis.register_script, scripts)
        # Within one slot, the same scripts as on one Redis.
        self._unlock, self._save_open = store._unlock, store._save_unresolved
        self._read: dict[str, tuple[float, int]] = {}  # node name -> (when read, its connected replicas)

    def _prefix(self, digest: str) -> str:
        """The record keys of one idempotency key's slot: ``<prefix>rdm:{<hash>}:`` and the ref."""
        return f"{self._store._prefix}rdm:{{{digest}}}:"

    def _slots(self, keys: Sequence[str]) -> list[list[int]]:
        """Indexes of ``keys`` grouped by hash slot, in the keys' sorted order (every gateway takes the slots
        in the same order, so two requests for the same codes do not each hold half of them)."""
        groups: dict[int, list[int]] = {}
        for i in sorted(range(len(keys)), key=keys.__getitem__):
            groups.setdefault(key_slot(keys[i].encode()), []).append(i)
        return list(groups.values())

    async def _found(self, legacy_key: str | None, ref: str) -> Entry | None:
        if legacy_key is None:
            return None
        digest = _digest(legacy_key)
        found = await self._store._run(
            self._live(keys=[self._store._key(legacy_key)], args=[ref, self._prefix(digest)])
        )
        return None if found is None else entry_decoder.decode(found)

    async def claim(self, entry: Entry, ttl: float, legacy_key: str | None) -> Entry | None:
        existing = await self._found(legacy_key, entry.ref)
        if existing is not None:
            return existing
        digest = _digest(entry.key)
        record = self._prefix(digest) + entry.ref
        found = await self._store._run(
            self._claim(
                keys=[self._store._key(entry.key), record],
                args=[entry.ref, entry_encoder.encode(entry), _ms(ttl), self._prefix(digest)],
            )
        )
        if found is not None:
            return entry_decoder.decode(found)
        async with self._redis.pipeline(transaction=False) as pipe:  # one command per slot, sent together
            pipe.sadd(self._store._unresolved_set, entry.ref)
            pipe.set(self._store._pointer(entry.ref), digest, px=_ms(ttl))
            try:
                await self._store._run(pipe.execute())
            except StoreUnavailable:
                with contextlib.suppress(StoreUnavailable):  # else the till's retry waits out the claim's lease
                    await self._undo(entry)
                raise
        return None

    async def begin(
        self, entry: Entry, ttl: float, lock_ttl: float, legacy_key: str | None
    ) -> tuple[Entry | None, list[str]]:
        existing = await self.claim(entry, ttl, legacy_key)
        if existing is not None:
            return existing, []
        try:
            busy = await self.lock(entry.command.codes, entry.ref, lock_ttl)
        except StoreUnavailable:
            with contextlib.suppress(StoreUnavailable):  # best effort: else the claim's lease runs out
                await self._undo(entry)
            raise
        if busy:
            await self._undo(entry)
        return None, busy

    async def _undo(self, entry: Entry) -> None:
        """Take back a claim whose codes were not locked: nothing was sent, so nothing of it is kept."""
        digest = _digest(entry.key)
        await self._store._run(
            self._drop(keys=[self._store._key(entry.key), self._prefix(digest) + entry.ref], args=[entry.ref])
        )
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.srem(self._store._unresolved_set, entry.ref)
            pipe.delete(self._store._pointer(entry.ref))
            await self._store._run(pipe.execute())

    async def lock(self, codes: Sequence[str], owner: str, ttl: float) -> list[str]:
        """Slot by slot; a busy code gives back what this call took (not what ``owner`` held before it)."""
        keys = [self._store._code(c) for c in codes]
        taken: list[str] = []
        for group in self._slots(keys):
            mine = [keys[i] for i in group]
            try:  # a lock is a binding of the code to its owner: the same script, never forced
                reply = await self._store._run(self._bind(keys=mine, args=[owner, _ms(ttl), "0"]))
            except StoreUnavailable:
                await self._release_ids(taken, owner)
                raise
            if int(reply[0]) == 0:
                await self._release_ids(taken, owner)
                busy = list(reply[1])[0::2]  # (index, holder) pairs
                return [codes[group[int(i) - 1]] for i in busy]
            taken += [mine[int(i) - 1] for i in reply[2] or []]
        return []

    async def unlock(self, codes: Sequence[str], owner: str) -> None:
        keys = [self._store._code(c) for c in codes]
        groups = [[keys[i] for i in group] for group in self._slots(keys)]
        await asyncio.gather(*(self._store._run(self._unlock(keys=g, args=[owner])) for g in groups))

    async def save(self, entry: Entry, ttl: float) -> None:
        record = self._prefix(_digest(entry.key)) + entry.ref
        unresolved = entry.state in UNRESOLVED_STATES
        if unresolved:  # listed first: an unresolved record is never out of the sweeper's sight
            await self._store._run(self._redis.sadd(self._store._unresolved_set, entry.ref))
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(record, entry_encoder.encode(entry), px=_ms(ttl))
            pipe.set(self._store._pointer(entry.ref), _digest(entry.key), px=_ms(ttl))
            await self._store._run(pipe.execute())
        if not unresolved:
            await self._store._run(self._redis.srem(self._store._unresolved_set, entry.ref))

    async def save_unresolved(self, entry: Entry, ttl: float) -> Entry | None:
        record = self._prefix(_digest(entry.key)) + entry.ref
        args: list[str | bytes | int] = [entry.ref, entry_encoder.encode(entry), _ms(ttl)]
        found = await self._store._run(self._save_open(keys=[record], args=args))
        if found is not None:
            return entry_decoder.decode(found)
        await self._store._run(self._redis.sadd(self._store._unresolved_set, entry.ref))  # listed since begin
        return None

    async def resolve(
        self,
        entry: Entry,
        ids: list[int],
        ttl: float,
        *,
        force: bool,
        unlock: bool,
        keep_final: bool,
        again: bool = False,
    ) -> Resolution:
        digest = _digest(entry.key)
        record = self._prefix(digest) + entry.ref
        bound, taken = await self._bind_ids(entry.ref, ids, ttl, force)
        refused = bool(taken) and not force  # nothing bound
        if refused and not keep_final:
            current = await self.load(entry.ref)
            if current is not None and current.state in ("done", "failed"):
                return Resolution(False, current=current)
            return Resolution(False, taken=taken)
        # keep_final and refused: a final record that stands is still written again (WAIT then covers it).
        args: list[str | bytes | int] = [entry.ref, entry_encoder.encode(entry), _ms(ttl), entry.state]
        args += [_mode(force, keep_final), 1 if refused else 0]
        try:
            found, unreplicated, (primary, replicas) = await self._finish_replicated(
                [self._store._key(entry.key), record], args
            )
        except StoreUnavailable:
            await self._release_ids(bound, entry.ref)
            raise
        if isinstance(found, int):  # refused: no final record there, and an id is another ref's
            return Resolution(False, taken=taken, unreplicated=unreplicated, primary=primary)
        self._store._note(entry, unreplicated, replicas, again)
        if found is not None and not keep_final:  # another answer was recorded first: it wins, and the ids go back
            await self._release_ids(bound, entry.ref)  # (written again, the record found is this answer: kept)
        # Also after an answer recorded first: its own resolve may have stopped before these steps.
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.srem(self._store._unresolved_set, entry.ref)
            pipe.set(self._store._pointer(entry.ref), digest, px=_ms(ttl))
            await self._store._run(pipe.execute())
        if unlock:
            await self.unlock(entry.command.codes, entry.ref)
        if found is not None:
            return Resolution(False, entry_decoder.decode(found), unreplicated=unreplicated, primary=primary)
        return Resolution(True, taken=taken, unreplicated=unreplicated, primary=primary)

    async def _finish_replicated(
        self, keys: list[str], args: list[str | bytes | int]
    ) -> tuple[Any, str | None, tuple[str | None, int]]:
        """The record's script and, with ``wait_replicas``, ``WAIT`` after it on the node that serves the record's
        slot: both written at once on one connection taken from that node's pool, so that ``WAIT`` waits for this
        very write. Sent once, neither routed nor retried by the cluster client (its pipeline, sent again after a
        connection error, routes a keyless ``WAIT`` to its default node, which then counts nothing of this
        write). Any failure there: written the ordinary way (which follows the cluster and learns its slots
        again), and the answer is reported unacknowledged, so it is kept and written again later, ``WAIT`` and
        all. As :meth:`RedisStore._resolve_replicated`, with the node's name as the primary (a failover puts
        another node in its place) and its connected replicas read at most once a second."""
        store = self._store
        if not store._wait:
            return await store._run(self._finish(keys=keys, args=args)), None, (None, 0)
        cluster: Any = self._redis
        try:
            node = cluster.get_node_from_key(keys[1])  # the primary of the record's slot, as this client knows it
        except (RedisError, RedisClusterException):  # its slots not known (yet): the ordinary way finds them
            return await store._run(self._finish(keys=keys, args=args)), UNACKNOWLEDGED, (None, 0)
        replicas = await self._replicas_of(node)
        reading = (str(node.name), replicas)
        if replicas < store._wait:
            return await store._run(self._finish(keys=keys, args=args)), SHORT_OF_REPLICAS, reading
        for _ in range(2):
            script = PipelineCommand(0, "EVALSHA", self._finish.sha, len(keys), *keys, *args)
            wait = PipelineCommand(1, "WAIT", store._wait, store._wait_ms)
            found: Any
            acked: Any
            try:
                await node.execute_pipeline([script, wait])
                found, acked = script.result, wait.result
            except (RedisError, RedisClusterException, OSError) as exc:  # not connected, or not all sent
                found, acked = exc, None
            if isinstance(found, NoScriptError):
                await store._run(cluster.script_load(_CLUSTER_FINISH))
                continue
            if isinstance(found, Exception):
                # Not that node's slot any more (MOVED, a failover), or that node not reached: written the
                # ordinary way; WAIT there would count nothing of this write, so it is kept and written again
                # later. (Landed after all, the script sent again finds this very answer recorded.)
                self._read.pop(str(node.name), None)
                found = await store._run(self._finish(keys=keys, args=args))
                return found, UNACKNOWLEDGED, reading
            if isinstance(acked, Exception) or int(acked) < store._wait:
                self._read.pop(str(node.name), None)  # a replica gone, or a failover: read this node again
                return found, UNACKNOWLEDGED, reading
            return found, None, reading
        raise StoreUnavailable("redis: the finish script could not be loaded")

    async def _replicas_of(self, node: Any) -> int:
        """The connected replicas of ``node`` (``INFO replication`` there), read at most every
        :data:`REPLICATION_READ_EVERY`; a node that refuses ``INFO`` is taken to have as many as asked."""
        name, now = str(node.name), time.monotonic()
        read = self._read.get(name)
        if read is not None and now - read[0] < REPLICATION_READ_EVERY:
            return read[1]
        cluster: Any = self._redis
        with untallied():
            try:
                info = await self._store._run(cluster.info("replication", target_nodes=node))
                replicas = int(info.get("connected_slaves") or 0)
            except StoreUnavailable as exc:
                if not isinstance(exc.__cause__, ResponseError):
                    raise
                replicas = self._store._wait
        self._read[name] = (now, replicas)
        return replicas

    async def _bind_ids(self, ref: str, ids: list[int], ttl: float, force: bool) -> tuple[list[str], dict[int, str]]:
        """Bind ``ids`` to ``ref``, slot by slot: (the keys newly bound, the ids another ref held). Unless
        ``force``, an id held by another ref binds none of them (those bound already are released)."""
        keys = [self._store._bound(i) for i in ids]
        bound: list[str] = []
        taken: dict[int, str] = {}
        for group in self._slots(keys):
            mine = [keys[i] for i in group]
            try:
                reply = await self._store._run(self._bind(keys=mine, args=[ref, _ms(ttl), "1" if force else "0"]))
            except StoreUnavailable:
                await self._release_ids(bound, ref)
                raise
            pairs = list(reply[1] or [])
            taken |= {ids[group[int(pairs[i]) - 1]]: pairs[i + 1].decode() for i in range(0, len(pairs), 2)}
            if int(reply[0]) == 0:
                await self._release_ids(bound, ref)
                owners = await self._store.owners(ids)  # every id held by another ref, as one Redis tells
                return [], {i: o for i, o in owners.items() if o != ref} or taken
            bound += [mine[int(i) - 1] for i in reply[2] or []]
        return bound, taken

    async def _release_ids(self, keys: list[str], ref: str) -> None:
        """Release these keys (redemption ids or code locks) where ``ref`` holds them, slot by slot."""
        if not keys:
            return
        groups: dict[int, list[str]] = {}
        for key in keys:
            groups.setdefault(key_slot(key.encode()), []).append(key)
        for group in groups.values():
            with contextlib.suppress(StoreUnavailable):  # else they stay held until their TTL
                await self._store._run(self._unlock(keys=group, args=[ref]))

    async def load(self, ref: str) -> Entry | None:
        digest = await self._store._run(self._redis.get(self._store._pointer(ref)))
        if digest is None:
            return None
        raw = await self._store._run(self._redis.get(self._prefix(digest.decode()) + ref))
        return None if raw is None else entry_decoder.decode(raw)
