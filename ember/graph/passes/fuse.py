"""Kernel fusion: group pointwise and reduction nodes into kernels that run as one generated loop nest.

The decision is ``decide(graph)``; its rules, in order:

1. **Fusible nodes** are pointwise ops with a C expression (``add``, ``exp``, ``where``, ``cast``, ...) and
   the reductions ``sum``/``amax``/``amin``, on the CPU, in dtypes the generated code supports. GEMM,
   convolution, gathers and random draws stay library/reference kernels; view ops (reshape, permute,
   expand, slices) stay zero-copy NumPy views that kernels read through their strides (index
   arithmetic, never a copy).
2. **Grow forward.** In execution order, a fusible node joins the group of one of its fusible producers
   when it lies in that group's iteration space: it has the full iteration shape, or it is constant
   along the group's reduced axes (a mean, a max, a row norm: "outer" values). A reduction joins when
   its input is a full-shape value of the group (or read from outside at the full shape) and the group
   reduces over no axes yet or over the same ones. So softmax, log_softmax and layer_norm forward each
   become one kernel: reductions, then the pointwise epilogue that broadcasts them back.
3. **No cycles.** A node never joins a group that one of its other inputs depends on (the kernel would
   have to run both before and after that input).
4. **Recompute small producers.** A group without reductions whose every user is in one other group
   (and is no graph output), e.g. the scalar bias-correction arithmetic of Adam, is merged into that
   group and recomputed per element instead of being materialized; the compiler hoists loop-invariant
   scalar code out of the loop.
5. **Sink tails.** Pointwise members of a group that only one later group reads, computed from values
   the group stores anyway, move into that later group and are recomputed there, when that keeps no
   more memory alive: a ReLU's backward mask is computed from the stored ReLU output in the backward
   kernel instead of being stored as a second array.
6. **Horizontal fusion of terminal groups.** Groups whose results nothing else reads (optimizer updates
   of parameters, running statistics) merge when they share an iteration shape and have no reductions:
   the updates of all parameters of one shape run as one kernel (up to ``MAX_HORIZONTAL_ARRAYS`` arrays;
   never when one reads a buffer another writes). So do 0-d groups that read only inputs, state and
   constants (each parameter's step counter and bias corrections).

Each group becomes a ``fused`` node (the kernel) followed by one ``fused_output`` node per value read
outside the group (see ``ember.ops.fused``). Kernels are generated and compiled when the executor is
built (after memory planning, which decides which outputs overwrite dead inputs in place).
"""

from __future__ import annotations

import os
from typing import Any

from ...ops.fused import FUSED, FUSED_OUTPUT, BodyOp, FusedGroup, GroupOutput
from ..ir import Graph, Node

NAME = "fuse"
REDUCE_OPS = ("sum", "amax", "amin")
_FUSIBLE_CACHE: dict[Any, bool] = {}


def switched_off() -> bool:
    """Whether ``EMBER_FUSION`` is set to 0 (or false/off/no)."""
    return os.environ.get("EMBER_FUSION", "1").strip().lower() in ("0", "false", "off", "no")


def enabled() -> bool:
    """Fusion runs unless ``EMBER_FUSION=0`` or there is no C compiler (``ember.codegen.available()``)."""
    if switched_off():
        return False
    from ...codegen import available
    return available()


def _pointwise_ok(n: Node) -> bool:
    """Whether the code generator accepts ``n``'s op with its input dtypes and attributes (cached)."""
    from ...codegen import arg, op
    key = (n.op.name, tuple(i.dtype for i in n.inputs), tuple(sorted((k, repr(v)) for k, v in n.attrs.items())))
    hit = _FUSIBLE_CACHE.get(key)
    if hit is None:
        try:
            v = op(n.op.name, *[arg(f"a{k}", i.dtype, ()) for k, i in enumerate(n.inputs)], **n.attrs)
            hit = v.dtype is n.dtype
        except Exception:  # any rejection (dtype, attrs) means: leave this node to the reference kernel
            hit = False
        _FUSIBLE_CACHE[key] = hit
    return hit


