"""Devices and the lookup from a device to its backend."""

from __future__ import annotations

from typing import Any

from .errors import DeviceError


class Device:
    """A device such as ``cpu`` or ``cuda:0``; compare and hash by name."""

    __slots__ = ("index", "type")

    def __init__(self, spec: Any = "cpu") -> None:
        if isinstance(spec, Device):
            self.type, self.index = spec.type, spec.index
            return
        if not isinstance(spec, str):
            raise DeviceError(f"cannot interpret {spec!r} as a device; expected a string like 'cpu' or 'cuda:0'")
        name, _, idx = spec.partition(":")
        if name not in ("cpu", "cuda"):
            raise DeviceError(f"unknown device {spec!r}; expected 'cpu' or 'cuda[:N]'")
        if idx and not idx.isdigit():
            raise DeviceError(f"bad device index in {spec!r}; expected e.g. 'cuda:0'")
        self.type = name
        self.index = int(idx) if idx else 0

    def __reduce__(self) -> tuple:
        return (Device, (str(self),))

    def __str__(self) -> str:
        return "cpu" if self.type == "cpu" else f"{self.type}:{self.index}"

    def __repr__(self) -> str:
        return f"device('{self}')"

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if isinstance(other, str):
            try:
                other = Device(other)
            except Exception:
                return False
        return isinstance(other, Device) and self.type == other.type and self.index == other.index

    def __hash__(self) -> int:
        return hash((self.type, self.index))


CPU = Device("cpu")


_INTERNED: dict[Device, Device] = {CPU: CPU}


def to_device(spec: Any) -> Device:
    """The interned ``Device`` for ``spec`` (so hot paths can compare devices with ``is``)."""
    if spec is None or spec is CPU:
        return CPU
    d = spec if isinstance(spec, Device) else Device(spec)
    return _INTERNED.setdefault(d, d)


def get_backend(device: Device) -> Any:
    """The backend object that allocates and computes on ``device`` (``DeviceError`` when it is unusable)."""
    if device.type == "cpu":
        from .backend import cpu
        return cpu.BACKEND
    from .backend import cuda
    ok, reason = cuda.available()
    if ok:
        return cuda.backend(device.index)
    from .backend import available_backends
    raise DeviceError(f"device {device} is not available in this build; available: "
                      f"{', '.join(available_backends())} ({reason})")


def array_module(device: Device) -> Any:
    """The array namespace that holds ``device``'s data: NumPy on the CPU, CuPy on a GPU."""
    return get_backend(device).xp


device = Device  # ember.device("cpu"), like torch.device
