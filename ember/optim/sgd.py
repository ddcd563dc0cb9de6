"""Stochastic gradient descent, with momentum, Nesterov momentum and weight decay (PyTorch's SGD)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ops.creation import zeros_like
from ..tensor import Tensor
from .optimizer import Optimizer, ParamsT, _check_range, _describe, _fast_ok, _views, is_sparse, sparse_rows


def sgd_update(p: Any, g: Any, buf: Any, first: bool, *, lr: float, momentum: float, dampening: float,
               weight_decay: float, nesterov: bool, maximize: bool) -> None:
    """One SGD step on ``p`` in place (``buf``: the momentum buffer, ``first``: it is still empty).

    The arguments are tensors or their ``_Fast`` twins; the formula is PyTorch's.
    """
    if maximize:
        g = -g
    if weight_decay != 0:
        g = g + p * weight_decay
    if momentum != 0:
        if first:
            buf.copy_(g)
        else:
            buf.mul_(momentum).add_(g, alpha=1 - dampening)
        g = g + buf * momentum if nesterov else buf
    p.add_(g, alpha=-lr)


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with momentum (PyTorch's ``torch.optim.SGD``).

    With momentum ``m``, dampening ``d``: ``buf = m * buf + (1 - d) * g`` (``buf = g`` on the first step),
    then ``p -= lr * buf`` (or ``lr * (g + m * buf)`` with ``nesterov``). ``weight_decay`` adds
    ``weight_decay * p`` to the gradient. Row-sparse gradients (``Embedding(sparse=True)``) update only
    their rows; they are supported without momentum and weight decay only (either would have to
    touch every row), and raise a clear error otherwise.
    """

    def __init__(self, params: ParamsT, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *, maximize: bool = False) -> None:
        defaults = {"lr": lr, "momentum": momentum, "dampening": dampening, "weight_decay": weight_decay,
                    "nesterov": nesterov, "maximize": maximize}
        self._validate_group(defaults)
        super().__init__(params, defaults)

    def _validate_group(self, group: dict[str, Any]) -> None:
        _check_range("SGD", "learning rate", group["lr"], 0.0)
        _check_range("SGD", "momentum", group["momentum"], 0.0)
        _check_range("SGD", "dampening", group["dampening"], -float("inf"))
        _check_range("SGD", "weight_decay", group["weight_decay"], 0.0)
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(f"SGD: Nesterov momentum requires a momentum > 0 and zero dampening, got "
                             f"momentum={group['momentum']}, dampening={group['dampening']}")

    def _step_group(self, group: dict[str, Any]) -> None:
        opts = {k: group[k] for k in ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize")}
        for i, p in enumerate(group["params"]):
            g = p.grad
            if g is None:
                continue
            if is_sparse(g):
                self._sparse_step(p, g, i, opts)
                continue
            buf = None
            first = False
            if opts["momentum"] != 0:
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = zeros_like(p)
                    first = True
            sgd_update(*_views(_fast_ok(p, g, buf), p, g, buf), first, **opts)

    def _sparse_step(self, p: Tensor, g: Any, i: int, opts: dict[str, Any]) -> None:
        self._sparse_untraceable()
        if opts["momentum"] != 0:
            raise ValueError(f"SGD: {_describe(p, i)} has a row-sparse gradient, which SGD supports only without "
                             f"momentum (got momentum={opts['momentum']}): the momentum buffer would have to "
                             "update every row; use momentum=0, or Adagrad/SparseAdam for sparse embeddings")
        if opts["weight_decay"] != 0:
            raise ValueError(f"SGD: weight_decay={opts['weight_decay']} is not compatible with the row-sparse "
                             f"gradient of {_describe(p, i)}")
        rows = sparse_rows(g, opts["maximize"])
        if rows is None:
            return
        idx, v = rows
        delta = np.multiply(v, p.data.dtype.type(-opts["lr"]))
        p.data[idx] += delta
        p._version[0] += 1
