"""``ember run``: start a script on N MPI processes with ``mpiexec``.

    ember run -n 4 train.py --epochs 3
    ember run -n 8 --hosts node1,node2 train.py
    ember run -n 6 --servers 2 ps_train.py      # the last 2 ranks are parameter servers (EMBER_PS_SERVERS=2)

The ``mpiexec`` beside this Python interpreter (MPICH's PyPI wheel in a virtualenv) is preferred over
one on the PATH, so the launcher and the MPI library mpi4py links against match. More processes than
cores is allowed (MPICH's Hydra oversubscribes without flags). Each rank's BLAS/OpenMP threads are
capped at ``max(1, cores // N)`` unless ``OMP_NUM_THREADS``/``OPENBLAS_NUM_THREADS`` are already set,
so N ranks do not fight over the cores. Ranks run as ``python -m mpi4py script.py``: a rank that raises
an uncaught exception or calls ``sys.exit`` with a non-zero status prints its traceback (prefixed with
its rank once ``ember.distributed.init()`` ran) and aborts the whole job, so the command ends promptly
with a non-zero status.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import EmberError

__all__ = ["LaunchError", "build_command", "find_mpiexec", "launch_env", "run"]

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class LaunchError(EmberError, RuntimeError):
    """``ember run`` cannot start the job (no mpiexec, bad arguments)."""


def find_mpiexec() -> str:
    """The ``mpiexec`` beside ``sys.executable`` if there is one, else the one on the PATH."""
    here = Path(sys.executable).parent / ("mpiexec.exe" if os.name == "nt" else "mpiexec")
    if here.exists():
        return str(here)
    found = shutil.which("mpiexec") or shutil.which("mpirun")
    if found is None:
        raise LaunchError("no mpiexec found beside this Python or on the PATH; install MPI for Ember with "
                          "pip install 'ember[distributed]'")
    return found


def build_command(nprocs: int, script: str, args: Sequence[str] = (), hosts: str | None = None,
                  mpiexec: str | None = None) -> list[str]:
    """The ``mpiexec`` command line that runs ``script args`` with this Python on ``nprocs`` ranks."""
    if isinstance(nprocs, bool) or not isinstance(nprocs, int) or nprocs < 1:
        raise LaunchError(f"ember run: -n must be a positive integer, got {nprocs!r}")
    cmd = [mpiexec or find_mpiexec(), "-n", str(nprocs)]
    if hosts:
        names = [h.strip() for h in hosts.split(",") if h.strip()]
        if not names:
            raise LaunchError(f"ember run: --hosts must be a comma-separated list of host names, got {hosts!r}")
        cmd += ["-hosts", ",".join(names)]
    # `python -m mpi4py` aborts the job when a rank exits with an error of any kind: an exception raised
    # before ember.distributed.init() or sys.exit(non-zero) would otherwise leave the other ranks waiting.
    return cmd + [sys.executable, "-m", "mpi4py", str(script), *args]


def launch_env(nprocs: int, servers: int | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every rank: ``base`` (default ``os.environ``) plus thread caps, the parameter
    server count (``EMBER_PS_SERVERS``) and, in a source checkout, ember on ``PYTHONPATH``."""
    env = dict(os.environ if base is None else base)
    if servers is not None:
        if isinstance(servers, bool) or not isinstance(servers, int) or not 0 <= servers < nprocs:
            raise LaunchError(f"ember run: --servers must be an int in [0, {nprocs - 1}] (at least one worker "
                              f"among -n {nprocs} ranks), got {servers!r}")
        env["EMBER_PS_SERVERS"] = str(servers)
    threads = str(max(1, (os.cpu_count() or 1) // nprocs))
    if not any(v in env for v in _THREAD_VARS[:2]):
        for var in _THREAD_VARS:
            env.setdefault(var, threads)
    root = str(Path(__file__).resolve().parents[2])  # the folder holding the ember package
    if "site-packages" not in root and "dist-packages" not in root:
        # A source checkout: make the ranks import this ember even when the script lives elsewhere.
        parts = env.get("PYTHONPATH", "").split(os.pathsep) if env.get("PYTHONPATH") else []
        if root not in parts:
            env["PYTHONPATH"] = os.pathsep.join([root, *parts])
    return env


def run(nprocs: int, script: str, args: Sequence[str] = (), hosts: str | None = None, servers: int | None = None,
        env: Mapping[str, str] | None = None) -> int:
    """Run ``script args`` on ``nprocs`` MPI ranks and wait; returns mpiexec's exit status."""
    if not Path(script).exists():
        raise LaunchError(f"ember run: script {script!r} not found")
    cmd = build_command(nprocs, script, args, hosts)
    full_env = launch_env(nprocs, servers, env)
    try:
        return subprocess.call(cmd, env=full_env)
    except KeyboardInterrupt:  # mpiexec forwards the signal to the ranks and exits on its own
        return 130
