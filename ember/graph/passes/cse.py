"""Common-subexpression elimination: rebuild the graph through interning, so structurally equal
nodes (same op, same inputs, same attributes) become one. Tracing already interns; this catches
the duplicates that other passes' rewrites create (and graphs built without interning)."""

from __future__ import annotations

from typing import Any

from ..ir import Graph

NAME = "cse"


def run(graph: Graph, ctx: Any) -> tuple[Graph, list[str]]:
    intern = graph.intern
    graph.intern = True
    try:
        new, m = graph.rebuild()
    finally:
        graph.intern = intern
    merged: dict[str, int] = {}
    firsts: set[int] = set()
    for n in graph.nodes:
        target = m[n.id]
        if target.id in firsts and n.kind == "op":
            merged[n.op.name] = merged.get(n.op.name, 0) + 1
        firsts.add(target.id)
    if not merged:
        return graph, []
    # Drop the duplicates (nothing refers to them any more).
    new2, _ = new.rebuild(keep=_used(new))
    total = sum(merged.values())
    return new2, [f"merged {total} duplicate node(s): " + ", ".join(f"{k} x{v}" for k, v in sorted(merged.items()))]


def _used(graph: Graph) -> list:
    from .dce import live_nodes
    keep = live_nodes(graph)
    return [n for n in graph.nodes if n.id in keep]
