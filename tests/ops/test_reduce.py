"""Reductions: three-way checks (NumPy forward, float64 finite differences, PyTorch forward and
backward when importable), gradient semantics (argmax-only for ``max(dim)``, shared ties for
``amax``, exact ``prod`` with zeros), numerical stability and error messages."""

import numpy as np
import pytest

import ember
from tests.helpers import check_forward, check_op, rand, torch

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")

DIMS = [None, 0, 1, -1, (0, 2), (-1, 0), (0, 1, 2)]


def _np_axis(dim):
    return dim if dim is None or isinstance(dim, int) else tuple(dim)


# ----------------------------------------------------------------------------- sum / mean / var / std


@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("dim", DIMS, ids=str)
def test_sum_mean(dim, keepdim):
    x = rand(2, 3, 4)
    check_op(lambda L, a: a.sum(dim=dim, keepdim=keepdim) if dim is not None else L.sum(a),
             lambda a: np.sum(a, axis=_np_axis(dim), keepdims=keepdim) if dim is not None else np.sum(a), [x])
    if dim is None:
        check_op(lambda L, a: L.mean(a), np.mean, [x])
    else:
        check_op(lambda L, a: a.mean(dim=dim, keepdim=keepdim),
                 lambda a: np.mean(a, axis=_np_axis(dim), keepdims=keepdim), [x])


@pytest.mark.parametrize("correction", [0, 1, 2])
@pytest.mark.parametrize("dim", [None, 1, (0, 2)], ids=str)
def test_var_std_correction(dim, correction):
    x = rand(3, 4, 5, seed=3)
    kw = {"dim": dim} if dim is not None else {}
    check_op(lambda L, a: L.var(a, correction=correction, **kw),
             lambda a: np.var(a, axis=_np_axis(dim), ddof=correction), [x])
    check_op(lambda L, a: L.std(a, correction=correction, keepdim=True, **kw),
             lambda a: np.std(a, axis=_np_axis(dim), ddof=correction, keepdims=True), [x])


def test_var_unbiased_flag_and_default():
    x = ember.tensor([1.0, 2.0, 3.0, 4.0])
    assert np.isclose(ember.var(x).item(), np.var(x.data, ddof=1))
    assert np.isclose(ember.var(x, unbiased=False).item(), np.var(x.data))
    assert np.isclose(ember.std(x, unbiased=True).item(), np.std(x.data, ddof=1))
    assert np.isnan(ember.var(ember.tensor([1.0])).item())  # n - correction == 0, as in PyTorch


def test_integer_sums_promote_and_mean_floats():
    i32 = ember.tensor([1, 2, 3], dtype="int32")
    assert ember.sum(i32).dtype is ember.int64
    assert ember.sum(ember.tensor([True, True, False])).item() == 2
    assert ember.prod(i32).dtype is ember.int64
    assert ember.cumsum(i32, 0).dtype is ember.int64
    assert ember.sum(i32, dtype="float64").dtype is ember.float64
    assert ember.mean(i32).dtype is ember.float32
    assert ember.sum(ember.ones(2, dtype="float16")).dtype is ember.float16


# ----------------------------------------------------------------------------- max / min / amax / amin


@pytest.mark.parametrize("name", ["max", "min"])
@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_max_min_dim_values_indices(name, dim, keepdim):
    x = rand(3, 4, 5, seed=4)
    npv = np.max if name == "max" else np.min
    npi = np.argmax if name == "max" else np.argmin

    def ref(a):
        idx = npi(a, axis=dim)
        if keepdim:
            idx = np.expand_dims(idx, dim)
        return npv(a, axis=dim, keepdims=keepdim), idx

    check_op(lambda L, a: tuple(getattr(L, name)(a, dim, keepdim=keepdim)), ref, [x])
    out = getattr(ember.tensor(x), name)(dim=dim)
    assert out.values is out[0] and out.indices is out[1]
    assert out.indices.dtype is ember.int64


def test_max_dim_gradient_goes_to_argmax_only():
    x = ember.tensor([[1.0, 5.0, 5.0], [2.0, 0.0, 3.0]], requires_grad=True)
    values, indices = ember.max(x, 1)
    np.testing.assert_array_equal(values.data, [5.0, 3.0])
    np.testing.assert_array_equal(indices.data, [1, 2])  # the first of tied maxima
    values.sum().backward()
    np.testing.assert_array_equal(x.grad.data, [[0, 1, 0], [0, 0, 1]])
    x.grad = None
    ember.min(x, 0).values.sum().backward()
    np.testing.assert_array_equal(x.grad.data, [[1, 0, 0], [0, 1, 1]])


