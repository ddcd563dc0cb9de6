"""Samplers: which indices a ``DataLoader`` visits, and in which order (PyTorch's semantics).

Random samplers draw their whole order when ``iter()`` is called, not lazily on the first
``next()``: the generator is consumed at a well-defined point in the main thread, so a background
prefetch thread never touches it and a checkpoint taken between epochs captures a clean state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sized
from itertools import islice
from typing import Any

import numpy as np

from ..ops.random import Generator, default_generator

__all__ = ["BatchSampler", "DistributedSampler", "RandomSampler", "Sampler", "SequentialSampler"]


def _check_int(name: str, what: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: {what} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_bool(name: str, what: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: {what} must be a bool, got {value!r}")
    return bool(value)


def _check_generator(name: str, generator: Any) -> Generator | None:
    if generator is not None and not isinstance(generator, Generator):
        raise TypeError(f"{name}: generator must be an ember.Generator, got {type(generator).__name__}")
    return generator


class Sampler:
    """Base class: an iterable over dataset indices (subclasses define ``__iter__`` and usually ``__len__``)."""

    def __init__(self, data_source: Sized | None = None) -> None:
        pass

    def __iter__(self) -> Iterator[int]:
        raise NotImplementedError(f"{type(self).__name__} must define __iter__")


class SequentialSampler(Sampler):
    """Indices ``0, 1, ..., len(data_source) - 1``."""

    def __init__(self, data_source: Sized) -> None:
        self.data_source = data_source

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self.data_source)))

    def __len__(self) -> int:
        return len(self.data_source)


class RandomSampler(Sampler):
    """Random indices: a permutation (``replacement=False``) or i.i.d. draws (``replacement=True``).

    ``num_samples`` (default ``len(data_source)``) items are produced per iteration; without
    replacement, more than ``len(data_source)`` chains several permutations. With no ``generator``,
    each iteration draws a fresh seed from ember's default generator (as PyTorch does).
    """

    def __init__(self, data_source: Sized, replacement: bool = False, num_samples: int | None = None,
                 generator: Generator | None = None) -> None:
        self.data_source = data_source
        self.replacement = _check_bool("RandomSampler", "replacement", replacement)
        self._num_samples = None if num_samples is None else _check_int("RandomSampler", "num_samples",
                                                                         num_samples, 1)
        self.generator = _check_generator("RandomSampler", generator)

    @property
    def num_samples(self) -> int:
        return len(self.data_source) if self._num_samples is None else self._num_samples

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        n, m = len(self.data_source), self.num_samples
        if n == 0:
            return iter(())
        gen = self.generator
        if gen is None:
            gen = Generator(seed=int(default_generator.rng.integers(0, 2 ** 63)))
        if self.replacement:
            order = gen.rng.integers(0, n, size=m)
        else:
            parts = [gen.rng.permutation(n) for _ in range(m // n)]
            if m % n:
                parts.append(gen.rng.permutation(n)[:m % n])
            order = np.concatenate(parts)
        return iter(order.tolist())


class BatchSampler(Sampler):
    """Groups the indices of ``sampler`` into lists of ``batch_size`` (the last one shorter unless
    ``drop_last``)."""

    def __init__(self, sampler: Iterable[int], batch_size: int, drop_last: bool) -> None:
        self.sampler = sampler
        self.batch_size = _check_int("BatchSampler", "batch_size", batch_size, 1)
        self.drop_last = _check_bool("BatchSampler", "drop_last", drop_last)

    def __iter__(self) -> Iterator[list[int]]:
        it = iter(self.sampler)  # eager: a random sampler draws its order now
        return self._batches(it)

    def _batches(self, it: Iterator[int]) -> Iterator[list[int]]:
        bs = self.batch_size
        while True:
            batch = list(islice(it, bs))
            if not batch or (len(batch) < bs and self.drop_last):
                return
            yield batch
            if len(batch) < bs:
                return

    def __len__(self) -> int:
        n = len(self.sampler)  # type: ignore[arg-type]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


def _default_world() -> tuple[int, int]:
    """(num_replicas, rank) from ``ember.distributed`` when it exists and is initialized, else (1, 0)."""
    import importlib
    try:
        dist = importlib.import_module("ember.distributed")
    except ImportError:
        return 1, 0
    is_init = getattr(dist, "is_initialized", None)
    if callable(is_init) and is_init():
        return int(dist.get_world_size()), int(dist.get_rank())
    return 1, 0


class DistributedSampler(Sampler):
    """The share of ``dataset`` that process ``rank`` of ``num_replicas`` visits, as in PyTorch.

    Every rank gets ``num_samples`` indices: without ``drop_last`` the index list is padded by
    wrapping around to a multiple of ``num_replicas``; with it, the tail is dropped. Rank ``r`` takes
    positions ``r, r + num_replicas, ...``. With ``shuffle``, the list is a permutation seeded by
    ``seed + epoch``, so all ranks agree on it; call ``set_epoch(epoch)`` before each epoch to change
    it. ``num_replicas``/``rank`` default to the initialized ``ember.distributed`` world, else 1 and 0.
    """

    def __init__(self, dataset: Sized, num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False) -> None:
        world, my_rank = _default_world()
        num_replicas = world if num_replicas is None else num_replicas
        rank = my_rank if rank is None else rank
        self.num_replicas = _check_int("DistributedSampler", "num_replicas", num_replicas, 1)
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < num_replicas:
            raise ValueError(f"DistributedSampler: rank must be an int in [0, {num_replicas - 1}] "
                             f"(num_replicas={num_replicas}), got {rank!r}")
        self.rank = int(rank)
        self.dataset = dataset
        self.shuffle = _check_bool("DistributedSampler", "shuffle", shuffle)
        self.drop_last = _check_bool("DistributedSampler", "drop_last", drop_last)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"DistributedSampler: seed must be an int, got {seed!r}")
        self.seed = int(seed)
        self.epoch = 0
        n = len(dataset)
        if self.drop_last and n % self.num_replicas:
            self.num_samples = math.ceil((n - self.num_replicas) / self.num_replicas)
        else:
            self.num_samples = math.ceil(n / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Use the shuffle order of ``epoch`` from the next iteration on (call on every rank)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)):
            raise TypeError(f"DistributedSampler.set_epoch: epoch must be an int, got {epoch!r}")
        self.epoch = int(epoch)

    def indices(self) -> np.ndarray:
        """This rank's indices for the current epoch, as an int64 array."""
        n = len(self.dataset)
        if self.shuffle:
            order = Generator(seed=self.seed + self.epoch).rng.permutation(n)
        else:
            order = np.arange(n)
        if self.drop_last:
            order = order[:self.total_size]
        elif self.total_size > n and n > 0:
            order = np.resize(order, self.total_size)  # repeats the list cyclically
        return order[self.rank:self.total_size:self.num_replicas].astype(np.int64)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples
