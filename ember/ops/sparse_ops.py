"""Segment, row-scatter and grouped-split primitives used by the embedding and recurrent layers.

* ``segment_sum(x, offsets, segment_ids)``: sums of consecutive row segments (the bags of an
  ``EmbeddingBag`` given by offsets) with ``np.add.reduceat`` instead of a scatter-add; its
  gradient is a ``take`` of the incoming gradient with the segment id of every row.
* ``embed_rows(table, ids)`` / ``scatter_rows(g, ids, num)``: ``take`` along the rows and its adjoint,
  which sorts the indices and sums runs of equal ones instead of a grouped scatter-add.
* ``unbind_grouped`` / ``split_grouped``: ``unbind``/``split`` whose backward costs O(size of the input)
  in total. The plain forms are slices whose gradient is each a full-size scatter into zeros, so taking
  T time steps out of a (T, ...) tensor costs O(T^2) in the backward pass. Here the pieces are taken
  from an *anchor* (an identity view of the input, created before them): every piece's vjp only hands
  its gradient to a collector shared by the group, and the anchor, which the backward walk runs after
  all of its consumers (it was created before them), concatenates the collected gradients once.
  Pieces that receive no gradient count as zeros. Higher-order gradients work: the concatenation is
  an ordinary op.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import dtypes as _dt
from ..codegen import index_kernels as _ik
from ..errors import DTypeError, EmberIndexError, ShapeError
from ..tensor import Tensor
from ._shape import normalize_dim
from .creation import tensor as _tensor
from .creation import zeros
from .indexing import getitem
from .movement import TAKE, _index_tensor, cat, expand, unsqueeze
from .registry import Op, apply

__all__ = ["embed_rows", "scatter_rows", "segment_sum", "split_grouped", "unbind_grouped"]

# ----------------------------------------------------------------------------- segment_sum


def _segment_sum_infer(x: Tensor, offsets: Tensor, segment_ids: Tensor) -> tuple:
    if x.ndim < 1:
        raise ShapeError("segment_sum: the input must have at least one dimension (rows)")
    for what, t in (("offsets", offsets), ("segment_ids", segment_ids)):
        if t.dtype.category != _dt.INTEGER:
            raise DTypeError(f"segment_sum: {what} must be an integer tensor, got {t.dtype.name}")
        if t.ndim != 1:
            raise ShapeError(f"segment_sum: {what} must be 1-D, got shape {t.shape}")
    if segment_ids.shape[0] != x.shape[0]:
        raise ShapeError(f"segment_sum: segment_ids has {segment_ids.shape[0]} entries but the input has "
                         f"{x.shape[0]} rows (input shape {x.shape})")
    if x.dtype.is_bool:
        raise DTypeError("segment_sum: bool tensors are not supported")
    return (offsets.shape[0],) + x.shape[1:], x.dtype


def rows_segment_sum(xp: Any, x: Any, starts: Any, counts: Any, order: Any = None) -> Any:
    """Sums of consecutive row segments: segment i is rows ``starts[i]:starts[i] + counts[i]`` of
    ``x[order]`` (of ``x`` when ``order`` is None); the segments are non-empty and cover all rows.

    ``add.reduceat`` along axis 0 pays a call per row, so only the segments of two or more rows go
    through it; single-row segments (most of them, in a batch of ids) are gathered directly.
    """
    if order is None:
        if bool((counts > 1).all()):
            return xp.add.reduceat(x, starts, axis=0)
        out = xp.take(x, starts, axis=0)
    else:
        out = xp.take(x, xp.take(order, starts), axis=0)
    multi = counts > 1
    if bool(multi.any()):
        rows = xp.flatnonzero(xp.repeat(multi, counts))
        if order is not None:
            rows = xp.take(order, rows)
        c = counts[multi]
        out[multi] = xp.add.reduceat(xp.take(x, rows, axis=0), xp.cumsum(c) - c, axis=0)
    return out


def coalesce_rows(xp: Any, ids: Any, vals: Any) -> tuple[Any, Any, Any]:
    """Sorted unique ``ids`` (1-D, non-negative), the sums of their rows of ``vals`` and their counts."""
    n = ids.shape[0]
    if n == 0:
        return ids, vals, ids
    bits = max((n - 1).bit_length(), 1)
    if xp is np and int(ids.max()).bit_length() + bits <= 62:
        # one SIMD sort of (id, position) packed in an int64 is several times faster than argsort
        key = np.left_shift(ids.astype(np.int64, copy=False), bits)
        key |= np.arange(n, dtype=np.int64)
        key.sort()
        order = key & ((1 << bits) - 1)
        s = key >> bits
    else:
        order = xp.argsort(ids)
        s = xp.take(ids, order)
    first = xp.empty(n, dtype=bool)
    first[0] = True
    xp.not_equal(s[1:], s[:-1], out=first[1:])
    starts = xp.flatnonzero(first)
    counts = xp.empty_like(starts)
    xp.subtract(starts[1:], starts[:-1], out=counts[:-1])
    counts[-1] = n - starts[-1]
    return xp.take(s, starts), rows_segment_sum(xp, vals, starts, counts, order), counts


def _segment_sum_impl(xp: Any, x: Any, offsets: Any, segment_ids: Any) -> Any:
    if xp is np:
        out = _ik.segment_sum(x, offsets)
        if out is not None:
            return out
    n, b = x.shape[0], offsets.shape[0]
    if n == 0 or b == 0:
        return xp.zeros((b,) + x.shape[1:], dtype=x.dtype)
    lengths = xp.diff(offsets, append=n)
    nonempty = lengths > 0
    if bool(nonempty.all()):
        return rows_segment_sum(xp, x, offsets, lengths)
    out = xp.zeros((b,) + x.shape[1:], dtype=x.dtype)
    out[nonempty] = rows_segment_sum(xp, x, offsets[nonempty], lengths[nonempty])
    return out


SEGMENT_SUM = Op("segment_sum", infer=_segment_sum_infer, impl=_segment_sum_impl,
                 vjp=lambda ctx, g: (apply(TAKE, g, ctx.inputs[2], axis=0), None, None),
                 linear=True, diff_args=(0,))


def segment_sum(x: Tensor, offsets: Any, segment_ids: Any = None) -> Tensor:
    """Row sums of consecutive segments of ``x``: ``out[i] = x[offsets[i]:offsets[i+1]].sum(0)``
    (the last segment runs to the end; an empty segment gives zeros).

    ``offsets`` (int, ``(B,)``) must be non-decreasing, start at 0 and not exceed ``len(x)``;
    ``segment_ids`` (int, ``(len(x),)``) is the segment of every row, computed from ``offsets`` when omitted.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"segment_sum: input must be a Tensor, got {type(x).__name__}")
    offsets = _index_tensor("segment_sum", offsets, x.device)
    if x.ndim < 1:
        raise ShapeError("segment_sum: the input must have at least one dimension (rows)")
    n = x.shape[0]
    off = offsets.data
    if off.ndim != 1:
        raise ShapeError(f"segment_sum: offsets must be 1-D, got shape {offsets.shape}")
    if off.size and (int(off[0]) != 0 or int(off[-1]) > n or bool((off[1:] < off[:-1]).any())):
        raise ShapeError(f"segment_sum: offsets must start at 0, be non-decreasing and not exceed the {n} rows "
                         f"of the input; got {off.tolist() if off.size <= 10 else off}")
    if segment_ids is None:
        if x.device.type != "cpu":  # worked out on the host (``_tensor`` copies the result over)
            from ..device import get_backend
            off = get_backend(x.device).to_numpy(off)
        ids = np.repeat(np.arange(off.size, dtype=np.int64), np.diff(off, append=n)) if off.size else \
            np.zeros(0, np.int64)
        if ids.size != n:
            raise ShapeError(f"segment_sum: offsets cover no rows but the input has {n}")
        segment_ids = _tensor(ids, device=x.device)
    else:
        segment_ids = _index_tensor("segment_sum", segment_ids, x.device)
    return apply(SEGMENT_SUM, x, offsets, segment_ids)


