"""An elementwise-heavy block, forward and backward: Ember eager, Ember eager with fused composites, Ember
compiled (``ember.jit``), PyTorch eager and ``torch.compile`` (inductor), side by side.

    y   = layer_norm(x) over the last dim (no affine, eps 1e-5)
    z   = gelu(y * a + b)                  exact (erf) GELU, torch's default; a, b of shape (D,)
    out = (z * sigmoid(z) + x).sum()

x of shape (64, 512, 512) float32 (64 MiB; ``--quick``: (8, 512, 512)). One step is the forward and the
gradients of ``out`` w.r.t. x, a and b, with every ``.grad`` reset to None first, so each step does the same
work. Rows:

    ember eager            op by op: the child runs with EMBER_EAGER_FUSION=0
    ember eager+fusion     the default environment (eager fusion of composites where Ember has it; where it
                           does not yet, this row equals the one above)
    ember.jit              the whole step (forward and out.backward()) traced once and replayed, with fused
                           generated C kernels
    torch eager            PyTorch's ATen kernels
    torch.compile          inductor (generated C++ kernels, forward and AOT-autograd backward); n/a with the
                           reason when it cannot compile

Each row runs in its own child process; the children take turns, ``--rounds`` times (default 2, 1 with
``--quick``), and each row's best round (lowest median step time) is shown. Ember's codegen cache and
inductor's cache point at a fresh directory for the run, so the first call of round 1 is a cold compile and
later rounds find the kernels cached: both first-call times are printed.

    python benchmarks/elementwise_block.py               # full size, about 2-3 minutes on 2 cores
    python benchmarks/elementwise_block.py --quick       # (8, 512, 512), a smoke test
    python benchmarks/elementwise_block.py --no-compile  # skip torch.compile (its cold compile takes ~20 s)
    python benchmarks/elementwise_block.py --json out.json
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a source checkout without installing Ember
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import fmt, load_library, write_json  # noqa: E402

EPS = 1e-5
VARIANTS = ("ember-eager", "ember-fused", "ember-jit", "torch", "torch-compile")
LABELS = {"ember-eager": "ember eager (EMBER_EAGER_FUSION=0)", "ember-fused": "ember eager+fusion (default env)",
          "ember-jit": "ember.jit (fwd+bwd, fused)", "torch": "torch eager",
          "torch-compile": "torch.compile (inductor)"}
WARMUP = {"ember-eager": 1, "ember-fused": 1, "ember-jit": 3, "torch": 2, "torch-compile": 3}  # incl. 1st call
FULL = {"shape": (64, 512, 512), "steps": 8}
QUICK = {"shape": (8, 512, 512), "steps": 3}


def make_data(shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape, dtype=np.float32) * 2 + 0.5
    a = rng.standard_normal(shape[-1], dtype=np.float32)
    b = rng.standard_normal(shape[-1], dtype=np.float32)
    return x, a, b


# ---------------------------------------------------------------------------------------------- steps

def ember_step(variant: str, x: Any, a: Any, b: Any) -> Any:
    """``step()`` -> (out, x.grad, a.grad, b.grad) as Ember tensors; eager steps also record fwd/bwd times."""
    import ember
    import ember.nn.functional as F

    d = x.shape[-1]

    def forward(x: Any, a: Any, b: Any) -> Any:
        z = F.gelu(F.layer_norm(x, (d,), eps=EPS) * a + b)
        return (z * F.sigmoid(z) + x).sum()

    def fwd_bwd(x: Any, a: Any, b: Any) -> tuple:
        out = forward(x, a, b)
        out.backward()
        return out.detach(), x.grad, a.grad, b.grad

    leaves = (x, a, b)
    if variant == "ember-jit":
        compiled = ember.jit(fwd_bwd, name="elementwise_block")

        def step() -> tuple:
            for t in leaves:
                t.grad = None
            return compiled(x, a, b)
        return step, None

    return timed_step(forward, x, a, b)


def torch_step(variant: str, x: Any, a: Any, b: Any) -> Any:
    import torch
    import torch.nn.functional as F

    d = x.shape[-1]

    def forward(x: Any, a: Any, b: Any) -> Any:
        z = F.gelu(F.layer_norm(x, (d,), eps=EPS) * a + b)
        return (z * torch.sigmoid(z) + x).sum()

    return timed_step(torch.compile(forward) if variant == "torch-compile" else forward, x, a, b)


def timed_step(forward: Any, x: Any, a: Any, b: Any) -> tuple[Any, dict[str, list[float]]]:
    """``(step, split)`` for an eager library (Ember or PyTorch): ``step()`` clears the grads, runs ``forward``
    and ``.backward()`` and returns (out, x.grad, a.grad, b.grad); ``split`` collects their times."""
    split: dict[str, list[float]] = {"fwd": [], "bwd": []}

    def step() -> tuple:
        for t in (x, a, b):
            t.grad = None
        t0 = time.perf_counter()
        out = forward(x, a, b)
        t1 = time.perf_counter()
        out.backward()
        split["fwd"].append(t1 - t0)
        split["bwd"].append(time.perf_counter() - t1)
        return out.detach(), x.grad, a.grad, b.grad
    return step, split


# ---------------------------------------------------------------------------------------------- worker

def _worker(variant: str, quick: bool, threads: int | None, dump: str | None) -> dict[str, Any]:
    """Time one variant in this process; with ``dump``, save the last step's results there (``.npz``)."""
    c = QUICK if quick else FULL
    is_torch = variant.startswith("torch")
    lib, info = load_library("torch" if is_torch else "ember", threads)
    x, a, b = (lib.from_numpy(v).requires_grad_() for v in make_data(c["shape"]))
    step, split = (torch_step if is_torch else ember_step)(variant, x, a, b)
    t0 = time.perf_counter()
    res = step()  # the first call: traces/compiles for ember.jit and torch.compile
    first_s = time.perf_counter() - t0
    for _ in range(WARMUP[variant] - 1):
        res = step()
    if split is not None:
        for v in split.values():
            v.clear()
    times = []
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(c["steps"]):
            t0 = time.perf_counter()
            res = step()
            times.append(time.perf_counter() - t0)
            gc.collect(0)
    finally:
        if enabled:
            gc.enable()
    if dump:
        arrays = [r.detach().numpy() if is_torch else r.numpy() for r in res]
        np.savez(dump, out=arrays[0], gx=arrays[1], ga=arrays[2], gb=arrays[3])
    out: dict[str, Any] = {"info": info, "ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3,
                           "steps": len(times), "first_s": first_s, "out": float(res[0])}
    if split is not None and split["fwd"]:
        out["fwd_ms"] = statistics.median(split["fwd"]) * 1e3
        out["bwd_ms"] = statistics.median(split["bwd"]) * 1e3
    if variant == "torch-compile":
        import torch
        out["info"]["compile"] = "inductor"
        out["info"]["version"] = str(torch.__version__)
    return out


