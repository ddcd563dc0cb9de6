"""The ``Optimizer`` base class: parameter groups, per-parameter state, ``zero_grad``, ``step`` and
``state_dict``/``load_state_dict`` in PyTorch's layout.

Update rules are written once, with the in-place tensor methods PyTorch's single-tensor optimizers
use (``mul_``, ``add_``, ``lerp_``, ``addcmul_``, ``addcdiv_``, ``sqrt``...), so a tracer can record
them. In eager mode on NumPy arrays the same rule runs on ``_Fast`` wrappers instead: they have the
same methods and do the same float operations in the same order, but write into the existing
arrays with ``out=`` rather than building a result and copying it back. Both paths give
bit-identical results (tested); the NumPy one takes about 40% less time.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from ..autograd import STATE, enable_grad, no_grad
from ..device import CPU, get_backend
from ..dtypes import float32, float64, get_default_dtype
from ..errors import DTypeError, ShapeError, TraceError
from ..tensor import Tensor, _make

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]] | Iterable[tuple[str, Tensor]]

# Set to False to run every update through ember tensor ops (what a tracer records); tests compare both.
_FAST_PATH = True
# Set to True to run, eagerly, the code path taken under a tracer (tensor-valued step counts, no value reads).
_FORCE_TRACEABLE = False


class _Required:
    def __repr__(self) -> str:
        return "<required parameter>"


required = _Required()


def _tracing() -> bool:
    """Whether ops are being recorded into a graph (then updates must stay tensor ops, no value reads)."""
    return STATE.tracer is not None or _FORCE_TRACEABLE


def is_sparse(grad: Any) -> bool:
    """Whether ``grad`` is a row-sparse gradient (``ember.sparse.RowSparseGrad``)."""
    return getattr(grad, "is_sparse", False) is True


# ----------------------------------------------------------------------------- the NumPy twin of Tensor


class _Fast:
    """A NumPy array with the in-place Tensor methods the update rules use, done with ``out=``.

    Each method performs exactly the float operations of the ``Tensor`` method of the same name, in
    the same order and dtype (Python scalars are cast to the array's dtype first, as ember's weak
    scalars are), so results are bit-identical. ``ver`` is the owning tensor's version counter,
    bumped once per in-place call; temporaries have none.
    """

    __slots__ = ("a", "ver")

    def __init__(self, a: np.ndarray, ver: list[int] | None = None) -> None:
        self.a = a
        self.ver = ver

    def _bump(self) -> _Fast:
        if self.ver is not None:
            self.ver[0] += 1
        return self

    def _o(self, other: Any) -> Any:
        if isinstance(other, _Fast):
            return other.a
        if isinstance(other, Tensor):
            return other.data
        return self.a.dtype.type(other)

    # out-of-place (temporaries)
    def __neg__(self) -> _Fast:
        return _Fast(np.negative(self.a))

    def __add__(self, other: Any) -> _Fast:
        return _Fast(np.add(self.a, self._o(other)))

    def __sub__(self, other: Any) -> _Fast:
        return _Fast(np.subtract(self.a, self._o(other)))

    def __mul__(self, other: Any) -> _Fast:
        return _Fast(np.multiply(self.a, self._o(other)))

    def __truediv__(self, other: Any) -> _Fast:
        return _Fast(np.divide(self.a, self._o(other)))

    def sqrt(self) -> _Fast:
        return _Fast(np.sqrt(self.a))

    def maximum(self, other: Any) -> _Fast:
        return _Fast(np.maximum(self.a, self._o(other)))

    # in place
    def copy_(self, src: Any) -> _Fast:
        np.copyto(self.a, self._o(src))
        return self._bump()

    def mul_(self, other: Any) -> _Fast:
        np.multiply(self.a, self._o(other), out=self.a)
        return self._bump()

    def add_(self, other: Any, alpha: Any = 1) -> _Fast:
        o = self._o(other)
        if alpha != 1:
            o = np.multiply(o, self.a.dtype.type(alpha))
        np.add(self.a, o, out=self.a)
        return self._bump()

    def addcmul_(self, a: Any, b: Any, value: Any = 1) -> _Fast:
        t = np.multiply(self._o(a), self._o(b))
        if value != 1:
            np.multiply(t, self.a.dtype.type(value), out=t)
        np.add(self.a, t, out=self.a)
        return self._bump()

    def addcdiv_(self, a: Any, b: Any, value: Any = 1) -> _Fast:
        t = np.divide(self._o(a), self._o(b))
        if value != 1:
            np.multiply(t, self.a.dtype.type(value), out=t)
        np.add(self.a, t, out=self.a)
        return self._bump()

    def lerp_(self, end: Any, weight: Any) -> _Fast:
        t = np.subtract(self._o(end), self.a)
        np.multiply(t, self.a.dtype.type(weight), out=t)
        np.add(self.a, t, out=self.a)
        return self._bump()


def _fast_ok(*tensors: Tensor | None) -> bool:
    """Whether the NumPy path may run: eager mode, NumPy arrays, one dtype."""
    if not _FAST_PATH or _tracing():
        return False
    dtype = None
    for t in tensors:
        if t is None:
            continue
        if type(t.data) is not np.ndarray or (dtype is not None and t.dtype is not dtype):
            return False
        dtype = t.dtype
    return True


def _views(fast: bool, *tensors: Tensor | None) -> tuple:
    """The tensors themselves, or their ``_Fast`` twins sharing data and version counters."""
    if not fast:
        return tensors
    return tuple(None if t is None else _Fast(t.data, t._version) for t in tensors)


def _step_tensor() -> Tensor:
    """A fresh step counter: a 0-d float tensor, like PyTorch's (float64 when that is the default dtype)."""
    dt = float64 if get_default_dtype() is float64 else float32
    return _make(np.zeros((), dtype=dt.np), dt, CPU)