# ----------------------------------------------------------------------------- grouped split


class _Collector:
    """The gradients of one group's pieces during a backward pass (see the module docstring)."""

    __slots__ = ("axis", "bounds", "grads", "last", "squeeze")

    def __init__(self, axis: int, bounds: list[tuple[int, int]], squeeze: bool) -> None:
        self.axis, self.bounds, self.squeeze = axis, bounds, squeeze
        self.grads: dict[int, Tensor] = {}
        self.last: int | None = None  # the piece that reported last in this pass

    def __repr__(self) -> str:  # shows up in graph dumps; keep it short
        return f"<group of {len(self.bounds)}>"


def _piece_vjp(ctx: Any, g: Tensor) -> tuple:
    group: _Collector = ctx.attrs["group"]
    i = ctx.attrs["index"]
    # Pieces were created in index order and the backward walk runs nodes latest-created first, so
    # within one pass the indices reported only decrease; anything else is left over from a pass
    # that was aborted by an error.
    if group.last is not None and i >= group.last:
        group.grads, group.last = {}, None
    first = group.last is None
    group.grads[i] = g
    group.last = i
    if not first:
        return (None,)
    # The first piece to report hands the anchor a broadcast zero (no memory) so that the anchor's
    # vjp runs; the anchor ignores its value and concatenates the collected gradients.
    return (expand(zeros((), dtype=g.dtype, device=g.device), ctx.in_meta[0][0]),)


