"""Parameter initializers with PyTorch's names, distributions and fan rules (``torch.nn.init``).

Every function fills its tensor in place under ``no_grad`` and returns it. Random ones draw from
``generator`` (default: Ember's default generator, so ``ember.manual_seed`` makes them reproducible).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..autograd import no_grad
from ..errors import ShapeError
from ..ops.creation import tensor as _tensor
from ..ops.random import Generator, default_generator, normal, uniform
from ..tensor import Tensor

__all__ = ["calculate_gain", "constant_", "eye_", "kaiming_normal_", "kaiming_uniform_", "normal_", "ones_",
           "orthogonal_", "trunc_normal_", "uniform_", "xavier_normal_", "xavier_uniform_", "zeros_"]

_LINEAR_GAIN = ("linear", "identity", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                "conv_transpose3d", "sigmoid")


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for ``nonlinearity``: 1 for linear/conv/sigmoid, 5/3 for tanh, sqrt(2) for
    relu, sqrt(2 / (1 + slope^2)) for leaky_relu (``param`` = slope, 0.01 by default), 3/4 for selu."""
    if nonlinearity in _LINEAR_GAIN:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, (int, float)) and not isinstance(param, bool):
            slope = float(param)
        else:
            raise ValueError(f"calculate_gain: negative_slope {param!r} is not a valid number")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}")


def _check(name: str, tensor: Any) -> None:
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(tensor).__name__}")


def _calculate_fan_in_and_fan_out(tensor: Tensor) -> tuple[int, int]:
    """``(fan_in, fan_out)`` as PyTorch computes them: dim 1 and dim 0 times the receptive field
    (the product of dims 2 onwards). Needs at least 2 dimensions."""
    _check("calculate_fan_in_and_fan_out", tensor)
    if tensor.ndim < 2:
        raise ShapeError(f"init: fan in and fan out can not be computed for a tensor with fewer than 2 dimensions "
                         f"(shape {tensor.shape})")
    receptive = 1
    for s in tensor.shape[2:]:
        receptive *= s
    return tensor.shape[1] * receptive, tensor.shape[0] * receptive


calculate_fan_in_and_fan_out = _calculate_fan_in_and_fan_out


def _fan(tensor: Tensor, mode: str) -> int:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"init: mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


def _fill(tensor: Tensor, values: Tensor) -> Tensor:
    with no_grad():
        tensor.copy_(values)
    return tensor


def _draw_dtype(tensor: Tensor) -> Any:
    # Draw in at least float32 (float16 rounding would push uniform samples onto the bounds);
    # integer tensors get float samples that copy_ truncates, as PyTorch does not allow them at all.
    return tensor.dtype if tensor.dtype.is_floating_point and tensor.dtype.itemsize >= 4 else "float32"


def uniform_(tensor: Tensor, a: float = 0.0, b: float = 1.0, generator: Generator | None = None) -> Tensor:
    """Fill with samples from U(a, b)."""
    _check("uniform_", tensor)
    return _fill(tensor, uniform(tensor.shape, a, b, dtype=_draw_dtype(tensor), device=tensor.device,
                                 generator=generator))


def normal_(tensor: Tensor, mean: float = 0.0, std: float = 1.0, generator: Generator | None = None) -> Tensor:
    """Fill with samples from N(mean, std^2)."""
    _check("normal_", tensor)
    return _fill(tensor, normal(mean, std, tensor.shape, dtype=_draw_dtype(tensor), device=tensor.device,
                                generator=generator))


def constant_(tensor: Tensor, val: float) -> Tensor:
    """Fill with ``val``."""
    _check("constant_", tensor)
    return _fill(tensor, val)


def ones_(tensor: Tensor) -> Tensor:
    """Fill with 1."""
    return constant_(tensor, 1.0)


def zeros_(tensor: Tensor) -> Tensor:
    """Fill with 0."""
    return constant_(tensor, 0.0)


def eye_(tensor: Tensor) -> Tensor:
    """Fill a 2-D tensor with the identity (ones on the main diagonal)."""
    _check("eye_", tensor)
    if tensor.ndim != 2:
        raise ShapeError(f"eye_: only 2-D tensors are supported, got shape {tensor.shape}")
    return _fill(tensor, _tensor(np.eye(*tensor.shape), dtype=tensor.dtype, device=tensor.device))


def xavier_uniform_(tensor: Tensor, gain: float = 1.0, generator: Generator | None = None) -> Tensor:
    """Glorot uniform: U(-a, a) with ``a = gain * sqrt(6 / (fan_in + fan_out))``."""
    _check("xavier_uniform_", tensor)
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    a = gain * math.sqrt(6.0 / float(fan_in + fan_out)) if fan_in + fan_out else 0.0
    return uniform_(tensor, -a, a, generator)


