"""The handle every rank gets from ``init()``: ``ParameterServer``.

On a server rank it has one useful method, ``serve()``. On a worker rank it is the client: table
creation, pulls and pushes, ``clock()``, checkpoints. All of a worker's MPI traffic for the
parameter server runs in one background thread (``_CommThread``): the calling thread only packs
requests and puts them in a queue, so pushes are asynchronous (they return a future that completes
when every server involved applied and acknowledged the update) and pulls can be issued ahead
(``pull_sparse_async``: prefetch the next batch's rows while this one computes). Replies are
assembled in the background thread too.

Errors: a server that rejects a request answers with the error, raised on the worker at the call
that waits for it (a failed asynchronous push: at the next call into the client). An uncaught
exception on any rank prints its traceback and a one-line summary naming the rank and its role,
then aborts the whole MPI job (``MPI.COMM_WORLD.Abort``), so a dead worker never leaves the others
waiting forever and a job never ends "successfully" after losing updates.
"""

from __future__ import annotations

import atexit
import collections
import itertools
import json
import os
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import wait as futures_wait
from typing import Any

import numpy as np

from ... import dtypes as _dt
from ... import io as _io
from ...errors import DTypeError, ShapeError
from ...ops.creation import from_numpy
from ...tensor import Tensor
from .consistency import Consistency
from .protocol import (
    CLOCK,
    CLOCKS,
    CREATE,
    DONE,
    LOAD,
    PULL_DENSE,
    PULL_SPARSE,
    PUSH_DENSE,
    PUSH_SPARSE,
    SAVE,
    STATS,
    TAG_REPLY,
    TAG_REQUEST,
    PSError,
    as_ids,
    coalesce,
    dense_ranges,
    remote_error,
    shard_of,
    unique_sorted,
)
from .server import ServerState, serve
from .tables import Initializer, TableSpec

__all__ = ["ParameterServer", "current", "init"]

MANIFEST = "ps-manifest.json"
MANIFEST_FORMAT = "ember-ps-checkpoint-1"
_MAX_POLL_SLEEP = 1e-4  # polled only while requests are in flight
_ENV_SERVERS = "EMBER_PS_SERVERS"


# ---------------------------------------------------------------------------------------------- aborting
def abort(message: str, exc: BaseException | None = None) -> None:
    """Print ``message`` (and the traceback of ``exc``) to stderr, then abort every rank of the MPI job."""
    if exc is not None:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    print(message, file=sys.stderr, flush=True)
    sys.stdout.flush()
    from mpi4py import MPI
    MPI.COMM_WORLD.Abort(1)


