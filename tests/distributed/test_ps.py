"""The parameter server (ember.distributed.ps).

In-process (no MPI): the hash index, sharding, row initializers, sparse/dense shards with frequency
filtering and eviction, the server optimizers against ember.optim, the consistency rules and the
server's request handling, deferred reads and checkpoints (re-sharded onto another server count).

Under MPI (a few launches, each batching many checks): BSP/SSP/ASP bounds with an injected slow
worker, an end-to-end training run whose loss falls, checkpoint round trip through the servers,
error reporting, a failing worker aborting the job, and the CTR example.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ember
import ember.optim as optim
from ember.distributed.ps.consistency import Consistency, DeferredReads, VectorClock
from ember.distributed.ps.optimizers import RowOptimizer
from ember.distributed.ps.protocol import (
    CLOCK,
    CREATE,
    DONE,
    PULL_DENSE,
    PULL_SPARSE,
    PUSH_DENSE,
    PUSH_SPARSE,
    coalesce,
    dense_ranges,
    shard_of,
)
from ember.distributed.ps.server import ServerState
from ember.distributed.ps.tables import DenseShard, Initializer, RowIndex, SparseShard, TableSpec

from ._mpi import ROOT, mpiexec, run_ranks

RNG = np.random.default_rng(0)


def sparse_spec(name: str = "emb", dim: int = 4, optimizer=("sgd", {"lr": 1.0}), init=("normal", {"std": 0.1}),
                min_count: int = 1, evict_after: int | None = None) -> TableSpec:
    opt = RowOptimizer.parse(optimizer, name).to_spec()
    return TableSpec(name, "sparse", (dim,), "float32", opt, Initializer.parse(init, name).to_spec(), 0, min_count,
                     evict_after)


def dense_spec(name: str = "w", shape=(5, 3), optimizer=("sgd", {"lr": 1.0}), init="zeros") -> TableSpec:
    opt = RowOptimizer.parse(optimizer, name).to_spec()
    return TableSpec(name, "dense", shape, "float32", opt, Initializer.parse(init, name).to_spec())


# ---------------------------------------------------------------------------------------------- hashing, sharding
def test_row_index_agrees_with_a_dict_and_rebuilds():
    index, ref = RowIndex(), {}
    for _ in range(30):
        keys = np.unique(np.concatenate([RNG.integers(-2 ** 63, 2 ** 63 - 1, 500, dtype=np.int64),
                                         RNG.integers(0, 3000, 700)]))
        rows = index.lookup(keys)
        assert rows.tolist() == [ref.get(k, -1) for k in keys.tolist()]
        new = keys[rows < 0]
        for k, r in zip(new.tolist(), index.add(new).tolist()):
            ref[k] = r
    assert len(index) == len(ref) and sorted(index.keys.tolist()) == sorted(ref)
    keep = index.keys[::3].copy()
    index.rebuild(keep)
    assert index.lookup(keep).tolist() == list(range(len(keep)))
    gone = np.setdiff1d(np.array(list(ref), dtype=np.int64), keep)
    assert (index.lookup(gone) == -1).all()


def test_sharding_spreads_any_ids_and_dense_ranges_cover():
    for ids in (np.arange(40000), np.arange(40000) * 1024, RNG.integers(-2 ** 63, 2 ** 63 - 1, 40000, dtype=np.int64)):
        owner = shard_of(ids, 3)
        counts = np.bincount(owner, minlength=3)
        assert counts.min() > 0.3 * len(ids)
        assert (shard_of(ids, 3) == owner).all()
    assert (shard_of(np.arange(10), 1) == 0).all()
    assert dense_ranges(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert dense_ranges(1, 2) == [(0, 1), (1, 1)]


def test_coalesce_sums_repeated_ids_including_negative():
    ids = np.array([5, -2 ** 62, 5, 3, -2 ** 62], dtype=np.int64)
    vals = np.arange(10, dtype=np.float32).reshape(5, 2)
    u, s = coalesce(ids, vals)
    assert u.tolist() == [-2 ** 62, 3, 5]
    np.testing.assert_array_equal(s, [[10, 12], [6, 7], [4, 6]])


def test_initializer_is_a_function_of_seed_name_and_id():
    init = Initializer.parse(("normal", {"std": 2.0}), "t")
    ids = RNG.integers(-10 ** 15, 10 ** 15, 50000)
    a = init.rows(np.uint64(7), ids, 8, np.float32)
    b = init.rows(np.uint64(7), ids[::-1], 8, np.float32)[::-1]
    np.testing.assert_array_equal(a, b)  # independent of batch order and composition
    assert abs(a.mean()) < 0.02 and abs(a.std() - 2.0) < 0.02
    assert not np.array_equal(a, init.rows(np.uint64(8), ids, 8, np.float32))
    u = Initializer.parse(("uniform", {"low": -1, "high": 3}), "t").rows(np.uint64(1), ids, 4, np.float64)
    assert u.min() >= -1 and u.max() < 3 and abs(u.mean() - 1) < 0.02
    const = Initializer.parse(("constant", {"value": 0.5}), "t")
    assert (const.rows(np.uint64(1), ids[:3], 2, np.float32) == 0.5).all()
    with pytest.raises(ValueError, match="unknown initializer 'xavier'"):
        Initializer.parse("xavier", "table 'e'")
    with pytest.raises(ValueError, match="std"):
        Initializer.parse(("normal", {"std": -1}), "table 'e'")
    with pytest.raises(ValueError, match="takes mean, std"):
        Initializer.parse(("normal", {"sigma": 1}), "table 'e'")


# ---------------------------------------------------------------------------------------------- shards
def test_sparse_rows_are_created_by_pushes_only_and_read_as_their_initial_value():
    t = SparseShard(sparse_spec(init=("uniform", {"low": 0, "high": 1})))
    ids = np.array([10 ** 12, -3, 7], dtype=np.int64)  # no vocabulary: any int64 ids
    first = t.pull(ids, now=0)
    assert len(t) == 0 and first.shape == (3, 4) and first.dtype == np.float32
    np.testing.assert_array_equal(t.pull(ids, 0), first)
    t.push(ids[:2], np.ones((2, 4), np.float32), now=0)
    assert len(t) == 2 and t.stats()["created"] == 2
    np.testing.assert_allclose(t.pull(ids, 0), first - np.array([[1], [1], [0]], np.float32), rtol=1e-6)
    with pytest.raises(ember.ShapeError, match=r"'emb'.*dim 4"):
        t.push(ids, np.ones((3, 5), np.float32), 0)
    with pytest.raises(ember.DTypeError, match="float64"):
        t.push(ids, np.ones((3, 4), np.float64), 0)


def test_min_count_drops_the_first_updates_of_rare_ids():
    t = SparseShard(sparse_spec(init="zeros", min_count=3))
    for step in range(4):
        t.push(np.array([1, 2], dtype=np.int64) if step < 3 else np.array([2], dtype=np.int64),
               -np.ones((2 if step < 3 else 1, 4), np.float32), now=0)
        if step == 0:
            assert len(t) == 0 and t.stats()["pending_ids"] == 2
    # ids 1 and 2 were admitted on their 3rd push (which is applied), id 2 got one more
    np.testing.assert_array_equal(t.pull(np.array([1, 2, 3], dtype=np.int64), 0)[:, 0], [1, 2, 0])
    s = t.stats()
    assert s["rows"] == 2 and s["pending_ids"] == 0 and s["dropped_updates"] == 4


def test_rows_not_touched_for_evict_after_clocks_are_dropped():
    t = SparseShard(sparse_spec(init="zeros", evict_after=2))
    t.push(np.array([1, 2, 3], dtype=np.int64), -np.ones((3, 4), np.float32), now=0)
    t.pull(np.array([1], dtype=np.int64), now=2)   # a read counts as a touch
    t.push(np.array([2], dtype=np.int64), -np.ones((1, 4), np.float32), now=3)
    assert t.evict(now=3) == 1  # id 3 (last touched at clock 0 < 3 - 2) goes
    assert sorted(t.index.keys.tolist()) == [1, 2]
    np.testing.assert_array_equal(t.pull(np.array([1, 2, 3], dtype=np.int64), 3)[:, 0], [1, 2, 0])
    assert t.evict(now=6) == 2 and len(t) == 0 and t.stats()["evicted"] == 3


def test_dense_shard_holds_its_range_and_checks_gradients():
    spec = dense_spec(init=("normal", {"std": 1.0}))
    whole = DenseShard(spec, 0, 15).pull()
    parts = [DenseShard(spec, lo, hi).pull() for lo, hi in dense_ranges(15, 4)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)  # the initializer works per flat position
    d = DenseShard(spec, 3, 7)
    with pytest.raises(ember.ShapeError, match=r"'w'.*\(4,\)"):
        d.push(np.zeros(5, np.float32))


# ---------------------------------------------------------------------------------------------- optimizers
OPTIMIZERS = [
    ("sgd", {"lr": 0.1}),
    ("sgd", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}),
    ("sgd", {"lr": 0.05, "momentum": 0.8, "nesterov": True}),
    ("sgd", {"lr": 0.05, "momentum": 0.5, "dampening": 0.3}),
    ("adagrad", {"lr": 0.1}),
    ("adagrad", {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.1, "initial_accumulator_value": 0.5}),
    ("adam", {"lr": 0.01}),
    ("adam", {"lr": 0.01, "betas": (0.8, 0.99), "weight_decay": 0.1, "amsgrad": True}),
    ("adamw", {"lr": 0.01, "weight_decay": 0.1}),
]
_CLASSES = {"sgd": optim.SGD, "adagrad": optim.Adagrad, "adam": optim.Adam, "adamw": optim.AdamW}


@pytest.mark.parametrize("name,opts", OPTIMIZERS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(OPTIMIZERS)])
def test_dense_table_optimizer_equals_ember_optim(name, opts):
    start = RNG.standard_normal(12).astype(np.float32)
    spec = dense_spec(shape=(12,), optimizer=(name, opts))
    shards = [DenseShard(spec, lo, hi, start[lo:hi]) for lo, hi in dense_ranges(12, 3)]
    p = ember.nn.Parameter(ember.tensor(start.copy()))
    ref = _CLASSES[name]([p], **opts)
    for _ in range(6):
        g = RNG.standard_normal(12).astype(np.float32)
        for s in shards:
            s.push(g[s.lo:s.hi].copy())
        p.grad = ember.tensor(g)
        ref.step()
    got = np.concatenate([s.pull() for s in shards])
    np.testing.assert_allclose(got, p.detach().numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name,opts", OPTIMIZERS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(OPTIMIZERS)])
def test_sparse_table_optimizer_is_ember_optim_per_row(name, opts):
    """Row-wise lazy: each row behaves as its own parameter whose optimizer steps only when the row is pushed."""
    n, dim = 10, 3
    spec = sparse_spec(dim=dim, optimizer=(name, opts), init=("normal", {"std": 1.0}))
    table = SparseShard(spec)
    ids = np.arange(n, dtype=np.int64) * 7919 - 40000
    rows = [ember.nn.Parameter(ember.tensor(r)) for r in table.pull(ids, 0)]
    ref = _CLASSES[name](rows, **opts)
    for _ in range(8):
        touched = np.flatnonzero(RNG.random(n) < 0.6)
        g = RNG.standard_normal((touched.size, dim)).astype(np.float32)
        table.push(ids[touched].copy(), g, now=0)
        for p in rows:
            p.grad = None
        for i, gi in zip(touched, g):
            rows[i].grad = ember.tensor(gi)
        ref.step()
    np.testing.assert_allclose(table.pull(ids, 0), np.stack([p.detach().numpy() for p in rows]), rtol=1e-6,
                               atol=1e-7)


def test_sparse_adam_table_matches_sparse_adam_when_every_row_is_pushed():
    spec = sparse_spec(dim=2, optimizer=("adam", {"lr": 0.05}), init=("normal", {"std": 1.0}))
    table = SparseShard(spec)
    ids = np.arange(6, dtype=np.int64)
    w = ember.nn.Parameter(ember.tensor(table.pull(ids, 0)))
    ref = optim.SparseAdam([w], lr=0.05)
    for _ in range(5):
        g = RNG.standard_normal((6, 2)).astype(np.float32)
        table.push(ids, g, 0)
        w.grad = ember.sparse.RowSparseGrad(ember.tensor(ids), ember.tensor(g), (6, 2))
        ref.step()
    np.testing.assert_allclose(table.pull(ids, 0), w.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_optimizer_specs_are_checked_with_table_names():
    with pytest.raises(ValueError, match=r"table 'emb'.*invalid learning rate"):
        RowOptimizer.parse(("adam", {"lr": -1}), "table 'emb'")
    with pytest.raises(ValueError, match=r"'maximize'.*options are lr, betas"):
        RowOptimizer.parse(("adam", {"maximize": True}), "table 'emb'")
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'"):
        RowOptimizer.parse("lamb", "table 'emb'")
    with pytest.raises(TypeError, match="a name or a"):
        RowOptimizer.parse(("adam", 0.1), "table 'emb'")
    assert RowOptimizer.parse("adagrad", "t").options["lr"] == 0.01  # ember.optim's default


# ---------------------------------------------------------------------------------------------- consistency
def test_consistency_models_and_required_clock():
    assert Consistency.parse("bsp").required(3) == 3
    assert Consistency.parse("ssp", 2).required(3) == 1
    assert Consistency.parse("ssp", 2).required(1) is None
    assert Consistency.parse("asp").required(100) is None
    assert str(Consistency.parse("SSP", 1)) == "ssp(staleness=1)"
    with pytest.raises(ValueError, match="needs a staleness"):
        Consistency.parse("ssp")
    with pytest.raises(ValueError, match="only applies to consistency 'ssp'"):
        Consistency.parse("asp", 3)
    with pytest.raises(ValueError, match="one of bsp, ssp, asp"):
        Consistency.parse("eventual")


def test_vector_clock_and_deferred_reads():
    vc = VectorClock(3)
    reads = DeferredReads(vc)
    reads.add(1, "a")
    reads.add(2, "b")
    assert vc.advance(0, 2) is False and list(reads.release()) == []
    vc.advance(1, 1)
    assert vc.advance(2, 5) is True and vc.min == 1
    assert list(reads.release()) == ["a"] and len(reads) == 1
    assert vc.finish(1) is True and vc.min == 2 and list(reads.release()) == ["b"]
    with pytest.raises(ValueError, match="went back"):
        vc.advance(0, 1)
    vc.finish(0)
    vc.finish(2)
    assert vc.all_done and vc.allows(10 ** 9) and vc.now == 5


def _msg(op, rid, *args):
    return (op, rid, args[0] if op == CLOCK else args)


def test_server_parks_reads_until_the_bound_allows_them():
    st = ServerState(0, 1, 2)
    assert st.handle(0, _msg(CREATE, 1, sparse_spec(init="zeros").to_dict(), None))[0].ok
    assert st.handle(1, _msg(CREATE, 2, sparse_spec(init="zeros").to_dict(), None))[0].value is False
    bad = st.handle(1, _msg(CREATE, 3, sparse_spec(dim=5).to_dict(), None))[0]
    assert not bad.ok and "already exists with a different definition" in bad.value[1] and "shape" in bad.value[1]
    one = np.array([9], dtype=np.int64)
    for w in (0, 1):  # clock 0: both push +1
        assert st.handle(w, _msg(PUSH_SPARSE, 10 + w, "emb", one, -np.ones((1, 4), np.float32)))[0].ok
    st.handle(0, _msg(CLOCK, 0, 1))
    st.handle(0, _msg(PUSH_SPARSE, 12, "emb", one, -np.ones((1, 4), np.float32)))
    # worker 0 reads at clock 1 with BSP: it needs worker 1 to reach clock 1
    assert st.handle(0, _msg(PULL_SPARSE, 13, "emb", one, 1)) == []
    # an ASP read (required None) is answered at once; unknown tables fail at once even when parked
    assert st.handle(1, _msg(PULL_SPARSE, 14, "emb", one, None))[0].value[0, 0] == 3
    assert "no table named 'nope'" in st.handle(1, _msg(PULL_SPARSE, 15, "nope", one, 5))[0].value[1]
    st.handle(1, _msg(PUSH_SPARSE, 16, "emb", one, -np.ones((1, 4), np.float32)))
    released = st.handle(1, _msg(CLOCK, 0, 1))
    assert [(r.worker, r.request_id) for r in released] == [(0, 13)]
    assert released[0].value[0, 0] == 4
    wrong = st.handle(0, _msg(PUSH_DENSE, 17, "emb", np.zeros(3, np.float32)))[0]
    assert not wrong.ok and "is a sparse table" in wrong.value[1]
    st.handle(0, _msg(PULL_SPARSE, 18, "emb", one, 5))  # parked until worker 1 is done
    st.handle(0, _msg(CLOCK, 0, 5))
    assert [r.request_id for r in st.handle(1, _msg(DONE, 19))] == [19, 18]


def test_server_checkpoint_round_trip_onto_another_number_of_servers(tmp_path):
    specs = [sparse_spec(optimizer=("adam", {"lr": 0.1}), min_count=2), dense_spec(shape=(7,), optimizer="adagrad")]

    def make(num_servers):
        servers = [ServerState(k, num_servers, 1) for k in range(num_servers)]
        for s in servers:
            for spec in specs:
                lo, hi = dense_ranges(7, num_servers)[s.index]
                s.handle(0, _msg(CREATE, 1, spec.to_dict(), np.arange(lo, hi, dtype=np.float32) if spec.kind == "dense"
                                 else None))
        return servers

    def push(servers, ids, g, dg):
        for s in servers:
            mine = shard_of(ids, s.num_servers) == s.index
            assert s.handle(0, _msg(PUSH_SPARSE, 2, "emb", ids[mine], g[mine]))[0].ok
            lo, hi = dense_ranges(7, s.num_servers)[s.index]
            if hi > lo:
                assert s.handle(0, _msg(PUSH_DENSE, 3, "w", dg[lo:hi]))[0].ok

    def read(servers, ids):
        rows = np.zeros((ids.size, 4), np.float32)
        dense = []
        for s in servers:
            mine = shard_of(ids, s.num_servers) == s.index
            rows[mine] = s.handle(0, _msg(PULL_SPARSE, 4, "emb", ids[mine], None))[0].value
            dense.append(s.handle(0, _msg(PULL_DENSE, 5, "w", None))[0].value)
        return rows, np.concatenate(dense)

    ids = RNG.integers(-10 ** 9, 10 ** 9, 300)
    ids = np.unique(ids)
    two = make(2)
    for _ in range(3):
        push(two, ids[: 2 * ids.size // 3], RNG.standard_normal((2 * ids.size // 3, 4)).astype(np.float32),
             RNG.standard_normal(7).astype(np.float32))
    push(two, ids[2 * ids.size // 3:], np.ones((ids.size - 2 * ids.size // 3, 4), np.float32), np.ones(7, np.float32))
    for s in two:
        s.save(str(tmp_path))
    three = make(3)
    for s in three:
        s.load(str(tmp_path), 2)
    before, after = read(two, ids), read(three, ids)
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    assert sum(len(s.tables["emb"]) for s in three) == sum(len(s.tables["emb"]) for s in two) > 0
    # the optimizer state came along: the same next update on both gives the same values
    g, dg = RNG.standard_normal((ids.size, 4)).astype(np.float32), RNG.standard_normal(7).astype(np.float32)
    push(two, ids, g, dg)
    push(three, ids, g, dg)
    np.testing.assert_array_equal(read(two, ids)[0], read(three, ids)[0])
    np.testing.assert_array_equal(read(two, ids)[1], read(three, ids)[1])
    # a checkpoint of another table layout is refused with the table named
    other = ServerState(0, 1, 1)
    other.handle(0, _msg(CREATE, 1, sparse_spec(dim=8).to_dict(), None))
    with pytest.raises(ember.distributed.ps.PSError, match=r"table 'emb'.*shape"):
        other.load(str(tmp_path), 2)


# ---------------------------------------------------------------------------------------------- under MPI
def _result(tmp_path: Path, worker: int) -> dict:
    """What worker ``worker`` of a launch wrote to ``result-{worker}.json``."""
    return json.loads((tmp_path / f"result-{worker}.json").read_text())


CONSISTENCY_SCRIPT = """
    import json, math, sys, time
    import numpy as np
    from ember.distributed import ps as psm

    ps = psm.init(consistency="bsp")
    if ps.is_server:
        try:
            ps.pull_sparse("c", [1])
        except psm.PSError as e:
            assert "worker call" in str(e) and "server ranks call ps.serve()" in str(e), e
        ps.serve()
        sys.exit(0)
    T, DELAY = 8, 0.04
    ids = np.arange(8)  # rows on both servers
    out = {}
    for mode, s in (("bsp", None), ("ssp", 2), ("asp", None)):
        ps.create_sparse("c_" + mode, 1, init="zeros", optimizer=("sgd", {"lr": 1.0}), consistency=mode, staleness=s)
        ps.create_dense("d_" + mode, (3,), optimizer=("sgd", {"lr": 1.0}), consistency=mode, staleness=s)
        bound = 0 if mode == "bsp" else s
        leads, t0 = [], time.perf_counter()
        for c in range(T):
            if ps.worker_index == 1:
                time.sleep(DELAY)  # the slow worker
            v = ps.pull_sparse("c_" + mode, ids).numpy()[:, 0]
            d = ps.pull_dense("d_" + mode).numpy()
            # this worker pushed +1 in each of its c earlier clocks (and reads its own writes); the rest is the other's
            others = min(v.min(), d.min()) - c
            assert v.max() - c <= T, v  # (rows on different servers may have seen different amounts)
            if bound is not None:
                assert others >= c - bound, (mode, c, others)  # never staler than the bound allows
            leads.append(int(c - others))
            ps.push_sparse("c_" + mode, ids, -np.ones((8, 1), np.float32))
            ps.push_dense("d_" + mode, -np.ones(3, np.float32))
            ps.clock()
        out[mode] = {"max_lead": max(leads), "seconds": time.perf_counter() - t0}
        ps.barrier()
        final = ps.pull_sparse("c_" + mode, ids).numpy()[:, 0]
        assert (final == 2 * T).all(), final  # every acknowledged update is there
    clocks = ps.server_clocks()
    assert all(c["clocks"] == [3 * T, 3 * T] and c["waiting"] == 0 for c in clocks), clocks
    with open(f"result-{ps.worker_index}.json", "w") as f:
        json.dump(out, f)
    ps.finish()
