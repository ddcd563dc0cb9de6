"""The CUDA backend: CuPy arrays on NVIDIA GPUs, GEMM through cuBLAS (CuPy's ``matmul``).

CuPy is imported on first use, never by ``import ember``: ``available()`` says whether a GPU is usable
and why not, and ``backend(i)`` is the backend object for device ``cuda:i`` (what
``ember.device.get_backend`` returns). The op kernels are the registry's generic ``xp`` paths with
``xp = cupy``; they run on CuPy's *current* device, so a process drives one GPU at a time
(``ember.cuda.set_device``, one process per GPU under ``ember run`` as with NCCL). Allocation and
transfers made here honour the tensor's device index.

Memory: every allocation goes through CuPy's default memory pool. ``allocated`` is the pool's
``used_bytes()`` (bytes held by live arrays), ``reserved`` its ``total_bytes()`` (held from the driver,
live or cached). CuPy keeps no peak counter, so on first use this module installs an allocator that
calls the pool's ``malloc`` and then records ``used_bytes()`` per device when it is a new maximum: the
peak is exact at allocation granularity (frees can only lower usage). It is installed only while CuPy's
allocator is still the default pool's; if the program set its own allocator, the peak is the largest
value seen by the memory queries instead.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..errors import DeviceError

INSTALL_HINT = "CuPy is not installed (pip install 'ember[cuda]')"

_AVAILABLE: list[tuple[bool, str] | None] = [None]   # cached result of available()
_BACKENDS: dict[int, CUDABackend] = {}
_PEAK: dict[int, int] = {}                             # device index -> peak used_bytes of the pool
_TRACKING: list[bool] = [False]


def _cupy() -> Any:
    import cupy
    return cupy


def available() -> tuple[bool, str]:
    """``(True, "N CUDA device(s)")`` when CuPy imports and sees a GPU, else ``(False, reason)``.

    The answer is computed once per process (a driver or device does not appear while it runs).
    """
    if _AVAILABLE[0] is None:
        _AVAILABLE[0] = _probe()
    return _AVAILABLE[0]


def _probe() -> tuple[bool, str]:
    try:
        cupy = _cupy()
    except ImportError:
        return False, INSTALL_HINT
    except Exception as e:  # a broken install (missing CUDA libraries, ...) must not break ember
        return False, f"CuPy failed to import ({type(e).__name__}: {e})"
    try:
        n = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as e:  # CUDARuntimeError: no driver, driver too old, no device
        text = str(e)
        if "NoDevice" in text:
            return False, f"no CUDA device ({text})"
        return False, f"CUDA is not usable ({text})"
    if n == 0:
        return False, "no CUDA device"
    return True, f"{n} CUDA device{'s' if n > 1 else ''}"


def device_count() -> int:
    """How many GPUs CuPy sees (0 when CUDA is not usable)."""
    ok, _ = available()
    return int(_cupy().cuda.runtime.getDeviceCount()) if ok else 0


def require() -> Any:
    """The ``cupy`` module, or a ``DeviceError`` that says why CUDA cannot be used."""
    ok, reason = available()
    if not ok:
        raise DeviceError(f"CUDA is not available: {reason}")
    return _cupy()


def backend(index: int) -> CUDABackend:
    """The backend of ``cuda:index`` (one object per device, made on first use)."""
    b = _BACKENDS.get(index)
    if b is None:
        require()
        n = device_count()
        if not 0 <= index < n:
            raise DeviceError(f"device cuda:{index} is not available: this machine has {n} CUDA "
                              f"device{'s' if n != 1 else ''} (cuda:0{f' .. cuda:{n - 1}' if n > 1 else ''})")
        _track_peak()
        b = _BACKENDS[index] = CUDABackend(index)
    return b


def current_index() -> int:
    """CuPy's current device (where kernels run and ``cuda`` without an index allocates)."""
    return int(require().cuda.runtime.getDevice())


