"""A tiny kernel IR: what one fused kernel computes, independent of the language it is rendered in.

A ``Kernel`` has

* named **inputs** (``arg``): dtype, shape and strides in *elements*. An input's shape broadcasts
  against the kernel's iteration shape (NumPy rules) and its strides may be anything (0 for a
  broadcast dimension, negative for a flipped view, large for a transposed or stepped slice): every
  layout is index arithmetic in the generated loop, never a copy;
* a **body**: a DAG of ``Value`` nodes built with ``op`` (any pointwise op of the registry that has a
  ``c_expr``, by its registry name: ``add``, ``exp``, ``where``, ``cast``, ``gt``, ...), ``const``
  and ``reduce``. Every value lives in the iteration space; a ``reduce`` value (``sum``, ``amax``,
  ``amin`` over some axes) is constant along the reduced axes, i.e. it reads as the ``keepdim``
  result broadcast back, so a pointwise epilogue after it is just more ops (softmax =
  ``e / reduce("sum", e)``). A reduction may feed another one (layer_norm: mean, then the
  variance of ``x - mean``): they run as successive passes over the reduced axes, in one kernel;
* one or more **outputs**, contiguous: full-shape (the iteration shape), or ``reduced`` (the
  kernel's reduced shape, ``keepdim`` or not) for values constant along the reduced axes.

All reductions of one kernel share one set of axes. Dtype rules come from the registry's ``infer``
(operands of a binary op must already share a dtype, as in the graph); Python numbers in operator
expressions (``x * 0.5``) become constants of the other operand's dtype.

Example (softmax over the last axis of a (4, 10) float32 input)::

    x = arg("x", float32, (4, 10))
    e = op("exp", x - reduce("amax", x, axes=-1))
    k = Kernel("softmax", [x], [Output("y", e / reduce("sum", e, axes=-1))])
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import dtypes as _dt
from ..errors import DTypeError, EmberError, ShapeError

__all__ = ["CodegenError", "Input", "Kernel", "Output", "Value", "arg", "arg_like", "cast", "const", "op", "reduce",
           "where"]


class CodegenError(EmberError, RuntimeError):
    """A kernel cannot be built, rendered or compiled (the message says which and why)."""


SUPPORTED_DTYPES = (_dt.bool_, _dt.uint8, _dt.int8, _dt.int32, _dt.int64, _dt.float32, _dt.float64)
_INTEGRAL_OPS = {"bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not"}  # their public functions reject floats
_NO_BOOL_OPS = {"neg", "sub", "sign"}  # NumPy raises for these on bool
REDUCTIONS = {"sum": "sum", "amax": "max", "max": "max", "amin": "min", "min": "min"}


def _check_dtype(dtype: Any, what: str) -> _dt.DType:
    d = _dt.to_dtype(dtype)
    if d not in SUPPORTED_DTYPES:
        raise DTypeError(f"codegen: {what} has dtype {d.name}, which generated kernels do not support; "
                         f"expected one of {', '.join(x.name for x in SUPPORTED_DTYPES)}")
    return d


def contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    """C-order strides, in elements, of ``shape``."""
    out, acc = [], 1
    for n in reversed(shape):
        out.append(acc)
        acc *= max(int(n), 1)
    return tuple(reversed(out))


class Input:
    """A kernel argument read by the body: name, dtype, shape and strides in elements."""

    __slots__ = ("dtype", "name", "shape", "strides")

    def __init__(self, name: str, dtype: Any, shape: Sequence[int], strides: Sequence[int] | None = None) -> None:
        self.name = str(name)
        self.dtype = _check_dtype(dtype, f"input {name!r}")
        self.shape = tuple(int(n) for n in shape)
        if any(n < 0 for n in self.shape):
            raise ShapeError(f"codegen: input {name!r} has a negative dimension in shape {self.shape}")
        self.strides = contiguous_strides(self.shape) if strides is None else tuple(int(s) for s in strides)
        if len(self.strides) != len(self.shape):
            raise ShapeError(f"codegen: input {name!r} has shape {self.shape} but strides {self.strides} "
                             "(one stride per dimension expected)")

    @classmethod
    def like(cls, name: str, array: Any) -> Input:
        """The Input describing a NumPy array (its dtype, shape and byte strides converted to elements)."""
        itemsize = array.dtype.itemsize
        if any(s % itemsize for s in array.strides):
            raise ShapeError(f"codegen: array {name!r} has strides {array.strides} that are not multiples of "
                             f"its item size {itemsize}")
        return cls(name, _dt.from_numpy_dtype(array.dtype), array.shape, [s // itemsize for s in array.strides])

    def __repr__(self) -> str:
        return f"Input({self.name!r}, {self.dtype.name}, shape={self.shape}, strides={self.strides})"


class Value:
    """A node of a kernel body. ``kind`` is ``"load"``, ``"const"``, ``"reduce"`` or ``"op"``."""

    __slots__ = ("args", "attrs", "dtype", "kind", "name")

    def __init__(self, kind: str, name: str, args: tuple, dtype: _dt.DType, attrs: dict | None = None) -> None:
        self.kind = kind
        self.name = name      # registry op name ("exp"), reduction kind ("sum"), or the input name
        self.args = args
        self.dtype = dtype
        self.attrs = attrs or {}

    def __repr__(self) -> str:
        return f"Value({self.kind}:{self.name}, {self.dtype.name})"

    # Arithmetic sugar (Python numbers become weak constants); comparisons stay explicit: op("gt", a, b).
    def __add__(self, o: Any) -> Value:
        return op("add", self, o)

    def __radd__(self, o: Any) -> Value:
        return op("add", o, self)

    def __sub__(self, o: Any) -> Value:
        return op("sub", self, o)

    def __rsub__(self, o: Any) -> Value:
        return op("sub", o, self)

    def __mul__(self, o: Any) -> Value:
        return op("mul", self, o)

    def __rmul__(self, o: Any) -> Value:
        return op("mul", o, self)

    def __truediv__(self, o: Any) -> Value:
        return op("div", self, o)

    def __rtruediv__(self, o: Any) -> Value:
        return op("div", o, self)

    def __neg__(self) -> Value:
        return op("neg", self)


def arg(name: str | Input, dtype: Any = None, shape: Sequence[int] = (), strides: Sequence[int] | None = None) -> Value:
    """A kernel input as a value of the body: ``arg(Input)``, or ``arg(name, dtype, shape, strides)`` with strides
    in elements (C-contiguous by default)."""
    inp = name if isinstance(name, Input) else Input(name, dtype, shape, strides)
    return Value("load", inp.name, (), inp.dtype, {"input": inp})


def arg_like(name: str, array: Any) -> Value:
    """A kernel input with the dtype, shape and strides of the NumPy array ``array``."""
    return arg(Input.like(name, array))


def const(value: Any, dtype: Any) -> Value:
    """A scalar constant of ``dtype`` (bool, int or float; inf and nan allowed for floats)."""
    d = _check_dtype(dtype, "a constant")
    with np.errstate(all="ignore"):
        v = np.asarray(value).astype(d.np).item()
    return Value("const", "const", (), d, {"value": v})


class _Spec:
    """What a registry ``infer`` reads from a tensor: dtype and shape (scalar shapes: values broadcast)."""

    __slots__ = ("data", "dtype", "shape")

    def __init__(self, dtype: _dt.DType) -> None:
        self.dtype = dtype
        self.shape = ()
        self.data = self


def _registry() -> dict:
    from ..ops.registry import REGISTRY
    return REGISTRY


def _coerce(args: tuple, skip: int = 0) -> tuple[Value, ...]:
    """Python numbers become constants of the dtype of the first Value operand after ``skip`` (weak scalars)."""
    ref = next((a for a in args[skip:] if isinstance(a, Value)), None)
    if ref is None:
        raise CodegenError("codegen: an op needs at least one Value operand")
    out = []
    for a in args:
        if isinstance(a, Value):
            out.append(a)
        elif isinstance(a, (bool, int, float, np.number, np.bool_)):
            out.append(const(a, ref.dtype))
        else:
            raise TypeError(f"codegen: unsupported operand of type {type(a).__name__}; expected a Value or a number")
    return tuple(out)


def op(name: str, *args: Any, **attrs: Any) -> Value:
    """Apply the registry's pointwise op ``name`` (it must have a ``c_expr``); dtype from its ``infer``."""
    reg = _registry().get(name)
    if reg is None or reg.c_expr is None:
        known = sorted(n for n, o in _registry().items() if o.c_expr is not None)
        raise CodegenError(f"codegen: {name!r} is not a pointwise op with a C expression; expected one of "
                           f"{', '.join(known)} (reductions go through reduce())")
    vals = _coerce(args, skip=1 if name == "where" else 0)  # where's numbers take the other branch's dtype
    if _arity(reg.c_expr) != len(vals):
        raise CodegenError(f"codegen: {name} takes {_arity(reg.c_expr)} operand(s), got {len(vals)}")
    if name == "where" and vals[0].dtype is not _dt.bool_:
        raise DTypeError(f"where: condition must be bool, got {vals[0].dtype.name}")
    if name in _INTEGRAL_OPS and any(v.dtype.is_floating_point for v in vals):
        raise DTypeError(f"{name}: expected integer or bool operands, got {', '.join(v.dtype.name for v in vals)}")
    if name in _NO_BOOL_OPS and any(v.dtype is _dt.bool_ for v in vals):
        raise DTypeError(f"{name}: not defined for bool values (as in NumPy); use the logical ops")
    if name == "div" and not all(v.dtype.is_floating_point for v in vals):
        raise DTypeError(f"div: expected floating operands, got {', '.join(v.dtype.name for v in vals)} (ember.div "
                         "casts integers to floats first; use floor_divide for integer division)")
    if name == "cast":
        attrs["dtype"] = _check_dtype(attrs.get("dtype"), "cast target")
    _, dtype = reg.infer(*[_Spec(v.dtype) for v in vals], **attrs)
    return Value("op", name, vals, _check_dtype(dtype, f"the result of {name}"), attrs)


