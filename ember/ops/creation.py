"""Creating tensors: from data, filled, ranges, and moving between devices/frameworks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import dtypes as _dt
from ..autograd import STATE, Node
from ..device import get_backend
from ..device import to_device as _device
from ..errors import DeviceError, DTypeError, ShapeError, TraceError
from ..tensor import Tensor, _make
from ._shape import check_shape_arg
from .registry import SYMBOLIC, Op


def _shape_args(name: str, size: tuple) -> tuple[int, ...]:
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = tuple(size[0])
    check_integral_sizes(name, size)
    return check_shape_arg(name, size)


def check_integral_sizes(name: str, size: Any) -> None:
    """Sizes must be integers (``zeros(2.5)`` is an error, not a silent ``zeros(2)``)."""
    for s in size:
        if isinstance(s, bool) or not hasattr(s, "__index__"):
            raise ShapeError(f"{name}: shape must be a sequence of ints, got {tuple(size)!r}")


def _finish(data: np.ndarray, dtype: _dt.DType, device: Any, requires_grad: bool, name: str) -> Tensor:
    dev = _device(device)
    if dev.type != "cpu":
        data = get_backend(dev).asarray(data)
    t = _make(data, dtype, dev)
    if requires_grad:
        if not dtype.is_floating_point:
            raise DTypeError(f"{name}: only floating tensors can require gradients, got {dtype.name}")
        t.requires_grad = True
    return t


def _infer_dtype(data: Any) -> _dt.DType:
    """dtype for data coming from Python: floats -> default float, ints -> int64, bools -> bool.
    NumPy arrays and NumPy scalars keep their dtype."""
    arr = np.asarray(data)
    if isinstance(data, (np.ndarray, np.generic)):
        return _dt.from_numpy_dtype(arr.dtype)
    if arr.dtype.kind == "f":
        return _dt.get_default_dtype()
    if arr.dtype.kind in "iu":
        return _dt.int64
    if arr.dtype.kind == "b":
        return _dt.bool_
    if arr.dtype == object and _has_big_int(data):
        raise DTypeError("tensor: an integer in the data does not fit in int64")
    return _dt.from_numpy_dtype(arr.dtype)


def _has_big_int(data: Any) -> bool:
    if isinstance(data, (list, tuple)):
        return any(_has_big_int(x) for x in data)
    return isinstance(data, int) and not isinstance(data, bool) and not -2 ** 63 <= data < 2 ** 63


def tensor(data: Any, dtype: Any = None, device: Any = None, requires_grad: bool = False) -> Tensor:
    """A new tensor holding a copy of ``data`` (nested lists, numbers, NumPy arrays or tensors)."""
    if isinstance(data, Tensor):
        arr = (np.array(data.data, copy=True) if data.device.type == "cpu"
               else get_backend(data.device).to_numpy(data.data))
        d = data.dtype if dtype is None else _dt.to_dtype(dtype)
        return _finish(arr.astype(d.np, copy=False), d, device or data.device, requires_grad, "tensor")
    if isinstance(data, (list, tuple)) and any(isinstance(x, Tensor) for x in _flat_first(data)):
        data = _unwrap(data)
    try:
        d = _dt.to_dtype(dtype) if dtype is not None else _infer_dtype(data)
        arr = np.array(data, dtype=d.np)
    except DTypeError:
        raise
    except OverflowError as e:
        raise DTypeError(f"tensor: a value does not fit in {d.name}: {e}") from None
    except (ValueError, TypeError) as e:
        raise ShapeError(f"tensor: cannot build a tensor from {type(data).__name__}: {e}") from None
    if arr.dtype == object:
        raise DTypeError("tensor: data holds non-numeric objects")
    return _finish(arr, d, device, requires_grad, "tensor")


def _flat_first(data: Any) -> list:
    while isinstance(data, (list, tuple)) and data:
        if isinstance(data[0], Tensor):
            return [data[0]]
        data = data[0]
    return []


def _unwrap(data: Any) -> Any:
    if isinstance(data, Tensor):
        return data.data
    if isinstance(data, (list, tuple)):
        return [_unwrap(x) for x in data]
    return data


def as_tensor(data: Any, dtype: Any = None, device: Any = None) -> Tensor:
    """Like ``tensor`` but shares memory with a NumPy array or tensor when dtype and device allow."""
    if isinstance(data, Tensor):
        return data.to(dtype=dtype, device=device) if (dtype or device) else data
    if isinstance(data, np.ndarray) and (dtype is None or _dt.to_dtype(dtype).np == data.dtype) \
            and _device(device).type == "cpu":
        return from_numpy(data)
    return tensor(data, dtype=dtype, device=device)


def from_numpy(array: np.ndarray) -> Tensor:
    """A tensor sharing memory with ``array`` (changes to one show in the other)."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"from_numpy: expected a numpy.ndarray, got {type(array).__name__}")
    return _make(array, _dt.from_numpy_dtype(array.dtype), _device("cpu"))


