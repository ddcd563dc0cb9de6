"""Compile a C translation unit into a shared library, load it with ctypes, and cache it.

* The compiler is found at run time: ``$CC`` (may carry arguments, e.g. ``"ccache gcc"``), else the
  first of ``cc``, ``gcc``, ``clang`` on ``PATH``. ``available()`` says whether there is one; when there
  is none it warns once, and callers fall back to NumPy kernels.
* Flags: ``-O3 -march=native -fPIC -shared -fopenmp`` plus ``-std=gnu11 -fno-math-errno -fwrapv
  -fopenmp-simd`` (``sqrtf`` vectorizes without errno; signed overflow wraps as in NumPy; ``omp simd``
  reductions vectorize even without OpenMP). When ``-fopenmp`` fails the source is compiled again
  without it (kernels then run on one thread), then without ``-march=native`` (compilers that reject
  it); what failed is remembered for the compiler and a warning says so once.
* Caches: in memory (source key -> loaded library) and on disk under ``cache_dir()``
  (``$EMBER_CACHE_DIR``, else ``$XDG_CACHE_HOME/ember/kernels``, else ``~/.cache/ember/kernels``). The key
  hashes the source, the compiler's path and version, the flags and the host CPU (``-march=native``
  code must not run on another machine sharing the cache). Each entry is ``<key>.c`` (the source),
  ``<key>.so`` and ``<key>.json`` (the library's sha256, the flags, the compile time). Files are
  written under temporary names and renamed into place, so readers never see a partial file; a
  library whose checksum does not match is rebuilt.
* ``EMBER_DEBUG=1`` prints one line per library (cache hit or compile time); ``EMBER_DEBUG=2`` also
  prints each kernel's source (see ``ember.codegen.build``).

``ctypes.CDLL`` functions release the GIL while they run, so kernels may run concurrently from threads.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .kernel import CodegenError

BASE_FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-std=gnu11", "-fno-math-errno", "-fno-trapping-math",
              "-fwrapv", "-ffp-contract=off", "-fopenmp-simd")
OPENMP_FLAGS = ("-fopenmp",)
FORMAT_VERSION = 1  # bump when the cache layout or calling convention changes

STATS = {"compiled": 0, "disk_hits": 0, "memory_hits": 0, "rebuilt_corrupt": 0}
"""Counters of what ``load`` did in this process (tests read them)."""

_LOCK = threading.RLock()
_MEMORY: dict[str, Library] = {}
_COMPILER: list[Any] = []      # [Compiler | None] once looked up
_FAILED: set[tuple[str, str]] = set()  # (compiler path, flag set name) that failed where a lesser one worked
_WARNED: set[str] = set()


# OpenMP's worker threads spin after each parallel region by default; on a machine whose cores the BLAS
# threads also use, the spinning halves the speed of the GEMM that follows a generated kernel (measured:
# GPT training step 700 ms with spinning, 287 ms without). Must be set before libgomp loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def debug_level() -> int:
    """``EMBER_DEBUG`` as an int (0 when unset; any non-numeric value counts as 1)."""
    v = os.environ.get("EMBER_DEBUG", "")
    if not v:
        return 0
    try:
        return int(v)
    except ValueError:
        return 1


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


class Compiler:
    """A C compiler command, its resolved path and its version line."""

    __slots__ = ("command", "path", "version")

    def __init__(self, command: list[str], path: str, version: str) -> None:
        self.command, self.path, self.version = command, path, version

    def __repr__(self) -> str:
        return f"Compiler({self.path!r}, {self.version!r})"


def _probe(command: list[str]) -> Compiler | None:
    path = shutil.which(command[0])
    if path is None:
        return None
    try:
        proc = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    first = (proc.stdout or proc.stderr).strip().splitlines()
    return Compiler([path, *command[1:]], os.path.realpath(path), first[0] if first else "unknown")


def find_compiler(refresh: bool = False) -> Compiler | None:
    """The C compiler to use (``$CC``, then cc/gcc/clang), or None; looked up once per process."""
    with _LOCK:
        if _COMPILER and not refresh:
            return _COMPILER[0]
        found = None
        env = os.environ.get("CC", "").strip()
        if env:
            found = _probe(shlex.split(env))
            if found is None:
                _warn_once("bad-CC", f"ember.codegen: CC={env!r} is not a working compiler; trying cc, gcc, clang")
        for name in ("cc", "gcc", "clang"):
            if found is not None:
                break
            found = _probe([name])
        _COMPILER[:] = [found]
        return found


def available() -> bool:
    """Whether a C compiler was found. When not, warns once that generated kernels are disabled."""
    if find_compiler() is not None:
        return True
    _warn_once("no-compiler", "ember.codegen: no C compiler found (set CC, or install gcc or clang); generated C "
                              "kernels are disabled and operations fall back to NumPy")
    return False


def cache_dir() -> Path:
    """Where compiled kernels are kept (created on demand)."""
    env = os.environ.get("EMBER_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "ember" / "kernels"


def _host_id() -> str:
    """The machine and the CPU's feature flags (what ``-march=native`` depends on)."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features", "model name")):
                    flags += line
                    if line.startswith(("flags", "Features")):
                        break
    except OSError:
        flags = platform.processor()
    return f"{platform.system()}-{platform.machine()}-{hashlib.sha256(flags.encode()).hexdigest()[:16]}"