def fusible(n: Node) -> str | None:
    """``"pointwise"``, ``"reduce"`` or None (rule 1)."""
    if n.kind != "op" or n.device.type != "cpu" or not n.inputs:
        return None
    if n.op.name in REDUCE_OPS:
        x = n.inputs[0]
        if set(n.attrs) != {"axes", "keepdim"} or not n.attrs["axes"] or x.dtype is not n.dtype:
            return None
        if not n.dtype.is_floating_point and n.op.name == "sum":
            return None
        if any(x.shape[a] == 0 for a in n.attrs["axes"]):
            return None
        return "reduce" if _dtype_ok(n) else None
    if n.op.c_expr is None or "generator" in n.attrs:
        return None
    return "pointwise" if _pointwise_ok(n) else None


def _dtype_ok(n: Node) -> bool:
    from ...codegen.kernel import SUPPORTED_DTYPES
    return n.dtype in SUPPORTED_DTYPES


class _Group:
    __slots__ = ("dims", "id", "members", "reduce_axes", "shape")

    def __init__(self, gid: int, shape: tuple) -> None:
        self.id = gid
        self.shape = shape
        self.reduce_axes: tuple = ()
        self.members: list[Node] = []
        self.dims: dict[int, tuple] = {}  # member id -> iteration axes of its dimensions


def _extent(shape: tuple, dims: tuple, g: _Group) -> str:
    """``full`` (covers the iteration shape), ``outer`` (covers all but the reduced axes, which it lacks
    or has at size 1) or ``partial``."""
    cover = dict(zip(dims, shape))
    full = True
    outer = bool(g.reduce_axes)
    for d, size in enumerate(g.shape):
        have = cover.get(d, 1)
        if have != size:
            full = False
            if d not in g.reduce_axes:
                outer = False
        elif d in g.reduce_axes and size != 1 and d in cover:
            outer = False
    if full:
        return "full"
    return "outer" if outer else "partial"


def _pointwise_dims(n: Node, g: _Group) -> tuple | None:
    """The iteration axes of ``n``'s dimensions when placed in ``g`` (None when its inputs disagree)."""
    nd, k = len(g.shape), len(n.shape)
    if k > nd:
        return None
    dims = None
    for i in n.inputs:
        if i.id in g.dims and len(i.shape) == k:
            dims = g.dims[i.id]
            break
    if dims is None:
        dims = tuple(range(nd - k, nd))
    for j, d in enumerate(dims):
        if n.shape[j] not in (1, g.shape[d]):
            return None
    for i in n.inputs:
        if i.id in g.dims and g.dims[i.id] != dims[k - len(i.shape):]:
            return None
    return dims


def _try_join(n: Node, kind: str, g: _Group) -> tuple | None:
    """Rule 2: the dims of ``n`` in ``g`` when it may join, else None."""
    if kind == "reduce":
        x = n.inputs[0]
        if x.id in g.dims:
            xdims = g.dims[x.id]
        elif x.shape == g.shape:
            xdims = tuple(range(len(g.shape)))
        else:
            return None
        if _extent(x.shape, xdims, _NoReduce(g)) != "full":
            return None
        axes = tuple(sorted(xdims[a] for a in n.attrs["axes"]))
        if g.reduce_axes and axes != g.reduce_axes:
            return None
        if n.attrs["keepdim"]:
            return xdims
        return tuple(d for j, d in enumerate(xdims) if j not in n.attrs["axes"])
    dims = _pointwise_dims(n, g)
    if dims is None or _extent(n.shape, dims, g) == "partial":
        return None
    return dims


class _NoReduce:
    """A view of a group with no reduced axes (to ask whether a value covers the full shape)."""

    def __init__(self, g: _Group) -> None:
        self.shape, self.reduce_axes = g.shape, ()