"""


def test_bsp_ssp_asp_bounds_hold_with_a_slow_worker(tmp_path):
    run_ranks(4, CONSISTENCY_SCRIPT, tmp_path, env={"EMBER_PS_SERVERS": "2"})
    r = _result(tmp_path, 0)  # from the fast worker
    assert r["bsp"]["max_lead"] == 0           # BSP: never ahead of the slow worker's updates
    assert 1 <= r["ssp"]["max_lead"] <= 2      # SSP(2): runs ahead, up to the bound (2 unless the machine crawls)
    assert r["asp"]["max_lead"] >= 4           # ASP: runs ahead freely
    assert r["asp"]["seconds"] < r["ssp"]["seconds"] and r["asp"]["seconds"] < r["bsp"]["seconds"]
    assert r["bsp"]["seconds"] > 6 * 0.04      # it waited for the slow worker at (almost) every clock


TRAIN_SCRIPT = """
    import json, sys
    import numpy as np
    import ember
    import ember.nn as nn
    from ember.distributed import ps as psm

    ckpt = sys.argv[1]
    ps = psm.init(consistency="ssp", staleness=1)
    if ps.is_server:
        ps.serve()
        sys.exit(0)
    w = ps.worker_index
    out = {}
    # --- errors name the table, the shapes and dtypes
    for call, kind in ((lambda: ps.pull_sparse("nope", [1]), psm.PSError),
                       (lambda: ps.create_dense("bad", (2, 2), init=np.zeros(3, np.float32)), ember.ShapeError),
                       (lambda: ps.create_sparse("bad", 4, optimizer=("adam", {"lr": -1})), ValueError),
                       (lambda: ps.create_sparse("bad", 4, dtype="int32"), ember.DTypeError)):
        try:
            call()
            raise AssertionError("no error")
        except kind as e:
            out.setdefault("errors", []).append(str(e))
    ps.create_sparse("x", 4, init="zeros")
    try:
        ps.push_sparse("x", [1, 2], np.zeros((2, 3), np.float32))
    except ember.ShapeError as e:
        out["errors"].append(str(e))
    try:
        ps.pull_dense("x")
    except psm.PSError as e:
        out["errors"].append(str(e))
    try:  # workers disagreeing on a table
        ps.create_sparse("y", 4 if w == 0 else 8)
        out["conflict"] = None
    except psm.PSError as e:
        out["conflict"] = str(e)

    # --- server-side Adam on pushed rows == ember.optim.Adam on each row (ASP table: no clock coupling)
    ps.create_sparse("opt", 3, optimizer=("adam", {"lr": 0.1}), init=("normal", {"std": 1.0}), consistency="asp")
    ids = np.array([5, -9, 10 ** 15, 77])
    if w == 0:
        rng = np.random.default_rng(1)
        rows = [ember.nn.Parameter(r) for r in ps.pull_sparse("opt", ids)]
        ref = ember.optim.Adam(rows, lr=0.1)
        for step in range(5):
            batch = rng.choice(4, size=6)  # repeated ids are summed
            g = rng.standard_normal((6, 3)).astype(np.float32)
            ps.push_sparse("opt", ids[batch], g)
            for p in rows:
                p.grad = None
            for i in np.unique(batch):
                rows[i].grad = ember.tensor(g[batch == i].sum(0))
            ref.step()
        ps.flush()
        got = ps.pull_sparse("opt", ids).numpy()
        out["adam_max_err"] = float(np.abs(got - np.stack([p.detach().numpy() for p in rows])).max())
    ps.barrier()

    # --- the Embedding layer: forward gives the rows, backward pushes each row's summed gradient
    lin = psm.Embedding("lin", 2, optimizer=("sgd", {"lr": 1.0}), init=("constant", {"value": 0.5}),
                        consistency="asp")
    if w == 0:
        e = lin(ember.tensor(np.array([[3, 4], [3, 3]])))
        assert e.shape == (2, 2, 2) and (e.detach().numpy() == 0.5).all()
        (e * ember.tensor(np.array([1.0, 2.0], np.float32))).sum().backward()
        ps.flush()
        out["emb_grad"] = ps.pull_sparse("lin", [3, 4, 5]).numpy().tolist()
    ps.barrier()

    # --- frequency filtering and eviction
    ps.create_sparse("rare", 2, init="zeros", optimizer=("sgd", {"lr": 1.0}), min_count=2, evict_after=2,
                     consistency="bsp")
    ps.push_sparse("rare", [1, 2 + w], -np.ones((2, 2), np.float32))  # id 1 twice in all, ids 2 and 3 once
    ps.barrier()
    s = ps.table_stats("rare")
    out["rare"] = [s["rows"], s["pending_ids"], s["dropped_updates"], float(ps.pull_sparse("rare", [1]).numpy()[0, 0])]
    for _ in range(4):
        ps.clock()
    ps.pull_sparse("rare", [5])  # BSP: answered once every worker's clocks reached the servers
    s = ps.table_stats("rare")
    out["evicted"] = [s["rows"], s["pending_ids"], s["evicted"]]
    ps.barrier()

    # --- end to end: embeddings on the servers (prefetched), a dense head on the servers
    rng = np.random.default_rng(100 + w)
    truth = np.random.default_rng(0).standard_normal(1000)
    emb = psm.Embedding("emb", 8, optimizer=("adagrad", {"lr": 0.1}), init=("normal", {"std": 0.1}))
    head = nn.Linear(8, 1)
    dense = psm.DenseParameters("head", head, optimizer=("adam", {"lr": 0.02}))
    loss_fn = nn.BCEWithLogitsLoss()
    def batch():
        ids = rng.integers(0, 1000, (64, 5))
        return ids, (truth[ids].sum(1) > 0).astype(np.float32)
    losses, nxt = [], batch()
    for step in range(60):
        ids, y = nxt
        dense.pull()
        logits = head(emb(ember.tensor(ids)).sum(1)).reshape(-1)
        nxt = batch()
        emb.prefetch(nxt[0])
        dense.prefetch()
        loss = loss_fn(logits, ember.tensor(y))
        loss.backward()  # pushes the embedding rows' gradient
        dense.push()
        ps.clock()
        losses.append(loss.item())
    out["loss_first"], out["loss_last"] = float(np.mean(losses[:10])), float(np.mean(losses[-10:]))

    # --- checkpoint round trip through the servers
    probe = np.arange(0, 1000, 7)
    ps.barrier()  # every update is applied; the next ones come after save()'s closing barrier
    saved_rows, saved_head = ps.pull_sparse("emb", probe).numpy(), ps.pull_dense("head").numpy()
    saved_stats = ps.table_stats("emb")
    ps.save(ckpt)
    for _ in range(3):  # move everything away from the checkpoint
        ps.push_sparse("emb", probe, np.ones((probe.size, 8), np.float32))
        ps.push_dense("head", np.ones(9, np.float32))
        ps.clock()
    ps.barrier()
    assert not np.array_equal(ps.pull_sparse("emb", probe).numpy(), saved_rows)
    ps.load(ckpt)
    out["restored"] = bool(np.array_equal(ps.pull_sparse("emb", probe).numpy(), saved_rows)
                           and np.array_equal(ps.pull_dense("head").numpy(), saved_head))
    out["rows_same"] = ps.table_stats("emb")["rows"] == saved_stats["rows"] > 0
    with open(f"result-{w}.json", "w") as f:
        json.dump(out, f)
