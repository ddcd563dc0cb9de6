"""Linear algebra: matmul (BLAS through the backend), convolution and pooling.

``matmul`` is a primitive over operands of rank >= 2 with broadcast batch
dimensions; the 1-D cases of NumPy/PyTorch semantics are handled by reshaping
around it, so its vjp stays two matmuls.
"""

from __future__ import annotations

from typing import Any

from ..errors import DTypeError, ShapeError
from ..tensor import Tensor
from ._shape import broadcast_shapes
from .registry import Op, apply


def _matmul_infer(a: Tensor, b: Tensor) -> tuple:
    if a.dtype is not b.dtype:
        raise DTypeError(f"matmul: dtypes differ: {a.dtype.name} @ {b.dtype.name}")
    if a.dtype.is_bool:
        raise DTypeError("matmul: bool tensors are not supported")
    if a.shape[-1] != b.shape[-2]:
        raise ShapeError(f"matmul: inner dimensions differ: {a.shape} @ {b.shape} "
                         f"({a.shape[-1]} vs {b.shape[-2]})")
    batch = broadcast_shapes("matmul", a.shape[:-2], b.shape[:-2])
    return batch + (a.shape[-2], b.shape[-1]), a.dtype


def _matmul_vjp(ctx: Any, g: Tensor) -> tuple:
    from .movement import transpose
    a, b = ctx.inputs
    ga = matmul(g, transpose(b, -1, -2)) if a.requires_grad else None
    gb = matmul(transpose(a, -1, -2), g) if b.requires_grad else None
    return ga, gb


def _matmul_jvp(ctx: Any, ta: Tensor | None, tb: Tensor | None) -> Tensor:
    a, b = ctx.inputs
    out = None
    if ta is not None:
        out = apply(MATMUL, ta, b)
    if tb is not None:
        t = apply(MATMUL, a, tb)
        out = t if out is None else out + t
    return out


MATMUL = Op("matmul", infer=_matmul_infer, impl=lambda xp, a, b: xp.matmul(a, b), vjp=_matmul_vjp,
            jvp=_matmul_jvp)


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """Matrix product with NumPy/PyTorch semantics: 1-D operands, batching and broadcasting."""
    from .movement import reshape
    from .pointwise import promote
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise TypeError(f"matmul: expected Tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.ndim == 0 or b.ndim == 0:
        raise ShapeError(f"matmul: both operands need at least 1 dimension, got {a.shape} @ {b.shape}")
    if a.dtype is not b.dtype:
        a, b = promote("matmul", a, b)
    if a.ndim >= 2 and b.ndim >= 2:
        return apply(MATMUL, a, b)
    a2 = reshape(a, (1, a.shape[0])) if a.ndim == 1 else a
    b2 = reshape(b, (b.shape[0], 1)) if b.ndim == 1 else b
    if a2.shape[-1] != b2.shape[-2]:
        raise ShapeError(f"matmul: inner dimensions differ: {a.shape} @ {b.shape} "
                         f"({a2.shape[-1]} vs {b2.shape[-2]})")
    out = apply(MATMUL, a2, b2)
    shape = out.shape
    if a.ndim == 1:
        shape = shape[:-2] + shape[-1:]
    if b.ndim == 1:
        shape = shape[:-1]
    return reshape(out, shape)


def mm(a: Tensor, b: Tensor) -> Tensor:
    """Matrix product of two 2-D tensors."""
    if a.ndim != 2 or b.ndim != 2:
        raise ShapeError(f"mm: expected 2-D tensors, got {a.shape} and {b.shape}")
    return matmul(a, b)


def bmm(a: Tensor, b: Tensor) -> Tensor:
    """Batched matrix product of two 3-D tensors with equal batch size."""
    if a.ndim != 3 or b.ndim != 3 or a.shape[0] != b.shape[0]:
        raise ShapeError(f"bmm: expected 3-D tensors with equal batch size, got {a.shape} and {b.shape}")
    return matmul(a, b)
