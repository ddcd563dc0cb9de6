"""Train a tiny two-layer MLP on two interleaved spirals, using only Ember's core tensor API.

There is no ``ember.nn`` or ``ember.optim`` yet, so this is the whole training loop written out:
parameters are plain tensors with ``requires_grad=True``, the loss is a log-softmax cross-entropy
picked out with ``gather``, and the SGD update runs under ``ember.no_grad()``.

    python examples/demo_mlp.py            # or: ember demo
    python examples/demo_mlp.py --steps 2000 --hidden 128
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from pathlib import Path
from typing import Any

try:
    import ember
except ImportError:  # running from a source checkout without installing Ember
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import ember


def make_spirals(n: int, generator: ember.Generator, noise: float = 0.08, turns: float = 1.25) -> tuple:
    """``n`` points in 2-D on two interleaved spiral arms; labels 0/1 say which arm.

    Returns ``(x, y)``: ``x`` float32 of shape (n, 2), ``y`` int64 of shape (n,).
    """
    y = ember.randint(0, 2, (n,), generator=generator)
    t = ember.rand(n, generator=generator)                       # position along the arm, 0..1
    angle = t * (2 * math.pi * turns) + y.float() * math.pi        # arm 1 is arm 0 rotated by 180 degrees
    radius = t * 0.9 + 0.1
    # (n,) -> (n, 2) without concatenation: broadcast each coordinate against a unit row vector.
    ex = ember.tensor([[1.0, 0.0]])
    ey = ember.tensor([[0.0, 1.0]])
    x = (radius * angle.cos()).reshape(n, 1) * ex + (radius * angle.sin()).reshape(n, 1) * ey
    x = x + ember.randn(n, 2, generator=generator) * noise
    return x, y


def init_params(sizes: list[int], generator: ember.Generator) -> list[ember.Tensor]:
    """He-initialised weights and zero biases for a chain of dense layers: [W1, b1, W2, b2, ...]."""
    params = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        w = ember.randn(fan_in, fan_out, generator=generator) * math.sqrt(2.0 / fan_in)
        params.append(w.requires_grad_())
        params.append(ember.zeros(fan_out, requires_grad=True))
    return params


def forward(params: list[ember.Tensor], x: ember.Tensor) -> ember.Tensor:
    """Logits of the MLP: ReLU between the layers, none after the last one."""
    h = x
    for i in range(0, len(params), 2):
        h = h @ params[i] + params[i + 1]
        if i + 2 < len(params):
            h = h.relu()
    return h


def cross_entropy(logits: ember.Tensor, y: ember.Tensor) -> ember.Tensor:
    """Mean negative log-likelihood of the true class (``y`` holds class indices)."""
    logp = ember.log_softmax(logits, dim=1)
    return -logp.gather(1, y.reshape(-1, 1)).mean()


def accuracy(logits: ember.Tensor, y: ember.Tensor) -> float:
    return (logits.argmax(dim=1) == y).float().mean().item()


def main(steps: int = 600, seed: int = 0, n: int = 512, hidden: int = 64, lr: float = 0.3,
         print_every: int | None = None, verbose: bool = True) -> dict[str, Any]:
    """Train and return ``{"loss", "accuracy", "initial_loss", "losses", "seconds"}``.

    ``losses`` holds the loss at step 0 and every ``print_every`` steps (and at the last step).
    """
    if steps < 1:
        raise ValueError(f"demo_mlp: steps must be at least 1, got {steps}")
    gen = ember.Generator(seed=seed)
    x, y = make_spirals(n, gen)
    params = init_params([2, hidden, hidden, 2], gen)
    print_every = print_every or max(1, steps // 10)
    log = print if verbose else (lambda *a, **k: None)
    log(f"demo_mlp: {n} points on two spirals, MLP 2-{hidden}-{hidden}-2, SGD lr={lr}, {steps} steps")

    losses: list[float] = []
    start = time.perf_counter()
    loss_value = math.nan
    for step in range(steps):
        loss = cross_entropy(forward(params, x), y)
        loss.backward()
        with ember.no_grad():
            for p in params:
                p.sub_(lr * p.grad)
                p.grad = None
        loss_value = loss.item()
        if step % print_every == 0 or step == steps - 1:
            losses.append(loss_value)
            log(f"  step {step:5d}  loss {loss_value:.4f}")
    seconds = time.perf_counter() - start

    with ember.no_grad():
        logits = forward(params, x)
        final_loss = cross_entropy(logits, y).item()
        acc = accuracy(logits, y)
    log(f"final loss {final_loss:.4f}, training accuracy {acc:.1%} ({seconds:.2f} s, "
        f"{1e3 * seconds / steps:.2f} ms/step)")
    return {"loss": final_loss, "accuracy": acc, "initial_loss": losses[0], "losses": losses, "seconds": seconds}


def _cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="demo_mlp", description="Train a tiny MLP on two spirals with Ember.")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--points", type=int, default=512)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.3)
    args = p.parse_args(argv)
    if args.steps < 1 or args.points < 2 or args.hidden < 1 or not args.lr > 0:
        p.error("--steps, --points and --hidden must be positive (--points at least 2) and --lr > 0")
    main(steps=args.steps, seed=args.seed, n=args.points, hidden=args.hidden, lr=args.lr)
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli())
