"""Kernel fusion: kernel counts pinned per composite, fused results against the reference kernels on odd
sizes, non-contiguous views and broadcasting, and the fallbacks (EMBER_FUSION=0, no C compiler)."""

from __future__ import annotations

import numpy as np
import pytest

import ember
import ember.nn.functional as F
from ember.codegen import cc

pytestmark = pytest.mark.skipif(cc.find_compiler() is None, reason="no C compiler: compiled mode runs unfused")

RTOL = 2e-6  # float32 results of fused kernels vs NumPy: reordered sums (in double) and <= 2.6 ulp math


def kernels(f: ember.jit) -> int:
    return f.graph.op_histogram().get("fused", 0)


def both(fn, *args):
    """(fused result, unfused reference result) of ``fn`` compiled both ways, as NumPy arrays."""
    fused, ref = ember.jit(fn), ember.jit(fn, fuse=False)
    a, b = fused(*args), ref(*args)
    a, b = (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))
    return fused, [x.numpy() for x in a], [x.numpy() for x in b]


def close(a: np.ndarray, b: np.ndarray, rtol: float = RTOL) -> None:
    scale = max(float(np.abs(b).max()), 1.0) if b.size else 1.0
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale)


def rand(*shape: int, seed: int = 0) -> ember.Tensor:
    return ember.tensor(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


# --------------------------------------------------------------------------------- kernel counts (pinned)

@pytest.mark.parametrize("shape", [(4, 10), (3, 7, 129)])
def test_softmax_and_log_softmax_forward_are_one_kernel_each(shape) -> None:
    x = rand(*shape)
    for fn, ref in ((F.softmax, _np_softmax), (F.log_softmax, lambda a: np.log(_np_softmax(a)))):
        f = ember.jit(lambda t, fn=fn: fn(t, dim=-1))
        out = f(x).numpy()
        assert kernels(f) == 1, f.graph
        close(out, ref(x.numpy()).astype(np.float32), 1e-5)


def _np_softmax(a: np.ndarray) -> np.ndarray:
    e = np.exp(a.astype(np.float64) - a.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_layer_norm_forward_is_at_most_two_kernels() -> None:
    x, w, b = rand(8, 33, 96), rand(96, seed=1), rand(96, seed=2)
    f, (a,), (r,) = both(lambda x, w, b: F.layer_norm(x, (96,), w, b), x, w, b)
    assert kernels(f) <= 2, f.graph
    close(a, r, 1e-5)
    f, (a,), (r,) = both(lambda x: F.layer_norm(x, (96,)), x)
    assert kernels(f) == 1, f.graph


def test_gelu_and_a_pointwise_chain_are_one_kernel() -> None:
    x = rand(5, 300)
    for approx in ("tanh", "none"):
        f, (a,), (r,) = both(lambda t, approx=approx: F.gelu(t * 2.0 + 1.0, approximate=approx) * t.sigmoid(), x)
        assert kernels(f) == 1, f.graph
        close(a, r)


def test_adam_step_on_one_parameter_is_one_update_kernel() -> None:
    """Parameter, first and second moments update in one kernel; the step counter and its bias corrections
    (0-d values) are one scalar kernel."""
    p = ember.nn.Parameter(rand(64, 33))
    ref = ember.nn.Parameter(rand(64, 33))
    opt = ember.optim.Adam([p], lr=1e-2, capturable=True)
    ref_opt = ember.optim.Adam([ref], lr=1e-2, capturable=True)
    g = rand(64, 33, seed=3)

    def step(opt, p, g):
        p.grad = g
        opt.step()
    f = ember.jit(lambda g: step(opt, p, g))
    for _ in range(4):
        f(g)
        step(ref_opt, ref, g)
    full = [n for n in f.graph.nodes if n.kind == "op" and n.op.name == "fused" and n.attrs["group"].shape == (64, 33)]
    scalar = [n for n in f.graph.nodes if n.kind == "op" and n.op.name == "fused" and n.attrs["group"].shape == ()]
    assert len(full) == 1 and len(scalar) == 1, f.graph
    assert len(full[0].attrs["group"].outputs) == 3  # new parameter, exp_avg, exp_avg_sq
    close(p.detach().numpy(), ref.detach().numpy(), 1e-5)


def test_adam_updates_of_same_shaped_parameters_are_one_kernel() -> None:
    """Rule 6: the updates of all parameters of one shape run as one kernel, and every parameter's step
    counter and bias corrections as one scalar kernel."""
    rng = np.random.default_rng(0)
    shapes = [(64, 33), (64, 33), (64, 33), (33,), (33,)]
    ps = [ember.nn.Parameter(ember.tensor(rng.standard_normal(s).astype(np.float32))) for s in shapes]
    refs = [ember.nn.Parameter(ember.tensor(p.detach().numpy().copy())) for p in ps]
    opt, ref_opt = ember.optim.AdamW(ps, lr=1e-2), ember.optim.AdamW(refs, lr=1e-2)
    gs = [ember.tensor(rng.standard_normal(s).astype(np.float32)) for s in shapes]

    def step(opt, ps, gs):
        for p, g in zip(ps, gs):
            p.grad = g
        opt.step()
    f = ember.jit(lambda *gs: step(opt, ps, gs))
    for _ in range(4):
        f(*gs)
        step(ref_opt, refs, gs)
    groups = [n.attrs["group"] for n in f.graph.nodes if n.kind == "op" and n.op.name == "fused"]
    assert sorted(g.shape for g in groups) == [(), (33,), (64, 33)], [g.describe() for g in groups]
    by_shape = {g.shape: g for g in groups}
    assert len(by_shape[(64, 33)].outputs) == 9 and len(by_shape[(33,)].outputs) == 6  # p, m, v each
    for p, r in zip(ps, refs):
        close(p.detach().numpy(), r.detach().numpy(), 1e-5)


def test_relu_mask_is_recomputed_in_the_backward_kernel() -> None:
    """Rule 5: the forward kernel stores only the ReLU's output; the backward kernel computes the mask from it."""
    model = ember.nn.Sequential(ember.nn.Linear(20, 64), ember.nn.ReLU(), ember.nn.Linear(64, 5))
    ref = ember.nn.Sequential(ember.nn.Linear(20, 64), ember.nn.ReLU(), ember.nn.Linear(64, 5))
    ref.load_state_dict(model.state_dict())
    x = rand(32, 20)

    def step(model, x):
        for p in model.parameters():
            p.grad = None
        (model(x) ** 2).sum().backward()
        return [p.grad.detach() for p in model.parameters()]
    f = ember.jit(lambda x: step(model, x))
    for _ in range(2):
        got = f(x)
    groups = [n.attrs["group"] for n in f.graph.nodes if n.kind == "op" and n.op.name == "fused"]
    forward = next(g for g in groups if any(b.op == "relu" for b in g.body))
    assert [forward.body[o.value].op for o in forward.outputs] == ["relu"], forward.describe()
    assert any({"gt", "mul"} <= {b.op for b in g.body} for g in groups), [g.describe() for g in groups]
    for a, r in zip(got, step(ref, x)):
        close(a.numpy(), r.numpy(), 1e-5)


def test_training_step_kernels_are_few_and_explained() -> None:
    model = ember.nn.Sequential(ember.nn.Linear(20, 32), ember.nn.GELU(), ember.nn.LayerNorm(32),
                                ember.nn.Linear(32, 5))
    opt = ember.optim.AdamW(model.parameters(), lr=1e-3)

    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.detach()
    f = ember.jit(step)
    x, y = rand(16, 20), ember.tensor(np.arange(16) % 5)
    for _ in range(3):
        f(x, y)
    text = f.explain()
    assert "fuse" in text and "fused kernel(s)" in text
    hist = f.graph.op_histogram()
    assert hist.get("add", 0) + hist.get("mul", 0) + hist.get("exp", 0) == 0  # all pointwise work is fused


# --------------------------------------------------------------------------------- fused == reference

@pytest.mark.parametrize("shape", [(1,), (7,), (3, 1), (5, 17), (2, 3, 65), (2, 1, 4, 9)])
def test_random_pointwise_and_reduction_mixes_match_the_reference(shape) -> None:
    x, y = rand(*shape), rand(*shape, seed=1)
    row = rand(shape[-1], seed=2)

    def fn(x, y, row):
        z = (x * row - y).tanh() + (x.abs() + 1).log() * 0.5
        m = z.amax(dim=-1, keepdim=True)
        s = (z - m).exp().sum(dim=-1)
        w = ember.where(x > y, z, -z).sum(dim=0)
        return z, s, w, (z.erf() / (1 + y * y)).sum()
    _f, got, want = both(fn, x, y, row)
    for a, b in zip(got, want):
        close(a, b, 1e-5)


def test_non_contiguous_and_broadcast_inputs_are_read_through_their_strides() -> None:
    base = rand(12, 40)
    col = rand(12, 1, seed=1)

    def fn(t, col):
        v = t.permute(1, 0)          # (40, 12): a transposed view read with strides, not copied
        s = t[:, 3:35:2]             # a stepped slice
        e = col.expand(12, 40)       # a broadcast view: stride 0
        return (v * 2).exp() + 1, (s * s).sum(dim=1), (e * t).amin(dim=0, keepdim=True)
    _f, got, want = both(fn, base, col)
    for a, b in zip(got, want):
        close(a, b)
    # A non-contiguous argument: the executor copies it to the layout the kernel was built for.
    _f2, got2, want2 = both(lambda t: (t * 3).sum(dim=0), base.permute(1, 0))
    close(got2[0], want2[0])


def test_integer_and_boolean_values_fuse_exactly() -> None:
    i = ember.tensor(np.arange(-20, 20).reshape(4, 10))

    def fn(i):
        k = (i * 3 + 1) % 7
        return k, (k > 2) & (i < 5), ember.where(i > 0, i, -i) // 3
    _f, got, want = both(fn, i)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_elementwise_block_gradients_match_unfused() -> None:
    x, a, b = rand(4, 8, 64), rand(64, seed=1), rand(64, seed=2)

    def fn(x, a, b):
        for t in (x, a, b):
            t.grad = None
        y = F.layer_norm(x, (64,))
        z = F.gelu(y * a + b)
        out = (z * z.sigmoid() + x).sum()
        out.backward()
        return out.detach(), x.grad, a.grad, b.grad
    x.requires_grad_(), a.requires_grad_(), b.requires_grad_()
    f, got, want = both(fn, x, a, b)
    for g1, g2 in zip(got, want):
        close(g1, g2, 1e-5)
    assert kernels(f) <= 8, f.graph


# --------------------------------------------------------------------------------- switches and fallbacks

def test_fusion_switch_and_debug_source(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture) -> None:
    x = rand(3, 5)
    monkeypatch.setenv("EMBER_FUSION", "0")
    off = ember.jit(lambda t: (t * 2).exp())
    np.testing.assert_array_equal(off(x).numpy(), np.exp(x.numpy() * 2))
    assert kernels(off) == 0 and "disabled" in off.explain()
    monkeypatch.setenv("EMBER_FUSION", "1")
    monkeypatch.setenv("EMBER_DEBUG", "2")
    on = ember.jit(lambda t: (t * 3).exp())
    on(x)
    err = capfd.readouterr().err
    assert "ek_" in err and "for (" in err  # the kernel's C source
    assert "ms" in err  # its timing


def test_without_a_c_compiler_compiled_mode_runs_unfused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cc, "_COMPILER", [None])
    monkeypatch.setattr(cc, "_WARNED", set())
    x = rand(4, 6)
    with pytest.warns(RuntimeWarning, match="no C compiler"):
        f = ember.jit(lambda t: F.softmax(t * 2, dim=-1))
        out = f(x)
    assert kernels(f) == 0
    assert "no C compiler" in f.explain()
    with ember.no_grad():
        np.testing.assert_array_equal(out.numpy(), F.softmax(x * 2, dim=-1).numpy())


@pytest.mark.parametrize("name", ["cnn", "gpt"])
def test_threaded_engine_replays_bit_for_bit_like_the_sequential_loop(name: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """EMBER_ENGINE=threaded runs independent steps concurrently (arena reuse ordered by explicit edges)."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import train_steps as ts
    losses = {}
    for mode in ("naive", "threaded"):
        monkeypatch.setenv("EMBER_ENGINE", mode)
        c = ts.QUICK[name]
        ember.manual_seed(0)
        model, opts, loss_fn = ts.BUILDERS[name](ember, c)
        batches = [tuple(ember.from_numpy(a) for a in b) for b in ts.make_batches(name, c, 0)]

        def step(*batch, model=model, opts=opts, loss_fn=loss_fn):
            for o in opts:
                o.zero_grad()
            loss = model(*batch)[1] if name == "gpt" else loss_fn(model(batch[0]), batch[1])
            loss.backward()
            for o in opts:
                o.step()
            return loss.detach()
        f = ember.jit(step)
        losses[mode] = [float(f(*batches[i % 4])) for i in range(5)]
        if mode == "threaded":
            assert f.last.executor.schedule is not None
    assert losses["naive"] == losses["threaded"]


def test_engine_mode_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBER_ENGINE", "async")
    with pytest.raises(ValueError, match="EMBER_ENGINE must be one of"):
        ember.jit(lambda t: t * 2)(rand(3))


def test_gemm_bias_and_activation_are_one_epilogue_kernel_after_the_gemm() -> None:
    layer = ember.nn.Linear(24, 40)
    x = rand(9, 24)
    f, (a,), (r,) = both(lambda t: (layer(t).relu() + 1.0) * 0.5, x)
    hist = f.graph.op_histogram()
    assert hist.get("linear") == 1 and hist.get("fused") == 1, f.graph
    assert [len(n.inputs) for n in f.graph.nodes if n.kind == "op" and n.op.name == "linear"] == [2]  # bias moved
    close(a, r)
    assert "epilogue" in f.explain()
