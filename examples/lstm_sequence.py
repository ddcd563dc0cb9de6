"""An LSTM that learns to predict the next value of noisy sine waves, with ``ember.nn.LSTM``.

Each sequence is a sine wave with a random frequency, phase and amplitude plus Gaussian noise. At every
time step the model (an LSTM followed by a linear read-out) predicts the next value; the loss is the
mean squared error over all steps. It is compared with two baselines on held-out sequences: predicting
zero, and repeating the current value (persistence). Beating persistence means the model has learned
the frequency of each wave from its history. The noise sets a floor: its variance.

    python examples/lstm_sequence.py                  # under a minute on 2 cores
    python examples/lstm_sequence.py --steps 3000 --hidden 128 --layers 2
"""

from __future__ import annotations

import argparse
import math
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


def make_waves(n: int, length: int, rng: np.random.Generator, noise: float = 0.1) -> np.ndarray:
    """``n`` noisy sine waves of ``length + 1`` samples, float32 of shape ``(n, length + 1, 1)``."""
    t = np.arange(length + 1, dtype=np.float64)
    freq = rng.uniform(0.05, 0.25, size=(n, 1))          # radians per step: periods of 25 to 125 steps
    phase = rng.uniform(0, 2 * math.pi, size=(n, 1))
    amp = rng.uniform(0.5, 1.5, size=(n, 1))
    waves = amp * np.sin(freq * t + phase) + noise * rng.standard_normal((n, length + 1))
    return waves.astype(np.float32)[..., None]


class NextValue(nn.Module):
    """LSTM over the sequence, then a linear layer mapping each hidden state to the predicted next value."""

    def __init__(self, hidden: int, num_layers: int = 1) -> None:
        super().__init__()
        self.lstm = nn.LSTM(1, hidden, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: ember.Tensor) -> ember.Tensor:
        h, _ = self.lstm(x)          # (batch, time, hidden)
        return self.head(h)          # (batch, time, 1)


def main(steps: int = 1000, batch_size: int = 32, length: int = 50, hidden: int = 64, num_layers: int = 1,
         lr: float = 1e-2, noise: float = 0.1, test_size: int = 256, seed: int = 0, print_every: int | None = None,
         verbose: bool = True) -> dict[str, Any]:
    """Train and return ``{"initial_loss", "loss", "losses", "test_mse", "zero_mse", "persistence_mse",
    "noise_mse", "seconds"}`` (the test MSEs are over the last half of each held-out sequence, where the
    model has seen enough history)."""
    if steps < 1 or batch_size < 1 or length < 2 or hidden < 1:
        raise ValueError(f"lstm_sequence: steps, batch_size, hidden must be positive and length >= 2, got {steps}, "
                         f"{batch_size}, {hidden}, {length}")
    log = print if verbose else (lambda *a, **k: None)
    ember.manual_seed(seed)
    rng = np.random.default_rng(seed)
    test = make_waves(test_size, length, np.random.default_rng(seed + 10_000), noise)
    model = NextValue(hidden, num_layers)
    opt = optim.Adam(model.parameters(), lr=lr)
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr / 20)
    loss_fn = nn.MSELoss()
    print_every = print_every or max(1, steps // 10)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"lstm_sequence: next value of noisy sine waves (length {length}, noise std {noise}); LSTM {hidden} hidden "
        f"x {num_layers} layer(s) ({n_params:,} parameters), batch {batch_size}, Adam lr={lr}, {steps} steps")

    losses: list[float] = []
    start = time.perf_counter()
    for step in range(steps):
        w = make_waves(batch_size, length, rng, noise)   # fresh data every step: no overfitting to worry about
        x, y = ember.from_numpy(w[:, :-1]), ember.from_numpy(w[:, 1:])
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % print_every == 0 or step == steps - 1:
            losses.append(loss.item())
            log(f"  step {step:5d}  loss {losses[-1]:.4f}")
    seconds = time.perf_counter() - start

    model.eval()
    with ember.no_grad():
        pred = model(ember.from_numpy(test[:, :-1])).numpy()
    half = slice(length // 2, None)            # judge the second half: the model has seen enough of the wave
    target = test[:, 1:][:, half]
    test_mse = float(np.mean((pred[:, half] - target) ** 2))
    zero_mse = float(np.mean(target ** 2))
    persistence_mse = float(np.mean((test[:, :-1][:, half] - target) ** 2))
    log(f"lstm_sequence: held-out MSE {test_mse:.4f}  (predict zero {zero_mse:.4f}, repeat the last value "
        f"{persistence_mse:.4f}, noise floor {noise ** 2:.4f}); {seconds:.1f} s, {1e3 * seconds / steps:.0f} ms/step")
    return {"initial_loss": losses[0], "loss": losses[-1], "losses": losses, "test_mse": test_mse,
            "zero_mse": zero_mse, "persistence_mse": persistence_mse, "noise_mse": noise ** 2,
            "parameters": n_params, "seconds": seconds}


def _cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lstm_sequence", description="Train an LSTM on noisy sine waves with Ember.")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--length", type=int, default=50)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--noise", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if min(args.steps, args.batch_size, args.hidden, args.layers) < 1 or args.length < 2:
        p.error("--steps, --batch-size, --hidden and --layers must be positive, --length at least 2")
    if not args.lr > 0 or args.noise < 0:
        p.error("--lr must be positive and --noise non-negative")
    main(steps=args.steps, batch_size=args.batch_size, length=args.length, hidden=args.hidden,
         num_layers=args.layers, lr=args.lr, noise=args.noise, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli())
