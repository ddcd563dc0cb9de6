"""Reverse mode (tape, engine, grad, hooks, in-place checks), forward mode (jvp) and gradcheck."""

import gc
import threading
import weakref

import numpy as np
import pytest

import ember
from ember.autograd import gradcheck
from ember.ops.registry import REGISTRY, Op, apply
from tests.helpers import rand, torch

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")


def leaf(*shape, seed=0, dtype="float64", low=-2.0, high=2.0):
    return ember.tensor(rand(*shape, seed=seed, low=low, high=high), dtype=dtype, requires_grad=True)


# ----------------------------------------------------------------------------- backward / grad basics


def test_backward_accumulates_into_grad_across_calls():
    x = ember.tensor([1.0, 2.0, 3.0], requires_grad=True)
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad.data, [2, 4, 6])
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad.data, [4, 8, 12])
    x.grad = None
    (3 * x).sum().backward()
    np.testing.assert_allclose(x.grad.data, [3, 3, 3])
    assert x.grad.requires_grad is False and x.grad.grad_fn is None


def test_backward_with_gradient_and_shared_leaves():
    a = ember.tensor([1.0, 2.0], requires_grad=True)
    b = ember.tensor([3.0, 4.0], requires_grad=True)
    y = a * b + a
    g = ember.tensor([1.0, -1.0])
    y.backward(g)
    np.testing.assert_allclose(a.grad.data, [4, -5])
    np.testing.assert_allclose(b.grad.data, [1, -2])
    g.data[:] = 100  # the caller's gradient is not aliased by any .grad
    np.testing.assert_allclose(a.grad.data, [4, -5])
    # a plain list is accepted as the gradient of a single output
    c = ember.tensor([1.0, 2.0], requires_grad=True)
    (c * 2).backward([1.0, 0.5])
    np.testing.assert_allclose(c.grad.data, [2, 1])
    # backward on a leaf itself
    d = ember.tensor([1.0, 2.0], requires_grad=True)
    d.backward(ember.tensor([5.0, 6.0]))
    np.testing.assert_allclose(d.grad.data, [5, 6])


def test_backward_of_several_outputs():
    x = ember.tensor([1.0, 2.0], requires_grad=True)
    ember.autograd.backward([x * x, x * 3], [ember.ones(2), ember.ones(2)])
    np.testing.assert_allclose(x.grad.data, [5, 7])
    x.grad = None
    y = (x * x).sum()
    ember.autograd.backward([y, y])  # the same output twice counts twice
    np.testing.assert_allclose(x.grad.data, [4, 8])


def test_add_gradient_is_not_shared_between_leaves():
    a = ember.tensor([1.0, 2.0], requires_grad=True)
    b = ember.tensor([3.0, 4.0], requires_grad=True)
    (a + b).sum().backward()
    (a + b).sum().backward()  # accumulating into a.grad must not touch b.grad
    np.testing.assert_allclose(a.grad.data, [2, 2])
    np.testing.assert_allclose(b.grad.data, [2, 2])
    assert not np.shares_memory(a.grad.data, b.grad.data)


def test_grad_casts_to_input_dtype():
    x = ember.tensor([1.0, 2.0], requires_grad=True)
    (x.double() * 3).sum().backward()
    assert x.grad.dtype is ember.float32
    np.testing.assert_allclose(x.grad.data, [3, 3])


def test_grad_with_grad_outputs():
    x = ember.tensor([1.0, 2.0, 3.0], requires_grad=True)
    (g,) = ember.grad(x * x, x, grad_outputs=ember.tensor([1.0, 0.0, 2.0]))
    np.testing.assert_allclose(g.data, [2, 0, 12])
    assert x.grad is None  # grad() returns, it does not accumulate
    y1, y2 = x * x, x.exp()
    (g,) = ember.grad([y1, y2], [x], grad_outputs=[ember.ones(3), ember.full((3,), 2.0)])
    np.testing.assert_allclose(g.data, 2 * x.data + 2 * np.exp(x.data), rtol=1e-6)