def decide(graph: Graph) -> list[tuple[_Group, list[Node]]]:
    """Partition the fusible nodes of ``graph`` into groups (rules 1 to 6 of the module docstring)."""
    group_of: dict[int, _Group] = {}
    groups: list[_Group] = []
    mask: dict[int, int] = {}          # group id -> bits of the groups merged into it
    dep: dict[int, int] = {}           # node id -> bits of the groups it depends on (through any path)
    roots = {n.id for n in graph.roots()}

    def reach(i: Node) -> int:
        g = group_of.get(i.id)
        return dep.get(i.id, 0) | (mask[g.id] if g is not None else 0)

    gdep: dict[int, int] = {}          # group id -> bits of the groups its outside inputs depend on

    def merge(g: _Group, h: _Group) -> None:
        """Fold group ``h`` into ``g`` (same iteration space, compatible reductions, no path between them)."""
        for m in h.members:
            group_of[m.id] = g
        g.members.extend(h.members)
        g.dims.update(h.dims)
        g.reduce_axes = g.reduce_axes or h.reduce_axes
        mask[g.id] |= mask[h.id]
        gdep[g.id] |= gdep[h.id]
        h.members = []

    for n in graph.nodes:
        if n.kind != "op":
            continue
        kind = fusible(n)
        joined = None
        if kind is not None:
            for i in n.inputs:
                g = group_of.get(i.id)
                if g is None or g is joined:
                    continue
                bit = mask[g.id]
                if any(group_of.get(o.id) is not g and reach(o) & bit for o in n.inputs):
                    continue  # rule 3
                dims = _try_join(n, kind, g)
                if dims is not None:
                    joined = g
                    g.dims[n.id] = dims
                    if kind == "reduce" and not g.reduce_axes:
                        x = n.inputs[0]
                        xdims = g.dims.get(x.id, tuple(range(len(g.shape))))
                        g.reduce_axes = tuple(sorted(xdims[a] for a in n.attrs["axes"]))
                    break
            if joined is None:
                shape = n.inputs[0].shape if kind == "reduce" else n.shape
                joined = _Group(len(groups), tuple(shape))
                groups.append(joined)
                mask[joined.id] = 1 << joined.id
                gdep[joined.id] = 0
                nd = len(shape)
                if kind == "reduce":
                    joined.reduce_axes = tuple(sorted(a % nd for a in n.attrs["axes"]))
                    joined.dims[n.id] = (tuple(range(nd)) if n.attrs["keepdim"] else
                                         tuple(d for d in range(nd) if d not in joined.reduce_axes))
                else:
                    joined.dims[n.id] = tuple(range(nd))
            joined.members.append(n)
            group_of[n.id] = joined
            # Sibling groups in the same iteration space that n also reads merge into n's group, when
            # neither depends on the other through an outside node (e.g. Adam's m, v and parameter updates).
            for i in n.inputs:
                h = group_of.get(i.id)
                if (h is None or h is joined or h.shape != joined.shape or i.id not in h.dims
                        or (h.reduce_axes and joined.reduce_axes and h.reduce_axes != joined.reduce_axes)
                        or gdep[h.id] & mask[joined.id] or gdep[joined.id] & mask[h.id]
                        or any(group_of.get(o.id) not in (joined, h) and reach(o) & mask[h.id] for o in n.inputs)):
                    continue
                if _extent(i.shape, h.dims[i.id], h) == "partial":
                    continue
                merge(joined, h)
        d = 0
        for i in n.inputs:
            g = group_of.get(i.id)
            own = group_of.get(n.id)
            r = dep.get(i.id, 0) | (mask[g.id] if g is not None and g is not own else 0)
            d |= r
            if own is not None and g is not own:
                gdep[own.id] |= r
        dep[n.id] = d

    # Rule 4: merge small pointwise groups into their only consumer group.
    users = graph.users()
    alive = {g.id: g for g in groups}
    for g in reversed(groups):
        if not g.members or g.reduce_axes or any(m.id in roots for m in g.members):
            continue
        member_ids = {m.id for m in g.members}
        targets = {group_of[u.id].id if u.id in group_of else -1
                   for m in g.members for u in users[m.id] if u.id not in member_ids}
        if len(targets) != 1 or -1 in targets:
            continue
        h = alive[targets.pop()]
        if h is g:
            continue
        hbits = mask[h.id]
        if any(reach(i) & hbits for m in g.members for i in m.inputs if i.id not in member_ids):
            continue
        dims = _place_into(g, h, users, member_ids)
        if dims is None:
            continue
        for m in g.members:
            h.dims[m.id] = dims[m.id]
            group_of[m.id] = h
        h.members.extend(g.members)
        mask[h.id] |= mask[g.id]
        del alive[g.id]
    _sink_tails([g for g in groups if g.id in alive and g.members], users, group_of, roots)
    _merge_terminal(graph, [g for g in groups if g.id in alive and g.members], users, group_of)
    result = []
    for g in groups:
        if g.id in alive and g.members:
            g.members.sort(key=lambda m: m.id)
            result.append((g, g.members))
    return result


