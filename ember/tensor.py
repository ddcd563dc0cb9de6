"""The Tensor: an array on a device plus autograd metadata. All math goes through ``ember.ops``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from . import dtypes as _dt
from .autograd import STATE, _retain_grad_hook
from .device import Device, to_device
from .errors import AutogradError, DeviceError, DTypeError, ShapeError, TraceError

_new = object.__new__


def _make(data: Any, dtype: _dt.DType, device: Device, requires_grad: bool = False,
          grad_fn: Any = None) -> Tensor:
    """Wrap an array without copying or validating (the fast path used by ``ops.apply``)."""
    t = _new(Tensor)
    t.data = data
    t.dtype = dtype
    t.device = device
    t.requires_grad = requires_grad
    t.grad_fn = grad_fn
    t.grad = None
    t._version = [0]
    t._base = None
    t._hooks = None
    t._post_hooks = None
    t._tangent = None
    if STATE.tracer is not None:
        STATE.tracer.on_make(t)
    return t


def _float_mode(a: np.ndarray) -> str:
    """Print floats as PyTorch does: four fixed decimals, or ``1.`` style when every value is whole
    (NumPy switches to scientific notation for wide magnitude ranges by itself)."""
    if a.dtype.kind != "f" or a.size == 0:
        return "maxprec"
    finite = a[np.isfinite(a)] if a.size <= 1000 else a.ravel()[:1000]
    return "maxprec" if finite.size and np.all(finite == np.round(finite)) else "fixed"


def _writeable(a: Any) -> bool:
    """Whether an in-place write into ``a`` is safe. NumPy says so in ``flags.writeable`` (False for
    broadcast views); CuPy arrays have no such flag, so there a broadcast view (a zero stride over more
    than one element) counts as read-only."""
    writeable = getattr(a.flags, "writeable", None)
    if writeable is not None:
        return bool(writeable)
    return not any(st == 0 and n > 1 for st, n in zip(a.strides, a.shape))


def _is_one(x: Any) -> bool:
    """Whether a scale factor is the number 1 (a tensor factor, such as a traced learning rate, never is)."""
    return not isinstance(x, Tensor) and x == 1


def _cuda_device(what: str, device: Any) -> Device:
    """The ``cuda`` device that ``.cuda(device)`` means (None: the current GPU, which needs CUDA)."""
    if device is None:
        from .cuda import current_device
        try:
            return to_device(f"cuda:{current_device()}")
        except DeviceError as e:
            raise DeviceError(f"{what}: {e}") from None
    if isinstance(device, int) and not isinstance(device, bool):
        return to_device(f"cuda:{device}")
    d = to_device(device)
    if d.type != "cuda":
        raise DeviceError(f"{what}: expected a cuda device (an index or 'cuda:N'), got {d}")
    return d


def _concrete(what: str) -> None:
    if STATE.tracer is not None:
        STATE.tracer.value_read(what)
        raise TraceError(f"{what} reads a tensor's value inside a traced function")


class Tensor:
    """An n-dimensional array with autograd, on one device (``cpu`` today).

    Create tensors with ``ember.tensor``/``ember.zeros``/... ; ``Tensor(data)`` is ``ember.tensor(data)``.
    """

    __slots__ = (
        "__weakref__",
        "_base",
        "_hooks",
        "_post_hooks",
        "_tangent",
        "_version",
        "data",
        "device",
        "dtype",
        "grad",
        "grad_fn",
        "requires_grad",
    )

    def __init__(self, data: Any, dtype: Any = None, device: Any = None, requires_grad: bool = False) -> None:
        from .ops.creation import tensor as _tensor
        t = _tensor(data, dtype=dtype, device=device, requires_grad=requires_grad)
        for name in ("data", "dtype", "device", "requires_grad", "grad", "grad_fn", "_version", "_base",
                     "_hooks", "_post_hooks", "_tangent"):
            setattr(self, name, getattr(t, name))

    # ------------------------------------------------------------------ metadata
    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def ndim(self) -> int:
        return self.data.ndim

    def dim(self) -> int:
        return self.data.ndim

    def size(self, dim: int | None = None) -> Any:
        return self.data.shape if dim is None else self.data.shape[dim]

    def numel(self) -> int:
        return int(self.data.size)

    def element_size(self) -> int:
        return self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    @property
    def is_leaf(self) -> bool:
        return self.grad_fn is None

    @property
    def T(self) -> Tensor:
        return _ops.movement.permute(self, tuple(range(self.ndim - 1, -1, -1)))

    @property
    def mT(self) -> Tensor:
        return _ops.movement.transpose(self, -2, -1)

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __iter__(self) -> Iterator[Tensor]:
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self.shape[0]))

    __hash__ = object.__hash__
    # NumPy operands on the left (np.float64(2) * t) defer to Tensor's reflected operators.
    __array_ufunc__ = None

    # ------------------------------------------------------------------ values out
    def item(self) -> Any:
        """The value of a one-element tensor as a Python number."""
        _concrete("Tensor.item()")
        if self.data.size != 1:
            raise ShapeError("item: only one-element tensors can be converted to a Python scalar, "
                             f"got shape {self.shape}")
        return self._host().reshape(()).item()

    def tolist(self) -> Any:
        _concrete("Tensor.tolist()")
        return self._host().tolist()

    def _host(self) -> np.ndarray:
        """The data as a NumPy array: itself on the CPU, a host copy from another device."""
        if self.device.type == "cpu":
            return self.data
        from .device import get_backend
        return get_backend(self.device).to_numpy(self.data)

    def numpy(self) -> np.ndarray:
        """The data as a NumPy array, sharing memory (call ``.detach()`` first on a tensor that requires grad).

        Only for CPU tensors, as in PyTorch: copy a GPU tensor to the host with ``.cpu()`` first.
        """
        _concrete("Tensor.numpy()")
        if self.device.type != "cpu":
            raise TypeError(f"can't convert {self.device} device type tensor to numpy. Use Tensor.cpu() to copy "
                            "the tensor to host memory first.")
        if self.requires_grad:
            raise AutogradError("numpy: cannot call numpy() on a tensor that requires grad; "
                                "use tensor.detach().numpy()")
        return self.data

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """``np.asarray(tensor)``: the data itself on the CPU; a host copy of a tensor on another device
        (``copy=False`` is then refused, as NumPy asks when a copy cannot be avoided)."""
        _concrete("np.asarray(tensor)")
        if self.device.type == "cpu":
            return self.data if dtype is None else self.data.astype(dtype)
        if copy is False:
            raise ValueError(f"np.asarray(tensor, copy=False): a tensor on {self.device} cannot be viewed from "
                             "host memory; it is copied to the host (call .cpu() to say so)")
        arr = self._host()
        return arr if dtype is None else arr.astype(dtype, copy=False)

    def __bool__(self) -> bool:
        _concrete("bool(tensor) (e.g. a Python `if` or `while` on a tensor)")
        if self.data.size != 1:
            raise ShapeError(f"bool: the truth value of a tensor with {self.data.size} elements is ambiguous; "
                             "use .any() or .all()")
        return bool(self.data)

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    def __index__(self) -> int:
        if not self.dtype.is_integer or self.data.size != 1:
            raise TypeError(f"only one-element integer tensors can be used as an index, got {self.dtype.name} "
                            f"of shape {self.shape}")
        return int(self.item())

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self.data.__dlpack__(**kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        return self.data.__dlpack_device__()

    def __repr__(self) -> str:
        if STATE.tracer is not None and self.data is None:
            return f"tensor(<traced>, shape={self.shape}, dtype={self.dtype.name})"
        host = self._host()
        body = np.array2string(host, separator=", ", prefix="tensor(", threshold=1000, edgeitems=3,
                               precision=4, floatmode=_float_mode(host))
        extra = []
        if self.data.size == 0 and self.ndim != 1:
            extra.append(f"size={self.shape}")
        if self.dtype not in (_dt.float32, _dt.int64, _dt.bool_):
            extra.append(f"dtype={self.dtype!r}")
        if self.device.type != "cpu":
            extra.append(f"device='{self.device}'")
        if self.grad_fn is not None:
            extra.append(f"grad_fn=<{self.grad_fn.op.name}Backward>")
        elif self.requires_grad:
            extra.append("requires_grad=True")
        return "tensor(" + body + "".join(", " + e for e in extra) + ")"

    # ------------------------------------------------------------------ autograd
    def backward(self, gradient: Any = None, retain_graph: bool | None = None, create_graph: bool = False) -> None:
        """Accumulate the gradient of this tensor into ``.grad`` of every leaf it depends on."""
        from .autograd import backward
        backward(self, gradient, retain_graph=retain_graph, create_graph=create_graph)

    def detach(self) -> Tensor:
        """A tensor sharing this one's data (and version counter) but cut from the graph."""
        t = _make(self.data, self.dtype, self.device)
        t._version = self._version
        t._base = self._base if self._base is not None else self
        return t

    def detach_(self) -> Tensor:
        self.grad_fn = None
        self.requires_grad = False
        return self

    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        if self.grad_fn is not None and not requires_grad:
            raise AutogradError("requires_grad_(False) on a non-leaf tensor; use .detach() instead")
        if requires_grad and not self.dtype.is_floating_point:
            raise DTypeError(f"requires_grad_: only floating tensors can require gradients, got {self.dtype.name}")
        self.requires_grad = requires_grad
        return self

    def retain_grad(self) -> None:
        """Keep ``.grad`` for this non-leaf tensor after backward (leaves always keep it)."""
        if self.grad_fn is None:
            return
        if not getattr(self.grad_fn, "_retains", False):
            self.grad_fn.register_hook(_retain_grad_hook(self))

    def register_hook(self, hook: Callable[[Tensor], Tensor | None]) -> Callable[[], None]:
        """Call ``hook(grad)`` when this tensor's gradient is computed; a returned tensor replaces it.

        Returns a function that removes the hook.
        """
        if not self.requires_grad:
            raise AutogradError("register_hook: cannot register a hook on a tensor that does not require grad")
        if self.grad_fn is not None:
            self.grad_fn.register_hook(hook)
            hooks = self.grad_fn.pre_hooks
        else:
            if self._hooks is None:
                self._hooks = []
            self._hooks.append(hook)
            hooks = self._hooks
        return lambda: hooks.remove(hook) if hook in hooks else None

    def register_post_accumulate_grad_hook(self, hook: Callable[[Tensor], None]) -> Callable[[], None]:
        """For a leaf: call ``hook(tensor)`` once its ``.grad`` is final for this backward pass."""
        if self.grad_fn is not None:
            raise AutogradError("register_post_accumulate_grad_hook: only leaf tensors accumulate gradients")
        if self._post_hooks is None:
            self._post_hooks = []
        self._post_hooks.append(hook)
        hooks = self._post_hooks
        return lambda: hooks.remove(hook) if hook in hooks else None

    # ------------------------------------------------------------------ conversion
    def to(self, *args: Any, dtype: Any = None, device: Any = None, copy: bool = False,
           non_blocking: bool = False) -> Tensor:
        """``t.to(dtype)``, ``t.to(device)``, ``t.to(device, dtype)`` or ``t.to(other_tensor)``.

        A device change copies (differentiably: the gradient flows back to this tensor's device);
        ``non_blocking`` is accepted for PyTorch compatibility, and copies are synchronous either way.
        """
        for a in args:
            if isinstance(a, Tensor):
                dtype, device = a.dtype, a.device
            elif isinstance(a, (str, Device)) and (isinstance(a, Device) or a.split(":")[0] in ("cpu", "cuda")):
                device = a
            else:
                dtype = a
        out = self
        if device is not None and to_device(device) != self.device:
            out = _ops.creation.to_device(out, to_device(device))
        if dtype is not None and _dt.to_dtype(dtype) is not out.dtype:
            out = _ops.pointwise.cast(out, _dt.to_dtype(dtype))
        if copy and out is self:
            out = self.clone()
        return out

    def type(self, dtype: Any) -> Tensor:
        return self.to(dtype)

    def float(self) -> Tensor:
        return self.to(_dt.float32)

    def double(self) -> Tensor:
        return self.to(_dt.float64)

    def half(self) -> Tensor:
        return self.to(_dt.float16)

    def long(self) -> Tensor:
        return self.to(_dt.int64)

    def int(self) -> Tensor:
        return self.to(_dt.int32)

    def bool(self) -> Tensor:
        return self.to(_dt.bool_)

    def cpu(self) -> Tensor:
        """This tensor on the host (itself when it is there already)."""
        return self.to("cpu")

    def cuda(self, device: Any = None, non_blocking: bool = False) -> Tensor:
        """This tensor on a GPU: ``device`` is an index, ``'cuda:N'`` or ``ember.device`` (default: the
        current GPU, ``ember.cuda.current_device()``)."""
        return self.to(_cuda_device("Tensor.cuda", device))

    def clone(self) -> Tensor:
        return _ops.pointwise.clone(self)

    def contiguous(self) -> Tensor:
        if self.data.flags.c_contiguous:
            return self
        return _ops.pointwise.clone(self)

    def is_contiguous(self) -> bool:
        return bool(self.data.flags.c_contiguous)

    # ------------------------------------------------------------------ indexing
    def __getitem__(self, key: Any) -> Tensor:
        return _ops.indexing.getitem(self, key)

    def __setitem__(self, key: Any, value: Any) -> None:
        _ops.indexing.setitem(self, key, value)

    # ------------------------------------------------------------------ in-place
    def _inplace(self, fn: Callable[..., Tensor], *args: Any, **kwargs: Any) -> Tensor:
        """Compute ``fn(self, *args)`` and write it into this tensor's storage.

        Aliases (views, arrays shared through ``from_numpy``) see the change and the
        version counter is bumped, so a saved copy of the old value is detected at
        backward time. While recording, the old value is snapshotted first so the
        op's gradient is still computed from it.
        """
        recording = STATE.grad_enabled and (self.requires_grad or any(
            isinstance(a, Tensor) and a.requires_grad for a in args))
        if recording:
            if self.requires_grad and self.grad_fn is None:
                raise AutogradError(
                    f"a leaf tensor that requires grad (shape {self.shape}) is used in an in-place operation; "
                    "wrap the update in `with ember.no_grad():` or use an out-of-place op")
            if self._base is not None:
                raise AutogradError(
                    "in-place operation on a view while recording gradients is not supported; "
                    "apply it to the base tensor or .clone() the view first")
            old = _make(self.data.copy(), self.dtype, self.device, self.requires_grad, self.grad_fn)
            if STATE.tracer is not None:
                STATE.tracer.alias(old, self)
            result = fn(old, *args, **kwargs)
        else:
            result = fn(self, *args, **kwargs)
        if result.shape != self.shape:
            raise ShapeError(f"in-place operation: result of shape {result.shape} cannot be written into a "
                             f"tensor of shape {self.shape}")
        if result.dtype is not self.dtype and result.dtype.category > self.dtype.category:
            raise DTypeError(f"in-place operation: result type {result.dtype.name} can't be cast to the "
                             f"tensor's dtype {self.dtype.name}")
        if not _writeable(self.data):
            raise AutogradError(f"in-place operation on a read-only tensor of shape {self.shape} "
                                "(an expanded/broadcast view); .clone() it first")
        if result.data is not self.data:
            if self.device.type == "cpu":
                np.copyto(self.data, result.data, casting="unsafe")
            else:
                from .device import get_backend
                get_backend(self.device).xp.copyto(self.data, result.data, casting="unsafe")
        if STATE.tracer is not None:
            if result.dtype is not self.dtype:
                result = _ops.pointwise.cast(result, self.dtype)
            STATE.tracer.assign(self, result)
        self._version[0] += 1
        if recording:
            self.grad_fn = result.grad_fn
            self.requires_grad = result.requires_grad
        return self

    def add_(self, other: Any, alpha: Any = 1) -> Tensor:
        return self._inplace(_ops.pointwise.add, other if _is_one(alpha) else other * alpha)

    def sub_(self, other: Any, alpha: Any = 1) -> Tensor:
        return self._inplace(_ops.pointwise.sub, other if _is_one(alpha) else other * alpha)

    def mul_(self, other: Any) -> Tensor:
        return self._inplace(_ops.pointwise.mul, other)

    def div_(self, other: Any) -> Tensor:
        return self._inplace(_ops.pointwise.div, other)

    def pow_(self, other: Any) -> Tensor:
        return self._inplace(_ops.pointwise.pow, other)

    def neg_(self) -> Tensor:
        return self._inplace(_ops.pointwise.neg)

    def clamp_(self, min: Any = None, max: Any = None) -> Tensor:
        return self._inplace(_ops.pointwise.clamp, min, max)

    def copy_(self, src: Any) -> Tensor:
        """Copy ``src`` (broadcast to this shape, cast to this dtype) into this tensor."""
        def take(_old: Tensor, s: Any) -> Tensor:
            s = s if isinstance(s, Tensor) else _ops.creation.tensor(s, dtype=self.dtype, device=self.device)
            s = _ops.movement.expand(s, self.shape) if s.shape != self.shape else s
            return _ops.pointwise.cast(s, self.dtype) if s.dtype is not self.dtype else s
        if isinstance(src, Tensor) and src.device != self.device:
            src = src.to(self.device)
        return self._inplace(take, src)

    def fill_(self, value: Any) -> Tensor:
        return self.copy_(value)

    def zero_(self) -> Tensor:
        return self.copy_(0)

    def addcmul_(self, a: Tensor, b: Tensor, value: Any = 1) -> Tensor:
        return self.add_(a * b if _is_one(value) else a * b * value)

    def addcdiv_(self, a: Tensor, b: Tensor, value: Any = 1) -> Tensor:
        return self.add_(a / b if _is_one(value) else a / b * value)

    def lerp_(self, end: Tensor, weight: Any) -> Tensor:
        return self.add_((end - self) * weight)

    def sqrt_(self) -> Tensor:
        return self._inplace(_ops.pointwise.sqrt)

    def exp_(self) -> Tensor:
        return self._inplace(_ops.pointwise.exp)

    def relu_(self) -> Tensor:
        return self._inplace(_ops.pointwise.relu)

    def sigmoid_(self) -> Tensor:
        return self._inplace(_ops.pointwise.sigmoid)

    def tanh_(self) -> Tensor:
        return self._inplace(_ops.pointwise.tanh)

    def masked_fill_(self, mask: Tensor, value: Any) -> Tensor:
        return self._inplace(_ops.pointwise.masked_fill, mask, value)

    # ------------------------------------------------------------------ operators
    def __add__(self, o: Any) -> Tensor:
        return _ops.pointwise.add(self, o)

    def __radd__(self, o: Any) -> Tensor:
        return _ops.pointwise.add(o, self)

    def __sub__(self, o: Any) -> Tensor:
        return _ops.pointwise.sub(self, o)

    def __rsub__(self, o: Any) -> Tensor:
        return _ops.pointwise.sub(o, self)

    def __mul__(self, o: Any) -> Tensor:
        return _ops.pointwise.mul(self, o)

    def __rmul__(self, o: Any) -> Tensor:
        return _ops.pointwise.mul(o, self)

    def __truediv__(self, o: Any) -> Tensor:
        return _ops.pointwise.div(self, o)

    def __rtruediv__(self, o: Any) -> Tensor:
        return _ops.pointwise.div(o, self)

    def __floordiv__(self, o: Any) -> Tensor:
        return _ops.pointwise.floor_divide(self, o)

    def __rfloordiv__(self, o: Any) -> Tensor:
        return _ops.pointwise.floor_divide(o, self)

    def __mod__(self, o: Any) -> Tensor:
        return _ops.pointwise.remainder(self, o)

    def __rmod__(self, o: Any) -> Tensor:
        return _ops.pointwise.remainder(o, self)

    def __pow__(self, o: Any) -> Tensor:
        return _ops.pointwise.pow(self, o)

    def __rpow__(self, o: Any) -> Tensor:
        return _ops.pointwise.pow(o, self)

    def __matmul__(self, o: Any) -> Tensor:
        return _ops.linalg.matmul(self, o)

    def __rmatmul__(self, o: Any) -> Tensor:
        return _ops.linalg.matmul(o, self)

    def __neg__(self) -> Tensor:
        return _ops.pointwise.neg(self)

    def __pos__(self) -> Tensor:
        return self

    def __abs__(self) -> Tensor:
        return _ops.pointwise.abs(self)

    def __invert__(self) -> Tensor:
        return _ops.pointwise.bitwise_not(self)

    def __and__(self, o: Any) -> Tensor:
        return _ops.pointwise.bitwise_and(self, o)

    __rand__ = __and__

    def __or__(self, o: Any) -> Tensor:
        return _ops.pointwise.bitwise_or(self, o)

    __ror__ = __or__

    def __xor__(self, o: Any) -> Tensor:
        return _ops.pointwise.bitwise_xor(self, o)

    __rxor__ = __xor__

    def __eq__(self, o: Any) -> Tensor:  # type: ignore[override]
        return _ops.pointwise.eq(self, o)

    def __ne__(self, o: Any) -> Tensor:  # type: ignore[override]
        return _ops.pointwise.ne(self, o)

    def __lt__(self, o: Any) -> Tensor:
        return _ops.pointwise.lt(self, o)

    def __le__(self, o: Any) -> Tensor:
        return _ops.pointwise.le(self, o)

    def __gt__(self, o: Any) -> Tensor:
        return _ops.pointwise.gt(self, o)

    def __ge__(self, o: Any) -> Tensor:
        return _ops.pointwise.ge(self, o)

    def __iadd__(self, o: Any) -> Tensor:
        return self.add_(o)

    def __isub__(self, o: Any) -> Tensor:
        return self.sub_(o)

    def __imul__(self, o: Any) -> Tensor:
        return self.mul_(o)

    def __itruediv__(self, o: Any) -> Tensor:
        return self.div_(o)


