"""Tracing eager code into a ``Graph``: ``ember.jit``.

The tracer is concrete: while it records, every op also runs eagerly on real data, so the first
call of a signature computes its real results (and every Python path that reads shapes works).
What it records is keyed by *storage*: each NumPy array produced or read maps to the node that
holds its current value. An in-place update (``Tensor._inplace``) rebinds the storage to the
node of the new value, so the graph stays SSA; a ``detach()`` or ``ctx.out`` wrapper around an
array already seen is the same node.

Where a value comes from decides what it becomes:

* a function argument: a graph input (``input``);
* a tensor that existed before the call (parameters, optimizer state, buffers, ``.grad``): a
  ``live`` input, read by reference on every run, and written back when the trace updated it;
* a tensor made during the call outside any op (a Python scalar operand, ``zeros_like``): a
  constant, with its value at first use;
* a value computed during the call that is still referenced afterwards (``p.grad``, a module
  attribute): written into that tensor's storage on every run ("escapes").

A replay is valid while the guards recorded with it hold: the argument signature (shapes,
dtypes, devices, pytree structure, static values), the ``training`` flag of every module
called, the hyperparameters of every optimizer stepped (learning rates are read afresh on each
run), and the identity of every ``.grad`` the trace accumulated into. When a trace creates
persistent state (an optimizer's first step makes its moment buffers), the next call traces
again and that second plan is the one replayed.
"""

from __future__ import annotations

import functools
import gc
import os
import sys
import time
import traceback
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from ..autograd import STATE
from ..errors import TraceError
from ..tensor import Tensor
from .ir import Graph, Node

_EMBER_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_UNSTABLE_LIMIT = 3


def user_frame() -> str:
    """``file:line: code`` of the innermost stack frame outside the ember package (the user's line)."""
    for frame in reversed(traceback.extract_stack()):
        path = os.path.abspath(frame.filename)
        if not path.startswith(_EMBER_DIR + os.sep) and "contextlib" not in path:
            return f"{frame.filename}:{frame.lineno}: {(frame.line or '').strip()}"
    return "<unknown>"


# ----------------------------------------------------------------------------- the tracer


class Tracer:
    """Records ops applied while ``STATE.tracer`` is this object (see the module docstring)."""

    def __init__(self, name: str) -> None:
        self.graph = Graph(name)
        self.storage: dict[int, Node] = {}       # id(array) -> node holding its current value
        self.keep: list[Any] = []                # arrays and tensors whose ids are keys (kept alive)
        self.born: set[int] = set()              # ids of arrays made during the trace outside ops
        self.captured: dict[int, Tensor] = {}    # id(array) -> the pre-existing tensor read as live input
        self.made: list[Tensor] = []             # every tensor object created during the trace
        self.modules: dict[int, Any] = {}
        self.optimizers: dict[int, Any] = {}
        self.grad_reads: dict[int, tuple[Tensor, Tensor]] = {}  # id(leaf) -> (leaf, its .grad read)
        self.grad_leaves: dict[int, Tensor] = {}
        self.grad_none: dict[int, Tensor] = {}
        self.grad_resets: set[int] = set()
        self.syncs: list[Callable[[], None]] = []
        self.merged = 0

    # -- values
    def _cpu_only(self, t: Tensor) -> None:
        if t.device.type != "cpu":
            raise TraceError(f"ember.jit: compiled mode runs on the CPU only (the GPU's, NVRTC-compiled kernels "
                             f"on CUDA streams, is not built yet); {self.graph.name} reads a tensor of shape "
                             f"{t.shape} on {t.device}. Call the function without ember.jit to run it eagerly "
                             "on the GPU, or move its tensors to the CPU.")

    def bind_input(self, t: Tensor, index: int, name: str) -> None:
        self._cpu_only(t)
        node = self.graph.add_input(t.shape, t.dtype, t.device, name, index)
        self._map(t.data, node)

    def _map(self, array: Any, node: Node) -> None:
        self.storage[id(array)] = node
        self.keep.append(array)

    def node_of(self, t: Tensor) -> Node:
        a = t.data
        node = self.storage.get(id(a))
        if node is not None:
            return node
        self._cpu_only(t)
        if id(a) in self.born:
            node = self.graph.add_const(np.array(a, copy=True), t.dtype, t.device)
        else:
            node = self.graph.add_live(t, _live_name(t))
            self.captured[id(a)] = t
        self._map(a, node)
        return node

    # -- hooks called from the eager code
    def apply(self, op: Any, inputs: tuple, attrs: dict) -> Any:
        from ..ops import registry
        for t in inputs:
            if not isinstance(t, Tensor):
                raise TypeError(f"{op.name}: expected Tensor inputs, got {type(t).__name__}")
        ins = [self.node_of(t) for t in inputs]
        STATE.tracer = None
        try:
            out = registry.apply(op, *inputs, **attrs)
        finally:
            STATE.tracer = self
        before = len(self.graph.nodes)
        node = self.graph.make(op, ins, attrs, out.shape, out.dtype, out.device)
        if len(self.graph.nodes) == before:
            self.merged += 1
        self._map(out.data, node)
        self.made.append(out)
        return out

    def on_make(self, t: Tensor) -> None:
        """A tensor was wrapped outside an op (``_make``): remember it; new arrays are constants."""
        self.made.append(t)
        if id(t.data) not in self.storage:
            self.born.add(id(t.data))
            self.keep.append(t.data)

    def assign(self, target: Tensor, value: Tensor) -> None:
        """``target`` was updated in place to ``value``'s contents."""
        if target.data.base is not None and id(target.data) not in self.storage and \
                id(target.data) not in self.born:
            raise TraceError(f"in-place update of a view (shape {target.shape}) inside a traced function is not "
                             f"supported: update the tensor it views, or run this in eager mode\n  at {user_frame()}")
        self.node_of(target)  # a pre-existing target becomes a live input first
        self._map(target.data, self.node_of(value))

    def alias(self, new: Tensor, of: Tensor) -> None:
        """``new`` holds a copy of ``of``'s current value (the snapshot an in-place op keeps for autograd)."""
        self._map(new.data, self.node_of(of))

    def value_read(self, what: str) -> None:
        raise TraceError(f"{what} reads a tensor's value inside a traced function (ember.jit), where values are "
                         f"not known until the compiled graph runs\n  at {user_frame()}\n"
                         "Move the read out of the compiled function (return the tensor and read it afterwards), "
                         "or call the function eagerly (without ember.jit).")

    def note_module(self, module: Any) -> None:
        self.modules[id(module)] = module

    def note_optimizer(self, opt: Any) -> None:
        self.optimizers[id(opt)] = opt

    def note_grad(self, leaf: Tensor) -> None:
        """Autograd is about to accumulate into ``leaf.grad``: guard on the gradient it finds (the same
        tensor, or None unless this trace itself reset it with ``zero_grad`` first)."""
        node = self.storage.get(id(leaf.data))
        if node is not None and node.kind == "input":
            return  # an argument's .grad belongs to that call's tensor: return it to use it
        key = id(leaf)
        self.grad_leaves[key] = leaf
        if key in self.grad_reads or key in self.grad_none:
            return
        if leaf.grad is not None:
            self.grad_reads[key] = (leaf, leaf.grad)
        elif key not in self.grad_resets:
            self.grad_none[key] = leaf

    def note_grad_reset(self, leaf: Tensor) -> None:
        """``zero_grad`` ran on ``leaf`` inside the trace."""
        self.grad_resets.add(id(leaf))

    def add_sync(self, fn: Callable[[], None]) -> None:
        """``fn`` refreshes a live tensor from Python state (a learning rate) before every run."""
        self.syncs.append(fn)


def _live_name(t: Tensor) -> str:
    return getattr(t, "_ember_name", None) or ""


# ----------------------------------------------------------------------------- pytrees and signatures


def flatten(tree: Any, leaves: list) -> Any:
    """The structure of ``tree`` with tensors replaced by their index in ``leaves`` (appended)."""
    if isinstance(tree, Tensor):
        leaves.append(tree)
        return ("T", len(leaves) - 1)
    if isinstance(tree, (list, tuple)) and type(tree) in (list, tuple):
        return (type(tree).__name__, tuple(flatten(v, leaves) for v in tree))
    if isinstance(tree, dict) and type(tree) is dict:
        return ("dict", tuple((k, flatten(v, leaves)) for k, v in tree.items()))
    return ("S", _static_key(tree))


