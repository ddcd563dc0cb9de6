"""The C index/window kernels (``ember.codegen.index_kernels``) vs the NumPy code they replace vs PyTorch.

Each row calls one op's reference impl (``impl(numpy, ...)``) twice, with the C kernels switched off (the
NumPy code) and on, and times the closest PyTorch eager call in a child process (the two libraries'
thread pools would otherwise disturb each other). Sizes are those of the standard training workloads:
the CNN's second convolution, GPT's token embedding (2048 tokens, 2048 x 256), the CTR model's bags,
cross-entropy's target picks.

    python benchmarks/index_kernels.py              # ~30 s
    python benchmarks/index_kernels.py --quick      # smaller, a smoke test
    python benchmarks/index_kernels.py --no-torch
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
from _harness import fmt, run_worker  # noqa: E402


def cases(quick: bool) -> list[dict[str, Any]]:
    """The workloads: name, sizes, and seeds for the inputs (built identically in both processes)."""
    b = 16 if quick else 128
    tokens = 256 if quick else 2048
    return [
        {"name": "unfold2d (im2col)", "size": f"{b}x32x13x13 k3", "op": "unfold", "x": (b, 32, 13, 13), "pad": 0},
        {"name": "unfold2d (im2col)", "size": f"{b}x32x13x13 k3 p1", "op": "unfold", "x": (b, 32, 13, 13), "pad": 1},
        {"name": "fold2d (col2im)", "size": f"->{b}x32x13x13 k3", "op": "fold", "x": (b, 32, 13, 13), "pad": 0},
        {"name": "fold2d (col2im)", "size": f"->{b}x32x13x13 k3 p1", "op": "fold", "x": (b, 32, 13, 13), "pad": 1},
        {"name": "scatter_rows", "size": f"{tokens}x256 -> 2048 rows", "op": "scatter_rows", "k": tokens, "d": 256,
         "num": 2048},
        {"name": "scatter_rows", "size": f"{tokens}x16 -> 100k rows", "op": "scatter_rows", "k": tokens, "d": 16,
         "num": 100_000},
        {"name": "index_add (take vjp)", "size": f"{tokens}x256 -> 2048 rows", "op": "index_add", "k": tokens,
         "d": 256, "num": 2048},
        {"name": "segment_sum", "size": f"{tokens * 20}x16, bags of 20", "op": "segment_sum", "k": tokens * 20,
         "d": 16, "bag": 20},
        {"name": "gather (CE pick)", "size": f"{b}x10", "op": "gather", "n": b, "c": 10, "k": 1},
        {"name": "gather (CE pick)", "size": f"{tokens}x2048", "op": "gather", "n": tokens, "c": 2048, "k": 1},
        {"name": "scatter_add (CE grad)", "size": f"{b}x10", "op": "scatter_add", "n": b, "c": 10, "k": 1},
        {"name": "scatter_add", "size": f"{tokens // 4}x64 into x1000", "op": "scatter_add", "n": tokens // 4,
         "c": 1000, "k": 64},
        {"name": "argmax dim 1", "size": f"32x9x{b}x13x13", "op": "argmax", "x": (32, 9, b, 13, 13)},
    ]


def inputs(case: dict[str, Any]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    op = case["op"]
    if op in ("unfold", "fold"):
        n, c, h, w = case["x"]
        p = case["pad"]
        o = h + 2 * p - 2
        if op == "unfold":
            return {"x": rng.standard_normal((n, c, h, w), dtype=np.float32)}
        return {"cols": rng.standard_normal((c, 3, 3, n, o, o), dtype=np.float32)}
    if op in ("scatter_rows", "index_add"):
        return {"g": rng.standard_normal((case["k"], case["d"]), dtype=np.float32),
                "ids": rng.integers(0, case["num"], case["k"])}
    if op == "segment_sum":
        return {"x": rng.standard_normal((case["k"], case["d"]), dtype=np.float32),
                "offsets": np.arange(0, case["k"], case["bag"])}
    if op in ("gather", "scatter_add"):
        return {"x": rng.standard_normal((case["n"], case["c"]), dtype=np.float32),
                "index": rng.integers(0, case["c"], (case["n"], case["k"])),
                "src": rng.standard_normal((case["n"], case["k"]), dtype=np.float32)}
    return {"x": rng.standard_normal(case["x"], dtype=np.float32)}


def _calls(fn: Callable[[], Any], budget: float) -> int:
    fn()
    t0 = time.perf_counter()
    fn()
    return max(1, int(budget / 20 / max(time.perf_counter() - t0, 1e-7)))


def _round(fn: Callable[[], Any], calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def best_of(fns: list[Callable[[], Any]], budget: float) -> list[float]:
    """Microseconds per call of each of ``fns``: the best of 10 rounds, the functions taking turns round by
    round (a busy moment of a shared machine then hits all of them alike, and the best round misses it)."""
    calls = [_calls(fn, budget) for fn in fns]
    best = [float("inf")] * len(fns)
    for _ in range(10):
        for i, fn in enumerate(fns):
            best[i] = min(best[i], _round(fn, calls[i]))
    return best


def ember_call(case: dict[str, Any], a: dict[str, np.ndarray]) -> Callable[[], Any]:
    from ember.ops import linalg, movement, reduce, sparse_ops
    op = case["op"]
    k, s, d = (3, 3), (1, 1), (1, 1)
    p = (case.get("pad", 0),) * 4
    if op == "unfold":
        return lambda: linalg._unfold_impl(np, a["x"], k, s, p, d, 0)
    if op == "fold":
        size = case["x"][2:]
        return lambda: linalg._fold_impl(np, a["cols"], size, k, s, p, d)
    if op == "scatter_rows":
        return lambda: sparse_ops._scatter_rows_impl(np, a["g"], a["ids"], case["num"])
    if op == "index_add":
        zero = np.broadcast_to(np.zeros((), np.float32), (case["num"], case["d"]))
        return lambda: movement._index_add_impl(np, zero, a["ids"], a["g"], 0)
    if op == "segment_sum":
        return lambda: sparse_ops._segment_sum_impl(np, a["x"], a["offsets"], None)
    if op == "gather":
        return lambda: movement._gather_impl(np, a["x"], a["index"], 1)
    if op == "scatter_add":
        zeros = np.zeros_like(a["x"])
        return lambda: movement._scatter_add_impl(np, zeros, a["index"], a["src"], 1)
    impl = reduce._arg_impl("argmax")
    return lambda: impl(np, a["x"], 1, False)


def torch_call(torch: Any, case: dict[str, Any], a: dict[str, np.ndarray]) -> Callable[[], Any]:
    F = torch.nn.functional
    t = {key: torch.from_numpy(v) for key, v in a.items()}
    op = case["op"]
    p = case.get("pad", 0)
    if op == "unfold":
        return lambda: F.unfold(t["x"], 3, padding=p)
    if op == "fold":
        c, _, _, n, o, _ = a["cols"].shape
        cols = t["cols"].permute(3, 0, 1, 2, 4, 5).reshape(n, c * 9, o * o).contiguous()
        return lambda: F.fold(cols, case["x"][2:], 3, padding=p)
    if op in ("scatter_rows", "index_add"):
        return lambda: torch.zeros(case["num"], case["d"]).index_add_(0, t["ids"], t["g"])
    if op == "segment_sum":
        seg = torch.arange(case["k"]) // case["bag"]
        return lambda: torch.zeros(case["k"] // case["bag"], case["d"]).index_add_(0, seg, t["x"])
    if op == "gather":
        return lambda: torch.gather(t["x"], 1, t["index"])
    if op == "scatter_add":
        return lambda: torch.zeros_like(t["x"]).scatter_add_(1, t["index"], t["src"])
    return lambda: torch.argmax(t["x"], 1)


def worker(lib: str, quick: bool) -> None:
    budget = 0.1 if quick else 1.5
    out = []
    if lib == "torch":
        import torch
        torch.set_num_threads(2 if (__import__("os").cpu_count() or 1) >= 2 else 1)
        for case in cases(quick):
            out.append({"torch": best_of([torch_call(torch, case, inputs(case))], budget)[0]})
    else:
        from ember.codegen import index_kernels as ik
        have_c = ik.enabled()
        for case in cases(quick):
            fn = ember_call(case, inputs(case))

            def numpy_path(fn: Callable[[], Any] = fn) -> Any:
                ik.set_enabled(False)
                try:
                    return fn()
                finally:
                    ik.set_enabled(True)
            if have_c:
                t_np, t_c = best_of([numpy_path, fn], budget)
            else:
                t_np, t_c = best_of([numpy_path], budget)[0], None
            out.append({"numpy": t_np, "c": t_c})
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller sizes, short timings (a smoke test)")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch even if it is installed")
    p.add_argument("--worker", choices=("ember", "torch"), help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.quick)
        return
    ember_res, err = run_worker(__file__, "ember", [], args.quick, None)
    if ember_res is None:
        sys.exit(err)
    torch_res, why = None, "disabled by --no-torch"
    if not args.no_torch:
        import importlib.util
        if importlib.util.find_spec("torch") is None:
            why = "not installed"
        else:
            torch_res, why = run_worker(__file__, "torch", [], args.quick, None)
    print("\nindex/window kernels: reference impl with NumPy code vs with C kernels (float32, int64 indices); "
          "µs per call, best of 10 rounds")
    head = f"{'op':22s} {'size':26s} | {'numpy µs':>10s} | {'C µs':>10s} | {'speedup':>7s} | {'torch µs':>10s} | " \
           f"{'C/torch':>7s}"
    print(head)
    print("-" * len(head))
    for i, case in enumerate(cases(args.quick)):
        t_np, t_c = ember_res[i]["numpy"], ember_res[i]["c"]
        t_t = torch_res[i]["torch"] if torch_res else None
        speed = t_np / t_c if t_c else None
        vs = t_c / t_t if t_c and t_t else None
        print(f"{case['name']:22s} {case['size']:26s} | {fmt(t_np, '10.1f')} | {fmt(t_c, '10.1f')} | "
              f"{fmt(speed, '6.2f')}x | {fmt(t_t, '10.1f')} | {fmt(vs, '7.2f')}")
    if torch_res is None:
        print(f"(torch: {why})")


if __name__ == "__main__":
    main()
