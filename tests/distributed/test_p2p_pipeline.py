"""Differentiable send/recv and pipeline parallelism on 2-3 MPI ranks: float64 gradients against the
unsplit model, which every rank also computes."""

from __future__ import annotations

import pytest

from ._mpi import run_ranks

P2P = r"""
import numpy as np
import ember, ember.nn as nn
import ember.nn.functional as F
import ember.distributed as dist
from ember.distributed import p2p
from ember.distributed.p2p import recv, send, wait_sends

comm = dist.init()
assert comm.size == 2
rank = comm.rank
rng = np.random.default_rng(0)
x = ember.tensor(rng.standard_normal((6, 4)))
t = ember.tensor(rng.standard_normal((6, 3)))
ember.manual_seed(0)
s0 = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 5), nn.ReLU()).double()
s1 = nn.Sequential(nn.Linear(5, 3)).double()
full = nn.Sequential(s0, s1)
x, t = x.double(), t.double()

def ref_grads():
    full.zero_grad()
    F.mse_loss(full(x), t).backward()
    out = [p.grad.data.copy() for p in full.parameters()]
    full.zero_grad()
    return out

def check(mod, ref):
    got = [p.grad.data for p in mod.parameters()]
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)

ref = ref_grads()
n0 = len(list(s0.parameters()))

# 1. a two-stage split: rank 0 backward()s the send's delegate, rank 1 the loss
if rank == 0:
    phi = send(s0(x), 1)
    assert phi.shape == () and phi.requires_grad
    phi.backward()
    check(s0, ref[:n0])
else:
    h = recv(0)
    assert h.requires_grad and h.shape == (6, 5) and h.dtype is ember.float64
    F.mse_loss(s1(h), t).backward()
    check(s1, ref[n0:])
wait_sends()
assert not p2p._PENDING

# 2. a round trip 0 -> 1 -> 0, the loss on rank 0: recv(delegate=phi) chains the two messages
full.zero_grad()
if rank == 0:
    phi = send(s0(x), 1)
    y = recv(1, delegate=phi)
    F.mse_loss(y, t).backward()  # sends dL/dy to rank 1, then receives dL/dh from it
    check(s0, ref[:n0])
else:
    phi = send(s1(recv(0)), 0)
    phi.backward()
    check(s1, ref[n0:])
wait_sends()

# 3. tags, several messages at once, dtypes and tensors without gradient
a = ember.tensor(rng.standard_normal((2, 3, 4)), dtype=ember.float32, requires_grad=True)
b = ember.tensor(rng.standard_normal((5,)), requires_grad=True)
labels = ember.tensor(np.arange(7))
plain = ember.tensor(rng.standard_normal((3,)))
if rank == 0:
    phis = [send(a, 1, tag=1), send(b, 1, tag=2), send(labels, 1, tag=3), send(plain, 1, tag=4)]
    assert not phis[2].requires_grad and not phis[3].requires_grad
    ember.autograd.backward(phis[:2])
    np.testing.assert_allclose(a.grad.data, 2 * a.data)
    np.testing.assert_allclose(b.grad.data, 3 * np.ones(5))
else:
    pl = recv(0, tag=4)  # received out of order: MPI matches by tag
    lb = recv(0, tag=3)
    hb = recv(0, tag=2)
    ha = recv(0, tag=1)
    assert ha.dtype is ember.float32 and ha.shape == (2, 3, 4) and ha.requires_grad
    assert lb.dtype is ember.int64 and not lb.requires_grad and lb.tolist() == list(range(7))
    assert not pl.requires_grad and np.array_equal(pl.data, plain.data)
    np.testing.assert_array_equal(ha.data, a.data)
    ((ha * ha).sum() + 3 * hb.sum()).backward()
wait_sends()

# 4. under no_grad nothing waits for a gradient
with ember.no_grad():
    if rank == 0:
        assert not send(s0(x), 1).requires_grad
    else:
        assert not recv(0).requires_grad
wait_sends()

# 5. bad arguments name the op and the problem
for call, err, words in [(lambda: send(x, rank), ValueError, "own rank"),
                         (lambda: send(x, 5), ValueError, "dst must be a rank"),
                         (lambda: send(x.data, 1 - rank), TypeError, "expected a Tensor"),
                         (lambda: send(x, 1 - rank, tag=-1), ValueError, "tag"),
                         (lambda: recv(rank), ValueError, "own rank"),
                         (lambda: recv(0 if rank else 1, delegate=3), TypeError, "delegate")]:
    try:
        call()
    except err as e:
        assert words in str(e), str(e)
    else:
        raise AssertionError(f"no {err.__name__} for {words}")
print("P2P OK", rank)
"""

