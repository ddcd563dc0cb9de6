"""Eager composites: op by op (``EMBER_EAGER_FUSION=0``), compiled once per shape (the default) and
PyTorch eager, forward alone and forward + backward.

Each column runs in its own child process. "first call" is the compiled column's first forward +
backward for a shape: tracing, passes, and the C compiler (kernels are cached on disk, so a second run
of this script pays only tracing and passes).

    python benchmarks/eager_composites.py             # the table (about a minute)
    python benchmarks/eager_composites.py --sweep     # softmax / gelu / layer_norm at growing sizes: where
                                                      # compiling starts to pay (compiled_composite.MIN_ELEMENTS)
    python benchmarks/eager_composites.py --quick     # smaller sizes, few repeats: a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a source checkout without installing Ember
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _harness, also when loaded by file path
from _harness import fmt, load_library, run_worker  # noqa: E402

MODES = ("ember-plain", "ember-compiled", "torch")
CASES: dict[str, tuple[int, ...]] = {  # 16-32 MB of float32 input each
    "softmax": (16, 512, 512),
    "log_softmax": (16, 512, 512),
    "layer_norm": (8192, 512),
    "gelu": (4096, 1024),
    "gelu_tanh": (4096, 1024),
    "cross_entropy": (4096, 2048),
}
QUICK = dict.fromkeys(CASES, (64, 256))
SWEEP = (256, 1024, 2048, 4096, 8192, 16384, 65536)  # elements, as (n / 128, 128)


def _functions(lib: Any, torch: bool) -> dict[str, Callable]:
    F = lib.nn.functional
    return {
        "softmax": lambda x, *_: F.softmax(x, dim=-1),
        "log_softmax": lambda x, *_: F.log_softmax(x, dim=-1),
        "layer_norm": lambda x, w, b, _t: F.layer_norm(x, (x.shape[-1],), w, b),
        "gelu": lambda x, *_: F.gelu(x),
        "gelu_tanh": lambda x, *_: F.gelu(x, approximate="tanh"),
        "cross_entropy": lambda x, _w, _b, t: F.cross_entropy(x, t),
    }


def _inputs(lib: Any, name: str, shape: tuple[int, ...], torch: bool) -> tuple:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    n = shape[-1]
    w = rng.standard_normal(n, dtype=np.float32)
    b = rng.standard_normal(n, dtype=np.float32)
    t = rng.integers(0, n, shape[0])
    g = rng.standard_normal(shape, dtype=np.float32)
    if torch:
        return (lib.from_numpy(x), lib.from_numpy(w), lib.from_numpy(b), lib.from_numpy(t), lib.from_numpy(g))
    return (lib.tensor(x), lib.tensor(w), lib.tensor(b), lib.tensor(t), lib.tensor(g))


def _time(fn: Callable[[], Any], repeats: int) -> float:
    """Median ms of ``repeats`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _measure(lib: Any, torch: bool, name: str, shape: tuple[int, ...], repeats: int) -> dict[str, float]:
    f = _functions(lib, torch)[name]
    x, w, b, t, g = _inputs(lib, name, shape, torch)
    xg = x.clone().requires_grad_(True)
    wg = w.clone().requires_grad_(True)
    bg = b.clone().requires_grad_(True)

    def forward() -> Any:
        with lib.no_grad():
            return f(x, w, b, t)

    def forward_backward() -> None:
        xg.grad = wg.grad = bg.grad = None
        out = f(xg, wg, bg, t)
        out.backward(g if out.shape == g.shape else None)

    t0 = time.perf_counter()
    forward_backward()  # the compiled column traces and compiles both directions here
    first = (time.perf_counter() - t0) * 1e3
    return {"first_ms": first, "fwd_ms": _time(forward, repeats), "fwd_bwd_ms": _time(forward_backward, repeats)}


def _worker(mode: str, names: list[str], quick: bool, threads: int | None, sweep: bool) -> dict[str, Any]:
    if mode.startswith("ember"):
        os.environ["EMBER_EAGER_FUSION"] = "1" if mode == "ember-compiled" else "0"
    lib, info = load_library("torch" if mode == "torch" else "ember", threads)
    torch = mode == "torch"
    out: dict[str, Any] = {"info": info, "rows": {}}
    if sweep:
        if mode == "ember-compiled":  # compile every size, to see where it starts to pay
            from ember.ops import compiled_composite
            compiled_composite.MIN_ELEMENTS = 1
        for name in ("softmax", "gelu", "layer_norm"):
            for n in SWEEP:
                out["rows"][f"{name}@{n}"] = _measure(lib, torch, name, (n // 128, 128), 200)
        return out
    for name in names:
        shape = (QUICK if quick else CASES)[name]
        out["rows"][name] = _measure(lib, torch, name, shape, 3 if quick else 15)
    return out


def _cell(value: float | None, width: int, spec: str = ".2f") -> str:
    return f"{fmt(value, spec):>{width}}"


def _table(results: dict[str, Any], rows: list[str], label: Callable[[str], str]) -> str:
    head = (f"{'case':<34}{'fwd: plain':>12}{'compiled':>10}{'torch':>9}   {'fwd+bwd: plain':>15}{'compiled':>10}"
            f"{'torch':>9}   {'first call':>10}")
    lines = [head, "-" * len(head)]
    for r in rows:
        def get(mode: str, key: str, r: str = r) -> float | None:
            res = results.get(mode)
            return None if res is None else res["rows"][r][key]
        lines.append(f"{label(r):<34}{_cell(get('ember-plain', 'fwd_ms'), 12)}"
                     f"{_cell(get('ember-compiled', 'fwd_ms'), 10)}{_cell(get('torch', 'fwd_ms'), 9)}   "
                     f"{_cell(get('ember-plain', 'fwd_bwd_ms'), 15)}"
                     f"{_cell(get('ember-compiled', 'fwd_bwd_ms'), 10)}{_cell(get('torch', 'fwd_bwd_ms'), 9)}   "
                     f"{_cell(get('ember-compiled', 'first_ms'), 10, '.0f')}")
    lines.append("  ms per call, median; plain = EMBER_EAGER_FUSION=0 (op by op), compiled = eager composites "
                 "compiled per shape; first call = the compiled column's first forward+backward (trace + compile)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Eager composites: op by op vs compiled per shape vs PyTorch eager.")
    p.add_argument("--quick", action="store_true", help="small sizes, few repeats (a smoke test)")
    p.add_argument("--sweep", action="store_true", help="time small to medium sizes, to place the threshold")
    p.add_argument("--only", choices=tuple(CASES), action="append", metavar="NAME", help="run only this case")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch even if it is installed")
    p.add_argument("--threads", type=int, metavar="N", help="NumPy's BLAS threads and torch's intra-op threads")
    p.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    names = [n for n in CASES if n in (args.only or CASES)]
    if args.worker:
        print(json.dumps(_worker(args.worker, names, args.quick, args.threads, args.sweep)))
        return 0
    extra = [a for n in names for a in ("--only", n)] + (["--sweep"] if args.sweep else [])
    results: dict[str, Any] = {}
    for mode in MODES:
        if mode == "torch" and args.no_torch:
            continue
        res, why = run_worker(__file__, mode, extra, args.quick, args.threads)
        if res is None:
            print(f"{mode}: {why}", file=sys.stderr)
            continue
        results[mode] = res
    if "ember-plain" not in results:
        return 1
    if args.sweep:
        rows = list(results["ember-plain"]["rows"])
        print(_table(results, rows, lambda r: f"{r.split('@')[0]} ({int(r.split('@')[1]) // 128}, 128)"))
    else:
        shapes = QUICK if args.quick else CASES
        print(_table(results, names, lambda r: f"{r} {shapes[r]}"))
    info = results["ember-plain"]["info"]
    torch_info = results.get("torch", {}).get("info")
    print(f"  ember {info['version']} (BLAS threads {info['threads']})"
          + (f", torch {torch_info['version']} ({torch_info['threads']} threads)" if torch_info else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
