"""A stand-in "cuda" backend for tests on machines without a GPU (it lives here, never in ``ember``).

Device arrays live in host memory, but the stand-in behaves like a device where it matters to the
plumbing: moving data in or out always copies, each ``cuda:N`` is its own device, and ops see an
array namespace ``xp`` that is *not* the ``numpy`` module (a namespace that forwards to it), so the
registry's generic kernels run (the ones CuPy takes) instead of the ``if xp is np:`` C fast paths.

Device arrays are ``DeviceArray`` objects, not NumPy arrays, and refuse what ``cupy.ndarray`` refuses
(checked against CuPy's ``_core/core.pyx``):

- implicit conversion to NumPy: ``np.asarray(a)``, ``np.array(a)``, ``host[...] = a`` and every other
  path through ``__array__`` raise CuPy's ``TypeError``; ``a.get()``, ``xp.asnumpy(a)`` and the backend's
  ``to_numpy`` are the explicit copies to the host;
- ``a.flags`` has only ``c_contiguous``, ``f_contiguous`` and ``owndata`` (no ``writeable``); there is no
  ``a.ctypes`` or ``a.__array_interface__``;
- host arrays mixed into device computations (``xp.add(a, host)``, ``a * host``, ``a[...] = host``) raise
  CuPy's ``TypeError: Unsupported type``; only the explicit conversions (``xp.asarray``, ``xp.array``,
  ``xp.asanyarray``) take host data, and they copy it; host index arrays in ``a[idx]`` are accepted;
- reductions and scalar indexing give 0-d device arrays, not NumPy scalars; iteration gives device arrays.

One point is deliberately stricter than CuPy: a bare NumPy call on a device array (``np.copyto(a, b)``,
``np.add.at(a, i, v)``, ``np.multiply(a, 2)``, ``np.sum(a)``) raises ``TypeError`` here, whereas CuPy's
``__array_ufunc__``/``__array_function__`` forward such calls to ``cupy.<name>`` when every array argument
is on the device and CuPy has that name (and fail otherwise: host arrays mixed in, names CuPy lacks,
keyword arguments it does not take). Ember's kernels are written against ``xp``; code that reaches device
data must use the backend's ``xp`` (or the tensor's methods), never rely on that forwarding.

``FakeNccl`` imitates ``cupy.cuda.nccl`` over MPI on the stand-in's host memory, so the NCCL path of
``ember.distributed.Communicator`` runs under ``mpiexec`` without a GPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import random
import sys
import types
from collections.abc import Callable
from typing import Any

import numpy as np

import ember
import ember.backend.cuda
import ember.cuda
import ember.ops.registry
from ember.errors import DeviceError

device_module = importlib.import_module("ember.device")  # ``ember.device`` itself is the Device class

IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. "
            "Please use `.get()` to construct a NumPy array explicitly.")


# ---------------------------------------------------------------------------------------------- device arrays

def _unsupported(x: Any) -> TypeError:
    return TypeError(f"Unsupported type {type(x)}")  # CuPy's message for a host array given to a kernel


def _host(x: Any, explicit: bool = False) -> Any:
    """``x`` for NumPy: device arrays unwrapped (recursively in lists, tuples and dicts). A host array
    (ndim >= 1) raises as in CuPy unless ``explicit`` (a host-to-device conversion)."""
    t = type(x)
    if t is DeviceArray:
        return x._a
    if t is np.ndarray:
        if explicit or x.ndim == 0:
            return x
        raise _unsupported(x)
    if t is list or t is tuple:
        return t(_host(v, explicit) for v in x)
    if t is dict:
        return {k: _host(v, explicit) for k, v in x.items()}
    return x


def _key(key: Any) -> Any:
    """An index for ``__getitem__``/``__setitem__``: device arrays unwrapped, host index arrays accepted."""
    if type(key) is tuple:
        return tuple(_key(k) for k in key)
    return key._a if type(key) is DeviceArray else key


def _dev(x: Any, args: tuple = ()) -> Any:
    """A NumPy result as the device would give it: arrays and NumPy scalars become device arrays (a
    result that is an argument's own storage comes back as that argument)."""
    if type(x) is np.ndarray:
        for a in args:
            if type(a) is DeviceArray and a._a is x:
                return a
        return DeviceArray(x)
    if isinstance(x, np.generic):
        return DeviceArray(np.asarray(x))
    if type(x) is list or type(x) is tuple:
        return type(x)(_dev(v, args) for v in x)
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # named tuples (np.linalg results)
        return type(x)(*(_dev(v, args) for v in x))
    if isinstance(x, np.random.Generator):
        return NumpyNamespace(x)
    return x


def _flat_args(args: tuple, kwargs: dict) -> tuple:
    out = list(args)
    for v in kwargs.values():
        out.extend(v if type(v) in (list, tuple) else (v,))
    return tuple(out)


class Flags:
    """``cupy.ndarray.flags``: ``c_contiguous``, ``f_contiguous`` and ``owndata``, nothing else."""

    __slots__ = ("c_contiguous", "f_contiguous", "owndata")

    def __init__(self, a: np.ndarray) -> None:
        self.c_contiguous = bool(a.flags.c_contiguous)
        self.f_contiguous = bool(a.flags.f_contiguous)
        self.owndata = a.base is None

    def __getitem__(self, name: str) -> bool:
        key = {"C_CONTIGUOUS": "c_contiguous", "F_CONTIGUOUS": "f_contiguous", "OWNDATA": "owndata"}.get(name)
        if key is None:
            raise KeyError(name)
        return getattr(self, key)

    def __repr__(self) -> str:
        return "\n".join(f"  {k.upper()} : {getattr(self, k)}" for k in self.__slots__)


class DeviceArray:
    """A "device" array: host memory behind CuPy's manners (see the module doc). ``host_view(a)`` is its
    storage as a NumPy array, for tests that look inside."""

    __slots__ = ("_a",)
    __array_priority__ = 100
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, array: np.ndarray) -> None:
        self._a = array

    # -------------------------------------------------------------------- what CuPy refuses
    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise TypeError(IMPLICIT)

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        name = ufunc.__name__ if method == "__call__" else f"{ufunc.__name__}.{method}"
        raise TypeError(f"numpy.{name} was called on a device array; use the backend's xp (the CUDA stand-in "
                        "refuses bare NumPy calls on device data)")

    def __array_function__(self, func: Any, types_: Any, args: Any, kwargs: Any) -> Any:
        raise TypeError(f"numpy.{func.__name__} was called on a device array; use the backend's xp (the CUDA "
                        "stand-in refuses bare NumPy calls on device data)")

    # -------------------------------------------------------------------- attributes
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    T = property(lambda self: DeviceArray(self._a.T))
    flags = property(lambda self: Flags(self._a))

    @property
    def base(self) -> Any:
        b = self._a.base
        return None if b is None else DeviceArray(b) if type(b) is np.ndarray else b

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("ctypes", "data", "device", "writeable", "setflags"):
            raise AttributeError(f"'DeviceArray' object has no attribute {name!r}")
        attr = getattr(self._a, name)
        if not callable(attr):
            return _dev(attr)

        def method(*args: Any, **kwargs: Any) -> Any:
            return _dev(attr(*_host(args), **_host(kwargs)), (self,))
        return method

    def get(self, stream: Any = None, order: str = "C", out: Any = None) -> np.ndarray:
        """A host copy, as ``cupy.ndarray.get``."""
        return np.array(self._a, order=order, copy=True)

    # -------------------------------------------------------------------- indexing, conversion, printing
    def __getitem__(self, key: Any) -> Any:
        return _dev(self._a[_key(key)])

    def __setitem__(self, key: Any, value: Any) -> None:
        self._a[_key(key)] = _host(value)

    def __len__(self) -> int:
        return len(self._a)

    def __iter__(self) -> Any:
        if self._a.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self._a.shape[0]))

    def __bool__(self) -> bool:
        return bool(self._a)

    def __float__(self) -> float:
        return float(self._a)

    def __int__(self) -> int:
        return int(self._a)

    def __index__(self) -> int:
        return self._a.__index__()

    def __complex__(self) -> complex:
        return complex(self._a)

    def __repr__(self) -> str:
        return repr(self._a)

    def __str__(self) -> str:
        return str(self._a)

    def __format__(self, spec: str) -> str:
        return format(self._a, spec)

    def __copy__(self) -> DeviceArray:
        return DeviceArray(self._a.copy())

    def __deepcopy__(self, memo: dict) -> DeviceArray:
        return DeviceArray(self._a.copy())

    def __reduce__(self) -> tuple:
        return DeviceArray, (self._a,)


