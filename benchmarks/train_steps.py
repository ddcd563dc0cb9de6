"""Training steps of the four standard workloads: Ember eager, Ember compiled (``ember.jit``) and PyTorch
eager, side by side.

A step is ``zero_grad``, forward, loss, ``backward`` and the optimizer's ``step``: the whole inner loop
of training. Each workload is built twice from the same description, once with ``ember.nn``/``ember.optim``
and once with ``torch.nn``/``torch.optim`` (same layers, batch, optimizer and data), and timed in its own
child process (Ember and PyTorch never share one: their thread pools spin-wait and slow each other down).

    mlp  MLP 784-1024-1024-10, batch 256, cross-entropy, SGD momentum 0.9      target: ember/torch <= 1.25x
    cnn  conv(1->32,3x3)-ReLU-maxpool2-conv(32->64,3x3)-ReLU-maxpool2-flatten-fc128-ReLU-fc10,
         batch 128 of 1x28x28, cross-entropy, Adam                              target: <= 2x
    gpt  GPT-style LM: vocab 2048, d_model 256, 4 heads, 4 pre-norm layers, seq 128, batch 16, AdamW
         (ember.nn.GPT: tied LM head, tanh GELU, GPT-2 init; torch: the same model built by hand from
         nn.Linear/LayerNorm/GELU and F.scaled_dot_product_attention(is_causal=True), same parameter count)
                                                                                target: <= 2x
    ctr  26 sparse fields, each an EmbeddingBag of 100k x 16 with sparse gradients (SparseAdam), 13 dense
         features, concat (429) -> MLP 429-512-256-1, BCEWithLogits, Adam for the MLP, batch 2048
                                                                                target: <= 2x
    mlp16  the MLP at batch 16, where per-op overhead matters                  target: <= 1.25x

Compiled Ember jits the whole step (``ember.jit``: forward, backward, optimizer) and replays it; for the
CTR model the sparse embedding lookups and SparseAdam stay eager (row-sparse gradients are not traced)
and the dense part is compiled, its input's gradient handed back to the eager embedding backward.

    python benchmarks/train_steps.py                    # all four, 2 rounds (about a minute and a half)
    python benchmarks/train_steps.py --only gpt         # one workload
    python benchmarks/train_steps.py --quick            # smaller sizes, few steps: a smoke test
    python benchmarks/train_steps.py --json out.json    # also write the numbers as JSON
    python benchmarks/train_steps.py --efficiency       # also: the compiled step's FLOP rate as % of BLAS GEMM
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
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
sys.path.insert(0, str(ROOT))  # run from a source checkout without installing Ember
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _harness, also when loaded by file path
from _harness import fmt, load_library, ratio_and_status, run_worker, write_json  # noqa: E402

WORKLOADS = ("mlp", "cnn", "gpt", "ctr", "mlp16")
TARGETS = {"mlp": 1.25, "cnn": 2.0, "gpt": 2.0, "ctr": 2.0, "mlp16": 1.25}
LIBRARIES = ("ember", "ember-jit", "torch")

FULL: dict[str, dict[str, Any]] = {
    "mlp": {"sizes": (784, 1024, 1024, 10), "batch": 256, "lr": 0.01, "warmup": 5, "steps": 30},
    "cnn": {"channels": (32, 64), "hidden": 128, "batch": 128, "lr": 1e-3, "warmup": 3, "steps": 20},
    "gpt": {"vocab": 2048, "d_model": 256, "n_head": 4, "n_layer": 4, "seq": 128, "batch": 16, "lr": 3e-4,
            "warmup": 2, "steps": 10},
    "ctr": {"fields": 26, "rows": 100_000, "dim": 16, "dense": 13, "hidden": (512, 256), "batch": 2048,
            "lr": 1e-3, "warmup": 3, "steps": 20},
    "mlp16": {"sizes": (784, 1024, 1024, 10), "batch": 16, "lr": 0.01, "warmup": 5, "steps": 50},
}
QUICK: dict[str, dict[str, Any]] = {  # smaller and few steps: a smoke test, not a measurement
    "mlp": {**FULL["mlp"], "batch": 64, "warmup": 1, "steps": 3},
    "cnn": {**FULL["cnn"], "batch": 16, "warmup": 1, "steps": 3},
    "gpt": {**FULL["gpt"], "vocab": 256, "d_model": 64, "n_layer": 2, "seq": 32, "batch": 4, "warmup": 1, "steps": 3},
    "ctr": {**FULL["ctr"], "rows": 1000, "batch": 256, "warmup": 1, "steps": 3},
    "mlp16": {**FULL["mlp16"], "warmup": 3, "steps": 3},
}
NO_TORCH = ("disabled by --no-torch", "not installed")  # why the torch column reads n/a
NUM_BATCHES = 4  # distinct batches, cycled through (the sparse rows touched differ from step to step)


def describe(name: str, c: dict[str, Any]) -> str:
    """The row label of a workload at the sizes ``c``."""
    if name in ("mlp", "mlp16"):
        return f"MLP {'-'.join(map(str, c['sizes']))} b{c['batch']} SGD"
    if name == "cnn":
        return f"CNN 2conv+2fc b{c['batch']} Adam"
    if name == "gpt":
        return f"GPT L{c['n_layer']} d{c['d_model']} T{c['seq']} b{c['batch']} AdamW"
    return f"CTR {c['fields']}x{c['rows'] // 1000}k emb b{c['batch']}"


# ---------------------------------------------------------------------------------------------- data

def make_batches(name: str, c: dict[str, Any], seed: int = 0) -> list[tuple[np.ndarray, ...]]:
    """``NUM_BATCHES`` batches of NumPy arrays, the same for both libraries."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(NUM_BATCHES):
        b = c["batch"]
        if name in ("mlp", "mlp16"):
            out.append((rng.standard_normal((b, c["sizes"][0]), dtype=np.float32), rng.integers(0, 10, b)))
        elif name == "cnn":
            out.append((rng.random((b, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, b)))
        elif name == "gpt":
            tokens = rng.integers(0, c["vocab"], (b, c["seq"] + 1))
            out.append((tokens[:, :-1].copy(), tokens[:, 1:].copy()))
        else:
            break
    if name == "ctr":  # Criteo-like ids (power-law popularity) and labels from a hidden model, shared by both
        from ember.data.datasets import SyntheticCTR
        ds = SyntheticCTR(NUM_BATCHES * c["batch"], num_fields=c["fields"], vocab_sizes=c["rows"],
                          num_dense=c["dense"], seed=seed)
        out = [(ds.sparse[i:i + c["batch"]], ds.dense[i:i + c["batch"]], ds.labels[i:i + c["batch"]])
               for i in range(0, len(ds), c["batch"])]
    return out


# ---------------------------------------------------------------------------------------------- models

def build_mlp(lib: Any, c: dict[str, Any]) -> tuple[Any, Any, Callable]:
    nn = lib.nn
    s = c["sizes"]
    layers: list[Any] = []
    for i in range(len(s) - 1):
        layers.append(nn.Linear(s[i], s[i + 1]))
        if i + 2 < len(s):
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    opt = lib.optim.SGD(model.parameters(), lr=c["lr"], momentum=0.9)
    return model, [opt], nn.CrossEntropyLoss()


def _flatten(lib: Any) -> Any:
    if hasattr(lib.nn, "Flatten"):
        return lib.nn.Flatten()

    class Flatten(lib.nn.Module):  # fallback when the library has no nn.Flatten
        def forward(self, x: Any) -> Any:
            return x.reshape(x.shape[0], -1)

    return Flatten()


def build_cnn(lib: Any, c: dict[str, Any]) -> tuple[Any, Any, Callable]:
    nn = lib.nn
    c1, c2 = c["channels"]
    side = ((28 - 2) // 2 - 2) // 2  # two valid 3x3 convs, each followed by a 2x2 max pool: 28 -> 13 -> 5
    model = nn.Sequential(
        nn.Conv2d(1, c1, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3), nn.ReLU(), nn.MaxPool2d(2),
        _flatten(lib), nn.Linear(c2 * side * side, c["hidden"]), nn.ReLU(), nn.Linear(c["hidden"], 10),
    )
    opt = lib.optim.Adam(model.parameters(), lr=c["lr"])
    return model, [opt], nn.CrossEntropyLoss()


def _torch_gpt(c: dict[str, Any]) -> Any:
    """A pre-norm GPT written with torch.nn pieces and F.scaled_dot_product_attention(is_causal=True)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    d, h = c["d_model"], c["n_head"]

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln_1 = nn.LayerNorm(d)
            self.qkv = nn.Linear(d, 3 * d)
            self.proj = nn.Linear(d, d)
            self.ln_2 = nn.LayerNorm(d)
            self.fc = nn.Linear(d, 4 * d)
            self.act = nn.GELU(approximate="tanh")  # GPT-2's GELU, as ember.nn.GPT uses
            self.fc_out = nn.Linear(4 * d, d)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, t, _ = x.shape
            q, k, v = self.qkv(self.ln_1(x)).split(d, dim=2)
            q, k, v = (z.view(b, t, h, d // h).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
            return x + self.fc_out(self.act(self.fc(self.ln_2(x))))

    class GPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok_emb = nn.Embedding(c["vocab"], d)
            self.pos_emb = nn.Embedding(c["seq"], d)
            self.blocks = nn.ModuleList(Block() for _ in range(c["n_layer"]))
            self.ln_f = nn.LayerNorm(d)
            self.head = nn.Linear(d, c["vocab"], bias=False)
            for m in self.modules():  # GPT-2's initialization, as ember.nn.GPT's
                if isinstance(m, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(m.weight, 0.0, 0.02)
                    if getattr(m, "bias", None) is not None:
                        nn.init.zeros_(m.bias)
            for block in self.blocks:
                nn.init.normal_(block.proj.weight, 0.0, 0.02 / math.sqrt(2 * c["n_layer"]))
                nn.init.normal_(block.fc_out.weight, 0.0, 0.02 / math.sqrt(2 * c["n_layer"]))
            self.head.weight = self.tok_emb.weight  # tied LM head, as ember.nn.GPT's default

        def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = self.tok_emb(idx) + self.pos_emb(torch.arange(idx.shape[1]))
            for block in self.blocks:
                x = block(x)
            logits = self.head(self.ln_f(x))
            return logits, F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))

    return GPT()


def build_gpt(lib: Any, c: dict[str, Any]) -> tuple[Any, Any, Callable | None]:
    if lib.__name__ == "torch":
        model = _torch_gpt(c)
    else:
        from ember.nn.transformer import GPT
        model = GPT(vocab_size=c["vocab"], block_size=c["seq"], d_model=c["d_model"], n_layer=c["n_layer"],
                    n_head=c["n_head"], dropout=0.0, tie_weights=True)
    opt = lib.optim.AdamW(model.parameters(), lr=c["lr"], weight_decay=0.01)
    return model, [opt], None  # the model returns (logits, loss)


def build_ctr(lib: Any, c: dict[str, Any]) -> tuple[Any, Any, Callable]:
    nn = lib.nn
    width = c["fields"] * c["dim"] + c["dense"]

    class CTR(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embeddings = nn.ModuleList(nn.EmbeddingBag(c["rows"], c["dim"], mode="sum", sparse=True)
                                            for _ in range(c["fields"]))
            sizes = (width, *c["hidden"], 1)
            layers: list[Any] = []
            for i in range(len(sizes) - 1):
                layers.append(nn.Linear(sizes[i], sizes[i + 1]))
                if i + 2 < len(sizes):
                    layers.append(nn.ReLU())
            self.mlp = nn.Sequential(*layers)

        def forward(self, ids: Any, dense: Any) -> Any:
            parts = [emb(ids[:, f:f + 1]) for f, emb in enumerate(self.embeddings)]  # (B, 1) bags of one id
            return self.mlp(lib.cat(parts + [dense], dim=1)).reshape(-1)

    model = CTR()
    sparse = lib.optim.SparseAdam(list(model.embeddings.parameters()), lr=c["lr"])
    dense_opt = lib.optim.Adam(model.mlp.parameters(), lr=c["lr"])
    return model, [sparse, dense_opt], nn.BCEWithLogitsLoss()


BUILDERS = {"mlp": build_mlp, "cnn": build_cnn, "gpt": build_gpt, "ctr": build_ctr, "mlp16": build_mlp}


def make_step(lib: Any, name: str, c: dict[str, Any], seed: int = 0,
              compiled: bool = False) -> tuple[Callable[[int], Any], int]:
    """``(step, parameter count)``; ``step(i)`` runs one training step on batch ``i % NUM_BATCHES``
    (with ``compiled``, through ``ember.jit``)."""
    lib.manual_seed(seed)
    model, opts, loss_fn = BUILDERS[name](lib, c)
    model.train()
    batches = [tuple(lib.from_numpy(a) for a in b) for b in make_batches(name, c, seed)]
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())

    def inner(*batch: Any) -> Any:
        for opt in opts:
            opt.zero_grad()
        if name == "gpt":
            _, loss = model(*batch)
        elif name == "ctr":
            loss = loss_fn(model(batch[0], batch[1]), batch[2])
        else:
            loss = loss_fn(model(batch[0]), batch[1])
        loss.backward()
        for opt in opts:
            opt.step()
        return loss

    if compiled and name == "ctr":
        return _compiled_ctr(lib, model, opts, loss_fn, batches), n_params
    if compiled:
        fn = lib.jit(lambda *batch: inner(*batch).detach(), name=f"{name}_step")
        return (lambda i: fn(*batches[i % NUM_BATCHES])), n_params
    return (lambda i: inner(*batches[i % NUM_BATCHES])), n_params


def _compiled_ctr(lib: Any, model: Any, opts: list, loss_fn: Callable, batches: list) -> Callable[[int], Any]:
    """The CTR step with its dense part compiled: sparse lookups and SparseAdam eager around it."""
    sparse_opt, dense_opt = opts

    def dense_part(feats: Any, labels: Any) -> Any:
        dense_opt.zero_grad()
        loss = loss_fn(model.mlp(feats).reshape(-1), labels)
        loss.backward()
        dense_opt.step()
        return loss.detach(), feats.grad

    fn = lib.jit(dense_part, name="ctr_dense_step")

    def step(i: int) -> Any:
        ids, dense, labels = batches[i % NUM_BATCHES]
        sparse_opt.zero_grad()
        parts = [emb(ids[:, f:f + 1]) for f, emb in enumerate(model.embeddings)]
        feats = lib.cat(parts + [dense], dim=1)
        loss, grad = fn(feats.detach().requires_grad_(), labels)
        feats.backward(grad)
        sparse_opt.step()
        return loss

    return step


# ---------------------------------------------------------------------------------------------- workers

def _worker(lib_name: str, name: str, quick: bool, threads: int | None) -> dict[str, Any]:
    """Time one workload in one library, in this process."""
    c = (QUICK if quick else FULL)[name]
    compiled = lib_name == "ember-jit"
    if lib_name.startswith("ember"):
        import ember.nn
        import ember.optim  # noqa: F401
    lib, info = load_library("ember" if compiled else lib_name, threads)
    start = time.perf_counter()
    step, n_params = make_step(lib, name, c, compiled=compiled)
    build_s = time.perf_counter() - start
    losses = []
    warmup = max(c["warmup"], 3) if compiled else c["warmup"]  # a compiled step replays from its third call
    for i in range(warmup):
        losses.append(float(step(i).item()))
    times = []
    enabled = gc.isenabled()
    gc.disable()  # as timeit does; collected between steps instead
    try:
        for i in range(warmup, warmup + c["steps"]):
            t0 = time.perf_counter()
            loss = step(i)
            times.append(time.perf_counter() - t0)
            losses.append(float(loss.item()))
            gc.collect(0)
    finally:
        if enabled:
            gc.enable()
    return {"info": info, "ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3,
            "steps": len(times), "warmup": warmup, "params": n_params, "build_s": build_s,
            "first_loss": losses[0], "last_loss": losses[-1]}


def _run_worker(lib_name: str, name: str, quick: bool, threads: int | None) -> tuple[dict | None, str | None]:
    """Run ``_worker`` in a child process; returns (result, None) or (None, why it failed)."""
    return run_worker(__file__, lib_name, ["--only", name], quick, threads)


# ---------------------------------------------------------------------------------------------- run

def run(names: list[str], quick: bool = False, use_torch: bool = True, threads: int | None = None,
        rounds: int = 1, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time every workload in ``names``: Ember then PyTorch, each in its own child process, ``rounds`` times
    in turn; each library's best round (lowest median) is reported."""
    torch_note = None
    if not use_torch:
        torch_note = NO_TORCH[0]
    elif importlib.util.find_spec("torch") is None:
        torch_note = NO_TORCH[1]
    meta: dict[str, Any] = {"python": platform.python_version(), "numpy": np.__version__, "cpus": os.cpu_count(),
                            "platform": platform.platform(), "quick": quick, "torch_note": torch_note,
                            "ember": None, "torch": None, "numpy_blas_threads": None, "torch_threads": None,
                            "blas": None, "rounds": rounds}
    rows = []
    for name in names:
        c = (QUICK if quick else FULL)[name]
        row: dict[str, Any] = {"workload": name, "label": describe(name, c), "target": TARGETS[name],
                               "config": {k: v for k, v in c.items() if k not in ("warmup", "steps")}}
        for rnd in range(rounds):
            for lib_name in LIBRARIES:
                if lib_name == "torch" and torch_note is not None:
                    row["torch"], row["torch_error"] = None, torch_note
                    continue
                if log:
                    log(f"  {name}: {lib_name}" + (f" (round {rnd + 1}/{rounds})" if rounds > 1 else "") + " ...")
                res, err = _run_worker(lib_name, name, quick, threads if lib_name != "torch" else
                                       threads or meta["numpy_blas_threads"] or os.cpu_count())
                if res is None:
                    row.setdefault(lib_name, None)
                    row[f"{lib_name}_error"] = err
                    continue
                res["round_ms"] = [*row[lib_name]["round_ms"], res["ms"]] if row.get(lib_name) else [res["ms"]]
                if not row.get(lib_name) or res["ms"] < row[lib_name]["ms"]:  # keep the best round
                    row[lib_name] = res
                else:
                    row[lib_name]["round_ms"] = res["round_ms"]
                row.setdefault(f"{lib_name}_error", None)
                meta[lib_name.replace("-jit", "")] = res["info"]["version"]
                if lib_name == "ember":
                    meta["numpy_blas_threads"], meta["blas"] = res["info"]["threads"], res["info"]["blas"]
                else:
                    meta["torch_threads"] = res["info"]["threads"]
        e, j, t = row.get("ember"), row.get("ember-jit"), row.get("torch")
        row["ember_ms"] = e["ms"] if e else None
        row["jit_ms"] = j["ms"] if j else None
        row["torch_ms"] = t["ms"] if t else None
        row["ratio"], row["status"] = ratio_and_status(row["ember_ms"], row["torch_ms"], row["target"])
        row["jit_ratio"], row["jit_status"] = ratio_and_status(row["jit_ms"], row["torch_ms"], 1.0)
        row["jit_vs_eager"] = row["jit_ms"] / row["ember_ms"] if row["jit_ms"] and row["ember_ms"] else None
        rows.append(row)
    return {"meta": meta, "rows": rows}


# ---------------------------------------------------------------------------------------------- output

def format_table(result: dict[str, Any]) -> str:
    meta = result["meta"]
    blas = meta["blas"] or {}
    torch_text = meta["torch"] or f"n/a ({meta['torch_note'] or 'failed'})"
    lines = [
        f"Ember {meta['ember'] or 'n/a'} training steps (eager and compiled)   NumPy {meta['numpy']}   "
        f"PyTorch {torch_text}   "
        f"Python {meta['python']}   {meta['cpus']} CPUs",
        f"BLAS: {blas.get('name') or 'unknown'} {blas.get('version') or ''}   threads: NumPy BLAS "
        f"{fmt(meta['numpy_blas_threads'], 'd')}, torch {fmt(meta['torch_threads'], 'd')}"
        + ("   [--quick: smaller sizes, few steps]" if meta["quick"] else ""),
        "",
    ]
    w = 30
    header = (f"{'workload':<{w}} | {'ember ms/step':>13} | {'jit ms/step':>11} | {'torch ms/step':>13} | "
              f"{'ratio':>6} | {'target':>6} | {'pass/miss':>9} | {'jit/eager':>9} | {'jit/torch':>9}")
    rule = "-" * len(header)
    lines += [header, rule]
    notes = []
    for r in result["rows"]:
        ember_txt = fmt(r["ember_ms"], "13.2f") if r["ember_ms"] is not None else "failed"
        torch_txt = fmt(r["torch_ms"], "13.2f") if r["torch_ms"] is not None else (
            "n/a" if r.get("torch_error") in NO_TORCH else "failed")
        jit_txt = fmt(r.get("jit_ms"), "11.2f") if r.get("jit_ms") is not None else "failed"
        lines.append(f"{r['label']:<{w}} | {ember_txt:>13} | {jit_txt:>11} | {torch_txt:>13} | "
                     f"{fmt(r['ratio'], '6.2f'):>6} | {'<=' + format(r['target'], 'g') + 'x':>6} | {r['status']:>9} | "
                     f"{fmt(r.get('jit_vs_eager'), '9.2f'):>9} | {fmt(r.get('jit_ratio'), '9.2f'):>9}")
        e, t = r.get("ember"), r.get("torch")
        params = f"params ember {e['params']:,}" if e else "params ember n/a"
        params += f", torch {t['params']:,}" if t else ""
        loss = f"loss ember {e['first_loss']:.3f}->{e['last_loss']:.3f}" if e else ""
        loss += f", torch {t['first_loss']:.3f}->{t['last_loss']:.3f}" if t else ""
        notes.append(f"  {r['workload']}: {params}; {loss}".rstrip("; "))
        for lib_name in LIBRARIES:
            err = r.get(f"{lib_name}_error")
            if err and err not in NO_TORCH:
                notes.append(f"  {r['workload']}: {lib_name} failed: {err}")
    if meta["torch_note"]:
        notes.append(f"  torch: {meta['torch_note']}")
    lines += [rule, *notes, "",
              "ms/step = median over the timed steps of zero_grad + forward + loss + backward + optimizer step",
              f"(best of {meta['rounds']} round(s), each library in its own child process, taking turns);",
              "ratio = ember eager / torch (its target is eager's); jit/eager and jit/torch compare the compiled",
              "step (ember.jit, traced on the warm-up steps); lower is better; targets are reported, not asserted."]
    return "\n".join(lines)


EFFICIENCY_TARGETS = {"mlp": 0.90, "gpt": 0.75}  # the issue's: compiled step / the machine's BLAS GEMM rate


def gemm_rates(names: list[str], quick: bool, threads: int | None) -> dict[str, Any]:
    """NumPy's BLAS GEMM rates in GFLOP/s, measured in a child process by ``gemm_rate.py``: ``peak`` (the large
    square product) and, without ``quick``, the mix of the MLP's and the GPT's own GEMM shapes."""
    import subprocess

    import gemm_rate
    groups = ["peak"] + ([] if quick else  # the shapes' rates are for the full sizes
                         [g for g in ("mlp", "gpt") if g in names or (g == "mlp" and "mlp16" in names)])
    cmd = [sys.executable, str(Path(gemm_rate.__file__).resolve()), "--json", "-"]
    cmd += [arg for g in groups for arg in ("--only", g)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["gemm_rate failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])["mix_gflops"]


def efficiency(result: dict[str, Any], measured: list[dict[str, Any]]) -> dict[str, Any]:
    """The compiled (jit) step's model FLOP rate against NumPy's BLAS GEMM rate (``measured``: the
    ``gemm_rates`` taken before and after the workloads; the higher of each is used, as a busy moment of a
    shared machine only lowers a rate); model FLOPs per step are ``gemm_rate.model_flops``: MLP 6 x matmul
    params x batch, GPT 6 x matmul params x tokens + 12 x n_layer x seq^2 x d_model x batch."""
    import gemm_rate
    ok = [m for m in measured if "error" not in m]
    if not ok:
        return {"error": measured[0]["error"]}
    rates = {g: max(m[g] for m in ok) for g in ok[0]}
    out: dict[str, Any] = {"peak_gflops": rates["peak"], "peak_size": gemm_rate.PEAK_SIZE,
                           "peak_each": [m["peak"] for m in ok], "mix_gflops": rates, "rows": []}
    for r in result["rows"]:
        f = gemm_rate.model_flops(r["workload"], r["config"])
        if f is None:
            continue
        mix = rates.get("mlp" if r["workload"] == "mlp16" else r["workload"])
        rate = f / (r["jit_ms"] / 1e3) / 1e9 if r.get("jit_ms") else None
        target = EFFICIENCY_TARGETS.get(r["workload"])
        pct = rate / rates["peak"] if rate is not None else None
        status = "n/a" if pct is None or target is None else ("PASS" if pct >= target else "MISS")
        out["rows"].append({"workload": r["workload"], "label": r["label"], "gflop_per_step": f / 1e9,
                            "jit_gflops": rate, "of_peak": pct,
                            "of_mix": rate / mix if rate is not None and mix and r["workload"] != "mlp16" else None,
                            "target": target, "status": status})
    return out


def format_efficiency(eff: dict[str, Any]) -> str:
    if "error" in eff:
        return f"efficiency: n/a ({eff['error']})"
    mixes = ", ".join(f"{g} shapes {v:.1f}" for g, v in eff["mix_gflops"].items() if g != "peak")
    each = " and ".join(f"{v:.1f}" for v in eff["peak_each"])
    lines = [f"efficiency of the compiled step: NumPy BLAS GEMM rate {eff['peak_gflops']:.1f} GFLOP/s "
             f"(float32 {eff['peak_size']}^3; before and after the workloads: {each})"
             + (f"; at the workloads' own GEMM shapes: {mixes}" if mixes else "")]
    for r in eff["rows"]:
        tgt = f">= {r['target']:.0%}" if r["target"] is not None else "-"
        lines.append(f"  {r['label']:<30} {r['gflop_per_step']:7.2f} GFLOP/step  jit {fmt(r['jit_gflops'], '7.1f')} "
                     f"GFLOP/s = {fmt(r['of_peak'] and 100 * r['of_peak'], '5.1f')}% of BLAS GEMM rate "
                     f"(target {tgt}: {r['status']})"
                     + (f"; {100 * r['of_mix']:.0f}% of its own shapes' rate" if r["of_mix"] is not None else ""))
    lines.append("  model FLOPs: MLP 6 x matmul params x batch; GPT 6 x matmul params (qkv, proj, fc, fc_out, head) x "
                 "tokens + 12 x n_layer x seq^2 x d_model x batch")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Ember vs PyTorch eager: training steps of four standard workloads.")
    p.add_argument("--quick", action="store_true", help="smaller sizes and few steps (a smoke test, not a measurement)")
    p.add_argument("--only", choices=WORKLOADS, action="append", metavar="NAME",
                   help=f"run only this workload (one of {', '.join(WORKLOADS)}; may repeat)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch even if it is installed")
    p.add_argument("--rounds", type=int, default=None, metavar="N",
                   help="run each library N times per workload, in turn, and keep its best median (default: 2, "
                        "1 with --quick): a busy moment of a shared machine then hits one round, not the result")
    p.add_argument("--threads", type=int, metavar="N",
                   help="NumPy's BLAS threads and torch's intra-op threads (default: torch gets NumPy's count)")
    p.add_argument("--efficiency", action="store_true",
                   help="also measure NumPy's BLAS GEMM rate (gemm_rate.py, in a child) and print the compiled "
                        "step's model FLOP rate as a percentage of it")
    p.add_argument("--worker", choices=LIBRARIES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be at least 1, got {args.threads}")
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 2)
    if rounds < 1:
        p.error(f"--rounds must be at least 1, got {rounds}")
    names = [n for n in WORKLOADS if n in (args.only or WORKLOADS)]
    if args.worker:
        print(json.dumps(_worker(args.worker, names[0], args.quick, args.threads)))
        return 0
    print(f"train_steps: {', '.join(names)}" + (" (--quick)" if args.quick else ""), flush=True)
    measured = [gemm_rates(names, args.quick, args.threads)] if args.efficiency else []
    result = run(names, quick=args.quick, use_torch=not args.no_torch, threads=args.threads, rounds=rounds,
                 log=lambda s: print(s, flush=True))
    print(format_table(result))
    if args.efficiency:
        result["efficiency"] = efficiency(result, [*measured, gemm_rates(names, args.quick, args.threads)])
        print(format_efficiency(result["efficiency"]))
    if args.json:
        write_json(result, args.json)
    return 0 if all(r["ember_ms"] is not None for r in result["rows"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
