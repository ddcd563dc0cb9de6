"""Mixed precision: ``autocast`` (float16 storage, float32 accumulation) and ``GradScaler`` (loss scaling).

``ember.autocast(device_type, dtype=ember.float16)`` is a context manager and decorator with PyTorch's
semantics. Inside it, each op falls into one of three classes (``LOW_PRECISION_OPS``, ``FLOAT32_OPS``,
everything else):

* **low precision** (matmul, mm, bmm, ``@``, linear, bilinear, conv2d, scaled_dot_product_attention):
  floating inputs are rounded to the autocast dtype and the result is returned in it. On the CPU the
  op then computes in float32 from those rounded values and rounds its result once: storage is
  float16, accumulation float32. (NumPy's float16 matmul has no BLAS: it is ~5-100x slower than
  float32 sgemm, and a float16 running sum would lose the small terms of a long dot product. A
  product of two float16 numbers is exact in float32, so this matches a float16 GEMM that
  accumulates in float32, as cuBLAS and PyTorch's CPU kernels do.) On CUDA the op runs in float16
  directly; cuBLAS accumulates in float32.
* **float32** (exp, log, log1p, expm1, rsqrt, pow, sum, prod, cumsum, mean, var, std, norm, logsumexp,
  softmax, log_softmax, softplus, layer_norm, batch_norm, normalize and the losses): float16 inputs
  are cast up and the op runs, and returns, float32.
* **everything else** runs in the widest dtype of its inputs (Ember's ordinary promotion). Composite
  functions not in a list run op by op, so their primitives follow the lists.

float64 tensors and non-floating tensors are never cast. Ops called with an explicit ``dtype=`` are not
autocast. The casts are ordinary ``cast`` ops: gradients flow through them (a gradient reaching a
float16 value is rounded to float16, which is why float16 training wants ``GradScaler``) and
``ember.jit`` records them like any other op. Call ``backward()`` outside the region, as in PyTorch.

The dispatch hook (``ember.ops.registry.AUTOCAST``) is ``None`` unless some thread is inside an enabled
region, so eager mode pays one global-variable test per op otherwise. Regions are per thread.
``ember.jit`` guards its traces on the autocast state at the call: a jitted function called inside and
outside a region keeps one trace for each.

bfloat16 is not offered: NumPy has no bfloat16 dtype (``ml_dtypes`` adds one, but Ember's dtype table,
promotion, checkpoints and code generator do not know it yet); ``dtype=`` accepts it once
``ember.dtypes`` defines it.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from . import dtypes as _dt
from .autograd import STATE, no_grad
from .errors import DeviceError, DTypeError, EmberError
from .ops import registry as _registry
from .ops.pointwise import cast
from .tensor import Tensor

__all__ = ["FLOAT32_OPS", "LOW_PRECISION_OPS", "GradScaler", "autocast", "get_autocast_dtype",
           "is_autocast_enabled"]

DEVICE_TYPES = ("cpu", "cuda")
# Device types whose low-precision ops compute in float32 from rounded inputs (see the module docstring).
_FLOAT32_ACCUMULATE = frozenset({"cpu"})

# Primitive ops by registry name, composites by ``module.qualname`` (the keys of registry.COMPOSITES).
LOW_PRECISION_OPS = (
    "matmul", "linear",
    "ember.ops.linalg.conv2d", "ember.nn.functional.linear.linear", "ember.nn.functional.linear.bilinear",
    "ember.nn.functional.attention.scaled_dot_product_attention",
)
FLOAT32_OPS = (
    "exp", "log", "log1p", "expm1", "rsqrt", "pow", "sum", "prod", "cumsum",
    "ember.ops.pointwise.log2", "ember.ops.pointwise.exp2", "ember.ops.pointwise.reciprocal",
    "ember.ops.reduce.mean", "ember.ops.reduce.var", "ember.ops.reduce.std", "ember.ops.reduce.norm",
    "ember.ops.reduce.logsumexp", "ember.ops.composite.softmax", "ember.ops.composite.log_softmax",
    "ember.nn.functional.activation.softplus",
    "ember.nn.functional.normalization.layer_norm", "ember.nn.functional.normalization.normalize",
    "ember.nn.functional.normalization._batch_norm_batch_stats",
    "ember.nn.functional.normalization._batch_norm_running_stats",
    "ember.nn.functional.loss.mse_loss", "ember.nn.functional.loss.l1_loss",
    "ember.nn.functional.loss.smooth_l1_loss", "ember.nn.functional.loss.huber_loss",
    "ember.nn.functional.loss.margin_ranking_loss", "ember.nn.functional.loss.binary_cross_entropy",
    "ember.nn.functional.loss.binary_cross_entropy_with_logits", "ember.nn.functional.loss.nll_loss",
    "ember.nn.functional.loss.cross_entropy",
)
_LOW, _F32 = 1, 2


def _low_dtypes() -> tuple[_dt.DType, ...]:
    return tuple(d for d in (_dt.float16, getattr(_dt, "bfloat16", None)) if d is not None)


# ----------------------------------------------------------------------------- per-thread state


class _State(threading.local):
    """Per thread: the autocast dtype per device type (None: off) and the depth of listed ops being run."""

    def __init__(self) -> None:
        self.dtype: dict[str, _dt.DType | None] = dict.fromkeys(DEVICE_TYPES)
        self.inside = 0  # > 0 while a listed op runs: the ops it is made of are not autocast again


_STATE = _State()
_LOCK = threading.Lock()
_OPEN = [0]  # enabled regions open in all threads; the dispatch hook is installed while > 0
_POLICY: dict[Any, int] = {}  # Op or composite function -> _LOW / _F32 (filled on first use)


def _policies() -> dict[Any, int]:
    if not _POLICY:
        from . import nn  # noqa: F401  (its composites register on import)
        table = {}
        for names, kind in ((LOW_PRECISION_OPS, _LOW), (FLOAT32_OPS, _F32)):
            for name in names:
                target = _registry.REGISTRY.get(name) or _registry.COMPOSITES.get(name)
                if target is None:
                    raise EmberError(f"ember.amp: {name!r} is neither a registered op nor a composite")
                table[target] = kind
        _POLICY.update(table)
    return _POLICY


def is_autocast_enabled(device_type: str = "cpu") -> bool:
    """Whether this thread is inside an enabled ``autocast`` region for ``device_type``."""
    return _STATE.dtype[_check_device_type("is_autocast_enabled", device_type)] is not None


def get_autocast_dtype(device_type: str = "cpu") -> _dt.DType | None:
    """The low-precision dtype of this thread's ``autocast`` region for ``device_type`` (None outside one)."""
    return _STATE.dtype[_check_device_type("get_autocast_dtype", device_type)]


