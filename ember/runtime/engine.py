"""The dependency engine: kernels run as soon as the buffers they read and write are ready.

Two forms share one thread pool and one ordering rule (MXNet's per-variable read/write queues):

* **Dynamic** (``Engine.push(fn, reads=[...], writes=[...])``): every buffer has a :class:`Var` with a
  FIFO of pending operations. Consecutive reads are granted together; a write waits for every earlier
  read and write of the Var and blocks every later one. An operation runs once all its Vars granted it.
  ``wait(var)`` / ``wait_all()`` block, and re-raise (as :class:`EngineOpError`, naming the operation)
  the first exception a pushed function raised since the last wait. Until it is reported, operations
  that read or write a Var written by a failed operation are skipped (their inputs are garbage), so
  one failure is reported once.
* **Static** (:class:`Schedule`): for a compiled plan, the same RAW/WAR/WAW edges are computed once from
  a valid sequential order of ``(fn, read_ids, write_ids)`` steps, plus explicit extra edges (two buffer
  ids sharing arena memory at different times). ``run()`` replays the DAG with precomputed dependency
  counts: no per-step locking, and a step whose completion readies exactly one successor hands it to the
  same thread (a chain never touches the pool).

``EMBER_ENGINE=naive`` runs everything synchronously in program order (for debugging: a failing kernel
raises at its ``push``, with a plain traceback); ``threaded`` (the default) uses the pool.

**Threads.** The pool has ``EMBER_ENGINE_THREADS`` workers, default ``min(cores, 4)``. Kernels are
themselves multi-threaded (OpenBLAS GEMMs, OpenMP loops of generated C), so k kernels running at once
must each use ``cores // k`` threads or the machine is oversubscribed (threads spin-waiting on each
other's cores). :func:`kernel_threads` sets both for a region: OpenBLAS's count is process-wide
(``openblas_set_num_threads``), OpenMP's ``nthreads-var`` is per calling thread, so each pool worker sets
its own with ``omp_set_num_threads`` from libgomp (the generated kernels take no thread-count argument;
their ``#pragma omp parallel for`` reads that ICV). A :class:`Schedule` whose widest level is one step
runs inline in the caller and keeps every core for each kernel.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import os
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import Any

from ..errors import EmberError

ENGINES = ("naive", "threaded")
MAX_DEFAULT_WORKERS = 4


class EngineConfigError(EmberError, ValueError):
    """A bad ``EMBER_ENGINE`` / ``EMBER_ENGINE_THREADS`` value or engine argument."""


class EngineOpError(EmberError, RuntimeError):
    """A pushed function (or schedule step) raised; ``op_name`` names it, ``__cause__`` is the original."""

    def __init__(self, op_name: str, exc: BaseException) -> None:
        super().__init__(f"engine op {op_name!r} failed: {type(exc).__name__}: {exc}")
        self.op_name = op_name


# ---------------------------------------------------------------------------------------------- threads

def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_workers() -> int:
    """Worker threads of the pool: ``EMBER_ENGINE_THREADS`` if set, else ``min(cores, 4)``."""
    value = os.environ.get("EMBER_ENGINE_THREADS", "").strip()
    if not value:
        return min(cpu_count(), MAX_DEFAULT_WORKERS)
    if not value.isdigit() or int(value) < 1:
        raise EngineConfigError(f"EMBER_ENGINE_THREADS must be a positive integer, got {value!r}")
    return int(value)


def threads_per_kernel(concurrent: int, cores: int | None = None) -> int:
    """Threads each kernel should use when ``concurrent`` kernels run at once: ``cores // concurrent``, >= 1."""
    return max(1, (cores or cpu_count()) // max(1, concurrent))


_GOMP: list[Any] = []  # [CDLL | None] once looked up


def _gomp() -> Any:
    if not _GOMP:
        lib = None
        name = ctypes.util.find_library("gomp")
        if name:
            with contextlib.suppress(OSError):
                lib = ctypes.CDLL(name)
                lib.omp_set_num_threads.argtypes = [ctypes.c_int]
                lib.omp_get_max_threads.restype = ctypes.c_int
        _GOMP.append(lib)
    return _GOMP[0]


def set_omp_threads(n: int | None) -> int | None:
    """Set OpenMP's thread count for parallel regions started by *the calling thread* (libgomp's
    per-thread ``nthreads-var``); returns the previous value, None when libgomp is not available."""
    lib = _gomp()
    if lib is None:
        return None
    old = int(lib.omp_get_max_threads())
    if n is not None:
        lib.omp_set_num_threads(int(n))
    return old


_BLAS: list[Any] = []  # [(get, set) | None] once looked up


def _blas() -> Any:
    """OpenBLAS's ``(get_num_threads, set_num_threads)`` as ctypes functions, None when NumPy's BLAS is not
    OpenBLAS. Looked up once: the lookup reads /proc/self/maps (about 1 ms), too slow for every run."""
    if not _BLAS:
        from ..backend.blas import _openblas_handle, _openblas_symbol  # the lookup ``ember info`` uses
        lib = _openblas_handle()
        get = _openblas_symbol(lib, "get_num_threads") if lib is not None else None
        put = _openblas_symbol(lib, "set_num_threads") if lib is not None else None
        if get is not None and put is not None:
            get.restype, get.argtypes, put.argtypes = ctypes.c_int, [], [ctypes.c_int]
            _BLAS.append((get, put))
        else:
            _BLAS.append(None)
    return _BLAS[0]


def set_blas_threads(n: int | None) -> int | None:
    """Set OpenBLAS's (process-wide) thread count; returns the previous one, None without OpenBLAS."""
    fns = _blas()
    if fns is None:
        return None
    old = int(fns[0]())
    if n is not None and n != old:
        fns[1](int(n))
    return old


@contextlib.contextmanager
def kernel_threads(n: int, pool: WorkerPool | None = None) -> Iterator[None]:
    """Within the block, BLAS (process-wide) and OpenMP (this thread and ``pool``'s workers) use ``n``
    threads per kernel; the previous counts are restored afterwards."""
    old_blas = set_blas_threads(n)
    old_omp = set_omp_threads(n)
    if pool is not None:
        pool.set_omp_threads(n)
    try:
        yield
    finally:
        if old_blas is not None:
            set_blas_threads(old_blas)
        if old_omp is not None:
            set_omp_threads(old_omp)
            if pool is not None:
                pool.set_omp_threads(old_omp)


class WorkerPool:
    """Daemon worker threads taking ``(fn, arg)`` items from one deque; ``fn(arg)`` must not raise.

    ``deque.append``/``popleft`` are atomic, so submitting takes no lock; the condition is touched
    only to wake an idle worker. A worker counts itself idle *before* re-checking the deque under the
    condition, and a submitter reads that count *after* appending, so no wake-up is lost.
    """

    def __init__(self, workers: int, name: str = "ember-engine") -> None:
        self.workers = workers
        self.ready: collections.deque[tuple[Callable[[Any], None], Any]] = collections.deque()
        self.cond = threading.Condition(threading.Lock())
        self.idle = 0
        self._omp: tuple[int, int] | None = None  # (generation, threads) every worker applies to itself
        self._omp_gen = 0
        self.threads = [threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        for t in self.threads:
            t.start()

    def submit(self, fn: Callable[[Any], None], arg: Any) -> None:
        self.ready.append((fn, arg))
        if self.idle:
            with self.cond:
                self.cond.notify()

    def set_omp_threads(self, n: int) -> None:
        """Have every worker set its OpenMP thread count to ``n`` before its next item."""
        self._omp_gen += 1
        self._omp = (self._omp_gen, n)

    def take(self, stop: Callable[[], bool] | None = None) -> tuple[Callable[[Any], None], Any] | None:
        """The next item, blocking while there is none; None once ``stop()`` is true (checked on wake-up)."""
        ready, cond = self.ready, self.cond
        while True:
            try:
                return ready.popleft()
            except IndexError:
                pass
            with cond:
                self.idle += 1
                try:
                    if stop is not None and stop():
                        return None
                    if not ready:
                        cond.wait()
                finally:
                    self.idle -= 1

    def wake_all(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def _loop(self) -> None:
        seen = 0
        while True:
            item = self.take()
            omp = self._omp
            if omp is not None and omp[0] != seen:
                seen = omp[0]
                set_omp_threads(omp[1])
            item[0](item[1])  # type: ignore[index]


_POOLS: dict[int, WorkerPool] = {}
_POOLS_LOCK = threading.Lock()


def get_pool(workers: int) -> WorkerPool:
    """The process's shared pool with ``workers`` threads (created on first use)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = _POOLS[workers] = WorkerPool(workers)
        return pool


# ---------------------------------------------------------------------------------------------- dynamic

class Var:
    """The engine's handle of one buffer: a FIFO of operations waiting on it, the reads running now,
    whether a write is running, and the failure (if any) of the last operation that wrote it."""

    __slots__ = ("error", "name", "queue", "reading", "writing")

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.queue: collections.deque[tuple[_Op, bool]] = collections.deque()  # (op, is_write)
        self.reading = 0
        self.writing = False
        self.error: EngineOpError | None = None

    def __repr__(self) -> str:
        return f"Var({self.name!r}, reading={self.reading}, writing={self.writing}, queued={len(self.queue)})"


class _Op:
    __slots__ = ("event", "fn", "name", "reads", "wait", "writes")

    def __init__(self, fn: Callable[[], Any] | None, reads: tuple[Var, ...], writes: tuple[Var, ...],
                 name: str) -> None:
        self.fn, self.reads, self.writes, self.name = fn, reads, writes, name
        self.wait = len(reads) + len(writes) + 1  # +1: held by push until every Var has been asked
        self.event: threading.Event | None = None


def _check_vars(reads: Iterable[Var], writes: Iterable[Var], name: str) -> tuple[tuple[Var, ...], tuple[Var, ...]]:
    r = tuple(dict.fromkeys(reads))
    w = tuple(dict.fromkeys(writes))
    for v in (*r, *w):
        if not isinstance(v, Var):
            raise TypeError(f"engine op {name!r}: reads/writes must be Vars, got {type(v).__name__}")
    both = set(r) & set(w)
    if both:
        raise EngineConfigError(f"engine op {name!r}: {sorted(v.name for v in both)} in both reads and writes; "
                                "list an in-place buffer in writes only (a write already waits for earlier reads)")
    return r, w


class Engine:
    """The interface both engines implement."""

    def new_var(self, name: str = "") -> Var:
        return Var(name)

    def push(self, fn: Callable[[], Any], reads: Sequence[Var] = (), writes: Sequence[Var] = (),
             name: str | None = None) -> None:
        """Run ``fn()`` after every earlier operation writing a Var of ``reads``, and every earlier
        operation reading or writing a Var of ``writes``, has finished."""
        raise NotImplementedError

    def wait(self, var: Var) -> None:
        """Block until every operation pushed so far on ``var`` has finished; re-raise a pending failure."""
        raise NotImplementedError

    def wait_all(self) -> None:
        """Block until every pushed operation has finished; re-raise a pending failure."""
        raise NotImplementedError


class NaiveEngine(Engine):
    """Runs each push at once, in the calling thread; a failing function raises from ``push``."""

    def push(self, fn: Callable[[], Any], reads: Sequence[Var] = (), writes: Sequence[Var] = (),
             name: str | None = None) -> None:
        name = name or getattr(fn, "__name__", "op")
        _check_vars(reads, writes, name)
        try:
            fn()
        except Exception as exc:
            raise EngineOpError(name, exc) from exc

    def wait(self, var: Var) -> None:
        pass

    def wait_all(self) -> None:
        pass


class ThreadedEngine(Engine):
    """MXNet's threaded engine: per-Var read/write queues, ready operations run on a :class:`WorkerPool`."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = default_workers() if workers is None else workers
        if self.workers < 1:
            raise EngineConfigError(f"ThreadedEngine needs at least 1 worker, got {self.workers}")
        self.pool = get_pool(self.workers)
        self._lock = threading.Lock()
        self._pending = 0
        self._idle = threading.Condition(self._lock)
        self._errors: list[EngineOpError] = []
        self._poisoned: set[Var] = set()

    def push(self, fn: Callable[[], Any], reads: Sequence[Var] = (), writes: Sequence[Var] = (),
             name: str | None = None) -> None:
        name = name or getattr(fn, "__name__", "op")
        r, w = _check_vars(reads, writes, name)
        self._push(_Op(fn, r, w, name))

    def _push(self, op: _Op) -> None:
        granted = 1
        with self._lock:
            self._pending += 1
            for v in op.reads:
                if not v.writing and not v.queue:
                    v.reading += 1
                    granted += 1
                else:
                    v.queue.append((op, False))
            for v in op.writes:
                if not v.writing and not v.reading and not v.queue:
                    v.writing = True
                    granted += 1
                else:
                    v.queue.append((op, True))
            op.wait -= granted
            ready = op.wait == 0
        if ready:
            self.pool.submit(self._execute, op)

    def _execute(self, op: _Op | None) -> None:
        while op is not None:
            failed = next((v.error for v in (*op.reads, *op.writes) if v.error is not None), None)
            if failed is None and op.fn is not None:
                try:
                    op.fn()
                except Exception as exc:
                    failed = EngineOpError(op.name, exc)
                    failed.__cause__ = exc
                    with self._lock:
                        self._errors.append(failed)
            if op.event is not None:
                op.event.set()
            op = self._complete(op, failed)

    def _complete(self, op: _Op, failed: EngineOpError | None) -> _Op | None:
        """Release ``op``'s Vars; submits newly ready operations but the first, which it returns (the
        finishing worker runs it next without a trip through the pool)."""
        ready: list[_Op] = []
        with self._lock:
            for v in op.reads:
                v.reading -= 1
                if v.reading == 0 and v.queue:  # the head must be a write: reads behind no write were granted
                    nxt = v.queue.popleft()[0]
                    v.writing = True
                    nxt.wait -= 1
                    if nxt.wait == 0:
                        ready.append(nxt)
            for v in op.writes:
                v.writing = False
                if failed is not None:
                    v.error = failed
                    self._poisoned.add(v)
                queue = v.queue
                while queue and not queue[0][1]:
                    nxt = queue.popleft()[0]
                    v.reading += 1
                    nxt.wait -= 1
                    if nxt.wait == 0:
                        ready.append(nxt)
                if queue and not v.reading:
                    nxt = queue.popleft()[0]
                    v.writing = True
                    nxt.wait -= 1
                    if nxt.wait == 0:
                        ready.append(nxt)
            self._pending -= 1
            if self._pending == 0:
                self._idle.notify_all()
        for nxt in ready[1:]:
            self.pool.submit(self._execute, nxt)
        return ready[0] if ready else None

    def _raise_pending(self) -> None:
        with self._lock:
            errors, self._errors = self._errors, []
            if errors:  # reported: operations on the failed op's outputs run again from now on
                for v in self._poisoned:
                    v.error = None
                self._poisoned.clear()
        if errors:
            raise errors[0]

    def wait(self, var: Var) -> None:
        op = _Op(None, (var,), (), f"wait({var.name})")
        op.event = threading.Event()
        self._push(op)
        op.event.wait()
        self._raise_pending()

    def wait_all(self) -> None:
        with self._idle:
            while self._pending:
                self._idle.wait()
        self._raise_pending()


def get_engine(kind: str | None = None, workers: int | None = None) -> Engine:
    """A new engine of ``kind`` (default ``$EMBER_ENGINE``, else ``"threaded"``)."""
    kind = _engine_kind(kind)
    return NaiveEngine() if kind == "naive" else ThreadedEngine(workers)


def _engine_kind(kind: str | None) -> str:
    source = "engine kind"
    if kind is None:
        kind, source = os.environ.get("EMBER_ENGINE", "").strip().lower() or "threaded", "EMBER_ENGINE"
    if kind not in ENGINES:
        raise EngineConfigError(f"{source} must be one of {', '.join(map(repr, ENGINES))}, got {kind!r}")
    return kind


# ---------------------------------------------------------------------------------------------- static

Step = tuple[Callable[[], Any], Iterable[Hashable], Iterable[Hashable]]


class Schedule:
    """A compiled plan's steps as a dependency DAG, built once and replayed by ``run()``.

    ``steps`` are ``(fn, read_ids, write_ids)`` in a valid sequential order; ids are any hashable
    buffer keys (an id in both reads and writes is an in-place write). Edges: read-after-write,
    write-after-read and write-after-write through each id, plus ``extra_edges`` ``(before, after)``
    step indices (for ids that alias the same memory). ``mode`` is ``"naive"`` (in order, in the
    calling thread) or ``"threaded"``; default ``$EMBER_ENGINE``. ``kernel_threads`` (default
    ``cores // min(workers, max_width)``) is applied to BLAS and OpenMP while a threaded run lasts.
    ``inline`` forces (True) or forbids (False) running a threaded schedule in order in the caller;
    by default only a schedule with no two independent steps (or one worker) runs inline.
    """

    def __init__(self, steps: Sequence[Step], extra_edges: Iterable[tuple[int, int]] = (),
                 mode: str | None = None, workers: int | None = None, kernel_threads: int | None = None,
                 inline: bool | None = None) -> None:
        self.mode = _engine_kind(mode)
        self.fns = [s[0] for s in steps]
        n = len(self.fns)
        preds: list[set[int]] = [set() for _ in range(n)]
        last_write: dict[Hashable, int] = {}
        readers: dict[Hashable, list[int]] = {}
        for i, (fn, reads, writes) in enumerate(steps):
            if not callable(fn):
                raise TypeError(f"schedule step {i}: expected a callable, got {type(fn).__name__}")
            writes = set(writes)
            for b in reads:
                if b in writes:
                    continue
                if b in last_write:
                    preds[i].add(last_write[b])
                readers.setdefault(b, []).append(i)
            for b in writes:
                rs = readers.pop(b, None)
                if rs:
                    preds[i].update(rs)  # WAR; also implies WAW, since those readers follow the last write
                elif b in last_write:
                    preds[i].add(last_write[b])
                last_write[b] = i
            preds[i].discard(i)
        for a, b in extra_edges:
            if not (isinstance(a, int) and isinstance(b, int) and 0 <= a < b < n):
                raise EngineConfigError(f"extra edge ({a!r}, {b!r}) must be (before, after) step indices with "
                                        f"0 <= before < after < {n} (the steps' sequential order)")
            preds[b].add(a)
        succs: list[list[int]] = [[] for _ in range(n)]
        for i, ps in enumerate(preds):
            for p in ps:
                succs[p].append(i)
        self.succs = [tuple(sorted(s)) for s in succs]
        self.n_preds = [len(p) for p in preds]
        self.roots = [i for i in range(n) if not preds[i]]
        self.n_edges = sum(self.n_preds)
        level = [0] * n  # ASAP level: 1 + the deepest predecessor's (steps are in topological order)
        for i, ps in enumerate(preds):
            level[i] = 1 + max((level[p] for p in ps), default=0)
        widths = collections.Counter(level)
        self.critical_path = max(level, default=0)
        self.max_width = max(widths.values(), default=0)
        self.workers = default_workers() if workers is None else workers
        if self.workers < 1:
            raise EngineConfigError(f"Schedule needs at least 1 worker, got {self.workers}")
        concurrent = min(self.workers, self.max_width)
        self.kernel_threads = kernel_threads or threads_per_kernel(concurrent)
        # A DAG with no two independent steps gains nothing from threads: run it in order, inline.
        self.inline = self.mode == "naive" or (concurrent <= 1 if inline is None else inline)
        # Dependency "counters" as lists popped by each finishing predecessor: list.pop is atomic, and
        # the predecessor that pops the True (pushed first, popped last) is the one that readies the step.
        self._tokens = [[True] + [False] * (k - 1) if k else [] for k in self.n_preds]
        self._pool: WorkerPool | None = None

    def stats(self) -> dict[str, int]:
        """Steps, DAG edges, critical path (steps on the longest chain), widest ASAP level, workers."""
        return {"steps": len(self.fns), "edges": self.n_edges, "critical_path": self.critical_path,
                "max_width": self.max_width, "workers": 1 if self.inline else self.workers}

    def explain(self) -> str:
        s = self.stats()
        how = "in order" if self.inline else f"{s['workers']} workers x {self.kernel_threads} kernel threads"
        par = s["steps"] / s["critical_path"] if s["critical_path"] else 0.0
        return (f"schedule: {s['steps']} steps, {s['edges']} edges, critical path {s['critical_path']}, "
                f"max width {s['max_width']} (parallelism {par:.2f}), {self.mode}: {how}")

    def run(self) -> None:
        """Run every step once, respecting the DAG; raises :class:`EngineOpError` for the first failing
        step (the steps after it that depend on it are skipped, independent ones still run)."""
        if self.inline:
            for i, fn in enumerate(self.fns):
                try:
                    fn()
                except Exception as exc:
                    raise EngineOpError(_step_name(i, fn), exc) from exc
            return
        if not self.fns:
            return
        if self._pool is None:
            self._pool = get_pool(max(1, self.workers - 1))  # the calling thread is the last worker
        with kernel_threads(self.kernel_threads, self._pool):
            _Run(self, self._pool).go()


def _step_name(i: int, fn: Callable) -> str:
    return f"step {i} ({getattr(fn, '__name__', type(fn).__name__)})"


class _Run:
    """One execution of a :class:`Schedule`: fresh dependency tokens, a countdown, the first error."""

    __slots__ = ("error", "fns", "left", "pool", "roots", "skip", "succs", "tokens")

    def __init__(self, sched: Schedule, pool: WorkerPool) -> None:
        self.fns, self.succs, self.roots, self.pool = sched.fns, sched.succs, sched.roots, pool
        self.tokens = [t.copy() for t in sched._tokens]
        self.left = [True] + [False] * (len(sched.fns) - 1)  # popped once per finished step
        self.error: EngineOpError | None = None
        self.skip: set[int] = set()  # steps downstream of a failure

    def go(self) -> None:
        for r in self.roots[1:]:
            self.pool.submit(self.execute, r)
        self.execute(self.roots[0])
        pool = self.pool
        while self.left:
            item = pool.take(stop=lambda: not self.left)
            if item is not None:
                item[0](item[1])
        if self.error is not None:
            raise self.error

    def execute(self, i: int) -> None:
        fns, succs, tokens, skip = self.fns, self.succs, self.tokens, self.skip
        while True:
            fn = fns[i]
            if i in skip:
                skip.update(succs[i])
            else:
                try:
                    fn()
                except Exception as exc:
                    if self.error is None:
                        self.error = EngineOpError(_step_name(i, fn), exc)
                        self.error.__cause__ = exc
                    skip.update(succs[i])
            nxt = -1
            for s in succs[i]:
                if tokens[s].pop():
                    if nxt < 0:
                        nxt = s
                    else:
                        self.pool.submit(self.execute, s)
            if self.left.pop():
                self.pool.wake_all()  # the caller may be asleep in take()
            if nxt < 0:
                return
            i = nxt