def _binary(name: str) -> Callable:
    inplace = name.startswith("__i")

    def op(self: DeviceArray, other: Any) -> Any:
        r = getattr(self._a, name)(_host(other))
        if r is NotImplemented:
            return r
        return self if inplace else _dev(r)
    op.__name__ = name
    return op


def _unary(name: str) -> Callable:
    def op(self: DeviceArray) -> Any:
        return _dev(getattr(self._a, name)())
    op.__name__ = name
    return op


for _n in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor", "lshift",
           "rshift"):
    for _f in (f"__{_n}__", f"__r{_n}__", f"__i{_n}__"):
        setattr(DeviceArray, _f, _binary(_f))
for _f in ("__lt__", "__le__", "__eq__", "__ne__", "__gt__", "__ge__", "__divmod__", "__rdivmod__"):
    setattr(DeviceArray, _f, _binary(_f))
for _f in ("__neg__", "__pos__", "__abs__", "__invert__"):
    setattr(DeviceArray, _f, _unary(_f))


def host_view(a: Any) -> np.ndarray:
    """The host storage of a stand-in device array (for tests that check sharing), or ``a`` itself."""
    return a._a if type(a) is DeviceArray else a


# ---------------------------------------------------------------------------------------------- xp

_CONVERSIONS = ("asarray", "asanyarray", "array")  # the host-to-device copies CuPy takes host data in


