"""The op registry and the one dispatch point every tensor operation goes through.

An ``Op`` is a small record (JAX-style side tables, per DESIGN.md):

* ``infer(*inputs, **attrs) -> (shape, dtype)``: validates and raises ShapeError/DTypeError;
* ``impl(xp, *arrays, **attrs) -> array``: the reference kernel against NumPy/CuPy;
* ``vjp(ctx, g) -> tuple``: input gradients written in Ember ops (None where undefined);
* ``jvp(ctx, *tangents)``: optional; derived for ``elementwise`` and ``linear`` ops;
* ``c_expr``: a scalar C expression for pointwise ops (read by the fusing code generator).

``apply`` is the only place where eager execution (run the kernel now, record a
tape node) and tracing (add a graph node) diverge.

``composite`` marks plain functions over primitives (softmax, layer_norm, cross_entropy, ...). Called
eagerly on large enough CPU tensors, a composite runs compiled: fused C kernels built once per shape
signature and cached, gradients from a compiled backward (``ember.ops.compiled_composite``). Set
``EMBER_EAGER_FUSION=0`` to run composites op by op.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from ..autograd import STATE, Node
from ..device import CPU
from ..dtypes import FLOATING
from ..errors import DeviceError
from ..tensor import _make

_DEBUG = bool(os.environ.get("EMBER_DEBUG"))
REGISTRY: dict[str, Op] = {}
COMPOSITES: dict[str, Callable] = {}
# Set by ember.graph.symbolic when the first placeholder is made: its builder's ``dispatch(op, inputs, attrs)``
# adds a graph node when an input is symbolic (NotImplemented otherwise) and ``call(fn, args, kwargs)`` runs a
# composite under the builder when an argument is symbolic.
SYMBOLIC: list[Any] = [None]
# Set by ember.amp while an autocast region is open in some thread: ``apply(op, inputs, attrs)`` and
# ``call(fn, run, args, kwargs)`` return the autocast result, or NotImplemented to dispatch as usual.
AUTOCAST: Any = None


class Op:
    """A primitive operation. Every field is read by more than one consumer."""

    def __init__(self, name: str, *, infer: Callable, impl: Callable, vjp: Callable | None = None,
                 jvp: Callable | None = None, c_expr: str | None = None, save_inputs: bool = True,
                 save_output: bool = False, elementwise: bool = False, linear: bool = False,
                 diff_args: tuple[int, ...] | None = None, view: bool = False) -> None:
        if name in REGISTRY:
            raise ValueError(f"op {name!r} is defined twice")
        self.name = name
        self.infer = infer
        self.impl = impl
        self.vjp = vjp
        self._jvp = jvp
        self.c_expr = c_expr
        self.save_inputs = save_inputs
        self.save_output = save_output
        self.elementwise = elementwise  # diagonal Jacobian per input (after broadcasting)
        self.linear = linear            # jointly linear in the differentiable inputs
        self.diff_args = diff_args      # which inputs can carry gradient (None: all)
        self.view = view                # output may alias input 0's memory (shares its version counter)
        self.ufunc: str | None = None   # the NumPy ufunc that is the whole kernel (compiled mode writes out=)
        REGISTRY[name] = self

    @property
    def differentiable(self) -> bool:
        return self.vjp is not None

    def __repr__(self) -> str:
        return f"Op({self.name})"

    def jvp(self, ctx: Any, tangents: list) -> Any:
        """Tangent of the output given input tangents (None where an input has none)."""
        if self._jvp is not None:
            return self._jvp(ctx, *tangents)
        from . import creation
        if self.linear:
            args = list(ctx.inputs)
            for i, (x, t) in enumerate(zip(args, tangents)):
                if self.diff_args is None or i in self.diff_args:
                    args[i] = t if t is not None else creation.zeros_like(x)
            return apply(self, *args, **ctx.attrs)
        if self.elementwise:
            from .movement import expand
            total = None
            out_shape = ctx.out.shape
            for i, t in enumerate(tangents):
                if t is None:
                    continue
                t = expand(t, out_shape) if t.shape != out_shape else t
                g = self.vjp(ctx, t)[i]
                total = g if total is None else total + g
            return total
        raise NotImplementedError(f"{self.name}: forward-mode (jvp) is not defined for this op")


class _JvpCtx:
    """What a jvp rule sees: the primal inputs, output and attrs (no version checks needed)."""

    __slots__ = ("attrs", "inputs", "out")

    def __init__(self, inputs: tuple, out: Any, attrs: dict) -> None:
        self.inputs, self.out, self.attrs = inputs, out, attrs


def apply(op: Op, *inputs: Any, **attrs: Any) -> Any:
    """Run ``op`` on tensors: eagerly (kernel + tape), or add it to the graph being traced."""
    if AUTOCAST is not None:
        out = AUTOCAST.apply(op, inputs, attrs)
        if out is not NotImplemented:
            return out
    state = STATE
    if state.tracer is not None:
        return state.tracer.apply(op, inputs, attrs)
    if SYMBOLIC[0] is not None:
        out = SYMBOLIC[0].dispatch(op, inputs, attrs)
        if out is not NotImplemented:
            return out
    shape, dtype = op.infer(*inputs, **attrs)
    if len(inputs) == 1:
        x0 = inputs[0]
        device = x0.device
        data = op.impl(np if device is CPU else _xp(device), x0.data, **attrs)
    elif inputs:
        device = inputs[0].device
        for t in inputs:
            if t.device is not device and t.device != device:
                raise DeviceError(f"{op.name}: tensors are on different devices: "
                                  f"{', '.join(str(t.device) for t in inputs)}; move them to one device first")
        data = op.impl(np if device is CPU else _xp(device), *[t.data for t in inputs], **attrs)
    else:
        device = attrs["device"]
        data = op.impl(np if device is CPU else _xp(device), **attrs)
    if type(data) is not np.ndarray and not hasattr(data, "__array_namespace__"):
        data = np.asarray(data) if device.type == "cpu" else _xp(device).asarray(data)
    if data.dtype is not dtype.np and data.dtype != dtype.np:
        data = data.astype(dtype.np)
    if _DEBUG and data.shape != shape:
        raise AssertionError(f"{op.name}: kernel produced shape {data.shape}, infer said {shape}")
    out = _make(data, dtype, device)
    if op.view and inputs and _may_alias(data, inputs[0].data):
        out._version = inputs[0]._version
        out._base = inputs[0]._base if inputs[0]._base is not None else inputs[0]
    if dtype.category == FLOATING and op.vjp is not None:
        if state.grad_enabled:
            for t in inputs:
                if t.requires_grad:
                    out.requires_grad = True
                    out.grad_fn = Node(op, inputs, attrs, out)
                    break
        if state.forward_ad:
            _forward(op, inputs, attrs, out)
    return out


def _may_alias(a: Any, b: Any) -> bool:
    """Whether a view op's result really shares memory (reshape of a non-contiguous array copies)."""
    return a.base is not None and np.may_share_memory(a, b) if type(a) is np.ndarray else True