"""


def test_training_checkpoint_optimizer_and_errors_over_mpi(tmp_path):
    run_ranks(4, TRAIN_SCRIPT, tmp_path, str(tmp_path / "ckpt"), env={"EMBER_PS_SERVERS": "2"})
    r0, r1 = (_result(tmp_path, w) for w in (0, 1))
    errors = r0["errors"]
    assert "no table named 'nope'" in errors[0]
    assert "create_dense('bad'): init has shape (3,), but the table's shape is (2, 2)" in errors[1]
    assert "create_sparse('bad')" in errors[2] and "learning rate" in errors[2]
    assert "create_sparse('bad')" in errors[3] and "int32" in errors[3]
    assert "push_sparse('x'): gradient of shape (2, 3)" in errors[4] and "dim 4" in errors[4]
    assert "table 'x' is a sparse table" in errors[5]
    assert r0["conflict"] is None
    assert "table 'y' already exists with a different definition" in r1["conflict"] and "[4] != [8]" in r1["conflict"]
    assert r0["adam_max_err"] < 1e-6
    assert r0["emb_grad"] == [[-2.5, -5.5], [-0.5, -1.5], [0.5, 0.5]]  # id 3 three times, id 4 once, 5 never
    assert r0["rare"] == [1, 2, 3, 1.0]  # id 1 admitted by its 2nd gradient (applied); 3 gradients dropped
    assert r0["evicted"] == [0, 0, 1]  # untouched for more than 2 clocks: row and pending counts gone
    for r in (r0, r1):
        assert r["loss_last"] < 0.8 * r["loss_first"], r
        assert r["restored"] and r["rows_same"]
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["ps-manifest.json", "ps-shard-00000-of-00002.safetensors", "ps-shard-00001-of-00002.safetensors"]


FAIL_SCRIPT = """
    import sys
    import numpy as np
    from ember.distributed import ps as psm

    ps = psm.init(consistency="bsp")
    if ps.is_server:
        ps.serve()
        sys.exit(0)
    ps.create_sparse("e", 2)
    for step in range(100):
        ps.pull_sparse("e", [1, 2, 3])
        ps.push_sparse("e", [1, 2, 3], np.ones((3, 2), np.float32))
        if ps.worker_index == 1 and step == 3:
            raise RuntimeError("boom at step 3")
        ps.clock()
    print("worker 0 should never get here", flush=True)
"""


def test_a_failing_worker_aborts_the_job_with_a_clear_message(tmp_path):
    proc = run_ranks(3, FAIL_SCRIPT, tmp_path, env={"EMBER_PS_SERVERS": "1"}, check=False, timeout=30)
    assert proc.returncode != 0
    assert "uncaught RuntimeError on rank 1 (worker 1 of 2); aborting the MPI job" in proc.stderr
    assert "boom at step 3" in proc.stderr
    assert "should never get here" not in proc.stdout


def test_ps_ctr_example_trains_to_a_useful_auc(tmp_path):
    cmd = [mpiexec(), "-n", "4", sys.executable, str(ROOT / "examples" / "ps_ctr.py"), "--samples", "24000",
           "--rows", "1000", "--batch-size", "128", "--servers", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "EMBER_PS_SERVERS": "2"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = re.search(r"test AUC (\d\.\d+)", proc.stdout)
    assert m and float(m.group(1)) > 0.68, proc.stdout
