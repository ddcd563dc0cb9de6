"""Click-through-rate prediction with sparse embeddings: Criteo-shaped synthetic data, or MovieLens-100k.

Default: ``ember.data.datasets.SyntheticCTR`` (26 categorical fields with power-law id frequencies,
13 dense features, clicks drawn from a hidden logistic model). Each field has its own
``EmbeddingBag(rows, dim, mode="sum", sparse=True)``; the 26 embeddings and the dense features are
concatenated and fed to an MLP that outputs a click logit, trained with ``BCEWithLogitsLoss``. The
embedding tables get row-sparse gradients, updated by ``SparseAdam`` (a step touches only the rows in
the batch), and the MLP by ``Adam``. Reports the ROC AUC on a held-out split after every epoch, next to
the Bayes-optimal AUC (scoring by the hidden model's true logits).

``--movielens``: predict whether a user rates a movie 4 or more from a user embedding and a movie
embedding (their product and concatenation -> MLP), on MovieLens-100k (read from the ``recbole``
package's copy: ``pip install --no-deps recbole``).

    python examples/ctr.py                    # 1M synthetic samples, one epoch (under a minute)
    python examples/ctr.py --movielens        # MovieLens-100k, 5 epochs
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
from ember.data import DataLoader, TensorDataset, roc_auc
from ember.data.datasets import MovieLens100K, SyntheticCTR


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers of the given widths with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i + 2 < len(sizes):
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class CTRModel(nn.Module):
    """One sum-mode EmbeddingBag per sparse field, concatenated with the dense features, then an MLP."""

    def __init__(self, vocab_sizes: list[int], dim: int, num_dense: int, hidden: tuple[int, ...] = (512, 256)) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.EmbeddingBag(rows, dim, mode="sum", sparse=True) for rows in vocab_sizes)
        for emb in self.embeddings:  # small initial embeddings: 26 of them are summed into the first layer
            nn.init.normal_(emb.weight, std=0.05)
        self.mlp = mlp([len(vocab_sizes) * dim + num_dense, *hidden, 1])

    def forward(self, ids: ember.Tensor, dense: ember.Tensor) -> ember.Tensor:
        """``ids``: int64 ``(B, fields)``; ``dense``: float32 ``(B, num_dense)`` -> logits ``(B,)``."""
        parts = [emb(ids[:, f:f + 1]) for f, emb in enumerate(self.embeddings)]  # each (B, 1): a bag of one id
        return self.mlp(ember.cat([*parts, dense], dim=1)).reshape(-1)


class RatingModel(nn.Module):
    """User and movie embeddings; their product and both vectors -> MLP -> logit of "rating >= 4"."""

    def __init__(self, num_users: int, num_items: int, dim: int, hidden: tuple[int, ...] = (64,)) -> None:
        super().__init__()
        self.users = nn.Embedding(num_users, dim, sparse=True)
        self.items = nn.Embedding(num_items, dim, sparse=True)
        for emb in (self.users, self.items):
            nn.init.normal_(emb.weight, std=0.1)
        self.mlp = mlp([3 * dim, *hidden, 1])

    def forward(self, users: ember.Tensor, items: ember.Tensor) -> ember.Tensor:
        u, v = self.users(users), self.items(items)
        return self.mlp(ember.cat([u, v, u * v], dim=1)).reshape(-1)


def _predict(model: nn.Module, inputs: tuple[np.ndarray, ...], batch_size: int = 8192) -> np.ndarray:
    """Logits of ``model`` on the arrays ``inputs``, in batches, without gradients."""
    model.eval()
    out = []
    with ember.no_grad():
        for i in range(0, len(inputs[0]), batch_size):
            out.append(model(*(ember.from_numpy(a[i:i + batch_size]) for a in inputs)).numpy().copy())
    model.train()
    return np.concatenate(out)


def _train(model: nn.Module, train: tuple[np.ndarray, ...], test: tuple[np.ndarray, ...], epochs: int,
           batch_size: int, lr: float, sparse_lr: float, seed: int, log: Any) -> dict[str, Any]:
    """Train with SparseAdam (embeddings) + Adam (the rest); AUC on ``test`` after each epoch."""
    emb_ids = {id(p) for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))
               for p in m.parameters()}
    sparse_params = [p for p in model.parameters() if id(p) in emb_ids]
    dense_params = [p for p in model.parameters() if id(p) not in emb_ids]
    opts = [optim.SparseAdam(sparse_params, lr=sparse_lr), optim.Adam(dense_params, lr=lr)]
    loss_fn = nn.BCEWithLogitsLoss()
    loader = DataLoader(TensorDataset(*train), batch_size=batch_size, shuffle=True, seed=seed)
    *test_inputs, test_labels = test
    initial_auc = roc_auc(_predict(model, tuple(test_inputs)), test_labels)
    log(f"  before training: test AUC {initial_auc:.4f}")
    aucs, losses, batch_losses = [], [], []
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        t0, total, count = time.perf_counter(), 0.0, 0
        for step, (*inputs, labels) in enumerate(loader):
            for opt in opts:
                opt.zero_grad()
            loss = loss_fn(model(*inputs), labels)
            loss.backward()
            for opt in opts:
                opt.step()
            value = loss.item()
            total += value * len(labels)
            count += len(labels)
            if step % max(1, len(loader) // 5) == 0:
                batch_losses.append(value)
                log(f"    epoch {epoch} batch {step:4d}/{len(loader)}  loss {value:.4f}")
        auc = roc_auc(_predict(model, tuple(test_inputs)), test_labels)
        aucs.append(auc)
        losses.append(total / count)
        log(f"  epoch {epoch}: train loss {losses[-1]:.4f}, test AUC {auc:.4f} ({time.perf_counter() - t0:.1f} s)")
    return {"auc": aucs[-1], "aucs": aucs, "initial_auc": initial_auc, "losses": losses,
            "batch_losses": batch_losses, "seconds": time.perf_counter() - start}


def main(num_samples: int = 1_000_000, rows: int = 100_000, dim: int = 16, hidden: tuple[int, ...] = (512, 256),
         epochs: int = 1, batch_size: int = 2048, lr: float = 1e-3, sparse_lr: float = 1e-2, test_fraction: float = 0.2,
         seed: int = 0, verbose: bool = True) -> dict[str, Any]:
    """Train the CTR model on ``SyntheticCTR``; returns ``{"auc", "aucs", "initial_auc", "bayes_auc", "losses",
    "batch_losses", "positive_rate", "seconds"}`` (AUCs on the held-out split)."""
    if num_samples < 10 or epochs < 1 or batch_size < 1 or not 0 < test_fraction < 1:
        raise ValueError(f"ctr: need num_samples >= 10, epochs and batch_size >= 1 and 0 < test_fraction < 1, got "
                         f"{num_samples}, {epochs}, {batch_size}, {test_fraction}")
    log = print if verbose else (lambda *a, **k: None)
    ember.manual_seed(seed)
    ds = SyntheticCTR(num_samples, vocab_sizes=rows, seed=seed)
    n_test = max(1, int(num_samples * test_fraction))
    cut = num_samples - n_test
    train = (ds.sparse[:cut], ds.dense[:cut], ds.labels[:cut])
    test = (ds.sparse[cut:], ds.dense[cut:], ds.labels[cut:])
    bayes_auc = roc_auc(ds.logits[cut:], ds.labels[cut:])
    model = CTRModel(ds.vocab_sizes, dim, ds.num_dense, tuple(hidden))
    n_params = sum(p.numel() for p in model.parameters())
    log(f"ctr: SyntheticCTR {cut} train / {n_test} test samples ({ds.labels.mean():.1%} clicks), "
        f"{ds.num_fields} fields x {rows:,} rows x {dim} dims + {ds.num_dense} dense -> MLP "
        f"{'-'.join(map(str, [ds.num_fields * dim + ds.num_dense, *hidden, 1]))} ({n_params:,} parameters); "
        f"SparseAdam lr={sparse_lr} + Adam lr={lr}, batch {batch_size}, {epochs} epoch(s)")
    log(f"  Bayes-optimal test AUC (the hidden model's true logits): {bayes_auc:.4f}")
    result = _train(model, train, test, epochs, batch_size, lr, sparse_lr, seed, log)
    log(f"ctr: test AUC {result['auc']:.4f} (Bayes-optimal {bayes_auc:.4f}) in {result['seconds']:.1f} s")
    return {**result, "bayes_auc": bayes_auc, "positive_rate": float(ds.labels.mean()), "parameters": n_params}


def main_movielens(epochs: int = 5, dim: int = 32, hidden: tuple[int, ...] = (64,), batch_size: int = 1024,
                   lr: float = 1e-3, sparse_lr: float = 1e-2, test_fraction: float = 0.1,
                   max_ratings: int | None = None, seed: int = 0, root: str | None = None,
                   verbose: bool = True) -> dict[str, Any] | None:
    """Predict "rating >= 4" on MovieLens-100k; returns the same keys as ``main`` (without ``bayes_auc``),
    or None (after printing why) when the data is not available."""
    log = print if verbose else (lambda *a, **k: None)
    if not MovieLens100K.is_available(root):
        print("ctr --movielens: MovieLens-100k not found. Ember reads the copy shipped with the recbole package: "
              "install it with `pip install --no-deps recbole` (or pass --root, a folder holding ml-100k.inter).")
        return None
    ember.manual_seed(seed)
    ds = MovieLens100K(root)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ds))[:max_ratings]
    n_test = max(1, int(len(order) * test_fraction))
    te, tr = order[:n_test], order[n_test:]
    liked = (ds.ratings >= 4).astype(np.float32)
    train = (ds.users[tr], ds.items[tr], liked[tr])
    test = (ds.users[te], ds.items[te], liked[te])
    model = RatingModel(ds.num_users, ds.num_items, dim, tuple(hidden))
    log(f"ctr --movielens: {len(tr)} train / {n_test} test ratings ({liked[order].mean():.1%} rated 4 or 5), "
        f"{ds.num_users} users and {ds.num_items} movies x {dim} dims, SparseAdam lr={sparse_lr} + Adam lr={lr}, "
        f"batch {batch_size}, {epochs} epoch(s)")
    result = _train(model, train, test, epochs, batch_size, lr, sparse_lr, seed, log)
    log(f"ctr --movielens: test AUC {result['auc']:.4f} in {result['seconds']:.1f} s")
    return {**result, "positive_rate": float(liked[order].mean())}


def _cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ctr", description="Train a sparse-embedding CTR model with Ember.")
    p.add_argument("--movielens", action="store_true", help="MovieLens-100k (rating >= 4) instead of SyntheticCTR")
    p.add_argument("--samples", type=int, default=1_000_000, help="SyntheticCTR samples (train + test)")
    p.add_argument("--rows", type=int, default=100_000, help="rows of each SyntheticCTR embedding table")
    p.add_argument("--dim", type=int, default=None, help="embedding width (default: 16, MovieLens 32)")
    p.add_argument("--epochs", type=int, default=None, help="default: 1 (one pass), MovieLens 5")
    p.add_argument("--batch-size", type=int, default=None, help="default: 2048, MovieLens 1024")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of the MLP")
    p.add_argument("--sparse-lr", type=float, default=1e-2, help="SparseAdam learning rate of the embeddings")
    p.add_argument("--root", help="MovieLens: a folder holding ml-100k.inter (default: the recbole package's copy)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    ml = args.movielens
    dim = args.dim or (32 if ml else 16)
    epochs = args.epochs or (5 if ml else 1)
    batch = args.batch_size or (1024 if ml else 2048)
    if min(dim, epochs, batch, args.samples, args.rows) < 1 or not (args.lr > 0 and args.sparse_lr > 0):
        p.error("sizes, --epochs and --batch-size must be positive, learning rates > 0")
    if ml:
        result = main_movielens(epochs=epochs, dim=dim, batch_size=batch, lr=args.lr, sparse_lr=args.sparse_lr,
                                seed=args.seed, root=args.root)
        return 0 if result is not None else 1
    main(num_samples=args.samples, rows=args.rows, dim=dim, epochs=epochs, batch_size=batch, lr=args.lr,
         sparse_lr=args.sparse_lr, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli())
