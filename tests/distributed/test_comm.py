"""ember.distributed.comm: every collective against NumPy on known inputs, point-to-point, groups, errors.

Each test starts one MPI job that runs many checks (a launch costs most of a second); a rank prints
``<OK check>`` for each passing check and the test asserts every rank got through all of them.
"""

import subprocess
import sys

from tests.distributed._mpi import ROOT, run_ranks

# Shared by the rank scripts: known per-rank inputs and a comparison that names the check.
PRELUDE = """
import numpy as np
import ember
import ember.distributed as dist
from ember.device import Device
from ember.tensor import _make
from tests.distributed._rank_checks import ok, raises

comm = dist.init()
r, n = comm.rank, comm.size

def value(rank, shape, dtype):
    return (np.arange(int(np.prod(shape))).reshape(shape) * (rank + 1) + 3 * rank - 2).astype(dtype)

def same(name, got, want, tol=0.0):
    got = np.asarray(got.data if isinstance(got, ember.Tensor) else got)
    want = np.asarray(want)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
    assert np.allclose(got, want, rtol=tol, atol=tol) if tol else np.array_equal(got, want), \\
        f"{name}: {got} != {want}"

"""

COLLECTIVES = PRELUDE + """
assert dist.is_initialized() and dist.get_rank() == r and dist.get_world_size() == n == 2
assert dist.world() is comm and dist.init() is comm
assert dist.get_local_rank() == r  # one node
ok("world")

reducers = {"sum": np.sum, "max": np.max, "min": np.min, "prod": np.prod}
for dtype in ("float64", "float32", "int64", "int32"):
    mine = value(r, (3, 4), dtype)
    every = np.stack([value(k, (3, 4), dtype) for k in range(n)])
    for op in ("sum", "mean", "max", "min", "prod"):
        if op == "mean" and dtype.startswith("int"):
            raises("mean of ints", ember.DTypeError, lambda: comm.allreduce(ember.tensor(mine), "mean"),
                   "allreduce", "mean", dtype)
            continue
        want = every.mean(0).astype(dtype) if op == "mean" else reducers[op](every, axis=0).astype(dtype)
        t = ember.tensor(mine)
        out = comm.allreduce(t, op)
        same(f"allreduce {op} {dtype}", out, want)
        same("allreduce leaves input", t, mine)
        t2 = ember.tensor(mine)
        v = t2._version[0]
        assert comm.allreduce_(t2, op) is t2 and t2._version[0] == v + 1
        same(f"allreduce_ {op} {dtype}", t2, want)
        t3 = ember.tensor(mine)
        h = comm.iallreduce_(t3, op)
        assert h.wait() is t3 and h.test() and h.done
        same(f"iallreduce_ {op} {dtype}", t3, want)
        rs = comm.reduce_scatter(ember.tensor(value(r, (4, 3), dtype)), op)
        full = np.stack([value(k, (4, 3), dtype) for k in range(n)])
        fw = full.mean(0).astype(dtype) if op == "mean" else reducers[op](full, axis=0).astype(dtype)
        same(f"reduce_scatter {op} {dtype}", rs, fw[2 * r:2 * r + 2])
    same(f"allgather {dtype}", comm.allgather(ember.tensor(mine)), np.concatenate(list(every)))
    same(f"broadcast {dtype}", comm.broadcast(ember.tensor(mine), src=1), every[1])
    same(f"broadcast None {dtype}", comm.broadcast(ember.tensor(mine) if r == 0 else None), every[0])
    b = ember.tensor(mine)
    assert comm.broadcast_(b, src=1) is b
    same(f"broadcast_ {dtype}", b, every[1])
    b = ember.tensor(mine)
    assert comm.ibroadcast_(b, src=0).wait() is b
    same(f"ibroadcast_ {dtype}", b, every[0])
ok("collectives x dtypes x ops")

# bool and float16 move bit for bit (only reductions need an MPI type)
flags = ember.tensor(np.array([r == 0, True, False]))
same("allgather bool", comm.allgather(flags), np.array([True, True, False, False, True, False]))
half = ember.tensor(np.array([0.5, r], dtype=np.float16))
same("broadcast float16", comm.broadcast(half, src=1), np.array([0.5, 1.0], dtype=np.float16))
raises("reduce bool", ember.DTypeError, lambda: comm.allreduce(flags, "max"), "allreduce", "bool")
ok("bool/float16")

# 0-d tensors, non-contiguous input and in-place targets
same("allgather 0-d", comm.allgather(ember.tensor(float(r))), np.array([0.0, 1.0], np.float32))
same("allreduce 0-d", comm.allreduce(ember.tensor(r + 1.0), "sum"), np.array(3.0, np.float32))
base = value(r, (4, 6), "float64")
tt = ember.tensor(base).T                        # non-contiguous view
assert not tt.is_contiguous()
want = sum(value(k, (4, 6), "float64") for k in range(n)).T
same("allreduce non-contiguous", comm.allreduce(tt), want)
owner = ember.tensor(base)
view = owner[:, ::2]                             # strided view: in place writes through to owner
comm.allreduce_(view)
same("allreduce_ strided view", owner[:, ::2], sum(value(k, (4, 6), "float64") for k in range(n))[:, ::2])
same("allreduce_ strided view untouched", owner[:, 1::2], base[:, 1::2])
nc = ember.tensor(value(r, (3, 4), "float32")).T
h = comm.iallreduce_(nc, "max")
h.wait()
same("iallreduce_ non-contiguous", nc, np.maximum(value(0, (3, 4), "float32"), value(1, (3, 4), "float32")).T)
same("allgather non-contiguous", comm.allgather(ember.tensor(value(r, (2, 3), "int64")).T),
     np.concatenate([value(k, (2, 3), "int64").T for k in range(n)]))
ok("0-d and non-contiguous")

# allgather_v: dim 0 differs per rank
v = ember.tensor(value(r, (r + 1, 2), "float32"))
same("allgather_v", comm.allgather_v(v), np.concatenate([value(k, (k + 1, 2), "float32") for k in range(n)]))
e = ember.tensor(np.zeros((0, 2), dtype=np.float32)) if r == 0 else ember.tensor(np.ones((3, 2), np.float32))
same("allgather_v empty", comm.allgather_v(e), np.ones((3, 2), np.float32))
ok("allgather_v")

# point-to-point: header carries shape and dtype; out=; non-blocking; tags keep messages apart
if r == 0:
    comm.send(ember.tensor(value(0, (2, 3), "int64")), dst=1, tag=5)
    comm.send(ember.tensor(value(0, (5,), "float32")).contiguous(), dst=1, tag=6)
    comm.send(ember.tensor(value(0, (3, 2), "float64")).T, dst=1)       # non-contiguous source
    hs = [comm.isend(ember.tensor(value(0, (4,), "float64")), dst=1, tag=7),
          comm.isend(ember.tensor(value(0, (2, 2), "float32")), dst=1, tag=8)]
    assert all(h.wait() is None for h in hs)
    got = comm.recv(src=1, tag=9)
    same("recv from 1", got, value(1, (3,), "float64"))
    comm.send(ember.tensor(value(0, (2,), "float64")), dst=1, tag=10)   # wrong shape for rank 1's out
    comm.send(ember.tensor(value(0, (6,), "float64")), dst=1, tag=11)   # larger than rank 1's irecv out
    comm.send(ember.tensor([1.5]), dst=1, tag=12)                        # the channel still works afterwards
else:
    same("recv tag 5", comm.recv(src=0, tag=5), value(0, (2, 3), "int64"))
    out = ember.zeros(5)
    assert comm.recv(src=0, tag=6, out=out) is out
    same("recv out=", out, value(0, (5,), "float32"))
    same("recv non-contiguous source", comm.recv(src=0), value(0, (3, 2), "float64").T)
    o8, o7 = ember.zeros(2, 2), ember.zeros(4, dtype="float64")
    h8, h7 = comm.irecv(o8, src=0, tag=8), comm.irecv(o7, src=0, tag=7)    # posted out of order: tags match
    assert h8.wait() is o8 and h7.wait() is o7
    same("irecv tag 7", o7, value(0, (4,), "float64"))
    same("irecv tag 8", o8, value(0, (2, 2), "float32"))
    comm.send(ember.tensor(value(1, (3,), "float64")), dst=0, tag=9)
    raises("recv out mismatch", ember.ShapeError, lambda: comm.recv(src=0, tag=10, out=ember.zeros(3)),
           "recv", "float64 (2,)", "float32 (3,)")
    small = ember.zeros(2, dtype="float64")
    raises("irecv truncated", ember.ShapeError, lambda: comm.irecv(small, src=0, tag=11).wait(),
           "irecv", "(6,)", "(2,)")
    same("recv after errors", comm.recv(src=0, tag=12), np.array([1.5], np.float32))
ok("point-to-point")

# errors at the boundary: same message on every rank, naming the op and what each rank gave
raises("shape mismatch", ember.ShapeError, lambda: comm.allreduce(ember.zeros(2 + r)),
       "allreduce", "rank 0: float32 (2,)", "rank 1: float32 (3,)")
raises("dtype mismatch", ember.ShapeError,
       lambda: comm.allreduce_(ember.zeros(2, dtype="float64" if r else "float32")), "allreduce_", "float64")
raises("allgather mismatch", ember.ShapeError, lambda: comm.allgather(ember.zeros(2, 1 + r)), "allgather")
raises("allgather_v tail mismatch", ember.ShapeError, lambda: comm.allgather_v(ember.zeros(2, 1 + r)),
       "allgather_v", "after dim 0")
raises("broadcast mismatch", ember.ShapeError, lambda: comm.broadcast(ember.zeros(1 + r), src=0),
       "broadcast", "float32 (1,)", "rank 1: float32 (2,)")
raises("broadcast_ mismatch", ember.ShapeError, lambda: comm.broadcast_(ember.zeros(1 + r)), "broadcast_")
raises("reduce_scatter split", ember.ShapeError, lambda: comm.reduce_scatter(ember.zeros(3)),
       "reduce_scatter", "2 equal chunks", "(3,)")
raises("unknown op", ValueError, lambda: comm.allreduce(ember.zeros(2), "avg"), "allreduce", "'avg'", "'mean'")
raises("not a tensor", TypeError, lambda: comm.allreduce(np.zeros(2)), "allreduce", "ndarray")
gpu = _make(np.zeros(2, np.float32), ember.float32, Device("cuda:0"))
raises("device", ember.DeviceError, lambda: comm.allreduce(gpu), "allreduce", "cuda:0", "CPU")
raises("bad dst", ValueError, lambda: comm.send(ember.zeros(1), dst=2), "send", "dst", "[0, 1]")
raises("bad src", ValueError, lambda: comm.broadcast(ember.zeros(1), src=-1), "broadcast", "src")
raises("bad tag", ValueError, lambda: comm.isend(ember.zeros(1), dst=0, tag=-3), "isend", "tag")
readonly = ember.from_numpy(np.broadcast_to(np.ones(3), (2, 3)))
raises("read-only in place", ValueError, lambda: comm.allreduce_(readonly), "read-only")
comm.barrier()
ok("errors")

# checks can be turned off (one round trip fewer); results unchanged
comm.check = False
same("unchecked allreduce", comm.allreduce(ember.tensor([1.0, r])), np.array([2.0, 1.0], np.float32))
comm.check = True
ok("unchecked")
"""