def _sink_tails(groups: list[_Group], users: dict, group_of: dict[int, _Group], roots: set[int]) -> None:
    """Rule 5: move the pointwise tail of a group that only one later group reads into that group, where it is
    recomputed from values the first group stores anyway (a ReLU's backward mask from the ReLU's output),
    when that keeps no more memory alive than the stored tail did."""
    for g in groups:
        if g.reduce_axes or not g.members:
            continue
        member_ids = {m.id for m in g.members}
        target: dict[int, int] = {}  # member id -> id of the one group all its readers are in
        for m in reversed(g.members):
            if m.id in roots or fusible(m) != "pointwise" or not users[m.id]:
                continue
            dest = set()
            for u in users[m.id]:
                if u.id in target:
                    dest.add(target[u.id])
                elif u.id in member_ids or u.id not in group_of or group_of[u.id] is g:
                    dest = None
                    break
                else:
                    dest.add(group_of[u.id].id)
            if dest and len(dest) == 1:
                target[m.id] = dest.pop()
        for hid in set(target.values()):
            tail = [m for m in g.members if target.get(m.id) == hid]
            tail_ids = {m.id for m in tail}
            h = group_of[next(u for m in tail for u in users[m.id] if u.id not in tail_ids).id]
            kept: dict[int, Node] = {}  # values the moved tail reads that must now stay alive until h
            ok = True
            for m in tail:
                for i in m.inputs:
                    if i.id in tail_ids or i.kind in ("input", "live", "const"):
                        continue
                    if i.id in member_ids and i.id not in roots and \
                            not any(u.id not in member_ids for u in users[i.id]):
                        ok = False  # computed inside g only: it would have to be stored, or g recomputed
                    kept[i.id] = i
            stored = sum(m.numel for m in tail if any(u.id not in tail_ids for u in users[m.id]))
            if not ok or sum(i.numel for i in kept.values()) > stored:
                continue
            part = _Group(-1, g.shape)
            part.members = tail
            dims = _place_into(part, h, users, tail_ids)
            if dims is None:
                continue
            for m in tail:
                h.dims[m.id] = dims[m.id]
                group_of[m.id] = h
                h.members.append(m)
            g.members = [m for m in g.members if m.id not in tail_ids]


MAX_HORIZONTAL_ARRAYS = 64  # rule 5's cap on one kernel's arrays (inputs + outputs): C argument lists stay short


def _merge_terminal(graph: Graph, groups: list[_Group], users: dict, group_of: dict[int, _Group]) -> None:
    """Rule 6: terminal groups (nothing in the graph reads their results: optimizer updates, running
    statistics) in the same iteration space and without reductions merge into one kernel, as long as
    none reads a buffer another one writes; so do 0-d groups that read only graph inputs, state and
    constants (per-parameter step counters and bias corrections). No cycle can form: no node depends on
    a terminal group, and a group that reads only leaves depends on no node."""
    write_of = {v.id: (("arg", t[1]) if isinstance(t, tuple) else id(t)) for v, t in graph.writes}

    def buffer(i: Node) -> Any:
        return ("arg", i.payload) if i.kind == "input" else id(i.payload) if i.kind == "live" else None

    open_: dict[tuple, tuple[_Group, set, set, int]] = {}
    for g in groups:
        member_ids = {m.id for m in g.members}
        outside = [i for m in g.members for i in m.inputs if i.id not in member_ids]
        if g.reduce_axes:
            continue
        if not any(u.id not in member_ids for m in g.members for u in users[m.id]):
            kind = "terminal"
        elif g.shape == () and all(i.kind != "op" for i in outside):
            kind = "scalar"
        else:
            continue
        reads = {buffer(i) for i in outside} - {None}
        writes = {write_of[m.id] for m in g.members if m.id in write_of}
        arrays = len({i.id for i in outside if not (i.kind == "const" and i.numel == 1)})
        arrays += sum(1 for m in g.members if m.id in write_of or any(u.id not in member_ids for u in users[m.id]))
        key = (kind, g.shape, g.members[0].device)
        cur = open_.get(key)
        if cur is not None:
            h, hreads, hwrites, harrays = cur
            if not (hwrites & reads or writes & hreads) and harrays + arrays <= MAX_HORIZONTAL_ARRAYS:
                for m in g.members:
                    h.dims[m.id] = g.dims[m.id]
                    group_of[m.id] = h
                h.members.extend(g.members)
                g.members = []
                open_[key] = (h, hreads | reads, hwrites | writes, harrays + arrays)
                continue
        open_[key] = (g, reads, writes, arrays)


