"""Tables as the servers hold them: table specs, row initializers, a vectorized hash index, and the
sparse and dense shards with their server-side optimizer state.

* ``SparseShard``: the rows of one sparse embedding table that hash to this server. Rows exist only
  once touched by a push: ids may be any int64 values (a vocabulary of billions is never
  materialized). A row that was never created reads as its initial value, which is a pure function
  of the table's seed, the id and the column (a counter-based generator), so every server and
  every restart agree on it. With ``min_count=k`` an id's first ``k - 1`` gradients are dropped
  (counted per push that contains it) and the row is created on the ``k``-th; with
  ``evict_after=n`` rows (and pending counts) not pulled or pushed during the last ``n`` global
  clocks are dropped, so they read as their initial value again.
* ``DenseShard``: a contiguous range ``[lo, hi)`` of a dense table's flattened values.

Everything here is plain NumPy with no MPI, so it is tested in-process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import DTypeError, ShapeError
from .optimizers import RowOptimizer
from .protocol import INDEX_SALT, coalesce, mix64, name_key

__all__ = ["DenseShard", "Initializer", "RowIndex", "SparseShard", "TableSpec"]

_DTYPES = {"float32": np.float32, "float64": np.float64}


# ---------------------------------------------------------------------------------------------- hash index
class RowIndex:
    """int64 key -> row number (0, 1, 2, ... in insertion order), a vectorized open-addressing hash table.

    Linear probing over a power-of-two slot array kept at most half full; every operation works on
    whole arrays of keys at once (a few NumPy passes, about two probes per key on average). Deletion
    is by ``rebuild`` with the keys to keep (rows are renumbered in that order).
    """

    def __init__(self, capacity: int = 64) -> None:
        self._slots = np.full(max(16, 1 << (max(int(capacity), 1) * 2 - 1).bit_length()), -1, dtype=np.int64)
        self._keys = np.empty(max(int(capacity), 16), dtype=np.int64)
        self.n = 0

    def __len__(self) -> int:
        return self.n

    @property
    def keys(self) -> np.ndarray:
        """The keys of rows ``0..n-1`` (a view)."""
        return self._keys[:self.n]

    def _home(self, keys: np.ndarray) -> np.ndarray:
        mask = np.uint64(self._slots.shape[0] - 1)
        return (mix64(keys.view(np.uint64) ^ INDEX_SALT) & mask).astype(np.int64)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """The row of each key, -1 where absent."""
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        rows = np.full(keys.shape[0], -1, dtype=np.int64)
        if self.n == 0 or keys.size == 0:
            return rows
        mask = self._slots.shape[0] - 1
        pos = np.arange(keys.shape[0])
        h = self._home(keys)
        while pos.size:
            r = self._slots[h]
            occupied = r >= 0
            hit = occupied & (self._keys[np.where(occupied, r, 0)] == keys[pos])
            rows[pos[hit]] = r[hit]
            more = occupied & ~hit  # a different key sits here: probe on
            pos, h = pos[more], (h[more] + 1) & mask
        return rows

    def add(self, keys: np.ndarray) -> np.ndarray:
        """Insert ``keys`` (unique and absent: not checked) as new rows; returns their row numbers."""
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        k = keys.shape[0]
        if k == 0:
            return np.zeros(0, dtype=np.int64)
        if 2 * (self.n + k) > self._slots.shape[0]:
            self._grow(self.n + k)
        if self.n + k > self._keys.shape[0]:
            bigger = np.empty(max(2 * self._keys.shape[0], self.n + k), dtype=np.int64)
            bigger[:self.n] = self._keys[:self.n]
            self._keys = bigger
        rows = np.arange(self.n, self.n + k, dtype=np.int64)
        self._keys[self.n:self.n + k] = keys
        self.n += k
        self._place(keys, rows)
        return rows

    def _place(self, keys: np.ndarray, rows: np.ndarray) -> None:
        mask = self._slots.shape[0] - 1
        pos = np.arange(keys.shape[0])
        h = self._home(keys)
        while pos.size:
            free = self._slots[h] < 0
            # several keys may reach the same free slot in one round: the first one takes it
            slots, first = np.unique(h[free], return_index=True)
            winners = pos[free][first]
            self._slots[slots] = rows[winners]
            placed = np.zeros(pos.shape[0], dtype=bool)
            placed[np.flatnonzero(free)[first]] = True
            advance = ~free  # losers retry the same slot, now taken, and advance next round
            h = np.where(advance, (h + 1) & mask, h)
            pos, h = pos[~placed], h[~placed]

    def _grow(self, need: int) -> None:
        size = self._slots.shape[0]
        while 2 * need > size:
            size *= 2
        self._slots = np.full(size, -1, dtype=np.int64)
        if self.n:
            self._place(self._keys[:self.n], np.arange(self.n, dtype=np.int64))

    def rebuild(self, keys: np.ndarray) -> None:
        """Replace the contents by ``keys`` (unique), numbered ``0..len(keys)-1``; the slot array shrinks
        when it can."""
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        size = 16
        while 2 * keys.shape[0] > size:
            size *= 2
        self._slots = np.full(size, -1, dtype=np.int64)
        self._keys = np.empty(max(keys.shape[0], 16), dtype=np.int64)
        self._keys[:keys.shape[0]] = keys
        self.n = keys.shape[0]
        self._place(keys, np.arange(self.n, dtype=np.int64))


# ---------------------------------------------------------------------------------------------- initializers
_INIT_PARAMS = {"zeros": {}, "constant": {"value": None}, "normal": {"mean": 0.0, "std": 0.01},
                "uniform": {"low": -0.01, "high": 0.01}}
_UNIT = 2.0 ** -53


class Initializer:
    """Initial values of rows (or of a dense table's flat positions), a pure function of (key, id, column).

    Specs: ``"zeros"``, ``("constant", {"value": v})``, ``("normal", {"mean": 0, "std": 0.01})`` and
    ``("uniform", {"low": -0.01, "high": 0.01})``. Normal values use the Box-Muller transform of two
    uniforms, each uniform the top 53 bits of a SplitMix64 hash of (table key, id, column).
    """

    def __init__(self, kind: str, params: dict[str, float]) -> None:
        self.kind, self.params = kind, params

    @classmethod
    def parse(cls, spec: Any, where: str) -> Initializer:
        if isinstance(spec, str):
            kind, given = spec, {}
        elif isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[0], str) \
                and isinstance(spec[1], dict):
            kind, given = spec
        else:
            raise TypeError(f"{where}: init must be a name or a (name, options) pair such as ('normal', "
                            f"{{'std': 0.01}}), got {spec!r}")
        if kind not in _INIT_PARAMS:
            raise ValueError(f"{where}: unknown initializer {kind!r}; expected one of {', '.join(_INIT_PARAMS)}")
        defaults = _INIT_PARAMS[kind]
        bad = sorted(set(given) - set(defaults))
        if bad:
            raise ValueError(f"{where}: initializer {kind!r} takes {', '.join(defaults) or 'no options'}, got "
                             f"{', '.join(map(repr, bad))}")
        params = {**defaults, **given}
        for k, v in params.items():
            if v is None:
                raise ValueError(f"{where}: initializer {kind!r} needs the option {k!r}")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{where}: initializer option {k}={v!r} must be a finite number")
        if kind == "normal" and params["std"] < 0:
            raise ValueError(f"{where}: normal initializer needs std >= 0, got {params['std']}")
        if kind == "uniform" and not params["low"] <= params["high"]:
            raise ValueError(f"{where}: uniform initializer needs low <= high, got {params['low']} > {params['high']}")
        return cls(kind, {k: float(v) for k, v in params.items()})

    def to_spec(self) -> tuple[str, dict[str, float]]:
        return self.kind, dict(self.params)

    def rows(self, key: np.uint64, ids: np.ndarray, dim: int, dtype: Any) -> np.ndarray:
        """The initial ``(len(ids), dim)`` rows of ``ids`` in a table whose random key is ``key``."""
        n = ids.shape[0]
        if self.kind == "zeros":
            return np.zeros((n, dim), dtype=dtype)
        if self.kind == "constant":
            return np.full((n, dim), self.params["value"], dtype=dtype)
        base = mix64(np.ascontiguousarray(ids, dtype=np.int64).view(np.uint64) ^ key)
        cols = mix64(np.arange(2 * dim, dtype=np.uint64) + key)
        u = self._unit(mix64(base[:, None] ^ cols[None, :dim]))
        if self.kind == "uniform":
            lo, hi = self.params["low"], self.params["high"]
            return (lo + (hi - lo) * (u - _UNIT)).astype(dtype)
        u2 = self._unit(mix64(base[:, None] ^ cols[None, dim:]))
        z = np.sqrt(-2.0 * np.log(u)) * np.cos(2.0 * np.pi * u2)
        return (self.params["mean"] + self.params["std"] * z).astype(dtype)

    @staticmethod
    def _unit(bits: np.ndarray) -> np.ndarray:
        """Uniform floats in (0, 1] from the top 53 bits."""
        return ((bits >> np.uint64(11)).astype(np.float64) + 1.0) * _UNIT


# ---------------------------------------------------------------------------------------------- specs
@dataclass
class TableSpec:
    """What defines a table; workers send it with ``create`` and servers store it in checkpoints.

    ``shape`` is the dense table's shape, or ``(dim,)`` (the row shape) for a sparse one; ``init`` is
    an initializer spec, or ``("array", {})`` for a dense table created from given values.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    dtype: str
    optimizer: tuple[str, dict[str, Any]]
    init: tuple[str, dict[str, Any]]
    seed: int = 0
    min_count: int = 1
    evict_after: int | None = None
    _opt: RowOptimizer | None = field(default=None, repr=False, compare=False)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(_DTYPES[self.dtype])

    @property
    def rule(self) -> RowOptimizer:
        if self._opt is None:
            self._opt = RowOptimizer.parse(self.optimizer, f"table {self.name!r}")
        return self._opt

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "shape": list(self.shape), "dtype": self.dtype,
                "optimizer": [self.optimizer[0], dict(self.optimizer[1])], "init": [self.init[0], dict(self.init[1])],
                "seed": self.seed, "min_count": self.min_count, "evict_after": self.evict_after}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TableSpec:
        opt, init = d["optimizer"], d["init"]
        o = dict(opt[1])
        if "betas" in o:
            o["betas"] = tuple(o["betas"])
        return cls(str(d["name"]), str(d["kind"]), tuple(int(s) for s in d["shape"]), str(d["dtype"]),
                   (str(opt[0]), o), (str(init[0]), dict(init[1])), int(d["seed"]), int(d["min_count"]),
                   None if d["evict_after"] is None else int(d["evict_after"]))

    def differences(self, other: TableSpec, fields: tuple[str, ...] | None = None) -> list[str]:
        """``"field: a != b"`` for each of ``fields`` (default all) that differs."""
        a, b = self.to_dict(), other.to_dict()
        return [f"{k}: {a[k]!r} != {b[k]!r}" for k in (fields or tuple(a)) if a[k] != b[k]]


