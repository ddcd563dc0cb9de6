"""The CUDA backend on a real GPU: eager ops on ``cuda`` against the same ops on ``cpu``, DLPack with
PyTorch, memory statistics, and NCCL under ``ember run``. Every test skips unless
``ember.cuda.is_available()`` (CuPy installed and a GPU visible); run them with ``pytest -m gpu``.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import ember
from ember import nn

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not ember.cuda.is_available(), reason="needs a GPU and CuPy (pip install "
                                 "'ember[cuda]')")]
F = ember.nn.functional
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def both(*arrays, requires_grad=False):
    """The arrays as float32 tensors on the CPU and on the GPU (separate leaves)."""
    cpu = [ember.tensor(a, dtype="float32", requires_grad=requires_grad) for a in arrays]
    gpu = [ember.tensor(a, dtype="float32", device="cuda", requires_grad=requires_grad) for a in arrays]
    return cpu, gpu


def same(gpu, cpu, tol=1e-4):
    assert gpu.device.type == "cuda", gpu.device
    assert type(gpu.data).__module__.startswith("cupy"), type(gpu.data)
    np.testing.assert_allclose(gpu.detach().cpu().numpy(), cpu.detach().numpy(), rtol=tol, atol=tol)


RNG = np.random.default_rng(0)


def test_backend_and_transfers():
    x = ember.tensor([1.0, 2.0, 3.0])
    y = x.cuda()
    assert y.device == f"cuda:{ember.cuda.current_device()}" and type(y.data).__module__.startswith("cupy")
    assert y.cpu().tolist() == [1.0, 2.0, 3.0] and y.tolist() == [1.0, 2.0, 3.0] and y.sum().item() == 6.0
    assert "cuda" in ember.backend.available_backends()
    assert isinstance(ember.cuda.get_device_name(), str) and ember.cuda.device_count() >= 1
    ember.cuda.synchronize()


@pytest.mark.parametrize("fn", [
    lambda a, b: a + b * 2 - a / (b.abs() + 1),
    lambda a, b: (a.exp() + b.tanh()).sigmoid() * a.relu(),
    lambda a, b: ember.where(a > b, a, b) * ember.maximum(a, b).clamp(-0.5, 0.5),
])
def test_pointwise(fn):
    (a, b), (ga, gb) = both(RNG.standard_normal((5, 7)), RNG.standard_normal((5, 7)))
    same(fn(ga, gb), fn(a, b))


def test_reductions():
    (a,), (g,) = both(RNG.standard_normal((4, 6, 5)))
    for f in (lambda t: t.sum(), lambda t: t.mean(dim=1), lambda t: t.amax(dim=(0, 2)), lambda t: t.var(dim=-1),
              lambda t: t.logsumexp(dim=0), lambda t: t.argmax(dim=1).float()):
        same(f(g), f(a))


def test_matmul_through_cublas():
    (a, b), (ga, gb) = both(RNG.standard_normal((3, 64, 32)), RNG.standard_normal((32, 48)), requires_grad=True)
    same(ga @ gb, a @ b, tol=1e-3)
    (ga @ gb).sum().backward()
    (a @ b).sum().backward()
    same(ga.grad, a.grad, tol=1e-3)
    same(gb.grad, b.grad, tol=1e-3)


def test_conv2d_im2col_gemm():
    (x, w, bias), (gx, gw, gbias) = both(RNG.standard_normal((2, 3, 9, 9)), RNG.standard_normal((4, 3, 3, 3)),
                                         RNG.standard_normal(4), requires_grad=True)
    out = F.conv2d(x, w, bias, stride=2, padding=1)
    gout = F.conv2d(gx, gw, gbias, stride=2, padding=1)
    same(gout, out, tol=1e-3)
    (gout ** 2).sum().backward()
    (out ** 2).sum().backward()
    for g, c in ((gx, x), (gw, w), (gbias, bias)):
        same(g.grad, c.grad, tol=1e-3)


def test_softmax_and_cross_entropy():
    (logits,), (glogits,) = both(RNG.standard_normal((8, 10)), requires_grad=True)
    target = RNG.integers(0, 10, 8)
    same(ember.softmax(glogits, -1), ember.softmax(logits, -1))
    loss = F.cross_entropy(logits, ember.tensor(target))
    gloss = F.cross_entropy(glogits, ember.tensor(target, device="cuda"))
    same(gloss, loss)
    gloss.backward()
    loss.backward()
    same(glogits.grad, logits.grad)


def test_mlp_training_step():
    def net():
        ember.manual_seed(0)
        return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))
    cpu_model, gpu_model = net(), net().cuda()
    cpu_opt = ember.optim.Adam(cpu_model.parameters(), lr=1e-2)
    gpu_opt = ember.optim.Adam(gpu_model.parameters(), lr=1e-2)
    x, y = RNG.standard_normal((32, 20)), RNG.integers(0, 5, 32)
    for _ in range(3):
        for model, opt, dev in ((cpu_model, cpu_opt, "cpu"), (gpu_model, gpu_opt, "cuda")):
            opt.zero_grad()
            loss = F.cross_entropy(model(ember.tensor(x, dtype="float32", device=dev)), ember.tensor(y, device=dev))
            loss.backward()
            opt.step()
    for g, c in zip(gpu_model.parameters(), cpu_model.parameters()):
        same(g, c, tol=1e-4)


def test_gradient_back_across_the_device_copy():
    x = ember.tensor(RNG.standard_normal((4, 4)), dtype="float32", requires_grad=True)
    ((x.cuda() @ x.cuda()).tanh().sum()).backward()
    ref = ember.tensor(x.detach().numpy(), requires_grad=True)
    (ref @ ref).tanh().sum().backward()
    assert x.grad.device.type == "cpu"
    np.testing.assert_allclose(x.grad.numpy(), ref.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_dlpack_round_trip_with_torch():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    t = torch.arange(12, dtype=torch.float32, device="cuda").reshape(3, 4)
    e = ember.from_dlpack(t)
    assert e.device == f"cuda:{t.device.index}" and e.shape == (3, 4) and e.dtype is ember.float32
    e.data[0, 0] = 100.0  # zero copy: the torch tensor sees the write
    torch.cuda.synchronize()
    assert t[0, 0].item() == 100.0
    back = torch.from_dlpack(e * 2)
    assert back.is_cuda and back[1, 1].item() == 10.0


def test_memory_statistics_move():
    ember.cuda.synchronize()
    ember.cuda.empty_cache()
    ember.cuda.reset_peak_memory_stats()
    before = ember.cuda.memory_allocated()
    big = ember.zeros(1024, 1024, device="cuda")  # 4 MiB
    assert ember.cuda.memory_allocated() >= before + big.nbytes
    assert ember.cuda.memory_reserved() >= ember.cuda.memory_allocated()
    del big
    assert ember.cuda.memory_allocated() <= before + 1024  # back to the pool
    assert ember.cuda.max_memory_allocated() >= before + 4 * 1024 * 1024  # the peak remembers it
    ember.cuda.reset_peak_memory_stats()
    assert ember.cuda.max_memory_allocated() < before + 4 * 1024 * 1024
    ember.cuda.empty_cache()
    assert ember.cuda.memory_reserved() <= ember.cuda.memory_allocated() + 4 * 1024 * 1024


NCCL_SCRIPT = """
import sys
import numpy as np
import ember
import ember.distributed as dist

