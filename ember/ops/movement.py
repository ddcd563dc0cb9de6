"""Movement primitives: reshape, permute, expand, gather/scatter-add, and the functions built on them.

Views (reshape, permute, expand, ...) are NumPy views in eager mode: no data moves,
and the result shares the input's version counter so in-place writes are tracked.
"""

from __future__ import annotations

from typing import Any

from .. import dtypes as _dt
from ..errors import DTypeError, EmberIndexError, ShapeError
from ..tensor import Tensor
from ._shape import normalize_dim
from .registry import Op, apply

# ----------------------------------------------------------------------------- reshape / permute / expand


def _sizes(args: tuple) -> tuple:
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        return tuple(args[0])
    return tuple(args)


def _resolve_shape(name: str, shape: tuple, numel: int, given: tuple) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise ShapeError(f"{name}: shape must be ints, got {shape!r}") from None
    if shape.count(-1) > 1:
        raise ShapeError(f"{name}: only one dimension can be -1, got {shape}")
    known = 1
    for s in shape:
        if s != -1:
            if s < 0:
                raise ShapeError(f"{name}: invalid size {s} in shape {shape}")
            known *= s
    if -1 in shape:
        if known == 0 or numel % known:
            raise ShapeError(f"{name}: shape {shape} is invalid for input of shape {given} ({numel} elements)")
        shape = tuple(numel // known if s == -1 else s for s in shape)
    elif known != numel:
        raise ShapeError(f"{name}: shape {shape} is invalid for input of shape {given} ({numel} elements)")
    return shape


RESHAPE = Op("reshape", infer=lambda x, shape: (shape, x.dtype), impl=lambda xp, x, shape: xp.reshape(x, shape),
             vjp=lambda ctx, g: (reshape(g, ctx.in_meta[0][0]),), save_inputs=False, linear=True, view=True)


def _permute_infer(x: Tensor, dims: tuple) -> tuple:
    return tuple(x.shape[d] for d in dims), x.dtype


def _permute_vjp(ctx: Any, g: Tensor) -> tuple:
    dims = ctx.attrs["dims"]
    inverse = [0] * len(dims)
    for i, d in enumerate(dims):
        inverse[d] = i
    return (permute(g, tuple(inverse)),)


PERMUTE = Op("permute", infer=_permute_infer, impl=lambda xp, x, dims: xp.transpose(x, dims),
             vjp=_permute_vjp, save_inputs=False, linear=True, view=True)


def _expand_infer(x: Tensor, shape: tuple) -> tuple:
    lead = len(shape) - x.ndim
    if lead < 0:
        raise ShapeError(f"expand: cannot expand shape {x.shape} to fewer dimensions {shape}")
    for i, n in enumerate(x.shape):
        if n != 1 and n != shape[lead + i]:
            raise ShapeError(f"expand: shape {x.shape} cannot be expanded to {shape} "
                             f"(dimension {lead + i}: size {n} is not 1 and differs from {shape[lead + i]})")
    return shape, x.dtype


# The gradient of expand is the incoming gradient itself: autograd sums it back to the
# input's shape in its one central place (sum_to_shape).
EXPAND = Op("expand", infer=_expand_infer, impl=lambda xp, x, shape: xp.broadcast_to(x, shape),
            vjp=lambda ctx, g: (g,), save_inputs=False, linear=True, view=True)


def reshape(x: Tensor, *shape: Any) -> Tensor:
    """``x`` with a new shape of the same number of elements (one dimension may be -1)."""
    shape = _resolve_shape("reshape", _sizes(shape), x.numel(), x.shape)
    return x if shape == x.shape else apply(RESHAPE, x, shape=shape)


view = reshape


def view_as(x: Tensor, other: Tensor) -> Tensor:
    return reshape(x, other.shape)


reshape_as = view_as


def flatten(x: Tensor, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    """Merge dimensions ``start_dim..end_dim`` into one."""
    if x.ndim == 0:
        return reshape(x, (1,))
    s = normalize_dim("flatten", start_dim, x.ndim)
    e = normalize_dim("flatten", end_dim, x.ndim)
    if s > e:
        raise ShapeError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim}")
    n = 1
    for d in x.shape[s:e + 1]:
        n *= d
    return reshape(x, x.shape[:s] + (n,) + x.shape[e + 1:])


def squeeze(x: Tensor, dim: Any = None) -> Tensor:
    """Remove size-1 dimensions (all of them, or those in ``dim``)."""
    if dim is None:
        dims = {i for i, n in enumerate(x.shape) if n == 1}
    else:
        dims = {normalize_dim("squeeze", d, x.ndim) for d in ((dim,) if isinstance(dim, int) else dim)}
        dims = {d for d in dims if x.shape[d] == 1}
    return reshape(x, tuple(n for i, n in enumerate(x.shape) if i not in dims))


def unsqueeze(x: Tensor, dim: int) -> Tensor:
    """Insert a size-1 dimension at ``dim`` (negative counts from the end of the result)."""
    d = normalize_dim("unsqueeze", dim, x.ndim + 1)
    return reshape(x, x.shape[:d] + (1,) + x.shape[d:])


def permute(x: Tensor, *dims: Any) -> Tensor:
    """Reorder dimensions: output dimension i is input dimension ``dims[i]``."""
    dims = _sizes(dims)
    if len(dims) != x.ndim:
        raise ShapeError(f"permute: got {len(dims)} dims {dims} for a tensor of shape {x.shape}")
    dims = tuple(normalize_dim("permute", d, x.ndim) for d in dims)
    if sorted(dims) != list(range(x.ndim)):
        raise ShapeError(f"permute: dims {dims} are not a permutation of 0..{x.ndim - 1}")
    return x if dims == tuple(range(x.ndim)) else apply(PERMUTE, x, dims=dims)


def transpose(x: Tensor, dim0: int, dim1: int) -> Tensor:
    """Swap two dimensions."""
    a, b = normalize_dim("transpose", dim0, x.ndim), normalize_dim("transpose", dim1, x.ndim)
    dims = list(range(x.ndim))
    dims[a], dims[b] = dims[b], dims[a]
    return permute(x, tuple(dims))


swapaxes = transpose


def movedim(x: Tensor, source: int, destination: int) -> Tensor:
    s, d = normalize_dim("movedim", source, x.ndim), normalize_dim("movedim", destination, x.ndim)
    dims = [i for i in range(x.ndim) if i != s]
    dims.insert(d, s)
    return permute(x, tuple(dims))


def expand(x: Tensor, *shape: Any) -> Tensor:
    """Broadcast ``x`` to ``shape`` without copying (-1 keeps a dimension's size)."""
    shape = _sizes(shape)
    lead = len(shape) - x.ndim
    shape = tuple(x.shape[i - lead] if (s == -1 and i >= lead) else int(s) for i, s in enumerate(shape))
    return x if shape == x.shape else apply(EXPAND, x, shape=shape)


broadcast_to = expand


def expand_as(x: Tensor, other: Tensor) -> Tensor:
    return expand(x, other.shape)


# ----------------------------------------------------------------------------- gather / scatter_add


def _check_index(name: str, x: Tensor, dim: int, index: Tensor, src: Tensor | None = None) -> None:
    if index.dtype.category != _dt.INTEGER:
        raise DTypeError(f"{name}: index must be an integer tensor, got {index.dtype.name}")
    if index.ndim != x.ndim:
        raise ShapeError(f"{name}: index has {index.ndim} dims but the input has {x.ndim} "
                         f"(input {x.shape}, index {index.shape})")
    for d in range(x.ndim):
        if d != dim and index.shape[d] > x.shape[d]:
            raise ShapeError(f"{name}: index shape {index.shape} exceeds input shape {x.shape} in dim {d}")
        if src is not None and index.shape[d] > src.shape[d]:
            raise ShapeError(f"{name}: index shape {index.shape} exceeds src shape {src.shape} in dim {d}")


def _gather_infer(x: Tensor, index: Tensor, axis: int) -> tuple:
    _check_index("gather", x, axis, index)
    return index.shape, x.dtype


def _full_index(xp: Any, index: Any, axis: int) -> tuple:
    """Open-mesh index arrays addressing ``index``'s positions, with ``index`` on ``axis``."""
    grids = list(xp.ogrid[tuple(slice(0, n) for n in index.shape)]) if index.ndim else []
    grids[axis] = index
    return tuple(grids)


def _gather_impl(xp: Any, x: Any, index: Any, axis: int) -> Any:
    n = x.shape[axis]
    if index.size and (index.min() < -n or index.max() >= n):
        raise EmberIndexError(f"gather: index out of range for dimension {axis} of size {n} "
                              f"(indices span {int(index.min())}..{int(index.max())})")
    return x[_full_index(xp, index, axis)]


def _scatter_add_infer(x: Tensor, index: Tensor, src: Tensor, axis: int) -> tuple:
    _check_index("scatter_add", x, axis, index, src)
    if src.dtype is not x.dtype:
        raise DTypeError(f"scatter_add: src dtype {src.dtype.name} differs from input dtype {x.dtype.name}")
    return x.shape, x.dtype


def _scatter_add_impl(xp: Any, x: Any, index: Any, src: Any, axis: int) -> Any:
    n = x.shape[axis]
    if index.size and (index.min() < -n or index.max() >= n):
        raise EmberIndexError(f"scatter_add: index out of range for dimension {axis} of size {n} "
                              f"(indices span {int(index.min())}..{int(index.max())})")
    out = x.copy()
    src = src[tuple(slice(0, s) for s in index.shape)]
    xp.add.at(out, _full_index(xp, index, axis), src)
    return out


def _gather_vjp(ctx: Any, g: Tensor) -> tuple:
    from .creation import zeros
    index = ctx.inputs[1]
    shape, dtype = ctx.in_meta[0]
    return scatter_add(zeros(shape, dtype=dtype, device=g.device), ctx.attrs["axis"], index, g), None


GATHER = Op("gather", infer=_gather_infer, impl=_gather_impl, vjp=_gather_vjp, linear=True, diff_args=(0,))
SCATTER_ADD = Op("scatter_add", infer=_scatter_add_infer, impl=_scatter_add_impl,
                 vjp=lambda ctx, g: (g, None, gather(g, ctx.attrs["axis"], ctx.inputs[1])),
                 linear=True, diff_args=(0, 2))


def gather(x: Tensor, dim: int, index: Tensor) -> Tensor:
    """``out[i][j] = x[index[i][j]][j]`` for ``dim=0`` (PyTorch's gather)."""
    return apply(GATHER, x, index, axis=normalize_dim("gather", dim, x.ndim))


def scatter_add(x: Tensor, dim: int, index: Tensor, src: Tensor) -> Tensor:
    """A copy of ``x`` with ``src`` added at ``index`` along ``dim`` (PyTorch's scatter_add)."""
    return apply(SCATTER_ADD, x, index, src, axis=normalize_dim("scatter_add", dim, x.ndim))


def take_along_dim(x: Tensor, indices: Tensor, dim: int | None = None) -> Tensor:
    """NumPy's take_along_axis: ``indices`` broadcasts against ``x`` except along ``dim``."""
    if dim is None:
        return gather(reshape(x, -1), 0, reshape(indices, -1))
    d = normalize_dim("take_along_dim", dim, x.ndim)
    if indices.ndim != x.ndim:
        raise ShapeError(f"take_along_dim: indices have {indices.ndim} dims but input has {x.ndim}")
    from ._shape import broadcast_shapes
    xs = list(x.shape)
    xs[d] = 1
    ids = list(indices.shape)
    ids[d] = 1
    common = list(broadcast_shapes("take_along_dim", tuple(xs), tuple(ids)))
    x_shape = common.copy()
    x_shape[d] = x.shape[d]
    i_shape = common.copy()
    i_shape[d] = indices.shape[d]
    return gather(expand(x, tuple(x_shape)), d, expand(indices, tuple(i_shape)))


