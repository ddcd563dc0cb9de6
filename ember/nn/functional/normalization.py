"""Normalization: ``batch_norm``, ``layer_norm`` and ``normalize`` (PyTorch's semantics)."""

from __future__ import annotations

from typing import Any

from ...autograd import no_grad
from ...errors import DTypeError, ShapeError
from ...ops import pointwise as _pw
from ...ops.movement import reshape
from ...ops.reduce import mean as _mean
from ...ops.reduce import norm as _norm
from ...ops.registry import composite
from ...tensor import Tensor

__all__ = ["batch_norm", "layer_norm", "normalize"]


def _check_vec(name: str, what: str, t: Any, n: int) -> None:
    if t is None:
        return
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: {what} must be a Tensor or None, got {type(t).__name__}")
    if t.shape != (n,):
        raise ShapeError(f"{name}: {what} must have shape ({n},) to match the input's {n} channels, got {t.shape}")


@composite
def _batch_norm_batch_stats(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, axes: tuple,
                            bshape: tuple) -> tuple[Tensor, Tensor, Tensor]:
    """Normalized output with the batch mean and biased variance; also returns both (kept dims)."""
    mean = _mean(x, axes, keepdim=True)
    d = x - mean
    var = _mean(d * d, axes, keepdim=True)
    scale = _pw.rsqrt(var + eps)
    if weight is not None:
        scale = scale * reshape(weight, bshape)
    out = d * scale
    if bias is not None:
        out = out + reshape(bias, bshape)
    return out, mean, var


@composite
def _batch_norm_running_stats(x: Tensor, running_mean: Tensor, running_var: Tensor, weight: Tensor | None,
                              bias: Tensor | None, eps: float, bshape: tuple) -> Tensor:
    """Normalized output with fixed statistics: one scale and one shift per channel, two passes over x."""
    scale = _pw.rsqrt(running_var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -(running_mean * scale)
    if bias is not None:
        shift = shift + bias
    return x * reshape(scale, bshape) + reshape(shift, bshape)


def batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None, weight: Tensor | None = None,
               bias: Tensor | None = None, training: bool = False, momentum: float = 0.1,
               eps: float = 1e-5) -> Tensor:
    """Normalize each channel (dim 1) of an (N, C, *) input.

    In ``training`` mode (or without running statistics) it uses the batch mean and the biased batch
    variance, and updates ``running_mean``/``running_var`` in place, when given, by
    ``(1 - momentum) * running + momentum * batch`` with the unbiased variance, as PyTorch does.
    Otherwise it uses the running statistics. (The arithmetic is in two composites; this function
    only validates, picks one, and performs the in-place update, which a cached composite must not hold.)
    """
    name = "batch_norm"
    if not isinstance(input, Tensor):
        raise TypeError(f"{name}: input must be a Tensor, got {type(input).__name__}")
    if input.ndim < 2:
        raise ShapeError(f"{name}: expected an input of shape (N, C, *) with at least 2 dimensions, "
                         f"got {input.shape}")
    if not input.dtype.is_floating_point:
        raise DTypeError(f"{name}: expected a floating tensor, got {input.dtype.name}")
    c = input.shape[1]
    for what, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                    ("bias", bias)):
        _check_vec(name, what, t, c)
    bshape = (1, c) + (1,) * (input.ndim - 2)
    if not (training or running_mean is None or running_var is None):
        return _batch_norm_running_stats(input, running_mean, running_var, weight, bias, eps, bshape)
    count = input.numel() // c if c else 0
    if training and count <= 1:
        raise ShapeError(f"{name}: expected more than 1 value per channel when training, got input of shape "
                         f"{input.shape}")
    axes = (0,) + tuple(range(2, input.ndim))
    out, mean, var = _batch_norm_batch_stats(input, weight, bias, eps, axes, bshape)
    if training and running_mean is not None and running_var is not None:
        m = float(momentum)
        with no_grad():
            batch_mean = reshape(mean.detach(), (c,))
            batch_var = reshape(var.detach(), (c,)) * (count / (count - 1))
            running_mean.copy_(running_mean * (1.0 - m) + batch_mean * m)
            running_var.copy_(running_var * (1.0 - m) + batch_var * m)
    return out


@composite
def layer_norm(input: Tensor, normalized_shape: Any, weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = 1e-5) -> Tensor:
    """Normalize over the trailing ``normalized_shape`` dimensions (biased variance), then scale by
    ``weight`` and shift by ``bias`` (both of shape ``normalized_shape``)."""
    name = "layer_norm"
    if not isinstance(input, Tensor):
        raise TypeError(f"{name}: input must be a Tensor, got {type(input).__name__}")
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    k = len(shape)
    if k == 0 or input.ndim < k or tuple(input.shape[-k:]) != shape:
        raise ShapeError(f"{name}: expected an input of shape (*, {', '.join(map(str, shape))}) "
                         f"(normalized_shape {shape}), got {input.shape}")
    if not input.dtype.is_floating_point:
        raise DTypeError(f"{name}: expected a floating tensor, got {input.dtype.name}")
    for what, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != shape:
            raise ShapeError(f"{name}: {what} must have shape {shape} (normalized_shape), got {t.shape}")
    axes = tuple(range(input.ndim - k, input.ndim))
    d = input - _mean(input, axes, keepdim=True)
    scale = _pw.rsqrt(_mean(d * d, axes, keepdim=True) + eps)
    out = d * scale
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


@composite
def normalize(input: Tensor, p: float = 2.0, dim: int = 1, eps: float = 1e-12) -> Tensor:
    """``input / max(norm_p(input, dim), eps)``: unit ``p``-norm slices along ``dim``."""
    if not isinstance(input, Tensor):
        raise TypeError(f"normalize: input must be a Tensor, got {type(input).__name__}")
    denom = _pw.clamp(_norm(input, p, dim, keepdim=True), min=eps)
    return input / denom