def _place_into(g: _Group, h: _Group, users: dict, member_ids: set) -> dict | None:
    """Dims for every member of ``g`` inside ``h``, derived from their users (None on a conflict)."""
    out: dict[int, tuple] = {}
    for m in sorted(g.members, key=lambda x: -x.id):
        want = None
        for u in users[m.id]:
            udims = out.get(u.id) if u.id in member_ids else h.dims.get(u.id)
            if udims is None:
                return None
            if u.op.name in REDUCE_OPS:
                if m.shape != h.shape:
                    return None
                d = tuple(range(len(h.shape)))
            else:
                if len(m.shape) > len(udims):
                    return None
                d = udims[len(udims) - len(m.shape):]
            if want is not None and want != d:
                return None
            want = d
        if want is None or any(m.shape[j] not in (1, h.shape[d]) for j, d in enumerate(want)):
            return None
        out[m.id] = want
    return out


# ---------------------------------------------------------------------------------------------- rewriting

def _body(g: _Group, members: list[Node], outside_users: dict[int, bool], roots: set[int],
          name: str) -> tuple[FusedGroup, list[Node], list[Node]]:
    """The FusedGroup of ``members``, its external inputs and the members it outputs."""
    index = {m.id: j for j, m in enumerate(members)}
    inputs: list[Node] = []
    in_index: dict[int, int] = {}
    fg = FusedGroup(name, g.shape, g.reduce_axes, members=len(members))
    for m in members:
        mdims = g.dims[m.id]
        args = []
        is_reduce = m.op.name in REDUCE_OPS
        for i in m.inputs:
            if i.id in index:
                args.append(("v", index[i.id]))
                continue
            if i.kind == "const" and i.numel == 1:
                args.append(("c", i.payload.reshape(()).item(), i.dtype))
                continue
            if i.id not in in_index:
                in_index[i.id] = len(inputs)
                inputs.append(i)
            idims = tuple(range(len(g.shape))) if is_reduce else mdims[len(mdims) - len(i.shape):]
            args.append(("in", in_index[i.id], idims))
        attrs = {} if is_reduce else dict(m.attrs)
        fg.body.append(BodyOp(m.op.name, attrs, args, m.shape, m.dtype, mdims))
    outs = []
    for m in members:
        if m.id not in roots and not outside_users.get(m.id):
            continue
        ext = _extent(m.shape, g.dims[m.id], g)
        if ext == "full":
            fg.outputs.append(GroupOutput(index[m.id], m.shape, m.dtype))
        else:
            keep = len(m.shape) == len(g.shape)
            fg.outputs.append(GroupOutput(index[m.id], m.shape, m.dtype, reduced=True, keepdim=keep))
        outs.append(m)
    fg.n_inputs = len(inputs)
    return fg, inputs, outs


def _kernel_name(k: int, members: list[Node]) -> str:
    names: list[str] = []
    for m in members:
        if m.op.name not in names:
            names.append(m.op.name)
    return f"k{k}_" + "_".join(names[:4])


