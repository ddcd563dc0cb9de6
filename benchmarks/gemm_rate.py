"""The machine's BLAS GEMM rate: NumPy float32 matmul at the shapes the training workloads use and at a large
square size (the "peak"), in GFLOP/s.

Ember's CPU kernels are NumPy's, so NumPy's BLAS (OpenBLAS in the usual wheels) is the rate a compiled
training step can at best reach in its matrix products. The shapes are those of
``benchmarks/train_steps.py``:

    mlp  784-1024-1024-10 at batch 256: the forward x @ W.T, the weight gradients dY.T @ x and the input
         gradients dY @ W (not for the first layer: the input needs no gradient), with the transposes as
         views, as the frameworks pass them to BLAS
    gpt  d_model 256, 4 layers, batch 16 x seq 128 = 2048 tokens, vocab 2048: qkv, proj, fc, fc_out and the
         tied LM head, forward and both backward products, and the attention's batched products
         (16 x 4 heads, 128 x 128 scores, head size 64)
    peak (2048 x 2048) @ (2048 x 2048)

Each product is timed in ``--rounds`` rounds (default 5) of ``--reps`` calls (default: enough calls for
0.2 s); a round's figure is its median call, and the best round is kept (the machine may be shared). A
matmul of (m x k) @ (k x n) counts 2 m k n FLOPs. For each workload the table also gives its mix rate: the
FLOPs of all its products over their summed times, the rate a step made only of these GEMMs would reach.

``model_flops`` is the FLOP count per training step used by ``train_steps.py --efficiency``:

    MLP  6 x (matmul parameters) x batch      (2 forward + 4 backward FLOPs per weight per sample)
    GPT  6 x (matmul parameters) x tokens + 12 x n_layer x seq^2 x d_model x batch
         (the matmul parameters: qkv, proj, fc and fc_out of every layer and the LM head; the attention
         term counts Q K^T and A V over the full, unmasked seq x seq scores, forward and backward)

    python benchmarks/gemm_rate.py                 # every shape (about a minute on 2 cores)
    python benchmarks/gemm_rate.py --only peak     # the large square product only
    python benchmarks/gemm_rate.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # ember.cli: BLAS name and thread control
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _harness, also when loaded by file path
from _harness import write_json  # noqa: E402

PEAK_SIZE = 2048


def _linear_products(tag: str, m: int, fan_in: int, fan_out: int, input_grad: bool) -> list[dict[str, Any]]:
    """The GEMMs of a Linear(fan_in, fan_out) on m rows: forward, weight gradient, input gradient."""
    out = [{"label": f"{tag} fwd x@W.T", "batch": 1, "m": m, "k": fan_in, "n": fan_out, "ta": False, "tb": True},
           {"label": f"{tag} dW = dY.T@x", "batch": 1, "m": fan_out, "k": m, "n": fan_in, "ta": True, "tb": False}]
    if input_grad:
        out.append({"label": f"{tag} dx = dY@W", "batch": 1, "m": m, "k": fan_out, "n": fan_in, "ta": False,
                    "tb": False})
    return out


def mlp_shapes(sizes: tuple[int, ...] = (784, 1024, 1024, 10), batch: int = 256) -> list[dict[str, Any]]:
    shapes = []
    for i in range(len(sizes) - 1):
        shapes += _linear_products(f"mlp L{i + 1}", batch, sizes[i], sizes[i + 1], input_grad=i > 0)
    return shapes


def gpt_shapes(d: int = 256, n_head: int = 4, seq: int = 128, batch: int = 16,
               vocab: int = 2048) -> list[dict[str, Any]]:
    tokens, hd, bh = seq * batch, d // n_head, batch * n_head
    shapes = []
    for tag, fi, fo in (("qkv", d, 3 * d), ("proj", d, d), ("fc", d, 4 * d), ("fc_out", 4 * d, d)):
        shapes += _linear_products(f"gpt {tag}", tokens, fi, fo, input_grad=True)
    shapes += _linear_products("gpt head", tokens, d, vocab, input_grad=True)
    att = [("att S = Q@K.T", seq, hd, seq, False, True), ("att O = A@V", seq, seq, hd, False, False),
           ("att dA = dO@V.T", seq, hd, seq, False, True), ("att dV = A.T@dO", seq, seq, hd, True, False),
           ("att dQ = dS@K", seq, seq, hd, False, False), ("att dK = dS.T@Q", seq, seq, hd, True, False)]
    shapes += [{"label": f"gpt {lab}", "batch": bh, "m": m, "k": k, "n": n, "ta": ta, "tb": tb}
               for lab, m, k, n, ta, tb in att]
    return shapes


def peak_shapes() -> list[dict[str, Any]]:
    s = PEAK_SIZE
    return [{"label": f"peak {s}^3", "batch": 1, "m": s, "k": s, "n": s, "ta": False, "tb": False}]


GROUPS = {"mlp": mlp_shapes, "gpt": gpt_shapes, "peak": peak_shapes}


def flops(s: dict[str, Any]) -> float:
    return 2.0 * s["batch"] * s["m"] * s["k"] * s["n"]


def operands(s: dict[str, Any], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A (batch, m, k) and B (batch, k, n), each a transposed view where ``ta``/``tb`` say so."""
    lead = (s["batch"],) if s["batch"] > 1 else ()
    a = rng.standard_normal((*lead, s["k"], s["m"]) if s["ta"] else (*lead, s["m"], s["k"]), dtype=np.float32)
    b = rng.standard_normal((*lead, s["n"], s["k"]) if s["tb"] else (*lead, s["k"], s["n"]), dtype=np.float32)
    return (np.swapaxes(a, -1, -2) if s["ta"] else a), (np.swapaxes(b, -1, -2) if s["tb"] else b)


