"""Train a character-level GPT-style transformer language model on a text file, then sample from it.

The model is ``ember.nn.GPT`` (token and position embeddings, pre-norm transformer blocks with causal
self-attention, a final LayerNorm and a linear head) trained with AdamW on windows of ``block_size``
characters drawn from ``ember.data.datasets.CharDataset``. The last 10% of the text is held out: its
loss is printed beside the training loss. At the end it generates text from a prompt.

    python examples/char_gpt.py                             # examples/data/tiny_corpus.txt (1-2 minutes on 2 cores)
    python examples/char_gpt.py --text my.txt --steps 3000  # any UTF-8 text file
    python examples/char_gpt.py --sample-len 500 --prompt "The "
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

try:
    import ember
except ImportError:  # running from a source checkout without installing Ember
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import ember

import ember.nn as nn
import ember.optim as optim
from ember.data import DataLoader, Subset
from ember.data.datasets import CharDataset

DEFAULT_TEXT = Path(__file__).resolve().parent / "data" / "tiny_corpus.txt"


def _gpt_class() -> Any:
    gpt = getattr(nn, "GPT", None)
    if gpt is None:
        from ember.nn.transformer import GPT as gpt
    return gpt


def evaluate(model: nn.Module, data: Subset, batch_size: int, batches: int, seed: int) -> float:
    """Mean loss over ``batches`` random batches of ``data`` (no gradients, dropout off)."""
    if len(data) == 0:
        return float("nan")
    model.eval()
    rng = np.random.default_rng(seed)
    total = 0.0
    with ember.no_grad():
        for _ in range(batches):
            idx = rng.integers(0, len(data), size=batch_size)
            x, y = data.dataset.__getitems__([data.indices[i] for i in idx])
            total += model(x, y)[1].item()
    model.train()
    return total / batches


def main(text: str | os.PathLike | None = None, steps: int = 600, batch_size: int = 16, block_size: int = 64,
         d_model: int = 128, n_layer: int = 3, n_head: int = 4, dropout: float = 0.1, lr: float = 3e-3,
         sample_len: int = 300, prompt: str = "The ", temperature: float = 0.8, seed: int = 0,
         print_every: int | None = None, verbose: bool = True) -> dict[str, Any]:
    """Train and sample; returns ``{"initial_loss", "loss", "val_loss", "losses", "sample", "generated",
    "vocab", "parameters", "seconds"}``. ``generated`` is the ``sample_len`` new characters (``sample`` is the
    prompt followed by them); ``losses`` the training loss at step 0, every ``print_every`` steps and the last.
    """
    if steps < 1 or batch_size < 1 or block_size < 1 or sample_len < 0:
        raise ValueError(f"char_gpt: steps, batch_size and block_size must be positive and sample_len >= 0, got "
                         f"{steps}, {batch_size}, {block_size}, {sample_len}")
    log = print if verbose else (lambda *a, **k: None)
    ember.manual_seed(seed)
    path = Path(text) if text is not None else DEFAULT_TEXT
    ds = CharDataset(path, block_size)
    split = int(len(ds.ids) * 0.9)  # train windows end before the split, validation windows start after it
    train = Subset(ds, range(0, max(1, split - block_size)))
    val = Subset(ds, range(split, len(ds)))
    model = _gpt_class()(vocab_size=ds.vocab_size, block_size=block_size, d_model=d_model, n_layer=n_layer,
                         n_head=n_head, dropout=dropout)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for name, p in model.named_parameters() if p.ndim >= 2]     # no weight decay on biases, norms
    no_decay = [p for name, p in model.named_parameters() if p.ndim < 2]
    opt = optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                      lr=lr, betas=(0.9, 0.99))
    warmup = max(1, min(100, steps // 10))
    sched = optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=len(train) >= batch_size, seed=seed)
    print_every = print_every or max(1, steps // 10)
    log(f"char_gpt: {path.name}: {len(ds.ids):,} characters, vocabulary {ds.vocab_size}; GPT {n_layer} layers, "
        f"d_model {d_model}, {n_head} heads, block {block_size} ({n_params:,} parameters); batch {batch_size}, "
        f"AdamW lr={lr}, {steps} steps")

    losses: list[float] = []
    start = time.perf_counter()
    step, loss_value = 0, float("nan")
    while step < steps:
        for x, y in loader:
            opt.zero_grad()
            _, loss = model(x, y)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            loss_value = loss.item()
            if step % print_every == 0 or step == steps - 1:
                losses.append(loss_value)
                elapsed = time.perf_counter() - start
                log(f"  step {step:5d}  loss {loss_value:.4f}  ({1e3 * elapsed / (step + 1):.0f} ms/step)")
            step += 1
            if step >= steps:
                break
    seconds = time.perf_counter() - start
    train_loss = evaluate(model, train, batch_size, 4, seed + 1)
    val_loss = evaluate(model, val, batch_size, 4, seed + 2)
    log(f"char_gpt: train loss {train_loss:.4f}, held-out loss {val_loss:.4f} ({seconds:.1f} s, "
        f"{1e3 * seconds / steps:.0f} ms/step)")

    prompt_ids = ds.encode("".join(c for c in prompt if c in ds.stoi) or ds.itos[0])
    model.eval()
    with ember.no_grad():
        out = model.generate(ember.tensor([prompt_ids], dtype=ember.int64), sample_len, temperature=temperature)
    ids = out[0].tolist()
    generated = ds.decode(ids[len(prompt_ids):])
    sample = ds.decode(ids)
    log(f"char_gpt: sample ({sample_len} characters, temperature {temperature}):\n{sample}")
    return {"initial_loss": losses[0], "loss": train_loss, "last_batch_loss": loss_value, "val_loss": val_loss,
            "losses": losses, "sample": sample, "generated": generated, "vocab": sorted(ds.stoi),
            "parameters": n_params, "seconds": seconds}


def _cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="char_gpt", description="Train a character-level GPT on a text file with Ember.")
    p.add_argument("--text", help="a UTF-8 text file (default: examples/data/tiny_corpus.txt)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--sample-len", type=int, default=300)
    p.add_argument("--prompt", default="The ")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if min(args.steps, args.batch_size, args.block_size, args.d_model, args.layers, args.heads) < 1:
        p.error("--steps, --batch-size, --block-size, --d-model, --layers and --heads must be positive")
    if args.d_model % args.heads:
        p.error(f"--d-model ({args.d_model}) must be divisible by --heads ({args.heads})")
    if not args.lr > 0 or not args.temperature > 0 or not 0 <= args.dropout < 1 or args.sample_len < 0:
        p.error("--lr and --temperature must be positive, --dropout in [0, 1), --sample-len >= 0")
    main(text=args.text, steps=args.steps, batch_size=args.batch_size, block_size=args.block_size,
         d_model=args.d_model, n_layer=args.layers, n_head=args.heads, dropout=args.dropout, lr=args.lr,
         sample_len=args.sample_len, prompt=args.prompt, temperature=args.temperature, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli())
