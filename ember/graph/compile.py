"""Running the pass ``PIPELINE`` over a traced graph and building its executor.

``compile_trace`` is what ``ember.jit`` calls; ``optimize`` is the pipeline alone (also used by the
symbolic API). Every pass's effect (nodes before/after, what it changed, time) is recorded for
``explain()``; with ``EMBER_DEBUG`` set, the graph is verified after every pass.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from ..tensor import _make
from .ir import Graph
from .passes import PIPELINE, PassContext


def _debug_level() -> int:
    from ..codegen.cc import debug_level
    return debug_level()


@dataclass
class PassRecord:
    name: str
    nodes_before: int
    nodes_after: int
    ms: float
    notes: list[str]


def optimize(graph: Graph, memory_budget: int | None = None,
             fuse: bool = True) -> tuple[Graph, PassContext, list[PassRecord]]:
    """Apply every pass of ``PIPELINE`` in order; returns the graph, the pass context (with the memory
    plan) and a record per pass. ``fuse=False`` skips kernel fusion (every node its own reference kernel)."""
    ctx = PassContext(memory_budget=memory_budget, fuse=fuse)
    records = []
    debug = bool(os.environ.get("EMBER_DEBUG"))
    if debug:
        graph.verify()
    unfused = None
    for p in PIPELINE:
        if p.NAME == "fuse":
            unfused = graph
        before = graph.count("op")
        t0 = time.perf_counter()
        graph, notes = p.run(graph, ctx)
        ms = (time.perf_counter() - t0) * 1e3
        if debug:
            graph.verify()
        records.append(PassRecord(p.NAME, before, graph.count("op"), ms, notes))
    if (memory_budget is not None and unfused is not graph and unfused is not None
            and ctx.memory.planned_peak_bytes > memory_budget):
        # Fused kernels keep their inputs and outputs alive together, which can undo what remat planned:
        # the budget wins over speed.
        from .passes import memory_plan
        ctx.notes["fused_peak"] = ctx.memory.planned_peak_bytes
        t0 = time.perf_counter()
        graph, notes = memory_plan.run(unfused, ctx)
        ms = (time.perf_counter() - t0) * 1e3
        notes = [f"fusion undone: its plan needed {ctx.notes.get('fused_peak', 0):,} B"] + notes
        ctx.notes["fuse"] = {"kernels": 0, "why": "undone to meet the memory budget"}
        records.append(PassRecord("memory_plan", graph.count("op"), graph.count("op"), ms, notes))
    return graph, ctx, records


def report_lines(graph: Graph, records: list[PassRecord], memory: Any) -> list[str]:
    """The part of an ``explain()`` report shared by jit and symbolic functions: the pass table, the final
    op histogram and the memory plan."""
    lines = [f"  {'pass':<14}{'nodes':>14}{'ms':>9}  what changed"]
    for r in records:
        change = f"{r.nodes_before} -> {r.nodes_after}"
        notes = r.notes or ["no change"]
        lines.append(f"  {r.name:<14}{change:>14}{r.ms:>9.1f}  {notes[0]}")
        lines.extend(f"  {'':<37}{note}" for note in notes[1:])
    hist = sorted(graph.op_histogram().items(), key=lambda kv: -kv[1])
    lines.append(f"  final graph: {graph.count('op')} op node(s): " + ", ".join(f"{k} x{v}" for k, v in hist[:12])
                 + (" ..." if len(hist) > 12 else ""))
    if memory is not None:
        ratio = memory.planned_peak_bytes / memory.naive_bytes if memory.naive_bytes else 0.0
        lines.append(f"  memory: planned peak {memory.planned_peak_bytes:,} B vs naive {memory.naive_bytes:,} B "
                     f"({ratio:.0%}); arena {memory.arena_bytes:,} B allocated once")
    return lines


class CompiledEntry:
    """One compiled signature: the optimized graph, its executor and the report."""

    def __init__(self, trace: Any, graph: Graph, executor: Any, ctx: PassContext, records: list[PassRecord],
                 compile_ms: float) -> None:
        self.trace = trace
        self.graph = graph
        self.executor = executor
        self.ctx = ctx
        self.records = records
        self.compile_ms = compile_ms
        self.runs = 0

    def run(self, leaves: list[Any]) -> Any:
        from .trace import unflatten
        tr = self.trace
        for sync in tr.syncs:
            sync()
        if self.runs == 0 and _debug_level() >= 2:
            arrays = self._profiled_run([t.data for t in leaves])
        else:
            arrays = self.executor.run([t.data for t in leaves])
        for leaf, grad in tr.grad_final:
            if leaf.grad is not grad:
                leaf.grad = grad
        for _, target in self.graph.writes:
            if not isinstance(target, tuple):
                target._version[0] += 1
        self.runs += 1
        outs = [_make(a, n.dtype, n.device) for a, n in zip(arrays, self.graph.outputs)]
        return unflatten(tr.out_spec, outs)

    def _profiled_run(self, args: list) -> list:
        """``EMBER_DEBUG=2``: the first run timed step by step, the generated kernels printed with their times."""
        import sys
        timings = self.executor.profile(args)
        total = sum(t for _, t in timings)
        print(f"[ember.jit] {self.graph.name}: first run {total * 1e3:.2f} ms in {len(timings)} step(s)",
              file=sys.stderr)
        for label, t in timings:
            if label.startswith("k") and "[" in label:
                print(f"[ember.jit]   {t * 1e3:8.3f} ms  {label}", file=sys.stderr)
        return self.executor.run(args)

    def explain(self) -> str:
        tr, g, mem = self.trace, self.graph, self.ctx.memory
        lines = [f"ember.jit({g.name}): traced {tr.graph.count('op')} op node(s) in {tr.trace_ms:.1f} ms "
                 f"({tr.merged} duplicate(s) merged while tracing), {len(g.inputs)} input(s), "
                 f"{sum(1 for n in g.nodes if n.kind == 'live')} live tensor(s), {len(g.outputs)} output(s), "
                 f"{len(g.writes)} state write(s)"]
        if tr.guard_text:
            lines.append("  guards: argument shapes/dtypes/devices/structure; " + "; ".join(tr.guard_text))
        lines += report_lines(g, self.records, mem)
        rem = self.ctx.notes.get("remat")
        if rem:
            lines.append(f"  remat: peak of live intermediates {rem['peak_before']:,} -> {rem['peak_after']:,} B, "
                         f"{rem['recomputed']} recomputation(s), {rem['extra_flops'] / 1e6:.1f} MFLOP extra per call")
        lines.append(f"  compile time: {self.compile_ms:.1f} ms (passes and plan) + {tr.trace_ms:.1f} ms tracing")
        return "\n".join(lines)


def build_plan(graph: Graph, memory_budget: int | None = None,
               fuse: bool = True) -> tuple[Graph, PassContext, list[PassRecord], Any]:
    """Optimize ``graph`` and build the executor that replays it; the executor's build is the last record."""
    from ..runtime.executor import Executor
    graph, ctx, records = optimize(graph, memory_budget, fuse)
    t0 = time.perf_counter()
    executor = Executor(graph, ctx.memory)
    ms = (time.perf_counter() - t0) * 1e3
    note = f"{len(executor.steps)} step(s); arena of {ctx.memory.arena_bytes:,} B allocated once"
    records.append(PassRecord("executor", graph.count("op"), graph.count("op"), ms, [note]))
    return graph, ctx, records, executor


def compile_trace(trace: Any, memory_budget: int | None = None, fuse: bool = True) -> CompiledEntry:
    """Optimize a trace's graph and build the executor that replays it."""
    t0 = time.perf_counter()
    graph, ctx, records, executor = build_plan(trace.graph, memory_budget, fuse)
    return CompiledEntry(trace, graph, executor, ctx, records, (time.perf_counter() - t0) * 1e3)