def _arity(template: str) -> int:
    return max((i + 1 for i in range(4) if "{" + str(i) + "}" in template), default=0)


def cast(x: Value, dtype: Any) -> Value:
    """``x`` converted to ``dtype`` (to bool: nonzero is True)."""
    d = _check_dtype(dtype, "cast target")
    return x if x.dtype is d else op("cast", x, dtype=d)


def where(cond: Value, a: Any, b: Any) -> Value:
    """``a if cond else b``; numbers take the dtype of the other branch."""
    if not isinstance(a, Value) and not isinstance(b, Value):
        raise TypeError("codegen: where needs at least one Value branch")
    return op("where", cond, a, b)


def reduce(kind: str, x: Value, axes: int | Sequence[int] = -1, dtype: Any = None) -> Value:
    """``sum``/``amax``/``amin`` of ``x`` over ``axes`` (of the kernel's iteration shape; negative allowed),
    as a value broadcast back over those axes. Sums of bool give int64; floats accumulate in double."""
    if kind not in REDUCTIONS:
        raise CodegenError(f"codegen: unknown reduction {kind!r}; expected one of {', '.join(REDUCTIONS)}")
    if not isinstance(x, Value):
        raise TypeError(f"codegen: reduce expects a Value, got {type(x).__name__}")
    ax = (axes,) if isinstance(axes, int) else tuple(int(a) for a in axes)
    if not ax:
        raise CodegenError("codegen: reduce needs at least one axis")
    if dtype is None:
        dtype = _dt.int64 if (x.dtype is _dt.bool_ and REDUCTIONS[kind] == "sum") else x.dtype
    return Value("reduce", REDUCTIONS[kind], (x,), _check_dtype(dtype, f"the {kind} reduction"), {"axes": ax})


