"""Layers against PyTorch: same weights (loaded from torch's state_dict), same outputs and gradients,
same state-dict keys and repr; default initialization; error messages; BatchNorm's running statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest

import ember
from ember.nn.activation import (
    ELU,
    GELU,
    Hardtanh,
    LeakyReLU,
    LogSigmoid,
    LogSoftmax,
    ReLU,
    ReLU6,
    Sigmoid,
    SiLU,
    Softmax,
    Softplus,
    Tanh,
)
from ember.nn.containers import Sequential
from ember.nn.conv import Conv2d
from ember.nn.dropout import Dropout
from ember.nn.linear import Bilinear, Flatten, Identity, Linear, Unflatten
from ember.nn.norm import BatchNorm1d, BatchNorm2d, LayerNorm
from ember.nn.pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d

try:
    import torch
except ImportError:  # pragma: no cover - depends on the machine
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def load_from_torch(em: ember.nn.Module, tm) -> None:
    """Copy a torch module's state into the ember module through numpy arrays (keys must match)."""
    assert list(em.state_dict()) == list(tm.state_dict())
    em.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})


def compare(em, tm, *arrays: np.ndarray, atol: float = 1e-5, rtol: float = 1e-4, grad: bool = True) -> None:
    """Forward both modules on the same inputs, then backward a random projection of the output and
    compare the input gradients and every parameter's gradient by name."""
    e_in = [ember.tensor(a, requires_grad=grad and a.dtype.kind == "f") for a in arrays]
    t_in = [torch.tensor(a, requires_grad=grad and a.dtype.kind == "f") for a in arrays]
    e_out, t_out = em(*e_in), tm(*t_in)
    np.testing.assert_allclose(e_out.detach().numpy(), t_out.detach().numpy(), atol=atol, rtol=rtol)
    if not grad:
        return
    proj = _rng(7).standard_normal(e_out.shape).astype(np.float32)
    (e_out * ember.tensor(proj)).sum().backward()
    (t_out * torch.tensor(proj)).sum().backward()
    for e, t in zip(e_in, t_in):
        if t.grad is not None:
            np.testing.assert_allclose(e.grad.numpy(), t.grad.numpy(), atol=atol * 10, rtol=rtol * 10)
    t_params = dict(tm.named_parameters())
    for name, p in em.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), t_params[name].grad.numpy(), atol=atol * 10, rtol=rtol * 10,
                                   err_msg=f"gradient of {name}")


# ----------------------------------------------------------------------------- Linear and friends


def test_linear_default_init_bounds_and_shapes():
    ember.manual_seed(1)
    layer = Linear(50, 400)
    w, b = layer.weight.detach().numpy(), layer.bias.detach().numpy()
    bound = 1 / math.sqrt(50)
    assert w.shape == (400, 50) and b.shape == (400,)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.97 * bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.02 * bound  # U(-a, a) has std a / sqrt(3)
    assert np.abs(b).max() <= bound and layer.weight.requires_grad and layer.weight.is_leaf
    ember.manual_seed(1)
    np.testing.assert_array_equal(Linear(50, 400).weight.detach().numpy(), w)  # seeded: reproducible
    assert Linear(3, 4, bias=False).bias is None
    assert Linear(3, 4, dtype=ember.float64).weight.dtype is ember.float64


@needs_torch
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5, 3), (2, 4, 3), (3,)])
def test_linear_matches_torch(bias, shape):
    tm = torch.nn.Linear(3, 4, bias=bias)
    em = Linear(3, 4, bias=bias)
    assert repr(em) == repr(tm)
    load_from_torch(em, tm)
    compare(em, tm, _rng().standard_normal(shape).astype(np.float32))


def test_linear_errors_name_layer_and_shapes():
    layer = Linear(3, 4)
    with pytest.raises(ember.ShapeError, match=r"Linear: expected input of shape \(\*, 3\).*got \(2, 5\)"):
        layer(ember.randn(2, 5))
    with pytest.raises(ember.ShapeError, match="Linear"):
        layer(ember.tensor(1.0))
    with pytest.raises(ValueError, match="in_features"):
        Linear(-1, 3)


