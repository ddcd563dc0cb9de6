"""Movement primitives: reshape, permute, expand, gather/scatter-add, concat, pad, flip, take/index_add,
and the functions built on them (cat, stack, split, chunk, unbind, narrow, repeat, index_select, one_hot).

Views (reshape, permute, expand, ...) are NumPy views in eager mode: no data moves,
and the result shares the input's version counter so in-place writes are tracked.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import dtypes as _dt
from ..codegen import index_kernels as _ik
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
    if a == b:
        return x
    dims = list(range(x.ndim))
    dims[a], dims[b] = dims[b], dims[a]
    return apply(PERMUTE, x, dims=tuple(dims))  # a valid permutation by construction


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
    if xp is np:
        out = _ik.gather(x, index, axis)
        if out is not None:
            return out
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
    if xp is np:
        out = _ik.scatter_add(x, index, src, axis)
        if out is not None:
            return out
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


# ----------------------------------------------------------------------------- shared checks


def _tensor_arg(name: str, x: Any, what: str = "input") -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: {what} must be a Tensor, got {type(x).__name__}")
    return x


def _int_arg(name: str, v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name}: {what} must be an int, got {type(v).__name__} {v!r}")
    return int(v)


def _dim(name: str, x: Tensor, dim: int) -> int:
    """``dim`` normalized for a tensor that must have at least one dimension."""
    _tensor_arg(name, x)
    if x.ndim == 0:
        raise ShapeError(f"{name}: expected a tensor with at least one dimension, got a zero-dimensional one")
    return normalize_dim(name, dim, x.ndim)


def _index_tensor(name: str, index: Any, device: Any) -> Tensor:
    """``index`` as an integer tensor (Python lists and NumPy arrays are accepted)."""
    if not isinstance(index, Tensor):
        from .creation import tensor
        arr = np.asarray(index)
        if arr.size == 0 and arr.dtype.kind == "f":
            arr = arr.astype(np.int64)
        if arr.dtype.kind not in "iu":
            raise DTypeError(f"{name}: index must hold integers, got {arr.dtype} values")
        index = tensor(arr.astype(np.int64, copy=False), device=device)
    if index.dtype.category != _dt.INTEGER:
        raise DTypeError(f"{name}: index must be an integer tensor, got {index.dtype.name} of shape {index.shape}")
    return index


def _check_range(xp: Any, name: str, index: Any, n: int, axis: int, shape: tuple) -> None:
    """Raise EmberIndexError unless every entry of ``index`` lies in ``[-n, n)``."""
    if index.size == 0:
        return
    lo, hi = int(index.min()), int(index.max())
    if lo < -n or hi >= n:
        bad = hi if hi >= n else lo
        raise EmberIndexError(f"{name}: index {bad} is out of range for dimension {axis} with size {n} "
                              f"(input shape {tuple(shape)}; valid indices are {-n}..{n - 1})")


def _nonneg(xp: Any, index: Any, n: int) -> Any:
    return xp.where(index < 0, index + n, index) if index.size and int(index.min()) < 0 else index


# ----------------------------------------------------------------------------- concat / stack / split


def _concat_infer(*xs: Tensor, axis: int) -> tuple:
    first = xs[0]
    size = 0
    for i, t in enumerate(xs):
        if t.dtype is not first.dtype:
            raise DTypeError(f"concat: tensor {i} has dtype {t.dtype.name} but tensor 0 has {first.dtype.name}")
        if t.ndim != first.ndim:
            raise ShapeError(f"concat: tensor {i} has {t.ndim} dims (shape {t.shape}) but tensor 0 has "
                             f"{first.ndim} (shape {first.shape})")
        for d in range(first.ndim):
            if d != axis and t.shape[d] != first.shape[d]:
                raise ShapeError(f"concat: sizes must match except in dimension {axis}, but tensor {i} has "
                                 f"shape {t.shape} and tensor 0 has shape {first.shape} (dimension {d} differs)")
        size += t.shape[axis]
    return first.shape[:axis] + (size,) + first.shape[axis + 1:], first.dtype


def _concat_vjp(ctx: Any, g: Tensor) -> tuple:
    from .indexing import slice_dim
    axis = ctx.attrs["axis"]
    grads, start = [], 0
    for shape, _ in ctx.in_meta:
        n = shape[axis]
        grads.append(slice_dim(g, axis, start, start + n))
        start += n
    return tuple(grads)


CONCAT = Op("concat", infer=_concat_infer, impl=lambda xp, *arrays, axis: xp.concatenate(arrays, axis=axis),
            vjp=_concat_vjp, save_inputs=False, linear=True)


def _tensor_list(name: str, tensors: Any) -> list[Tensor]:
    if isinstance(tensors, Tensor) or not isinstance(tensors, (list, tuple)):
        raise TypeError(f"{name}: expected a list or tuple of Tensors, got {type(tensors).__name__}")
    if not tensors:
        raise ShapeError(f"{name}: expected a non-empty list of tensors")
    for i, t in enumerate(tensors):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: element {i} is {type(t).__name__}, expected a Tensor")
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = _dt.promote_types(dtype, t.dtype)
    from .pointwise import cast
    return [t if t.dtype is dtype else cast(t, dtype) for t in tensors]


def cat(tensors: Any, dim: int = 0) -> Tensor:
    """Join tensors along an existing dimension ``dim`` (dtypes are promoted, as in PyTorch)."""
    ts = _tensor_list("cat", tensors)
    for i, t in enumerate(ts):
        if t.ndim == 0:
            raise ShapeError(f"cat: tensor {i} is zero-dimensional and cannot be concatenated; use stack")
    axis = normalize_dim("cat", dim, ts[0].ndim)
    return apply(CONCAT, *ts, axis=axis)


concatenate = concat = cat


def stack(tensors: Any, dim: int = 0) -> Tensor:
    """Join equally shaped tensors along a new dimension ``dim``."""
    ts = _tensor_list("stack", tensors)
    for i, t in enumerate(ts):
        if t.shape != ts[0].shape:
            raise ShapeError(f"stack: all tensors must have the same shape, but tensor 0 has shape {ts[0].shape} "
                             f"and tensor {i} has shape {t.shape}")
    d = normalize_dim("stack", dim, ts[0].ndim + 1)
    return apply(CONCAT, *(unsqueeze(t, d) for t in ts), axis=d)


def narrow(x: Tensor, dim: int, start: int, length: int) -> Tensor:
    """The view ``x[..., start:start + length, ...]`` along ``dim`` (``start`` may be negative)."""
    from .indexing import slice_dim
    d = _dim("narrow", x, dim)
    n = x.shape[d]
    start, length = _int_arg("narrow", start, "start"), _int_arg("narrow", length, "length")
    if not -n <= start <= n:
        raise EmberIndexError(f"narrow: start {start} is out of range for dimension {d} with size {n} "
                              f"(input shape {x.shape})")
    if start < 0:
        start += n
    if length < 0 or start + length > n:
        raise ShapeError(f"narrow: start {start} + length {length} exceeds dimension {d} of size {n} "
                         f"(input shape {x.shape})")
    return slice_dim(x, d, start, start + length)


def split(x: Tensor, split_size_or_sections: Any, dim: int = 0) -> tuple[Tensor, ...]:
    """Views of ``x`` split along ``dim``: chunks of an int size (the last may be smaller), or given sizes."""
    from .indexing import slice_dim
    d = _dim("split", x, dim)
    n = x.shape[d]
    s = split_size_or_sections
    if isinstance(s, (int, np.integer)) and not isinstance(s, bool):
        s = int(s)
        if s < 0 or (s == 0 and n != 0):
            raise ShapeError(f"split: split_size must be a positive int, got {s} (dimension {d} has size {n})")
        if n == 0:
            return (slice_dim(x, d, 0, 0),)
        sizes = [s] * (n // s) + ([n % s] if n % s else [])
    elif isinstance(s, (list, tuple)):
        sizes = [_int_arg("split", v, "each section size") for v in s]
        if any(v < 0 for v in sizes) or sum(sizes) != n:
            raise ShapeError(f"split: section sizes {tuple(sizes)} must be non-negative and sum to the size {n} "
                             f"of dimension {d} (input shape {x.shape})")
    else:
        raise TypeError(f"split: split_size_or_sections must be an int or a list of ints, got {type(s).__name__}")
    out, start = [], 0
    for v in sizes:
        out.append(slice_dim(x, d, start, start + v))
        start += v
    return tuple(out)


def chunk(x: Tensor, chunks: int, dim: int = 0) -> tuple[Tensor, ...]:
    """Split into ``chunks`` nearly equal views (PyTorch's rule: size ``ceil(n / chunks)``, maybe fewer pieces)."""
    chunks = _int_arg("chunk", chunks, "chunks")
    if chunks <= 0:
        raise ShapeError(f"chunk: chunks must be a positive int, got {chunks}")
    d = _dim("chunk", x, dim)
    n = x.shape[d]
    return split(x, max(-(-n // chunks), 1) if n else 0, d)


def unbind(x: Tensor, dim: int = 0) -> tuple[Tensor, ...]:
    """The slices ``x.select(dim, i)`` for every ``i`` (views, one dimension fewer)."""
    from .indexing import getslice
    d = _dim("unbind", x, dim)
    lead = tuple((0, n, 1) for n in x.shape[:d])
    return tuple(getslice(x, lead + (i,)) for i in range(x.shape[d]))


# ----------------------------------------------------------------------------- pad / flip / repeat


def _pad_infer(x: Tensor, widths: tuple, value: Any) -> tuple:
    shape = []
    for d, ((b, a), n) in enumerate(zip(widths, x.shape)):
        if n + min(b, 0) + min(a, 0) < 0:
            raise ShapeError(f"pad: padding ({b}, {a}) crops more than the size {n} of dimension {d} "
                             f"(input shape {x.shape})")
        shape.append(n + b + a)
    return tuple(shape), x.dtype


def _pad_impl(xp: Any, x: Any, widths: tuple, value: Any) -> Any:
    if any(b < 0 or a < 0 for b, a in widths):
        x = x[tuple(slice(max(-b, 0), n - max(-a, 0)) for (b, a), n in zip(widths, x.shape))]
    shape = tuple(n + max(b, 0) + max(a, 0) for (b, a), n in zip(widths, x.shape))
    if shape == x.shape:
        return x.copy()
    out = xp.full(shape, value, dtype=x.dtype)
    out[tuple(slice(max(b, 0), max(b, 0) + n) for (b, _), n in zip(widths, x.shape))] = x
    return out


def _neg_widths(widths: tuple) -> tuple:
    return tuple((-b, -a) for b, a in widths)


# Padding with negative widths crops, so the gradient of a pad is the pad with negated widths.
PAD = Op("pad", infer=_pad_infer, impl=_pad_impl, save_inputs=False,
         vjp=lambda ctx, g: (apply(PAD, g, widths=_neg_widths(ctx.attrs["widths"]), value=0),),
         jvp=lambda ctx, t: apply(PAD, t, widths=ctx.attrs["widths"], value=0))


def pad(x: Tensor, pad: Any, mode: str = "constant", value: Any = None) -> Tensor:
    """Pad ``x`` (PyTorch's ``F.pad``): ``pad = (left, right)`` for the last dim, then the one before, ...

    ``mode`` is ``"constant"`` (fill with ``value``, default 0; negative widths crop),
    ``"reflect"``, ``"replicate"`` or ``"circular"``.
    """
    _tensor_arg("pad", x)
    if not isinstance(pad, (list, tuple)):
        raise TypeError(f"pad: pad must be a tuple of ints, got {type(pad).__name__}")
    pads = [_int_arg("pad", p, "each padding size") for p in pad]
    if len(pads) % 2 or len(pads) > 2 * x.ndim:
        raise ShapeError(f"pad: padding {tuple(pads)} must have an even length of at most 2 * ndim = {2 * x.ndim} "
                         f"(input shape {x.shape})")
    widths = [(0, 0)] * x.ndim
    for i in range(len(pads) // 2):
        widths[x.ndim - 1 - i] = (pads[2 * i], pads[2 * i + 1])
    if mode == "constant":
        v = 0 if value is None else value
        if not isinstance(v, (int, float, bool, np.number)):
            raise TypeError(f"pad: value must be a number, got {type(v).__name__}")
        if all(w == (0, 0) for w in widths):
            return x
        return apply(PAD, x, widths=tuple(widths), value=v.item() if isinstance(v, np.number) else v)
    if mode not in ("reflect", "replicate", "circular"):
        raise ValueError(f"pad: unknown mode {mode!r}; expected 'constant', 'reflect', 'replicate' or 'circular'")
    if value not in (None, 0):
        raise ValueError(f"pad: value is only used in constant mode, got value={value} with mode={mode!r}")
    out = x
    for d, (b, a) in enumerate(widths):
        if b == a == 0:
            continue
        n = x.shape[d]
        if b < 0 or a < 0:
            raise ShapeError(f"pad: negative padding ({b}, {a}) is only supported in constant mode")
        limit = n - 1 if mode == "reflect" else n
        if max(b, a) > limit or (mode == "replicate" and n == 0):
            raise ShapeError(f"pad: {mode} padding ({b}, {a}) of dimension {d} must be at most {limit} for its size "
                             f"{n} (input shape {x.shape})")
        out = cat([p for p in _side_pieces(out, d, b, a, mode) if p.shape[d]], d)
    return out


def _side_pieces(x: Tensor, d: int, b: int, a: int, mode: str) -> list[Tensor]:
    n = x.shape[d]
    if mode == "reflect":
        return [flip(narrow(x, d, 1, b), d), x, flip(narrow(x, d, n - 1 - a, a), d)]
    if mode == "circular":
        return [narrow(x, d, n - b, b), x, narrow(x, d, 0, a)]
    left, right = list(x.shape), list(x.shape)
    left[d], right[d] = b, a
    return [expand(narrow(x, d, 0, 1), tuple(left)), x, expand(narrow(x, d, n - 1, 1), tuple(right))]


# A copy, as in PyTorch (a negative-step slice, x[::-1], is the view form): writing into a
# flipped image must not change the original.
FLIP = Op("flip", infer=lambda x, dims: (x.shape, x.dtype), impl=lambda xp, x, dims: xp.flip(x, axis=dims).copy(),
          vjp=lambda ctx, g: (flip(g, ctx.attrs["dims"]),), save_inputs=False, linear=True)


def flip(x: Tensor, *dims: Any) -> Tensor:
    """Reverse the order of elements along ``dims`` (an int or a sequence of ints)."""
    _tensor_arg("flip", x)
    ds = _sizes(dims)
    if len(ds) == 1 and isinstance(ds[0], (tuple, list)):
        ds = tuple(ds[0])
    from ._shape import normalize_dims
    axes = tuple(sorted(normalize_dims("flip", ds, x.ndim)))
    if x.ndim == 0 or not axes:
        return x
    return apply(FLIP, x, dims=axes)


def repeat(x: Tensor, *sizes: Any) -> Tensor:
    """Tile ``x`` (PyTorch's ``Tensor.repeat``): ``sizes`` has one entry per dimension, extra ones lead."""
    _tensor_arg("repeat", x)
    reps = [_int_arg("repeat", r, "each repeat count") for r in _sizes(sizes)]
    if len(reps) < x.ndim:
        raise ShapeError(f"repeat: {len(reps)} repeat counts {tuple(reps)} given for a tensor of shape {x.shape}; "
                         f"expected at least {x.ndim}")
    if any(r < 0 for r in reps):
        raise ShapeError(f"repeat: repeat counts must be non-negative, got {tuple(reps)}")
    shape = (1,) * (len(reps) - x.ndim) + x.shape
    inter = tuple(v for n in shape for v in (1, n))
    big = tuple(v for r, n in zip(reps, shape) for v in (r, n))
    return reshape(expand(reshape(x, inter), big), tuple(r * n for r, n in zip(reps, shape)))


# ----------------------------------------------------------------------------- take / index_add / index_copy


def _take_infer(x: Tensor, index: Tensor, axis: int) -> tuple:
    if index.dtype.category != _dt.INTEGER:
        raise DTypeError(f"take: indices must be an integer tensor, got {index.dtype.name} "
                         f"(input shape {x.shape}, indices shape {index.shape})")
    if x.ndim == 0:
        raise ShapeError("take: cannot index a zero-dimensional tensor along a dimension")
    return x.shape[:axis] + index.shape + x.shape[axis + 1:], x.dtype


def _take_impl(xp: Any, x: Any, index: Any, axis: int) -> Any:
    _check_range(xp, "take", index, x.shape[axis], axis, x.shape)
    return xp.take(x, index, axis=axis)


def _take_vjp(ctx: Any, g: Tensor) -> tuple:
    from .creation import zeros
    shape, _ = ctx.in_meta[0]
    axis = ctx.attrs["axis"]
    index = ctx.inputs[1]
    flat = reshape(index, (index.numel(),))
    g = reshape(g, shape[:axis] + (index.numel(),) + shape[axis + 1:])
    # a broadcast zero, not a filled array: index_add turns it into fresh zeroed memory without a copy
    base = expand(zeros((), dtype=g.dtype, device=g.device), shape)
    return index_add(base, axis, flat, g), None


TAKE = Op("take", infer=_take_infer, impl=_take_impl, vjp=_take_vjp, linear=True, diff_args=(0,))


def take(x: Tensor, index: Any, dim: int | None = None) -> Tensor:
    """``np.take``: entries of ``x`` at ``index`` along ``dim``; the result has shape
    ``x.shape[:dim] + index.shape + x.shape[dim + 1:]``. Without ``dim``, ``x`` is flattened first.
    Negative indices count from the end."""
    _tensor_arg("take", x)
    index = _index_tensor("take", index, x.device)
    if dim is None:
        return apply(TAKE, reshape(x, (x.numel(),)), index, axis=0)
    return apply(TAKE, x, index, axis=normalize_dim("take", dim, x.ndim))


def _index_src_infer(name: str, x: Tensor, index: Tensor, src: Tensor, axis: int) -> tuple:
    if index.dtype.category != _dt.INTEGER:
        raise DTypeError(f"{name}: index must be an integer tensor, got {index.dtype.name}")
    if index.ndim != 1:
        raise ShapeError(f"{name}: index must be 1-D, got shape {index.shape}")
    if src.dtype is not x.dtype:
        raise DTypeError(f"{name}: source dtype {src.dtype.name} differs from the input dtype {x.dtype.name}")
    want = x.shape[:axis] + index.shape + x.shape[axis + 1:]
    if src.shape != want:
        raise ShapeError(f"{name}: source has shape {src.shape} but input shape {x.shape} with {index.shape[0]} "
                         f"indices along dimension {axis} needs source shape {want}")
    return x.shape, x.dtype


def _index_add_infer(x: Tensor, index: Tensor, src: Tensor, axis: int) -> tuple:
    if x.dtype is _dt.bool_:
        raise DTypeError("index_add: bool tensors are not supported; cast to an integer or floating dtype")
    return _index_src_infer("index_add", x, index, src, axis)


def _writable_copy(xp: Any, x: Any) -> Any:
    """A fresh copy of ``x``; a broadcast zero (take's gradient seed) becomes ``zeros`` (untouched pages stay free)."""
    if x.ndim and x.size and not any(x.strides) and not x[(0,) * x.ndim]:
        return xp.zeros(x.shape, dtype=x.dtype)
    return x.copy()


_HEAVY = 32  # index_add: an index repeated more often than this has its rows summed in one call


def _index_add_impl(xp: Any, x: Any, index: Any, src: Any, axis: int) -> Any:
    if xp is np:
        out = _ik.index_add(x, index, src, axis)
        if out is not None:
            return out
    n = x.shape[axis]
    _check_range(xp, "index_add", index, n, axis, x.shape)
    out = _writable_copy(xp, x)
    k = index.shape[0]
    if k == 0 or out.size == 0:
        return out
    index = _nonneg(xp, index, n)
    if xp is not np or k < 256 or out.size == n:
        # small problems, 1-D rows (NumPy's add.at has a fast scalar loop) and GPUs (atomics)
        xp.add.at(out, (slice(None),) * axis + (index,), src)
        return out
    _grouped_add(xp.moveaxis(out, axis, 0), index, xp.moveaxis(src, axis, 0))
    return out


def _grouped_add(out: np.ndarray, index: np.ndarray, src: np.ndarray) -> None:
    """``out[index[k]] += src[k]`` for all k (rows on axis 0), without ``np.add.at``'s per-element loop.

    Sort the indices into groups of equal value. An index repeated more than ``_HEAVY`` times has
    its rows summed with one vectorized ``sum``; the remaining rows are added in passes where the
    r-th pass takes the r-th occurrence of every index, so no pass writes a row twice and each
    is one fancy-indexed ``+=`` over whole rows.
    """
    k = index.shape[0]
    order = np.argsort(index)
    s = index[order]
    first = np.empty(k, dtype=bool)
    first[0] = True
    np.not_equal(s[1:], s[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    counts = np.diff(starts, append=k)
    rank = np.arange(k) - np.repeat(starts, counts)
    heavy = counts > _HEAVY
    pos = None
    if heavy.any():
        for h in np.flatnonzero(heavy).tolist():
            a = int(starts[h])
            out[s[a]] += src[order[a:a + int(counts[h])]].sum(axis=0, dtype=out.dtype)
        pos = np.flatnonzero(np.repeat(~heavy, counts))
        rank = rank[pos]
    by_rank = np.argsort(rank, kind="stable")
    begin = 0
    for c in np.bincount(rank).tolist() if rank.size else []:
        sel = by_rank[begin:begin + c]
        begin += c
        if pos is not None:
            sel = pos[sel]
        out[s[sel]] += src[order[sel]]


INDEX_ADD = Op("index_add", infer=_index_add_infer, impl=_index_add_impl,
               vjp=lambda ctx, g: (g, None, take(g, ctx.inputs[1], ctx.attrs["axis"])),
               linear=True, diff_args=(0, 2))


def _index_copy_impl(xp: Any, x: Any, index: Any, src: Any, axis: int) -> Any:
    _check_range(xp, "index_copy", index, x.shape[axis], axis, x.shape)
    out = x.copy()
    out[(slice(None),) * axis + (index,)] = src
    return out


def _index_copy_vjp(ctx: Any, g: Tensor) -> tuple:
    from .creation import zeros
    index = ctx.inputs[1]
    axis = ctx.attrs["axis"]
    src_shape, _ = ctx.in_meta[2]
    hole = expand(zeros((), dtype=g.dtype, device=g.device), src_shape)
    return index_copy(g, axis, index, hole), None, take(g, index, axis)


INDEX_COPY = Op("index_copy", infer=lambda x, i, s, axis: _index_src_infer("index_copy", x, i, s, axis),
                impl=_index_copy_impl, vjp=_index_copy_vjp, linear=True, diff_args=(0, 2))


def _index_src_args(name: str, x: Tensor, dim: int, index: Any, source: Any) -> tuple:
    _tensor_arg(name, x)
    _tensor_arg(name, source, "source")
    if x.ndim == 0:
        raise ShapeError(f"{name}: the input must have at least one dimension")
    axis = normalize_dim(name, dim, x.ndim)
    index = _index_tensor(name, index, x.device)
    if index.ndim == 0:
        index = reshape(index, (1,))
    if source.dtype is not x.dtype and source.dtype.category <= x.dtype.category:
        from .pointwise import cast
        source = cast(source, x.dtype)
    return axis, index, source


def index_add(x: Tensor, dim: int, index: Any, source: Tensor, alpha: Any = 1) -> Tensor:
    """A copy of ``x`` with ``alpha * source[..., k, ...]`` added at ``x[..., index[k], ...]`` along ``dim``.

    Repeated indices accumulate (PyTorch's ``index_add``; the gradient of ``take``).
    """
    axis, index, source = _index_src_args("index_add", x, dim, index, source)
    if alpha != 1:
        source = source * alpha
    return apply(INDEX_ADD, x, index, source, axis=axis)


def index_copy(x: Tensor, dim: int, index: Any, source: Tensor) -> Tensor:
    """A copy of ``x`` with ``x[..., index[k], ...] = source[..., k, ...]`` along ``dim``
    (for a repeated index, which write wins is unspecified, as in PyTorch)."""
    axis, index, source = _index_src_args("index_copy", x, dim, index, source)
    return apply(INDEX_COPY, x, index, source, axis=axis)


def index_select(x: Tensor, dim: int, index: Any) -> Tensor:
    """The entries of ``x`` at the 1-D ``index`` along ``dim`` (PyTorch's ``index_select``)."""
    _tensor_arg("index_select", x)
    index = _index_tensor("index_select", index, x.device)
    if index.ndim > 1:
        raise ShapeError(f"index_select: index must be 0-D or 1-D, got shape {index.shape}")
    if x.ndim == 0:
        raise ShapeError("index_select: the input must have at least one dimension")
    if index.ndim == 0:
        index = reshape(index, (1,))
    return apply(TAKE, x, index, axis=normalize_dim("index_select", dim, x.ndim))


def one_hot(index: Tensor, num_classes: int = -1) -> Tensor:
    """``int64`` one-hot encoding with a new last dimension of size ``num_classes``
    (``-1``: one more than the largest index)."""
    from ..autograd import STATE
    from .creation import arange
    from .pointwise import cast, eq
    index = _index_tensor("one_hot", index, getattr(index, "device", None))
    num_classes = _int_arg("one_hot", num_classes, "num_classes")
    concrete = STATE.tracer is None
    if num_classes == -1:
        if not concrete:
            raise ShapeError("one_hot: num_classes=-1 depends on the data; pass num_classes when tracing")
        num_classes = int(index.data.max()) + 1 if index.numel() else 0
    if num_classes < 0:
        raise ShapeError(f"one_hot: num_classes must be -1 or non-negative, got {num_classes}")
    if concrete and index.numel():
        lo, hi = int(index.data.min()), int(index.data.max())
        if lo < 0 or hi >= num_classes:
            raise EmberIndexError(f"one_hot: class values must lie in [0, {num_classes}), got values in "
                                  f"{lo}..{hi} (index shape {index.shape})")
    classes = arange(num_classes, device=index.device)
    return cast(eq(unsqueeze(index, -1), classes), _dt.int64)
