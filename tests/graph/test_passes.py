"""Each pass does what it claims on a small graph (node counts before/after), and the memory plan is sound."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import ember
import ember.nn.functional as F
from ember.errors import ShapeError
from ember.graph.compile import optimize
from ember.graph.ir import Graph
from ember.graph.passes import PIPELINE, PassContext, algebraic, constant_fold, cse, dce, layout, remat
from ember.graph.trace import trace
from ember.ops.registry import REGISTRY
from ember.runtime.executor import Executor
from ember.runtime.memory import alias_roots, last_uses, plan_memory


def traced(fn, *args):
    tr, _ = trace(fn, args, {}, getattr(fn, "__name__", "f"))
    return tr.graph


def ops(g: Graph) -> dict[str, int]:
    return g.op_histogram()


def run_graph(g: Graph, *arrays: np.ndarray) -> list[np.ndarray]:
    g2, ctx, _ = optimize(g, fuse=False)  # these tests pin each pass's arithmetic: unfused, bit for bit
    return Executor(g2, ctx.memory).run(list(arrays))


def test_pipeline_order_is_one_list() -> None:
    assert [p.NAME for p in PIPELINE] == ["dce", "cse", "constant_fold", "algebraic", "layout", "cse", "dce",
                                          "remat", "fuse", "memory_plan"]


def test_dce_removes_unused_values_but_keeps_random_draws() -> None:
    def f(x):
        _unused = ember.exp(x) * 3
        ember.rand(4)  # advances the generator: stays
        return x + 1

    g = traced(f, ember.ones(4))
    assert ops(g) == {"exp": 1, "mul": 1, "uniform": 1, "add": 1}
    new, notes = dce.run(g, PassContext())
    assert ops(new) == {"uniform": 1, "add": 1}
    assert "exp x1, mul x1" in notes[0]


def test_interning_and_cse_merge_equal_nodes() -> None:
    x = ember.randn(3)
    g = traced(lambda x: ember.exp(x) + ember.exp(x), x)
    assert ops(g) == {"exp": 1, "add": 1}  # interned while tracing
    raw = Graph("raw", intern=False)
    a = raw.add_input((3,), ember.float32, x.device, "x", 0)
    e1 = raw.make(REGISTRY["exp"], (a,), {})
    e2 = raw.make(REGISTRY["exp"], (a,), {})
    raw.outputs = [raw.make(REGISTRY["add"], (e1, e2), {})]
    assert ops(raw) == {"exp": 2, "add": 1}
    new, notes = cse.run(raw, PassContext())
    assert ops(new) == {"exp": 1, "add": 1} and "merged 1" in notes[0]
    out = run_graph(new, x.data)[0]
    assert np.array_equal(out, np.exp(x.data) + np.exp(x.data))


def test_constant_folding_evaluates_constant_subgraphs() -> None:
    def f(x):
        scale = ember.exp(ember.ones(3) * 2)  # made from constants inside the call
        return x * scale

    x = ember.randn(3)
    g = traced(f, x)
    assert ops(g) == {"mul": 2, "exp": 1}
    new, notes = constant_fold.run(g, PassContext())
    assert ops(new) == {"mul": 1} and "folded 2" in notes[0]
    assert np.allclose(run_graph(new, x.data)[0], x.data * np.exp(np.ones(3, np.float32) * 2))


def test_algebraic_identities() -> None:
    def f(x):
        y = (x * 1 + 0) / 1
        z = -(-y)
        s = ember.sum(z.reshape(3, 1, 4), dim=1)  # a size-1 dimension
        return s.to(ember.float32) - 0

    x = ember.randn(3, 4)
    g = traced(f, x)
    before = sum(ops(g).values())
    new, notes = algebraic.run(g, PassContext())
    text = " ".join(notes)
    for rule in ("x*1", "x+0", "x/1", "--x", "sum over size-1 dims", "x-0"):
        assert rule in text, rule
    assert sum(ops(new).values()) < before
    assert "mul" not in ops(new) and "neg" not in ops(new) and "sum" not in ops(new)
    assert np.array_equal(run_graph(new, x.data)[0], x.data)


def test_broadcast_of_a_scalar_folds_into_the_kernel() -> None:
    x = ember.randn(4, 5)
    g = traced(lambda x: x * ember.tensor(2.0).expand(4, 5), x)
    assert ops(g) == {"expand": 1, "mul": 1}
    new, _ = algebraic.run(g, PassContext())
    assert ops(new) == {"mul": 1}
    assert np.array_equal(run_graph(new, x.data)[0], x.data * np.float32(2))


def test_relu_mask_moves_before_the_max_pool_backward() -> None:
    """relu -> max_pool2d: the backward masks the pooled gradient instead of the full-size one, same values
    (ties, negative windows and an all-negative plane included)."""
    rng = np.random.default_rng(0)
    x = np.round(rng.standard_normal((2, 3, 8, 8)), 1).astype(np.float32)
    x[1, 2] = -np.abs(x[1, 2]) - 1                      # every window negative: its gradient is 0
    w = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)

    def f(x, w):
        return (F.max_pool2d(F.relu(x), 2) * w).sum()
    xt, wt = ember.tensor(x, requires_grad=True), ember.tensor(w)
    g = traced(lambda x, w: ember.grad(f(x, w), [x])[0], xt, wt)
    new, notes = algebraic.run(g, PassContext())
    assert any("ReLU mask moved before max-pool backward" in n for n in notes), notes
    mb = [n for n in new.nodes if n.kind == "op" and n.op.name == "max_pool2d_backward"]
    assert len(mb) == 1 and mb[0].inputs[0].shape == (2, 3, 4, 4)   # the masked gradient is the pooled one
    f(xt, wt).backward()
    np.testing.assert_array_equal(run_graph(new, x, w)[0], xt.grad.numpy())


def test_layout_collapses_view_chains() -> None:
    def f(x):
        a = x.reshape(6, 4).reshape(2, 12).reshape(24)
        b = x.permute(2, 0, 1).permute(1, 2, 0)  # the identity
        c = x.permute(1, 0, 2).permute(0, 2, 1)
        return a, b * 2, c + 1

    x = ember.randn(2, 3, 4)
    g = traced(f, x)
    assert ops(g)["reshape"] == 3 and ops(g)["permute"] == 4
    new, notes = layout.run(g, PassContext())
    assert ops(new).get("reshape") == 1 and ops(new).get("permute") == 1
    assert any("permute chain -> nothing" in n for n in notes)
    outs = run_graph(new, x.data)
    assert np.array_equal(outs[0], x.data.reshape(24))
    assert np.array_equal(outs[1], x.data * 2)
    assert np.array_equal(outs[2], x.data.transpose(1, 2, 0) + 1)


def _overlap(a0: int, a1: int, b0: int, b1: int) -> bool:
    return a0 <= b1 and b0 <= a1


def test_memory_plan_reuses_buffers_without_overlapping_live_ones() -> None:
    def f(x, w):
        h = x
        for _ in range(6):
            h = ember.tanh(h @ w) * 0.5 + h
        return h.sum()

    x, w = ember.randn(32, 64), ember.randn(64, 64)
    g, _, _ = optimize(traced(f, x, w), fuse=False)
    plan = plan_memory(g)
    assert plan.arena_bytes < plan.naive_bytes / 2
    assert plan.inplace, "an elementwise chain should reuse its input's buffer"
    roots = alias_roots(g)
    last = last_uses(g, roots)
    inplace = {(a, b) for a, b in plan.inplace} | {(b, a) for a, b in plan.inplace}
    planned = [n for n in g.nodes if n.id in plan.offsets]
    for i, a in enumerate(planned):
        for b in planned[i + 1:]:
            if plan.offsets[a.id] == plan.offsets[b.id] and ((a.id, b.id) in inplace):
                continue
            if _overlap(a.id, last[a.id], b.id, last[b.id]):
                a0, b0 = plan.offsets[a.id], plan.offsets[b.id]
                assert not _overlap(a0, a0 + a.nbytes - 1, b0, b0 + b.nbytes - 1), (a, b)
    ex = Executor(g, plan)
    arena = ex.arena
    first = ex.run([x.data, w.data])[0]
    second = ex.run([x.data, w.data])[0]
    assert ex.arena is arena and np.array_equal(first, second)
    expected = x.data
    for _ in range(6):
        expected = np.tanh(expected @ w.data) * np.float32(0.5) + expected
    assert np.array_equal(first, expected.sum())


def test_state_update_is_written_straight_into_the_parameter() -> None:
    p = ember.randn(100)

    def f(x):
        p.add_(x * 0.1)
        return x.sum()

    g = traced(f, ember.randn(100))
    g2, ctx, _ = optimize(g, fuse=False)
    assert len(g2.writes) == 1
    assert ctx.memory.direct, "the update should be computed into p's storage, not copied there"


def test_remat_meets_a_budget_and_keeps_results() -> None:
    ember.manual_seed(0)
    layers = [ember.nn.Linear(64, 64) for _ in range(6)]

    def loss_fn(x):
        h = x
        for layer in layers:
            h = ember.tanh(layer(h))
        loss = (h * h).mean()
        loss.backward()
        grads = [layer.weight.grad for layer in layers]
        for layer in layers:
            layer.weight.grad = None
            layer.bias.grad = None
        return (loss.detach(), *grads)

    x = ember.randn(128, 64)
    g = traced(loss_fn, x)
    free, ctx_free, _ = optimize(g, fuse=False)
    budget = int(ctx_free.memory.planned_peak_bytes * 0.6)  # each backward step needs ~4 activations at least
    tight, ctx, records = optimize(g, memory_budget=budget, fuse=False)
    assert ctx.memory.planned_peak_bytes <= budget
    assert ctx.notes["remat"]["recomputed"] > 0
    assert sum(ops(tight).values()) > sum(ops(free).values())
    note = next(r for r in records if r.name == "remat").notes[0]
    assert "met" in note and "NOT" not in note
    a = Executor(free, ctx_free.memory).run([x.data])
    b = Executor(tight, ctx.memory).run([x.data])
    for u, v in zip(a, b):
        assert np.array_equal(u, v)


def test_remat_reports_an_impossible_budget() -> None:
    x = ember.randn(64, 64)
    g = traced(lambda x: (ember.exp(x) @ x).sum(), x)
    _, _ctx, records = optimize(g, memory_budget=1)
    note = next(r for r in records if r.name == "remat").notes[0]
    assert "NOT met" in note or "not met" in note


def test_verify_catches_a_wrong_shape() -> None:
    g = Graph("bad")
    a = g.add_input((3,), ember.float32, ember.device("cpu"), "x", 0)
    g.outputs = [g.make(REGISTRY["exp"], (a,), {}, shape=(4,), dtype=ember.float32)]
    with pytest.raises(ShapeError, match="exp"):
        g.verify()


def test_printing_and_dot() -> None:
    g = traced(lambda x: ember.relu(x) * 2, ember.randn(2, 2))
    text = str(g)
    assert "relu(%0)" in text and "return" in text
    dot = g.to_dot()
    assert dot.startswith("digraph") and "relu" in dot
    if shutil.which("dot") is None:
        with pytest.raises(RuntimeError, match="Graphviz"):
            g.to_dot("/tmp/ember_graph_test.svg")


def test_remat_is_a_no_op_without_budget() -> None:
    g = traced(lambda x: x * 2, ember.randn(3))
    new, notes = remat.run(g, PassContext())
    assert new is g and notes == []
