"""Click-through-rate prediction with the embedding table on parameter servers (Ember's ``ember.distributed.ps``).

One MPI job, two roles: the last ``S`` ranks are parameter servers, the others workers. All 26
categorical fields of ``SyntheticCTR`` share one sparse embedding table on the servers, keyed by
``field << 40 | id`` (ids are never remapped to a dense range: the table's rows are created on first
touch, hash-sharded over the servers, and updated there by Adagrad). The MLP on top lives on the
servers too, as one dense table updated by Adam. Each worker trains on its own part of the data:

    per step: pull the MLP (prefetched) -> forward (embedding rows of the batch, prefetched during the
    previous step) -> backward (pushes the rows' gradients as it runs) -> push the MLP's gradient -> clock

with SSP consistency (staleness 1 by default: a worker may use parameters missing the other
workers' updates of its previous step, which is what lets the prefetches overlap the compute).
Worker 0 reports the ROC AUC on a held-out split, next to the Bayes-optimal AUC.

    mpiexec -n 4 python examples/ps_ctr.py                 # 2 workers + 2 servers
    ember run -n 4 --servers 2 examples/ps_ctr.py
    mpiexec -n 3 python examples/ps_ctr.py --servers 1 --consistency bsp
"""

from __future__ import annotations

import os

# Several ranks share this machine's cores: one BLAS thread each (as `ember run` sets), unless told otherwise.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

try:
    import ember
except ImportError:  # running from a source checkout without installing Ember
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import ember

import ember.distributed.ps as psm  # noqa: E402
import ember.nn as nn  # noqa: E402
from ember.data import roc_auc  # noqa: E402
from ember.data.datasets import SyntheticCTR  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ctr import mlp  # noqa: E402  (the single-process example's MLP)

FIELD_SHIFT = 40  # global id = field << 40 | id: one table for all fields, no id collisions



class PSCTRModel(nn.Module):
    """Embeddings of every field from one table on the servers, concatenated with the dense features, then an MLP."""

    def __init__(self, num_fields: int, num_dense: int, dim: int, hidden: tuple[int, ...], sparse_lr: float,
                 min_count: int) -> None:
        super().__init__()
        self.embedding = psm.Embedding("ctr_embedding", dim, optimizer=("adagrad", {"lr": sparse_lr}),
                                       init=("normal", {"std": 0.05}), min_count=min_count)
        self.mlp = mlp([num_fields * dim + num_dense, *hidden, 1])
        self.offsets = (np.arange(num_fields, dtype=np.int64) << FIELD_SHIFT)[None, :]

    def global_ids(self, ids: np.ndarray) -> np.ndarray:
        return ids + self.offsets

    def forward(self, ids: np.ndarray, dense: ember.Tensor) -> ember.Tensor:
        e = self.embedding(self.global_ids(ids))  # (B, fields, dim)
        return self.mlp(ember.cat([e.reshape(e.shape[0], -1), dense], dim=1)).reshape(-1)


