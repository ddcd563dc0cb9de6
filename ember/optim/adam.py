"""Adam, AdamW (decoupled weight decay) and SparseAdam (lazy Adam for row-sparse gradients)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..ops.creation import zeros_like
from .optimizer import (
    Optimizer,
    ParamsT,
    _check_betas,
    _check_number,
    _check_range,
    _describe,
    _fast_ok,
    _increment,
    _step_tensor,
    _tracing,
    _views,
    dense_grads,
    is_sparse,
    sparse_rows,
)


def adam_update(p: Any, g: Any, exp_avg: Any, exp_avg_sq: Any, max_exp_avg_sq: Any, step: Any, *, lr: float,
                beta1: float, beta2: float, eps: float, weight_decay: float, decoupled_weight_decay: bool,
                amsgrad: bool, maximize: bool, capturable: bool) -> None:
    """One Adam step on ``p`` in place, with PyTorch's formula.

    ``step`` is the count after this step: a float, or with ``capturable`` a 0-d tensor, so the bias
    corrections stay tensor ops (what a tracer needs: no value is read).
    """
    if maximize:
        g = -g
    if weight_decay != 0:
        if decoupled_weight_decay:
            p.mul_(1 - lr * weight_decay)
        else:
            g = g + p * weight_decay
    exp_avg.lerp_(g, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, 1 - beta2)
    if amsgrad:
        max_exp_avg_sq.copy_(max_exp_avg_sq.maximum(exp_avg_sq))
        exp_avg_sq = max_exp_avg_sq
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    if capturable:
        step_size_neg = -(lr / bias_correction1)
        denom = (exp_avg_sq.sqrt() / (bias_correction2.sqrt() * step_size_neg)).add_(eps / step_size_neg)
        p.addcdiv_(exp_avg, denom)
    else:
        step_size = lr / bias_correction1
        denom = (exp_avg_sq.sqrt() / bias_correction2 ** 0.5).add_(eps)
        p.addcdiv_(exp_avg, denom, value=-step_size)


def _validate_adam(name: str, group: dict[str, Any], lr_open: bool = False) -> None:
    _check_range(name, "learning rate", group["lr"], 0.0, low_open=lr_open)
    _check_range(name, "epsilon value", group["eps"], 0.0, low_open=lr_open)
    _check_betas(name, group["betas"])
    if "weight_decay" in group:
        _check_range(name, "weight_decay value", group["weight_decay"], 0.0)


class Adam(Optimizer):
    """Adam (Kingma & Ba), PyTorch's ``torch.optim.Adam``, with ``amsgrad`` and ``maximize``.

    ``weight_decay`` is L2 regularization added to the gradient, unless ``decoupled_weight_decay``
    (that is AdamW). ``capturable=True`` keeps the step count and bias corrections as tensors (slower
    eagerly; what a compiled training step uses). Row-sparse gradients raise an error: use
    ``SparseAdam`` for those parameters.
    """

    _PARAM_SHAPED_STATE = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, *, maximize: bool = False,
                 capturable: bool = False, decoupled_weight_decay: bool = False) -> None:
        defaults = {"lr": lr, "betas": tuple(betas) if isinstance(betas, list) else betas, "eps": eps,
                    "weight_decay": weight_decay, "amsgrad": amsgrad, "maximize": maximize,
                    "capturable": capturable, "decoupled_weight_decay": decoupled_weight_decay}
        self._validate_group(defaults)
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any]) -> None:
        _validate_adam(type(self).__name__, group)

    def _step_group(self, group: dict[str, Any]) -> None:
        name = type(self).__name__
        beta1, beta2 = group["betas"]
        amsgrad = group["amsgrad"]
        capturable = group["capturable"] or _tracing()
        opts = {"lr": group["lr"], "beta1": beta1, "beta2": beta2, "eps": group["eps"],
                "weight_decay": group["weight_decay"], "decoupled_weight_decay": group["decoupled_weight_decay"],
                "amsgrad": amsgrad, "maximize": group["maximize"], "capturable": capturable}
        for p, g in dense_grads(group, name, "ember.optim.SparseAdam"):
            state = self.state[p]
            if not state:
                state["step"] = _step_tensor()
                state["exp_avg"] = zeros_like(p)
                state["exp_avg_sq"] = zeros_like(p)
            if amsgrad and "max_exp_avg_sq" not in state:
                state["max_exp_avg_sq"] = zeros_like(p)
            step_t = state["step"]
            if capturable:
                step_t.add_(1)
                step: Any = step_t
            else:
                step = _increment(step_t)
            vmax = state.get("max_exp_avg_sq") if amsgrad else None
            fast = not capturable and _fast_ok(p, g, state["exp_avg"])
            adam_update(*_views(fast, p, g, state["exp_avg"], state["exp_avg_sq"], vmax), step, **opts)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), PyTorch's ``torch.optim.AdamW``:
    ``p *= 1 - lr * weight_decay`` before the Adam step. Default ``weight_decay=0.01``."""

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
                 capturable: bool = False) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         maximize=maximize, capturable=capturable, decoupled_weight_decay=True)