def test_max_forms():
    a = ember.tensor([[1.0, 7.0], [3.0, 2.0]])
    b = ember.tensor([[4.0, 0.0], [0.0, 4.0]])
    assert ember.max(a).item() == 7.0 and ember.min(a).item() == 1.0
    np.testing.assert_array_equal(ember.max(a, b).data, [[4, 7], [3, 4]])
    np.testing.assert_array_equal(ember.min(a, other=b).data, [[1, 0], [0, 2]])
    v, i = ember.max(a, 0, keepdim=True)
    assert v.shape == (1, 2) and i.shape == (1, 2)
    # a 0-d tensor reduces over dim 0 / -1 to itself, at index 0 (as in PyTorch)
    v, i = ember.max(ember.tensor(3.0), 0)
    assert v.item() == 3.0 and i.item() == 0 and v.shape == () and i.shape == ()


@pytest.mark.parametrize("name", ["amax", "amin"])
@pytest.mark.parametrize("dim", [None, 1, (0, 2), -1], ids=str)
def test_amax_amin(name, dim):
    x = rand(2, 3, 4, seed=5)
    kw = {"dim": dim} if dim is not None else {}
    check_op(lambda L, a: getattr(L, name)(a, **kw),
             lambda a: getattr(np, name)(a, axis=_np_axis(dim)), [x])
    check_op(lambda L, a: getattr(L, name)(a, keepdim=True, **kw),
             lambda a: getattr(np, name)(a, axis=_np_axis(dim), keepdims=True), [x])


def test_amax_ties_share_gradient():
    x = ember.tensor([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0], [0.0, -1.0, 4.0]], requires_grad=True)
    ember.amax(x, 1).sum().backward()
    np.testing.assert_allclose(x.grad.data, [[0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3], [0, 0, 1]], rtol=1e-6)
    y = ember.tensor([[1.0, 1.0], [5.0, 1.0]], requires_grad=True)
    ember.amin(y).backward()
    np.testing.assert_allclose(y.grad.data, [[1 / 3, 1 / 3], [0, 1 / 3]], rtol=1e-6)


@needs_torch
def test_amax_ties_match_torch():
    data = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])
    x = ember.tensor(data, dtype="float64", requires_grad=True)
    xt = torch.tensor(data, requires_grad=True)
    (ember.amax(x, 1) * ember.tensor([1.0, 2.0], dtype="float64")).sum().backward()
    (torch.amax(xt, 1) * torch.tensor([1.0, 2.0], dtype=torch.float64)).sum().backward()
    np.testing.assert_allclose(x.grad.data, xt.grad.numpy())


def test_argmax_argmin():
    x = rand(3, 4, 5, seed=6)
    for name in ("argmax", "argmin"):
        ref = getattr(np, name)
        check_forward(lambda L, a: getattr(L, name)(a), lambda a: ref(a), [x])
        for d in (0, 1, -1):
            check_forward(lambda L, a: getattr(L, name)(a, d), lambda a: ref(a, axis=d), [x])
            check_forward(lambda L, a: getattr(L, name)(a, d, keepdim=True),
                          lambda a: np.expand_dims(ref(a, axis=d), d), [x])
    out = ember.argmax(ember.tensor(x))
    assert out.dtype is ember.int64 and not out.requires_grad
    assert ember.argmax(ember.tensor(x), keepdim=True).shape == (1, 1, 1)
    np.testing.assert_array_equal(ember.argmax(ember.tensor([1, 3, 3]), 0).item(), 1)  # first of ties


# ----------------------------------------------------------------------------- prod


@pytest.mark.parametrize("dim", [None, 0, 1, (0, 1)], ids=str)
def test_prod(dim):
    x = rand(3, 4, seed=7, low=0.5, high=1.5) * np.sign(rand(3, 4, seed=8))
    x[0, 1] = 0.0  # one zero
    x[2, 0] = x[2, 3] = 0.0  # two zeros in one row
    kw = {"dim": dim} if dim is not None else {}
    check_op(lambda L, a: L.prod(a, **kw), lambda a: np.prod(a, axis=_np_axis(dim)), [x],
             torch_check=not isinstance(dim, tuple))  # torch.prod takes one dim only


