"""``DataLoader``: batches from a dataset, in a seeded order, prepared ahead in a background thread.

Three things keep it fast and reproducible:

* **Batched fetch.** With the default collate function, a dataset that defines ``__getitems__``
  (``TensorDataset``, ``Subset`` of one, and ember's datasets) hands over a whole batch at once: one
  fancy index per array instead of one Python call per item plus a stack.
* **Its own generator.** Shuffling draws from ``loader.generator``, an ``ember.Generator`` seeded from
  ``seed`` (or the ``generator`` passed in, used as is, or else a seed drawn once from ember's default
  generator at construction). Two loaders with the same seed visit the same order, and random draws
  made elsewhere in the model do not change it. Each ``iter(loader)`` draws the epoch's whole order
  right away, in the calling thread, so ``loader.state_dict()`` saved between epochs restores the
  order of every later epoch.
* **Prefetching.** With ``prefetch=k > 0`` a daemon thread prepares up to ``k`` batches ahead into a
  bounded queue while the training step runs (NumPy kernels release the GIL for most of their work).
  The batches and their order are the same as with ``prefetch=0``. An exception raised while
  preparing a batch is re-raised by ``next()`` in the main thread with its original traceback (the
  worker's frames). Dropping the iterator (e.g. breaking out of the loop) stops the thread within a
  fraction of a second.
"""

from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import islice
from typing import Any

import numpy as np

from .. import dtypes as _dt
from ..errors import DTypeError, ShapeError
from ..ops.random import Generator, default_generator
from ..tensor import Tensor, _make
from .dataset import Dataset, IterableDataset
from .sampler import BatchSampler, RandomSampler, Sampler, SequentialSampler, _check_bool, _check_int

__all__ = ["DataLoader", "default_collate", "default_convert"]

_CPU = None


def _cpu() -> Any:
    global _CPU
    if _CPU is None:
        from ..device import to_device
        _CPU = to_device("cpu")
    return _CPU


def _from_array(name: str, a: np.ndarray) -> Tensor:
    try:
        d = _dt.from_numpy_dtype(a.dtype)
    except DTypeError:
        raise DTypeError(f"{name}: NumPy arrays of dtype {a.dtype} cannot become ember tensors; expected one "
                         f"of {', '.join(x.name for x in _dt.ALL)}") from None
    return _make(a, d, _cpu())


def _is_namedtuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(x, "_fields")


def default_convert(data: Any) -> Any:
    """Turn NumPy arrays and NumPy scalars into ember tensors (sharing memory), recursing into
    tuples, lists and dicts; everything else is returned unchanged (no batching)."""
    if isinstance(data, Tensor):
        return data
    if isinstance(data, np.ndarray):
        return data if data.dtype.kind in "USO" else _from_array("default_convert", data)
    if isinstance(data, np.generic) and not isinstance(data, (np.str_, np.bytes_)):
        return _from_array("default_convert", np.asarray(data))
    if isinstance(data, Mapping):
        return {k: default_convert(v) for k, v in data.items()}
    if _is_namedtuple(data):
        return type(data)(*(default_convert(v) for v in data))
    if isinstance(data, tuple):
        return tuple(default_convert(v) for v in data)
    if isinstance(data, list):
        return [default_convert(v) for v in data]
    return data


def _check_same(batch: Sequence, kind: type, what: str) -> None:
    for k, x in enumerate(batch):
        if not isinstance(x, kind):
            raise TypeError(f"default_collate: every element of a batch must be of one kind; element 0 is "
                            f"{what} but element {k} is {type(x).__name__}")


