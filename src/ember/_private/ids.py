"""Identifiers for jobs, tasks, objects, workers and nodes.

Ids are raw ``bytes`` on the wire and in tables; the wrapper classes exist only
at the public API (``ObjectRef.hex()``, ``ray.nodes()``), so the hot path never
builds objects to compare ids.

Layout (all lengths in bytes):
  JobID     4   assigned by the control service, counting up from 1
  TaskID   16   12 random bytes + the job id
  ObjectID 20   the creating task's id + a 4-byte index (returns count from 1,
                ``put`` objects set the top bit)
  WorkerID 16, NodeID 16, ActorID 16: random
"""

from __future__ import annotations

import itertools
import os
import random
import struct

JOB_ID_LEN = 4
TASK_ID_LEN = 16
OBJECT_ID_LEN = 20
UNIQUE_ID_LEN = 16
_PUT_BIT = 0x80000000

_put_counter = itertools.count(1)


def random_unique_id() -> bytes:
    """A 16-byte random id (workers, nodes, actors, leases)."""
    return os.urandom(UNIQUE_ID_LEN)


def job_id_from_int(value: int) -> bytes:
    return struct.pack(">I", value)


def job_id_to_int(job_id: bytes) -> int:
    value: int = struct.unpack(">I", job_id)[0]
    return value


#: Task ids need uniqueness, not secrecy. ``os.urandom`` is a system call that
#: releases the GIL, and on the submit path that hands the GIL to the I/O
#: thread for up to a switch interval per ``.remote()`` (submitting 1000 tasks
#: took ~3x longer). A private generator (never the ``random`` module's, which
#: user code may seed) seeded from the OS, and reseeded in every forked child
#: (workers fork from the zygote), costs no system call.
_task_id_rng = random.Random()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_task_id_rng.seed)


def new_task_id(job_id: bytes) -> bytes:
    return _task_id_rng.getrandbits(8 * (TASK_ID_LEN - JOB_ID_LEN)).to_bytes(TASK_ID_LEN - JOB_ID_LEN, "little") + job_id


def return_object_id(task_id: bytes, index: int) -> bytes:
    """The id of a task's ``index``-th return value (counting from 1)."""
    return task_id + struct.pack(">I", index)


def put_object_id(task_id: bytes) -> bytes:
    """A fresh id for an object created by ``put`` inside ``task_id``."""
    return task_id + struct.pack(">I", _PUT_BIT | (next(_put_counter) & 0x7FFFFFFF))


def task_id_of(object_id: bytes) -> bytes:
    return object_id[:TASK_ID_LEN]


def job_id_of(task_or_object_id: bytes) -> bytes:
    return task_or_object_id[TASK_ID_LEN - JOB_ID_LEN : TASK_ID_LEN]


class BaseID:
    """Public wrapper over a raw id, matching Ray's ``*ID`` classes."""

    __slots__ = ("_bytes",)

    def __init__(self, id_bytes: bytes) -> None:
        self._bytes = bytes(id_bytes)

    def binary(self) -> bytes:
        return self._bytes

    def hex(self) -> str:
        return self._bytes.hex()

    @classmethod
    def from_hex(cls, value: str) -> BaseID:
        return cls(bytes.fromhex(value))

    def is_nil(self) -> bool:
        return not any(self._bytes)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._bytes == self._bytes

    def __hash__(self) -> int:
        return hash(self._bytes)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.hex()})"


class JobID(BaseID):
    __slots__ = ()


class TaskID(BaseID):
    __slots__ = ()


class NodeID(BaseID):
    __slots__ = ()


class WorkerID(BaseID):
    __slots__ = ()


class ActorID(BaseID):
    __slots__ = ()
