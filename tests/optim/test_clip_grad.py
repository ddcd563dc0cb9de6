"""Gradient clipping against PyTorch and NumPy, with sparse gradients and the non-finite error path."""

from __future__ import annotations

import numpy as np
import pytest

import ember
from ember.nn.utils.clip_grad import (
    NonFiniteNormError,
    clip_grad_norm_,
    clip_grad_value_,
    clip_grads_with_norm_,
    get_total_norm,
)
from ember.sparse import RowSparseGrad

try:  # PyTorch is optional: comparisons against it are skipped without it
    import torch
except ImportError:  # pragma: no cover - depends on the machine
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")

SHAPES = [(3, 4), (5,), (2, 2, 3)]


def _grads(scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(s) * scale).astype(np.float32) for s in SHAPES]


def _ember_params(grads, none_at=None):
    params = []
    for i, g in enumerate(grads):
        p = ember.zeros(*g.shape, requires_grad=True)
        p.grad = None if i == none_at else ember.tensor(g)
        params.append(p)
    return params


def _torch_params(grads, none_at=None):
    params = []
    for i, g in enumerate(grads):
        p = torch.zeros(g.shape, requires_grad=True)
        p.grad = None if i == none_at else torch.tensor(g)
        params.append(p)
    return params


@needs_torch
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, 0.5, float("inf"), "inf", 0.0])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(norm_type, max_norm):
    grads = _grads()
    ours, theirs = _ember_params(grads, none_at=1), _torch_params(grads, none_at=1)
    n1 = clip_grad_norm_(ours, max_norm, norm_type)
    n2 = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
    assert isinstance(n1, ember.Tensor) and n1.shape == ()
    np.testing.assert_allclose(n1.item(), n2.item(), rtol=1e-6)
    assert ours[1].grad is None
    for p, t in zip(ours, theirs):
        if t.grad is not None:
            np.testing.assert_allclose(p.grad.numpy(), t.grad.numpy(), rtol=1e-6, atol=1e-7)


def test_clip_grad_norm_against_numpy():
    grads = _grads(scale=2.0)
    params = _ember_params(grads)
    total = clip_grad_norm_(iter(params), max_norm=1.0)  # any iterable, even a one-shot generator
    flat = np.concatenate([g.ravel() for g in grads]).astype(np.float64)
    want = np.sqrt(np.sum(flat ** 2))
    assert total.item() == pytest.approx(want, rel=1e-6)
    coef = 1.0 / (want + 1e-6)
    for p, g in zip(params, grads):
        np.testing.assert_allclose(p.grad.numpy(), g * coef, rtol=1e-6)
    after = np.sqrt(sum(np.sum(p.grad.numpy().astype(np.float64) ** 2) for p in params))
    assert after == pytest.approx(1.0, rel=1e-5)


def test_no_clipping_leaves_gradients_untouched():
    grads = _grads(scale=0.01)
    params = _ember_params(grads)
    before = [p.grad for p in params]
    total = clip_grad_norm_(params, max_norm=10.0, norm_type=1)
    assert total.item() == pytest.approx(sum(np.abs(g).sum() for g in grads), rel=1e-6)
    for p, b, g in zip(params, before, grads):
        assert p.grad is b
        np.testing.assert_array_equal(p.grad.numpy(), g)


def test_single_tensor_and_no_gradients():
    p = ember.zeros(4, requires_grad=True)
    assert clip_grad_norm_(p, 1.0).item() == 0.0  # no gradient anywhere: norm 0, nothing to do
    p.grad = ember.tensor([3.0, 4.0, 0.0, 0.0])
    assert clip_grad_norm_(p, 1.0).item() == pytest.approx(5.0)
    np.testing.assert_allclose(p.grad.numpy(), [0.6, 0.8, 0, 0], rtol=1e-6)
    assert clip_grad_norm_([], 1.0).item() == 0.0


def test_float64_gradients():
    p = ember.zeros(3, dtype=ember.float64, requires_grad=True)
    g = np.array([1.0 + 1e-12, 2.0, -2.0])
    p.grad = ember.tensor(g, dtype=ember.float64)
    total = clip_grad_norm_(p, 1.5)
    want = np.sqrt(np.sum(g ** 2))  # 3 + 1e-12 / 3: float32 could not tell it from 3
    assert total.dtype is ember.float64 and total.item() == pytest.approx(want, rel=1e-15, abs=0)
    np.testing.assert_allclose(p.grad.numpy(), g * (1.5 / (want + 1e-6)), rtol=1e-14)


