"""Hybrid parallelism: a data-parallel trunk feeding model-parallel (column-sharded) fully-connected layers.

For models whose trunk is compute-heavy but has few parameters (convolutions) and whose head is a few
large fully-connected layers (few FLOPs, most of the parameters), all-reducing the head's gradients
dominates data-parallel training. ``HybridParallel`` keeps the trunk data parallel (a
``DistributedDataParallel``) and splits every ``Linear`` of the head by output columns: rank ``r`` holds
rows ``cols_r`` of the weight (a column shard of ``W.T``) and of the bias. Per step, with ``B_i`` rows of
the batch on rank ``i`` and ``B = sum B_i``::

    f_i = trunk(x_i)                  (B_i, M)   data parallel; its gradients are averaged by DDP
    F   = all_gather(f_i, dim=0)      (B, M)     the same on every rank;   backward: reduce_scatter (sum)
    for each Linear (weight shard W_r: (N_r, M)), with the head's parameter-free layers applied to the shard:
        Z_r = F @ W_r.T + b_r         (B, N_r)   rank r's columns for the whole global batch (no communication)
        F   = all_gather(Z_r, dim=1)  (B, N)     only between two Linears;  backward: reduce_scatter (sum)
    out_i = all_to_all(Z_r)           (B_i, N)   rank i's rows, all columns; backward: all_to_all back

``out_i`` is what a data-parallel replica would compute for its local batch, so the training loop is the
plain data-parallel one: ``loss_fn(model(x_i), y_i).backward()``, then ``optimizer.step()`` on every rank.
Each backward collective is the adjoint of its forward, so the backward pass computes exactly the gradient
of ``sum_i loss_i``: a shard gets ``d(sum_i loss_i)/dW_r`` and rank ``i``'s trunk ``d loss_i / d f_i``. DDP
averages the trunk gradients over ranks (the objective is ``mean_i loss_i``, the global-batch mean when the
ranks' batches are equally large), so the head's output gradient is scaled by ``1/W`` before the
all-to-all and the trunk's by ``W`` after the first all-gather (``grad_scale``: identity forward), and
every parameter ends up with the gradient of ``mean_i loss_i``. Communication per step: ``B*M``
(+ ``B*N`` per inner Linear) gathered forward and reduce-scattered backward, and ``B*N_last/W`` rows
exchanged by all-to-all each way, against ``2*(W-1)/W * M*N`` per rank to all-reduce a replicated head.

The parameter-free layers of the head must act elementwise (ReLU, Tanh, ...): they see column shards.
The differentiable collectives (``all_gather``, ``reduce_scatter``, ``all_to_all``) and ``grad_scale``
are registry ops and can be used on their own.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..autograd import STATE, no_grad
from ..errors import ShapeError, TraceError
from ..nn.containers import Sequential
from ..nn.linear import Linear
from ..nn.module import Module
from ..nn.parameter import Parameter
from ..ops.creation import tensor as _tensor
from ..ops.registry import Op, apply
from ..tensor import Tensor
from .comm import Communicator, _as_bytes, _check_tensor, _mpi, world
from .data_parallel import DistributedDataParallel

__all__ = ["HybridParallel", "ShardedLinear", "all_gather", "all_to_all", "grad_scale", "reduce_scatter", "shard_sizes"]


def shard_sizes(n: int, parts: int) -> tuple[int, ...]:
    """``parts`` nearly equal sizes summing to ``n`` (the first ``n % parts`` one larger): how ``n`` rows or
    columns are split over ranks."""
    return tuple(n // parts + (1 if r < n % parts else 0) for r in range(parts))


def _front(a: np.ndarray, dim: int) -> np.ndarray:
    """``a`` with ``dim`` moved to the front, C-contiguous (so blocks along ``dim`` are contiguous bytes)."""
    return np.ascontiguousarray(np.moveaxis(a, dim, 0))


def _dim(name: str, x: Tensor, dim: int) -> int:
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not -x.ndim <= dim < x.ndim:
        raise ShapeError(f"{name}: dim {dim!r} is out of range for a tensor of shape {x.shape}")
    return int(dim) % x.ndim


def _sizes_arg(name: str, sizes: Any, size: int) -> tuple[int, ...]:
    try:
        out = tuple(int(s) for s in sizes)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: sizes must be a sequence of ints (one per rank), got {sizes!r}") from None
    if len(out) != size or any(s < 0 for s in out):
        raise ShapeError(f"{name}: sizes must hold one non-negative int per rank ({size} ranks), got {out}")
    return out


def _gathered_sizes(comm: Communicator, n: int) -> tuple[int, ...]:
    out = np.empty(comm.size, dtype=np.int64)
    comm.mpi.Allgather(np.array([n], dtype=np.int64), out)
    return tuple(int(s) for s in out)


def _comm(name: str, comm: Communicator | None) -> Communicator:
    if STATE.tracer is not None:
        raise TraceError(f"{name}: MPI collectives cannot be traced; call it in eager mode")
    if comm is None:
        return world()
    if not isinstance(comm, Communicator):
        raise TypeError(f"{name}: comm must be an ember.distributed.Communicator or None, got {type(comm).__name__}")
    return comm


# ---------------------------------------------------------------------------------------------- the ops
# attrs: comm (mpi4py), rank, dim / split_dim + cat_dim, sizes per rank. Each op's vjp is its adjoint.

def _gather_infer(x: Tensor, *, comm: Any, rank: int, dim: int, sizes: tuple) -> tuple:
    if x.shape[dim] != sizes[rank]:
        raise ShapeError(f"all_gather: rank {rank} passed shape {x.shape}, expected size {sizes[rank]} along dim "
                         f"{dim} (sizes per rank: {sizes})")
    return x.shape[:dim] + (sum(sizes),) + x.shape[dim + 1:], x.dtype


def _gather_impl(xp: Any, x: Any, *, comm: Any, rank: int, dim: int, sizes: tuple) -> Any:
    src = _front(x, dim)
    inner = int(np.prod(src.shape[1:], dtype=np.int64))
    counts = [s * inner * src.itemsize for s in sizes]
    displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist()
    out = np.empty((sum(sizes), *src.shape[1:]), dtype=src.dtype)
    comm.Allgatherv(_as_bytes(src), [_as_bytes(out), counts, displs, _mpi().BYTE])
    return np.ascontiguousarray(np.moveaxis(out, 0, dim))


def _gather_vjp(ctx: Any, g: Tensor) -> tuple:
    return (apply(REDUCE_SCATTER, g, **ctx.attrs),)


def _scatter_infer(x: Tensor, *, comm: Any, rank: int, dim: int, sizes: tuple) -> tuple:
    if x.shape[dim] != sum(sizes):
        raise ShapeError(f"reduce_scatter: rank {rank} passed shape {x.shape}, expected size {sum(sizes)} along dim "
                         f"{dim} (the sum of the sizes per rank {sizes})")
    if x.dtype.name not in ("float32", "float64", "int32", "int64"):
        raise ShapeError(f"reduce_scatter: cannot sum {x.dtype.name} tensors over MPI")
    return x.shape[:dim] + (sizes[rank],) + x.shape[dim + 1:], x.dtype


def _scatter_impl(xp: Any, x: Any, *, comm: Any, rank: int, dim: int, sizes: tuple) -> Any:
    src = _front(x, dim)
    inner = int(np.prod(src.shape[1:], dtype=np.int64))
    out = np.empty((sizes[rank], *src.shape[1:]), dtype=src.dtype)
    comm.Reduce_scatter(src, out, [s * inner for s in sizes], _mpi().SUM)
    return np.ascontiguousarray(np.moveaxis(out, 0, dim))


def _scatter_vjp(ctx: Any, g: Tensor) -> tuple:
    return (apply(ALL_GATHER, g, **ctx.attrs),)


def _a2a_infer(x: Tensor, *, comm: Any, rank: int, split_dim: int, cat_dim: int, split_sizes: tuple,
               cat_sizes: tuple) -> tuple:
    if x.shape[split_dim] != sum(split_sizes) or x.shape[cat_dim] != cat_sizes[rank]:
        raise ShapeError(f"all_to_all: rank {rank} passed shape {x.shape}, expected size {sum(split_sizes)} along "
                         f"dim {split_dim} (split into {split_sizes}) and {cat_sizes[rank]} along dim {cat_dim} "
                         f"(sizes per rank {cat_sizes})")
    shape = list(x.shape)
    shape[split_dim], shape[cat_dim] = split_sizes[rank], sum(cat_sizes)
    return tuple(shape), x.dtype


def _a2a_impl(xp: Any, x: Any, *, comm: Any, rank: int, split_dim: int, cat_dim: int, split_sizes: tuple,
              cat_sizes: tuple) -> Any:
    bounds = np.cumsum((0, *split_sizes))
    blocks = [np.ascontiguousarray(np.take(x, np.arange(bounds[j], bounds[j + 1]), axis=split_dim))
              for j in range(len(split_sizes))]
    send = np.concatenate([b.reshape(-1) for b in blocks]) if blocks else np.empty(0, x.dtype)
    scounts = [b.nbytes for b in blocks]
    mine = list(x.shape)
    mine[split_dim] = split_sizes[rank]
    shapes = []
    for c in cat_sizes:
        s = list(mine)
        s[cat_dim] = c
        shapes.append(tuple(s))
    rcounts = [int(np.prod(s, dtype=np.int64)) * x.itemsize for s in shapes]
    recv = np.empty(sum(rcounts) // x.itemsize, dtype=x.dtype)
    sd = np.concatenate([[0], np.cumsum(scounts)[:-1]]).tolist()
    rd = np.concatenate([[0], np.cumsum(rcounts)[:-1]]).tolist()
    BYTE = _mpi().BYTE
    comm.Alltoallv([_as_bytes(send), scounts, sd, BYTE], [_as_bytes(recv), rcounts, rd, BYTE])
    parts, off = [], 0
    for s, n in zip(shapes, rcounts):
        k = n // x.itemsize
        parts.append(recv[off:off + k].reshape(s))
        off += k
    return np.concatenate(parts, axis=cat_dim)


def _a2a_vjp(ctx: Any, g: Tensor) -> tuple:
    a = ctx.attrs
    return (apply(ALL_TO_ALL, g, comm=a["comm"], rank=a["rank"], split_dim=a["cat_dim"], cat_dim=a["split_dim"],
                  split_sizes=a["cat_sizes"], cat_sizes=a["split_sizes"]),)


def _scale_infer(x: Tensor, *, scale: float) -> tuple:
    return x.shape, x.dtype


def _scale_vjp(ctx: Any, g: Tensor) -> tuple:
    return (g * ctx.attrs["scale"],)


GRAD_SCALE = Op("dist_grad_scale", infer=_scale_infer, impl=lambda xp, x, *, scale: x.view(), vjp=_scale_vjp,
                save_inputs=False, linear=True, view=True)
ALL_GATHER = Op("dist_all_gather", infer=_gather_infer, impl=_gather_impl, vjp=_gather_vjp, save_inputs=False,
                linear=True)
REDUCE_SCATTER = Op("dist_reduce_scatter", infer=_scatter_infer, impl=_scatter_impl, vjp=_scatter_vjp,
                    save_inputs=False, linear=True)
ALL_TO_ALL = Op("dist_all_to_all", infer=_a2a_infer, impl=_a2a_impl, vjp=_a2a_vjp, save_inputs=False, linear=True)


# ---------------------------------------------------------------------------------------------- public ops

def grad_scale(x: Tensor, scale: float) -> Tensor:
    """``x`` unchanged, but the gradient flowing back through it is multiplied by ``scale``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"grad_scale: expected a Tensor, got {type(x).__name__}")
    return apply(GRAD_SCALE, x, scale=float(scale))


def all_gather(x: Tensor, dim: int = 0, comm: Communicator | None = None,
               sizes: Sequence[int] | None = None) -> Tensor:
    """Every rank's ``x`` concatenated along ``dim`` in rank order (sizes along ``dim`` may differ; pass
    ``sizes`` to skip the small all-gather that finds them). Differentiable: the backward sums the
    ranks' gradients and gives each rank its own block (``reduce_scatter``)."""
    c = _comm("all_gather", comm)
    _check_tensor("all_gather", x)
    d = _dim("all_gather", x, dim)
    sizes = _gathered_sizes(c, x.shape[d]) if sizes is None else _sizes_arg("all_gather", sizes, c.size)
    return apply(ALL_GATHER, x, comm=c.mpi, rank=c.rank, dim=d, sizes=sizes)


def reduce_scatter(x: Tensor, sizes: Sequence[int], dim: int = 0, comm: Communicator | None = None) -> Tensor:
    """Sum ``x`` over ranks and give rank ``r`` its block ``r`` along ``dim`` (``sizes[r]`` long; every rank
    passes the same ``sizes``). Differentiable: the backward is ``all_gather``."""
    c = _comm("reduce_scatter", comm)
    _check_tensor("reduce_scatter", x)
    d = _dim("reduce_scatter", x, dim)
    sizes = _sizes_arg("reduce_scatter", sizes, c.size)
    return apply(REDUCE_SCATTER, x, comm=c.mpi, rank=c.rank, dim=d, sizes=sizes)


