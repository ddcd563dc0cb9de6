"""Hybrid parallelism (data-parallel trunk, column-sharded FC head), its differentiable collectives, and
sufficient-factor broadcasting, on 2-3 MPI ranks against single-process training on the global batch
(every rank also computes that reference). ``plan`` runs in-process."""

from __future__ import annotations

import pytest

import ember
import ember.nn as nn
from ember.distributed.sfb import LayerPlan, plan

from ._mpi import run_ranks

HYBRID = r"""
import numpy as np
import ember, ember.nn as nn
import ember.nn.functional as F
import ember.distributed as dist
from ember.distributed.hybrid import HybridParallel, ShardedLinear, all_gather, all_to_all, reduce_scatter, shard_sizes

comm = dist.init()
W, r = comm.size, comm.rank

# -- the differentiable collectives: values, and gradients (each backward is its forward's adjoint)
rng = np.random.default_rng(0)
rows = [2 + i for i in range(W)]                      # a different size on every rank
xs = [rng.standard_normal((n, 3)) for n in rows]      # every rank knows every rank's input
ys = [rng.standard_normal((sum(rows), 3)) for _ in range(W)]
x = ember.tensor(xs[r], requires_grad=True)
out = all_gather(x, 0)
np.testing.assert_array_equal(out.data, np.concatenate(xs))
(out * ember.tensor(ys[r])).sum().backward()          # d/dx_r sum_i <y_i, gather(x)> = sum_i y_i[block r]
lo = sum(rows[:r])
np.testing.assert_allclose(x.grad.data, sum(ys)[lo:lo + rows[r]], rtol=1e-12)

cols = shard_sizes(7, W)
zs = [rng.standard_normal((4, c)) for c in cols]
z = ember.tensor(zs[r], requires_grad=True)
out = all_gather(z, dim=1, sizes=cols)
np.testing.assert_array_equal(out.data, np.concatenate(zs, axis=1))
gs = [rng.standard_normal((4, 7)) for _ in range(W)]
out.backward(ember.tensor(gs[r]))
c0 = sum(cols[:r])
np.testing.assert_allclose(z.grad.data, sum(gs)[:, c0:c0 + cols[r]], rtol=1e-12)

full = [rng.standard_normal((5, sum(rows))) for _ in range(W)]
f = ember.tensor(full[r], requires_grad=True)
out = reduce_scatter(f, rows, dim=1)
np.testing.assert_allclose(out.data, sum(full)[:, lo:lo + rows[r]], rtol=1e-12)
hs = [rng.standard_normal((5, n)) for n in rows]
out.backward(ember.tensor(hs[r]))
np.testing.assert_array_equal(f.grad.data, np.concatenate(hs, axis=1))

# all_to_all: rank i holds (sum(rows), cols[i]) and gets (rows[i], 7)
blocks = [rng.standard_normal((sum(rows), c)) for c in cols]
b = ember.tensor(blocks[r], requires_grad=True)
out = all_to_all(b, split_dim=0, cat_dim=1, split_sizes=rows)
np.testing.assert_array_equal(out.data, np.concatenate(blocks, axis=1)[lo:lo + rows[r]])
ks = [rng.standard_normal((n, 7)) for n in rows]
out.backward(ember.tensor(ks[r]))
np.testing.assert_array_equal(b.grad.data, np.concatenate(ks, axis=0)[:, c0:c0 + cols[r]])

# -- HybridParallel trains exactly like one process on the global batch
per = 4
X = ember.tensor(rng.standard_normal((per * W, 5)))
Y = ember.tensor(rng.integers(0, 5, per * W))
def build():
    ember.manual_seed(1)
    trunk = nn.Sequential(nn.Linear(5, 8), nn.ReLU()).double()
    head = nn.Sequential(nn.Linear(8, 7), nn.Tanh(), nn.Linear(7, 5)).double()  # 7 and 5 columns: uneven shards
    return trunk, head
trunk, head = build()
ref = nn.Sequential(trunk, head)
hp = HybridParallel(*build())
shards = [m for m in hp.head if isinstance(m, ShardedLinear)]
assert [s.weight.shape[0] for s in shards] == [shard_sizes(7, W)[r], shard_sizes(5, W)[r]]
lins = [m for m in head if isinstance(m, nn.Linear)]
opt_ref = ember.optim.SGD(ref.parameters(), lr=0.5, momentum=0.9)
opt = ember.optim.SGD(hp.parameters(), lr=0.5, momentum=0.9)
xl, yl = X[r * per:(r + 1) * per], Y[r * per:(r + 1) * per]
for step in range(3):
    opt_ref.zero_grad()
    opt.zero_grad()
    F.cross_entropy(ref(X), Y).backward()
    out = hp(xl)
    assert out.shape == (per, 5)
    F.cross_entropy(out, yl).backward()
    for a, b in zip(trunk.parameters(), hp.trunk.parameters()):
        np.testing.assert_allclose(b.grad.data, a.grad.data, rtol=1e-10, atol=1e-14)
    for lin, s in zip(lins, shards):
        sl = slice(s.col_start, s.col_start + s.weight.shape[0])
        np.testing.assert_allclose(s.weight.grad.data, lin.weight.grad.data[sl], rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(s.bias.grad.data, lin.bias.grad.data[sl], rtol=1e-10, atol=1e-14)
    opt_ref.step()
    opt.step()
for lin, (w, bias) in zip(lins, hp.gather_head()):
    np.testing.assert_allclose(w.data, lin.weight.data, rtol=1e-10)
    np.testing.assert_allclose(bias.data, lin.bias.data, rtol=1e-10)
for a, b in zip(trunk.parameters(), hp.trunk.parameters()):
    np.testing.assert_allclose(b.data, a.data, rtol=1e-10)

try:
    HybridParallel(nn.Linear(5, 8), [nn.Linear(8, 4), nn.LayerNorm(4)])
except TypeError as e:
    assert "head[1] (LayerNorm) has parameters" in str(e), str(e)
else:
    raise AssertionError("LayerNorm in the head")
print("HYBRID OK", r)
"""

