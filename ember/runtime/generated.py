"""Turning the fused groups of a planned graph into generated kernels.

``kernel_for`` translates one ``FusedGroup`` (its body of registry ops) into a ``ember.codegen.Kernel``
once the layout of every input is known: each input is read through its own strides (a transposed or
sliced view is index arithmetic in the loop, a broadcast input has stride 0). The executor renders all
kernels of a graph into one translation unit (one compiler call, cached on disk).
"""

from __future__ import annotations

from typing import Any

from ..codegen import Kernel, Output, arg, const, op, reduce
from ..ops.fused import FusedGroup

REDUCE_OPS = ("sum", "amax", "amin")


def kernel_for(group: FusedGroup, layouts: list[tuple[Any, tuple, tuple]],
               noalias: bool = True) -> tuple[Kernel, list[int]]:
    """The kernel of ``group`` given ``(dtype, shape, strides in elements)`` for each external input.

    Returns the kernel and, for each of its inputs, the index of the external input it reads (one
    external value read with two placements is two kernel inputs on the same array)."""
    nd = len(group.shape)
    loads: dict[Any, Any] = {}
    sources: list[int] = []
    vals: list[Any] = []
    for b in group.body:
        args = []
        for a in b.args:
            if a[0] == "in":
                key = (a[1], tuple(a[2]))
                if key not in loads:
                    dtype, shape, strides = layouts[a[1]]
                    vshape, vstrides = [1] * nd, [0] * nd
                    for d, n, s in zip(a[2], shape, strides):
                        vshape[d] = n
                        vstrides[d] = s if n != 1 else 0
                    loads[key] = arg(f"in{len(loads)}", dtype, vshape, vstrides)
                    sources.append(a[1])
                args.append(loads[key])
            elif a[0] == "v":
                args.append(vals[a[1]])
            else:
                args.append(const(a[1], a[2]))
        if b.op in REDUCE_OPS:
            vals.append(reduce(b.op, args[0], axes=group.reduce_axes))
        else:
            vals.append(op(b.op, *args, **b.attrs))
    outputs = [Output(f"out{j}", vals[o.value], dtype=o.dtype, reduced=o.reduced, keepdim=o.keepdim)
               for j, o in enumerate(group.outputs)]
    return Kernel(group.name, list(loads.values()), outputs, shape=group.shape, noalias=noalias), sources
