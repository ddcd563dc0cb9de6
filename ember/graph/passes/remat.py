"""Rematerialization: with ``memory_budget``, recompute activations where they are used again in
the backward pass instead of keeping them alive across the peak.

Repeatedly: find the step where the most intermediate bytes are alive; among the values alive
there but not read there, whose inputs are still available when the value is next needed, pick
the one that frees the most bytes per unit of recompute cost (FLOPs), and recompute it right
before its next use. Stops when the peak fits the budget or no candidate is left (then the
report says the budget was not met). Random draws are never recomputed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...runtime.memory import alias_roots, last_uses
from ..ir import Graph, Node, is_effectful

NAME = "remat"
MAX_STEPS = 400


def cost(n: Node) -> float:
    """Recompute cost in (rough) FLOPs."""
    name = n.op.name
    if name in ("matmul", "linear"):
        k = n.inputs[0].shape[-1] if n.inputs[0].shape else 1
        return 2.0 * n.numel * k
    if name in ("unfold2d", "fold2d", "max_pool2d", "max_pool2d_backward"):
        return 8.0 * max(n.numel, n.inputs[0].numel)
    return float(max(n.numel, max((i.numel for i in n.inputs), default=1)))


def timeline(graph: Graph, roots: list[Node], last: list[int]) -> np.ndarray:
    t = np.zeros(len(graph.nodes) + 1, np.int64)
    for n in graph.nodes:
        if n.kind == "op" and not n.is_view:
            t[n.id:last[n.id] + 1] += n.nbytes
    return t


def run(graph: Graph, ctx: Any) -> tuple[Graph, list[str]]:
    budget = ctx.memory_budget
    if budget is None:
        return graph, []
    roots = alias_roots(graph)
    last = last_uses(graph, roots)
    start_peak = int(timeline(graph, roots, last).max())
    recomputed: dict[str, int] = {}
    extra = 0.0
    peak = start_peak
    for _ in range(MAX_STEPS):
        roots = alias_roots(graph)
        last = last_uses(graph, roots)
        t = timeline(graph, roots, last)
        peak_at = int(t.argmax())
        peak = int(t[peak_at])
        if peak <= budget:
            break
        pick = _choose(graph, roots, last, peak_at)
        if pick is None:
            break
        r, u = pick
        recomputed[r.op.name] = recomputed.get(r.op.name, 0) + 1
        extra += cost(r)
        graph = _recompute_before(graph, r, u)
    ctx.notes["remat"] = {"peak_before": start_peak, "peak_after": peak, "extra_flops": extra,
                          "recomputed": sum(recomputed.values())}
    if not recomputed:
        return graph, [f"budget {budget} B; peak {start_peak} B; nothing recomputed"
                       + ("" if start_peak <= budget else " (no candidate: the budget is not met)")]
    met = "met" if peak <= budget else "NOT met (no further candidate)"
    return graph, [f"budget {budget / 2**20:.2f} MiB {met}: peak of live intermediates "
                   f"{start_peak / 2**20:.2f} -> {peak / 2**20:.2f} MiB",
                   f"recomputed {sum(recomputed.values())} value(s) ("
                   + ", ".join(f"{k} x{v}" for k, v in sorted(recomputed.items()))
                   + f"), {extra / 1e6:.1f} MFLOP extra per call"]


def _choose(graph: Graph, roots: list[Node], last: list[int], peak_at: int) -> tuple[Node, Node] | None:
    users: dict[int, list[Node]] = {}
    for n in graph.nodes:
        for i in n.inputs:
            users.setdefault(i.id, []).append(n)
    protected = {v.id for v in graph.roots()}
    best, best_score = None, 0.0
    for r in graph.nodes:
        if (r.kind != "op" or r.is_view or r.id >= peak_at or last[r.id] <= peak_at or r.id in protected
                or is_effectful(r.op, r.attrs)):
            continue
        direct = users.get(r.id, [])
        if any(u.id == peak_at for u in direct):
            continue
        # Reads through views of r must all be before the peak (they pin r's memory otherwise).
        if any(roots[v.id] is r and v is not r and any(x.id > peak_at for x in users.get(v.id, []))
               for v in direct if v.is_view):
            continue
        later = [u for u in direct if u.id > peak_at]
        if not later:
            continue
        u = min(later, key=lambda x: x.id)
        if not all(i.kind != "op" or last[roots[i.id].id] >= u.id for i in r.inputs):
            continue
        score = r.nbytes / (1.0 + cost(r))
        if score > best_score:
            best, best_score = (r, u), score
    return best


def _recompute_before(graph: Graph, r: Node, u: Node) -> Graph:
    def before(g: Graph, n: Node, m: dict) -> None:
        if n.id == u.id:
            clone = g.make(r.op, tuple(m[i.id] for i in r.inputs), r.attrs, r.shape, r.dtype, r.device, fresh=True)
            m[r.id] = clone
    new, _ = graph.rebuild(before=before)
    return new