_HOST: list[str] = []


def cache_key(source: str, compiler: Compiler, flags: tuple[str, ...]) -> str:
    """The key of a library: source, compiler path + version, flags, host CPU, cache format."""
    if not _HOST:
        _HOST.append(_host_id())
    h = hashlib.sha256()
    for part in (str(FORMAT_VERSION), compiler.path, compiler.version, " ".join(compiler.command[1:]),
                 " ".join(flags), _HOST[0], source):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


class Library:
    """A loaded shared library: ``cdll`` (ctypes), its cache ``key`` and ``path``, whether it uses OpenMP,
    and how it was obtained (``"compiled"``, ``"disk"`` or ``"memory"``)."""

    def __init__(self, cdll: ctypes.CDLL, key: str, path: Path, openmp: bool, origin: str,
                 seconds: float) -> None:
        self.cdll, self.key, self.path = cdll, key, path
        self.openmp, self.origin, self.seconds = openmp, origin, seconds

    def function(self, symbol: str, n_pointers: int, n_ints: int = 2) -> Any:
        """The ctypes function ``symbol(void *..., int64_t ...)`` (``restype`` void)."""
        try:
            f = getattr(self.cdll, symbol)
        except AttributeError:
            raise CodegenError(f"codegen: symbol {symbol!r} is not in {self.path}") from None
        f.argtypes = [ctypes.c_void_p] * n_pointers + [ctypes.c_int64] * n_ints
        f.restype = None
        return f

    def __repr__(self) -> str:
        return f"Library({self.path.name}, {self.origin}, openmp={self.openmp})"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _usable_dir() -> Path:
    d = cache_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / f".probe.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return d
    except OSError as e:
        fallback = Path(tempfile.gettempdir()) / f"ember-kernels-{os.getuid() if hasattr(os, 'getuid') else 0}"
        _warn_once("cache-dir", f"ember.codegen: kernel cache {d} is not writable ({e}); using {fallback}")
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback


def _run_compiler(compiler: Compiler, flags: tuple[str, ...], src: Path, out: Path) -> subprocess.CompletedProcess:
    cmd = [*compiler.command, *flags, str(src), "-o", str(out), "-lm"]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise CodegenError(f"codegen: compiling {src} timed out after 600 s: {shlex.join(cmd)}") from None


def _variants(compiler: Compiler) -> list[tuple[str, tuple[str, ...]]]:
    """Flag sets to try, best first: with OpenMP; without it; without ``-march=native`` (compilers that reject it)."""
    portable = tuple(f for f in BASE_FLAGS if f != "-march=native")
    out = [("openmp", BASE_FLAGS + OPENMP_FLAGS), ("no-openmp", BASE_FLAGS), ("portable", portable)]
    return [v for v in out if (compiler.path, v[0]) not in _FAILED]