def _install_abort_hook(describe: Callable[[], str]) -> None:
    """Make an uncaught exception print which rank and role failed, then abort the MPI job. An abort hook
    already installed (ember.distributed.init's, which prints the traceback and aborts) is chained to."""
    previous = sys.excepthook
    if getattr(previous, "_ember_ps", False):
        return

    def hook(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
        line = (f"ember.distributed.ps: uncaught {kind.__name__} on {describe()}; aborting the MPI job (every "
                "rank stops; updates since the last checkpoint are lost)")
        if getattr(previous, "_ember_abort", False):
            print(line, file=sys.stderr, flush=True)
            previous(kind, exc, tb)
            return
        sys.__excepthook__(kind, exc, tb)
        print(line, file=sys.stderr, flush=True)
        from mpi4py import MPI
        MPI.COMM_WORLD.Abort(1)

    hook._ember_ps = True  # type: ignore[attr-defined]
    hook._ember_abort = True  # type: ignore[attr-defined]
    sys.excepthook = hook


# ---------------------------------------------------------------------------------------------- comm thread
class _CommThread(threading.Thread):
    """Sends a worker's requests, receives the replies and runs their handlers; the only thread of the
    worker that touches the parameter server's communicators."""

    def __init__(self, comm: Any, worker_comm: Any, describe: Callable[[], str]) -> None:
        super().__init__(name="ember-ps-comm", daemon=True)
        self.comm, self.worker_comm, self.describe = comm, worker_comm, describe
        self.outbox: queue.SimpleQueue = queue.SimpleQueue()

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # a broken protocol: nothing sensible is left to do on any rank
            abort(f"ember.distributed.ps: the communication thread of {self.describe()} failed; aborting the "
                  "MPI job", e)

    def _loop(self) -> None:
        from mpi4py import MPI

        handlers: dict[int, tuple[Callable, int]] = {}
        sends: list[Any] = []
        barriers: list[tuple[Any, Future]] = []
        stopping: Future | None = None
        status = MPI.Status()
        idle = 0.0
        while True:
            active = bool(handlers or sends or barriers)
            if not active and stopping is not None:
                stopping.set_result(None)
                return
            progressed = False
            while True:  # take new work: wait for it when nothing is in flight
                try:
                    item = self.outbox.get(block=not (active or progressed))
                except queue.Empty:
                    break
                progressed = True
                kind = item[0]
                if kind == "req":
                    _, dest, message, handler, server = item
                    if handler is not None:
                        handlers[message[1]] = (handler, server)
                    sends.append(self.comm.isend(message, dest=dest, tag=TAG_REQUEST))
                elif kind == "barrier":
                    barriers.append((self.worker_comm.Ibarrier(), item[1]))
                elif kind == "stop":
                    stopping = item[1]
            while handlers:
                msg = self.comm.improbe(MPI.ANY_SOURCE, TAG_REPLY, status)
                if msg is None:
                    break
                rid, ok, value = msg.recv()
                handler, server = handlers.pop(rid)
                handler(ok, value, server)
                progressed = True
            if sends:
                sends = [r for r in sends if not r.Test()]
            if barriers and barriers[0][0].Test():
                barriers.pop(0)[1].set_result(None)
                progressed = True
            if progressed:
                idle = 0.0
            elif handlers or sends or barriers:
                idle = min(_MAX_POLL_SLEEP, idle * 2 or 1e-5)
                time.sleep(idle)


def _done(value: Any = None) -> Future:
    f: Future = Future()
    f.set_result(value)
    return f


class _Gather:
    """Completes ``future`` with ``finish()`` once ``parts`` replies arrived; the first error fails it."""

    def __init__(self, future: Future, parts: int, finish: Callable[[], Any]) -> None:
        self.future, self.left, self.finish = future, parts, finish

    def part(self, store: Callable[[Any], None] | None = None) -> Callable[[bool, Any, int], None]:
        def handler(ok: bool, value: Any, server: int) -> None:
            if self.future.done():
                return
            if not ok:
                self.future.set_exception(remote_error(value[0], value[1], server))
                return
            if store is not None:
                store(value)
            self.left -= 1
            if self.left == 0:
                self.future.set_result(self.finish())
        return handler


class _Table:
    """What a worker knows about a table."""

    def __init__(self, spec: TableSpec, consistency: Consistency, num_servers: int) -> None:
        self.spec, self.consistency = spec, consistency
        self.name, self.kind = spec.name, spec.kind
        self.dtype = spec.np_dtype
        self.dim = spec.shape[0] if spec.kind == "sparse" else None
        self.ranges = dense_ranges(spec.size, num_servers) if spec.kind == "dense" else None


def _dtype_name(fn: str, name: str, dtype: Any) -> str:
    try:
        d = _dt.to_dtype(dtype) if dtype is not None else _dt.float32
    except (TypeError, ValueError) as e:
        raise DTypeError(f"{fn}({name!r}): unknown dtype {dtype!r} ({e})") from None
    if d not in (_dt.float32, _dt.float64):
        raise DTypeError(f"{fn}({name!r}): tables hold float32 or float64 values, got dtype {d.name}")
    return d.name


def _check_name(fn: str, name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise TypeError(f"{fn}: the table name must be a non-empty str, got {name!r}")
    return name


# ---------------------------------------------------------------------------------------------- the handle
class ParameterServer:
    """This rank's view of the parameter server job (from ``ember.distributed.ps.init()``).

    The last ``num_servers`` ranks of the job are servers, the others workers. On a server call
    ``serve()``; on a worker use the table methods. Worker index ``i`` is world rank ``i``.
    """

    def __init__(self, comm: Any, num_servers: int, consistency: Consistency, max_inflight: int,
                 timeout: float | None) -> None:
        from mpi4py import MPI

        if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
            raise PSError("ember.distributed.ps needs MPI initialized with MPI_THREAD_MULTIPLE (its communication "
                          "runs in a background thread); do not lower mpi4py.rc.thread_level before importing MPI")
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.num_servers = num_servers
        self.num_workers = self.size - num_servers
        self.is_server = self.rank >= self.num_workers
        self.is_worker = not self.is_server
        self.worker_index = None if self.is_server else self.rank
        self.server_index = self.rank - self.num_workers if self.is_server else None
        self.consistency = consistency
        self.max_inflight, self.timeout = max_inflight, timeout
        self._comm = comm.Dup()  # the parameter server's own channel: its tags never meet other traffic
        self.worker_comm = comm.Split(0 if self.is_worker else 1, self.rank)
        if self.is_server:
            self.worker_comm.Free()
            self.worker_comm = None
        self.server_ranks = list(range(self.num_workers, self.size))
        self._tables: dict[str, _Table] = {}
        self._clock = 0
        self._rid = itertools.count(1)
        self._inflight: collections.deque[tuple[Future, str, str]] = collections.deque()
        self._finished = False
        self._served: dict[str, Any] | None = None
        self._thread: _CommThread | None = None
        if self.is_worker:
            self._thread = _CommThread(self._comm, self.worker_comm, self.describe)
            self._thread.start()

    def describe(self) -> str:
        """This rank and its role, e.g. ``rank 3 (parameter server 1 of 2)`` or ``rank 0 (worker 0 of 2)``."""
        if self.is_server:
            return f"rank {self.rank} (parameter server {self.server_index} of {self.num_servers})"
        return f"rank {self.rank} (worker {self.worker_index} of {self.num_workers})"

    def __repr__(self) -> str:
        return (f"ParameterServer({self.describe()}, {self.num_workers} workers + {self.num_servers} servers, "
                f"consistency={self.consistency}, clock={self._clock})")

    @property
    def current_clock(self) -> int:
        """How many times this worker called ``clock()``."""
        return self._clock

    @property
    def tables(self) -> dict[str, TableSpec]:
        """The tables this worker created, by name."""
        return {n: t.spec for n, t in self._tables.items()}

    # ------------------------------------------------------------------ server side
    def serve(self) -> dict[str, Any]:
        """On a server rank: answer requests until every worker called ``finish()`` (or exited); returns a
        summary (requests served, seconds, per-table stats). Calling it again returns the same summary."""
        if not self.is_server:
            raise PSError(f"serve() runs on server ranks, but this is {self.describe()}")
        if self._served is None:
            state = ServerState(self.server_index, self.num_servers, self.num_workers)
            self._served = serve(self._comm, state, list(range(self.num_workers)))
        return self._served

    # ------------------------------------------------------------------ plumbing
    def _need_worker(self, fn: str) -> None:
        if self.is_server:
            raise PSError(f"{fn} is a worker call, but this is {self.describe()}: server ranks call ps.serve()")
        if self._finished:
            raise PSError(f"{fn}: this worker already called finish()")

    def _table(self, fn: str, name: Any, kind: str) -> _Table:
        self._need_worker(fn)
        self._check_errors()
        t = self._tables.get(_check_name(fn, name))
        if t is None:
            raise PSError(f"{fn}: no table named {name!r} (created: {sorted(self._tables) or 'none'})")
        if t.kind != kind:
            raise PSError(f"{fn}: table {name!r} is a {t.kind} table; use the {t.kind} calls for it")
        return t

    def _send(self, server: int, op: int, args: Any, handler: Callable | None) -> None:
        rid = next(self._rid)
        self._thread.outbox.put(("req", self.server_ranks[server], (op, rid, args), handler, server))

    def _wait(self, future: Future, what: str) -> Any:
        try:
            return future.result(self.timeout)
        except TimeoutError:
            raise PSError(f"{what}: no answer after {self.timeout} s on {self.describe()} at clock {self._clock} "
                          f"(consistency {self.consistency}); is a worker stuck or far behind?") from None

    def _all_servers(self, op: int, args: Any) -> Future:
        """Send ``op`` to every server; the future gives the list of their answers."""
        out: list[Any] = [None] * self.num_servers
        fut: Future = Future()
        g = _Gather(fut, self.num_servers, lambda: out)
        for k in range(self.num_servers):
            self._send(k, op, args, g.part(lambda v, k=k: out.__setitem__(k, v)))
        return fut

    def _track(self, fut: Future, fn: str, name: str) -> Future:
        self._inflight.append((fut, fn, name))
        while len(self._inflight) > self.max_inflight:
            self._settle(self._inflight.popleft(), wait=True)
        return fut

    def _settle(self, entry: tuple[Future, str, str], wait: bool) -> None:
        fut, fn, name = entry
        if wait and not fut.done():
            futures_wait([fut], timeout=self.timeout)
            if not fut.done():
                raise PSError(f"{fn}({name!r}): not acknowledged after {self.timeout} s on {self.describe()}")
        exc = fut.exception()
        if exc is not None:
            raise PSError(f"an earlier asynchronous {fn}({name!r}) failed: {exc}") from exc

    def _check_errors(self) -> None:
        """Raise the error of an asynchronous push that failed since the last call."""
        while self._inflight and self._inflight[0][0].done():
            self._settle(self._inflight.popleft(), wait=False)

    # ------------------------------------------------------------------ tables
    def create_sparse(self, name: str, dim: int, *, optimizer: Any = ("adagrad", {"lr": 0.01}),
                      init: Any = ("normal", {"std": 0.01}), dtype: Any = None, min_count: int = 1,
                      evict_after: int | None = None, seed: int = 0, consistency: str | None = None,
                      staleness: int | None = None) -> None:
        """Create a sparse embedding table of rows of width ``dim``, keyed by any int64 ids, sharded by
        hash over the servers. Collective over the workers (each calls it, with the same arguments).

        ``optimizer``: ``"sgd"``, ``"adagrad"``, ``"adam"`` or ``"adamw"``, or ``(name, options)``
        with ember.optim's options (row-wise lazy, see ``optimizers``). ``init``: ``"zeros"``,
        ``("normal", {"mean", "std"})``, ``("uniform", {"low", "high"})``, ``("constant", {"value"})``;
        a row's initial value depends only on ``seed``, the table name and the id. ``min_count``: an id's
        row is created (and updated) on its ``min_count``-th pushed gradient; the earlier ones are
        dropped. ``evict_after``: drop rows not pulled or pushed in that many global clocks.
        ``consistency``/``staleness``: this table's model, if not the one given to ``init``.
        """
        fn = "create_sparse"
        self._need_worker(fn)
        _check_name(fn, name)
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"{fn}({name!r}): dim must be a positive int, got {dim!r}")
        for what, v, lo in (("min_count", min_count, 1), ("evict_after", evict_after, 1), ("seed", seed, 0)):
            if v is None and what == "evict_after":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"{fn}({name!r}): {what} must be an int >= {lo}, got {v!r}")
        where = f"{fn}({name!r})"
        spec = TableSpec(name, "sparse", (int(dim),), _dtype_name(fn, name, dtype), _opt_spec(optimizer, where),
                         Initializer.parse(init, where).to_spec(), int(seed), int(min_count),
                         None if evict_after is None else int(evict_after))
        self._create(spec, None, self._consistency(where, consistency, staleness))

    def create_dense(self, name: str, shape: int | tuple[int, ...], *, init: Any = "zeros",
                     optimizer: Any = ("sgd", {"lr": 0.01}), dtype: Any = None, seed: int = 0,
                     consistency: str | None = None, staleness: int | None = None) -> None:
        """Create a dense table of ``shape``, its flattened values cut into one contiguous range per
        server. Collective over the workers (each calls it, with the same arguments).

        ``init``: the initial values (a Tensor or array of ``shape``; worker 0's are used), or an
        initializer spec as for ``create_sparse`` (default zeros). ``optimizer`` as for
        ``create_sparse``; a dense table's optimizer is exactly ember.optim's on the whole tensor.
        """
        fn = "create_dense"
        self._need_worker(fn)
        _check_name(fn, name)
        where = f"{fn}({name!r})"
        dims = (shape,) if isinstance(shape, (int, np.integer)) else shape
        if not isinstance(dims, (tuple, list)) or any(
                isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0 for s in dims):
            raise ShapeError(f"{where}: shape must be an int or a tuple of non-negative ints, got {shape!r}")
        dims = tuple(int(s) for s in dims)
        dtype_name = _dtype_name(fn, name, dtype if dtype is not None or not isinstance(init, Tensor)
                                 else init.dtype)
        values = None
        if isinstance(init, (Tensor, np.ndarray)):
            values = np.asarray(init.data if isinstance(init, Tensor) else init)
            if values.shape != dims:
                raise ShapeError(f"{where}: init has shape {values.shape}, but the table's shape is {dims}")
            if values.dtype.kind != "f":
                raise DTypeError(f"{where}: init must hold floating values, got dtype {values.dtype}")
            values = values.astype(_dt.to_dtype(dtype_name).np).reshape(-1)
            init_spec: tuple[str, dict] = ("array", {})
        else:
            init_spec = Initializer.parse(init, where).to_spec()
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"{where}: seed must be an int >= 0, got {seed!r}")
        spec = TableSpec(name, "dense", dims, dtype_name, _opt_spec(optimizer, where), init_spec, int(seed))
        self._create(spec, values, self._consistency(where, consistency, staleness))

    def _consistency(self, where: str, model: str | None, staleness: int | None) -> Consistency:
        if model is None and staleness is None:
            return self.consistency
        return Consistency.parse(model or self.consistency.model, staleness, where)

    def _create(self, spec: TableSpec, values: np.ndarray | None, consistency: Consistency) -> None:
        old = self._tables.get(spec.name)
        if old is not None:  # the same worker creating it again: a no-op if nothing changed
            diff = old.spec.differences(spec)
            if diff or old.consistency != consistency:
                raise PSError(f"create: table {spec.name!r} already exists with a different definition "
                              f"({'; '.join(diff) or f'consistency {old.consistency} != {consistency}'})")
            return
        self._check_errors()
        info = _Table(spec, consistency, self.num_servers)
        d = spec.to_dict()

        def create_all(with_values: bool) -> None:
            fut: Future = Future()
            g = _Gather(fut, self.num_servers, lambda: None)
            for k in range(self.num_servers):
                part = None
                if with_values and values is not None:
                    lo, hi = info.ranges[k]
                    part = values[lo:hi].copy()
                self._send(k, CREATE, (d, part), g.part())
            self._wait(fut, f"create({spec.name!r})")

        # worker 0 creates it (its initial values win), then the others check that theirs is the same table
        if self.worker_index == 0:
            create_all(True)
        self.barrier()
        if self.worker_index != 0:
            create_all(False)
        self._tables[spec.name] = info

    # ------------------------------------------------------------------ sparse
    def pull_sparse(self, name: str, ids: Any) -> Tensor:
        """The rows of ``ids`` (ints of any shape): a Tensor of shape ``ids.shape + (dim,)``. Waits until
        the table's consistency model allows a read at this worker's clock."""
        t = self._table("pull_sparse", name, "sparse")
        ids = as_ids("pull_sparse", name, ids)
        uniq, inverse = unique_sorted(ids.reshape(-1))
        rows = self._wait(self._pull_rows(t, uniq, self._clock), f"pull_sparse({name!r})")
        return from_numpy(rows[inverse].reshape(ids.shape + (t.dim,)))

    def pull_sparse_async(self, name: str, ids: Any, clock: int | None = None) -> Future:
        """Start pulling the rows of the sorted unique ``ids`` (1-D); the future gives a ``(len(ids), dim)``
        array. ``clock``: the clock at which the rows will be used (default: this worker's current clock;
        prefetching for the next step passes ``current_clock + 1``), which is what the server's staleness
        check is made against."""
        t = self._table("pull_sparse_async", name, "sparse")
        ids = as_ids("pull_sparse_async", name, ids)
        if ids.ndim != 1 or (ids.size > 1 and not bool(np.all(ids[1:] > ids[:-1]))):
            raise ShapeError(f"pull_sparse_async({name!r}): ids must be 1-D, sorted and unique (np.unique), "
                             f"got shape {ids.shape}")
        return self._pull_rows(t, ids, self._clock if clock is None else int(clock))

    def _pull_rows(self, t: _Table, uniq: np.ndarray, clock: int) -> Future:
        required = t.consistency.required(clock)
        out = np.empty((uniq.shape[0], t.dim), dtype=t.dtype)
        if uniq.size == 0:
            return _done(out)
        fut: Future = Future()
        parts = self._split(uniq)
        g = _Gather(fut, len(parts), lambda: out)
        for k, pos in parts:
            store = g.part(lambda v, pos=pos: out.__setitem__(pos, v))
            self._send(k, PULL_SPARSE, (t.name, uniq[pos], required), store)
        return fut

    def _split(self, uniq: np.ndarray) -> list[tuple[int, Any]]:
        """``(server, positions)`` for the servers owning some of ``uniq``."""
        if self.num_servers == 1:
            return [(0, slice(None))]
        owner = shard_of(uniq, self.num_servers)
        order = np.argsort(owner, kind="stable")
        counts = np.bincount(owner, minlength=self.num_servers)
        ends = np.cumsum(counts)
        return [(k, order[ends[k] - n:ends[k]]) for k, n in enumerate(counts) if n]

    def push_sparse(self, name: str, ids: Any, grads: Any = None) -> Future:
        """Send the gradient ``grads`` (shape ``ids.shape + (dim,)``) of the rows ``ids``; repeated ids are
        summed. Asynchronous: returns a future that completes when every server involved applied it
        (``flush()`` waits for all). Accepts an ``ember.sparse.RowSparseGrad`` as ``ids`` (then no ``grads``)."""
        t = self._table("push_sparse", name, "sparse")
        if getattr(ids, "is_sparse", False) and grads is None:
            ids, grads = ids.indices, ids.values
        ids = as_ids("push_sparse", name, ids)
        g = np.asarray(grads.data if isinstance(grads, Tensor) else grads)
        if g.shape != ids.shape + (t.dim,):
            raise ShapeError(f"push_sparse({name!r}): gradient of shape {g.shape} does not match ids of shape "
                             f"{ids.shape} and rows of dim {t.dim} (expected {ids.shape + (t.dim,)})")
        if g.dtype.kind != "f":
            raise DTypeError(f"push_sparse({name!r}): gradient must be floating, got dtype {g.dtype}")
        uniq, summed = coalesce(ids.reshape(-1), g.reshape(-1, t.dim))
        summed = summed.astype(t.dtype, copy=False)
        if uniq.size == 0:
            return _done()
        fut: Future = Future()
        parts = self._split(uniq)
        gather = _Gather(fut, len(parts), lambda: None)
        for k, pos in parts:
            # fancy indexing copies: the caller may reuse its arrays as soon as this returns
            ids_k = uniq[pos] if not isinstance(pos, slice) else uniq.copy()
            vals_k = summed[pos] if not isinstance(pos, slice) else np.array(summed)
            self._send(k, PUSH_SPARSE, (name, ids_k, vals_k), gather.part())
        return self._track(fut, "push_sparse", name)

    # ------------------------------------------------------------------ dense
    def pull_dense(self, name: str) -> Tensor:
        """The table's values (a Tensor of its shape), once the consistency model allows the read."""
        return from_numpy(self._wait(self.pull_dense_async(name), f"pull_dense({name!r})"))

    def pull_dense_async(self, name: str, clock: int | None = None) -> Future:
        """Start pulling a dense table; the future gives a NumPy array of its shape. ``clock`` as for
        ``pull_sparse_async``."""
        t = self._table("pull_dense", name, "dense")
        required = t.consistency.required(self._clock if clock is None else int(clock))
        out = np.empty(t.spec.size, dtype=t.dtype)
        parts = [(k, lo, hi) for k, (lo, hi) in enumerate(t.ranges) if hi > lo]
        if not parts:
            return _done(out.reshape(t.spec.shape))
        fut: Future = Future()
        g = _Gather(fut, len(parts), lambda: out.reshape(t.spec.shape))
        for k, lo, hi in parts:
            store = g.part(lambda v, lo=lo, hi=hi: out.__setitem__(slice(lo, hi), v))
            self._send(k, PULL_DENSE, (name, required), store)
        return fut

    def push_dense(self, name: str, grad: Any) -> Future:
        """Send the gradient of a dense table (its shape); asynchronous like ``push_sparse``."""
        t = self._table("push_dense", name, "dense")
        g = np.asarray(grad.data if isinstance(grad, Tensor) else grad)
        if g.shape != t.spec.shape:
            raise ShapeError(f"push_dense({name!r}): gradient of shape {g.shape}, but the table's shape is "
                             f"{t.spec.shape}")
        if g.dtype.kind != "f":
            raise DTypeError(f"push_dense({name!r}): gradient must be floating, got dtype {g.dtype}")
        flat = g.reshape(-1)
        parts = [(k, lo, hi) for k, (lo, hi) in enumerate(t.ranges) if hi > lo]
        if not parts:
            return _done()
        fut: Future = Future()
        gather = _Gather(fut, len(parts), lambda: None)
        for k, lo, hi in parts:
            self._send(k, PUSH_DENSE, (name, flat[lo:hi].astype(t.dtype, copy=True)), gather.part())
        return self._track(fut, "push_dense", name)

    # ------------------------------------------------------------------ clocks and synchronization
    def clock(self) -> int:
        """End this worker's current clock (its pushes so far count for it) and tell every server; returns
        the new clock. Asynchronous: reads at the new clock wait as the consistency model requires."""
        self._need_worker("clock")
        self._check_errors()
        self._clock += 1
        for k in range(self.num_servers):
            self._send(k, CLOCK, self._clock, None)
        return self._clock

    def flush(self) -> None:
        """Wait until every push of this worker has been applied and acknowledged; raises the first error."""
        self._need_worker("flush")
        while self._inflight:
            self._settle(self._inflight.popleft(), wait=True)

    def barrier(self) -> None:
        """``flush()``, then wait for every worker to get here (servers are not involved)."""
        self.flush()
        fut: Future = Future()
        self._thread.outbox.put(("barrier", fut))
        self._wait(fut, "barrier")

    def server_clocks(self) -> list[dict[str, Any]]:
        """Each server's vector clock: ``{"clocks": [...], "done": [...], "waiting": parked reads}``."""
        self._need_worker("server_clocks")
        return self._wait(self._all_servers(CLOCKS, None), "server_clocks")

    def table_stats(self, name: str) -> dict[str, Any]:
        """A table's size over all servers: sparse ``rows``, ``pending_ids`` (seen < min_count times),
        ``created``, ``evicted``, ``dropped_updates``, ``bytes``; dense ``values``, ``step``, ``bytes``;
        and ``per_server``, the list of each server's numbers."""
        fn = "table_stats"
        self._need_worker(fn)
        if _check_name(fn, name) not in self._tables:
            raise PSError(f"{fn}: no table named {name!r} (created: {sorted(self._tables) or 'none'})")
        per = self._wait(self._all_servers(STATS, (name,)), fn)
        total = {k: sum(p[k] for p in per) for k in per[0] if k not in ("server", "step")}
        if "step" in per[0]:
            total["step"] = max(p["step"] for p in per)
        return {**total, "per_server": per}

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | os.PathLike) -> str:
        """Checkpoint every table into the directory ``path`` (created if needed): each server writes its
        shard atomically, then worker 0 writes ``ps-manifest.json``, which marks the checkpoint complete.
        Collective over the workers; all pushes made before it are in the checkpoint. Returns the path."""
        self._need_worker("save")
        directory = os.path.abspath(os.fspath(path))
        self.barrier()
        if self.worker_index == 0:
            os.makedirs(directory, exist_ok=True)
            manifest = os.path.join(directory, MANIFEST)
            if os.path.exists(manifest):  # an interrupted save must not leave an old manifest over new shards
                os.unlink(manifest)
            files = self._wait(self._all_servers(SAVE, (directory,)), "save")
            doc = {"format": MANIFEST_FORMAT, "num_servers": self.num_servers, "num_workers": self.num_workers,
                   "clock": self._clock, "files": [os.path.basename(f) for f in files],
                   "tables": {n: t.spec.to_dict() for n, t in self._tables.items()}}
            _io.write_atomic(manifest, lambda tmp: _write_json(tmp, doc), fn="ParameterServer.save")
        self.barrier()
        return directory

    def load(self, path: str | os.PathLike) -> None:
        """Restore every table from a checkpoint written by ``save`` (possibly with another number of
        servers). The tables must have been created in this job with the same kind, shape, dtype and
        optimizer; optimizer options (e.g. the learning rate) are this job's. Collective over the workers.
        Rows prefetched before it (``Embedding.prefetch``) hold pre-load values: prefetch after loading."""
        self._need_worker("load")
        directory = os.path.abspath(os.fspath(path))
        self.barrier()
        if self.worker_index == 0:
            doc = _read_manifest(directory)
            saved, have = set(doc["tables"]), set(self._tables)
            if saved != have:
                raise PSError(f"load: the checkpoint {directory!r} has tables {sorted(saved)}, but this job created "
                              f"{sorted(have)}; create exactly the saved tables before loading")
            self._wait(self._all_servers(LOAD, (directory, int(doc["num_servers"]))), "load")
        self.barrier()

    # ------------------------------------------------------------------ the end
    def finish(self) -> None:
        """Flush, tell every server this worker is done, and stop the communication thread. Servers return
        from ``serve()`` once all workers finished. Called at exit if you do not; idempotent."""
        if self.is_server or self._finished:
            return
        self.flush()
        self._wait(self._all_servers(DONE, None), "finish")
        self._finished = True
        stop: Future = Future()
        self._thread.outbox.put(("stop", stop))
        stop.result()
        self._thread.join()


