"""Spilling objects to disk when the store runs full, and restoring them.

When a new object does not fit, or the store passes ``object_spilling_threshold``
of its capacity, sealed objects are copied (oldest first) to the spill
location and their memory files removed; a copy pulled from another node is
simply dropped. Reading a spilled object restores it. The spill location is
a folder (the session's ``spill/`` by default) or an fsspec URL such as
``s3://bucket/prefix``. Copies run in threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import shutil
from typing import Any

from ember._private.background import BackgroundTasks
from ember.exceptions import ObjectLostError, ObjectStoreFullError
from ember.raylet.object_store import ObjectStore, SpilledEntry

logger = logging.getLogger(__name__)


def _is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


class Spiller:
    def __init__(self, store: ObjectStore, location: str, threshold: float,
                 background: BackgroundTasks | None = None) -> None:
        self.store = store
        #: Owns the background spill (the node daemon's tasks: cancelled and awaited when it stops).
        self._tasks = background or BackgroundTasks("spiller")
        self.location = location[len("file://"):] if location.startswith("file://") else location
        self.threshold = threshold
        self._pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="ember-spill")
        self._lock = asyncio.Lock()
        self._restoring: dict[bytes, asyncio.Future[None]] = {}
        self._background: asyncio.Task[None] | None = None
        if not _is_url(self.location):
            try:
                os.makedirs(self.location, exist_ok=True)
            except OSError as exc:  # spilling will fail and say so; the node still runs
                logger.error("cannot create the spill folder %s: %s", self.location, exc)

    # ================================================================ paths
    def _url(self, object_id: bytes) -> str:
        return f"{self.location.rstrip('/')}/{object_id.hex()}"

    def local_spill_path(self, object_id: bytes) -> str | None:
        """A local file holding the spilled object (servable to other nodes), if any."""
        entry = self.store.spilled.get(object_id)
        if entry is None or _is_url(entry.url):
            return None
        return entry.url

    # ================================================================ spilling
    async def make_room(self, need: int) -> None:
        """Spill until ``need`` more bytes fit, or raise ObjectStoreFullError."""
        store = self.store
        if need > store.capacity:
            raise ObjectStoreFullError(store.full_message(need))
        async with self._lock:
            await self._spill_until(store.capacity - need)
        if store.used + need > store.capacity:
            raise ObjectStoreFullError(store.full_message(need))

    def after_seal(self) -> None:
        """Start a background spill if the store is past its threshold."""
        store = self.store
        if store.used > self.threshold * store.capacity and (self._background is None or self._background.done()):
            self._background = self._tasks.spawn_if_open(self._spill_to_threshold(), "spill past the threshold")

    async def _spill_to_threshold(self) -> None:
        async with self._lock:
            await self._spill_until(int(self.threshold * self.store.capacity))

    async def _spill_until(self, target_used: int) -> None:
        store = self.store
        for object_id in store.spill_candidates():
            if store.used <= target_used:
                return
            entry = store.objects.get(object_id)
            if entry is None or not entry.sealed:
                continue
            if not entry.primary or object_id in store.spilled:
                store.drop_memory_copy(object_id)  # a pulled copy, or already on disk
                continue
            url = self._url(object_id)
            try:
                await asyncio.get_running_loop().run_in_executor(self._pool, _copy_out, store.path(object_id), url)
            except OSError as exc:
                logger.error("spilling object %s to %s failed: %s", object_id.hex(), url, exc)
                return
            if store.objects.get(object_id) is not entry:
                _delete(url)  # freed while we copied
                continue
            store.spilled[object_id] = SpilledEntry(url, entry.size, entry.owner)
            store.spilled_bytes += entry.size
            store.drop_memory_copy(object_id)
            logger.debug("spilled object %s (%d bytes)", object_id.hex()[:12], entry.size)

    # ================================================================ restoring
    async def restore(self, object_id: bytes) -> bool:
        """Bring a spilled object back into memory; False if it is not spilled here."""
        store = self.store
        if store.contains(object_id):
            return True
        pending = self._restoring.get(object_id)
        if pending is not None:
            await asyncio.shield(pending)
            return True
        spilled = store.spilled.get(object_id)
        if spilled is None:
            return False
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._restoring[object_id] = fut
        try:
            await self.make_room(spilled.size)
            store.reserve(object_id, spilled.size, spilled.owner)
            try:
                await asyncio.get_running_loop().run_in_executor(self._pool, _copy_in, spilled.url, store.path(object_id))
            except OSError as exc:
                store.drop_memory_copy(object_id)
                raise ObjectLostError(object_id.hex(), f"the spill file {spilled.url} could not be read: {exc}") from exc
            store.seal(object_id)
            fut.set_result(None)
            return True
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()
            raise
        finally:
            self._restoring.pop(object_id, None)

    def delete(self, url: str) -> None:
        self._pool.submit(_delete, url)

    def stop(self) -> None:
        if self._background is not None:
            self._background.cancel()
        self._pool.shutdown(wait=True)
        # The location is this node's own folder (see Raylet): remove it and what is left in it.
        if not _is_url(self.location):
            shutil.rmtree(self.location, ignore_errors=True)
            return
        try:
            import fsspec

            fs, path = fsspec.core.url_to_fs(self.location)
            if fs.exists(path):
                fs.rm(path, recursive=True)
        except Exception as exc:  # best effort, like the local folder
            logger.debug("could not remove the spill location %s: %s", self.location, exc)


def _copy_out(path: str, url: str) -> None:
    if _is_url(url):
        import fsspec

        with open(path, "rb") as src, fsspec.open(url, "wb") as dst:
            shutil.copyfileobj(src, dst, 8 * 1024 * 1024)
    else:
        shutil.copyfile(path, url)


def _copy_in(url: str, path: str) -> None:
    tmp = path + ".restore"
    if _is_url(url):
        import fsspec

        with fsspec.open(url, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 8 * 1024 * 1024)
    else:
        shutil.copyfile(url, tmp)
    os.replace(tmp, path)


def _delete(url: str) -> Any:
    try:
        if _is_url(url):
            import fsspec

            fs, path = fsspec.core.url_to_fs(url)
            fs.rm(path)
        else:
            os.unlink(url)
    except (OSError, ValueError, ImportError) as exc:
        logger.debug("could not delete spill file %s: %s", url, exc)