def _function(fn: Callable) -> Callable:
    def call(*args: Any, **kwargs: Any) -> Any:
        return _dev(fn(*_host(args), **_host(kwargs)), _flat_args(args, kwargs))
    call.__name__ = getattr(fn, "__name__", "call")
    return call


def _conversion(name: str) -> Callable:
    def convert(a: Any, dtype: Any = None, order: Any = None, **kwargs: Any) -> Any:
        if order is not None:
            kwargs["order"] = order
        if type(a) is DeviceArray:  # already on the device: NumPy's rules for copying
            return _dev(getattr(np, name)(a._a, dtype, **kwargs), (a,))
        kwargs.pop("copy", None)
        return DeviceArray(np.array(_host(a, explicit=True), dtype, copy=True, **kwargs))
    convert.__name__ = name
    return convert


def asnumpy(a: Any, stream: Any = None, order: str = "C", out: Any = None) -> np.ndarray:
    """``cupy.asnumpy``: a host copy of a device array (host data is returned as NumPy has it)."""
    return a.get(order=order) if type(a) is DeviceArray else np.asarray(a, order=order)


class _Ufunc:
    """A NumPy ufunc on device arrays (``xp.add(a, b)``, ``xp.add.at(a, i, v)``, ``xp.maximum.reduce(a)``)."""

    def __init__(self, ufunc: np.ufunc) -> None:
        self._u = ufunc

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _dev(self._u(*_host(args), **_host(kwargs)), _flat_args(args, kwargs))

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._u, name)
        return _function(attr) if name in ("at", "reduce", "reduceat", "accumulate", "outer") else attr


class _Indexer:
    """``xp.ogrid``/``xp.mgrid``-style objects: indexing them gives device arrays."""

    def __init__(self, obj: Any) -> None:
        self._o = obj

    def __getitem__(self, key: Any) -> Any:
        return _dev(self._o[_key(key)])


