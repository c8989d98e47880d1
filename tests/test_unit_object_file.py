"""Object files: write/read round trip, layout, zero-copy reads (no processes)."""

from __future__ import annotations

import mmap
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ember._private import object_file, serialization
from ember.exceptions import RayTaskError


def _write(tmp_path, value, name="obj", flags=serialization.FLAG_VALUE):
    obj = serialization.serialize(value, flags)
    path = str(tmp_path / name)
    size = object_file.write_object(path, obj)
    return path, obj, size


def test_round_trip_of_plain_values(tmp_path):
    value = {"a": [1, 2, 3], "b": "text", "c": b"bytes", "d": None}
    path, obj, size = _write(tmp_path, value)
    assert os.path.getsize(path) == size == object_file.file_size(obj)
    flags, out = object_file.read_object(path)
    assert flags == serialization.FLAG_VALUE
    assert out == value


def test_numpy_buffers_are_aligned_read_only_and_mapped(tmp_path):
    arrays = [np.arange(1000, dtype=np.float64), np.ones((3, 7), dtype=np.int8), np.zeros(1, dtype=np.uint16)]
    path, obj, _ = _write(tmp_path, arrays)
    assert len(obj.buffers) == 3  # out-of-band, not inside the pickle stream
    _, _, entries = object_file.layout(obj)
    assert all(offset % object_file.ALIGN == 0 for offset, _ in entries)
    _, out = object_file.read_object(path)
    for original, got in zip(arrays, out):
        np.testing.assert_array_equal(got, original)
        assert got.dtype == original.dtype
        assert got.flags.writeable is False
        base = got
        while isinstance(base, np.ndarray):
            base = base.base
        assert isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)
        assert got.ctypes.data % object_file.ALIGN == 0


def test_mapping_outlives_unlinking_the_file(tmp_path):
    path, _, _ = _write(tmp_path, np.arange(10_000))
    _, arr = object_file.read_object(path)
    os.unlink(path)
    assert int(arr.sum()) == sum(range(10_000))


def test_error_flag_is_preserved(tmp_path):
    error = RayTaskError("f", "Traceback...", ValueError("x"), 1, "127.0.0.1", "ab" * 16)
    path, _, _ = _write(tmp_path, error, flags=serialization.FLAG_ERROR)
    flags, out = object_file.read_object(path)
    assert flags == serialization.FLAG_ERROR
    assert isinstance(out, RayTaskError) and out.function_name == "f"


def test_existing_file_is_not_overwritten(tmp_path):
    path, _, _ = _write(tmp_path, 1)
    with pytest.raises(FileExistsError):
        object_file.write_object(path, serialization.serialize(2))
    assert object_file.read_object(path)[1] == 1


def test_empty_and_corrupt_files_are_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        object_file.read_object(str(empty))
    bad = tmp_path / "bad"
    bad.write_bytes(b"NOPE" + bytes(100))
    with pytest.raises(ValueError, match="bad magic"):
        object_file.read_object(str(bad))


def test_file_is_private_to_the_user(tmp_path):
    path, _, _ = _write(tmp_path, "secret")
    assert os.stat(path).st_mode & 0o077 == 0


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    blobs=st.lists(st.binary(max_size=2000), max_size=5),
    data=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
        max_leaves=10,
    ),
)
def test_round_trip_property(tmp_path, blobs, data):
    value = {"data": data, "arrays": [np.frombuffer(b, dtype=np.uint8) for b in blobs]}
    path = str(tmp_path / f"obj-{os.urandom(8).hex()}")
    object_file.write_object(path, serialization.serialize(value))
    try:
        _, out = object_file.read_object(path)
    finally:
        os.unlink(path)
    assert out["data"] == data
    assert [bytes(a) for a in out["arrays"]] == blobs
