"""Mixed precision: ember.autocast (float16 storage, float32 accumulation) and ember.amp.GradScaler.

Ops are checked against NumPy references (inputs rounded to float16, computed in float64, result
rounded) and, where PyTorch is installed, against ``torch.autocast("cpu", dtype=torch.float16)`` and
``torch.amp.GradScaler``.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import ember
import ember.nn as nn
import ember.nn.functional as F
from ember.amp import GradScaler, autocast, get_autocast_dtype, is_autocast_enabled
from ember.ops import registry

try:  # PyTorch is optional: comparisons against it are skipped without it
    import torch
except ImportError:  # pragma: no cover - depends on the machine
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
F16, F32 = ember.float16, ember.float32


def _r(*shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _h(a):
    """``a`` rounded to float16 and back to float64: what autocast feeds a low-precision op."""
    return np.asarray(a, np.float32).astype(np.float16).astype(np.float64)


def _t(a, **kw):
    return ember.tensor(a, **kw)


def _np(t):
    return t.detach().numpy()


# ----------------------------------------------------------------------------- which precision each op runs in

X, W, B = _r(4, 8), _r(3, 8, seed=1), _r(3, seed=2)
IMG, KER = _r(2, 3, 6, 6, seed=3), _r(4, 3, 3, 3, seed=4)

LOW_CASES = {  # name -> (ember fn, NumPy reference on float16-rounded float64 inputs)
    "matmul": (lambda: _t(X) @ _t(W.T.copy()), lambda: _h(X) @ _h(W.T)),
    "mm": (lambda: ember.mm(_t(X), _t(W.T.copy())), lambda: _h(X) @ _h(W.T)),
    "bmm": (lambda: ember.bmm(_t(IMG[0]), _t(IMG[1])), lambda: _h(IMG[0]) @ _h(IMG[1])),
    "linear": (lambda: F.linear(_t(X), _t(W), _t(B)), lambda: _h(X) @ _h(W).T + _h(B)),
    "linear_3d": (lambda: F.linear(_t(X.reshape(2, 2, 8)), _t(W)),
                  lambda: _h(X.reshape(2, 2, 8)) @ _h(W).T),
    "conv2d": (lambda: F.conv2d(_t(IMG), _t(KER), _t(B[:1].repeat(4)), padding=1), None),
    "sdpa": (lambda: F.scaled_dot_product_attention(_t(IMG[0]), _t(IMG[1]), _t(IMG[1, ::-1].copy())), None),
}

F32_CASES = {
    "exp": lambda x: ember.exp(x),
    "log": lambda x: ember.log(ember.abs(x)),
    "sum": lambda x: x.sum(),
    "mean": lambda x: x.mean(1),
    "var": lambda x: x.var(1),
    "norm": lambda x: ember.norm(x),
    "logsumexp": lambda x: ember.logsumexp(x, 1),
    "softmax": lambda x: F.softmax(x, -1),
    "log_softmax": lambda x: F.log_softmax(x, -1),
    "layer_norm": lambda x: F.layer_norm(x, (8,)),
    "batch_norm": lambda x: F.batch_norm(x, ember.zeros(8), ember.ones(8), training=True),
    "cross_entropy": lambda x: F.cross_entropy(x, ember.tensor([0, 1, 2, 3])),
    "nll_loss": lambda x: F.nll_loss(x, ember.tensor([0, 1, 2, 3])),
    "mse_loss": lambda x: F.mse_loss(x, ember.zeros(4, 8)),
    "pow": lambda x: x ** 2,
}

PROMOTE_CASES = {  # (fn, input dtype, expected output dtype)
    "add_mixed": (lambda x: x + x.float(), F16, F32),
    "mul_f16": (lambda x: x * x, F16, F16),
    "relu_f16": (lambda x: F.relu(x), F16, F16),
    "tanh_f16": (lambda x: ember.tanh(x), F16, F16),
    "gelu_f16": (lambda x: F.gelu(x), F16, F16),
    "amax_f16": (lambda x: x.amax(1), F16, F16),
    "relu_f32": (lambda x: F.relu(x), F32, F32),
    "add_f64": (lambda x: x + x, ember.float64, ember.float64),
}


@pytest.mark.parametrize("name", sorted(LOW_CASES))
def test_low_precision_ops_return_float16(name):
    fn, ref = LOW_CASES[name]
    plain = fn()
    with ember.autocast("cpu"):
        out = fn()
    assert plain.dtype is F32
    assert out.dtype is F16, name
    tol = 2e-3 * max(1.0, float(np.abs(plain.numpy()).max()))
    np.testing.assert_allclose(out.numpy().astype(np.float64), plain.numpy(), rtol=2e-3, atol=tol)
    if ref is not None:  # float32 accumulation of float16-rounded inputs, rounded once
        want = ref().astype(np.float16).astype(np.float64)
        np.testing.assert_allclose(out.numpy().astype(np.float64), want, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", sorted(F32_CASES))
@pytest.mark.parametrize("dtype", [F16, F32])
def test_float32_ops_run_in_float32(name, dtype):
    fn = F32_CASES[name]
    x = _t(X).to(dtype)
    with ember.autocast("cpu"):
        out = fn(x)
    assert out.dtype is F32, (name, out.dtype)
    ref = fn(x.float())  # the same input values, computed in float32 outside the region
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(PROMOTE_CASES))
def test_other_ops_use_the_widest_input_dtype(name):
    fn, din, dout = PROMOTE_CASES[name]
    with ember.autocast("cpu"):
        out = fn(_t(X).to(din))
    assert out.dtype is dout


def test_float64_and_integer_tensors_are_not_cast():
    a = _t(X).double()
    with ember.autocast("cpu"):
        assert (a @ a.T).dtype is ember.float64
        assert ember.exp(a).dtype is ember.float64
        assert (ember.arange(6).reshape(2, 3) @ ember.arange(6).reshape(3, 2)).dtype is ember.int64
        assert F.softmax(_t(X), -1, dtype=ember.float64).dtype is ember.float64  # explicit dtype= wins


def test_modules_under_autocast():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5))
    norm = nn.LayerNorm(5)
    x = _t(IMG)
    with ember.autocast("cpu"):
        h = model(x)
        y = norm(h)
    assert h.dtype is F16 and y.dtype is F32
    np.testing.assert_allclose(_np(h).astype(np.float32), _np(model(x)), rtol=5e-3, atol=5e-3)
    assert all(p.dtype is F32 for p in model.parameters())


# PyTorch's CPU lists keep softmax and layer_norm in the input dtype; Ember follows its CUDA lists (float32).
SAME_DTYPE_AS_TORCH_CPU = {"matmul", "linear", "conv2d", "bmm", "cross_entropy", "mse_loss"}


@needs_torch
@pytest.mark.parametrize("name", ["matmul", "linear", "conv2d", "bmm", "softmax", "layer_norm", "cross_entropy",
                                  "mse_loss"])
def test_matches_torch_autocast(name):
    def run(lib, x, w, b, img, ker):
        f = lib.nn.functional
        if name == "matmul":
            return x @ w.T
        if name == "linear":
            return f.linear(x, w, b)
        if name == "conv2d":
            return f.conv2d(img, ker, padding=1)
        if name == "bmm":
            return lib.bmm(img[0], img[1])
        if name == "softmax":
            return f.softmax(x @ w.T, -1)
        if name == "layer_norm":
            return f.layer_norm(x @ w.T, (3,))
        if name == "mse_loss":
            return f.mse_loss(x @ w.T, b.expand(4, 3))
        return f.cross_entropy(x @ w.T, lib.tensor([0, 1, 2, 0]))

    arrays = (X, W, B, IMG, KER)
    with ember.autocast("cpu", dtype=ember.float16):
        got = run(ember, *[ember.tensor(a) for a in arrays])
    with torch.autocast("cpu", dtype=torch.float16):
        want = run(torch, *[torch.tensor(a) for a in arrays])
    if name in SAME_DTYPE_AS_TORCH_CPU:
        assert got.dtype.name == str(want.dtype).removeprefix("torch."), (got.dtype, want.dtype)
    w = want.float().numpy()
    np.testing.assert_allclose(got.numpy().astype(np.float32), w, rtol=2e-3, atol=2e-3 * max(1, np.abs(w).max()))


def test_float32_accumulation_of_a_long_dot_product():
    """A float16 running sum stalls once its spacing exceeds the terms; autocast accumulates in float32."""
    n = 8192
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0, 1, (1, n)).astype(np.float32), rng.uniform(0, 1, (n, 1)).astype(np.float32)
    a16, b16 = a.astype(np.float16), b.astype(np.float16)
    exact = float((a16.astype(np.float64) @ b16.astype(np.float64))[0, 0])
    want = (a16.astype(np.float32) @ b16.astype(np.float32)).astype(np.float16)  # float32, then rounded
    f16_sum = np.cumsum(a16[0] * b16[:, 0], dtype=np.float16)[-1]  # what float16 accumulation gives
    assert abs(float(f16_sum) - exact) > 0.1 * exact  # visibly wrong: > 10% off
    with ember.autocast("cpu"):
        got = _t(a) @ _t(b)
        dot = ember.matmul(_t(a[0]), _t(b[:, 0]))  # the 1-D form
    assert got.dtype is F16 and dot.dtype is F16
    assert got.numpy()[0, 0] == want[0, 0]
    assert float(dot.numpy()) == want[0, 0]
    assert abs(float(got.numpy()[0, 0]) - exact) <= 2.0 ** -10 * exact  # within float16 rounding


def test_gradients_flow_through_the_casts():
    x = _t(X, requires_grad=True)
    w = _t(W, requires_grad=True)
    with ember.autocast("cpu"):
        loss = F.cross_entropy(x @ w.T, ember.tensor([0, 1, 2, 0]))
    loss.backward()
    assert x.grad.dtype is F32 and w.grad.dtype is F32
    x2, w2 = _t(X, requires_grad=True), _t(W, requires_grad=True)
    F.cross_entropy(x2 @ w2.T, ember.tensor([0, 1, 2, 0])).backward()
    np.testing.assert_allclose(x.grad.numpy(), x2.grad.numpy(), rtol=1e-2, atol=1e-3)
    np.testing.assert_allclose(w.grad.numpy(), w2.grad.numpy(), rtol=1e-2, atol=1e-3)


# ----------------------------------------------------------------------------- regions


def test_nested_and_disabled_regions():
    x = _t(X)
    assert not is_autocast_enabled("cpu") and get_autocast_dtype("cpu") is None
    with ember.autocast("cpu"):
        assert is_autocast_enabled("cpu") and get_autocast_dtype("cpu") is F16
        with ember.autocast("cpu", enabled=False):
            assert not is_autocast_enabled("cpu")
            assert (x @ x.T).dtype is F32
            with ember.autocast("cpu"):
                assert (x @ x.T).dtype is F16
            assert (x @ x.T).dtype is F32
        assert (x @ x.T).dtype is F16
    assert (x @ x.T).dtype is F32
    assert registry.AUTOCAST is None  # the dispatch hook is gone once every region is closed


def test_region_is_restored_after_an_exception():
    with pytest.raises(ZeroDivisionError), ember.autocast("cpu"):
        1 / 0
    assert not is_autocast_enabled("cpu") and registry.AUTOCAST is None


def test_decorator_form():
    assert ember.autocast is autocast and ember.GradScaler is GradScaler and ember.amp.GradScaler is GradScaler

    @autocast("cpu")
    def f(a, depth=0):
        assert is_autocast_enabled("cpu")
        return a @ a.T if depth == 0 else f(a, depth - 1)

    assert f(_t(X), depth=2).dtype is F16
    assert not is_autocast_enabled("cpu")

    @ember.autocast("cpu", enabled=False)
    def g(a):
        return a @ a.T

    with ember.autocast("cpu"):
        assert g(_t(X)).dtype is F32


def test_cuda_region_leaves_cpu_tensors_alone():
    with ember.autocast("cuda"):
        assert is_autocast_enabled("cuda") and not is_autocast_enabled("cpu")
        assert (_t(X) @ _t(X).T).dtype is F32


def test_regions_are_per_thread():
    seen = []
    inside, done = threading.Event(), threading.Event()

    def other():
        inside.wait()
        seen.append((_t(X) @ _t(X).T).dtype)
        done.set()

    th = threading.Thread(target=other)
    th.start()
    with ember.autocast("cpu"):
        inside.set()
        done.wait(10)
        assert (_t(X) @ _t(X).T).dtype is F16
    th.join()
    assert seen == [F32]


@pytest.mark.parametrize("kwargs, err, words", [
    ({"dtype": ember.int32}, ember.DTypeError, ["int32", "float16"]),
    ({"dtype": ember.float32}, ember.DTypeError, ["float32", "float16"]),
    ({"dtype": "bogus"}, ember.DTypeError, ["bogus", "float16"]),
    ({"device_type": "tpu"}, ember.DeviceError, ["tpu", "'cpu'", "'cuda'"]),
    ({"device_type": None}, ember.DeviceError, ["None", "'cpu'"]),
])
def test_autocast_errors(kwargs, err, words):
    with pytest.raises(err) as info:
        ember.autocast(**{"device_type": "cpu", **kwargs})
    for w in words:
        assert w in str(info.value)


def test_eager_fusion_cache_is_not_shared_across_regions(monkeypatch):
    """Composites compiled outside a region must not replay inside one (and the other way round)."""
    if not ember.codegen.available():
        pytest.skip("no C compiler")
    from ember.ops import compiled_composite
    monkeypatch.setenv("EMBER_EAGER_FUSION", "1")
    monkeypatch.setattr(compiled_composite, "MIN_ELEMENTS", 16)
    registry.composite_cache_clear()
    try:
        x = _t(_r(8, 32, scale=4.0)).half()
        outside = F.logsigmoid(x)  # unlisted composite over float32-list primitives
        with ember.autocast("cpu"):
            inside = F.logsigmoid(x)
            soft = F.softmax(x, -1)  # listed: cast up, then compiled in float32
        again = F.logsigmoid(x)
        assert outside.dtype is F16 and again.dtype is F16 and inside.dtype is F32 and soft.dtype is F32
        np.testing.assert_allclose(inside.numpy(), F.logsigmoid(x.float()).numpy(), rtol=1e-5, atol=1e-6)
    finally:
        registry.composite_cache_clear()


# ----------------------------------------------------------------------------- ember.jit


def _mlp(seed=0):
    ember.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((32, 16)).astype(np.float32)
    y = (x[:, :4].argmax(1)).astype(np.int64)
    return _t(x), _t(y)


def test_jit_under_autocast_matches_eager_under_autocast():
    x, y = _batch()

    def make():
        model = _mlp()
        opt = ember.optim.SGD(model.parameters(), lr=0.1)

        def step(x, y):
            opt.zero_grad()
            with ember.autocast("cpu"):
                logits = model(x)
                loss = F.cross_entropy(logits, y)
            loss.backward()
            opt.step()
            return loss, logits
        return model, step

    m_eager, eager_step = make()
    m_jit, jit_step = make()
    jit_step = ember.jit(jit_step)
    for _ in range(4):
        le, oe = eager_step(x, y)
        lj, oj = jit_step(x, y)
        assert oe.dtype is F16 and oj.dtype is F16 and lj.dtype is F32
        np.testing.assert_allclose(_np(oj).astype(np.float32), _np(oe).astype(np.float32), rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(lj.item(), le.item(), rtol=1e-4)
    assert jit_step.traces == 2 and jit_step.last is not None  # as without autocast: grads exist from call 2
    for pj, pe in zip(m_jit.parameters(), m_eager.parameters()):
        np.testing.assert_allclose(_np(pj), _np(pe), rtol=1e-4, atol=1e-5)


def test_jitted_forward_traced_under_autocast():
    model = _mlp()
    x, _ = _batch()
    fwd = ember.jit(lambda t: model(t))
    with ember.autocast("cpu"):
        want = model(x)
        got1, got2 = fwd(x), fwd(x)
    for got in (got1, got2):  # the same casts and kernels: bit for bit
        assert got.dtype is F16
        np.testing.assert_array_equal(_np(got), _np(want))


def test_jit_retraces_when_called_in_another_autocast_state():
    """A function traced outside autocast and called inside it (or the reverse) is traced again, not replayed
    in the wrong precision."""
    model = _mlp()
    x, _ = _batch()
    fwd = ember.jit(lambda t: model(t))
    assert fwd(x).dtype is F32 and fwd(x).dtype is F32
    with ember.autocast("cpu"):
        assert fwd(x).dtype is F16 and fwd(x).dtype is F16
        assert "autocast state" in fwd.explain()
    assert fwd(x).dtype is F32


def test_jitted_scale_reads_the_current_scale():
    scaler = GradScaler(init_scale=4.0)
    w = _t(np.ones(3, np.float32), requires_grad=True)

    @ember.jit
    def backward(x):
        scaler.scale((w * x).sum()).backward()

    x = _t(np.arange(3, dtype=np.float32))
    backward(x)
    np.testing.assert_array_equal(w.grad.numpy(), 4.0 * x.numpy())
    scaler.update(new_scale=16.0)
    w.grad = None
    backward(x)
    np.testing.assert_array_equal(w.grad.numpy(), 16.0 * x.numpy())


# ----------------------------------------------------------------------------- GradScaler


def _param_with_grad(value):
    p = ember.zeros(2, requires_grad=True)
    p.grad = _t(np.asarray(value, np.float32))
    return p


def test_scaler_skips_inf_steps_and_backs_off():
    p = _param_with_grad([1.0, 2.0])
    opt = ember.optim.SGD([p], lr=1.0)
    scaler = GradScaler(init_scale=8.0, growth_interval=2)
    assert scaler.step(opt) is None
    np.testing.assert_allclose(_np(p), [-1 / 8, -2 / 8])  # unscaled, then stepped
    scaler.update()
    assert scaler.get_scale() == 8.0
    p.grad = _t(np.array([np.inf, 1.0], np.float32))
    before = _np(p).copy()
    scaler.step(opt)
    np.testing.assert_array_equal(_np(p), before)  # skipped
    scaler.update()
    assert scaler.get_scale() == 4.0 and scaler.state_dict()["_growth_tracker"] == 0
    for nan_or_ok, want in ((np.nan, 2.0), (1.0, 2.0), (1.0, 4.0)):
        p.grad = _t(np.array([nan_or_ok, 1.0], np.float32))
        scaler.step(opt)
        scaler.update()
        assert scaler.get_scale() == want


def test_scaler_grows_after_growth_interval_clean_steps():
    p = _param_with_grad([1.0, 1.0])
    opt = ember.optim.SGD([p], lr=0.0)
    scaler = GradScaler(init_scale=1.0, growth_factor=3.0, growth_interval=5)
    scales = []
    for _ in range(11):
        p.grad = _t(np.ones(2, np.float32))
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
    assert scales == [1.0] * 4 + [3.0] * 5 + [9.0] * 2


def test_scale_never_grows_to_inf():
    p = _param_with_grad([1.0, 1.0])
    opt = ember.optim.SGD([p], lr=0.0)
    scaler = GradScaler(init_scale=2.0 ** 127, growth_interval=1)
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0 ** 127


PATTERN = [False, True, False, False, False, True, True, False, False, False, False, False, False, True, False]


def _ember_scales(pattern, **kw):
    p = _param_with_grad([0.0, 0.0])
    opt = ember.optim.SGD([p], lr=0.1)
    scaler = GradScaler(**kw)
    out = []
    for bad in pattern:
        p.grad = _t(np.array([np.inf if bad else 1.0, 2.0], np.float32) * np.float32(scaler.get_scale()))
        scaler.step(opt)
        scaler.update()
        out.append(scaler.get_scale())
    return out, _np(p), scaler.state_dict()


def test_scale_sequence_reference():
    scales, _, _ = _ember_scales(PATTERN, init_scale=2.0 ** 10, growth_interval=3)
    ref, s, clean = [], 2.0 ** 10, 0
    for bad in PATTERN:  # PyTorch's documented rule
        if bad:
            s, clean = s * 0.5, 0
        else:
            clean += 1
            if clean == 3:
                s, clean = s * 2.0, 0
        ref.append(s)
    assert scales == ref


@needs_torch
def test_scale_sequence_matches_torch():
    kw = {"init_scale": 2.0 ** 10, "growth_interval": 3, "growth_factor": 2.0, "backoff_factor": 0.5}
    scales, params, state = _ember_scales(PATTERN, **kw)
    p = torch.zeros(2, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", **kw)
    scaler.scale(torch.ones(()))  # creates its scale tensor
    want = []
    for bad in PATTERN:
        p.grad = torch.tensor([float("inf") if bad else 1.0, 2.0]) * scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        want.append(scaler.get_scale())
    assert scales == want
    np.testing.assert_allclose(params, p.detach().numpy(), rtol=1e-6)
    assert state == scaler.state_dict()


def test_state_dict_round_trip():
    _, _, state = _ember_scales(PATTERN[:4], init_scale=64.0, growth_interval=3)
    other = GradScaler()
    other.load_state_dict(state)
    assert other.state_dict() == state
    assert state == {"scale": 32.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 3,
                     "_growth_tracker": 2}
    assert GradScaler(enabled=False).state_dict() == {}
    with pytest.raises(ember.EmberError, match="empty"):
        other.load_state_dict({})


def test_unscale_then_clip_then_step():
    p = _param_with_grad([3.0 * 256, 4.0 * 256])
    opt = ember.optim.SGD([p], lr=1.0)
    scaler = GradScaler(init_scale=256.0)
    scaler.unscale_(opt)
    np.testing.assert_allclose(p.grad.numpy(), [3.0, 4.0])
    nn.utils.clip_grad_norm_([p], 1.0)
    scaler.step(opt)  # does not unscale twice
    np.testing.assert_allclose(_np(p), [-0.6, -0.8], rtol=1e-5)
    scaler.update()


def test_scaler_usage_errors():
    p = _param_with_grad([1.0, 1.0])
    opt = ember.optim.SGD([p], lr=0.1)
    scaler = GradScaler()
    with pytest.raises(ember.EmberError, match="no inf checks"):
        scaler.update()
    scaler.unscale_(opt)
    with pytest.raises(ember.EmberError, match="already called"):
        scaler.unscale_(opt)
    scaler.step(opt)
    with pytest.raises(ember.EmberError, match="already called"):
        scaler.step(opt)
    with pytest.raises(ember.EmberError, match="closure"):
        GradScaler().step(opt, closure=lambda: 0.0)
    half = ember.zeros(2, dtype=F16, requires_grad=True)
    half.grad = ember.ones(2, dtype=F16)
    with pytest.raises(ember.DTypeError, match="float16 gradients"):
        GradScaler().unscale_(ember.optim.SGD([half], lr=0.1))
    with pytest.raises(TypeError, match="Tensor"):
        scaler.scale(3.0)
    with pytest.raises(ember.DeviceError, match="1024"):
        GradScaler(1024.0)
    with pytest.raises(ValueError, match="growth_interval"):
        GradScaler(growth_interval=0)
    with pytest.raises(ValueError, match="backoff_factor"):
        GradScaler(backoff_factor=2.0)


def test_disabled_scaler_is_transparent():
    p = _param_with_grad([1.0, 1.0])
    opt = ember.optim.SGD([p], lr=1.0)
    scaler = GradScaler(enabled=False)
    loss = ember.tensor(2.0)
    assert scaler.scale(loss) is loss and scaler.get_scale() == 1.0
    scaler.step(opt)
    scaler.update()
    np.testing.assert_allclose(_np(p), [-1.0, -1.0])


def test_scale_handles_nested_outputs():
    scaler = GradScaler(init_scale=4.0)
    a, b = ember.tensor(1.0), ember.tensor([2.0, 3.0])
    out = scaler.scale([a, (b,)])
    assert isinstance(out, list) and isinstance(out[1], tuple)
    assert out[0].item() == 4.0 and out[1][0].numpy().tolist() == [8.0, 12.0]


def test_mlp_training_with_autocast_and_grad_scaler():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 16)).astype(np.float32)
    y = (x[:, :4].argmax(1)).astype(np.int64)
    x, y = _t(x), _t(y)
    model = _mlp()
    opt = ember.optim.Adam(model.parameters(), lr=1e-2)
    # 2**24 / 128 examples puts the logits' float16 gradient above float16's max (65504): the first
    # steps overflow, are skipped, and the scale backs off until the gradients fit.
    scaler = GradScaler(init_scale=2.0 ** 24, growth_interval=10)
    first = [_np(p).copy() for p in model.parameters()]
    losses, scales = [], []
    for _ in range(60):
        opt.zero_grad()
        with ember.autocast("cpu"):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        assert logits.dtype is F16 and loss.dtype is F32
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
        scales.append(scaler.get_scale())
        if len(scales) == 1:  # skipped: the parameters did not move
            assert all(np.array_equal(_np(p), f) for p, f in zip(model.parameters(), first))
    assert scales[:2] == [2.0 ** 23, 2.0 ** 22]
    assert all(p.dtype is F32 and p.grad.dtype is F32 for p in model.parameters())
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0], losses[::10]
