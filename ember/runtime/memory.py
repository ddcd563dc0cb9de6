"""Memory planning: lifetimes over the execution order, then one arena per plan.

Every intermediate value whose kernel can write into a given array gets an offset in one arena
(allocated once per compiled plan and reused on every call). Offsets are chosen greedily by size,
largest first, each in the best-fitting gap among the buffers whose lifetimes overlap its own
(the TFLite/MXNet scheme). Views share their base's buffer and extend its lifetime. An
elementwise node reuses the buffer of an input that nobody reads afterwards (in place); a
state update is written straight into the live tensor's storage when the old value is no longer
read; an escaping value (``p.grad``) is computed straight into its tensor. Outputs are never
in the arena: the caller keeps them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..graph.ir import Graph, Node, is_effectful
from .kernels import out_kernel

ALIGN = 64


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass
class MemoryPlan:
    """Where each value lives during a run (see the module docstring)."""

    offsets: dict[int, int] = field(default_factory=dict)   # node id -> byte offset in the arena
    arena_bytes: int = 0
    direct: dict[int, Any] = field(default_factory=dict)    # node id -> write target computed into directly
    inplace: list[tuple[int, int]] = field(default_factory=list)  # (node, input it overwrote)
    unplanned: set[int] = field(default_factory=set)        # op nodes whose kernel allocates
    frees: dict[int, list[int]] = field(default_factory=dict)  # step -> unplanned nodes dead after it
    naive_bytes: int = 0      # every intermediate in its own buffer
    live_peak_bytes: int = 0  # the most bytes of intermediates alive at one step (a lower bound)
    unplanned_peak_bytes: int = 0
    kernels: dict[int, Any] = field(default_factory=dict)   # node id -> out kernel

    @property
    def planned_peak_bytes(self) -> int:
        return self.arena_bytes + self.unplanned_peak_bytes


def alias_roots(graph: Graph) -> list[Node]:
    """For each node, the node whose memory it uses (itself, or the base of a view chain)."""
    roots: list[Node] = []
    for n in graph.nodes:
        roots.append(roots[n.inputs[0].id] if n.is_view and n.inputs else n)
    return roots


def last_uses(graph: Graph, roots: list[Node]) -> list[int]:
    """For each root, the last step that reads it or any view of it (len(nodes) for outputs/writes)."""
    end = len(graph.nodes)
    last = [n.id for n in graph.nodes]
    for n in graph.nodes:
        for i in n.inputs:
            r = roots[i.id].id
            if n.id > last[r]:
                last[r] = n.id
    for n in graph.roots():
        last[roots[n.id].id] = end
    return last


def _fused_marker(*args: Any) -> None:
    """Stands in ``plan.kernels`` for a fused kernel's outputs: the executor runs the kernel itself."""
    raise AssertionError("fused outputs are written by their kernel's step")


def _reader(n: Node) -> tuple[int, tuple]:
    """The step that computes ``n`` and the values read there (a fused output is born with its kernel)."""
    if n.op.name == "fused_output":
        k = n.inputs[0]
        return k.id, k.inputs
    return n.id, n.inputs


def _overwrites_ok(n: Node, i: Node) -> bool:
    """Whether ``n`` may be computed into the buffer of its input ``i`` (read in the same step): each
    output element must depend only on ``i`` at the same index."""
    if n.op.name == "fused_output":
        k = n.inputs[0]
        group = k.attrs["group"]
        return group.elementwise and all(group.full_loads(j) for j, u in enumerate(k.inputs) if u is i)
    return n.op.elementwise or n.op.ufunc is not None


