"""Dependency-engine overhead and kernel concurrency (``ember/runtime/engine.py``).

Table 1: the cost per step of running 1000 no-op steps, as a chain (each step depends on the one
before) and as 1000 independent steps: a plain Python loop over the callables (the floor), a naive
``Schedule``, a threaded ``Schedule`` (forced onto the pool for the chain; by default a chain runs
inline), and the dynamic ``ThreadedEngine`` (``push`` + completion per op). Median of repeats, in µs
per step, overhead = time minus the plain loop's.

Table 2: two independent N x N float32 GEMMs (1000 by default), run one after the other and as two
steps of a threaded ``Schedule`` on 2 workers, with OpenBLAS at 1 and at 2 threads per GEMM. On a
2-core machine, "concurrent, 1 thread each" is the engine's setting (cores // concurrent kernels);
"concurrent, 2 threads each" is the oversubscribed one.

    python benchmarks/engine_overhead.py            # about 10 seconds
    python benchmarks/engine_overhead.py --quick    # about 2 seconds, noisy
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a source checkout

from ember.runtime import engine as eng


def _median_time(fn: Callable[[], None], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _nop() -> None:
    pass


def overhead_table(n: int, repeats: int, workers: int) -> list[tuple[str, str, float]]:
    rows = []
    for shape in ("chain", "independent"):
        steps = [(_nop, [i - 1] if shape == "chain" and i else [], [i]) for i in range(n)]
        fns = [s[0] for s in steps]

        def loop(fns=fns) -> None:
            for f in fns:
                f()
        cases: list[tuple[str, Callable[[], None]]] = [("plain Python loop", loop)]
        cases.append(("Schedule naive", eng.Schedule(steps, mode="naive").run))
        if shape == "chain":
            auto = eng.Schedule(steps, mode="threaded", workers=workers)
            cases.append(("Schedule threaded (auto: inline)", auto.run))
        cases.append((f"Schedule threaded ({workers} workers)",
                      eng.Schedule(steps, mode="threaded", workers=workers, inline=False).run))
        for kind in ("naive", "threaded"):
            e = eng.get_engine(kind, workers=workers)
            vs = [e.new_var(str(i)) for i in range(n)]

            deps = [[vs[i - 1]] if shape == "chain" and i else [] for i in range(n)]

            def dynamic(e=e, vs=vs, deps=deps) -> None:
                for i in range(n):
                    e.push(_nop, reads=deps[i], writes=[vs[i]])
                e.wait_all()
            cases.append((f"Engine.push {kind}", dynamic))
        for name, fn in cases:
            rows.append((shape, name, _median_time(fn, repeats) / n * 1e6))
    return rows


def gemm_table(size: int, repeats: int) -> list[tuple[str, int, float, float]]:
    """(how, BLAS threads per GEMM, median s, min s); the four cases are interleaved round by round so
    that a noisy (shared) machine slows them alike."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    c0, c1 = np.empty_like(a), np.empty_like(a)
    steps = [(lambda: np.matmul(a, b, out=c0), ["a", "b"], ["c0"]),
             (lambda: np.matmul(b, a, out=c1), ["a", "b"], ["c1"])]
    seq = eng.Schedule(steps, mode="naive")
    cases = []
    for threads in (1, 2):
        conc = eng.Schedule(steps, mode="threaded", workers=2, kernel_threads=threads)

        def sequential(threads=threads) -> None:
            with eng.kernel_threads(threads):
                seq.run()
        cases += [("sequential", threads, sequential), ("concurrent (Schedule, 2 workers)", threads, conc.run)]
    times: list[list[float]] = [[] for _ in cases]
    for r in range(repeats + 1):
        for k, (_, _, fn) in enumerate(cases):
            t0 = time.perf_counter()
            fn()
            if r:  # the first round warms up
                times[k].append(time.perf_counter() - t0)
    return [(name, th, statistics.median(ts), min(ts)) for (name, th, _), ts in zip(cases, times)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (noisy)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--size", type=int, default=1000, help="GEMM size N")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    repeats = 5 if args.quick else 31
    print(f"cores {eng.cpu_count()}, OpenBLAS threads {eng.set_blas_threads(None)}, "
          f"OpenMP threads {eng.set_omp_threads(None)}, default engine workers {eng.default_workers()}")

    rows = overhead_table(args.steps, repeats, args.workers)
    print(f"\nper-step cost, {args.steps} no-op steps (median of {repeats}):")
    print(f"{'DAG':<12} {'runner':<36} {'µs/step':>9} {'overhead µs':>12}")
    floor = {shape: t for shape, name, t in rows if name == "plain Python loop"}
    for shape, name, t in rows:
        print(f"{shape:<12} {name:<36} {t:>9.3f} {t - floor[shape]:>12.3f}")

    g_repeats = 3 if args.quick else 21
    print(f"\ntwo independent {args.size}x{args.size} float32 GEMMs (median of {g_repeats}):")
    print(f"{'how':<34} {'BLAS threads/GEMM':>18} {'median ms':>10} {'min ms':>8} {'GFLOP/s (min)':>14}")
    flops = 2 * 2 * args.size ** 3
    for name, threads, med, best in gemm_table(args.size, g_repeats):
        print(f"{name:<34} {threads:>18} {med * 1e3:>10.2f} {best * 1e3:>8.2f} {flops / best / 1e9:>14.1f}")


if __name__ == "__main__":
    main()