def unflatten(spec: Any, leaves: list) -> Any:
    kind, body = spec
    if kind == "T":
        return leaves[body]
    if kind == "list":
        return [unflatten(s, leaves) for s in body]
    if kind == "tuple":
        return tuple(unflatten(s, leaves) for s in body)
    if kind == "dict":
        return {k: unflatten(s, leaves) for k, s in body}
    return body[-1]  # the value: (type, value) for Python scalars, ("obj", id, value) for other objects


def _static_key(value: Any) -> Any:
    try:
        hash(value)
        return (type(value).__name__, value) if isinstance(value, (int, float, str, bool, bytes, type(None))) else \
            ("obj", id(value), value)
    except TypeError:
        return ("obj", id(value), value)


def _signature(spec: Any, leaves: list[Tensor]) -> tuple:
    return (repr_key(spec),) + tuple((t.shape, t.dtype, t.device, t.requires_grad) for t in leaves)


def repr_key(spec: Any) -> Any:
    kind, body = spec
    if kind == "T":
        return ("T", body)
    if kind in ("list", "tuple"):
        return (kind, tuple(repr_key(s) for s in body))
    if kind == "dict":
        return ("dict", tuple((k, repr_key(s)) for k, s in body))
    k = body
    return ("S", k[0], k[1]) if k[0] != "obj" else ("S", "obj", k[1])


# ----------------------------------------------------------------------------- the result of one trace


class Trace:
    """A recorded graph with what a replay needs to bind and check."""

    def __init__(self, graph: Graph, out_spec: Any, grad_final: list[tuple[Tensor, Any]],
                 guards: list[Callable[[], bool]], guard_text: list[str], syncs: list[Callable[[], None]],
                 stable: bool, why_unstable: str, trace_ms: float, merged: int) -> None:
        self.graph = graph
        self.out_spec = out_spec
        self.grad_final = grad_final
        self.guards = guards
        self.guard_text = guard_text
        self.syncs = syncs
        self.stable = stable
        self.why_unstable = why_unstable
        self.trace_ms = trace_ms
        self.merged = merged
        from .. import amp
        self.autocast = amp.state_key()  # autocast's casts are traced in: another state needs another trace

    def guards_hold(self) -> bool:
        from .. import amp
        return amp.state_key() == self.autocast and all(g() for g in self.guards)