SFB = r"""
import numpy as np
import ember, ember.nn as nn
import ember.nn.functional as F
import ember.distributed as dist
from ember.distributed.sfb import SFBDataParallel, plan

comm = dist.init()
W, r = comm.size, comm.rank
rng = np.random.default_rng(0)
per = 4
X = ember.tensor(rng.standard_normal((per * W, 20)))
Y = ember.tensor(rng.integers(0, 3, per * W))
xl, yl = X[r * per:(r + 1) * per], Y[r * per:(r + 1) * per]

def build():
    ember.manual_seed(1)
    return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 3)).double()

ref, m_auto, m_sfb, m_ddp = build(), build(), build(), build()
auto = SFBDataParallel(m_auto, batch=per)                 # 20x30 by SFB, 30x3 by all-reduce
assert auto.sfb_layers == ["0"], auto.layer_plan
every = SFBDataParallel(m_sfb, strategy="sfb")
assert every.sfb_layers == ["0", "2"]
ddp = dist.DistributedDataParallel(m_ddp)
models = [ref, m_auto, m_sfb, m_ddp]
opts = [ember.optim.SGD(m.parameters(), lr=0.3, momentum=0.9) for m in models]
steps = 4
for step in range(steps):
    for o in opts:
        o.zero_grad()
    F.cross_entropy(ref(X), Y).backward()
    for wrapped in (auto, every, ddp):
        F.cross_entropy(wrapped(xl), yl).backward()
    for ps in zip(*(m.parameters() for m in models)):
        for p in ps[1:]:
            np.testing.assert_allclose(p.grad.data, ps[0].grad.data, rtol=1e-10, atol=1e-14)
    for o in opts:
        o.step()
for ps in zip(*(m.parameters() for m in models)):
    for p in ps[1:]:
        np.testing.assert_allclose(p.data, ps[0].data, rtol=1e-10, atol=1e-14)
for p in list(m_auto.parameters()) + list(m_sfb.parameters()):  # replicas stay bit-identical
    g = comm.allgather(p.detach()[None])
    assert all(np.array_equal(g.data[0], g.data[i]) for i in range(W))
rec = {p.name: p for p in auto.layer_plan}
assert auto.sfb_bytes_sent == steps * rec["0"].sfb_bytes, (auto.sfb_bytes_sent, rec["0"])

# no_sync: SFB defers the factors to the synchronizing backward, like DDP's accumulated all-reduce
a, d = build(), build()
sa, sd = SFBDataParallel(a, strategy="sfb"), dist.DistributedDataParallel(d)
half = per // 2
for wrapped in (sa, sd):
    with wrapped.no_sync():
        F.cross_entropy(wrapped(xl[:half]), yl[:half]).backward()
    F.cross_entropy(wrapped(xl[half:]), yl[half:]).backward()
for p, q in zip(a.parameters(), d.parameters()):
    np.testing.assert_allclose(p.grad.data, q.grad.data, rtol=1e-10, atol=1e-14)

# a Linear applied to 3-D input (rows = batch * positions) and called twice in one forward
class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.out = nn.Linear(6, 2)
    def forward(self, x):
        return self.out(self.fc(self.fc(x).tanh()).tanh())
def build2():
    ember.manual_seed(3)
    return Twice().double()
Z = ember.tensor(rng.standard_normal((W * 2, 3, 6)))
T = ember.tensor(rng.standard_normal((W * 2, 3, 2)))
zl, tl = Z[r * 2:(r + 1) * 2], T[r * 2:(r + 1) * 2]
ref2, b = build2(), build2()
sb = SFBDataParallel(b, strategy="sfb")
F.mse_loss(ref2(Z), T).backward()
F.mse_loss(sb(zl), tl).backward()
for p, q in zip(ref2.parameters(), b.parameters()):
    np.testing.assert_allclose(q.grad.data, p.grad.data, rtol=1e-10, atol=1e-14)

try:
    SFBDataParallel(build())
except ValueError as e:
    assert "needs batch=" in str(e), str(e)
else:
    raise AssertionError("auto without batch")
print("SFB OK", r)
"""


