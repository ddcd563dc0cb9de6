"""Linear maps, convolution, pooling, dropout and padding (PyTorch's ``torch.nn.functional`` names).

``conv2d``, ``max_pool2d``, ``avg_pool2d``, ``unfold``, ``fold``, ``pad`` and ``one_hot`` are Ember's
core ops, re-exported here under their PyTorch names.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import DTypeError, ShapeError
from ...ops import pointwise as _pw
from ...ops.creation import tensor as _tensor
from ...ops.linalg import avg_pool2d, conv2d, fold, matmul, max_pool2d, unfold
from ...ops.movement import one_hot, pad, permute, reshape, unsqueeze
from ...ops.nn_ops import linear2d
from ...ops.random import Generator, rand
from ...ops.reduce import mean as _mean
from ...ops.reduce import sum as _sum
from ...ops.registry import composite
from ...tensor import Tensor

__all__ = ["adaptive_avg_pool2d", "avg_pool2d", "bilinear", "conv2d", "dropout", "fold", "linear", "max_pool2d",
           "one_hot", "pad", "unfold"]


def _check(name: str, what: str, x: Any) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: {what} must be a Tensor, got {type(x).__name__}")


@composite
def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``input @ weight.T + bias`` over the last dimension: ``input`` is (*, in), ``weight`` (out, in).

    One GEMM with the bias added in place (the ``linear`` primitive); leading dimensions are
    flattened into the GEMM's rows, not looped over.
    """
    _check("linear", "input", input)
    _check("linear", "weight", weight)
    if bias is not None:
        _check("linear", "bias", bias)
    if weight.ndim != 2:
        raise ShapeError(f"linear: weight must be 2-D (out_features, in_features), got shape {weight.shape}")
    if input.ndim == 0 or input.shape[-1] != weight.shape[1]:
        raise ShapeError(f"linear: expected input of shape (*, {weight.shape[1]}) for a weight of shape "
                         f"{weight.shape}, got {input.shape}")
    if input.ndim == 2:
        return linear2d(input, weight, bias)
    lead = input.shape[:-1]
    out = linear2d(reshape(input, (-1, weight.shape[1])), weight, bias)
    return reshape(out, lead + (weight.shape[0],))


@composite
def bilinear(input1: Tensor, input2: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``y[..., k] = input1 @ weight[k] @ input2 + bias[k]``: inputs (*, in1) and (*, in2), weight
    (out, in1, in2). One GEMM against the weight laid out as (in1, out * in2)."""
    name = "bilinear"
    for what, t in (("input1", input1), ("input2", input2), ("weight", weight)):
        _check(name, what, t)
    if weight.ndim != 3:
        raise ShapeError(f"{name}: weight must be 3-D (out, in1, in2), got shape {weight.shape}")
    n_out, in1, in2 = weight.shape
    if (input1.ndim == 0 or input1.shape[-1] != in1 or input2.ndim == 0 or input2.shape[-1] != in2
            or input1.shape[:-1] != input2.shape[:-1]):
        raise ShapeError(f"{name}: expected inputs of shapes (*, {in1}) and (*, {in2}) with the same leading "
                         f"dimensions for a weight of shape {weight.shape}, got {input1.shape} and {input2.shape}")
    if bias is not None and bias.shape != (n_out,):
        raise ShapeError(f"{name}: bias must have shape ({n_out},), got {bias.shape}")
    lead = input1.shape[:-1]
    x1 = reshape(input1, (-1, in1))
    x2 = reshape(input2, (-1, in2))
    w = reshape(permute(weight, (1, 0, 2)), (in1, n_out * in2))
    t = reshape(matmul(x1, w), (-1, n_out, in2))
    y = _sum(t * unsqueeze(x2, 1), -1)
    if bias is not None:
        y = y + bias
    return reshape(y, lead + (n_out,))


def _adaptive_matrix(size: int, out: int, dtype: Any, device: Any) -> Tensor:
    """(out, size) matrix averaging PyTorch's adaptive windows [floor(i*size/out), ceil((i+1)*size/out))."""
    m = np.zeros((out, size))
    for i in range(out):
        lo, hi = (i * size) // out, -((-(i + 1) * size) // out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return _tensor(m, dtype=dtype, device=device)


@composite
def adaptive_avg_pool2d(input: Tensor, output_size: Any) -> Tensor:
    """Average pooling to a fixed ``output_size`` (an int, or a pair whose entries may be None to keep
    that input size), with PyTorch's window boundaries."""
    name = "adaptive_avg_pool2d"
    _check(name, "input", input)
    if input.ndim not in (3, 4):
        raise ShapeError(f"{name}: expected a 3-D (C, H, W) or 4-D (N, C, H, W) input, got shape {input.shape}")
    if not input.dtype.is_floating_point:
        raise DTypeError(f"{name}: expected a floating tensor, got {input.dtype.name}")
    h, w = input.shape[-2:]
    sizes = (output_size, output_size) if isinstance(output_size, int) or output_size is None else tuple(output_size)
    if len(sizes) != 2 or any(s is not None and (not isinstance(s, int) or isinstance(s, bool) or s < 1)
                              for s in sizes):
        raise ShapeError(f"{name}: output_size must be a positive int or a pair of positive ints (or None), "
                         f"got {output_size!r}")
    oh, ow = (h if sizes[0] is None else sizes[0]), (w if sizes[1] is None else sizes[1])
    if h == 0 or w == 0:
        raise ShapeError(f"{name}: input has an empty spatial dimension (shape {input.shape})")
    if (oh, ow) == (h, w):
        return input
    if oh == 1 and ow == 1:
        return _mean(input, (-2, -1), keepdim=True)
    if h % oh == 0 and w % ow == 0:  # equal windows tile the input: a reshape and one mean
        x = reshape(input, input.shape[:-2] + (oh, h // oh, ow, w // ow))
        return _mean(x, (-3, -1))
    # Overlapping or unequal windows: two small GEMMs with the averaging matrices, P_h @ x @ P_w^T.
    y = input if oh == h else matmul(_adaptive_matrix(h, oh, input.dtype, input.device), input)
    if ow != w:
        y = matmul(y, permute(_adaptive_matrix(w, ow, input.dtype, input.device), (1, 0)))
    return y


def dropout(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False,
            generator: Generator | None = None) -> Tensor:
    """Zero each element with probability ``p`` and scale the rest by ``1 / (1 - p)``; the identity when
    not ``training``. Draws from ``generator`` (default: Ember's default generator, so ``ember.manual_seed``
    makes it reproducible). Not a composite: it draws random numbers and may write in place."""
    _check("dropout", "input", input)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: probability p must be between 0 and 1, got {p!r}")
    if not training or p == 0:
        return input
    if not input.dtype.is_floating_point:
        raise DTypeError(f"dropout: expected a floating tensor, got {input.dtype.name}")
    if p == 1:
        out = input * 0.0
    else:
        draw_dtype = input.dtype if input.dtype.itemsize >= 4 else "float32"  # float16 would round u up to 1
        u = rand(input.shape, dtype=draw_dtype, device=input.device, generator=generator)
        mask = _pw.cast(u >= float(p), input.dtype) * (1.0 / (1.0 - p))
        out = input * mask
    return input.copy_(out) if inplace else out
