"""The elementwise block of a transformer MLP, forward, as generated C kernels vs NumPy vs PyTorch eager.

    y = layer_norm(x) over the last dim (no affine, eps 1e-5)
    z = gelu_tanh(y * a + b)            a, b of shape (D,)
    w = z * sigmoid(z) + x
    s = w.sum()

over x of shape (64, 512, 512) float32. The fused version is two kernels: one pass per row computes the
mean, the variance, then the whole chain and its row sum (x is read from memory once and stays in cache
for the later passes); a second kernel sums the rows. A second fused row also writes ``w`` (what a
training forward keeps for backward). ``floor`` is the time to read x once at the bandwidth ``np.copyto``
reaches (read + write) on this machine.

    python benchmarks/codegen_elementwise.py              # full size, ~1 minute
    python benchmarks/codegen_elementwise.py --quick      # (8, 512, 512), a few seconds
    python benchmarks/codegen_elementwise.py --no-torch
"""

from __future__ import annotations

import argparse
import ctypes
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from ember.codegen import Kernel, Output, arg, available, build, op, reduce

EPS = 1e-5
C = math.sqrt(2 / math.pi)


def fused_kernels(shape: tuple[int, ...], write_w: bool) -> list[Kernel]:
    rows, d = math.prod(shape[:-1]), shape[-1]
    x, a, b = arg("x", "float32", (rows, d)), arg("a", "float32", (d,)), arg("b", "float32", (d,))
    mean = reduce("sum", x, -1) * (1.0 / d)
    dx = x - mean
    y = dx * op("rsqrt", reduce("sum", dx * dx, -1) * (1.0 / d) + EPS)
    z = y * a + b
    g = z * 0.5 * (op("tanh", (z + z * z * z * 0.044715) * C) + 1.0)
    w = g * op("sigmoid", g) + x
    outs = [Output("rowsum", reduce("sum", w, -1), reduced=True, keepdim=False)]
    if write_w:
        outs.append(Output("w", w))
    suffix = "_w" if write_w else ""
    k1 = Kernel(f"block_rows{suffix}", [x, a, b], outs)
    r = arg("rowsum", "float32", (rows,))
    k2 = Kernel(f"block_total{suffix}", [r], [Output("s", reduce("sum", r, 0), reduced=True, keepdim=False)])
    return [k1, k2]


def numpy_block(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.floating:
    mean = x.mean(-1, keepdims=True)
    d = x - mean
    y = d / np.sqrt((d * d).mean(-1, keepdims=True) + np.float32(EPS))
    z = y * a + b
    g = np.float32(0.5) * z * (1 + np.tanh(np.float32(C) * (z + np.float32(0.044715) * z * z * z)))
    w = g * (1 / (1 + np.exp(-g))) + x
    return w.sum()


def reference_sum(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """float64 reference, in row chunks."""
    total = 0.0
    flat = x.reshape(-1, x.shape[-1])
    for i in range(0, flat.shape[0], 4096):
        xd = flat[i:i + 4096].astype(np.float64)
        d = xd - xd.mean(-1, keepdims=True)
        z = d / np.sqrt((d * d).mean(-1, keepdims=True) + EPS) * a + b
        g = 0.5 * z * (1 + np.tanh(C * (z + 0.044715 * z ** 3)))
        total += float((g / (1 + np.exp(-g)) + xd).sum())
    return total


def timeit(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def set_omp_threads(n: int) -> bool:
    try:
        ctypes.CDLL("libgomp.so.1").omp_set_num_threads(n)
        return True
    except (OSError, AttributeError):
        return False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="x of shape (8, 512, 512), fewer repetitions")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--no-torch", action="store_true")
    args = p.parse_args()
    shape = (8, 512, 512) if args.quick else (64, 512, 512)
    reps = args.reps or (3 if args.quick else 5)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32) * 2 + 0.5
    a = rng.standard_normal(shape[-1], dtype=np.float32)
    b = rng.standard_normal(shape[-1], dtype=np.float32)
    rows = math.prod(shape[:-1])
    ref = reference_sum(x, a, b)
    results: list[tuple[str, float | None, str]] = []

    copy_dst = np.empty_like(x)
    t_copy = timeit(lambda: np.copyto(copy_dst, x), reps)
    bandwidth = 2 * x.nbytes / (t_copy / 1e3)
    floor = x.nbytes / bandwidth * 1e3
    results.append(("floor: read x once at copy bandwidth", floor, f"{bandwidth / 1e9:.1f} GB/s (copy)"))

    if available():
        prog = build(fused_kernels(shape, False) + fused_kernels(shape, True), label="codegen_elementwise")
        x2 = x.reshape(rows, shape[-1])
        rowsum, total, w = np.empty(rows, np.float32), np.empty((), np.float32), np.empty((rows, shape[-1]), np.float32)
        k1, k2 = prog["block_rows"].bind(rowsum, x2, a, b), prog["block_total"].bind(total, rowsum)
        k1w, k2w = prog["block_rows_w"].bind(rowsum, w, x2, a, b), prog["block_total_w"].bind(total, rowsum)

        def fused() -> None:
            k1()
            k2()

        def fused_w() -> None:
            k1w()
            k2w()
        threads = os.cpu_count() or 1
        for label, fn in (("ember fused, 2 kernels", fused), ("ember fused, 2 kernels, also writes w", fused_w)):
            fn()
            err = abs(float(total) - ref) / abs(ref)
            if set_omp_threads(1):
                t1 = timeit(fn, reps)
                results.append((f"{label} (1 thread)", t1, f"rel. err {err:.1e}"))
                set_omp_threads(threads)
            results.append((f"{label} ({threads} threads)", timeit(fn, reps), f"rel. err {err:.1e}"))
    else:
        results.append(("ember fused (no C compiler)", None, "n/a"))

    s_np = numpy_block(x, a, b)
    with np.errstate(all="ignore"):
        results.append(("numpy (1 thread, 9 temporaries)", timeit(lambda: numpy_block(x, a, b), reps),
                        f"rel. err {abs(float(s_np) - ref) / abs(ref):.1e}"))

    if not args.no_torch:
        try:
            import torch
            import torch.nn.functional as F
        except ImportError:
            torch = None
        if torch is None:
            results.append(("torch eager (not installed)", None, "n/a"))
        else:
            tx, ta, tb = torch.from_numpy(x), torch.from_numpy(a), torch.from_numpy(b)

            def torch_block() -> torch.Tensor:
                with torch.no_grad():
                    g = F.gelu(F.layer_norm(tx, (shape[-1],), eps=EPS) * ta + tb, approximate="tanh")
                    return (g * torch.sigmoid(g) + tx).sum()
            s_t = float(torch_block())
            results.append((f"torch {torch.__version__} eager ({torch.get_num_threads()} threads)",
                            timeit(torch_block, reps), f"rel. err {abs(s_t - ref) / abs(ref):.1e}"))

    print(f"\nelementwise block forward, x {shape} float32 ({x.nbytes / 2**20:.0f} MiB), median of {reps}")
    print(f"{'':52s} {'ms':>9s}  note")
    for label, ms, note in results:
        print(f"{label:52s} {ms if ms is None else f'{ms:9.2f}':>9}  {note}")


if __name__ == "__main__":
    main()
