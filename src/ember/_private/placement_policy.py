"""Choosing nodes for the bundles of a placement group: a pure function.

``place(bundles, strategy, available)`` returns one node id per bundle, or
None when the group cannot be placed now. ``available`` maps node id to its
free resources (fixed point, see ``_private.resources``).

* STRICT_PACK:   every bundle on one node.
* PACK:          one node if possible, else as few nodes as possible.
* STRICT_SPREAD: every bundle on a different node.
* SPREAD:        different nodes where possible, sharing only when needed.

``round_robin`` is the SPREAD choice of a node for one task or actor (node daemons, the
control service's actor placement).
"""

from __future__ import annotations

from collections.abc import Iterable

from ember._private import resources as res

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
#: Reserved (as in Ray): the marker resource of placed bundles (``bundle_group_*``); neither a
#: bundle nor a task may name it.
BUNDLE_RESOURCE = "bundle"


def round_robin(candidates: Iterable[bytes], last: bytes | None) -> bytes:
    """SPREAD's choice among ``candidates`` (not empty): the first node id after ``last``, wrapping.

    Only the last pick is remembered, never a count per node: a node that had no room (or had
    not joined yet) for a while is not owed the picks it missed, so the next burst of requests
    is spread over every candidate instead of all going to it until it catches up.
    """
    ordered = sorted(candidates)
    if last is not None:
        for node_id in ordered:
            if node_id > last:
                return node_id
    return ordered[0]


def _total(bundles: list[res.Resources]) -> res.Resources:
    out: res.Resources = {}
    for bundle in bundles:
        res.add(out, bundle)
    return out


def _free(node_avail: res.Resources) -> int:
    return sum(v for k, v in node_avail.items() if not k.startswith("node:"))


def place(bundles: list[res.Resources], strategy: str, available: dict[bytes, res.Resources]) -> list[bytes] | None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown placement strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    avail = {node: dict(r) for node, r in available.items()}
    order = sorted(avail, key=lambda n: (-_free(avail[n]), n))
    if strategy in ("STRICT_PACK", "PACK"):
        need = _total(bundles)
        for node in order:
            if res.fits(need, avail[node]):
                return [node] * len(bundles)
        if strategy == "STRICT_PACK":
            return None
    # Largest bundles first makes greedy assignment fail less often.
    indexed = sorted(range(len(bundles)), key=lambda i: -sum(bundles[i].values()))
    result: list[bytes | None] = [None] * len(bundles)
    used: dict[bytes, int] = {}
    for i in indexed:
        bundle = bundles[i]
        candidates = [n for n in order if res.fits(bundle, avail[n])]
        if strategy == "STRICT_SPREAD":
            candidates = [n for n in candidates if n not in used]
        if not candidates:
            return None
        if strategy == "PACK":
            # Prefer a node already in use, then the one with most room.
            candidates.sort(key=lambda n: (n not in used, -_free(avail[n])))
        else:
            candidates.sort(key=lambda n: (used.get(n, 0), -_free(avail[n])))
        node = candidates[0]
        res.subtract(avail[node], bundle)
        used[node] = used.get(node, 0) + 1
        result[i] = node
    return [n for n in result if n is not None] if all(n is not None for n in result) else None


def group_resource_names(pg_hex: str, index: int, name: str) -> tuple[str, str]:
    """Ray's names for a bundle's share of resource ``name``: (indexed, wildcard)."""
    return f"{name}_group_{index}_{pg_hex}", f"{name}_group_{pg_hex}"


def bundle_marker(pg_hex: str, index: int = -1) -> str:
    return f"bundle_group_{index}_{pg_hex}" if index >= 0 else f"bundle_group_{pg_hex}"
