"""Shared shape and dtype rules (one copy, used by every op's ``infer``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import EmberIndexError, ShapeError


def broadcast_shapes(name: str, *shapes: tuple[int, ...]) -> tuple[int, ...]:
    """NumPy broadcasting of ``shapes``; a ShapeError names the op and the offending dimension."""
    first = shapes[0]
    if all(s == first for s in shapes[1:]):
        return first
    ndim = max(len(s) for s in shapes)
    padded = [(1,) * (ndim - len(s)) + tuple(s) for s in shapes]
    out = []
    for axis, dims in enumerate(zip(*padded)):
        size = 1
        for d in dims:
            if d != 1:
                if size != 1 and d != size:
                    given = " and ".join(str(tuple(s)) for s in shapes)
                    raise ShapeError(f"{name}: shapes {given} cannot be broadcast together "
                                     f"(dimension {axis - ndim}: sizes {' vs '.join(map(str, dims))})")
                size = d
        out.append(size)
    return tuple(out)


def normalize_dim(name: str, dim: int, ndim: int) -> int:
    """Map a possibly negative ``dim`` into ``[0, ndim)``; IndexError-style message otherwise."""
    if type(dim) is int and -ndim <= dim < ndim:  # the common case, checked cheaply
        return dim + ndim if dim < 0 else dim
    if not isinstance(dim, int):
        raise TypeError(f"{name}: dim must be an int, got {type(dim).__name__}")
    lo = -max(ndim, 1)
    if not lo <= dim < max(ndim, 1):
        raise EmberIndexError(f"{name}: dim {dim} is out of range for a tensor with {ndim} dimension(s) "
                              f"(expected {lo} <= dim < {max(ndim, 1)})")
    return dim % max(ndim, 1)


def normalize_dims(name: str, dim: Any, ndim: int) -> tuple[int, ...]:
    """``None`` means all dims; an int or a sequence of ints is normalized and checked for repeats."""
    if dim is None:
        return tuple(range(ndim))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    out = tuple(normalize_dim(name, d, ndim) for d in dims)
    if len(set(out)) != len(out):
        raise ShapeError(f"{name}: dim {dim} repeats a dimension")
    return out


def check_shape_arg(name: str, shape: Sequence[Any]) -> tuple[int, ...]:
    try:
        out = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise ShapeError(f"{name}: shape must be a sequence of ints, got {shape!r}") from None
    if any(s < 0 for s in out):
        raise ShapeError(f"{name}: negative dimension in shape {out}")
    return out