def trace(fn: Callable, args: tuple, kwargs: dict, name: str) -> tuple[Trace, Any]:
    """Run ``fn`` once while recording; returns the trace and the call's (real) result."""
    if STATE.tracer is not None:
        raise TraceError(f"ember.jit: {name} was called while another function is being traced; nested compiled "
                         "functions are traced into the outer one only when called as plain functions")
    t0 = time.perf_counter()
    leaves: list[Tensor] = []
    flatten((args, kwargs), leaves)
    tracer = Tracer(name)
    seen: dict[int, int] = {}
    for i, t in enumerate(leaves):
        if id(t.data) in seen:  # the same tensor passed twice is one input
            continue
        seen[id(t.data)] = i
        tracer.bind_input(t, i, f"arg{i}")
    STATE.tracer = tracer
    try:
        result = fn(*args, **kwargs)
    finally:
        STATE.tracer = None
    out_leaves: list[Tensor] = []
    out_spec = flatten(result, out_leaves)
    g = tracer.graph
    STATE.tracer = tracer
    try:
        g.outputs = [tracer.node_of(t) for t in out_leaves]
    finally:
        STATE.tracer = None
    # Outputs leave detached (a compiled function is a unit: differentiate inside it).
    for t in out_leaves:
        if t.grad_fn is not None:
            t.grad_fn = None
            t.requires_grad = False
    out_ids = {id(t) for t in out_leaves} | {id(t.data) for t in out_leaves}
    arg_storage = {id(t.data): i for i, t in enumerate(leaves)}

    # Which values outlive the call: drop our strong references, then look at what is still alive.
    made = [weakref.ref(t) for t in tracer.made]
    captured = tracer.captured
    tracer.made = []
    del result
    gc.collect()
    writes: dict[int, tuple[Node, Any]] = {}
    stable, why = True, ""
    for key, t in captured.items():
        node = tracer.storage[key]
        if not (node.kind == "live" and node.payload is t):
            writes[key] = (node, t)
    for r in made:
        t = r()
        if t is None or id(t) in out_ids or id(t.data) in out_ids:
            continue
        key = id(t.data)
        node = tracer.storage.get(key)
        if node is None or key in writes:
            continue
        if key in arg_storage or node.kind == "live":
            continue
        if type(t.data) is not np.ndarray and stable:
            stable, why = False, "a 0-d result it keeps after the call is a NumPy scalar, which cannot be updated"
        if key in tracer.born and stable:
            stable, why = False, (f"it created a tensor of shape {t.shape} that is kept after the call (state made "
                                  "on a first call, such as an optimizer's moment buffers)")
        writes[key] = (node, t)
    for key, i in arg_storage.items():  # an argument updated in place is written back into the caller's tensor
        node = tracer.storage[key]
        if not (node.kind == "input" and node.payload == i):
            writes[key] = (node, ("arg", i))
    g.writes = list(writes.values())
    # A pre-existing tensor that the trace read and then dropped (rebinding an attribute to a new tensor)
    # would be read stale by a replay.
    # The graph's own references do not count: hold its live tensors weakly while looking.
    live_nodes = [n for n in g.nodes if n.kind == "live"]
    live_refs = [(n, weakref.ref(n.payload), n.payload.shape) for n in live_nodes]
    for n in live_nodes:
        n.payload = None
    tracer.captured = {}
    captured = {}
    gc.collect()
    for n, r, shape in live_refs:
        n.payload = r()
        if n.payload is None and stable:
            stable, why = False, (f"it read a tensor of shape {shape} and dropped the last reference to it (an "
                                  "attribute rebound to a new tensor each call); update state in place with "
                                  "t.copy_(new) so a compiled replay can write into it")

    guards, text = _guards(tracer, leaves)
    grad_final = [(leaf, leaf.grad) for leaf in tracer.grad_leaves.values()]
    for opt in tracer.optimizers.values():
        for group in opt.param_groups:
            for p in group["params"]:
                if id(p) not in tracer.grad_leaves:
                    grad_final.append((p, p.grad))
    tr = Trace(g, out_spec, grad_final, guards, text, list(tracer.syncs), stable, why,
               (time.perf_counter() - t0) * 1e3, tracer.merged)
    return tr, unflatten(out_spec, out_leaves)


def _guards(tracer: Tracer, leaves: list[Tensor]) -> tuple[list[Callable[[], bool]], list[str]]:
    from .. import amp
    guards: list[Callable[[], bool]] = []
    text: list[str] = ["autocast state"] if any(d is not None for d in amp.state_key()) else []
    for m in tracer.modules.values():
        flag = m.training
        guards.append(lambda m=m, flag=flag: m.training == flag)
    if tracer.modules:
        text.append(f"training flags of {len(tracer.modules)} module(s)")
    for opt in tracer.optimizers.values():
        snap = _hyper_snapshot(opt)
        guards.append(lambda opt=opt, snap=snap: _hyper_snapshot(opt) == snap)
        text.append(f"hyperparameters of {type(opt).__name__} (except lr, read on every run)")
    for leaf, g in tracer.grad_reads.values():
        guards.append(lambda leaf=leaf, g=g: leaf.grad is g)
    if tracer.grad_reads:
        text.append(f".grad of {len(tracer.grad_reads)} parameter(s) (accumulated into)")
    for leaf in tracer.grad_none.values():
        guards.append(lambda leaf=leaf: leaf.grad is None)
    if tracer.grad_none:
        text.append(f".grad of {len(tracer.grad_none)} parameter(s) is None")
    return guards, text


