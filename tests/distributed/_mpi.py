"""Run a script on N MPI ranks (mpiexec from this Python's environment) for the distributed tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def mpiexec() -> str:
    """The ``mpiexec`` beside this interpreter (MPICH's wheel), or on the PATH; skip the test without one."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip("mpi4py is not installed (pip install -e '.[distributed]')")
    here = Path(sys.executable).parent / "mpiexec"
    found = str(here) if here.exists() else shutil.which("mpiexec")
    if found is None:
        pytest.skip("no mpiexec found (pip install mpich)")
    return found


def run_ranks(n: int, script: str, tmp_path: Path, *args: str, timeout: float = 60,
              env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Write ``script`` (dedented) to ``tmp_path`` and run it on ``n`` ranks; fail with its output unless it
    exits 0 (when ``check``)."""
    path = tmp_path / "rank_script.py"
    path.write_text(textwrap.dedent(script))
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                **(env or {})}
    cmd = [mpiexec(), "-n", str(n), sys.executable, "-m", "mpi4py", str(path), *args]  # a failing rank aborts all
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=tmp_path)
    if check and proc.returncode != 0:
        pytest.fail(f"{n} ranks exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc
