"""Accounting for the node's shared-memory object store.

Workers write object files themselves (no copy through this daemon); they
first *reserve* room here, then report the object *sealed*. This module
decides whether an object fits, remembers who owns each object, and deletes
files when owners free them or die.
"""

from __future__ import annotations

import logging
import os
import shutil

from ember.exceptions import ObjectStoreFullError

logger = logging.getLogger(__name__)


def _fmt(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


class ObjectEntry:
    __slots__ = ("size", "owner", "sealed")

    def __init__(self, size: int, owner: bytes) -> None:
        self.size = size
        self.owner = owner
        self.sealed = False


class ObjectStore:
    def __init__(self, directory: str, capacity: int) -> None:
        self.directory = directory
        self.capacity = capacity
        self.used = 0
        self.objects: dict[bytes, ObjectEntry] = {}
        os.makedirs(directory, exist_ok=True)

    def path(self, object_id: bytes) -> str:
        return os.path.join(self.directory, object_id.hex())

    def reserve(self, object_id: bytes, size: int, owner: bytes) -> None:
        if object_id in self.objects:
            return  # a retried task writing the same return again
        if self.used + size > self.capacity:
            raise ObjectStoreFullError(
                f"The object store on this node is full: {_fmt(self.used)} of {_fmt(self.capacity)} used "
                f"by {len(self.objects)} objects, and an object of {_fmt(size)} does not fit. "
                "Free references you no longer need (del the ObjectRefs), or start Ember with a "
                "larger object_store_memory= (ember.init) / --object-store-memory (ember start)."
            )
        self.objects[object_id] = ObjectEntry(size, owner)
        self.used += size

    def seal(self, object_id: bytes) -> None:
        entry = self.objects.get(object_id)
        if entry is not None:
            entry.sealed = True

    def free(self, object_id: bytes) -> None:
        entry = self.objects.pop(object_id, None)
        if entry is None:
            return
        self.used -= entry.size
        try:
            os.unlink(self.path(object_id))
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("could not delete object file %s: %s", object_id.hex(), exc)

    def free_owned_by(self, owner: bytes, unsealed_only: bool = False) -> int:
        victims = [
            oid for oid, e in self.objects.items() if e.owner == owner and (not unsealed_only or not e.sealed)
        ]
        for oid in victims:
            self.free(oid)
        return len(victims)

    def contains(self, object_id: bytes) -> bool:
        entry = self.objects.get(object_id)
        return entry is not None and entry.sealed

    def stats(self) -> dict[str, int]:
        return {"used": self.used, "capacity": self.capacity, "objects": len(self.objects)}

    def destroy(self) -> None:
        self.objects.clear()
        self.used = 0
        shutil.rmtree(self.directory, ignore_errors=True)