def test_prod_gradient_with_zeros_is_exact():
    x = ember.tensor([[2.0, 0.0, 3.0], [0.0, 0.0, 5.0], [1.0, 2.0, 4.0]], dtype="float64", requires_grad=True)
    x.prod(1).sum().backward()
    # one zero: only the zero's gradient is nonzero (product of the others); two zeros: all zero
    np.testing.assert_array_equal(x.grad.data, [[0, 6, 0], [0, 0, 0], [8, 4, 2]])


@needs_torch
def test_prod_double_backward_with_zeros_matches_torch():
    data = np.array([[1.0, 0, 3, 2], [0, 0, 2, 1], [1, 2, 3, 0.5]])
    for dim in (0, 1):
        x = ember.tensor(data, dtype="float64", requires_grad=True)
        xt = torch.tensor(data, requires_grad=True)
        (g,) = ember.grad(x.prod(dim).sum(), x, create_graph=True)
        (h,) = ember.grad((g * g).sum(), x)
        (gt,) = torch.autograd.grad(xt.prod(dim).sum(), xt, create_graph=True)
        (ht,) = torch.autograd.grad((gt * gt).sum(), xt)
        np.testing.assert_allclose(g.data, gt.detach().numpy())
        np.testing.assert_allclose(h.data, ht.numpy())


# ----------------------------------------------------------------------------- logsumexp / norm / cumsum


@pytest.mark.parametrize("dim", [0, 1, (0, 1), -1], ids=str)
@pytest.mark.parametrize("keepdim", [False, True])
def test_logsumexp(dim, keepdim):
    x = rand(3, 4, seed=9)

    def ref(a):
        m = np.max(a, axis=_np_axis(dim), keepdims=True)
        out = np.log(np.sum(np.exp(a - m), axis=_np_axis(dim), keepdims=True)) + m
        return out if keepdim else np.squeeze(out, axis=_np_axis(dim))

    check_op(lambda L, a: L.logsumexp(a, dim, keepdim=keepdim), ref, [x])