@pytest.mark.parametrize("n", [2, 3])
def test_hybrid_matches_single_process(tmp_path, n):
    out = run_ranks(n, HYBRID, tmp_path).stdout
    assert out.count("HYBRID OK") == n


@pytest.mark.parametrize("n", [2, 3])
def test_sfb_matches_allreduce_and_single_process(tmp_path, n):
    out = run_ranks(n, SFB, tmp_path).stdout
    assert out.count("SFB OK") == n


def test_plan_bytes_and_choices(capsys):
    model = nn.Sequential(nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 10))
    recs = plan(model, 2, 32)
    assert all(isinstance(p, LayerPlan) for p in recs)
    big, small = recs
    assert (big.name, big.in_features, big.out_features, big.rows, big.itemsize) == ("0", 2048, 2048, 32, 4)
    assert big.allreduce_bytes == (2048 * 2048 + 2048) * 4          # 2 * (W - 1) / W = 1 for two ranks
    assert big.sfb_bytes == 32 * (2048 + 2048) * 4
    assert big.choice == "sfb" and small.choice == "allreduce"
    table = capsys.readouterr().out
    assert "2048 x 2048" in table and "sfb" in table and "16.0 MiB" in table and "512.0 KiB" in table

    four = plan(model, 4, 32, verbose=False)[0]
    assert four.allreduce_bytes == 2 * 3 * (2048 * 2048 + 2048) * 4 // 4 and four.sfb_bytes == 3 * 32 * 4096 * 4
    assert plan(model, 2, 4096, verbose=False)[0].choice == "allreduce"  # big batches: all-reduce is cheaper
    assert [p.choice for p in plan(model, 2, None, strategy="sfb", verbose=False)] == ["sfb", "sfb"]
    assert plan(model, 2, {"0": 16, "2": 16}, verbose=False)[0].rows == 16
    assert plan(model, 1, 32, verbose=False)[0].allreduce_bytes == 0


def test_plan_skips_frozen_and_shared_layers_and_validates():
    lin = nn.Linear(64, 64)
    frozen = nn.Linear(64, 64)
    frozen.weight.requires_grad_(False)
    tied = nn.Linear(64, 64)
    tied.weight = lin.weight                     # weight tying: the weight's gradient is not E.T @ X alone
    model = nn.Sequential(lin, frozen, tied, lin)  # a layer used twice is fine
    recs = plan(model, 2, 1, verbose=False)
    assert [(p.name, p.choice, p.note) for p in recs] == [("0", "allreduce", "shared parameter"),
                                                          ("1", "allreduce", "frozen weight"),
                                                          ("2", "allreduce", "shared parameter")]
    assert plan(nn.Sequential(lin, nn.ReLU(), lin), 2, 1, verbose=False)[0].choice == "sfb"
    with pytest.raises(ValueError, match="needs batch"):
        plan(model, 2, None)
    with pytest.raises(ValueError, match="unknown strategy"):
        plan(model, 2, 4, strategy="ring")
    with pytest.raises(ValueError, match="world_size"):
        plan(model, 0, 4)
    with pytest.raises(KeyError, match="not Linear layers"):
        plan(model, 2, {"fc9": 4})
    with pytest.raises(TypeError, match="Module"):
        plan(ember.zeros(3), 2, 4)
