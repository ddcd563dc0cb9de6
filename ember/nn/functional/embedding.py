"""Embedding lookups: ``embedding`` and ``embedding_bag`` (PyTorch's semantics and signatures).

Dense gradients come from the primitives: ``embed_rows`` (a ``take`` of rows whose gradient sorts the
indices and sums runs of equal ones), and for bags ``reshape`` + ``sum`` or ``segment_sum``.
With ``sparse=True`` the rows of the batch are copied into a fresh leaf tensor, the output is computed
from that leaf, and a gradient hook on the leaf turns its gradient into a ``RowSparseGrad`` (rows
summed over repeats, the padding row left out) that it adds to ``weight.grad``: the backward pass
never touches a (num_embeddings, dim) array. The sparse path is taken only when a gradient for
``weight`` is being recorded (grad mode on, ``weight.requires_grad``, eager mode); otherwise the
lookup is the plain dense one.

Sparse gradients reach ``weight`` through ``backward()`` only: ``ember.grad(loss, [weight])`` does not
see a weight looked up sparsely (use ``sparse=False`` there, and for higher-order gradients).
Hooks registered with ``weight.register_post_accumulate_grad_hook`` run after each sparse accumulation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ... import dtypes as _dt
from ...autograd import STATE, no_grad
from ...device import array_module, get_backend
from ...errors import DeviceError, DTypeError, EmberIndexError, ShapeError, TraceError
from ...ops import movement as _mov
from ...ops import reduce as _red
from ...ops.creation import tensor as _tensor
from ...ops.pointwise import where
from ...ops.registry import apply
from ...ops.sparse_ops import coalesce_rows, embed_rows, segment_sum
from ...sparse import RowSparseGrad
from ...tensor import Tensor, _make

__all__ = ["embedding", "embedding_bag"]


# ----------------------------------------------------------------------------- checks


def _ids(name: str, input: Any, weight: Tensor) -> Tensor:
    if not isinstance(input, Tensor):
        arr = np.asarray(input)
        if arr.dtype.kind not in "iu":
            raise DTypeError(f"{name}: input must hold integer indices, got {arr.dtype} values")
        input = _tensor(arr.astype(np.int64, copy=False), device=weight.device)
    if input.dtype.category != _dt.INTEGER:
        raise DTypeError(f"{name}: input must be an integer tensor of indices, got {input.dtype.name} "
                         f"of shape {input.shape}")
    return input


def _weight(name: str, weight: Any) -> Tensor:
    if not isinstance(weight, Tensor):
        raise TypeError(f"{name}: weight must be a Tensor, got {type(weight).__name__}")
    if weight.ndim != 2:
        raise ShapeError(f"{name}: weight must be 2-D (num_embeddings, embedding_dim), got shape {weight.shape}")
    return weight


def _check_range(name: str, ids: np.ndarray, num: int, shape: tuple) -> None:
    if ids.size == 0:
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= num:
        bad = lo if lo < 0 else hi
        raise EmberIndexError(f"{name}: index {bad} is out of range for {num} embeddings (valid indices are "
                              f"0..{num - 1}; input shape {tuple(shape)})")


def _padding(name: str, padding_idx: Any, num: int) -> int | None:
    if padding_idx is None:
        return None
    if isinstance(padding_idx, bool) or not isinstance(padding_idx, (int, np.integer)):
        raise TypeError(f"{name}: padding_idx must be an int or None, got {padding_idx!r}")
    if not -num <= padding_idx < num:
        raise EmberIndexError(f"{name}: padding_idx {padding_idx} is out of range for {num} embeddings "
                              f"(expected {-num} <= padding_idx < {num})")
    return int(padding_idx) % num


def _sparse_wanted(name: str, weight: Tensor, sparse: bool) -> bool:
    wanted = (sparse and weight.requires_grad and STATE.grad_enabled and STATE.tracer is None
              and not (STATE.forward_ad and weight._tangent is not None))
    if wanted and weight.device.type != "cpu":
        raise DeviceError(f"{name}: sparse=True (row-sparse gradients) is supported for weights on the CPU only, "
                          f"and this weight is on {weight.device}; use sparse=False there")
    return wanted


def _to(arr: np.ndarray, device: Any) -> Any:
    """A host array as the data of a tensor on ``device``: itself on the CPU, a copy on a GPU."""
    return get_backend(device).asarray(arr)


def _renorm(weight: Tensor, ids: Any, max_norm: float, norm_type: float) -> None:
    """Scale the looked-up rows whose norm exceeds ``max_norm`` down to it, in place (as PyTorch does)."""
    xp = array_module(weight.device)
    rows = xp.unique(ids)
    if rows.size == 0:
        return
    w = weight.data
    norms = xp.linalg.norm(w[rows].astype(np.float64), ord=norm_type, axis=1)
    big = norms > max_norm
    if big.any():
        sel = rows[big]
        w[sel] = (w[sel] * (max_norm / (norms[big] + 1e-7))[:, None]).astype(w.dtype)
        weight._version[0] += 1


# ----------------------------------------------------------------------------- sparse rows


class _SparseSink:
    """Gradient hook of the leaf holding a batch's rows: adds the rows' gradient to ``weight.grad`` as a
    ``RowSparseGrad`` (coalesced: sorted unique rows, repeats summed, padding row dropped).

    It runs before the leaf's own accumulation and hands back an empty tensor, so the (batch, dim)
    gradient is not copied into the leaf's ``.grad`` first (nobody reads that leaf's gradient).
    """

    __slots__ = ("counts_scale", "ids", "padding_idx", "weight")

    def __init__(self, weight: Tensor, ids: np.ndarray, padding_idx: int | None, counts_scale: bool) -> None:
        self.weight, self.ids, self.padding_idx, self.counts_scale = weight, ids, padding_idx, counts_scale

    def __call__(self, g: Tensor) -> Tensor:
        uniq, vals = _coalesce(self.ids, g.data, self.counts_scale)
        if self.padding_idx is not None:
            keep = uniq != self.padding_idx
            if not keep.all():
                uniq, vals = uniq[keep], vals[keep]
        w = self.weight
        if isinstance(w.grad, Tensor):  # the weight also got a dense gradient (used densely elsewhere)
            w.grad = w.grad.detach() if w.grad.requires_grad else w.grad
            w.grad.data[uniq] += vals.astype(w.grad.data.dtype, copy=False)  # uniq: unique rows
            w.grad._version[0] += 1
        else:
            grad = RowSparseGrad(_make(uniq, _dt.int64, w.device), _make(vals, g.dtype, w.device), w.shape)
            w.grad = grad if w.grad is None else w.grad + grad
        if w._post_hooks:
            for hook in w._post_hooks:
                hook(w)
        return _make(np.empty((0,), dtype=g.data.dtype), g.dtype, g.device)


def _coalesce(ids: np.ndarray, vals: np.ndarray, counts_scale: bool) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique ``ids`` and the sums of their rows of ``vals`` (divided by the counts if asked)."""
    uniq, out, counts = coalesce_rows(np, ids, vals)
    if counts_scale and ids.size:
        out /= counts.reshape((-1,) + (1,) * (out.ndim - 1)).astype(out.dtype)
    return uniq, out