class SparseAdam(Optimizer):
    """Lazy Adam for row-sparse gradients (PyTorch's ``torch.optim.SparseAdam``).

    Only the rows present in a gradient have their moments updated and receive a step; the bias
    correction uses the parameter's own step count (an int in ``state["step"]``). Every parameter
    must get row-sparse gradients (``Embedding(sparse=True)``); dense gradients raise an error.
    """

    _PARAM_SHAPED_STATE = ("exp_avg", "exp_avg_sq")

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, *, maximize: bool = False) -> None:
        defaults = {"lr": lr, "betas": tuple(betas) if isinstance(betas, list) else betas, "eps": eps,
                    "maximize": maximize}
        self._validate_group(defaults)
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any]) -> None:
        _validate_adam("SparseAdam", group, lr_open=True)

    def _step_group(self, group: dict[str, Any]) -> None:
        lr, eps = group["lr"], group["eps"]
        beta1, beta2 = group["betas"]
        for i, p in enumerate(group["params"]):
            g = p.grad
            if g is None:
                continue
            if not is_sparse(g):
                self._sparse_untraceable()
                raise TypeError(f"SparseAdam: {_describe(p, i)} has a dense gradient; SparseAdam supports only "
                                "row-sparse gradients (Embedding(sparse=True)), use Adam for the other parameters")
            self._sparse_untraceable()
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = zeros_like(p)
                state["exp_avg_sq"] = zeros_like(p)
            state["step"] = step = int(_check_number("SparseAdam", "state['step']", state["step"])) + 1
            rows = sparse_rows(g, group["maximize"])
            if rows is None:
                continue
            idx, v = rows
            m_all, s_all = state["exp_avg"].data, state["exp_avg_sq"].data
            f = p.data.dtype.type
            # PyTorch's lazy update, row by row: m += (g - m) (1 - b1); s += (g^2 - s) (1 - b2);
            # p -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(s) + eps), on the rows of g only.
            old_m = m_all[idx]
            m_upd = np.subtract(v, old_m)
            m_upd *= f(1 - beta1)
            m_all[idx] = old_m + m_upd
            old_s = s_all[idx]
            s_upd = np.square(v)
            s_upd -= old_s
            s_upd *= f(1 - beta2)
            s_all[idx] = old_s + s_upd
            numer = m_upd + old_m
            s_upd += old_s
            denom = np.sqrt(s_upd, out=s_upd)
            denom += f(eps)
            step_size = lr * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
            numer /= denom
            numer *= f(-step_size)
            p.data[idx] += numer
            for t in (p, state["exp_avg"], state["exp_avg_sq"]):
                t._version[0] += 1