def _anchor_vjp(ctx: Any, g: Tensor) -> tuple:
    group: _Collector = ctx.attrs["group"]
    grads, group.grads, group.last = group.grads, {}, None
    shape = ctx.in_meta[0][0]
    axis = group.axis
    parts = []
    for i, (start, stop) in enumerate(group.bounds):
        p = grads.get(i)
        if p is None:
            piece_shape = shape[:axis] + (stop - start,) + shape[axis + 1:]
            parts.append(expand(zeros((), dtype=g.dtype, device=g.device), piece_shape))
        else:
            parts.append(unsqueeze(p, axis) if group.squeeze else p)
    return (parts[0] if len(parts) == 1 else cat(parts, axis),)


def _piece_key(axis: int, start: int, stop: int, squeeze: bool) -> tuple:
    return (slice(None),) * axis + ((start if squeeze else slice(start, stop)),)


def _piece_infer(x: Tensor, axis: int, index: int, start: int, stop: int, squeeze: bool, group: Any) -> tuple:
    shape = x.shape[:axis] + (() if squeeze else (stop - start,)) + x.shape[axis + 1:]
    return shape, x.dtype


def _piece_jvp(ctx: Any, t: Tensor) -> Tensor:
    a = ctx.attrs
    return getitem(t, _piece_key(a["axis"], a["start"], a["stop"], a["squeeze"]))


GROUP_ANCHOR = Op("group_anchor", infer=lambda x, group: (x.shape, x.dtype), impl=lambda xp, x, group: x.view(),
                  vjp=_anchor_vjp, jvp=lambda ctx, t: t, save_inputs=False, linear=True, view=True)
GROUP_PIECE = Op("group_piece", infer=_piece_infer,
                 impl=lambda xp, x, axis, index, start, stop, squeeze, group: x[_piece_key(axis, start, stop, squeeze)],
                 vjp=_piece_vjp, jvp=_piece_jvp, save_inputs=False, linear=True, view=True)


def _grouped(x: Tensor, axis: int, bounds: list[tuple[int, int]], squeeze: bool) -> tuple[Tensor, ...]:
    group = _Collector(axis, bounds, squeeze)
    anchor = apply(GROUP_ANCHOR, x, group=group)
    return tuple(apply(GROUP_PIECE, anchor, axis=axis, index=i, start=a, stop=b, squeeze=squeeze, group=group)
                 for i, (a, b) in enumerate(bounds))


def unbind_grouped(x: Tensor, dim: int = 0) -> tuple[Tensor, ...]:
    """``unbind(x, dim)`` (views without ``dim``) whose backward assembles one gradient for ``x``
    with a single concatenation, instead of one full-size scatter per piece."""
    if not isinstance(x, Tensor):
        raise TypeError(f"unbind_grouped: input must be a Tensor, got {type(x).__name__}")
    if x.ndim == 0:
        raise ShapeError("unbind_grouped: expected a tensor with at least one dimension")
    axis = normalize_dim("unbind_grouped", dim, x.ndim)
    n = x.shape[axis]
    if n == 0:
        return ()
    return _grouped(x, axis, [(i, i + 1) for i in range(n)], True)


