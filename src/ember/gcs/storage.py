"""Table storage behind the control service.

Tables are namespaced key/value maps of bytes. ``InMemoryStorage`` is used
for clusters started by ``ember.init()``; persistent backends plug in here.
"""

from __future__ import annotations


class InMemoryStorage:
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
