"""The two ops the fusion pass writes into a graph: ``fused`` (one generated kernel) and ``fused_output``.

A ``fused`` node stands for a group of pointwise and reduction nodes that run as one loop nest. Its
inputs are the values the group reads from outside; its ``group`` attribute (a ``FusedGroup``) is the
body, a small list of registry ops over those inputs. Its own value is empty: each result the rest of
the graph reads is a ``fused_output`` node right after it, ``index`` naming which. Splitting it this
way keeps every node single-valued, so memory planning and the executor treat a kernel's results as
ordinary buffers (born when the kernel runs).

Both ops have reference kernels (the body interpreted with the registry's NumPy kernels), so a fused
graph still runs where a group cannot be compiled; the executor normally runs the generated C.
Neither op is differentiable: fusion runs after autodiff, on the final graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import dtypes as _dt
from .registry import REGISTRY, Op


@dataclass(eq=False)
class BodyOp:
    """One node of a group's body: ``op`` (a registry name) applied to ``args``.

    An arg is ``("in", k, dims)`` (external input ``k`` placed on iteration axes ``dims``), ``("v", j)``
    (body value ``j``) or ``("c", value, dtype)`` (a scalar constant). ``dims`` are the iteration axes
    of this value's own dimensions (size-1 or missing axes are broadcast)."""

    op: str
    attrs: dict
    args: list
    shape: tuple
    dtype: _dt.DType
    dims: tuple


@dataclass(eq=False)
class GroupOutput:
    """A body value the graph reads: ``reduced`` when it is constant along the reduced axes (stored in
    the reduced shape, ``keepdim`` or not), else stored in the full iteration shape."""

    value: int
    shape: tuple
    dtype: _dt.DType
    reduced: bool = False
    keepdim: bool = True


@dataclass(eq=False)
class FusedGroup:
    """What one fused kernel computes (see the module docstring)."""

    name: str
    shape: tuple                     # the iteration shape
    reduce_axes: tuple               # iteration axes every reduction of the body sums/maxes over
    body: list[BodyOp] = field(default_factory=list)
    outputs: list[GroupOutput] = field(default_factory=list)
    n_inputs: int = 0
    members: int = 0                 # graph nodes it replaced (for reports)

    @property
    def elementwise(self) -> bool:
        """No reductions: every output element depends only on the inputs at the same index."""
        return not self.reduce_axes

    def full_loads(self, k: int) -> bool:
        """Whether every read of input ``k`` is at the output's own index (identity placement)."""
        full = tuple(range(len(self.shape)))
        for b in self.body:
            for a in b.args:
                if a[0] == "in" and a[1] == k and tuple(a[2]) != full:
                    return False
        return True

    def describe(self) -> str:
        ops = {}
        for b in self.body:
            ops[b.op] = ops.get(b.op, 0) + 1
        text = ", ".join(f"{k} x{v}" if v > 1 else k for k, v in ops.items())
        red = f" reduce axes {self.reduce_axes}" if self.reduce_axes else ""
        return f"{self.name}[{','.join(map(str, self.shape))}]{red}: {text}"

    def __repr__(self) -> str:
        return f"FusedGroup({self.describe()})"


def _placed(x: Any, dims: tuple, ndim: int, shape: tuple) -> Any:
    """``x`` (dimensions on iteration axes ``dims``) as an array of rank ``ndim`` that broadcasts to ``shape``."""
    if x.ndim == 0:
        return x
    full = [1] * ndim
    for d, n in zip(dims, x.shape):
        full[d] = n
    order = sorted(range(len(dims)), key=lambda i: dims[i])
    return np.transpose(x, order).reshape(full) if order != list(range(len(dims))) else x.reshape(full)


def evaluate(group: FusedGroup, arrays: tuple) -> tuple:
    """The group's outputs computed with the registry's reference kernels (NumPy), in body order."""
    nd = len(group.shape)
    vals: list[Any] = []
    with np.errstate(all="ignore"):
        for b in group.body:
            args = []
            for a in b.args:
                if a[0] == "in":
                    args.append(_placed(np.asarray(arrays[a[1]]), tuple(a[2]), nd, group.shape))
                elif a[0] == "v":
                    args.append(vals[a[1]])
                else:
                    args.append(np.asarray(a[1], dtype=a[2].np))
            op = REGISTRY[b.op]
            if b.op in ("sum", "amax", "amin"):
                out = op.impl(np, args[0], axes=group.reduce_axes, keepdim=True)
            else:
                out = op.impl(np, *args, **b.attrs)
            out = np.asarray(out)
            vals.append(out if out.dtype == b.dtype.np else out.astype(b.dtype.np))
    outs = []
    for o in group.outputs:
        v = vals[o.value]
        if o.reduced:
            full = tuple(1 if d in group.reduce_axes else n for d, n in enumerate(group.shape))
        else:
            full = group.shape
        outs.append(np.ascontiguousarray(np.broadcast_to(v, full)).reshape(o.shape).astype(o.dtype.np, copy=False))
    return tuple(outs)


def _fused_infer(*inputs: Any, group: FusedGroup) -> tuple:
    return (0,), _dt.bool_


def _output_infer(kernel: Any, group: FusedGroup, index: int) -> tuple:
    o = group.outputs[index]
    return o.shape, o.dtype


FUSED = Op("fused", infer=_fused_infer, impl=lambda xp, *arrays, group: evaluate(group, arrays))
FUSED_OUTPUT = Op("fused_output", infer=_output_infer, impl=lambda xp, results, group, index: results[index])
