import numpy as np
import pytest

import ember
from tests.helpers import check_op, rand

UNARY = [
    ("neg", lambda L, x: -x, np.negative, {}),
    ("abs", lambda L, x: L.abs(x), np.abs, {}),
    ("exp", lambda L, x: L.exp(x), np.exp, {}),
    ("log", lambda L, x: L.log(x), np.log, {"low": 0.1}),
    ("log1p", lambda L, x: L.log1p(x), np.log1p, {"low": -0.5}),
    ("expm1", lambda L, x: L.expm1(x), np.expm1, {}),
    ("sqrt", lambda L, x: L.sqrt(x), np.sqrt, {"low": 0.1}),
    ("rsqrt", lambda L, x: L.rsqrt(x), lambda x: 1 / np.sqrt(x), {"low": 0.1}),
    ("sin", lambda L, x: L.sin(x), np.sin, {}),
    ("cos", lambda L, x: L.cos(x), np.cos, {}),
    ("tanh", lambda L, x: L.tanh(x), np.tanh, {}),
    ("sigmoid", lambda L, x: L.sigmoid(x), lambda x: 1 / (1 + np.exp(-x)), {}),
    ("relu", lambda L, x: L.relu(x), lambda x: np.maximum(x, 0), {}),
    ("erf", lambda L, x: L.erf(x), None, {}),
    ("square", lambda L, x: L.square(x), np.square, {}),
    ("reciprocal", lambda L, x: L.reciprocal(x), np.reciprocal, {"low": 0.5}),
    ("clamp", lambda L, x: L.clamp(x, -0.5, 0.7), lambda x: np.clip(x, -0.5, 0.7), {}),
]


@pytest.mark.parametrize("name,fn,ref,kw", UNARY, ids=[u[0] for u in UNARY])
def test_unary(name, fn, ref, kw):
    x = rand(3, 5, low=kw.get("low", -2.0))
    if name in ("abs", "relu", "clamp"):  # keep away from the kinks for finite differences
        x = np.where(np.abs(x) < 0.05, 0.3, x)
        x = np.where(np.abs(x - 0.7) < 0.05, 0.3, x)
        x = np.where(np.abs(x + 0.5) < 0.05, 0.3, x)
    check_op(fn, ref, [x])


BINARY = [
    ("add", lambda L, a, b: a + b, np.add),
    ("sub", lambda L, a, b: a - b, np.subtract),
    ("mul", lambda L, a, b: a * b, np.multiply),
    ("div", lambda L, a, b: a / b, np.divide),
    ("maximum", lambda L, a, b: L.maximum(a, b), np.maximum),
    ("minimum", lambda L, a, b: L.minimum(a, b), np.minimum),
    ("pow", lambda L, a, b: L.pow(a.abs() + 0.5, b), lambda a, b: np.power(np.abs(a) + 0.5, b)),
]


@pytest.mark.parametrize("name,fn,ref", BINARY, ids=[b[0] for b in BINARY])
@pytest.mark.parametrize("shapes", [((3, 4), (3, 4)), ((3, 1), (1, 4)), ((2, 3, 4), (4,))])
def test_binary_broadcast(name, fn, ref, shapes):
    a, b = rand(*shapes[0], seed=1), rand(*shapes[1], seed=2)
    if name == "div":
        b = np.where(np.abs(b) < 0.3, 0.9, b)
    check_op(fn, ref, [a, b])


def test_where_and_comparisons():
    a, b = rand(4, 3, seed=1), rand(4, 3, seed=2)
    check_op(lambda L, x, y: L.where(x > y, x, y * 2), lambda x, y: np.where(x > y, x, y * 2), [a, b])
    for op, ref in [("eq", np.equal), ("ne", np.not_equal), ("lt", np.less), ("le", np.less_equal),
                    ("gt", np.greater), ("ge", np.greater_equal)]:
        out = getattr(ember, op)(ember.tensor(a), ember.tensor(b))
        assert out.dtype is ember.bool_
        np.testing.assert_array_equal(out.data, ref(a.astype(np.float32), b.astype(np.float32)))


def test_scalar_promotion_is_weak():
    x = ember.ones(3)
    assert (x * 2.0).dtype is ember.float32
    assert (x + 1).dtype is ember.float32
    i8 = ember.tensor([1, 2], dtype="int8")
    assert (i8 + 1).dtype is ember.int8
    assert (i8 * 0.5).dtype is ember.float32
    assert (ember.tensor([True]) + 1).dtype is ember.int64
    assert (i8 + ember.tensor([1], dtype="uint8")).dtype is ember.int32
    assert (ember.tensor([1], dtype="int32") + ember.ones(1, dtype="float16")).dtype is ember.float16
    assert (ember.tensor([3]) / ember.tensor([2])).dtype is ember.float32


def test_broadcast_error_names_op_and_shapes():
    with pytest.raises(ember.ShapeError, match=r"add: shapes \(2, 3\) and \(4,\) cannot be broadcast"):
        ember.ones(2, 3) + ember.ones(4)


def test_integer_ops():
    a = ember.tensor([7, -7, 5])
    b = ember.tensor([2, 2, -3])
    np.testing.assert_array_equal((a // b).data, np.array([7, -7, 5]) // np.array([2, 2, -3]))
    np.testing.assert_array_equal((a % b).data, np.array([7, -7, 5]) % np.array([2, 2, -3]))


def test_second_derivatives():
    x = ember.tensor(rand(5), dtype="float64", requires_grad=True)
    for f, d2 in [(ember.tanh, lambda v: -2 * np.tanh(v) * (1 - np.tanh(v) ** 2)),
                  (ember.exp, np.exp),
                  (ember.sin, lambda v: -np.sin(v))]:
        (g,) = ember.grad(f(x).sum(), x, create_graph=True)
        (h,) = ember.grad(g.sum(), x)
        np.testing.assert_allclose(h.data, d2(x.data), rtol=1e-10)
