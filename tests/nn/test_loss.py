"""Losses (functional and modules): forward and gradients against PyTorch for every combination of
weight / ignore_index / label_smoothing / reduction, float64 gradcheck, NumPy references, stability
at extreme logits, and error paths."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import ember
import ember.nn.functional as F
from ember.nn import loss as L
from tests.helpers import check_forward, check_grad, check_torch, rand

try:
    import torch
    import torch.nn.functional as TF
except ImportError:  # pragma: no cover - depends on the machine
    torch = TF = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
REDUCTIONS = ["mean", "sum", "none"]


def nnf(lib):
    return F if lib is ember else TF


def _reduce(x: np.ndarray, reduction: str) -> np.ndarray:
    return x.mean() if reduction == "mean" else x.sum() if reduction == "sum" else x


# ----------------------------------------------------------------------------- regression losses

def _smooth_l1(d: np.ndarray, beta: float) -> np.ndarray:
    return np.where(np.abs(d) < beta, 0.5 * d * d / beta, np.abs(d) - 0.5 * beta) if beta else np.abs(d)


REGRESSION = [
    ("mse_loss", {}, lambda d: d * d),
    ("l1_loss", {}, np.abs),
    ("smooth_l1_loss", {}, lambda d: _smooth_l1(d, 1.0)),
    ("smooth_l1_loss", {"beta": 0.5}, lambda d: _smooth_l1(d, 0.5)),
    ("smooth_l1_loss", {"beta": 0.0}, np.abs),
    ("huber_loss", {"delta": 0.7}, lambda d: np.where(np.abs(d) < 0.7, 0.5 * d * d, 0.7 * (np.abs(d) - 0.35))),
]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name, kw, ref", REGRESSION, ids=lambda v: str(v) if not callable(v) else "")
def test_regression_losses(name, kw, ref, reduction):
    x, y = rand(3, 4, seed=1), rand(3, 4, seed=2)
    fn = lambda lib, a, b: getattr(nnf(lib), name)(a, b, reduction=reduction, **kw)  # noqa: E731
    check_forward(fn, lambda a, b: _reduce(ref(a - b), reduction), [x, y])
    check_grad(fn, [x, y])
    check_torch(fn, [x, y])


def test_regression_loss_errors():
    with pytest.raises(ember.ShapeError, match=r"mse_loss: target shape \(3, 1\) differs from input shape \(3,\)"):
        F.mse_loss(ember.randn(3), ember.randn(3, 1))
    with pytest.raises(ValueError, match="reduction must be"):
        F.l1_loss(ember.randn(3), ember.randn(3), reduction="avg")
    with pytest.raises(ValueError, match="beta"):
        F.smooth_l1_loss(ember.randn(3), ember.randn(3), beta=-1.0)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_margin_ranking_loss(reduction):
    a, b = rand(6, seed=1), rand(6, seed=2)
    y = np.array([1.0, -1, 1, 1, -1, -1])
    fn = lambda lib, a, b, y: nnf(lib).margin_ranking_loss(a, b, y, margin=0.3, reduction=reduction)  # noqa: E731
    check_forward(fn, lambda a, b, y: _reduce(np.maximum(0, -y * (a - b) + 0.3), reduction), [a, b, y])
    check_grad(fn, [a, b, y], diff=[0, 1])
    check_torch(fn, [a, b, y], diff=[0, 1])
    with pytest.raises(ember.ShapeError, match="same shape"):
        F.margin_ranking_loss(ember.randn(3), ember.randn(3), ember.randn(2))


# ----------------------------------------------------------------------------- binary cross-entropy


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_binary_cross_entropy(reduction, weighted):
    p, t, w = rand(3, 4, seed=1, low=0.05, high=0.95), rand(3, 4, seed=2, low=0, high=1), rand(4, seed=3, low=0.5)
    args = [p, t, w] if weighted else [p, t]

    def fn(lib, p, t, *w):
        return nnf(lib).binary_cross_entropy(p, t, w[0] if w else None, reduction=reduction)

    def ref(p, t, *w):
        loss = -(t * np.log(p) + (1 - t) * np.log(1 - p)) * (w[0] if w else 1)
        return _reduce(loss, reduction)

    check_forward(fn, ref, args)
    check_grad(fn, args, diff=[0, 1])
    check_torch(fn, args, diff=[0, 1])


@needs_torch
def test_binary_cross_entropy_clamps_log_like_torch():
    p = np.array([0.0, 1.0, 1.0, 0.0, 1e-30, 0.5], dtype=np.float32)
    t = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 0.5], dtype=np.float32)
    got = F.binary_cross_entropy(ember.tensor(p), ember.tensor(t), reduction="none").numpy()
    want = TF.binary_cross_entropy(torch.tensor(p), torch.tensor(t), reduction="none").numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got[0] == 100.0
    x = ember.tensor(p, requires_grad=True)
    F.binary_cross_entropy(x, ember.tensor(t)).backward()
    assert np.all(np.isfinite(x.grad.numpy()))


def test_binary_cross_entropy_errors():
    with pytest.raises(ValueError, match="between 0 and 1"):
        F.binary_cross_entropy(ember.tensor([1.5, 0.5]), ember.tensor([1.0, 0.0]))
    with pytest.raises(ember.ShapeError, match="weight of shape"):
        F.binary_cross_entropy(ember.tensor([0.5, 0.5]), ember.tensor([1.0, 0.0]), ember.ones(3))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted, pos", [(False, False), (True, False), (False, True), (True, True)])
def test_bce_with_logits(reduction, weighted, pos):
    x, t = rand(3, 4, seed=1, low=-4, high=4), rand(3, 4, seed=2, low=0, high=1)
    w, pw = rand(3, 1, seed=3, low=0.5), rand(4, seed=4, low=0.5, high=3)
    args = [x, t] + ([w] if weighted else []) + ([pw] if pos else [])

    def fn(lib, x, t, *extra):
        extra = list(extra)
        wt = extra.pop(0) if weighted else None
        pwt = extra.pop(0) if pos else None
        return nnf(lib).binary_cross_entropy_with_logits(x, t, wt, reduction=reduction, pos_weight=pwt)

    def ref(x, t, *extra):
        extra = list(extra)
        wt = extra.pop(0) if weighted else 1.0
        pwt = extra.pop(0) if pos else 1.0
        s = 1 / (1 + np.exp(-x))
        return _reduce(-wt * (pwt * t * np.log(s) + (1 - t) * np.log(1 - s)), reduction)

    check_forward(fn, ref, args)
    check_grad(fn, args, diff=[0, 1])
    check_torch(fn, args, diff=[0, 1])


@needs_torch
def test_bce_with_logits_extreme_and_zero_logits():
    x = np.array([-1000.0, -100.0, -20.0, 0.0, 0.0, 20.0, 100.0, 1000.0], dtype=np.float32)
    t = np.array([1.0, 0.0, 1.0, 1.0, 0.3, 0.0, 1.0, 0.0], dtype=np.float32)
    pw = np.array([2.5], dtype=np.float32)
    for kw in ({}, {"pos_weight": pw}):
        fn = lambda lib, x, t: nnf(lib).binary_cross_entropy_with_logits(  # noqa: E731
            x, t, reduction="none", **{k: lib.tensor(v) for k, v in kw.items()})
        check_torch(fn, [x, t], diff=[0])  # values (1000 where wrong) and gradients, incl. sigmoid(0) - t at 0
    e = ember.tensor(x, requires_grad=True)
    F.binary_cross_entropy_with_logits(e, ember.tensor(t), reduction="sum").backward()
    np.testing.assert_allclose(e.grad.numpy()[3:5], [0.5 - 1.0, 0.5 - 0.3], rtol=1e-6)
    assert np.all(np.isfinite(e.grad.numpy()))


# ----------------------------------------------------------------------------- cross-entropy and NLL


def _targets(shape: tuple, c: int, ignore: int | None, seed: int = 0) -> np.ndarray:
    t = np.random.default_rng(seed).integers(0, c, size=shape)
    if ignore is not None:
        t.flat[::3] = ignore  # a third of the targets ignored
    return t


CE_COMBOS = list(itertools.product([False, True], [None, 1, -100], [0.0, 0.2], REDUCTIONS))


@needs_torch
@pytest.mark.parametrize("weighted, ignore, smoothing, reduction", CE_COMBOS)
def test_cross_entropy_all_combinations_match_torch(weighted, ignore, smoothing, reduction):
    x = rand(6, 4, seed=1, low=-3, high=3)
    t = _targets((6,), 4, ignore)
    w = rand(4, seed=3, low=0.2, high=2)
    kw = {"reduction": reduction, "label_smoothing": smoothing}
    if ignore is not None:
        kw["ignore_index"] = ignore

    def fn(lib, x, t, *w):
        return nnf(lib).cross_entropy(x, t, w[0] if w else None, **kw)

    args = [x, t, w] if weighted else [x, t]
    check_torch(fn, args, diff=[0])


@needs_torch
@pytest.mark.parametrize("weighted, ignore, reduction", list(itertools.product([False, True], [None, 2], REDUCTIONS)))
def test_nll_loss_all_combinations_match_torch(weighted, ignore, reduction):
    x = rand(6, 4, seed=1, low=-3, high=0)
    t = _targets((6,), 4, ignore)
    w = rand(4, seed=3, low=0.2, high=2)
    kw = {"reduction": reduction} if ignore is None else {"reduction": reduction, "ignore_index": ignore}
    check_torch(lambda lib, x, t, *w: nnf(lib).nll_loss(x, t, w[0] if w else None, **kw),
                [x, t, w] if weighted else [x, t], diff=[0])


@needs_torch
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_spatial_and_unbatched(smoothing, reduction):
    x, w = rand(2, 3, 4, 2, seed=1), rand(3, seed=2, low=0.5)
    t = _targets((2, 4, 2), 3, -100)
    kw = {"reduction": reduction, "label_smoothing": smoothing}
    check_torch(lambda lib, x, t, w: nnf(lib).cross_entropy(x, t, w, **kw), [x, t, w], diff=[0])
    check_torch(lambda lib, x, t: nnf(lib).cross_entropy(x, t, **kw), [rand(5, seed=3), np.array(2)], diff=[0])
    check_torch(lambda lib, x, t: nnf(lib).nll_loss(x, t, reduction=reduction), [rand(5, seed=3), np.array(4)],
                diff=[0])


@needs_torch
@pytest.mark.parametrize("weighted, smoothing, reduction",
                         list(itertools.product([False, True], [0.0, 0.3], REDUCTIONS)))
def test_cross_entropy_probability_targets(weighted, smoothing, reduction):
    x = rand(4, 3, 2, seed=1)
    p = np.random.default_rng(2).dirichlet(np.ones(3), size=(4, 2)).transpose(0, 2, 1).copy()
    w = rand(3, seed=3, low=0.5)

    def fn(lib, x, p, *w):
        return nnf(lib).cross_entropy(x, p, w[0] if w else None, reduction=reduction, label_smoothing=smoothing)

    check_torch(fn, [x, p, w] if weighted else [x, p], diff=[0, 1])


def test_cross_entropy_reference_and_gradcheck():
    x, w = rand(5, 4, seed=1), rand(4, seed=2, low=0.5)
    t = np.array([0, 3, -100, 1, 3])

    def ref(x, t, w):
        logp = x - np.log(np.exp(x).sum(1, keepdims=True))
        keep = t != -100
        tk = t[keep]
        nll = -(logp[keep, tk] * w[tk])
        smooth = -(logp[keep] * w).sum(1)
        return (0.9 * nll + 0.1 / 4 * smooth).sum() / w[tk].sum()

    fn = lambda lib, x, t, w: nnf(lib).cross_entropy(x, t, w, label_smoothing=0.1)  # noqa: E731
    check_forward(fn, ref, [x, t, w])
    check_grad(fn, [x, t, w], diff=[0])
    probs = rand(5, 4, seed=4, low=0, high=1)
    check_grad(lambda lib, x, p: nnf(lib).cross_entropy(x, p, label_smoothing=0.2), [x, probs])
    check_grad(lambda lib, x, t: nnf(lib).nll_loss(x, t, reduction="sum"), [x, t])


def test_cross_entropy_is_stable_for_huge_logits():
    x = ember.tensor([[1000.0, -1000.0, 0.0], [-1e4, 1e4, 0.0]], requires_grad=True)
    loss = F.cross_entropy(x, ember.tensor([1, 1]))
    assert np.isclose(loss.item(), 1000.0)
    loss.backward()
    assert np.all(np.isfinite(x.grad.numpy()))


def test_nll_all_ignored_is_nan_like_torch():
    loss = F.nll_loss(ember.randn(3, 4), ember.tensor([-100, -100, -100]))
    assert np.isnan(loss.item())


def test_class_loss_errors():
    x = ember.randn(3, 4)
    with pytest.raises(ember.EmberIndexError, match=r"cross_entropy: target 7 is out of bounds.*\[0, 4\)"):
        F.cross_entropy(x, ember.tensor([0, 7, 1]))
    with pytest.raises(ember.EmberIndexError, match="nll_loss: target -1"):
        F.nll_loss(x, ember.tensor([0, -1, 1]))
    with pytest.raises(ember.ShapeError, match=r"expected target of shape \(3,\).*got \(2,\)"):
        F.cross_entropy(x, ember.tensor([0, 1]))
    with pytest.raises(ember.ShapeError, match=r"probability target must have the input's shape"):
        F.cross_entropy(x, ember.rand(3, 5))
    with pytest.raises(ember.DTypeError, match="integer class indices"):
        F.nll_loss(x, ember.rand(3, 4))
    with pytest.raises(ember.ShapeError, match=r"weight must have shape \(4,\)"):
        F.cross_entropy(x, ember.tensor([0, 1, 2]), weight=ember.ones(3))
    with pytest.raises(ValueError, match="label_smoothing"):
        F.cross_entropy(x, ember.tensor([0, 1, 2]), label_smoothing=1.5)
    with pytest.raises(ValueError, match="ignore_index"):
        F.cross_entropy(x, ember.rand(3, 4), ignore_index=0)
    with pytest.raises(ember.ShapeError, match="class dimension"):
        F.cross_entropy(ember.tensor(1.0), ember.tensor(0))


# ----------------------------------------------------------------------------- loss modules


LOSS_MODULES = [
    ("MSELoss", {}, "reg"), ("L1Loss", {"reduction": "sum"}, "reg"), ("SmoothL1Loss", {"beta": 0.5}, "reg"),
    ("HuberLoss", {"delta": 2.0, "reduction": "none"}, "reg"), ("CrossEntropyLoss", {"label_smoothing": 0.1}, "cls"),
    ("CrossEntropyLoss", {"weight": [1.0, 2.0, 0.5, 1.0], "ignore_index": 2}, "cls"),
    ("NLLLoss", {"weight": [1.0, 2.0, 0.5, 1.0]}, "cls"), ("BCELoss", {"weight": [1.0, 2.0, 0.5, 1.0]}, "prob"),
    ("BCEWithLogitsLoss", {"pos_weight": [1.0, 2.0, 0.5, 1.0]}, "bin"), ("BCEWithLogitsLoss", {}, "bin"),
]


@needs_torch
@pytest.mark.parametrize("name, kw, kind", LOSS_MODULES, ids=lambda v: str(v))
def test_loss_modules_match_torch(name, kw, kind):
    def make(lib, mod):
        args = {k: (lib.tensor(v) if isinstance(v, list) else v) for k, v in kw.items()}
        return getattr(mod, name)(**args)

    em, tm = make(ember, L), make(torch, torch.nn)
    assert repr(em) == repr(tm)
    assert list(em.state_dict()) == list(tm.state_dict())  # weight / pos_weight buffers
    x = rand(5, 4, seed=1)
    if kind == "reg":
        y = rand(5, 4, seed=2)
    elif kind == "cls":
        y = np.array([0, 2, 3, 1, 2])
    else:
        y = rand(5, 4, seed=2, low=0, high=1)
        x = rand(5, 4, seed=1, low=0.05, high=0.95) if kind == "prob" else x
    check_torch(lambda lib, x, y: (em if lib is ember else tm)(x, y), [x, y], diff=[0])


@needs_torch
def test_margin_ranking_module():
    em, tm = L.MarginRankingLoss(margin=0.5), torch.nn.MarginRankingLoss(margin=0.5)
    assert repr(em) == repr(tm)
    a, b, y = rand(5, seed=1), rand(5, seed=2), np.array([1.0, -1, 1, -1, 1])
    check_torch(lambda lib, a, b, y: (em if lib is ember else tm)(a, b, y), [a, b, y], diff=[0, 1])


def test_loss_module_errors_and_buffers_follow_to():
    with pytest.raises(ValueError, match="reduction"):
        L.MSELoss(reduction="avg")
    with pytest.raises(TypeError, match="weight must be a Tensor"):
        L.CrossEntropyLoss(weight=[1.0, 2.0])
    loss = L.CrossEntropyLoss(weight=ember.ones(3))
    loss.to(ember.float64)
    assert loss.weight.dtype is ember.float64