@needs_torch
def test_bilinear_matches_torch():
    tm = torch.nn.Bilinear(3, 2, 4)
    em = Bilinear(3, 2, 4)
    assert repr(em) == repr(tm)
    load_from_torch(em, tm)
    r = _rng()
    compare(em, tm, r.standard_normal((2, 5, 3)).astype(np.float32), r.standard_normal((2, 5, 2)).astype(np.float32))
    with pytest.raises(ember.ShapeError, match="Bilinear"):
        em(ember.randn(5, 3), ember.randn(5, 3))


def test_bilinear_init_bounds():
    w = Bilinear(16, 3, 50).weight.detach().numpy()
    assert np.abs(w).max() <= 0.25 and np.abs(w).max() > 0.24


@needs_torch
def test_flatten_unflatten_identity():
    x = _rng().standard_normal((2, 3, 4, 5)).astype(np.float32)
    for em, tm in ((Flatten(), torch.nn.Flatten()), (Flatten(0, 2), torch.nn.Flatten(0, 2)),
                   (Unflatten(1, (3, 1)), torch.nn.Unflatten(1, (3, 1))),
                   (Unflatten(-1, (-1, 5)), torch.nn.Unflatten(-1, (-1, 5))),
                   (Identity(7, foo=1), torch.nn.Identity(7, foo=1))):
        assert repr(em) == repr(tm)
        compare(em, tm, x)
    with pytest.raises(ember.ShapeError, match=r"Unflatten: cannot split dimension 1 of size 3"):
        Unflatten(1, (2, 2))(ember.tensor(x))
    with pytest.raises(ember.ShapeError, match="Flatten"):
        Flatten(1, 5)(ember.tensor(x))


# ----------------------------------------------------------------------------- Conv2d


CONV_CASES = [
    {"in_channels": 3, "out_channels": 4, "kernel_size": 3},
    {"in_channels": 2, "out_channels": 4, "kernel_size": (3, 2), "stride": 2, "padding": 1, "bias": False},
    {"in_channels": 4, "out_channels": 6, "kernel_size": 3, "padding": "same", "dilation": 2, "groups": 2},
    {"in_channels": 2, "out_channels": 3, "kernel_size": (2, 4), "padding": "same"},
    {"in_channels": 2, "out_channels": 2, "kernel_size": 3, "padding": "valid", "stride": (1, 2)},
    {"in_channels": 2, "out_channels": 2, "kernel_size": 3, "padding": (1, 2), "padding_mode": "reflect"},
    {"in_channels": 2, "out_channels": 2, "kernel_size": 3, "padding": "same", "padding_mode": "replicate"},
    {"in_channels": 2, "out_channels": 2, "kernel_size": (3, 2), "padding": 1, "padding_mode": "circular"},
]


