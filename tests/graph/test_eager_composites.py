"""Eager composites compiled once per shape signature (ember.ops.compiled_composite) against the plain,
op-by-op functions (EMBER_EAGER_FUSION=0)."""

import numpy as np
import pytest

import ember
import ember.nn.functional as F
from ember.ops import compiled_composite
from ember.ops.composite import log_softmax, softmax
from ember.ops.registry import composite, composite_cache_clear, composite_cache_info

pytestmark = pytest.mark.skipif(not ember.codegen.available(), reason="no C compiler")


@pytest.fixture
def eager(monkeypatch):
    """Compilation on, with a threshold low enough for the small odd shapes used here."""
    monkeypatch.setenv("EMBER_EAGER_FUSION", "1")
    monkeypatch.setattr(compiled_composite, "MIN_ELEMENTS", 64)
    composite_cache_clear()
    yield monkeypatch
    composite_cache_clear()


def _close(a, b):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(b).max(initial=0.0))))


def _run(fn, shape, transpose, needs, targets, seed=0):
    """fn's output, the gradient of (output * w).sum() for each input needing one, and the output's grad_fn."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(shape[::-1] if transpose else shape).astype(np.float32)
    x0 = ember.tensor(base, requires_grad=True)
    x = x0.T if transpose else x0
    params = [ember.tensor(rng.standard_normal(n).astype(np.float32), requires_grad=True) for n in needs]
    t = ember.tensor(rng.integers(0, shape[-1], shape[0])) if targets else None
    y = fn(x, *params, t)
    w = ember.tensor(rng.standard_normal(y.shape).astype(np.float32))
    (y * w).sum().backward()
    return y.detach().numpy(), [x0.grad.numpy()] + [p.grad.numpy() for p in params], y.grad_fn


CASES = {
    "softmax": (lambda x, t: softmax(x, -1), (3, 5, 129), False, (), False),
    "softmax_transposed": (lambda x, t: softmax(x, 0), (7, 33), True, (), False),
    "log_softmax": (lambda x, t: log_softmax(x, -1), (7, 33), False, (), False),
    "layer_norm": (lambda x, w, b, t: F.layer_norm(x, (129,), w, b), (3, 5, 129), False, (129, 129), False),
    "gelu_transposed": (lambda x, t: F.gelu(x), (7, 33), True, (), False),
    "gelu_tanh": (lambda x, t: F.gelu(x, approximate="tanh"), (3, 5, 129), False, (), False),
    "cross_entropy": (lambda x, t: F.cross_entropy(x, t), (7, 33), False, (), True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_compiled_matches_plain(eager, case):
    fn, shape, transpose, needs, targets = CASES[case]
    eager.setenv("EMBER_EAGER_FUSION", "0")
    ref_out, ref_grads, ref_fn = _run(fn, shape, transpose, needs, targets)
    assert ref_fn.name != "compiled_composite"
    eager.setenv("EMBER_EAGER_FUSION", "1")
    for _ in range(2):  # the first call compiles, the second replays
        out, grads, grad_fn = _run(fn, shape, transpose, needs, targets)
        assert grad_fn.name == "compiled_composite"
        _close(out, ref_out)
        assert len(grads) == len(ref_grads)
        for g, r in zip(grads, ref_grads):
            _close(g, r)
    info = composite_cache_info()
    assert (info["forward_traces"], info["backward_traces"], info["compiled"]) == (1, 1, 1), info
    assert info["hits"] == 1


def test_cache_per_shape_signature(eager):
    x = ember.randn(8, 40)
    y1 = softmax(x, -1)
    assert composite_cache_info()["forward_traces"] == 1
    softmax(ember.randn(8, 40), -1)
    assert composite_cache_info()["forward_traces"] == 1  # same shape: replayed
    softmax(x, 0)
    assert composite_cache_info()["forward_traces"] == 2  # another static argument
    y2 = softmax(ember.randn(9, 40), -1)
    assert composite_cache_info()["forward_traces"] == 3  # another shape
    assert y1.shape == (8, 40) and y2.shape == (9, 40)
    assert not y1.requires_grad and y1.grad_fn is None
    _close(y1.numpy(), np.exp(x.numpy()) / np.exp(x.numpy()).sum(-1, keepdims=True))


def test_double_backward_matches_plain(eager):
    def second_order(flag):
        eager.setenv("EMBER_EAGER_FUSION", flag)
        x = ember.tensor(np.random.default_rng(1).standard_normal((6, 31)).astype(np.float32), requires_grad=True)
        y = F.gelu(x, approximate="tanh") * softmax(x, -1)
        (g,) = ember.autograd.grad(y.sum(), [x], create_graph=True)
        (g * g).sum().backward()
        return g.detach().numpy(), x.grad.numpy(), y.grad_fn.next_functions

    g0, h0, _ = second_order("0")
    g1, h1, parents = second_order("1")
    assert [p.name for p in parents] == ["compiled_composite", "compiled_composite"]
    _close(g1, g0)
    _close(h1, h0)


def test_gradient_only_for_inputs_that_need_it(eager):
    x = ember.randn(4, 50)
    w = ember.randn(50, requires_grad=True)
    y = F.layer_norm(x, (50,), w, None)
    assert y.grad_fn.name == "compiled_composite"
    y.sum().backward()
    assert w.grad.shape == (50,) and x.grad is None


def test_small_tensors_run_plain(eager):
    x = ember.randn(4, 8, requires_grad=True)  # 32 elements, under the threshold
    assert softmax(x, -1).grad_fn.name == "div"
    assert composite_cache_info()["forward_traces"] == 0


def test_switch_off(eager):
    eager.setenv("EMBER_EAGER_FUSION", "0")
    x = ember.randn(16, 64, requires_grad=True)
    assert softmax(x, -1).grad_fn.name == "div"
    assert composite_cache_info()["forward_traces"] == 0


@composite
def _reads_a_value(x):
    return x * 2.0 if x.sum().item() > 0 else x * 3.0


@composite
def _two_outputs(x):
    return x.exp(), x.sum()


@composite
def _with_dropout(x):
    return F.dropout(x.exp(), 0.5, True) + 1.0


def test_fallbacks_run_the_plain_function(eager):
    x = ember.randn(16, 64, requires_grad=True)
    for _ in range(2):
        y = _reads_a_value(x)
        assert y.grad_fn.name == "mul"
        _close(y.detach().numpy(), x.detach().numpy() * (2.0 if x.detach().numpy().sum() > 0 else 3.0))
        a, _ = _two_outputs(x)
        assert a.grad_fn.name == "exp"
    info = composite_cache_info()
    assert info["forward_traces"] == 2 and info["plain"] == 2 and info["plain_calls"] == 4
    assert "trace failed" in info["why_plain"]["_reads_a_value"]
    assert "not one floating tensor" in info["why_plain"]["_two_outputs"]


def test_random_draws_as_plain(eager):
    x = ember.randn(16, 64)
    outs = []
    for flag in ("0", "1"):
        eager.setenv("EMBER_EAGER_FUSION", flag)
        ember.manual_seed(3)
        outs.append([_with_dropout(x).numpy() for _ in range(2)])
    np.testing.assert_array_equal(outs[0], outs[1])
    assert "random" in composite_cache_info()["why_plain"]["_with_dropout"] or \
        "state" in composite_cache_info()["why_plain"]["_with_dropout"]


def test_inside_jit_and_no_grad(eager):
    x = ember.randn(8, 40)
    with ember.no_grad():
        y = softmax(x, -1)
    assert y.grad_fn is None
    f = ember.jit(lambda t: softmax(t, -1) * 2.0)
    _close(f(x).numpy(), 2.0 * y.numpy())
    assert composite_cache_info()["forward_traces"] == 1  # traced into the jit graph, not compiled on its own


def test_backward_inside_jit_through_an_eager_compiled_node(eager):
    w = ember.randn(8, 40, requires_grad=True)
    s = softmax(w, -1)  # eager, compiled
    assert s.grad_fn.name == "compiled_composite"

    @ember.jit
    def step(g):
        (s * g).sum().backward(retain_graph=True)
        return w.grad

    g = ember.randn(8, 40)
    got = step(g).numpy()
    sv, gv = s.detach().numpy(), g.numpy()
    _close(got, sv * (gv - (sv * gv).sum(-1, keepdims=True)))


def test_errors_are_the_plain_functions(eager):
    x = ember.randn(8, 40)
    for _ in range(2):
        with pytest.raises(ember.errors.ShapeError, match="normalized_shape"):
            F.layer_norm(x, (41,))


def test_fusion_off_compiles_nothing(eager):
    eager.setenv("EMBER_FUSION", "0")
    x = ember.randn(16, 64, requires_grad=True)
    for _ in range(40):
        assert softmax(x, -1).grad_fn.name == "div"
    info = composite_cache_info()
    assert info["forward_traces"] == 0 and info["compiled"] == info["plain"] == 0