def _run_child(variant: str, quick: bool, threads: int | None, dump: str | None,
               cache_dir: str) -> tuple[dict | None, str | None]:
    """Run ``_worker`` in a child process with the variant's environment; (result, None) or (None, why)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", variant]
    if quick:
        cmd.append("--quick")
    if threads is not None:
        cmd += ["--threads", str(threads)]
    if dump:
        cmd += ["--dump", dump]
    env = dict(os.environ)
    env["EMBER_CACHE_DIR"] = os.path.join(cache_dir, "ember")
    env["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(cache_dir, "inductor")
    if variant == "ember-eager":
        env["EMBER_EAGER_FUSION"] = "0"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.strip().splitlines() if ln.strip()]
        return None, lines[-1][:160] if lines else f"exit status {proc.returncode}"
    return json.loads(proc.stdout.strip().splitlines()[-1]), None


# ---------------------------------------------------------------------------------------------- run

def rel_diff(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| / max |ref| (a norm-wise relative difference: robust where ref crosses zero)."""
    scale = float(np.abs(ref).max()) or 1.0
    return float(np.abs(got.astype(np.float64) - ref.astype(np.float64)).max()) / scale


def run(variants: list[str], quick: bool, rounds: int, threads: int | None, log: Any = None) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {v: {"variant": v, "label": LABELS[v], "round_ms": [], "first_s": [],
                                           "best": None, "error": None} for v in variants}
    with tempfile.TemporaryDirectory(prefix="ember_elementwise_block_") as tmp:
        for rnd in range(rounds):
            for v in variants:
                if rows[v]["error"] and not rows[v]["round_ms"]:
                    continue  # failed in round 1: do not retry
                if log:
                    log(f"  {v}" + (f" (round {rnd + 1}/{rounds})" if rounds > 1 else "") + " ...")
                dump = os.path.join(tmp, f"{v}.npz") if rnd == 0 else None
                res, err = _run_child(v, quick, threads, dump, tmp)
                row = rows[v]
                if res is None:
                    row["error"] = err
                    continue
                row["round_ms"].append(res["ms"])
                row["first_s"].append(res["first_s"])
                if row["best"] is None or res["ms"] < row["best"]["ms"]:
                    row["best"] = res
        # agreement: every variant's out and gradients against torch eager (else ember eager)
        ref_name = next((v for v in ("torch", "ember-eager") if v in variants
                         and os.path.exists(os.path.join(tmp, f"{v}.npz"))), None)
        if ref_name:
            ref = np.load(os.path.join(tmp, f"{ref_name}.npz"))
            for v in variants:
                path = os.path.join(tmp, f"{v}.npz")
                if os.path.exists(path):
                    got = np.load(path)
                    rows[v]["diff"] = {k: rel_diff(got[k], ref[k]) for k in ("out", "gx", "ga", "gb")}
        pairs = {}
        ej, ee = (os.path.join(tmp, f"{v}.npz") for v in ("ember-jit", "ember-eager"))
        if os.path.exists(ej) and os.path.exists(ee):
            g, r = np.load(ej), np.load(ee)
            pairs["ember-jit vs ember-eager"] = {k: rel_diff(g[k], r[k]) for k in ("out", "gx", "ga", "gb")}
    return {"shape": (QUICK if quick else FULL)["shape"], "rounds": rounds, "reference": ref_name,
            "rows": [rows[v] for v in variants], "pairs": pairs}


