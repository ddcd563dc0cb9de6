"""Reductions: sum, amax/amin, argmax/argmin, prod, all/any primitives and their composites."""

from __future__ import annotations

import builtins
from collections import namedtuple
from typing import Any

import numpy as np

from .. import dtypes as _dt
from ..codegen import index_kernels as _ik
from ..errors import DTypeError
from ..tensor import Tensor
from ._shape import normalize_dim, normalize_dims
from .registry import Op, apply, composite

ValuesIndices = namedtuple("ValuesIndices", ["values", "indices"])


def _reduced_shape(shape: tuple, axes: tuple, keepdim: bool) -> tuple:
    if len(axes) == len(shape):
        return (1,) * len(shape) if keepdim else ()
    if keepdim:
        return tuple(1 if i in axes else n for i, n in enumerate(shape))
    return tuple(n for i, n in enumerate(shape) if i not in axes)


def _infer(name: str, out_dtype: Any = None, nonempty: bool = False):
    def infer(x: Tensor, axes: tuple, keepdim: bool) -> tuple:
        shape = x.data.shape
        if nonempty and 0 in shape and builtins.any(shape[a] == 0 for a in axes):
            from ..errors import ShapeError
            raise ShapeError(f"{name}: cannot reduce over an empty dimension (shape {shape}, dims {axes})")
        if not keepdim and len(axes) == len(shape):
            return (), out_dtype or x.dtype
        return _reduced_shape(shape, axes, keepdim), out_dtype or x.dtype
    return infer


def _keep(g: Tensor, in_shape: tuple, axes: tuple, keepdim: bool) -> Tensor:
    """``g`` reshaped so the reduced axes are size 1 (ready to broadcast against the input)."""
    from .movement import reshape
    return g if keepdim else reshape(g, _reduced_shape(in_shape, axes, True))


def _sum_vjp(ctx: Any, g: Tensor) -> tuple:
    from .movement import expand
    in_shape = ctx.in_meta[0][0]
    return (expand(_keep(g, in_shape, ctx.attrs["axes"], ctx.attrs["keepdim"]), in_shape),)


def _extreme_vjp(ctx: Any, g: Tensor) -> tuple:
    # The gradient is shared evenly among ties, as PyTorch's amax/amin do.
    x = ctx.inputs[0]
    axes, keepdim = ctx.attrs["axes"], ctx.attrs["keepdim"]
    mask = (x == _keep(ctx.out, x.shape, axes, keepdim)).to(g.dtype)
    count = sum(mask, dim=axes, keepdim=True)
    return (_keep(g, x.shape, axes, keepdim) * mask / count,)


def _extreme_jvp(ctx: Any, t: Tensor) -> Tensor:
    x = ctx.inputs[0]
    axes, keepdim = ctx.attrs["axes"], ctx.attrs["keepdim"]
    mask = (x == _keep(ctx.out, x.shape, axes, keepdim)).to(t.dtype)
    return sum(t * mask, dim=axes, keepdim=keepdim) / sum(mask, dim=axes, keepdim=keepdim)


def _prod_vjp(ctx: Any, g: Tensor) -> tuple:
    # Exact with zeros: d prod / d x_i = prod of the other entries.
    from .pointwise import where
    x = ctx.inputs[0]
    axes, keepdim = ctx.attrs["axes"], ctx.attrs["keepdim"]
    gk = _keep(g, x.shape, axes, keepdim)
    zero = x == 0
    nzeros = sum(zero.to(_dt.int64), dim=axes, keepdim=True)
    safe = where(zero, 1, x)
    prod_nonzero = prod(safe, dim=axes, keepdim=True)
    grad = where(nzeros == 0, prod_nonzero / safe, where((nzeros == 1) & zero, prod_nonzero, 0))
    return (gk * grad,)


def _prod_jvp(ctx: Any, t: Tensor) -> Tensor:
    from .creation import ones_like
    axes, keepdim = ctx.attrs["axes"], ctx.attrs["keepdim"]
    return sum(t * _prod_vjp(ctx, ones_like(ctx.out))[0], dim=axes, keepdim=keepdim)


def _sum_impl(xp: Any, x: Any, axes: tuple, keepdim: bool) -> Any:
    if xp is np:  # the ufunc method skips np.sum's Python-level dispatch
        if x.dtype == np.float32 and x.ndim - 1 not in axes and np.prod([x.shape[a] for a in axes]) >= 4096:
            # NumPy sums pairwise only along the innermost axis; over outer axes it adds row after row in
            # float32, and the error grows with the row count (a bias gradient over 32k rows: 1e-4
            # relative). Accumulate those in double, as the fused kernels do.
            return np.add.reduce(x, axis=axes, keepdims=keepdim, dtype=np.float64).astype(np.float32)
        return np.add.reduce(x, axis=axes, keepdims=keepdim)
    return xp.sum(x, axis=axes, keepdims=keepdim)


