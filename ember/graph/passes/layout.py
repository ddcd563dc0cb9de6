"""Layout and movement simplification: chains of views collapse into one view.

``reshape(reshape(x))`` is one reshape; ``permute(permute(x))`` one permute (or nothing when the
composition is the identity); ``expand(expand(x))`` one expand; a reshape, permute or expand to
the shape it already has disappears; an ``expand`` that only adds leading size-1 dimensions and
a reshape after it become one reshape.
"""

from __future__ import annotations

from typing import Any

from ...ops.registry import REGISTRY
from ..ir import Graph, Node
from .rules import run_rules

NAME = "layout"


def _view(g: Graph, name: str, x: Node, attrs: dict, n: Node) -> Node:
    return g.make(REGISTRY[name], (x,), attrs, n.shape, n.dtype, n.device)


def simplify(g: Graph, n: Node, ins: tuple) -> tuple[Node | None, str | None]:
    name = n.op.name
    x = ins[0] if ins else None
    if name in ("reshape", "expand") and x is not None and x.shape == n.shape and x.dtype is n.dtype:
        return x, f"{name} to own shape"
    if name == "permute" and tuple(n.attrs["dims"]) == tuple(range(len(n.shape))):
        return x, "identity permute"
    if x is None or x.kind != "op":
        return None, None
    inner = x.op.name
    if name == "reshape" and inner == "reshape":
        if x.inputs[0].shape == n.shape:
            return x.inputs[0], "reshape chain -> nothing"
        return _view(g, "reshape", x.inputs[0], {"shape": n.shape}, n), "reshape chain -> one reshape"
    if name == "permute" and inner == "permute":
        d1, d2 = x.attrs["dims"], n.attrs["dims"]
        dims = tuple(d1[d] for d in d2)
        if dims == tuple(range(len(dims))):
            return x.inputs[0], "permute chain -> nothing"
        return _view(g, "permute", x.inputs[0], {"dims": dims}, n), "permute chain -> one permute"
    if name == "expand" and inner == "expand":
        return _view(g, "expand", x.inputs[0], {"shape": n.shape}, n), "expand chain -> one expand"
    if name == "reshape" and inner == "expand" and x.numel == x.inputs[0].numel:
        return _view(g, "reshape", x.inputs[0], {"shape": n.shape}, n), "size-1 expand + reshape -> one reshape"
    return None, None


def run(graph: Graph, ctx: Any) -> tuple[Graph, list[str]]:
    return run_rules(graph, ctx, simplify)
