"""The driver shared by the rewrite-rule passes (algebraic, layout): rebuild the graph through a
``simplify(graph, node, inputs) -> (replacement, rule)`` function, count the rules that fired, and let a
freshly made replacement be simplified again (so chains collapse in one pass)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..ir import Graph, Node

Simplify = Callable[[Graph, Node, tuple], tuple[Node | None, str | None]]


def run_rules(graph: Graph, ctx: Any, simplify: Simplify) -> tuple[Graph, list[str]]:
    """Apply ``simplify`` to every op node; returns the new graph (dead nodes removed) and one note per rule."""
    fired: dict[str, int] = {}

    def rewrite(g: Graph, n: Node, ins: tuple) -> Node | None:
        out, rule = simplify(g, n, ins)
        while rule is not None:
            fired[rule] = fired.get(rule, 0) + 1
            if out.kind != "op" or out.id != len(g.nodes) - 1:  # an existing node: already simplified
                break
            again, rule = simplify(g, out, out.inputs)
            if again is not None:
                out = again
        return out

    new, _ = graph.rebuild(rewrite)
    if not fired:
        return graph, []
    from .dce import run as dce
    new, _ = dce(new, ctx)
    return new, [f"{rule}: {count}" for rule, count in sorted(fired.items())]
