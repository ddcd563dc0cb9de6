"""Replaying a compiled plan: a precomputed list of steps over one environment of arrays.

Building the executor turns the graph and its memory plan into ``(kernel, input slots, output
slot)`` steps, each kernel already bound to its arena view (``out=``) or write target, so a run
is one loop with no graph walking, no shape inference and no allocation for planned buffers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..graph.ir import Graph
from .memory import MemoryPlan


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
        for n in nodes:
            if n.kind == "input":
                self.inputs.append((n.id, n.payload))
            elif n.kind == "live":
                self.lives.append((n.id, n.payload))
            elif n.kind == "const":
                self.env[n.id] = n.payload
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

    def _view(self, offset: int, node: Any) -> np.ndarray:
        nbytes = node.nbytes
        return self.arena[offset:offset + nbytes].view(node.dtype.np).reshape(node.shape)

    def run(self, args: list[Any]) -> list[Any]:
        env = self.env
        for slot, index in self.inputs:
            env[slot] = args[index]
        for slot, t in self.lives:
            env[slot] = t.data
        for slot, t in self.targets:
            env[slot] = t.data
        with np.errstate(all="ignore"):
            for fn, ins, out in self.steps:
                env[out] = fn(*[env[i] for i in ins])
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
