"""The node's object store accounting and its spiller, in a temporary folder (no processes, no sockets).

Each step is followed by ``store.validate()`` (the accounting invariants) and, where
files matter, by a look at the folder: the files on disk are what the accounting says.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ember.exceptions import ObjectLostError, ObjectStoreFullError
from ember.raylet import object_store as store_module
from ember.raylet.object_store import RECYCLE_MIN_BYTES, ObjectStore, fmt_bytes
from ember.raylet.spilling import Spiller

OWNER = b"o" * 20
OTHER = b"p" * 20


def oid(n: int) -> bytes:
    return n.to_bytes(20, "big")


def write(store: ObjectStore, object_id: bytes, size: int, fill: bytes = b"x", path: str | None = None) -> None:
    """What a worker does after reserving: write the object's bytes at its path."""
    with open(path or store.path(object_id), "wb") as f:
        f.write(fill * size)


def create(store: ObjectStore, object_id: bytes, size: int, owner: bytes = OWNER, fill: bytes = b"x") -> None:
    store.reserve(object_id, size, owner)
    write(store, object_id, size, fill)
    store.seal(object_id)
    store.validate()


def files(directory: str | Path) -> set[str]:
    return set(os.listdir(directory)) if os.path.isdir(directory) else set()


def drain_unlinks() -> None:
    """Large files are deleted on a background thread: wait until it has done what it was given."""
    unlinker = store_module._unlinker
    if unlinker is not None:
        unlinker.submit(lambda: None).result(10)


@pytest.fixture
def store(tmp_path: Path) -> ObjectStore:
    s = ObjectStore(str(tmp_path / "store"), 1000, fallback_dir=str(tmp_path / "fallback"))
    yield s
    s.destroy()
    drain_unlinks()


# ---------------------------------------------------------------------------- the store alone

def test_create_seal_contains_and_free_delete_the_file(store: ObjectStore) -> None:
    assert not store.reserve(oid(1), 100, OWNER)
    store.validate()
    assert not store.contains(oid(1)), "an unsealed object is not readable"
    write(store, oid(1), 100)
    store.seal(oid(1))
    store.validate()
    assert store.contains(oid(1))
    assert store.stats()["used"] == 100 and store.stats()["objects"] == 1
    assert store.free(oid(1)) is None  # never spilled: no spill URL to delete
    store.validate()
    assert not store.contains(oid(1))
    assert files(store.directory) == set()
    assert store.used == 0


def test_a_retried_task_writing_the_same_object_again_is_not_counted_twice(store: ObjectStore) -> None:
    create(store, oid(1), 100)
    assert not store.reserve(oid(1), 100, OWNER)
    store.validate()
    assert store.used == 100


def test_reserve_beyond_capacity_says_who_holds_the_store(store: ObjectStore) -> None:
    store.owner_names[OWNER] = "driver pid 42"
    create(store, oid(1), 600)
    with pytest.raises(ObjectStoreFullError, match="driver pid 42 holds 1 object"):
        store.reserve(oid(2), 500, OWNER)
    store.validate()
    assert store.used == 600 and oid(2) not in store.objects


def test_freeing_an_unknown_or_already_freed_object_is_harmless(store: ObjectStore) -> None:
    assert store.free(oid(9)) is None
    create(store, oid(1), 10)
    store.free(oid(1))
    store.free(oid(1))
    store.validate()
    assert store.used == 0


def test_free_owned_by_a_dead_worker_drops_only_its_unsealed_objects(store: ObjectStore) -> None:
    create(store, oid(1), 10, owner=OTHER)  # sealed: a value the worker returned, kept
    store.reserve(oid(2), 20, OTHER)  # it died while writing this one
    create(store, oid(3), 30)  # someone else's
    store.validate()
    assert store.free_owned_by(OTHER, unsealed_only=True) == []
    store.validate()
    assert set(store.objects) == {oid(1), oid(3)}
    assert store.holds_owner(OTHER)
    store.free_owned_by(OTHER)
    store.validate()
    assert set(store.objects) == {oid(3)} and not store.holds_owner(OTHER)


def test_large_freed_files_are_recycled_for_the_next_object_of_similar_size(tmp_path: Path) -> None:
    big = RECYCLE_MIN_BYTES
    s = ObjectStore(str(tmp_path / "store"), 8 * big)
    try:
        create(s, oid(1), big)
        s.free(oid(1))
        s.validate()
        assert s.pooled_bytes == big and len(s.pool) == 1, "a large file is kept for reuse"
        assert s.reserve(oid(2), big, OWNER), "the next object of that size writes over the kept file"
        s.validate()
        assert s.pool == [] and os.path.getsize(s.path(oid(2))) == big
        write(s, oid(2), big, b"y")
        s.seal(oid(2))
        # A much smaller object does not take a large kept file.
        s.free(oid(2))
        assert not s.reserve(oid(3), 10, OWNER)
        s.validate()
    finally:
        s.destroy()
        drain_unlinks()
    assert not os.path.exists(s.directory)


