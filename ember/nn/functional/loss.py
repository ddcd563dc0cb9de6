"""Loss functions with PyTorch's semantics (``reduction`` is ``'mean'``, ``'sum'`` or ``'none'``).

Inputs and targets must have the shapes PyTorch documents; unlike PyTorch, a loss never broadcasts a
target of a different shape silently, it raises a ``ShapeError``. Class-index targets are picked out
with ``gather`` (no dense one-hot), and logit losses use overflow-free softplus forms.
"""

from __future__ import annotations

import math
from typing import Any

from ...autograd import STATE
from ...errors import DTypeError, EmberIndexError, ShapeError
from ...ops import pointwise as _pw
from ...ops._shape import broadcast_shapes
from ...ops.composite import log_softmax
from ...ops.movement import gather, reshape, squeeze, take, unsqueeze
from ...ops.reduce import mean as _mean
from ...ops.reduce import sum as _sum
from ...ops.registry import composite
from ...tensor import Tensor
from .activation import log1pexp

__all__ = ["binary_cross_entropy", "binary_cross_entropy_with_logits", "cross_entropy", "huber_loss", "l1_loss",
           "margin_ranking_loss", "mse_loss", "nll_loss", "smooth_l1_loss"]

_REDUCTIONS = ("none", "mean", "sum")


def _check_reduction(name: str, reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{name}: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return _mean(loss)
    if reduction == "sum":
        return _sum(loss)
    return loss


def _tensors(name: str, **named: Any) -> None:
    for what, t in named.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: {what} must be a Tensor, got {type(t).__name__}")


def _pair(name: str, input: Tensor, target: Tensor, reduction: str) -> None:
    """The checks shared by the elementwise losses: tensors, equal shapes, floating input, reduction."""
    _tensors(name, input=input, target=target)
    _check_reduction(name, reduction)
    if input.shape != target.shape:
        raise ShapeError(f"{name}: target shape {target.shape} differs from input shape {input.shape} "
                         "(they must be equal; losses do not broadcast)")
    if not input.dtype.is_floating_point:
        raise DTypeError(f"{name}: expected a floating input, got {input.dtype.name}")


def _check_weight(name: str, what: str, w: Any, shape: tuple, dtype: Any) -> None:
    """``w`` must broadcast to ``shape`` without growing it, and match the input's dtype."""
    if w is None:
        return
    _tensors(name, **{what: w})
    try:
        ok = broadcast_shapes(name, tuple(w.shape), shape) == shape
    except ShapeError:
        ok = False
    if not ok:
        raise ShapeError(f"{name}: {what} of shape {w.shape} does not broadcast to the input shape {shape}")
    if w.dtype is not dtype:
        raise DTypeError(f"{name}: {what} dtype {w.dtype.name} differs from the input dtype {dtype.name}")


# ----------------------------------------------------------------------------- regression losses


@composite
def mse_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Squared error ``(input - target)^2``."""
    _pair("mse_loss", input, target, reduction)
    d = input - target
    return _reduce(d * d, reduction)


@composite
def l1_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Absolute error ``|input - target|``."""
    _pair("l1_loss", input, target, reduction)
    return _reduce(_pw.abs(input - target), reduction)


@composite
def smooth_l1_loss(input: Tensor, target: Tensor, reduction: str = "mean", beta: float = 1.0) -> Tensor:
    """``0.5 d^2 / beta`` where ``|d| < beta``, ``|d| - 0.5 beta`` elsewhere (``d = input - target``);
    ``beta = 0`` is the L1 loss."""
    _pair("smooth_l1_loss", input, target, reduction)
    if beta < 0:
        raise ValueError(f"smooth_l1_loss: beta must be non-negative, got {beta}")
    d = input - target
    ad = _pw.abs(d)
    if beta == 0:
        return _reduce(ad, reduction)
    loss = _pw.where(ad < beta, d * d * (0.5 / beta), ad - 0.5 * beta)
    return _reduce(loss, reduction)


@composite
def huber_loss(input: Tensor, target: Tensor, reduction: str = "mean", delta: float = 1.0) -> Tensor:
    """``0.5 d^2`` where ``|d| < delta``, ``delta (|d| - 0.5 delta)`` elsewhere (``delta * smooth_l1``)."""
    _pair("huber_loss", input, target, reduction)
    if delta <= 0:
        raise ValueError(f"huber_loss: delta must be positive, got {delta}")
    d = input - target
    ad = _pw.abs(d)
    loss = _pw.where(ad < delta, d * d * 0.5, (ad - 0.5 * delta) * delta)
    return _reduce(loss, reduction)


@composite
def margin_ranking_loss(input1: Tensor, input2: Tensor, target: Tensor, margin: float = 0.0,
                        reduction: str = "mean") -> Tensor:
    """``max(0, -target * (input1 - input2) + margin)`` with ``target`` in {1, -1}."""
    name = "margin_ranking_loss"
    _tensors(name, input1=input1, input2=input2, target=target)
    _check_reduction(name, reduction)
    if not input1.shape == input2.shape == target.shape:
        raise ShapeError(f"{name}: input1, input2 and target must have the same shape, got {input1.shape}, "
                         f"{input2.shape} and {target.shape}")
    # clamp (not relu) so the gradient at exactly 0 passes, as PyTorch's clamp_min does.
    return _reduce(_pw.clamp(-target * (input1 - input2) + margin, min=0.0), reduction)


# ----------------------------------------------------------------------------- binary classification

_LOG_FLOOR = -100.0  # PyTorch clamps BCE's logarithms at -100
_X_FLOOR = math.exp(_LOG_FLOOR)


def _clamped_log(x: Tensor) -> Tensor:
    """``max(log(x), -100)``; its gradient is 0 (not NaN) where the floor applies, e.g. at x = 0."""
    low = x < _X_FLOOR
    return _pw.where(low, _LOG_FLOOR, _pw.log(_pw.where(low, 1.0, x)))


@composite
def binary_cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None,
                         reduction: str = "mean") -> Tensor:
    """``-w (t log(x) + (1 - t) log(1 - x))`` for probabilities ``x``; each log is clamped at -100
    as in PyTorch, so a confident wrong prediction costs 100, not infinity."""
    name = "binary_cross_entropy"
    _pair(name, input, target, reduction)
    _check_weight(name, "weight", weight, input.shape, input.dtype)
    if STATE.tracer is None and input.numel():
        lo, hi = float(input.data.min()), float(input.data.max())  # methods: NumPy's or CuPy's
        if lo < 0.0 or hi > 1.0 or lo != lo or hi != hi:
            raise ValueError(f"{name}: all elements of input must be between 0 and 1 (probabilities), got values "
                             f"in [{lo:g}, {hi:g}]; for logits use binary_cross_entropy_with_logits")
    log_x = _clamped_log(input)
    log_1mx = _clamped_log(1.0 - input)
    loss = -(target * (log_x - log_1mx) + log_1mx)
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)