def xavier_normal_(tensor: Tensor, gain: float = 1.0, generator: Generator | None = None) -> Tensor:
    """Glorot normal: N(0, std^2) with ``std = gain * sqrt(2 / (fan_in + fan_out))``."""
    _check("xavier_normal_", tensor)
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out)) if fan_in + fan_out else 0.0
    return normal_(tensor, 0.0, std, generator)


def _kaiming_std(name: str, tensor: Tensor, a: float, mode: str, nonlinearity: str) -> float | None:
    _check(name, tensor)
    if 0 in tensor.shape:
        return None  # nothing to fill (PyTorch warns and returns)
    fan = _fan(tensor, mode)
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)


def kaiming_uniform_(tensor: Tensor, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                     generator: Generator | None = None) -> Tensor:
    """He uniform: U(-bound, bound) with ``bound = gain * sqrt(3 / fan)``, ``gain = calculate_gain(
    nonlinearity, a)`` and ``fan`` the tensor's fan_in or fan_out (``mode``)."""
    std = _kaiming_std("kaiming_uniform_", tensor, a, mode, nonlinearity)
    if std is None:
        return tensor
    bound = math.sqrt(3.0) * std
    return uniform_(tensor, -bound, bound, generator)


def kaiming_normal_(tensor: Tensor, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                    generator: Generator | None = None) -> Tensor:
    """He normal: N(0, std^2) with ``std = gain / sqrt(fan)``."""
    std = _kaiming_std("kaiming_normal_", tensor, a, mode, nonlinearity)
    if std is None:
        return tensor
    return normal_(tensor, 0.0, std, generator)


def orthogonal_(tensor: Tensor, gain: float = 1.0, generator: Generator | None = None) -> Tensor:
    """A (semi-)orthogonal matrix times ``gain``: the Q of the QR decomposition of a standard normal
    (rows, numel / rows) matrix, its columns' signs fixed by R's diagonal so Q is uniformly (Haar)
    distributed. Dimensions after the first are flattened."""
    _check("orthogonal_", tensor)
    if tensor.ndim < 2:
        raise ShapeError(f"orthogonal_: only tensors with 2 or more dimensions are supported, got shape "
                         f"{tensor.shape}")
    if tensor.numel() == 0:
        return tensor
    rows = tensor.shape[0]
    cols = tensor.numel() // rows
    gen = generator if generator is not None else default_generator
    flat = normal(0.0, 1.0, (rows, cols), dtype="float64", generator=gen).data
    if rows < cols:
        flat = flat.T
    q, r = np.linalg.qr(flat)
    q = q * np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return _fill(tensor, _tensor((q * gain).reshape(tensor.shape), dtype=tensor.dtype, device=tensor.device))


def _std_normal_cdf(x: np.ndarray) -> np.ndarray:
    from ..ops.pointwise import erf
    return 0.5 * (1.0 + erf(_tensor(x / math.sqrt(2.0), dtype="float64")).data)


def trunc_normal_(tensor: Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0,
                  generator: Generator | None = None) -> Tensor:
    """Fill with samples from N(mean, std^2) truncated to ``[a, b]`` (absolute bounds, as in PyTorch).

    Rejection sampling (redrawing only the rejected entries) when the interval holds a fair share of
    the mass; otherwise inverse-CDF sampling by bisection, which stays exact deep in the tails.
    """
    _check("trunc_normal_", tensor)
    if std <= 0 or not a < b:
        raise ValueError(f"trunc_normal_: need std > 0 and a < b, got std={std}, a={a}, b={b}")
    gen = generator if generator is not None else default_generator
    n = tensor.numel()
    lo, hi = (a - mean) / std, (b - mean) / std
    p_lo, p_hi = (0.5 * (1 + math.erf(v / math.sqrt(2))) for v in (lo, hi))
    if p_hi - p_lo >= 0.05:
        out = gen.rng.standard_normal(n)
        bad = np.flatnonzero((out < lo) | (out > hi))
        while bad.size:
            out[bad] = gen.rng.standard_normal(bad.size)
            bad = bad[(out[bad] < lo) | (out[bad] > hi)]
    else:
        u = gen.rng.uniform(p_lo, p_hi, n)
        left, right = np.full(n, lo), np.full(n, hi)
        for _ in range(64):  # halves the bracket each time: down to float64 resolution
            mid = 0.5 * (left + right)
            below = _std_normal_cdf(mid) < u
            left = np.where(below, mid, left)
            right = np.where(below, right, mid)
        out = 0.5 * (left + right)
    values = np.clip(out * std + mean, a, b).reshape(tensor.shape)
    return _fill(tensor, _tensor(values, dtype=tensor.dtype, device=tensor.device))