def time_product(s: dict[str, Any], rounds: int = 5, reps: int | None = None, min_s: float = 0.2) -> float:
    """Seconds per call of ``np.matmul(A, B, out=C)``: the best over ``rounds`` of each round's median call."""
    rng = np.random.default_rng(0)
    a, b = operands(s, rng)
    c = np.empty(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (s["m"], s["n"]), np.float32)
    np.matmul(a, b, out=c)  # warm up (BLAS threads, page faults)
    t0 = time.perf_counter()
    np.matmul(a, b, out=c)
    one = max(time.perf_counter() - t0, 1e-7)
    n = reps or max(3, min(200, int(min_s / one)))
    best = float("inf")
    for _ in range(rounds):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            np.matmul(a, b, out=c)
            times.append(time.perf_counter() - t0)
        best = min(best, statistics.median(times))
    return best


def measure(groups: list[str], rounds: int = 5, reps: int | None = None, log: Any = None) -> dict[str, Any]:
    rows, mixes = [], {}
    for g in groups:
        total_f = total_t = 0.0
        for s in GROUPS[g]():
            t = time_product(s, rounds, reps)
            f = flops(s)
            rows.append({**s, "group": g, "ms": t * 1e3, "gflops": f / t / 1e9})
            total_f, total_t = total_f + f, total_t + t
            if log:
                log(f"  {s['label']}: {t * 1e3:.3f} ms")
        mixes[g] = total_f / total_t / 1e9
    return {"rows": rows, "mix_gflops": mixes,
            "peak_gflops": mixes.get("peak")}


def model_flops(name: str, c: dict[str, Any]) -> float | None:
    """FLOPs of one training step of ``train_steps.py``'s workload ``name`` at config ``c`` (see the module
    docstring); None for the workloads without a formula (CNN, CTR)."""
    if name in ("mlp", "mlp16"):
        s = c["sizes"]
        params = sum(s[i] * s[i + 1] for i in range(len(s) - 1))
        return 6.0 * params * c["batch"]
    if name == "gpt":
        d, layers, seq, batch = c["d_model"], c["n_layer"], c["seq"], c["batch"]
        params = layers * (d * 3 * d + d * d + d * 4 * d + 4 * d * d) + d * c["vocab"]
        return 6.0 * params * seq * batch + 12.0 * layers * seq * seq * d * batch
    return None


def _shape_text(s: dict[str, Any]) -> str:
    lead = f"{s['batch']}x" if s["batch"] > 1 else ""
    return f"{lead}({s['m']}x{s['k']})@({s['k']}x{s['n']})"


def format_table(result: dict[str, Any], info: dict[str, Any]) -> str:
    lines = [f"NumPy {np.__version__} float32 matmul   BLAS: {info.get('name') or 'unknown'} "
             f"{info.get('version') or ''}   threads {info.get('threads')}   {os.cpu_count()} CPUs", ""]
    header = f"{'product':<24} | {'shape':<28} | {'ms':>9} | {'GFLOP/s':>8}"
    lines += [header, "-" * len(header)]
    group = None
    for r in result["rows"]:
        if group is not None and r["group"] != group:
            lines.append(f"{'  ' + group + ' mix (all above)':<24} | {'':<28} | {'':>9} | "
                         f"{result['mix_gflops'][group]:8.1f}")
            lines.append("-" * len(header))
        group = r["group"]
        lines.append(f"{r['label']:<24} | {_shape_text(r):<28} | {r['ms']:9.3f} | {r['gflops']:8.1f}")
    if group is not None and group != "peak":
        lines.append(f"{'  ' + group + ' mix (all above)':<24} | {'':<28} | {'':>9} | "
                     f"{result['mix_gflops'][group]:8.1f}")
    lines += ["-" * len(header),
              "ms = best of the rounds' median call; a .T in a label is a transposed view handed to BLAS;",
              "mix = the group's FLOPs / the sum of its times (a step made of only these GEMMs)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=tuple(GROUPS), action="append", metavar="GROUP",
                   help="mlp, gpt or peak (may repeat; default all)")
    p.add_argument("--rounds", type=int, default=5, metavar="N", help="rounds per product, best kept (default 5)")
    p.add_argument("--reps", type=int, default=None, metavar="N", help="calls per round (default: about 0.2 s)")
    p.add_argument("--threads", type=int, metavar="N", help="NumPy's BLAS threads")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH ('-': stdout only)")
    args = p.parse_args(argv)
    from ember.cli import blas_info, set_blas_threads
    if args.threads is not None and not set_blas_threads(args.threads):
        print(f"warning: could not set NumPy's BLAS threads to {args.threads}", file=sys.stderr)
    info = blas_info()
    groups = [g for g in GROUPS if g in (args.only or GROUPS)]
    quiet = args.json == "-"
    result = measure(groups, max(1, args.rounds), args.reps, log=None if quiet else lambda s: print(s, flush=True))
    result["blas"] = info
    if quiet:
        print(json.dumps(result))
        return 0
    print(format_table(result, info))
    if args.json:
        write_json(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
