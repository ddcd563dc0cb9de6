"""A synthetic click-through-rate dataset shaped like Criteo's (26 categorical fields, 13 dense counts).

Generation, all from ``seed`` (NumPy PCG64 streams, identical on every platform):

* **Categorical ids.** Field ``f`` has ``vocab_sizes[f]`` ids whose frequencies follow a power law
  (bounded Zipf with exponent ``zipf_a``: the id of popularity rank ``r`` has probability roughly
  proportional to ``(r + 1) ** -zipf_a``). Ranks are mapped to ids by a per-field bijection
  ``id = (rank * m + c) mod V`` so the frequent ids are scattered, not ``0, 1, 2, ...``.
* **Dense features.** 13 heavy-tailed non-negative counts (zero-inflated, log-normal), then ``log1p``
  as in the usual Criteo preprocessing.
* **Label.** A hidden logistic model: ``logit = bias + scale * (sum over about half of the fields of a
  per-id weight + a rank-4 interaction between two of those fields + a linear term in the dense
  features)``, with ``scale`` set so the Bayes-optimal AUC (scoring by the true logit, ``.logits``) is
  about 0.8 and ``bias`` so about 25% of the samples are clicks. The label is ``Bernoulli(sigmoid(logit))``.

Samples are drawn in fixed chunks of 16384 from per-chunk streams, so the first ``n`` samples do not
depend on ``num_samples``.

Items (``bag_size=1``): ``(ids, dense, label)``: int64 ``(num_fields,)``, float32 ``(num_dense,)`` and
a float32 scalar. Multi-hot (``bag_size=k > 1``): each field holds 1 to ``k`` ids (uniform), delivered
padded: ``(ids, mask, dense, label)`` with ``ids`` int64 ``(num_fields, k)`` and ``mask`` float32
``(num_fields, k)`` (1 for a real id, 0 for padding; padded slots hold id 0). ``mask`` is the
``per_sample_weights`` of a sum-mode EmbeddingBag, or ``bags_to_offsets`` turns a batch into the flat
ids + offsets form. The hidden model uses the mean weight of each bag.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...tensor import Tensor
from ..dataset import Dataset, check_index, check_indices
from ..loader import _from_array

__all__ = ["SyntheticCTR", "bags_to_offsets"]

_CHUNK = 16384
_CALIBRATION = 20000
_WEIGHT_CAP = 100_000   # per-id weights for the most popular ranks only (bounded memory for huge vocabularies)
_TARGET_STD = 1.4       # std of the logit (before the bias): Bayes AUC ~0.8 at a 25% positive rate
_TARGET_RATE = 0.25
_LATENT = 4


def _power_law_ranks(u: np.ndarray, vocab: int, a: float) -> np.ndarray:
    """Inverse CDF of a continuous power law on [1, vocab + 1), floored to ranks 0..vocab-1."""
    if abs(a - 1.0) < 1e-9:
        x = np.exp(u * math.log(vocab + 1.0))
    else:
        c = (vocab + 1.0) ** (1.0 - a)
        x = (1.0 + u * (c - 1.0)) ** (1.0 / (1.0 - a))
    return np.minimum(x.astype(np.int64) - 1, vocab - 1).clip(0)


class _Hidden:
    """The hidden generative model: id bijections, weights, dense distributions and the logit scale."""

    def __init__(self, seed: int, vocab: list[int], num_dense: int, a: float, bag: int) -> None:
        rng = np.random.default_rng([seed, 0])
        nf = len(vocab)
        self.vocab, self.a, self.bag, self.num_dense = vocab, a, bag, num_dense
        self.mult = np.empty(nf, dtype=np.int64)
        self.shift = np.empty(nf, dtype=np.int64)
        for f, v in enumerate(vocab):
            m = int(rng.integers(1, v)) if v > 1 else 1
            while math.gcd(m, v) != 1:
                m = m % (v - 1) + 1
            self.mult[f], self.shift[f] = m, int(rng.integers(0, v))
        n_inf = max(1, (nf + 1) // 2)
        self.informative = np.sort(rng.choice(nf, size=n_inf, replace=False))
        self.alpha = rng.uniform(0.5, 1.5, size=n_inf)
        self.weights = [rng.standard_normal(min(vocab[f], _WEIGHT_CAP)).astype(np.float32)
                        for f in self.informative]
        self.pair = self.informative[:2] if n_inf >= 2 else None
        if self.pair is not None:
            self.latent = [rng.standard_normal((min(vocab[f], _WEIGHT_CAP), _LATENT)).astype(np.float32) / 2
                           for f in self.pair]
        self.d_mu = rng.uniform(0.5, 3.0, size=num_dense)
        self.d_sigma = rng.uniform(0.5, 1.5, size=num_dense)
        self.d_zero = rng.uniform(0.1, 0.5, size=num_dense)
        self.beta = rng.standard_normal(num_dense) * (rng.random(num_dense) < 0.5)
        # Standardization, scale and bias from a fixed calibration sample.
        self.d_mean = np.zeros(num_dense)
        self.d_std = np.ones(num_dense)
        self.scale, self.bias = 1.0, 0.0
        ranks, lengths, dense = self.draw(np.random.default_rng([seed, 2]), _CALIBRATION)
        self.d_mean = dense.mean(0) if num_dense else self.d_mean
        self.d_std = dense.std(0) + 1e-6 if num_dense else self.d_std
        raw = self.raw_score(ranks, lengths, dense)
        self.scale = _TARGET_STD / max(float(raw.std()), 1e-6)
        z = self.scale * raw
        lo, hi = -20.0, 20.0
        for _ in range(60):  # bisection: the mean click probability is increasing in the bias
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if np.mean(1 / (1 + np.exp(-(z + mid)))) < _TARGET_RATE else (lo, mid)
        self.bias = (lo + hi) / 2

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Popularity ranks (n, F, bag), bag lengths (n, F) or None, and log1p dense features (n, D)."""
        nf, bag = len(self.vocab), self.bag
        u = rng.random((n, nf, bag))
        ranks = np.empty((n, nf, bag), dtype=np.int64)
        for f, v in enumerate(self.vocab):
            ranks[:, f] = _power_law_ranks(u[:, f], v, self.a)
        lengths = rng.integers(1, bag + 1, size=(n, nf)) if bag > 1 else None
        g = rng.standard_normal((n, self.num_dense))
        keep = rng.random((n, self.num_dense)) >= self.d_zero
        counts = np.floor(np.exp(self.d_mu + self.d_sigma * g)) * keep
        return ranks, lengths, np.log1p(counts)

    @staticmethod
    def _bag_mean(table: np.ndarray, ranks: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """Mean over each bag of ``table[rank]`` (0 for ranks past the table); ranks (n, bag)."""
        inside = ranks < table.shape[0]
        vals = table[np.where(inside, ranks, 0)]
        vals = np.where(inside[..., None] if table.ndim == 2 else inside, vals, 0)
        if mask is None:
            return vals[:, 0]
        m = mask if table.ndim == 1 else mask[..., None]
        return (vals * m).sum(1) / m.sum(1)

    def raw_score(self, ranks: np.ndarray, lengths: np.ndarray | None, dense: np.ndarray) -> np.ndarray:
        n = ranks.shape[0]
        mask = None if lengths is None else (np.arange(self.bag) < lengths[..., None]).astype(np.float32)
        score = np.zeros(n)
        for k, f in enumerate(self.informative):
            score += self.alpha[k] * self._bag_mean(self.weights[k], ranks[:, f], None if mask is None else mask[:, f])
        if self.pair is not None:
            a, b = self.pair
            ua = self._bag_mean(self.latent[0], ranks[:, a], None if mask is None else mask[:, a])
            ub = self._bag_mean(self.latent[1], ranks[:, b], None if mask is None else mask[:, b])
            score += (ua * ub).sum(1)
        if self.num_dense:
            score += ((dense - self.d_mean) / self.d_std) @ self.beta
        return score

    def ids(self, ranks: np.ndarray, f: int) -> np.ndarray:
        return (ranks * self.mult[f] + self.shift[f]) % self.vocab[f]


class SyntheticCTR(Dataset[tuple]):
    """Ads-like click data generated deterministically from ``seed`` (see the module docstring).

    Attributes: ``sparse`` (int64 ``(N, F)`` or ``(N, F, bag_size)``), ``mask`` (float32, multi-hot only),
    ``dense`` (float32 ``(N, D)``), ``labels`` (float32 ``(N,)``), ``logits`` (float32, the hidden model's
    true logits: ``roc_auc(ds.logits, ds.labels)`` is the Bayes-optimal AUC), ``vocab_sizes``,
    ``informative_fields`` (the fields the label depends on).
    """

    def __init__(self, num_samples: int, num_fields: int = 26, vocab_sizes: int | Sequence[int] = 100_000,
                 num_dense: int = 13, zipf_a: float = 1.2, seed: int = 0, bag_size: int = 1) -> None:
        def need_int(what: str, v: Any, lo: int) -> int:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"SyntheticCTR: {what} must be an int >= {lo}, got {v!r}")
            return int(v)

        n = need_int("num_samples", num_samples, 0)
        nf = need_int("num_fields", num_fields, 1)
        nd = need_int("num_dense", num_dense, 0)
        bag = need_int("bag_size", bag_size, 1)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"SyntheticCTR: seed must be a non-negative int, got {seed!r}")
        if isinstance(zipf_a, bool) or not isinstance(zipf_a, (int, float)) or not 0 <= zipf_a < 10:
            raise ValueError(f"SyntheticCTR: zipf_a must be a number in [0, 10), got {zipf_a!r}")
        if isinstance(vocab_sizes, (int, np.integer)) and not isinstance(vocab_sizes, bool):
            vocab = [need_int("vocab_sizes", vocab_sizes, 1)] * nf
        elif isinstance(vocab_sizes, Sequence) and not isinstance(vocab_sizes, str):
            if len(vocab_sizes) != nf:
                raise ValueError(f"SyntheticCTR: vocab_sizes has {len(vocab_sizes)} entries but num_fields is {nf}")
            vocab = [need_int("vocab_sizes[i]", v, 1) for v in vocab_sizes]
        else:
            raise TypeError(f"SyntheticCTR: vocab_sizes must be an int or a list of ints, got "
                            f"{type(vocab_sizes).__name__}")
        self.num_fields, self.num_dense, self.bag_size = nf, nd, bag
        self.vocab_sizes, self.zipf_a, self.seed = vocab, float(zipf_a), int(seed)
        hidden = _Hidden(self.seed, vocab, nd, self.zipf_a, bag)
        self.informative_fields = hidden.informative.tolist()

        shape = (n, nf) if bag == 1 else (n, nf, bag)
        self.sparse = np.empty(shape, dtype=np.int64)
        self.mask = None if bag == 1 else np.empty(shape, dtype=np.float32)
        self.dense = np.empty((n, nd), dtype=np.float32)
        self.logits = np.empty(n, dtype=np.float32)
        self.labels = np.empty(n, dtype=np.float32)
        for c, start in enumerate(range(0, n, _CHUNK)):
            m = min(_CHUNK, n - start)
            rng = np.random.default_rng([self.seed, 1, c])
            ranks, lengths, dense = hidden.draw(rng, _CHUNK)
            ranks, dense = ranks[:m], dense[:m]
            lengths = None if lengths is None else lengths[:m]
            logit = hidden.bias + hidden.scale * hidden.raw_score(ranks, lengths, dense)
            click = rng.random(_CHUNK)[:m] < 1 / (1 + np.exp(-logit))
            sl = slice(start, start + m)
            ids = np.stack([hidden.ids(ranks[:, f], f) for f in range(nf)], axis=1)
            if bag == 1:
                self.sparse[sl] = ids[..., 0]
            else:
                valid = np.arange(bag) < lengths[..., None]
                self.sparse[sl] = np.where(valid, ids, 0)
                self.mask[sl] = valid
            self.dense[sl] = dense
            self.logits[sl] = logit
            self.labels[sl] = click

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def _pack(self, sel: Any) -> tuple:
        out = [_from_array("SyntheticCTR", self.sparse[sel])]
        if self.mask is not None:
            out.append(_from_array("SyntheticCTR", self.mask[sel]))
        out += [_from_array("SyntheticCTR", self.dense[sel]), _from_array("SyntheticCTR", np.asarray(self.labels[sel]))]
        return tuple(out)

    def __getitem__(self, index: int) -> tuple:
        return self._pack(check_index("SyntheticCTR", index, len(self)))

    def __getitems__(self, indices: Sequence[int]) -> tuple:
        return self._pack(check_indices("SyntheticCTR", indices, len(self)))

    def __repr__(self) -> str:
        return (f"SyntheticCTR(n={len(self)}, fields={self.num_fields}, dense={self.num_dense}, "
                f"bag_size={self.bag_size}, seed={self.seed}, positives={float(self.labels.mean()):.3f})")


def bags_to_offsets(ids: Tensor | np.ndarray, mask: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    """Padded bags -> EmbeddingBag's flat form: ``ids``/``mask`` of shape ``(..., bag)`` (e.g. one field's
    ``(B, bag)`` slice of a batch) give ``(flat_ids, offsets)``, int64, where bag ``j`` (in row-major order
    over the leading dims) is ``flat_ids[offsets[j]:offsets[j + 1]]``."""
    i = np.asarray(ids.data if isinstance(ids, Tensor) else ids)
    m = np.asarray(mask.data if isinstance(mask, Tensor) else mask)
    if i.shape != m.shape or i.ndim < 1:
        from ...errors import ShapeError
        raise ShapeError(f"bags_to_offsets: ids and mask must have the same shape (..., bag), got {i.shape} and "
                         f"{m.shape}")
    keep = m.reshape(-1, i.shape[-1]) != 0
    counts = keep.sum(1)
    offsets = np.zeros(counts.size, dtype=np.int64)
    np.cumsum(counts[:-1], out=offsets[1:])
    return (_from_array("bags_to_offsets", i.reshape(-1, i.shape[-1])[keep].astype(np.int64)),
            _from_array("bags_to_offsets", offsets))