def test_collectives_on_two_ranks(tmp_path):
    proc = run_ranks(2, COLLECTIVES, tmp_path)
    for name in ("world", "collectives x dtypes x ops", "bool/float16", "0-d and non-contiguous", "allgather_v",
                 "point-to-point", "errors", "unchecked"):
        assert proc.stdout.count(f"<OK {name}>") == 2, f"{name}\n{proc.stdout}\n{proc.stderr}"


GROUPS = PRELUDE + """
assert n == 4
# reduce_scatter and allgather_v on 4 ranks
every = np.stack([value(k, (8, 2), "float64") for k in range(n)])
same("reduce_scatter 4", comm.reduce_scatter(ember.tensor(value(r, (8, 2), "float64"))), every.sum(0)[2 * r:2 * r + 2])
same("allgather_v 4", comm.allgather_v(ember.tensor(value(r, (r, 3), "int64"))),
     np.concatenate([value(k, (k, 3), "int64") for k in range(n)]))

# split: a sub-communicator numbered in list order; None outside it
sub = comm.split([3, 1])
if r in (1, 3):
    assert sub.size == 2 and sub.rank == [3, 1].index(r) and sub.world_ranks == (3, 1), sub
    same("split allreduce", sub.allreduce(ember.tensor([float(r)])), np.array([4.0], np.float32))
    same("split allgather", sub.allgather(ember.tensor([r])), np.array([3, 1]))
    if sub.rank == 0:
        sub.send(ember.tensor([7.0]), dst=1)
    else:
        same("split p2p", sub.recv(src=0), np.array([7.0], np.float32))
    h = sub.iallreduce_(ember.tensor([1.0]))
    same("split iallreduce", h.wait(), np.array([2.0], np.float32))
    sub.free()
else:
    assert sub is None
raises("split mismatch", ValueError, lambda: comm.split([0, 1] if r else [0, 2]), "split", "same list")
raises("split range", ValueError, lambda: comm.split([0, 4]), "split", "[4]")
raises("split dup", ValueError, lambda: comm.split([1, 1]), "duplicates")

# split_by: even and odd ranks, numbered by key (reversed)
half = comm.split_by(r % 2, key=-r)
assert half.size == 2 and half.world_ranks == ((2, 0) if r % 2 == 0 else (3, 1)), half.world_ranks
same("split_by allreduce", half.allreduce(ember.tensor([r]), "max"), np.array([2 + r % 2]))
same("split_by broadcast", half.broadcast(ember.tensor([r]), src=0), np.array([2 + r % 2]))
none = comm.split_by(None if r == 0 else 0)
assert (none is None) == (r == 0)
if none is not None:
    assert none.size == 3
    same("split_by rest", none.allreduce(ember.tensor([1])), np.array([3]))
raises("split_by color", ValueError, lambda: comm.split_by(-1), "color")

# several non-blocking operations in flight at once, completed in any order
ts = [ember.tensor([float(r + i)]) for i in range(4)]
hs = [comm.iallreduce_(t, "sum") for t in ts]
for i in (3, 1, 0, 2):
    hs[i].wait()
    same(f"iallreduce {i}", ts[i], np.array([6.0 + 4 * i], np.float32))
ok("groups")
"""


def test_groups_and_nonblocking_on_four_ranks(tmp_path):
    proc = run_ranks(4, GROUPS, tmp_path)
    assert proc.stdout.count("<OK groups>") == 4, proc.stdout + proc.stderr


def test_import_does_not_need_mpi():
    code = ("import sys, ember.distributed as d, ember.data as data; "
            "assert not d.is_initialized() and 'mpi4py.MPI' not in sys.modules; "
            "s = data.DistributedSampler(list(range(10))); assert (s.num_replicas, s.rank) == (1, 0); print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr
