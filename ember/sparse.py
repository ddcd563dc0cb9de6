"""Row-sparse gradients: what ``Embedding(sparse=True)`` leaves in ``weight.grad``.

A ``RowSparseGrad`` stands for a dense ``(num_rows, *row_shape)`` gradient that is zero except on
the rows in ``indices``. Optimizers that understand it (SGD, Adagrad, Adam, ``SparseAdam``) touch
only those rows, so a step costs O(rows in the batch), not O(vocabulary).
Indices are always unique and sorted (coalesced) after construction.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .dtypes import FLOATING, int64
from .errors import DTypeError, ShapeError
from .ops.sparse_ops import coalesce_rows
from .tensor import Tensor, _make


class RowSparseGrad:
    """A gradient with non-zero rows ``indices`` (int64, ``(k,)``) holding ``values`` (``(k, *row_shape)``)."""

    is_sparse = True

    def __init__(self, indices: Tensor, values: Tensor, shape: tuple[int, ...]) -> None:
        shape = tuple(int(s) for s in shape)
        if indices.ndim != 1 or indices.dtype.category == FLOATING:
            raise DTypeError(f"RowSparseGrad: indices must be a 1-d integer tensor, got {indices.dtype} "
                             f"of shape {indices.shape}")
        if values.shape[:1] != indices.shape or tuple(values.shape[1:]) != shape[1:]:
            raise ShapeError(f"RowSparseGrad: values of shape {values.shape} do not fit {indices.shape[0]} rows "
                             f"of a tensor of shape {shape}")
        idx = np.asarray(indices.data, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= shape[0]):
            raise ShapeError(f"RowSparseGrad: row index out of range for {shape[0]} rows")
        vals = values.data
        if idx.size > 1 and not np.all(idx[1:] > idx[:-1]):
            idx, vals, _ = coalesce_rows(np, idx, vals)
        self.indices = _make(idx, int64, indices.device)
        self.values = _make(vals, values.dtype, values.device)
        self.shape = shape

    @property
    def dtype(self) -> Any:
        return self.values.dtype

    @property
    def device(self) -> Any:
        return self.values.device

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def to_dense(self) -> Tensor:
        """The full gradient as an ordinary tensor (zeros off the stored rows)."""
        out = np.zeros(self.shape, dtype=self.values.data.dtype)
        out[self.indices.data] = self.values.data
        return _make(out, self.values.dtype, self.values.device)

    def __add__(self, other: Any) -> Any:
        if isinstance(other, RowSparseGrad):
            if other.shape != self.shape:
                raise ShapeError(f"RowSparseGrad: cannot add gradients of shapes {self.shape} and {other.shape}")
            idx = np.concatenate([self.indices.data, other.indices.data])
            vals = np.concatenate([self.values.data, other.values.data.astype(self.values.data.dtype)])
            return RowSparseGrad(_make(idx, int64, self.device), _make(vals, self.dtype, self.device), self.shape)
        if isinstance(other, Tensor):
            return self.to_dense() + other
        return NotImplemented

    __radd__ = __add__

    def mul_(self, factor: Any) -> RowSparseGrad:
        """Scale in place (what ``clip_grad_norm_`` does)."""
        f = factor.data if isinstance(factor, Tensor) else factor
        np.multiply(self.values.data, f, out=self.values.data, casting="unsafe")
        return self

    def clamp_(self, min: Any = None, max: Any = None) -> RowSparseGrad:
        np.clip(self.values.data, min, max, out=self.values.data)
        return self

    def __repr__(self) -> str:
        return (f"RowSparseGrad(shape={self.shape}, rows={self.indices.shape[0]}, "
                f"dtype={self.dtype})")
