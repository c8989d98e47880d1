"""Table storage behind the control service.

Tables are namespaced maps of bytes to bytes. Backends:

* ``InMemoryStorage`` — clusters started by ``ember.init()`` (they end with
  their driver, so nothing needs to survive);
* ``SqliteStorage`` — the default for ``ember start --head``: one file in the
  session folder; every write is committed before the control service
  answers, so a restarted head resumes with every acknowledged write;
* ``RedisStorage`` — ``--storage redis://host:port/db`` for an external store.

``open_storage(url)`` picks the backend from a URL: ``memory://``,
``sqlite:///path/to/file.db``, ``redis://...``.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any, Protocol, cast


class Storage(Protocol):
    def get(self, table: str, key: bytes) -> bytes | None: ...
    def put(self, table: str, key: bytes, value: bytes, overwrite: bool = True) -> bool: ...
    def delete(self, table: str, key: bytes) -> bool: ...
    def keys(self, table: str, prefix: bytes = b"") -> list[bytes]: ...
    def items(self, table: str) -> list[tuple[bytes, bytes]]: ...
    def close(self) -> None: ...


class InMemoryStorage:
    persistent = False

    def __init__(self) -> None:
        self._tables: dict[str, dict[bytes, bytes]] = {}

    def get(self, table: str, key: bytes) -> bytes | None:
        return self._tables.get(table, {}).get(key)

    def put(self, table: str, key: bytes, value: bytes, overwrite: bool = True) -> bool:
        rows = self._tables.setdefault(table, {})
        if not overwrite and key in rows:
            return False
        rows[key] = value
        return True

    def delete(self, table: str, key: bytes) -> bool:
        return self._tables.get(table, {}).pop(key, None) is not None

    def keys(self, table: str, prefix: bytes = b"") -> list[bytes]:
        return [k for k in self._tables.get(table, {}) if k.startswith(prefix)]

    def items(self, table: str) -> list[tuple[bytes, bytes]]:
        return list(self._tables.get(table, {}).items())

    def close(self) -> None:
        pass


class SqliteStorage:
    persistent = True

    def __init__(self, path: str) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        # A process crash (SIGKILL) cannot lose a committed write in WAL mode with NORMAL.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS rows (tbl TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL, "
            "PRIMARY KEY (tbl, key)) WITHOUT ROWID"
        )

    def get(self, table: str, key: bytes) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM rows WHERE tbl=? AND key=?", (table, key)).fetchone()
        return None if row is None else bytes(row[0])

    def put(self, table: str, key: bytes, value: bytes, overwrite: bool = True) -> bool:
        verb = "INSERT OR REPLACE" if overwrite else "INSERT OR IGNORE"
        with self._lock:
            cur = self._db.execute(f"{verb} INTO rows (tbl, key, value) VALUES (?, ?, ?)", (table, key, value))
        return cur.rowcount > 0

    def delete(self, table: str, key: bytes) -> bool:
        with self._lock:
            cur = self._db.execute("DELETE FROM rows WHERE tbl=? AND key=?", (table, key))
        return cur.rowcount > 0

    def keys(self, table: str, prefix: bytes = b"") -> list[bytes]:
        with self._lock:
            rows = self._db.execute("SELECT key FROM rows WHERE tbl=?", (table,)).fetchall()
        return [bytes(r[0]) for r in rows if bytes(r[0]).startswith(prefix)]

    def items(self, table: str) -> list[tuple[bytes, bytes]]:
        with self._lock:
            rows = self._db.execute("SELECT key, value FROM rows WHERE tbl=?", (table,)).fetchall()
        return [(bytes(k), bytes(v)) for k, v in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class RedisStorage:
    persistent = True

    def __init__(self, url: str) -> None:
        import redis

        self._redis = redis.Redis.from_url(url)
        self._redis.ping()

    @staticmethod
    def _name(table: str) -> str:
        return f"ember:{table}"

    def get(self, table: str, key: bytes) -> bytes | None:
        return self._redis.hget(self._name(table), key)  # type: ignore[return-value]

    def put(self, table: str, key: bytes, value: bytes, overwrite: bool = True) -> bool:
        if overwrite:
            self._redis.hset(self._name(table), key, value)
            return True
        return bool(self._redis.hsetnx(self._name(table), key, value))

    def delete(self, table: str, key: bytes) -> bool:
        return bool(self._redis.hdel(self._name(table), key))

    def keys(self, table: str, prefix: bytes = b"") -> list[bytes]:
        # A client without decode_responses answers bytes (redis's types say bytes | str).
        keys = cast("list[bytes]", self._redis.hkeys(self._name(table)))
        return [k for k in keys if k.startswith(prefix)]

    def items(self, table: str) -> list[tuple[bytes, bytes]]:
        rows = cast("dict[bytes, bytes]", self._redis.hgetall(self._name(table)))
        return list(rows.items())

    def close(self) -> None:
        self._redis.close()


def open_storage(url: str) -> Any:
    if not url or url == "memory://":
        return InMemoryStorage()
    if url.startswith("sqlite:///"):
        return SqliteStorage(url[len("sqlite://"):])
    if url.startswith("redis://") or url.startswith("rediss://"):
        return RedisStorage(url)
    raise ValueError(f"unknown storage {url!r}: use memory://, sqlite:///path or redis://host:port")
