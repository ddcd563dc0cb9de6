"""Eager composites compiled once per shape signature (DESIGN.md, "a composite called eagerly is
compiled once per shape signature and cached").

``ember.ops.registry.composite`` hands an eager call here (no tracer, no forward-mode AD,
``EMBER_EAGER_FUSION`` not ``0``). When every tensor argument is a CPU array, every other argument is
hashable and the largest tensor has at least ``MIN_ELEMENTS`` elements, the call runs as the single op
``compiled_composite``:

* its kernel is the composite traced with ``ember.graph`` (static arguments closed over) and compiled
  into fused C kernels, cached per (composite, static arguments, shapes, dtypes);
* its vjp runs a second compiled function, cached per (which inputs need a gradient, gradient dtype),
  that recomputes the forward (fused, cheap) and returns the input gradients from (inputs, grad_output).
  Under ``create_graph=True`` (grad mode on inside the vjp), or while ``ember.jit`` traces the backward
  pass, it differentiates the plain composite instead, so higher-order gradients stay exact.

A signature whose trace fails (a value read: ``TraceError``), returns anything but one floating tensor
(or a view of an input), writes state (batch-norm running statistics), draws random numbers, or
compiles to no fused kernel at all runs the plain function, and that is remembered for the signature.
``composite_cache_info()`` reports what happened; ``composite_cache_clear()`` forgets it.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from ..autograd import STATE, enable_grad, no_grad
from ..autograd import grad as _grad
from ..device import CPU
from ..tensor import Tensor, _make
from .random import Generator, default_generator
from .registry import Op, apply

# A replay beats op by op at every size (benchmarks/eager_composites.py --sweep), but a new signature costs
# a trace and a C compile (0.2-1 s; kernels are cached on disk): below this size the savings per call
# (~10 us) would take tens of thousands of calls to pay that back.
MIN_ELEMENTS = 4096
MAX_SIGNATURES = 32  # per composite: more distinct shapes than this (varying lengths) run the rest plain
MAX_ENTRIES = 256    # signatures kept in all (least recently used dropped first)

_CACHE: OrderedDict[tuple, Any] = OrderedDict()
_STATS = {"forward_traces": 0, "backward_traces": 0, "hits": 0, "plain_calls": 0}
_WHY: dict[str, str] = {}  # composite name -> why its latest signature fell back to the plain function
_SIGNATURES: dict[Callable, int] = {}  # composite -> signatures traced for it


class _Plain:
    """A cache value: this signature runs the plain function."""

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why


class _Entry:
    """One compiled signature: the forward executor and, per gradient mask, a backward plan."""

    def __init__(self, fn: Callable, name: str, template: tuple, slots: tuple) -> None:
        self.fn = fn
        self.name = name
        self.template = template      # (args with tensors blanked, kwargs with tensors blanked)
        self.slots = slots            # where each tensor goes: int (positional) or str (keyword)
        self.forward: Any = None      # CompiledEntry
        self.fwd_env: list = []
        self.shape: tuple = ()
        self.dtype: Any = None
        self.backward: dict[tuple, Any] = {}  # (need mask, grad dtype) -> (CompiledEntry, env) | _Plain
        self.lock = threading.Lock()

    def call(self, tensors: Any) -> Any:
        """The plain composite on ``tensors`` (in argument order)."""
        args, kwargs = list(self.template[0]), dict(self.template[1])
        for slot, t in zip(self.slots, tensors):
            if type(slot) is int:
                args[slot] = t
            else:
                kwargs[slot] = t
        return self.fn(*args, **kwargs)

    def run_forward(self, arrays: tuple) -> Any:
        ex = self.forward.executor
        try:
            return ex.run(list(arrays))[0]
        finally:
            _reset(ex, self.fwd_env)

    def __repr__(self) -> str:  # what a tape node's attrs show
        return f"<compiled {self.name} {self.shape}>"


def _reset(executor: Any, env: list) -> None:
    # The executor keeps its last inputs and results in ``env``; restoring the state it was built with
    # lets cached signatures hold no caller arrays between calls.
    if env:
        executor.env[:] = env


# ----------------------------------------------------------------------------- the op


def _infer(*inputs: Tensor, entry: _Entry) -> tuple:
    return entry.shape, entry.dtype


def _impl(xp: Any, *arrays: Any, entry: _Entry) -> Any:
    return entry.run_forward(arrays)


def _vjp(ctx: Any, g: Tensor) -> tuple:
    entry: _Entry = ctx.attrs["entry"]
    inputs = ctx.inputs
    need = tuple(e is not None and t.dtype.is_floating_point for e, t in zip(ctx.edges, inputs))
    if not STATE.grad_enabled and STATE.tracer is None and g.device is CPU:
        if isinstance(g.data, np.generic):  # the gradient of a 0-d output can be a NumPy scalar
            g = _make(np.asarray(g.data), g.dtype, g.device)
        grads = _compiled_backward(entry, inputs, g, need)
        if grads is not None:
            return grads
    return _plain_backward(entry, inputs, g, need)


COMPILED_COMPOSITE = Op("compiled_composite", infer=_infer, impl=_impl, vjp=_vjp)


def _compiled_backward(entry: _Entry, inputs: tuple, g: Tensor, need: tuple) -> tuple | None:
    key = (need, g.dtype)
    plan = entry.backward.get(key)
    if plan is None:
        plan = entry.backward[key] = _compile_backward(entry, inputs, g, need)
    if isinstance(plan, _Plain) or not entry.lock.acquire(blocking=False):
        return None
    compiled, env = plan
    try:
        return tuple(compiled.run([*inputs, g]))
    finally:
        _reset(compiled.executor, env)
        entry.lock.release()


def _compile_backward(entry: _Entry, inputs: tuple, g: Tensor, need: tuple) -> Any:
    from ..graph.compile import compile_trace
    from ..graph.trace import trace

    def backward(*ts: Tensor) -> tuple:
        xs = [t.detach() for t in ts[:-1]]
        wrt = [x.requires_grad_() for x, n in zip(xs, need) if n]
        with enable_grad():
            out = entry.call(xs)
            gs = iter(_grad(out, wrt, ts[-1], allow_unused=True))
        return tuple(next(gs) if n else None for n in need)

    _STATS["backward_traces"] += 1
    # Any failure leaves the gradient to the plain path, which raises the real error if there is one.
    try:
        with no_grad():
            tr, _ = trace(backward, tuple(t.detach() for t in (*inputs, g)), {}, f"{entry.name}_backward")
        why = _unsuitable(tr)
        if why:
            return _Plain(why)
        compiled = compile_trace(tr)
    except Exception as e:
        return _Plain(f"backward failed to compile: {type(e).__name__}: {e}")
    return compiled, list(compiled.executor.env)


def _plain_backward(entry: _Entry, inputs: tuple, g: Tensor, need: tuple) -> tuple:
    create = STATE.grad_enabled
    if create:  # differentiate through the real inputs so the gradients keep their history
        xs = list(inputs)
    else:
        xs = [t.detach() for t in inputs]
        for x, n in zip(xs, need):
            if n:
                x.requires_grad_()
    wrt = [x for x, n in zip(xs, need) if n]
    with enable_grad():
        out = entry.call(xs)
        if not wrt or not out.requires_grad:
            return (None,) * len(need)
        gs = iter(_grad(out, wrt, g, retain_graph=True, create_graph=create, allow_unused=True))
    return tuple(next(gs) if n else None for n in need)


# ----------------------------------------------------------------------------- the eager entry point


def _static_key(v: Any) -> Any:
    """A hashable key for a non-tensor argument, or raise TypeError (tensors inside containers too)."""
    if isinstance(v, Tensor):
        raise TypeError("a tensor inside a container")
    if isinstance(v, (list, tuple)):
        return (type(v), tuple(_static_key(x) for x in v))
    if isinstance(v, float) and v != v:
        raise TypeError("NaN never equals itself")
    hash(v)
    return (type(v), v)


def _own(v: Any) -> Any:
    """``v`` with its lists copied: the caller may change a list it passed after the call."""
    if isinstance(v, list):
        return [_own(x) for x in v]
    if type(v) is tuple:
        return tuple(_own(x) for x in v)
    return v


def call(fn: Callable, run: Callable, args: tuple, kwargs: dict) -> Any:
    """Run composite ``fn`` (wrapped by ``run``) compiled, or return ``NotImplemented`` to run it plain."""
    biggest = 0
    tensors: list[Tensor] = []
    for v in (*args, *kwargs.values()):
        if isinstance(v, Tensor):
            if type(v.data) is not np.ndarray:
                return NotImplemented
            tensors.append(v)
            if v.data.size > biggest:
                biggest = v.data.size
    if biggest < MIN_ELEMENTS:
        return NotImplemented
    for t in tensors:
        if t.device is not CPU:
            return NotImplemented
    try:
        static = tuple(None if isinstance(v, Tensor) else _static_key(v) for v in args)
        kstatic = tuple((k, None if isinstance(v, Tensor) else _static_key(v)) for k, v in kwargs.items())
    except TypeError:
        return NotImplemented
    meta = tuple((t.data.shape, t.dtype) for t in tensors)
    if len(tensors) > 1:  # a trace binds one tensor passed twice as one input: part of the signature
        ids = [id(t.data) for t in tensors]
        meta += (tuple(ids.index(i) for i in ids),)
    key = (run, static, kstatic, meta)
    entry = _CACHE.get(key)
    if entry is None:
        from ..graph.passes.fuse import enabled
        if not enabled():  # EMBER_FUSION=0 or no C compiler: decide again next time
            return NotImplemented
        n = _SIGNATURES.get(run, 0)
        if n >= MAX_SIGNATURES:
            entry = _plain(fn.__name__, f"more than {MAX_SIGNATURES} shape signatures")
        else:
            _SIGNATURES[run] = n + 1
            entry = _compile_forward(fn, args, kwargs, tensors)
        _CACHE[key] = entry
        while len(_CACHE) > MAX_ENTRIES:
            _CACHE.popitem(last=False)
    else:
        _STATS["hits"] += 1
        with contextlib.suppress(KeyError):  # another thread may have just dropped it
            _CACHE.move_to_end(key)
    if isinstance(entry, _Plain):
        _STATS["plain_calls"] += 1
        return NotImplemented
    if not entry.lock.acquire(blocking=False):  # another thread is replaying this signature
        return NotImplemented
    try:
        return apply(COMPILED_COMPOSITE, *tensors, entry=entry)
    finally:
        entry.lock.release()


def _compile_forward(fn: Callable, args: tuple, kwargs: dict, tensors: list[Tensor]) -> Any:
    from ..graph.compile import compile_trace
    from ..graph.trace import trace
    name = getattr(fn, "__name__", "composite")
    slots = tuple([i for i, v in enumerate(args) if isinstance(v, Tensor)]
                  + [k for k, v in kwargs.items() if isinstance(v, Tensor)])
    template = (tuple(None if isinstance(v, Tensor) else _own(v) for v in args),
                {k: None if isinstance(v, Tensor) else _own(v) for k, v in kwargs.items()})
    entry = _Entry(fn, name, template, slots)

    def forward(*ts: Tensor) -> Any:
        return entry.call(ts)

    # The trace runs the function: a plain rerun after a failed trace must draw the same random numbers.
    generators = [default_generator] + [v for v in (*args, *kwargs.values()) if isinstance(v, Generator)]
    rng_states = [gen.get_state() for gen in generators]

    def plain(why: str) -> _Plain:
        for gen, state in zip(generators, rng_states):
            gen.set_state(state)
        return _plain(name, why)

    _STATS["forward_traces"] += 1
    try:
        with no_grad():
            tr, result = trace(forward, tuple(t.detach() for t in tensors), {}, name)
    except Exception as e:  # a real error in the call is raised again by the plain rerun
        return plain(f"trace failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    if not isinstance(result, Tensor) or not result.dtype.is_floating_point:
        return plain(f"returns {type(result).__name__}, not one floating tensor")
    root = tr.graph.outputs[0]
    while root.kind == "op" and root.is_view:
        root = root.inputs[0]
    if root.kind != "op":
        return plain("returns an input (or a view of one) unchanged")
    why = _unsuitable(tr)
    if why:
        return plain(why)
    try:
        compiled = compile_trace(tr)
    except Exception as e:  # the plain function stays correct when code generation fails
        return plain(f"compiling failed: {type(e).__name__}: {e}")
    if not any(n.kind == "op" and n.op.name == "fused" for n in compiled.graph.nodes):
        return plain("nothing to fuse")
    entry.forward = compiled
    entry.fwd_env = list(compiled.executor.env)
    entry.shape, entry.dtype = result.shape, result.dtype
    return entry


def _unsuitable(tr: Any) -> str:
    """Why a trace cannot replace the plain function ('' when it can)."""
    for n in tr.graph.nodes:
        if n.kind == "op" and "generator" in n.attrs:
            return "it draws random numbers"
    if not tr.stable or tr.graph.writes:
        return "it writes state"
    if tr.guards:
        return "its replay would depend on guards (modules, optimizers, .grad)"
    return ""


def _plain(name: str, why: str) -> _Plain:
    _WHY[name] = why
    return _Plain(why)


def cache_info() -> dict[str, Any]:
    """Counters and cache contents: traces made, cache hits, calls run plain, signatures compiled or
    remembered as plain, and why each composite last fell back."""
    entries = list(_CACHE.values())
    return {**_STATS, "compiled": sum(isinstance(e, _Entry) for e in entries),
            "plain": sum(isinstance(e, _Plain) for e in entries), "why_plain": dict(_WHY)}


def cache_clear() -> None:
    """Forget every compiled signature and reset the counters."""
    _CACHE.clear()
    _WHY.clear()
    _SIGNATURES.clear()
    for k in _STATS:
        _STATS[k] = 0
