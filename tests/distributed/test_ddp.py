"""DistributedDataParallel: N ranks with batch B train exactly like one process with batch N*B.

One MPI job per rank count runs every check; each rank writes ``<OK check>`` for each passing one.
"""

import pytest

from tests.distributed._mpi import run_ranks

SCRIPT = """
import numpy as np
import ember
import ember.distributed as dist
from ember import nn
from ember.data import DataLoader, DistributedSampler, TensorDataset
from tests.distributed._rank_checks import ok

comm = dist.init()
r, n = comm.rank, comm.size
DDP = dist.DistributedDataParallel

class Net(nn.Module):
    def __init__(self, seed, extra=False):
        super().__init__()
        ember.manual_seed(seed)
        self.l1 = nn.Linear(5, 16)
        self.l2 = nn.Linear(16, 16)
        self.l3 = nn.Linear(16, 3)
        self.extra = nn.Linear(16, 3) if extra else None
        self.events = None
        self.use_extra = False
        self.double()

    def forward(self, x):
        h = self.l1(x)
        if self.events is not None and h.requires_grad:
            h.register_hook(lambda g: self.events.append("h1"))
        h = self.l2(h.tanh()).tanh()
        out = self.l3(h)
        if self.use_extra:
            out = out + self.extra(h)
        return out

def params(m):
    return [p.data.copy() for p in m.parameters()]

def max_diff(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))

def same_on_all_ranks(t):
    g = comm.allgather(ember.tensor(t)[None])
    return all(np.array_equal(g.data[0], g.data[k]) for k in range(n))

rng = np.random.default_rng(0)
B, STEPS = 4, 4
X = rng.standard_normal((n * B * STEPS, 5))
Y = rng.standard_normal((n * B * STEPS, 3))
data = TensorDataset(ember.tensor(X), ember.tensor(Y))

def loss_fn(out, y):
    return ((out - y) ** 2).mean()

def reference(batches, lr=0.1, momentum=0.9, micro=1, extra=False):
    # one process, global batches; init equal to rank 0's
    ref = Net(100, extra)
    ref.use_extra = extra
    opt = ember.optim.SGD(ref.parameters(), lr=lr, momentum=momentum)
    for idx in batches:
        opt.zero_grad()
        for part in np.array_split(idx, micro):
            (loss_fn(ref(ember.tensor(X[part])), ember.tensor(Y[part])) / micro).backward()
        opt.step()
    return params(ref)

# ---- equivalence through DistributedSampler + DataLoader, one bucket and one bucket per parameter
sampler = DistributedSampler(data, shuffle=True, seed=3)
loader = DataLoader(data, batch_size=B, sampler=sampler)
per_rank = [DistributedSampler(data, num_replicas=n, rank=k, shuffle=True, seed=3).indices() for k in range(n)]
global_batches = [np.concatenate([ix[s * B:(s + 1) * B] for ix in per_rank]) for s in range(STEPS)]
want = reference(global_batches)
for cap, nbuckets in ((25.0, 1), (1e-5, 6)):
    model = Net(100 + r)                        # different init per rank: construction broadcasts rank 0's
    ddp = DDP(model, bucket_cap_mb=cap)
    assert ddp.module is model and len(ddp.bucket_info()) == nbuckets, ddp.bucket_info()
    assert ddp.bucket_info()[0][0] == "l3.bias"  # reverse registration order
    opt = ember.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    for x, y in loader:
        opt.zero_grad()
        loss_fn(ddp(x), y).backward()
        opt.step()
    d = max_diff(params(model), want)
    assert d < 1e-10, (cap, d)
ok("equivalence")

# ---- overlap: a bucket's all-reduce starts before backward reaches the first layer
model = Net(7)
ddp = DDP(model, bucket_cap_mb=1e-5)
events = model.events = []
orig = comm.iallreduce_
comm.iallreduce_ = lambda t, op="sum": (events.append("launch"), orig(t, op))[1]
try:
    loss_fn(ddp(ember.tensor(X[:B])), ember.tensor(Y[:B])).backward()
    events.append("end")
finally:
    del comm.iallreduce_
assert events.count("launch") == 6 and events[0] == "launch", events
assert events.index("launch") < events.index("h1") < len(events) - 1 - events[::-1].index("launch"), events
assert events[-1] == "end"
assert all(same_on_all_ranks(p.grad.data) for p in model.parameters())
ok("overlap")

# ---- no_sync: accumulate locally, sync on the last micro-batch == one process on the whole batch
model = Net(100 + r)
ddp = DDP(model, bucket_cap_mb=1e-3)
opt = ember.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
batches = [np.arange(s * n * B, (s + 1) * n * B) for s in range(2)]
for idx in batches:
    mine = idx[r * B:(r + 1) * B]
    first, second = mine[:B // 2], mine[B // 2:]
    opt.zero_grad()
    with ddp.no_sync():
        (loss_fn(ddp(ember.tensor(X[first])), ember.tensor(Y[first])) / 2).backward()
    assert not same_on_all_ranks(model.l1.weight.grad.data)      # still local
    (loss_fn(ddp(ember.tensor(X[second])), ember.tensor(Y[second])) / 2).backward()
    assert same_on_all_ranks(model.l1.weight.grad.data)
    opt.step()
# the reference sums two half-batch losses per rank: group indices per micro-step like the ranks do
ref_batches = [np.concatenate([idx[k * B:(k + 1) * B] for k in range(n)]) for idx in batches]
want = reference(ref_batches)  # mean over n*B == sum over ranks of (half means / 2) / n
assert max_diff(params(model), want) < 1e-10
ok("no_sync")

# ---- skip_params are left alone; everything else is averaged
model = Net(5)
ddp = DDP(model, skip_params=[model.l1.weight])
assert all("l1.weight" not in names for names in ddp.bucket_info())
loss_fn(ddp(ember.tensor(X[r * B:(r + 1) * B])), ember.tensor(Y[r * B:(r + 1) * B])).backward()
assert not same_on_all_ranks(model.l1.weight.grad.data)
assert same_on_all_ranks(model.l1.bias.grad.data) and same_on_all_ranks(model.l3.weight.grad.data)
try:
    DDP(Net(5), skip_params=[model.l1.weight])
except ValueError as e:
    assert "not a parameter of the module" in str(e)
else:
    raise AssertionError("skip_params of another module accepted")
ok("skip_params")

# ---- unused parameters: an unfinished sync is reported, finish_gradient_sync() completes it
model = Net(100 + r, extra=True)
ddp = DDP(model, bucket_cap_mb=1e-5)
xb, yb = ember.tensor(X[r * B:(r + 1) * B]), ember.tensor(Y[r * B:(r + 1) * B])
loss_fn(ddp(xb), yb).backward()
try:
    ddp(xb)
except dist.DistributedError as e:
    assert "extra.weight" in str(e) and "find_unused_parameters" in str(e), e
else:
    raise AssertionError("unfinished sync not reported")
ddp.finish_gradient_sync()
ddp.finish_gradient_sync()  # nothing pending: a no-op
assert model.extra.weight.grad is None  # unused on every rank: no gradient invented
assert same_on_all_ranks(model.l1.weight.grad.data)
ok("finish_gradient_sync")

# find_unused_parameters: automatic, and equivalent to one process
model = Net(100 + r, extra=True)
ddp = DDP(model, bucket_cap_mb=1e-5, find_unused_parameters=True)
opt = ember.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
for s in range(2):
    idx = np.arange(s * n * B, (s + 1) * n * B)[r * B:(r + 1) * B]
    opt.zero_grad()
    loss_fn(ddp(ember.tensor(X[idx])), ember.tensor(Y[idx])).backward()
    opt.step()
want = reference([np.arange(s * n * B, (s + 1) * n * B) for s in range(2)], extra=False)
assert max_diff(params(model)[:6], want) < 1e-10 and model.extra.weight.grad is None
# a branch used on rank 0 only: its gradient is the mean with zeros from the other ranks
model.zero_grad()
model.use_extra = r == 0
loss_fn(ddp(xb), yb).backward()
g = model.extra.weight.grad.data
assert same_on_all_ranks(g)
model.use_extra = False
ok("find_unused_parameters")

# ---- buffers broadcast from rank 0, state_dict passes through
class WithBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.register_buffer("stat", ember.full((3,), float(r)))
        self.register_buffer("count", ember.tensor([r], dtype="int64"))
    def forward(self, x):
        return self.lin(x)

m = WithBuffer()
ddp = DDP(m)
assert m.stat.tolist() == [0.0, 0.0, 0.0] and m.count.tolist() == [0]
m.stat.data[...] = r + 5
ddp(ember.zeros(1, 2))
assert m.stat.tolist() == [5.0] * 3                # re-broadcast before a training forward
sd = ddp.state_dict()
assert list(sd) == list(m.state_dict()) and set(sd) == {"lin.weight", "lin.bias", "stat", "count"}
ddp.load_state_dict({"module." + k: ember.zeros_like(v) for k, v in sd.items()})
assert float(m.lin.weight.abs().sum()) == 0.0
ok("buffers and state_dict")

# ---- float32 models, and models that differ across ranks are refused on every rank
m32 = nn.Linear(4, 2)
ddp = DDP(m32)
ddp(ember.tensor(rng.standard_normal((3, 4)) * (r + 1), dtype="float32")).sum().backward()
assert m32.weight.grad.dtype == ember.float32 and same_on_all_ranks(m32.weight.grad.data)
try:
    DDP(nn.Linear(3, 2 + r))
except ValueError as e:
    assert "same parameters" in str(e) and "rank 0" in str(e), e
else:
    raise AssertionError("different models accepted")
ok("float32 and mismatch")

# ---- a sparse (row) gradient is all-reduced dense
emb = nn.Embedding(10, 3, sparse=True)
ddp = DDP(emb)
ddp(ember.tensor([r, 5])).sum().backward()
want = np.zeros((10, 3))
for k in range(n):
    want[[k, 5]] += 1.0 / n
assert isinstance(emb.weight.grad, ember.Tensor) and np.allclose(emb.weight.grad.data, want)
ok("sparse")
"""

CHECKS = ("equivalence", "overlap", "no_sync", "skip_params", "finish_gradient_sync", "find_unused_parameters",
          "buffers and state_dict", "float32 and mismatch", "sparse")


@pytest.mark.parametrize("n", [2, 3])
def test_ddp(tmp_path, n):
    proc = run_ranks(n, SCRIPT, tmp_path)
    for name in CHECKS:
        assert proc.stdout.count(f"<OK {name}>") == n, f"{name}\n{proc.stdout}\n{proc.stderr}"