def test_logsumexp_is_stable_for_large_values():
    x = ember.tensor([[1000.0, 1000.0, -1000.0], [-1e4, -1e4, -1e4]], requires_grad=True)
    out = ember.logsumexp(x, 1)
    np.testing.assert_allclose(out.data, [1000 + np.log(2), -1e4 + np.log(3)], rtol=1e-6)
    out.sum().backward()
    np.testing.assert_allclose(x.grad.data, [[0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-6)
    assert np.all(np.isfinite(x.grad.data))
    # all -inf: the result is -inf (not nan); +inf stays inf
    assert ember.logsumexp(ember.tensor([-np.inf, -np.inf]), 0).item() == -np.inf
    assert ember.logsumexp(ember.tensor([np.inf, 1.0]), 0).item() == np.inf


@pytest.mark.parametrize("p", [1, 2, 3, float("inf")], ids=str)
@pytest.mark.parametrize("dim", [None, 1, (0, 1)], ids=str)
def test_norm(p, dim):
    x = rand(3, 4, seed=10)
    x = np.where(np.abs(x) < 0.1, 0.5, x)  # keep |x| away from its kink at 0

    def ref(a):
        ax = _np_axis(dim)
        if p == float("inf"):
            return np.max(np.abs(a), axis=ax)
        return np.sum(np.abs(a) ** p, axis=ax) ** (1 / p)

    check_op(lambda L, a: L.norm(a, p=p, dim=dim) if L is ember else
             torch.linalg.vector_norm(a, ord=p, dim=dim), ref, [x])


def test_norm_special_orders_and_zero_gradient():
    x = ember.tensor([3.0, -4.0, 0.0])
    assert ember.norm(x).item() == 5.0 and ember.norm(x, "fro").item() == 5.0
    assert ember.norm(x, 0).item() == 2.0  # number of nonzero entries
    assert ember.norm(x, float("-inf")).item() == 0.0
    # the gradient of a norm at the zero vector is 0, not nan (as in PyTorch)
    for p in (2, 3, 1.5):
        z = ember.zeros(3, requires_grad=True)
        ember.norm(z, p).backward()
        np.testing.assert_array_equal(z.grad.data, [0, 0, 0])
    with pytest.raises(ember.EmberError, match="norm: p must be"):
        ember.norm(x, -1)
    with pytest.raises(ember.EmberError, match="norm: p must be"):
        ember.norm(x, "nuc")


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_cumsum(dim):
    x = rand(3, 4, seed=11)
    check_op(lambda L, a: L.cumsum(a, dim), lambda a: np.cumsum(a, axis=dim), [x])
    np.testing.assert_array_equal(ember.cumsum(ember.tensor([True, True, False]), 0).data, [1, 2, 2])
    assert ember.cumsum(ember.tensor(3.0), 0).shape == ()


# ----------------------------------------------------------------------------- all / any


@pytest.mark.parametrize("name", ["all", "any"])
@pytest.mark.parametrize("dim", [None, 0, 1, (0, 1)], ids=str)
@pytest.mark.parametrize("keepdim", [False, True])
def test_all_any(name, dim, keepdim):
    data = np.array([[True, False, True], [True, True, True]])
    x = ember.tensor(data)
    out = getattr(ember, name)(x, dim, keepdim=keepdim)
    want = getattr(np, name)(data, axis=_np_axis(dim), keepdims=keepdim)
    assert out.dtype is ember.bool_ and out.shape == want.shape
    np.testing.assert_array_equal(out.data, want)
    if torch is not None and dim is not None:
        t = getattr(torch, name)(torch.tensor(data), dim=dim, keepdim=keepdim)
        np.testing.assert_array_equal(out.data, t.numpy())
    # nonzero numbers count as True; empty: all -> True, any -> False
    assert getattr(ember, name)(ember.tensor([1.0, 0.0])).item() == (name == "any")
    assert getattr(ember, name)(ember.zeros(0)).item() == (name == "all")


# ----------------------------------------------------------------------------- shapes and 0-d / empty inputs


def test_zero_dim_tensor_reductions():
    s = ember.tensor(3.0)
    for dim in (None, 0, -1):
        for f in (ember.sum, ember.amax, ember.amin, ember.prod, ember.mean):
            out = f(s, dim) if dim is not None else f(s)
            assert out.shape == () and out.item() == 3.0
        assert ember.sum(s, dim, keepdim=True).shape == ()
    assert ember.argmax(s, 0).item() == 0


def test_empty_reductions():
    e = ember.zeros(0, 3)
    np.testing.assert_array_equal(ember.sum(e, 0).data, [0, 0, 0])
    np.testing.assert_array_equal(ember.prod(e, 0).data, [1, 1, 1])
    assert np.all(np.isnan(ember.mean(e, 0).data))
    assert ember.amax(e, 1).shape == (0,)
    assert ember.argmax(e, 1).shape == (0,)
    assert ember.max(e, 1).values.shape == (0,)
    np.testing.assert_array_equal(ember.logsumexp(e, 0).data, [-np.inf] * 3)  # log of an empty sum
    with pytest.raises(ember.ShapeError, match=r"amax: cannot reduce over an empty dimension \(shape \(0, 3\)"):
        ember.amax(e, 0)
    with pytest.raises(ember.ShapeError, match=r"argmax.*empty"):
        ember.argmax(e)
    with pytest.raises(ember.ShapeError, match="max: cannot reduce over the empty dimension 0"):
        ember.max(e, 0)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("fn", [ember.sum, ember.mean, ember.amax, ember.prod, ember.var, ember.std,
                                ember.logsumexp, ember.all, ember.any],
                         ids=lambda f: f.__name__)
def test_bad_dim_message_names_the_op(fn):
    x = ember.ones(2, 3)
    with pytest.raises(ember.EmberIndexError, match=rf"{fn.__name__}: dim 2 is out of range for a tensor with "
                                                    r"2 dimension\(s\) \(expected -2 <= dim < 2\)"):
        fn(x, 2)
    with pytest.raises(IndexError):  # EmberIndexError is an IndexError too
        fn(x, -3)
    with pytest.raises(ember.ShapeError, match=rf"{fn.__name__}: dim \(0, -2\) repeats a dimension"):
        fn(x, (0, -2))
    with pytest.raises(TypeError, match=rf"{fn.__name__}: dim must be an int, a tuple of ints or None, got 1.0"):
        fn(x, 1.0)


def test_other_errors():
    x = ember.ones(2, 3)
    for f in (ember.argmax, ember.argmin, ember.cumsum):
        with pytest.raises(ember.EmberIndexError, match=f"{f.__name__}: dim 5 is out of range"):
            f(x, 5)
    with pytest.raises(TypeError, match=r"max: dim must be an int, got \(0, 1\)"):
        ember.max(x, (0, 1))
    with pytest.raises(TypeError, match="sum: expected a Tensor, got list"):
        ember.sum([1, 2])
    # numpy integers are accepted as dims
    assert ember.sum(x, np.int64(1)).shape == (2,)
    assert ember.sum(x, (np.int32(0), 1)).shape == ()
