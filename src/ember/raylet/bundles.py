"""Placement-group bundles on one node: reserve, commit, remove.

``prepare`` takes a bundle's resources out of the node's free pool (the
reservation); ``cancel`` gives them back; ``commit`` turns the reservation
into renamed resources that only tasks and actors of that group request
(``CPU_group_<i>_<pg>``, ``CPU_group_<pg>``, ``bundle_group_<i>_<pg>``,
``bundle_group_<pg>``); ``remove`` ends the workers using them and returns
the original resources to the pool.
"""

from __future__ import annotations

from typing import Any

from ember._private import resources as res
from ember._private.placement_policy import bundle_marker, group_resource_names

#: Amount of the ``bundle_group_*`` marker resource one bundle provides.
MARKER_AMOUNT = 1000 * res.UNIT


class BundleManager:
    def __init__(self, total: res.Resources, available: res.Resources) -> None:
        self.total = total
        self.available = available
        self.prepared: dict[tuple[bytes, int], res.Resources] = {}
        self.committed: dict[tuple[bytes, int], res.Resources] = {}

    def prepare(self, pg_id: bytes, index: int, amounts: dict[str, Any]) -> None:
        key = (pg_id, index)
        if key in self.prepared or key in self.committed:
            return
        need = res.to_fixed(amounts)
        if not res.fits(need, self.available):
            raise ValueError(
                f"not enough free resources for bundle {index}: need {res.describe(need)}, "
                f"free {res.describe({k: v for k, v in self.available.items() if v > 0})}"
            )
        res.subtract(self.available, need)
        self.prepared[key] = need

    def cancel(self, pg_id: bytes, index: int) -> None:
        need = self.prepared.pop((pg_id, index), None)
        if need is not None:
            res.add(self.available, need)

    def commit(self, pg_id: bytes, index: int) -> None:
        key = (pg_id, index)
        need = self.prepared.pop(key, None)
        if need is None:
            if key in self.committed:
                return
            raise ValueError(f"bundle {index} of placement group {pg_id.hex()[:12]} was not prepared here")
        self.committed[key] = need
        for name, amount in self._group_amounts(pg_id, index, need).items():
            self.total[name] = self.total.get(name, 0) + amount
            self.available[name] = self.available.get(name, 0) + amount

    def remove(self, pg_id: bytes, index: int) -> bool:
        """Undo a bundle; True if it was committed (its workers must be ended by the caller)."""
        self.cancel(pg_id, index)
        need = self.committed.pop((pg_id, index), None)
        if need is None:
            return False
        for name, amount in self._group_amounts(pg_id, index, need).items():
            self.total[name] = self.total.get(name, 0) - amount
            self.available[name] = self.available.get(name, 0) - amount
            if self.total[name] <= 0:
                self.total.pop(name, None)
                self.available.pop(name, None)
        res.add(self.available, need)
        return True

    @staticmethod
    def _group_amounts(pg_id: bytes, index: int, need: res.Resources) -> res.Resources:
        pg_hex = pg_id.hex()
        out: res.Resources = {}
        for name, amount in need.items():
            indexed, wildcard = group_resource_names(pg_hex, index, name)
            out[indexed] = out.get(indexed, 0) + amount
            out[wildcard] = out.get(wildcard, 0) + amount
        out[bundle_marker(pg_hex, index)] = MARKER_AMOUNT
        out[bundle_marker(pg_hex)] = out.get(bundle_marker(pg_hex), 0) + MARKER_AMOUNT
        return out


def uses_group(resources: res.Resources, pg_id: bytes) -> bool:
    suffix = pg_id.hex()
    return any(name.endswith(suffix) for name in resources)