def run(graph: Graph, ctx: Any) -> tuple[Graph, list[str]]:
    if not getattr(ctx, "fuse", True) or not enabled():
        why = "disabled (EMBER_FUSION=0 or fuse=False)" if not getattr(ctx, "fuse", True) or switched_off() else \
            "no C compiler found: running unfused with the reference kernels"
        ctx.notes["fuse"] = {"kernels": 0, "why": why}
        return graph, [why]
    graph, split = split_epilogues(graph)
    parts = decide(graph)
    if not parts:
        ctx.notes["fuse"] = {"kernels": 0}
        return graph, ["nothing to fuse"]
    users = graph.users()
    roots = {n.id for n in graph.roots()}
    owner: dict[int, int] = {}
    for k, (_, members) in enumerate(parts):
        for m in members:
            owner[m.id] = k

    # Order: a topological sort of the graph with each group contracted to one node, kept close to the
    # original order (a group sits where its last member was).
    import heapq
    unit_of = [owner.get(n.id, -1) for n in graph.nodes]
    key_of: dict[Any, int] = {}
    for n in graph.nodes:
        u = ("g", unit_of[n.id]) if unit_of[n.id] >= 0 else ("n", n.id)
        key_of[u] = max(key_of.get(u, -1), n.id)
    preds: dict[Any, set] = {u: set() for u in key_of}
    succs: dict[Any, set] = {u: set() for u in key_of}
    for n in graph.nodes:
        u = ("g", unit_of[n.id]) if unit_of[n.id] >= 0 else ("n", n.id)
        for i in n.inputs:
            v = ("g", unit_of[i.id]) if unit_of[i.id] >= 0 else ("n", i.id)
            if v != u:
                preds[u].add(v)
                succs[v].add(u)
    indeg = {u: len(p) for u, p in preds.items()}
    heap = [(key_of[u], u) for u, d in indeg.items() if d == 0]
    heapq.heapify(heap)
    order = []
    while heap:
        _, u = heapq.heappop(heap)
        order.append(u)
        for v in succs[u]:
            indeg[v] -= 1
            if indeg[v] == 0:
                heapq.heappush(heap, (key_of[v], v))
    if len(order) != len(key_of):
        raise AssertionError(f"fuse: grouping of {graph.name} made a cycle ({len(order)} of {len(key_of)} units)")

    new = Graph(graph.name, graph.intern)
    new._effect_count = graph._effect_count
    m: dict[int, Node] = {}
    hist: dict[str, int] = {}
    n_kernels = n_members = 0
    for u in order:
        if u[0] == "n":
            n = graph.nodes[u[1]]
            if n.kind == "input":
                m[n.id] = new.add_input(n.shape, n.dtype, n.device, n.name or f"arg{n.payload}", n.payload)
            elif n.kind == "live":
                m[n.id] = new.add_live(n.payload, n.name)
            elif n.kind == "const":
                m[n.id] = new.add_const(n.payload, n.dtype, n.device, n.name)
            else:
                m[n.id] = new.make(n.op, tuple(m[i.id] for i in n.inputs), n.attrs, n.shape, n.dtype, n.device,
                                   fresh=n.fresh)
            continue
        g, members = parts[u[1]]
        member_ids = {x.id for x in members}
        outside = {x.id: any(w.id not in member_ids for w in users[x.id]) for x in members}
        fg, inputs, outs = _body(g, members, outside, roots, _kernel_name(n_kernels, members))
        k = new.make(FUSED, tuple(m[i.id] for i in inputs), {"group": fg}, (0,), None, members[0].device)
        for j, o in enumerate(outs):
            m[o.id] = new.make(FUSED_OUTPUT, (k,), {"group": fg, "index": j}, o.shape, o.dtype, o.device)
        n_kernels += 1
        n_members += len(members)
        size = "1" if len(members) == 1 else "2-4" if len(members) <= 4 else "5+"
        hist[size] = hist.get(size, 0) + 1
    new.outputs = [m[n.id] for n in graph.outputs]
    new.writes = [(m[v.id], t) for v, t in graph.writes]
    ctx.notes["fuse"] = {"kernels": n_kernels, "members": n_members, "epilogues": split}
    notes = [f"{n_members} pointwise/reduction node(s) -> {n_kernels} fused kernel(s) "
             f"(ops per kernel: " + ", ".join(f"{k}: {v}" for k, v in sorted(hist.items())) + ")"]
    if split:
        notes.append(f"{split} GEMM bias add(s) moved into the fused epilogue after the GEMM")
    return new, notes


def split_epilogues(graph: Graph) -> tuple[Graph, int]:
    """``linear(x, w, b)`` whose every reader is a fusible pointwise node becomes ``linear(x, w) + b``: the
    GEMM stays a BLAS call and its bias add joins the epilogue kernel (bias + activation + residual in one
    pass over the output instead of two)."""
    from ...ops.registry import REGISTRY
    users = graph.users()
    roots = {n.id for n in graph.roots()}
    targets = {n.id for n in graph.nodes if n.kind == "op" and n.op.name == "linear" and len(n.inputs) == 3
               and n.device.type == "cpu" and n.id not in roots and users[n.id]
               and all(fusible(u) == "pointwise" for u in users[n.id])}
    if not targets:
        return graph, 0
    add = REGISTRY["add"]

    def rewrite(g: Graph, n: Node, ins: tuple) -> Node | None:
        if n.id not in targets:
            return None
        gemm = g.make(n.op, ins[:2], n.attrs, n.shape, n.dtype, n.device)
        return g.make(add, (gemm, ins[2]), {}, n.shape, n.dtype, n.device)
    new, _ = graph.rebuild(rewrite)
    return new, len(targets)
