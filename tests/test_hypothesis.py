"""Property tests (Hypothesis): broadcasting of binary ops and reduction shapes/values against NumPy."""

import warnings

import numpy as np
import pytest

import ember

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None)

BINARY = {
    "add": (lambda a, b: a + b, np.add),
    "sub": (lambda a, b: a - b, np.subtract),
    "mul": (lambda a, b: a * b, np.multiply),
    "div": (lambda a, b: a / b, np.divide),
    "maximum": (ember.maximum, np.maximum),
    "lt": (lambda a, b: a < b, np.less),
    "where": (lambda a, b: ember.where(a > 0, a, b), lambda a, b: np.where(a > 0, a, b)),
}


def _values(shape, seed):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.5, 2.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)


@SETTINGS
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, min_side=0, max_side=4),
       name=st.sampled_from(sorted(BINARY)), seed=st.integers(0, 2 ** 16))
def test_binary_broadcasting_matches_numpy(shapes, name, seed):
    (sa, sb), want_shape = shapes.input_shapes, shapes.result_shape
    fn, ref = BINARY[name]
    a, b = _values(sa, seed), _values(sb, seed + 1)
    out = fn(ember.tensor(a, dtype="float64"), ember.tensor(b, dtype="float64"))
    want = ref(a, b)
    assert out.shape == tuple(want_shape) == want.shape
    np.testing.assert_allclose(out.data, want, rtol=1e-12)


@SETTINGS
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, min_side=1, max_side=4),
       seed=st.integers(0, 2 ** 16))
def test_broadcast_gradients_reduce_to_input_shapes(shapes, seed):
    (sa, sb), out_shape = shapes.input_shapes, shapes.result_shape
    a, b = _values(sa, seed), _values(sb, seed + 1)
    ta = ember.tensor(a, dtype="float64", requires_grad=True)
    tb = ember.tensor(b, dtype="float64", requires_grad=True)
    (ta * tb).sum().backward()
    assert ta.grad.shape == tuple(sa) and tb.grad.shape == tuple(sb)
    # d/da sum(a * b) = b broadcast to the output and summed back over a's broadcast axes
    bb = np.broadcast_to(b, out_shape)
    lead = len(out_shape) - len(sa)
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(sa) if n == 1 and out_shape[lead + i] != 1)
    want = np.sum(bb, axis=axes, keepdims=True).reshape(sa)
    np.testing.assert_allclose(ta.grad.data, want, rtol=1e-12)


@st.composite
def incompatible_shapes(draw):
    sa = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=2, max_side=4))
    sb = list(draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)))
    k = draw(st.integers(1, min(len(sa), len(sb))))
    sb[-k] = sa[-k] + 1  # a size that is neither equal nor 1
    return tuple(sa), tuple(sb)


@SETTINGS
@given(shapes=incompatible_shapes())
def test_incompatible_shapes_raise_shape_error(shapes):
    sa, sb = shapes
    with pytest.raises(ValueError):
        np.broadcast_shapes(sa, sb)
    with pytest.raises(ember.ShapeError, match=r"mul: shapes .* cannot be broadcast together"):
        ember.ones(*sa) * ember.ones(*sb)


REDUCTIONS = {
    "sum": (ember.sum, np.sum),
    "mean": (ember.mean, np.mean),
    "amax": (ember.amax, np.amax),
    "amin": (ember.amin, np.amin),
    "prod": (ember.prod, np.prod),
    "all": (ember.all, np.all),
    "any": (ember.any, np.any),
    "logsumexp": (ember.logsumexp,
                  lambda a, axis, keepdims: np.log(np.sum(np.exp(a), axis=axis, keepdims=keepdims))),
    "var0": (lambda x, dim, keepdim: ember.var(x, dim, keepdim, correction=0),
             lambda a, axis, keepdims: np.var(a, axis=axis, keepdims=keepdims)),
}


@st.composite
def shape_and_dims(draw, min_side=1):
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=min_side, max_side=4))
    ndim = len(shape)
    kind = draw(st.sampled_from(["none", "int", "tuple"]) if ndim else st.just("none"))
    if kind == "none":
        return shape, None
    if kind == "int":
        d = draw(st.integers(0, ndim - 1))
        return shape, d - ndim if draw(st.booleans()) else d
    axes = draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
    return shape, tuple(a - ndim if draw(st.booleans()) else a for a in axes)


@SETTINGS
@given(sd=shape_and_dims(min_side=0), keepdim=st.booleans(), name=st.sampled_from(sorted(REDUCTIONS)),
       seed=st.integers(0, 2 ** 16))
def test_reductions_match_numpy(sd, keepdim, name, seed):
    shape, dim = sd
    fn, ref = REDUCTIONS[name]
    a = _values(shape, seed)
    if name in ("all", "any"):
        a = a > 0
    x = ember.tensor(a, dtype=None if a.dtype == bool else "float64")
    axes = range(len(shape)) if dim is None else [dim] if isinstance(dim, int) else dim
    if name in ("amax", "amin") and any(shape[d] == 0 for d in axes):  # no identity element: both refuse
        with pytest.raises(ValueError):
            ref(a, axis=dim, keepdims=keepdim)
        with pytest.raises(ember.ShapeError, match=f"{name}: cannot reduce over an empty dimension"):
            fn(x, dim, keepdim=keepdim)
        return
    out = fn(x, dim, keepdim=keepdim)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NumPy warns on the mean of an empty slice (nan)
        want = np.asarray(ref(a, axis=dim, keepdims=keepdim))
    assert out.shape == want.shape
    np.testing.assert_allclose(out.data, want, rtol=1e-10, atol=1e-12)


@SETTINGS
@given(sd=shape_and_dims(), keepdim=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_reduction_gradient_shapes(sd, keepdim, seed):
    shape, dim = sd
    x = ember.tensor(_values(shape, seed), dtype="float64", requires_grad=True)
    out = ember.sum(x, dim, keepdim=keepdim) + ember.amax(x, dim, keepdim=keepdim)
    out.backward(ember.ones_like(out))
    assert x.grad.shape == shape
    # every element gets 1 from sum; each reduced slice adds 1 at its (unique) maximum
    np.testing.assert_allclose(x.grad.data.sum(), x.numel() + out.numel(), rtol=1e-12)
    assert np.all((x.grad.data == 1) | (x.grad.data == 2))


@SETTINGS
@given(sd=shape_and_dims(), keepdim=st.booleans())
def test_max_with_dim_matches_numpy(sd, keepdim):
    shape, dim = sd
    if not isinstance(dim, int):
        return
    a = _values(shape, 3)
    values, indices = ember.max(ember.tensor(a, dtype="float64"), dim, keepdim=keepdim)
    want_v = np.max(a, axis=dim, keepdims=keepdim)
    want_i = np.argmax(a, axis=dim)
    if keepdim:
        want_i = np.expand_dims(want_i, dim)
    assert values.shape == want_v.shape and indices.shape == want_i.shape
    np.testing.assert_array_equal(values.data, want_v)
    np.testing.assert_array_equal(indices.data, want_i)