@needs_torch
@pytest.mark.parametrize("kw", CONV_CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_conv2d_matches_torch(kw):
    tm = torch.nn.Conv2d(**kw)
    em = Conv2d(**kw)
    assert repr(em) == repr(tm)
    load_from_torch(em, tm)
    compare(em, tm, _rng().standard_normal((2, kw["in_channels"], 7, 8)).astype(np.float32))


@needs_torch
def test_conv2d_unbatched_input():
    tm, em = torch.nn.Conv2d(2, 3, 3, padding=1), Conv2d(2, 3, 3, padding=1)
    load_from_torch(em, tm)
    compare(em, tm, _rng().standard_normal((2, 5, 5)).astype(np.float32))


def test_conv2d_init_bounds():
    layer = Conv2d(4, 64, 3, groups=2)
    bound = 1 / math.sqrt(2 * 3 * 3)  # fan_in = in_channels / groups * kh * kw
    w, b = layer.weight.detach().numpy(), layer.bias.detach().numpy()
    assert w.shape == (64, 2, 3, 3) and b.shape == (64,)
    assert bound * 0.97 < np.abs(w).max() <= bound and np.abs(b).max() <= bound


def test_conv2d_errors():
    layer = Conv2d(3, 4, 3)
    with pytest.raises(ember.ShapeError, match=r"Conv2d: expected input of shape \(N, 3, H, W\).*got \(2, 5, 8, 8\)"):
        layer(ember.randn(2, 5, 8, 8))
    with pytest.raises(ember.ShapeError, match=r"Conv2d.*got \(3, 8\)"):
        layer(ember.randn(3, 8))
    with pytest.raises(ember.ShapeError, match="divisible by groups"):
        Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="strided"):
        Conv2d(3, 4, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="padding_mode"):
        Conv2d(3, 4, 3, padding_mode="mirror")
    with pytest.raises(ValueError, match="padding must be"):
        Conv2d(3, 4, 3, padding="full")


# ----------------------------------------------------------------------------- pooling


@needs_torch
@pytest.mark.parametrize("make", [
    lambda nn: nn.MaxPool2d(2),
    lambda nn: nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
    lambda nn: nn.MaxPool2d((2, 3), dilation=(1, 2)),
    lambda nn: nn.AvgPool2d(2),
    lambda nn: nn.AvgPool2d(3, 2, 1, count_include_pad=False),
    lambda nn: nn.AdaptiveAvgPool2d((3, None)),
    lambda nn: nn.AdaptiveAvgPool2d(4),
    lambda nn: nn.AdaptiveAvgPool2d(1),
])
def test_pooling_matches_torch(make):
    em = make(ember.nn.pooling)
    tm = make(torch.nn)
    assert repr(em) == repr(tm)
    compare(em, tm, _rng().standard_normal((2, 3, 7, 9)).astype(np.float32))
    compare(em, tm, _rng().standard_normal((3, 7, 9)).astype(np.float32))


@needs_torch
def test_maxpool_return_indices():
    x = _rng().standard_normal((2, 3, 6, 6)).astype(np.float32)
    ev, ei = MaxPool2d(2, return_indices=True)(ember.tensor(x))
    tv, ti = torch.nn.MaxPool2d(2, return_indices=True)(torch.tensor(x))
    np.testing.assert_array_equal(ev.numpy(), tv.numpy())
    np.testing.assert_array_equal(ei.numpy(), ti.numpy())


def test_pooling_errors():
    for layer in (MaxPool2d(2), AvgPool2d(2), AdaptiveAvgPool2d(2)):
        name = type(layer).__name__
        with pytest.raises(ember.ShapeError, match=rf"{name}: expected a 3-D .* got shape \(4, 4\)"):
            layer(ember.randn(4, 4))


# ----------------------------------------------------------------------------- BatchNorm / LayerNorm


def test_batchnorm_parameters_buffers_and_init():
    bn = BatchNorm2d(3)
    assert list(bn.state_dict()) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    np.testing.assert_array_equal(bn.weight.detach().numpy(), np.ones(3))
    np.testing.assert_array_equal(bn.bias.detach().numpy(), np.zeros(3))
    np.testing.assert_array_equal(bn.running_var.numpy(), np.ones(3))
    assert bn.num_batches_tracked.dtype is ember.int64 and bn.num_batches_tracked.item() == 0
    assert [n for n, _ in bn.named_parameters()] == ["weight", "bias"]
    plain = BatchNorm1d(3, affine=False, track_running_stats=False)
    assert list(plain.state_dict()) == [] and plain.weight is None and plain.running_mean is None
    assert list(BatchNorm1d(3, bias=False).state_dict()) == ["weight", "running_mean", "running_var",
                                                             "num_batches_tracked"]


