"""Sufficient-factor broadcasting (SFB) for the fully-connected layers of data-parallel training.

The weight gradient of ``Linear(M, N)`` over a batch is ``E.T @ X``: the layer's input rows ``X`` (R, M)
times its output gradients ``E`` (R, N). Instead of all-reducing the (N, M) gradient, every rank can
all-gather its *factors* ``[X_i | E_i]`` and form ``sum_i E_i.T @ X_i`` itself ("late multiply", Xie et
al., Poseidon). Bytes each rank sends per step, with ``W`` ranks and ``R`` rows per rank:

    all-reduce (ring):   2 * (W - 1) / W * (M*N + N) * itemsize     (weight and bias)
    SFB (all-gather):    (W - 1) * R * (M + N) * itemsize           (the bias gradient is E's column sum)

``plan`` tabulates both per ``Linear`` and picks the smaller; for two ranks SFB wins exactly when
``R * (M + N) < M*N + N``, and with more ranks when ``W * R * (M + N) < 2 * (M*N + N)``.

``SFBDataParallel`` is a ``DistributedDataParallel`` whose chosen ``Linear`` layers are left out of the
all-reduce (``skip_params``) and synchronized by SFB instead:

* a forward hook on the layer keeps ``X_i`` (its input, as rows) and registers a hook on the output's
  gradient, which keeps ``E_i`` when backward reaches the layer;
* a hook on the weight (and bias) runs when the local gradient arrives: it all-gathers the packed factors
  of every call of the layer since the last exchange (one ``Allgatherv`` on a private communicator), and
  replaces the local gradient by ``(E_all.T @ X_all) / W`` (``E_all.sum(0) / W`` for the bias), the
  mean over ranks that DDP would have produced. Every rank multiplies the same gathered rows in the same
  order, so the replicas stay bit-identical.

The local ``E_i.T @ X_i`` that autograd computes first is discarded: SFB costs ``W`` times the weight
gradient's FLOPs (plus that one), which is the price of sending factors instead of gradients. Inside
``no_sync()`` the factors are kept and the whole gradient is deferred to the next synchronizing backward
(the SFB layers' ``.grad`` gains zeros meanwhile). An SFB layer's parameters must be used by that layer only
(no weight tying); ``plan`` marks shared ones ``allreduce``.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np

from ..autograd import is_grad_enabled
from ..nn.linear import Linear
from ..nn.module import Module
from ..ops.linalg import _blas_ready
from ..tensor import Tensor, _make
from .comm import Communicator, _as_bytes, _mpi, world
from .data_parallel import DistributedDataParallel

__all__ = ["LayerPlan", "SFBDataParallel", "plan"]

_STRATEGIES = ("auto", "sfb", "allreduce")


class LayerPlan(NamedTuple):
    """How one ``Linear`` is synchronized: bytes each rank sends per step under each scheme, and the choice."""

    name: str
    in_features: int
    out_features: int
    rows: int | None              # input rows per rank per step (None: not given)
    itemsize: int
    allreduce_bytes: int
    sfb_bytes: int | None
    choice: str                   # "sfb" or "allreduce"
    note: str = ""


def allreduce_bytes(numel: int, world_size: int, itemsize: int) -> int:
    """Bytes each rank sends to all-reduce ``numel`` elements with the ring algorithm."""
    return int(2 * (world_size - 1) * numel * itemsize // world_size)


def sfb_bytes(rows: int, in_features: int, out_features: int, world_size: int, itemsize: int) -> int:
    """Bytes each rank sends to all-gather ``rows`` rows of factors ``[X | E]`` (ring all-gather)."""
    return (world_size - 1) * rows * (in_features + out_features) * itemsize


def _human(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _linears(model: Module) -> list[tuple[str, Linear, str]]:
    """``(name, layer, why not eligible or "")`` for every Linear of ``model``."""
    owners: dict[int, int] = {}
    for _, m in model.named_modules():
        for p in m._parameters.values():
            if p is not None:
                owners[id(p)] = owners.get(id(p), 0) + 1
    out = []
    for name, m in model.named_modules():
        if not isinstance(m, Linear):
            continue
        why = ""
        params = [p for p in (m.weight, m.bias) if p is not None]
        if not m.weight.requires_grad:
            why = "frozen weight"
        elif any(owners[id(p)] > 1 for p in params):
            why = "shared parameter"
        elif m.weight.device.type != "cpu":
            why = "not on the CPU"
        out.append((name or "(model)", m, why))
    return out


def plan(model: Module, world_size: int, batch: int | Mapping[str, int] | None, *, strategy: str = "auto",
         verbose: bool = True) -> list[LayerPlan]:
    """For every ``nn.Linear`` of ``model``: the bytes each rank sends per step under ring all-reduce and
    under SFB, and the choice (``strategy="auto"``: the smaller; ``"sfb"``/``"allreduce"``: forced).

    ``batch``: the rows each rank feeds a layer per step (its batch size; batch * sequence length for
    layers applied per token), or a dict from layer name to rows. Prints a table unless ``verbose=False``.
    """
    if not isinstance(model, Module):
        raise TypeError(f"plan: expected an ember.nn.Module, got {type(model).__name__}")
    if isinstance(world_size, bool) or not isinstance(world_size, (int, np.integer)) or world_size < 1:
        raise ValueError(f"plan: world_size must be an int >= 1, got {world_size!r}")
    if strategy not in _STRATEGIES:
        raise ValueError(f"plan: unknown strategy {strategy!r}; expected one of {', '.join(_STRATEGIES)}")
    if strategy == "auto" and batch is None:
        raise ValueError("plan: strategy='auto' needs batch (the rows each rank feeds a layer per step) to choose")
    layers = _linears(model)
    if isinstance(batch, Mapping):
        unknown = sorted(set(batch) - {n for n, _, _ in layers})
        if unknown:
            raise KeyError(f"plan: batch names layers that are not Linear layers of the model: {unknown}")
    elif batch is not None and (isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 0):
        raise ValueError(f"plan: batch must be an int >= 0 (rows per rank), a dict of them, or None, got {batch!r}")
    W = int(world_size)
    records = []
    for name, m, why in layers:
        rows = batch.get(name) if isinstance(batch, Mapping) else batch
        M, N, item = m.in_features, m.out_features, m.weight.dtype.itemsize
        numel = M * N + (N if m.bias is not None else 0)
        ar = allreduce_bytes(numel, W, item)
        sfb = None if rows is None else sfb_bytes(int(rows), M, N, W, item)
        if why:
            choice = "allreduce"
        elif strategy == "auto":
            if sfb is None:
                raise ValueError(f"plan: no rows given for layer {name!r} (batch has no entry for it)")
            choice = "sfb" if sfb < ar else "allreduce"
        else:
            choice = strategy
        records.append(LayerPlan(name, M, N, None if rows is None else int(rows), item, ar, sfb, choice, why))
    if verbose:
        print(format_plan(records, W))
    return records


def format_plan(records: Iterable[LayerPlan], world_size: int) -> str:
    """The table ``plan`` prints."""
    records = list(records)
    head = f"{'layer':<24} {'in x out':>13} {'rows':>6} {'allreduce/step':>15} {'SFB/step':>11}  choice"
    lines = [f"gradient sync plan for {world_size} ranks (bytes each rank sends per step)", head, "-" * len(head)]
    total = 0
    for r in records:
        used = r.sfb_bytes if r.choice == "sfb" else r.allreduce_bytes
        total += used or 0
        note = f" ({r.note})" if r.note else ""
        lines.append(f"{r.name:<24} {f'{r.in_features} x {r.out_features}':>13} "
                     f"{'-' if r.rows is None else r.rows:>6} {_human(r.allreduce_bytes):>15} "
                     f"{_human(r.sfb_bytes):>11}  {r.choice}{note}")
    base = sum(r.allreduce_bytes for r in records)
    lines.append(f"Linear layers: {_human(total)} per step with these choices, {_human(base)} all-reducing all")
    return "\n".join(lines)


class _SFBLayer:
    """The hooks and captured factors of one SFB ``Linear``."""

    def __init__(self, owner: SFBDataParallel, name: str, layer: Linear) -> None:
        self.owner = weakref.ref(owner)
        self.name, self.layer = name, layer
        self.captures: list[list] = []   # [X rows, E rows or None, weakref to the output's grad_fn]
        self.result: dict[str, Tensor] = {}
        self.wants = {"weight"} | ({"bias"} if layer.bias is not None and layer.bias.requires_grad else set())
        layer.register_forward_hook(self._forward_hook)
        layer.weight.register_hook(lambda g: self._param_hook("weight", g))
        if "bias" in self.wants:
            layer.bias.register_hook(lambda g: self._param_hook("bias", g))

    def _forward_hook(self, module: Module, args: tuple, out: Any) -> None:
        if not (isinstance(out, Tensor) and out.requires_grad and out.grad_fn is not None and is_grad_enabled()):
            return
        self.captures = [c for c in self.captures if c[1] is not None or c[2]() is not None]
        x = args[0]
        cap = [x.detach().data.reshape(-1, self.layer.in_features), None, weakref.ref(out.grad_fn)]
        self.captures.append(cap)
        n = self.layer.out_features

        def keep_grad(g: Tensor) -> None:
            cap[1] = g.data.reshape(-1, n)
        out.register_hook(keep_grad)

    def _param_hook(self, which: str, g: Tensor) -> Tensor:
        owner = self.owner()
        if owner is None:
            return g
        if not getattr(owner, "_require_sync", True):  # no_sync(): defer to the synchronizing backward
            return _make(np.zeros(g.shape, dtype=g.data.dtype), g.dtype, g.device)
        if which not in self.result:  # the first of the layer's parameter hooks in this backward pass
            self._exchange(owner, g)
        return self.result.pop(which)

    def _exchange(self, owner: SFBDataParallel, g: Tensor) -> None:
        comm: Communicator = owner._sfb_comm
        M, N = self.layer.in_features, self.layer.out_features
        caps = [c for c in self.captures if c[1] is not None]
        self.captures = [c for c in self.captures if c[1] is None and c[2]() is not None]
        dt = g.data.dtype
        local = (np.concatenate([np.concatenate([X, E], axis=1) for X, E, _ in caps]).astype(dt, copy=False)
                 if caps else np.empty((0, M + N), dtype=dt))
        rows = np.empty(comm.size, dtype=np.int64)
        comm.mpi.Allgather(np.array([local.shape[0]], dtype=np.int64), rows)
        full = np.empty((int(rows.sum()), M + N), dtype=dt)
        counts = (rows * (M + N) * full.itemsize).tolist()
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist()
        comm.mpi.Allgatherv(_as_bytes(np.ascontiguousarray(local)), [_as_bytes(full), counts, displs, _mpi().BYTE])
        X_all, E_all = full[:, :M], full[:, M:]
        gw = np.matmul(_blas_ready(E_all.T), _blas_ready(X_all))
        np.divide(gw, comm.size, out=gw)
        self.result = {"weight": _make(gw, g.dtype, g.device)}
        if "bias" in self.wants:
            self.result["bias"] = _make(E_all.sum(0) / comm.size, g.dtype, g.device)
        owner.sfb_bytes_sent += local.nbytes * (comm.size - 1)


class SFBDataParallel(DistributedDataParallel):
    """Data-parallel training where chosen ``nn.Linear`` layers synchronize by sufficient-factor
    broadcasting and everything else by DDP's bucketed all-reduce.

    ``batch``: rows each rank feeds a layer per step (int or dict by layer name; needed for
    ``strategy="auto"``, which picks SFB per layer where it sends fewer bytes, see ``plan``).
    ``strategy="sfb"`` uses SFB for every eligible Linear, ``"allreduce"`` for none. The plan is kept in
    ``self.layer_plan``; ``self.sfb_bytes_sent`` counts the bytes this rank's SFB exchanges sent.
    Other arguments are DDP's. Construction is collective.
    """

    def __init__(self, module: Module, comm: Communicator | None = None, batch: int | Mapping[str, int] | None = None,
                 strategy: str = "auto", bucket_cap_mb: float = 25.0, broadcast_buffers: bool = True,
                 find_unused_parameters: bool = False) -> None:
        if comm is None:
            comm = world()
        if not isinstance(comm, Communicator):
            raise TypeError(f"SFBDataParallel: comm must be an ember.distributed.Communicator or None, got "
                            f"{type(comm).__name__}")
        if not isinstance(module, Module):
            raise TypeError(f"SFBDataParallel: expected an ember.nn.Module, got {type(module).__name__}")
        if strategy not in _STRATEGIES:
            raise ValueError(f"SFBDataParallel: unknown strategy {strategy!r}; expected one of "
                             f"{', '.join(_STRATEGIES)}")
        if strategy == "auto" and batch is None:
            raise ValueError("SFBDataParallel: strategy='auto' needs batch= (the rows each rank feeds a layer per "
                             "step) to choose between SFB and all-reduce per layer")
        records = plan(module, comm.size, batch, strategy=strategy, verbose=False)
        by_name = {n: m for n, m, _ in _linears(module)}
        chosen = [(r.name, by_name[r.name]) for r in records if r.choice == "sfb"]
        skip = [p for _, m in chosen for p in (m.weight, m.bias) if p is not None]
        super().__init__(module, comm=comm, bucket_cap_mb=bucket_cap_mb, broadcast_buffers=broadcast_buffers,
                         skip_params=skip, find_unused_parameters=find_unused_parameters)
        self.layer_plan = records
        self.sfb_bytes_sent = 0
        self._sfb_comm = Communicator(comm.mpi.Dup(), check=False)
        self._sfb_layers = [_SFBLayer(self, name, m) for name, m in chosen]

    @property
    def sfb_layers(self) -> list[str]:
        """Names of the layers synchronized by SFB."""
        return [s.name for s in self._sfb_layers]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", sfb_layers={self.sfb_layers}"
