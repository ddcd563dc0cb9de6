"""Adagrad (PyTorch's ``torch.optim.Adagrad``), dense and row-sparse."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ops.creation import full_like
from ..tensor import Tensor
from .optimizer import (
    Optimizer,
    ParamsT,
    _check_range,
    _describe,
    _fast_ok,
    _increment,
    _step_tensor,
    _tracing,
    _views,
    is_sparse,
    sparse_rows,
)


def adagrad_update(p: Any, g: Any, state_sum: Any, clr: Any, *, eps: float, weight_decay: float,
                   maximize: bool) -> None:
    """One Adagrad step on ``p`` in place with learning rate ``clr`` (already decayed), PyTorch's formula."""
    if maximize:
        g = -g
    if weight_decay != 0:
        g = g + p * weight_decay
    state_sum.addcmul_(g, g, value=1)
    std = state_sum.sqrt().add_(eps)
    if isinstance(clr, Tensor):  # traced: the decayed rate is a tensor; same ops as addcdiv_(value=-clr)
        p.add_(g / std * (-clr))
    else:
        p.addcdiv_(g, std, value=-clr)


class Adagrad(Optimizer):
    """Adagrad: ``sum += g^2; p -= clr * g / (sqrt(sum) + eps)`` with ``clr = lr / (1 + (t - 1) * lr_decay)``.

    Row-sparse gradients (``Embedding(sparse=True)``) update the accumulator and the parameter on
    their rows only, as PyTorch's sparse Adagrad; they cannot be combined with ``weight_decay``.
    State is created at construction (``sum`` filled with ``initial_accumulator_value``), as in PyTorch.
    """

    _PARAM_SHAPED_STATE = ("sum",)

    def __init__(self, params: ParamsT, lr: float = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10, *, maximize: bool = False) -> None:
        defaults = {"lr": lr, "lr_decay": lr_decay, "eps": eps, "weight_decay": weight_decay,
                    "initial_accumulator_value": initial_accumulator_value, "maximize": maximize}
        self._validate_group(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for p in group["params"]:
            state = self.state[p]
            state["step"] = _step_tensor()
            state["sum"] = full_like(p, group["initial_accumulator_value"])

    def _validate_group(self, group: dict[str, Any]) -> None:
        for key, label in (("lr", "learning rate"), ("lr_decay", "lr_decay value"),
                           ("weight_decay", "weight_decay value"),
                           ("initial_accumulator_value", "initial_accumulator_value"), ("eps", "epsilon value")):
            _check_range("Adagrad", label, group[key], 0.0)

    def _step_group(self, group: dict[str, Any]) -> None:
        lr, lr_decay, eps = group["lr"], group["lr_decay"], group["eps"]
        wd, maximize = group["weight_decay"], group["maximize"]
        for i, p in enumerate(group["params"]):
            g = p.grad
            if g is None:
                continue
            state = self.state[p]
            if "sum" not in state:  # a state dict from elsewhere without the accumulator
                state["step"] = _step_tensor()
                state["sum"] = full_like(p, group["initial_accumulator_value"])
            step = _increment(state["step"])
            clr = lr / (1 + (step - 1) * lr_decay) if lr_decay != 0 or not _tracing() else lr
            if is_sparse(g):
                self._sparse_step(p, g, i, state["sum"], clr, eps, wd, maximize)
                continue
            adagrad_update(*_views(_fast_ok(p, g, state["sum"]), p, g, state["sum"]), clr, eps=eps,
                           weight_decay=wd, maximize=maximize)

    def _sparse_step(self, p: Tensor, g: Any, i: int, state_sum: Tensor, clr: Any, eps: float, wd: float,
                     maximize: bool) -> None:
        self._sparse_untraceable()
        clr = float(clr)
        if wd != 0:
            raise ValueError(f"Adagrad: weight_decay={wd} is not compatible with the row-sparse gradient of "
                             f"{_describe(p, i)}")
        rows = sparse_rows(g, maximize)
        if rows is None:
            return
        idx, v = rows
        f = p.data.dtype.type
        s = state_sum.data
        rows = s[idx]
        rows += np.square(v)
        s[idx] = rows
        std = np.sqrt(rows)
        std += f(eps)
        delta = np.divide(v, std)
        delta *= f(-clr)
        p.data[idx] += delta
        p._version[0] += 1
        state_sum._version[0] += 1
