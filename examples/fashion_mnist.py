"""Classify Fashion-MNIST clothing images with an MLP or a small CNN, using ``ember.nn`` and ``ember.optim``.

The data comes from ``ember.data.datasets.FashionMNIST``: the full 60000/10000 set when it is
installed (Debian's ``dataset-fashion-mnist``, or ``--root`` a folder holding the IDX files), else the
6000/1000 subset bundled with Ember. Prints the training loss and the test accuracy after every epoch.

    python examples/fashion_mnist.py                      # MLP, 5 epochs (under a minute on 2 cores)
    python examples/fashion_mnist.py --model cnn          # CNN, 2 epochs (a minute or two)
    python examples/fashion_mnist.py --model cnn --epochs 1 --train-size 10000   # a quicker look
"""

from __future__ import annotations

import argparse
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
from ember.data import DataLoader, TensorDataset
from ember.data.datasets import FashionMNIST


class Flatten(nn.Module):
    """``(N, C, H, W) -> (N, C*H*W)``."""

    def forward(self, x: ember.Tensor) -> ember.Tensor:
        return x.reshape(x.shape[0], -1)


def build_model(kind: str, hidden: int = 256, channels: tuple[int, int] = (32, 64)) -> nn.Module:
    """``"mlp"``: 784-hidden-hidden-10 with ReLU; ``"cnn"``: two conv(3x3, same padding)+ReLU+maxpool2 blocks,
    then fc(hidden)-ReLU-fc(10)."""
    if kind == "mlp":
        return nn.Sequential(Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                             nn.Linear(hidden, 10))
    if kind == "cnn":
        c1, c2 = channels
        return nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),      # 28 -> 14
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),     # 14 -> 7
            Flatten(), nn.Linear(c2 * 7 * 7, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    raise ValueError(f"fashion_mnist: model must be 'mlp' or 'cnn', got {kind!r}")


def _subset(x: np.ndarray, y: np.ndarray, n: int | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random subset of ``n`` samples (all of them when ``n`` is None/0 or too large)."""
    if not n or n >= len(y):
        return x, y
    keep = np.sort(rng.choice(len(y), size=n, replace=False))
    return x[keep], y[keep]


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 1000) -> tuple[float, float]:
    """``(mean cross-entropy, accuracy)`` of ``model`` on arrays ``x``, ``y``."""
    model.eval()
    total_loss, correct = 0.0, 0
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    with ember.no_grad():
        for i in range(0, len(y), batch_size):
            xb, yb = ember.from_numpy(x[i:i + batch_size]), ember.from_numpy(y[i:i + batch_size])
            logits = model(xb)
            total_loss += loss_fn(logits, yb).item()
            correct += int((logits.argmax(dim=1) == yb).sum().item())
    model.train()
    return total_loss / len(y), correct / len(y)


def main(model: str = "mlp", epochs: int | None = None, batch_size: int = 128, lr: float = 1e-3,
         hidden: int | None = None, channels: tuple[int, int] = (32, 64), train_size: int | None = None,
         test_size: int | None = None, root: str | None = None, seed: int = 0, verbose: bool = True) -> dict[str, Any]:
    """Train ``model`` ("mlp" or "cnn") with Adam and return ``{"test_accuracy", "test_loss", "accuracies",
    "losses", "train_loss", "source", "train_size", "test_size", "seconds"}`` (per-epoch lists).

    ``epochs`` defaults to 5 for the MLP and 2 for the CNN, ``hidden`` to 256 and 128.
    ``train_size``/``test_size``: use a random subset of that many images (None or 0: all of them).
    """
    epochs = epochs if epochs is not None else (2 if model == "cnn" else 5)
    hidden = hidden if hidden is not None else (128 if model == "cnn" else 256)
    if model not in ("mlp", "cnn"):
        raise ValueError(f"fashion_mnist: model must be 'mlp' or 'cnn', got {model!r}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"fashion_mnist: epochs and batch_size must be at least 1, got {epochs}, {batch_size}")
    log = print if verbose else (lambda *a, **k: None)
    ember.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train, test = FashionMNIST(root=root, train=True), FashionMNIST(root=root, train=False)
    x_train, y_train = _subset(*train.arrays(), train_size, rng)
    x_test, y_test = _subset(*test.arrays(), test_size, rng)
    net = build_model(model, hidden, channels)
    n_params = sum(p.numel() for p in net.parameters())
    opt = optim.Adam(net.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=batch_size, shuffle=True, seed=seed)
    log(f"fashion_mnist: {model.upper()} ({n_params:,} parameters), {len(y_train)} training / {len(y_test)} test "
        f"images from {train.source}, batch {batch_size}, Adam lr={lr}, {epochs} epoch(s)")

    _, chance_acc = evaluate(net, x_test, y_test)
    log(f"  before training: test accuracy {chance_acc:.1%}")
    losses: list[float] = []
    accuracies: list[float] = []
    test_losses: list[float] = []
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        t0, total, count = time.perf_counter(), 0.0, 0
        for step, (xb, yb) in enumerate(loader):
            opt.zero_grad()
            loss = loss_fn(net(xb), yb)
            loss.backward()
            opt.step()
            total += loss.item() * len(yb)
            count += len(yb)
            if verbose and step % max(1, len(loader) // 4) == 0:
                log(f"    epoch {epoch} batch {step:4d}/{len(loader)}  loss {loss.item():.4f}")
        train_loss = total / count
        test_loss, acc = evaluate(net, x_test, y_test)
        losses.append(train_loss)
        accuracies.append(acc)
        test_losses.append(test_loss)
        log(f"  epoch {epoch}: train loss {train_loss:.4f}, test loss {test_loss:.4f}, test accuracy {acc:.1%} "
            f"({time.perf_counter() - t0:.1f} s)")
    seconds = time.perf_counter() - start
    log(f"fashion_mnist: final test accuracy {accuracies[-1]:.1%} in {seconds:.1f} s")
    return {"test_accuracy": accuracies[-1], "test_loss": test_losses[-1], "accuracies": accuracies,
            "test_losses": test_losses, "losses": losses, "initial_accuracy": chance_acc,
            "train_loss": losses[-1], "source": train.source, "train_size": len(y_train),
            "test_size": len(y_test), "parameters": n_params, "seconds": seconds}


def _cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fashion_mnist", description="Train an MLP or a CNN on Fashion-MNIST with Ember.")
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    p.add_argument("--epochs", type=int, default=None, help="default: 5 for the MLP, 2 for the CNN")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, default=None, help="hidden width (default: 256 for the MLP, 128 for the CNN)")
    p.add_argument("--train-size", type=int, default=0, help="train on a random subset of this many images (0: all)")
    p.add_argument("--test-size", type=int, default=0, help="evaluate on this many test images (0: all)")
    p.add_argument("--root", help="a folder holding the Fashion-MNIST IDX files (default: found automatically)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if (args.epochs is not None and args.epochs < 1) or (args.hidden is not None and args.hidden < 1) \
            or args.batch_size < 1 or args.train_size < 0 or args.test_size < 0 or not args.lr > 0:
        p.error("--epochs, --batch-size and --hidden must be positive, sizes non-negative and --lr > 0")
    main(model=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, hidden=args.hidden,
         train_size=args.train_size, test_size=args.test_size, root=args.root, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli())
