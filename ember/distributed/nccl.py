"""The GPU path of ``Communicator``: tensors on ``cuda`` devices move through NCCL (``cupy.cuda.nccl``);
CPU tensors keep MPI. The API is the communicator's; it dispatches here on the tensor's device.

One NCCL communicator per ember ``Communicator`` and GPU, made by the first GPU call on that GPU:
rank 0 draws ``nccl.get_unique_id()`` and broadcasts it over the communicator's MPI, so NCCL ranks are
the MPI ranks. Making it is collective, so the first GPU call on a communicator must be made by all
of its ranks (a collective, or a send/recv pair on a two-rank communicator); later point-to-point
calls involve only the pair. Each call is enqueued on
CuPy's current stream of the tensor's GPU: results are ready for later GPU work without a host wait,
and ``.cpu()``/``.item()``/``ember.cuda.synchronize()`` wait for them. ``barrier()`` stays an MPI
barrier and does not wait for GPU work.

Reductions take the dtypes and ops of the MPI path (``mean`` is a sum divided on the GPU); moves
(broadcast, allgather, send/recv) carry any dtype as bytes. Headers (shape, dtype) go over MPI, the
data over NCCL, so ``recv`` learns from the header whether the data comes by NCCL or MPI. What NCCL
lacks: request handles for point-to-point (``isend``/``irecv`` of cuda tensors raise ``DeviceError``;
``send``/``recv`` do not block the host on the data), tag matching (tags order the headers only:
GPU messages between two ranks must be received in the order they were sent), and a variable-size
allgather (``allgather_v`` pads every rank's rows to the largest count and compacts the result).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import dtypes as _dt
from ..device import get_backend, to_device
from ..errors import DeviceError, ShapeError
from ..tensor import Tensor, _make

# NCCL's names for ember dtypes it can reduce, and for the reduction ops (``mean`` sums, then divides).
_NCCL_DTYPES = {"int8": "NCCL_INT8", "uint8": "NCCL_UINT8", "int32": "NCCL_INT32", "int64": "NCCL_INT64",
                "float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64"}
_NCCL_OPS = {"sum": "NCCL_SUM", "mean": "NCCL_SUM", "max": "NCCL_MAX", "min": "NCCL_MIN", "prod": "NCCL_PROD"}
GPU_KEY = 1000  # added to the dtype code in agreement keys: ranks mixing cuda and CPU tensors disagree


def is_cuda(t: Any) -> bool:
    """Whether ``t`` is a tensor on a cuda device (and so goes through NCCL)."""
    return isinstance(t, Tensor) and t.device.type == "cuda"


def gpu_backend(name: str, device: Any) -> Any:
    """The backend of a cuda device, or a ``DeviceError`` naming the call, the device and what to do."""
    try:
        return get_backend(device)
    except DeviceError as e:
        raise DeviceError(f"{name}: a tensor on {device} is communicated through NCCL, which needs a usable GPU "
                          f"here ({e}); MPI collectives take CPU tensors: move it with .cpu() first") from None


def current_gpu(name: str) -> Any:
    """The current cuda device (where a tensor received without ``out`` goes)."""
    from ..backend import cuda
    try:
        return to_device(f"cuda:{cuda.current_index()}")
    except DeviceError as e:
        raise DeviceError(f"{name}: the message holds a cuda tensor, but {e}") from None


def desc(t: Tensor) -> str:
    """What a rank passed, for agreement errors: dtype, shape and device."""
    return f"{t.dtype.name} {tuple(t.shape)} on {t.device}"


class NcclPath:
    """The NCCL side of one ``Communicator`` (made on its first GPU call)."""

    def __init__(self, comm: Any) -> None:
        self.comm = comm
        self._nccl_comms: dict[int, Any] = {}

    def close(self) -> None:
        """Destroy the NCCL communicators (``Communicator.free`` calls this)."""
        for nc in self._nccl_comms.values():
            nc.destroy()
        self._nccl_comms.clear()

    # -------------------------------------------------------------------- plumbing
    def _setup(self, name: str, device: Any) -> tuple[Any, Any, Any]:
        """(backend, the nccl module, the NCCL communicator) for ``device``."""
        b = gpu_backend(name, device)
        try:
            nccl = b.nccl()
        except DeviceError as e:
            raise DeviceError(f"{name}: a tensor on {device} is communicated through NCCL, but {e}; move it "
                              "with .cpu() to use MPI instead") from None
        nc = self._nccl_comms.get(b.index)
        if nc is None:
            uid = nccl.get_unique_id() if self.comm.rank == 0 else None
            uid = self.comm.mpi.bcast(uid, root=0)
            with b.activate():
                nc = nccl.NcclCommunicator(self.comm.size, uid, self.comm.rank)
            self._nccl_comms[b.index] = nc
        return b, nccl, nc

    def agree(self, name: str, t: Tensor, tail_only: bool = False) -> None:
        """The MPI path's shape/dtype agreement, with a key no CPU tensor can produce."""
        from .comm import _DTYPE_CODE
        shape = tuple(t.shape[1:]) if tail_only else tuple(t.shape)
        what = ("every rank must pass cuda tensors of one dtype whose shapes agree after dim 0" if tail_only
                else "every rank must pass a cuda tensor of the same shape and dtype")
        self.comm._agree(name, [_DTYPE_CODE[t.dtype.name] + GPU_KEY, len(shape), *shape], what, desc(t))

    @staticmethod
    def _contig(b: Any, a: Any) -> Any:
        return a if a.flags.c_contiguous else b.xp.ascontiguousarray(a)

    @staticmethod
    def _write_back(t: Tensor, buf: Any) -> None:
        if buf is not t.data:
            t.data[...] = buf.reshape(t.data.shape)
        t._version[0] += 1

    # -------------------------------------------------------------------- collectives
    def allreduce(self, name: str, t: Tensor, op: str, inplace: bool) -> Tensor:
        """``Communicator.allreduce``/``allreduce_``/``iallreduce_`` for a cuda tensor."""
        from .comm import _check_op
        gpu_backend(name, t.device)
        _check_op(name, op, t)
        self.agree(name, t)
        b, nccl, nc = self._setup(name, t.device)
        with b.activate():
            src = self._contig(b, t.data)
            buf = src if inplace else b.empty(t.shape, t.dtype.np)
            if src.size:
                nc.allReduce(b.data_ptr(src), b.data_ptr(buf), src.size, getattr(nccl, _NCCL_DTYPES[t.dtype.name]),
                             getattr(nccl, _NCCL_OPS[op]), b.stream_ptr())
            if op == "mean":
                b.xp.divide(buf, self.comm.size, out=buf)
        if inplace:
            self._write_back(t, buf)
            return t
        return _make(buf, t.dtype, t.device)

    def broadcast_into(self, name: str, t: Tensor | None, src: int, dtype: _dt.DType, shape: tuple) -> Tensor:
        """The data phase of ``broadcast`` (the header went over MPI): a new tensor on every rank."""
        device = t.device if t is not None else current_gpu(name)
        b, nccl, nc = self._setup(name, device)
        with b.activate():
            if self.comm.rank == src:
                buf = b.xp.array(t.data, order="C", copy=True)
            else:
                buf = b.empty(shape, dtype.np)
            if buf.nbytes:
                nc.broadcast(b.data_ptr(buf), b.data_ptr(buf), buf.nbytes, nccl.NCCL_UINT8, src, b.stream_ptr())
        return _make(buf, dtype, device)

    def broadcast_(self, name: str, t: Tensor, src: int) -> Tensor:
        """``Communicator.broadcast_``/``ibroadcast_`` for a cuda tensor."""
        gpu_backend(name, t.device)
        self.agree(name, t)
        b, nccl, nc = self._setup(name, t.device)
        with b.activate():
            buf = self._contig(b, t.data)
            if buf.nbytes:
                nc.broadcast(b.data_ptr(buf), b.data_ptr(buf), buf.nbytes, nccl.NCCL_UINT8, src, b.stream_ptr())
        if self.comm.rank != src:
            self._write_back(t, buf)
        return t

    def allgather(self, name: str, t: Tensor) -> Tensor:
        """``Communicator.allgather`` for a cuda tensor."""
        gpu_backend(name, t.device)
        self.agree(name, t)
        b, nccl, nc = self._setup(name, t.device)
        size = self.comm.size
        shape = (size,) if t.ndim == 0 else (size * t.shape[0], *t.shape[1:])
        with b.activate():
            src = self._contig(b, t.data)
            out = b.empty(shape, t.dtype.np)
            if src.nbytes:
                nc.allGather(b.data_ptr(src), b.data_ptr(out), src.nbytes, nccl.NCCL_UINT8, b.stream_ptr())
        return _make(out, t.dtype, t.device)

    def allgather_v(self, name: str, t: Tensor) -> Tensor:
        """``Communicator.allgather_v`` for a cuda tensor: pad to the largest row count, gather, compact."""
        gpu_backend(name, t.device)
        if t.ndim == 0:
            raise ShapeError(f"{name}: expected a tensor with at least one dimension, got a 0-d tensor")
        self.agree(name, t, tail_only=True)
        b, nccl, nc = self._setup(name, t.device)
        size = self.comm.size
        rows = np.empty(size, dtype=np.int64)
        self.comm.mpi.Allgather(np.array([t.shape[0]], dtype=np.int64), rows)
        most = int(rows.max())
        tail = tuple(t.shape[1:])
        xp = b.xp
        with b.activate():
            padded = b.empty((most, *tail), t.dtype.np)
            padded[:t.shape[0]] = t.data
            gathered = b.empty((size * most, *tail), t.dtype.np)
            if padded.nbytes:
                nc.allGather(b.data_ptr(padded), b.data_ptr(gathered), padded.nbytes, nccl.NCCL_UINT8,
                             b.stream_ptr())
            out = xp.concatenate([gathered[r * most:r * most + int(rows[r])] for r in range(size)], axis=0)
        return _make(out, t.dtype, t.device)

    def reduce_scatter(self, name: str, t: Tensor, op: str) -> Tensor:
        """``Communicator.reduce_scatter`` for a cuda tensor."""
        from .comm import _check_op
        gpu_backend(name, t.device)
        _check_op(name, op, t)
        size = self.comm.size
        if t.ndim == 0 or t.shape[0] % size:
            raise ShapeError(f"{name}: dim 0 must split into {size} equal chunks (one per rank), got shape "
                             f"{tuple(t.shape)}")
        self.agree(name, t)
        b, nccl, nc = self._setup(name, t.device)
        with b.activate():
            src = self._contig(b, t.data)
            out = b.empty((t.shape[0] // size, *t.shape[1:]), t.dtype.np)
            if out.size:
                nc.reduceScatter(b.data_ptr(src), b.data_ptr(out), out.size,
                                 getattr(nccl, _NCCL_DTYPES[t.dtype.name]), getattr(nccl, _NCCL_OPS[op]),
                                 b.stream_ptr())
            if op == "mean":
                b.xp.divide(out, size, out=out)
        return _make(out, t.dtype, t.device)

    # -------------------------------------------------------------------- point to point (header over MPI)
    def send_data(self, name: str, t: Tensor, dst: int) -> None:
        """The data phase of ``send`` for a cuda tensor (the header went over MPI)."""
        b, nccl, nc = self._setup(name, t.device)
        with b.activate():
            buf = self._contig(b, t.data)
            if buf.nbytes:
                nc.send(b.data_ptr(buf), buf.nbytes, nccl.NCCL_UINT8, dst, b.stream_ptr())

    def recv_data(self, name: str, src: int, dtype: _dt.DType, shape: tuple, out: Tensor | None) -> Tensor:
        """The data phase of ``recv`` of a cuda tensor: into ``out`` (a cuda tensor) or a new tensor on the
        current GPU."""
        device = out.device if out is not None else current_gpu(name)
        b, nccl, nc = self._setup(name, device)
        with b.activate():
            direct = out is not None and out.data.flags.c_contiguous
            buf = out.data if direct else b.empty(shape, dtype.np)
            if buf.nbytes:
                nc.recv(b.data_ptr(buf), buf.nbytes, nccl.NCCL_UINT8, src, b.stream_ptr())
        if out is None:
            return _make(buf, dtype, device)
        self._write_back(out, buf)
        return out


def no_request_handles(name: str, t: Tensor) -> DeviceError:
    """The error for non-blocking point-to-point of cuda tensors (NCCL has no request handles)."""
    return DeviceError(f"{name}: non-blocking point-to-point of cuda tensors is not supported (NCCL has no request "
                       f"handles; the tensor is on {t.device}); use send/recv, which do not block the host on GPU "
                       "data, or move the tensor with .cpu() to use MPI")