SUM = Op("sum", infer=_infer("sum"), impl=_sum_impl,
         vjp=_sum_vjp, save_inputs=False, linear=True)
AMAX = Op("amax", infer=_infer("amax", nonempty=True),
          impl=lambda xp, x, axes, keepdim: xp.amax(x, axis=axes, keepdims=keepdim),
          vjp=_extreme_vjp, jvp=_extreme_jvp, save_output=True)
AMIN = Op("amin", infer=_infer("amin", nonempty=True),
          impl=lambda xp, x, axes, keepdim: xp.amin(x, axis=axes, keepdims=keepdim),
          vjp=_extreme_vjp, jvp=_extreme_jvp, save_output=True)
PROD = Op("prod", infer=_infer("prod"), impl=lambda xp, x, axes, keepdim: xp.prod(x, axis=axes, keepdims=keepdim),
          vjp=_prod_vjp, jvp=lambda ctx, t: _prod_jvp(ctx, t))
ALL = Op("all", infer=_infer("all", _dt.bool_),
         impl=lambda xp, x, axes, keepdim: xp.all(x, axis=axes, keepdims=keepdim))
ANY = Op("any", infer=_infer("any", _dt.bool_),
         impl=lambda xp, x, axes, keepdim: xp.any(x, axis=axes, keepdims=keepdim))


def _arg_infer(name: str):
    def infer(x: Tensor, axis: int | None, keepdim: bool) -> tuple:
        if x.numel() == 0 and (axis is None or x.shape[axis] == 0):
            from ..errors import ShapeError
            where = "an empty tensor" if axis is None else f"an empty dimension {axis}"
            raise ShapeError(f"{name}: cannot take the {name} over {where} (shape {x.shape})")
        if axis is None:
            return ((1,) * x.ndim if keepdim else ()), _dt.int64
        return _reduced_shape(x.shape, (axis,), keepdim), _dt.int64
    return infer


def _arg_impl(kernel: str):
    def impl(xp: Any, x: Any, axis: int | None, keepdim: bool) -> Any:
        if xp is np and axis is not None:
            out = _ik.argext(x, axis, keepdim, kernel == "argmax")
            if out is not None:
                return out
        out = getattr(xp, kernel)(x, axis=axis, keepdims=keepdim)
        return out
    return impl


ARGMAX = Op("argmax", infer=_arg_infer("argmax"), impl=_arg_impl("argmax"))
ARGMIN = Op("argmin", infer=_arg_infer("argmin"), impl=_arg_impl("argmin"))


def _check_tensor(name: str, x: Any) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(x).__name__}")


_ALL_AXES = tuple(tuple(range(n)) for n in range(8))


def _axes(name: str, dim: Any, ndim: int) -> tuple[int, ...]:
    """``dim`` (None, an int or a sequence of ints) as normalized axes. A 0-d tensor accepts
    dim 0 or -1 (as in PyTorch) and reduces over nothing."""
    if dim is None:
        return _ALL_AXES[ndim] if ndim < len(_ALL_AXES) else tuple(range(ndim))
    if type(dim) is int and -ndim <= dim < ndim:
        return (dim % ndim,)
    if dim is not None and not isinstance(dim, int):
        if isinstance(dim, np.integer):
            dim = int(dim)
        elif isinstance(dim, (tuple, list)) and builtins.all(isinstance(d, (int, np.integer)) for d in dim):
            dim = tuple(int(d) for d in dim)
        else:
            raise TypeError(f"{name}: dim must be an int, a tuple of ints or None, got {dim!r}")
    axes = normalize_dims(name, dim, ndim)
    return axes if ndim else ()


def _axis(name: str, dim: Any, ndim: int) -> int | None:
    """A single ``dim`` normalized (None for a 0-d tensor, which has no axis to index)."""
    if isinstance(dim, np.integer):
        dim = int(dim)
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise TypeError(f"{name}: dim must be an int, got {dim!r}")
    d = normalize_dim(name, dim, ndim)
    return d if ndim else None


def _reduce(op: Op, x: Tensor, dim: Any, keepdim: bool) -> Tensor:
    _check_tensor(op.name, x)
    return apply(op, x, axes=_axes(op.name, dim, x.ndim), keepdim=bool(keepdim))


