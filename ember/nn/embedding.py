"""``Embedding`` and ``EmbeddingBag``: lookup tables with PyTorch's parameters, init and repr."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..autograd import no_grad
from ..dtypes import to_dtype
from ..errors import ShapeError
from ..ops.random import randn
from ..tensor import Tensor
from .functional.embedding import _embedding, _embedding_bag, _padding
from .module import Module
from .parameter import Parameter

__all__ = ["Embedding", "EmbeddingBag"]


def _table(name: str, num_embeddings: Any, embedding_dim: Any, padding_idx: Any, weight: Tensor | None,
           dtype: Any, device: Any) -> tuple[int, int, int | None, Parameter]:
    for what, v in (("num_embeddings", num_embeddings), ("embedding_dim", embedding_dim)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name}: {what} must be a non-negative int, got {v!r}")
    num, dim = int(num_embeddings), int(embedding_dim)
    pad = _padding(name, padding_idx, num)
    if weight is None:
        w = randn(num, dim, dtype=to_dtype(dtype) if dtype is not None else None, device=device)
        if pad is not None:
            w.data[pad] = 0
    else:
        if not isinstance(weight, Tensor):
            raise TypeError(f"{name}: _weight must be a Tensor, got {type(weight).__name__}")
        if tuple(weight.shape) != (num, dim):
            raise ShapeError(f"{name}: _weight has shape {tuple(weight.shape)}, expected ({num}, {dim})")
        w = weight.detach()
    return num, dim, pad, Parameter(w)


def _extra(m: Any, pad_first: bool) -> str:
    s = f"{m.num_embeddings}, {m.embedding_dim}"
    if pad_first and m.padding_idx is not None:
        s += f", padding_idx={m.padding_idx}"
    if m.max_norm is not None:
        s += f", max_norm={m.max_norm}"
    if m.norm_type != 2:
        s += f", norm_type={m.norm_type}"
    if m.scale_grad_by_freq:
        s += f", scale_grad_by_freq={m.scale_grad_by_freq}"
    return s


def _reset(m: Any) -> None:
    with no_grad():
        m.weight.data[...] = randn(*m.weight.shape, dtype=m.weight.dtype).data
        if m.padding_idx is not None:
            m.weight.data[m.padding_idx] = 0
        m.weight._version[0] += 1


class Embedding(Module):
    """A ``(num_embeddings, embedding_dim)`` table looked up by integer indices, initialized N(0, 1).

    The ``padding_idx`` row starts at zero and never receives a gradient. With ``sparse=True``,
    ``weight.grad`` is a ``RowSparseGrad`` holding only the rows used by the batch.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 max_norm: float | None = None, norm_type: float = 2.0, scale_grad_by_freq: bool = False,
                 sparse: bool = False, _weight: Tensor | None = None, _freeze: bool = False, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        num, dim, pad, w = _table("Embedding", num_embeddings, embedding_dim, padding_idx, _weight, dtype, device)
        self.num_embeddings, self.embedding_dim, self.padding_idx = num, dim, pad
        self.max_norm, self.norm_type = max_norm, norm_type
        self.scale_grad_by_freq, self.sparse = bool(scale_grad_by_freq), bool(sparse)
        self.weight = w
        if _freeze:
            self.weight.requires_grad_(False)

    def reset_parameters(self) -> None:
        """Redraw the table from N(0, 1) (the padding row set to zero)."""
        _reset(self)

    @classmethod
    def from_pretrained(cls, embeddings: Tensor, freeze: bool = True, padding_idx: int | None = None,
                        max_norm: float | None = None, norm_type: float = 2.0, scale_grad_by_freq: bool = False,
                        sparse: bool = False) -> Embedding:
        """An ``Embedding`` whose table is ``embeddings`` (2-D; shared, not copied), frozen by default."""
        if not isinstance(embeddings, Tensor) or embeddings.ndim != 2:
            raise ShapeError("Embedding.from_pretrained: embeddings must be a 2-D Tensor, got "
                             f"{getattr(embeddings, 'shape', type(embeddings).__name__)}")
        rows, dim = embeddings.shape
        return cls(rows, dim, padding_idx=padding_idx, max_norm=max_norm, norm_type=norm_type,
                   scale_grad_by_freq=scale_grad_by_freq, sparse=sparse, _weight=embeddings, _freeze=freeze)

    def forward(self, input: Any) -> Tensor:
        return _embedding("Embedding", input, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                          self.scale_grad_by_freq, self.sparse)

    def extra_repr(self) -> str:
        s = _extra(self, True)
        if self.sparse:
            s += ", sparse=True"
        return s


