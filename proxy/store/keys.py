"""Proxy keys issued through the admin API, stored by name with their sha256 only.

`SqliteKeyStore` (the shared db file) and `RedisKeyStore` (a hash `P:keys`
name -> policy JSON, and `P:keyhash` sha256 -> name) hold the same thing, so a key
issued on one process or replica is found by the others.

A key's name is its tenant identity (thread owner, stats scope, spend, default cache
namespace), so a name is issued once: both stores keep every name ever issued or
reserved (table `proxy_key_names`, set `P:keynames`) and that record outlives revocation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, Protocol

import aiosqlite
import orjson
from redis.asyncio import Redis

from proxy.config import KeyConfig
from proxy.store.redis_client import text

_SCHEMA = """
CREATE TABLE IF NOT EXISTS proxy_keys (
    name TEXT PRIMARY KEY, sha256 TEXT NOT NULL UNIQUE, policy TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS proxy_key_names (name TEXT PRIMARY KEY);
INSERT OR IGNORE INTO proxy_key_names SELECT name FROM proxy_keys;
"""
# KEYS names hashes ever; ARGV name sha256 policy. 1: issued; 0: the name is or was taken.
_CREATE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 or redis.call('SADD', KEYS[3], ARGV[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
return 1
"""


def key_to_json(key: KeyConfig) -> bytes:
    """A key's policy (with its hash, never the secret) as JSON."""
    return orjson.dumps(dataclasses.asdict(key))


def key_from_json(data: bytes | str) -> KeyConfig:
    """The KeyConfig stored by `key_to_json`."""
    fields: dict[str, Any] = orjson.loads(data)
    models = fields.get("allowed_models")
    fields["allowed_models"] = tuple(models) if models is not None else None
    return KeyConfig(**fields)


class KeyStore(Protocol):
    """Keys issued at run time."""

    async def create(self, key: KeyConfig) -> bool:
        """Issue a key under a name never issued before; False when the name is or was taken."""
        ...

    async def reserve(self, names: Iterable[str]) -> None:
        """Record names as taken without issuing keys (config.toml's, kept if removed later)."""
        ...

    async def put(self, key: KeyConfig) -> None:
        """Create or replace the key called `key.name`."""
        ...

    async def by_hash(self, sha256: str) -> KeyConfig | None:
        """The key with this sha256, if issued."""
        ...

    async def by_name(self, name: str) -> KeyConfig | None:
        """The key called `name`, if issued."""
        ...

    async def all(self) -> list[KeyConfig]:
        """Every issued key, by name."""
        ...

    async def delete(self, name: str) -> bool:
        """Revoke a key; False when there was none."""
        ...


class SqliteKeyStore:
    """KeyStore in the proxy's sqlite database."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    async def start(self) -> None:
        """Create the table if needed."""
        await self.db.executescript(_SCHEMA)

    async def create(self, key: KeyConfig) -> bool:
        """Issue a key under a name never issued before; False when the name is or was taken."""
        claimed = await self.db.execute("INSERT OR IGNORE INTO proxy_key_names VALUES (?)",
                                        (key.name,))
        if claimed.rowcount == 0:
            return False
        await self.put(key)
        return True

    async def reserve(self, names: Iterable[str]) -> None:
        """Record names as taken without issuing keys (config.toml's, kept if removed later)."""
        await self.db.executemany("INSERT OR IGNORE INTO proxy_key_names VALUES (?)",
                                  [(name,) for name in names])

    async def put(self, key: KeyConfig) -> None:
        """Create or replace the key called `key.name`."""
        await self.db.execute("INSERT OR REPLACE INTO proxy_keys VALUES (?, ?, ?)",
                              (key.name, key.sha256, key_to_json(key).decode()))

    async def _one(self, column: str, value: str) -> KeyConfig | None:
        async with self.db.execute(f"SELECT policy FROM proxy_keys WHERE {column} = ?",
                                   (value,)) as cur:
            row = await cur.fetchone()
        return key_from_json(row[0]) if row else None

    async def by_hash(self, sha256: str) -> KeyConfig | None:
        """The key with this sha256, if issued."""
        return await self._one("sha256", sha256)

    async def by_name(self, name: str) -> KeyConfig | None:
        """The key called `name`, if issued."""
        return await self._one("name", name)

    async def all(self) -> list[KeyConfig]:
        """Every issued key, by name."""
        async with self.db.execute("SELECT policy FROM proxy_keys ORDER BY name") as cur:
            return [key_from_json(row[0]) for row in await cur.fetchall()]

    async def delete(self, name: str) -> bool:
        """Revoke a key; False when there was none."""
        cur = await self.db.execute("DELETE FROM proxy_keys WHERE name = ?", (name,))
        return cur.rowcount > 0


class RedisKeyStore:
    """KeyStore in Redis, shared by every replica."""

    def __init__(self, client: Redis, prefix: str) -> None:
        self.client = client
        self.names = f"{prefix}keys"
        self.hashes = f"{prefix}keyhash"
        self.ever = f"{prefix}keynames"
        self._create = client.register_script(_CREATE)

    async def aclose(self) -> None:
        """Close the client's connections."""
        await self.client.aclose()

    async def create(self, key: KeyConfig) -> bool:
        """Issue a key under a name never issued before; False when the name is or was taken."""
        issued = await self._create(keys=[self.names, self.hashes, self.ever],
                                    args=[key.name, key.sha256, key_to_json(key)])
        return bool(issued)

    async def reserve(self, names: Iterable[str]) -> None:
        """Record names as taken without issuing keys (config.toml's, kept if removed later)."""
        taken = list(names)
        if taken:
            await self.client.sadd(self.ever, *taken)

    async def put(self, key: KeyConfig) -> None:
        """Create or replace the key called `key.name`."""
        old = await self.by_name(key.name)
        async with self.client.pipeline(transaction=True) as pipe:
            if old is not None and old.sha256 != key.sha256:
                pipe.hdel(self.hashes, old.sha256)
            pipe.hset(self.names, key.name, key_to_json(key))
            pipe.hset(self.hashes, key.sha256, key.name)
            await pipe.execute()

    async def by_hash(self, sha256: str) -> KeyConfig | None:
        """The key with this sha256, if issued."""
        name = await self.client.hget(self.hashes, sha256)
        return await self.by_name(text(name)) if name else None

    async def by_name(self, name: str) -> KeyConfig | None:
        """The key called `name`, if issued."""
        data = await self.client.hget(self.names, name)
        return key_from_json(data) if data else None

    async def all(self) -> list[KeyConfig]:
        """Every issued key, by name."""
        stored = await self.client.hgetall(self.names)
        return sorted((key_from_json(v) for v in stored.values()), key=lambda k: k.name)

    async def delete(self, name: str) -> bool:
        """Revoke a key; False when there was none."""
        old = await self.by_name(name)
        if old is None:
            return False
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hdel(self.names, name)
            pipe.hdel(self.hashes, old.sha256)
            pipe.sadd(self.ever, name)  # also for keys issued before names were recorded
            await pipe.execute()
        return True