def plan_memory(graph: Graph) -> MemoryPlan:
    """The memory plan of ``graph`` (its nodes in execution order)."""
    plan = MemoryPlan()
    nodes = graph.nodes
    roots = alias_roots(graph)
    last = last_uses(graph, roots)
    outputs = {n.id for n in graph.outputs}
    write_count: dict[int, int] = {}
    for v, _ in graph.writes:
        write_count[v.id] = write_count.get(v.id, 0) + 1

    for n in nodes:
        if n.kind == "op" and not n.is_view:
            k = _fused_marker if n.op.name == "fused_output" else out_kernel(n)
            if k is not None:
                plan.kernels[n.id] = k

    # Values computed straight into a write target.
    live_node = {id(n.payload): n for n in nodes if n.kind == "live"}
    for v, target in graph.writes:
        if (v.id not in plan.kernels or v.id in outputs or write_count[v.id] != 1 or isinstance(target, tuple)
                or roots[v.id] is not v or tuple(target.shape) != v.shape or target.dtype is not v.dtype
                or not target.data.flags.c_contiguous):
            continue
        old = live_node.get(id(target))
        if old is not None:
            # The old value must be dead once v runs; at v itself it may only be a same-shaped elementwise input.
            step, reads = _reader(v)
            if last[old.id] > step or any(roots[u.id] is old and u is not old for u in reads):
                continue
            if last[old.id] == step and not _overwrites_ok(v, old):
                continue
        plan.direct[v.id] = target

    # Buffers: groups of nodes sharing memory through in-place reuse.
    group: dict[int, int] = {}
    start: dict[int, int] = {}
    end: dict[int, int] = {}
    size: dict[int, int] = {}
    taken: set[int] = set()  # inputs already overwritten by an output of the same step
    for n in nodes:
        if n.kind != "op" or n.is_view or n.id in plan.direct or n.op.name == "fused":
            continue
        if n.id not in plan.kernels or n.id in outputs:
            plan.unplanned.add(n.id)
            continue
        step, reads = _reader(n)
        reused = None
        if not is_effectful(n.op, n.attrs):
            for i in reads:
                if (i.id in group and i.id not in taken and last[i.id] == step and roots[i.id] is i
                        and i.shape == n.shape and i.dtype is n.dtype and _overwrites_ok(n, i)
                        and all(roots[u.id] is not i or u is i for u in reads)):
                    reused = i
                    break
        if reused is not None:
            gid = group[reused.id]
            group[n.id] = gid
            taken.add(reused.id)
            end[gid] = max(end[gid], last[n.id])
            plan.inplace.append((n.id, reused.id))
        else:
            group[n.id] = n.id
            start[n.id], end[n.id], size[n.id] = step, last[n.id], _aligned(max(n.nbytes, 1))

    # Greedy by size, best fit among lifetime-overlapping buffers.
    order = sorted(start, key=lambda g: (-size[g], start[g]))
    a_start = np.zeros(len(order), np.int64)
    a_end = np.zeros(len(order), np.int64)
    a_off = np.zeros(len(order), np.int64)
    a_size = np.zeros(len(order), np.int64)
    offsets: dict[int, int] = {}
    for k, gid in enumerate(order):
        s, e, sz = start[gid], end[gid], size[gid]
        if k:
            mask = (a_start[:k] <= e) & (s <= a_end[:k])
            busy = sorted(zip(a_off[:k][mask].tolist(), (a_off[:k][mask] + a_size[:k][mask]).tolist()))
        else:
            busy = []
        best, best_gap, cursor = None, None, 0
        for lo, hi in busy:
            gap = lo - cursor
            if gap >= sz and (best_gap is None or gap < best_gap):
                best, best_gap = cursor, gap
            cursor = max(cursor, hi)
        off = best if best is not None else cursor
        offsets[gid] = off
        a_start[k], a_end[k], a_off[k], a_size[k] = s, e, off, sz
        plan.arena_bytes = max(plan.arena_bytes, off + sz)
    plan.offsets = {nid: offsets[gid] for nid, gid in group.items()}

    # Unplanned results are dropped after their last use; statistics.
    timeline = np.zeros(len(nodes) + 1, np.int64)
    un_timeline = np.zeros(len(nodes) + 1, np.int64)
    for n in nodes:
        if n.kind != "op" or n.is_view:
            continue
        plan.naive_bytes += n.nbytes
        if n.id in plan.direct or n.id in outputs or n.op.name == "fused":
            continue
        born = _reader(n)[0]
        timeline[born:last[n.id] + 1] += n.nbytes
        if n.id in plan.unplanned:
            un_timeline[born:last[n.id] + 1] += n.nbytes
            if last[n.id] < len(nodes):
                plan.frees.setdefault(last[n.id], []).append(n.id)
    plan.live_peak_bytes = int(timeline.max()) if len(nodes) else 0
    plan.unplanned_peak_bytes = int(un_timeline.max()) if len(nodes) else 0
    return plan
