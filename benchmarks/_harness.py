"""What the benchmark scripts share: loading a library in a worker process, running that worker as a
child, and the ratio/format helpers of their tables.

Each library is timed in its own child process so that one's threads and allocator never disturb
the other's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def load_library(lib_name: str, threads: int | None) -> tuple[Any, dict[str, Any]]:
    """Import ``"ember"`` or ``"torch"`` with its thread count set; returns the module and what it reports
    (version, threads, and for Ember the BLAS NumPy uses)."""
    if lib_name == "torch":
        import torch
        torch.set_num_threads(threads or os.cpu_count() or 1)
        return torch, {"version": str(torch.__version__), "threads": torch.get_num_threads()}
    import ember
    from ember.cli import blas_info, set_blas_threads
    if threads is not None and not set_blas_threads(threads):
        print(f"warning: could not set NumPy's BLAS threads to {threads} (not OpenBLAS?)", file=sys.stderr)
    blas = blas_info()
    return ember, {"version": ember.__version__, "threads": blas["threads"], "blas": blas}


def run_worker(script: str, lib_name: str, args: list[str], quick: bool,
               threads: int | None) -> tuple[dict | None, str | None]:
    """Run ``script --worker LIB ARGS`` in a child process and parse the JSON it prints last; returns
    (result, None) or (None, why it failed). The child's warnings and errors are passed on, tagged."""
    cmd = [sys.executable, str(Path(script).resolve()), "--worker", lib_name, *args]
    if quick:
        cmd.append("--quick")
    if threads is not None:
        cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.stderr.strip():
        sys.stderr.write("".join(f"[{lib_name}] {line}\n" for line in proc.stderr.strip().splitlines()
                                 if proc.returncode != 0 or "Warning" not in line))
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        return None, f"the {lib_name} worker failed: {lines[-1] if lines else f'exit status {proc.returncode}'}"
    return json.loads(proc.stdout.strip().splitlines()[-1]), None


def ratio_and_status(ember_t: float | None, torch_t: float | None, target: float) -> tuple[float | None, str]:
    """ember / torch and whether it meets ``target``; ``(None, "n/a")`` when either time is missing."""
    if not ember_t or torch_t is None or not torch_t > 0:
        return None, "n/a"
    ratio = ember_t / torch_t
    return ratio, "PASS" if ratio <= target else "MISS"


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def write_json(result: Any, path: str) -> None:
    """Write a benchmark's results as indented JSON to ``path`` (parent folders made) and say where."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results written to {out}")