# Method forms of the functional API: t.exp() is ember.exp(t), and so on. One table instead of
# a hundred one-line methods; each name is a public function of the module it is taken from.
_METHODS = {
    "pointwise": ["add", "sub", "mul", "div", "pow", "neg", "abs", "sign", "exp", "log", "log1p", "expm1",
                  "sqrt", "rsqrt", "sin", "cos", "tanh", "sigmoid", "relu", "erf", "maximum", "minimum",
                  "clamp", "clip", "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or",
                  "logical_xor", "logical_not", "floor", "ceil", "round", "reciprocal", "square",
                  "masked_fill", "where", "isnan", "isinf", "isfinite", "remainder", "floor_divide", "log2",
                  "exp2", "square"],
    "reduce": ["sum", "mean", "max", "min", "amax", "amin", "argmax", "argmin", "prod", "var", "std",
               "logsumexp", "all", "any", "norm", "cumsum"],
    "movement": ["reshape", "view", "permute", "transpose", "swapaxes", "expand", "expand_as", "broadcast_to",
                 "squeeze", "unsqueeze", "flatten", "flip", "split", "chunk", "gather", "scatter_add",
                 "index_select", "take_along_dim", "pad", "repeat", "movedim", "unbind", "narrow", "view_as",
                 "reshape_as", "index_add"],
    "linalg": ["matmul", "mm", "bmm"],
    "composite": ["softmax", "log_softmax"],
}


# Operators whose function takes (self, other) in order are bound directly: one Python frame less
# per ``a + b`` than a method that forwards (the methods above document them and stay the fallback).
_DIRECT_OPERATORS = {"__add__": ("pointwise", "add"), "__sub__": ("pointwise", "sub"),
                     "__mul__": ("pointwise", "mul"), "__truediv__": ("pointwise", "div"),
                     "__neg__": ("pointwise", "neg")}


def _install_methods() -> None:
    from . import ops
    for module_name, names in _METHODS.items():
        module = getattr(ops, module_name)
        for name in names:
            if name not in Tensor.__dict__:
                setattr(Tensor, name, getattr(module, name))
    for dunder, (module_name, name) in _DIRECT_OPERATORS.items():
        setattr(Tensor, dunder, getattr(getattr(ops, module_name), name))


from . import ops as _ops  # noqa: E402  (ops need Tensor defined first)

_install_methods()
