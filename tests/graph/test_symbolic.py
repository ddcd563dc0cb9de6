"""The symbolic API (ember.graph.symbolic): placeholders, graph-transform gradients, compile per shape."""

from __future__ import annotations

import io

import numpy as np
import pytest

import ember
import ember.nn.functional as F
from ember.errors import AutogradError, DTypeError, ShapeError, TraceError
from ember.graph import symbolic as S


def _mlp_weights(dtype: str, seed: int = 0) -> list[ember.Tensor]:
    rng = np.random.default_rng(seed)
    shapes = [(12, 16), (16,), (16, 5), (5,)]
    return [ember.tensor(rng.standard_normal(s).astype(dtype) * 0.3, requires_grad=True) for s in shapes]


def _mlp(x: ember.Tensor, ws: list[ember.Tensor]) -> ember.Tensor:
    w1, b1, w2, b2 = ws
    return ember.relu(x @ w1 + b1) @ w2 + b2


def _eager(xs: np.ndarray, ys: np.ndarray, ws: list[ember.Tensor]) -> tuple[float, list[np.ndarray]]:
    for w in ws:
        w.grad = None
    loss = F.cross_entropy(_mlp(ember.tensor(xs), ws), ember.tensor(ys))
    loss.backward()
    return float(loss), [w.grad.numpy().copy() for w in ws]


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-6), ("float64", 1e-12)])
def test_mlp_matches_eager_at_two_batch_sizes(dtype: str, tol: float) -> None:
    ws = _mlp_weights(dtype)
    x = S.placeholder((None, 12), dtype, name="x")
    y = S.placeholder((None,), "int64", name="y")
    with S.building():
        loss = F.cross_entropy(_mlp(x, ws), y)
    grads = S.grad(loss, ws)
    f = S.compile([loss, *grads], [x, y], name="mlp")
    rng = np.random.default_rng(1)
    for batch in (7, 3, 7):
        xs = rng.standard_normal((batch, 12)).astype(dtype)
        ys = rng.integers(0, 5, batch)
        out = f(x=xs, y=ys) if batch == 7 else f(xs, ys)
        assert isinstance(out, list) and all(isinstance(o, ember.Tensor) for o in out)
        want_loss, want_grads = _eager(xs, ys, ws)
        assert out[0].shape == () and out[0].dtype.name == dtype
        assert abs(float(out[0]) - want_loss) <= tol * max(1.0, abs(want_loss))
        for got, want in zip(out[1:], want_grads):
            assert got.shape == want.shape
            np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=tol)
    assert sorted(s["batch"] for s in f.signatures) == [3, 7]  # one plan per concrete signature


def test_live_tensors_are_read_by_reference_and_modules_work() -> None:
    ember.manual_seed(0)
    lin = ember.nn.Linear(6, 3)
    x = S.placeholder((None, 6), "float32", name="x")
    with S.building():
        out = ember.softmax(lin(x), dim=-1)
        norm = F.layer_norm(lin(x), (3,))
    f = S.compile([out, norm], [x])
    xs = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    got = f(xs)
    with ember.no_grad():
        np.testing.assert_allclose(got[0].numpy(), ember.softmax(lin(ember.tensor(xs)), dim=-1).numpy(), atol=1e-6)
        np.testing.assert_allclose(got[1].numpy(), F.layer_norm(lin(ember.tensor(xs)), (3,)).numpy(), atol=1e-5)
        lin.weight.mul_(2.0)  # updated in place after compiling: the next call sees it
        np.testing.assert_allclose(f(xs)[0].numpy(), ember.softmax(lin(ember.tensor(xs)), dim=-1).numpy(), atol=1e-6)


def test_grad_matches_finite_differences_float64() -> None:
    rng = np.random.default_rng(3)
    w = S.variable(ember.tensor(rng.standard_normal((3, 4))), name="w")
    c = ember.tensor(rng.standard_normal(4))
    x = S.placeholder((None, 3), "float64", name="x")
    with S.building():
        h = ember.tanh(x @ w) * c
        loss = (h * h).mean() + (ember.exp(x * 0.5).sum(1) / (1.0 + (x @ w).sum(1) ** 2)).mean()
    gw, gx, gc = S.grad(loss, [w, x, c])
    f = S.compile([loss, gw, gx, gc], [x])
    xs = rng.standard_normal((5, 3))
    value, gw_v, gx_v, gc_v = (t.numpy() for t in f(xs))
    eps = 1e-6
    for target, analytic in ((w.data, gw_v), (xs, gx_v), (c.data, gc_v)):
        numeric = np.zeros_like(target)
        for i in np.ndindex(target.shape):
            orig = target[i]
            target[i] = orig + eps  # w and c are live: the compiled function reads them on every call
            up = float(f(xs)[0])
            target[i] = orig - eps
            down = float(f(xs)[0])
            target[i] = orig
            numeric[i] = (up - down) / (2 * eps)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)
    assert float(value) == pytest.approx(float(f(xs)[0]), abs=0)