def from_dlpack(obj: Any) -> Tensor:
    """Zero-copy import of a DLPack-capable array (PyTorch, JAX, CuPy, NumPy tensors)."""
    if not hasattr(obj, "__dlpack__"):
        raise TypeError(f"from_dlpack: expected an object with __dlpack__ (a PyTorch/JAX/CuPy/NumPy array), "
                        f"got {type(obj).__name__}")
    dev_type, dev_id = obj.__dlpack_device__() if hasattr(obj, "__dlpack_device__") else (1, 0)
    if dev_type == 1:  # kDLCPU
        try:
            arr = np.from_dlpack(obj)
        except (RuntimeError, TypeError, ValueError) as e:  # e.g. bfloat16, which NumPy lacks
            raise DTypeError(f"from_dlpack: cannot import this array ({e}); supported dtypes: "
                             f"{', '.join(d.name for d in _dt.ALL)}") from None
        return _make(arr, _dt.from_numpy_dtype(arr.dtype), _device("cpu"))
    if dev_type not in (2, 13):  # kDLCUDA, kDLCUDAManaged
        raise DeviceError(f"from_dlpack: the array is on DLPack device type {dev_type}; ember imports CPU (1) and "
                          "CUDA (2, 13) arrays")
    dev = _device(f"cuda:{int(dev_id)}")
    backend = get_backend(dev)  # DeviceError naming the reason when CUDA is not usable here
    try:
        arr = backend.from_dlpack(obj)
    except (BufferError, TypeError, ValueError) as e:  # e.g. bfloat16, which CuPy lacks
        raise DTypeError(f"from_dlpack: cannot import this array ({e}); supported dtypes: "
                         f"{', '.join(d.name for d in _dt.ALL)}") from None
    return _make(arr, _dt.from_numpy_dtype(np.dtype(arr.dtype.name)), dev)


def _full(name: str, shape: tuple, value: Any, dtype: Any, device: Any, requires_grad: bool) -> Tensor:
    shape = _shape_args(name, shape)
    if dtype is None:
        d = _dt.category_default(_dt.scalar_category(value)) if value is not None else _dt.get_default_dtype()
    else:
        d = _dt.to_dtype(dtype)
    if SYMBOLIC[0] is not None:  # while a symbolic graph is built, a symbolic shape makes a graph constant
        out = SYMBOLIC[0].full(shape, value, d, device)
        if out is not NotImplemented:
            return out
    data = np.empty(shape, d.np) if value is None else np.full(shape, value, d.np)
    return _finish(data, d, device, requires_grad, name)


def zeros(*size: Any, dtype: Any = None, device: Any = None, requires_grad: bool = False) -> Tensor:
    """A tensor of zeros (float32 unless ``dtype`` says otherwise)."""
    return _full("zeros", size, 0.0 if dtype is None else 0, dtype, device, requires_grad)


def ones(*size: Any, dtype: Any = None, device: Any = None, requires_grad: bool = False) -> Tensor:
    """A tensor of ones (float32 unless ``dtype`` says otherwise)."""
    return _full("ones", size, 1.0 if dtype is None else 1, dtype, device, requires_grad)


def full(size: Sequence[int], fill_value: Any, dtype: Any = None, device: Any = None,
         requires_grad: bool = False) -> Tensor:
    """A tensor filled with ``fill_value``; its dtype follows the value unless given."""
    if isinstance(fill_value, Tensor):
        if fill_value.numel() != 1:
            raise ShapeError(f"full: fill_value must be a number or a one-element tensor, got shape "
                             f"{fill_value.shape}")
        fill_value = fill_value.item()
    size = (size,) if hasattr(size, "__index__") and not isinstance(size, bool) else size
    if not isinstance(size, (tuple, list)):
        raise ShapeError(f"full: size must be an int or a sequence of ints, got {size!r}")
    return _full("full", (tuple(size),), fill_value, dtype, device, requires_grad)


def empty(*size: Any, dtype: Any = None, device: Any = None, requires_grad: bool = False) -> Tensor:
    """An uninitialized tensor."""
    return _full("empty", size, None, dtype, device, requires_grad)


def _like(name: str, x: Tensor, value: Any, dtype: Any, device: Any, requires_grad: bool) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a Tensor, got {type(x).__name__}")
    return _full(name, (x.shape,), value, dtype or x.dtype, device or x.device, requires_grad)


def zeros_like(x: Tensor, dtype: Any = None, device: Any = None, requires_grad: bool = False) -> Tensor:
    return _like("zeros_like", x, 0, dtype, device, requires_grad)


def ones_like(x: Tensor, dtype: Any = None, device: Any = None, requires_grad: bool = False) -> Tensor:
    return _like("ones_like", x, 1, dtype, device, requires_grad)


def full_like(x: Tensor, fill_value: Any, dtype: Any = None, device: Any = None,
              requires_grad: bool = False) -> Tensor:
    return _like("full_like", x, fill_value, dtype, device, requires_grad)


def empty_like(x: Tensor, dtype: Any = None, device: Any = None, requires_grad: bool = False) -> Tensor:
    return _like("empty_like", x, None, dtype, device, requires_grad)