def _sparse_rows(weight: Tensor, ids: np.ndarray, padding_idx: int | None, scale_grad_by_freq: bool,
                 shape: tuple | None = None) -> Tensor:
    """``weight[ids]`` (reshaped to ``shape``) computed from a fresh leaf whose gradient lands in
    ``weight.grad`` sparsely. The result is always an op's output, never the leaf itself."""
    rows = _make(np.take(weight.data, ids, axis=0), weight.dtype, weight.device, requires_grad=True)
    rows.register_hook(_SparseSink(weight, ids, padding_idx, scale_grad_by_freq))
    return apply(_mov.RESHAPE, rows, shape=rows.shape if shape is None else shape)


def _freq_scale(out: Tensor, ids: Any) -> Tensor:
    """``out`` unchanged, with its gradient divided by how often each row's index occurs in ``ids`` (an
    array on ``out``'s device)."""
    flat = ids.reshape(-1)
    _, inv, counts = array_module(out.device).unique(flat, return_inverse=True, return_counts=True)
    scale = (1.0 / counts[inv]).astype(out.dtype.np).reshape(ids.shape + (1,) * (out.ndim - ids.ndim))
    s = _make(scale, out.dtype, out.device)
    frozen = out.detach()
    return frozen + (out - frozen) * s  # value: exactly ``out``; gradient: scaled


