"""Kernels that write into a given output array (``out=``), for the ops where NumPy can.

Each performs exactly the arithmetic of the op's reference ``impl`` (same ufuncs, same order), so a
compiled replay is bit-identical to eager mode; it only skips the allocation. Ops not listed here
run their reference kernel and own the array it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..ops.linalg import _blas_ready

OutKernel = Callable[..., Any]


def _matmul(out: Any, a: Any, b: Any) -> Any:
    return np.matmul(_blas_ready(a), _blas_ready(b), out=out)


def _linear(out: Any, x: Any, w: Any, *b: Any) -> Any:
    np.matmul(_blas_ready(x), _blas_ready(w).T, out=out)
    if b:
        np.add(out, b[0], out=out)
    return out


def _relu(out: Any, x: Any) -> Any:
    return np.maximum(x, 0, out=out)


def _copy(out: Any, x: Any) -> Any:
    np.copyto(out, x, casting="unsafe")
    return out


def _where(out: Any, c: Any, a: Any, b: Any) -> Any:
    np.copyto(out, b)
    np.copyto(out, a, where=c)
    return out


def _reduce(ufunc: Any) -> Callable[..., OutKernel]:
    def make(attrs: dict) -> OutKernel:
        axes, keep = attrs["axes"], attrs["keepdim"]
        return lambda out, x: ufunc.reduce(x, axis=axes, keepdims=keep, out=out)
    return make


_FIXED: dict[str, OutKernel] = {"matmul": _matmul, "linear": _linear, "relu": _relu, "clone": _copy, "cast": _copy,
                                "where": _where}
_REDUCTIONS = {"sum": _reduce(np.add), "amax": _reduce(np.maximum), "amin": _reduce(np.minimum)}


def out_kernel(node: Any) -> OutKernel | None:
    """A kernel ``k(out, *arrays)`` for ``node`` that writes its result into ``out``, or None."""
    if node.device.type != "cpu" or node.kind != "op":
        return None
    op = node.op
    in_dtypes = [i.dtype for i in node.inputs]
    if op.name in _FIXED:
        if op.name in ("matmul", "linear") and any(d is not node.dtype for d in in_dtypes):
            return None
        if op.name == "matmul" and (node.inputs[0].shape.__len__() < 2 or len(node.inputs[1].shape) < 2):
            return None
        return _FIXED[op.name]
    if op.name in _REDUCTIONS:
        if not node.dtype.is_floating_point or in_dtypes[0] is not node.dtype:  # floating reductions only
            return None
        return _REDUCTIONS[op.name](node.attrs)
    if op.ufunc is not None and not node.attrs:
        ufunc = getattr(np, op.ufunc)
        with np.errstate(all="ignore"):
            probe = ufunc(*[np.zeros((), d.np) for d in in_dtypes])
        if probe.dtype != node.dtype.np:
            return None
        if len(in_dtypes) == 1:
            return lambda out, x: ufunc(x, out=out)
        return lambda out, a, b: ufunc(a, b, out=out)
    return None
