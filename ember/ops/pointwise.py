"""Pointwise primitives: unary, binary, ternary and casts.

Each op is a few lines: an ``infer`` built by a shared helper (broadcasting and
dtype rules live in ``_shape`` and ``dtypes``), a NumPy/CuPy kernel, a ``vjp``
written in Ember ops, and a C expression for the fusing code generator.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import dtypes as _dt
from ..errors import DTypeError
from ..tensor import Tensor, _make
from ._shape import broadcast_shapes
from .registry import Op, apply, composite

# ----------------------------------------------------------------------------- operand preparation


def _weak_array(x: Any, np_dtype: np.dtype) -> np.ndarray:
    """A Python number as a 0-d array of ``np_dtype``; out-of-range integers wrap, as in PyTorch."""
    try:
        return np.asarray(x, dtype=np_dtype)
    except OverflowError:
        return np.asarray(x).astype(np_dtype)


def _scalar_tensor(x: Any, dtype: _dt.DType, device: Any) -> Tensor:
    from ..device import get_backend
    arr = _weak_array(x, dtype.np)
    return _make(arr if device.type == "cpu" else get_backend(device).asarray(arr), dtype, device)


def promote(name: str, *args: Any, floating: bool = False) -> list[Tensor]:
    """Turn operands into tensors of one dtype: weak Python scalars, promotion per ``dtypes``.

    With ``floating``, integer/bool results become the default float dtype (true division, exp, ...).
    """
    tensors = [a for a in args if isinstance(a, Tensor)]
    if len(tensors) == len(args):
        dtype = tensors[0].dtype
        if all(t.dtype is dtype for t in tensors) and (not floating or dtype.category == _dt.FLOATING):
            return list(args)
    cats = []
    for a in args:
        if not isinstance(a, Tensor):
            if not isinstance(a, (int, float, bool, np.number, np.bool_)):
                raise TypeError(f"{name}: unsupported operand of type {type(a).__name__}; "
                                "expected a Tensor or a Python number")
            cats.append(_dt.scalar_category(a))
    dtype = _dt.result_type([t.dtype for t in tensors], cats)
    if floating and dtype.category != _dt.FLOATING:
        dtype = _dt.get_default_dtype()
    device = tensors[0].device if tensors else None
    from ..device import to_device
    device = to_device(device)
    return [(cast(a, dtype) if a.dtype is not dtype else a) if isinstance(a, Tensor)
            else _scalar_tensor(a, dtype, device) for a in args]


# ----------------------------------------------------------------------------- infer helpers

def _same_dtype(name: str, inputs: tuple) -> _dt.DType:
    d = inputs[0].dtype
    for t in inputs[1:]:
        if t.dtype is not d:
            raise DTypeError(f"{name}: dtypes differ: {', '.join(t.dtype.name for t in inputs)} "
                             "(call through ember.{name} to promote them)")
    return d


def _infer_map(name: str, arity: int, out_dtype: _dt.DType | None = None, floating: bool = False):
    """The shape/dtype rule of a pointwise op: inputs share a dtype, shapes broadcast."""
    def infer_unary(x: Tensor, **_: Any) -> tuple:
        d = x.dtype
        if floating and d.category != _dt.FLOATING:
            raise DTypeError(f"{name}: expected a floating tensor, got {d.name}")
        return x.data.shape, out_dtype or d

    def infer_binary(a: Tensor, b: Tensor) -> tuple:
        if a.dtype is not b.dtype:
            _same_dtype(name, (a, b))
        sa, sb = a.data.shape, b.data.shape
        if sa == sb or not sb:
            return sa, out_dtype or a.dtype
        return (sb if not sa else broadcast_shapes(name, sa, sb)), out_dtype or a.dtype

    return infer_unary if arity == 1 else infer_binary


def _quiet(f):
    """Run a NumPy kernel without warnings for inf/nan results (PyTorch does not warn either)."""
    def impl(xp: Any, *arrays: Any, **attrs: Any) -> Any:
        with np.errstate(all="ignore"):
            return f(xp, *arrays, **attrs)
    return impl


def _named_kernel(kernel: str, arity: int) -> Any:
    """``xp.<kernel>``, looked up once for NumPy (the hot path) and per call for other backends."""
    ufunc = getattr(np, kernel)
    if arity == 1:
        return lambda xp, x: ufunc(x) if xp is np else getattr(xp, kernel)(x)
    return lambda xp, a, b: ufunc(a, b) if xp is np else getattr(xp, kernel)(a, b)


def _unary(name: str, kernel: Any, vjp: Any = None, c_expr: str | None = None, floating: bool = True,
           save_inputs: bool = True, save_output: bool = False, out_dtype: _dt.DType | None = None,
           quiet: bool = False, linear: bool = False) -> Op:
    impl = _named_kernel(kernel, 1) if isinstance(kernel, str) else kernel
    op = Op(name, infer=_infer_map(name, 1, out_dtype, floating), impl=_quiet(impl) if quiet else impl, vjp=vjp,
            c_expr=c_expr, save_inputs=save_inputs, save_output=save_output, elementwise=vjp is not None,
            linear=linear)
    op.ufunc = kernel if isinstance(kernel, str) else None
    return op


def _binary(name: str, kernel: Any, vjp: Any = None, c_expr: str | None = None, out_dtype: _dt.DType | None = None,
            save_inputs: bool = True, save_output: bool = False, quiet: bool = False,
            linear: bool = False) -> Op:
    impl = _named_kernel(kernel, 2) if isinstance(kernel, str) else kernel
    op = Op(name, infer=_infer_map(name, 2, out_dtype), impl=_quiet(impl) if quiet else impl, vjp=vjp,
            c_expr=c_expr, save_inputs=save_inputs, save_output=save_output,
            elementwise=vjp is not None and not linear, linear=linear)
    op.ufunc = kernel if isinstance(kernel, str) else None
    return op


def _zeros(g: Tensor) -> tuple:
    from .creation import zeros_like
    return (zeros_like(g),)


# ----------------------------------------------------------------------------- unary primitives

NEG = _unary("neg", "negative", lambda ctx, g: (-g,), "(-{0})", floating=False, save_inputs=False, linear=True)
ABS = _unary("abs", "abs", lambda ctx, g: (g * sign(ctx.inputs[0]),), "fabs({0})", floating=False)
SIGN = _unary("sign", "sign", lambda ctx, g: _zeros(g), "(({0} > 0) - ({0} < 0))", floating=False,
              save_inputs=False)
EXP = _unary("exp", "exp", lambda ctx, g: (g * ctx.out,), "exp({0})", save_inputs=False, save_output=True,
             quiet=True)
LOG = _unary("log", "log", lambda ctx, g: (g / ctx.inputs[0],), "log({0})", quiet=True)
LOG1P = _unary("log1p", "log1p", lambda ctx, g: (g / (ctx.inputs[0] + 1),), "log1p({0})", quiet=True)
EXPM1 = _unary("expm1", "expm1", lambda ctx, g: (g * (ctx.out + 1),), "expm1({0})", save_inputs=False,
               save_output=True, quiet=True)
SQRT = _unary("sqrt", "sqrt", lambda ctx, g: (g * 0.5 / ctx.out,), "sqrt({0})", save_inputs=False,
              save_output=True, quiet=True)
RSQRT = _unary("rsqrt", _quiet(lambda xp, x: 1 / xp.sqrt(x)),
               lambda ctx, g: (g * -0.5 * ctx.out / ctx.inputs[0],), "(1 / sqrt({0}))", save_output=True)
SIN = _unary("sin", "sin", lambda ctx, g: (g * cos(ctx.inputs[0]),), "sin({0})")
COS = _unary("cos", "cos", lambda ctx, g: (-g * sin(ctx.inputs[0]),), "cos({0})")
TANH = _unary("tanh", "tanh", lambda ctx, g: (g * (1 - ctx.out * ctx.out),), "tanh({0})", save_inputs=False,
              save_output=True)


def _sigmoid_kernel(xp: Any, x: Any) -> Any:
    # 1/(1+exp(-x)) overflows for very negative x; this form is exact and never warns.
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


SIGMOID = _unary("sigmoid", _sigmoid_kernel, lambda ctx, g: (g * ctx.out * (1 - ctx.out),),
                 "(1 / (1 + exp(-{0})))", save_inputs=False, save_output=True)
# The mask as compare + cast: measured faster than sign(out) (NumPy's float sign is a slow loop).
RELU = _unary("relu", lambda xp, x: xp.maximum(x, 0),
              lambda ctx, g: (g * cast(ctx.out > 0, g.dtype),), "({0} > 0 ? {0} : 0)", floating=False,
              save_inputs=False, save_output=True)


def _erf_kernel(xp: Any, x: Any) -> Any:
    if xp is np:
        return _erf_numpy(x)
    import cupyx.scipy.special
    return cupyx.scipy.special.erf(x)


_ERFC_C = (5.64188496988670089e-1, 8.88314979438837594, 6.61191906371416295e+1, 2.98635138197400131e+2,
           8.81952221241769090e+2, 1.71204761263407058e+3, 2.05107837782607147e+3)
_ERFC_D = (1.57449261107098347e+1, 1.17693950891312499e+2, 5.37181101862009858e+2, 1.62138957456669019e+3,
           3.29079923573345963e+3, 4.36261909014324716e+3, 3.43936767414372164e+3)


def _erf_numpy(x: np.ndarray) -> np.ndarray:
    # W. J. Cody's rational approximations (as in most libm erf implementations), vectorized:
    # |x| < 0.5: erf = x * P(x^2)/Q(x^2); otherwise erf = 1 - erfc with erfc = exp(-x^2) * R(|x|)/S(|x|).
    xd = x.astype(np.float64)
    a = np.abs(xd)
    out = np.empty_like(xd)
    small = a < 0.5
    z = xd[small] ** 2
    p = ((((0.185777706184603153 * z + 3.16112374387056560) * z + 113.864154151050156) * z
          + 377.485237685302021) * z + 3209.37758913846947)
    q = ((((z + 23.6012909523441209) * z + 244.024637934444173) * z + 1282.61652607737228) * z
         + 2844.23683343917062)
    out[small] = xd[small] * p / q
    mid = (~small) & (a < 4.0)
    y = a[mid]
    num = 2.15311535474403846e-8 * y
    den = y
    for c, d in zip(_ERFC_C, _ERFC_D):
        num = (num + c) * y
        den = (den + d) * y
    p, q = num + 1.23033935479799725e+3, den + 1.23033935480374942e+3
    out[mid] = np.sign(xd[mid]) * (1 - np.exp(-y * y) * p / q)
    big = a >= 4.0
    y = a[big]
    z = 1 / (y * y)
    p = ((((1.63153871373020978e-2 * z + 3.05326634961232344e-1) * z + 3.60344899949804439e-1) * z
          + 1.25781726111229246e-1) * z + 1.60837851487422766e-2) * z + 6.58749161529837803e-4
    q = ((((z + 2.56852019228982242) * z + 1.87295284992346725) * z + 5.27905102951428412e-1) * z
         + 6.05183413124413191e-2) * z + 2.33520497626869185e-3
    r = (1 / math.sqrt(math.pi) - z * p / q) / y
    out[big] = np.sign(xd[big]) * (1 - np.exp(-y * y) * r)
    out[np.isnan(xd)] = np.nan  # no branch above takes NaN
    return out.astype(x.dtype, copy=False)


_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
ERF = _unary("erf", _erf_kernel,
             lambda ctx, g: (g * _TWO_OVER_SQRT_PI * exp(-(ctx.inputs[0] * ctx.inputs[0])),), "erf({0})")
FLOOR = _unary("floor", "floor", lambda ctx, g: _zeros(g), "floor({0})", floating=False, save_inputs=False)
CEIL = _unary("ceil", "ceil", lambda ctx, g: _zeros(g), "ceil({0})", floating=False, save_inputs=False)
ROUND = _unary("round", "rint", lambda ctx, g: _zeros(g), "rint({0})", floating=False, save_inputs=False)
LOGICAL_NOT = _unary("logical_not", "logical_not", None, "(!{0})", floating=False, out_dtype=_dt.bool_)
ISNAN = _unary("isnan", "isnan", None, "isnan({0})", floating=False, out_dtype=_dt.bool_)
ISINF = _unary("isinf", "isinf", None, "isinf({0})", floating=False, out_dtype=_dt.bool_)
CLONE = _unary("clone", lambda xp, x: x.copy(), lambda ctx, g: (g,), "{0}", floating=False, save_inputs=False,
               linear=True)


def _cast_infer(x: Tensor, dtype: _dt.DType) -> tuple:
    return x.shape, dtype


CAST = Op("cast", infer=_cast_infer, impl=lambda xp, x, dtype: x.astype(dtype.np),
          vjp=lambda ctx, g: (g,), c_expr="({T}){0}", save_inputs=False, linear=True)

# ----------------------------------------------------------------------------- binary primitives


def _max_vjp(ctx: Any, g: Tensor, sel: Any) -> tuple:
    a, b = ctx.inputs
    wa = sel(a, b).to(g.dtype) + (a == b).to(g.dtype) * 0.5  # ties split the gradient, as in PyTorch
    return g * wa, g * (1 - wa)


def _pow_vjp(ctx: Any, g: Tensor) -> tuple:
    a, b = ctx.inputs
    ga = g * b * pow(a, b - 1)
    gb = where(a > 0, g * ctx.out * log(where(a > 0, a, 1)), 0) if b.requires_grad else None
    return ga, gb


def _pow_jvp(ctx: Any, ta: Tensor | None, tb: Tensor | None) -> Tensor:
    a, b = ctx.inputs
    out = None
    if ta is not None:
        out = ta * b * pow(a, b - 1)
    if tb is not None:
        t = where(a > 0, tb * ctx.out * log(where(a > 0, a, 1)), 0)
        out = t if out is None else out + t
    return out


ADD = _binary("add", "add", lambda ctx, g: (g, g), "({0} + {1})", save_inputs=False, linear=True)
SUB = _binary("sub", "subtract", lambda ctx, g: (g, -g), "({0} - {1})", save_inputs=False, linear=True)
MUL = _binary("mul", "multiply", lambda ctx, g: (g * ctx.inputs[1], g * ctx.inputs[0]), "({0} * {1})")
DIV = _binary("div", "divide", lambda ctx, g: (g / ctx.inputs[1], -g * ctx.out / ctx.inputs[1]), "({0} / {1})",
              save_output=True, quiet=True)
POW = _binary("pow", "power", _pow_vjp, "pow({0}, {1})", save_output=True, quiet=True)
POW._jvp = _pow_jvp
MAXIMUM = _binary("maximum", "maximum", lambda ctx, g: _max_vjp(ctx, g, gt), "({0} > {1} ? {0} : {1})")
MINIMUM = _binary("minimum", "minimum", lambda ctx, g: _max_vjp(ctx, g, lt), "({0} < {1} ? {0} : {1})")
FLOOR_DIVIDE = _binary("floor_divide", "floor_divide", lambda ctx, g: (_zeros(g)[0], _zeros(g)[0]),
                       "floor({0} / {1})", save_inputs=False, quiet=True)
REMAINDER = _binary("remainder", "remainder",
                    lambda ctx, g: (g, -g * floor_divide(ctx.inputs[0], ctx.inputs[1])),
                    "({0} - floor({0} / {1}) * {1})", quiet=True)
_CMP = {}
for _name, _kernel, _sym in (("eq", "equal", "=="), ("ne", "not_equal", "!="), ("lt", "less", "<"),
                             ("le", "less_equal", "<="), ("gt", "greater", ">"), ("ge", "greater_equal", ">=")):
    _CMP[_name] = _binary(_name, _kernel, None, f"({{0}} {_sym} {{1}})", out_dtype=_dt.bool_)
for _name, _sym in (("logical_and", "&&"), ("logical_or", "||"), ("logical_xor", "!=")):
    _CMP[_name] = _binary(_name, _name, None, f"(!!{{0}} {_sym} !!{{1}})", out_dtype=_dt.bool_)


for _name, _kernel, _sym in (("bitwise_and", "bitwise_and", "&"), ("bitwise_or", "bitwise_or", "|"),
                             ("bitwise_xor", "bitwise_xor", "^")):
    _CMP[_name] = _binary(_name, _kernel, None, f"({{0}} {_sym} {{1}})")
BITWISE_NOT = _unary("bitwise_not", "invert", None, "(~{0})", floating=False)


def _where_infer(c: Tensor, a: Tensor, b: Tensor) -> tuple:
    if c.dtype is not _dt.bool_:
        raise DTypeError(f"where: condition must be bool, got {c.dtype.name}")
    return broadcast_shapes("where", c.shape, a.shape, b.shape), _same_dtype("where", (a, b))


def _where_vjp(ctx: Any, g: Tensor) -> tuple:
    c = ctx.inputs[0]
    return None, where(c, g, 0), where(c, 0, g)


WHERE = Op("where", infer=_where_infer, impl=lambda xp, c, a, b: xp.where(c, a, b), vjp=_where_vjp,
           c_expr="({0} ? {1} : {2})", linear=True, diff_args=(1, 2))

# ----------------------------------------------------------------------------- public functions


# Python scalar types that keep a tensor's dtype unchanged, by the tensor's category (weak scalars).
_WEAK_OK = {_dt.FLOATING: (float, int), _dt.INTEGER: (int,)}


def _u(op: Op, floating: bool = True):
    def f(x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"{op.name}: expected a Tensor, got {type(x).__name__}")
        if floating and x.dtype.category != _dt.FLOATING:
            x = cast(x, _dt.get_default_dtype())
        return apply(op, x)
    f.__name__ = f.__qualname__ = op.name
    f.__doc__ = f"Elementwise ``{op.name}``."
    return f


def _b(op: Op, floating: bool = False):
    def f(a: Any, b: Any) -> Tensor:
        if type(a) is Tensor:
            if type(b) is Tensor:
                if a.dtype is not b.dtype or (floating and a.dtype.category != _dt.FLOATING):
                    a, b = promote(op.name, a, b, floating=floating)
            elif type(b) in _WEAK_OK.get(a.dtype.category, ()) and a.device.type == "cpu" and (
                    not floating or a.dtype.category == _dt.FLOATING):
                b = _make(_weak_array(b, a.dtype.np), a.dtype, a.device)  # fast path: weak scalar
            else:
                a, b = promote(op.name, a, b, floating=floating)
        elif type(b) is Tensor and type(a) in _WEAK_OK.get(b.dtype.category, ()) and b.device.type == "cpu" and (
                not floating or b.dtype.category == _dt.FLOATING):
            a = _make(_weak_array(a, b.dtype.np), b.dtype, b.device)
        else:
            a, b = promote(op.name, a, b, floating=floating)
        return apply(op, a, b)
    f.__name__ = f.__qualname__ = op.name
    f.__doc__ = f"Elementwise ``{op.name}`` with broadcasting and dtype promotion."
    return f


def _integral(op: Op):
    """Bitwise ops: integer and bool tensors only (on bool they are the logical ops)."""
    inner = _u(op, floating=False) if op is BITWISE_NOT else _b(op)

    def f(*args: Any) -> Tensor:
        for a in args:
            if isinstance(a, Tensor) and a.dtype.is_floating_point:
                raise DTypeError(f"{op.name}: expected integer or bool tensors, got {a.dtype.name}")
        return inner(*args)
    f.__name__ = f.__qualname__ = op.name
    f.__doc__ = f"Elementwise ``{op.name}`` of integer or bool tensors."
    return f


def _neg(x: Tensor) -> Tensor:
    if isinstance(x, Tensor) and x.dtype.is_bool:
        raise DTypeError("neg: negation of a bool tensor is not supported; use ~x or logical_not(x)")
    return _u(NEG, floating=False)(x)


neg = _neg
neg.__doc__ = "Elementwise negation."
abs = _u(ABS, floating=False)
sign = _u(SIGN, floating=False)
exp = _u(EXP)
log = _u(LOG)
log1p = _u(LOG1P)
expm1 = _u(EXPM1)
sqrt = _u(SQRT)
rsqrt = _u(RSQRT)
sin = _u(SIN)
cos = _u(COS)
tanh = _u(TANH)
sigmoid = _u(SIGMOID)
relu = _u(RELU, floating=False)
erf = _u(ERF)
floor = _u(FLOOR, floating=False)
ceil = _u(CEIL, floating=False)
round = _u(ROUND, floating=False)
logical_not = _u(LOGICAL_NOT, floating=False)
isnan = _u(ISNAN, floating=False)
isinf = _u(ISINF, floating=False)
clone = _u(CLONE, floating=False)

add = _b(ADD)
sub = _b(SUB)
mul = _b(MUL)
div = _b(DIV, floating=True)
pow = _b(POW)
maximum = _b(MAXIMUM)
minimum = _b(MINIMUM)
floor_divide = _b(FLOOR_DIVIDE)
remainder = _b(REMAINDER)
eq, ne, lt, le, gt, ge = (_b(_CMP[n]) for n in ("eq", "ne", "lt", "le", "gt", "ge"))
logical_and, logical_or, logical_xor = (_b(_CMP[n]) for n in ("logical_and", "logical_or", "logical_xor"))
bitwise_and, bitwise_or, bitwise_xor = (_integral(_CMP[n]) for n in ("bitwise_and", "bitwise_or", "bitwise_xor"))
bitwise_not = _integral(BITWISE_NOT)
true_divide = divide = div
multiply = mul
subtract = sub
negative = neg
fmod = remainder


def cast(x: Tensor, dtype: Any) -> Tensor:
    """``x`` converted to ``dtype`` (differentiable between floating dtypes)."""
    dtype = _dt.to_dtype(dtype)
    return x if x.dtype is dtype else apply(CAST, x, dtype=dtype)


def where(condition: Any, a: Any, b: Any) -> Tensor:
    """Elementwise ``a if condition else b`` with broadcasting; ``a``/``b`` may be Python numbers."""
    if not isinstance(condition, Tensor):
        raise TypeError(f"where: condition must be a bool Tensor, got {type(condition).__name__}")
    if condition.dtype is not _dt.bool_:
        condition = cast(condition, _dt.bool_)
    a, b = promote("where", a, b)
    if a.device != condition.device and a.ndim == 0:
        a = a.to(condition.device)
    return apply(WHERE, condition, a, b)


@composite
def isfinite(x: Tensor) -> Tensor:
    return logical_not(logical_or(isnan(x), isinf(x)))


@composite
def reciprocal(x: Tensor) -> Tensor:
    return div(1, x)


@composite
def square(x: Tensor) -> Tensor:
    return mul(x, x)


@composite
def log2(x: Tensor) -> Tensor:
    return log(x) * (1 / math.log(2))


@composite
def exp2(x: Tensor) -> Tensor:
    return pow(2.0, x) if x.dtype.is_floating_point else pow(2.0, cast(x, _dt.get_default_dtype()))


@composite
def clamp(x: Tensor, min: Any = None, max: Any = None) -> Tensor:
    """Clamp into ``[min, max]``; the gradient passes where ``min <= x <= max`` (as in PyTorch)."""
    if min is None and max is None:
        raise ValueError("clamp: at least one of min and max must be given")
    out = x
    if min is not None:
        out = where(lt(out, min), min if not isinstance(min, Tensor) else cast(min, x.dtype), out)
    if max is not None:
        out = where(gt(out, max), max if not isinstance(max, Tensor) else cast(max, x.dtype), out)
    return out


clip = clamp


@composite
def masked_fill(x: Tensor, mask: Tensor, value: Any) -> Tensor:
    """``x`` with ``value`` where ``mask`` is True."""
    return where(mask, value, x)
