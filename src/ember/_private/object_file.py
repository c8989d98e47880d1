"""The on-disk (``/dev/shm``) form of one object, and zero-copy reads of it.

Layout of an object file::

    header   magic "EMB1" | flags u32 | data_len u64 | n_buffers u32
    table    n_buffers x (offset u64, length u64)
    data     the pickle stream, at a 64-byte aligned offset
    buffers  each out-of-band buffer at a 64-byte aligned offset

Readers map the file read-only and hand pickle slices of the mapping, so a
numpy array comes back as a read-only view of shared memory. Unlinking the
file does not invalidate a live mapping, which makes freeing safe.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from typing import Any

from ember._private.serialization import SerializedObject, deserialize

MAGIC = b"EMB1"
_HEADER = struct.Struct("<4sIQI")
_ENTRY = struct.Struct("<QQ")
ALIGN = 64


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def layout(obj: SerializedObject) -> tuple[int, int, list[tuple[int, int]]]:
    """(file size, data offset, [(buffer offset, length), ...]) for ``obj``."""
    header_len = _HEADER.size + _ENTRY.size * len(obj.buffers)
    data_offset = _align(header_len)
    pos = data_offset + len(obj.data)
    entries = []
    for buf in obj.buffers:
        pos = _align(pos)
        entries.append((pos, buf.nbytes))
        pos += buf.nbytes
    return pos, data_offset, entries


def file_size(obj: SerializedObject) -> int:
    return layout(obj)[0]


def _write_all(fd: int, view: memoryview) -> None:
    view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
    total = view.nbytes
    done = 0
    while done < total:
        done += os.write(fd, view[done : done + (1 << 30)])


def write_object(path: str, obj: SerializedObject, reuse: bool = False) -> int:
    """Write ``obj`` to a new file at ``path`` (or over the recycled file the node daemon put
    there, when ``reuse``: its memory pages already exist, which makes writing about twice as
    fast on tmpfs); returns the file size."""
    size, data_offset, entries = layout(obj)
    if reuse:
        fd = os.open(path, os.O_WRONLY)
        os.ftruncate(fd, size)
        os.lseek(fd, 0, os.SEEK_SET)
    else:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        header = bytearray(data_offset)
        _HEADER.pack_into(header, 0, MAGIC, obj.flags, len(obj.data), len(entries))
        for i, (offset, length) in enumerate(entries):
            _ENTRY.pack_into(header, _HEADER.size + i * _ENTRY.size, offset, length)
        os.write(fd, header)
        _write_all(fd, memoryview(obj.data))
        pos = data_offset + len(obj.data)
        for (offset, _), buf in zip(entries, obj.buffers):
            if offset > pos:
                os.write(fd, bytes(offset - pos))
            _write_all(fd, buf)
            pos = offset + buf.nbytes
    except BaseException:
        os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass
        raise
    os.close(fd)
    return size


def read_object(path: str) -> tuple[int, Any]:
    """(flags, value) of the object file at ``path``, with buffers mapped read-only."""
    with open(path, "rb") as f:
        # A shared lock for as long as the mapping lives (the mapping keeps its own duplicate
        # of this descriptor): the node daemon recycles a freed object's file only when no
        # reader holds it.
        fcntl.flock(f.fileno(), fcntl.LOCK_SH)
        st = os.fstat(f.fileno())
        if st.st_size == 0:
            raise ValueError(f"object file {path} is empty")
        try:
            if os.stat(path).st_ino != st.st_ino:
                raise FileNotFoundError(path)  # freed and recycled while we opened it
        except FileNotFoundError:
            raise FileNotFoundError(path) from None
        size = st.st_size
        mapping = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
    view = memoryview(mapping)
    magic, flags, data_len, n_buffers = _HEADER.unpack_from(view, 0)
    if magic != MAGIC:
        raise ValueError(f"object file {path} is corrupt (bad magic)")
    buffers = []
    for i in range(n_buffers):
        offset, length = _ENTRY.unpack_from(view, _HEADER.size + i * _ENTRY.size)
        buffers.append(view[offset : offset + length])
    data_offset = _align(_HEADER.size + _ENTRY.size * n_buffers)
    value = deserialize(view[data_offset : data_offset + data_len], buffers)
    return flags, value