def _increment(step_t: Tensor) -> Any:
    """``step_t += 1``; returns the new count as a float in eager mode, or the tensor while tracing."""
    if _tracing():
        step_t.add_(1)
        return step_t
    np.add(step_t.data, 1, out=step_t.data)
    step_t._version[0] += 1
    return float(step_t.data)


def _check_number(opt: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{opt}: {name} must be a number, got {type(value).__name__} ({value!r})")
    return float(value)


def _check_range(opt: str, name: str, value: Any, low: float, high: float = math.inf, low_open: bool = False,
                 high_open: bool = False) -> None:
    """Raise a ValueError naming the optimizer, the option and the value unless it lies in the range."""
    v = _check_number(opt, name, value)
    ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok or v != v:
        lo = f"{'(' if low_open else '['}{low:g}"
        hi = f"{high:g}{')' if high_open else ']'}"
        raise ValueError(f"{opt}: invalid {name}: {value!r}; expected a value in {lo}, {hi}")


def _check_betas(opt: str, betas: Any) -> None:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"{opt}: betas must be a pair (beta1, beta2), got {betas!r}")
    for i, b in enumerate(betas):
        _check_range(opt, f"beta parameter at index {i}", b, 0.0, 1.0, high_open=True)


def _describe(p: Tensor, index: int) -> str:
    return f"parameter {index} (shape {tuple(p.shape)})"


# ----------------------------------------------------------------------------- the base class