# ----------------------------------------------------------------------------- embedding


def _embedding(name: str, input: Any, weight: Tensor, padding_idx: int | None, max_norm: float | None,
               norm_type: float, scale_grad_by_freq: bool, sparse: bool) -> Tensor:
    weight = _weight(name, weight)
    ids = _ids(name, input, weight)
    num, dim = weight.shape
    pad = _padding(name, padding_idx, num)
    concrete = STATE.tracer is None
    if concrete:
        _check_range(name, ids.data, num, ids.shape)
        if max_norm is not None:
            _renorm(weight, ids.data.reshape(-1), max_norm, norm_type)
    if _sparse_wanted(name, weight, sparse):
        flat = np.ascontiguousarray(ids.data.reshape(-1), dtype=np.int64)
        return _sparse_rows(weight, flat, pad, scale_grad_by_freq, ids.shape + (dim,))
    flat = ids if ids.ndim == 1 else _mov.reshape(ids, (ids.numel(),))
    out = embed_rows(weight, flat)
    if out.shape != ids.shape + (dim,):
        out = _mov.reshape(out, ids.shape + (dim,))
    if not (out.requires_grad and STATE.grad_enabled):
        return out
    if pad is not None and (not concrete or bool((ids.data == pad).any())):
        keep = _mov.unsqueeze(ids != pad, -1)
        out = where(keep, out, out.detach())  # the padding row's value, without its gradient
    if scale_grad_by_freq and concrete:
        out = _freq_scale(out, ids.data)
    return out


def embedding(input: Any, weight: Tensor, padding_idx: int | None = None, max_norm: float | None = None,
              norm_type: float = 2.0, scale_grad_by_freq: bool = False, sparse: bool = False) -> Tensor:
    """Rows of ``weight`` at the integer ``input``: shape ``input.shape + (embedding_dim,)``.

    ``padding_idx``: that row gets no gradient. ``max_norm``: looked-up rows with a larger
    ``norm_type``-norm are renormalized in place first. ``scale_grad_by_freq``: each row's gradient is
    divided by its number of occurrences in the batch. ``sparse``: ``weight.grad`` becomes a
    ``RowSparseGrad`` holding only the rows used (see the module docstring).
    """
    return _embedding("embedding", input, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse)


# ----------------------------------------------------------------------------- embedding_bag

_MODES = ("sum", "mean", "max")


def _bags(name: str, ids: Tensor, offsets: Any, include_last_offset: bool) -> tuple[np.ndarray, np.ndarray]:
    """Flat ids (only the ones that belong to a bag) and the start offset of every bag."""
    if ids.ndim == 2:
        if offsets is not None:
            raise ShapeError(f"{name}: offsets must be None when the input is 2-D (fixed-size bags), got offsets "
                             f"for input of shape {ids.shape}")
        b, length = ids.shape
        return ids.data.reshape(-1), np.arange(b, dtype=np.int64) * length
    if ids.ndim != 1:
        raise ShapeError(f"{name}: input must be 1-D (ids, with offsets) or 2-D (batch, bag size), "
                         f"got shape {ids.shape}")
    if offsets is None:
        raise ShapeError(f"{name}: offsets are required for 1-D input (shape {ids.shape}); pass the start of "
                         "every bag, or a 2-D input for fixed-size bags")
    off = offsets.data if isinstance(offsets, Tensor) else np.asarray(offsets)
    if off.ndim != 1 or (off.size and off.dtype.kind not in "iu"):
        raise ShapeError(f"{name}: offsets must be a 1-D integer tensor, got shape {off.shape} and dtype {off.dtype}")
    off = off.astype(np.int64, copy=False)
    n = ids.shape[0]
    if include_last_offset:
        if off.size == 0:
            raise ShapeError(f"{name}: with include_last_offset=True offsets need at least one entry (the end)")
        end = int(off[-1])
        off = off[:-1]
    else:
        end = n
    if off.size and int(off[0]) != 0:
        raise ShapeError(f"{name}: offsets[0] must be 0 (the first bag starts at the first id), got {int(off[0])}")
    if off.size and bool(np.any(off[1:] < off[:-1])):
        raise ShapeError(f"{name}: offsets must be non-decreasing, got {off.tolist() if off.size <= 12 else off}")
    last = max(end, int(off[-1])) if off.size else end
    if last > n or end < 0:
        raise ShapeError(f"{name}: offsets reach position {last} but the input has only {n} ids")
    return ids.data[:end], off