def test_kept_files_are_dropped_when_a_new_object_needs_their_room(tmp_path: Path) -> None:
    big = RECYCLE_MIN_BYTES
    s = ObjectStore(str(tmp_path / "store"), 3 * big)
    try:
        create(s, oid(1), big)
        s.free(oid(1))
        assert s.pooled_bytes == big
        assert not s.reserve(oid(2), 2 * big + 1, OWNER)  # too large for the kept file, which must go
        s.validate()
        assert s.pool == [] and s.pooled_bytes == 0
        drain_unlinks()
        assert files(s.directory) == set()  # the new object's file is not written yet
    finally:
        s.destroy()
        drain_unlinks()


def test_fallback_allocation_links_the_store_path_to_a_file_on_disk(store: ObjectStore) -> None:
    assert store.fallback_room(5000) == ""
    path = store.reserve_fallback(oid(1), 5000, OWNER)
    store.validate()
    assert path == store.fallback_path(oid(1))
    assert os.path.islink(store.path(oid(1))) and os.readlink(store.path(oid(1))) == path
    write(store, oid(1), 5000, path=path)
    store.seal(oid(1))
    assert store.contains(oid(1))
    assert store.stats()["fallback_bytes"] == 5000 and store.stats()["fallback_objects"] == 1
    assert store.used == 0, "fallback objects do not count against the store's capacity"
    assert oid(1) not in store.spill_candidates(), "fallback objects are never spilled"
    # Written again by a retried task: the same file, counted once.
    assert store.reserve_fallback(oid(1), 5000, OWNER) == path
    store.free(oid(1))
    store.validate()
    drain_unlinks()
    assert files(store.directory) == set() and files(store.fallback_dir) == set()
    assert store.fallback_used == 0 and store.fallback_objects == 0


def test_fallback_room_says_why_not(tmp_path: Path) -> None:
    off = ObjectStore(str(tmp_path / "a"), 100)
    capped = ObjectStore(str(tmp_path / "b"), 100, fallback_dir=str(tmp_path / "fb"), fallback_max_bytes=1000)
    needy = ObjectStore(str(tmp_path / "c"), 100, fallback_dir=str(tmp_path / "fb2"), fallback_min_free_bytes=1 << 62)
    try:
        assert off.fallback_room(10) == "fallback allocation is off"
        capped.reserve_fallback(oid(1), 900, OWNER)
        assert "allowed" in capped.fallback_room(200)
        assert capped.fallback_room(100) == ""
        assert "must stay free" in needy.fallback_room(10)
    finally:
        for s in (off, capped, needy):
            s.destroy()
        drain_unlinks()


def test_fmt_bytes_units() -> None:
    assert fmt_bytes(12) == "12 B"
    assert fmt_bytes(2048) == "2.0 KiB"
    assert fmt_bytes(3 * 1024 ** 3) == "3.0 GiB"
    assert fmt_bytes(5 * 1024 ** 4) == "5120.0 GiB"


# ---------------------------------------------------------------------------- with the spiller

def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


@contextlib.contextmanager
def spilling(store: ObjectStore, location: str, threshold: float) -> Iterator[Spiller]:
    """A spiller for the test's store, stopped (its folder removed) however the test ends."""
    spiller = Spiller(store, location, threshold)
    try:
        yield spiller
    finally:
        spiller.stop()


@pytest.fixture
def spill_dir(tmp_path: Path) -> str:
    return str(tmp_path / "spill")


