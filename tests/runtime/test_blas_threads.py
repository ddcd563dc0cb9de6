"""OpenBLAS's idle-spin setting: ember shortens it on import, also when NumPy was imported first."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ember.backend import blas

PROBE = r"""
import json, sys, time
import numpy as np
a = np.ones((512, 512), dtype=np.float32)

def idle_cpu():
    # CPU time the process burns in the 50 ms after a GEMM: a spinning BLAS thread burns ~all of it
    a @ a
    t0 = time.process_time()
    time.sleep(0.05)
    return time.process_time() - t0

before = idle_cpu()
import ember
from ember.backend.blas import blas_info
print(json.dumps({"before": before, "after": min(idle_cpu(), idle_cpu()), "info": blas_info()}))
"""


def probe(env_value: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if env_value is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def openblas_with_threads() -> bool:
    info = blas.blas_info()
    return info["name"] is not None and "openblas" in info["name"].lower() and (info["threads"] or 1) > 1


@pytest.mark.skipif(not openblas_with_threads(), reason="needs NumPy on a multi-threaded OpenBLAS")
def test_numpy_imported_first_still_gets_the_short_spin() -> None:
    r = probe(None)
    assert r["info"]["thread_timeout"] == blas.THREAD_TIMEOUT
    assert r["before"] > 0.02        # OpenBLAS's default: the worker spins through the whole sleep
    assert r["after"] < 0.02         # now it sleeps soon after the GEMM


@pytest.mark.skipif(not openblas_with_threads(), reason="needs NumPy on a multi-threaded OpenBLAS")
def test_a_users_setting_is_kept() -> None:
    r = probe("20")
    assert r["info"]["thread_timeout"] == 20
