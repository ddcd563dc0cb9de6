"""What workers and servers say to each other, and how rows and ranges are assigned to servers.

Messages are Python tuples sent with mpi4py's pickling point-to-point calls (``isend`` and matched
probes) on a communicator of their own (a duplicate of the world communicator), so they never mix
with other traffic:

* a request, worker -> server, tag ``TAG_REQUEST``: ``(op, request_id, args)``;
* a reply, server -> worker, tag ``TAG_REPLY``: ``(request_id, ok, value)``, where ``value`` is the
  result, or ``(exception type name, message)`` when ``ok`` is False.

Every request but ``CLOCK`` is answered. A read carries the least global clock it needs (its worker's
clock minus the table's staleness bound, or None for ASP), which the worker computes, so servers
need not know each table's consistency model. MPI keeps the messages from one worker to one server in
order, and a server handles requests in arrival order, so a worker's pushes are applied before the
clock tick that follows them: that is what the consistency guarantee rests on (see ``consistency``).

Sharding: sparse rows go to server ``mix64(id ^ SHARD_SALT) % num_servers`` (a hash, so any int64
ids spread evenly, dense ranges or not); a dense table's flattened values are cut into
``num_servers`` contiguous ranges of nearly equal size (``dense_ranges``).
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from ...errors import DTypeError, EmberError, ShapeError
from ...tensor import Tensor

__all__ = ["PSError", "dense_ranges", "mix64", "shard_of"]

TAG_REQUEST = 7101
TAG_REPLY = 7102

# Operations (the first element of a request).
CREATE = 1
PULL_SPARSE = 2
PUSH_SPARSE = 3
PULL_DENSE = 4
PUSH_DENSE = 5
CLOCK = 6
SAVE = 7
LOAD = 8
STATS = 9
CLOCKS = 10
DONE = 11
OP_NAMES = {CREATE: "create", PULL_SPARSE: "pull_sparse", PUSH_SPARSE: "push_sparse", PULL_DENSE: "pull_dense",
            PUSH_DENSE: "push_dense", CLOCK: "clock", SAVE: "save", LOAD: "load", STATS: "stats",
            CLOCKS: "clocks", DONE: "done"}


class PSError(EmberError, RuntimeError):
    """A parameter-server call failed: wrong role, unknown table, a server-side error, a protocol misuse."""


# Exceptions a server may report back; anything else arrives as a PSError.
_REMOTE_ERRORS: dict[str, type[Exception]] = {"ShapeError": ShapeError, "DTypeError": DTypeError,
                                              "PSError": PSError, "ValueError": ValueError,
                                              "TypeError": TypeError, "KeyError": PSError}


def remote_error(kind: str, message: str, server: int) -> Exception:
    """The exception a worker raises for an error reply from server ``server``."""
    cls = _REMOTE_ERRORS.get(kind, PSError)
    return cls(f"{message} (reported by parameter server {server})")


# ---------------------------------------------------------------------------------------------- hashing
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
SHARD_SALT = np.uint64(0x5EED5EED0DDBA11)
INDEX_SALT = np.uint64(0x2545F4914F6CDD1D)


def mix64(x: np.ndarray | np.integer) -> np.ndarray:
    """SplitMix64's finalizer, elementwise on uint64 (int64 input is reinterpreted): a bijection that spreads
    any set of keys (consecutive ids, multiples of a power of two, ...) over all 64 bits."""
    z = np.asarray(x)
    z = (z.view(np.uint64) if z.dtype == np.int64 else z.astype(np.uint64)) + _GOLDEN
    z ^= z >> np.uint64(30)
    z *= _MUL1
    z ^= z >> np.uint64(27)
    z *= _MUL2
    z ^= z >> np.uint64(31)
    return z


def name_key(name: str, seed: int) -> np.uint64:
    """A 64-bit key for a table's random streams, from its name and seed (stable across runs and platforms)."""
    crc = zlib.crc32(name.encode("utf-8"))
    return mix64(np.array([(int(seed) & 0xFFFFFFFF) << 32 | crc], dtype=np.uint64))[0]


def shard_of(ids: np.ndarray, num_servers: int) -> np.ndarray:
    """The server (0..num_servers-1) that owns each sparse row id (int64 array in, int64 array out)."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if num_servers == 1:
        return np.zeros(ids.shape, dtype=np.int64)
    return (mix64(ids.view(np.uint64) ^ SHARD_SALT) % np.uint64(num_servers)).astype(np.int64)


def dense_ranges(size: int, num_servers: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` of each server's part of a flattened dense table of ``size`` values (the first
    ``size % num_servers`` servers hold one value more)."""
    base, extra = divmod(int(size), int(num_servers))
    out, lo = [], 0
    for k in range(num_servers):
        hi = lo + base + (1 if k < extra else 0)
        out.append((lo, hi))
        lo = hi
    return out


def as_ids(fn: str, table: str, ids: Any) -> np.ndarray:
    """``ids`` (a Tensor, array or sequence of integers, any shape) as an int64 array; uint64 ids are
    reinterpreted bit for bit, so the whole 64-bit id space is usable."""
    arr = np.asarray(ids.data if isinstance(ids, Tensor) else ids)
    if arr.dtype == np.uint64:
        return np.ascontiguousarray(arr).view(np.int64)
    if arr.size == 0 and arr.dtype.kind == "f":
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu" or arr.dtype == np.bool_:
        raise DTypeError(f"{fn}({table!r}): ids must be integers, got dtype {arr.dtype} of shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def unique_sorted(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique ids and, for each input id, its position among them (``uniq[inverse] == ids``)."""
    if ids.size == 0:
        return ids.copy(), np.zeros(0, dtype=np.int64)
    uniq, inverse = np.unique(ids, return_inverse=True)
    return uniq, inverse.reshape(-1).astype(np.int64, copy=False)


def coalesce(ids: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique ``ids`` with the rows of ``values`` of equal ids summed (any int64 ids, negative too)."""
    if ids.size <= 1 or bool(np.all(ids[1:] > ids[:-1])):
        return ids, values
    order = np.argsort(ids, kind="stable")
    s = ids[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    return s[starts], np.add.reduceat(values[order], starts, axis=0)
