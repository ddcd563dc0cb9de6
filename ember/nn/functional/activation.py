"""Activation functions (PyTorch's ``torch.nn.functional`` names and defaults).

Each is a composite over ember primitives (or the primitive itself), so gradients of any order
come from the primitives'. Piecewise functions pick their branch with ``where`` and feed each
branch an input that is finite there, so the unselected branch never turns a gradient into NaN.
"""

from __future__ import annotations

import math
from typing import Any

from ...errors import DTypeError
from ...ops import pointwise as _pw
from ...ops.composite import log_softmax as _log_softmax
from ...ops.composite import softmax as _softmax
from ...ops.registry import composite
from ...tensor import Tensor

__all__ = ["elu", "gelu", "hardtanh", "leaky_relu", "log_softmax", "logsigmoid", "relu", "relu6", "sigmoid",
           "silu", "softmax", "softplus", "tanh"]


def _check(name: str, x: Any) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(x).__name__}")


def _floating(name: str, x: Any) -> None:
    _check(name, x)
    if not x.dtype.is_floating_point:
        raise DTypeError(f"{name}: expected a floating tensor, got {x.dtype.name}")


def _maybe_inplace(x: Tensor, out: Tensor, inplace: bool) -> Tensor:
    # In-place variants write the composite's (pure) result back: the side effect stays outside the
    # composite, so a compiled, cached composite never has to replay it.
    return x.copy_(out) if inplace else out


def relu(input: Tensor, inplace: bool = False) -> Tensor:
    """``max(x, 0)``."""
    _check("relu", input)
    return input.relu_() if inplace else _pw.relu(input)


def relu6(input: Tensor, inplace: bool = False) -> Tensor:
    """``min(max(x, 0), 6)``."""
    return hardtanh(input, 0.0, 6.0, inplace)


@composite
def _hardtanh(x: Tensor, min_val: float, max_val: float) -> Tensor:
    inside = (x > min_val) & (x < max_val)
    return _pw.where(inside, x, _pw.where(x <= min_val, float(min_val), float(max_val)))


def hardtanh(input: Tensor, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False) -> Tensor:
    """``x`` clamped to ``[min_val, max_val]`` (the gradient passes strictly inside, as in PyTorch)."""
    _floating("hardtanh", input)
    if min_val > max_val:
        raise ValueError(f"hardtanh: min_val ({min_val}) must not exceed max_val ({max_val})")
    return _maybe_inplace(input, _hardtanh(input, min_val, max_val), inplace)


@composite
def _leaky_relu(x: Tensor, negative_slope: float) -> Tensor:
    return _pw.where(x > 0, x, x * float(negative_slope))


def leaky_relu(input: Tensor, negative_slope: float = 0.01, inplace: bool = False) -> Tensor:
    """``x`` for ``x > 0``, ``negative_slope * x`` otherwise."""
    _floating("leaky_relu", input)
    return _maybe_inplace(input, _leaky_relu(input, negative_slope), inplace)


@composite
def _elu(x: Tensor, alpha: float) -> Tensor:
    pos = x > 0
    neg = _pw.where(pos, 0.0, x)  # exp only ever sees x <= 0
    return _pw.where(pos, x, _pw.expm1(neg) * float(alpha))


def elu(input: Tensor, alpha: float = 1.0, inplace: bool = False) -> Tensor:
    """``x`` for ``x > 0``, ``alpha * (exp(x) - 1)`` otherwise."""
    _floating("elu", input)
    return _maybe_inplace(input, _elu(input, alpha), inplace)


_SQRT_HALF = 1.0 / math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


@composite
def gelu(input: Tensor, approximate: str = "none") -> Tensor:
    """Gaussian error linear unit: ``x * Phi(x)``; ``approximate='tanh'`` uses the tanh formula."""
    _floating("gelu", input)
    if approximate == "none":
        return input * (_pw.erf(input * _SQRT_HALF) + 1.0) * 0.5
    if approximate == "tanh":
        inner = (input + input * input * input * 0.044715) * _SQRT_2_OVER_PI
        return input * (_pw.tanh(inner) + 1.0) * 0.5
    raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


@composite
def _silu(x: Tensor) -> Tensor:
    return x * _pw.sigmoid(x)


def silu(input: Tensor, inplace: bool = False) -> Tensor:
    """``x * sigmoid(x)`` (also called swish)."""
    _floating("silu", input)
    return _maybe_inplace(input, _silu(input), inplace)


def sigmoid(input: Tensor) -> Tensor:
    """``1 / (1 + exp(-x))``."""
    _check("sigmoid", input)
    return _pw.sigmoid(input)


def tanh(input: Tensor) -> Tensor:
    """Hyperbolic tangent."""
    _check("tanh", input)
    return _pw.tanh(input)


@composite
def softplus(input: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """``log(1 + exp(beta * x)) / beta``; linear (``x``) where ``beta * x > threshold``, as in PyTorch."""
    _floating("softplus", input)
    bx = input * float(beta) if beta != 1 else input
    big = bx > threshold
    safe = _pw.where(big, 0.0, bx)  # exp never overflows, and its gradient is 0 where unused
    soft = _pw.log1p(_pw.exp(safe))
    if beta != 1:
        soft = soft / float(beta)
    return _pw.where(big, input, soft)


@composite
def log1pexp(x: Tensor) -> Tensor:
    """``log(1 + exp(x))`` for every ``x`` without overflow, with gradient ``sigmoid(x)`` everywhere.

    Written as ``max(x, 0) + log1p(exp(-|x|))`` where both kinks take their right derivative at 0,
    so the two pieces' subgradients add up to the true ``sigmoid(0) = 1/2`` there.
    """
    m = _pw.where(x >= 0, x, 0.0)
    a = m + m - x  # |x|
    return m + _pw.log1p(_pw.exp(-a))


@composite
def logsigmoid(input: Tensor) -> Tensor:
    """``log(sigmoid(x)) = -log(1 + exp(-x))``, stable for large ``|x|``."""
    _floating("logsigmoid", input)
    return -log1pexp(-input)


def _softmax_dim(ndim: int) -> int:
    # PyTorch's legacy rule when no dim is given.
    return 0 if ndim in (0, 1, 3) else 1


def softmax(input: Tensor, dim: int | None = None, dtype: Any = None) -> Tensor:
    """``exp(x) / sum(exp(x))`` along ``dim`` (stable: shifted by the maximum)."""
    _check("softmax", input)
    return _softmax(input, _softmax_dim(input.ndim) if dim is None else dim, dtype)


def log_softmax(input: Tensor, dim: int | None = None, dtype: Any = None) -> Tensor:
    """``x - logsumexp(x)`` along ``dim``."""
    _check("log_softmax", input)
    return _log_softmax(input, _softmax_dim(input.ndim) if dim is None else dim, dtype)
