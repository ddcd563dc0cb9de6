"""Array backends. A backend supplies the array namespace ``xp`` the reference
kernels are written against, plus allocation and transfer; ``cpu`` is NumPy.
A CUDA backend on CuPy plugs in beside it with the same interface."""

from __future__ import annotations


def available_backends() -> list[str]:
    names = ["cpu"]
    try:
        from . import cuda  # noqa: F401  (absent until the GPU backend lands)
        names.append("cuda")
    except ImportError:
        pass
    return names