class EmbeddingBag(Module):
    """Sums, means or maxima of bags of embeddings (PyTorch's ``EmbeddingBag``), initialized N(0, 1).

    ``forward(input, offsets=None, per_sample_weights=None)``: ``input`` 2-D ``(B, bag)`` for
    fixed-size bags, or 1-D ids with ``offsets`` (start of each bag; empty bags give zeros).
    Returns ``(B, embedding_dim)``.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, max_norm: float | None = None,
                 norm_type: float = 2.0, scale_grad_by_freq: bool = False, mode: str = "mean", sparse: bool = False,
                 _weight: Tensor | None = None, include_last_offset: bool = False, padding_idx: int | None = None,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        if mode not in ("sum", "mean", "max"):
            raise ValueError(f"EmbeddingBag: mode must be 'sum', 'mean' or 'max', got {mode!r}")
        num, dim, pad, w = _table("EmbeddingBag", num_embeddings, embedding_dim, padding_idx, _weight, dtype, device)
        self.num_embeddings, self.embedding_dim, self.padding_idx = num, dim, pad
        self.max_norm, self.norm_type = max_norm, norm_type
        self.scale_grad_by_freq, self.mode, self.sparse = bool(scale_grad_by_freq), mode, bool(sparse)
        self.include_last_offset = bool(include_last_offset)
        self.weight = w

    def reset_parameters(self) -> None:
        """Redraw the table from N(0, 1) (the padding row set to zero)."""
        _reset(self)

    @classmethod
    def from_pretrained(cls, embeddings: Tensor, freeze: bool = True, max_norm: float | None = None,
                        norm_type: float = 2.0, scale_grad_by_freq: bool = False, mode: str = "mean",
                        sparse: bool = False, include_last_offset: bool = False,
                        padding_idx: int | None = None) -> EmbeddingBag:
        """An ``EmbeddingBag`` whose table is ``embeddings`` (2-D; shared, not copied), frozen by default."""
        if not isinstance(embeddings, Tensor) or embeddings.ndim != 2:
            raise ShapeError("EmbeddingBag.from_pretrained: embeddings must be a 2-D Tensor, got "
                             f"{getattr(embeddings, 'shape', type(embeddings).__name__)}")
        rows, dim = embeddings.shape
        bag = cls(rows, dim, max_norm=max_norm, norm_type=norm_type, scale_grad_by_freq=scale_grad_by_freq, mode=mode,
                  sparse=sparse, _weight=embeddings, include_last_offset=include_last_offset, padding_idx=padding_idx)
        bag.weight.requires_grad_(not freeze)
        return bag

    def forward(self, input: Any, offsets: Any = None, per_sample_weights: Tensor | None = None) -> Tensor:
        return _embedding_bag("EmbeddingBag", input, self.weight, offsets, self.max_norm, self.norm_type,
                              self.scale_grad_by_freq, self.mode, self.sparse, per_sample_weights,
                              self.include_last_offset, self.padding_idx)

    def extra_repr(self) -> str:
        s = _extra(self, False) + f", mode={self.mode!r}"
        if self.padding_idx is not None:
            s += f", padding_idx={self.padding_idx}"
        return s
