"""MPI communication for ember tensors: the world, communicators, collectives and point-to-point.

Everything here moves the NumPy array behind a CPU ``Tensor`` with mpi4py's buffer (uppercase)
methods; tensor data is never pickled. Non-contiguous tensors are copied to a contiguous buffer
first (and copied back for in-place operations). Tensors on ``cuda`` devices take the same calls
through NCCL instead (``ember.distributed.nccl``; headers and agreement checks still go over MPI).

Blocking collectives check, with one small extra all-reduce, that every rank passed a tensor of the
same dtype and (where it must match) shape, and raise a ``ShapeError``/``DTypeError`` listing what
each rank gave; set ``EMBER_DIST_CHECK=0`` (or ``comm.check = False``) to skip that round trip.
Non-blocking operations (``iallreduce_``, ``ibroadcast_``, ``isend``/``irecv``) do not check, so they
never block where the caller expects overlap.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .. import dtypes as _dt
from ..device import CPU
from ..errors import DeviceError, DTypeError, EmberError, ShapeError
from ..tensor import Tensor, _make
from .nccl import NcclPath, gpu_backend, is_cuda, no_request_handles

__all__ = ["Communicator", "DistributedError", "Handle", "get_local_rank", "get_rank", "get_world_size", "init",
           "is_initialized", "world"]

_MAX_NDIM = 32                   # headers of point-to-point messages hold at most this many dimensions
_REDUCE_OPS = ("sum", "mean", "max", "min", "prod")
# dtypes MPI can reduce (bool and float16 have no portable MPI reduction); any dtype can be moved.
_REDUCIBLE = ("float32", "float64", "int64", "int32", "int8", "uint8")
_DTYPE_CODE = {d.name: i for i, d in enumerate(_dt.ALL)}


class DistributedError(EmberError, RuntimeError):
    """Misuse of ``ember.distributed`` (not initialized, bad ranks, a sync that never completed, ...)."""


def _mpi() -> Any:
    """The ``mpi4py.MPI`` module (importing it initializes MPI), with a clear error when it is missing."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError("ember.distributed needs mpi4py and an MPI library; install them with "
                          "pip install 'ember[distributed]'") from e
    return MPI


# ---------------------------------------------------------------------------------------------- validation

def _desc(t: Tensor) -> str:
    return f"{t.dtype.name} {tuple(t.shape)}"


def _check_tensor(name: str, t: Any, what: str = "tensor") -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected an ember Tensor as {what}, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise DeviceError(f"{name}: MPI collectives take CPU tensors, got a tensor on {t.device}; "
                          "move it with .cpu() first")
    return t


def _check_op(name: str, op: Any, t: Tensor) -> str:
    if op not in _REDUCE_OPS:
        raise ValueError(f"{name}: unknown op {op!r}; expected one of {', '.join(map(repr, _REDUCE_OPS))}")
    if t.dtype.name not in _REDUCIBLE:
        raise DTypeError(f"{name}: cannot reduce a {t.dtype.name} tensor (op={op!r}); supported dtypes are "
                         f"{', '.join(_REDUCIBLE)}")
    if op == "mean" and not t.dtype.is_floating_point:
        raise DTypeError(f"{name}: op='mean' needs a floating tensor, got {t.dtype.name}; cast it first or use "
                         "op='sum'")
    return op


def _check_rank(name: str, what: str, r: Any, size: int) -> int:
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or not 0 <= r < size:
        raise ValueError(f"{name}: {what} must be a rank in [0, {size - 1}], got {r!r}")
    return int(r)


def _check_tag(name: str, tag: Any) -> int:
    if isinstance(tag, bool) or not isinstance(tag, (int, np.integer)) or tag < 0:
        raise ValueError(f"{name}: tag must be an int >= 0, got {tag!r}")
    return int(tag)