BN_CASES = [
    (BatchNorm1d, {}, (8, 3)),
    (BatchNorm1d, {"momentum": None}, (6, 3, 4)),
    (BatchNorm2d, {}, (4, 3, 5, 5)),
    (BatchNorm2d, {"momentum": 0.3, "affine": False}, (4, 3, 2, 3)),
    (BatchNorm2d, {"momentum": None, "bias": False}, (3, 3, 2, 2)),
    (BatchNorm2d, {"track_running_stats": False}, (4, 3, 2, 3)),
    (BatchNorm1d, {"eps": 1e-3, "track_running_stats": False, "affine": False}, (5, 3)),
]


@needs_torch
@pytest.mark.parametrize("cls, kw, shape", BN_CASES, ids=lambda v: str(v))
def test_batchnorm_matches_torch_train_and_eval(cls, kw, shape):
    em = cls(3, **kw)
    tm = getattr(torch.nn, cls.__name__)(3, **kw)
    assert repr(em) == repr(tm)
    with torch.no_grad():  # non-trivial affine parameters
        for p in tm.parameters():
            p.copy_(torch.randn(p.shape))
    load_from_torch(em, tm)
    r = _rng()
    for step in range(3):  # running statistics after a few training steps (offset, scaled batches)
        x = (r.standard_normal(shape) * (step + 1) + step).astype(np.float32)
        compare(em, tm, x, atol=1e-5, rtol=1e-4)
        for k, v in tm.state_dict().items():
            np.testing.assert_allclose(em.state_dict()[k].numpy(), v.numpy(), atol=1e-6, rtol=1e-5, err_msg=k)
    em.eval()
    tm.eval()
    compare(em, tm, r.standard_normal(shape).astype(np.float32) + 1, atol=1e-5, rtol=1e-4)
    for k, v in tm.state_dict().items():  # eval mode leaves the statistics alone
        np.testing.assert_allclose(em.state_dict()[k].numpy(), v.numpy(), atol=1e-6, rtol=1e-5)


def test_batchnorm_running_stats_by_hand():
    # Biased variance normalizes, the unbiased one feeds the running estimate; momentum None averages.
    bn = BatchNorm1d(2, momentum=None, affine=False)
    batches = [_rng(s).standard_normal((5, 2)) * (s + 1) for s in range(3)]
    for b in batches:
        y = bn(ember.tensor(b, dtype=ember.float32)).detach().numpy()
        np.testing.assert_allclose(y, (b - b.mean(0)) / np.sqrt(b.var(0) + 1e-5), atol=1e-5)
    np.testing.assert_allclose(bn.running_mean.numpy(), np.mean([b.mean(0) for b in batches], 0), atol=1e-6)
    np.testing.assert_allclose(bn.running_var.numpy(), np.mean([b.var(0, ddof=1) for b in batches], 0), atol=1e-5)
    assert bn.num_batches_tracked.item() == 3


def test_batchnorm_errors():
    with pytest.raises(ember.ShapeError, match=r"BatchNorm2d: expected input of shape \(N, 3, H, W\).*got \(2, 3\)"):
        BatchNorm2d(3)(ember.randn(2, 3))
    with pytest.raises(ember.ShapeError, match=r"BatchNorm1d: expected input of shape \(N, 4\) or \(N, 4, L\).*"
                                               r"got \(2, 3\)"):
        BatchNorm1d(4)(ember.randn(2, 3))
    with pytest.raises(ember.ShapeError, match="more than 1 value per channel"):
        BatchNorm1d(3)(ember.randn(1, 3))
    BatchNorm1d(3).eval()(ember.randn(1, 3))  # fine with running statistics


@needs_torch
@pytest.mark.parametrize("kw", [{"normalized_shape": 4}, {"normalized_shape": (3, 4)},
                                {"normalized_shape": (4,), "elementwise_affine": False},
                                {"normalized_shape": 4, "bias": False, "eps": 1e-3}])