def format_table(result: dict[str, Any]) -> str:
    rows = {r["variant"]: r for r in result["rows"]}

    def ms(v: str) -> float | None:
        r = rows.get(v)
        return r["best"]["ms"] if r and r["best"] else None

    te, tc = ms("torch"), ms("torch-compile")
    ember_info = next((r["best"]["info"] for r in result["rows"] if r["best"] and r["variant"].startswith("ember")), {})
    torch_info = next((r["best"]["info"] for r in result["rows"] if r["best"] and r["variant"] == "torch"), {})
    shape = result["shape"]
    lines = [f"elementwise block fwd+bwd, x {tuple(shape)} float32 ({int(np.prod(shape)) * 4 / 2**20:.0f} MiB), "
             f"a, b ({shape[-1]},)   Ember {ember_info.get('version', 'n/a')} (BLAS threads "
             f"{ember_info.get('threads', 'n/a')})   torch {torch_info.get('version', 'n/a')} "
             f"(threads {torch_info.get('threads', 'n/a')})   {os.cpu_count()} CPUs", ""]
    w = 36
    header = (f"{'variant':<{w}} | {'ms/step':>9} | {'min ms':>9} | {'fwd ms':>8} | {'bwd ms':>8} | "
              f"{'/torch':>7} | {'/compile':>8} | {'1st call s':>10} | rounds' medians (ms)")
    lines += [header, "-" * len(header)]
    for r in result["rows"]:
        b = r["best"]
        if b is None:
            lines.append(f"{r['label']:<{w}} | {'n/a':>9} | {'':>9} | {'':>8} | {'':>8} | {'':>7} | {'':>8} | "
                         f"{'':>10} | failed: {r['error']}")
            continue
        firsts = "/".join(f"{s:.1f}" for s in r["first_s"])
        lines.append(f"{r['label']:<{w}} | {b['ms']:9.1f} | {b['min_ms']:9.1f} | {fmt(b.get('fwd_ms'), '8.1f'):>8} | "
                     f"{fmt(b.get('bwd_ms'), '8.1f'):>8} | {fmt(b['ms'] / te if te else None, '7.2f'):>7} | "
                     f"{fmt(b['ms'] / tc if tc else None, '8.2f'):>8} | {firsts:>10} | "
                     + ", ".join(f"{m:.1f}" for m in r["round_ms"]))
    lines.append("-" * len(header))
    ej = ms("ember-jit")
    lines.append(f"ember.jit / torch eager    = {fmt(ej / te if ej and te else None, '.2f')}")
    lines.append(f"ember.jit / torch.compile  = {fmt(ej / tc if ej and tc else None, '.2f')}"
                 + (f"   (torch.compile n/a: {rows['torch-compile']['error']})"
                    if 'torch-compile' in rows and rows['torch-compile']['error'] and tc is None else ""))
    for v, what in (("ember-jit", "ember.jit"), ("torch-compile", "torch.compile")):
        r = rows.get(v)
        if r and r["first_s"]:
            warm = ", ".join(f"{s:.2f}" for s in r["first_s"][1:])
            lines.append(f"{what} first call (trace/compile + one run): cold cache {r['first_s'][0]:.2f} s"
                         + (f"; warm cache {warm} s" if warm else ""))
    if result["reference"]:
        lines += ["", f"agreement: max|got - ref| / max|ref| against {result['reference']} "
                      "(out, d/dx, d/da, d/db; last step of round 1)"]
        for r in result["rows"]:
            d = r.get("diff")
            if d:
                lines.append(f"  {r['label']:<{w}} out {d['out']:.1e}  gx {d['gx']:.1e}  ga {d['ga']:.1e}  "
                             f"gb {d['gb']:.1e}")
        for name, d in result["pairs"].items():
            lines.append(f"  {name:<{w}} out {d['out']:.1e}  gx {d['gx']:.1e}  ga {d['ga']:.1e}  gb {d['gb']:.1e}")
    lines += ["", f"ms/step = median over the timed steps (best of {result['rounds']} round(s); each variant in its "
              "own child process, taking turns);",
              "fwd/bwd = medians of the forward and the .backward() parts (not for ember.jit: one compiled step);",
              "1st call = the first step of each round (round 1 with empty ember/inductor caches). Lower is better."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="x of shape (8, 512, 512), 3 steps, 1 round")
    p.add_argument("--rounds", type=int, default=None, metavar="N",
                   help="rounds per variant (default 2, 1 with --quick)")
    p.add_argument("--no-torch", action="store_true", help="Ember rows only")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--threads", type=int, metavar="N", help="NumPy's BLAS threads and torch's intra-op threads")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--dump", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.worker, args.quick, args.threads, args.dump)))
        return 0
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 2)
    if rounds < 1:
        p.error(f"--rounds must be at least 1, got {rounds}")
    variants = list(VARIANTS)
    if args.no_torch or importlib.util.find_spec("torch") is None:
        variants = [v for v in variants if not v.startswith("torch")]
    elif args.no_compile:
        variants.remove("torch-compile")
    print("elementwise_block" + (" (--quick)" if args.quick else ""), flush=True)
    result = run(variants, args.quick, rounds, args.threads, log=lambda s: print(s, flush=True))
    print(format_table(result))
    if args.json:
        write_json(result, args.json)
    return 0 if all(r["best"] is not None for r in result["rows"] if r["variant"].startswith("ember")) else 1


if __name__ == "__main__":
    raise SystemExit(main())
