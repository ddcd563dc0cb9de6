"""Indexing: ``x[key]`` and ``x[key] = value``, with NumPy's semantics.

Basic keys (ints, slices with any step, ``None``, ``...``) go through one primitive,
``getslice``: a NumPy view of the input (it shares the version counter). Its gradient is
``setslice``, the functional write ``copy of base with base[key] = value``. Keys are stored
in the op's attrs as hashable normalized tuples, one item per key entry:

* an ``int >= 0`` selects (and drops) a dimension;
* ``None`` inserts a dimension of size 1;
* ``(start, stop, step)`` is a slice already clipped to its dimension (``stop`` is ``None``
  when a negative step runs through index 0). Trailing full slices are dropped.

Advanced keys (integer tensors, lists or arrays; boolean masks, turned into integer indices
eagerly) follow NumPy: the index arrays broadcast together; their result dimensions replace
the indexed ones in place when the advanced entries are adjacent in the key, and come first
otherwise. When a key has an advanced entry, its plain ints count as advanced entries too
(NumPy's rule, which PyTorch does not follow: ``x[0, :, [1, 2]]`` has shape ``(2, n1)``).
Advanced indexing is a composite: ``getslice`` for the basic part, ``permute`` + ``reshape``
to bring the indexed dimensions together, and one ``take`` with the linearized indices, so
the gradient (``index_add``) comes for free. Assignment through an advanced key uses
``index_copy`` on the same layout.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from .. import dtypes as _dt
from ..autograd import STATE
from ..errors import AutogradError, DTypeError, EmberIndexError, ShapeError
from ..tensor import Tensor, _concrete, _make, _writeable
from ._shape import broadcast_shapes
from .registry import Op, apply

# ----------------------------------------------------------------------------- normalized basic keys


def _np_key(key: tuple) -> tuple:
    """A normalized key as a NumPy key (slices rebuilt from their triples)."""
    return tuple(slice(*it) if type(it) is tuple else it for it in key)


def _slice_len(start: int, stop: int | None, step: int) -> int:
    return len(range(start, -1 if stop is None else stop, step))


def _basic_shape(shape: tuple, key: tuple) -> tuple[int, ...]:
    out = []
    d = 0
    for it in key:
        if it is None:
            out.append(1)
            continue
        if type(it) is tuple:
            out.append(_slice_len(*it))
        d += 1
    return tuple(out) + tuple(shape[d:])


def _check_key(name: str, shape: tuple, key: tuple) -> None:
    used = sum(it is not None for it in key)
    if used > len(shape):
        raise EmberIndexError(f"{name}: key {key} indexes {used} dimensions of a tensor of shape {shape}")


def _getslice_infer(x: Tensor, key: tuple) -> tuple:
    _check_key("getslice", x.shape, key)
    return _basic_shape(x.shape, key), x.dtype


def _setslice_infer(x: Tensor, value: Tensor, key: tuple) -> tuple:
    _check_key("setslice", x.shape, key)
    target = _basic_shape(x.shape, key)
    if value.ndim > len(target) or broadcast_shapes("setslice", value.shape, target) != target:
        raise ShapeError(f"setslice: value of shape {value.shape} cannot be broadcast to the indexed shape "
                         f"{target} (tensor shape {x.shape})")
    if value.dtype is not x.dtype:
        raise DTypeError(f"setslice: value dtype {value.dtype.name} differs from the tensor's {x.dtype.name}")
    return x.shape, x.dtype


def _setslice_impl(xp: Any, x: Any, value: Any, key: tuple) -> Any:
    out = x.copy()
    out[_np_key(key)] = value
    return out


def _getslice_vjp(ctx: Any, g: Tensor) -> tuple:
    from .creation import zeros
    shape = ctx.in_meta[0][0]
    return (setslice(zeros(shape, dtype=g.dtype, device=g.device), ctx.attrs["key"], g),)


def _setslice_vjp(ctx: Any, g: Tensor) -> tuple:
    from .creation import zeros
    key = ctx.attrs["key"]
    return setslice(g, key, zeros((), dtype=g.dtype, device=g.device)), getslice(g, key)


# The trailing Ellipsis makes NumPy return a 0-d view (not a scalar copy) for a full integer key.
GETSLICE = Op("getslice", infer=_getslice_infer, impl=lambda xp, x, key: x[_np_key(key) + (Ellipsis,)],
              vjp=_getslice_vjp, save_inputs=False, linear=True, view=True)
SETSLICE = Op("setslice", infer=_setslice_infer, impl=_setslice_impl, vjp=_setslice_vjp, save_inputs=False,
              linear=True)


def getslice(x: Tensor, key: tuple) -> Tensor:
    """``x[key]`` for a normalized basic key (see the module docstring): a view."""
    return apply(GETSLICE, x, key=key)


def setslice(x: Tensor, key: tuple, value: Tensor) -> Tensor:
    """A copy of ``x`` with ``value`` (broadcast) written at the normalized basic ``key``."""
    return apply(SETSLICE, x, value, key=key)


def slice_dim(x: Tensor, dim: int, start: int, stop: int, step: int = 1) -> Tensor:
    """The view ``x[..., start:stop:step, ...]`` along ``dim`` (bounds already valid, ``dim >= 0``)."""
    key = tuple((0, n, 1) for n in x.shape[:dim]) + ((start, stop, step),)
    if key[-1] == (0, x.shape[dim], 1):
        return x
    return apply(GETSLICE, x, key=key)


# ----------------------------------------------------------------------------- parsing a key


def _describe(key: Any) -> str:
    """A short, readable form of a user's key for error messages."""
    def one(k: Any) -> str:
        if isinstance(k, Tensor):
            return f"tensor(shape={k.shape}, dtype={k.dtype.name})"
        if isinstance(k, np.ndarray):
            return f"array(shape={k.shape}, dtype={k.dtype})"
        if isinstance(k, slice):
            parts = ["" if v is None else str(v) for v in (k.start, k.stop)]
            return ":".join(parts + ([str(k.step)] if k.step is not None else []))
        if k is Ellipsis:
            return "..."
        r = repr(k)
        return r if len(r) <= 40 else r[:37] + "..."
    items = key if isinstance(key, tuple) else (key,)
    return "[" + ", ".join(one(k) for k in items) + "]"