def _embedding_bag(name: str, input: Any, weight: Tensor, offsets: Any, max_norm: float | None, norm_type: float,
                   scale_grad_by_freq: bool, mode: str, sparse: bool, per_sample_weights: Tensor | None,
                   include_last_offset: bool, padding_idx: int | None) -> Tensor:
    weight = _weight(name, weight)
    ids = _ids(name, input, weight)
    num, dim = weight.shape
    if mode not in _MODES:
        raise ValueError(f"{name}: mode must be one of {_MODES}, got {mode!r}")
    if STATE.tracer is not None:
        return _traced_bags(name, ids, weight, offsets, max_norm, mode, per_sample_weights, padding_idx,
                            scale_grad_by_freq)
    dev = weight.device
    if dev.type != "cpu":  # the bags' structure is worked out on the host; the lookups run on the device
        ids = ids.cpu()
        offsets = offsets.cpu() if isinstance(offsets, Tensor) else offsets
    pad = _padding(name, padding_idx, num)
    flat, off = _bags(name, ids, offsets, include_last_offset)
    n_used = flat.shape[0]
    _check_range(name, flat, num, ids.shape)
    psw = None
    if per_sample_weights is not None:
        if mode != "sum":
            raise ValueError(f"{name}: per_sample_weights are only supported with mode='sum', got mode={mode!r}")
        if not isinstance(per_sample_weights, Tensor):
            raise TypeError(f"{name}: per_sample_weights must be a Tensor, got {type(per_sample_weights).__name__}")
        if per_sample_weights.shape != ids.shape:
            raise ShapeError(f"{name}: per_sample_weights must have the input's shape {ids.shape}, "
                             f"got {per_sample_weights.shape}")
        if not per_sample_weights.dtype.is_floating_point:
            raise DTypeError(f"{name}: per_sample_weights must be floating, got {per_sample_weights.dtype.name}")
        psw = _mov.reshape(per_sample_weights, (ids.numel(),))
        if n_used != ids.numel():
            psw = psw[:n_used]
    if max_norm is not None:
        _renorm(weight, _to(flat, dev), max_norm, norm_type)
    b = off.shape[0]
    # ``size``: the common bag size when every bag has the same (non-zero) size, else 0
    size = ids.shape[1] if ids.ndim == 2 and b else 0
    lengths = None
    if pad is not None:
        keep = flat != pad
        if not keep.all():  # padding entries leave their bags (and do not count for the mean)
            pos = np.flatnonzero(keep)
            bag = np.repeat(np.arange(b, dtype=np.int64), np.diff(off, append=n_used))
            lengths = np.bincount(bag[pos], minlength=b).astype(np.int64)
            off = (np.cumsum(lengths) - lengths).astype(np.int64)
            flat = flat[pos]
            if psw is not None:
                psw = _mov.take(psw, pos)
            n_used = flat.shape[0]
            size = 0
    if ids.ndim == 1 or lengths is not None:
        lengths = np.diff(off, append=n_used) if lengths is None else lengths
        if b and int(lengths[0]) > 0 and bool(np.all(lengths == lengths[0])):
            size = int(lengths[0])
    flat = np.ascontiguousarray(flat, dtype=np.int64)
    if _sparse_wanted(name, weight, sparse):
        rows = _sparse_rows(weight, flat, pad, scale_grad_by_freq)
    else:
        flat_t = _make(_to(flat, dev), _dt.int64, dev)
        rows = embed_rows(weight, flat_t)
        if scale_grad_by_freq and rows.requires_grad and STATE.grad_enabled:
            rows = _freq_scale(rows, flat_t.data)
    if psw is not None:
        rows = rows * _mov.unsqueeze(psw.to(rows.dtype), 1)
    if size:
        if size == 1:
            return _mov.reshape(rows, (b, dim))  # one id per bag: sum, mean and max are the row itself
        rows = _mov.reshape(rows, (b, size, dim))
        if mode == "max":
            return _red.amax(rows, 1)
        out = _red.sum(rows, 1)
        return out * (1.0 / size) if mode == "mean" else out
    if lengths is None:  # 2-D input with no bags, or bags of size 0
        lengths = np.diff(off, append=n_used)
    if mode == "max":
        return _bag_max(rows, off, lengths, b, dim)
    out = segment_sum(rows, _make(_to(off, dev), _dt.int64, dev),
                      _make(_to(np.repeat(np.arange(b, dtype=np.int64), lengths), dev), _dt.int64, dev))
    if mode == "mean":
        inv = (1.0 / np.maximum(lengths, 1)).astype(out.dtype.np)[:, None]
        out = out * _make(_to(inv, dev), out.dtype, dev)
    return out