def all_to_all(x: Tensor, split_dim: int, cat_dim: int, split_sizes: Sequence[int],
               comm: Communicator | None = None, cat_sizes: Sequence[int] | None = None) -> Tensor:
    """Split ``x`` along ``split_dim`` into ``split_sizes`` (one block per rank, the same sizes on every rank),
    send block ``j`` to rank ``j``, and concatenate the blocks received, in rank order, along ``cat_dim``.
    ``cat_sizes`` (every rank's ``x.shape[cat_dim]``) is found with a small all-gather unless given.
    Differentiable: the backward is the all-to-all the other way."""
    c = _comm("all_to_all", comm)
    _check_tensor("all_to_all", x)
    sd, cd = _dim("all_to_all", x, split_dim), _dim("all_to_all", x, cat_dim)
    if sd == cd:
        raise ShapeError(f"all_to_all: split_dim and cat_dim must differ, got {split_dim} and {cat_dim}")
    split_sizes = _sizes_arg("all_to_all", split_sizes, c.size)
    cat_sizes = _gathered_sizes(c, x.shape[cd]) if cat_sizes is None else _sizes_arg("all_to_all", cat_sizes, c.size)
    return apply(ALL_TO_ALL, x, comm=c.mpi, rank=c.rank, split_dim=sd, cat_dim=cd, split_sizes=split_sizes,
                 cat_sizes=cat_sizes)