def test_passes_run_and_simplify() -> None:
    x = S.placeholder((None, 4), "float32", name="x")
    with S.building():
        y = (x * 1 + 0) * 2.0
    f = S.compile(y, [x], name="simplify", fuse=False)
    with pytest.raises(TraceError, match="call it once"):
        _ = f.graph  # specialized per concrete shapes: not before a call
    xs = np.arange(8, dtype=np.float32).reshape(2, 4)
    out = f(xs)
    assert isinstance(out, ember.Tensor)
    np.testing.assert_array_equal(out.numpy(), xs * 2)
    hist = f.graph.op_histogram()
    assert hist.get("add", 0) == 0 and hist.get("mul", 0) == 1  # x*1 and +0 are gone
    text = f.explain(file=io.StringIO())
    for name in ("dce", "cse", "constant_fold", "algebraic", "memory_plan"):
        assert name in text
    assert "x*1" in text and "x+0" in text and "batch=2" in text


def test_static_shapes_compile_at_once_and_graph_prints() -> None:
    a = S.placeholder((2, 3), "float64", name="a")
    with S.building():
        b = (a.exp() - 1).sum(0)
    f = S.compile([b], [a])
    assert "input a" in str(f.graph) and f.graph.count("op") >= 2  # available before any call
    assert "digraph" in f.graph.to_dot()
    np.testing.assert_allclose(f(a=np.ones((2, 3)))[0].numpy(), 2 * (np.e - 1) * np.ones(3))