class _Plan:
    """How a key applies to a shape: a basic key, then (optionally) one ``take``.

    ``basic``: the normalized key for ``getslice`` (advanced entries become full slices);
    ``np_key``: the equivalent NumPy key (for direct writes);
    ``perm``: the permutation that brings non-adjacent indexed dims to the front (or None);
    ``axis``: where the flattened indexed dims sit in ``flat_shape``;
    ``linear``: the linearized index array (int64, shape ``bshape``);
    ``out_shape``: the shape of ``x[key]``.
    """

    __slots__ = ("axis", "basic", "bshape", "flat_shape", "linear", "np_key", "out_shape", "perm", "y_shape")

    def __init__(self) -> None:
        self.linear = None
        self.perm = None


def _int_index(k: Any) -> int | None:
    if isinstance(k, (bool, np.bool_)):
        return None
    if isinstance(k, (int, np.integer)):
        return int(k)
    if isinstance(k, Tensor) and k.ndim == 0 and k.dtype.is_integer:
        _concrete("indexing with a 0-d tensor")
        return int(k.data)
    return None


def _array_entry(k: Any, xp: Any, key: Any) -> Any:
    """An advanced entry as an xp array (int or bool), or None if ``k`` is not one."""
    if isinstance(k, Tensor):
        if STATE.tracer is not None:
            _concrete("indexing with a tensor index")
        arr = k.data
        if k.device.type != "cpu":
            from ..device import get_backend
            arr = get_backend(k.device).to_numpy(arr)
    elif isinstance(k, np.ndarray):
        arr = k
    elif isinstance(k, list):
        from .creation import _unwrap
        try:
            arr = np.asarray(_unwrap(k))
        except ValueError:
            raise EmberIndexError(f"index: the list {_describe(k)} is ragged and cannot be used as an index "
                                  f"(key {_describe(key)})") from None
        if arr.size == 0:
            arr = arr.astype(np.int64)
    else:
        return None
    kind = np.dtype(arr.dtype).kind
    if kind not in "iub":
        raise EmberIndexError(f"index: tensors used as indices must be integer or bool, got {arr.dtype} "
                              f"(key {_describe(key)})")
    # a private copy: the take/index_copy built from it saves it for backward, and a later
    # in-place change to the caller's index must not change the recorded gradient
    return xp.array(arr, dtype=np.int64 if kind != "b" else bool, copy=True)


def _fast_basic(shape: tuple, key: Any) -> tuple | None:
    """The normalized key for the common case of plain ints and slices, else None (use ``_parse``)."""
    items = key if type(key) is tuple else (key,)
    if len(items) > len(shape):
        return None
    out: list = []
    for k, n in zip(items, shape):
        t = type(k)
        if t is int:
            if not -n <= k < n:
                return None
            out.append(k + n if k < 0 else k)
        elif t is slice and k.step != 0:
            try:
                start, stop, step = k.indices(n)
            except TypeError:
                return None
            out.append((start, None if stop < 0 else stop, step))
        else:
            return None
    while out and type(out[-1]) is tuple and out[-1] == (0, shape[len(out) - 1], 1):
        out.pop()
    return tuple(out)


