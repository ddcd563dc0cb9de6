"""The graph IR of compiled mode: a ``Graph`` of SSA ``Node``s in execution order.

A node is one value: a graph input (``input``), a live tensor read by reference on every run
(``live``: parameters, optimizer state, buffers), a constant array (``const``), or the result of
one registry op (``op``) on earlier nodes. Op nodes are interned: ``Graph.make`` returns the
existing node for the same (op, inputs, attrs), so structurally equal nodes are one node
(common-subexpression elimination at construction). Ops that draw random numbers are never
interned, folded or removed: each draw is its own node and advances its generator.

Besides its nodes a graph has ``outputs`` (returned to the caller) and ``writes``: state updates,
pairs of (node, target) whose value is written back into a live tensor's storage after a run.
Every traversal is iterative.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..device import Device
from ..dtypes import DType
from ..errors import ShapeError

KINDS = ("input", "live", "const", "op")


def is_effectful(op: Any, attrs: dict) -> bool:
    """Whether a node must run exactly as often as in eager mode (a random draw advances its generator)."""
    return "generator" in attrs


def freeze(value: Any) -> Any:
    """A hashable key for an attribute value (tuples, lists, dicts, arrays, dtypes, objects by identity)."""
    if isinstance(value, (list, tuple)):
        return (type(value).__name__,) + tuple(freeze(v) for v in value)
    if isinstance(value, dict):
        return ("dict",) + tuple(sorted((k, freeze(v)) for k, v in value.items()))
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, slice):
        return ("slice", freeze(value.start), freeze(value.stop), freeze(value.step))
    if isinstance(value, float) and value != value:
        return ("nan",)
    try:
        hash(value)
    except TypeError:
        return ("id", id(value))
    if isinstance(value, (int, float, bool, str, bytes, type(None), DType, Device, np.generic)):
        return (type(value).__name__, value)
    return ("id", id(value))


class Node:
    """One SSA value of a ``Graph``. ``payload``: the argument index (input), the Tensor (live), the
    array (const); ``name``: a label for printing."""

    __slots__ = ("attrs", "device", "dtype", "fresh", "id", "inputs", "kind", "name", "op", "payload", "shape")

    def __init__(self, kind: str, op: Any, inputs: tuple[Node, ...], attrs: dict, shape: tuple, dtype: DType,
                 device: Device, payload: Any = None, name: str | None = None) -> None:
        self.kind = kind
        self.op = op
        self.inputs = inputs
        self.attrs = attrs
        self.shape = tuple(shape)
        self.dtype = dtype
        self.device = device
        self.payload = payload
        self.name = name
        self.id = -1
        self.fresh = False  # never merged with an equal node (a recomputation)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def is_view(self) -> bool:
        return self.kind == "op" and self.op.view

    def type_str(self) -> str:
        return f"{self.dtype.name}[{','.join(map(str, self.shape))}]"

    def ref(self) -> str:
        return f"%{self.id}"

    def __repr__(self) -> str:
        return f"<Node {self.ref()} {self.kind} {self.op.name if self.op else ''} {self.type_str()}>"


def _attr_str(attrs: dict) -> str:
    parts = []
    for k, v in attrs.items():
        if k in ("device",):
            continue
        if k == "generator":
            parts.append("generator")
            continue
        if isinstance(v, DType):
            v = v.name
        elif isinstance(v, np.ndarray):
            v = f"array{list(v.shape)}"
        text = repr(v)
        parts.append(f"{k}={text if len(text) <= 40 else text[:37] + '...'}")
    return ", ".join(parts)


class Graph:
    """Nodes in execution order, with inputs, outputs and state writes (see the module docstring)."""

    def __init__(self, name: str = "graph", intern: bool = True) -> None:
        self.name = name
        self.nodes: list[Node] = []
        self.inputs: list[Node] = []
        self.outputs: list[Node] = []
        self.writes: list[tuple[Node, Any]] = []  # (value, target): target is a Tensor or ("arg", index)
        self.intern = intern
        self._cache: dict[Any, Node] = {}
        self._effect_count = 0

    # ------------------------------------------------------------------ building
    def _add(self, node: Node) -> Node:
        node.id = len(self.nodes)
        self.nodes.append(node)
        return node

    def add_input(self, shape: Sequence[int], dtype: DType, device: Device, name: str, index: int) -> Node:
        node = self._add(Node("input", None, (), {}, tuple(shape), dtype, device, payload=index, name=name))
        self.inputs.append(node)
        return node

    def add_live(self, tensor: Any, name: str | None = None) -> Node:
        return self._add(Node("live", None, (), {}, tensor.shape, tensor.dtype, tensor.device, payload=tensor,
                              name=name))

    def add_const(self, array: Any, dtype: DType, device: Device, name: str | None = None) -> Node:
        key = ("const", dtype, array.shape, array.tobytes()) if array.size <= 64 and self.intern else None
        if key is not None and key in self._cache:
            return self._cache[key]
        node = self._add(Node("const", None, (), {}, array.shape, dtype, device, payload=array, name=name))
        if key is not None:
            self._cache[key] = node
        return node

    def make(self, op: Any, inputs: Sequence[Node], attrs: dict, shape: Sequence[int] | None = None,
             dtype: DType | None = None, device: Device | None = None, fresh: bool = False) -> Node:
        """The node for ``op(*inputs, **attrs)``: an existing equal node when interning, else a new one.
        Shape and dtype come from ``op.infer`` unless given."""
        inputs = tuple(inputs)
        key = None
        if self.intern and not fresh and not is_effectful(op, attrs):
            key = (op.name, tuple(n.id for n in inputs), freeze(attrs))
            hit = self._cache.get(key)
            if hit is not None:
                return hit
        if shape is None or dtype is None:
            shape, dtype = op.infer(*[abstract(n) for n in inputs], **attrs)
        if device is None:
            device = inputs[0].device if inputs else attrs["device"]
        node = self._add(Node("op", op, inputs, dict(attrs), tuple(shape), dtype, device))
        node.fresh = fresh
        if key is not None:
            self._cache[key] = node
        return node

    # ------------------------------------------------------------------ queries
    def users(self) -> dict[int, list[Node]]:
        """For each node id, the op nodes that read it (in order)."""
        out: dict[int, list[Node]] = {n.id: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                out[i.id].append(n)
        return out

    def roots(self) -> list[Node]:
        """What must be computed: outputs and the values of state writes."""
        return list(self.outputs) + [v for v, _ in self.writes]

    def count(self, kind: str = "op") -> int:
        return sum(1 for n in self.nodes if n.kind == kind)

    def op_histogram(self) -> dict[str, int]:
        hist: dict[str, int] = {}
        for n in self.nodes:
            if n.kind == "op":
                hist[n.op.name] = hist.get(n.op.name, 0) + 1
        return hist

    # ------------------------------------------------------------------ rebuilding (used by passes)
    def rebuild(self, rewrite: Any = None, keep: Iterable[Node] | None = None,
                before: Any = None) -> tuple[Graph, dict[int, Node]]:
        """A new graph with every node copied in order through ``rewrite(graph, node, new_inputs)``
        (which returns a replacement node, or None to copy), interned afresh. ``keep`` (when given)
        is the set of nodes to copy; others are dropped. ``before(graph, node, mapping)`` runs before
        each node is copied (to insert nodes, or redirect later reads through ``mapping``).
        Returns the graph and the old-id -> new map."""
        g = Graph(self.name, self.intern)
        g._effect_count = self._effect_count
        m: dict[int, Node] = {}
        keep_ids = None if keep is None else {n.id for n in keep}
        for n in self.nodes:
            if keep_ids is not None and n.id not in keep_ids and n.kind != "input":
                continue
            if before is not None:
                before(g, n, m)
            if n.kind == "input":
                new = g.add_input(n.shape, n.dtype, n.device, n.name or f"arg{n.payload}", n.payload)
            elif n.kind == "live":
                new = g.add_live(n.payload, n.name)
            elif n.kind == "const":
                new = g.add_const(n.payload, n.dtype, n.device, n.name)
            else:
                ins = tuple(m[i.id] for i in n.inputs)
                new = rewrite(g, n, ins) if rewrite is not None else None
                if new is None:
                    new = g.make(n.op, ins, n.attrs, n.shape, n.dtype, n.device, fresh=n.fresh)
            m[n.id] = new
        g.outputs = [m[n.id] for n in self.outputs]
        g.writes = [(m[v.id], t) for v, t in self.writes]
        return g, m

    # ------------------------------------------------------------------ checking
    def verify(self) -> None:
        """Check order (inputs before users) and each op node's shape/dtype against ``op.infer``."""
        seen: set[int] = set()
        for idx, n in enumerate(self.nodes):
            if n.id != idx:
                raise AssertionError(f"{self.name}: node {n!r} has id {n.id} at position {idx}")
            for i in n.inputs:
                if i.id not in seen:
                    raise AssertionError(f"{self.name}: {n.ref()} ({n.op.name}) reads {i.ref()} before it is defined")
            if n.kind == "op":
                shape, dtype = n.op.infer(*[abstract(i) for i in n.inputs], **n.attrs)
                if tuple(shape) != n.shape or dtype is not n.dtype:
                    raise ShapeError(f"{self.name}: {n.ref()} = {n.op.name} is recorded as {n.type_str()} but "
                                     f"infers {dtype.name}[{','.join(map(str, shape))}]")
            seen.add(n.id)
        for n in self.roots():
            if n.id not in seen or self.nodes[n.id] is not n:
                raise AssertionError(f"{self.name}: output {n!r} is not a node of the graph")

    # ------------------------------------------------------------------ printing
    def __str__(self) -> str:
        lines = [f"graph {self.name}("]
        for n in self.nodes:
            if n.kind == "input":
                lines.append(f"    {n.ref()}: {n.type_str()}  # input {n.name}")
        lines.append(") {")
        for n in self.nodes:
            if n.kind == "live":
                lines.append(f"  {n.ref()} = live {n.name or ''} : {n.type_str()}")
            elif n.kind == "const":
                arr = n.payload
                val = f" {arr.reshape(-1)[0]!r}" if arr.size == 1 else ""
                lines.append(f"  {n.ref()} = const{val} : {n.type_str()}")
            elif n.kind == "op":
                args = ", ".join(i.ref() for i in n.inputs)
                attrs = _attr_str(n.attrs)
                lines.append(f"  {n.ref()} = {n.op.name}({args}{', ' if args and attrs else ''}{attrs}) : "
                             f"{n.type_str()}")
        if self.outputs:
            lines.append(f"  return {', '.join(n.ref() for n in self.outputs)}")
        for v, t in self.writes:
            lines.append(f"  write {_target_name(t)} <- {v.ref()}")
        lines.append("}")
        return "\n".join(lines)

    def to_dot(self, path: str | None = None) -> str:
        """The graph in Graphviz DOT. With ``path`` ending in .svg/.png (and the ``dot`` program
        installed) also render it there; with a .dot path write the text."""
        out = [f'digraph "{self.name}" {{', "  rankdir=TB; node [fontname=monospace, fontsize=10];"]
        style = {"input": "shape=invhouse, style=filled, fillcolor=lightblue",
                 "live": "shape=box, style=filled, fillcolor=khaki",
                 "const": "shape=box, style=dashed",
                 "op": "shape=box, style=rounded"}
        for n in self.nodes:
            label = (n.op.name if n.kind == "op" else f"{n.kind} {n.name or ''}").strip()
            out.append(f'  n{n.id} [label="{n.ref()} {label}\\n{n.type_str()}", {style[n.kind]}];')
            for i in n.inputs:
                out.append(f"  n{i.id} -> n{n.id};")
        for k, n in enumerate(self.outputs):
            out.append(f'  out{k} [label="output {k}", shape=house, style=filled, fillcolor=palegreen];')
            out.append(f"  n{n.id} -> out{k};")
        for k, (v, t) in enumerate(self.writes):
            out.append(f'  w{k} [label="write {_target_name(t)}", shape=house, style=filled, fillcolor=salmon];')
            out.append(f"  n{v.id} -> w{k};")
        out.append("}")
        text = "\n".join(out)
        if path is not None:
            write_dot(text, path)
        return text


def write_dot(text: str, path: str) -> None:
    """Write DOT text, or render it with Graphviz when ``path`` ends in .svg or .png."""
    from ..io import write_atomic
    ext = os.path.splitext(path)[1].lower()
    if ext in (".svg", ".png"):
        dot = shutil.which("dot")
        if dot is None:
            raise RuntimeError(f"to_dot: rendering {path} needs Graphviz's `dot` program, which is not installed; "
                               "pass a .dot path to write the text instead")
        payload = subprocess.run([dot, f"-T{ext[1:]}"], input=text.encode(), capture_output=True, check=True).stdout
    else:
        payload = text.encode()

    def writer(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(payload)
    write_atomic(path, writer, fn="to_dot")


def _target_name(t: Any) -> str:
    if isinstance(t, tuple):
        return f"arg{t[1]}"
    return f"tensor{list(t.shape)}@{id(t):x}"


def abstract(node: Node) -> Any:
    """A Tensor with the node's shape, dtype and device and no real memory (for ``op.infer``)."""
    from ..tensor import _make
    data = np.broadcast_to(np.zeros((), dtype=node.dtype.np), node.shape)
    return _make(data, node.dtype, node.device)