def _traced_bags(name: str, ids: Tensor, weight: Tensor, offsets: Any, max_norm: float | None, mode: str,
                 per_sample_weights: Tensor | None, padding_idx: int | None, scale_grad_by_freq: bool) -> Tensor:
    """Fixed-size bags (2-D ids, no offsets), whose structure depends on shapes only, as graph ops: a row
    gather, then a sum, mean or max over each bag. Anything value-dependent cannot be traced."""
    if ids.ndim != 2 or offsets is not None or padding_idx is not None or max_norm is not None or scale_grad_by_freq:
        raise TraceError(f"{name}: only fixed-size bags (2-D input, no offsets, padding_idx, max_norm or "
                         "scale_grad_by_freq) can be traced: other bags depend on the values of the ids or offsets; "
                         "run the lookup eagerly, outside the compiled function")
    b, size = ids.shape
    dim = weight.shape[1]
    rows = _mov.reshape(embed_rows(weight, _mov.reshape(ids, (b * size,))), (b, size, dim))
    if per_sample_weights is not None:
        if mode != "sum" or per_sample_weights.shape != ids.shape:
            raise ValueError(f"{name}: per_sample_weights need mode='sum' and the input's shape {ids.shape}")
        rows = rows * _mov.unsqueeze(per_sample_weights.to(rows.dtype), 2)
    if mode == "max":
        return _red.amax(rows, 1)
    out = _red.sum(rows, 1)
    return out * (1.0 / size) if mode == "mean" and size else out


def _bag_max(rows: Tensor, off: np.ndarray, lengths: np.ndarray, b: int, dim: int) -> Tensor:
    """Maxima of bags of different sizes: the rows go into a (B, longest, dim) block padded with -inf."""
    from ...ops.creation import full
    width = max(int(lengths.max()) if b else 0, 1)
    bag = np.repeat(np.arange(b, dtype=np.int64), lengths)
    slot = np.arange(bag.size, dtype=np.int64) - np.repeat(off, lengths)
    with no_grad():
        base = full((b * width, dim), float("-inf"), dtype=rows.dtype, device=rows.device)
    padded = _mov.index_copy(base, 0, _make(_to(bag * width + slot, rows.device), _dt.int64, rows.device), rows)
    out = _red.amax(_mov.reshape(padded, (b, width, dim)), 1)
    empty = lengths == 0
    if empty.any():  # an empty bag gives zeros, as in PyTorch
        out = where(_make(_to(~empty[:, None], rows.device), _dt.bool_, rows.device), out, 0.0)
    return out


def embedding_bag(input: Any, weight: Tensor, offsets: Any = None, max_norm: float | None = None,
                  norm_type: float = 2.0, scale_grad_by_freq: bool = False, mode: str = "mean",
                  sparse: bool = False, per_sample_weights: Tensor | None = None, include_last_offset: bool = False,
                  padding_idx: int | None = None) -> Tensor:
    """Sums, means or maxima of bags of embeddings, without materializing the per-id embeddings' shape.

    ``input`` is 2-D ``(B, bag)`` (fixed-size bags), or 1-D ids with ``offsets`` (the start of each
    bag; with ``include_last_offset`` one more entry closes the last bag). Empty bags give zeros;
    ids equal to ``padding_idx`` are left out of their bags. ``per_sample_weights`` (input's shape)
    scale each id's row in ``mode='sum'``. Returns ``(B, embedding_dim)``.
    """
    return _embedding_bag("embedding_bag", input, weight, offsets, max_norm, norm_type, scale_grad_by_freq, mode,
                          sparse, per_sample_weights, include_last_offset, padding_idx)
