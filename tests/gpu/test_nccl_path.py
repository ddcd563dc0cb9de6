"""The NCCL path of ``Communicator`` on 2 MPI ranks without a GPU: the stand-in backend
(``tests/gpu/_standin.py``) puts ``cuda`` tensors in host memory and ``FakeNccl`` does NCCL's calls over MPI,
so the dispatch, headers, agreement checks, ``mean``, in-place writes and errors of the GPU path run for
real. That NCCL itself is driven right is for ``test_cuda_real.py`` on two GPUs.
"""

from tests.distributed._mpi import run_ranks

SCRIPT = """
import numpy as np
import ember
import ember.distributed as dist
from tests.distributed._rank_checks import ok, raises
from tests.gpu._standin import FakeNccl, install

install(setattr, nccl=FakeNccl)
comm = dist.init()
r, n = comm.rank, comm.size

def gpu(a):
    return ember.tensor(np.asarray(a), device="cuda")

def vals(t):
    return t.cpu().numpy()

# collectives
for dtype in ("float32", "float64", "int64", "int32"):
    mine = (np.arange(6).reshape(2, 3) * (r + 1) + r).astype(dtype)
    every = [(np.arange(6).reshape(2, 3) * (k + 1) + k).astype(dtype) for k in range(n)]
    for op, ref in (("sum", np.sum), ("max", np.max), ("min", np.min), ("prod", np.prod)):
        out = comm.allreduce(gpu(mine), op=op)
        assert out.device == "cuda:0" and out.dtype.name == dtype, (out.device, out.dtype)
        assert np.array_equal(vals(out), ref(np.stack(every), axis=0).astype(dtype)), (dtype, op)
mean = comm.allreduce(gpu(np.full(3, r, np.float32)), op="mean")
assert np.allclose(vals(mean), 0.5)
t = gpu(np.full(4, r + 1.0, np.float32))
v = t._version[0]
assert comm.allreduce_(t) is t and vals(t).tolist() == [3.0] * 4 and t._version[0] == v + 1
h = comm.iallreduce_(t, op="mean")
assert h.test() and h.wait() is t and vals(t).tolist() == [3.0] * 4
strided = gpu(np.arange(8.0).reshape(2, 4))[:, ::2]  # non-contiguous: reduced in a copy, written back
comm.allreduce_(strided)
assert vals(strided).tolist() == [[0.0, 4.0], [8.0, 12.0]]
ok("allreduce")

b = comm.broadcast(gpu(np.arange(5, dtype=np.int64)) if r == 0 else None, src=0)
assert b.device == "cuda:0" and b.dtype is ember.int64 and vals(b).tolist() == [0, 1, 2, 3, 4]
b = comm.broadcast(gpu([[True, False]]), src=1)
assert vals(b).tolist() == [[True, False]]
c = gpu(np.full(3, float(r)))
assert comm.broadcast_(c, src=1) is c and vals(c).tolist() == [1.0] * 3
c = gpu(np.full(3, float(r)))
assert comm.ibroadcast_(c, src=0).wait() is c and vals(c).tolist() == [0.0] * 3
cpu_b = comm.broadcast(ember.tensor([r + 1.0]) if r == 1 else None, src=1)  # the CPU path is untouched
assert cpu_b.device.type == "cpu" and cpu_b.tolist() == [2.0]
ok("broadcast")

g = comm.allgather(gpu(np.full((1, 2), r, np.int32)))
assert g.device == "cuda:0" and vals(g).tolist() == [[0, 0], [1, 1]]
assert vals(comm.allgather(gpu(np.float16(r)))).tolist() == [0.0, 1.0]
gv = comm.allgather_v(gpu(np.full((r + 1, 2), r + 0.5, np.float32)))
assert vals(gv).tolist() == [[0.5, 0.5], [1.5, 1.5], [1.5, 1.5]]
rs = comm.reduce_scatter(gpu(np.arange(4.0) + r), op="mean")
assert vals(rs).tolist() == ([0.5, 1.5] if r == 0 else [2.5, 3.5])
raises("reduce_scatter shape", ember.ShapeError, lambda: comm.reduce_scatter(gpu(np.ones(3))), "2 equal chunks")
ok("gather/scatter")

# point to point: header over MPI, data over NCCL
if r == 0:
    comm.send(gpu(np.arange(6.0).reshape(2, 3)), dst=1, tag=4)
    comm.send(gpu(np.arange(3, dtype=np.uint8)), dst=1)
    comm.send(ember.tensor([9.0]), dst=1, tag=2)       # a CPU message after GPU ones
    comm.send(gpu(np.ones(2)), dst=1, tag=5)
else:
    got = comm.recv(src=0, tag=4)
    assert got.device == "cuda:0" and vals(got).tolist() == [[0, 1, 2], [3, 4, 5]]
    out = gpu(np.zeros(3, np.uint8))
    assert comm.recv(src=0, out=out) is out and vals(out).tolist() == [0, 1, 2]
    assert comm.recv(src=0, tag=2).tolist() == [9.0]
    raises("recv cpu out", ember.DeviceError, lambda: comm.recv(src=0, tag=5, out=ember.zeros(2, dtype="float64")),
           "rank 0 sent float64 (2,) on a cuda device", "out is float64 (2,) on cpu")
comm.barrier()
raises("isend", ember.DeviceError, lambda: comm.isend(gpu([1.0]), dst=1 - r), "isend", "cuda:0", ".cpu()")
raises("irecv", ember.DeviceError, lambda: comm.irecv(gpu([1.0]), src=1 - r), "irecv", "NCCL")
ok("p2p")

# every rank must pass the same device type
mixed = gpu(np.array([1.0, 2.0], np.float32)) if r == 0 else ember.tensor([1.0, 2.0])
raises("mixed", ember.ShapeError, lambda: comm.allreduce(mixed), "allreduce",
       "rank 0: float32 (2,) on cuda:0, rank 1: float32 (2,)")
raises("op", ValueError, lambda: comm.allreduce(gpu([1.0]), op="avg"), "unknown op 'avg'")
raises("bool", ember.DTypeError, lambda: comm.allreduce(gpu([True])), "cannot reduce a bool")
ok("errors")
assert FakeNccl.calls.count("init") == 1, FakeNccl.calls  # one NCCL communicator, made once
for name in ("allReduce", "broadcast", "allGather", "reduceScatter", "send" if r == 0 else "recv"):
    assert name in FakeNccl.calls, name
comm.free()
ok("nccl calls")
"""


def test_nccl_path_on_two_ranks(tmp_path):
    proc = run_ranks(2, SCRIPT, tmp_path, timeout=120)
    for name in ("allreduce", "broadcast", "gather/scatter", "p2p", "errors", "nccl calls"):
        assert proc.stdout.count(f"<OK {name}>") == 2, (name, proc.stdout, proc.stderr)