# ---------------------------------------------------------------------------------------------- layers

class ShardedLinear(Module):
    """Rank ``r``'s column shard of a ``Linear(in_features, out_features)``: ``weight`` holds rows
    ``col_start : col_start + col_sizes[r]`` of the full weight, ``bias`` the same entries. ``forward``
    maps the full input ``(B, in_features)`` to this rank's output columns ``(B, col_sizes[r])``."""

    def __init__(self, linear: Linear, comm: Communicator) -> None:
        super().__init__()
        if not isinstance(linear, Linear):
            raise TypeError(f"ShardedLinear: expected an ember.nn.Linear, got {type(linear).__name__}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.col_sizes = shard_sizes(linear.out_features, comm.size)
        self.col_start = sum(self.col_sizes[:comm.rank])
        stop = self.col_start + self.col_sizes[comm.rank]
        w, b = linear.weight, linear.bias
        self.weight = Parameter(_tensor(np.array(w.data[self.col_start:stop]), dtype=w.dtype))
        if b is not None:
            self.bias = Parameter(_tensor(np.array(b.data[self.col_start:stop]), dtype=b.dtype))
        else:
            self.register_parameter("bias", None)
        for p in self.parameters():
            p.requires_grad_(w.requires_grad)

    def forward(self, input: Tensor) -> Tensor:
        from ..nn.functional.linear import linear
        if input.ndim != 2 or input.shape[1] != self.in_features:
            raise ShapeError(f"ShardedLinear: expected input of shape (B, {self.in_features}), got {input.shape}")
        return linear(input, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, columns={self.col_start}:"
                f"{self.col_start + self.weight.shape[0]}, bias={self.bias is not None}")


class HybridParallel(Module):
    """A data-parallel ``trunk`` (wrapped in ``DistributedDataParallel``) followed by a model-parallel
    ``head`` whose ``Linear`` layers are split by output columns across the ranks of ``comm``.

    ``head``: a ``Sequential`` (or list) of ``Linear`` layers and parameter-free elementwise layers; the
    trunk's output must be 2-D ``(batch, features)``. The full head weights are broadcast from rank 0
    and each rank keeps its shard. ``forward(x_local)`` returns ``(local batch, out_features)`` as a
    data-parallel replica would; train with the usual loop. Construction is collective.
    ``ddp_kwargs`` go to the trunk's ``DistributedDataParallel``.
    """

    def __init__(self, trunk: Module, head: Module | Sequence[Module], comm: Communicator | None = None,
                 **ddp_kwargs: Any) -> None:
        super().__init__()
        comm = _comm("HybridParallel", comm)
        if not isinstance(trunk, Module):
            raise TypeError(f"HybridParallel: trunk must be an ember.nn.Module, got {type(trunk).__name__}")
        layers = list(head) if isinstance(head, (Sequential, list, tuple)) else [head]
        for i, m in enumerate(layers):
            if not isinstance(m, Module):
                raise TypeError(f"HybridParallel: head[{i}] is a {type(m).__name__}, expected an ember.nn.Module")
            if not isinstance(m, Linear) and any(True for _ in m.parameters()):
                raise TypeError(f"HybridParallel: head[{i}] ({type(m).__name__}) has parameters; the head may hold "
                                "only Linear layers and parameter-free elementwise layers")
        linears = [m for m in layers if isinstance(m, Linear)]
        if not linears:
            raise ValueError("HybridParallel: the head has no Linear layer to shard")
        for a, b in itertools.pairwise(linears):
            if b.in_features != a.out_features:
                raise ShapeError(f"HybridParallel: head Linear layers do not chain: out_features {a.out_features} "
                                 f"feeds in_features {b.in_features}")
        self.trunk = DistributedDataParallel(trunk, comm=comm, **ddp_kwargs)
        self.comm = Communicator(comm.mpi.Dup(), check=comm.check)
        with no_grad():
            for lin in linears:
                for p in lin.parameters():
                    if p.device.type != "cpu":
                        raise TypeError(f"HybridParallel: head parameters must be on the CPU, got one on {p.device}")
                    buf = p.data if p.data.flags.c_contiguous else np.ascontiguousarray(p.data)
                    self.comm.mpi.Bcast(_as_bytes(buf), root=0)
                    if buf is not p.data:
                        p.data[...] = buf
                    p._version[0] += 1
        self.head = Sequential(*[ShardedLinear(m, self.comm) if isinstance(m, Linear) else m for m in layers])

    def forward(self, x: Tensor) -> Tensor:
        f = self.trunk(x)
        if not isinstance(f, Tensor) or f.ndim != 2:
            raise ShapeError(f"HybridParallel: the trunk must return a 2-D (batch, features) Tensor, got "
                             f"{getattr(f, 'shape', type(f).__name__)}")
        rows = _gathered_sizes(self.comm, f.shape[0])
        W = self.comm.size
        z = apply(ALL_GATHER, grad_scale(f, W) if W > 1 else f, comm=self.comm.mpi, rank=self.comm.rank, dim=0,
                  sizes=rows)
        cols: tuple[int, ...] | None = None  # None: z is full width; else z holds this rank's columns
        for m in self.head:
            if isinstance(m, ShardedLinear):
                if cols is not None:
                    z = apply(ALL_GATHER, z, comm=self.comm.mpi, rank=self.comm.rank, dim=1, sizes=cols)
                z = m(z)
                cols = m.col_sizes
            else:
                z = m(z)
        if W > 1:
            z = grad_scale(z, 1.0 / W)
        return apply(ALL_TO_ALL, z, comm=self.comm.mpi, rank=self.comm.rank, split_dim=0, cat_dim=1, split_sizes=rows,
                     cat_sizes=cols)

    def gather_head(self) -> list[tuple[Tensor, Tensor | None]]:
        """The full ``(weight, bias)`` of every head Linear, assembled from the shards on every rank
        (collective; for checkpoints and checks)."""
        out = []
        with no_grad():
            for m in self.head:
                if isinstance(m, ShardedLinear):
                    w = all_gather(m.weight.detach(), 0, self.comm, m.col_sizes)
                    b = None if m.bias is None else all_gather(m.bias.detach(), 0, self.comm, m.col_sizes)
                    out.append((w, b))
        return out

