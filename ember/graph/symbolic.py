"""The symbolic API: build graphs from placeholders, without tracing, in the same IR.

    x = ember.placeholder((None, 784), "float32", name="x")      # None: the symbolic size "batch"
    y = ember.placeholder((None,), "int64", name="y")
    loss = F.cross_entropy(ember.relu(x @ w + b) @ w2, y)         # ops on placeholders add graph nodes
    gw, gb = ember.graph.grad(loss, [w, b])                       # gradient nodes in the same graph
    f = ember.graph.compile([loss, gw, gb], [x, y])
    loss_value, gw_value, gb_value = f(x=xs, y=ys)                # or f(xs, ys); returns Tensors

**Symbolic tensors.** A placeholder, and every result of an op on one, is a ``Symbol``: an ember
``Tensor`` whose ``data`` is a zero-memory ``SymbolicArray`` (a broadcast view of one zero, of the right
shape and dtype) that carries its build-time node. Every existing op wrapper, its ``op.infer``, broadcasting,
promotion and the composites (softmax, cross_entropy, layer_norm, ...) therefore work on symbols unchanged.
No kernel runs on a symbol: while a graph is built the ``GraphBuilder`` is ``STATE.tracer``, and its
``apply`` adds a node instead. A ``SymbolicArray`` refuses to be computed with (ufuncs, NumPy functions,
``item``, ``bool``), so a computation that would run eagerly on a symbol (NumPy code reaching ``.data``)
raises ``TraceError`` instead of returning numbers computed from zeros. Reading a symbol's
value (``.item()``, ``.numpy()``, ``bool(x)``) raises ``TraceError``.

**When a graph is built.** Ops route to the builder inside ``with ember.graph.building():``, inside
``grad`` (the vjp rules), and, through the hook in ``ember.ops.registry`` (``SYMBOLIC``), for any op or
composite called with a symbolic argument. There an op becomes a node when an input or an attribute is
symbolic (``ember.rand(x.shape)`` in dropout), and also when it has concrete inputs and gradients are
enabled: ``weight.t()`` inside a layer's forward is a node reading the live ``weight``, so gradients reach
the parameter and in-place updates of it are seen by every call (as in TF1's graph mode). Ops under
``no_grad`` (parameter initialization) and ops without inputs (``ember.randn(3)``) run eagerly, so modules
can be created inside ``building()``. Outside those scopes (top level), an op whose inputs
are all concrete runs eagerly as usual: run a module's forward inside ``building()`` (layers that are
composites, like ``F.linear``, do that by themselves). Inside ``building()`` every value read raises
``TraceError`` (as inside ``ember.jit``).

**Concrete tensors in a graph** are recorded per tensor object (weakly; a ``detach()``ed copy is its own
node, so gradients stop there) and resolved when ``compile`` runs: a tensor that is still referenced then
(a parameter, a buffer, anything the user holds), or whose array another referenced tensor wraps, becomes
a ``live`` node, read by reference on every call, so in-place updates between calls are seen; one that
has been dropped (a Python number turned into a tensor by an op wrapper, ``zeros_like`` inside a
composite, an eager intermediate) becomes a ``const`` node that constant folding and algebraic
simplification can use. ``variable(t)`` makes ``t`` live whatever happens to other references.

**Symbolic sizes.** A ``None`` dimension is the symbolic size ``"batch"`` (every ``None``, in every
placeholder, is that one size: ``x`` of shape ``(None, 784)`` and labels of shape ``(None,)`` agree); a
string names another symbolic size (``(None, "time", 512)``). Each name gets a distinct sentinel prime
(10067, 10223, ...) that stands for it at build time, so every shape computation works on plain ints.
``compile`` specializes per concrete signature: on the first call with new sizes it rebuilds the graph
with the real sizes (attributes and constants re-evaluated, shapes re-inferred by ``op.infer`` through
``Graph.make``), optimizes it and caches the plan per signature. What is re-evaluated:

* ints in op attributes that are multiples of sentinels (a reshape's ``(batch, 784)``, ``28*batch`` from a
  ``-1``, an ``expand`` in a gradient, a random draw's shape);
* numbers derived in Python from ``Symbol.shape``/``numel()``, which return ``SymInt``s (ints with the
  sentinel's value that remember their expression; arithmetic keeps it, and distinctive results are
  registered so a plain copy is recognized later): ``var``'s ``n - 1``;
* ``1 / n`` constants (``mean``), recognized by value even in float32;
* slice bounds counted from the end of a symbolic dimension (``x[:-1]``, ``x[-3:]``, ``x[-1]``);
* constants of a symbolic shape made eagerly (``zeros_like(x)``), re-made when they hold one value; other
  such arrays (``arange(x.shape[0])``) are an error at ``compile``. Through the hook in
  ``ops.creation._full`` (``SYMBOLIC``), ``zeros``/``ones``/``full(_like)`` of a symbolic shape made while a
  graph is built are graph constants from the start (never allocated at the sentinel size).

Limits: a size used in a Python branch (``if n == 1``), passed through NumPy arithmetic or baked into an
index array (advanced indexing with negative indices along a symbolic dimension) is fixed at build time.
Fixed sizes that are multiples of a sentinel (none are below 10067), or within a few of a sentinel when
a graph also slices that symbolic dimension from the end, would be misread.

**Gradients.** ``grad(loss, wrt)`` walks the op nodes reachable from ``loss`` that lead to ``wrt`` in
reverse order and calls each ``Op.vjp`` with a small ctx (``inputs``, ``out``, ``attrs``, ``in_meta``) of
symbols; input gradients are reduced with ``sum_to_shape`` and cast as the tape does, and summed where a
value is used more than once. Ops without a vjp, or with a non-floating output, and ``detach()`` stop the
gradient as in eager mode, as do ops built under ``no_grad``. The results are symbols of the same graph;
``compile`` them with the loss.

**Not supported:** state writes (in-place updates of concrete tensors by the graph, e.g. BatchNorm's
running statistics in training mode or an optimizer step: a clear ``TraceError``; use ``ember.jit`` for
whole training steps), devices other than the CPU, and ``ember.jit`` tracing while a graph is built.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import operator
import sys
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from .. import dtypes as _dt
from ..autograd import STATE, sum_to_shape
from ..device import CPU, Device, to_device
from ..errors import AutogradError, DeviceError, DTypeError, ShapeError, TraceError
from ..tensor import Tensor, _make
from .ir import Graph

__all__ = ["GraphBuilder", "SymFloat", "SymInt", "Symbol", "SymbolicArray", "SymbolicFunction", "building",
           "compile", "grad", "placeholder", "variable"]

DEFAULT_DIM = "batch"

# ----------------------------------------------------------------------------- symbolic sizes and expressions
#
# An expression is a small tuple tree: ("dim", name) | ("num", value) | ("neg", e) | (op, e1, e2) with op one
# of + - * / // %. Trees stay shallow (sizes computed in a few Python steps), so recursion is fine here.

_SENTINELS: dict[str, int] = {}   # symbolic size name -> its build-time sentinel (a distinct prime)
_BY_SENTINEL: dict[int, str] = {}
_DERIVED: dict[Any, tuple] = {}   # distinctive value computed from a SymInt -> its expression
_BINOPS: dict[str, Callable[[Any, Any], Any]] = {"+": operator.add, "-": operator.sub, "*": operator.mul,
                                                  "/": operator.truediv, "//": operator.floordiv, "%": operator.mod}


def _is_prime(n: int) -> bool:
    return n > 1 and all(n % p for p in range(2, math.isqrt(n) + 1))


def _sentinel(name: str) -> int:
    """The sentinel size standing for the symbolic size ``name`` (allocated on first use): a prime above
    10000 whose neighbours within 16 (``x[:-3]`` makes ``sentinel - 3``) are no multiple of 64 or 100, so
    they are not mistaken for round fixed sizes, at least 128 above the previous sentinel."""
    s = _SENTINELS.get(name)
    if s is None:
        s = max(_SENTINELS.values(), default=10000 - 127) + 128
        while not (_is_prime(s) and 17 <= s % 64 <= 47 and 17 <= s % 100 <= 83):
            s += 1
        _SENTINELS[name] = s
        _BY_SENTINEL[s] = name
    return s


def _eval(e: tuple, env: dict[str, int]) -> Any:
    tag = e[0]
    if tag == "num":
        return e[1]
    if tag == "dim":
        return env[e[1]]
    if tag == "neg":
        return -_eval(e[1], env)
    return _BINOPS[tag](_eval(e[1], env), _eval(e[2], env))


def _expr_str(e: tuple, top: bool = True) -> str:
    tag = e[0]
    if tag == "num":
        return repr(e[1])
    if tag == "dim":
        return e[1]
    if tag == "neg":
        return f"-{_expr_str(e[1], False)}"
    if tag == "*" and e[1][0] == "num" and e[2][0] == "dim":
        return f"{e[1][1]}*{e[2][1]}"
    text = f"{_expr_str(e[1], False)} {tag} {_expr_str(e[2], False)}"
    return text if top else f"({text})"


def _dims_of(e: tuple, out: set[str]) -> set[str]:
    if e[0] == "dim":
        out.add(e[1])
    elif e[0] == "neg":
        _dims_of(e[1], out)
    elif e[0] != "num":
        _dims_of(e[1], out)
        _dims_of(e[2], out)
    return out


def _varies(e: tuple) -> bool:
    """Whether ``e`` depends on a symbolic size (evaluated at a few sizes)."""
    names = _dims_of(e, set())
    if not names:
        return False
    seen = set()
    for probe in (7, 12, 65537):
        try:
            seen.add(_eval(e, dict.fromkeys(names, probe)))
        except (ZeroDivisionError, ArithmeticError):
            return True
    return len(seen) > 1


def _distinctive(v: Any) -> bool:
    """Values unlikely to occur by chance (big ints, fractions with big denominators): only these are
    looked up as derived from a symbolic size."""
    if isinstance(v, (int, np.integer)):
        return abs(int(v)) >= 1000
    v = float(v)
    if not math.isfinite(v) or v == 0.0:
        return False
    if v.is_integer():
        return abs(v) >= 1000
    return abs(float(Fraction(v).limit_denominator(1000)) - v) > 1e-12 * abs(v)


def _factor(v: int) -> tuple | None:
    """``v`` as k * sentinel^a * ... (an expression over symbolic sizes), or None."""
    if v == 0 or not _BY_SENTINEL:
        return None
    expr = None
    k = v
    for s, name in _BY_SENTINEL.items():
        while k % s == 0:
            k //= s
            term = ("dim", name)
            expr = term if expr is None else ("*", expr, term)
    if expr is None:
        return None
    return expr if k == 1 else ("*", ("num", k), expr)


def _expr_of_number(v: Any, np_dtype: Any = np.float64) -> tuple | None:
    """The symbolic expression a plain number stands for, or None when it is just a number. Floats are
    compared as values of ``np_dtype`` (a constant's dtype)."""
    if isinstance(v, (SymInt, SymFloat)):
        return v.expr
    if isinstance(v, (bool, np.bool_)):
        return None
    if isinstance(v, (int, np.integer)):  # a registered derivation first: it knows batch * (time - 2)
        e = _DERIVED.get(int(v)) if _distinctive(v) else None
        return e if e is not None else _factor(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if not math.isfinite(f) or f == 0.0:
            return None
        if f.is_integer():
            e = _DERIVED.get(f) if _distinctive(f) else None
            e = e if e is not None else _factor(int(f))
            if e is not None:
                return e
        if _distinctive(f):
            e = _DERIVED.get(f)
            if e is None and np.dtype(np_dtype).itemsize < 8:  # a derived float64 value rounded to float32/16
                for value, expr in _DERIVED.items():
                    if isinstance(value, float) and np.asarray(value, np_dtype) == np.asarray(f, np_dtype):
                        return expr
            return e if e is not None else _reciprocal(f, np_dtype)
    return None


def _reciprocal(f: float, np_dtype: Any) -> tuple | None:
    """``1 / n`` for a size ``n`` computed from symbolic sizes (``mean``'s ``1.0 / n``: a float on the left of
    ``/`` turns a SymInt into a plain float), recognized by value: ``f`` must be exactly ``1 / n`` in
    ``np_dtype`` for ``n`` = an integer times a product of sentinels (or a registered derived size), and not
    a short decimal literal. Rounded to float32, ``1 / f`` is only near ``n``, so ``n`` is searched for."""
    want = np.asarray(f, np_dtype)
    if np.asarray(float(f"{f:.3g}"), np_dtype) == want:
        return None
    approx = 1.0 / abs(f)
    if not 1.0 <= approx <= 1e15:
        return None

    def exact(n: int) -> bool:
        return np.asarray(math.copysign(1.0 / n, f), np_dtype) == want
    sign = ("num", math.copysign(1.0, f))
    for value, expr in _DERIVED.items():  # a size computed with SymInts: its exact expression
        if isinstance(value, int) and abs(value - approx) <= 1e-6 * approx and exact(value):
            return ("/", sign, expr)
    sentinels = list(_BY_SENTINEL)
    most = 10 ** 7 if np.dtype(np_dtype).itemsize >= 8 else 10 ** 6  # the fixed part of n (more: chance matches)
    for exps in itertools.product(range(3), repeat=min(len(sentinels), 3)):
        p = math.prod(s ** e for s, e in zip(sentinels, exps))
        if p == 1:
            continue
        m = round(approx / p)
        if 1 <= m <= most and exact(m * p):
            return ("/", sign, _factor(m * p))
    return None


def _derive(value: Any, expr: tuple) -> Any:
    """A number computed from symbolic sizes: a SymInt/SymFloat remembering ``expr`` (registered so a
    plain copy of it can be recognized later), or the plain number when it does not depend on them."""
    if not _varies(expr):
        return value
    if _distinctive(value):
        _DERIVED.setdefault(value, expr)
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return SymInt(value, expr)
    if isinstance(value, float):
        return SymFloat(value, expr)
    return value


def _lift(x: Any) -> tuple | None:
    """The expression of an operand: its own, the one a plain number stands for (a sentinel multiple that
    lost its SymInt type through ``int()``), or the number itself."""
    if isinstance(x, (SymInt, SymFloat)):
        return x.expr
    if isinstance(x, (bool, np.bool_)):
        return None
    if isinstance(x, (int, float, np.integer, np.floating)):
        e = _expr_of_number(x)
        return e if e is not None else ("num", x.item() if isinstance(x, np.generic) else x)
    return None


def _plain(x: Any) -> Any:
    if isinstance(x, SymInt):
        return int(x)
    if isinstance(x, SymFloat):
        return float(x)
    return x


def _binop(tag: str, reflected: bool = False) -> Callable[[Any, Any], Any]:
    fn = _BINOPS[tag]

    def method(self: Any, other: Any) -> Any:
        o = _lift(other)
        if o is None:
            return NotImplemented
        a, b = (_plain(other), _plain(self)) if reflected else (_plain(self), _plain(other))
        value = fn(a, b)
        return _derive(value, _combine(tag, o, self.expr) if reflected else _combine(tag, self.expr, o))
    return method


def _combine(tag: str, a: tuple, b: tuple) -> tuple:
    """``(tag, a, b)`` without the identities x+0, x-0, 0+x, x*1, 1*x, x/1, x//1."""
    if b[0] == "num" and ((b[1] == 0 and tag in "+-") or (b[1] == 1 and tag in ("*", "/", "//"))):
        return a
    if a[0] == "num" and ((a[1] == 0 and tag == "+") or (a[1] == 1 and tag == "*")):
        return b
    return (tag, a, b)


class _SymNumber:
    """Arithmetic shared by SymInt and SymFloat: results keep their expression."""

    __add__, __radd__ = _binop("+"), _binop("+", True)
    __sub__, __rsub__ = _binop("-"), _binop("-", True)
    __mul__, __rmul__ = _binop("*"), _binop("*", True)
    __truediv__, __rtruediv__ = _binop("/"), _binop("/", True)
    __floordiv__, __rfloordiv__ = _binop("//"), _binop("//", True)
    __mod__, __rmod__ = _binop("%"), _binop("%", True)

    def __neg__(self) -> Any:
        return _derive(-_plain(self), ("neg", self.expr))

    def __pos__(self) -> Any:
        return self

    def __repr__(self) -> str:
        return _expr_str(self.expr)

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return _expr_str(self.expr) if not spec else format(_plain(self), spec)


class SymInt(_SymNumber, int):
    """A size that depends on a symbolic dimension: an int with the sentinel's value (so every shape
    computation works) that remembers how it was computed (``expr``). ``repr`` shows the expression."""

    expr: tuple

    def __new__(cls, value: int, expr: tuple) -> SymInt:
        obj = int.__new__(cls, value)
        obj.expr = expr
        return obj

    __hash__ = int.__hash__


class SymFloat(_SymNumber, float):
    """A float computed from symbolic sizes (``1 / n`` in ``mean``); see ``SymInt``."""

    expr: tuple

    def __new__(cls, value: float, expr: tuple) -> SymFloat:
        obj = float.__new__(cls, value)
        obj.expr = expr
        return obj

    __hash__ = float.__hash__


def _express(v: int) -> int:
    """A shape entry as a SymInt when it stands for a symbolic size, else the plain int."""
    e = _expr_of_number(v)
    return SymInt(int(v), e) if e is not None else int(v)


def _shape_str(shape: Sequence[Any]) -> str:
    return "(" + ", ".join(repr(_express(d)) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _readable(text: str) -> str:
    """An error message with sentinel sizes written as the symbolic sizes they stand for."""
    import re

    def sub(m: re.Match) -> str:
        e = _factor(int(m.group(0)))
        return _expr_str(e) if e is not None else m.group(0)
    return re.sub(r"(?<![\w.])\d{5,}(?![\w.])", sub, text) if _BY_SENTINEL else text


# ----------------------------------------------------------------------------- symbolic data and tensors


class SymbolicArray(np.ndarray):
    """The ``data`` of a symbolic tensor: a zero-memory broadcast view of the right shape and dtype that
    carries its build-time node (``node``) and refuses to be computed with."""

    node: Any = None

    def __array_finalize__(self, obj: Any) -> None:
        self.node = None  # copies and views made by NumPy are not symbols

    def _refuse(self, what: str) -> TraceError:
        node = self.node
        label = "" if node is None else f" {node.name!r}" if node.name else f" (a result of {node.label()})"
        return TraceError(f"{what}: symbolic tensor{label} (shape {_shape_str(self.shape)}) has no values; it "
                          "stands for data given when the compiled function runs. Build graphs from symbolic "
                          "tensors with ember ops (or inside `with ember.graph.building():` for code that reaches "
                          "for arrays), and read values from the outputs of ember.graph.compile(...).")

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        raise self._refuse(f"NumPy {ufunc.__name__}")

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        if func in _SHAPE_ONLY:
            return super().__array_function__(func, types, args, kwargs)
        if func is np.copyto and args and type(args[0]) is not SymbolicArray:
            raise TraceError("in-place update of a concrete tensor with a symbolic value (e.g. BatchNorm's running "
                             "statistics in training mode, an optimizer step): symbolic graphs have no state writes; "
                             "return the new value as an output and update the tensor after the call, put the module "
                             "in eval() mode, or compile the training step with ember.jit")
        raise self._refuse(f"NumPy {func.__name__}")

    def item(self, *args: Any) -> Any:
        raise self._refuse("item()")

    def __getitem__(self, key: Any) -> Any:
        raise self._refuse("indexing its data")

    def __setitem__(self, key: Any, value: Any) -> None:
        raise self._refuse("assigning into its data")

    def tolist(self) -> Any:
        raise self._refuse("tolist()")

    def tobytes(self, *args: Any, **kwargs: Any) -> bytes:
        raise self._refuse("tobytes()")

    def __bool__(self) -> bool:
        raise self._refuse("bool()")

    def __float__(self) -> float:
        raise self._refuse("float()")

    def __int__(self) -> int:
        raise self._refuse("int()")

    def __index__(self) -> int:
        raise self._refuse("index")

    def __repr__(self) -> str:
        return f"SymbolicArray(shape={_shape_str(self.shape)}, dtype={self.dtype})"

    __str__ = __repr__


_SHAPE_ONLY = {np.shape, np.ndim, np.size, np.result_type, np.may_share_memory, np.shares_memory}
_ZERO: dict[Any, np.ndarray] = {}


def _symbolic_data(node: SymNode) -> SymbolicArray:
    z = _ZERO.get(node.dtype)
    if z is None:
        z = _ZERO[node.dtype] = np.zeros((), node.dtype.np)
    a = np.broadcast_to(z, node.shape).view(SymbolicArray)
    a.node = node
    return a


def _is_symbolic(x: Any) -> bool:
    return type(getattr(x, "data", None)) is SymbolicArray


class Symbol(Tensor):
    """A symbolic tensor: a placeholder, or the result of ops on symbolic tensors (see the module
    docstring). Its ``shape`` holds ``SymInt``s for symbolic sizes; it has no values."""

    __slots__ = ()

    @property
    def node(self) -> SymNode:
        return self.data.node

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.node.sym_shape()

    def size(self, dim: int | None = None) -> Any:
        shape = self.shape
        return shape if dim is None else shape[dim]

    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n = n * d
        return n

    def __iter__(self) -> Iterator[Tensor]:
        if self.ndim and isinstance(self.shape[0], SymInt):
            raise TraceError(f"cannot iterate over the symbolic dimension {self.shape[0]!r} of {self!r}")
        return super().__iter__()

    def _refuse(self, what: str) -> Any:
        raise self.data._refuse(what)

    def item(self) -> Any:
        return self._refuse("Tensor.item()")

    def tolist(self) -> Any:
        return self._refuse("Tensor.tolist()")

    def numpy(self) -> np.ndarray:
        return self._refuse("Tensor.numpy()")

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self._refuse("np.asarray(tensor)")

    def __bool__(self) -> bool:
        return self._refuse("bool(tensor) (e.g. a Python `if` on a tensor)")

    def __float__(self) -> float:
        return self._refuse("float(tensor)")

    def __int__(self) -> int:
        return self._refuse("int(tensor)")

    def __index__(self) -> int:
        return self._refuse("using a tensor as an index")

    def backward(self, gradient: Any = None, retain_graph: bool | None = None, create_graph: bool = False) -> None:
        raise TraceError(f"backward() on symbolic tensor {self!r}: symbolic graphs have no tape; use "
                         "ember.graph.grad(loss, [tensors]) to add gradient nodes to the graph")

    def detach(self) -> Tensor:
        """The same value, with gradients stopped (``grad`` does not pass a ``detach`` node)."""
        src = self.data.node
        node = SymNode("detach", None, (src,), {}, src.shape, src.dtype, src.device)
        return _symbol(node)

    def contiguous(self) -> Tensor:
        return self  # layout is the compiler's business

    def is_contiguous(self) -> bool:
        return True

    def _inplace(self, fn: Callable[..., Tensor], *args: Any, **kwargs: Any) -> Tensor:
        """In-place ops on a symbol rebind it to the node of the new value (other references to the old
        value, and views of it, keep the old value)."""
        with _active():
            result = fn(self, *args, **kwargs)
            if tuple(result.data.shape) != tuple(self.data.shape):
                raise ShapeError(f"in-place operation: result of shape {_shape_str(result.data.shape)} cannot be "
                                 f"written into a tensor of shape {_shape_str(self.data.shape)}")
            if result.dtype is not self.dtype:
                if result.dtype.category > self.dtype.category:
                    raise DTypeError(f"in-place operation: result type {result.dtype.name} can't be cast to the "
                                     f"tensor's dtype {self.dtype.name}")
                from ..ops.pointwise import cast
                result = cast(result, self.dtype)
        if not _is_symbolic(result):
            result = _symbol(_BUILDER.node_of(result))
        self.data = result.data
        self._version[0] += 1
        return self

    def __repr__(self) -> str:
        n = self.data.node
        what = {"input": f"placeholder {n.name!r}", "op": f"= {n.op.name if n.op else ''}(...)"}.get(n.kind, n.kind)
        return f"<symbolic {self.dtype.name}{_shape_str(self.data.shape)} {what}>"

    __str__ = __repr__


def _symbol(node: SymNode) -> Symbol:
    t = _make(_symbolic_data(node), node.dtype, node.device)
    t.__class__ = Symbol  # a Tensor with no slots of its own: the same layout
    return t


# ----------------------------------------------------------------------------- build-time nodes

_SEQ = itertools.count()


class SymNode:
    """One build-time value. ``kind``: ``input`` (a placeholder), ``external`` (a concrete tensor, resolved to
    live or const by ``compile``), ``op``, or ``detach`` (its input's value, with gradients stopped). ``seq``
    orders nodes (inputs are always older); ``spec`` is the attribute template of an op node, or for an
    external the symbolic form of its value (see ``_external``)."""

    __slots__ = ("__weakref__", "_sym_shape", "array", "attrs", "device", "dims", "dtype", "forced", "inputs",
                 "kind", "name", "op", "ref", "seq", "shape", "spec", "stop", "storage")

    def __init__(self, kind: str, op: Any, inputs: tuple, attrs: dict, shape: Sequence[int], dtype: _dt.DType,
                 device: Device, name: str | None = None) -> None:
        self.kind = kind
        self.op = op
        self.inputs = inputs
        self.attrs = attrs
        self.shape = tuple(int(d) for d in shape)
        self.dtype = dtype
        self.device = device
        self.name = name
        self.seq = next(_SEQ)
        self.spec: Any = None
        self.dims: tuple = ()
        self.array: Any = None
        self.ref: Any = None       # an external's tensor (weakly)
        self.storage: Any = None   # an external's _Storage (shared by the tensors that wrap one array)
        self.forced: Any = None
        self.stop = kind == "detach"  # gradients do not pass (a detach, or an op built under no_grad)
        self._sym_shape: tuple | None = None

    def sym_shape(self) -> tuple:
        s = self._sym_shape
        if s is None:
            if self.kind == "input":
                s = tuple(SymInt(_sentinel(d), ("dim", d)) if isinstance(d, str) else d for d in self.dims)
            else:
                s = tuple(_express(d) for d in self.shape)
            self._sym_shape = s
        return s

    def label(self) -> str:
        if self.name:
            return self.name
        return self.op.name if self.kind == "op" else self.kind

    def alive(self) -> Tensor | None:
        """For an external: its tensor, or another tensor wrapping the same array (the parameter a detached
        copy came from), if one is still referenced; else None."""
        if self.forced is not None:
            return self.forced
        for r in [self.ref, *self.storage.refs]:
            t = r()
            if t is not None and t.data is self.array:
                return t
        return None

    def __repr__(self) -> str:
        return f"<SymNode {self.kind} {self.label()} {self.dtype.name}{_shape_str(self.shape)}>"


class _Marker:
    """A symbolic number inside an attribute template."""

    __slots__ = ("expr", "kind")

    def __init__(self, expr: tuple, kind: type) -> None:
        self.expr = expr
        self.kind = kind


def _template(value: Any) -> tuple[Any, bool]:
    """``value`` with symbolic numbers replaced by markers, and whether there were any."""
    if isinstance(value, (SymInt, SymFloat)) or (isinstance(value, (int, float, np.integer, np.floating))
                                                 and not isinstance(value, (bool, np.bool_))):
        e = _expr_of_number(value)
        if e is None:
            return value, False
        return _Marker(e, int if isinstance(value, (int, np.integer)) else float), True
    if isinstance(value, (tuple, list)):
        parts = [_template(v) for v in value]
        if not any(p[1] for p in parts):
            return value, False
        return type(value)(p[0] for p in parts), True
    if isinstance(value, dict):
        items = {k: _template(v) for k, v in value.items()}
        if not any(p[1] for p in items.values()):
            return value, False
        return {k: p[0] for k, p in items.items()}, True
    if isinstance(value, slice):
        parts = [_template(v) for v in (value.start, value.stop, value.step)]
        if not any(p[1] for p in parts):
            return value, False
        return slice(*(p[0] for p in parts)), True
    return value, False


def _instantiate(value: Any, env: dict[str, int]) -> Any:
    if isinstance(value, _Marker):
        v = _eval(value.expr, env)
        return int(v) if value.kind is int else float(v)
    if isinstance(value, (tuple, list)):
        return type(value)(_instantiate(v, env) for v in value)
    if isinstance(value, dict):
        return {k: _instantiate(v, env) for k, v in value.items()}
    if isinstance(value, slice):
        return slice(_instantiate(value.start, env), _instantiate(value.stop, env), _instantiate(value.step, env))
    return value


def _template_dims(value: Any, out: set[str]) -> set[str]:
    if isinstance(value, _Marker):
        _dims_of(value.expr, out)
    elif isinstance(value, (tuple, list)):
        for v in value:
            _template_dims(v, out)
    elif isinstance(value, dict):
        for v in value.values():
            _template_dims(v, out)
    elif isinstance(value, slice):
        for v in (value.start, value.stop, value.step):
            _template_dims(v, out)
    return out


_SLICE_OPS = ("getslice", "setslice")


def _slice_template(key: tuple, shape: tuple) -> tuple[tuple, bool]:
    """The template of a basic-indexing key (entries: None, an int, or (start, stop|None, step)). An index
    from the end of a symbolic dimension (``x[:-1]``, ``x[-3:]``) arrives as a plain number just below the
    sentinel (``slice.indices`` dropped the SymInt): a bound in (n/2, n] of a dimension of symbolic size n
    is read as ``n - c``, and the resulting lengths are registered so shapes downstream stay symbolic."""
    out: list[Any] = []
    mentions = False
    d = 0
    for it in key:
        if it is None:
            out.append(None)
            continue
        n = int(shape[d]) if d < len(shape) else 0
        d += 1
        dim = _factor(n) if n else None
        if dim is None or dim[0] != "dim":
            t, m = _template(it)
            out.append(t)
            mentions = mentions or m
            continue

        def bound(b: Any, n: int = n, dim: tuple = dim) -> Any:
            if isinstance(b, (int, np.integer)) and not isinstance(b, (bool, np.bool_)) and n // 2 < b <= n:
                return SymInt(int(b), dim if b == n else ("-", dim, ("num", n - int(b))))
            return b
        if type(it) is tuple:
            start, stop, step = bound(it[0]), bound(it[1]), it[2]
            _slice_length(start, stop, step)
            t, m = _template((start, stop, step))
        else:
            t, m = _template(bound(it))
        out.append(t)
        mentions = mentions or m
    return tuple(out), mentions


def _slice_length(start: Any, stop: Any, step: int) -> Any:
    """The length of a slice; with SymInt bounds the arithmetic registers it (so the sliced dimension of the
    result is recognized as, e.g., ``batch - 1``)."""
    if step > 0:
        return (stop - start + (step - 1)) // step
    end = -1 if stop is None else stop
    return (start - end + (-step - 1)) // -step


def _clamp_key(key: tuple, shape: tuple, op: str, where: str) -> tuple:
    """A specialized key normalized as ``slice.indices`` would for the real sizes."""
    out: list[Any] = []
    d = 0
    for it in key:
        if it is None:
            out.append(None)
            continue
        n = shape[d] if d < len(shape) else 0
        d += 1
        if type(it) is tuple:
            start, stop, step = it
            if step > 0:
                start, stop = min(max(start, 0), n), min(max(stop, 0), n)
            else:
                start = min(max(start, -1), n - 1)
                stop = None if stop is None or stop < 0 else min(stop, n - 1)
            out.append((start, stop, step))
        else:
            if not 0 <= it < n:
                raise ShapeError(f"{op}: index {it} is out of range for dimension {d - 1} of size {n} ({where})")
            out.append(it)
    return tuple(out)


# ----------------------------------------------------------------------------- the builder


class GraphBuilder:
    """The abstract-mode tracer: while it is ``STATE.tracer``, ops add nodes (no kernel runs) except ops
    without a symbolic input or attribute that run under ``no_grad`` or have no inputs, which run eagerly.
    Concrete tensors are recorded per tensor object (weakly)."""

    def __init__(self) -> None:
        self.externals: weakref.WeakValueDictionary[int, SymNode] = weakref.WeakValueDictionary()  # id(tensor)
        self.storages: weakref.WeakValueDictionary[int, _Storage] = weakref.WeakValueDictionary()  # id(array)
        self.variables: dict[int, SymNode] = {}   # id(tensor) -> external node of a ``variable()`` (kept)

    # -- values
    def node_of(self, t: Tensor) -> SymNode:
        """The node of a tensor: its own for a symbol; for a concrete tensor, one external node per tensor
        object (a ``detach()``ed copy is another node, so gradients stop there), sharing its array's
        ``_Storage`` with the other tensors that wrap the same array."""
        d = t.data
        if type(d) is SymbolicArray:
            if d.node is None:
                raise d._refuse("a value computed eagerly from a symbolic tensor was used")
            return d.node
        node = self.lookup(t)
        if node is None:
            st = self.storages.get(id(d))
            if st is None or st.array is not d:
                st = self.storages[id(d)] = _Storage(d)
            st.refs.append(weakref.ref(t))
            node = self.externals[id(t)] = _external(t, st)
        return node

    def lookup(self, t: Tensor) -> SymNode | None:
        """The node a concrete tensor already has in some graph, or None."""
        node = self.externals.get(id(t))
        return node if node is not None and node.ref() is t and node.array is t.data else None

    # -- the tracer protocol (see ember.graph.trace.Tracer)
    def apply(self, op: Any, inputs: tuple, attrs: dict) -> Tensor:
        from ..ops import registry
        symbolic = False
        for t in inputs:
            if not isinstance(t, Tensor):
                raise TypeError(f"{op.name}: expected Tensor inputs, got {type(t).__name__}")
            if type(t.data) is SymbolicArray:
                symbolic = True
        spec, mentions = _template(attrs) if attrs else (attrs, False)
        if symbolic and op.name in _SLICE_OPS and "key" in attrs:
            key_spec, key_mentions = _slice_template(attrs["key"], inputs[0].data.shape)
            if key_mentions:
                spec, mentions = {**spec, "key": key_spec}, True
        if not symbolic and not mentions and not (inputs and STATE.grad_enabled):
            prev = STATE.tracer
            STATE.tracer = None
            try:
                return registry.apply(op, *inputs, **attrs)
            finally:
                STATE.tracer = prev
        nodes = tuple(self.node_of(t) for t in inputs)
        if inputs:
            device = inputs[0].device
            for t in inputs[1:]:
                if t.device != device:
                    raise DeviceError(f"{op.name}: tensors are on different devices: "
                                      f"{', '.join(str(t.device) for t in inputs)}; move them to one device first")
        else:
            device = attrs["device"]
        try:
            shape, dtype = op.infer(*inputs, **attrs)
        except (ShapeError, DTypeError) as e:
            raise type(e)(_readable(str(e))) from None
        node = SymNode("op", op, nodes, dict(attrs), shape, dtype, device)
        node.spec = spec if mentions else None
        node.stop = not STATE.grad_enabled
        return _symbol(node)

    def on_make(self, t: Tensor) -> None:
        pass

    def assign(self, target: Tensor, value: Tensor) -> None:
        if _is_symbolic(target) or _is_symbolic(value):
            raise TraceError(f"in-place update of a concrete tensor of shape {target.shape} with a symbolic value: "
                             "a symbolic graph has no state writes; return the value from the compiled function "
                             "and update the tensor after running it")

    def alias(self, new: Tensor, of: Tensor) -> None:
        pass

    def value_read(self, what: str) -> None:
        raise TraceError(f"{what} reads a tensor's value while a symbolic graph is being built (inside "
                         "ember.graph.building(), ember.graph.grad, or an op on a placeholder), where values are not "
                         "known until the compiled function runs; read values outside the building scope, or from "
                         "the outputs of the compiled function")

    def note_module(self, module: Any) -> None:
        pass

    def note_optimizer(self, opt: Any) -> None:
        pass

    def note_grad(self, leaf: Tensor) -> None:
        pass

    def note_grad_reset(self, leaf: Tensor) -> None:
        pass

    def add_sync(self, fn: Callable[[], None]) -> None:
        fn()

    # -- the registry hook (ember.ops.registry.SYMBOLIC)
    def dispatch(self, op: Any, inputs: tuple, attrs: dict) -> Any:
        """Called by ``ops.apply`` outside any tracer: build a node when an input (or, for an op without
        inputs, an attribute) is symbolic; ``NotImplemented`` lets the op run eagerly."""
        for t in inputs:
            if type(getattr(t, "data", None)) is SymbolicArray:
                break
        else:
            if inputs or not attrs or not _template(attrs)[1]:
                return NotImplemented
        with _active():
            return self.apply(op, inputs, attrs)

    def full(self, shape: tuple, value: Any, dtype: _dt.DType, device: Any) -> Any:
        """Called by ``creation._full`` (``zeros``, ``ones_like``, ...): while a graph is built, an array of a
        symbolic shape becomes a constant made at the real size when the graph is specialized, instead of
        being allocated at the sentinel size now (``NotImplemented`` otherwise)."""
        if STATE.tracer is not self:
            return NotImplemented
        shape_spec, mentions = _template(tuple(shape))
        if not mentions:
            return NotImplemented
        dev = to_device(device) if device is not None else CPU
        node = SymNode("external", None, (), {}, shape, dtype, dev)
        node.spec = ("fill", _template(0 if value is None else value)[0], shape_spec)
        return _symbol(node)

    def call(self, fn: Callable, args: tuple, kwargs: dict) -> Any:
        """Called for a composite outside any tracer: run it under the builder when an argument is symbolic."""
        if _any_symbolic(args) or _any_symbolic(kwargs.values()):
            with _active():
                return fn(*args, **kwargs)
        return fn(*args, **kwargs)


def _any_symbolic(values: Any) -> bool:
    for v in values:
        if type(getattr(v, "data", None)) is SymbolicArray:
            return True
        if isinstance(v, (list, tuple)) and any(type(getattr(x, "data", None)) is SymbolicArray for x in v):
            return True
    return False


class _Storage:
    """One array wrapped by one or more concrete tensors (weakly held)."""

    __slots__ = ("__weakref__", "array", "refs")

    def __init__(self, array: Any) -> None:
        self.array = array
        self.refs: list = []


def _external(t: Tensor, storage: _Storage) -> SymNode:
    """The node of a concrete tensor, with the symbolic form of its value when it was made from a symbolic
    size: ``("scalar", expr)`` for a 0-d value, ``("fill", value_spec, shape_spec)`` for an array of one value
    and a symbolic shape, ``("bad", why)`` for other arrays of a symbolic shape."""
    d = t.data
    node = SymNode("external", None, (), {}, d.shape, t.dtype, t.device)
    node.array = d
    node.ref = weakref.ref(t)
    node.storage = storage
    shape_spec, sym_shape = _template(tuple(d.shape))
    if type(d) is np.ndarray and sym_shape:
        flat = d.reshape(-1)
        first = flat[0] if flat.size else 0
        if flat.size == 0:
            uniform = True
        elif d.dtype.kind in "biuf":  # min/max: no temporary as large as the array
            uniform = bool(flat.min() == flat.max()) or (
                d.dtype.kind == "f" and bool(np.isnan(first)) and bool(np.isnan(flat).all()))
        else:
            uniform = bool(np.all(flat == first))
        if uniform:
            value_spec, _ = _template(first.item() if hasattr(first, "item") else first)
            node.spec = ("fill", value_spec, shape_spec)
        else:
            node.spec = ("bad", f"a constant of shape {_shape_str(d.shape)} holding different values was computed "
                                "eagerly from a symbolic size (e.g. ember.arange(x.shape[0])); it cannot be "
                                "re-made for other sizes")
    elif type(d) is np.ndarray and d.ndim == 0 and d.dtype.kind in "iuf":
        e = _scalar_expr(d)
        if e is not None:
            node.spec = ("scalar", e)
    return node


def _scalar_expr(a: np.ndarray) -> tuple | None:
    return _expr_of_number(a.item(), a.dtype)


_BUILDER = GraphBuilder()


@contextlib.contextmanager
def _active() -> Iterator[None]:
    prev = STATE.tracer
    if prev is not None and prev is not _BUILDER:
        raise TraceError("a symbolic graph cannot be built while ember.jit is tracing; build it outside the "
                         "jitted function")
    STATE.tracer = _BUILDER
    try:
        yield
    finally:
        STATE.tracer = prev


@contextlib.contextmanager
def building() -> Iterator[GraphBuilder]:
    """A scope in which ops on symbolic tensors build graph nodes (ops on concrete tensors still run eagerly;
    reading any tensor's value raises ``TraceError``): for a module's forward whose ops all read concrete
    tensors (weight transforms), which would otherwise run eagerly."""
    with _active():
        yield _BUILDER


def _install_hook() -> None:
    from ..ops import registry
    hook = getattr(registry, "SYMBOLIC", None)
    if isinstance(hook, list) and hook and hook[0] is None:
        hook[0] = _BUILDER


# ----------------------------------------------------------------------------- public constructors


def placeholder(shape: Sequence[int | str | None], dtype: Any = "float32", name: str | None = None,
                device: Any = None) -> Symbol:
    """A graph input of ``shape`` (``None``: the symbolic size ``"batch"``; a string: a named symbolic size)."""
    if isinstance(shape, (int, str)) or shape is None:
        shape = (shape,)
    if not isinstance(shape, (tuple, list)):
        raise ShapeError(f"placeholder: shape must be a sequence of ints, None or names, got {shape!r}")
    dims: list[int | str] = []
    for d in shape:
        if d is None:
            dims.append(DEFAULT_DIM)
        elif isinstance(d, str):
            if not d.isidentifier():
                raise ShapeError(f"placeholder: a symbolic size name must be an identifier, got {d!r}")
            dims.append(d)
        elif isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer)) or d < 0:
            raise ShapeError(f"placeholder: dimensions must be non-negative ints, None or names, got {tuple(shape)!r}")
        else:
            dims.append(int(d))
    if sum(1 for d in shape if d is None) > 1:
        raise ShapeError(f"placeholder: shape {tuple(shape)!r} has more than one None; every None is the same "
                         f"symbolic size {DEFAULT_DIM!r}, so name the others, e.g. (None, 'time', 512)")
    dt = _dt.to_dtype(dtype)
    dev = to_device(device) if device is not None else CPU
    if dev.type != "cpu":
        raise DeviceError(f"placeholder: compiled symbolic functions run on the CPU today, got device {dev}")
    if name is not None and not isinstance(name, str):
        raise TypeError(f"placeholder: name must be a string, got {type(name).__name__}")
    sizes = [_sentinel(d) if isinstance(d, str) else d for d in dims]
    node = SymNode("input", None, (), {}, sizes, dt, dev, name=name)
    node.dims = tuple(dims)
    if name is None:
        node.name = f"input{node.seq}"
    _install_hook()
    return _symbol(node)


def variable(tensor: Any, name: str | None = None) -> Tensor:
    """Mark a concrete tensor as a live graph value (read by reference on every call, named ``name`` in
    printed graphs); returns the tensor itself. Plain tensors used in symbolic ops are live anyway while
    referenced; ``variable`` also keeps one alive that nothing else holds."""
    if _is_symbolic(tensor):
        raise TypeError(f"variable: expected a concrete tensor, got symbolic {tensor!r}")
    if not isinstance(tensor, Tensor):
        from ..ops.creation import tensor as _tensor
        tensor = _tensor(tensor)
    node = _BUILDER.node_of(tensor)
    if node.spec is not None:
        raise ShapeError(f"variable: tensor of shape {_shape_str(tensor.shape)} has a size that is a multiple of a "
                         "symbolic size's sentinel; it cannot be a variable")
    node.forced = tensor
    if name is not None:
        node.name = name
    _BUILDER.variables[id(tensor)] = node
    return tensor


# ----------------------------------------------------------------------------- grad


class _VjpCtx:
    """What a vjp rule reads: the symbolic inputs (``requires_grad`` where a gradient is wanted) and output,
    the attrs and the inputs' (shape, dtype)."""

    __slots__ = ("attrs", "in_meta", "inputs", "op", "out")

    def __init__(self, node: SymNode, needed: set[int]) -> None:
        self.op = node.op
        self.attrs = node.attrs
        self.inputs = tuple(_symbol(i) for i in node.inputs)
        for t, i in zip(self.inputs, node.inputs):  # rules skip the gradients of inputs that need none
            t.requires_grad = id(i) in needed and i.dtype.category == _dt.FLOATING
        self.out = _symbol(node)
        self.in_meta = [(i.shape, i.dtype) for i in node.inputs]


def _reachable(roots: Sequence[SymNode]) -> list[SymNode]:
    """Every node the roots depend on, oldest first (an iterative walk)."""
    seen: dict[int, SymNode] = {}
    stack = list(roots)
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen[id(n)] = n
        stack.extend(n.inputs)
    return sorted(seen.values(), key=lambda n: n.seq)


def _as_symbolic_node(x: Any, fname: str, what: str) -> SymNode:
    if not _is_symbolic(x):
        raise TypeError(f"{fname}: {what} must be a symbolic tensor (a placeholder or a result of ops on one), got "
                        f"{type(x).__name__ if not isinstance(x, Tensor) else 'a concrete tensor'}")
    node = x.data.node
    if node is None:
        raise x.data._refuse(fname)
    return node


def grad(loss: Tensor, wrt: Tensor | Sequence[Tensor], grad_output: Any = None,
         allow_unused: bool = False) -> Any:
    """Gradient nodes of ``loss`` with respect to each of ``wrt`` (symbols, placeholders or concrete tensors
    used in the graph), as symbols in the same graph. ``loss`` must be a scalar unless ``grad_output`` (its
    gradient, of its shape) is given. A tensor ``loss`` does not depend on gets None with ``allow_unused``,
    else an ``AutogradError``. Returns one symbol for one tensor, else a list."""
    single = isinstance(wrt, Tensor)
    targets = [wrt] if single else list(wrt)
    root = _as_symbolic_node(loss, "grad", "loss")
    if not loss.dtype.is_floating_point:
        raise DTypeError(f"grad: loss must be floating, got {loss.dtype.name}")
    target_nodes: list[SymNode | None] = []
    for i, t in enumerate(targets):
        if not isinstance(t, Tensor):
            raise TypeError(f"grad: wrt[{i}] is {type(t).__name__}, expected a Tensor")
        target_nodes.append(t.data.node if _is_symbolic(t) else _BUILDER.lookup(t))
    order = _reachable([root])
    wanted = {id(n) for n in target_nodes if n is not None}
    needed: set[int] = set()
    for n in order:  # oldest first: a node is needed when it is a target or a needed node feeds it
        if id(n) in wanted or (n.kind == "op" and not n.stop and any(id(i) in needed for i in n.inputs)):
            needed.add(id(n))
    with _active():
        g0 = _seed(loss, grad_output)
        grads: dict[int, Tensor] = {id(root): g0}
        for n in reversed(order):
            g = grads.get(id(n))
            if g is None or n.kind != "op" or n.stop or id(n) not in needed:
                continue
            if n.op.vjp is None or n.dtype.category != _dt.FLOATING:
                continue
            if not any(id(i) in needed and i.dtype.category == _dt.FLOATING for i in n.inputs):
                continue
            in_grads = n.op.vjp(_VjpCtx(n, needed), g)
            if len(in_grads) != len(n.inputs):
                raise AutogradError(f"{n.op.name}: vjp returned {len(in_grads)} gradients for {len(n.inputs)} inputs")
            for i, (inp, gi) in enumerate(zip(n.inputs, in_grads)):
                if gi is None or id(inp) not in needed or inp.dtype.category != _dt.FLOATING:
                    continue
                if n.op.diff_args is not None and i not in n.op.diff_args:
                    continue
                if tuple(gi.data.shape) != inp.shape:
                    gi = sum_to_shape(gi, inp.shape)
                if gi.dtype is not inp.dtype:
                    gi = gi.to(inp.dtype)
                prev = grads.get(id(inp))
                grads[id(inp)] = gi if prev is None else prev + gi
    results: list[Any] = []
    for i, (t, n) in enumerate(zip(targets, target_nodes)):
        g = grads.get(id(n)) if n is not None and id(n) in needed else None
        if g is None and not allow_unused:
            raise AutogradError(f"grad: wrt[{i}] (shape {_shape_str(t.data.shape)}) is not reachable from the loss, "
                                "so its gradient is undefined; pass allow_unused=True to get None for it")
        if g is not None and not _is_symbolic(g):  # d loss / d loss of a concrete seed
            g = _symbol(_BUILDER.node_of(g))
        results.append(g)
    return results[0] if single else results


def _seed(loss: Tensor, grad_output: Any) -> Tensor:
    from ..ops import creation
    shape = tuple(loss.data.shape)
    if grad_output is None:
        if any(d != 1 for d in shape):
            raise AutogradError(f"grad: a gradient can be implicitly created only for a scalar loss, but the loss has "
                                f"shape {_shape_str(shape)}; pass grad_output (a tensor of that shape), e.g. "
                                "ember.graph.grad(out, wrt, grad_output=ember.ones_like(out))")
        return creation.ones_like(loss) if not shape else creation.ones(shape, dtype=loss.dtype)
    g = grad_output
    if not isinstance(g, Tensor):
        g = creation.tensor(np.asarray(g), dtype=loss.dtype)
    if tuple(g.data.shape) != shape:
        raise ShapeError(f"grad: grad_output has shape {_shape_str(g.data.shape)} but the loss has shape "
                         f"{_shape_str(shape)}")
    if g.dtype is not loss.dtype:
        g = g.to(loss.dtype)
    return g


# ----------------------------------------------------------------------------- compile


class _Plan:
    """One specialization: the optimized graph, its executor and the pass records."""

    def __init__(self, sizes: dict[str, int], raw: Graph, graph: Graph, executor: Any, ctx: Any, records: list,
                 build_ms: float, compile_ms: float) -> None:
        self.sizes = sizes
        self.raw = raw
        self.graph = graph
        self.executor = executor
        self.ctx = ctx
        self.records = records
        self.build_ms = build_ms
        self.compile_ms = compile_ms
        self.runs = 0


def compile(outputs: Tensor | Sequence[Tensor], inputs: Tensor | Sequence[Tensor],
            memory_budget: int | None = None, name: str | None = None, fuse: bool = True) -> SymbolicFunction:
    """A function computing ``outputs`` (symbols) from ``inputs`` (placeholders), optimized by the pass
    pipeline and run by the executor; specialized and cached per concrete input shapes (see the module
    docstring). Call it with arrays or tensors, positionally or by placeholder name. ``fuse=False`` runs
    every node's NumPy reference kernel instead of generated fused kernels (see ``ember.jit``)."""
    ok = memory_budget is None or (isinstance(memory_budget, (int, np.integer)) and not isinstance(memory_budget, bool)
                                   and memory_budget > 0)
    if not ok:
        raise ValueError(f"compile: memory_budget must be a positive number of bytes, got {memory_budget!r}")
    return SymbolicFunction(outputs, inputs, memory_budget, name, fuse)


class SymbolicFunction:
    """The result of ``ember.graph.compile``: call it with one array per input placeholder."""

    def __init__(self, outputs: Any, inputs: Any, memory_budget: int | None = None, name: str | None = None,
                 fuse: bool = True) -> None:
        self.name = name or "symbolic"
        self.fuse = fuse
        self.memory_budget = memory_budget
        self._structure = (list if isinstance(outputs, list) else tuple) if isinstance(outputs, (list, tuple)) else None
        outs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
        ins = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if not outs:
            raise ValueError("compile: no outputs given")
        self.out_nodes = []
        for i, o in enumerate(outs):
            if o is None:
                raise TypeError(f"compile: outputs[{i}] is None (grad returns None for a tensor the loss does not "
                                "depend on); leave it out")
            self.out_nodes.append(_as_symbolic_node(o, "compile", f"outputs[{i}]"))
        self.in_nodes: list[SymNode] = []
        for i, x in enumerate(ins):
            n = _as_symbolic_node(x, "compile", f"inputs[{i}]")
            if n.kind != "input":
                raise TypeError(f"compile: inputs[{i}] must be a placeholder, got a symbolic {n.label()} value")
            if any(n is m for m in self.in_nodes):
                raise ValueError(f"compile: placeholder {n.name!r} is given twice in inputs")
            self.in_nodes.append(n)
        self.names = [n.name for n in self.in_nodes]
        dup = {m for m in self.names if self.names.count(m) > 1}
        if dup:
            raise ValueError(f"compile: input names must be distinct (they are keyword arguments), got "
                             f"{sorted(dup)} more than once")
        order = _reachable(self.out_nodes)
        missing = [n.name for n in order if n.kind == "input" and not any(n is m for m in self.in_nodes)]
        if missing:
            raise ValueError(f"compile: the outputs depend on placeholder(s) {missing}, which are not among the "
                             f"inputs {self.names}")
        self.order = [n for n in order if n.kind != "input"]
        # Concrete tensors: decide live or const now (see the module docstring).
        self.resolved: dict[int, tuple] = {}
        dims: set[str] = set()
        for n in self.order:
            if n.kind == "external":
                self.resolved[id(n)] = self._resolve(n)
                spec = n.spec
                if spec is not None and spec[0] == "scalar":
                    _dims_of(spec[1], dims)
                elif spec is not None and spec[0] == "fill":
                    _template_dims(spec[1:], dims)
            elif n.spec is not None:
                _template_dims(n.spec, dims)
        bound = {d for n in self.in_nodes for d in n.dims if isinstance(d, str)}
        unbound = dims - bound
        if unbound:
            raise ValueError(f"compile: the graph uses symbolic size(s) {sorted(unbound)}, but no input has them; "
                             f"inputs: {', '.join(self._describe(n) for n in self.in_nodes)}")
        self.symbolic_dims = sorted(bound)
        self.op_count = sum(1 for n in self.order if n.kind == "op")
        self._plans: dict[tuple, _Plan] = {}
        self.last: _Plan | None = None
        if not self.symbolic_dims:  # fixed shapes: compile now (errors surface here, the graph is available)
            self.last = self._plans[()] = self._plan({})

    @staticmethod
    def _describe(n: SymNode) -> str:
        return f"{n.name}: {n.dtype.name}{_shape_str(n.sym_shape())}"

    def _resolve(self, n: SymNode) -> tuple:
        if n.spec is not None:
            if n.spec[0] == "bad":
                raise ShapeError(f"compile: {n.spec[1]}")
            return n.spec
        t = n.alive()
        if t is not None:
            return ("live", t)
        a = n.array
        if a.base is not None or not a.flags.c_contiguous:
            a = np.ascontiguousarray(a).copy()
        return ("const", a)

    # -- specialization
    def _plan(self, sizes: dict[str, int]) -> _Plan:
        from .compile import build_plan
        t0 = time.perf_counter()
        g = Graph(self.name)
        m: dict[int, Any] = {}
        for k, n in enumerate(self.in_nodes):
            shape = tuple(sizes[d] if isinstance(d, str) else d for d in n.dims)
            m[id(n)] = g.add_input(shape, n.dtype, n.device, n.name, k)
        where = ", ".join(f"{k}={v}" for k, v in sizes.items())
        for n in self.order:
            if n.kind == "detach":
                m[id(n)] = m[id(n.inputs[0])]
                continue
            if n.kind == "external":
                r = self.resolved[id(n)]
                if r[0] == "live":
                    m[id(n)] = g.add_live(r[1], n.name)
                    continue
                if r[0] == "const":
                    arr = r[1]
                elif r[0] == "scalar":
                    arr = np.asarray(_eval(r[1], sizes), dtype=n.dtype.np)
                else:  # fill
                    value, shape = _instantiate(r[1], sizes), _instantiate(r[2], sizes)
                    if any(s < 0 for s in shape):
                        raise ShapeError(f"{self.name}: a constant of shape {_shape_str(n.shape)} gets the negative "
                                         f"shape {shape} for {where}")
                    arr = np.full(shape, value, dtype=n.dtype.np)
                m[id(n)] = g.add_const(arr, n.dtype, n.device, n.name)
                continue
            attrs = _instantiate(n.spec, sizes) if n.spec is not None else n.attrs
            if n.spec is not None and n.op.name in _SLICE_OPS and "key" in attrs:
                attrs = {**attrs, "key": _clamp_key(attrs["key"], m[id(n.inputs[0])].shape, n.op.name, where)}
            try:
                m[id(n)] = g.make(n.op, [m[id(i)] for i in n.inputs], attrs)
            except (ShapeError, DTypeError) as e:
                raise type(e)(f"{self.name}: specializing the graph for {where}: {e}\n(the graph was built with "
                              f"{n.op.name} on shapes {', '.join(_shape_str(i.shape) for i in n.inputs)}; a size "
                              "computed in a way the symbolic API cannot follow was fixed at build time -- see "
                              "ember.graph.symbolic's docstring)") from None
        g.outputs = [m[id(n)] for n in self.out_nodes]
        t1 = time.perf_counter()
        graph, ctx, records, executor = build_plan(g, self.memory_budget, self.fuse)
        return _Plan(dict(sizes), g, graph, executor, ctx, records, (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3)

    # -- calling
    def _bind(self, args: tuple, kwargs: dict) -> list[Any]:
        fname = f"{self.name}()"
        if len(args) > len(self.in_nodes):
            raise TypeError(f"{fname} takes {len(self.in_nodes)} input(s) ({', '.join(self.names)}), got {len(args)}")
        values: list[Any] = list(args) + [_MISSING] * (len(self.in_nodes) - len(args))
        for key, v in kwargs.items():
            if key not in self.names:
                raise TypeError(f"{fname} got an unexpected input {key!r}; its inputs are {self.names}")
            k = self.names.index(key)
            if values[k] is not _MISSING:
                raise TypeError(f"{fname} got input {key!r} twice (by position and by name)")
            values[k] = v
        missing = [self.names[k] for k, v in enumerate(values) if v is _MISSING]
        if missing:
            raise TypeError(f"{fname} is missing input(s) {missing}")
        return values

    def _arrays(self, values: list[Any]) -> tuple[list[np.ndarray], dict[str, int]]:
        arrays = []
        sizes: dict[str, int] = {}
        source: dict[str, str] = {}
        for n, v in zip(self.in_nodes, values):
            what = f"{self.name}: input {n.name!r}"
            if isinstance(v, Tensor):
                if _is_symbolic(v):
                    raise TypeError(f"{what} got a symbolic tensor; pass an array or a concrete tensor")
                if v.device.type != "cpu":
                    raise DeviceError(f"{what} is on {v.device}; compiled symbolic functions run on the CPU")
                a, given = v.data, v.dtype
            elif isinstance(v, np.ndarray):
                a = v
                try:
                    given = _dt.from_numpy_dtype(v.dtype)
                except Exception:
                    raise DTypeError(f"{what} expects {n.dtype.name}, got an array of NumPy dtype {v.dtype}") from None
            else:
                a = np.asarray(v)
                if a.dtype == object or not np.can_cast(a.dtype, n.dtype.np, casting="same_kind"):
                    raise DTypeError(f"{what} expects {n.dtype.name}, got {type(v).__name__} of dtype {a.dtype}")
                a = a.astype(n.dtype.np)
                given = n.dtype
            if given is not n.dtype:
                raise DTypeError(f"{what} expects dtype {n.dtype.name}, got {given.name} (convert it first, "
                                 f"e.g. .astype(np.{n.dtype.np.name}))")
            expected = _shape_str(n.sym_shape())
            if a.ndim != len(n.dims):
                raise ShapeError(f"{what} expects a {len(n.dims)}-d array of shape {expected}, got shape {a.shape}")
            for axis, (d, s) in enumerate(zip(n.dims, a.shape)):
                if isinstance(d, str):
                    if d in sizes and sizes[d] != s:
                        raise ShapeError(f"{what} has shape {a.shape}, but its dimension {axis} is the symbolic size "
                                         f"{d!r}, which is {sizes[d]} in {source[d]}")
                    sizes[d] = s
                    source.setdefault(d, f"input {n.name!r}")
                elif d != s:
                    raise ShapeError(f"{what} expects shape {expected}, got {a.shape}: dimension {axis} must be {d}")
            arrays.append(a)
        return arrays, sizes

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from ..tensor import _make
        arrays, sizes = self._arrays(self._bind(args, kwargs))
        key = tuple(sizes[d] for d in self.symbolic_dims)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plan({d: sizes[d] for d in self.symbolic_dims})
            self._plans[key] = plan
        self.last = plan
        out = plan.executor.run(arrays)
        plan.runs += 1
        tensors = [_make(a, n.dtype, n.device) for a, n in zip(out, plan.graph.outputs)]
        return self._structure(tensors) if self._structure is not None else tensors[0]

    # -- introspection
    @property
    def graph(self) -> Graph:
        """The optimized graph of the latest call (available right away when no input has a symbolic size)."""
        if self.last is None:
            raise TraceError(f"{self.name}: its inputs have symbolic size(s) {self.symbolic_dims}; call it once "
                             "(the graph is specialized per concrete shapes) before asking for its graph")
        return self.last.graph

    @property
    def signatures(self) -> list[dict[str, int]]:
        """The symbolic sizes of every compiled specialization."""
        return [p.sizes for p in self._plans.values()]

    def explain(self, file: Any = None) -> str:
        """What the graph is, what each pass did and the memory plan, for the latest specialization."""
        head = (f"ember.graph.compile({self.name}): {self.op_count} symbolic op node(s), inputs "
                f"{', '.join(self._describe(n) for n in self.in_nodes)}, {len(self.out_nodes)} output(s)")
        p = self.last
        if p is None:
            text = head + "\n  not specialized yet: call it with arrays first"
            print(text, file=file or sys.stdout)
            return text
        from .compile import report_lines
        g, mem = p.graph, p.ctx.memory
        where = ", ".join(f"{k}={v}" for k, v in p.sizes.items()) or "fixed shapes"
        lines = [head,
                 f"  specialized for {where} ({len(self._plans) or 1} signature(s) compiled): {p.raw.count('op')} op "
                 f"node(s), {p.raw.count('live')} live tensor(s), {p.raw.count('const')} constant(s)"]
        lines += report_lines(g, p.records, mem)
        lines.append(f"  compile time: {p.compile_ms:.1f} ms (passes and plan) + {p.build_ms:.1f} ms specializing")
        text = "\n".join(lines)
        print(text, file=file or sys.stdout)
        return text

    def __repr__(self) -> str:
        return (f"SymbolicFunction({self.name}: {', '.join(self._describe(n) for n in self.in_nodes)} -> "
                f"{len(self.out_nodes)} output(s), {len(self._plans)} specialization(s))")


_MISSING = object()