def arange(start: Any, end: Any = None, step: Any = 1, dtype: Any = None, device: Any = None,
           requires_grad: bool = False) -> Tensor:
    """Values ``start, start+step, ...`` below ``end`` (int64 for integer arguments, else float32)."""
    if end is None:
        start, end = 0, start
    start, end, step = (v.item() if isinstance(v, Tensor) else v for v in (start, end, step))
    for what, v in (("start", start), ("end", end), ("step", step)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v):
            raise ValueError(f"arange: {what} must be a finite number, got {v!r}")
    if step == 0:
        raise ValueError("arange: step must be nonzero")
    if (end - start) * step < 0:
        raise ValueError(f"arange: step {step} goes away from end (start={start}, end={end}); "
                         "use a step of the other sign")
    if dtype is None:
        is_int = all(isinstance(v, (int, np.integer)) for v in (start, end, step))
        d = _dt.int64 if is_int else _dt.get_default_dtype()
    else:
        d = _dt.to_dtype(dtype)
    return _finish(np.arange(start, end, step).astype(d.np), d, device, requires_grad, "arange")


def linspace(start: float, end: float, steps: int, dtype: Any = None, device: Any = None,
             requires_grad: bool = False) -> Tensor:
    """``steps`` evenly spaced values from ``start`` to ``end`` inclusive."""
    if isinstance(steps, bool) or not hasattr(steps, "__index__"):
        raise TypeError(f"linspace: steps must be an int, got {steps!r}")
    if steps < 0:
        raise ValueError(f"linspace: steps must be non-negative, got {steps}")
    d = _dt.to_dtype(dtype) if dtype is not None else _dt.get_default_dtype()
    return _finish(np.linspace(start, end, steps).astype(d.np), d, device, requires_grad, "linspace")


def eye(n: int, m: int | None = None, dtype: Any = None, device: Any = None, requires_grad: bool = False) -> Tensor:
    """The identity matrix (``n x m``)."""
    d = _dt.to_dtype(dtype) if dtype is not None else _dt.get_default_dtype()
    if m is None:
        m = n
    for v in (n, m):
        if isinstance(v, bool) or not hasattr(v, "__index__"):
            raise ShapeError(f"eye: n and m must be ints, got n={n!r}, m={m!r}")
    n, m = check_shape_arg("eye", (n, m))
    return _finish(np.eye(n, m, dtype=d.np), d, device, requires_grad, "eye")


# ----------------------------------------------------------------------------- moving between devices

def _to_device_infer(x: Tensor, device: Any, src: Any) -> tuple:
    return x.shape, x.dtype


def _to_device_impl(xp: Any, x: Any, device: Any, src: Any) -> Any:
    """Copy one array from device ``src`` to ``device``; the two backends do the work (``xp`` is unused).
    Device to host is the source backend's ``to_numpy``; anything to a GPU is the target's ``asarray``
    (host data is copied over, an array on another GPU is copied across)."""
    if device.type == "cpu":
        return get_backend(src).to_numpy(x)
    return get_backend(device).asarray(x)


# The gradient of a device copy is the incoming gradient copied back to the source device.
TO_DEVICE = Op("to_device", infer=_to_device_infer, impl=_to_device_impl,
               vjp=lambda ctx, g: (to_device(g, ctx.attrs["src"]),),
               jvp=lambda ctx, t: to_device(t, ctx.attrs["device"]), save_inputs=False, linear=True)


def to_device(x: Tensor, device: Any) -> Tensor:
    """A copy of ``x`` on ``device``, or ``x`` itself when it is already there.

    Differentiable: when ``x`` requires grad the copy does too, and its backward moves the gradient back
    to ``x``'s device. ``ops.apply`` gives an op's result the device of its first input, so this op is
    recorded here instead, exactly as ``apply`` records one (a tape ``Node``, and the tangent in forward
    mode). Moving tensors inside ``ember.jit``/symbolic graphs is not supported: move inputs and the
    model before calling the compiled function.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"to_device: expected a Tensor, got {type(x).__name__}")
    dev = _device(device)
    src = x.device
    if dev is src or dev == src:
        return x
    if STATE.tracer is not None or (SYMBOLIC[0] is not None and _is_symbolic(x)):
        raise TraceError(f"to_device: moving a tensor from {src} to {dev} inside a traced function is not "
                         "supported; move the inputs and the model to the device before calling it")
    attrs = {"device": dev, "src": src}
    out = _make(_to_device_impl(None, x.data, **attrs), x.dtype, dev)
    if x.requires_grad and STATE.grad_enabled:
        out.requires_grad = True
        out.grad_fn = Node(TO_DEVICE, (x,), attrs, out)
    if STATE.forward_ad and x._tangent is not None:
        out._tangent = to_device(x._tangent, dev).detach()
    return out


def _is_symbolic(x: Tensor) -> bool:
    from ..graph.symbolic import SymbolicArray
    return type(x.data) is SymbolicArray
