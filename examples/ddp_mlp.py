"""Data-parallel training of a small MLP classifier on synthetic data with ``DistributedDataParallel``.

Every rank builds the same dataset, reads its own shard through ``DistributedSampler``, and trains a
replica of the model; gradients are averaged across ranks during ``backward``. Rank 0 prints the
global (all-reduced) loss and accuracy per epoch. With one process it is plain training.

    ember run -n 2 examples/ddp_mlp.py
    ember run -n 4 examples/ddp_mlp.py --epochs 8 --batch-size 16
    python examples/ddp_mlp.py                 # a single process
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

import ember.distributed as dist
from ember import nn
from ember.data import DataLoader, DistributedSampler, TensorDataset


def make_blobs(n: int, classes: int, dim: int, seed: int) -> TensorDataset:
    """``n`` points around ``classes`` random centres in ``dim`` dimensions (the same on every rank)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim)) * 0.6
    y = rng.integers(0, classes, n)
    x = centres[y] + rng.standard_normal((n, dim))
    return TensorDataset(ember.tensor(x, dtype="float32"), ember.tensor(y, dtype="int64"))


def main(epochs: int = 5, batch_size: int = 32, lr: float = 0.05, n: int = 4096, seed: int = 0,
         verbose: bool = True) -> dict[str, Any]:
    comm = dist.init()
    data = make_blobs(n, classes=4, dim=16, seed=seed)
    sampler = DistributedSampler(data, shuffle=True, seed=seed)
    loader = DataLoader(data, batch_size=batch_size, sampler=sampler)

    ember.manual_seed(seed + comm.rank)  # replicas may start apart: DDP broadcasts rank 0's parameters
    model = dist.DistributedDataParallel(nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4)))
    opt = ember.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    history = []
    start = time.perf_counter()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        totals = np.zeros(3)  # loss sum, correct, count: summed over ranks at the end of the epoch
        for x, y in loader:
            out = model(x)
            loss = loss_fn(out, y)
            opt.zero_grad()
            loss.backward()   # gradients are averaged across ranks before this returns
            opt.step()
            totals += [float(loss) * len(y), float((out.argmax(1) == y).sum()), len(y)]
        totals = comm.allreduce(ember.tensor(totals)).numpy()
        history.append((totals[0] / totals[2], totals[1] / totals[2]))
        if verbose and comm.rank == 0:
            print(f"epoch {epoch + 1}/{epochs}: loss {history[-1][0]:.4f}, accuracy {100 * history[-1][1]:.1f}% "
                  f"({comm.size} rank{'s' if comm.size > 1 else ''}, {time.perf_counter() - start:.1f} s)")
    return {"loss": history[-1][0], "accuracy": history[-1][1], "history": history, "world_size": comm.size}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32, help="per-rank batch size")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--n", type=int, default=4096, help="dataset size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, n=args.n, seed=args.seed)