def state_key() -> tuple:
    """This thread's autocast state as a hashable value, for caches that must not mix states."""
    return tuple(_STATE.dtype[d] for d in DEVICE_TYPES)


def _check_device_type(where: str, device_type: Any) -> str:
    if not isinstance(device_type, str) or device_type not in DEVICE_TYPES:
        raise DeviceError(f"{where}: device_type must be one of {', '.join(map(repr, DEVICE_TYPES))}, "
                          f"got {device_type!r}")
    return device_type


# ----------------------------------------------------------------------------- the context manager


class autocast(contextlib.ContextDecorator):  # PyTorch's (lower-case) name
    """Run eligible ops in mixed precision inside a ``with`` block or a decorated function.

    ``device_type``: ``"cpu"`` or ``"cuda"``; only ops on tensors of that device type are affected.
    ``dtype``: the low-precision dtype (``ember.float16``, the default). ``enabled=False`` turns
    autocast off inside the block (regions nest; leaving one restores the outer state).
    ``cache_enabled`` is accepted for PyTorch compatibility; there is no cast cache.
    See the module docstring for which ops run in which precision.

    >>> with ember.autocast("cpu"):
    ...     y = model(x)            # linear/conv/matmul in float16, softmax/losses in float32
    >>> loss = loss_fn(y, t)         # backward outside the region
    """

    def __init__(self, device_type: str = "cpu", dtype: Any = None, enabled: bool = True,
                 cache_enabled: bool | None = None) -> None:
        self.device_type = _check_device_type("autocast", device_type)
        low = _low_dtypes()
        if dtype is None:
            dtype = _dt.float16
        try:
            d = _dt.to_dtype(dtype)
        except DTypeError:
            d = None
        if d not in low:
            raise DTypeError(f"autocast: dtype must be one of {', '.join(x.name for x in low)} (the low-precision "
                             f"dtype eligible ops run in), got {getattr(dtype, 'name', dtype)!r}")
        if not isinstance(enabled, (bool, np.bool_)):
            raise TypeError(f"autocast: enabled must be a bool, got {type(enabled).__name__}")
        self.dtype = d
        self.enabled = bool(enabled)
        self.cache_enabled = cache_enabled
        self._prev: list[_dt.DType | None] = []

    def __enter__(self) -> autocast:
        table = _STATE.dtype
        self._prev.append(table[self.device_type])
        table[self.device_type] = self.dtype if self.enabled else None
        if self.enabled:
            _policies()
            with _LOCK:
                _OPEN[0] += 1
                _registry.AUTOCAST = _HOOK
        return self

    def __exit__(self, *exc: Any) -> None:
        _STATE.dtype[self.device_type] = self._prev.pop()
        if self.enabled:
            with _LOCK:
                _OPEN[0] -= 1
                if _OPEN[0] == 0:
                    _registry.AUTOCAST = None

    def _recreate_cm(self) -> autocast:
        # A decorated function gets a fresh region per call, so recursion and threads do not share state.
        return autocast(self.device_type, self.dtype, self.enabled, self.cache_enabled)

    def __repr__(self) -> str:
        return f"ember.autocast({self.device_type!r}, dtype={self.dtype!r}, enabled={self.enabled})"