def _parse(shape: tuple, key: Any, xp: Any) -> _Plan:
    """Validate ``key`` against ``shape`` and work out how to apply it."""
    fast = _fast_basic(shape, key)
    if fast is not None:
        plan = _Plan()
        plan.basic = fast
        plan.np_key = _np_key(fast)
        plan.y_shape = plan.out_shape = _basic_shape(shape, fast)
        return plan
    items = key if isinstance(key, tuple) else (key,)
    ndim = len(shape)
    # 1. classify: ("int", i) | ("slice", s) | ("new",) | ("ell",) | ("arr", a) | ("mask", m)
    entries: list[tuple] = []
    used = 0
    for k in items:
        i = _int_index(k)
        if i is not None:
            entries.append(("int", i))
            used += 1
        elif k is None:
            entries.append(("new",))
        elif k is Ellipsis:
            if any(e[0] == "ell" for e in entries):
                raise EmberIndexError(f"index: an index can only have a single ellipsis ('...'), got "
                                      f"{_describe(key)}")
            entries.append(("ell",))
        elif isinstance(k, slice):
            entries.append(("slice", k))
            used += 1
        elif isinstance(k, (bool, np.bool_)):
            raise EmberIndexError(f"index: a boolean scalar index is not supported (key {_describe(key)}); "
                                  "use None to insert a dimension or a boolean tensor as a mask")
        else:
            arr = _array_entry(k, xp, key)
            if arr is None:
                raise EmberIndexError(f"index: unsupported index of type {type(k).__name__} in "
                                      f"{_describe(key)}; expected ints, slices, None, ..., integer or bool "
                                      "tensors/lists")
            if arr.dtype == bool:
                if arr.ndim == 0:
                    raise EmberIndexError(f"index: a 0-d boolean mask is not supported (key {_describe(key)})")
                entries.append(("mask", arr))
                used += arr.ndim
            else:
                entries.append(("arr", arr.astype(np.int64, copy=False)))
                used += 1
    if used > ndim:
        raise EmberIndexError(f"index: too many indices for a tensor of shape {tuple(shape)}: the key "
                              f"{_describe(key)} indexes {used} dimensions")
    # 2. expand the ellipsis (or pad at the end) into full slices
    full = [("slice", slice(None))] * (ndim - used)
    for j, e in enumerate(entries):
        if e[0] == "ell":  # an empty ellipsis still separates advanced entries (NumPy)
            entries[j:j + 1] = full or [("gap",)]
            break
    else:
        entries.extend(full)
    advanced = any(e[0] in ("arr", "mask") for e in entries)

    # 3. walk the entries: basic key, NumPy key, advanced dims (their position in y = x[basic])
    plan = _Plan()
    basic: list = []
    np_key: list = []
    adv_arrays: list = []
    adv_pos: list[int] = []
    adv_sizes: list[int] = []
    adv_entries: list[int] = []
    d = 0  # dimension of x
    yd = 0  # dimension of y = x[basic]
    for j, e in enumerate(entries):
        tag = e[0]
        if tag == "gap":
            continue
        if tag == "new":
            basic.append(None)
            np_key.append(None)
            yd += 1
        elif tag == "slice":
            n = shape[d]
            try:
                sl = slice(*(None if v is None else operator.index(v) for v in (e[1].start, e[1].stop, e[1].step)))
            except TypeError:
                raise EmberIndexError(f"index: slice bounds must be integers or None, got {_describe(e[1])} "
                                      f"(key {_describe(key)})") from None
            if sl.step == 0:
                raise EmberIndexError(f"index: slice step cannot be zero (key {_describe(key)})")
            start, stop, step = sl.indices(n)
            basic.append((start, None if stop < 0 else stop, step))
            np_key.append(slice(start, None if stop < 0 else stop, step))
            d += 1
            yd += 1
        elif tag == "int":
            n = shape[d]
            i = e[1]
            if not -n <= i < n:
                raise EmberIndexError(f"index: index {i} is out of range for dimension {d} with size {n} "
                                      f"(tensor shape {tuple(shape)}, key {_describe(key)})")
            i %= n
            np_key.append(i)
            if advanced:  # NumPy: with advanced entries present, an int is one more (0-d) index array
                basic.append((0, n, 1))
                adv_pos.append(yd)
                adv_arrays.append(xp.asarray(i, dtype=np.int64))
                adv_sizes.append(n)
                adv_entries.append(j)
                yd += 1
            else:
                basic.append(i)
            d += 1
        elif tag == "arr":
            n = shape[d]
            arr = e[1]
            if arr.size:
                lo, hi = int(arr.min()), int(arr.max())
                if lo < -n or hi >= n:
                    raise EmberIndexError(f"index: index {hi if hi >= n else lo} is out of range for dimension "
                                          f"{d} with size {n} (tensor shape {tuple(shape)}, key {_describe(key)})")
                if lo < 0:
                    arr = xp.where(arr < 0, arr + n, arr)
            np_key.append(arr)
            basic.append((0, n, 1))
            adv_pos.append(yd)
            adv_arrays.append(arr)
            adv_sizes.append(n)
            adv_entries.append(j)
            d += 1
            yd += 1
        else:  # mask
            m = e[1]
            if tuple(m.shape) != tuple(shape[d:d + m.ndim]):
                raise EmberIndexError(f"index: boolean mask of shape {tuple(m.shape)} does not match the indexed "
                                      f"dimensions {tuple(shape[d:d + m.ndim])} (dims {d}..{d + m.ndim - 1}) of "
                                      f"the tensor of shape {tuple(shape)} (key {_describe(key)})")
            for arr in xp.nonzero(m):
                arr = arr.astype(np.int64, copy=False)
                np_key.append(arr)
                basic.append((0, shape[d], 1))
                adv_pos.append(yd)
                adv_arrays.append(arr)
                adv_sizes.append(shape[d])
                adv_entries.append(j)
                d += 1
                yd += 1
    # drop trailing full slices: one canonical key per view
    while basic and type(basic[-1]) is tuple and basic[-1][0] == 0 and basic[-1][2] == 1 \
            and basic[-1][1] == shape[sum(b is not None for b in basic) - 1]:
        basic.pop()
    plan.basic = tuple(basic)
    plan.np_key = tuple(np_key)
    plan.y_shape = _basic_shape(tuple(shape), plan.basic)
    if not advanced:
        plan.out_shape = plan.y_shape
        return plan

    # 4. broadcast and linearize the index arrays
    try:
        bshape = broadcast_shapes("index", *(tuple(a.shape) for a in adv_arrays))
    except ShapeError:
        raise EmberIndexError(f"index: shape mismatch: indexing arrays could not be broadcast together with "
                              f"shapes {' '.join(str(tuple(a.shape)) for a in adv_arrays)} "
                              f"(key {_describe(key)})") from None
    linear = adv_arrays[0]
    for arr, n in zip(adv_arrays[1:], adv_sizes[1:]):
        linear = linear * n + arr
    if tuple(linear.shape) != bshape:
        linear = xp.ascontiguousarray(xp.broadcast_to(linear, bshape))
    plan.linear = linear
    plan.bshape = bshape
    total = 1
    for n in adv_sizes:
        total *= n
    y = plan.y_shape
    runs = sorted(set(adv_entries))
    adjacent = runs[-1] - runs[0] == len(runs) - 1
    if adjacent:
        a = adv_pos[0]
        plan.axis = a
        plan.flat_shape = y[:a] + (total,) + y[a + len(adv_pos):]
    else:
        rest = [i for i in range(len(y)) if i not in adv_pos]
        plan.perm = tuple(adv_pos) + tuple(rest)
        plan.axis = 0
        plan.flat_shape = (total,) + tuple(y[i] for i in rest)
    a = plan.axis
    plan.out_shape = plan.flat_shape[:a] + bshape + plan.flat_shape[a + 1:]
    return plan


