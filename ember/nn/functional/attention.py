"""Scaled dot-product attention (PyTorch's ``F.scaled_dot_product_attention``), a composite.

Masked positions get ``-inf`` scores; the softmax subtracts each row's maximum (of the finite
scores) first. A row whose every position is masked out has no distribution to take: it gets
zero weights and so a zero output (and zero gradients), as PyTorch's ``scaled_dot_product_attention``
gives since 2.5, instead of the NaN a plain softmax of ``-inf`` would give. (PyTorch's
``MultiheadAttention`` returns NaN for such rows when ``need_weights=True`` and zeros otherwise;
Ember's returns zeros in both cases.)
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from ... import dtypes as _dt
from ...device import array_module, get_backend
from ...errors import DTypeError, ShapeError
from ...ops import pointwise as _pw
from ...ops import reduce as _red
from ...ops._shape import broadcast_shapes
from ...ops.composite import softmax
from ...ops.linalg import matmul
from ...ops.movement import transpose
from ...ops.random import Generator
from ...ops.registry import composite
from ...tensor import Tensor, _make
from .linear import dropout

__all__ = ["scaled_dot_product_attention"]


@functools.lru_cache(maxsize=64)
def _causal_np(length: int, source: int) -> np.ndarray:
    out = np.tril(np.ones((length, source), dtype=bool))
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=64)
def _causal_bias_np(length: int, source: int, np_dtype: Any) -> np.ndarray:
    out = np.where(_causal_np(length, source), np.array(0, np_dtype), np.array(-np.inf, np_dtype))
    out.flags.writeable = False
    return out


def _device(device: Any) -> Any:
    from ...device import CPU, to_device
    return CPU if device is None else to_device(device)


def _constant(arr: np.ndarray, dtype: Any, device: Any) -> Tensor:
    """A cached host constant as a tensor on ``device``: shared on the CPU, a fresh copy on a GPU."""
    return _make(get_backend(device).asarray(arr), dtype, device)


def causal_mask(length: int, source: int, device: Any = None) -> Tensor:
    """The ``(length, source)`` bool mask that is True where query i may attend to key j (j <= i)."""
    return _constant(_causal_np(length, source), _dt.bool_, _device(device))


def causal_bias(length: int, source: int, dtype: Any, device: Any = None) -> Tensor:
    """The additive form of ``causal_mask``: 0 where query i may attend to key j, ``-inf`` elsewhere."""
    return _constant(_causal_bias_np(length, source, dtype.np), dtype, _device(device))


def bool_bias(mask: Tensor, dtype: Any) -> Tensor:
    """0 where ``mask`` is True, ``-inf`` where it is False (a constant: masks carry no gradient)."""
    xp = array_module(mask.device)
    data = xp.where(mask.data, xp.zeros((), dtype.np), xp.full((), -np.inf, dtype.np))
    return _make(data, dtype, mask.device)


def _masked_softmax(scores: Tensor) -> Tensor:
    """Softmax over the last dimension that gives zeros, not NaN, for a row that is all ``-inf``."""
    m = _red.amax(scores.detach(), -1, keepdim=True)
    m = _pw.where(_pw.isinf(m), 0.0, m)  # a row of -inf: shift by 0, exp gives zeros
    e = _pw.exp(scores - m)
    s = _red.sum(e, -1, keepdim=True)
    return e / _pw.where(s == 0, 1.0, s)


def _broadcasts(shape: tuple, target: tuple) -> bool:
    if not 2 <= len(shape) <= len(target):
        return False
    try:
        return broadcast_shapes("attn_mask", shape, target) == target
    except ShapeError:
        return False


def _check(name: str, q: Any, k: Any, v: Any) -> None:
    for what, t in (("query", q), ("key", k), ("value", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: {what} must be a Tensor, got {type(t).__name__}")
        if t.ndim < 2:
            raise ShapeError(f"{name}: {what} must have at least 2 dimensions (..., seq, features), got {t.shape}")
        if not t.dtype.is_floating_point:
            raise DTypeError(f"{name}: {what} must be floating, got {t.dtype.name}")
    if q.shape[-1] != k.shape[-1]:
        raise ShapeError(f"{name}: query and key must have the same feature size, got query {q.shape} and "
                         f"key {k.shape}")
    if k.shape[-2] != v.shape[-2]:
        raise ShapeError(f"{name}: key and value must have the same sequence length, got key {k.shape} and "
                         f"value {v.shape}")


def attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, dropout_p: float = 0.0,
              is_causal: bool = False, scale: float | None = None, generator: Generator | None = None,
              name: str = "scaled_dot_product_attention") -> tuple[Tensor, Tensor]:
    """``(output, weights)`` of scaled dot-product attention (weights after dropout); see the public function."""
    length, source = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    scores = matmul(q * scale, transpose(k, -2, -1))
    # Masks are added to the scores (an add's gradient is free, a where's is not); ``masked`` says
    # whether a row can end up all -inf (a causal row alone always keeps key 0).
    masked = False
    if is_causal:
        scores = scores + causal_bias(length, source, scores.dtype, q.device)
    if attn_mask is not None:
        if not isinstance(attn_mask, Tensor):
            raise TypeError(f"{name}: attn_mask must be a Tensor, got {type(attn_mask).__name__}")
        if not _broadcasts(attn_mask.shape, scores.shape):
            raise ShapeError(f"{name}: attn_mask of shape {attn_mask.shape} does not broadcast to the attention "
                             f"scores' shape {scores.shape} (..., {length}, {source})")
        if attn_mask.dtype.is_bool:
            scores = scores + bool_bias(attn_mask, scores.dtype)
        elif attn_mask.dtype.is_floating_point:
            scores = scores + attn_mask.to(scores.dtype)
        else:
            raise DTypeError(f"{name}: attn_mask must be bool (True = attend) or floating (added to the scores), "
                             f"got {attn_mask.dtype.name}")
        masked = True
    weights = _masked_softmax(scores) if masked else softmax(scores, -1)
    if dropout_p > 0:
        weights = dropout(weights, dropout_p, True, generator=generator)
    return matmul(weights, v), weights


@composite
def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
                                 dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                                 generator: Generator | None = None) -> Tensor:
    """``softmax(query @ key^T * scale + mask) @ value`` over the last two dimensions.

    ``query`` (..., L, E), ``key`` (..., S, E), ``value`` (..., S, Ev); leading dimensions broadcast.
    ``attn_mask``: bool (True = may attend) or floating (added to the scores), broadcastable to
    (..., L, S). ``is_causal``: query i attends to keys 0..i (top-left aligned, no ``attn_mask`` then).
    ``scale`` defaults to ``1 / sqrt(E)``. ``dropout_p`` drops attention weights (always, as in
    PyTorch: pass 0 in evaluation). A fully masked query row gives a zero output (see the module docstring).
    """
    name = "scaled_dot_product_attention"
    _check(name, query, key, value)
    if is_causal and attn_mask is not None:
        raise ValueError(f"{name}: pass either attn_mask or is_causal=True, not both")
    if isinstance(dropout_p, bool) or not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"{name}: dropout_p must be between 0 and 1, got {dropout_p!r}")
    return attention(query, key, value, attn_mask, dropout_p, is_causal, scale, generator, name)[0]