@composite
def binary_cross_entropy_with_logits(input: Tensor, target: Tensor, weight: Tensor | None = None,
                                     reduction: str = "mean", pos_weight: Tensor | None = None) -> Tensor:
    """``-w (p t log(sigmoid(x)) + (1 - t) log(1 - sigmoid(x)))`` from logits ``x``, computed as
    ``(1 - t) x + (1 + (p - 1) t) softplus(-x)`` with an overflow-free softplus: exact for ``|x|``
    in the thousands. ``pos_weight`` (``p``) broadcasts along the last (class) dimension."""
    name = "binary_cross_entropy_with_logits"
    _pair(name, input, target, reduction)
    _check_weight(name, "weight", weight, input.shape, input.dtype)
    _check_weight(name, "pos_weight", pos_weight, input.shape, input.dtype)
    sp = log1pexp(-input)  # -log(sigmoid(x))
    if pos_weight is not None:
        sp = sp * ((pos_weight - 1.0) * target + 1.0)
    loss = (1.0 - target) * input + sp
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)


# ----------------------------------------------------------------------------- multi-class classification


def _class_shapes(name: str, input: Tensor, target: Tensor) -> None:
    if input.ndim == 0:
        raise ShapeError(f"{name}: input must have a class dimension: (C,), (N, C) or (N, C, d1, ...), "
                         f"got a 0-d tensor")
    expected = () if input.ndim == 1 else (input.shape[0],) + input.shape[2:]
    if target.shape != expected:
        layout = "()" if input.ndim == 1 else "(N, d1, ...)"
        raise ShapeError(f"{name}: expected target of shape {expected} {layout} for input of shape {input.shape}, "
                         f"got {target.shape}")


def _class_terms(name: str, logp: Tensor, target: Tensor, weight: Tensor | None,
                 ignore_index: int) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """For (N, C, ...) log-probabilities and (N, ...) class indices: the per-element loss
    ``-w[t] logp[t]`` (0 where ignored), the per-element weights ``w[t]`` (0 where ignored; None when
    every weight is 1), and the float mask of non-ignored targets (None when none is ignored)."""
    c = logp.shape[1]
    ignoring = True
    if STATE.tracer is None:  # eager: validate the indices, and skip the masking when nothing is ignored
        t = target.data
        ignored = t == ignore_index
        bad = ~ignored & ((t < 0) | (t >= c))
        if bad.any():
            raise EmberIndexError(f"{name}: target {int(t[bad].flat[0])} is out of bounds: class indices must lie "
                                  f"in [0, {c}) (or equal ignore_index={ignore_index})")
        ignoring = bool(ignored.any())
    if ignoring:
        valid = target != ignore_index
        safe = _pw.where(valid, target, 0)
        mask = _pw.cast(valid, logp.dtype)
    else:
        safe, mask = target, None
    picked = squeeze(gather(logp, 1, unsqueeze(safe, 1)), 1)
    if weight is not None:
        w = take(weight, safe)
        w = w * mask if mask is not None else w
    else:
        w = mask
    loss = -(picked * w) if w is not None else -picked
    return loss, w, mask