def _xp(x: Tensor) -> Any:
    from .registry import _xp as xp_of
    return xp_of(x.device)


# ----------------------------------------------------------------------------- getitem / setitem


def _traced_take(x: Tensor, key: Any) -> Tensor | None:
    """While tracing, ``x[idx]`` / ``x[:, idx]`` with one integer index tensor (the other entries full slices)
    is a ``take`` along that dimension, whose shape depends on shapes only; None for other keys."""
    from .movement import take
    entries = key if isinstance(key, tuple) else (key,)
    tensors = [i for i, k in enumerate(entries) if isinstance(k, Tensor)]
    if len(tensors) != 1 or len(entries) > x.ndim:
        return None
    dim = tensors[0]
    index = entries[dim]
    if not index.dtype.is_integer or not all(k == slice(None) for i, k in enumerate(entries) if i != dim):
        return None
    return take(x, index, dim)


def getitem(x: Tensor, key: Any) -> Tensor:
    """``x[key]`` with NumPy semantics (see the module docstring): basic keys give views."""
    fast = _fast_basic(x.shape, key)
    if fast is not None:
        return apply(GETSLICE, x, key=fast)
    if STATE.tracer is not None:
        traced = _traced_take(x, key)
        if traced is not None:
            return traced
    plan = _parse(x.shape, key, _xp(x))
    if plan.linear is None:
        return apply(GETSLICE, x, key=plan.basic)
    from .movement import TAKE, permute, reshape
    y = apply(GETSLICE, x, key=plan.basic) if plan.basic else x
    if plan.perm is not None:
        y = permute(y, plan.perm)
    if y.shape != plan.flat_shape:
        y = reshape(y, plan.flat_shape)
    index = _make(plan.linear, _dt.int64, x.device)
    return apply(TAKE, y, index, axis=plan.axis)


