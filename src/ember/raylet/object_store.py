"""Accounting for the node's shared-memory object store, and its spill files.

Workers write object files themselves (no copy through this daemon); they
first *reserve* room here, then report the object *sealed*. This module
decides whether an object fits, remembers who owns each object, and deletes
files when owners free them or die.

An object is in one of three places: in memory (``objects``, a file in the
store directory), spilled (``spilled``, a file in the spill location, not
counted against capacity), or both (restored after a spill: the spill file
is kept so that spilling it again costs nothing).

*Fallback allocation* (as Ray's): an object that does not fit even after
spilling is written to a file on disk in ``fallback_dir`` instead, and a
symlink at its usual path in the store directory points there, so readers
map it (zero-copy, through the page cache), transfers send it and frees
delete it exactly like any other object. Fallback objects are counted apart
(``fallback_used``), never against capacity, and are never spilled. Only when
the disk cannot take it either (``fallback_room``) does the creation fail
with ``ObjectStoreFullError``.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import logging
import os
import shutil
from collections import OrderedDict

from ember.exceptions import InvariantViolation, ObjectStoreFullError

logger = logging.getLogger(__name__)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


class ObjectEntry:
    __slots__ = ("size", "owner", "sealed", "primary", "fallback")

    def __init__(self, size: int, owner: bytes, primary: bool, fallback: bool = False) -> None:
        self.size = size
        self.owner = owner
        self.sealed = False
        #: False for a copy pulled from another node: it can be dropped instead of spilled.
        self.primary = primary
        #: Written to a fallback file on disk (the store could not take it).
        self.fallback = fallback


class SpilledEntry:
    __slots__ = ("url", "size", "owner")

    def __init__(self, url: str, size: int, owner: bytes) -> None:
        self.url = url
        self.size = size
        self.owner = owner


class ObjectStore:
    def __init__(
        self, directory: str, capacity: int, fallback_dir: str = "", fallback_max_bytes: int = 0,
        fallback_min_free_bytes: int = 0,
    ) -> None:
        self.directory = directory
        self.capacity = capacity
        self.used = 0
        #: Where objects the store cannot take go ("" : nowhere, the creation fails).
        self.fallback_dir = fallback_dir
        #: Most bytes in fallback files at once (0: as much as the disk has, minus the next field).
        self.fallback_max_bytes = fallback_max_bytes
        #: Free disk space a fallback file must leave.
        self.fallback_min_free_bytes = fallback_min_free_bytes
        self.fallback_used = 0
        self.fallback_objects = 0
        #: In-memory objects, oldest first (the spill order).
        self.objects: OrderedDict[bytes, ObjectEntry] = OrderedDict()
        self.spilled: dict[bytes, SpilledEntry] = {}
        self.spilled_bytes = 0
        self.owner_names: dict[bytes, str] = {}
        #: Files of freed objects kept for reuse (their tmpfs pages are already allocated):
        #: (path, size), oldest first. They count against capacity.
        self.pool: list[tuple[str, int]] = []
        self.pooled_bytes = 0
        self._pool_seq = 0
        os.makedirs(directory, exist_ok=True)

    def path(self, object_id: bytes) -> str:
        return os.path.join(self.directory, object_id.hex())

    def reserve(self, object_id: bytes, size: int, owner: bytes, primary: bool = True) -> bool:
        """Account for a new object; True if a recycled file was put at its path to write over."""
        if object_id in self.objects:
            return False  # a retried task writing the same return again
        if self.used + size > self.capacity:
            raise ObjectStoreFullError(self.full_message(size))
        reused = self._take_recycled(object_id, size)
        while not reused and self.pool and self.used + self.pooled_bytes + size > self.capacity:
            path, pooled = self.pool.pop(0)
            self.pooled_bytes -= pooled
            _unlink_soon(path)
        self.objects[object_id] = ObjectEntry(size, owner, primary)
        self.used += size
        return reused

    # ------------------------------------------------------------- fallback files
    def fallback_path(self, object_id: bytes) -> str:
        return os.path.join(self.fallback_dir, object_id.hex())

    def fallback_room(self, size: int) -> str:
        """Why a fallback file of ``size`` bytes cannot be made now ("" if it can)."""
        if not self.fallback_dir:
            return "fallback allocation is off"
        if self.fallback_max_bytes and self.fallback_used + size > self.fallback_max_bytes:
            return (
                f"fallback files already hold {fmt_bytes(self.fallback_used)} of the "
                f"{fmt_bytes(self.fallback_max_bytes)} allowed (EMBER_object_store_fallback_max_bytes)"
            )
        try:
            os.makedirs(self.fallback_dir, exist_ok=True)
            st = os.statvfs(self.fallback_dir)
        except OSError as exc:
            return f"the fallback folder {self.fallback_dir} is unusable: {exc}"
        free = st.f_bavail * st.f_frsize
        if free - size < self.fallback_min_free_bytes:
            return (
                f"the disk of {self.fallback_dir} has {fmt_bytes(free)} free, and "
                f"{fmt_bytes(self.fallback_min_free_bytes)} must stay free"
            )
        return ""

    def reserve_fallback(self, object_id: bytes, size: int, owner: bytes, primary: bool = True) -> str:
        """Account for an object written to a fallback file; returns the path to write."""
        entry = self.objects.get(object_id)
        if entry is not None:  # a retried task writing the same return again
            return self.fallback_path(object_id) if entry.fallback else self.path(object_id)
        target = self.fallback_path(object_id)
        os.makedirs(self.fallback_dir, exist_ok=True)
        link = self.path(object_id)
        try:
            os.unlink(link)
        except FileNotFoundError:
            pass
        os.symlink(target, link)
        self.objects[object_id] = ObjectEntry(size, owner, primary, fallback=True)
        self.fallback_used += size
        self.fallback_objects += 1
        return target

    def _take_recycled(self, object_id: bytes, size: int) -> bool:
        if size < RECYCLE_MIN_BYTES:
            return False
        for i, (path, pooled) in enumerate(self.pool):
            if not size <= pooled <= 2 * size or _still_mapped(path):
                continue
            del self.pool[i]
            self.pooled_bytes -= pooled
            try:
                os.rename(path, self.path(object_id))
            except OSError:
                return False
            return True
        return False

    def _release_file(self, object_id: bytes, size: int) -> None:
        """A freed object's file: keep it for reuse if it is large, else delete it."""
        path = self.path(object_id)
        if size >= RECYCLE_MIN_BYTES and self.pooled_bytes + size <= self.capacity // 2:
            self._pool_seq += 1
            free_path = os.path.join(self.directory, f"free-{self._pool_seq}")
            try:
                os.rename(path, free_path)
            except OSError:
                return
            self.pool.append((free_path, size))
            self.pooled_bytes += size
        elif size >= RECYCLE_MIN_BYTES:
            _unlink_soon(path)
        else:
            _unlink(path)

    def full_message(self, size: int) -> str:
        holders: dict[bytes, list[int]] = {}
        for entry in self.objects.values():
            holders.setdefault(entry.owner, []).append(entry.size)
        top = sorted(holders.items(), key=lambda kv: -sum(kv[1]))[:3]
        named = ", ".join(
            f"{self.owner_names.get(owner, 'worker ' + owner.hex()[:12])} holds {len(sizes)} object(s), {fmt_bytes(sum(sizes))}"
            for owner, sizes in top
        )
        return (
            f"The object store on this node is full: {fmt_bytes(self.used)} of {fmt_bytes(self.capacity)} used "
            f"by {len(self.objects)} objects ({fmt_bytes(self.spilled_bytes)} more spilled to disk), and an "
            f"object of {fmt_bytes(size)} does not fit even after spilling."
            + (f" Largest holders: {named}." if named else "")
            + " Free references you no longer need (del the ObjectRefs), or start Ember with a larger "
            "object_store_memory= (ember.init) / --object-store-memory (ember start)."
        )

    def holds_owner(self, owner: bytes) -> bool:
        """Whether any object here (in memory or spilled) belongs to ``owner``."""
        return any(e.owner == owner for e in self.objects.values()) or any(
            e.owner == owner for e in self.spilled.values())

    def seal(self, object_id: bytes) -> None:
        entry = self.objects.get(object_id)
        if entry is not None:
            entry.sealed = True

    def drop_memory_copy(self, object_id: bytes) -> None:
        """Remove the in-memory file (after it was spilled, or for a secondary copy)."""
        entry = self.objects.pop(object_id, None)
        if entry is None:
            return
        if entry.fallback:
            self.fallback_used -= entry.size
            self.fallback_objects -= 1
            _unlink(self.path(object_id))
            _unlink_soon(self.fallback_path(object_id))
            return
        self.used -= entry.size
        if entry.sealed:
            self._release_file(object_id, entry.size)
        else:
            _unlink(self.path(object_id))

    def free(self, object_id: bytes) -> str | None:
        """Forget an object everywhere; returns its spill URL for the caller to delete, if any."""
        self.drop_memory_copy(object_id)
        spilled = self.spilled.pop(object_id, None)
        if spilled is None:
            return None
        self.spilled_bytes -= spilled.size
        return spilled.url

    def free_owned_by(self, owner: bytes, unsealed_only: bool = False) -> list[str]:
        victims = [
            oid for oid, e in self.objects.items() if e.owner == owner and (not unsealed_only or not e.sealed)
        ]
        if not unsealed_only:
            victims += [oid for oid, e in self.spilled.items() if e.owner == owner and oid not in victims]
        urls = [self.free(oid) for oid in victims]
        return [u for u in urls if u]

    def contains(self, object_id: bytes) -> bool:
        entry = self.objects.get(object_id)
        return entry is not None and entry.sealed

    def spill_candidates(self) -> list[bytes]:
        """Sealed in-memory objects, oldest first."""
        return [oid for oid, e in self.objects.items() if e.sealed and not e.fallback]

    def stats(self) -> dict[str, int]:
        return {
            "used": self.used, "capacity": self.capacity, "objects": len(self.objects),
            "spilled_bytes": self.spilled_bytes, "spilled_objects": len(self.spilled),
            "fallback_bytes": self.fallback_used, "fallback_objects": self.fallback_objects,
        }

    def validate(self) -> None:
        """Check the accounting invariants; raise ``InvariantViolation`` naming the first broken one.

        ``used`` is the sum of the in-memory (not fallback) objects and stays within
        capacity; fallback, spilled and kept-for-reuse bytes are the sums of their
        entries; no count is negative.
        """
        problems = []
        in_memory = sum(e.size for e in self.objects.values() if not e.fallback)
        if self.used != in_memory:
            problems.append(f"used is {self.used} but the in-memory objects add up to {in_memory}")
        if self.used > self.capacity:
            problems.append(f"used {self.used} is above the capacity {self.capacity}")
        fallback = [e.size for e in self.objects.values() if e.fallback]
        if (self.fallback_used, self.fallback_objects) != (sum(fallback), len(fallback)):
            problems.append(f"fallback accounting {self.fallback_used} B / {self.fallback_objects} objects, "
                            f"entries {sum(fallback)} B / {len(fallback)}")
        spilled = sum(e.size for e in self.spilled.values())
        if self.spilled_bytes != spilled:
            problems.append(f"spilled_bytes is {self.spilled_bytes} but the spilled entries add up to {spilled}")
        pooled = sum(size for _, size in self.pool)
        if self.pooled_bytes != pooled:
            problems.append(f"pooled_bytes is {self.pooled_bytes} but the kept files add up to {pooled}")
        if any(e.size < 0 for e in self.objects.values()) or any(e.size < 0 for e in self.spilled.values()):
            problems.append("an object has a negative size")
        if problems:
            raise InvariantViolation("object store: " + "; ".join(problems))

    def destroy(self) -> None:
        self.objects.clear()
        self.pool.clear()
        self.used = self.pooled_bytes = self.fallback_used = self.fallback_objects = 0
        shutil.rmtree(self.directory, ignore_errors=True)
        if self.fallback_dir:
            shutil.rmtree(self.fallback_dir, ignore_errors=True)


#: Freed object files at least this large are kept for reuse.
RECYCLE_MIN_BYTES = 1024 * 1024

_unlinker: concurrent.futures.ThreadPoolExecutor | None = None


def _unlink_soon(path: str) -> None:
    """Delete a large file off the event loop (freeing 800 MiB of tmpfs takes ~0.1 s)."""
    global _unlinker
    if _unlinker is None:
        _unlinker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ember-unlink")
    _unlinker.submit(_unlink, path)


def _still_mapped(path: str) -> bool:
    """Whether a reader still maps the file (readers hold a shared flock while mapped)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases our lock
    return False


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.warning("could not delete object file %s: %s", path, exc)
