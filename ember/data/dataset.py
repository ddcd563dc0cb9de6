"""Datasets: the map-style ``Dataset`` protocol, ``TensorDataset``, ``Subset`` and ``random_split``.

Batched access. A dataset may define ``__getitems__(indices)`` returning the *collated* batch for
those indices (what ``default_collate([ds[i] for i in indices])`` would give, as ember tensors or
NumPy arrays). ``DataLoader`` uses it instead of one ``__getitem__`` call per item when it collates
with the default collate function; that is what makes an epoch over an in-memory tensor dataset
cost a few fancy-index copies instead of tens of thousands of Python calls. (PyTorch's
``__getitems__`` returns a list of samples; ember's returns the batch itself.)
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, Generic, TypeVar

import numpy as np

from ..errors import EmberError, EmberIndexError, ShapeError
from ..ops.random import Generator, default_generator
from ..tensor import Tensor, _make

T_co = TypeVar("T_co", covariant=True)

__all__ = ["DataError", "Dataset", "IterableDataset", "Subset", "TensorDataset", "random_split"]


class DataError(EmberError, ValueError):
    """A data file is missing, corrupt or not in the expected format, or data do not fit together."""


class Dataset(Generic[T_co]):
    """A map-style dataset: subclasses define ``__getitem__(index)`` and ``__len__()``."""

    def __getitem__(self, index: int) -> T_co:
        raise NotImplementedError(f"{type(self).__name__} must define __getitem__")

    def __len__(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} must define __len__")


class IterableDataset(Dataset[T_co]):
    """A stream of samples: subclasses define ``__iter__``. ``DataLoader`` batches it in order
    (samplers and ``shuffle`` do not apply)."""

    def __iter__(self) -> Iterator[T_co]:
        raise NotImplementedError(f"{type(self).__name__} must define __iter__")


def check_index(name: str, index: Any, n: int) -> int:
    """``index`` as a non-negative int below ``n`` (negative indices count from the end)."""
    if isinstance(index, bool) or not hasattr(index, "__index__"):
        raise TypeError(f"{name}: index must be an int, got {type(index).__name__}")
    i = int(index)
    if not -n <= i < n:
        raise EmberIndexError(f"{name}: index {i} is out of range for a dataset of {n} items")
    return i + n if i < 0 else i


def check_indices(name: str, indices: Any, n: int) -> np.ndarray:
    """A batch of indices as an int64 array with negative indices wrapped; out-of-range raises."""
    idx = np.asarray(indices.data if isinstance(indices, Tensor) else indices)
    if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
        raise TypeError(f"{name}: indices must be a 1-D sequence of ints, got {type(indices).__name__} "
                        f"with dtype {idx.dtype} and shape {idx.shape}")
    idx = idx.astype(np.int64, copy=False)
    if idx.size and (idx.min() < -n or idx.max() >= n):
        bad = idx[(idx < -n) | (idx >= n)][0]
        raise EmberIndexError(f"{name}: index {int(bad)} is out of range for a dataset of {n} items")
    return np.where(idx < 0, idx + n, idx)


def wrap(array: Any, like: Tensor) -> Tensor:
    """An ember tensor over ``array`` with ``like``'s dtype and device (no copy, not on the tape)."""
    if not isinstance(array, np.ndarray) and like.device.type == "cpu":  # a NumPy scalar from t.data[i]
        array = np.asarray(array)
    return _make(array, like.dtype, like.device)  # on a GPU, indexing gives a device array (0-d for a scalar)