def test_grad_same_input_twice_and_non_leaf_inputs():
    x = ember.tensor([1.0, 2.0], requires_grad=True)
    a = x * 2
    ga, ga2, gx = ember.grad((a * a).sum(), [a, a, x])
    np.testing.assert_allclose(ga.data, [4, 8])
    np.testing.assert_allclose(ga2.data, [4, 8])
    np.testing.assert_allclose(gx.data, [8, 16])
    gx1, gx2 = ember.grad((x * x).sum(), (x, x))
    np.testing.assert_allclose(gx1.data, [2, 4])
    np.testing.assert_allclose(gx2.data, [2, 4])


def test_allow_unused():
    x = ember.tensor([1.0, 2.0], requires_grad=True)
    z = ember.tensor([5.0], requires_grad=True)
    with pytest.raises(ember.AutogradError, match=r"input 1 \(shape \(1,\)\) is not reachable.*allow_unused=True"):
        ember.grad((x * 2).sum(), [x, z], retain_graph=True)
    gx, gz = ember.grad((x * 2).sum(), [x, z], allow_unused=True)
    np.testing.assert_allclose(gx.data, [2, 2])
    assert gz is None
    # an output that does not depend on any input at all
    c = ember.tensor([1.0]) * 2
    assert ember.grad(c.sum(), [x], allow_unused=True) == (None,)


def test_retain_graph():
    x = ember.tensor([1.0, 2.0], requires_grad=True)
    y = (x.exp() * x).sum()
    y.backward(retain_graph=True)
    first = x.grad.data.copy()
    y.backward()  # allowed: the graph was retained
    np.testing.assert_allclose(x.grad.data, 2 * first)
    with pytest.raises(ember.AutogradError, match="retain_graph=True"):
        y.backward()  # its buffers are freed now
    y2 = (x.exp() * x).sum()
    ember.grad(y2, x)
    with pytest.raises(ember.AutogradError, match=r"second time.*retain_graph"):
        ember.grad(y2, x)


def test_errors():
    x = ember.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(ember.AutogradError, match=r"only for scalar outputs.*shape \(2,\)"):
        (x * 2).backward()
    with pytest.raises(ember.ShapeError, match=r"backward: gradient has shape \(3,\) but the output has shape \(2,\)"):
        (x * 2).backward(ember.ones(3))
    with pytest.raises(ember.ShapeError, match=r"grad: gradient has shape \(2,\) but the output has shape \(\)"):
        ember.grad((x * x).sum(), x, grad_outputs=ember.ones(2))
    c = ember.tensor([1.0, 2.0])
    with pytest.raises(ember.AutogradError, match=r"grad: inputs\[0\] \(shape \(2,\)\) does not require grad"):
        ember.grad((x * c).sum(), c)
    with pytest.raises(ember.AutogradError, match="does not require grad and has no grad_fn"):
        (c * 2).sum().backward()
    with pytest.raises(ember.AutogradError, match="does not require grad"):
        ember.grad((c * 2).sum(), x)
    with pytest.raises(TypeError, match=r"grad: inputs\[0\] is list"):
        ember.grad((x * 2).sum(), [[1.0]])
    with pytest.raises(ember.AutogradError, match="got 2 grad_outputs for 1 outputs"):
        ember.grad([(x * 2).sum()], x, grad_outputs=[None, None])
    with pytest.raises(ember.DTypeError, match="only floating tensors can require gradients"):
        ember.tensor([1, 2]).requires_grad_()
    with pytest.raises(ember.AutogradError, match="non-leaf"):
        (x * 2).requires_grad_(False)


# ----------------------------------------------------------------------------- higher order


