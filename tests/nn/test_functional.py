"""``ember.nn.functional`` (activations, linear, pooling, dropout, normalization) and the ``linear``
primitive: forward against NumPy references, gradients against float64 finite differences
(``gradcheck``) and, when installed, forward and backward against PyTorch."""

from __future__ import annotations

import math

import numpy as np
import pytest

import ember
import ember.nn.functional as F
from ember.ops.nn_ops import LINEAR, linear2d
from tests.helpers import check_forward, check_grad, check_op, check_torch, rand

try:
    import torch
    import torch.nn.functional as TF
except ImportError:  # pragma: no cover - depends on the machine
    torch = TF = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")


def nnf(lib):
    """The functional namespace of ``lib`` (ember or torch), so one lambda drives both."""
    return F if lib is ember else TF


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf)(x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


# ----------------------------------------------------------------------------- activations

# name, kwargs, NumPy reference
ACTIVATIONS = [
    ("relu", {}, lambda x: np.maximum(x, 0)),
    ("relu6", {}, lambda x: np.clip(x, 0, 6)),
    ("hardtanh", {"min_val": -0.5, "max_val": 1.5}, lambda x: np.clip(x, -0.5, 1.5)),
    ("leaky_relu", {"negative_slope": 0.1}, lambda x: np.where(x > 0, x, 0.1 * x)),
    ("elu", {"alpha": 0.5}, lambda x: np.where(x > 0, x, 0.5 * np.expm1(x))),
    ("gelu", {}, lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2)))),
    ("gelu", {"approximate": "tanh"},
     lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))),
    ("silu", {}, lambda x: x * _sigmoid(x)),
    ("sigmoid", {}, _sigmoid),
    ("tanh", {}, np.tanh),
    ("logsigmoid", {}, lambda x: -np.log1p(np.exp(-x))),
    ("softplus", {}, lambda x: np.log1p(np.exp(x))),
    ("softplus", {"beta": 2.0, "threshold": 3.0}, lambda x: np.where(2 * x > 3, x, np.log1p(np.exp(2 * x)) / 2)),
    ("softmax", {"dim": 1}, lambda x: np.exp(x) / np.exp(x).sum(1, keepdims=True)),
    ("log_softmax", {"dim": 0}, lambda x: x - np.log(np.exp(x).sum(0, keepdims=True))),
]


@pytest.mark.parametrize("name, kw, ref", ACTIVATIONS, ids=lambda v: str(v) if not callable(v) else "")
def test_activation_forward_and_gradcheck(name, kw, ref):
    x = rand(3, 5, seed=1, low=-3, high=3)
    check_forward(lambda lib, t: getattr(nnf(lib), name)(t, **kw), ref, [x], atol=1e-5, rtol=1e-5)
    check_grad(lambda lib, t: getattr(nnf(lib), name)(t, **kw), [x])


@needs_torch
@pytest.mark.parametrize("name, kw, ref", ACTIVATIONS, ids=lambda v: str(v) if not callable(v) else "")
def test_activation_matches_torch(name, kw, ref):
    x = rand(4, 6, seed=2, low=-4, high=4)
    x[0, :4] = [0.0, -0.5, 1.5, 6.0]  # the kinks: gradients at the boundaries must match torch's choice
    check_torch(lambda lib, t: getattr(nnf(lib), name)(t, **kw), [x])


@needs_torch
@pytest.mark.parametrize("name", ["logsigmoid", "softplus", "silu", "gelu", "elu", "sigmoid", "tanh"])
def test_activation_extreme_inputs_finite(name):
    x = np.array([-1000.0, -50.0, -20.5, 0.0, 20.5, 50.0, 1000.0], dtype=np.float32)
    check_torch(lambda lib, t: getattr(nnf(lib), name)(t), [x])
    t = ember.tensor(x, requires_grad=True)
    getattr(F, name)(t).sum().backward()
    assert np.all(np.isfinite(t.grad.numpy()))


def test_activation_inplace_and_errors():
    x = ember.tensor([-1.0, 2.0])
    assert F.relu(x, inplace=True) is x and x.tolist() == [0.0, 2.0]
    y = ember.tensor([-1.0, 2.0])
    F.leaky_relu(y, 0.5, inplace=True)
    assert y.tolist() == [-0.5, 2.0]
    with pytest.raises(ValueError, match="approximate"):
        F.gelu(x, approximate="fast")
    with pytest.raises(ember.DTypeError, match="gelu: expected a floating tensor"):
        F.gelu(ember.tensor([1, 2]))
    with pytest.raises(TypeError, match="relu"):
        F.relu([1.0])