# ----------------------------------------------------------------------------- dispatch


def _eligible(v: Any, kind: int, low: _dt.DType) -> bool:
    d = v.dtype
    if d.category != _dt.FLOATING or d is _dt.float64:
        return False
    return d is not low if kind == _LOW else d is not _dt.float32


def _plan(kind: int, low: _dt.DType, device_type: str) -> Callable[[Any], Any]:
    """How a listed op's tensor arguments are converted."""
    if kind == _F32:
        return lambda v: cast(v, _dt.float32) if isinstance(v, Tensor) and _eligible(v, kind, low) else v
    if device_type in _FLOAT32_ACCUMULATE:  # round to the low dtype, compute in float32
        def wide(v: Any) -> Any:
            if not isinstance(v, Tensor) or v.dtype.category != _dt.FLOATING or v.dtype is _dt.float64:
                return v
            return cast(cast(v, low) if v.dtype is not low else v, _dt.float32)
        return wide
    return lambda v: cast(v, low) if isinstance(v, Tensor) and _eligible(v, kind, low) else v


def _round_out(out: Any, low: _dt.DType) -> Any:
    if isinstance(out, Tensor):
        return cast(out, low) if out.dtype is _dt.float32 else out
    if isinstance(out, (tuple, list)):
        return type(out)(_round_out(o, low) for o in out)
    return out


def _first_device_type(values: Any) -> str | None:
    for v in values:
        if isinstance(v, Tensor):
            return v.device.type
    return None


def _run(kind: int, low: _dt.DType, device_type: str, f: Callable, args: tuple, kwargs: dict) -> Any:
    if kind == _LOW and any(isinstance(v, Tensor) and v.dtype is _dt.float64 for v in (*args, *kwargs.values())):
        kind = 0  # a float64 operand: the op runs as called, in float64
    else:
        convert = _plan(kind, low, device_type)
        args = tuple(convert(a) for a in args)
        kwargs = {k: convert(v) for k, v in kwargs.items()}
    st = _STATE
    st.inside += 1
    try:
        out = f(*args, **kwargs)
    finally:
        st.inside -= 1
    if kind == _LOW and device_type in _FLOAT32_ACCUMULATE:
        out = _round_out(out, low)
    return out


