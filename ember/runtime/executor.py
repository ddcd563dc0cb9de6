"""Replaying a compiled plan: a precomputed list of steps over one environment of arrays.

Building the executor turns the graph and its memory plan into ``(kernel, input slots, output
slot)`` steps, each kernel already bound to its arena view (``out=``) or write target, so a run
is one loop with no graph walking, no shape inference and no allocation for planned buffers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..graph.ir import Graph, Node
from .memory import MemoryPlan, alias_roots


class Executor:
    """Runs ``graph`` with ``plan``; ``run(arg_arrays)`` returns the output arrays."""

    def __init__(self, graph: Graph, plan: MemoryPlan) -> None:
        self.graph = graph
        self.plan = plan
        nodes = graph.nodes
        self.arena = np.empty(max(plan.arena_bytes, 1), dtype=np.uint8)
        self.env: list[Any] = [None] * (len(nodes) + len(graph.writes))
        self.inputs: list[tuple[int, int]] = []
        self.lives: list[tuple[int, Any]] = []
        self.targets: list[tuple[int, Any]] = []  # env slot of a write target's array, refreshed per run
        steps: list[tuple[Callable, tuple[int, ...], int]] = []
        target_slot: dict[int, int] = {}
        for v, target in graph.writes:
            if v.id in plan.direct and id(target) not in target_slot:
                slot = len(nodes) + len(self.targets)
                target_slot[id(target)] = slot
                self.targets.append((slot, target))
        live_slot = {id(n.payload): n.id for n in nodes if n.kind == "live"}
        self.target_slot = target_slot
        self.live_slot = live_slot
        self.roots = alias_roots(graph)  # the node whose memory each value uses (views: their base)
        self.fused_outputs: dict[int, list[Node]] = {}  # fused kernel id -> its output nodes, by index
        for n in nodes:
            if n.kind == "op" and n.op.name == "fused_output":
                self.fused_outputs.setdefault(n.inputs[0].id, []).append(n)
        for outs in self.fused_outputs.values():
            outs.sort(key=lambda o: o.attrs["index"])
        fused = self._build_fused([n for n in nodes if n.kind == "op" and n.op.name == "fused"])
        for n in nodes:
            if n.kind == "input":
                self.inputs.append((n.id, n.payload))
            elif n.kind == "live":
                self.lives.append((n.id, n.payload))
            elif n.kind == "const":
                self.env[n.id] = n.payload
            elif n.op.name == "fused_output":
                continue  # written by its kernel's step
            elif n.op.name == "fused":
                steps.append(fused[n.id])
                for dead in plan.frees.get(n.id, ()):
                    steps.append((_none, (), dead))
            else:
                ins = tuple(i.id for i in n.inputs)
                if n.id in plan.direct:
                    target = plan.direct[n.id]
                    slot = live_slot.get(id(target), target_slot.get(id(target)))
                    fn = _into_slot(plan.kernels[n.id], self.env, slot)
                elif n.id in plan.offsets:
                    fn = _into(plan.kernels[n.id], self._view(plan.offsets[n.id], n))
                else:
                    fn = _reference(n)
                steps.append((fn, ins, n.id))
                for dead in plan.frees.get(n.id, ()):
                    steps.append((_none, (), dead))
        self.steps = steps
        self.outputs = [n.id for n in graph.outputs]
        owned = {n.id for n in nodes if n.kind == "op" and not n.is_view and n.id in plan.unplanned}
        self.output_copy = [n.id not in owned for n in graph.outputs]
        self.writes = [(v.id, target, v.id in plan.direct) for v, target in graph.writes]
        self.schedule = None
        if engine_mode() == "threaded":
            self.schedule = self._build_schedule()
            if self.schedule.inline:
                self.schedule = None  # no two independent steps: the plain loop is the same, with less overhead

    def _build_schedule(self) -> Any:
        """The steps as a dependency DAG for the threaded engine (``ember.runtime.engine``). Each step reads
        and writes buffer keys: an arena offset, a live tensor, an argument, or a node's own array; arena
        buffers that partly overlap an earlier one get explicit edges from all of its readers."""
        from .engine import Schedule
        plan, nodes, roots, outputs_of = self.plan, self.graph.nodes, self.roots, self.fused_outputs
        target_key = {}
        for v, target in self.graph.writes:
            if v.id in plan.direct:
                target_key[v.id] = ("live", id(target))

        def key(n: Node) -> Any:
            r = roots[n.id]
            if r.kind == "live":
                return ("live", id(r.payload))
            if r.kind == "input":
                return ("input", r.payload)
            if r.id in target_key:
                return target_key[r.id]
            if r.id in plan.offsets:
                return ("arena", plan.offsets[r.id])
            return ("node", r.id)

        steps, step_nodes = [], []
        env = self.env
        for fn, ins, out in self.steps:
            n = nodes[out] if out < len(nodes) else None
            if fn is _none:
                reads, writes = (), (key(nodes[out]),)
            elif n is not None and n.op.name == "fused":
                reads = tuple(key(i) for i in n.inputs)
                writes = tuple(key(o) for o in outputs_of.get(n.id, []))
            else:
                reads, writes = tuple(key(nodes[i]) for i in ins), (key(n),)
            steps.append((_scheduled(fn, ins, out, env), reads, writes))
            step_nodes.append(n)
        # Arena buffers at different offsets whose byte ranges overlap: order the later writer after
        # every step that touched the earlier buffer.
        touched: dict[Any, list[int]] = {}
        born: list[tuple[int, int, int]] = []  # (offset, end, step) of each arena buffer's first write
        continued = {n for n, _ in plan.inplace}  # these write into an input's buffer: not a new buffer
        for k, (_, reads, writes) in enumerate(steps):
            for b in (*reads, *writes):
                touched.setdefault(b, []).append(k)
            n = step_nodes[k]
            outs = outputs_of.get(n.id, []) if n is not None and n.op.name == "fused" else [n] if n is not None else []
            for o in outs:
                if o.id in plan.offsets and o.id not in continued:
                    born.append((plan.offsets[o.id], plan.offsets[o.id] + max(o.nbytes, 1), k))
        extra = []
        for off, end, k in born:
            for off2, end2, k2 in born:
                if k2 < k and off2 != off and off2 < end and off < end2:
                    extra.extend((j, k) for j in touched[("arena", off2)] if j < k)
        return Schedule(steps, extra_edges=sorted(set(extra)))

    def _build_fused(self, kernels: list[Node]) -> dict[int, tuple]:
        """Generate, compile (one translation unit) and bind the graph's fused kernels: node id -> step."""
        if not kernels:
            self.program = None
            return {}
        from ..codegen import build
        from .generated import kernel_for
        plan = self.plan
        probe = self._probes()
        inplace = {out for out, _ in plan.inplace}
        built, meta = [], []
        for k in kernels:
            group = k.attrs["group"]
            outs = self.fused_outputs.get(k.id, [])
            layouts = []
            for i in k.inputs:
                a = probe[i.id]
                layouts.append((i.dtype, a.shape, tuple(s // a.itemsize for s in a.strides)))
            kern, sources = kernel_for(group, layouts, noalias=not any(o.id in inplace for o in outs))
            built.append(kern)
            meta.append((k, outs, sources))
        self.program = build(built, label=self.graph.name)
        steps = {}
        for kern, (k, outs, sources) in zip(built, meta):
            steps[k.id] = (self._fused_step(self.program[kern.name], k, outs, sources, probe), (), k.id)
        return steps

    def _probes(self) -> dict[int, np.ndarray]:
        """An array with the layout every value will have at run time (arena views, live tensors, empty
        stand-ins for arguments and allocated results), views applied to them: kernels are specialized
        on these strides."""
        plan, probe = self.plan, {}
        for n in self.graph.nodes:
            if n.kind == "input" or (n.kind == "op" and n.op.name == "fused"):
                a = np.empty(n.shape, n.dtype.np) if n.kind == "input" else None
            elif n.kind == "live":
                a = n.payload.data
            elif n.kind == "const":
                a = n.payload
            elif n.is_view:
                with np.errstate(all="ignore"):
                    a = np.asarray(n.op.impl(np, probe[n.inputs[0].id], **n.attrs))
            elif n.id in plan.offsets:
                a = self._view(plan.offsets[n.id], n)
            elif n.id in plan.direct:
                a = plan.direct[n.id].data
            else:
                a = np.empty(n.shape, n.dtype.np)
            probe[n.id] = a
        return probe

    def _fused_step(self, fn: Any, k: Node, outs: list[Node], sources: list[int], probe: dict) -> Callable:
        """The step running kernel ``fn``: fixed pointers for arena buffers and constants, the others read
        from the environment each run (checked against the layout the kernel was built for)."""
        plan, env, roots = self.plan, self.env, self.roots

        def static(n: Node) -> bool:
            """Arena buffers and constants (and views that really alias them) never move between runs."""
            r = roots[n.id]
            if not (r.kind == "const" or (r.kind == "op" and r.id in plan.offsets)):
                return False
            return r is n or np.may_share_memory(probe[n.id], probe[r.id])

        ptrs: list[int] = []
        dynamic: list[tuple[int, int, Any]] = []  # (position, env slot, expected strides or None for outputs)
        allocate: list[tuple[int, int, Any, Any]] = []  # (position, env slot, shape, dtype): fresh outputs
        publish: list[tuple[int, int]] = []  # (env slot of an output, env slot of its target array)
        for o in outs:
            if o.id in plan.offsets:
                env[o.id] = probe[o.id]
                ptrs.append(probe[o.id].ctypes.data)
            elif o.id in plan.direct:
                target = plan.direct[o.id]
                slot = self.live_slot.get(id(target), self.target_slot.get(id(target)))
                dynamic.append((len(ptrs), slot, None))
                publish.append((o.id, slot))
                ptrs.append(0)
            else:
                allocate.append((len(ptrs), o.id, o.shape, o.dtype.np))
                ptrs.append(0)
        for src in sources:
            i = k.inputs[src]
            if static(i):
                ptrs.append(probe[i.id].ctypes.data)
            else:
                dynamic.append((len(ptrs), i.id, probe[i.id].strides))
                ptrs.append(0)
        f, n_tiles = fn._f, fn.n_tiles
        if not dynamic and not allocate:
            def run_static() -> None:
                f(*ptrs, 0, n_tiles)
            return run_static

        def run() -> None:
            args = list(ptrs)
            for pos, slot, strides in dynamic:
                a = env[slot]
                if strides is not None and a.strides != strides:
                    a = _relayout(a, strides, k)
                    env[slot] = a
                args[pos] = a.ctypes.data
            for pos, slot, shape, dtype in allocate:
                a = np.empty(shape, dtype)
                env[slot] = a
                args[pos] = a.ctypes.data
            f(*args, 0, n_tiles)
            for slot, target in publish:
                env[slot] = env[target]
        return run

    def _view(self, offset: int, node: Any) -> np.ndarray:
        nbytes = node.nbytes
        return self.arena[offset:offset + nbytes].view(node.dtype.np).reshape(node.shape)

    def profile(self, args: list[Any]) -> list[tuple[str, float]]:
        """Run once, timing every step: ``[(label, seconds)]`` in execution order (kernels by name, other
        nodes by op)."""
        import time
        labels = {}
        for n in self.graph.nodes:
            if n.kind == "op":
                labels[n.id] = n.attrs["group"].describe() if n.op.name == "fused" else n.op.name
        steps, self.steps = self.steps, []
        try:
            self.run(args)  # binds inputs, lives and targets
        finally:
            self.steps = steps
        env, out = self.env, []
        with np.errstate(all="ignore"):
            for fn, ins, slot in steps:
                t0 = time.perf_counter()
                env[slot] = fn(*[env[i] for i in ins])
                out.append((labels.get(slot, "free"), time.perf_counter() - t0))
        return out

    def run(self, args: list[Any]) -> list[Any]:
        env = self.env
        for slot, index in self.inputs:
            env[slot] = args[index]
        for slot, t in self.lives:
            env[slot] = t.data
        for slot, t in self.targets:
            env[slot] = t.data
        if self.schedule is None:
            with np.errstate(all="ignore"):
                for fn, ins, out in self.steps:
                    env[out] = fn(*[env[i] for i in ins])
        else:
            self.schedule.run()
        for slot, target, direct in self.writes:
            if direct:
                continue
            dest = args[target[1]] if isinstance(target, tuple) else target.data
            np.copyto(dest, env[slot], casting="unsafe")
        results = []
        for slot, copy in zip(self.outputs, self.output_copy):
            a = env[slot]
            results.append(np.array(a, copy=True) if copy and isinstance(a, np.ndarray) else a)
        return results


def engine_mode() -> str:
    """How compiled plans run: ``EMBER_ENGINE`` (``naive``: the steps in order; ``threaded``: independent
    steps concurrently on the dependency engine). Default ``naive``: on this project's 2-core benchmark
    machine BLAS and the generated kernels already use every core, and running two at once was slower."""
    import os
    mode = os.environ.get("EMBER_ENGINE", "naive").strip().lower() or "naive"
    if mode not in ("naive", "threaded"):
        raise ValueError(f"EMBER_ENGINE must be one of 'naive', 'threaded', got {mode!r}")
    return mode


def _scheduled(fn: Callable, ins: tuple, out: int, env: list) -> Callable[[], None]:
    def step() -> None:
        with np.errstate(all="ignore"):  # error state is per thread: set it in the worker
            env[out] = fn(*[env[i] for i in ins])
    step.__name__ = getattr(fn, "__name__", "step")
    return step


def _relayout(a: np.ndarray, strides: tuple, k: Node) -> np.ndarray:
    """``a`` with the byte ``strides`` a kernel was built for (a C-contiguous copy when that is what it
    expects: arguments passed as non-contiguous views)."""
    want = np.empty(a.shape, a.dtype)
    if want.strides != strides and a.size > 1:
        raise RuntimeError(f"fused kernel {k.attrs['group'].name}: an input has strides {a.strides}, the kernel "
                           f"was built for {strides}")
    np.copyto(want, a)
    return want


def _none() -> None:
    return None


def _into(kernel: Callable, buf: np.ndarray) -> Callable:
    return lambda *a: kernel(buf, *a)


def _into_slot(kernel: Callable, env: list, slot: int) -> Callable:
    return lambda *a: kernel(env[slot], *a)


def _reference(node: Any) -> Callable:
    """The op's reference kernel, with apply's dtype fix-up."""
    impl, attrs, want = node.op.impl, node.attrs, node.dtype.np

    def run(*arrays: Any) -> Any:
        out = impl(np, *arrays, **attrs)
        if type(out) is not np.ndarray:
            out = np.asarray(out)
        return out if out.dtype == want else out.astype(want)
    return run