class Output:
    """A kernel result: its name, value, dtype (converted on store) and whether it has the reduced shape."""

    __slots__ = ("dtype", "keepdim", "name", "reduced", "shape", "value")

    def __init__(self, name: str, value: Value, dtype: Any = None, reduced: bool = False,
                 keepdim: bool = True) -> None:
        if not isinstance(value, Value):
            raise TypeError(f"codegen: output {name!r} must be a Value, got {type(value).__name__}")
        self.name = str(name)
        self.value = value
        self.dtype = value.dtype if dtype is None else _check_dtype(dtype, f"output {name!r}")
        self.reduced = bool(reduced)
        self.keepdim = bool(keepdim)
        self.shape: tuple[int, ...] = ()  # set by the Kernel

    def __repr__(self) -> str:
        return f"Output({self.name!r}, {self.dtype.name}, shape={self.shape}{', reduced' if self.reduced else ''})"


def _toposort(roots: Sequence[Value]) -> list[Value]:
    """Values reachable from ``roots``, each after its arguments (iterative)."""
    order: list[Value] = []
    seen: set[int] = set()
    for root in roots:
        stack: list[tuple[Value, int]] = [(root, 0)]
        while stack:
            v, i = stack.pop()
            if id(v) in seen:
                continue
            if i < len(v.args):
                stack.append((v, i + 1))
                if id(v.args[i]) not in seen:
                    stack.append((v.args[i], 0))
            else:
                seen.add(id(v))
                order.append(v)
    return order


