"""Gradient clipping: ``clip_grad_norm_`` and ``clip_grad_value_`` (PyTorch's ``torch.nn.utils``).

Written with ember tensor ops, so a traced training step can contain them; only in eager mode does
``clip_grads_with_norm_`` read the coefficient back, to skip the multiplication by exactly 1 when
nothing needs clipping. Row-sparse gradients (``RowSparseGrad``) count and are scaled through their
stored rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from ...autograd import STATE, no_grad
from ...errors import EmberError
from ...ops.creation import tensor
from ...ops.movement import stack
from ...ops.pointwise import clamp, isfinite, sqrt
from ...ops.reduce import norm
from ...tensor import Tensor

__all__ = ["NonFiniteNormError", "clip_grad_norm_", "clip_grad_value_", "clip_grads_with_norm_", "get_total_norm"]


class NonFiniteNormError(EmberError, RuntimeError):
    """The total gradient norm is nan or inf and ``error_if_nonfinite=True`` (a RuntimeError, as in PyTorch)."""


def _as_list(fname: str, parameters: Any) -> list[Tensor]:
    if isinstance(parameters, Tensor):
        return [parameters]
    try:
        params = list(parameters)
    except TypeError:
        raise TypeError(f"{fname}: parameters must be a tensor or an iterable of tensors, "
                        f"got {type(parameters).__name__}") from None
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"{fname}: parameters must be tensors, but item {i} is a {type(p).__name__}")
    return params


def _norm_type(fname: str, norm_type: Any) -> float:
    if isinstance(norm_type, str) and norm_type.lower() in ("inf", "-inf"):
        return float(norm_type)
    if isinstance(norm_type, bool) or not isinstance(norm_type, (int, float)) or norm_type != norm_type:
        raise TypeError(f"{fname}: norm_type must be a number or 'inf', got {norm_type!r}")
    if norm_type < 0 and norm_type != -math.inf:
        raise ValueError(f"{fname}: norm_type must be non-negative, inf or -inf, got {norm_type!r}")
    return float(norm_type)


def _norm(x: Tensor, p: float) -> Tensor:
    if p == 2:  # one BLAS dot product instead of a square and a sum: several times faster
        flat = x.reshape(-1)
        with np.errstate(over="ignore", invalid="ignore"):  # an inf/nan norm is reported, not warned about
            return sqrt(flat @ flat)
    return norm(x, p)


def _max_norm(fname: str, max_norm: Any) -> float:
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)):
        raise TypeError(f"{fname}: max_norm must be a number, got {max_norm!r}")
    if not max_norm >= 0:
        raise ValueError(f"{fname}: max_norm must be non-negative, got {max_norm!r}")
    return float(max_norm)


def _dense_part(g: Any, p: float) -> Tensor:
    """What the norm of ``g`` is computed from: a sparse gradient's stored rows (the zero rows change no
    p-norm, except the -inf one, the smallest magnitude, for which they are materialized)."""
    if getattr(g, "is_sparse", False) is True:
        if p == -math.inf and g.indices.shape[0] < g.shape[0]:
            return g.to_dense()
        return g.values
    return g


def get_total_norm(tensors: Tensor | Iterable[Any], norm_type: float | str = 2.0,
                   error_if_nonfinite: bool = False) -> Tensor:
    """The ``norm_type``-norm of all ``tensors`` together, as if concatenated into one vector."""
    return _total_norm("get_total_norm", tensors, norm_type, error_if_nonfinite)


def _total_norm(fname: str, tensors: Any, norm_type: Any, error_if_nonfinite: bool) -> Tensor:
    p = _norm_type(fname, norm_type)
    if isinstance(tensors, Tensor) or getattr(tensors, "is_sparse", False) is True:
        tensors = [tensors]
    try:
        items = [t for t in tensors if t is not None]
    except TypeError:
        raise TypeError(f"{fname}: expected a tensor or an iterable of tensors, got {type(tensors).__name__}") from None
    for i, t in enumerate(items):
        if not isinstance(t, Tensor) and getattr(t, "is_sparse", False) is not True:
            raise TypeError(f"{fname}: expected tensors (gradients), but item {i} is a {type(t).__name__}")
    if not items:
        return tensor(0.0)
    with no_grad():
        norms = [_norm(_dense_part(g, p), p) for g in items]
        dtype = norms[0].dtype
        total = norm(stack([n.to(dtype) for n in norms]), p)
        if error_if_nonfinite and not bool(isfinite(total)):
            raise NonFiniteNormError(f"{fname}: the total norm of order {p} of the gradients is non-finite "
                                     f"({total.item()}), so it cannot be clipped; pass error_if_nonfinite=False "
                                     "to scale the gradients by it anyway")
    return total


def clip_grads_with_norm_(parameters: Tensor | Iterable[Tensor], max_norm: float, total_norm: Tensor) -> None:
    """Scale the gradients by ``min(max_norm / (total_norm + 1e-6), 1)``, in place."""
    fname = "clip_grads_with_norm_"
    params = _as_list(fname, parameters)
    max_norm = _max_norm(fname, max_norm)
    if not isinstance(total_norm, Tensor):
        raise TypeError(f"{fname}: total_norm must be a tensor (from get_total_norm), got {type(total_norm).__name__}")
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    with no_grad():
        coef = clamp(max_norm / (total_norm + 1e-6), max=1.0)
        if STATE.tracer is None and type(coef.data) is np.ndarray and float(coef.data) == 1.0:
            return  # nothing to clip: scaling by 1 would change no gradient
        for g in grads:
            c = coef if coef.dtype is g.dtype else coef.to(g.dtype)
            if STATE.tracer is None and isinstance(g, Tensor) and type(g.data) is np.ndarray:
                with np.errstate(invalid="ignore"):  # inf * 0 when the norm is inf: nan, as in PyTorch
                    np.multiply(g.data, c.data, out=g.data)  # what g.mul_(c) computes, without the copy back
                g._version[0] += 1
            else:
                g.mul_(c)


def clip_grad_norm_(parameters: Tensor | Iterable[Tensor], max_norm: float, norm_type: float | str = 2.0,
                    error_if_nonfinite: bool = False) -> Tensor:
    """Rescale the gradients of ``parameters`` in place so that their total ``norm_type``-norm is at most
    ``max_norm``; returns the total norm before clipping (a 0-d tensor). Parameters without a gradient
    are skipped. With ``error_if_nonfinite``, a nan/inf norm raises ``NonFiniteNormError``."""
    fname = "clip_grad_norm_"
    params = _as_list(fname, parameters)
    _max_norm(fname, max_norm)
    total = _total_norm(fname, [p.grad for p in params], norm_type, error_if_nonfinite)
    clip_grads_with_norm_(params, max_norm, total)
    return total


def clip_grad_value_(parameters: Tensor | Iterable[Tensor], clip_value: float) -> None:
    """Clamp every gradient of ``parameters`` into ``[-clip_value, clip_value]``, in place."""
    fname = "clip_grad_value_"
    params = _as_list(fname, parameters)
    if isinstance(clip_value, bool) or not isinstance(clip_value, (int, float)) or clip_value != clip_value:
        raise TypeError(f"{fname}: clip_value must be a number, got {clip_value!r}")
    if clip_value < 0:
        raise ValueError(f"{fname}: clip_value must be non-negative, got {clip_value!r}")
    c = float(clip_value)
    with no_grad():
        for p in params:
            g = p.grad
            if g is not None:
                g.clamp_(min=-c, max=c)