def _contig(t: Tensor, copy: bool) -> np.ndarray:
    """A C-contiguous array with ``t``'s values: ``t.data`` itself unless ``copy`` or it must be copied."""
    a = t.data
    if copy or not a.flags.c_contiguous or not a.flags.writeable:
        return np.array(a, order="C", copy=True)
    return a


def _as_bytes(a: np.ndarray) -> np.ndarray:
    """A flat uint8 view of a contiguous array: moves any dtype (bool, float16 ...) bit for bit."""
    return a.reshape(-1).view(np.uint8)


def _write_back(t: Tensor, buf: np.ndarray) -> None:
    """Finish an in-place operation: copy ``buf`` into ``t`` unless it is ``t``'s own storage; bump the version."""
    if buf is not t.data:
        if not t.data.flags.writeable:
            raise ValueError(f"in-place collective on a read-only tensor ({_desc(t)}); clone it first")
        t.data[...] = buf.reshape(t.data.shape)
    t._version[0] += 1


def _wrap(a: np.ndarray, dtype: _dt.DType) -> Tensor:
    return _make(a, dtype, CPU)


def _header(t: Tensor) -> np.ndarray:
    if t.ndim > _MAX_NDIM:
        raise ShapeError(f"send: tensors of at most {_MAX_NDIM} dimensions can be sent, got shape {t.shape}")
    return np.array([_DTYPE_CODE[t.dtype.name], t.ndim, *t.shape], dtype=np.int64)


def _parse_header(h: np.ndarray, n: int) -> tuple[_dt.DType, tuple[int, ...]]:
    if int(h[0]) < 0:
        raise DistributedError("irecv: the message holds a cuda tensor (its data comes over NCCL); receive it with "
                               "recv(), or send a CPU tensor")
    dtype = _dt.ALL[int(h[0])]
    ndim = int(h[1])
    if n != 2 + ndim:
        raise DistributedError(f"recv: malformed message header ({n} numbers for {ndim} dimensions); was the "
                               "message sent with Communicator.send/isend on the same tag?")
    return dtype, tuple(int(s) for s in h[2:2 + ndim])


# ---------------------------------------------------------------------------------------------- handles

class Handle:
    """A pending non-blocking operation: ``wait()`` blocks until it is done and returns its tensor
    (None for sends), ``test()`` says whether it is done without blocking (and drives MPI progress)."""

    def __init__(self, requests: list, finish: Callable[[], Tensor | None] | None = None,
                 keep: Any = None, on_error: Callable[[Exception], None] | None = None) -> None:
        self._requests = requests
        self._finish = finish
        self._on_error = on_error   # may raise a clearer error when MPI reports one
        self._keep = keep           # buffers MPI is reading or writing: alive until completion
        self._done = False
        self._result: Tensor | None = None

    def _complete(self) -> None:
        self._done = True
        self._keep = None
        if self._finish is not None:
            finish, self._finish = self._finish, None
            self._result = finish()

    def wait(self) -> Tensor | None:
        """Block until the operation completes; returns the received/reduced tensor (None for sends)."""
        if not self._done:
            MPI = _mpi()
            try:
                MPI.Request.Waitall(self._requests)
            except MPI.Exception as e:
                self._done = True
                if self._on_error is not None:
                    self._on_error(e)
                raise
            self._complete()
        return self._result

    def test(self) -> bool:
        """Whether the operation has completed (finishing it if so); never blocks."""
        if not self._done:
            MPI = _mpi()
            try:
                done = MPI.Request.Testall(self._requests)
            except MPI.Exception as e:
                self._done = True
                if self._on_error is not None:
                    self._on_error(e)
                raise
            if done:
                self._complete()
        return self._done

    @property
    def done(self) -> bool:
        return self._done

    def __repr__(self) -> str:
        return f"Handle({'done' if self._done else 'pending'})"


# ---------------------------------------------------------------------------------------------- communicator

