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


THREAD_TIMEOUT = 16  # log2 of the cycles an idle OpenBLAS thread spins before it sleeps (OpenBLAS: 28)


def tune_thread_timeout() -> str | None:
    """Shorten OpenBLAS's idle spin unless ``OPENBLAS_THREAD_TIMEOUT`` is set; returns the value in force.

    OpenBLAS's worker threads spin for 2^28 cycles (~0.1 s) after each GEMM; with GEMMs a few ms apart they
    never sleep and take a core from the generated kernels and the NumPy code between GEMMs (measured on 2
    cores: MLP step 16.5 -> 14.1 ms, CNN 42.0 -> 35.9 ms with 2^16). 2^16 cycles still covers back-to-back
    GEMM calls (a batched matmul), which 2^4 slowed 2x. OpenBLAS reads the variable when it loads; when
    NumPy has loaded it already, it is made to read its environment again and to restart its idle threads
    (``openblas_read_env``, ``blas_thread_shutdown_``; the next GEMM starts them). Called when ember is
    imported, so it must not race a GEMM running in another thread."""
    if "OPENBLAS_THREAD_TIMEOUT" in os.environ:
        return os.environ["OPENBLAS_THREAD_TIMEOUT"]
    import sys
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = str(THREAD_TIMEOUT)
    if "numpy" not in sys.modules:
        return os.environ["OPENBLAS_THREAD_TIMEOUT"]
    lib = _openblas_handle()
    read_env = getattr(lib, "openblas_read_env", None) if lib is not None else None
    restart = getattr(lib, "blas_thread_shutdown_", None) if lib is not None else None
    if read_env is None or restart is None:
        return None
    read_env()
    restart()
    return os.environ["OPENBLAS_THREAD_TIMEOUT"]


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
    """``{"name", "version", "threads", "core", "library", "thread_timeout"}`` for the BLAS NumPy uses (None
    where unknown); ``thread_timeout`` is OpenBLAS's idle spin (log2 cycles, see ``tune_thread_timeout``)."""
    import numpy as np

    info: dict[str, Any] = {"name": None, "version": None, "threads": None, "core": None, "library": None,
                            "thread_timeout": None}
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
        timeout = getattr(lib, "openblas_thread_timeout", None)
        if timeout is not None:
            timeout.restype = ctypes.c_int
            info["thread_timeout"] = int(timeout()) or 28
    info["threads"] = blas_threads()
    return info