def test_symbolic_sizes_flow_into_attributes_and_constants() -> None:
    rng = np.random.default_rng(0)
    w = ember.tensor(rng.standard_normal((5, 5)), requires_grad=True)
    z = S.placeholder((None, 4, 5), "float64", name="z")
    with S.building():
        hz = z @ w
        flat = hz.reshape(hz.shape[0], -1)           # a reshape attribute holding the symbolic size
        first = flat[:-1].mean() + hz[-1].sum()      # slice bounds from the end and a 1/n constant
        var = hz.var(0).sum()                        # 1/(n - 1)
        pad = (flat + ember.zeros_like(flat)).sum()  # a constant of symbolic shape
        drop = F.dropout(flat, 0.5).shape            # a random draw of symbolic shape
        assert repr(flat[:-1].shape) == "(batch - 1, 20)"
        total = first + var
    assert repr(flat.shape) == "(batch, 20)" and repr(drop) == "(batch, 20)"
    f = S.compile([flat, first, var, pad, *S.grad(total, [w, z])], [z])
    for batch in (3, 8):
        zs = rng.standard_normal((batch, 4, 5))
        got = [t.numpy() for t in f(zs)]
        ez = ember.tensor(zs, requires_grad=True)
        w.grad = None
        eh = ez @ w
        ef = eh.reshape(batch, -1)
        want_first, want_var = ef[:-1].mean() + eh[-1].sum(), eh.var(0).sum()
        (want_first + want_var).backward()
        np.testing.assert_allclose(got[0], ef.detach().numpy(), rtol=1e-14)
        np.testing.assert_allclose(got[1], float(want_first), rtol=1e-13)
        np.testing.assert_allclose(got[2], float(want_var), rtol=1e-13)
        np.testing.assert_allclose(got[3], float(ef.sum()), rtol=1e-13)
        np.testing.assert_allclose(got[4], w.grad.numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got[5], ez.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_detach_and_no_grad_stop_gradients_two_symbolic_sizes() -> None:
    rng = np.random.default_rng(4)
    w = ember.tensor(rng.standard_normal((3, 3)), requires_grad=True)
    seq = S.placeholder((None, "time", 3), "float64", name="seq")
    with S.building():
        h = seq @ w
        with ember.no_grad():
            frozen = h * 3.0  # built under no_grad: no gradient flows through it
        out = (ember.softmax(h, dim=-1) * h.detach()).sum() + (frozen * h).mean()
        ends = seq[:, -1].sum() + seq[:, :-2].mean()
        assert repr(seq[:, :-2].shape) == "(batch, time - 2, 3)"
    gw = S.grad(out, w)
    f = S.compile([out, gw, ends], [seq])
    for shape in ((2, 5, 3), (4, 3, 3)):
        xs = rng.standard_normal(shape)
        w.grad = None
        hh = ember.tensor(xs) @ w
        with ember.no_grad():
            frozen = hh * 3.0
        ref = (ember.softmax(hh, dim=-1) * hh.detach()).sum() + (frozen * hh).mean()
        ref.backward()
        value, g, e = f(xs)
        assert abs(float(value) - float(ref)) < 1e-12
        np.testing.assert_allclose(g.numpy(), w.grad.numpy(), atol=1e-12)
        assert float(e) == pytest.approx(xs[:, -1].sum() + xs[:, :-2].mean(), rel=1e-14)


def test_dropout_draws_in_the_graph() -> None:
    x = S.placeholder((None, 200), "float32", name="x")
    with S.building():
        y = F.dropout(x, 0.5)
    f = S.compile(y, [x])
    a, b = f(np.ones((4, 200), np.float32)).numpy(), f(np.ones((4, 200), np.float32)).numpy()
    assert set(np.unique(a)) <= {0.0, 2.0} and 0.3 < (a == 0).mean() < 0.7
    assert not np.array_equal(a, b)  # a fresh draw per call


def test_call_validation_errors() -> None:
    x = S.placeholder((None, 3), "float32", name="x")
    y = S.placeholder((None,), "int64", name="y")
    with S.building():
        out = (x.sum(1) * y).sum()
    f = S.compile(out, [x, y])
    good_x, good_y = np.zeros((4, 3), np.float32), np.zeros(4, np.int64)
    with pytest.raises(ShapeError, match=r"input 'x' expects a 2-d array of shape \(batch, 3\), got shape \(3,\)"):
        f(np.zeros(3, np.float32), good_y)
    with pytest.raises(ShapeError, match=r"'x' expects shape \(batch, 3\), got \(4, 2\): dimension 1 must be 3"):
        f(np.zeros((4, 2), np.float32), good_y)
    with pytest.raises(DTypeError, match="'x' expects dtype float32, got float64"):
        f(np.zeros((4, 3)), good_y)
    with pytest.raises(ShapeError, match="symbolic size 'batch', which is 4 in input 'x'"):
        f(good_x, np.zeros(5, np.int64))
    with pytest.raises(TypeError, match="missing input"):
        f(good_x)
    with pytest.raises(TypeError, match="unexpected input 'z'"):
        f(good_x, good_y, z=1)
    assert float(f(good_x, y=[1, 2, 3, 4])) == 0.0  # lists are converted to the placeholder's dtype


def test_build_errors() -> None:
    x = S.placeholder((None, 3), "float32", name="x")
    for read in (x.item, x.numpy, lambda: bool(x), lambda: float(x)):
        with pytest.raises(TraceError, match="symbolic tensor 'x'"):
            read()
    with pytest.raises(TraceError, match="while a symbolic graph is being built"):
        with S.building():
            ember.tensor([1.0]).item()
    with pytest.raises(ShapeError, match="batch"):  # build-time shape errors name the symbolic size
        with S.building():
            x @ ember.ones(4, 2)
    with S.building():
        vec = (x * 2).sum(1)
        total = vec.sum()
        idx = ember.arange(x.shape[0])  # an array computed eagerly from the symbolic size
        bad = vec + idx.to(ember.float32)
    with pytest.raises(AutogradError, match="only for a scalar loss"):
        S.grad(vec, [x])
    gx = S.grad(vec, x, grad_output=ember.graph.symbolic.placeholder((None,), name="gy"))
    assert gx.shape == x.shape
    other = ember.ones(3, requires_grad=True)
    with pytest.raises(AutogradError, match="not reachable"):
        S.grad(total, [other])
    assert S.grad(total, [x, other], allow_unused=True)[1] is None
    with pytest.raises(ValueError, match=r"placeholder\(s\) \['gy'\]"):
        S.compile([gx], [x])
    with pytest.raises(ShapeError, match="holding different values"):
        S.compile([bad], [x])
    with pytest.raises(ShapeError, match="more than one None"):
        S.placeholder((None, None))


def test_top_level_building_with_the_hook() -> None:
    ws = _mlp_weights("float32", seed=5)
    x = ember.graph.symbolic.placeholder((None, 12), name="x")
    y = ember.graph.symbolic.placeholder((None,), "int64", name="y")
    loss = F.cross_entropy(_mlp(x, ws), y)  # no building() scope: ops and composites see the symbols
    f = S.compile([loss, *S.grad(loss, ws)], [x, y])
    rng = np.random.default_rng(2)
    xs, ys = rng.standard_normal((6, 12)).astype(np.float32), rng.integers(0, 5, 6)
    out = f(xs, ys)
    want_loss, want_grads = _eager(xs, ys, ws)
    assert abs(float(out[0]) - want_loss) <= 1e-6
    for got, want in zip(out[1:], want_grads):
        np.testing.assert_allclose(got.numpy(), want, atol=1e-6)