class Communicator:
    """An MPI intracommunicator that moves ember CPU tensors.

    ``rank`` and ``size`` are this process's rank and the number of processes in the communicator;
    ``mpi`` is the underlying ``mpi4py`` communicator; ``world_ranks[r]`` is the world rank of rank ``r``.
    Every collective must be called by all ranks of the communicator, in the same order.
    """

    def __init__(self, mpi_comm: Any, check: bool | None = None) -> None:
        MPI = _mpi()
        if mpi_comm == MPI.COMM_NULL:
            raise DistributedError("Communicator: got MPI.COMM_NULL (this process is not a member)")
        self.mpi = mpi_comm
        self.rank: int = mpi_comm.Get_rank()
        self.size: int = mpi_comm.Get_size()
        self.check = os.environ.get("EMBER_DIST_CHECK", "1") != "0" if check is None else bool(check)
        group, wgroup = mpi_comm.Get_group(), MPI.COMM_WORLD.Get_group()
        self.world_ranks: tuple[int, ...] = tuple(int(r) for r in MPI.Group.Translate_ranks(
            group, list(range(self.size)), wgroup))
        group.Free()
        wgroup.Free()
        self._nccl: NcclPath | None = None  # the GPU path, made on the first call with a cuda tensor

    def __repr__(self) -> str:
        return f"Communicator(rank={self.rank}, size={self.size})"

    def _gpu(self) -> NcclPath:
        """The NCCL path that cuda tensors take (see ``ember.distributed.nccl``)."""
        if self._nccl is None:
            self._nccl = NcclPath(self)
        return self._nccl

    # -------------------------------------------------------------------- agreement checks
    def _agree(self, name: str, key: Sequence[int], what: str, detail: str, error: type = ShapeError) -> None:
        """Raise ``error`` on every rank unless all ranks passed the same ``key`` (a few ints)."""
        if not self.check or self.size == 1:
            return
        k = np.array(list(key), dtype=np.int64)
        if k.size > 16:  # long keys (e.g. rank lists) compare by checksum
            k = np.array([k.size, zlib.crc32(k.tobytes())], dtype=np.int64)
        both = np.concatenate([k, -k])
        self.mpi.Allreduce(_mpi().IN_PLACE, both, _mpi().MAX)
        if np.array_equal(both[:k.size], -both[k.size:]):
            return
        details = self.mpi.allgather(detail)  # only on the error path: small strings
        listing = ", ".join(f"rank {r}: {d}" for r, d in enumerate(details))
        raise error(f"{name}: {what}; got {listing}")

    def _agree_tensor(self, name: str, t: Tensor, tail_only: bool = False) -> None:
        shape = tuple(t.shape[1:]) if tail_only else tuple(t.shape)
        what = ("every rank must pass tensors of one dtype whose shapes agree after dim 0" if tail_only
                else "every rank must pass a tensor of the same shape and dtype")
        key = [_DTYPE_CODE[t.dtype.name], len(shape), *shape]
        self._agree(name, key, what, _desc(t))

    # -------------------------------------------------------------------- collectives
    def allreduce(self, t: Tensor, op: str = "sum") -> Tensor:
        """A new tensor holding the elementwise reduction (``sum``/``mean``/``max``/``min``/``prod``)
        of ``t`` over all ranks."""
        if is_cuda(t):
            return self._gpu().allreduce("allreduce", t, op, inplace=False)
        return self._allreduce("allreduce", t, op, inplace=False)

    def allreduce_(self, t: Tensor, op: str = "sum") -> Tensor:
        """Reduce ``t`` over all ranks in place; returns ``t``."""
        if is_cuda(t):
            return self._gpu().allreduce("allreduce_", t, op, inplace=True)
        return self._allreduce("allreduce_", t, op, inplace=True)

    def _allreduce(self, name: str, t: Tensor, op: str, inplace: bool) -> Tensor:
        _check_tensor(name, t)
        _check_op(name, op, t)
        self._agree_tensor(name, t)
        if inplace:
            buf = _contig(t, copy=False)
            self.mpi.Allreduce(_mpi().IN_PLACE, buf, _mpi_op(op))
        else:  # MPI reads the input and writes a fresh array: no separate copy
            buf = np.empty(t.shape, dtype=t.dtype.np)
            self.mpi.Allreduce(np.ascontiguousarray(t.data), buf, _mpi_op(op))
        if op == "mean":
            np.divide(buf, self.size, out=buf)
        if inplace:
            _write_back(t, buf)
            return t
        return _wrap(buf, t.dtype)

    def iallreduce_(self, t: Tensor, op: str = "sum") -> Handle:
        """Start reducing ``t`` in place over all ranks; ``wait()`` returns ``t`` when it is done.
        Do not read or write ``t`` until then. For a cuda tensor the reduction is enqueued on the GPU stream
        at once and ``wait()`` returns without a host wait."""
        if is_cuda(t):
            done = self._gpu().allreduce("iallreduce_", t, op, inplace=True)
            return Handle([], lambda: done)
        _check_tensor("iallreduce_", t)
        _check_op("iallreduce_", op, t)
        buf = _contig(t, copy=False)
        req = self.mpi.Iallreduce(_mpi().IN_PLACE, buf, _mpi_op(op))
        size = self.size

        def finish() -> Tensor:
            if op == "mean":
                np.divide(buf, size, out=buf)
            _write_back(t, buf)
            return t
        return Handle([req], finish, keep=buf)

    def broadcast(self, t: Tensor | None, src: int = 0) -> Tensor:
        """A new tensor holding ``src``'s ``t`` on every rank. On other ranks ``t`` may be None (shape and
        dtype then come from ``src``); a tensor given there must match ``src``'s shape and dtype."""
        src = _check_rank("broadcast", "src", src, self.size)
        gpu = is_cuda(t)  # a cuda tensor: the header says so (a negative dtype code), the data goes by NCCL
        if gpu:
            gpu_backend("broadcast", t.device)
        elif self.rank == src or t is not None:
            _check_tensor("broadcast", t)
        if self.rank == src:
            head = _header(t)
            if gpu:
                head[0] = -1 - head[0]
            head = np.concatenate([head, np.zeros(2 + _MAX_NDIM - head.size, np.int64)])
        else:
            head = np.zeros(2 + _MAX_NDIM, np.int64)
        self.mpi.Bcast(head, root=src)
        on_gpu = int(head[0]) < 0
        code = -1 - int(head[0]) if on_gpu else int(head[0])
        dtype, shape = _dt.ALL[code], tuple(int(s) for s in head[2:2 + int(head[1])])
        bad = t is not None and (t.dtype is not dtype or tuple(t.shape) != shape or gpu != on_gpu)
        if self.check and self.size > 1:
            flag = np.array([int(bad)], dtype=np.int64)
            self.mpi.Allreduce(_mpi().IN_PLACE, flag, _mpi().MAX)
            if flag[0]:
                details = self.mpi.allgather("None" if t is None else _desc(t) + (f" on {t.device}" if gpu else ""))
                listing = ", ".join(f"rank {r}: {d}" for r, d in enumerate(details))
                where = " on a cuda device" if on_gpu else ""
                raise ShapeError(f"broadcast: tensors on other ranks must match the shape and dtype of rank "
                                 f"{src}'s ({dtype.name} {shape}{where}) or be None; got {listing}")
        if on_gpu:
            return self._gpu().broadcast_into("broadcast", t, src, dtype, shape)
        buf = _contig(t, copy=True) if self.rank == src else np.empty(shape, dtype=dtype.np)
        self.mpi.Bcast(_as_bytes(buf), root=src)
        return _wrap(buf, dtype)

    def broadcast_(self, t: Tensor, src: int = 0) -> Tensor:
        """Overwrite ``t`` with ``src``'s ``t`` (same shape and dtype on every rank); returns ``t``."""
        if is_cuda(t):
            return self._gpu().broadcast_("broadcast_", t, _check_rank("broadcast_", "src", src, self.size))
        _check_tensor("broadcast_", t)
        src = _check_rank("broadcast_", "src", src, self.size)
        self._agree_tensor("broadcast_", t)
        buf = _contig(t, copy=False)
        self.mpi.Bcast(_as_bytes(buf), root=src)
        if self.rank != src:
            _write_back(t, buf)
        return t

    def ibroadcast_(self, t: Tensor, src: int = 0) -> Handle:
        """Start overwriting ``t`` with ``src``'s ``t``; ``wait()`` returns ``t``."""
        if is_cuda(t):
            done = self._gpu().broadcast_("ibroadcast_", t, _check_rank("ibroadcast_", "src", src, self.size))
            return Handle([], lambda: done)
        _check_tensor("ibroadcast_", t)
        src = _check_rank("ibroadcast_", "src", src, self.size)
        buf = _contig(t, copy=False)
        req = self.mpi.Ibcast(_as_bytes(buf), root=src)
        is_src = self.rank == src

        def finish() -> Tensor:
            if not is_src:
                _write_back(t, buf)
            return t
        return Handle([req], finish, keep=buf)

    def allgather(self, t: Tensor) -> Tensor:
        """Every rank's ``t`` (same shape everywhere) concatenated along dim 0, in rank order.
        0-d tensors are stacked into shape ``(size,)``."""
        if is_cuda(t):
            return self._gpu().allgather("allgather", t)
        _check_tensor("allgather", t)
        self._agree_tensor("allgather", t)
        src = _contig(t, copy=False)
        shape = (self.size,) if t.ndim == 0 else (self.size * t.shape[0], *t.shape[1:])
        out = np.empty(shape, dtype=src.dtype)
        self.mpi.Allgather(_as_bytes(src), _as_bytes(out))
        return _wrap(out, t.dtype)

    def allgather_v(self, t: Tensor) -> Tensor:
        """Every rank's ``t`` concatenated along dim 0, in rank order; dim 0 may differ per rank."""
        if is_cuda(t):
            return self._gpu().allgather_v("allgather_v", t)
        _check_tensor("allgather_v", t)
        if t.ndim == 0:
            raise ShapeError("allgather_v: expected a tensor with at least one dimension, got a 0-d tensor")
        self._agree_tensor("allgather_v", t, tail_only=True)
        src = _contig(t, copy=False)
        rows = np.empty(self.size, dtype=np.int64)
        self.mpi.Allgather(np.array([t.shape[0]], dtype=np.int64), rows)
        row_bytes = int(np.prod(t.shape[1:], dtype=np.int64)) * t.dtype.itemsize
        counts = rows * row_bytes
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]])
        out = np.empty((int(rows.sum()), *t.shape[1:]), dtype=src.dtype)
        self.mpi.Allgatherv(_as_bytes(src), [_as_bytes(out), counts.tolist(), displs.tolist(), _mpi().BYTE])
        return _wrap(out, t.dtype)

    def reduce_scatter(self, t: Tensor, op: str = "sum") -> Tensor:
        """Reduce ``t`` over all ranks and give rank ``r`` chunk ``r`` of dim 0 (split into ``size`` equal chunks)."""
        if is_cuda(t):
            return self._gpu().reduce_scatter("reduce_scatter", t, op)
        _check_tensor("reduce_scatter", t)
        _check_op("reduce_scatter", op, t)
        if t.ndim == 0 or t.shape[0] % self.size:
            raise ShapeError(f"reduce_scatter: dim 0 must split into {self.size} equal chunks (one per rank), got "
                             f"shape {tuple(t.shape)}")
        self._agree_tensor("reduce_scatter", t)
        src = _contig(t, copy=False)
        out = np.empty((t.shape[0] // self.size, *t.shape[1:]), dtype=src.dtype)
        self.mpi.Reduce_scatter_block(src, out, _mpi_op(op))
        if op == "mean":
            np.divide(out, self.size, out=out)
        return _wrap(out, t.dtype)

    def barrier(self) -> None:
        """Block until every rank has called ``barrier``."""
        self.mpi.Barrier()

    # -------------------------------------------------------------------- point to point
    def send(self, t: Tensor, dst: int, tag: int = 0) -> None:
        """Send ``t`` to rank ``dst`` (a small header with its shape and dtype goes first). A cuda tensor's
        header goes over MPI and its data over NCCL, enqueued on the GPU stream."""
        if is_cuda(t):
            gpu_backend("send", t.device)
            dst = _check_rank("send", "dst", dst, self.size)
            tag = _check_tag("send", tag)
            head = _header(t)
            head[0] = -1 - head[0]
            self.mpi.Send(head, dest=dst, tag=tag)
            self._gpu().send_data("send", t, dst)
            return
        _check_tensor("send", t)
        dst = _check_rank("send", "dst", dst, self.size)
        tag = _check_tag("send", tag)
        self.mpi.Send(_header(t), dest=dst, tag=tag)
        self.mpi.Send(_as_bytes(_contig(t, copy=False)), dest=dst, tag=tag)

    def recv(self, src: int, tag: int = 0, out: Tensor | None = None) -> Tensor:
        """Receive a tensor sent by ``send``/``isend`` from ``src`` (``MPI.ANY_SOURCE`` is allowed) into
        ``out`` if given (its shape and dtype must match what was sent), else into a new tensor.
        A cuda tensor sent by ``send`` arrives over NCCL into ``out`` (which must then be on a cuda device)
        or into a new tensor on the current GPU."""
        MPI = _mpi()
        if src != MPI.ANY_SOURCE:
            src = _check_rank("recv", "src", src, self.size)
        tag = _check_tag("recv", tag)
        if out is not None and not is_cuda(out):
            _check_tensor("recv", out, "out")
        head = np.empty(2 + _MAX_NDIM, dtype=np.int64)
        status = MPI.Status()
        self.mpi.Recv(head, source=src, tag=tag, status=status)
        if int(head[0]) < 0 or is_cuda(out):
            return self._recv_gpu(head, status, tag, out)
        dtype, shape = _parse_header(head, status.Get_count(MPI.INT64_T))
        src = status.Get_source()
        if out is None:
            buf = np.empty(shape, dtype=dtype.np)
        else:
            if out.dtype is not dtype or tuple(out.shape) != shape:
                raw = np.empty(shape, dtype=dtype.np)  # drain the message so the channel stays in step
                self.mpi.Recv(_as_bytes(raw), source=src, tag=tag)
                raise ShapeError(f"recv: rank {src} sent {dtype.name} {shape} on tag {tag}, but out is {_desc(out)}")
            buf = _contig(out, copy=False)
        self.mpi.Recv(_as_bytes(buf), source=src, tag=tag)
        if out is None:
            return _wrap(buf, dtype)
        _write_back(out, buf)
        return out

    def _recv_gpu(self, head: np.ndarray, status: Any, tag: int, out: Tensor | None) -> Tensor:
        """The rest of ``recv`` when the message or ``out`` is on a GPU (the header has been received)."""
        MPI = _mpi()
        src = status.Get_source()
        on_gpu = int(head[0]) < 0
        if on_gpu:
            head = head.copy()
            head[0] = -1 - head[0]
        dtype, shape = _parse_header(head, status.Get_count(MPI.INT64_T))
        moved = out is not None and is_cuda(out) != on_gpu
        if out is not None and (moved or out.dtype is not dtype or tuple(out.shape) != shape):
            if on_gpu:  # drain the message so the channel stays in step
                self._gpu().recv_data("recv", src, dtype, shape, None)
            else:
                self.mpi.Recv(_as_bytes(np.empty(shape, dtype=dtype.np)), source=src, tag=tag)
            sent = f"{dtype.name} {shape}" + (" on a cuda device" if on_gpu else " on cpu")
            error = DeviceError if moved else ShapeError
            raise error(f"recv: rank {src} sent {sent} on tag {tag}, but out is {_desc(out)} on {out.device}")
        return self._gpu().recv_data("recv", src, dtype, shape, out)

    def isend(self, t: Tensor, dst: int, tag: int = 0) -> Handle:
        """Start sending ``t`` to ``dst``; do not modify ``t`` until ``wait()`` (which returns None)."""
        if is_cuda(t):
            raise no_request_handles("isend", t)
        _check_tensor("isend", t)
        dst = _check_rank("isend", "dst", dst, self.size)
        tag = _check_tag("isend", tag)
        head, buf = _header(t), _contig(t, copy=False)
        reqs = [self.mpi.Isend(head, dest=dst, tag=tag), self.mpi.Isend(_as_bytes(buf), dest=dst, tag=tag)]
        return Handle(reqs, None, keep=(head, buf))

    def irecv(self, out: Tensor, src: int, tag: int = 0) -> Handle:
        """Start receiving into ``out`` (shape and dtype must match what ``src`` sends); ``wait()`` returns ``out``."""
        if is_cuda(out):
            raise no_request_handles("irecv", out)
        _check_tensor("irecv", out, "out")
        src = _check_rank("irecv", "src", src, self.size)
        tag = _check_tag("irecv", tag)
        head = np.zeros(2 + _MAX_NDIM, dtype=np.int64)
        buf = _contig(out, copy=False)
        reqs = [self.mpi.Irecv(head, source=src, tag=tag), self.mpi.Irecv(_as_bytes(buf), source=src, tag=tag)]

        def check_header() -> None:
            dtype, shape = _parse_header(head, 2 + int(head[1]))
            if dtype is not out.dtype or shape != tuple(out.shape):
                raise ShapeError(f"irecv: rank {src} sent {dtype.name} {shape} on tag {tag}, but out is "
                                 f"{_desc(out)}")

        def finish() -> Tensor:
            check_header()
            _write_back(out, buf)
            return out

        def on_error(e: Exception) -> None:  # a message larger than out: MPI reports truncation
            reqs[0].Wait()
            check_header()
        return Handle(reqs, finish, keep=(head, buf), on_error=on_error)

    # -------------------------------------------------------------------- small Python objects (pickled)
    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """``src``'s ``obj`` on every rank (pickled: for small metadata, never for tensor data)."""
        return self.mpi.bcast(obj, root=_check_rank("broadcast_object", "src", src, self.size))

    def allgather_object(self, obj: Any) -> list:
        """Every rank's ``obj``, in rank order (pickled: for small metadata)."""
        return self.mpi.allgather(obj)

    # -------------------------------------------------------------------- sub-communicators
    def split(self, ranks: Sequence[int]) -> Communicator | None:
        """A communicator of ``ranks`` (ranks of this communicator, i.e. world ranks when called on the
        world), numbered in the order given; None on ranks not in the list. Collective: every rank of this
        communicator must call it with the same list."""
        try:
            members = [int(r) for r in ranks]
        except (TypeError, ValueError):
            raise TypeError(f"split: ranks must be a sequence of ints, got {ranks!r}") from None
        if not members:
            raise ValueError("split: ranks is empty")
        bad = [r for r in members if not 0 <= r < self.size]
        if bad:
            raise ValueError(f"split: ranks {bad} are outside [0, {self.size - 1}]")
        if len(set(members)) != len(members):
            raise ValueError(f"split: ranks contain duplicates: {members}")
        self._agree("split", members, "every rank must pass the same list of ranks", str(members), ValueError)
        MPI = _mpi()
        if self.rank in members:
            sub = self.mpi.Split(0, members.index(self.rank))
        else:
            sub = self.mpi.Split(MPI.UNDEFINED, 0)
        return None if sub == MPI.COMM_NULL else Communicator(sub, check=self.check)

    def split_by(self, color: int | None, key: int = 0) -> Communicator | None:
        """``MPI_Comm_split``: ranks passing the same ``color`` (an int >= 0) form one communicator,
        numbered by ``key`` then by rank here; ``color=None`` gives None (not a member of any)."""
        MPI = _mpi()
        if color is not None and (isinstance(color, bool) or not isinstance(color, (int, np.integer)) or color < 0):
            raise ValueError(f"split_by: color must be an int >= 0 or None, got {color!r}")
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
            raise ValueError(f"split_by: key must be an int, got {key!r}")
        sub = self.mpi.Split(MPI.UNDEFINED if color is None else int(color), int(key))
        return None if sub == MPI.COMM_NULL else Communicator(sub, check=self.check)

    def free(self) -> None:
        """Release the MPI communicator (never the world's) and its NCCL communicators."""
        if self._nccl is not None:
            self._nccl.close()
        MPI = _mpi()
        if self.mpi not in (MPI.COMM_WORLD, MPI.COMM_SELF, MPI.COMM_NULL):
            self.mpi.Free()


def _mpi_op(op: str) -> Any:
    MPI = _mpi()
    return {"sum": MPI.SUM, "mean": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN, "prod": MPI.PROD}[op]


# ---------------------------------------------------------------------------------------------- the world

_WORLD: Communicator | None = None
_LOCAL_RANK = 0


def _user_frames(tb: Any) -> Any:
    """``tb`` without the leading frames of ``python -m mpi4py`` (runpy and mpi4py.run), which ``ember run``
    puts in front of the script."""
    import mpi4py
    skip = os.path.dirname(mpi4py.__file__)
    t = tb
    while t is not None and (t.tb_frame.f_code.co_filename.startswith(("<frozen runpy", skip))
                             or os.path.basename(t.tb_frame.f_code.co_filename) == "runpy.py"):
        t = t.tb_next
    return t if t is not None else tb


def _abort_on_exception(rank: int) -> None:
    """A failing rank prints its traceback (each line prefixed with its rank) and aborts the whole job,
    instead of leaving the other ranks blocked in a collective forever."""
    def hook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        tb = _user_frames(tb)
        text = "".join(traceback.format_exception(exc_type, exc, tb))
        try:
            sys.stderr.write("".join(f"[rank {rank}] {line}" for line in text.splitlines(True)))
            sys.stderr.flush()
        except Exception:
            pass
        MPI = _mpi()
        if MPI.COMM_WORLD.Get_size() > 1:
            time.sleep(0.2)  # let mpiexec forward this rank's stderr before the abort tears the job down
            MPI.COMM_WORLD.Abort(1)

    hook._ember_abort = True  # type: ignore[attr-defined]
    if not getattr(sys.excepthook, "_ember_abort", False):
        sys.excepthook = hook


def init() -> Communicator:
    """Initialize MPI (once; later calls return the same world) and return the world communicator.

    Collective on first call (it finds the ranks sharing this node). Installs a ``sys.excepthook`` that
    prints an uncaught exception's traceback prefixed with the rank and aborts every rank of the job.
    """
    global _WORLD, _LOCAL_RANK
    if _WORLD is None:
        MPI = _mpi()
        if not MPI.Is_initialized():
            MPI.Init_thread()
        world_comm = MPI.COMM_WORLD
        node = world_comm.Split_type(MPI.COMM_TYPE_SHARED, key=world_comm.Get_rank())
        _LOCAL_RANK = node.Get_rank()
        node.Free()
        _WORLD = Communicator(world_comm)
        _abort_on_exception(_WORLD.rank)
    return _WORLD


def is_initialized() -> bool:
    """Whether ``init()`` has been called in this process."""
    return _WORLD is not None


def world() -> Communicator:
    """The world communicator (calls ``init()`` if needed)."""
    return _WORLD if _WORLD is not None else init()


def get_rank() -> int:
    """This process's rank in the world (calls ``init()`` if needed)."""
    return world().rank


def get_world_size() -> int:
    """The number of processes in the world (calls ``init()`` if needed)."""
    return world().size


def get_local_rank() -> int:
    """This process's rank among the processes on its node (MPI's shared-memory split)."""
    world()
    return _LOCAL_RANK