def test_softmax_legacy_default_dim():
    x = ember.randn(2, 3, 4)
    np.testing.assert_allclose(F.softmax(x).numpy(), F.softmax(x, 0).numpy())
    x = ember.randn(2, 3)
    np.testing.assert_allclose(F.log_softmax(x).numpy(), F.log_softmax(x, 1).numpy())


# ----------------------------------------------------------------------------- linear (primitive and functional)


def test_linear_primitive_three_ways():
    x, w, b = rand(4, 3, seed=1), rand(5, 3, seed=2), rand(5, seed=3)
    check_op(lambda lib, x, w, b: (linear2d(x, w, b) if lib is ember else TF.linear(x, w, b)),
             lambda x, w, b: x @ w.T + b, [x, w, b])
    check_op(lambda lib, x, w: (linear2d(x, w) if lib is ember else TF.linear(x, w)),
             lambda x, w: x @ w.T, [x, w])
    check_grad(lambda lib, x, w, b: linear2d(x, w, b), [x, w, b], diff=[1])  # one input only


def test_linear_primitive_forward_mode_and_double_backward():
    x, w, b = (ember.tensor(rand(*s, seed=i), dtype="float64") for i, s in enumerate([(4, 3), (5, 3), (5,)]))
    tx, tw, tb = (ember.tensor(rand(*s, seed=9 + i), dtype="float64") for i, s in enumerate([(4, 3), (5, 3), (5,)]))
    _out, tangent = ember.jvp(lambda x, w, b: linear2d(x, w, b), (x, w, b), (tx, tw, tb))
    want = tx.numpy() @ w.numpy().T + x.numpy() @ tw.numpy().T + tb.numpy()
    np.testing.assert_allclose(tangent.numpy(), want, atol=1e-12)
    _, t_bias = ember.jvp(lambda b: linear2d(x, w, b), (b,), (tb,))
    np.testing.assert_allclose(t_bias.numpy(), np.broadcast_to(tb.numpy(), (4, 5)))
    x.requires_grad_(True)
    w.requires_grad_(True)

    def grad_norm(x, w):
        (g,) = ember.grad((linear2d(x, w) ** 2).sum(), [x], create_graph=True)
        return (g * g).sum()

    assert ember.autograd.gradcheck(grad_norm, [x, w])


def test_linear_primitive_errors():
    with pytest.raises(ember.ShapeError, match=r"linear: input has 4 features but the weight \(5, 3\) expects 3"):
        ember.ops.apply(LINEAR, ember.randn(2, 4), ember.randn(5, 3))
    with pytest.raises(ember.DTypeError, match="dtypes differ"):
        ember.ops.apply(LINEAR, ember.randn(2, 3), ember.randn(5, 3, dtype="float64"))
    with pytest.raises(ember.ShapeError, match="bias must have shape"):
        ember.ops.apply(LINEAR, ember.randn(2, 3), ember.randn(5, 3), ember.randn(4))


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 3), (3,)])
def test_linear_functional_shapes(shape):
    x, w, b = rand(*shape, seed=1), rand(5, 3, seed=2), rand(5, seed=3)
    check_op(lambda lib, x, w, b: nnf(lib).linear(x, w, b), lambda x, w, b: x @ w.T + b, [x, w, b])
    check_op(lambda lib, x, w: nnf(lib).linear(x, w), lambda x, w: x @ w.T, [x, w])


def test_linear_functional_errors_and_weight_grad_layout():
    with pytest.raises(ember.ShapeError, match=r"linear: expected input of shape \(\*, 3\).*got \(2, 4\)"):
        F.linear(ember.randn(2, 4), ember.randn(5, 3))
    with pytest.raises(ember.ShapeError, match="weight must be 2-D"):
        F.linear(ember.randn(2, 3), ember.randn(3))
    w = ember.randn(5, 3, requires_grad=True)
    F.linear(ember.randn(4, 3), w).sum().backward()
    assert w.grad.shape == (5, 3) and w.grad.is_contiguous()