@needs_torch
def test_get_total_norm_and_clip_grads_with_norm_match_torch():
    with pytest.raises(NonFiniteNormError, match="get_total_norm: the total norm"):
        get_total_norm([ember.tensor([np.nan])], error_if_nonfinite=True)
    grads = _grads(scale=3.0, seed=5)
    ours, theirs = _ember_params(grads), _torch_params(grads)
    n1 = get_total_norm([p.grad for p in ours], 3.0)
    n2 = torch.nn.utils.get_total_norm([p.grad for p in theirs], 3.0)
    np.testing.assert_allclose(n1.item(), n2.item(), rtol=1e-6)
    clip_grads_with_norm_(ours, 2.0, n1)
    torch.nn.utils.clip_grads_with_norm_(theirs, 2.0, n2)
    for p, t in zip(ours, theirs):
        np.testing.assert_allclose(p.grad.numpy(), t.grad.numpy(), rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- sparse gradients


def _sparse(rows, shape=(6, 2), seed=0):
    vals = np.random.default_rng(seed).standard_normal((len(rows), *shape[1:])).astype(np.float32)
    return RowSparseGrad(ember.tensor(rows), ember.tensor(vals), shape)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf"), float("-inf"), 0.0])
def test_sparse_gradients_clip_like_their_dense_form(norm_type):
    sp, dense = _sparse([1, 4], seed=1), None
    dense = sp.to_dense()
    a, b = ember.zeros(6, 2, requires_grad=True), ember.zeros(6, 2, requires_grad=True)
    c, d = ember.zeros(3, requires_grad=True), ember.zeros(3, requires_grad=True)
    a.grad, b.grad = sp, dense
    c.grad, d.grad = ember.tensor([0.5, -0.25, 2.0]), ember.tensor([0.5, -0.25, 2.0])
    n_sparse = clip_grad_norm_([a, c], 0.1, norm_type)
    n_dense = clip_grad_norm_([b, d], 0.1, norm_type)
    assert n_sparse.item() == pytest.approx(n_dense.item(), rel=1e-6)
    assert a.grad is sp  # scaled in place, still sparse
    np.testing.assert_allclose(sp.to_dense().numpy(), b.grad.numpy(), rtol=1e-6)
    np.testing.assert_allclose(c.grad.numpy(), d.grad.numpy(), rtol=1e-6)


def test_clip_grad_value_sparse():
    sp = _sparse([0, 3, 5], seed=2)
    p = ember.zeros(6, 2, requires_grad=True)
    p.grad = sp
    want = np.clip(sp.to_dense().numpy(), -0.3, 0.3)
    clip_grad_value_(p, 0.3)
    np.testing.assert_array_equal(p.grad.to_dense().numpy(), want)


# ----------------------------------------------------------------------------- clip_grad_value_


@needs_torch
@pytest.mark.parametrize("clip", [0.0, 0.2, 1.0, 10.0])
def test_clip_grad_value_matches_torch(clip):
    grads = _grads()
    ours, theirs = _ember_params(grads, none_at=2), _torch_params(grads, none_at=2)
    clip_grad_value_(ours, clip)
    torch.nn.utils.clip_grad_value_(theirs, clip)
    for p, t in zip(ours, theirs):
        if t.grad is None:
            assert p.grad is None
        else:
            np.testing.assert_array_equal(p.grad.numpy(), t.grad.numpy())


def test_clip_grad_value_against_numpy():
    grads = _grads(scale=2.0)
    params = _ember_params(grads)
    clip_grad_value_(params, 0.7)
    for p, g in zip(params, grads):
        np.testing.assert_array_equal(p.grad.numpy(), np.clip(g, -0.7, 0.7))


# ----------------------------------------------------------------------------- non-finite norms and bad input


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_norm_raises_when_asked(bad):
    grads = _grads()
    grads[1][2] = bad
    params = _ember_params(grads)
    match = r"clip_grad_norm_: the total norm of order 2.0 .* is non-finite \((nan|inf)\)"
    with pytest.raises(NonFiniteNormError, match=match) as info:
        clip_grad_norm_(params, 1.0, error_if_nonfinite=True)
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, ember.EmberError)
    for p, g in zip(params, grads):  # nothing was scaled
        np.testing.assert_array_equal(p.grad.numpy(), g)


@needs_torch
def test_nonfinite_norm_without_the_check_scales_like_torch():
    grads = _grads()
    grads[0][0, 0] = np.inf
    ours, theirs = _ember_params(grads), _torch_params(grads)
    n1 = clip_grad_norm_(ours, 1.0)
    n2 = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    assert np.isinf(n1.item()) and np.isinf(n2.item())
    for p, t in zip(ours, theirs):
        np.testing.assert_array_equal(p.grad.numpy(), t.grad.numpy())


@pytest.mark.parametrize(("call", "err", "match"), [
    (lambda p: clip_grad_norm_(p, 1.0, norm_type="two"), TypeError,
     "clip_grad_norm_: norm_type must be a number or 'inf'"),
    (lambda p: clip_grad_norm_(p, 1.0, norm_type=-1.0), ValueError, "norm_type must be non-negative, inf or -inf"),
    (lambda p: clip_grad_norm_(p, "1"), TypeError, "clip_grad_norm_: max_norm must be a number, got '1'"),
    (lambda p: clip_grad_norm_(p, float("nan")), ValueError, "clip_grad_norm_: max_norm must be non-negative, got nan"),
    (lambda p: clip_grad_norm_(p, -1.0), ValueError, "max_norm must be non-negative, got -1.0"),
    (lambda p: clip_grads_with_norm_(p, 1.0, 2.0), TypeError, "clip_grads_with_norm_: total_norm must be a tensor"),
    (lambda p: get_total_norm([p.grad, [1.0]]), TypeError, "get_total_norm: expected tensors .* item 1 is a list"),
    (lambda p: clip_grad_norm_(3, 1.0), TypeError, "clip_grad_norm_: parameters must be a tensor or an iterable"),
    (lambda p: clip_grad_norm_([p, np.zeros(2)], 1.0), TypeError, "item 1 is a ndarray"),
    (lambda p: clip_grad_value_(p, -1.0), ValueError, "clip_grad_value_: clip_value must be non-negative, got -1.0"),
    (lambda p: clip_grad_value_(p, None), TypeError, "clip_grad_value_: clip_value must be a number, got None"),
])
def test_bad_input(call, err, match):
    p = ember.zeros(2, requires_grad=True)
    p.grad = ember.ones(2)
    with pytest.raises(err, match=match):
        call(p)
