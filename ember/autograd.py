"""Reverse-mode automatic differentiation over a tape of ``Node``s, and forward mode.

Eager ops record a ``Node`` per differentiable call (see ``ember.ops.registry.apply``).
``backward``/``grad`` walk the recorded graph iteratively (no recursion limit),
in reverse creation order, calling each op's ``vjp``. Every ``vjp`` is written in
Ember ops, so with ``create_graph=True`` the backward pass is itself recorded and
can be differentiated again. Broadcasting is undone here, in one place
(``sum_to_shape``), never in the rules.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .device import array_module
from .errors import AutogradError, ShapeError

if TYPE_CHECKING:
    from .tensor import Tensor


class _State(threading.local):
    """Per-thread dispatch state read by ``ops.apply`` on every call."""

    def __init__(self) -> None:
        self.grad_enabled = True
        self.forward_ad = False
        self.tracer = None  # set by the graph tracer (compiled mode)


STATE = _State()
_seq = itertools.count()
_LEAF_FIRST = 1 << 62  # heap priority of a ready leaf: ahead of every node


# ----------------------------------------------------------------------------- grad mode

def is_grad_enabled() -> bool:
    return STATE.grad_enabled


class _GradMode(contextlib.ContextDecorator):
    """Sets the grad mode for a ``with`` block (or each call of a decorated function), then restores it."""

    def __init__(self, mode: bool) -> None:
        self.mode = bool(mode)
        self.prev: list[bool] = []

    def __enter__(self) -> None:
        self.prev.append(STATE.grad_enabled)
        STATE.grad_enabled = self.mode

    def __exit__(self, *exc: Any) -> None:
        STATE.grad_enabled = self.prev.pop()

    def _recreate_cm(self) -> _GradMode:
        # A decorated function gets a fresh context per call, so concurrent calls (threads,
        # recursion) never share one ``prev`` stack.
        return _GradMode(self.mode)


class set_grad_enabled(_GradMode):
    """Turn gradient recording on or off: as a function (``ember.set_grad_enabled(False)`` takes
    effect immediately, like PyTorch's), as a context manager, or as a decorator."""

    def __init__(self, mode: bool) -> None:
        super().__init__(mode)
        self._undo: bool | None = STATE.grad_enabled  # the function form applies right away
        STATE.grad_enabled = self.mode

    def __enter__(self) -> None:
        if self._undo is not None:  # ``with set_grad_enabled(m):`` -- restore the mode from before the call
            self.prev.append(self._undo)
            self._undo = None
            STATE.grad_enabled = self.mode
        else:
            super().__enter__()

    def __call__(self, fn: Callable) -> Callable:
        if self._undo is not None:  # used as a decorator: it must not change the mode at definition time
            STATE.grad_enabled = self._undo
            self._undo = None
        return super().__call__(fn)


class _NoArgMode(_GradMode):
    """``no_grad``/``enable_grad``: usable as ``with no_grad():``, ``@no_grad()`` or bare ``@no_grad``."""

    MODE = True

    def __new__(cls, fn: Callable | None = None) -> Any:
        self = super().__new__(cls)
        if fn is None:
            return self
        if not callable(fn):
            raise TypeError(f"{cls.__name__}() takes no arguments (or a function, when used as a decorator)")
        self.__init__()
        return self(fn)

    def __init__(self, fn: Callable | None = None) -> None:
        super().__init__(self.MODE)


class no_grad(_NoArgMode):
    """Disable gradient recording: ``with ember.no_grad(): ...`` or as a decorator."""

    MODE = False


class enable_grad(_NoArgMode):
    """Re-enable gradient recording inside a ``no_grad`` block."""

    MODE = True


# ----------------------------------------------------------------------------- tape node

class Node:
    """One recorded op application: what its ``vjp`` needs, and where gradients go.

    The node is also the ``ctx`` handed to ``Op.vjp``: ``ctx.inputs``, ``ctx.out``,
    ``ctx.attrs``. Saved tensors are checked against their version counters so a
    tensor modified in place after being saved raises instead of giving a wrong
    gradient. The output is saved as its array only (no reference to the output
    Tensor), so no reference cycle keeps activations alive.
    """

    __slots__ = (
        "__weakref__",
        "_in_versions",
        "_inputs",
        "_out_counter",
        "_out_data",
        "_out_version",
        "attrs",
        "edges",
        "in_meta",
        "op",
        "out_device",
        "out_dtype",
        "pre_hooks",
        "released",
        "seq",
    )

    def __init__(self, op: Any, inputs: Sequence[Tensor], attrs: dict, out: Tensor) -> None:
        self.op = op
        self.attrs = attrs
        self.seq = next(_seq)
        edges = []
        for t in inputs:
            if not t.requires_grad:
                edges.append(None)
            elif t.grad_fn is None:
                edges.append(t)          # a leaf: accumulate into t.grad
            else:
                edges.append(t.grad_fn)
        self.edges = edges
        self.in_meta = [(t.shape, t.dtype) for t in inputs]
        if op.save_inputs:
            self._inputs = tuple(inputs)
            self._in_versions = tuple(t._version[0] for t in inputs)
        else:
            self._inputs = None
            self._in_versions = None
        self.out_dtype = out.dtype
        self.out_device = out.device
        if op.save_output:
            self._out_data = out.data
            self._out_counter = out._version
            self._out_version = out._version[0]
        else:
            self._out_data = None
        self.pre_hooks: list[Callable] | None = None
        self.released = False

    @property
    def name(self) -> str:
        return self.op.name

    # -- what vjp rules read
    @property
    def inputs(self) -> tuple[Tensor, ...]:
        if self.released:
            raise _released_error(self)
        if self._inputs is None:
            raise AutogradError(f"{self.op.name}: vjp read ctx.inputs but the op does not save its inputs "
                                "(set save_inputs=True in its definition)")
        for i, (t, v) in enumerate(zip(self._inputs, self._in_versions)):
            if t._version[0] != v:
                raise AutogradError(
                    f"{self.op.name}: input {i} (shape {t.shape}, {t.dtype.name}) needed for the gradient "
                    f"was modified by an in-place operation after it was used (its version is "
                    f"{t._version[0]}, expected {v}); use an out-of-place op or .clone() it first")
        return self._inputs

    @property
    def out(self) -> Tensor:
        if self.released:
            raise _released_error(self)
        if self._out_data is None:
            raise AutogradError(f"{self.op.name}: vjp read ctx.out but the op does not save its output")
        if self._out_counter[0] != self._out_version:
            raise AutogradError(
                f"{self.op.name}: its output (shape {self._out_data.shape}) needed for the gradient was "
                f"modified by an in-place operation (version {self._out_counter[0]}, expected "
                f"{self._out_version}); use an out-of-place op or .clone() it first")
        from .tensor import _make
        return _make(self._out_data, self.out_dtype, self.out_device, True, self)

    @property
    def next_functions(self) -> tuple:
        return tuple(self.edges)

    def register_hook(self, fn: Callable) -> None:
        if self.pre_hooks is None:
            self.pre_hooks = []
        ref = getattr(fn, "_ember_retains", None)
        if ref is not None and any(getattr(h, "_ember_retains", None) is not None and h._ember_retains() is ref()
                                   for h in self.pre_hooks):
            return  # retain_grad() called twice on one tensor: keep a single retaining hook
        self.pre_hooks.append(fn)

    def _run_pre_hooks(self, g: Tensor) -> Tensor:
        # The tensor's own hooks first, in registration order; the hooks that fill ``.grad`` for
        # retain_grad() last, so a retained gradient is the one after every hook (as in PyTorch).
        retains = []
        for hook in self.pre_hooks:
            if getattr(hook, "_ember_retains", None) is not None:
                retains.append(hook)
                continue
            r = hook(g)
            if r is not None:
                g = r
        for hook in retains:
            hook(g)
        return g

    def release(self) -> None:
        self._inputs = None
        self._out_data = None
        self.released = True

    def __repr__(self) -> str:
        return f"<{self.op.name}Backward seq={self.seq}>"


def _released_error(node: Node) -> AutogradError:
    return AutogradError(
        f"{node.op.name}: trying to backward through the graph a second time (its saved tensors were "
        "freed after the first backward); pass retain_graph=True to the first backward() or grad() call")


# ----------------------------------------------------------------------------- broadcasting, in one place

def sum_to_shape(g: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Sum ``g`` over the axes that broadcasting expanded so it gets ``shape``."""
    if g.shape == shape:
        return g
    from .ops import movement as _mov
    from .ops import reduce as _red
    lead = g.ndim - len(shape)
    if lead < 0:
        raise ShapeError(f"autograd: gradient of shape {g.shape} cannot be reduced to shape {shape}")
    inner = tuple(lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1)
    if not lead:
        return _red.sum(g, dim=inner, keepdim=True)  # keeps the shape: no reshape between it and its reader
    # One reduction over all the axes (one fused kernel in compiled mode), e.g. a conv bias's (0, 2, 3).
    g = _red.sum(g, dim=tuple(range(lead)) + inner)
    return _mov.reshape(g, shape) if g.shape != shape else g


# ----------------------------------------------------------------------------- the backward engine

def _check_grad_output(t: Tensor, g: Tensor | None, fname: str) -> Tensor:
    from .ops import creation
    from .tensor import Tensor as _T
    if g is None:
        if t.numel() != 1:
            hint = ("out.backward(ember.ones_like(out))" if fname == "backward"
                    else "grad(out, x, grad_outputs=ember.ones_like(out))")
            raise AutogradError(
                f"{fname}: grad can be implicitly created only for scalar outputs, but the output has "
                f"shape {t.shape}; pass a gradient of that shape (e.g. {hint})")
        return creation.ones_like(t)
    if not isinstance(g, _T):
        g = creation.tensor(g, dtype=t.dtype, device=t.device)
    if g.shape != t.shape:
        raise ShapeError(f"{fname}: gradient has shape {g.shape} but the output has shape {t.shape}")
    return g


def _run(outputs: Sequence[Tensor], grad_outputs: Sequence[Tensor | None], retain_graph: bool,
         create_graph: bool, targets: Sequence[Tensor] | None, allow_unused: bool) -> list | None:
    """Shared engine of ``backward`` (targets None: accumulate into leaves) and ``grad``."""
    from .ops import pointwise as _pw
    from .tensor import Tensor as _T
    fname = "backward" if targets is None else "grad"
    roots = []
    for i, (t, g) in enumerate(zip(outputs, grad_outputs)):
        if not isinstance(t, _T):
            raise TypeError(f"{fname}: outputs[{i}] is {type(t).__name__}, expected a Tensor")
        if not t.requires_grad:
            if targets is not None and allow_unused:
                continue
            raise AutogradError(
                f"{fname}: output of shape {t.shape} does not require grad and has no grad_fn; did you "
                "compute it under no_grad(), or forget requires_grad=True on the inputs?")
        roots.append((t, _check_grad_output(t, g, fname)))

    # Targets for ember.grad: leaves are keyed by id(tensor), non-leaves by their node. The same
    # tensor may be asked for more than once.
    target_slot: dict[int, list[int]] = {}
    if targets is not None:
        for i, t in enumerate(targets):
            key = id(t) if t.grad_fn is None else id(t.grad_fn)
            target_slot.setdefault(key, []).append(i)
    results: list = [None] * (len(targets) if targets is not None else 0)

    # 1. discover the graph reachable from the roots (iterative DFS)
    objs: dict[int, Any] = {}
    children: dict[int, list[int]] = {}
    stack = []
    for t, _ in roots:
        obj = t if t.grad_fn is None else t.grad_fn
        if id(obj) not in objs:
            objs[id(obj)] = obj
            stack.append(obj)
    while stack:
        obj = stack.pop()
        kids = []
        if isinstance(obj, Node):
            if obj.released:
                raise _released_error(obj)
            for e in obj.edges:
                if e is None:
                    continue
                kids.append(id(e))
                if id(e) not in objs:
                    objs[id(e)] = e
                    stack.append(e)
        children[id(obj)] = kids

    # 2. with targets, keep only what leads to a target (post-order, iterative)
    if targets is not None:
        needed: dict[int, bool] = {}
        for start in list(objs):
            if start in needed:
                continue
            work = [(start, False)]
            while work:
                k, expanded = work.pop()
                if k in needed:
                    continue
                if not expanded:
                    work.append((k, True))
                    work.extend((c, False) for c in children[k] if c not in needed)
                else:
                    needed[k] = k in target_slot or any(needed.get(c, False) for c in children[k])
        live = {k for k, v in needed.items() if v}
    else:
        live = set(objs)

    deps: dict[int, int] = dict.fromkeys(live, 0)
    for k in live:
        for c in children[k]:
            if c in live:
                deps[c] += 1

    grads: dict[int, Tensor] = {}
    handed_out: set[int] = set()
    ready: list = []

    def add_grad(k: int, g: Tensor) -> None:
        prev = grads.get(k)
        grads[k] = g if prev is None else _pw.add(prev, g)

    def push(k: int) -> None:
        # Nodes run latest-created first; a leaf runs as soon as its gradient is complete, so its
        # post-accumulate hooks fire while the rest of the backward pass is still to come.
        obj = objs[k]
        heapq.heappush(ready, (-obj.seq if isinstance(obj, Node) else -_LEAF_FIRST, next(_seq), k))

    for t, g in roots:
        k = id(t if t.grad_fn is None else t.grad_fn)
        if k in live:
            add_grad(k, g)
            handed_out.add(id(g.data))
    for k in live:
        if deps[k] == 0:
            push(k)

    with set_grad_enabled(create_graph):
        while ready:
            _, _, k = heapq.heappop(ready)
            obj = objs[k]
            g = grads.pop(k, None)
            if isinstance(obj, Node):
                if g is not None and obj.pre_hooks:
                    g = obj._run_pre_hooks(g)
                    handed_out.add(id(g.data))  # a hook may keep it (retain_grad does)
                if k in target_slot:
                    for i in target_slot[k]:
                        results[i] = g
                in_grads = None
                if g is not None and any(c in live for c in children[k]):
                    in_grads = obj.op.vjp(obj, g)
                    if len(in_grads) != len(obj.edges):
                        raise AutogradError(f"{obj.op.name}: vjp returned {len(in_grads)} gradients for "
                                            f"{len(obj.edges)} inputs")
                if not retain_graph:
                    obj.release()
                for e, gi, (shape, dtype) in zip(obj.edges, in_grads or [None] * len(obj.edges), obj.in_meta):
                    if e is None or id(e) not in live:
                        continue
                    if gi is not None:
                        if gi.shape != shape:
                            gi = sum_to_shape(gi, shape)
                        if gi.dtype is not dtype:
                            gi = gi.to(dtype)
                        add_grad(id(e), gi)
                    deps[id(e)] -= 1
                    if deps[id(e)] == 0:
                        push(id(e))
            else:  # a leaf tensor
                if g is None:
                    continue
                if obj._hooks:
                    for hook in obj._hooks:
                        r = hook(g)
                        if r is not None:
                            g = r
                    handed_out.add(id(g.data))  # a hook may have kept it: never accumulate into it in place
                if targets is not None:
                    if k in target_slot:
                        for i in target_slot[k]:
                            results[i] = g
                    continue
                _accumulate(obj, g, create_graph, handed_out)
                if obj._post_hooks:
                    for hook in obj._post_hooks:
                        hook(obj)

    if targets is None:
        return None
    for i, (t, r) in enumerate(zip(targets, results)):
        if r is None and not allow_unused:
            raise AutogradError(
                f"grad: input {i} (shape {t.shape}) is not reachable from the outputs, so its gradient is "
                "undefined; pass allow_unused=True to get None for it")
    return results


def _accumulate(leaf: Tensor, g: Tensor, create_graph: bool, handed_out: set[int]) -> None:
    from .tensor import Tensor
    if leaf.grad is not None and not isinstance(leaf.grad, Tensor):  # a RowSparseGrad from a sparse lookup
        leaf.grad = leaf.grad + g
        return
    if STATE.tracer is not None and not create_graph:
        # Traced: the same values through ops, so the graph (not a copied array) holds the gradient; a
        # .grad that already exists is accumulated into in place, so replays can keep writing into it.
        STATE.tracer.note_grad(leaf)
        if leaf.grad is None:
            shared = (id(g.data) in handed_out or g.data.base is not None
                      or not getattr(g.data.flags, "writeable", True))
            leaf.grad = g.clone() if shared else g
            handed_out.add(id(leaf.grad.data))
        else:
            leaf.grad.add_(g)
        return
    if not create_graph:
        data = g.data
        xp = array_module(g.device)  # CuPy arrays have no flags.writeable and refuse np.*
        if (id(data) in handed_out or not getattr(data.flags, "writeable", True) or not data.flags.c_contiguous
                or data.base is not None):
            data = xp.array(data, copy=True, order="C")
        handed_out.add(id(data))
        if leaf.grad is None:
            from .tensor import _make
            leaf.grad = _make(data, g.dtype, g.device)
        else:
            xp.add(leaf.grad.data, data, out=leaf.grad.data)
            leaf.grad._version[0] += 1
    else:
        leaf.grad = g if leaf.grad is None else leaf.grad + g


def backward(tensors: Tensor | Sequence[Tensor], grad_tensors: Any = None,
             retain_graph: bool | None = None, create_graph: bool = False) -> None:
    """Accumulate d(tensors)/d(leaf) into ``leaf.grad`` for every leaf that requires grad."""
    from .tensor import Tensor as _T
    outs = [tensors] if isinstance(tensors, _T) else list(tensors)
    gouts = _as_list(grad_tensors, len(outs), single=isinstance(tensors, _T))
    _run(outs, gouts, create_graph if retain_graph is None else retain_graph, create_graph, None, False)


def grad(outputs: Tensor | Sequence[Tensor], inputs: Tensor | Sequence[Tensor], grad_outputs: Any = None,
         retain_graph: bool | None = None, create_graph: bool = False,
         allow_unused: bool = False) -> tuple[Tensor | None, ...]:
    """Gradients of ``outputs`` w.r.t. ``inputs`` (returned, not accumulated into ``.grad``).

    With ``create_graph=True`` the result is differentiable again (higher-order gradients).
    """
    from .tensor import Tensor as _T
    outs = [outputs] if isinstance(outputs, _T) else list(outputs)
    ins = [inputs] if isinstance(inputs, _T) else list(inputs)
    for i, t in enumerate(ins):
        if not isinstance(t, _T):
            raise TypeError(f"grad: inputs[{i}] is {type(t).__name__}, expected a Tensor")
        if not t.requires_grad:
            raise AutogradError(f"grad: inputs[{i}] (shape {t.shape}) does not require grad")
    gouts = _as_list(grad_outputs, len(outs), single=isinstance(outputs, _T))
    res = _run(outs, gouts, create_graph if retain_graph is None else retain_graph, create_graph, ins,
               allow_unused)
    return tuple(res)


def _as_list(x: Any, n: int, single: bool = False) -> list:
    """Gradients per output. With one output (``single``) a plain nested list of numbers is that
    output's gradient, not a list of gradients."""
    from .tensor import Tensor as _T
    if x is None:
        return [None] * n
    one_list = len(x) == 1 and (x[0] is None or isinstance(x[0], _T)) if isinstance(x, (list, tuple)) else False
    if isinstance(x, _T) or not isinstance(x, (list, tuple)) or (single and not one_list):
        x = [x]
    if len(x) != n:
        raise AutogradError(f"got {len(x)} grad_outputs for {n} outputs")
    return list(x)


# ----------------------------------------------------------------------------- hooks helpers

def _retain_grad_hook(t: Tensor) -> Callable:
    ref = weakref.ref(t)

    def hook(g: Tensor) -> None:
        target = ref()
        if target is not None:
            target.grad = g if target.grad is None else target.grad + g
    hook._ember_retains = ref  # type: ignore[attr-defined]  # Node.register_hook dedupes; runs last
    return hook


# ----------------------------------------------------------------------------- forward mode

@contextlib.contextmanager
def _forward_ad() -> Iterator[None]:
    prev = STATE.forward_ad
    STATE.forward_ad = True
    try:
        yield
    finally:
        STATE.forward_ad = prev


def jvp(fn: Callable, primals: Sequence[Tensor], tangents: Sequence[Tensor]) -> tuple[Any, Any]:
    """Forward-mode derivative: ``(fn(*primals), J(primals) @ tangents)`` like ``jax.jvp``.

    Supported for pointwise, reduction, movement and matmul ops; nesting is not.
    """
    from .ops import creation
    from .tensor import Tensor as _T
    from .tensor import _make
    if STATE.forward_ad:
        raise AutogradError("jvp: nested forward-mode jvp is not supported")
    primals, tangents = list(primals), list(tangents)
    if len(primals) != len(tangents):
        raise AutogradError(f"jvp: got {len(primals)} primals but {len(tangents)} tangents")
    duals = []
    for i, (p, t) in enumerate(zip(primals, tangents)):
        if not isinstance(p, _T) or not isinstance(t, _T):
            raise TypeError(f"jvp: primals[{i}] and tangents[{i}] must be Tensors")
        if p.shape != t.shape:
            raise ShapeError(f"jvp: primal {i} has shape {p.shape} but its tangent has shape {t.shape}")
        d = _make(p.data, p.dtype, p.device, p.requires_grad, p.grad_fn)
        d._version = p._version
        d._tangent = t.to(p.dtype)
        duals.append(d)
    with _forward_ad():
        out = fn(*duals)
    single = isinstance(out, _T)
    outs = [out] if single else list(out)
    touts = [o._tangent if o._tangent is not None else creation.zeros_like(o) for o in outs]
    for o in outs:
        o._tangent = None
    return (out, touts[0]) if single else (tuple(outs), tuple(touts))


# ----------------------------------------------------------------------------- gradcheck

def gradcheck(fn: Callable, inputs: Sequence[Tensor], eps: float = 1e-6, atol: float = 1e-5,
              rtol: float = 1e-3, raise_exception: bool = True, seed: int = 0) -> bool:
    """Compare ``fn``'s reverse-mode gradients with central finite differences in float64.

    Floating inputs that require grad are perturbed one element at a time; the
    output is reduced with a fixed random projection so every output element counts.
    Inputs on a GPU are perturbed there; the comparison is made on host copies.
    """
    from .dtypes import float64
    from .tensor import Tensor as _T
    from .tensor import _make
    ins = []
    for t in inputs:
        if isinstance(t, _T) and t.dtype.is_floating_point:
            c = _make(array_module(t.device).array(t.data, dtype=np.float64), float64, t.device)
            c.requires_grad = t.requires_grad
            ins.append(c)
        else:
            ins.append(t)
    diff_idx = [i for i, t in enumerate(ins) if isinstance(t, _T) and t.requires_grad]
    if not diff_idx:
        raise AutogradError("gradcheck: no input requires grad")

    def outputs_of(args: list) -> list:
        out = fn(*args)
        return [out] if isinstance(out, _T) else [o for o in out if isinstance(o, _T)]

    outs = outputs_of(ins)
    rng = np.random.default_rng(seed)
    projs = [rng.standard_normal(o.shape) for o in outs]

    def scalar(args: list) -> float:
        # Not under no_grad: ``fn`` may differentiate internally (checking a gradient of a gradient).
        return float(sum(float(np.sum(o._host().astype(np.float64) * p)) for o, p in zip(outputs_of(args), projs)))

    from .ops import creation
    gouts = [creation.tensor(p, dtype=o.dtype, device=o.device) for o, p in zip(outs, projs)]
    diff_outs = [(o, g) for o, g in zip(outs, gouts) if o.requires_grad]
    if diff_outs:
        analytic = grad([o for o, _ in diff_outs], [ins[i] for i in diff_idx], [g for _, g in diff_outs],
                        allow_unused=True)
    else:
        analytic = [None] * len(diff_idx)
    ok = True
    for i, a in zip(diff_idx, analytic):
        x = ins[i]
        num = np.zeros(x.shape)
        flat = x.data.reshape(-1)
        for j in range(flat.size):
            orig = flat[j]
            flat[j] = orig + eps
            fp = scalar(ins)
            flat[j] = orig - eps
            fm = scalar(ins)
            flat[j] = orig
            num.reshape(-1)[j] = (fp - fm) / (2 * eps)
        ana = np.zeros(x.shape) if a is None else a._host().astype(np.float64)
        if not np.allclose(ana, num, atol=atol, rtol=rtol):
            ok = False
            if raise_exception:
                err = np.max(np.abs(ana - num))
                raise AutogradError(f"gradcheck: gradient of input {i} (shape {x.shape}) differs from finite "
                                    f"differences by up to {err:.3g}\nanalytic:\n{ana}\nnumeric:\n{num}")
    return ok