class _Hook:
    """What ``ember.ops.registry`` calls while an autocast region is open (in any thread)."""

    @staticmethod
    def apply(op: Any, inputs: tuple, attrs: dict) -> Any:
        """A primitive: run it autocast, or ``NotImplemented`` to dispatch it as usual."""
        kind = _POLICY.get(op)
        st = _STATE
        if kind is None or st.inside or not inputs:
            return NotImplemented
        device_type = inputs[0].device.type
        low = st.dtype.get(device_type)
        if low is None:
            return NotImplemented
        return _run(kind, low, device_type, lambda *xs: _registry.apply(op, *xs, **attrs), inputs, {})

    @staticmethod
    def call(fn: Callable, run: Callable, args: tuple, kwargs: dict) -> Any:
        """A composite: run it autocast, or ``NotImplemented`` to dispatch it as usual.

        An unlisted composite runs op by op inside a region (its primitives are autocast), never through
        the eager-fusion cache, whose entries must not depend on the autocast state.
        """
        st = _STATE
        if st.inside:
            return NotImplemented
        device_type = _first_device_type(args) or _first_device_type(kwargs.values())
        low = st.dtype.get(device_type) if device_type is not None else None
        if low is None:
            return NotImplemented
        kind = _POLICY.get(fn)
        if kind is None or kwargs.get("dtype") is not None:
            sym = _registry.SYMBOLIC[0]
            if STATE.tracer is None and sym is not None:
                return sym.call(fn, args, kwargs)
            return fn(*args, **kwargs)
        return _run(kind, low, device_type, run, args, kwargs)


_HOOK = _Hook()


# ----------------------------------------------------------------------------- loss scaling

_READY, _UNSCALED, _STEPPED = 0, 1, 2


