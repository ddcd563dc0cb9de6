"""Array backends. A backend supplies the array namespace ``xp`` the reference
kernels are written against, plus allocation and transfer; ``cpu`` is NumPy and
``cuda`` is CuPy (``ember.backend.cuda``, imported lazily, usable only with a GPU)."""

from __future__ import annotations


def available_backends() -> list[str]:
    """The device types usable in this process: ``cpu``, plus ``cuda`` when CuPy sees a GPU."""
    from . import cuda
    return ["cpu", "cuda"] if cuda.available()[0] else ["cpu"]