def _hyper_snapshot(opt: Any) -> tuple:
    out = []
    for group in opt.param_groups:
        out.append(tuple((k, _freeze_value(v)) for k, v in group.items() if k not in ("params", "lr", "param_names")))
        out.append(len(group["params"]))
    return tuple(out)


def _freeze_value(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(v)
    if isinstance(v, Tensor):
        return id(v)
    return v


# ----------------------------------------------------------------------------- ember.jit


class CompiledFunction:
    """``fn`` compiled per input signature (see ``ember.jit``)."""

    def __init__(self, fn: Callable, memory_budget: int | None = None, name: str | None = None,
                 fuse: bool = True) -> None:
        self.fuse = fuse
        self.fn = fn
        self.memory_budget = memory_budget
        self.name = name or getattr(fn, "__qualname__", None) or type(fn).__name__
        self._cache: dict[Any, Any] = {}
        self._unstable: dict[Any, int] = {}
        self.last: Any = None  # the most recently used compiled entry
        self.traces = 0
        functools.update_wrapper(self, fn, updated=())

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        leaves: list[Tensor] = []
        spec = flatten((args, kwargs), leaves)
        key = _signature(spec, leaves)
        entry = self._cache.get(key)
        if entry is not None and entry.trace.guards_hold():
            self.last = entry
            return entry.run(leaves)
        return self._trace_and_compile(key, args, kwargs)

    def _trace_and_compile(self, key: Any, args: tuple, kwargs: dict) -> Any:
        from .compile import compile_trace
        tr, result = trace(self.fn, args, kwargs, self.name)
        self.traces += 1
        if not tr.stable:
            n = self._unstable.get(key, 0) + 1
            self._unstable[key] = n
            self._cache.pop(key, None)
            if n == _UNSTABLE_LIMIT:
                warnings.warn(f"ember.jit({self.name}): traced {n} times without a reusable plan, because "
                              f"{tr.why_unstable}. It keeps running (tracing runs eagerly), but not compiled.",
                              stacklevel=3)
            return result
        self._unstable.pop(key, None)
        entry = compile_trace(tr, self.memory_budget, self.fuse)
        self._cache[key] = entry
        self.last = entry
        return result

    def explain(self, file: Any = None) -> str:
        """What tracing and each pass did, the memory plan, and compile time, for the latest compiled call."""
        if self.last is None:
            text = f"ember.jit({self.name}): not compiled yet (call it first)"
        else:
            text = self.last.explain()
        print(text, file=file or sys.stdout)
        return text

    @property
    def graph(self) -> Graph:
        """The optimized graph of the latest compiled call."""
        if self.last is None:
            raise TraceError(f"ember.jit({self.name}): call the function before asking for its graph")
        return self.last.graph


def jit(fn: Callable | None = None, *, memory_budget: int | None = None, name: str | None = None,
        fuse: bool = True) -> Any:
    """Compile ``fn``: trace it on the first call per input signature, optimize the graph, plan its memory,
    and replay the plan on later calls. Usable as ``@ember.jit`` or ``ember.jit(fn, memory_budget=...)``.

    ``fn`` may run a whole training step (forward, ``loss.backward()``, clipping, ``optimizer.step()``,
    ``zero_grad()``): parameters and optimizer state are written back in place after every run.
    ``memory_budget`` (bytes) makes the compiler recompute activations in the backward pass instead of
    keeping them, to keep the planned peak under the budget. Outputs do not carry autograd history.
    ``fuse`` (default on when a C compiler is found; ``EMBER_FUSION=0`` turns it off everywhere) runs chains
    of pointwise ops and reductions as generated C kernels; with ``fuse=False`` every node runs its NumPy
    reference kernel, bit for bit as in eager mode.
    """
    if memory_budget is not None and (not isinstance(memory_budget, (int, np.integer)) or memory_budget <= 0):
        raise ValueError(f"ember.jit: memory_budget must be a positive number of bytes, got {memory_budget!r}")
    if fn is None:
        return lambda f: CompiledFunction(f, memory_budget, name, fuse)
    if not callable(fn):
        raise TypeError(f"ember.jit: expected a function, got {type(fn).__name__}")
    return CompiledFunction(fn, memory_budget, name, fuse)