class GradScaler:
    """Dynamic loss scaling for float16 training, with ``torch.amp.GradScaler``'s API and scale rule.

    ``scale(loss)`` multiplies the loss by the scale (a float32 tensor, so ``ember.jit`` reads its current
    value); after ``backward()``, ``step(optimizer)`` unscales the gradients and skips the step when any
    is inf or NaN; ``update()`` halves the scale (``backoff_factor``) after a skipped step and doubles it
    (``growth_factor``) after ``growth_interval`` clean steps in a row. Parameters (and so gradients)
    should stay float32: ``autocast`` casts them per op. ``unscale_``, ``step`` and ``update`` read
    values, so they run eagerly, outside ``ember.jit``.

    >>> scaler = ember.amp.GradScaler()
    >>> with ember.autocast("cpu"):
    ...     loss = loss_fn(model(x), y)
    >>> scaler.scale(loss).backward()
    >>> scaler.step(opt); scaler.update(); opt.zero_grad()
    """

    def __init__(self, device: str = "cpu", init_scale: float = 2.0 ** 16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000, enabled: bool = True) -> None:
        if not isinstance(device, str) or device not in DEVICE_TYPES:
            raise DeviceError(f"GradScaler: device must be one of {', '.join(map(repr, DEVICE_TYPES))}, got "
                              f"{device!r} (pass init_scale= and the other settings by keyword)")
        self.device = device
        _positive("init_scale", init_scale)
        _positive("growth_factor", growth_factor)
        if not growth_factor > 1.0:
            raise ValueError(f"GradScaler: growth_factor must be > 1, got {growth_factor!r}")
        if not 0.0 < backoff_factor < 1.0:
            raise ValueError(f"GradScaler: backoff_factor must be in (0, 1), got {backoff_factor!r}")
        _interval(growth_interval)
        self._enabled = bool(enabled)
        self._scale = np.float32(init_scale)
        self._growth_factor = float(growth_factor)
        self._backoff_factor = float(backoff_factor)
        self._growth_interval = int(growth_interval)
        self._growth_tracker = 0
        self._tensors: dict[Any, Tensor] = {}  # the scale as a 0-d float32 tensor per device
        self._per_optimizer: dict[int, dict[str, Any]] = {}

    # -- scaling
    def scale(self, outputs: Any) -> Any:
        """``outputs`` (a tensor, or a list/tuple of them, nested) multiplied by the current scale."""
        if not self._enabled:
            return outputs
        if isinstance(outputs, Tensor):
            return outputs * self._scale_tensor(outputs.device)
        if isinstance(outputs, (list, tuple)):
            return type(outputs)(self.scale(o) for o in outputs)
        raise TypeError(f"GradScaler.scale: outputs must be a Tensor or a list/tuple of Tensors, "
                        f"got {type(outputs).__name__}")

    def _scale_tensor(self, device: Any) -> Tensor:
        t = self._tensors.get(device)
        if t is None:
            from .ops.creation import tensor
            t = self._tensors[device] = tensor(float(self._scale), dtype=_dt.float32, device=device)
        return t

    def _set_scale(self, value: Any) -> None:
        self._scale = np.float32(value)
        with no_grad():
            for t in self._tensors.values():
                t.fill_(float(self._scale))  # in place: a jitted ``scale(loss)`` reads the new value

    # -- unscaling and stepping
    def _state(self, optimizer: Any) -> dict[str, Any]:
        return self._per_optimizer.setdefault(id(optimizer), {"stage": _READY, "found_inf": False})

    def unscale_(self, optimizer: Any) -> None:
        """Divide ``optimizer``'s gradients by the scale in place and record whether any is inf/NaN.

        Call it before gradient clipping; at most once per optimizer between ``update()`` calls.
        """
        if not self._enabled:
            return
        if STATE.tracer is not None:
            raise EmberError("GradScaler.unscale_ reads gradient values: call it (and step/update) outside "
                             "ember.jit; only scaler.scale(loss) can be traced")
        state = self._state(optimizer)
        if state["stage"] == _UNSCALED:
            raise EmberError("GradScaler.unscale_: already called on this optimizer since the last update()")
        if state["stage"] == _STEPPED:
            raise EmberError("GradScaler.unscale_: called after step(); call update() first")
        inv = float(np.float32(1.0 / np.float64(self._scale)))
        found = False
        with no_grad():
            for group in _param_groups(optimizer):
                for p in group["params"]:
                    g = p.grad
                    if g is None:
                        continue
                    values = g.values if getattr(g, "is_sparse", False) is True else g
                    if values.dtype is _dt.float16:
                        raise DTypeError("GradScaler.unscale_: a parameter of shape "
                                         f"{tuple(p.shape)} has float16 gradients; keep parameters float32 "
                                         "(autocast casts them per op) so unscaled gradients keep their range")
                    if not found:
                        found = not bool(_all_finite(values))
                    values.mul_(inv)
        state["found_inf"] = found
        state["stage"] = _UNSCALED

    def step(self, optimizer: Any, *args: Any, **kwargs: Any) -> Any:
        """Unscale (unless ``unscale_`` was called) and run ``optimizer.step()`` unless a gradient is inf/NaN.

        Returns what ``optimizer.step`` returns, or None when the step was skipped.
        """
        if not self._enabled:
            return optimizer.step(*args, **kwargs)
        if "closure" in kwargs:
            raise EmberError("GradScaler.step: a closure is not supported while the scaler is enabled")
        state = self._state(optimizer)
        if state["stage"] == _STEPPED:
            raise EmberError("GradScaler.step: already called for this optimizer since the last update()")
        if state["stage"] == _READY:
            self.unscale_(optimizer)
        result = None if state["found_inf"] else optimizer.step(*args, **kwargs)
        state["stage"] = _STEPPED
        return result

    def update(self, new_scale: Any = None) -> None:
        """Adjust the scale after the step(s) of this iteration (or set it to ``new_scale``)."""
        if not self._enabled:
            return
        if new_scale is not None:
            if isinstance(new_scale, Tensor):
                if new_scale.numel() != 1 or new_scale.requires_grad:
                    raise ValueError("GradScaler.update: new_scale must be a float or a 1-element tensor that "
                                     f"does not require grad, got shape {tuple(new_scale.shape)}")
                new_scale = new_scale.item()
            if isinstance(new_scale, bool) or not isinstance(new_scale, (int, float, np.floating, np.integer)):
                raise TypeError(f"GradScaler.update: new_scale must be a float or a 1-element tensor, "
                                f"got {type(new_scale).__name__}")
            _positive("new_scale", new_scale)
            self._set_scale(new_scale)
        else:
            states = list(self._per_optimizer.values())
            if not any(s["stage"] != _READY for s in states):
                raise EmberError("GradScaler.update: no inf checks were recorded since the last update(); "
                                 "call scaler.step(optimizer) (or unscale_) first")
            if any(s["found_inf"] for s in states):
                self._set_scale(self._scale * np.float32(self._backoff_factor))
                self._growth_tracker = 0
            else:
                self._growth_tracker += 1
                if self._growth_tracker == self._growth_interval:
                    grown = self._scale * np.float32(self._growth_factor)
                    if math.isfinite(grown):
                        self._set_scale(grown)
                    self._growth_tracker = 0
        self._per_optimizer.clear()

    # -- settings and state
    def get_scale(self) -> float:
        """The current scale (1.0 when disabled)."""
        return float(self._scale) if self._enabled else 1.0

    def is_enabled(self) -> bool:
        return self._enabled

    def get_growth_factor(self) -> float:
        return self._growth_factor

    def set_growth_factor(self, new_factor: float) -> None:
        self._growth_factor = float(new_factor)

    def get_backoff_factor(self) -> float:
        return self._backoff_factor

    def set_backoff_factor(self, new_factor: float) -> None:
        self._backoff_factor = float(new_factor)

    def get_growth_interval(self) -> int:
        return self._growth_interval

    def set_growth_interval(self, new_interval: int) -> None:
        self._growth_interval = _interval(new_interval)

    def state_dict(self) -> dict[str, Any]:
        """PyTorch's layout: scale, growth/backoff factors, growth interval and growth tracker ({} if disabled)."""
        if not self._enabled:
            return {}
        return {"scale": self.get_scale(), "growth_factor": self._growth_factor,
                "backoff_factor": self._backoff_factor, "growth_interval": self._growth_interval,
                "_growth_tracker": self._growth_tracker}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what ``state_dict()`` returned (also accepts a ``torch.amp.GradScaler`` state dict)."""
        if not self._enabled:
            return
        if not isinstance(state_dict, dict):
            raise TypeError(f"GradScaler.load_state_dict: expected a dict, got {type(state_dict).__name__}")
        if not state_dict:
            raise EmberError("GradScaler.load_state_dict: the state dict is empty (saved from a disabled scaler?)")
        missing = [k for k in ("scale", "growth_factor", "backoff_factor", "growth_interval") if k not in state_dict]
        if missing:
            raise KeyError(f"GradScaler.load_state_dict: missing {', '.join(missing)}; got keys "
                           f"{', '.join(sorted(state_dict))}")
        scale = state_dict["scale"]
        self._set_scale(scale.item() if isinstance(scale, Tensor) else scale)
        self._growth_factor = float(state_dict["growth_factor"])
        self._backoff_factor = float(state_dict["backoff_factor"])
        self._growth_interval = _interval(state_dict["growth_interval"])
        tracker = state_dict.get("_growth_tracker", 0)
        self._growth_tracker = int(tracker.item() if isinstance(tracker, Tensor) else tracker)

    def __repr__(self) -> str:
        return (f"GradScaler(scale={self.get_scale()}, growth_tracker={self._growth_tracker}, "
                f"enabled={self._enabled})")


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"GradScaler: {name} must be a positive finite number, got {value!r}")


def _interval(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"GradScaler: growth_interval must be a positive int, got {value!r}")
    return int(value)


def _param_groups(optimizer: Any) -> list[dict[str, Any]]:
    groups = getattr(optimizer, "param_groups", None)
    if groups is None:
        raise TypeError(f"GradScaler: expected an optimizer with param_groups, got {type(optimizer).__name__}")
    return groups


def _all_finite(t: Tensor) -> bool:
    if type(t.data) is np.ndarray:
        return bool(np.isfinite(t.data).all())
    from .ops.pointwise import isfinite
    from .ops.reduce import all as _all
    return bool(_all(isfinite(t)).item())
