"""The state API's filters ``[(key, "=" | "!=", value)]``: validation and matching, shared by
the control service (task events) and ``ember.util.state`` (every other resource)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

PREDICATES = ("=", "!=")


def matches(value: Any, op: str, wanted: str) -> bool:
    """Compare as text, as Ray does; case-insensitive so ``state=running`` finds RUNNING."""
    text = "" if value is None else str(value)
    equal = text == wanted or text.lower() == wanted.lower()
    return equal if op == "=" else not equal


def check_filters(filters: Iterable[Any] | None, fields: Iterable[str]) -> list[tuple[str, str, str]]:
    """Validated ``[(key, op, value)]``; ``ValueError`` says what is wrong."""
    known = frozenset(fields)
    out = []
    for item in filters or ():
        if not isinstance(item, (list, tuple)) or len(item) != 3:
            raise ValueError(f"a filter is (key, predicate, value), got {item!r}")
        key, op, value = item
        if op not in PREDICATES:
            raise ValueError(f"unsupported predicate {op!r} in filter {key}{op}{value} (use = or !=)")
        if key not in known:
            raise ValueError(f"cannot filter on {key!r}; fields: {', '.join(sorted(known))}")
        out.append((str(key), str(op), str(value)))
    return out


def apply(rows: Iterable[dict[str, Any]], filters: list[tuple[str, str, str]], limit: int) -> tuple[list[dict[str, Any]], int]:
    """Rows matching every filter, at most ``limit`` of them, and how many matched in all."""
    out: list[dict[str, Any]] = []
    total = 0
    for row in rows:
        if all(matches(row.get(k), op, v) for k, op, v in filters):
            total += 1
            if len(out) < limit:
                out.append(row)
    return out, total
