"""``ember.cuda``: GPU queries and memory statistics, like ``torch.cuda``.

Without a usable GPU (no CuPy, no driver, no device) the functions that only report answer as
PyTorch does before CUDA is initialized: ``is_available()`` is False, ``device_count()`` and the memory
statistics are 0, and ``reset_peak_memory_stats()``/``empty_cache()`` do nothing (there is nothing to
reset or free). The functions that need a device (``current_device``, ``set_device``,
``get_device_name``, ``synchronize``) raise ``DeviceError`` saying why CUDA is unusable, and so does
any function given a device index that does not exist. Importing this module never imports CuPy.

Memory statistics come from CuPy's default memory pool; see ``ember.backend.cuda`` for what each
number means and how the peak is tracked.
"""

from __future__ import annotations

from typing import Any

from .backend import cuda as _cuda
from .device import Device
from .errors import DeviceError

__all__ = ["current_device", "device_count", "empty_cache", "get_device_name", "is_available",
           "max_memory_allocated", "memory_allocated", "memory_reserved", "reset_peak_memory_stats",
           "set_device", "synchronize"]


def is_available() -> bool:
    """Whether a GPU can be used (CuPy installed and at least one CUDA device)."""
    return _cuda.available()[0]


def device_count() -> int:
    """The number of usable GPUs (0 without CUDA)."""
    return _cuda.device_count()


def _index(name: str, device: Any) -> int:
    """The device index ``device`` names (None: the current device); raises when CUDA is unusable."""
    if device is None:
        return _cuda.current_index()
    if isinstance(device, bool):
        raise DeviceError(f"ember.cuda.{name}: expected a device index, 'cuda:N' or ember.device, got {device!r}")
    if isinstance(device, int):
        index = device
    else:
        d = Device(device)
        if d.type != "cuda":
            raise DeviceError(f"ember.cuda.{name}: expected a cuda device, got {d}")
        index = d.index
    _cuda.backend(index)  # raises DeviceError naming the reason or the devices that exist
    return index


def current_device() -> int:
    """The index of the current GPU (where new ``cuda`` tensors go and kernels run)."""
    return _index("current_device", None)


def set_device(device: Any) -> None:
    """Make ``device`` (an index, ``'cuda:N'`` or ``ember.device``) the current GPU of this process."""
    index = _index("set_device", device)
    _cuda.require().cuda.Device(index).use()


def get_device_name(device: Any = None) -> str:
    """The product name of a GPU (the current one by default)."""
    index = _index("get_device_name", device)
    name = _cuda.require().cuda.runtime.getDeviceProperties(index)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def synchronize(device: Any = None) -> None:
    """Wait until every kernel queued on ``device`` (the current GPU by default) has finished."""
    _cuda.backend(_index("synchronize", device)).synchronize()


def _stat(name: str, device: Any) -> Any:
    """The backend to read statistics from, or None without CUDA (the statistics are then 0)."""
    if not is_available():
        if isinstance(device, (str, Device)):
            Device(device)  # a malformed spec is an error with or without a GPU
        elif device is not None and (isinstance(device, bool) or not isinstance(device, int)):
            raise DeviceError(f"ember.cuda.{name}: expected a device index, 'cuda:N' or ember.device, "
                              f"got {device!r}")
        return None
    return _cuda.backend(_index(name, device))


def memory_allocated(device: Any = None) -> int:
    """Bytes held by live tensors on a GPU (0 without CUDA)."""
    b = _stat("memory_allocated", device)
    return 0 if b is None else b.memory_allocated()


def memory_reserved(device: Any = None) -> int:
    """Bytes the memory pool holds on a GPU, live plus cached for reuse (0 without CUDA)."""
    b = _stat("memory_reserved", device)
    return 0 if b is None else b.memory_reserved()


def max_memory_allocated(device: Any = None) -> int:
    """The peak of ``memory_allocated`` since start or ``reset_peak_memory_stats`` (0 without CUDA)."""
    b = _stat("max_memory_allocated", device)
    return 0 if b is None else b.max_memory_allocated()


def reset_peak_memory_stats(device: Any = None) -> None:
    """Restart the peak of ``max_memory_allocated`` from the current allocation (no-op without CUDA)."""
    b = _stat("reset_peak_memory_stats", device)
    if b is not None:
        b.reset_peak_memory_stats()


def empty_cache() -> None:
    """Return cached, unused GPU memory of the current device to the driver (no-op without CUDA)."""
    b = _stat("empty_cache", None)
    if b is not None:
        b.empty_cache()
