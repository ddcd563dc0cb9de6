"""Differentiable point-to-point communication (Chainer-MN style): split a model across ranks by hand.

``send`` and ``recv`` are ops in the registry whose gradients are each other: the backward of a send
receives the gradient from the destination, and the backward of a receive sends the gradient back to
the source. A two-stage model::

    # rank 0                                   # rank 1
    h = stage0(x)                              h = dist.recv(src=0)          # requires grad
    phi = dist.send(h, dst=1)                  loss = loss_fn(stage1(h), t)
    phi.backward()                             loss.backward()               # sends dL/dh to rank 0

``send`` returns a *delegate*: a 0-d zero tensor that stands for the message in the sender's graph.
``phi.backward()`` runs the send's backward, which blocks until rank 1's backward sends ``dL/dh``, and
then carries that gradient into ``stage0``. A rank that both sends and later receives passes the
delegate to ``recv(..., delegate=phi)``: the received tensor's backward then continues into the send
(so one ``loss.backward()`` covers both), in the order Chainer-MN uses.

Messages: a forward message is a small int64 header ``[dtype code, ndim, *shape, needs_grad]``
followed by the data, on ``tag``; ``needs_grad`` tells the receiver whether the sender will wait for a
gradient (the received tensor requires grad exactly then, so no gradient is ever sent to a rank that
does not expect one). A gradient goes back as data only, on the same tag, in the other direction.
Sends are non-blocking (MPI ``Isend`` of a private copy), so two ranks sending to each other at once
never deadlock; ``wait_sends()`` blocks until every send this process started has completed. Receives
block. Both ranks must run matching sends and receives in the same order, and a rank whose send
expects a gradient must call backward on its delegate.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import dtypes as _dt
from ..autograd import STATE, is_grad_enabled
from ..device import CPU
from ..errors import DeviceError, ShapeError, TraceError
from ..ops.creation import zeros
from ..ops.movement import expand
from ..ops.registry import Op, apply
from ..tensor import Tensor
from .comm import (
    _DTYPE_CODE,
    _MAX_NDIM,
    Communicator,
    DistributedError,
    _as_bytes,
    _check_rank,
    _check_tag,
    _mpi,
    world,
)

__all__ = ["recv", "send", "wait_sends"]

# Sends in flight: (MPI requests, the buffers they read). Completed ones are dropped on the next send.
_PENDING: list[tuple[list, tuple]] = []


def _comm(name: str, comm: Communicator | None) -> Communicator:
    if comm is None:
        return world()
    if not isinstance(comm, Communicator):
        raise TypeError(f"{name}: comm must be an ember.distributed.Communicator or None, got {type(comm).__name__}")
    return comm


def _not_traced(name: str) -> None:
    if STATE.tracer is not None:
        raise TraceError(f"{name}: point-to-point communication cannot be traced; call it in eager mode")


def _prune() -> None:
    MPI = _mpi()
    _PENDING[:] = [p for p in _PENDING if not MPI.Request.Testall(p[0])]


def wait_sends() -> None:
    """Block until every ``send`` (and every gradient sent back by a ``recv``'s backward) has completed."""
    if _PENDING:
        MPI = _mpi()
        reqs = [r for p in _PENDING for r in p[0]]
        MPI.Request.Waitall(reqs)
        _PENDING.clear()


# ---------------------------------------------------------------------------------------------- the ops

def _send_infer(x: Tensor, *, comm: Any, dst: int, tag: int, header: bool, grad: bool, shape: tuple,
                dtype: _dt.DType) -> tuple:
    return (), x.dtype


def _send_impl(xp: Any, x: Any, *, comm: Any, dst: int, tag: int, header: bool, grad: bool, shape: tuple,
               dtype: _dt.DType) -> Any:
    MPI = _mpi()
    buf = np.array(x, order="C", copy=True)  # MPI reads it after we return, while the caller may reuse x
    keep: tuple = (buf,)
    reqs = []
    if header:
        head = np.array([_DTYPE_CODE[dtype.name], buf.ndim, *buf.shape, int(grad)], dtype=np.int64)
        reqs.append(comm.Isend(head, dest=dst, tag=tag))
        keep = (head, buf)
    reqs.append(comm.Isend([_as_bytes(buf), MPI.BYTE], dest=dst, tag=tag))
    _prune()
    _PENDING.append((reqs, keep))
    return np.zeros((), dtype=buf.dtype)


def _send_vjp(ctx: Any, g: Tensor) -> tuple:
    a = ctx.attrs
    gx = apply(RECV, g, comm=a["comm"], src=a["dst"], tag=a["tag"], shape=a["shape"], dtype=a["dtype"],
               grad=False, delegate_shape=())
    return (gx,)


def _recv_infer(delegate: Tensor, *, comm: Any, src: int, tag: int, shape: tuple, dtype: _dt.DType, grad: bool,
                delegate_shape: tuple) -> tuple:
    return shape, dtype


def _recv_impl(xp: Any, delegate: Any, *, comm: Any, src: int, tag: int, shape: tuple, dtype: _dt.DType,
               grad: bool, delegate_shape: tuple) -> Any:
    MPI = _mpi()
    buf = np.empty(shape, dtype=dtype.np)
    status = MPI.Status()
    try:
        comm.Recv([_as_bytes(buf), MPI.BYTE], source=src, tag=tag, status=status)
    except MPI.Exception as e:
        raise DistributedError(f"recv: the message from rank {src} on tag {tag} is larger than the expected "
                               f"{dtype.name} {shape} ({buf.nbytes} bytes); do both ranks run matching "
                               "send/recv calls in the same order?") from e
    n = status.Get_count(MPI.BYTE)
    if n != buf.nbytes:
        raise DistributedError(f"recv: expected {dtype.name} {shape} ({buf.nbytes} bytes) from rank {src} on tag "
                               f"{tag}, got {n} bytes; do both ranks run matching send/recv calls in the same order?")
    return buf


def _recv_vjp(ctx: Any, g: Tensor) -> tuple:
    a = ctx.attrs
    if a["grad"]:  # the sender waits for this gradient: send it back (the send's output is a 0-d zero)
        phi = apply(SEND, g, comm=a["comm"], dst=a["src"], tag=a["tag"], header=False, grad=False,
                    shape=g.shape, dtype=g.dtype)
    else:
        phi = zeros((), dtype=g.dtype, device=g.device)
    shape = a["delegate_shape"]
    return (phi if shape == () else expand(phi, shape),)


SEND = Op("dist_send", infer=_send_infer, impl=_send_impl, vjp=_send_vjp, save_inputs=False)
RECV = Op("dist_recv", infer=_recv_infer, impl=_recv_impl, vjp=_recv_vjp, save_inputs=False)


# ---------------------------------------------------------------------------------------------- public API

def send(x: Tensor, dst: int, *, comm: Communicator | None = None, tag: int = 0) -> Tensor:
    """Send ``x`` to rank ``dst`` (non-blocking) and return its delegate, a 0-d zero tensor.

    When ``x`` requires grad (and grad mode is on), the delegate requires grad too: calling
    ``delegate.backward()`` (or passing it to a later ``recv`` as ``delegate``) receives ``dL/dx`` from
    ``dst`` and back-propagates it into ``x``'s graph.
    """
    _not_traced("send")
    c = _comm("send", comm)
    if not isinstance(x, Tensor):
        raise TypeError(f"send: expected a Tensor, got {type(x).__name__}")
    if x.device is not CPU and x.device != CPU:
        raise DeviceError(f"send: MPI point-to-point takes CPU tensors, got a tensor on {x.device}")
    if x.ndim > _MAX_NDIM:
        raise ShapeError(f"send: tensors of at most {_MAX_NDIM} dimensions can be sent, got shape {x.shape}")
    dst = _check_rank("send", "dst", dst, c.size)
    if dst == c.rank:
        raise ValueError(f"send: dst is this process's own rank ({dst}); send to another rank")
    tag = _check_tag("send", tag)
    grad = bool(x.requires_grad and is_grad_enabled() and x.dtype.is_floating_point)
    return apply(SEND, x, comm=c.mpi, dst=dst, tag=tag, header=True, grad=grad, shape=tuple(x.shape), dtype=x.dtype)


def recv(src: int, *, comm: Communicator | None = None, tag: int = 0, delegate: Tensor | None = None) -> Tensor:
    """Receive the tensor ``src`` sent with ``send`` (blocking); shape and dtype come with the message.

    The result requires grad when the sender's tensor did; its backward sends the gradient to ``src``.
    ``delegate`` (e.g. the delegate of an earlier ``send`` of this rank) is linked into the result's
    graph, so back-propagating through the result continues into it.
    """
    _not_traced("recv")
    c = _comm("recv", comm)
    src = _check_rank("recv", "src", src, c.size)
    if src == c.rank:
        raise ValueError(f"recv: src is this process's own rank ({src}); receive from another rank")
    tag = _check_tag("recv", tag)
    if delegate is not None and not isinstance(delegate, Tensor):
        raise TypeError(f"recv: delegate must be a Tensor or None, got {type(delegate).__name__}")
    MPI = _mpi()
    head = np.empty(3 + _MAX_NDIM, dtype=np.int64)
    status = MPI.Status()
    try:
        c.mpi.Recv(head, source=src, tag=tag, status=status)
    except MPI.Exception as e:
        raise DistributedError(f"recv: the message from rank {src} on tag {tag} is not a send() header; do both "
                               "ranks run matching send/recv calls in the same order?") from e
    n, ndim = status.Get_count(MPI.INT64_T), int(head[1])
    if n != 3 + ndim or not 0 <= int(head[0]) < len(_dt.ALL):
        raise DistributedError(f"recv: malformed header from rank {src} on tag {tag} ({n} numbers); was it sent "
                               "with ember.distributed.send?")
    dtype, shape, grad = _dt.ALL[int(head[0])], tuple(int(s) for s in head[2:2 + ndim]), bool(head[2 + ndim])
    grad = grad and dtype.is_floating_point
    attrs = {"comm": c.mpi, "src": src, "tag": tag, "shape": shape, "dtype": dtype, "grad": grad}
    if grad and not is_grad_enabled():
        _recv_impl(np, None, delegate_shape=(), **attrs)  # drain the data first: the channel stays in step
        raise DistributedError(f"recv: rank {src} sent a tensor that requires grad and waits for its gradient, but "
                               "grad mode is off here; run both ranks with the same grad mode")
    if delegate is None or (grad and not delegate.requires_grad):
        # A fresh leaf that requires grad puts the result in the graph, so its backward (the send back) runs.
        delegate = zeros((), dtype=dtype if dtype.is_floating_point else _dt.float32, requires_grad=grad)
    return apply(RECV, delegate, delegate_shape=tuple(delegate.shape), **attrs)