class Kernel:
    """A validated fused kernel; see the module docstring. Raises ShapeError/DTypeError/CodegenError."""

    def __init__(self, name: str, inputs: Sequence[Value | Input], outputs: Sequence[Output],
                 shape: Sequence[int] | None = None, noalias: bool = True) -> None:
        if not name or not all(c.isalnum() or c == "_" for c in name):
            raise CodegenError(f"codegen: kernel name {name!r} must be a non-empty identifier (letters, digits, _)")
        self.name = name
        self.noalias = noalias  # outputs never overlap inputs (lets the C dialect use restrict)
        self.inputs: list[Input] = [v.attrs["input"] if isinstance(v, Value) else v for v in inputs]
        if not all(isinstance(i, Input) for i in self.inputs):
            raise TypeError("codegen: kernel inputs must be values made by arg() or Input objects")
        # Copies: the shapes set below belong to this kernel (an Output may be reused elsewhere).
        self.outputs = [Output(o.name, o.value, o.dtype, o.reduced, o.keepdim) for o in outputs]
        if not self.outputs:
            raise CodegenError(f"codegen: kernel {name!r} has no outputs")
        names = [i.name for i in self.inputs] + [o.name for o in self.outputs]
        if len(set(names)) != len(names):
            raise CodegenError(f"codegen: kernel {name!r} has duplicate argument names: {names}")
        self.nodes = _toposort([o.value for o in self.outputs])
        self.index = {id(v): i for i, v in enumerate(self.nodes)}
        input_ids = {id(i): k for k, i in enumerate(self.inputs)}
        for v in self.nodes:
            if v.kind == "load" and id(v.attrs["input"]) not in input_ids:
                raise CodegenError(f"codegen: kernel {name!r} reads {v.attrs['input'].name!r}, which is not among "
                                   f"its inputs ({', '.join(i.name for i in self.inputs) or 'none'})")
        self.input_slot = {id(v): input_ids[id(v.attrs["input"])] for v in self.nodes if v.kind == "load"}

        from ..ops._shape import broadcast_shapes
        in_shape = broadcast_shapes(f"kernel {name}", *[i.shape for i in self.inputs]) if self.inputs else ()
        self.shape = tuple(int(n) for n in shape) if shape is not None else in_shape
        nd = len(self.shape)
        self.in_strides: list[tuple[int, ...]] = []
        for i in self.inputs:
            if len(i.shape) > nd or any(a != 1 and a != b for a, b in zip(i.shape[::-1], self.shape[::-1])):
                raise ShapeError(f"codegen: kernel {name!r}: input {i.name!r} of shape {i.shape} does not broadcast "
                                 f"to the iteration shape {self.shape}")
            pad = nd - len(i.shape)
            self.in_strides.append(tuple(0 if d < pad or i.shape[d - pad] == 1 else i.strides[d - pad]
                                         for d in range(nd)))
        # Reductions: one axis set per kernel; stage = nesting depth of reductions.
        self.reductions = [v for v in self.nodes if v.kind == "reduce"]
        axes_sets = set()
        for r in self.reductions:
            norm = []
            for a in r.attrs["axes"]:
                if not -nd <= a < nd:
                    raise ShapeError(f"codegen: kernel {name!r}: reduction axis {a} is out of range for the "
                                     f"iteration shape {self.shape}")
                norm.append(a % nd)
            if len(set(norm)) != len(norm):
                raise ShapeError(f"codegen: kernel {name!r}: repeated reduction axis in {r.attrs['axes']}")
            axes_sets.add(tuple(sorted(norm)))
            if r.name != "sum" and any(self.shape[a] == 0 for a in norm):
                raise ShapeError(f"codegen: kernel {name!r}: cannot take the {r.name} over an empty dimension "
                                 f"(shape {self.shape}, axes {tuple(norm)})")
        if len(axes_sets) > 1:
            raise CodegenError(f"codegen: kernel {name!r} reduces over different axis sets {sorted(axes_sets)}; "
                               "split it into one kernel per axis set")
        self.reduce_axes: tuple[int, ...] = axes_sets.pop() if axes_sets else ()
        red = set(self.reduce_axes)
        self.stage: dict[int, int] = {}
        self.outer: dict[int, bool] = {}  # invariant along the reduced axes
        for v in self.nodes:
            if v.kind == "load":
                st = self.in_strides[self.input_slot[id(v)]]
                self.outer[id(v)] = all(st[a] == 0 for a in red)
                self.stage[id(v)] = 0
            elif v.kind == "const":
                self.outer[id(v)], self.stage[id(v)] = True, 0
            elif v.kind == "reduce":
                self.outer[id(v)], self.stage[id(v)] = True, self.stage[id(v.args[0])] + 1
            else:
                self.outer[id(v)] = all(self.outer[id(a)] for a in v.args)
                self.stage[id(v)] = max(self.stage[id(a)] for a in v.args)
        self.n_stages = max((self.stage[id(r)] for r in self.reductions), default=0)
        kept_shape = tuple(n for d, n in enumerate(self.shape) if d not in red)
        for o in self.outputs:
            if o.reduced:
                if not self.reductions:
                    raise CodegenError(f"codegen: kernel {name!r}: output {o.name!r} is reduced but the kernel has "
                                       "no reduction")
                if not self.outer[id(o.value)]:
                    raise CodegenError(f"codegen: kernel {name!r}: output {o.name!r} is declared reduced but its "
                                       f"value varies along the reduced axes {self.reduce_axes}")
                o.shape = (tuple(1 if d in red else n for d, n in enumerate(self.shape)) if o.keepdim
                           else kept_shape)
            else:
                o.shape = self.shape

    @property
    def full_outputs(self) -> list[Output]:
        return [o for o in self.outputs if not o.reduced]

    def describe(self) -> str:
        """A canonical text form of the kernel (structure, dtypes, shapes, strides), also its hash input."""
        lines = [f"kernel {self.name} shape={self.shape} reduce={self.reduce_axes} noalias={self.noalias}"]
        for i, (inp, st) in enumerate(zip(self.inputs, self.in_strides)):
            lines.append(f"  in{i} {inp.name}: {inp.dtype.name}{list(inp.shape)} strides={list(inp.strides)} "
                         f"-> {list(st)}")
        for k, v in enumerate(self.nodes):
            args = ", ".join(f"%{self.index[id(a)]}" for a in v.args)
            if v.kind == "load":
                what = f"load in{self.input_slot[id(v)]}"
            elif v.kind == "const":
                what = f"const {v.attrs['value']!r}"
            elif v.kind == "reduce":
                what = f"reduce.{v.name}({args}) stage {self.stage[id(v)]}"
            else:
                extra = "".join(f" {k}={getattr(a, 'name', a)}" for k, a in sorted(v.attrs.items()))
                what = f"{v.name}({args}){extra}"
            lines.append(f"  %{k} = {what} : {v.dtype.name}{' outer' if self.reductions and self.outer[id(v)] else ''}")
        for o in self.outputs:
            lines.append(f"  out {o.name}: {o.dtype.name}{list(o.shape)} = %{self.index[id(o.value)]}"
                         f"{' reduced' if o.reduced else ''}")
        return "\n".join(lines)

    def key(self) -> str:
        """A structural hash of the kernel (name included)."""
        return hashlib.sha256(self.describe().encode()).hexdigest()[:24]

    def __repr__(self) -> str:
        return (f"Kernel({self.name!r}, shape={self.shape}, inputs={[i.name for i in self.inputs]}, "
                f"outputs={[o.name for o in self.outputs]}, reduce_axes={self.reduce_axes})")
