"""Composite functions: plain functions over primitives, marked ``@composite``.

Their gradients come from the primitives'; the compiler fuses them later.
"""

from __future__ import annotations

from typing import Any

from ..tensor import Tensor
from . import reduce
from ._shape import normalize_dim
from .registry import composite


@composite
def softmax(x: Tensor, dim: int = -1, dtype: Any = None) -> Tensor:
    """``exp(x) / sum(exp(x))`` along ``dim``, shifted by the maximum for stability."""
    if dtype is not None:
        x = x.to(dtype)
    d = normalize_dim("softmax", dim, x.ndim)
    e = (x - reduce.amax(x.detach(), d, keepdim=True)).exp()
    return e / reduce.sum(e, d, keepdim=True)


@composite
def log_softmax(x: Tensor, dim: int = -1, dtype: Any = None) -> Tensor:
    """``x - logsumexp(x)`` along ``dim``."""
    if dtype is not None:
        x = x.to(dtype)
    d = normalize_dim("log_softmax", dim, x.ndim)
    return x - reduce.logsumexp(x, d, keepdim=True)
