"""Eager-mode overhead: Ember vs PyTorch eager on small tensors and on a GEMM-bound MLP step.

Per op (add, mul, matmul, sum on 16x16 / 64x64 float32 tensors), with and without gradient
recording (inputs with ``requires_grad=True`` vs plain), the median time of one call; and the
forward+backward of a 784-1024-1024-10 ReLU MLP with a log-softmax NLL loss at batch 256.
PyTorch runs the same shapes with its intra-op threads set to the number of threads NumPy's BLAS
uses. A third column times the bare NumPy kernels (for the MLP, a hand-written forward+backward):
the floor for a framework on NumPy. The issue's targets are printed beside the ratios; they are
measured and reported, never asserted.

Each library is timed in its own child process (Ember and the NumPy floor in one, PyTorch in
another): OpenBLAS's and PyTorch's OpenMP thread pools spin-wait after each parallel call, and on
a machine with few cores two pools in one process slow each other down by 2-8x on the MLP.

    python benchmarks/eager_overhead.py                 # full run (about a minute and a half)
    python benchmarks/eager_overhead.py --quick         # a few seconds, for smoke tests
    python benchmarks/eager_overhead.py --json out.json
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a source checkout without installing (ember is imported in the worker)
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _harness, also when loaded by file path
from _harness import fmt, load_library, ratio_and_status, run_worker, write_json  # noqa: E402

OP_TARGET = 2.0    # per-op dispatch overhead: at most 2x PyTorch eager
MLP_TARGET = 1.25  # MLP forward+backward: within 1.25x of PyTorch eager

OPS = [  # (name, shape): every op runs with gradient recording off and on
    ("add", (16, 16)),
    ("add", (64, 64)),
    ("mul", (16, 16)),
    ("mul", (64, 64)),
    ("matmul", (64, 64)),
    ("sum", (64, 64)),
]
MLP_SIZES = (784, 1024, 1024, 10)
MLP_BATCH = 256

QUICK = {"ops": {"repeats": 3, "min_time": 0.002, "warmup": 5}, "mlp": {"repeats": 3, "min_time": 0.0, "warmup": 1}}
FULL = {"ops": {"repeats": 11, "min_time": 0.1, "warmup": 200}, "mlp": {"repeats": 25, "min_time": 0.0, "warmup": 5}}


# ---------------------------------------------------------------------------------------------- timing

def measure(fns: dict[str, Callable[[], Any]], repeats: int, min_time: float, warmup: int) -> dict[str, dict]:
    """Median seconds per call of each function in ``fns``, timeit-style.

    Each function gets ``warmup`` calls; then its number of calls per repeat is grown (1, 2, 5, 10, 20,
    ...) until one repeat takes at least ``min_time``. The ``repeats`` repeats then take turns between
    the functions so that a slow phase of the machine hits them alike. The garbage collector is off
    while timing, as in ``timeit``.
    """
    numbers = {}
    for key, fn in fns.items():
        for _ in range(warmup):
            fn()
        number = 1
        while _time(fn, number) < min_time and number < 10 ** 7:
            number = _next_number(number)
        numbers[key] = number
    per_call: dict[str, list[float]] = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            per_call[key].append(_time(fn, numbers[key]) / numbers[key])
    return {key: {"median": statistics.median(v), "min": min(v), "number": numbers[key], "repeats": repeats}
            for key, v in per_call.items()}


def _time(fn: Callable[[], Any], number: int) -> float:
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        return time.perf_counter() - start
    finally:
        if enabled:
            gc.enable()


def _next_number(n: int) -> int:
    s = str(n)
    return {"1": 2, "2": 5, "5": 10}[s[0]] * 10 ** (len(s) - 1)


# ---------------------------------------------------------------------------------------------- workloads

def _op_fn(lib: Any, name: str, a: Any, b: Any) -> Callable[[], Any]:
    """The op as a closure; ``lib`` is ember, torch or numpy (the bare kernel)."""
    if name == "add":
        return lambda: a + b
    if name == "mul":
        return lambda: a * b
    if name == "matmul":
        return lambda: lib.matmul(a, b)
    if name == "sum":
        return lambda: a.sum()
    raise ValueError(name)


def _op_inputs(lib: Any, shape: tuple[int, ...], grad: bool, seed: int) -> tuple[Any, Any]:
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(shape).astype(np.float32) for _ in range(2)]
    if lib is np:
        return tuple(arrays)
    return tuple(lib.tensor(x, requires_grad=grad) for x in arrays)


def _mlp_data(seed: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((MLP_BATCH, MLP_SIZES[0])).astype(np.float32)
    y = rng.integers(0, MLP_SIZES[-1], size=(MLP_BATCH, 1)).astype(np.int64)
    params = []
    for fan_in, fan_out in itertools.pairwise(MLP_SIZES):
        params.append((rng.standard_normal((fan_in, fan_out)) * math.sqrt(2.0 / fan_in)).astype(np.float32))
        params.append(np.zeros(fan_out, dtype=np.float32))
    return x, y, params


def _mlp_step(lib: Any, seed: int = 0) -> Callable[[], float]:
    """One forward+backward of the MLP in ``lib`` (ember or torch); returns the loss."""
    x_np, y_np, params_np = _mlp_data(seed)
    x, y = lib.tensor(x_np), lib.tensor(y_np)
    params = [lib.tensor(p, requires_grad=True) for p in params_np]

    def step() -> Any:
        h = x
        for i in range(0, len(params), 2):
            h = lib.matmul(h, params[i]) + params[i + 1]
            if i + 2 < len(params):
                h = h.relu()
        loss = -lib.log_softmax(h, dim=1).gather(1, y).mean()
        loss.backward()
        for p in params:
            p.grad = None
        return loss

    return step


def _mlp_numpy_step(seed: int = 0) -> Callable[[], float]:
    """The same step written by hand in NumPy: the same BLAS calls with no dispatch, tape or extra
    temporaries, i.e. the floor for an eager framework on NumPy."""
    x, y, params = _mlp_data(seed)
    y = y[:, 0]
    ws, bs = params[0::2], params[1::2]
    rows = np.arange(MLP_BATCH)

    def step() -> float:
        hs, zs = [x], []
        for i, (w, b) in enumerate(zip(ws, bs)):
            zs.append(hs[-1] @ w + b)
            if i + 1 < len(ws):
                hs.append(np.maximum(zs[-1], 0))
        z = zs[-1]
        shifted = z - z.max(axis=1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        loss = -logp[rows, y].mean()
        g = np.exp(logp)                      # d loss / d logits = (softmax - onehot) / batch
        g[rows, y] -= 1
        g /= MLP_BATCH
        grads = []
        for i in range(len(ws) - 1, -1, -1):
            grads.append((hs[i].T @ g, g.sum(axis=0)))
            if i > 0:
                g = (g @ ws[i].T) * (zs[i - 1] > 0)
        return float(loss)

    return step


# ---------------------------------------------------------------------------------------------- workers

def _worker(lib_name: str, quick: bool, threads: int | None) -> dict[str, Any]:
    """Time one library ("ember": Ember plus the bare-NumPy floor, or "torch") in this process."""
    cfg = QUICK if quick else FULL
    lib, info = load_library(lib_name, threads)
    libs: dict[str, Any] = {"torch": lib} if lib_name == "torch" else {"ember": lib, "numpy": np}

    ops = []
    for k, (name, shape) in enumerate(OPS):
        for grad in (False, True):
            fns = {key: _op_fn(lib, name, *_op_inputs(lib, shape, grad, seed=k)) for key, lib in libs.items()
                   if not (grad and lib is np)}  # the bare kernel has no gradient mode: timed once
            m = measure(fns, **cfg["ops"])
            ops.append({"op": name, "shape": list(shape), "grad": grad,
                        **{f"{key}_us": v["median"] * 1e6 for key, v in m.items()}})

    steps = {"ember": _mlp_step(libs["ember"]), "numpy": _mlp_numpy_step()} if lib_name == "ember" \
        else {"torch": _mlp_step(libs["torch"])}
    losses = {}
    for key, step in steps.items():  # one untimed call each: its loss shows the libraries agree
        loss = step()
        losses[key] = float(loss.detach() if hasattr(loss, "detach") else loss)
    m = measure(steps, **cfg["mlp"])
    mlp = {f"{key}_ms": v["median"] * 1e3 for key, v in m.items()}
    mlp.update({f"{key}_loss": v for key, v in losses.items()})
    return {"info": info, "ops": ops, "mlp": mlp}


def _run_worker(lib_name: str, quick: bool, threads: int | None) -> tuple[dict | None, str | None]:
    """Run ``_worker`` in a child process; returns (result, None) or (None, why it failed)."""
    return run_worker(__file__, lib_name, [], quick, threads)


# ---------------------------------------------------------------------------------------------- run

def run(quick: bool = False, use_torch: bool = True, threads: int | None = None) -> dict[str, Any]:
    """Time Ember (and NumPy) and, when it is installed, PyTorch; merge the two into one result."""
    em, err = _run_worker("ember", quick, threads)
    if em is None:
        raise RuntimeError(err)
    numpy_threads = em["info"]["threads"]
    th = None
    torch_note = "disabled (--no-torch)" if not use_torch else None
    if use_torch and importlib.util.find_spec("torch") is None:
        torch_note = "not installed"
    elif use_torch:
        th, torch_note = _run_worker("torch", quick, threads or numpy_threads)

    rows = []
    for i, e in enumerate(em["ops"]):
        t = th["ops"][i]["torch_us"] if th else None
        ratio, status = ratio_and_status(e["ember_us"], t, OP_TARGET)
        numpy_us = e.get("numpy_us", rows[-1]["numpy_us"] if rows else None)  # grad rows: same kernel
        rows.append({"op": e["op"], "shape": e["shape"], "grad": e["grad"], "ember_us": e["ember_us"],
                     "torch_us": t, "ratio": ratio, "target": OP_TARGET, "status": status, "numpy_us": numpy_us})

    t_ms = th["mlp"]["torch_ms"] if th else None
    ratio, status = ratio_and_status(em["mlp"]["ember_ms"], t_ms, MLP_TARGET)
    # GEMM FLOPs of one step: forward, weight gradients, and input gradients of every layer but the first.
    gemm = [2 * MLP_BATCH * a * b for a, b in itertools.pairwise(MLP_SIZES)]
    mlp = {"sizes": list(MLP_SIZES), "batch": MLP_BATCH, "dtype": "float32",
           "gemm_flops": 2 * sum(gemm) + sum(gemm[1:]),
           "ember_ms": em["mlp"]["ember_ms"], "torch_ms": t_ms, "numpy_ms": em["mlp"]["numpy_ms"],
           "ratio": ratio, "target": MLP_TARGET, "status": status,
           "ember_loss": em["mlp"]["ember_loss"], "numpy_loss": em["mlp"]["numpy_loss"],
           "torch_loss": th["mlp"]["torch_loss"] if th else None}

    return {
        "meta": {
            "ember": em["info"]["version"], "numpy": np.__version__,
            "torch": th["info"]["version"] if th else None, "torch_note": torch_note,
            "python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "blas": em["info"]["blas"], "numpy_blas_threads": numpy_threads,
            "torch_threads": th["info"]["threads"] if th else None,
            "quick": quick, "timing": QUICK if quick else FULL,
        },
        "ops": rows,
        "mlp": mlp,
    }


# ---------------------------------------------------------------------------------------------- output

def format_table(result: dict[str, Any]) -> str:
    meta, blas = result["meta"], result["meta"]["blas"]
    nthreads = meta["numpy_blas_threads"] if meta["numpy_blas_threads"] is not None else "unknown"
    torch_text = meta["torch"] or f"n/a ({meta['torch_note']})"
    lines = [
        f"Ember {meta['ember']} eager overhead   NumPy {meta['numpy']}   PyTorch {torch_text}   "
        f"Python {meta['python']}   {meta['cpus']} CPUs",
        f"BLAS: {blas['name'] or 'unknown'} {blas['version'] or ''} (core {blas['core'] or '?'})   "
        f"threads: NumPy BLAS {nthreads}, torch {fmt(meta['torch_threads'], 'd')}"
        + ("   [--quick: few repeats, noisy]" if meta["quick"] else ""),
        "",
    ]
    w = 30
    header = f"{'op':<{w}} | {'ember µs':>9} | {'torch µs':>9} | {'ratio':>6} | {'target':<12} | {'numpy µs':>9}"
    rule = "-" * len(header)
    lines += [header, rule]
    for r in result["ops"]:
        label = f"{r['op']} {'x'.join(map(str, r['shape']))} {'grad' if r['grad'] else 'no-grad'}"
        target = f"<={r['target']:g}x {r['status']}"
        lines.append(f"{label:<{w}} | {r['ember_us']:>9.2f} | {fmt(r['torch_us'], '9.2f'):>9} | "
                     f"{fmt(r['ratio'], '6.2f'):>6} | {target:<12} | {fmt(r['numpy_us'], '9.2f'):>9}")
    m = result["mlp"]
    lines += [rule, f"{'':<{w}} | {'ember ms':>9} | {'torch ms':>9} | {'ratio':>6} | {'target':<12} | {'numpy ms':>9}"]
    label = f"MLP {'-'.join(map(str, m['sizes']))} b{m['batch']} f+b"
    target = f"<={m['target']:g}x {m['status']}"
    lines.append(f"{label:<{w}} | {m['ember_ms']:>9.2f} | {fmt(m['torch_ms'], '9.2f'):>9} | "
                 f"{fmt(m['ratio'], '6.2f'):>6} | {target:<12} | {m['numpy_ms']:>9.2f}")
    gf = {k: m["gemm_flops"] / (m[f"{k}_ms"] * 1e-3) / 1e9 if m[f"{k}_ms"] else None
          for k in ("ember", "torch", "numpy")}
    lines.append(f"{'  GEMM GFLOP/s':<{w}} | {gf['ember']:>9.1f} | {fmt(gf['torch'], '9.1f'):>9} | "
                 f"{'':>6} | {'':<12} | {gf['numpy']:>9.1f}")
    lines.append(f"{'  loss (same data, weights)':<{w}} | {m['ember_loss']:>9.4f} | "
                 f"{fmt(m['torch_loss'], '9.4f'):>9} | {'':>6} | {'':<12} | {m['numpy_loss']:>9.4f}")
    lines += [
        "",
        "Times are medians of one call; ratio = ember / torch; targets are measured, not asserted.",
        "numpy = the bare NumPy kernel(s) (for the MLP a hand-written forward+backward): the floor for",
        "Ember's NumPy backend. Ember+NumPy and PyTorch run in separate child processes.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Ember vs PyTorch eager: per-op overhead and an MLP training step.")
    p.add_argument("--quick", action="store_true", help="few repeats and short warmup (a smoke test, noisy)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch even if it is installed")
    p.add_argument("--threads", type=int, metavar="N",
                   help="set NumPy's BLAS threads (OpenBLAS) and torch's intra-op threads to N "
                        "(default: torch gets as many as NumPy's BLAS has)")
    p.add_argument("--worker", choices=("ember", "torch"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be at least 1, got {args.threads}")
    if args.worker:
        print(json.dumps(_worker(args.worker, args.quick, args.threads)))
        return 0
    try:
        result = run(quick=args.quick, use_torch=not args.no_torch, threads=args.threads)
    except RuntimeError as e:
        print(f"eager_overhead: {e}", file=sys.stderr)
        return 1
    print(format_table(result))
    if args.json:
        write_json(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