comm = dist.init()
r, n = comm.rank, comm.size
ember.cuda.set_device(r)
dev = f"cuda:{r}"
t = ember.tensor(np.arange(6, dtype=np.float32) * (r + 1), device=dev)
s = comm.allreduce(t)
assert s.device == dev, s.device
np.testing.assert_allclose(s.cpu().numpy(), np.arange(6) * 3)
comm.allreduce_(t, op="mean")
np.testing.assert_allclose(t.cpu().numpy(), np.arange(6) * 1.5)
g = comm.allgather(ember.full((2,), float(r), device=dev))
np.testing.assert_allclose(g.cpu().numpy(), [0, 0, 1, 1])
b = comm.broadcast(ember.ones(3, device=dev) * 7 if r == 0 else None, src=0)
assert b.device.type == "cuda" and b.cpu().tolist() == [7.0, 7.0, 7.0]
rs = comm.reduce_scatter(ember.ones(4, device=dev))
assert rs.cpu().tolist() == [2.0, 2.0]
if r == 0:
    comm.send(ember.arange(3, device=dev), dst=1)
else:
    got = comm.recv(src=0)
    assert got.device == dev and got.cpu().tolist() == [0, 1, 2], got
sys.stdout.write(f"<OK nccl {r}>\\n")
"""


def test_nccl_allreduce_under_ember_run(tmp_path):
    if ember.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    pytest.importorskip("mpi4py")
    path = tmp_path / "nccl_job.py"
    path.write_text(textwrap.dedent(NCCL_SCRIPT))
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, "-m", "ember.cli", "run", "-n", "2", str(path)], capture_output=True,
                          text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "<OK nccl 0>" in proc.stdout and "<OK nccl 1>" in proc.stdout