def default_collate(batch: Sequence[Any]) -> Any:
    """Stack a list of samples into a batch, like PyTorch's ``default_collate``.

    Ember tensors and NumPy arrays are stacked along a new first dim (same shape and dtype required;
    the dtype is kept); Python ints become an int64 tensor, floats float32, bools bool, NumPy scalars
    keep their dtype; strings stay a list. Tuples, lists, named tuples and dicts are collated field by
    field (a tuple stays a tuple). The result does not record autograd history.
    """
    if not isinstance(batch, Sequence) or isinstance(batch, (str, bytes)):
        raise TypeError(f"default_collate: expected a list of samples, got {type(batch).__name__}")
    if len(batch) == 0:
        raise ValueError("default_collate: got an empty batch; expected at least one sample")
    elem = batch[0]
    if isinstance(elem, (Tensor, np.ndarray)):
        is_t = isinstance(elem, Tensor)
        _check_same(batch, Tensor if is_t else np.ndarray, "a Tensor" if is_t else "a NumPy array")
        arrays = [x.data for x in batch] if is_t else batch
        shape, dtype = arrays[0].shape, arrays[0].dtype
        for k, a in enumerate(arrays):
            if a.shape != shape:
                raise ShapeError(f"default_collate: every sample must have the same shape to be stacked; element 0 "
                                 f"has shape {tuple(shape)} but element {k} has shape {tuple(a.shape)}")
            if a.dtype != dtype:
                raise DTypeError(f"default_collate: every sample must have the same dtype; element 0 is {dtype} "
                                 f"but element {k} is {a.dtype}")
        if not is_t and dtype.kind in "USO":
            raise TypeError(f"default_collate: NumPy arrays of dtype {dtype} cannot be collated; expected "
                            "numeric arrays")
        out = np.stack(arrays)
        return _make(out, elem.dtype, elem.device) if is_t else _from_array("default_collate", out)
    if isinstance(elem, (str, bytes, np.str_, np.bytes_)):
        return list(batch)
    if isinstance(elem, np.generic):
        _check_same(batch, np.generic, "a NumPy scalar")
        return _from_array("default_collate", np.asarray(batch))
    if isinstance(elem, (bool, np.bool_)):
        _check_same(batch, (bool, np.bool_), "a bool")
        return _make(np.asarray(batch, dtype=np.bool_), _dt.bool_, _cpu())
    if isinstance(elem, int):
        _check_same(batch, int, "an int")
        try:
            arr = np.asarray(batch, dtype=np.int64)
        except OverflowError:
            raise DTypeError("default_collate: an int in the batch does not fit in int64") from None
        return _make(arr, _dt.int64, _cpu())
    if isinstance(elem, float):
        _check_same(batch, (int, float), "a float")
        return _make(np.asarray(batch, dtype=np.float32), _dt.float32, _cpu())
    if isinstance(elem, Mapping):
        keys = set(elem)
        for k, d in enumerate(batch):
            if not isinstance(d, Mapping) or set(d) != keys:
                raise ValueError(f"default_collate: every sample must be a dict with the same keys; element 0 has "
                                 f"{sorted(map(str, keys))} but element {k} is {_describe(d)}")
        return {key: default_collate([d[key] for d in batch]) for key in elem}
    if isinstance(elem, (tuple, list)):
        n = len(elem)
        for k, s in enumerate(batch):
            if not isinstance(s, (tuple, list)) or len(s) != n:
                raise ValueError(f"default_collate: every sample must be a sequence of the same length; element 0 "
                                 f"has {n} fields but element {k} is {_describe(s)}")
        fields = [default_collate([s[j] for s in batch]) for j in range(n)]
        if _is_namedtuple(elem):
            return type(elem)(*fields)
        return tuple(fields) if isinstance(elem, tuple) else fields
    raise TypeError(f"default_collate: samples must contain ember tensors, NumPy arrays, numbers, strings, "
                    f"dicts or tuples/lists of these; found {type(elem).__name__}")


def _describe(x: Any) -> str:
    if isinstance(x, Mapping):
        return f"a dict with keys {sorted(map(str, x))}"
    if isinstance(x, (tuple, list)):
        return f"a {type(x).__name__} of length {len(x)}"
    return f"a {type(x).__name__}"


# ---------------------------------------------------------------------------------------------- prefetching
_ITEM, _END, _ERROR = 0, 1, 2
_POLL = 0.05  # seconds: how long a blocked put/get waits before re-checking the stop flag / the thread