def test_bilinear_functional():
    x1, x2, w, b = rand(2, 4, 3, seed=1), rand(2, 4, 2, seed=2), rand(5, 3, 2, seed=3), rand(5, seed=4)
    check_op(lambda lib, x1, x2, w, b: nnf(lib).bilinear(x1, x2, w, b),
             lambda x1, x2, w, b: np.einsum("...i,kij,...j->...k", x1, w, x2) + b, [x1, x2, w, b])


# ----------------------------------------------------------------------------- pooling, conv, pad


def _adaptive_ref(x: np.ndarray, oh: int, ow: int) -> np.ndarray:
    h, w = x.shape[-2:]
    out = np.empty(x.shape[:-2] + (oh, ow))
    for i in range(oh):
        for j in range(ow):
            r0, r1 = (i * h) // oh, -(-(i + 1) * h // oh)
            c0, c1 = (j * w) // ow, -(-(j + 1) * w // ow)
            out[..., i, j] = x[..., r0:r1, c0:c1].mean(axis=(-2, -1))
    return out


@pytest.mark.parametrize("size, ref_size", [((2, 3), (2, 3)), (3, (3, 3)), ((5, None), (5, 6)), (1, (1, 1)),
                                            ((4, 6), (4, 6)), ((3, 4), (3, 4))])
def test_adaptive_avg_pool2d(size, ref_size):
    x = rand(2, 2, 4, 6, seed=1)
    check_op(lambda lib, t: nnf(lib).adaptive_avg_pool2d(t, size), lambda t: _adaptive_ref(t, *ref_size), [x])
    check_op(lambda lib, t: nnf(lib).adaptive_avg_pool2d(t, size), lambda t: _adaptive_ref(t, *ref_size), [x[0]])


def test_adaptive_avg_pool2d_errors():
    with pytest.raises(ember.ShapeError, match=r"adaptive_avg_pool2d: expected a 3-D .* got shape \(4, 4\)"):
        F.adaptive_avg_pool2d(ember.randn(4, 4), 2)
    with pytest.raises(ember.ShapeError, match="output_size"):
        F.adaptive_avg_pool2d(ember.randn(1, 4, 4), (0, 2))


def test_core_ops_are_reexported():
    assert F.conv2d is ember.conv2d and F.max_pool2d is ember.max_pool2d and F.avg_pool2d is ember.avg_pool2d
    assert F.pad is ember.pad and F.one_hot is ember.one_hot
    assert F.one_hot(ember.tensor([0, 2]), 3).tolist() == [[1, 0, 0], [0, 0, 1]]


# ----------------------------------------------------------------------------- dropout


def test_dropout_statistics_scaling_and_gradient():
    x = ember.ones(400, 250, requires_grad=True)
    y = F.dropout(x, 0.3)
    kept = y.detach().numpy() != 0
    assert abs(1 - kept.mean() - 0.3) < 0.01
    np.testing.assert_allclose(y.detach().numpy()[kept], 1 / 0.7, rtol=1e-6)
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), kept / 0.7, rtol=1e-6)  # gradient goes through the same mask


def test_dropout_gradcheck_with_a_fixed_mask():
    # A fresh, equally seeded generator per call gives the same mask on every evaluation.
    x = rand(4, 5, seed=1)
    check_grad(lambda lib, t: F.dropout(t, 0.4, generator=ember.Generator().manual_seed(2)), [x])


def test_dropout_reproducible_and_generator():
    x = ember.randn(50, 40)
    ember.manual_seed(5)
    a = F.dropout(x, 0.5).numpy()
    ember.manual_seed(5)
    np.testing.assert_array_equal(F.dropout(x, 0.5).numpy(), a)
    g1, g2 = ember.Generator().manual_seed(1), ember.Generator().manual_seed(1)
    np.testing.assert_array_equal(F.dropout(x, 0.5, generator=g1).numpy(), F.dropout(x, 0.5, generator=g2).numpy())
    assert not np.array_equal(F.dropout(x, 0.5).numpy(), a)  # the stream moves on


def test_dropout_edge_cases():
    x = ember.randn(10, 10, requires_grad=True)
    assert F.dropout(x, 0.5, training=False) is x and F.dropout(x, 0.0) is x
    z = F.dropout(x, 1.0)
    assert np.all(z.detach().numpy() == 0) and z.requires_grad
    h = ember.randn(10, 10, dtype="float16")
    assert F.dropout(h, 0.5).dtype is ember.float16
    y = ember.ones(4, 4)
    assert F.dropout(y, 0.5, inplace=True) is y and set(np.unique(y.numpy())) <= {0.0, 2.0}
    for p in (-0.1, 1.1, True):
        with pytest.raises(ValueError, match="between 0 and 1"):
            F.dropout(x, p)


# ----------------------------------------------------------------------------- normalization


def _bn_ref(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    m, v = x.mean(axes, keepdims=True), x.var(axes, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * w.reshape(shape) + b.reshape(shape)


@pytest.mark.parametrize("shape", [(4, 3), (3, 3, 2), (2, 3, 2, 2)])
def test_batch_norm_training_functional(shape):
    x, w, b = rand(*shape, seed=1), rand(3, seed=2), rand(3, seed=3)
    check_op(lambda lib, x, w, b: nnf(lib).batch_norm(x, None, None, w, b, training=True),
             _bn_ref, [x, w, b], atol=1e-4, rtol=1e-4)


def test_batch_norm_updates_running_stats_and_eval():
    x = rand(6, 3, 2, seed=1) * 2 + 1
    rm, rv = ember.zeros(3, dtype="float64"), ember.ones(3, dtype="float64")
    F.batch_norm(ember.tensor(x), rm, rv, training=True, momentum=0.25)
    np.testing.assert_allclose(rm.numpy(), 0.25 * x.mean((0, 2)))
    np.testing.assert_allclose(rv.numpy(), 0.75 + 0.25 * x.var((0, 2), ddof=1))
    w, b = rand(3, seed=2), rand(3, seed=3)
    rmn, rvn = rm.numpy().copy(), rv.numpy().copy()
    shape = (1, 3, 1)
    ref = lambda x, w, b: (x - rmn.reshape(shape)) / np.sqrt(rvn.reshape(shape) + 1e-5) * w.reshape(shape) \
        + b.reshape(shape)  # noqa: E731
    check_op(lambda lib, x, w, b: nnf(lib).batch_norm(x, lib.tensor(rmn, dtype=x.dtype), lib.tensor(rvn, dtype=x.dtype),
                                                      w, b, training=False),
             ref, [x, w, b])
    np.testing.assert_array_equal(rm.numpy(), rmn)  # eval mode leaves them alone


def test_batch_norm_errors():
    with pytest.raises(ember.ShapeError, match=r"batch_norm: weight must have shape \(3,\)"):
        F.batch_norm(ember.randn(4, 3), None, None, ember.ones(4), training=True)
    with pytest.raises(ember.ShapeError, match="at least 2 dimensions"):
        F.batch_norm(ember.randn(4), None, None, training=True)


@pytest.mark.parametrize("norm_shape", [(4,), (3, 4)])
def test_layer_norm_functional(norm_shape):
    x, w, b = rand(2, 3, 4, seed=1) * 3, rand(*norm_shape, seed=2), rand(*norm_shape, seed=3)
    axes = tuple(range(3 - len(norm_shape), 3))

    def ref(x, w, b):
        m, v = x.mean(axes, keepdims=True), x.var(axes, keepdims=True)
        return (x - m) / np.sqrt(v + 1e-5) * w + b

    check_op(lambda lib, x, w, b: nnf(lib).layer_norm(x, norm_shape, w, b), ref, [x, w, b], atol=1e-4, rtol=1e-4)
    check_op(lambda lib, x: nnf(lib).layer_norm(x, norm_shape), lambda x: ref(x, 1.0, 0.0), [x], atol=1e-4,
             rtol=1e-4)


def test_layer_norm_errors():
    with pytest.raises(ember.ShapeError, match=r"layer_norm: expected an input of shape \(\*, 5\).*got \(2, 4\)"):
        F.layer_norm(ember.randn(2, 4), 5)
    with pytest.raises(ember.ShapeError, match="weight must have shape"):
        F.layer_norm(ember.randn(2, 4), 4, ember.ones(3))


@pytest.mark.parametrize("p, dim", [(2.0, 1), (1.0, 0), (3.0, -1)])
def test_normalize(p, dim):
    x = rand(3, 4, seed=1)
    ref = lambda x: x / np.maximum((np.abs(x) ** p).sum(dim, keepdims=True) ** (1 / p), 1e-12)  # noqa: E731
    check_op(lambda lib, t: nnf(lib).normalize(t, p, dim), ref, [x])
    z = F.normalize(ember.zeros(2, 3))
    assert np.all(z.numpy() == 0)