# ---------------------------------------------------------------------------------------------- shards
def _grow_rows(a: np.ndarray, need: int) -> np.ndarray:
    if need <= a.shape[0]:
        return a
    out = np.empty((max(need, 2 * a.shape[0]),) + a.shape[1:], dtype=a.dtype)
    out[:a.shape[0]] = a
    return out


class SparseShard:
    """This server's rows of a sparse table: values, optimizer state and per-row step counts and stamps."""

    def __init__(self, spec: TableSpec) -> None:
        self.spec = spec
        self.dim = spec.shape[0]
        self.dtype = spec.np_dtype
        self.key = name_key(spec.name, spec.seed)
        self.rule = spec.rule
        self.init = Initializer.parse(spec.init, f"table {spec.name!r}")
        self.index = RowIndex()
        cap = 64
        self.values = np.empty((cap, self.dim), dtype=self.dtype)
        self.state = self.rule.init_state((cap, self.dim), self.dtype)
        self.steps = np.zeros(cap, dtype=np.int64)
        self.last = np.zeros(cap, dtype=np.int64)
        # ids seen fewer than min_count times: their counts (-1 once admitted) and last-seen stamps
        self.pending = RowIndex()
        self.counts = np.zeros(cap, dtype=np.int64)
        self.pending_last = np.zeros(cap, dtype=np.int64)
        self.created = self.evicted = self.dropped = self.admitted = 0

    def __len__(self) -> int:
        return self.index.n

    def _check(self, fn: str, ids: np.ndarray, grads: np.ndarray | None = None) -> None:
        if ids.ndim != 1 or ids.dtype != np.int64:
            raise DTypeError(f"{fn}({self.spec.name!r}): ids must be a 1-D int64 array, got {ids.dtype} {ids.shape}")
        if grads is not None:
            if grads.shape != (ids.shape[0], self.dim):
                raise ShapeError(f"{fn}({self.spec.name!r}): gradient rows of shape {grads.shape} do not fit "
                                 f"{ids.shape[0]} ids of a table of dim {self.dim}")
            if grads.dtype != self.dtype:
                raise DTypeError(f"{fn}({self.spec.name!r}): gradient dtype {grads.dtype} differs from the "
                                 f"table's {self.dtype}")

    def pull(self, ids: np.ndarray, now: int) -> np.ndarray:
        """The current rows of ``ids`` (the initial value for rows never created)."""
        self._check("pull_sparse", ids)
        rows = self.index.lookup(ids)
        found = rows >= 0
        if found.all():
            self.last[rows] = now
            return self.values[rows]
        out = np.empty((ids.shape[0], self.dim), dtype=self.dtype)
        hit = rows[found]
        out[found] = self.values[hit]
        self.last[hit] = now
        out[~found] = self.init.rows(self.key, ids[~found], self.dim, self.dtype)
        return out

    def push(self, ids: np.ndarray, grads: np.ndarray, now: int) -> None:
        """Apply a gradient for rows ``ids`` with the table's optimizer, creating rows first touched (the
        gradients of repeated ids are summed first)."""
        self._check("push_sparse", ids, grads)
        ids, grads = coalesce(ids, grads)
        rows = self.index.lookup(ids)
        missing = np.flatnonzero(rows < 0)
        if missing.size:
            admit = missing if self.spec.min_count <= 1 else missing[self._count(ids[missing], now)]
            if admit.size:
                rows[admit] = self._create(ids[admit])
            if admit.size < missing.size:
                keep = rows >= 0
                self.dropped += int(missing.size - admit.size)
                rows, grads = rows[keep], grads[keep]
        if rows.size == 0:
            return
        self.steps[rows] += 1
        p = self.values[rows]
        st = {k: a[rows] for k, a in self.state.items()}
        self.rule.apply(p, grads, st, self.steps[rows])
        self.values[rows] = p
        for k, a in st.items():
            self.state[k][rows] = a
        self.last[rows] = now

    def _count(self, ids: np.ndarray, now: int) -> np.ndarray:
        """Count one more sighting of each id (not yet a row); the mask of those now admitted."""
        slot = self.pending.lookup(ids)
        new = slot < 0
        if new.any():
            added = self.pending.add(ids[new])
            self.counts = _grow_rows(self.counts, self.pending.n)
            self.pending_last = _grow_rows(self.pending_last, self.pending.n)
            self.counts[added] = 0
            slot[new] = added
        self.counts[slot] += 1
        self.pending_last[slot] = now
        admit = self.counts[slot] >= self.spec.min_count
        self.counts[slot[admit]] = -1
        self.admitted += int(admit.sum())
        if self.admitted > max(1024, self.pending.n // 2):  # most entries are admitted ids by now
            self._compact_pending(np.flatnonzero(self.counts[:self.pending.n] >= 0))
        return admit

    def _compact_pending(self, keep: np.ndarray) -> None:
        self.pending.rebuild(self.pending.keys[keep])
        self.counts[:keep.size] = self.counts[keep]
        self.pending_last[:keep.size] = self.pending_last[keep]
        self.admitted = 0

    def _create(self, ids: np.ndarray) -> np.ndarray:
        rows = self.index.add(ids)
        n = self.index.n
        if n > self.values.shape[0]:
            self.values = _grow_rows(self.values, n)
            self.state = {k: _grow_rows(a, n) for k, a in self.state.items()}
            self.steps = _grow_rows(self.steps, n)
            self.last = _grow_rows(self.last, n)
        self.values[rows] = self.init.rows(self.key, ids, self.dim, self.dtype)
        fresh = self.rule.init_state((rows.shape[0], self.dim), self.dtype)
        for k, a in fresh.items():
            self.state[k][rows] = a
        self.steps[rows] = 0
        self.created += int(rows.shape[0])
        return rows

    def evict(self, now: int) -> int:
        """Drop rows and pending counts not touched since clock ``now - evict_after``; returns rows dropped."""
        after = self.spec.evict_after
        if after is None:
            return 0
        cutoff = now - after
        n = self.index.n
        dropped = 0
        if n and int(self.last[:n].min()) < cutoff:
            keep = np.flatnonzero(self.last[:n] >= cutoff)
            dropped = n - keep.size
            self._compact(keep)
        m = self.pending.n
        if m and int(self.pending_last[:m].min()) < cutoff:
            self._compact_pending(np.flatnonzero((self.counts[:m] >= 0) & (self.pending_last[:m] >= cutoff)))
        self.evicted += dropped
        return dropped

    def _compact(self, keep: np.ndarray) -> None:
        k = keep.size
        self.index.rebuild(self.index.keys[keep])
        self.values[:k] = self.values[keep]
        for a in self.state.values():
            a[:k] = a[keep]
        self.steps[:k] = self.steps[keep]
        self.last[:k] = self.last[keep]

    def stats(self) -> dict[str, int]:
        n = self.index.n
        per_row = self.dim * self.dtype.itemsize * (1 + len(self.state)) + 16 + 16
        pending = int((self.counts[:self.pending.n] >= 0).sum())
        return {"rows": n, "pending_ids": pending, "created": self.created, "evicted": self.evicted,
                "dropped_updates": self.dropped, "bytes": n * per_row + self.pending.n * 32}

    # ------------------------------------------------------------------ checkpoints
    def snapshot(self) -> dict[str, Any]:
        """The shard's contents as a tree of NumPy arrays (copies) for ``ember.io.save_tree``."""
        n = self.index.n
        alive = np.flatnonzero(self.counts[:self.pending.n] >= 0)
        return {"kind": "sparse", "spec": self.spec.to_dict(), "keys": self.index.keys.copy(),
                "values": self.values[:n].copy(), "state": {k: a[:n].copy() for k, a in self.state.items()},
                "steps": self.steps[:n].copy(), "pending_keys": self.pending.keys[alive].copy(),
                "pending_counts": self.counts[alive].copy()}

    def merge(self, snap: dict[str, Any], mine: np.ndarray, mine_pending: np.ndarray, now: int) -> None:
        """Add the rows ``mine`` (a boolean mask) and pending ids ``mine_pending`` of a saved snapshot."""
        keys = snap["keys"][mine]
        rows = self._create(keys)
        self.created -= rows.shape[0]
        self.values[rows] = snap["values"][mine].astype(self.dtype, copy=False)
        for k in self.state:
            self.state[k][rows] = snap["state"][k][mine].astype(self.dtype, copy=False)
        self.steps[rows] = snap["steps"][mine]
        self.last[rows] = now
        pk = snap["pending_keys"][mine_pending]
        if pk.size:
            added = self.pending.add(pk)
            self.counts = _grow_rows(self.counts, self.pending.n)
            self.pending_last = _grow_rows(self.pending_last, self.pending.n)
            self.counts[added] = snap["pending_counts"][mine_pending]
            self.pending_last[added] = now


class DenseShard:
    """Values ``[lo, hi)`` of a dense table's flattened array, with the optimizer state and the step count."""

    def __init__(self, spec: TableSpec, lo: int, hi: int, values: np.ndarray | None = None) -> None:
        self.spec, self.lo, self.hi = spec, lo, hi
        self.dtype = spec.np_dtype
        self.rule = spec.rule
        if values is None:
            init = Initializer.parse(spec.init, f"table {spec.name!r}")
            values = init.rows(name_key(spec.name, spec.seed), np.arange(lo, hi, dtype=np.int64), 1,
                               self.dtype).reshape(-1)
        elif values.shape != (hi - lo,):
            raise ShapeError(f"create_dense({spec.name!r}): this server's part holds {hi - lo} values, got "
                             f"{values.shape}")
        self.values = np.array(values, dtype=self.dtype)
        self.state = self.rule.init_state((hi - lo,), self.dtype)
        self.step = 0

    def pull(self) -> np.ndarray:
        return self.values.copy()

    def push(self, grad: np.ndarray) -> None:
        if grad.shape != self.values.shape or grad.dtype != self.dtype:
            raise ShapeError(f"push_dense({self.spec.name!r}): this server's part is {self.values.shape} "
                             f"{self.dtype}, got a gradient part of {grad.shape} {grad.dtype}")
        self.step += 1
        self.rule.apply(self.values, grad, self.state, self.step)

    def stats(self) -> dict[str, int]:
        return {"values": self.hi - self.lo, "step": self.step,
                "bytes": (self.hi - self.lo) * self.dtype.itemsize * (1 + len(self.state))}

    def snapshot(self) -> dict[str, Any]:
        return {"kind": "dense", "spec": self.spec.to_dict(), "lo": self.lo, "hi": self.hi, "step": self.step,
                "values": self.values.copy(), "state": {k: a.copy() for k, a in self.state.items()}}
