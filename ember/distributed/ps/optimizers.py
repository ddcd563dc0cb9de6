"""The optimizers that run on the parameter servers: SGD, Adagrad, Adam and AdamW.

The update rules are PyTorch's (the same float operations in the same order and dtype as
``ember.optim``), written on NumPy arrays and vectorized over rows with a *per-row* step count:

* a dense table shard is one block updated on every push, exactly ``ember.optim.X`` on the tensor;
* a sparse table is row-wise lazy: a row's optimizer state (momentum, accumulators, step count)
  changes only when the row gets a gradient, so each row behaves exactly as if it were its own
  parameter with its own ``ember.optim.X`` stepped whenever that row is in a pushed gradient. Adam's
  bias correction therefore uses the row's own step count, and weight decay and momentum touch only
  the pushed rows. The result does not depend on the number of servers.

Options are checked by building the matching ``ember.optim`` optimizer on a dummy parameter, so a
bad value gets ember.optim's own message; defaults are ember.optim's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ... import optim as _optim
from ...ops.creation import zeros

__all__ = ["RULES", "RowOptimizer"]

# rule name -> (ember.optim class, its options the servers implement, extra fixed options)
RULES: dict[str, tuple[type, tuple[str, ...], dict[str, Any]]] = {
    "sgd": (_optim.SGD, ("lr", "momentum", "dampening", "weight_decay", "nesterov"), {}),
    "adagrad": (_optim.Adagrad, ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps"), {}),
    "adam": (_optim.Adam, ("lr", "betas", "eps", "weight_decay", "amsgrad"), {}),
    "adamw": (_optim.AdamW, ("lr", "betas", "eps", "weight_decay", "amsgrad"), {}),
}


def _column(x: Any, dtype: np.dtype, ndim: int) -> Any:
    """A per-row float64 vector as ``dtype`` shaped to broadcast against ``(rows, ...)``; a scalar as ``dtype``."""
    if isinstance(x, np.ndarray):
        return x.astype(dtype).reshape(x.shape + (1,) * (ndim - 1))
    return dtype.type(x)


class RowOptimizer:
    """One optimizer rule with its options: ``apply(p, g, state, step)`` updates ``p`` and ``state`` in place.

    ``step`` is the step count after this update: an int (a dense block) or an int array with one
    count per row of ``p`` (a sparse table's rows).
    """

    def __init__(self, name: str, options: dict[str, Any]) -> None:
        self.name = name
        self.options = options
        self.state_names: tuple[str, ...] = {
            "sgd": ("momentum_buffer",) if options.get("momentum", 0) != 0 else (),
            "adagrad": ("sum",),
            "adam": ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if options.get("amsgrad") else ()),
            "adamw": ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if options.get("amsgrad") else ()),
        }[name]

    @classmethod
    def parse(cls, spec: Any, where: str) -> RowOptimizer:
        """Build from ``"adam"`` or ``("adam", {"lr": 1e-3, ...})``; errors name ``where`` (the table)."""
        if isinstance(spec, str):
            name, opts = spec, {}
        elif isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[0], str) \
                and isinstance(spec[1], dict):
            name, opts = spec
        else:
            raise TypeError(f"{where}: optimizer must be a name or a (name, options) pair such as "
                            f"('adagrad', {{'lr': 0.01}}), got {spec!r}")
        key = name.lower()
        if key not in RULES:
            raise ValueError(f"{where}: unknown optimizer {name!r}; the servers implement {', '.join(RULES)}")
        cls_, allowed, _ = RULES[key]
        bad = sorted(k for k in opts if k not in allowed)
        if bad:
            raise ValueError(f"{where}: optimizer {key!r} does not take {', '.join(map(repr, bad))} on the parameter "
                             f"server; its options are {', '.join(allowed)}")
        try:  # ember.optim checks the values (and supplies the defaults)
            ref = cls_([zeros(1, requires_grad=True)], **opts)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{where}: bad options for optimizer {key!r}: {e}") from None
        full = {k: ref.defaults[k] for k in allowed}
        if "betas" in full:
            full["betas"] = tuple(full["betas"])
        return cls(key, full)

    def to_spec(self) -> tuple[str, dict[str, Any]]:
        return self.name, dict(self.options)

    def init_state(self, shape: tuple[int, ...], dtype: np.dtype) -> dict[str, np.ndarray]:
        """Fresh state arrays (Adagrad's accumulator starts at ``initial_accumulator_value``, the rest at 0)."""
        fill = self.options.get("initial_accumulator_value", 0.0) if self.name == "adagrad" else 0.0
        return {k: np.full(shape, fill, dtype=dtype) for k in self.state_names}

    def apply(self, p: np.ndarray, g: np.ndarray, state: dict[str, np.ndarray], step: int | np.ndarray) -> None:
        """One update of ``p`` (in place) with gradient ``g`` (same shape and dtype)."""
        getattr(self, "_" + ("adam" if self.name == "adamw" else self.name))(p, g, state, step)

    # ------------------------------------------------------------------ rules (PyTorch's formulas)
    def _sgd(self, p: np.ndarray, g: np.ndarray, state: dict[str, np.ndarray], step: Any) -> None:
        o = self.options
        f = p.dtype.type
        if o["weight_decay"] != 0:
            g = g + p * f(o["weight_decay"])
        if o["momentum"] != 0:
            buf = state["momentum_buffer"]
            damp = 1 - o["dampening"]
            upd = g * f(damp) if damp != 1 else g
            running = buf * f(o["momentum"])
            running += upd
            first = np.asarray(step) == 1  # the buffer starts as a copy of the first gradient
            if first.ndim:
                first = first.reshape(first.shape + (1,) * (p.ndim - 1))
            np.copyto(buf, np.where(first, g, running))
            g = g + buf * f(o["momentum"]) if o["nesterov"] else buf
        p += g * f(-o["lr"])

    def _adagrad(self, p: np.ndarray, g: np.ndarray, state: dict[str, np.ndarray], step: Any) -> None:
        o = self.options
        f = p.dtype.type
        if o["weight_decay"] != 0:
            g = g + p * f(o["weight_decay"])
        s = state["sum"]
        s += g * g
        std = np.sqrt(s)
        std += f(o["eps"])
        t = np.asarray(step, dtype=np.float64)
        clr = o["lr"] / (1 + (t - 1) * o["lr_decay"])
        upd = g / std
        upd *= _column(-clr if clr.ndim else float(-clr), p.dtype, p.ndim)
        p += upd

    def _adam(self, p: np.ndarray, g: np.ndarray, state: dict[str, np.ndarray], step: Any) -> None:
        o = self.options
        f = p.dtype.type
        beta1, beta2 = o["betas"]
        lr, wd = o["lr"], o["weight_decay"]
        if wd != 0:
            if self.name == "adamw":
                p *= f(1 - lr * wd)
            else:
                g = g + p * f(wd)
        m, v = state["exp_avg"], state["exp_avg_sq"]
        d = g - m
        d *= f(1 - beta1)
        m += d
        v *= f(beta2)
        sq = g * g
        sq *= f(1 - beta2)
        v += sq
        if o["amsgrad"]:
            vmax = state["max_exp_avg_sq"]
            np.maximum(vmax, v, out=vmax)
            v = vmax
        t = np.asarray(step, dtype=np.float64)
        bc1 = 1 - beta1 ** t
        bc2_sqrt = (1 - beta2 ** t) ** 0.5
        denom = np.sqrt(v)
        if t.ndim:
            denom /= _column(bc2_sqrt, p.dtype, p.ndim)
        else:
            denom = denom / f(float(bc2_sqrt))
        denom += f(o["eps"])
        upd = m / denom
        upd *= _column(-(lr / bc1), p.dtype, p.ndim) if t.ndim else f(-(lr / float(bc1)))
        p += upd
