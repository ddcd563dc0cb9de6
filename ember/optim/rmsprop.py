"""RMSprop (PyTorch's ``torch.optim.RMSprop``), with momentum and the centered variant."""

from __future__ import annotations

from typing import Any

from ..ops.creation import zeros_like
from .optimizer import (
    Optimizer,
    ParamsT,
    _check_range,
    _fast_ok,
    _increment,
    _step_tensor,
    _views,
    dense_grads,
)


def rmsprop_update(p: Any, g: Any, square_avg: Any, grad_avg: Any, buf: Any, *, lr: float, alpha: float, eps: float,
                   weight_decay: float, momentum: float, centered: bool, maximize: bool) -> None:
    """One RMSprop step on ``p`` in place, PyTorch's formula."""
    if maximize:
        g = -g
    if weight_decay != 0:
        g = g + p * weight_decay
    square_avg.mul_(alpha).addcmul_(g, g, 1 - alpha)
    if centered:
        grad_avg.lerp_(g, 1 - alpha)
        avg = (square_avg - grad_avg * grad_avg).sqrt()
    else:
        avg = square_avg.sqrt()
    avg = avg.add_(eps)
    if momentum > 0:
        buf.mul_(momentum).addcdiv_(g, avg)
        p.add_(buf, alpha=-lr)
    else:
        p.addcdiv_(g, avg, value=-lr)


class RMSprop(Optimizer):
    """RMSprop: ``v = alpha v + (1 - alpha) g^2; p -= lr g / (sqrt(v) + eps)``.

    ``centered`` subtracts the square of the running mean gradient from ``v``; ``momentum`` keeps a
    buffer ``buf = momentum buf + g / (sqrt(v) + eps)`` and steps by ``lr * buf``.
    """

    _PARAM_SHAPED_STATE = ("square_avg", "momentum_buffer", "grad_avg")

    def __init__(self, params: ParamsT, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False, *,
                 maximize: bool = False) -> None:
        defaults = {"lr": lr, "momentum": momentum, "alpha": alpha, "eps": eps, "centered": centered,
                    "weight_decay": weight_decay, "maximize": maximize}
        self._validate_group(defaults)
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any]) -> None:
        for key, label in (("lr", "learning rate"), ("eps", "epsilon value"), ("momentum", "momentum value"),
                           ("weight_decay", "weight_decay value"), ("alpha", "alpha value")):
            _check_range("RMSprop", label, group[key], 0.0)

    def _step_group(self, group: dict[str, Any]) -> None:
        opts = {k: group[k] for k in ("lr", "alpha", "eps", "weight_decay", "momentum", "centered", "maximize")}
        for p, g in dense_grads(group, "RMSprop", "Adagrad or SparseAdam"):
            state = self.state[p]
            if not state:
                state["step"] = _step_tensor()
                state["square_avg"] = zeros_like(p)
            if opts["momentum"] > 0 and "momentum_buffer" not in state:
                state["momentum_buffer"] = zeros_like(p)
            if opts["centered"] and "grad_avg" not in state:
                state["grad_avg"] = zeros_like(p)
            _increment(state["step"])
            tensors = (p, g, state["square_avg"], state.get("grad_avg"), state.get("momentum_buffer"))
            rmsprop_update(*_views(_fast_ok(*tensors), *tensors), **opts)