def _forward(op: Op, inputs: tuple, attrs: dict, out: Any) -> None:
    tangents = [t._tangent for t in inputs]
    if all(t is None for t in tangents):
        return
    STATE.forward_ad = False
    try:
        tan = op.jvp(_JvpCtx(inputs, out, attrs), tangents)
    finally:
        STATE.forward_ad = True
    if tan is not None:
        out._tangent = tan.detach()


_XP: dict[Any, Any] = {}


def _xp(device: Any) -> Any:
    xp = _XP.get(device)
    if xp is None:
        from ..device import array_module
        xp = _XP[device] = array_module(device)
    return xp


_OFF = ("0", "false", "off", "no")
_COMPILED: list[Any] = [None]  # ember.ops.compiled_composite, imported on the first eager composite call


def eager_fusion_enabled() -> bool:
    """Whether eager composite calls may run compiled (``EMBER_EAGER_FUSION=0`` turns it off)."""
    return os.environ.get("EMBER_EAGER_FUSION", "1").strip().lower() not in _OFF


def composite(fn: Callable) -> Callable:
    """Mark ``fn`` as a composite: a plain function over primitives whose gradient comes from theirs.

    Called eagerly (no ``ember.jit`` trace, no symbolic graph, no forward-mode AD) on CPU tensors the
    largest of which has at least ``ember.ops.compiled_composite.MIN_ELEMENTS`` elements, with hashable
    other arguments, it runs compiled: traced and fused into C kernels once per shape signature, cached,
    with a compiled backward (see ``ember.ops.compiled_composite``). ``EMBER_EAGER_FUSION=0`` (or
    ``EMBER_FUSION=0``, or no C compiler) runs it op by op instead.
    """
    COMPOSITES[f"{fn.__module__}.{fn.__qualname__}"] = fn

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        if AUTOCAST is not None:
            out = AUTOCAST.call(fn, run, args, kwargs)
            if out is not NotImplemented:
                return out
        state = STATE
        if state.tracer is None:
            if not state.forward_ad and eager_fusion_enabled():
                mod = _COMPILED[0]
                if mod is None:
                    from . import compiled_composite as mod
                    _COMPILED[0] = mod
                out = mod.call(fn, run, args, kwargs)
                if out is not NotImplemented:
                    return out
            sym = SYMBOLIC[0]
            if sym is not None:
                return sym.call(fn, args, kwargs)
        return fn(*args, **kwargs)
    run.__ember_composite__ = True  # type: ignore[attr-defined]
    return run


def composite_cache_info() -> dict[str, Any]:
    """What eager composite compilation did so far (traces, cache hits, plain calls; see ``composite``)."""
    from . import compiled_composite
    return compiled_composite.cache_info()


def composite_cache_clear() -> None:
    """Forget every compiled composite signature and reset the counters."""
    from . import compiled_composite
    compiled_composite.cache_clear()
