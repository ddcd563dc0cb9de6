"""Evaluation metrics computed in NumPy on the host."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ShapeError
from ..tensor import Tensor

__all__ = ["roc_auc"]


def _host(name: str, what: str, x: Any) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.dtype == object or a.dtype.kind not in "biuf":
        raise TypeError(f"{name}: {what} must be numeric, got dtype {a.dtype}")
    return a.reshape(-1) if a.ndim > 1 and a.size == max(a.shape) else a


def roc_auc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a random negative.

    Rank-based (Mann-Whitney U), O(n log n); tied scores get their average rank, so a tie counts as
    half a correctly ordered pair. ``labels`` are 0/1 (or bool); both classes must be present.
    Accepts ember tensors, NumPy arrays or sequences of the same length (1-D, or ``(n, 1)``).
    """
    s = _host("roc_auc", "scores", scores).astype(np.float64, copy=False)
    y = _host("roc_auc", "labels", labels)
    if s.ndim != 1 or y.ndim != 1 or s.shape != y.shape:
        raise ShapeError(f"roc_auc: scores and labels must be 1-D of the same length, got shapes "
                         f"{np.shape(scores)} and {np.shape(labels)}")
    if np.isnan(s).any():
        raise ValueError("roc_auc: scores contain NaN")
    pos = y == 1
    if not np.all(pos | (y == 0)):
        raise ValueError(f"roc_auc: labels must be 0 or 1, got values {np.unique(y)[:10].tolist()}")
    n_pos = int(pos.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"roc_auc: needs both classes, got {n_pos} positives and {n_neg} negatives")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    # Average rank of each run of equal scores: runs start where the sorted value changes.
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], s.size]
    avg = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(s.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))
