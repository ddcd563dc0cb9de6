"""Constant folding: evaluate, at compile time, nodes whose inputs are all constants.

Views of constants stay views (folding an ``expand`` would materialize a large array for nothing),
random draws are never folded, and results above ``MAX_BYTES`` stay computed at run time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ir import Graph, is_effectful

NAME = "constant_fold"
MAX_BYTES = 1 << 20


def run(graph: Graph, ctx: Any) -> tuple[Graph, list[str]]:
    folded: dict[str, int] = {}

    def rewrite(g: Graph, n: Any, ins: tuple) -> Any:
        if (not ins or n.is_view or is_effectful(n.op, n.attrs) or n.nbytes > MAX_BYTES
                or any(i.kind != "const" for i in ins) or n.device.type != "cpu"):
            return None
        with np.errstate(all="ignore"):
            value = n.op.impl(np, *[i.payload for i in ins], **n.attrs)
        value = np.asarray(value)
        if value.dtype != n.dtype.np:
            value = value.astype(n.dtype.np)
        folded[n.op.name] = folded.get(n.op.name, 0) + 1
        return g.add_const(np.ascontiguousarray(value), n.dtype, n.device)

    new, _ = graph.rebuild(rewrite)
    if not folded:
        return graph, []
    from .dce import run as dce
    new, _ = dce(new, ctx)
    return new, [f"folded {sum(folded.values())} node(s) into constants: "
                 + ", ".join(f"{k} x{v}" for k, v in sorted(folded.items()))]