def _compile(compiler: Compiler, source_path: Path, so_path: Path) -> tuple[tuple[str, ...], float]:
    """Compile into ``so_path`` (atomically); returns (the flags used, seconds). When the best flag set fails
    and a lesser one works, the failing sets are remembered for this compiler and a warning says so once."""
    tmp = so_path.with_name(f".{so_path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    t0 = time.perf_counter()
    first_error = None
    try:
        tried = []
        for name, flags in _variants(compiler):
            proc = _run_compiler(compiler, flags, source_path, tmp)
            if proc.returncode == 0:
                for failed in tried:
                    _FAILED.add((compiler.path, failed))
                if tried:
                    what = "-fopenmp (kernels run on one thread)" if name == "no-openmp" else \
                        "-fopenmp or -march=native (kernels run on one thread, for a generic CPU)"
                    _warn_once(f"fallback-{name}", f"ember.codegen: {compiler.path} cannot compile with {what}")
                os.replace(tmp, so_path)
                return flags, time.perf_counter() - t0
            tried.append(name)
            if first_error is None:
                first_error = proc
    finally:
        if tmp.exists():
            tmp.unlink()
    msg = (first_error.stderr or first_error.stdout).strip() if first_error else "no flag set left to try"
    code = first_error.returncode if first_error else "?"
    raise CodegenError(f"codegen: {compiler.path} failed (exit status {code}) on {source_path}:\n{msg[-4000:]}")


def load(source: str, label: str = "kernels") -> Library:
    """Compile ``source`` (one C translation unit) into a shared library and load it, through the caches.
    Raises CodegenError when no compiler is found or compilation fails (the message has its errors)."""
    compiler = find_compiler()
    if compiler is None:
        available()
        raise CodegenError("codegen: no C compiler found (set CC, or install gcc or clang)")
    flags = BASE_FLAGS + OPENMP_FLAGS
    key = cache_key(source, compiler, flags)
    with _LOCK:
        lib = _MEMORY.get(key)
        if lib is not None:
            STATS["memory_hits"] += 1
            return lib
        t0 = time.perf_counter()
        d = _usable_dir()
        src, so, meta = d / f"{key}.c", d / f"{key}.so", d / f"{key}.json"
        origin, openmp, seconds = "disk", True, 0.0
        info = None
        if so.exists() and meta.exists():
            try:
                info = json.loads(meta.read_text())
                if info.get("sha256") != _sha256(so):
                    info = None
                    STATS["rebuilt_corrupt"] += 1
            except (OSError, ValueError):
                info = None
                STATS["rebuilt_corrupt"] += 1
        if info is not None:
            openmp = bool(info.get("openmp", True))
            STATS["disk_hits"] += 1
        else:
            origin = "compiled"
            if not src.exists() or src.read_text() != source:
                _write_atomic(src, source.encode())
            used, seconds = _compile(compiler, src, so)
            openmp = "-fopenmp" in used
            info = {"sha256": _sha256(so), "openmp": openmp, "compiler": compiler.path, "version": compiler.version,
                    "flags": list(used), "seconds": round(seconds, 4), "label": label, "created": time.time()}
            _write_atomic(meta, json.dumps(info, indent=1).encode())
            STATS["compiled"] += 1
        try:
            cdll = ctypes.CDLL(str(so))
        except OSError as e:
            if origin == "disk":  # passed the checksum but does not load: rebuild once
                so.unlink(missing_ok=True)
                meta.unlink(missing_ok=True)
                STATS["rebuilt_corrupt"] += 1
                return load(source, label)
            raise CodegenError(f"codegen: cannot load {so}: {e}") from None
        lib = Library(cdll, key, so, openmp, origin, seconds)
        _MEMORY[key] = lib
        if debug_level() >= 1:
            how = f"compiled in {seconds * 1e3:.0f} ms" if origin == "compiled" else "disk cache hit"
            print(f"[ember.codegen] {label}: {how} ({(time.perf_counter() - t0) * 1e3:.1f} ms total, "
                  f"openmp={openmp}) -> {so}", file=sys.stderr)
        return lib


def clear_memory_cache() -> None:
    """Forget the libraries loaded in this process (the disk cache stays; for tests)."""
    with _LOCK:
        _MEMORY.clear()


# ----------------------------------------------------------------------------- CUDA (nvcc, when present)

def nvcc_path() -> str | None:
    """``nvcc`` on PATH, or None."""
    return shutil.which("nvcc")


def compile_ptx(source: str, arch: str = "sm_80") -> str:
    """Compile CUDA C ``source`` to PTX text with ``nvcc --ptx`` (raises CodegenError without nvcc or on errors).
    ``--fmad=false`` keeps pointwise arithmetic rounding op by op, as in the C dialect. The runtime path
    (NVRTC + module load through CuPy) belongs to the CUDA backend."""
    nvcc = nvcc_path()
    if nvcc is None:
        raise CodegenError("codegen: nvcc is not on PATH; cannot compile CUDA C")
    with tempfile.TemporaryDirectory(prefix="ember-cuda-") as tmp:
        src, out = Path(tmp) / "kernels.cu", Path(tmp) / "kernels.ptx"
        src.write_text(source)
        cmd = [nvcc, "--ptx", f"-arch={arch}", "-O3", "--fmad=false", str(src), "-o", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise CodegenError(f"codegen: nvcc failed (exit status {proc.returncode}):\n"
                               f"{(proc.stderr or proc.stdout).strip()[-4000:]}")
        return out.read_text()


# ----------------------------------------------------------------------------- Python-side kernel callables

class KernelFunction:
    """A compiled kernel: ``fn(*outputs, *inputs)`` runs it on NumPy arrays.

    The arrays must be what the kernel was built for (``out_specs`` / ``in_specs``: dtype, shape and, for
    inputs, the declared strides); that is validated when the kernel is built, not per call. ``check``
    validates explicitly, and every call is checked when ``EMBER_DEBUG`` is set at build time. ``bind``
    fixes the arrays once (planned buffers) and returns a zero-argument callable with the least overhead;
    ``run_tiles(t0, t1, ...)`` runs part of the work, for a scheduler that splits kernels itself.
    """

    def __init__(self, kernel: Any, library: Library, symbol: str, n_tiles: int) -> None:
        self.kernel, self.library, self.symbol, self.n_tiles = kernel, library, symbol, n_tiles
        self.n_outputs, self.n_inputs = len(kernel.outputs), len(kernel.inputs)
        self.out_specs = [(o.dtype.np, o.shape) for o in kernel.outputs]
        self.in_specs = [(i.dtype.np, i.shape, tuple(s * i.dtype.itemsize for s in i.strides)) for i in kernel.inputs]
        self._f = library.function(symbol, self.n_outputs + self.n_inputs)
        self._debug = debug_level() >= 1
        self.__name__ = kernel.name

    def check(self, *arrays: Any) -> None:
        """Raise a clear error unless ``arrays`` (outputs, then inputs) fit this kernel."""
        import numpy as np

        from ..errors import DTypeError, ShapeError
        k = self.kernel
        if len(arrays) != self.n_outputs + self.n_inputs:
            raise TypeError(f"kernel {k.name}: expected {self.n_outputs} output(s) then {self.n_inputs} input(s) "
                            f"({', '.join(o.name for o in k.outputs)}; {', '.join(i.name for i in k.inputs)}), "
                            f"got {len(arrays)} arrays")
        for a, (dt, shape), o in zip(arrays, self.out_specs, k.outputs):
            if not isinstance(a, np.ndarray):
                raise TypeError(f"kernel {k.name}: output {o.name!r} must be a NumPy array, got {type(a).__name__}")
            if a.dtype != dt:
                raise DTypeError(f"kernel {k.name}: output {o.name!r} must be {dt}, got {a.dtype}")
            if a.shape != shape or not a.flags.c_contiguous or not a.flags.writeable:
                raise ShapeError(f"kernel {k.name}: output {o.name!r} must be a writeable C-contiguous array of shape "
                                 f"{shape}, got shape {a.shape} (contiguous={a.flags.c_contiguous}, "
                                 f"writeable={a.flags.writeable})")
        for a, (dt, shape, strides), i in zip(arrays[self.n_outputs:], self.in_specs, k.inputs):
            if not isinstance(a, np.ndarray):
                raise TypeError(f"kernel {k.name}: input {i.name!r} must be a NumPy array, got {type(a).__name__}")
            if a.dtype != dt:
                raise DTypeError(f"kernel {k.name}: input {i.name!r} must be {dt}, got {a.dtype}")
            if a.shape != shape or any(n > 1 and s != t for n, s, t in zip(shape, a.strides, strides)):
                raise ShapeError(f"kernel {k.name}: input {i.name!r} must have shape {shape} and byte strides "
                                 f"{strides}, got shape {a.shape} and strides {a.strides}")
        if k.noalias:
            for a, o in zip(arrays[:self.n_outputs], k.outputs):
                for b, i in zip(arrays[self.n_outputs:], k.inputs):
                    if np.may_share_memory(a, b):
                        raise ValueError(f"kernel {k.name}: output {o.name!r} overlaps input {i.name!r}; build the "
                                         "kernel with noalias=False to allow it")

    def __call__(self, *arrays: Any) -> None:
        if self._debug:
            self.check(*arrays)
        self._f(*[a.ctypes.data for a in arrays], 0, self.n_tiles)

    def run_tiles(self, t0: int, t1: int, *arrays: Any) -> None:
        """Run tiles ``[t0, t1)`` of ``range(n_tiles)`` only."""
        if not 0 <= t0 <= t1 <= self.n_tiles:
            raise ValueError(f"kernel {self.kernel.name}: tile range [{t0}, {t1}) is outside [0, {self.n_tiles})")
        if self._debug:
            self.check(*arrays)
        self._f(*[a.ctypes.data for a in arrays], t0, t1)

    def bind(self, *arrays: Any) -> Callable[[], None]:
        """Check ``arrays`` once and return ``run()`` calling the kernel on them (they are kept alive)."""
        self.check(*arrays)
        f, n, ptrs, keep = self._f, self.n_tiles, [a.ctypes.data for a in arrays], arrays

        def run() -> None:
            f(*ptrs, 0, n)
        run.arrays = keep  # type: ignore[attr-defined]
        return run

    def run(self, *inputs: Any) -> Any:
        """Allocate the outputs, run on ``inputs`` (checked) and return the output array(s)."""
        import numpy as np
        outs = [np.empty(shape, dt) for dt, shape in self.out_specs]
        self.check(*outs, *inputs)
        self._f(*[a.ctypes.data for a in (*outs, *inputs)], 0, self.n_tiles)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def __repr__(self) -> str:
        return f"KernelFunction({self.kernel.name}, symbol={self.symbol}, tiles={self.n_tiles})"