def split_grouped(x: Tensor, split_size_or_sections: Any, dim: int = 0) -> tuple[Tensor, ...]:
    """``split(x, ...)`` (views) whose backward is one concatenation (see ``unbind_grouped``)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"split_grouped: input must be a Tensor, got {type(x).__name__}")
    if x.ndim == 0:
        raise ShapeError("split_grouped: expected a tensor with at least one dimension")
    axis = normalize_dim("split_grouped", dim, x.ndim)
    n = x.shape[axis]
    s = split_size_or_sections
    if isinstance(s, (int, np.integer)) and not isinstance(s, bool):
        if s <= 0:
            raise ShapeError(f"split_grouped: split size must be positive, got {s}")
        sizes = [int(s)] * (n // s) + ([n % s] if n % s else [])
    else:
        sizes = [int(v) for v in s]
        if any(v < 0 for v in sizes) or sum(sizes) != n:
            raise ShapeError(f"split_grouped: sections {tuple(sizes)} must be non-negative and sum to {n} "
                             f"(dimension {axis} of shape {x.shape})")
    bounds, start = [], 0
    for v in sizes:
        bounds.append((start, start + v))
        start += v
    if not bounds:
        return ()
    return _grouped(x, axis, bounds, False)


# ----------------------------------------------------------------------------- embedding rows


def _rows_check(name: str, ids: Tensor, num: int) -> None:
    if ids.dtype.category != _dt.INTEGER or ids.ndim != 1:
        raise DTypeError(f"{name}: indices must be a 1-D integer tensor, got {ids.dtype.name} of shape {ids.shape}")


def _rows_range(xp: Any, name: str, ids: Any, num: int) -> None:
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= num):
        raise EmberIndexError(f"{name}: indices span {int(ids.min())}..{int(ids.max())}, outside the {num} rows "
                              f"0..{num - 1}")


def _scatter_rows_infer(g: Tensor, ids: Tensor, num: int) -> tuple:
    _rows_check("scatter_rows", ids, num)
    if g.ndim < 1 or g.shape[0] != ids.shape[0]:
        raise ShapeError(f"scatter_rows: {ids.shape[0]} indices for source rows of shape {g.shape}")
    return (num,) + g.shape[1:], g.dtype


def _scatter_rows_impl(xp: Any, g: Any, ids: Any, num: int) -> Any:
    if xp is np:
        out = _ik.scatter_rows(g, ids, num)
        if out is not None:
            return out
    _rows_range(xp, "scatter_rows", ids, num)
    out = xp.zeros((num,) + g.shape[1:], dtype=g.dtype)
    if ids.shape[0]:
        uniq, sums, _ = coalesce_rows(xp, ids, g)
        out[uniq] = sums
    return out


def _embed_rows_infer(w: Tensor, ids: Tensor) -> tuple:
    if w.ndim < 1:
        raise ShapeError("embed_rows: the table must have at least one dimension")
    _rows_check("embed_rows", ids, w.shape[0])
    return (ids.shape[0],) + w.shape[1:], w.dtype


def _embed_rows_impl(xp: Any, w: Any, ids: Any) -> Any:
    _rows_range(xp, "embed_rows", ids, w.shape[0])
    return xp.take(w, ids, axis=0)


# ``scatter_rows(g, ids, num)`` sums rows of g into a zero (num, ...) table: take's adjoint, computed by
# sorting the indices and summing runs (``coalesce_rows``), about twice as fast as a grouped
# scatter-add for narrow rows; ``embed_rows`` is ``take`` along axis 0 with it as gradient.
SCATTER_ROWS = Op("scatter_rows", infer=_scatter_rows_infer, impl=_scatter_rows_impl,
                  vjp=lambda ctx, g: (apply(EMBED_ROWS, g, ctx.inputs[1]), None), linear=True, diff_args=(0,))
EMBED_ROWS = Op("embed_rows", infer=_embed_rows_infer, impl=_embed_rows_impl,
                vjp=lambda ctx, g: (apply(SCATTER_ROWS, g, ctx.inputs[1], num=ctx.in_meta[0][0][0]), None),
                linear=True, diff_args=(0,))


def embed_rows(table: Tensor, ids: Any) -> Tensor:
    """``table[ids]`` for 1-D non-negative integer ``ids`` (rows of the table); the gradient is
    ``scatter_rows``."""
    if not isinstance(table, Tensor):
        raise TypeError(f"embed_rows: table must be a Tensor, got {type(table).__name__}")
    return apply(EMBED_ROWS, table, _index_tensor("embed_rows", ids, table.device))


def scatter_rows(src: Tensor, ids: Any, num: int) -> Tensor:
    """A (num, ...) zero table with the rows of ``src`` added at ``ids`` (repeats summed)."""
    if not isinstance(src, Tensor):
        raise TypeError(f"scatter_rows: src must be a Tensor, got {type(src).__name__}")
    return apply(SCATTER_ROWS, src, _index_tensor("scatter_rows", ids, src.device), num=int(num))