def _track_peak() -> None:
    """Route CuPy's allocations through the default pool plus a peak recorder (see the module doc)."""
    if _TRACKING[0]:
        return
    _TRACKING[0] = True
    cupy = _cupy()
    pool = cupy.get_default_memory_pool()
    if getattr(cupy.cuda.get_allocator(), "__self__", None) is not pool:
        return  # the program installed its own allocator: leave it alone
    malloc, peak = pool.malloc, _PEAK

    def malloc_and_record(size: int) -> Any:
        mem = malloc(size)
        used = pool.used_bytes()  # the pool of the current device, where mem was just allocated
        dev = mem.device_id
        if used > peak.get(dev, 0):
            peak[dev] = used
        return mem

    cupy.cuda.set_allocator(malloc_and_record)


class CUDABackend:
    """Allocation, host/device transfers, DLPack and memory statistics for one GPU (``cuda:index``)."""

    name = "cuda"

    def __init__(self, index: int) -> None:
        cupy = _cupy()
        self.index = index
        self.xp = cupy
        self._device = cupy.cuda.Device(index)
        self._pool = cupy.get_default_memory_pool()

    def __repr__(self) -> str:
        return f"CUDABackend(cuda:{self.index})"

    # -------------------------------------------------------------------- arrays
    def empty(self, shape: tuple[int, ...], np_dtype: np.dtype) -> Any:
        """An uninitialized array on this GPU (from the memory pool)."""
        with self._device:
            return self.xp.empty(shape, dtype=np_dtype)

    def asarray(self, data: Any, np_dtype: np.dtype | None = None) -> Any:
        """``data`` as an array on this GPU: host data is copied over; an array already here is returned
        as is (cast to ``np_dtype`` if given); an array on another GPU is copied to this one."""
        xp = self.xp
        with self._device:
            if isinstance(data, xp.ndarray):
                if data.device.id != self.index:
                    data = xp.copy(data)  # allocates here and copies across devices
                return data if np_dtype is None else data.astype(np_dtype, copy=False)
            return xp.asarray(data, dtype=np_dtype)

    def to_numpy(self, array: Any) -> np.ndarray:
        """A host copy of ``array`` (waits for the work that produces it)."""
        if isinstance(array, np.ndarray):
            return array
        with self._device:
            return self.xp.asnumpy(array)

    def from_dlpack(self, obj: Any) -> Any:
        """Zero-copy import of a DLPack-capable GPU array (PyTorch, JAX, CuPy)."""
        with self._device:
            return self.xp.from_dlpack(obj)

    def synchronize(self) -> None:
        """Wait until every kernel queued on this GPU has finished."""
        self._device.synchronize()

    def activate(self) -> Any:
        """A context manager that makes this GPU CuPy's current device inside it."""
        return self._device

    def data_ptr(self, array: Any) -> int:
        """The device address of ``array``'s first element (for NCCL)."""
        return int(array.data.ptr)

    def stream_ptr(self) -> int:
        """The handle of CuPy's current stream on this GPU (NCCL calls are ordered on it)."""
        with self._device:
            return int(self.xp.cuda.get_current_stream().ptr)

    def nccl(self) -> Any:
        """``cupy.cuda.nccl``, or a ``DeviceError`` when CuPy has no NCCL library to load."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # CuPy warns at import when libnccl is missing; we raise instead
            from cupy.cuda import nccl
        if not getattr(nccl, "available", False):
            raise DeviceError("NCCL is not available to CuPy (install it with pip install nvidia-nccl-cu13)")
        return nccl

    # -------------------------------------------------------------------- memory statistics
    def memory_allocated(self) -> int:
        """Bytes held by live arrays on this GPU (the memory pool's ``used_bytes``)."""
        with self._device:
            used = int(self._pool.used_bytes())
        if used > _PEAK.get(self.index, 0):
            _PEAK[self.index] = used
        return used

    def memory_reserved(self) -> int:
        """Bytes the memory pool holds from the driver on this GPU (live plus cached blocks)."""
        with self._device:
            return int(self._pool.total_bytes())

    def max_memory_allocated(self) -> int:
        """The largest ``memory_allocated`` since start or the last ``reset_peak_memory_stats``."""
        return max(_PEAK.get(self.index, 0), self.memory_allocated())

    def reset_peak_memory_stats(self) -> None:
        """Start the peak over from the current allocation."""
        _PEAK[self.index] = 0
        self.memory_allocated()

    def empty_cache(self) -> None:
        """Return the pool's cached (unused) blocks on this GPU to the driver."""
        with self._device:
            self._pool.free_all_blocks()
