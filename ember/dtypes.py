"""Data types and the promotion rules every binary op follows.

Promotion (written down here once, used by every op through ``result_type``):

* Categories are ordered ``bool < integer < floating``. Mixing categories gives
  the dtype of the higher category (``int32 + float16 -> float16``), as in
  PyTorch and JAX; NumPy would widen to float64, which is rarely wanted in
  deep learning.
* Within a category the wider type wins (``float32 + float64 -> float64``).
  ``uint8`` with a signed type gives the smallest signed type holding both:
  ``uint8 + int8 -> int32`` (NumPy says int16, which Ember does not have).
* Python scalars are *weak*: they never widen a tensor's dtype within its
  category (``float32 tensor * 2.0 -> float32``, ``int8 tensor + 1 -> int8``).
  A scalar of a higher category lifts the result to that category's default:
  ``int tensor * 0.5 -> float32`` (the default float dtype), ``bool tensor + 1 -> int64``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import DTypeError

BOOL, INTEGER, FLOATING = 0, 1, 2


class DType:
    """An Ember dtype: a name, its NumPy dtype and its promotion category."""

    __slots__ = ("category", "itemsize", "name", "np", "rank")

    def __init__(self, name: str, np_dtype: Any, category: int, rank: int) -> None:
        self.name = name
        self.np = np.dtype(np_dtype)
        self.itemsize = self.np.itemsize
        self.category = category
        self.rank = rank  # order within the category, wider is larger

    @property
    def is_floating_point(self) -> bool:
        return self.category == FLOATING

    @property
    def is_integer(self) -> bool:
        return self.category == INTEGER

    @property
    def is_bool(self) -> bool:
        return self.category == BOOL

    def __repr__(self) -> str:
        return f"ember.{self.name}"

    def __reduce__(self) -> tuple:
        # Unpickles (and deep-copies) to the one instance per dtype, so ``is`` comparisons keep working.
        return (to_dtype, (self.name,))


bool_ = DType("bool", np.bool_, BOOL, 0)
uint8 = DType("uint8", np.uint8, INTEGER, 0)
int8 = DType("int8", np.int8, INTEGER, 1)
int32 = DType("int32", np.int32, INTEGER, 2)
int64 = DType("int64", np.int64, INTEGER, 3)
float16 = DType("float16", np.float16, FLOATING, 0)
float32 = DType("float32", np.float32, FLOATING, 1)
float64 = DType("float64", np.float64, FLOATING, 2)

ALL = (bool_, uint8, int8, int32, int64, float16, float32, float64)
_BY_NAME = {d.name: d for d in ALL}
_BY_NAME.update({"bool_": bool_, "float": float32, "double": float64, "half": float16,
                 "long": int64, "int": int32})
_BY_NP = {d.np: d for d in ALL}

_default_float = float32


def get_default_dtype() -> DType:
    """The dtype of floating tensors created without an explicit dtype (float32)."""
    return _default_float


def set_default_dtype(dtype: Any) -> None:
    """Set the default floating dtype (float16, float32 or float64)."""
    global _default_float
    d = to_dtype(dtype)
    if not d.is_floating_point:
        raise DTypeError(f"set_default_dtype: expected a floating dtype, got {d.name}")
    _default_float = d


def to_dtype(x: Any) -> DType:
    """Convert a DType, a name like ``"float32"``, a NumPy dtype or a Python type to a DType."""
    if isinstance(x, DType):
        return x
    if isinstance(x, str):
        d = _BY_NAME.get(x)
        if d is None:
            raise DTypeError(f"unknown dtype {x!r}; expected one of {', '.join(d.name for d in ALL)}")
        return d
    if x is float:
        return float64
    if x is int:
        return int64
    if x is bool:
        return bool_
    if x is None:  # np.dtype(None) would silently mean float64
        raise DTypeError("expected a dtype, got None")
    try:
        npd = np.dtype(x)
    except TypeError:
        raise DTypeError(f"cannot interpret {x!r} as a dtype") from None
    d = _BY_NP.get(npd)
    if d is None:
        raise DTypeError(f"NumPy dtype {npd} has no Ember equivalent; expected one of "
                         f"{', '.join(d.name for d in ALL)}")
    return d


def from_numpy_dtype(npd: np.dtype) -> DType:
    d = _BY_NP.get(npd)
    if d is None:
        raise DTypeError(f"NumPy dtype {npd} has no Ember equivalent; expected one of "
                         f"{', '.join(d.name for d in ALL)}")
    return d


def promote_types(a: DType, b: DType) -> DType:
    """The dtype two tensors of dtypes ``a`` and ``b`` promote to (see module docstring)."""
    if a is b:
        return a
    if a.category != b.category:
        return a if a.category > b.category else b
    if a.category == INTEGER and (a is uint8 or b is uint8):
        other = b if a is uint8 else a
        return int32 if other is int8 else other
    return a if a.rank >= b.rank else b


def scalar_category(x: Any) -> int:
    if isinstance(x, (bool, np.bool_)):
        return BOOL
    if isinstance(x, (int, np.integer)):
        return INTEGER
    return FLOATING


_CATEGORY_DEFAULT = {BOOL: bool_, INTEGER: int64}


def category_default(category: int) -> DType:
    return _default_float if category == FLOATING else _CATEGORY_DEFAULT[category]


def result_type(tensor_dtypes: list[DType], scalar_categories: list[int]) -> DType:
    """Promote strong tensor dtypes, then apply weak Python scalars."""
    if tensor_dtypes:
        out = tensor_dtypes[0]
        for d in tensor_dtypes[1:]:
            out = promote_types(out, d)
    else:
        out = category_default(max(scalar_categories))
        return out
    for c in scalar_categories:
        if c > out.category:
            out = category_default(c)
    return out