def train_worker(ps: psm.ParameterServer, args: argparse.Namespace) -> dict[str, Any]:
    """Train on this worker's share of the data; worker 0 also evaluates. Returns the numbers it printed."""
    w, nw = ps.worker_index, ps.num_workers
    ember.manual_seed(args.seed)  # the same MLP initialization on every worker (worker 0's is used anyway)
    ds = SyntheticCTR(args.samples, vocab_sizes=args.rows, seed=args.seed)
    cut = int(len(ds) * 0.8)
    mine = np.arange(w, cut, nw)
    model = PSCTRModel(ds.num_fields, ds.num_dense, args.dim, (256, 128), args.sparse_lr, args.min_count)
    head = psm.DenseParameters("ctr_mlp", model.mlp, optimizer=("adam", {"lr": args.lr}))
    loss_fn = nn.BCEWithLogitsLoss()
    rng = np.random.default_rng(args.seed + w)
    log = print if w == 0 else (lambda *a, **k: None)
    log(f"ps_ctr: {nw} workers + {ps.num_servers} servers, consistency {ps.consistency}; SyntheticCTR {cut} train / "
        f"{len(ds) - cut} test samples, {ds.num_fields} fields x {args.rows:,} ids -> one table of dim {args.dim} "
        f"(Adagrad lr={args.sparse_lr}, min_count={args.min_count}) + MLP (Adam lr={args.lr}), batch {args.batch_size}")
    t0 = time.perf_counter()
    steps = 0
    for epoch in range(args.epochs):
        order = rng.permutation(mine)
        batches = [order[i:i + args.batch_size] for i in range(0, len(order), args.batch_size)]
        # every worker runs the same number of steps (clocks) per epoch
        batches = batches[:len(mine) // args.batch_size] if len(mine) >= args.batch_size else batches
        for i, b in enumerate(batches):
            head.pull()
            logits = model(ds.sparse[b], ember.tensor(ds.dense[b]))
            if i + 1 < len(batches):  # overlap the next step's pulls with this step's compute
                model.embedding.prefetch(model.global_ids(ds.sparse[batches[i + 1]]))
                head.prefetch()
            loss = loss_fn(logits, ember.tensor(ds.labels[b]))
            loss.backward()  # the embedding's gradient is pushed during backward
            head.push()
            ps.clock()
            steps += 1
            if i % max(1, len(batches) // 4) == 0:
                log(f"  epoch {epoch + 1} step {i:4d}/{len(batches)}  loss {loss.item():.4f}")
    ps.barrier()
    seconds = time.perf_counter() - t0
    result = {"seconds": seconds, "steps": steps, "samples_per_s": steps * args.batch_size * nw / seconds}
    if w == 0:
        head.pull()
        scores = []
        with ember.no_grad():
            for i in range(cut, len(ds), 8192):
                scores.append(model(ds.sparse[i:i + 8192], ember.tensor(ds.dense[i:i + 8192])).numpy().copy())
        auc = roc_auc(np.concatenate(scores), ds.labels[cut:])
        bayes = roc_auc(ds.logits[cut:], ds.labels[cut:])
        stats = ps.table_stats("ctr_embedding")
        log(f"  embedding table: {stats['rows']:,} rows on {ps.num_servers} servers "
            f"({[s['rows'] for s in stats['per_server']]}), {stats['bytes'] / 2 ** 20:.1f} MiB with optimizer state")
        log(f"ps_ctr: test AUC {auc:.4f} (Bayes-optimal {bayes:.4f}); {steps} steps per worker in {seconds:.1f} s "
            f"({result['samples_per_s']:,.0f} samples/s over {nw} workers)")
        result.update(auc=auc, bayes_auc=bayes, rows=stats["rows"])
    if args.checkpoint:
        ps.save(args.checkpoint)
        log(f"  checkpoint written to {args.checkpoint}")
    ps.finish()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ps_ctr", description="CTR training with embeddings on parameter servers.")
    p.add_argument("--samples", type=int, default=500_000, help="SyntheticCTR samples (80%% train, 20%% test)")
    p.add_argument("--rows", type=int, default=1_000_000, help="ids per field (never materialized)")
    p.add_argument("--dim", type=int, default=8, help="embedding width")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate of the MLP (on the servers)")
    p.add_argument("--sparse-lr", type=float, default=0.05, help="Adagrad learning rate of the embeddings")
    p.add_argument("--min-count", type=int, default=1, help="create an id's row on its n-th gradient")
    p.add_argument("--consistency", default="ssp", choices=["bsp", "ssp", "asp"])
    p.add_argument("--staleness", type=int, default=1, help="SSP's bound, in clocks")
    p.add_argument("--servers", type=int, default=None,
                   help="server ranks (default: EMBER_PS_SERVERS as set by `ember run --servers`, else 2)")
    p.add_argument("--checkpoint", default=None, help="save the tables into this directory at the end")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if min(args.samples, args.rows, args.dim, args.batch_size, args.epochs) < 1:
        p.error("sizes, --batch-size and --epochs must be positive")
    servers = args.servers if args.servers is not None else int(os.environ.get("EMBER_PS_SERVERS", "2"))
    ps = psm.init(servers, consistency=args.consistency,
                  staleness=args.staleness if args.consistency == "ssp" else None)
    if ps.is_server:
        ps.serve()
        return 0
    train_worker(ps, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
