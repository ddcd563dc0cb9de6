"""Data parallelism: every rank holds the whole model, runs its share of the batch, and gradients are
averaged across ranks during the backward pass.

How gradient synchronization works (``DistributedDataParallel``):

* At construction the parameters and buffers are broadcast from rank 0, and the parameters that need
  syncing are packed, in reverse registration order (roughly the order backward produces their
  gradients), into per-dtype buckets of at most ``bucket_cap_mb``.
* A post-accumulate-grad hook on each parameter counts it ready. When every parameter of a bucket is
  ready (and every earlier bucket has been launched, so all ranks issue collectives in the same order),
  the bucket's gradients are copied into one flat buffer and a non-blocking ``Iallreduce`` starts:
  communication overlaps the rest of the backward pass. Each hook call also tests the pending
  requests, which drives MPI's progress engine.
* When the last parameter's hook runs -- the end of backward as far as the parameters are concerned --
  the hook waits for every bucket and writes the averaged gradients back into ``p.grad``. So after
  ``loss.backward()`` returns, ``.grad`` holds the mean over ranks and the optimizer can step.
* If some parameters get no gradient in a backward pass (a branch not taken), the sync cannot finish
  by itself: pass ``find_unused_parameters=True`` (the graph is walked after each forward and unused
  parameters are counted ready right away), or call ``ddp.finish_gradient_sync()`` after backward. The
  next forward raises if a sync was left unfinished rather than let ranks silently diverge.
* Row-sparse gradients (``Embedding(sparse=True)``) are all-reduced dense and come back dense.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from ..autograd import Node, is_grad_enabled, no_grad
from ..nn.module import Module
from ..tensor import Tensor, _make
from .comm import _DTYPE_CODE, Communicator, DistributedError, Handle, world


class _Bucket:
    """Parameters whose gradients travel in one all-reduce; the last ``len(params)`` slots of ``buffer``
    flag which ranks had a gradient for each parameter (to tell globally unused parameters apart)."""

    __slots__ = ("buffer", "dtype", "handle", "names", "numels", "offsets", "params", "ready")

    def __init__(self, dtype: Any) -> None:
        self.dtype = dtype
        self.params: list[Tensor] = []
        self.names: list[str] = []
        self.offsets: list[int] = []
        self.numels: list[int] = []
        self.buffer: np.ndarray | None = None
        self.handle: Handle | None = None
        self.ready = 0

    @property
    def nbytes(self) -> int:
        return (sum(self.numels) + len(self.params)) * self.dtype.itemsize

    def add(self, name: str, p: Tensor) -> None:
        self.offsets.append(sum(self.numels))
        self.numels.append(p.numel())
        self.params.append(p)
        self.names.append(name)


def _tensors_in(obj: Any) -> Iterator[Tensor]:
    """Tensors in a (nested) tuple/list/dict output."""
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors_in(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors_in(o)


def _reachable_leaves(outputs: Iterable[Tensor]) -> set[int]:
    """ids of the leaf tensors a backward pass from ``outputs`` would reach (iterative walk)."""
    leaves: set[int] = set()
    seen: set[int] = set()
    stack: list[Any] = []
    for t in outputs:
        if t.requires_grad:
            stack.append(t if t.grad_fn is None else t.grad_fn)
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, Node):
            stack.extend(e for e in obj.edges if e is not None)
        else:
            leaves.add(id(obj))
    return leaves


class DistributedDataParallel(Module):
    """Wrap ``module`` for data-parallel training over ``comm`` (default: the world).

    Call it like the module; after ``loss.backward()`` every parameter's ``.grad`` is the mean of the
    ranks' gradients (see the module docstring for the mechanism). ``no_sync()`` skips the sync for
    gradient accumulation; ``skip_params`` are left alone (synchronized some other way).
    ``state_dict``/``load_state_dict`` pass through to the wrapped module (no ``module.`` prefix; a
    prefixed dict loads too). With ``broadcast_buffers``, buffers (e.g. batch-norm statistics) are
    broadcast from rank 0 before each forward in training mode.
    """

    def __init__(self, module: Module, comm: Communicator | None = None, bucket_cap_mb: float = 25.0,
                 broadcast_buffers: bool = True, skip_params: Iterable[Tensor] = (),
                 find_unused_parameters: bool = False) -> None:
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel: expected an ember.nn.Module, got {type(module).__name__}")
        if comm is not None and not isinstance(comm, Communicator):
            raise TypeError(f"DistributedDataParallel: comm must be an ember.distributed.Communicator, "
                            f"got {type(comm).__name__}")
        if isinstance(bucket_cap_mb, bool) or not isinstance(bucket_cap_mb, (int, float)) or not bucket_cap_mb > 0:
            raise ValueError(f"DistributedDataParallel: bucket_cap_mb must be a positive number, got "
                             f"{bucket_cap_mb!r}")
        self.module = module
        self.comm = comm if comm is not None else world()
        self.bucket_cap_mb = float(bucket_cap_mb)
        self.broadcast_buffers = bool(broadcast_buffers)
        self.find_unused_parameters = bool(find_unused_parameters)

        named = list(module.named_parameters())
        own = {id(p) for _, p in named}
        skip = set()
        for p in skip_params:
            if id(p) not in own:
                raise ValueError(f"DistributedDataParallel: a skip_params entry (shape {tuple(p.shape)}) is not a "
                                 "parameter of the module")
            skip.add(id(p))
        for p in module.parameters():
            if p.device.type != "cpu":
                raise DistributedError(f"DistributedDataParallel: parameters must be on the CPU (MPI), got one on "
                                       f"{p.device}")
        self._check_same_model(named)
        with no_grad():
            self._broadcast([p for _, p in named] + list(module.buffers()))

        self._buckets = self._make_buckets([(n, p) for n, p in named if p.requires_grad and id(p) not in skip])
        self._where = {id(p): i for i, b in enumerate(self._buckets) for p in b.params}
        self._hook_removers = [p.register_post_accumulate_grad_hook(self._grad_ready)
                               for b in self._buckets for p in b.params]
        self._sync_enabled = True       # no_sync() turns it off
        self._require_sync = False      # captured at forward: does the coming backward sync?
        self._reset()

    # ------------------------------------------------------------------ setup
    def _check_same_model(self, named: list[tuple[str, Tensor]]) -> None:
        key: list[int] = []
        for _, p in named:
            key += [_DTYPE_CODE[p.dtype.name], p.ndim, *p.shape]
        total = sum(p.numel() for _, p in named)
        self.comm._agree("DistributedDataParallel", key, "every rank must wrap a model with the same parameters "
                         "(names, shapes, dtypes, order)", f"{len(named)} parameters, {total} elements", ValueError)

    def _broadcast(self, tensors: list[Tensor]) -> None:
        """Overwrite ``tensors`` with rank 0's values: one broadcast per dtype."""
        if self.comm.size == 1 or not tensors:
            return
        by_dtype: dict[str, list[Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype.name, []).append(t)
        for group in by_dtype.values():
            flat = np.concatenate([np.ascontiguousarray(t.data).reshape(-1) for t in group])
            self.comm.mpi.Bcast(flat.view(np.uint8), root=0)
            if self.comm.rank != 0:
                off = 0
                for t in group:
                    n = t.numel()
                    t.data[...] = flat[off:off + n].reshape(t.shape)
                    t._version[0] += 1
                    off += n

    def _make_buckets(self, named: list[tuple[str, Tensor]]) -> list[_Bucket]:
        cap = self.bucket_cap_mb * 2 ** 20
        buckets: list[_Bucket] = []
        open_bucket: dict[str, _Bucket] = {}
        for name, p in reversed(named):
            b = open_bucket.get(p.dtype.name)
            if b is None or (b.params and b.nbytes + (p.numel() + 1) * p.dtype.itemsize > cap):
                b = open_bucket[p.dtype.name] = _Bucket(p.dtype)
                buckets.append(b)
            b.add(name, p)
        for b in buckets:
            b.buffer = np.empty(sum(b.numels) + len(b.params), dtype=b.dtype.np)
        return buckets

    def bucket_info(self) -> list[list[str]]:
        """The parameter names of each bucket, in launch order."""
        return [list(b.names) for b in self._buckets]

    # ------------------------------------------------------------------ per-iteration state
    def _reset(self) -> None:
        self._seen: set[int] = set()
        self._next = 0                  # the next bucket to launch (buckets launch in order on every rank)
        self._hooks_fired = 0
        for b in self._buckets:
            b.ready = 0
            b.handle = None

    def _pending(self) -> bool:
        return bool(self._seen) or self._next > 0

    def _mark_ready(self, p: Tensor) -> None:
        if id(p) in self._seen:
            raise DistributedError(
                "DistributedDataParallel: a parameter got its gradient twice before the gradient sync finished "
                "(several backward passes, with some parameters unused); call finish_gradient_sync() after each "
                "backward or pass find_unused_parameters=True")
        self._seen.add(id(p))
        self._buckets[self._where[id(p)]].ready += 1

    def _grad_ready(self, p: Tensor) -> None:
        if not self._require_sync:
            return
        self._hooks_fired += 1
        self._mark_ready(p)
        self._launch_ready()
        for b in self._buckets[:self._next]:  # drive MPI progress on what is in flight
            if not b.handle.test():
                break
        if self._next == len(self._buckets):
            self._wait_all()

    def _launch_ready(self, force: bool = False) -> None:
        while self._next < len(self._buckets):
            b = self._buckets[self._next]
            if not force and b.ready < len(b.params):
                return
            self._launch(b)
            self._next += 1

    def _launch(self, b: _Bucket) -> None:
        buf = b.buffer
        flags = buf[len(buf) - len(b.params):]
        for i, (p, off, n) in enumerate(zip(b.params, b.offsets, b.numels)):
            g = p.grad
            if p.dtype is not b.dtype:
                raise DistributedError(f"DistributedDataParallel: parameter {b.names[i]} changed dtype from "
                                       f"{b.dtype.name} to {p.dtype.name} after wrapping; convert the module "
                                       "before wrapping it")
            if g is None:
                buf[off:off + n] = 0
                flags[i] = 0
                continue
            if not isinstance(g, Tensor):  # a row-sparse gradient: all-reduced dense
                g = g.to_dense()
            buf[off:off + n] = g.data.reshape(-1)
            flags[i] = 1
        b.handle = self.comm.iallreduce_(_make(buf, b.dtype, b.params[0].device), "sum")

    def _wait_all(self) -> None:
        size = self.comm.size
        for b in self._buckets:
            b.handle.wait()
            buf = b.buffer
            flags = buf[len(buf) - len(b.params):]
            for i, (p, off, n) in enumerate(zip(b.params, b.offsets, b.numels)):
                if flags[i] == 0:  # no rank had a gradient for it: leave .grad as it is (None)
                    continue
                mean = buf[off:off + n].reshape(p.shape)
                g = p.grad
                if isinstance(g, Tensor) and g.data.flags.writeable and g.data.shape == p.shape:
                    np.divide(mean, size, out=g.data)
                    g._version[0] += 1
                else:
                    p.grad = _make(mean / size, b.dtype, p.device)
        self._reset()

    def finish_gradient_sync(self) -> None:
        """Complete a gradient sync the backward pass could not finish by itself (some parameters got no
        gradient): their current ``.grad`` (zero if None) joins the mean. A no-op when nothing is pending,
        so it is safe to call after every backward. Every rank must call it."""
        if not self._pending():
            return
        for b in self._buckets:
            for p in b.params:
                if id(p) not in self._seen:
                    self._mark_ready(p)
        self._launch_ready(force=True)
        self._wait_all()

    # ------------------------------------------------------------------ calling
    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Inside this block, forward+backward passes only accumulate local gradients; the first backward
        after it (with a forward outside it) averages the accumulated gradients."""
        prev = self._sync_enabled
        self._sync_enabled = False
        try:
            yield
        finally:
            self._sync_enabled = prev

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self._pending():
            if self._hooks_fired == 0 and self._next == 0:
                self._reset()  # only the unused parameters of a forward without backward were marked
            else:
                names = [n for b in self._buckets for n, p in zip(b.names, b.params) if id(p) not in self._seen]
                shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
                raise DistributedError(
                    f"DistributedDataParallel: the previous backward pass left the gradient sync unfinished: "
                    f"{len(names)} parameters got no gradient ({shown}). Pass find_unused_parameters=True, or call "
                    "finish_gradient_sync() after backward (on every rank)")
        if self.broadcast_buffers and self.module.training:
            bufs = list(self.module.buffers())
            if bufs:
                with no_grad():
                    self._broadcast(bufs)
        self._require_sync = self._sync_enabled and is_grad_enabled()
        out = self.module(*args, **kwargs)
        if self._require_sync and self.find_unused_parameters:
            reached = _reachable_leaves(_tensors_in(out))
            for b in self._buckets:
                for p in b.params:
                    if id(p) not in reached:
                        self._mark_ready(p)
            self._launch_ready()
            if self._next == len(self._buckets) and self._buckets:
                self._wait_all()  # nothing will get a gradient: finish now
        return out

    # ------------------------------------------------------------------ state passthrough
    def state_dict(self, destination: dict | None = None, prefix: str = "", keep_vars: bool = False) -> dict:
        """The wrapped module's state dict (keys without a ``module.`` prefix)."""
        return self.module.state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load into the wrapped module; keys may carry a ``module.`` prefix (PyTorch DDP checkpoints)."""
        if state_dict and all(isinstance(k, str) and k.startswith("module.") for k in state_dict):
            state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
        return self.module.load_state_dict(state_dict, strict=strict, assign=assign)

    def extra_repr(self) -> str:
        return (f"world_size={self.comm.size}, buckets={len(self._buckets)}, "
                f"bucket_cap_mb={self.bucket_cap_mb:g}")