def _check_class_weight(name: str, weight: Any, c: int, dtype: Any) -> None:
    if weight is None:
        return
    _tensors(name, weight=weight)
    if weight.shape != (c,):
        raise ShapeError(f"{name}: weight must have shape ({c},), one entry per class, got {weight.shape}")
    if weight.dtype is not dtype:
        raise DTypeError(f"{name}: weight dtype {weight.dtype.name} differs from the input dtype {dtype.name}")


def _as_batched(input: Tensor, target: Tensor) -> tuple[Tensor, Tensor, bool]:
    """(C,) input and () target as a batch of one."""
    if input.ndim == 1:
        return unsqueeze(input, 0), reshape(target, (1,)), True
    return input, target, False


def _finish(loss: Tensor, w: Tensor | None, reduction: str, single: bool) -> Tensor:
    if reduction == "mean":
        # sum / count in both cases (not sum * (1/n)), so a traced graph, which always masks ignored targets
        # because it cannot look at them, rounds exactly as the eager path that skips the mask
        return _sum(loss) / (_sum(w) if w is not None else float(loss.numel()))
    if reduction == "sum":
        return _sum(loss)
    return reshape(loss, ()) if single else loss


def _index_target(name: str, input: Tensor, target: Tensor, weight: Any, reduction: str) -> None:
    _tensors(name, input=input, target=target)
    _check_reduction(name, reduction)
    if not input.dtype.is_floating_point:
        raise DTypeError(f"{name}: expected a floating input, got {input.dtype.name}")
    if target.dtype.is_floating_point or target.dtype.is_bool:
        raise DTypeError(f"{name}: target must hold integer class indices, got {target.dtype.name}")
    _class_shapes(name, input, target)
    _check_class_weight(name, weight, input.shape[0 if input.ndim == 1 else 1], input.dtype)


@composite
def nll_loss(input: Tensor, target: Tensor, weight: Tensor | None = None, ignore_index: int = -100,
             reduction: str = "mean") -> Tensor:
    """Negative log-likelihood of class indices given log-probabilities: ``-w[t] * input[t]``.

    ``input`` is (C,), (N, C) or (N, C, d1, ...); ``target`` is (), (N,) or (N, d1, ...). Targets equal to
    ``ignore_index`` contribute nothing; ``'mean'`` divides by the summed weights of the others.
    """
    name = "nll_loss"
    _index_target(name, input, target, weight, reduction)
    x, t, single = _as_batched(input, target)
    loss, w, _ = _class_terms(name, x, t, weight, ignore_index)
    return _finish(loss, w, reduction, single)


@composite
def cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None, ignore_index: int = -100,
                  reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy between logits and targets: ``nll_loss(log_softmax(input, class_dim), target)``.

    ``input`` is (C,), (N, C) or (N, C, d1, ...) logits. ``target`` is either integer class indices of
    shape (), (N,) or (N, d1, ...), or class probabilities of the input's shape. ``label_smoothing``
    mixes the target with the uniform distribution: the loss becomes ``(1 - eps) * nll + eps / C *
    sum_c(-w_c logp_c)``; with indices, ``'mean'`` divides by the summed weights of non-ignored targets,
    with probabilities by the number of elements N * d1 * ..., both as in PyTorch.
    """
    name = "cross_entropy"
    _tensors(name, input=input, target=target)
    _check_reduction(name, reduction)
    if isinstance(label_smoothing, bool) or not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{name}: label_smoothing must be between 0 and 1, got {label_smoothing!r}")
    if not input.dtype.is_floating_point:
        raise DTypeError(f"{name}: expected floating logits, got {input.dtype.name}")
    cdim = 0 if input.ndim == 1 else 1
    if input.ndim == 0:
        _class_shapes(name, input, target)
    c = input.shape[cdim]
    eps = float(label_smoothing)

    if target.dtype.is_floating_point:  # class probabilities
        if target.shape != input.shape:
            raise ShapeError(f"{name}: a probability target must have the input's shape {input.shape}, got "
                             f"{target.shape} (class indices must be an integer tensor)")
        if ignore_index >= 0:
            raise ValueError(f"{name}: ignore_index ({ignore_index}) is not supported for probability targets")
        _check_class_weight(name, weight, c, input.dtype)
        logp = log_softmax(input, cdim)
        if eps:
            target = target * (1.0 - eps) + eps / c
        prod = logp * target
        if weight is not None:
            prod = prod * reshape(weight, (c,) + (1,) * (input.ndim - 1 - cdim))
        return _reduce(-_sum(prod, cdim), reduction)

    _index_target(name, input, target, weight, reduction)
    x, t, single = _as_batched(input, target)
    logp = log_softmax(x, 1)
    loss, w, mask = _class_terms(name, logp, t, weight, ignore_index)
    if eps:
        if weight is not None:
            smooth = -_sum(logp * reshape(weight, (c,) + (1,) * (x.ndim - 2)), 1)
        else:
            smooth = -_sum(logp, 1)
        if mask is not None:
            smooth = smooth * mask
        loss = loss * (1.0 - eps) + smooth * (eps / c)
    return _finish(loss, w, reduction, single)