PIPELINE = r"""
import numpy as np
import ember, ember.nn as nn
import ember.nn.functional as F
import ember.distributed as dist
from ember.distributed.pipeline import Pipeline

comm = dist.init()
S, rank = comm.size, comm.rank
rng = np.random.default_rng(1)
x = ember.tensor(rng.standard_normal((10, 4)))
t = ember.tensor(rng.standard_normal((10, 3)))
dims = [4, 6, 5, 7, 6, 3]
bounds = np.array_split(np.arange(len(dims) - 1), S)

def stages():
    # the same initial weights on every call, in fresh tensors
    ember.manual_seed(2)
    blocks = [nn.Sequential(nn.Linear(a, b), nn.Tanh()).double() for a, b in zip(dims, dims[1:])]
    return [nn.Sequential(*[blocks[i] for i in b]) for b in bounds]

full = nn.Sequential(*stages())

def reference(loss_fn):
    full.zero_grad()
    loss = loss_fn(full(x), t)
    loss.backward()
    grads = [p.grad.data.copy() for p in full[rank].parameters()]  # this rank's stage of the full model
    full.zero_grad()
    return loss.item(), grads

def check_grads(pipe, ref, scale=1.0):
    got = [p.grad.data for p in pipe.parameters()]
    assert len(got) == len(ref) > 0
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, scale * b, rtol=1e-11, atol=1e-14)

def ins(pipe):
    return (x if pipe.is_first else None), (t if pipe.is_last else None)

loss_ref, ref = reference(F.mse_loss)
for schedule in ("gpipe", "1f1b"):
    for m in (1, 3, 4, 10):  # 10 rows in 3 or 4 microbatches: uneven sizes
        pipe = Pipeline(stages(), m, schedule=schedule)
        loss = pipe.step(*ins(pipe), F.mse_loss)
        assert abs(loss - loss_ref) < 1e-12, (schedule, m, loss, loss_ref)
        check_grads(pipe, ref)
        assert pipe.max_live == (m if schedule == "gpipe" else min(S - rank, m)), (schedule, m, pipe.max_live)

# this rank's stage given alone; loss_reduction="sum"; gradients accumulate over two steps
pipe = Pipeline(stages()[rank], 4, schedule="1f1b", loss_reduction="sum")
sum_loss = lambda y, tt: F.mse_loss(y, tt, reduction="sum")
loss_ref, ref = reference(sum_loss)
for _ in range(2):
    loss = pipe.step(*ins(pipe), sum_loss)
    assert abs(loss - loss_ref) < 1e-9 * abs(loss_ref)
check_grads(pipe, ref, 2.0)

# training: three SGD steps equal unsplit training on the whole batch; then inference
pipe = Pipeline(nn.ModuleList(stages()), 5, schedule="1f1b")
opt = ember.optim.SGD(pipe.parameters(), lr=0.2, momentum=0.9)
opt_full = ember.optim.SGD(full.parameters(), lr=0.2, momentum=0.9)
for _ in range(3):
    opt.zero_grad()
    opt_full.zero_grad()
    loss = pipe.step(*ins(pipe), F.mse_loss)
    F.mse_loss(full(x), t).backward()
    opt.step()
    opt_full.step()
for a, b in zip(pipe.parameters(), full[rank].parameters()):
    np.testing.assert_allclose(a.data, b.data, rtol=1e-11, atol=1e-14)
out = pipe(x if pipe.is_first else None)
if pipe.is_last:
    np.testing.assert_allclose(out.data, full(x).data, rtol=1e-11)
else:
    assert out is None

# wide activations (messages beyond MPI's eager limit, sent both ways at once in 1F1B's steady state)
ember.manual_seed(4)
wide = [nn.Sequential(nn.Linear(4, 8192), nn.Tanh()).double()]
wide += [nn.Sequential(nn.LayerNorm(8192), nn.Tanh()).double() for _ in range(S - 2)]
wide.append(nn.Linear(8192, 3).double())
wide_full = nn.Sequential(*wide)
F.mse_loss(wide_full(x), t).backward()
ref = [p.grad.data.copy() for p in wide[rank].parameters()]
wide_full.zero_grad()
pipe = Pipeline(wide, 5, schedule="1f1b")
pipe.step(*ins(pipe), F.mse_loss)
check_grads(pipe, ref)

# bad arguments (raised on every rank before any communication)
for kwargs, words in [({"microbatches": 0}, "microbatches must be an int >= 1"),
                      ({"microbatches": 2, "schedule": "zigzag"}, "unknown schedule"),
                      ({"microbatches": 2, "loss_reduction": "max"}, "loss_reduction")]:
    try:
        Pipeline(stages(), **kwargs)
    except ValueError as e:
        assert words in str(e), str(e)
    else:
        raise AssertionError(words)
try:
    Pipeline(stages() + [nn.Linear(3, 3)], 2)
except ValueError as e:
    assert f"{S + 1} stages for {S} ranks" in str(e), str(e)
else:
    raise AssertionError("stage count")
print("PIPELINE OK", rank)
"""


def test_send_recv_split_model_matches_unsplit(tmp_path):
    out = run_ranks(2, P2P, tmp_path).stdout
    assert out.count("P2P OK") == 2


@pytest.mark.parametrize("n", [2, 3])
def test_pipeline_schedules_match_unsplit_training(tmp_path, n):
    out = run_ranks(n, PIPELINE, tmp_path).stdout
    assert out.count("PIPELINE OK") == n