@pytest.mark.parametrize("name,f,d2", [
    ("tanh", ember.tanh, lambda v: -2 * np.tanh(v) * (1 - np.tanh(v) ** 2)),
    ("exp", ember.exp, np.exp),
    ("sigmoid", ember.sigmoid, lambda v: (s := 1 / (1 + np.exp(-v))) * (1 - s) * (1 - 2 * s)),
    ("log", ember.log, lambda v: -1 / v ** 2),
])
def test_second_derivative_pointwise(name, f, d2):
    x = leaf(6, seed=1, low=0.2 if name == "log" else -2.0)
    (g,) = ember.grad(f(x).sum(), x, create_graph=True)
    assert g.requires_grad
    (h,) = ember.grad(g.sum(), x)
    np.testing.assert_allclose(h.data, d2(x.data), rtol=1e-9)


def test_second_derivative_via_backward_create_graph():
    x = ember.tensor([1.0, 2.0], dtype="float64", requires_grad=True)
    (x ** 3).sum().backward(create_graph=True)
    g = x.grad
    assert g.requires_grad
    np.testing.assert_allclose(g.data, [3, 12])
    x.grad = None
    g.sum().backward()
    np.testing.assert_allclose(x.grad.data, [6, 12])


HESSIAN_FNS = {
    "matmul_tanh": lambda L, x, w: (x @ w).tanh().sum(),
    "softmax_weighted": lambda L, x, w: (L.softmax(x, -1) * (x @ w)[:, :4]).sum(),
    "softmax_exp": lambda L, x, w: (L.softmax(x @ w, -1) * (x @ w).exp()).sum(),
    "logsumexp_prod": lambda L, x, w: (L.logsumexp(x, 1) * (w * w).sum()).sum(),
}


@pytest.mark.parametrize("name", list(HESSIAN_FNS))
def test_double_backward_matches_finite_differences(name):
    f = HESSIAN_FNS[name]
    x, w = leaf(3, 4, seed=2), leaf(4, 5, seed=3, low=-1, high=1)

    def first(xx, ww):  # the gradient, as a differentiable function of the inputs
        gx, gw = ember.grad(f(ember, xx, ww), [xx, ww], create_graph=True)
        return gx, gw

    assert gradcheck(first, [x, w], atol=1e-6, rtol=1e-5)