class _Worker:
    """The state shared by the prefetch thread and its iterator. The thread holds only this object,
    never the iterator, so dropping the iterator lets its finalizer stop the thread."""

    def __init__(self, source: Iterator[Any], depth: int) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(source,), name="ember-data-prefetch", daemon=True)
        self.thread.start()

    def _put(self, msg: tuple) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(msg, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, source: Iterator[Any]) -> None:
        count = 0
        try:
            while not self.stop.is_set():
                try:
                    batch = next(source)
                except StopIteration:
                    self._put((_END, None))
                    return
                if not self._put((_ITEM, batch)):
                    return
                count += 1
        except BaseException as e:  # forwarded to the main thread, whatever it is
            self._put((_ERROR, (e, count)))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    def shutdown(self, timeout: float = 1.0) -> None:
        self.stop.set()
        while True:  # unblock a put in progress and free the queued batches
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout)


class _PrefetchIterator:
    """Yields the batches a ``_Worker`` thread prepares, in order."""

    def __init__(self, source: Iterator[Any], depth: int) -> None:
        self._worker = _Worker(source, depth)
        self._done = False
        self._finalizer = weakref.finalize(self, _Worker.shutdown, self._worker, 0.0)

    def __iter__(self) -> _PrefetchIterator:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        w = self._worker
        while True:
            try:
                kind, payload = w.queue.get(timeout=_POLL)
                break
            except queue.Empty:
                if not w.thread.is_alive() and w.queue.empty():
                    self.close()
                    raise RuntimeError("DataLoader: the prefetch thread ended without delivering a batch") from None
        if kind == _ITEM:
            return payload
        self.close()
        if kind == _END:
            raise StopIteration
        exc, count = payload
        # Re-raising the worker's exception object keeps its traceback: the frames from `_run` down are
        # the ones that ran in the prefetch thread.
        exc.add_note(f"(raised in the DataLoader's prefetch thread while preparing batch {count})")
        raise exc

    def close(self) -> None:
        """Stop the background thread and drop the batches it prepared."""
        self._done = True
        self._finalizer()