def sum(x: Tensor, dim: Any = None, keepdim: bool = False, dtype: Any = None) -> Tensor:
    """Sum over ``dim`` (an int, a tuple, or None for all). Integer and bool inputs sum in int64."""
    if type(x) is not Tensor:
        _check_tensor("sum", x)
    if dtype is not None:
        x = x.to(dtype)
    elif x.dtype.category != _dt.FLOATING and x.dtype is not _dt.int64:
        x = x.to(_dt.int64)
    return apply(SUM, x, axes=_axes("sum", dim, x.ndim), keepdim=bool(keepdim))


def prod(x: Tensor, dim: Any = None, keepdim: bool = False, dtype: Any = None) -> Tensor:
    """Product over ``dim``; the gradient is exact when entries are zero. Integer and bool inputs
    multiply in int64 (as ``sum`` does, and as in PyTorch)."""
    _check_tensor("prod", x)
    if dtype is not None:
        x = x.to(dtype)
    elif not x.dtype.is_floating_point and x.dtype is not _dt.int64:
        x = x.to(_dt.int64)
    return _reduce(PROD, x, dim, keepdim)


def amax(x: Tensor, dim: Any = None, keepdim: bool = False) -> Tensor:
    """Maximum over ``dim``; ties share the gradient evenly."""
    return _reduce(AMAX, x, dim, keepdim)


def amin(x: Tensor, dim: Any = None, keepdim: bool = False) -> Tensor:
    """Minimum over ``dim``; ties share the gradient evenly."""
    return _reduce(AMIN, x, dim, keepdim)


def all(x: Tensor, dim: Any = None, keepdim: bool = False) -> Tensor:
    return _reduce(ALL, x, dim, keepdim)


def any(x: Tensor, dim: Any = None, keepdim: bool = False) -> Tensor:
    return _reduce(ANY, x, dim, keepdim)


def argmax(x: Tensor, dim: int | None = None, keepdim: bool = False) -> Tensor:
    """Index of the (first) maximum, over all elements (flattened) when ``dim`` is None."""
    _check_tensor("argmax", x)
    axis = None if dim is None else _axis("argmax", dim, x.ndim)
    return apply(ARGMAX, x, axis=axis, keepdim=bool(keepdim))


def argmin(x: Tensor, dim: int | None = None, keepdim: bool = False) -> Tensor:
    """Index of the (first) minimum, over all elements (flattened) when ``dim`` is None."""
    _check_tensor("argmin", x)
    axis = None if dim is None else _axis("argmin", dim, x.ndim)
    return apply(ARGMIN, x, axis=axis, keepdim=bool(keepdim))


def _max_min(name: str, x: Tensor, dim: Any, keepdim: bool, other: Any) -> Any:
    from . import movement, pointwise
    _check_tensor(name, x)
    if isinstance(other, Tensor):
        return (pointwise.maximum if name == "max" else pointwise.minimum)(x, other)
    if dim is None:
        return (amax if name == "max" else amin)(x)
    d = _axis(name, dim, x.ndim)
    if d is None:  # a 0-d tensor: its one element, at index 0
        from .creation import zeros
        return ValuesIndices(pointwise.clone(x), zeros((), dtype=_dt.int64, device=x.device))
    if x.shape[d] == 0:
        from ..errors import ShapeError
        raise ShapeError(f"{name}: cannot reduce over the empty dimension {d} (shape {x.shape})")
    idx = (argmax if name == "max" else argmin)(x, d, keepdim=True)
    values = movement.gather(x, d, idx)  # the gradient goes to the chosen index only, as in PyTorch
    if not keepdim:
        values, idx = movement.squeeze(values, d), movement.squeeze(idx, d)
    return ValuesIndices(values, idx)


@composite
def max(x: Tensor, dim: Any = None, keepdim: bool = False, other: Any = None) -> Any:
    """``max(x)``: the largest element; ``max(x, dim)``: ``(values, indices)`` like PyTorch;
    ``max(x, other_tensor)``: the elementwise maximum."""
    if isinstance(dim, Tensor):
        other, dim = dim, None
    return _max_min("max", x, dim, keepdim, other)


@composite
def min(x: Tensor, dim: Any = None, keepdim: bool = False, other: Any = None) -> Any:
    """``min(x)``, ``min(x, dim) -> (values, indices)``, or the elementwise minimum with a tensor."""
    if isinstance(dim, Tensor):
        other, dim = dim, None
    return _max_min("min", x, dim, keepdim, other)


def _count(name: str, x: Tensor, dim: Any) -> int:
    n = 1
    for a in _axes(name, dim, x.ndim):
        n *= x.shape[a]
    return n


def _floating(name: str, x: Tensor) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(x).__name__}")
    return x if x.dtype.is_floating_point else x.to(_dt.get_default_dtype())


