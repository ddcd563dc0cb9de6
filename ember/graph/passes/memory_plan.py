"""Memory planning as the last pass: lifetimes, in-place reuse and arena offsets
(``ember.runtime.memory.plan_memory``). The graph is unchanged; the plan goes into ``ctx.memory``."""

from __future__ import annotations

from typing import Any

from ...runtime.memory import plan_memory
from ..ir import Graph

NAME = "memory_plan"


def mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def run(graph: Graph, ctx: Any) -> tuple[Graph, list[str]]:
    plan = plan_memory(graph)
    ctx.memory = plan
    ratio = plan.planned_peak_bytes / plan.naive_bytes if plan.naive_bytes else 0.0
    notes = [
        f"naive (every intermediate its own buffer): {mib(plan.naive_bytes)}",
        f"planned peak: {mib(plan.planned_peak_bytes)} ({ratio:.0%} of naive) = arena {mib(plan.arena_bytes)} "
        f"for {len(plan.offsets)} buffers + {mib(plan.unplanned_peak_bytes)} peak of {len(plan.unplanned)} "
        "kernel-allocated results",
        f"lower bound (most bytes alive at one step): {mib(plan.live_peak_bytes)}",
        f"in place: {len(plan.inplace)} node(s) reuse an input's buffer; {len(plan.direct)} value(s) computed "
        "straight into their state tensor",
    ]
    return graph, notes
