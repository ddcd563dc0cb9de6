"""``ember.nn.init``: gains and fans as PyTorch computes them, the statistics of every initializer,
orthogonality, truncation, reproducibility and in-place, no-grad semantics."""

from __future__ import annotations

import math

import numpy as np
import pytest

import ember
from ember.nn import init
from ember.nn.parameter import Parameter

try:
    import torch
except ImportError:  # pragma: no cover - depends on the machine
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")


def values(t: ember.Tensor) -> np.ndarray:
    return t.detach().numpy().astype(np.float64)


@needs_torch
@pytest.mark.parametrize("nonlinearity, param", [("linear", None), ("conv2d", None), ("sigmoid", None),
                                                 ("tanh", None), ("relu", None), ("leaky_relu", None),
                                                 ("leaky_relu", 0.2), ("leaky_relu", math.sqrt(5)), ("selu", None),
                                                 ("conv_transpose2d", None)])
def test_calculate_gain_matches_torch(nonlinearity, param):
    assert init.calculate_gain(nonlinearity, param) == pytest.approx(torch.nn.init.calculate_gain(nonlinearity, param))


def test_calculate_gain_errors():
    with pytest.raises(ValueError, match="unsupported nonlinearity"):
        init.calculate_gain("swish")
    with pytest.raises(ValueError, match="not a valid number"):
        init.calculate_gain("leaky_relu", "x")


@needs_torch
@pytest.mark.parametrize("shape", [(3, 4), (4, 3, 2, 5), (2, 3, 4), (6, 1, 3, 3), (0, 5)])
def test_fan_in_and_fan_out_match_torch(shape):
    want = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
    assert init._calculate_fan_in_and_fan_out(ember.empty(*shape)) == want


def test_fan_needs_two_dimensions():
    with pytest.raises(ember.ShapeError, match="fewer than 2 dimensions"):
        init._calculate_fan_in_and_fan_out(ember.empty(5))
    with pytest.raises(ember.ShapeError, match="fewer than 2"):
        init.xavier_uniform_(ember.empty(5))


def test_uniform_normal_constant():
    t = ember.empty(200, 500)
    assert init.uniform_(t, -2.0, 3.0) is t
    v = values(t)
    assert v.min() >= -2.0 and v.max() < 3.0 and abs(v.mean() - 0.5) < 0.02 and abs(v.std() - 5 / math.sqrt(12)) < 0.02
    v = values(init.normal_(t, 1.5, 0.5))
    assert abs(v.mean() - 1.5) < 0.005 and abs(v.std() - 0.5) < 0.005
    assert np.all(values(init.constant_(t, 0.25)) == 0.25)
    assert np.all(values(init.ones_(t)) == 1) and np.all(values(init.zeros_(t)) == 0)
    np.testing.assert_array_equal(values(init.eye_(ember.empty(3, 5))), np.eye(3, 5))
    with pytest.raises(ember.ShapeError, match="eye_"):
        init.eye_(ember.empty(2, 2, 2))


@pytest.mark.parametrize("shape", [(300, 200), (64, 32, 3, 3)])
def test_xavier(shape):
    t = ember.empty(*shape)
    receptive = int(np.prod(shape[2:]))
    fan_in, fan_out = shape[1] * receptive, shape[0] * receptive
    a = 1.5 * math.sqrt(6 / (fan_in + fan_out))
    v = values(init.xavier_uniform_(t, gain=1.5))
    assert -a <= v.min() and v.max() <= a and v.max() > 0.99 * a
    assert abs(v.std() - a / math.sqrt(3)) < 0.02 * a
    v = values(init.xavier_normal_(t, gain=1.5))
    assert abs(v.std() - 1.5 * math.sqrt(2 / (fan_in + fan_out))) < 0.02 * a and abs(v.mean()) < 0.01 * a


