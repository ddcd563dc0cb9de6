"""Model pieces backed by the parameter server: ``Embedding`` (a sparse table) and ``DenseParameters``
(a module's parameters in one dense table).

``Embedding(name, dim)`` is used like ``nn.Embedding(num, dim, sparse=True)`` minus the vocabulary
size: ids are any int64 values. Its forward pulls the rows of the batch's unique ids into a fresh
leaf tensor and gathers the output from it; its backward turns the leaf's gradient (already one row
per unique id) into an asynchronous ``push_sparse``, so the servers' optimizer updates the table
while the rest of the backward pass and the next forward run. ``prefetch(next_ids)`` starts pulling
the next batch's rows during this step; the following forward uses them if the ids match and the
consistency bound still holds for them (they were requested for the clock at which they are used).

``DenseParameters(name, module)`` keeps the module's parameters, flattened into one dense table, on
the servers: ``pull()`` copies the current values into the parameters, ``push()`` sends their
gradients (and clears them), ``prefetch()`` pulls the next step's values ahead.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any

import numpy as np

from ... import dtypes as _dt
from ...autograd import STATE
from ...device import CPU
from ...errors import ShapeError, TraceError
from ...nn.module import Module
from ...ops import movement as _mov
from ...ops.sparse_ops import embed_rows
from ...tensor import Tensor, _make
from .client import ParameterServer, current
from .protocol import as_ids, unique_sorted

__all__ = ["DenseParameters", "Embedding"]


def _usable(ps: ParameterServer, clock: int, future: Future) -> bool:
    """Whether a read requested for ``clock`` may serve a read now: it satisfies the bound at any clock
    ``<= clock``; one for a later clock that is still unanswered is not waited for (under BSP it may wait
    for this very worker's next tick, which would never come)."""
    now = ps.current_clock
    return clock == now or (clock > now and future.done())


class _PushRows:
    """Gradient hook of the leaf holding a batch's rows: pushes the rows' gradient to the table."""

    __slots__ = ("ids", "name", "ps")

    def __init__(self, ps: ParameterServer, name: str, ids: np.ndarray) -> None:
        self.ps, self.name, self.ids = ps, name, ids

    def __call__(self, g: Tensor) -> Tensor:
        self.ps.push_sparse(self.name, self.ids, g.data)
        # hand back an empty gradient: nobody reads the leaf's .grad, so it is not copied there
        return _make(np.empty((0,), dtype=g.data.dtype), g.dtype, g.device)


class Embedding(Module):
    """A lookup table of ``embedding_dim``-wide rows living on the parameter servers, keyed by int64 ids.

    Creates the sparse table ``name`` (collective over the workers, like ``create_sparse``; the
    keyword options ``optimizer``, ``init``, ``min_count``, ``evict_after``, ``seed``, ``dtype``,
    ``consistency``, ``staleness`` go to it). ``forward(ids)`` -> ``ids.shape + (embedding_dim,)``.
    Gradients reach the table only through ``backward()`` (they are pushed as it runs).
    """

    def __init__(self, name: str, embedding_dim: int, *, ps: ParameterServer | None = None,
                 **table_options: Any) -> None:
        super().__init__()
        self._ps = ps if ps is not None else current()
        self._ps.create_sparse(name, embedding_dim, **table_options)
        self.table, self.embedding_dim = name, int(embedding_dim)
        self.dtype = _dt.to_dtype(self._ps.tables[name].dtype)
        self._prefetched: tuple[np.ndarray, int, Future] | None = None

    def prefetch(self, ids: Any, clock: int | None = None) -> None:
        """Start pulling the rows of ``ids`` for the forward at ``clock`` (default: the next clock)."""
        uniq, _ = unique_sorted(as_ids("Embedding.prefetch", self.table, ids).reshape(-1))
        at = self._ps.current_clock + 1 if clock is None else int(clock)
        self._prefetched = (uniq, at, self._ps.pull_sparse_async(self.table, uniq, clock=at))

    def forward(self, input: Any) -> Tensor:
        if STATE.tracer is not None:
            raise TraceError(f"Embedding({self.table!r}): the rows come from the parameter servers at run time, so "
                             "a lookup cannot be traced; call this layer outside the compiled function")
        ids = as_ids("Embedding", self.table, input)
        uniq, inverse = unique_sorted(ids.reshape(-1))
        rows = None
        pre, self._prefetched = self._prefetched, None
        if pre is not None and _usable(self._ps, pre[1], pre[2]) and np.array_equal(pre[0], uniq):
            rows = self._ps._wait(pre[2], f"Embedding({self.table!r}) prefetch")
        if rows is None:
            rows = self._ps._wait(self._ps.pull_sparse_async(self.table, uniq), f"Embedding({self.table!r})")
        want_grad = STATE.grad_enabled
        leaf = _make(rows, self.dtype, CPU, requires_grad=want_grad)
        if want_grad:
            leaf.register_hook(_PushRows(self._ps, self.table, uniq))
        out = embed_rows(leaf, _make(inverse, _dt.int64, leaf.device))
        return _mov.reshape(out, ids.shape + (self.embedding_dim,))

    def extra_repr(self) -> str:
        return f"{self.table!r}, {self.embedding_dim}, on {self._ps.num_servers} parameter server(s)"


class DenseParameters:
    """Parameters (a module's, or a list) kept on the servers as one flattened dense table ``name``.

    Created collectively over the workers with worker 0's current values; ``optimizer``,
    ``consistency`` and ``staleness`` go to ``create_dense``. The optimizer runs on the servers, so
    the workers need no local one: ``pull()`` before the forward, ``push()`` after the backward.
    """

    def __init__(self, name: str, params: Module | Iterable[Tensor], *, ps: ParameterServer | None = None,
                 optimizer: Any = ("adam", {"lr": 1e-3}), consistency: str | None = None,
                 staleness: int | None = None) -> None:
        self._ps = ps if ps is not None else current()
        self.params = list(params.parameters()) if isinstance(params, Module) else list(params)
        if not self.params:
            raise ValueError(f"DenseParameters({name!r}): no parameters given")
        dtypes = {p.dtype for p in self.params}
        if len(dtypes) != 1:
            raise ShapeError(f"DenseParameters({name!r}): the parameters must share one dtype, got "
                             f"{sorted(d.name for d in dtypes)}")
        self.name = name
        self.sizes = [p.numel() for p in self.params]
        flat = np.concatenate([np.asarray(p.data, dtype=p.dtype.np).reshape(-1) for p in self.params])
        self._ps.create_dense(name, (flat.size,), init=flat, optimizer=optimizer, dtype=self.params[0].dtype,
                              consistency=consistency, staleness=staleness)
        self._prefetched: tuple[int, Future] | None = None

    def prefetch(self, clock: int | None = None) -> None:
        """Start pulling the values for the step at ``clock`` (default: the next clock)."""
        at = self._ps.current_clock + 1 if clock is None else int(clock)
        self._prefetched = (at, self._ps.pull_dense_async(self.name, clock=at))

    def pull(self) -> None:
        """Copy the table's current values into the parameters (waits as the consistency model requires)."""
        pre, self._prefetched = self._prefetched, None
        if pre is not None and _usable(self._ps, pre[0], pre[1]):
            flat = self._ps._wait(pre[1], f"DenseParameters({self.name!r}) prefetch")
        else:
            flat = self._ps._wait(self._ps.pull_dense_async(self.name), f"DenseParameters({self.name!r})")
        off = 0
        for p, n in zip(self.params, self.sizes):
            p.data[...] = flat[off:off + n].reshape(p.data.shape)
            p._version[0] += 1
            off += n

    def push(self) -> Future:
        """Send the parameters' gradients (zeros for those without one) and clear them; asynchronous."""
        parts = []
        for p in self.params:
            g = p.grad
            if g is None:
                parts.append(np.zeros(p.numel(), dtype=p.dtype.np))
                continue
            if not isinstance(g, Tensor):  # a row-sparse gradient
                g = g.to_dense()
            parts.append(np.asarray(g.data).reshape(-1))
            p.grad = None
        return self._ps.push_dense(self.name, np.concatenate(parts))