def test_a_full_store_spills_the_oldest_objects_and_restores_them_on_read(store: ObjectStore, spill_dir: str) -> None:
    async def scenario() -> None:
        with spilling(store, spill_dir, 1.0) as spiller:
            for i in range(3):
                create(store, oid(i), 300, fill=bytes([65 + i]))
            await spiller.make_room(500)
            store.validate()
            # 900 used, 500 wanted: the two oldest go to disk.
            assert set(store.spilled) == {oid(0), oid(1)}
            assert store.used == 300 and store.spilled_bytes == 600
            assert files(spill_dir) == {oid(0).hex(), oid(1).hex()}
            assert not store.contains(oid(0)) and spiller.local_spill_path(oid(0)) == os.path.join(spill_dir, oid(0).hex())
            create(store, oid(3), 500)
            # Reading a spilled object brings it back (spilling the oldest in memory to make room).
            assert await spiller.restore(oid(0))
            store.validate()
            assert store.contains(oid(0))
            with open(store.path(oid(0)), "rb") as f:
                assert f.read() == b"A" * 300
            assert oid(0) in store.spilled, "the spill file is kept: spilling it again costs nothing"
            assert oid(2) in store.spilled and not store.contains(oid(2))
            assert await spiller.restore(oid(0)), "restoring what is in memory is a no-op"
            assert not await spiller.restore(oid(42)), "an object this node never had"
            # Freeing a spilled object returns its spill file for deletion.
            url = store.free(oid(1))
            store.validate()
            assert url == os.path.join(spill_dir, oid(1).hex())
            spiller.delete(url)
        assert not os.path.exists(spill_dir), "a stopping node removes its spill folder"

    run(scenario())


def test_an_object_larger_than_the_store_fails_with_a_clear_error(store: ObjectStore, spill_dir: str) -> None:
    async def scenario() -> None:
        with spilling(store, spill_dir, 1.0) as spiller:
            with pytest.raises(ObjectStoreFullError, match="does not fit even after spilling"):
                await spiller.make_room(5000)
            create(store, oid(1), 500)
            store.reserve(oid(2), 400, OWNER)  # unsealed: cannot be spilled
            with pytest.raises(ObjectStoreFullError):
                await spiller.make_room(700)
            store.validate()
            assert oid(2) in store.objects and oid(1) in store.spilled

    run(scenario())


def test_pulled_copies_are_dropped_not_spilled(store: ObjectStore, spill_dir: str) -> None:
    async def scenario() -> None:
        with spilling(store, spill_dir, 1.0) as spiller:
            store.reserve(oid(1), 500, OWNER, primary=False)
            write(store, oid(1), 500)
            store.seal(oid(1))
            await spiller.make_room(800)
            store.validate()
            assert oid(1) not in store.objects and oid(1) not in store.spilled
            assert files(spill_dir) == set()

    run(scenario())


def test_sealing_past_the_threshold_spills_in_the_background(store: ObjectStore, spill_dir: str) -> None:
    async def scenario() -> None:
        with spilling(store, spill_dir, 0.5) as spiller:
            for i in range(4):
                create(store, oid(i), 200)
                spiller.after_seal()
            assert spiller._background is not None
            await spiller._background
            store.validate()
            assert store.used <= 500 and len(store.spilled) >= 2

    run(scenario())


def test_a_lost_spill_file_is_an_object_lost_error_and_leaves_no_half_object(store: ObjectStore, spill_dir: str) -> None:
    async def scenario() -> None:
        with spilling(store, spill_dir, 1.0) as spiller:
            create(store, oid(1), 600)
            await spiller.make_room(500)
            os.unlink(os.path.join(spill_dir, oid(1).hex()))
            with pytest.raises(ObjectLostError, match="could not be read"):
                await spiller.restore(oid(1))
            store.validate()
            assert oid(1) not in store.objects and files(store.directory) == set()

    run(scenario())


def test_concurrent_restores_of_one_object_share_one_copy(store: ObjectStore, spill_dir: str) -> None:
    async def scenario() -> None:
        with spilling(store, spill_dir, 1.0) as spiller:
            create(store, oid(1), 600, fill=b"z")
            await spiller.make_room(500)
            results = await asyncio.gather(*(spiller.restore(oid(1)) for _ in range(3)))
            assert results == [True, True, True]
            store.validate()
            assert store.used == 600 and list(store.objects) == [oid(1)]

    run(scenario())


def test_an_object_freed_while_it_is_being_spilled_leaves_no_spill_file(store: ObjectStore, spill_dir: str) -> None:
    async def scenario() -> None:
        with spilling(store, spill_dir, 1.0) as spiller:
            create(store, oid(1), 600)
            task = asyncio.ensure_future(spiller.make_room(500))
            await asyncio.sleep(0)  # the copy is running in its thread now
            store.free(oid(1))
            await task
            store.validate()
            assert oid(1) not in store.spilled
            spiller._pool.submit(lambda: None).result(10)
            assert files(spill_dir) == set()

    run(scenario())


def test_an_unusable_spill_location_is_logged_and_spilling_fails_cleanly(store: ObjectStore, tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")

    async def scenario() -> None:
        with spilling(store, str(blocker / "spill"), 1.0) as spiller:
            create(store, oid(1), 600)
            with pytest.raises(ObjectStoreFullError):
                await spiller.make_room(500)
            store.validate()
            assert oid(1) in store.objects and not store.spilled

    run(scenario())
