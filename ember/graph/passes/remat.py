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

from ...runtime.memory import alias_roots, last_uses, plan_memory
from ..ir import Graph, Node, is_effectful

NAME = "remat"
MAX_STEPS = 400
TRIES = 4  # candidates tried per step before giving up


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
    """Bytes of intermediates alive at each step (outputs and state values, which live in tensors the
    caller holds, are not intermediates)."""
    t = np.zeros(len(graph.nodes) + 1, np.int64)
    held = {v.id for v in graph.roots()}
    for n in graph.nodes:
        if n.kind == "op" and not n.is_view and n.id not in held:
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
    target = budget
    for _ in range(3):  # the arena adds fragmentation to the live bytes: aim lower until the plan fits
        graph, peak, extra = _reduce(graph, target, recomputed, extra)
        planned = plan_memory(graph).planned_peak_bytes
        if planned <= budget or peak > target:
            break
        target -= planned - budget
    ctx.notes["remat"] = {"peak_before": start_peak, "peak_after": peak, "extra_flops": extra,
                          "recomputed": sum(recomputed.values())}
    if not recomputed:
        return graph, [f"budget {budget} B; peak {start_peak} B; nothing recomputed"
                       + ("" if start_peak <= budget else " (no candidate: the budget is not met)")]
    met = "met" if planned <= budget else "NOT met (no further candidate)"
    return graph, [f"budget {budget / 2**20:.2f} MiB {met}: peak of live intermediates "
                   f"{start_peak / 2**20:.2f} -> {peak / 2**20:.2f} MiB, planned {planned / 2**20:.2f} MiB",
                   f"recomputed {sum(recomputed.values())} value(s) ("
                   + ", ".join(f"{k} x{v}" for k, v in sorted(recomputed.items()))
                   + f"), {extra / 1e6:.1f} MFLOP extra per call"]


def _reduce(graph: Graph, budget: int, recomputed: dict[str, int], extra: float) -> tuple[Graph, int, float]:
    """Recompute values until the live intermediates fit ``budget`` or no candidate is left."""
    peak = 0
    for _ in range(MAX_STEPS):
        roots = alias_roots(graph)
        last = last_uses(graph, roots)
        t = timeline(graph, roots, last)
        peak_at = int(t.argmax())
        peak = int(t[peak_at])
        if peak <= budget:
            break
        at_peak = int((t == peak).sum())
        for _r, u, recipe in _candidates(graph, roots, last, peak_at)[:TRIES]:
            trial = _recompute_before(graph, u, recipe)
            t_roots = alias_roots(trial)
            tt = timeline(trial, t_roots, last_uses(trial, t_roots))
            new_peak = int(tt.max())
            if new_peak < peak or (new_peak == peak and int((tt == peak).sum()) < at_peak):
                break  # this recomputation lowers the peak (or shortens it): keep it
        else:
            break  # no candidate lowers the peak any more
        for x in recipe:
            if not x.is_view:
                recomputed[x.op.name] = recomputed.get(x.op.name, 0) + 1
                extra += cost(x)
        graph = trial
    return graph, peak, extra


MAX_DEPTH = 6


def _recipe(r: Node, u: Node, roots: list[Node], last: list[int]) -> list[Node] | None:
    """The nodes to recompute (inputs first) so that ``r`` is available again at step ``u``: its inputs
    that are still alive at ``u`` are read as they are, the others are recomputed in turn (up to
    ``MAX_DEPTH`` levels); None when some input cannot be had (a random draw, too deep)."""
    order: list[Node] = []
    seen: set[int] = set()
    stack: list[tuple[Node, int, bool]] = [(r, 0, False)]
    while stack:
        n, depth, expanded = stack.pop()
        if n.id in seen:
            continue
        if expanded:
            seen.add(n.id)
            order.append(n)
            continue
        if depth > MAX_DEPTH or is_effectful(n.op, n.attrs):
            return None
        stack.append((n, depth, True))
        for i in n.inputs:
            if i.kind != "op" or last[roots[i.id].id] >= u.id or i.id in seen:
                continue
            stack.append((i, depth + 1, False))
    return order


def _candidates(graph: Graph, roots: list[Node], last: list[int], peak_at: int) -> list[tuple[Node, Node, list[Node]]]:
    """Buffers (a value with its views) alive at the peak that could be recomputed for a later reader,
    most bytes freed per FLOP of recomputation first: (value, its first later reader, the nodes to
    recompute in order)."""
    users: dict[int, list[Node]] = {}
    members: dict[int, list[Node]] = {}
    for n in graph.nodes:
        members.setdefault(roots[n.id].id, []).append(n)
        for i in n.inputs:
            users.setdefault(i.id, []).append(n)
    protected = {v.id for v in graph.roots()}
    found: list[tuple[float, int, tuple[Node, Node, list[Node]]]] = []
    for r in graph.nodes:
        if (r.kind != "op" or r.is_view or r.id >= peak_at or last[r.id] <= peak_at
                or is_effectful(r.op, r.attrs)):
            continue
        group = members[r.id]
        if any(m.id in protected for m in group):
            continue
        reads = [u for m in group for u in users.get(m.id, [])]
        if any(u.id == peak_at for u in reads):
            continue
        later = [u for u in reads if u.id > peak_at]
        if not later:
            continue
        u = min(later, key=lambda x: x.id)
        recipe = _recipe(r, u, roots, last)
        if recipe is None:
            continue
        recipe = recipe + [m for m in group if m is not r and m.id < u.id]  # its views, re-taken (free)
        score = r.nbytes / (1.0 + sum(cost(n) for n in recipe))
        found.append((-score, r.id, (r, u, recipe)))
    found.sort(key=lambda f: (f[0], f[1]))
    return [f[2] for f in found]


def _recompute_before(graph: Graph, u: Node, recipe: list[Node]) -> Graph:
    def before(g: Graph, n: Node, m: dict) -> None:
        if n.id == u.id:
            for x in recipe:
                m[x.id] = g.make(x.op, tuple(m[i.id] for i in x.inputs), x.attrs, x.shape, x.dtype, x.device,
                                 fresh=True)
    new, _ = graph.rebuild(before=before)
    return new