@needs_torch
@pytest.mark.parametrize("name", list(HESSIAN_FNS))
def test_double_backward_matches_torch(name):
    f = HESSIAN_FNS[name]
    X, W = rand(3, 4, seed=2), rand(4, 5, seed=3, low=-1, high=1)
    V = rand(3, 4, seed=4)
    x = ember.tensor(X, dtype="float64", requires_grad=True)
    w = ember.tensor(W, dtype="float64", requires_grad=True)
    xt, wt = torch.tensor(X, requires_grad=True), torch.tensor(W, requires_grad=True)
    gx, gw = ember.grad(f(ember, x, w), [x, w], create_graph=True)
    gxt, gwt = torch.autograd.grad(f(torch, xt, wt), [xt, wt], create_graph=True)
    np.testing.assert_allclose(gx.data, gxt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gw.data, gwt.detach().numpy(), rtol=1e-10, atol=1e-12)
    s = (gx * ember.tensor(V)).sum() + (gw * gw).sum()
    st = (gxt * torch.tensor(V)).sum() + (gwt * gwt).sum()
    hx, hw = ember.grad(s, [x, w])
    hxt, hwt = torch.autograd.grad(st, [xt, wt])
    np.testing.assert_allclose(hx.data, hxt.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(hw.data, hwt.numpy(), rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- grad mode


def test_no_grad_enable_grad_context_managers():
    x = ember.tensor([1.0], requires_grad=True)
    with ember.no_grad():
        assert not ember.is_grad_enabled()
        y = x * 2
        with ember.enable_grad():
            assert ember.is_grad_enabled()
            z = x * 2
        assert not ember.is_grad_enabled()
    assert ember.is_grad_enabled()
    assert not y.requires_grad and y.grad_fn is None
    assert z.requires_grad and z.grad_fn is not None
    with ember.set_grad_enabled(False):
        assert not (x * 2).requires_grad
    with ember.set_grad_enabled(True):
        assert (x * 2).requires_grad
    # the mode is restored when the block raises
    with pytest.raises(ValueError), ember.no_grad():
        raise ValueError
    assert ember.is_grad_enabled()


def test_grad_mode_decorators():
    x = ember.tensor([1.0], requires_grad=True)

    @ember.no_grad()
    def f():
        return x * 2

    @ember.no_grad
    def f_bare():
        return x * 2

    @ember.set_grad_enabled(False)
    def g():
        return x * 2

    @ember.enable_grad()
    def h():
        return x * 2

    assert ember.is_grad_enabled()  # decorating changes nothing by itself
    assert not f().requires_grad and not f_bare().requires_grad and not g().requires_grad
    with ember.no_grad():
        assert h().requires_grad
        assert not ember.is_grad_enabled()
    assert ember.is_grad_enabled()

    @ember.no_grad()
    def recurse(n):
        assert not ember.is_grad_enabled()
        return 0 if n == 0 else recurse(n - 1)

    recurse(3)
    assert ember.is_grad_enabled()


def test_set_grad_enabled_as_a_function():
    try:
        ember.set_grad_enabled(False)
        assert not ember.is_grad_enabled()
        assert not (ember.tensor([1.0], requires_grad=True) * 2).requires_grad
    finally:
        ember.set_grad_enabled(True)
    assert ember.is_grad_enabled()


def test_grad_mode_is_thread_local():
    seen = []
    with ember.no_grad():
        t = threading.Thread(target=lambda: seen.append(ember.is_grad_enabled()))
        t.start()
        t.join()
    assert seen == [True]


# ----------------------------------------------------------------------------- detach / requires_grad / retain_grad


def test_detach_shares_data_and_version():
    x = ember.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2
    d = y.detach()
    assert not d.requires_grad and d.grad_fn is None and d.is_leaf
    assert np.shares_memory(d.data, y.data)
    v = y._version[0]
    d.add_(1)
    assert y._version[0] == v + 1
    np.testing.assert_allclose(y.data, [3, 5])
    z = x * 3
    assert z.detach_() is z and not z.requires_grad and z.grad_fn is None


def test_requires_grad_():
    x = ember.tensor([1.0, 2.0])
    assert x.requires_grad_() is x and x.requires_grad and x.is_leaf
    x.requires_grad_(False)
    assert not x.requires_grad
    y = ember.ones(2, requires_grad=True)
    assert (y * 2).requires_grad and not (y * 2).is_leaf


def test_retain_grad_on_non_leaf():
    x = ember.tensor([1.0, 2.0, 3.0], requires_grad=True)
    a = x * 2
    a.retain_grad()
    a.retain_grad()  # twice is the same as once
    b = x * 3  # not retained
    (a * a + b).sum().backward(retain_graph=True)
    np.testing.assert_allclose(a.grad.data, 2 * a.data)
    np.testing.assert_allclose(x.grad.data, 8 * x.data + 3)
    assert b.grad is None
    (a * a + b).sum().backward()
    np.testing.assert_allclose(a.grad.data, 4 * a.data)  # accumulates like a leaf's
    x.retain_grad()  # a no-op on a leaf
    assert x.grad is not None


def test_retained_grad_sees_hook_changes_regardless_of_order():
    x = ember.tensor([1.0, 2.0], requires_grad=True)
    a = x * 2
    a.retain_grad()
    a.register_hook(lambda g: g * 100)  # registered after retain_grad, still applied first (as in PyTorch)
    (a * a).sum().backward()
    np.testing.assert_allclose(a.grad.data, 200 * a.data)
    np.testing.assert_allclose(x.grad.data, 400 * a.data)


def test_retained_grad_is_not_aliased_with_a_leaf_grad():
    x = ember.tensor([1.0, 2.0], requires_grad=True)
    a = x.clone()
    a.retain_grad()
    (a * 3).sum().backward(retain_graph=True)
    (a * 3).sum().backward()
    np.testing.assert_allclose(x.grad.data, [6, 6])
    np.testing.assert_allclose(a.grad.data, [6, 6])


# ----------------------------------------------------------------------------- hooks


def test_register_hook_on_leaf_modifies_and_removes():
    x = ember.tensor([1.0, 2.0, 3.0], requires_grad=True)
    seen = []
    h1 = x.register_hook(lambda g: seen.append(g.data.copy()))
    h2 = x.register_hook(lambda g: g * 10)
    (x * x + x).sum().backward()  # x used twice: the hook sees the summed gradient, once
    assert len(seen) == 1
    np.testing.assert_allclose(seen[0], 2 * x.data + 1)
    np.testing.assert_allclose(x.grad.data, 10 * (2 * x.data + 1))
    h1()
    h2()
    h2()  # removing twice is harmless
    x.grad = None
    (x * x).sum().backward()
    assert len(seen) == 1
    np.testing.assert_allclose(x.grad.data, 2 * x.data)
    with pytest.raises(ember.AutogradError, match="does not require grad"):
        ember.ones(2).register_hook(lambda g: g)


def test_register_hook_on_non_leaf():
    x = ember.tensor([1.0, 2.0], requires_grad=True)
    a = x * 2
    h = a.register_hook(lambda g: g * 0 + 1)  # replace a's gradient by ones
    (a * a).sum().backward()
    np.testing.assert_allclose(x.grad.data, [2, 2])
    h()
    x.grad = None
    b = x * 2
    b.register_hook(lambda g: None)  # returning None keeps the gradient
    (b * b).sum().backward()
    np.testing.assert_allclose(x.grad.data, 8 * x.data)


def test_hooks_run_in_grad_too():
    x = ember.tensor([1.0, 2.0], requires_grad=True)
    a = x * 2
    a.register_hook(lambda g: g * 10)
    (gx,) = ember.grad((a * a).sum(), x)
    np.testing.assert_allclose(gx.data, 10 * 4 * a.data)


def test_post_accumulate_grad_hook_fires_once_when_grad_is_final():
    w = ember.tensor([1.0, 2.0], requires_grad=True)
    calls = []
    handle = w.register_post_accumulate_grad_hook(lambda t: calls.append(t.grad.data.copy()))
    y = (w * w).sum() + (w * 3).sum() + w.exp().sum()  # w used three times
    y.backward(retain_graph=True)
    assert len(calls) == 1
    np.testing.assert_allclose(calls[0], 2 * w.data + 3 + np.exp(w.data), rtol=1e-6)
    y.backward()  # once per backward
    assert len(calls) == 2
    np.testing.assert_allclose(calls[1], 2 * calls[0], rtol=1e-6)
    handle()
    (w * 1).sum().backward()
    assert len(calls) == 2
    with pytest.raises(ember.AutogradError, match="only leaf tensors"):
        (w * 2).register_post_accumulate_grad_hook(lambda t: None)
    ember.grad((w * w).sum(), w)  # grad() accumulates nothing, so no post-accumulate hook
    assert len(calls) == 2


def _linear_chain(lib, n_layers, make):
    params, events, acts = [], [], []
    h = make((2, 4), 0, False)
    for i in range(n_layers):
        w, b = make((4, 4), 2 * i + 1, True), make((4,), 2 * i + 2, True)
        params += [(f"w{i}", w), (f"b{i}", b)]
        h = (h @ w + b).tanh()
        acts.append(h)
    for name, p in params:
        p.register_post_accumulate_grad_hook(lambda t, name=name: events.append(name))
    acts[0].register_hook(lambda g: events.append("act0"))
    return h, params, events


def test_post_accumulate_hooks_fire_last_layer_first():
    def make(shape, seed, rg):
        return ember.tensor(rand(*shape, seed=seed), requires_grad=rg)

    out, params, events = _linear_chain(ember, 3, make)
    out.sum().backward()
    layers = [int(e[1]) for e in events if e != "act0"]
    assert sorted(events[:2]) == ["b2", "w2"]  # the last layer's parameters come first
    assert layers == sorted(layers, reverse=True) and len(layers) == 6
    # a parameter's hook fires as soon as its gradient is final: layers 2 and 1 are done before the
    # backward pass reaches the first layer's activation
    assert events.index("act0") > events.index("w1")
    for _, p in params:
        assert p.grad is not None
    if torch is not None:
        def tmake(shape, seed, rg):
            return torch.tensor(rand(*shape, seed=seed), dtype=torch.float32, requires_grad=rg)

        tout, _, tevents = _linear_chain(torch, 3, tmake)
        tout.sum().backward()
        assert [int(e[1]) for e in tevents if e != "act0"] == layers


# ----------------------------------------------------------------------------- deep graphs and memory


def test_deep_chain_has_no_recursion_limit():
    x = ember.tensor([1.0], dtype="float64", requires_grad=True)
    y = x
    for _ in range(20000):
        y = y * 1.0001
    y.sum().backward()
    np.testing.assert_allclose(x.grad.data, [1.0001 ** 20000], rtol=1e-9)


def test_saved_tensors_are_freed_after_backward():
    x = ember.tensor([1.0, 2.0], requires_grad=True)
    h = x.exp()
    node = h.grad_fn
    y = (h * h).sum()  # mul saves h itself
    ref = weakref.ref(h)
    del h
    gc.collect()
    assert ref() is not None  # kept alive by the tape
    y.backward()
    gc.collect()
    assert ref() is None  # ... and freed by backward
    assert node.released
    with pytest.raises(ember.AutogradError, match="retain_graph"):
        node.inputs


def test_saved_tensors_kept_with_retain_graph():
    x = ember.tensor([1.0, 2.0], requires_grad=True)
    h = x.exp()
    y = (h * h).sum()
    ref = weakref.ref(h)
    del h
    y.backward(retain_graph=True)
    gc.collect()
    assert ref() is not None
    assert not y.grad_fn.released


# ----------------------------------------------------------------------------- in-place operations


def test_inplace_on_leaf_requiring_grad_raises():
    x = ember.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(ember.AutogradError, match=r"leaf tensor that requires grad.*in-place"):
        x.add_(1)
    with pytest.raises(ember.AutogradError, match="leaf tensor"):
        x *= 2
    with ember.no_grad():  # allowed as an optimizer-style update
        x.sub_(0.5)
    np.testing.assert_allclose(x.data, [0.5, 1.5])
    assert x.is_leaf and x.requires_grad


def test_modifying_a_saved_output_raises_at_backward():
    x = ember.tensor([1.0, 2.0], requires_grad=True)
    y = x.exp()
    y.add_(1)
    with pytest.raises(ember.AutogradError, match=r"exp: its output .* modified by an in-place operation"):
        y.sum().backward()


def test_modifying_a_saved_input_raises_at_backward():
    x = ember.tensor([1.0, 2.0], requires_grad=True)
    a = x * 1
    b = a * a
    a.mul_(2)
    with pytest.raises(ember.AutogradError, match=r"mul: input 0 .* modified by an in-place operation"):
        b.sum().backward()


def test_inplace_on_non_leaf_is_recorded():
    x = ember.tensor([1.0, 2.0], requires_grad=True)
    a = x * 1
    a.mul_(3)
    assert a.grad_fn is not None and a.grad_fn.name == "mul"
    a.sum().backward()
    np.testing.assert_allclose(x.grad.data, [3, 3])
    x.grad = None
    b = x * 1
    b.add_(x)  # b = 2x
    b.exp_()
    b.sum().backward()
    np.testing.assert_allclose(x.grad.data, 2 * np.exp(2 * x.data), rtol=1e-6)


def test_version_counters():
    x = ember.tensor([1.0, 2.0])
    assert x._version[0] == 0
    x.add_(1)
    x.mul_(2)
    x.zero_()
    assert x._version[0] == 3
    v = x.reshape(2, 1)  # a view shares the counter
    with ember.no_grad():
        v.add_(1)
    assert x._version[0] == 4
    np.testing.assert_allclose(x.data, [1, 1])
    c = x.clone()  # a copy does not
    c.add_(1)
    assert x._version[0] == 4


# ----------------------------------------------------------------------------- gradcheck


@pytest.fixture()
def bad_square():
    """A custom op whose vjp is wrong (forgets the factor 2), kept out of the shared registry."""
    op = Op("test_bad_square", infer=lambda x: (x.shape, x.dtype), impl=lambda xp, x: x * x,
            vjp=lambda ctx, g: (g * ctx.inputs[0],))
    REGISTRY.pop("test_bad_square")
    yield op


def test_gradcheck_passes_on_correct_functions():
    x, w = leaf(3, 4, seed=5), leaf(4, 2, seed=6)
    assert gradcheck(lambda a, b: (a @ b).tanh(), [x, w])
    assert gradcheck(lambda a: ember.softmax(a, -1), [x])
    # a non-differentiable argument and a multi-output function
    assert gradcheck(lambda a, i: ember.gather(a, 1, i), [x, ember.tensor([[0], [3], [1]])])
    assert gradcheck(lambda a: tuple(ember.max(a, 1)), [x])


def test_gradcheck_catches_a_wrong_vjp(bad_square):
    x = leaf(5, seed=7)
    out = apply(bad_square, x)
    np.testing.assert_allclose(out.data, x.data ** 2)
    with pytest.raises(ember.AutogradError, match=r"gradcheck: gradient of input 0 \(shape \(5,\)\) differs"):
        gradcheck(lambda a: apply(bad_square, a), [x])
    assert gradcheck(lambda a: apply(bad_square, a), [x], raise_exception=False) is False
    with pytest.raises(ember.AutogradError, match="no input requires grad"):
        gradcheck(lambda a: a * 2, [ember.ones(2)])


# ----------------------------------------------------------------------------- forward mode


def _fd_jvp(f, xs, ts, eps=1e-6):
    plus = f(*[ember.tensor(x.data + eps * t.data) for x, t in zip(xs, ts)])
    minus = f(*[ember.tensor(x.data - eps * t.data) for x, t in zip(xs, ts)])
    return (plus.data - minus.data) / (2 * eps)


def _vjp_jvp(f, xs, ts):
    """J @ t with J assembled row by row from reverse mode."""
    ins = [ember.tensor(x.data, requires_grad=True) for x in xs]
    out = f(*ins)
    flat = np.zeros(out.numel())
    for k in range(out.numel()):
        onehot = np.zeros(out.numel())
        onehot[k] = 1.0
        grads = ember.grad(out, ins, grad_outputs=ember.tensor(onehot.reshape(out.shape), dtype="float64"),
                           retain_graph=True, allow_unused=True)
        flat[k] = sum(float(np.sum(g.data * t.data)) for g, t in zip(grads, ts) if g is not None)
    return flat.reshape(out.shape)


_IDX = np.array([[0, 0], [1, 3], [2, 2]])

JVP_CASES = {
    "exp": (lambda x: x.exp(), [(3, 4)]),
    "tanh_mul_broadcast": (lambda x, y: (x * y).tanh(), [(3, 4), (4,)]),
    "div": (lambda x, y: x / (y * y + 1), [(3, 4), (3, 4)]),
    "sigmoid_sub_scalar": (lambda x: 2 - x.sigmoid(), [(3, 4)]),
    "sum": (lambda x: x.sum(1), [(3, 4)]),
    "sum_all": (lambda x: x.sum(), [(3, 4)]),
    "mean_keepdim": (lambda x: x.mean((0, 1), keepdim=True), [(3, 4)]),
    "amax": (lambda x: x.amax(1), [(3, 4)]),
    "prod": (lambda x: x.prod(1), [(3, 4)]),
    "reshape": (lambda x: x.reshape(4, 3), [(3, 4)]),
    "permute": (lambda x: x.permute(1, 0, 2), [(2, 3, 4)]),
    "expand": (lambda x: x.expand(5, 3, 4), [(3, 1)]),
    "gather": (lambda x: x.gather(1, ember.tensor(_IDX)), [(3, 4)]),
    "matmul": (lambda x, y: x @ y, [(3, 4), (4, 5)]),
    "batched_matmul": (lambda x, y: x @ y, [(2, 3, 4), (4, 5)]),
    "softmax": (lambda x: ember.softmax(x, -1), [(3, 4)]),
    "logsumexp": (lambda x: ember.logsumexp(x, -1), [(3, 4)]),
    "var": (lambda x: ember.var(x, 0), [(3, 4)]),
    "cumsum": (lambda x: ember.cumsum(x, 1), [(3, 4)]),
}


@pytest.mark.parametrize("name", list(JVP_CASES))
def test_jvp_matches_finite_differences_and_reverse_mode(name):
    f, shapes = JVP_CASES[name]
    rng = np.random.default_rng(len(name))
    xs = [ember.tensor(rng.uniform(-2, 2, s), dtype="float64") for s in shapes]
    ts = [ember.tensor(rng.standard_normal(s), dtype="float64") for s in shapes]
    out, tan = ember.jvp(f, xs, ts)
    np.testing.assert_allclose(out.data, f(*xs).data, rtol=1e-12)
    assert tan.shape == out.shape and tan.dtype is ember.float64
    assert not tan.requires_grad
    np.testing.assert_allclose(tan.data, _fd_jvp(f, xs, ts), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(tan.data, _vjp_jvp(f, xs, ts), rtol=1e-9, atol=1e-12)


def test_jvp_multiple_outputs_and_constant_outputs():
    x = ember.tensor([1.0, 2.0], dtype="float64")
    t = ember.tensor([1.0, 0.5], dtype="float64")
    (a, _, _), (ta, tb, tc) = ember.jvp(lambda v: (v * v, v.sum(), ember.ones(3)), [x], [t])
    np.testing.assert_allclose(ta.data, 2 * x.data * t.data)
    np.testing.assert_allclose(tb.data, 1.5)
    np.testing.assert_array_equal(tc.data, np.zeros(3))  # no dependence on the primal: zero tangent
    assert x._tangent is None and a._tangent is None  # nothing leaks out of jvp


def test_jvp_errors():
    x = ember.ones(3)
    with pytest.raises(ember.AutogradError, match="got 1 primals but 2 tangents"):
        ember.jvp(lambda v: v, [x], [x, x])
    with pytest.raises(ember.ShapeError, match=r"primal 0 has shape \(3,\) but its tangent has shape \(2,\)"):
        ember.jvp(lambda v: v, [x], [ember.ones(2)])
    with pytest.raises(TypeError, match="must be Tensors"):
        ember.jvp(lambda v: v, [[1.0]], [x])
    with pytest.raises(ember.AutogradError, match="nested"):
        ember.jvp(lambda v: ember.jvp(lambda u: u, [v], [v])[1], [x], [x])


def test_jvp_pow_exponent_tangent():
    x = ember.tensor([1.5, 2.0], dtype="float64")
    y = ember.tensor([2.0, 0.5], dtype="float64")
    _, tan = ember.jvp(lambda a, b: a ** b, [x, y], [ember.zeros_like(x), ember.ones_like(y)])
    np.testing.assert_allclose(tan.data, x.data ** y.data * np.log(x.data))


def test_jvp_through_non_differentiable_ops():
    x = ember.tensor([[1.0, -2.0], [3.0, 0.5]], dtype="float64")
    t = ember.ones_like(x)
    _, tan = ember.jvp(lambda v: ember.where(v > 0, v * v, -v), [x], [t])
    np.testing.assert_allclose(tan.data, np.where(x.data > 0, 2 * x.data, -1))
    _, tan = ember.jvp(lambda v: ember.max(v, 1).values, [x], [t])
    np.testing.assert_allclose(tan.data, [1, 1])


def test_integer_outputs_do_not_require_grad():
    x = ember.tensor([1.5, 2.5], requires_grad=True)
    assert not x.long().requires_grad
    assert x.long().grad_fn is None
