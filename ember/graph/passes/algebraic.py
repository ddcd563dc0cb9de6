"""Algebraic simplification: identities that remove work without changing a single result bit
that matters (``x*1``, ``x/1``, ``x+0``, ``x-0``, ``--x``, casts to the same dtype, sums over
size-1 dimensions), and scalar broadcasts folded into the consuming pointwise op (the kernel
broadcasts, so the ``expand`` disappears)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...ops.registry import REGISTRY
from ..ir import Graph, Node
from .rules import run_rules

NAME = "algebraic"


def _is(node: Node, value: float) -> bool:
    return node.kind == "const" and node.payload.size <= 4096 and bool(np.all(node.payload == value))


def _same(a: Node, n: Node) -> bool:
    return a.shape == n.shape and a.dtype is n.dtype


def simplify(g: Graph, n: Node, ins: tuple) -> tuple[Node | None, str | None]:
    """A replacement for ``n`` (with inputs ``ins``) and the rule's name, or (None, None)."""
    name = n.op.name
    if name in ("mul", "div") and len(ins) == 2:
        a, b = ins
        if _is(b, 1) and _same(a, n):
            return a, f"x{'*' if name == 'mul' else '/'}1"
        if name == "mul" and _is(a, 1) and _same(b, n):
            return b, "1*x"
    if name in ("add", "sub") and len(ins) == 2:
        a, b = ins
        if _is(b, 0) and _same(a, n):
            return a, f"x{'+' if name == 'add' else '-'}0"
        if name == "add" and _is(a, 0) and _same(b, n):
            return b, "0+x"
    if name == "neg" and ins[0].kind == "op" and ins[0].op.name == "neg":
        return ins[0].inputs[0], "--x"
    if name == "cast" and ins[0].dtype is n.dtype:
        return ins[0], "cast to own dtype"
    if name == "sum" and ins[0].shape and all(ins[0].shape[a] == 1 for a in n.attrs["axes"]):
        if n.attrs["keepdim"]:
            return ins[0], "sum over size-1 dims"
        return g.make(REGISTRY["reshape"], (ins[0],), {"shape": n.shape}, n.shape, n.dtype, n.device), \
            "sum over size-1 dims -> reshape"
    if n.op.ufunc is not None and len(ins) == 2:
        # A broadcast operand: let the kernel broadcast the expand's source instead.
        for k, x in enumerate(ins):
            other = ins[1 - k]
            if x.kind == "op" and x.op.name == "expand" and _same(other, n) and len(x.inputs[0].shape) <= len(n.shape):
                new_ins = (x.inputs[0], other) if k == 0 else (other, x.inputs[0])
                return g.make(n.op, new_ins, n.attrs, n.shape, n.dtype, n.device), "broadcast folded into kernel"
    return None, None


def run(graph: Graph, ctx: Any) -> tuple[Graph, list[str]]:
    return run_rules(graph, ctx, simplify)