class Optimizer:
    """Base class of the optimizers, with PyTorch's API.

    ``params`` is an iterable of tensors, of ``(name, tensor)`` pairs, or of dicts (parameter groups:
    ``{"params": [...], "lr": 0.1}``) whose options override ``defaults``. Subclasses implement
    ``_step_group(group)`` (or override ``step``) and ``_validate_group(group)``.
    """

    # State entries that must have the parameter's shape (checked by load_state_dict).
    _PARAM_SHAPED_STATE: tuple[str, ...] = ()

    def __init__(self, params: ParamsT, defaults: dict[str, Any]) -> None:
        name = type(self).__name__
        self.defaults = defaults
        self.state: defaultdict[Tensor, dict[str, Any]] = defaultdict(dict)
        self.param_groups: list[dict[str, Any]] = []
        if isinstance(params, (Tensor, dict)):
            raise TypeError(f"{name}: params must be an iterable of tensors or of parameter-group dicts, "
                            f"got a single {type(params).__name__}; wrap it in a list")
        if isinstance(params, set):
            raise TypeError(f"{name}: params must be an ordered collection (a list), not a set: the order of a "
                            "set changes between runs, and state_dict() depends on it")
        try:
            groups = list(params)
        except TypeError:
            raise TypeError(f"{name}: params must be an iterable of tensors or of parameter-group dicts, "
                            f"got {type(params).__name__}") from None
        if not groups:
            raise ValueError(f"{name}: got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            self.add_param_group(g)

    def _validate_group(self, group: dict[str, Any]) -> None:
        """Check a group's hyperparameters; raise ValueError/TypeError naming the optimizer and value."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group of parameters with its own options (missing options come from the defaults)."""
        name = type(self).__name__
        if not isinstance(param_group, dict):
            raise TypeError(f"{name}.add_param_group: expected a dict, got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError(f"{name}.add_param_group: the group has no 'params' entry "
                             f"(keys: {sorted(param_group)})")
        group = dict(param_group)
        params = group["params"]
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError(f"{name}: params must be an ordered collection (a list), not a set")
        else:
            params = list(params)
        names = [p[0] for p in params if isinstance(p, tuple)]
        if names:
            if len(names) != len(params):
                raise ValueError(f"{name}: give either all parameters with names, as (name, tensor) pairs, or none")
            params = [p[1] for p in params]
            group["param_names"] = names
        for i, p in enumerate(params):
            if not isinstance(p, Tensor):
                raise TypeError(f"{name}: can only optimize tensors, but parameter {i} is a {type(p).__name__}")
            if p.grad_fn is not None:
                raise ValueError(f"{name}: can't optimize a non-leaf tensor ({_describe(p, i)} was computed by "
                                 f"{p.grad_fn.op.name}); pass leaf tensors such as module parameters")
            if not p.dtype.is_floating_point:
                raise DTypeError(f"{name}: can only optimize floating-point tensors, but {_describe(p, i)} is "
                                 f"{p.dtype.name}")
        group["params"] = params
        for key, default in self.defaults.items():
            if default is required and key not in group:
                raise ValueError(f"{name}: parameter group didn't specify a value of required option {key!r}")
            group.setdefault(key, default)
        if ("param_names" in group) != any("param_names" in g for g in self.param_groups) and self.param_groups:
            raise ValueError(f"{name}: all parameter groups should be given with names, or none of them")
        ids = [id(p) for p in params]
        if len(set(ids)) != len(ids):
            dup = next(i for i, x in enumerate(ids) if ids.index(x) != i)
            raise ValueError(f"{name}: parameter group contains the same tensor twice ({_describe(params[dup], dup)} "
                             f"is also parameter {ids.index(ids[dup])})")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if seen.intersection(ids):
            raise ValueError(f"{name}: some parameters appear in more than one parameter group")
        self._validate_group(group)
        self.param_groups.append(group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients: drop them (default), or zero them in place with ``set_to_none=False``."""
        tracer = STATE.tracer
        for group in self.param_groups:
            for p in group["params"]:
                if tracer is not None:
                    tracer.note_grad_reset(p)
                g = p.grad
                if g is None:
                    continue
                if set_to_none or is_sparse(g):
                    p.grad = None
                else:
                    if g.grad_fn is not None:
                        g.detach_()
                    with no_grad():
                        g.zero_()

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter that has a gradient, in place; returns ``closure()``'s loss if given.

        ``closure`` re-evaluates the model and returns the loss (it runs with gradients enabled).
        """
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        tracer = STATE.tracer
        with no_grad():
            for index, group in enumerate(self.param_groups):
                if tracer is None:
                    self._step_group(group)
                else:
                    self._traced_step_group(tracer, index, group)
        return loss

    def _traced_step_group(self, tracer: Any, index: int, group: dict[str, Any]) -> None:
        """Step ``group`` while tracing, with its learning rate as a live 0-d tensor that a compiled
        replay refreshes from ``group["lr"]`` before every run, so a scheduler's changes take effect
        without tracing again (every other hyperparameter is guarded: changing one retraces)."""
        tracer.note_optimizer(self)
        first = group["params"][0]
        cache = self.__dict__.setdefault("_traced_lr", {})
        lr_t = cache.get(index)
        if lr_t is None or lr_t.dtype is not first.dtype:
            lr = np.array(group["lr"], dtype=first.dtype.np)
            if first.device.type != "cpu":
                lr = get_backend(first.device).asarray(lr)
            lr_t = cache[index] = _make(lr, first.dtype, first.device)
        else:
            lr_t.data[...] = group["lr"]

        def sync() -> None:
            lr_t.data[...] = self.param_groups[index]["lr"]
        tracer.add_sync(sync)
        lr = group["lr"]
        group["lr"] = lr_t
        try:
            self._step_group(group)
        finally:
            group["lr"] = lr

    def _step_group(self, group: dict[str, Any]) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not implement step()")

    def _sparse_untraceable(self) -> None:
        if _tracing():
            raise TraceError(f"{type(self).__name__}: row-sparse gradient updates run eagerly only and cannot be "
                             "traced; step this optimizer outside the compiled function")

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state in PyTorch's layout.

        ``{"state": {index: {name: value}}, "param_groups": [{..options.., "params": [indices]}]}``,
        parameters numbered in order across groups. Tensors in ``state`` are the live state (not
        copies), as in PyTorch: serialize it, or deep-copy it if you keep it while training goes on.
        """
        mapping: dict[int, int] = {}
        groups = []
        start = 0
        for g in self.param_groups:
            packed = {k: v for k, v in g.items() if k != "params"}
            for i, p in enumerate(g["params"], start):
                mapping.setdefault(id(p), i)
            packed["params"] = [mapping[id(p)] for p in g["params"]]
            start += len(packed["params"])
            groups.append(packed)
        state = {}
        for g in self.param_groups:
            for p in g["params"]:
                if p in self.state and mapping[id(p)] not in state:
                    state[mapping[id(p)]] = dict(self.state[p])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a ``state_dict()`` (copying it: later steps never write into the dict given)."""
        name = type(self).__name__
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            got = sorted(map(str, state_dict)) if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(f"{name}.load_state_dict: expected a dict with 'state' and 'param_groups' "
                             f"(from Optimizer.state_dict()), got {got}")
        groups = self.param_groups
        saved_groups = state_dict["param_groups"]
        if not isinstance(saved_groups, (list, tuple)) or not all(
                isinstance(g, dict) and "params" in g for g in saved_groups):
            raise ValueError(f"{name}.load_state_dict: 'param_groups' must be a list of dicts with a 'params' "
                             "list of parameter indices")
        if len(groups) != len(saved_groups):
            raise ValueError(f"{name}.load_state_dict: loaded state dict has {len(saved_groups)} parameter group(s), "
                             f"but the optimizer has {len(groups)}")
        for i, (g, s) in enumerate(zip(groups, saved_groups)):
            if len(g["params"]) != len(s["params"]):
                raise ValueError(f"{name}.load_state_dict: parameter group {i} has {len(s['params'])} parameter(s) in "
                                 f"the loaded state dict, but {len(g['params'])} in the optimizer")
        id_map: dict[int, Tensor] = {}
        for g, s in zip(groups, saved_groups):
            for idx, p in zip(s["params"], g["params"]):
                id_map[int(idx)] = p
        new_state: defaultdict[Tensor, dict[str, Any]] = defaultdict(dict)
        for key, values in state_dict["state"].items():
            try:
                idx = int(key)
            except (TypeError, ValueError):
                raise ValueError(f"{name}.load_state_dict: state keys must be parameter indices, got {key!r}") from None
            if idx not in id_map:
                raise ValueError(f"{name}.load_state_dict: the loaded state has an entry for parameter {idx}, which "
                                 f"is in none of the loaded parameter groups ({sorted(id_map)})")
            if not isinstance(values, dict):
                raise ValueError(f"{name}.load_state_dict: state of parameter {idx} must be a dict, "
                                 f"got {type(values).__name__}")
            p = id_map[idx]
            new_state[p] = {k: self._load_value(p, idx, k, v) for k, v in values.items()}
        new_groups = []
        for g, s in zip(groups, saved_groups):
            ng = {k: copy.deepcopy(v) for k, v in s.items() if k != "params"}
            for k, v in g.items():  # options the saved dict lacks (an older format) keep their values
                ng.setdefault(k, v)
            ng["params"] = g["params"]
            self._validate_group(ng)
            new_groups.append(ng)
        self.state = new_state
        self.param_groups = new_groups

    def _load_value(self, p: Tensor, idx: int, key: str, value: Any) -> Any:
        """A copy of one saved state value, as a tensor on the parameter's device (and dtype, but for ``step``)."""
        if isinstance(value, np.ndarray):
            from ..ops.creation import tensor
            value = tensor(value)
        if isinstance(value, Tensor):
            if key in self._PARAM_SHAPED_STATE and tuple(value.shape) != tuple(p.shape):
                raise ShapeError(f"{type(self).__name__}.load_state_dict: state {key!r} of parameter {idx} has shape "
                                 f"{tuple(value.shape)}, but the parameter has shape {tuple(p.shape)}")
            out = value.detach().to(p.device)
            if key != "step" and out.dtype.is_floating_point and out.dtype is not p.dtype:
                out = out.to(p.dtype)
            from ..ops.creation import tensor
            return tensor(out) if out.data is value.data else out
        if isinstance(value, dict):
            return {k: self._load_value(p, idx, k, v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self._load_value(p, idx, key, v) for v in value)
        return copy.deepcopy(value)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(g):
                if k not in ("params", "param_names"):
                    lines.append(f"    {k}: {g[k]}")
        lines.append(")")
        return "\n".join(lines)


def dense_grads(group: dict, name: str, instead: str) -> Iterator[tuple[Tensor, Tensor]]:
    """``(param, grad)`` for the parameters of ``group`` that have a gradient; a row-sparse one is an error
    naming ``name`` and the optimizer to use ``instead``."""
    for i, p in enumerate(group["params"]):
        g = p.grad
        if g is None:
            continue
        if is_sparse(g):
            raise TypeError(f"{name}: {_describe(p, i)} has a row-sparse gradient (RowSparseGrad), which {name} "
                            f"does not support; use {instead} for those parameters")
        yield p, g


def sparse_rows(g: Any, maximize: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """The rows and values of a row-sparse gradient as arrays, negated for ``maximize``; None when it
    touches no row (the step then changes nothing)."""
    idx = g.indices.data
    if idx.size == 0:
        return None
    v = g.values.data
    return idx, (np.negative(v) if maximize else v)