class TensorDataset(Dataset[tuple]):
    """Samples are ``(t[i] for t in tensors)``; every tensor must have the same size in dim 0.

    NumPy arrays are accepted and wrapped without a copy. Items are views of the data (not recorded
    by autograd); ``__getitems__`` fetches a whole batch with one fancy index per tensor.
    """

    def __init__(self, *tensors: Tensor | np.ndarray) -> None:
        if not tensors:
            raise ValueError("TensorDataset: expected at least one tensor, got none")
        ts = []
        for k, t in enumerate(tensors):
            if isinstance(t, np.ndarray):
                from ..ops.creation import from_numpy
                t = from_numpy(t)
            if not isinstance(t, Tensor):
                raise TypeError(f"TensorDataset: argument {k} must be an ember Tensor or a NumPy array, "
                                f"got {type(t).__name__}")
            if t.ndim == 0:
                raise ShapeError(f"TensorDataset: argument {k} is a 0-d tensor; every tensor needs a first "
                                 "(sample) dimension")
            ts.append(t)
        sizes = [t.shape[0] for t in ts]
        if len(set(sizes)) != 1:
            raise ShapeError(f"TensorDataset: all tensors must have the same size in dim 0, got shapes "
                             f"{[tuple(t.shape) for t in ts]}")
        self.tensors = tuple(ts)

    def __len__(self) -> int:
        return self.tensors[0].shape[0]

    def __getitem__(self, index: int) -> tuple:
        i = check_index("TensorDataset", index, len(self))
        return tuple(wrap(t.data[i], t) for t in self.tensors)

    def __getitems__(self, indices: Sequence[int]) -> tuple:
        idx = check_indices("TensorDataset", indices, len(self))
        return tuple(wrap(t.data[idx], t) for t in self.tensors)


class Subset(Dataset[T_co]):
    """The items of ``dataset`` at ``indices`` (in that order)."""

    def __init__(self, dataset: Dataset[T_co], indices: Sequence[int]) -> None:
        self.dataset = dataset
        idx = np.asarray(indices.data if isinstance(indices, Tensor) else indices)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise TypeError(f"Subset: indices must be a 1-D sequence of ints, got dtype {idx.dtype} "
                            f"and shape {idx.shape}")
        self.indices = [int(i) for i in idx]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> T_co:
        if isinstance(index, (list, tuple)):
            return [self.dataset[self.indices[check_index("Subset", i, len(self))]] for i in index]
        return self.dataset[self.indices[check_index("Subset", index, len(self))]]

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes Subset lacks: expose a batched getter exactly when the
        # wrapped dataset has one, so the DataLoader's fast path survives random_split.
        if name == "__getitems__" and hasattr(self.__dict__.get("dataset"), "__getitems__"):
            def getitems(indices: Sequence[int]) -> Any:
                idx = check_indices("Subset", indices, len(self))
                return self.dataset.__getitems__(np.asarray(self.indices, dtype=np.int64)[idx])
            return getitems
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


def random_split(dataset: Dataset, lengths: Sequence[int | float],
                 generator: Generator | None = None) -> list[Subset]:
    """Split ``dataset`` into non-overlapping random subsets of the given lengths.

    ``lengths`` are counts summing to ``len(dataset)``, or fractions summing to 1 (as in PyTorch: the
    counts are floored and the remainder is handed out one by one, round-robin).
    """
    n = len(dataset)
    lengths = list(lengths)
    if not lengths:
        raise ValueError("random_split: lengths is empty")
    if generator is not None and not isinstance(generator, Generator):
        raise TypeError(f"random_split: generator must be an ember.Generator, got {type(generator).__name__}")
    if all(isinstance(x, float) for x in lengths) and math.isclose(sum(lengths), 1.0) and sum(lengths) <= 1:
        if any(not 0 <= x <= 1 for x in lengths):
            raise ValueError(f"random_split: fractions must lie in [0, 1], got {lengths}")
        counts = [math.floor(n * f) for f in lengths]
        for i in range(n - sum(counts)):
            counts[i % len(counts)] += 1
        lengths = counts
    for x in lengths:
        if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < 0:
            raise ValueError(f"random_split: lengths must be non-negative ints (or fractions summing to 1), "
                             f"got {lengths}")
    if sum(lengths) != n:
        raise ValueError(f"random_split: the lengths {lengths} sum to {sum(lengths)}, but the dataset has "
                         f"{n} items")
    perm = (generator or default_generator).rng.permutation(n)
    out, start = [], 0
    for length in lengths:
        out.append(Subset(dataset, perm[start:start + length]))
        start += length
    return out