def test_layernorm_matches_torch(kw):
    tm = torch.nn.LayerNorm(**kw)
    em = LayerNorm(**kw)
    assert repr(em) == repr(tm)
    with torch.no_grad():
        for p in tm.parameters():
            p.copy_(torch.randn(p.shape))
    load_from_torch(em, tm)
    compare(em, tm, (_rng().standard_normal((2, 3, 4)) * 3 + 1).astype(np.float32))


def test_layernorm_init_and_errors():
    ln = LayerNorm((2, 3))
    assert ln.weight.shape == (2, 3)
    assert np.all(ln.weight.detach().numpy() == 1) and np.all(ln.bias.detach().numpy() == 0)
    with pytest.raises(ember.ShapeError, match=r"LayerNorm: expected input of shape \(\*, 2, 3\).*got \(4, 3, 2\)"):
        ln(ember.randn(4, 3, 2))


# ----------------------------------------------------------------------------- Dropout


def test_dropout_module_train_eval_and_seeding():
    layer = Dropout(0.25)
    assert repr(layer) == "Dropout(p=0.25, inplace=False)"
    x = ember.ones(200, 100)
    ember.manual_seed(3)
    a = layer(x).numpy()
    ember.manual_seed(3)
    b = layer(x).numpy()
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) == {0.0, np.float32(1 / 0.75)}
    assert abs((a == 0).mean() - 0.25) < 0.01
    layer.eval()
    assert layer(x) is x
    with pytest.raises(ValueError, match="between 0 and 1"):
        Dropout(1.5)


# ----------------------------------------------------------------------------- activations


ACTIVATIONS = [
    (ReLU, {}), (ReLU6, {}), (Hardtanh, {"min_val": -0.5, "max_val": 2.0}), (LeakyReLU, {"negative_slope": 0.2}),
    (ELU, {"alpha": 0.7}), (GELU, {}), (GELU, {"approximate": "tanh"}), (SiLU, {}), (Tanh, {}), (Sigmoid, {}),
    (LogSigmoid, {}), (Softplus, {"beta": 2.0, "threshold": 5.0}), (Softmax, {"dim": 1}), (LogSoftmax, {"dim": -1}),
    (Softmax, {}),
]


@needs_torch
@pytest.mark.parametrize("cls, kw", ACTIVATIONS, ids=lambda v: str(v))
def test_activation_modules_match_torch(cls, kw):
    em, tm = cls(**kw), getattr(torch.nn, cls.__name__)(**kw)
    assert repr(em) == repr(tm)
    compare(em, tm, (_rng().standard_normal((3, 4, 5)) * 3).astype(np.float32))


@needs_torch
def test_activation_inplace_repr():
    for cls, kw in ((ReLU, {}), (LeakyReLU, {"negative_slope": 0.1}), (ELU, {}), (SiLU, {})):
        assert repr(cls(inplace=True, **kw)) == repr(getattr(torch.nn, cls.__name__)(inplace=True, **kw))


def test_softmax_bad_dim():
    with pytest.raises(ember.ShapeError, match=r"Softmax: dim 2 is out of range.*\(3, 4\)"):
        Softmax(dim=2)(ember.randn(3, 4))


# ----------------------------------------------------------------------------- a small model end to end


@needs_torch
def test_small_cnn_state_dict_keys_and_training_step_match_torch():
    def build(nn):
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Dropout(0.0), nn.Linear(4 * 4 * 4, 10), nn.LayerNorm(10))

    class NS:
        pass

    ns = NS()
    for mod in (ember.nn.conv, ember.nn.norm, ember.nn.activation, ember.nn.pooling, ember.nn.linear,
                ember.nn.dropout):
        for name in mod.__all__:
            setattr(ns, name, getattr(mod, name))
    ns.Sequential = Sequential
    em, tm = build(ns), build(torch.nn)
    assert repr(em) == repr(tm)
    load_from_torch(em, tm)
    compare(em, tm, _rng().standard_normal((4, 1, 8, 8)).astype(np.float32), atol=2e-5)
