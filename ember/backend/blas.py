"""The BLAS NumPy uses: which library, its version and core, and its thread count (read and set through
OpenBLAS's own functions when it is OpenBLAS). Used by ``ember info``, the benchmarks and the dependency
engine (which divides the cores between concurrent kernels)."""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
from pathlib import Path
from typing import Any

# Symbols an OpenBLAS build may export, with the suffixes of the 64-bit-integer builds NumPy wheels ship.
_OPENBLAS_PREFIXES = ("openblas_", "scipy_openblas_")
_OPENBLAS_SUFFIXES = ("", "64_")
_BLAS_LIB_HINTS = ("openblas", "mkl_rt", "libmkl", "blis", "accelerate", "libblas", "libcblas", "flexiblas")


def _openblas_symbol(lib: Any, name: str) -> Any:
    for prefix in _OPENBLAS_PREFIXES:
        for suffix in _OPENBLAS_SUFFIXES:
            fn = getattr(lib, f"{prefix}{name}{suffix}", None)
            if fn is not None:
                return fn
    return None


def _loaded_blas_libraries() -> list[str]:
    """Paths of shared libraries that look like BLAS and are mapped into this process (NumPy imported)."""
    import numpy  # make sure NumPy's BLAS is loaded

    found: list[str] = []
    maps = Path("/proc/self/maps")
    if maps.exists():
        with contextlib.suppress(OSError):
            for line in maps.read_text().splitlines():
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                name = os.path.basename(path).lower()
                if path.startswith("/") and path not in found and any(h in name for h in _BLAS_LIB_HINTS):
                    found.append(path)
    if not found:  # macOS/Windows or no /proc: look where NumPy wheels vendor their BLAS
        root = Path(numpy.__file__).parent
        for pattern in ("../numpy.libs/*", ".dylibs/*", "../numpy.libs/*.dll"):
            for path in sorted(glob.glob(str(root / pattern))):
                if any(h in os.path.basename(path).lower() for h in _BLAS_LIB_HINTS):
                    found.append(os.path.normpath(path))
    return found


def _openblas_handle() -> Any:
    for path in _loaded_blas_libraries():
        if "openblas" not in os.path.basename(path).lower():
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        if _openblas_symbol(lib, "get_num_threads") is not None:
            return lib
    return None


def blas_threads() -> int | None:
    """Threads NumPy's BLAS will use for a GEMM: asked from OpenBLAS itself when it can be, else the
    usual environment variables; None when unknown."""
    lib = _openblas_handle()
    if lib is not None:
        fn = _openblas_symbol(lib, "get_num_threads")
        fn.restype = ctypes.c_int
        with contextlib.suppress(Exception):
            return int(fn())
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").split(",")[0].strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def set_blas_threads(n: int) -> bool:
    """Set NumPy's BLAS thread count (OpenBLAS only); returns whether it could."""
    lib = _openblas_handle()
    fn = _openblas_symbol(lib, "set_num_threads") if lib is not None else None
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_int]
    fn(int(n))
    return True


def blas_info() -> dict[str, Any]:
    """``{"name", "version", "threads", "core", "library"}`` for the BLAS NumPy uses (None where unknown)."""
    import numpy as np

    info: dict[str, Any] = {"name": None, "version": None, "threads": None, "core": None, "library": None}
    config: dict = {}
    # NumPy >= 1.25 can hand the build configuration over as a dict instead of printing it.
    with contextlib.suppress(Exception), contextlib.redirect_stdout(None):
        config = np.show_config(mode="dicts") or {}
    blas = (config.get("Build Dependencies") or {}).get("blas") or {}
    info["name"] = blas.get("name")
    info["version"] = blas.get("version")
    libs = _loaded_blas_libraries()
    info["library"] = libs[0] if libs else None
    lib = _openblas_handle()
    if lib is not None:
        corename = _openblas_symbol(lib, "get_corename")
        if corename is not None:
            corename.restype = ctypes.c_char_p
            with contextlib.suppress(Exception):
                info["core"] = corename().decode()
    info["threads"] = blas_threads()
    return info
