"""Primitives for ``ember.nn`` that the generic ones cannot express fast enough.

``linear``: ``y = x @ w.T + b`` for a 2-D ``x`` (N, in), ``w`` (out, in) and an optional ``b`` (out,).

As a composite (``matmul(x, transpose(w)) + b``) it costs a fresh (N, out) array for the bias add
and, in backward, a weight gradient that is a transposed view of ``x.T @ g``, which the tape copies
again before storing it in ``w.grad``. As one op the bias is added in place into the GEMM's output,
and ``g.T @ x`` produces the (out, in) weight gradient directly in ``w``'s layout.
"""

from __future__ import annotations

from typing import Any

from ..errors import DTypeError, ShapeError
from ..tensor import Tensor
from .linalg import _blas_ready, matmul
from .movement import expand, transpose
from .reduce import sum as _sum
from .registry import Op, apply


def _linear_infer(x: Tensor, w: Tensor, *b: Tensor) -> tuple:
    sx, sw = x.data.shape, w.data.shape
    if len(sx) != 2 or len(sw) != 2:
        raise ShapeError(f"linear: expected a 2-D input and a 2-D weight, got {sx} and {sw}")
    if sx[1] != sw[1]:
        raise ShapeError(f"linear: input has {sx[1]} features but the weight {sw} expects {sw[1]} "
                         f"(input shape {sx})")
    for t in (w, *b):
        if t.dtype is not x.dtype:
            raise DTypeError(f"linear: dtypes differ: input {x.dtype.name}, parameter {t.dtype.name}")
    if not x.dtype.is_floating_point:
        raise DTypeError(f"linear: expected floating tensors, got {x.dtype.name}")
    if b and b[0].data.shape != (sw[0],):
        raise ShapeError(f"linear: bias must have shape ({sw[0]},) for a weight of shape {sw}, got {b[0].shape}")
    return (sx[0], sw[0]), x.dtype


def _linear_impl(xp: Any, x: Any, w: Any, *b: Any) -> Any:
    out = xp.matmul(_blas_ready(x), _blas_ready(w).T)  # w.T is a transposed view: BLAS reads it as is
    if b:
        out += b[0]
    return out


def _linear_vjp(ctx: Any, g: Tensor) -> tuple:
    x, w = ctx.inputs[0], ctx.inputs[1]
    gx = matmul(g, w) if x.requires_grad else None
    gw = matmul(transpose(g, 0, 1), x) if w.requires_grad else None
    if len(ctx.inputs) == 2:
        return gx, gw
    gb = _sum(g, 0) if ctx.inputs[2].requires_grad else None
    return gx, gw, gb


def _linear_jvp(ctx: Any, tx: Tensor | None, tw: Tensor | None, *tb: Tensor | None) -> Tensor:
    from .creation import zeros
    x, w = ctx.inputs[0], ctx.inputs[1]
    terms = []
    if tx is not None:
        terms.append(apply(LINEAR, tx, w))
    if tw is not None:
        terms.append(apply(LINEAR, x, tw))
    if tb and tb[0] is not None:
        terms.append(tb[0])
    if not terms:
        return zeros(ctx.out.shape, dtype=ctx.out.dtype, device=ctx.out.device)
    out = terms[0]
    for t in terms[1:]:
        out = out + t
    if out.shape != ctx.out.shape:  # only the bias moved
        out = expand(out, ctx.out.shape)
    return out


LINEAR = Op("linear", infer=_linear_infer, impl=_linear_impl, vjp=_linear_vjp, jvp=_linear_jvp)


def linear2d(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """``x @ w.T + b`` for a 2-D ``x``: one GEMM, the bias added in place."""
    return apply(LINEAR, x, w) if b is None else apply(LINEAR, x, w, b)