def _value_tensor(x: Tensor, value: Any, key: Any) -> Tensor:
    if isinstance(value, Tensor):
        if value.device != x.device:
            value = value.to(x.device)
        if value.dtype is not x.dtype:
            from .pointwise import cast
            value = cast(value, x.dtype)
        return value
    if isinstance(value, (bool, int, float, np.number, np.bool_)):
        if isinstance(value, float) and not x.dtype.is_floating_point and not value.is_integer():
            raise DTypeError(f"setitem: cannot assign the float {value} to a tensor of dtype {x.dtype.name}")
        return _make(_xp(x).asarray(value, dtype=x.dtype.np), x.dtype, x.device)
    if isinstance(value, (list, tuple, np.ndarray)):
        from .creation import tensor
        return tensor(value, dtype=x.dtype, device=x.device)
    raise TypeError(f"setitem: value must be a Tensor or a number, got {type(value).__name__} "
                    f"(key {_describe(key)})")


def _put(old: Tensor, plan: _Plan, value: Tensor) -> Tensor:
    """Functional ``old[key] = value``: a new tensor, differentiable in both ``old`` and ``value``."""
    if plan.linear is None:
        return setslice(old, plan.basic, value)
    from .movement import expand, index_copy, permute, reshape
    y = getslice(old, plan.basic) if plan.basic else old
    yp = permute(y, plan.perm) if plan.perm is not None else y
    yf = reshape(yp, plan.flat_shape)
    a = plan.axis
    count = int(plan.linear.size)
    v = expand(value, plan.out_shape) if value.shape != plan.out_shape else value
    v = reshape(v, plan.flat_shape[:a] + (count,) + plan.flat_shape[a + 1:])
    index = _make(plan.linear.reshape(-1), _dt.int64, old.device)
    z = reshape(index_copy(yf, a, index, v), yp.shape)
    if plan.perm is not None:
        inverse = [0] * len(plan.perm)
        for i, p in enumerate(plan.perm):
            inverse[p] = i
        z = permute(z, tuple(inverse))
    return setslice(old, plan.basic, z) if plan.basic else z


def setitem(x: Tensor, key: Any, value: Any) -> None:
    """``x[key] = value``: ``value`` (a tensor or number) is cast to ``x``'s dtype and broadcast to ``x[key]``.

    Outside autograd this writes straight into ``x``'s memory; while recording it goes through
    ``Tensor._inplace`` with a functional update, so gradients flow to both ``x``'s history and
    ``value``. Either way ``x``'s version counter is bumped.
    """
    plan = _parse(x.shape, key, _xp(x))
    v = _value_tensor(x, value, key)
    target = plan.out_shape
    vshape = v.shape
    while len(vshape) > len(target) and vshape[0] == 1:
        vshape = vshape[1:]
    try:
        ok = len(vshape) <= len(target) and broadcast_shapes("setitem", vshape, target) == target
    except ShapeError:
        ok = False
    if not ok:
        raise ShapeError(f"setitem: value of shape {v.shape} cannot be broadcast to the indexed shape {target} "
                         f"(tensor shape {x.shape}, key {_describe(key)})")
    if vshape != v.shape:
        from .movement import reshape
        v = reshape(v, vshape)
    recording = STATE.grad_enabled and (x.requires_grad or v.requires_grad)
    if not recording and STATE.tracer is None:
        if not _writeable(x.data):
            raise AutogradError(f"setitem: the tensor of shape {x.shape} is read-only (an expanded/broadcast "
                                "view); .clone() it first")
        x.data[plan.np_key] = v.data
        x._version[0] += 1
        return
    x._inplace(lambda old, val: _put(old, plan, val), v)