@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
@pytest.mark.parametrize("a, nonlinearity", [(0.0, "relu"), (math.sqrt(5), "leaky_relu"), (0.0, "tanh")])
def test_kaiming(mode, a, nonlinearity):
    t = ember.empty(120, 40, 3, 3)
    fan = 40 * 9 if mode == "fan_in" else 120 * 9
    gain = init.calculate_gain(nonlinearity, a)
    bound = gain * math.sqrt(3 / fan)
    v = values(init.kaiming_uniform_(t, a=a, mode=mode, nonlinearity=nonlinearity))
    assert -bound <= v.min() and v.max() <= bound and v.max() > 0.99 * bound
    assert abs(v.std() - gain / math.sqrt(fan)) < 0.02 * gain / math.sqrt(fan)
    v = values(init.kaiming_normal_(t, a=a, mode=mode, nonlinearity=nonlinearity))
    assert abs(v.std() - gain / math.sqrt(fan)) < 0.02 * gain / math.sqrt(fan)


def test_kaiming_errors_and_empty():
    with pytest.raises(ValueError, match="mode"):
        init.kaiming_uniform_(ember.empty(3, 3), mode="fan_avg")
    e = ember.empty(0, 3)
    assert init.kaiming_uniform_(e) is e


@pytest.mark.parametrize("shape", [(6, 10), (10, 6), (5, 5), (4, 2, 3)])
def test_orthogonal(shape):
    t = init.orthogonal_(ember.empty(*shape, dtype=ember.float64), gain=2.0)
    w = values(t).reshape(shape[0], -1)
    rows, cols = w.shape
    gram = w @ w.T if rows <= cols else w.T @ w
    np.testing.assert_allclose(gram, 4.0 * np.eye(min(rows, cols)), atol=1e-10)


def test_orthogonal_is_haar_distributed():
    # With the sign correction, Q's diagonal is symmetric around 0 (without it, R's positive diagonal
    # from QR biases it positive); check the mean of Q[0, 0] over many draws.
    firsts = [values(init.orthogonal_(ember.empty(3, 3)))[0, 0] for _ in range(400)]
    assert abs(np.mean(firsts)) < 0.1
    with pytest.raises(ember.ShapeError, match="2 or more dimensions"):
        init.orthogonal_(ember.empty(4))


@pytest.mark.parametrize("mean, std, a, b", [(0.0, 1.0, -2.0, 2.0), (1.0, 0.5, 0.0, 1.5), (0.0, 1.0, 3.0, 4.0),
                                             (0.0, 0.02, -0.04, 0.04)])
def test_trunc_normal(mean, std, a, b):
    t = init.trunc_normal_(ember.empty(100, 400, dtype=ember.float64), mean, std, a, b)
    v = values(t)
    assert v.min() >= a and v.max() <= b
    # the moments of the truncated normal, computed in closed form
    lo, hi = (a - mean) / std, (b - mean) / std
    pdf = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    z = cdf(hi) - cdf(lo)
    m = mean + std * (pdf(lo) - pdf(hi)) / z
    var = std ** 2 * (1 + (lo * pdf(lo) - hi * pdf(hi)) / z - ((pdf(lo) - pdf(hi)) / z) ** 2)
    assert abs(v.mean() - m) < 0.01 * std and abs(v.std() - math.sqrt(var)) < 0.01 * std


def test_trunc_normal_errors():
    with pytest.raises(ValueError, match="a < b"):
        init.trunc_normal_(ember.empty(3, 3), a=1.0, b=0.0)


@pytest.mark.parametrize("fn", [init.uniform_, init.normal_, init.xavier_uniform_, init.xavier_normal_,
                                init.kaiming_uniform_, init.kaiming_normal_, init.orthogonal_, init.trunc_normal_])
def test_seeded_reproducible_in_place_no_grad(fn):
    p = Parameter(ember.empty(8, 6))
    ember.manual_seed(11)
    out = fn(p)
    assert out is p and p.requires_grad and p.grad_fn is None and p.is_leaf
    first = values(p).copy()
    ember.manual_seed(11)
    fn(p)
    np.testing.assert_array_equal(values(p), first)
    g1, g2 = ember.Generator().manual_seed(3), ember.Generator().manual_seed(3)
    np.testing.assert_array_equal(values(fn(ember.empty(8, 6), generator=g1)), values(fn(ember.empty(8, 6),
                                                                                          generator=g2)))
    assert not np.array_equal(values(fn(p)), first)


def test_init_on_views_and_float16():
    base = ember.zeros(4, 6)
    init.ones_(base[1:3])
    assert values(base).sum() == 12
    h = init.uniform_(ember.empty(1000, dtype=ember.float16), -1, 1)
    assert h.dtype is ember.float16 and values(h).max() <= 1 and values(h).min() >= -1
