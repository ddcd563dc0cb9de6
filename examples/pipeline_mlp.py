"""Pipeline-parallel training of a deep MLP: one stage per MPI rank, microbatches flowing through them.

The MLP's hidden blocks are split evenly over the ranks (``ember.distributed.Pipeline``); every rank builds
the same model from one seed and keeps its stage. The data come from a fixed random "teacher" network, so
the loss must fall. With one process the whole model is a single stage (the baseline to time against).

    mpiexec -n 2 python examples/pipeline_mlp.py                 # or: ember run -n 2 examples/pipeline_mlp.py
    python examples/pipeline_mlp.py                              # 1 process, the unsplit model
    mpiexec -n 2 python examples/pipeline_mlp.py --schedule gpipe --microbatches 4 --width 1024
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

try:
    import ember
except ImportError:  # running from a source checkout without installing Ember
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import ember

import numpy as np

import ember.distributed as dist
import ember.nn as nn
import ember.nn.functional as F
from ember.distributed.pipeline import Pipeline


def build_stages(n_stages: int, width: int, depth: int, n_in: int, n_out: int) -> list[nn.Module]:
    """The MLP ``n_in -> width x depth -> n_out`` as ``n_stages`` consecutive ``Sequential`` stages."""
    ember.manual_seed(0)
    blocks: list[nn.Module] = [nn.Sequential(nn.Linear(n_in, width), nn.ReLU())]
    blocks += [nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(depth - 1)]
    blocks.append(nn.Linear(width, n_out))
    for m in blocks[:-1]:
        nn.init.kaiming_normal_(m[0].weight, nonlinearity="relu")  # He init keeps a deep ReLU stack trainable
    bounds = np.array_split(np.arange(len(blocks)), n_stages)
    return [nn.Sequential(*[blocks[i] for i in b]) for b in bounds]


def make_data(n: int, n_in: int, n_out: int) -> tuple[ember.Tensor, ember.Tensor]:
    """Inputs and class labels from a fixed random linear teacher."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, n_in)).astype(np.float32)
    y = np.argmax(x @ rng.standard_normal((n_in, n_out)), axis=1)
    return ember.tensor(x), ember.tensor(y)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--microbatches", type=int, default=8)
    p.add_argument("--schedule", choices=("1f1b", "gpipe"), default="1f1b")
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--depth", type=int, default=6, help="hidden layers")
    p.add_argument("--lr", type=float, default=0.05)
    args = p.parse_args()

    comm = dist.init()
    n_in, n_out = 64, 10
    x, y = make_data(args.batch * 4, n_in, n_out)
    pipe = Pipeline(build_stages(comm.size, args.width, args.depth, n_in, n_out), args.microbatches,
                    schedule=args.schedule)
    opt = ember.optim.SGD(pipe.parameters(), lr=args.lr, momentum=0.9)
    if comm.rank == 0:
        print(f"{comm.size} stage(s), {args.microbatches} microbatches of {args.batch // args.microbatches} rows, "
              f"schedule {args.schedule}, MLP {n_in} -> {args.width} x {args.depth} -> {n_out}")
    times = []
    for step in range(args.steps):
        lo = (step * args.batch) % x.shape[0]
        xb, yb = x[lo:lo + args.batch], y[lo:lo + args.batch]
        comm.barrier()
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = pipe.step(xb if pipe.is_first else None, yb if pipe.is_last else None, F.cross_entropy)
        opt.step()
        times.append(time.perf_counter() - t0)
        if comm.rank == 0 and (step % 5 == 0 or step == args.steps - 1):
            print(f"step {step:4d}  loss {loss:.4f}")
    steady = sorted(times[2:] or times)
    if comm.rank == 0:
        print(f"step time: median {1e3 * steady[len(steady) // 2]:.1f} ms, best {1e3 * steady[0]:.1f} ms over "
              f"{len(steady)} steps (stage 0 held at most {pipe.max_live} microbatch graphs)")


if __name__ == "__main__":
    main()