# ---------------------------------------------------------------------------------------------- the loader
class DataLoader:
    """Iterate over ``dataset`` in batches, with PyTorch's arguments and semantics.

    Args:
        dataset: a map-style ``Dataset`` (``__getitem__``/``__len__``) or an ``IterableDataset``.
        batch_size: samples per batch; ``None`` yields single samples (converted, not batched).
        shuffle: visit the samples in a new random order each epoch (drawn from ``self.generator``).
        sampler: an iterable of indices (excludes ``shuffle``).
        batch_sampler: an iterable of index lists (excludes ``batch_size``, ``shuffle``, ``sampler``,
            ``drop_last``).
        drop_last: drop the last batch when it is smaller than ``batch_size``.
        collate_fn: turns a list of samples into a batch (default: ``default_collate``). A custom one
            always receives the list of samples, so the batched ``__getitems__`` is used only by default.
        generator: the ``ember.Generator`` to shuffle with (used as is; excludes ``seed``).
        prefetch: batches prepared ahead by a background thread; 0 runs everything in the caller.
        seed: seed of the loader's own generator.
    """

    def __init__(self, dataset: Dataset | Any, batch_size: int | None = 1, shuffle: bool = False,
                 sampler: Sampler | Iterable[int] | None = None,
                 batch_sampler: Sampler | Iterable[Sequence[int]] | None = None, drop_last: bool = False,
                 collate_fn: Callable[[list], Any] | None = None, generator: Generator | None = None,
                 prefetch: int = 2, seed: int | None = None) -> None:
        name = "DataLoader"
        shuffle = _check_bool(name, "shuffle", shuffle)
        drop_last = _check_bool(name, "drop_last", drop_last)
        self.prefetch = _check_int(name, "prefetch", prefetch, 0)
        if batch_size is not None:
            batch_size = _check_int(name, "batch_size", batch_size, 1)
        if collate_fn is not None and not callable(collate_fn):
            raise TypeError(f"{name}: collate_fn must be callable, got {type(collate_fn).__name__}")
        if generator is not None and seed is not None:
            raise ValueError(f"{name}: pass either generator or seed, not both")
        if generator is not None and not isinstance(generator, Generator):
            raise TypeError(f"{name}: generator must be an ember.Generator, got {type(generator).__name__}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"{name}: seed must be an int, got {seed!r}")
        if generator is None:
            if seed is None:
                seed = int(default_generator.rng.integers(0, 2 ** 63))
            generator = Generator(seed=int(seed))
        self.generator = generator

        self._iterable = isinstance(dataset, IterableDataset)
        if self._iterable:
            if shuffle or sampler is not None or batch_sampler is not None:
                raise ValueError(f"{name}: an IterableDataset is read in its own order; shuffle, sampler and "
                                 "batch_sampler do not apply to it")
        elif not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise TypeError(f"{name}: dataset must define __getitem__ and __len__ (or be an IterableDataset), "
                            f"got {type(dataset).__name__}")
        if batch_sampler is not None:
            if batch_size != 1 or shuffle or sampler is not None or drop_last:
                raise ValueError(f"{name}: batch_sampler is mutually exclusive with batch_size, shuffle, sampler "
                                 "and drop_last")
            batch_size = None
        elif batch_size is None and drop_last:
            raise ValueError(f"{name}: drop_last needs a batch_size (batch_size=None yields single samples)")
        if sampler is not None and shuffle:
            raise ValueError(f"{name}: sampler is mutually exclusive with shuffle (shuffle inside the sampler)")
        if not self._iterable:
            if sampler is None:
                sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
            if batch_size is not None:
                batch_sampler = BatchSampler(sampler, batch_size, drop_last)

        self.dataset = dataset
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.sampler = sampler
        self.batch_sampler = batch_sampler
        self._auto_collation = batch_sampler is not None or (self._iterable and batch_size is not None)
        if collate_fn is None:
            collate_fn = default_collate if self._auto_collation else default_convert
        self.collate_fn = collate_fn

    @property
    def _fast(self) -> bool:
        """Whether batches come from the dataset's batched ``__getitems__`` (checked per epoch: a dataset
        may offer it only while it has no per-item transform)."""
        return (self.collate_fn is default_collate and self.batch_sampler is not None
                and callable(getattr(self.dataset, "__getitems__", None)))

    def __len__(self) -> int:
        if self._iterable:
            n = len(self.dataset)
            if self.batch_size is None:
                return n
            return n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        if self.batch_sampler is not None:
            return len(self.batch_sampler)
        return len(self.sampler)

    def _source(self) -> Iterator[Any]:
        """The batch generator; its index order is fixed here, in the calling thread."""
        if self._iterable:
            return self._iterable_batches(iter(self.dataset))
        if self.batch_sampler is not None:
            return self._map_batches(iter(self.batch_sampler))
        return self._map_items(iter(self.sampler))

    def _map_batches(self, batches: Iterator[Sequence[int]]) -> Iterator[Any]:
        ds, collate = self.dataset, self.collate_fn
        if self._fast:
            getitems = ds.__getitems__
            for idx in batches:
                yield default_convert(getitems(idx))
        else:
            for idx in batches:
                yield collate([ds[i] for i in idx])

    def _map_items(self, indices: Iterator[int]) -> Iterator[Any]:
        ds, collate = self.dataset, self.collate_fn
        for i in indices:
            yield collate(ds[i])

    def _iterable_batches(self, items: Iterator[Any]) -> Iterator[Any]:
        collate, bs = self.collate_fn, self.batch_size
        if bs is None:
            for x in items:
                yield collate(x)
            return
        while True:
            batch = list(islice(items, bs))
            if not batch or (len(batch) < bs and self.drop_last):
                return
            yield collate(batch)

    def __iter__(self) -> Iterator[Any]:
        source = self._source()
        if self.prefetch == 0:
            return source
        return _PrefetchIterator(source, self.prefetch)

    def state_dict(self) -> dict:
        """The shuffle generator's state (JSON-compatible), for checkpoints."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore the shuffle generator saved by ``state_dict``: later epochs repeat the saved run's order."""
        if not isinstance(state, Mapping) or "generator" not in state:
            keys = f" with keys {sorted(map(str, state))}" if isinstance(state, Mapping) else ""
            raise ValueError(f"DataLoader.load_state_dict: expected a dict with a 'generator' entry, got "
                             f"{type(state).__name__}{keys}")
        self.generator.set_state(state["generator"])

    def __repr__(self) -> str:
        return (f"DataLoader(dataset={type(self.dataset).__name__}, batch_size={self.batch_size}, "
                f"batches={len(self) if not self._iterable else '?'}, prefetch={self.prefetch})")
