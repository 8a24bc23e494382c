"""API keys: only their SHA-256 at rest, each bound to a store (and optionally a till) with scopes.

The key file is a JSON list of ``{"keySha256", "name", "store", "till"?, "scopes": ["redeem", "admin"],
"ratePerSecond"?, "burst"?}``. It is
read at start (a bad file stops the process) and re-read on SIGHUP or when it changes (a bad file then keeps
the keys in force and logs why).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Final, Literal

import msgspec
import structlog
from aiohttp import web

log = structlog.get_logger("service.access")

Scope = Literal["redeem", "admin"]
SCOPES: Final = ("redeem", "admin")

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:@-]+$")]
#: A store or till code: no ":", which separates the parts of the ledger's keys.
_CODE = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$")]


class KeyFileError(ValueError):
    """The key file cannot be used; the message says which entry and why."""


class _KeyIn(msgspec.Struct, forbid_unknown_fields=True, rename="camel", kw_only=True):
    key_sha256: str
    name: _NAME
    store: _CODE
    till: _CODE | None = None
    scopes: Annotated[list[Scope], msgspec.Meta(min_length=1)]
    rate_per_second: Annotated[float, msgspec.Meta(gt=0, le=100_000)] | None = None
    burst: Annotated[float, msgspec.Meta(ge=1, le=1_000_000)] | None = None


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    store: str
    till: str | None
    scopes: frozenset[str]
    digest: bytes
    rate_per_second: float | None = None  # this key's own limit, instead of the gateway's default
    burst: float | None = None

    def allows(self, scope: str) -> bool:
        """``admin`` may do everything; ``redeem`` only the POS routes."""
        return "admin" in self.scopes or scope in self.scopes


#: The API key a request was made with, once the gate has admitted it (read by handlers, logs and traces).
API_KEY: Final = web.RequestKey("api_key", ApiKey)


def digest_of(secret: str) -> bytes:
    # surrogateescape: header bytes that are not UTF-8 still hash (to no key) instead of failing the request
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


def parse_keys(raw: bytes) -> dict[bytes, ApiKey]:
    try:
        entries = msgspec.json.decode(raw, type=list[_KeyIn])
    except msgspec.DecodeError as exc:
        raise KeyFileError(f"not a JSON list of keys: {exc}") from None
    keys: dict[bytes, ApiKey] = {}
    names: set[str] = set()
    for index, entry in enumerate(entries):
        digest_hex = entry.key_sha256.lower()
        if not _HEX64.match(digest_hex):
            raise KeyFileError(f"$[{index}].keySha256: 64 hex digits (the SHA-256 of the key), not the key itself")
        digest = bytes.fromhex(digest_hex)
        if digest in keys:
            raise KeyFileError(f"$[{index}].keySha256: the same key is listed twice")
        if entry.name in names:
            raise KeyFileError(f"$[{index}].name: {entry.name!r} is used twice")
        names.add(entry.name)
        keys[digest] = ApiKey(
            entry.name, entry.store, entry.till, frozenset(entry.scopes), digest, entry.rate_per_second, entry.burst
        )
    return keys


def key_entry(
    secret: str, *, name: str, store: str, scopes: Iterable[str], till: str | None = None
) -> dict[str, object]:
    """One entry of a key file for ``secret`` (for tooling and tests)."""
    entry: dict[str, object] = {
        "keySha256": hashlib.sha256(secret.encode()).hexdigest(),
        "name": name,
        "store": store,
        "scopes": list(scopes),
    }
    if till is not None:
        entry["till"] = till
    return entry


_NO_MATCH: Final = bytes(32)


class KeyRing:
    """The keys in force. ``find`` hashes what the client sent and compares digests in constant time."""

    def __init__(self, keys: dict[bytes, ApiKey], path: str | None = None) -> None:
        self._keys = keys
        self._path = path
        self._seen = self._stamp()
        self.reloads = 0
        self.reload_errors = 0

    @classmethod
    def load(cls, path: str) -> KeyRing:
        try:
            with open(path, "rb") as file:
                raw = file.read()
        except OSError as exc:
            raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None
        return cls(parse_keys(raw), path)

    @classmethod
    def of(cls, *keys: ApiKey) -> KeyRing:
        return cls({k.digest: k for k in keys})

    def __len__(self) -> int:
        return len(self._keys)

    def find(self, secret: str) -> ApiKey | None:
        digest = digest_of(secret)
        key = self._keys.get(digest)
        # The table is keyed by the digest, never the secret, and the digests are compared in constant time.
        matched = hmac.compare_digest(key.digest if key is not None else _NO_MATCH, digest)
        return key if matched else None

    def _stamp(self) -> tuple[int, int, int] | None:
        if self._path is None:
            return None
        try:
            info = os.stat(self._path)
        except OSError:
            return None
        return info.st_mtime_ns, info.st_size, info.st_ino

    def reload(self, *, force: bool = True) -> bool:
        """Re-read the file (``force``, on SIGHUP) or only if it changed. A bad file keeps the keys in force."""
        if self._path is None:
            return False
        stamp = self._stamp()
        if not force and stamp == self._seen:
            return False
        self._seen = stamp
        try:
            fresh = KeyRing.load(self._path)
        except KeyFileError as exc:
            self.reload_errors += 1
            log.error("api_keys_not_reloaded", reason=str(exc), keys_in_force=len(self._keys))
            return False
        self._keys = fresh._keys
        self.reloads += 1
        log.info("api_keys_reloaded", keys=len(self._keys))
        return True

    async def watch(self, interval: float) -> None:
        """Re-read the file whenever it changes (a mounted Secret is updated in place)."""
        while True:
            await asyncio.sleep(interval)
            self.reload(force=False)
