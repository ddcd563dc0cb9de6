"""Dead-code elimination: drop nodes that no output or state write depends on.

Random draws stay even when unused, so the generator advances as it does in eager mode.
"""

from __future__ import annotations

from typing import Any

from ..ir import Graph, is_effectful

NAME = "dce"


def live_nodes(graph: Graph) -> set[int]:
    """Ids of the nodes the roots (and effectful nodes) depend on; an iterative walk."""
    stack = list(graph.roots()) + [n for n in graph.nodes if n.kind == "op" and is_effectful(n.op, n.attrs)]
    seen: set[int] = set()
    while stack:
        n = stack.pop()
        if n.id in seen:
            continue
        seen.add(n.id)
        stack.extend(n.inputs)
    return seen


def run(graph: Graph, ctx: Any) -> tuple[Graph, list[str]]:
    keep = live_nodes(graph)
    dead = [n for n in graph.nodes if n.id not in keep and n.kind != "input"]
    if not dead:
        return graph, []
    hist: dict[str, int] = {}
    for n in dead:
        name = n.op.name if n.kind == "op" else n.kind
        hist[name] = hist.get(name, 0) + 1
    new, _ = graph.rebuild(keep=[n for n in graph.nodes if n.id in keep])
    return new, [f"removed {len(dead)} unused node(s): " + ", ".join(f"{k} x{v}" for k, v in sorted(hist.items()))]