def _opt_spec(optimizer: Any, where: str) -> tuple[str, dict[str, Any]]:
    from .optimizers import RowOptimizer
    return RowOptimizer.parse(optimizer, where).to_spec()


def _write_json(path: str, doc: dict) -> None:
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)


def _read_manifest(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, MANIFEST)
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise PSError(f"load: {directory!r} holds no complete parameter-server checkpoint (no {MANIFEST}: "
                      "the path is wrong, or the save was interrupted)") from None
    except (OSError, ValueError) as e:
        raise PSError(f"load: cannot read {path!r}: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        raise PSError(f"load: {path!r} is not a parameter-server checkpoint manifest (format "
                      f"{doc.get('format') if isinstance(doc, dict) else None!r})")
    return doc


# ---------------------------------------------------------------------------------------------- init
_CURRENT: ParameterServer | None = None


def _world(comm: Any, describe: Callable[[], str]) -> Any:
    """The job's communicator: ``comm``, or ember.distributed's world, or MPI.COMM_WORLD."""
    try:
        from .. import init as _dist_init
    except ImportError:
        _dist_init = None
    try:
        if _dist_init is not None:
            world = _dist_init()  # also installs its abort hook, which ours chains to
            comm = comm if comm is not None else getattr(world, "mpi", world)
        elif comm is None:
            from mpi4py import MPI
            comm = MPI.COMM_WORLD
    except ImportError:
        raise PSError("ember.distributed.ps needs mpi4py: pip install -e '.[distributed]'") from None
    _install_abort_hook(describe)
    return comm


def init(num_servers: int | None = None, *, consistency: str = "bsp", staleness: int | None = None,
         comm: Any = None, max_inflight: int = 64, timeout: float | None = None) -> ParameterServer:
    """Join the parameter-server job: collective over all ranks; returns this rank's ``ParameterServer``.

    ``num_servers``: how many of the last ranks are servers (default: the ``EMBER_PS_SERVERS``
    environment variable that ``ember run --servers S`` sets). ``consistency``: ``"bsp"``, ``"ssp"``
    (with ``staleness``, an int >= 0) or ``"asp"``, the default for every table. ``max_inflight``:
    unacknowledged pushes a worker may have before a push waits. ``timeout``: seconds a worker waits for
    a reply before raising (None: forever). Calling it again returns the same handle.
    """
    global _CURRENT
    model = Consistency.parse(consistency, staleness, "ps.init")
    if _CURRENT is not None:
        if _CURRENT.consistency != model or (num_servers is not None and num_servers != _CURRENT.num_servers):
            raise PSError(f"ps.init: already initialized as {_CURRENT!r}; cannot change it to {num_servers} servers, "
                          f"consistency {model}")
        return _CURRENT
    if num_servers is None:
        env = os.environ.get(_ENV_SERVERS)
        if env is None:
            raise PSError(f"ps.init: how many ranks are servers? Pass num_servers, or launch with `ember run -n N "
                          f"--servers S` (which sets {_ENV_SERVERS}=S)")
        try:
            num_servers = int(env)
        except ValueError:
            raise PSError(f"ps.init: {_ENV_SERVERS}={env!r} is not an int") from None
    if isinstance(max_inflight, bool) or not isinstance(max_inflight, int) or max_inflight < 1:
        raise ValueError(f"ps.init: max_inflight must be an int >= 1, got {max_inflight!r}")
    role = ["a rank being set up"]
    world = _world(comm, lambda: role[0])
    size = world.Get_size()
    if isinstance(num_servers, bool) or not isinstance(num_servers, int) or not 1 <= num_servers < size:
        raise PSError(f"ps.init: need 1 <= num_servers < {size} (the job's ranks, at least one worker), "
                      f"got {num_servers!r}")
    ps = ParameterServer(world, num_servers, model, max_inflight, timeout)
    role[0] = ps.describe()
    _CURRENT = ps
    atexit.register(_at_exit, ps)
    return ps


def current() -> ParameterServer:
    """The handle ``init()`` returned on this rank."""
    if _CURRENT is None:
        raise PSError("ember.distributed.ps.init() has not been called on this rank")
    return _CURRENT


def _at_exit(ps: ParameterServer) -> None:
    """A worker that returns without finish() still flushes and signs off; a server that never served, serves,
    so that nobody waits forever for a rank that simply ran to its end."""
    try:
        if ps.is_worker:
            ps.finish()
        else:
            ps.serve()
    except BaseException as e:
        abort(f"ember.distributed.ps: shutting down {ps.describe()} failed; aborting the MPI job", e)