@composite
def mean(x: Tensor, dim: Any = None, keepdim: bool = False) -> Tensor:
    """Arithmetic mean over ``dim``."""
    x = _floating("mean", x)
    n = _count("mean", x, dim)
    return sum(x, dim, keepdim) * (1.0 / n) if n else sum(x, dim, keepdim) / 0.0


@composite
def var(x: Tensor, dim: Any = None, keepdim: bool = False, correction: int = 1, unbiased: bool | None = None) -> Tensor:
    """Variance over ``dim`` with Bessel's ``correction`` (1 by default, as in PyTorch)."""
    if unbiased is not None:
        correction = 1 if unbiased else 0
    x = _floating("var", x)
    n = _count("var", x, dim)
    d = x - mean(x, dim, keepdim=True)
    return sum(d * d, dim, keepdim) / float(n - correction if n > correction else 0)


@composite
def std(x: Tensor, dim: Any = None, keepdim: bool = False, correction: int = 1, unbiased: bool | None = None) -> Tensor:
    """Standard deviation: ``sqrt(var(...))``."""
    _check_tensor("std", x)
    _axes("std", dim, x.ndim)  # errors name std, not var
    return var(x, dim, keepdim, correction, unbiased).sqrt()


@composite
def logsumexp(x: Tensor, dim: Any = None, keepdim: bool = False) -> Tensor:
    """``log(sum(exp(x)))`` computed stably (shifted by the maximum)."""
    from .pointwise import where
    x = _floating("logsumexp", x)
    axes = _axes("logsumexp", dim, x.ndim)
    if builtins.any(x.shape[a] == 0 for a in axes):  # an empty sum: the result is log(0) = -inf
        from .creation import zeros
        m = zeros(_reduced_shape(x.shape, axes, True), dtype=x.dtype, device=x.device)
    else:
        m = amax(x.detach(), axes, keepdim=True)
        m = where(m.isfinite(), m, 0)
    out = sum((x - m).exp(), axes, keepdim=True).log() + m
    if not keepdim:
        from .movement import reshape
        out = reshape(out, _reduced_shape(x.shape, axes, False))
    return out


def _root(s: Tensor, p: float) -> Tensor:
    """``s ** (1/p)`` whose gradient is 0 (not nan) where ``s == 0``, so the gradient of a norm at
    the zero vector is 0 as in PyTorch."""
    from .pointwise import where
    zero = s == 0
    safe = where(zero, 1, s)
    return where(zero, 0, safe.sqrt() if p == 2 else safe ** (1.0 / p))


@composite
def norm(x: Tensor, p: Any = 2, dim: Any = None, keepdim: bool = False) -> Tensor:
    """Vector p-norm over ``dim``: p = 2 (``"fro"``), 1, inf, -inf (smallest magnitude), 0 (number
    of nonzero entries) or any positive number. The gradient at the zero vector is 0."""
    x = _floating("norm", x)
    if p == "fro":
        p = 2
    if (isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)) or p != p
            or (p < 0 and p != float("-inf"))):
        raise DTypeError(f"norm: p must be a non-negative number, inf, -inf or 'fro', got {p!r}")
    p = float(p)
    if p == 2:
        return _root(sum(x * x, dim, keepdim), 2)
    if p == 1:
        return sum(x.abs(), dim, keepdim)
    if p == float("inf"):
        return amax(x.abs(), dim, keepdim)
    if p == float("-inf"):
        return amin(x.abs(), dim, keepdim)
    if p == 0:
        return sum((x != 0).to(x.dtype), dim, keepdim)
    return _root(sum(x.abs() ** p, dim, keepdim), p)


def _cumsum_vjp(ctx: Any, g: Tensor) -> tuple:
    from .movement import flip
    axis = ctx.attrs["axis"]
    return (flip(cumsum(flip(g, axis), axis), axis),)


CUMSUM = Op("cumsum", infer=lambda x, axis: (x.shape, x.dtype), impl=lambda xp, x, axis: xp.cumsum(x, axis=axis),
            vjp=_cumsum_vjp, save_inputs=False, linear=True)


def cumsum(x: Tensor, dim: int, dtype: Any = None) -> Tensor:
    """Running sum along ``dim``. Integer and bool inputs accumulate in int64."""
    _check_tensor("cumsum", x)
    if dtype is not None:
        x = x.to(dtype)
    elif not x.dtype.is_floating_point and x.dtype is not _dt.int64:
        x = x.to(_dt.int64)
    axis = _axis("cumsum", dim, x.ndim)
    if axis is None:  # 0-d: the running sum of one element is that element
        from .pointwise import clone
        return clone(x)
    return apply(CUMSUM, x, axis=axis)
