"""Algebraic simplification: identities that remove work without changing a single result bit
that matters (``x*1``, ``x/1``, ``x+0``, ``x-0``, ``--x``, casts to the same dtype, sums over
size-1 dimensions), scalar broadcasts folded into the consuming pointwise op (the kernel
broadcasts, so the ``expand`` disappears), and a ReLU's backward mask applied before a max-pool backward
instead of after it (on the pooled gradient, a quarter of the size for 2x2 windows)."""

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


def _relu_mask_of(m: Node, x: Node) -> Node | None:
    """The ``gt(x, 0)`` under ``m`` when ``m`` is ``cast(gt(x, 0))`` (ReLU's backward mask of the output x)."""
    if m.kind != "op" or m.op.name != "cast" or m.inputs[0].kind != "op" or m.inputs[0].op.name != "gt":
        return None
    gt = m.inputs[0]
    return gt if gt.inputs[0] is x and _is(gt.inputs[1], 0) and gt.inputs[1].numel == 1 else None


def _mask_before_pool_backward(g: Graph, n: Node, ins: tuple, single: set[int]) -> Node | None:
    """``max_pool2d_backward(G, X, OUT) * (X > 0)`` -> ``max_pool2d_backward(G * (OUT > 0), X, OUT)``: a ReLU's
    backward after max pooling masks the pooled gradient (4x smaller for 2x2 windows) instead of the full one.
    Exact: each window's gradient lands on its maximum, where X equals OUT."""
    for k in (0, 1):
        p, m = ins[k], ins[1 - k]
        if (p.kind != "op" or p.op.name != "max_pool2d_backward" or n.inputs[k].id not in single
                or not _same(p, n)):
            continue
        grad, x, out = p.inputs
        gt = _relu_mask_of(m, x)
        if gt is None or grad.dtype is not n.dtype:
            continue
        small_gt = g.make(gt.op, (out, gt.inputs[1]), gt.attrs, out.shape, gt.dtype, out.device)
        small_mask = g.make(m.op, (small_gt,), m.attrs, out.shape, m.dtype, out.device)
        masked = g.make(n.op, (grad, small_mask), n.attrs, grad.shape, grad.dtype, grad.device)
        return g.make(p.op, (masked, x, out), p.attrs, p.shape, p.dtype, p.device)
    return None


def simplify(g: Graph, n: Node, ins: tuple, single: set[int] | None = None) -> tuple[Node | None, str | None]:
    """A replacement for ``n`` (with inputs ``ins``) and the rule's name, or (None, None). ``single``: ids of
    the (old graph's) nodes with one reader, for rules that must not duplicate work."""
    name = n.op.name
    if name == "mul" and len(ins) == 2 and single is not None:
        out = _mask_before_pool_backward(g, n, ins, single)
        if out is not None:
            return out, "ReLU mask moved before max-pool backward"
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
    single = {i for i, readers in graph.users().items() if len(readers) == 1}
    return run_rules(graph, ctx, lambda g, n, ins: simplify(g, n, ins, single))