class NumpyNamespace:
    """``numpy`` under another identity, on ``DeviceArray``s: every function is NumPy's, with device arrays
    unwrapped on the way in and results made device arrays on the way out; ``xp is np`` is False."""

    ndarray = DeviceArray

    def __init__(self, target: Any = np) -> None:
        self._t = target

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if self._t is np and name in _CONVERSIONS:
            value: Any = _conversion(name)
        elif self._t is np and name == "asnumpy":
            value = asnumpy
        else:
            attr = getattr(self._t, name)
            if isinstance(attr, types.ModuleType):
                value = NumpyNamespace(attr)
            elif isinstance(attr, type):
                value = attr  # dtypes and classes: numpy's own, as in CuPy (cupy.float32 is numpy.float32)
            elif isinstance(attr, np.ufunc):
                value = _Ufunc(attr)
            elif callable(attr):
                value = _function(attr)
            elif hasattr(type(attr), "__getitem__") and not isinstance(attr, (str, bytes, tuple, dict)):
                value = _Indexer(attr)
            else:
                value = attr
        if not isinstance(self._t, np.random.Generator):
            object.__setattr__(self, name, value)  # cache (a generator's attributes can change)
        return value


# ---------------------------------------------------------------------------------------------- backend

class FakeGpuArray:
    """An array that says (through DLPack's device query) it lives on CUDA device ``device_id``."""

    def __init__(self, array: np.ndarray, device_id: int = 0, dlpack_type: int = 2) -> None:
        self.array, self.device_id, self.dlpack_type = array, device_id, dlpack_type

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        return self.dlpack_type, self.device_id


class StandInBackend:
    """The backend interface of ``ember.backend.cuda.CUDABackend`` on host memory."""

    name = "cuda"

    def __init__(self, index: int, xp: Any, nccl: Any = None) -> None:
        self.index, self.xp, self._nccl = index, xp, nccl

    def empty(self, shape: tuple[int, ...], np_dtype: Any) -> DeviceArray:
        return DeviceArray(np.empty(shape, dtype=np_dtype))

    def asarray(self, data: Any, np_dtype: Any = None) -> DeviceArray:
        """Host data is copied over, and so is an array of another device (every ``cuda:N`` here is one
        stand-in, so a device array is copied too, as the transfer between GPUs would)."""
        return DeviceArray(np.array(_host(data, explicit=True), dtype=np_dtype, copy=True))

    def to_numpy(self, array: Any) -> np.ndarray:
        """A host copy of a device array; a NumPy array is returned as is (as ``CUDABackend.to_numpy``)."""
        return array if isinstance(array, np.ndarray) else array.get()

    def from_dlpack(self, obj: Any) -> DeviceArray:
        if not isinstance(obj, FakeGpuArray):
            raise TypeError(f"the stand-in imports FakeGpuArray only, got {type(obj).__name__}")
        return DeviceArray(obj.array)  # zero copy

    def synchronize(self) -> None:
        pass

    def activate(self) -> Any:
        return contextlib.nullcontext()

    def data_ptr(self, array: DeviceArray) -> int:
        return int(host_view(array).ctypes.data)

    def stream_ptr(self) -> int:
        return 0

    def nccl(self) -> Any:
        if self._nccl is None:
            raise DeviceError("NCCL is not available to the stand-in")
        return self._nccl


def install(setattr_: Callable[[Any, str, Any], None], xp: Any = None, nccl: Any = None) -> None:
    """Make ``cuda:N`` devices resolve to stand-in backends. ``setattr_`` is ``monkeypatch.setattr`` in a
    test (undone after it) or ``setattr`` in a rank script."""
    xp = NumpyNamespace() if xp is None else xp
    original = device_module.get_backend
    backends: dict[int, StandInBackend] = {}

    def get_backend(device: Any) -> Any:
        if device.type != "cuda":
            return original(device)
        if device.index not in backends:
            backends[device.index] = StandInBackend(device.index, xp, nccl)
        return backends[device.index]

    # Modules that imported the function by name (``from ..device import get_backend``) get it too.
    for name, mod in list(sys.modules.items()):
        if name.startswith("ember") and getattr(mod, "get_backend", None) is original:
            setattr_(mod, "get_backend", get_backend)
    setattr_(ember.ops.registry, "_XP", {})  # forget any cached namespace of a cuda device
    setattr_(ember.cuda, "current_device", lambda: 0)
    setattr_(ember.backend.cuda, "current_index", lambda: 0)


# ---------------------------------------------------------------------------------------------- fake NCCL

_DTYPES = {0: np.int8, 1: np.uint8, 2: np.int32, 3: np.uint32, 4: np.int64, 5: np.uint64, 6: np.float16,
           7: np.float32, 8: np.float64}


def _view(ptr: int, count: int, dtype: int) -> np.ndarray:
    dt = np.dtype(_DTYPES[dtype])
    raw = (ctypes.c_char * (count * dt.itemsize)).from_address(ptr)
    return np.frombuffer(raw, dtype=dt, count=count)


class FakeNccl:
    """``cupy.cuda.nccl``'s names and call signatures, done with mpi4py on the world communicator."""

    available = True
    NCCL_SUM, NCCL_PROD, NCCL_MAX, NCCL_MIN = 0, 1, 2, 3
    NCCL_INT8, NCCL_UINT8, NCCL_INT32, NCCL_UINT32, NCCL_INT64 = 0, 1, 2, 3, 4
    NCCL_UINT64, NCCL_FLOAT16, NCCL_FLOAT32, NCCL_FLOAT64 = 5, 6, 7, 8
    calls: list[str] = []  # which NCCL functions ran, for the test to check the path was taken

    @staticmethod
    def get_unique_id() -> tuple:
        return tuple(random.randrange(-128, 128) for _ in range(128))

    class NcclCommunicator:
        def __init__(self, ndev: int, comm_id: tuple, rank: int) -> None:
            from mpi4py import MPI
            self.mpi = MPI.COMM_WORLD
            assert (ndev, rank) == (self.mpi.Get_size(), self.mpi.Get_rank()), (ndev, rank)
            ids = self.mpi.allgather(comm_id)
            assert len(comm_id) == 128 and all(i == comm_id for i in ids), "ranks got different unique ids"
            FakeNccl.calls.append("init")

        def _op(self, op: int) -> Any:
            from mpi4py import MPI
            return {0: MPI.SUM, 1: MPI.PROD, 2: MPI.MAX, 3: MPI.MIN}[op]

        def allReduce(self, send: int, recv: int, count: int, dtype: int, op: int, stream: int) -> None:
            from mpi4py import MPI
            FakeNccl.calls.append("allReduce")
            out = _view(recv, count, dtype)
            self.mpi.Allreduce(MPI.IN_PLACE if send == recv else _view(send, count, dtype), out, self._op(op))

        def broadcast(self, send: int, recv: int, count: int, dtype: int, root: int, stream: int) -> None:
            FakeNccl.calls.append("broadcast")
            buf = _view(recv, count, dtype)
            if send != recv and self.mpi.Get_rank() == root:
                buf[...] = _view(send, count, dtype)
            self.mpi.Bcast(buf, root=root)

        def allGather(self, send: int, recv: int, count: int, dtype: int, stream: int) -> None:
            FakeNccl.calls.append("allGather")
            self.mpi.Allgather(_view(send, count, dtype).copy(), _view(recv, count * self.mpi.Get_size(), dtype))

        def reduceScatter(self, send: int, recv: int, recvcount: int, dtype: int, op: int, stream: int) -> None:
            FakeNccl.calls.append("reduceScatter")
            n = self.mpi.Get_size()
            self.mpi.Reduce_scatter_block(_view(send, recvcount * n, dtype), _view(recv, recvcount, dtype),
                                          self._op(op))

        def send(self, buf: int, count: int, dtype: int, peer: int, stream: int) -> None:
            FakeNccl.calls.append("send")
            self.mpi.Send(_view(buf, count, dtype).copy(), dest=peer, tag=999)

        def recv(self, buf: int, count: int, dtype: int, peer: int, stream: int) -> None:
            FakeNccl.calls.append("recv")
            self.mpi.Recv(_view(buf, count, dtype), source=peer, tag=999)

        def destroy(self) -> None:
            FakeNccl.calls.append("destroy")
