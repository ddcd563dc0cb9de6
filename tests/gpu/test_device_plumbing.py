"""Device plumbing for the CUDA backend, checked without a GPU.

The ``fake_cuda`` fixture makes ``cuda:N`` resolve to a stand-in backend on host memory (see
``tests/gpu/_standin.py``; nothing of it is in the ``ember`` package): transfers copy, each ``cuda:N`` is its
own device, ops run the registry's generic ``xp`` kernels (the ones CuPy takes), and device arrays refuse what
CuPy's refuse (implicit conversion to NumPy, ``flags.writeable``, host arrays mixed in; bare NumPy calls too), so
a code path that would break on a GPU that way breaks here. What this checks is
the plumbing: devices on tensors, copies, gradients across device copies, errors for mixed devices,
modules and optimizers after ``Module.to``, state dicts, DLPack routing. That the kernels are right on CuPy is
for ``test_cuda_real.py`` on a GPU. The last tests check ``ember.cuda`` and the backend on this machine
without any stand-in, and run ``ember.backend.cuda`` itself against a NumPy imitation of CuPy's API.
"""

import importlib.util
import re
import subprocess
import sys
import types

import numpy as np
import pytest

import ember
import ember.backend.cuda as cuda_backend
from ember import nn
from ember.device import CPU, Device, get_backend, to_device
from tests.gpu._standin import DeviceArray, FakeGpuArray, NumpyNamespace, device_module, host_view, install


@pytest.fixture
def fake_cuda(monkeypatch):
    install(monkeypatch.setattr)
    yield


def shares(a, b):
    """Whether two tensors share storage (looking through the stand-in's device arrays)."""
    return np.shares_memory(host_view(a.data), host_view(b.data))


def on_device(t, device="cuda:0"):
    """``t`` is on ``device`` and its data is a stand-in device array (not a host array labelled cuda)."""
    assert t.device == device and type(t.data) is DeviceArray, (t.device, type(t.data))
    return t


def close(a, b, tol=1e-5):
    a = a.detach().cpu().numpy() if isinstance(a, ember.Tensor) else np.asarray(a)
    b = b.detach().cpu().numpy() if isinstance(b, ember.Tensor) else np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------------------- the stand-in

def test_standin_device_arrays_refuse_what_cupy_refuses(fake_cuda):
    a = on_device(ember.tensor([1.0, 2.0], device="cuda")).data
    for implicit in (lambda: np.asarray(a), lambda: np.array(a), lambda: np.zeros(2).__setitem__(slice(None), a)):
        with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
            implicit()
    assert not hasattr(a.flags, "writeable") and a.flags.c_contiguous and a.flags.owndata
    for bare in (lambda: np.copyto(a, a), lambda: np.add.at(a, [0], 1.0), lambda: np.multiply(a, 2),
                 lambda: np.sum(a)):
        with pytest.raises(TypeError, match="called on a device array"):
            bare()
    with pytest.raises(TypeError, match="Unsupported type"):  # a host array mixed into device work
        a + np.ones(2)
    xp = device_module.get_backend(Device("cuda")).xp
    b = xp.asarray(np.ones(2, np.float32))  # explicit host -> device: a copy
    xp.copyto(b, a * 2)
    xp.add.at(b, xp.asarray([0, 0]), 1.0)
    assert type(b) is DeviceArray and b.get().tolist() == [4.0, 4.0] and xp.asnumpy(b).tolist() == [4.0, 4.0]
    assert type(b.sum()) is DeviceArray and b.sum().ndim == 0 and float(b.sum()) == 8.0  # 0-d, as CuPy's


# ---------------------------------------------------------------------------------------------- tensors

def test_creation_on_cuda(fake_cuda):
    t = ember.tensor([[1.0, 2.0], [3.0, 4.0]], device="cuda")
    assert t.device == "cuda:0" and t.device is to_device("cuda:0") and t.dtype is ember.float32
    assert t.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert ember.zeros(2, 3, device="cuda:1").device == "cuda:1"
    assert ember.ones(4, device=Device("cuda")).sum().item() == 4.0
    assert ember.arange(5, device="cuda").device == "cuda:0"
    assert ember.tensor(t).device == "cuda:0" and ember.tensor(t, device="cpu").device is CPU
    assert ember.zeros_like(t).device == "cuda:0"
    assert "device='cuda:0'" in repr(t)
    y = t * 2 + 1  # ops keep the device
    assert y.device == "cuda:0" and y.tolist() == [[3.0, 5.0], [7.0, 9.0]]


def test_to_cuda_and_back_copies(fake_cuda):
    x = ember.tensor([1.0, 2.0, 3.0])
    for y in (x.to("cuda"), x.to(device="cuda:0"), x.cuda(), x.cuda(0), x.to(Device("cuda:0")),
              x.to("cuda", non_blocking=True)):
        assert y.device == "cuda:0" and y is not x and not shares(y, x)
        assert y.tolist() == [1.0, 2.0, 3.0]
    y = x.cuda()
    assert y.to("cuda") is y and y.cuda() is y
    z = y.cpu()
    assert z.device is CPU and not shares(z, y)
    y.add_(10)  # the copy is independent of its source
    assert x.tolist() == [1.0, 2.0, 3.0] and z.tolist() == [1.0, 2.0, 3.0]
    w = y.to("cuda:1")
    assert w.device == "cuda:1" and not shares(w, y) and w.tolist() == [11.0, 12.0, 13.0]
    assert x.cuda(1).device == "cuda:1"
    both = x.to("cuda", "float64")
    assert both.device == "cuda:0" and both.dtype is ember.float64
    like = x.to(ember.zeros(1, dtype="int32", device="cuda:1"))
    assert like.device == "cuda:1" and like.dtype is ember.int32
    with pytest.raises(ember.DeviceError, match=r"Tensor\.cuda: expected a cuda device"):
        x.cuda("cpu")


def test_gradient_flows_back_across_device_copies(fake_cuda):
    rng = np.random.default_rng(0)
    xv, wv = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal((3, 2)).astype(np.float32)

    def run(device):
        x = ember.tensor(xv, requires_grad=True)
        w = ember.tensor(wv, requires_grad=True)
        h = (x.to(device) @ w.to(device)).tanh()
        loss = (h * h).sum().cpu() if device != "cpu" else (h * h).sum()
        loss.backward()
        return loss, x.grad, w.grad

    loss_c, gx_c, gw_c = run("cuda")
    loss_r, gx_r, gw_r = run("cpu")
    assert loss_c.device is CPU and gx_c.device is CPU and gw_c.device is CPU
    close(loss_c, loss_r)
    close(gx_c, gx_r)
    close(gw_c, gw_r)


def test_gradient_of_a_cuda_leaf_through_the_host(fake_cuda):
    p = ember.tensor([1.0, -2.0, 3.0], device="cuda:1", requires_grad=True)
    hop = p.to("cuda:0").cpu()  # cuda:1 -> cuda:0 -> cpu
    assert hop.requires_grad and hop.grad_fn is not None and hop.grad_fn.op.name == "to_device"
    (hop ** 2).sum().backward()
    assert p.grad.device == "cuda:1"
    close(p.grad, [2.0, -4.0, 6.0])


def test_higher_order_and_forward_mode_across_devices(fake_cuda):
    x = ember.tensor([1.0, 2.0], requires_grad=True)
    y = (x.cuda() ** 3).sum()
    (g,) = ember.grad(y, x, create_graph=True)  # 3 x^2, on the host
    assert g.device is CPU
    close(g, [3.0, 12.0])
    g.sum().backward()  # d/dx sum(3 x^2) = 6 x, through two device copies
    close(x.grad, [6.0, 12.0])
    out, tangent = ember.jvp(lambda a: (a.cuda() * 2).cpu(), [ember.tensor([1.0, 2.0])], [ember.tensor([1.0, 0.5])])
    assert tangent.device is CPU
    close(out, [2.0, 4.0])
    close(tangent, [2.0, 1.0])


def test_no_grad_copy_is_not_recorded(fake_cuda):
    x = ember.tensor([1.0], requires_grad=True)
    with ember.no_grad():
        y = x.cuda()
    assert not y.requires_grad and y.grad_fn is None


def test_mixed_devices_raise(fake_cuda):
    a, b = ember.ones(2), ember.ones(2, device="cuda")
    with pytest.raises(ember.DeviceError, match=r"add: tensors are on different devices: cpu, cuda:0; move them"):
        a + b
    with pytest.raises(ember.DeviceError, match=r"matmul: tensors are on different devices: cuda:0, cuda:1"):
        ember.ones(2, 2, device="cuda:0") @ ember.ones(2, 2, device="cuda:1")


def test_device_copy_inside_jit_is_refused(fake_cuda):
    f = ember.jit(lambda x: x.cuda() * 2)
    with pytest.raises(ember.TraceError, match=r"to_device: moving a tensor from cpu to cuda:0 inside a traced"):
        f(ember.ones(2))


def test_jit_of_cuda_tensors_says_compiled_mode_is_cpu_only(fake_cuda):
    w = ember.ones(3, device="cuda")
    with pytest.raises(ember.TraceError, match=r"compiled mode runs on the CPU only .* on cuda:0"):
        ember.jit(lambda x: x * 2)(ember.ones(3, device="cuda"))
    with pytest.raises(ember.TraceError, match=r"compiled mode runs on the CPU only .* on cuda:0"):
        ember.jit(lambda x: x * w)(ember.ones(3))          # a captured cuda tensor


def test_values_of_a_cuda_tensor_come_through_the_host(fake_cuda):
    t = ember.tensor([[1.5, -2.0], [0.25, 4.0]], device="cuda")
    assert repr(t) == "tensor([[ 1.5000, -2.0000],\n        [ 0.2500,  4.0000]], device='cuda:0')"
    assert str(ember.ones(2, dtype="int32", device="cuda:1")) == "tensor([1, 1], dtype=ember.int32, device='cuda:1')"
    assert t.tolist() == [[1.5, -2.0], [0.25, 4.0]] and t[0, 1].item() == -2.0 and float(t[1, 1]) == 4.0
    assert bool(t[0, 0] > 1) and int(t[1, 1]) == 4
    with pytest.raises(TypeError, match=r"^can't convert cuda:0 device type tensor to numpy\. Use Tensor\.cpu\(\) "
                                        r"to copy the tensor to host memory first\.$"):
        t.numpy()
    host = np.asarray(t)  # np.asarray copies to the host ...
    assert type(host) is np.ndarray and host.tolist() == t.tolist()
    assert np.asarray(t, dtype=np.float64).dtype == np.float64
    host[0, 0] = 9.0
    assert t[0, 0].item() == 1.5
    with pytest.raises(ValueError, match="cannot be viewed from host memory"):  # ... so it cannot promise no copy
        np.asarray(t, copy=False)
    assert t.cpu().numpy().tolist() == t.tolist()


def test_in_place_ops_on_cuda_tensors(fake_cuda):
    t = on_device(ember.ones(4, device="cuda"))
    t.add_(1).mul_(3).clamp_(max=5.0).sub_(ember.ones(4, device="cuda"), alpha=0.5)
    assert on_device(t).tolist() == [4.5] * 4
    t.copy_(ember.tensor([1.0, 2.0, 3.0, 4.0]))  # from the host
    t[1] = 7.0
    t[ember.tensor([2, 3], device="cuda")] = ember.tensor([8.0, 9.0], device="cuda")
    assert on_device(t).tolist() == [1.0, 7.0, 8.0, 9.0]
    t.fill_(2.5)
    assert t.tolist() == [2.5] * 4
    t.zero_()
    assert on_device(t).tolist() == [0.0] * 4
    w = ember.ones(3, device="cuda", requires_grad=True)
    y = w * 2
    y.mul_(w)  # recorded: the old value is snapshotted on the device
    y.sum().backward()
    assert on_device(w.grad).tolist() == [4.0] * 3
    view = ember.ones(1, device="cuda").expand(3)  # CuPy has no read-only flag: the zero stride tells
    with pytest.raises(ember.AutogradError, match="read-only tensor"):
        view.add_(1)
    with pytest.raises(ember.AutogradError, match="read-only"):
        view[0] = 2.0


def test_gradients_accumulate_on_the_device(fake_cuda):
    p = ember.tensor([1.0, 2.0], device="cuda:1", requires_grad=True)
    p.sum().backward()  # the incoming gradient is a broadcast view: copied before it becomes .grad
    on_device(p.grad, "cuda:1")
    (p * p).sum().backward()
    (p * 3).sum().backward()
    assert on_device(p.grad, "cuda:1").tolist() == [6.0, 8.0]
    q = ember.tensor([[1.0, 2.0], [3.0, 4.0]], device="cuda", requires_grad=True)
    q.T.sum().backward()  # a non-contiguous incoming gradient
    q.T.sum().backward()
    assert on_device(q.grad).tolist() == [[2.0, 2.0], [2.0, 2.0]]


def test_gradcheck_on_cuda(fake_cuda):
    x = ember.tensor([0.5, -1.0, 2.0], device="cuda", requires_grad=True)
    assert ember.autograd.gradcheck(lambda a: (a.tanh() * a).sum(), [x])


# ---------------------------------------------------------------------------------------------- random

def test_random_draws_are_made_on_the_device(fake_cuda):
    ember.manual_seed(5)
    cpu_first = ember.rand(4).tolist()
    ember.manual_seed(5)
    drawn = [ember.rand(2, 3, device="cuda"), ember.randn(5, device="cuda:1", dtype="float64"),
             ember.randint(3, 9, (7,), device="cuda"), ember.normal(1.0, 2.0, (3,), device="cuda"),
             ember.uniform((2,), -1.0, 1.0, device="cuda"), ember.rand_like(ember.zeros(2, device="cuda")),
             ember.randperm(6, device="cuda"), ember.randperm(0, device="cuda")]
    for t in drawn:
        on_device(t, "cuda:1" if t is drawn[1] else "cuda:0")
    assert drawn[1].dtype is ember.float64 and drawn[2].dtype is ember.int64
    assert all(3 <= v < 9 for v in drawn[2].tolist()) and sorted(drawn[6].tolist()) == list(range(6))
    assert drawn[7].shape == (0,) and drawn[7].dtype is ember.int64
    assert ember.rand(4).tolist() == cpu_first  # device draws come from their own streams, not the CPU's
    ember.manual_seed(5)
    again = ember.rand(2, 3, device="cuda")
    assert again.tolist() == drawn[0].tolist()  # reproducible for a seed on a device
    g = ember.Generator().manual_seed(3)
    a = ember.randn(3, device="cuda", generator=g).tolist()
    g.set_state(g.get_state())  # device streams restart from the seed
    assert ember.randn(3, device="cuda", generator=g).tolist() == a
    m = nn.Dropout(0.5).cuda()
    on_device(m(ember.ones(8, device="cuda")))


def test_the_cpu_stream_is_unchanged():
    ember.manual_seed(11)
    ref = np.random.Generator(np.random.PCG64(11))
    assert np.array_equal(ember.rand(3, 2).numpy(), ref.uniform(0.0, 1.0, size=(3, 2)).astype(np.float32))
    assert np.array_equal(ember.randn(4, dtype="float64").numpy(), ref.standard_normal(size=(4,)))
    assert np.array_equal(ember.randint(0, 10, (5,)).numpy(), ref.integers(0, 10, size=(5,)))
    assert np.array_equal(ember.randperm(7).numpy(), ref.permutation(7))


# ---------------------------------------------------------------------------------------------- modules

def _net(seed):
    ember.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def test_module_to_moves_in_place_and_the_optimizer_follows(fake_cuda):
    rng = np.random.default_rng(1)
    xv = rng.standard_normal((6, 4)).astype(np.float32)
    yv = rng.integers(0, 3, 6)
    gpu, ref = _net(0), _net(0)
    params = list(gpu.parameters())
    opt = ember.optim.SGD(gpu.parameters(), lr=0.1, momentum=0.9)   # made before the move
    ref_opt = ember.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    assert gpu.cuda() is gpu
    assert all(a is b for a, b in zip(params, gpu.parameters()))   # same Parameter objects
    assert all(p.device == "cuda:0" for p in gpu.parameters())
    assert all(b.device == "cuda:0" for b in gpu.buffers())         # BatchNorm's running statistics
    for _ in range(3):
        for model, o, dev in ((gpu, opt, "cuda"), (ref, ref_opt, "cpu")):
            o.zero_grad()
            loss = ember.nn.functional.cross_entropy(model(ember.tensor(xv, device=dev)),
                                                     ember.tensor(yv, device=dev))
            loss.backward()
            o.step()
    assert all(p.grad.device == "cuda:0" for p in gpu.parameters())
    for (name, a), (_, b) in zip(gpu.state_dict().items(), ref.state_dict().items()):
        assert a.device == "cuda:0", name
        close(a.cpu(), b, tol=1e-5)
    gpu.to("cuda:1")
    assert all(p.device == "cuda:1" and p.grad.device == "cuda:1" for p in gpu.parameters())
    gpu.cpu()
    assert all(a is b and a.device is CPU for a, b in zip(params, gpu.parameters()))


def test_state_dict_of_a_cuda_model_saves_and_loads(fake_cuda, tmp_path):
    model = _net(2).cuda()
    sd = model.state_dict()
    assert sd and all(t.device == "cuda:0" for t in sd.values())
    ember.save(sd, tmp_path / "m.safetensors")
    loaded = ember.load(tmp_path / "m.safetensors")
    assert set(loaded) == set(sd) and all(t.device is CPU for t in loaded.values())
    for k in sd:
        close(loaded[k], sd[k].cpu())
    cpu_model = _net(3)
    cpu_model.load_state_dict(loaded)
    for (_, a), (_, b) in zip(cpu_model.state_dict().items(), sd.items()):
        close(a, b.cpu())


def test_load_state_dict_across_devices(fake_cuda):
    src = _net(4)
    sd = src.state_dict()
    gpu = _net(5).cuda()
    gpu.load_state_dict(sd)  # host tensors into a cuda model: copied over, in place
    for (name, a), (_, b) in zip(gpu.state_dict().items(), sd.items()):
        on_device(a)
        close(a, b)
    gpu.load_state_dict({k: v.numpy() * 2 for k, v in sd.items()})  # NumPy arrays
    close(gpu[0].weight, sd["0.weight"] * 2)
    other = _net(6).to("cuda:1")
    other.load_state_dict(gpu.state_dict())  # from another GPU
    on_device(other[0].weight, "cuda:1")
    close(other[0].weight, sd["0.weight"] * 2)
    back = _net(7)
    back.load_state_dict(other.state_dict())  # cuda tensors into a CPU model
    assert back[0].weight.device is CPU
    close(back[0].weight, sd["0.weight"] * 2)
    half = nn.Linear(4, 8).cuda().half()
    half.load_state_dict({"weight": sd["0.weight"], "bias": sd["0.bias"]})  # cast on the way to float16
    assert on_device(half.weight).dtype is ember.float16
    assigned = nn.Linear(4, 8)
    assigned.load_state_dict({"weight": gpu[0].weight.detach(), "bias": gpu[0].bias.detach()}, assign=True)
    assert assigned.weight.device == "cuda:0"  # assign=True takes the checkpoint's tensors, device included
    on_device(assigned(ember.ones(1, 4, device="cuda")))


@pytest.mark.parametrize("make", [
    lambda ps: ember.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    lambda ps: ember.optim.Adam(ps, lr=0.01, amsgrad=True),
    lambda ps: ember.optim.AdamW(ps, lr=0.01),
    lambda ps: ember.optim.Adagrad(ps, lr=0.1),
    lambda ps: ember.optim.RMSprop(ps, lr=0.01, momentum=0.5, centered=True),
], ids=["sgd", "adam", "adamw", "adagrad", "rmsprop"])
def test_optimizer_steps_and_gradient_clipping_on_cuda(fake_cuda, make, tmp_path):
    rng = np.random.default_rng(3)
    xv = rng.standard_normal((6, 4)).astype(np.float32)
    yv = rng.integers(0, 3, 6)
    runs = {}
    for dev in ("cuda", "cpu"):
        model = _net(8).to(dev)
        opt = make(model.parameters())
        for _ in range(3):
            opt.zero_grad()
            F = ember.nn.functional
            F.cross_entropy(model(ember.tensor(xv, device=dev)), ember.tensor(yv, device=dev)).backward()
            total = nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            nn.utils.clip_grad_value_(model.parameters(), 0.05)
            opt.step()
        runs[dev] = (model, opt, total)
    (gpu, gopt, gtotal), (ref, _, rtotal) = runs["cuda"], runs["cpu"]
    on_device(gtotal)
    close(gtotal, rtotal)
    for a, b in zip(gpu.parameters(), ref.parameters()):
        on_device(a)
        on_device(a.grad)
        close(a, b)
    ember.io.save_tree(gopt.state_dict(), tmp_path / "opt.safetensors")  # state tensors are copied to the host
    state = ember.io.load_tree(tmp_path / "opt.safetensors")
    fresh = make(gpu.parameters())
    fresh.load_state_dict(state)
    for s in fresh.state.values():
        for k, v in s.items():
            if isinstance(v, ember.Tensor) and k != "step":
                on_device(v)


# ---------------------------------------------------------------------------------------------- nn on cuda

def test_attention_masks_on_cuda(fake_cuda):
    F = ember.nn.functional
    rng = np.random.default_rng(4)
    qv = rng.standard_normal((2, 5, 8)).astype(np.float32)
    mv = rng.random((5, 5)) > 0.3
    np.fill_diagonal(mv, True)
    outs = {}
    for dev in ("cuda", "cpu"):
        q = ember.tensor(qv, device=dev)
        m = ember.tensor(mv, device=dev)
        outs[dev] = (F.scaled_dot_product_attention(q, q, q, is_causal=True),
                     F.scaled_dot_product_attention(q, q, q, attn_mask=m))
    for a, b in zip(outs["cuda"], outs["cpu"]):
        close(on_device(a), b)
    att = nn.MultiheadAttention(8, 2, batch_first=True).cuda()
    q = ember.tensor(qv, device="cuda")
    on_device(att(q, q, q, attn_mask=ember.tensor(~mv, device="cuda"), is_causal=False)[0])
    from ember.nn.functional.attention import causal_mask
    on_device(causal_mask(3, 3, device="cuda")).fill_(False)  # a copy on the device: the cached host mask is kept
    assert causal_mask(3, 3).tolist()[2] == [True, True, True] and causal_mask(3, 3, device="cuda").tolist()[2][2]


def test_embeddings_on_cuda(fake_cuda):
    ids = [[0, 2, 2, 5], [1, 0, 5, 5]]
    outs = {}
    for dev in ("cuda", "cpu"):
        ember.manual_seed(9)
        emb = nn.Embedding(8, 3, padding_idx=0, max_norm=1.0, scale_grad_by_freq=True).to(dev)
        out = emb(ember.tensor(ids, device=dev))
        out.sum().backward()
        outs[dev] = (out, emb.weight, emb.weight.grad)
    for a, b in zip(outs["cuda"], outs["cpu"]):
        close(on_device(a), b)
    sparse = nn.Embedding(8, 3, sparse=True).cuda()
    with pytest.raises(ember.DeviceError, match=r"sparse=True .* CPU only, and this weight is on cuda:0"):
        sparse(ember.tensor([1], device="cuda"))
    with ember.no_grad():
        on_device(sparse(ember.tensor([1], device="cuda")))


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bag_on_cuda(fake_cuda, mode):
    ids, offsets = [1, 2, 3, 4, 5, 1, 6], [0, 2, 2, 5]
    psw = [0.5, 1.0, 2.0, 1.0, 1.0, 3.0, 1.0] if mode == "sum" else None
    outs = {}
    for dev in ("cuda", "cpu"):
        ember.manual_seed(10)
        bag = nn.EmbeddingBag(8, 3, mode=mode, padding_idx=1, max_norm=None if mode == "max" else 1.5).to(dev)
        w = None if psw is None else ember.tensor(psw, device=dev)
        out = bag(ember.tensor(ids, device=dev), ember.tensor(offsets, device=dev), per_sample_weights=w)
        fixed = bag(ember.tensor([[2, 3], [4, 4]], device=dev))
        (out.sum() + fixed.sum()).backward()
        outs[dev] = (out, fixed, bag.weight.grad)
    for a, b in zip(outs["cuda"], outs["cpu"]):
        close(on_device(a), b)
    seg = ember.ops.sparse_ops.segment_sum(ember.ones(4, 2, device="cuda"), ember.tensor([0, 1, 1], device="cuda"))
    assert on_device(seg).tolist() == [[1.0, 1.0], [0.0, 0.0], [3.0, 3.0]]


def test_losses_and_generation_on_cuda(fake_cuda):
    F = ember.nn.functional
    p = ember.tensor([0.2, 0.9], device="cuda", requires_grad=True)
    loss = F.binary_cross_entropy(p, ember.tensor([0.0, 1.0], device="cuda"))
    loss.backward()
    on_device(loss)
    with pytest.raises(ValueError, match="between 0 and 1"):
        F.binary_cross_entropy(p * 2, ember.tensor([0.0, 1.0], device="cuda"))
    from ember.nn.transformer import GPT
    ember.manual_seed(12)
    gpt = GPT(vocab_size=11, block_size=8, d_model=16, n_layer=1, n_head=2).cuda()
    out = gpt.generate(ember.tensor([[1, 2]], device="cuda"), 3, top_k=4)
    assert on_device(out).shape == (1, 5) and all(0 <= v < 11 for v in out.tolist()[0])


def test_datasets_of_cuda_tensors(fake_cuda):
    x = ember.arange(12, dtype="float32", device="cuda").reshape(6, 2)
    y = ember.tensor([0, 1, 0, 1, 1, 0], device="cuda")
    ds = ember.data.TensorDataset(x, y)
    a, b = ds[4]
    assert on_device(a).tolist() == [8.0, 9.0] and on_device(b).ndim == 0 and b.item() == 1
    seen = []
    for bx, by in ember.data.DataLoader(ds, batch_size=4, shuffle=True):
        seen += on_device(by).tolist()
        on_device(bx)
    assert sorted(seen) == [0, 0, 0, 1, 1, 1]
    assert ember.data.metrics.roc_auc(x[:, 0], y) == ember.data.metrics.roc_auc(x[:, 0].cpu(), y.cpu())


# ---------------------------------------------------------------------------------------------- DLPack

def test_from_dlpack_routes_gpu_arrays_to_their_device(fake_cuda):
    host = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = ember.from_dlpack(FakeGpuArray(host, device_id=1))
    assert t.device == "cuda:1" and t.dtype is ember.float32 and t.shape == (2, 3)
    assert np.shares_memory(host_view(t.data), host)  # zero copy: whatever the backend imported is used as is
    with pytest.raises(ember.DeviceError, match="DLPack device type 10"):
        ember.from_dlpack(FakeGpuArray(host, dlpack_type=10))


def test_from_dlpack_of_a_gpu_array_without_cuda():
    with pytest.raises(ember.DeviceError, match="device cuda:0 is not available"):
        ember.from_dlpack(FakeGpuArray(np.zeros(2)))


# ---------------------------------------------------------------------------------------------- generic kernels

def test_generic_kernels_match_the_cpu(fake_cuda):
    """Conv2d, pooling, softmax/cross-entropy and a training step through the generic ``xp`` kernels."""
    rng = np.random.default_rng(2)
    xv = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    wv = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    yv = rng.integers(0, 4, 2)
    F = ember.nn.functional

    def run(dev):
        x = ember.tensor(xv, device=dev, requires_grad=True)
        w = ember.tensor(wv, device=dev, requires_grad=True)
        h = F.max_pool2d(F.relu(F.conv2d(x, w, padding=1)), 2)
        logits = h.mean(dim=(2, 3))
        loss = F.cross_entropy(logits, ember.tensor(yv, device=dev)) + ember.softmax(logits, -1).amax().sum()
        loss.backward()
        return loss, x.grad, w.grad

    gpu = run("cuda")
    assert isinstance(ember.ops.registry._XP[to_device("cuda:0")], NumpyNamespace)  # not the C fast paths
    for a, b in zip(gpu, run("cpu")):
        assert a.device == "cuda:0"
        close(a.cpu(), b, tol=1e-4)


# ---------------------------------------------------------------------------------------------- this machine

def test_ember_cuda_without_a_gpu():
    assert ember.cuda.is_available() is False and ember.cuda.device_count() == 0
    for fn in (ember.cuda.memory_allocated, ember.cuda.memory_reserved, ember.cuda.max_memory_allocated):
        assert fn() == 0 and fn(0) == 0 and fn("cuda:1") == 0
    assert ember.cuda.reset_peak_memory_stats() is None and ember.cuda.empty_cache() is None
    ok, reason = cuda_backend.available()
    assert not ok and reason
    for call in (ember.cuda.current_device, ember.cuda.synchronize, lambda: ember.cuda.set_device(0),
                 ember.cuda.get_device_name):
        with pytest.raises(ember.DeviceError, match="CUDA is not available: " + re.escape(reason)):
            call()
    with pytest.raises(ember.DeviceError, match="unknown device"):
        ember.cuda.memory_allocated("tpu")
    with pytest.raises(ember.DeviceError, match=r"Tensor\.cuda: CUDA is not available"):
        ember.ones(1).cuda()
    with pytest.raises(ember.DeviceError, match=r"Module\.cuda: CUDA is not available"):
        nn.Linear(1, 1).cuda()
    assert ember.backend.available_backends() == ["cpu"]
    with pytest.raises(ember.DeviceError, match=r"device cuda:0 is not available in this build; available: cpu \("):
        get_backend(Device("cuda"))


def test_importing_ember_does_not_import_cupy():
    code = "import sys, ember; ember.cuda.is_available(); print('cupy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code.replace("ember.cuda.is_available(); ", "")],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed here")
def test_reason_without_cupy():
    assert cuda_backend.available() == (False, "CuPy is not installed (pip install 'ember[cuda]')")


def _fake_cupy(count=None, error=None):
    """A module named cupy whose device query returns ``count`` or raises ``error``."""
    def get_count():
        if error is not None:
            raise error
        return count
    mod = types.ModuleType("cupy")
    mod.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=get_count))
    return mod


@pytest.mark.parametrize("fake,ok,reason", [
    (None, False, "CuPy is not installed (pip install 'ember[cuda]')"),
    (_fake_cupy(0), False, "no CUDA device"),
    (_fake_cupy(error=RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")), False,
     "no CUDA device (cudaErrorNoDevice: no CUDA-capable device is detected)"),
    (_fake_cupy(error=RuntimeError("cudaErrorInsufficientDriver: driver too old")), False,
     "CUDA is not usable (cudaErrorInsufficientDriver: driver too old)"),
    (_fake_cupy(2), True, "2 CUDA devices"),
])
def test_available_reports_why(monkeypatch, fake, ok, reason):
    monkeypatch.setitem(sys.modules, "cupy", fake)  # None makes `import cupy` raise ImportError
    monkeypatch.setattr(cuda_backend, "_AVAILABLE", [None])
    assert cuda_backend.available() == (ok, reason)
    assert ember.cuda.is_available() is ok
    assert ember.backend.available_backends() == (["cpu", "cuda"] if ok else ["cpu"])


# ---------------------------------------------------------------------------------------------- CUDABackend itself

class _FakePool:
    """CuPy's MemoryPool calls (malloc, used_bytes, total_bytes, free_all_blocks) as counters."""

    def __init__(self):
        self.used = self.total = 0

    def malloc(self, size):
        self.used += size
        self.total = max(self.total, self.used)
        return types.SimpleNamespace(device_id=0, size=size)

    def free(self, mem):
        self.used -= mem.size

    def used_bytes(self):
        return self.used

    def total_bytes(self):
        return self.total

    def free_all_blocks(self):
        self.total = self.used


class _FakeDevice:
    log = []

    def __init__(self, index):
        self.id = index

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self):
        _FakeDevice.log.append(("synchronize", self.id))

    def use(self):
        _FakeDevice.log.append(("use", self.id))


class _FakeCupy(types.ModuleType):
    """The parts of CuPy's API that ember.backend.cuda calls, on NumPy (array functions are NumPy's)."""

    def __init__(self):
        super().__init__("cupy")
        pool = self.pool = _FakePool()
        allocator = [pool.malloc]
        self.ndarray = type("ndarray", (), {})  # no NumPy array is a "device array" here
        self.asnumpy = lambda a: np.array(a, copy=True)
        self.get_default_memory_pool = lambda: pool
        runtime = types.SimpleNamespace(getDeviceCount=lambda: 2, getDevice=lambda: 0,
                                        getDeviceProperties=lambda i: {"name": b"Fake GPU"})
        self.cuda = types.SimpleNamespace(
            runtime=runtime, Device=_FakeDevice, get_allocator=lambda: allocator[0],
            set_allocator=lambda fn: allocator.__setitem__(0, fn),
            get_current_stream=lambda: types.SimpleNamespace(ptr=0))

    def __getattr__(self, name):
        return getattr(np, name)


def test_cuda_backend_against_a_fake_cupy(monkeypatch):
    """Runs every path of ``ember.backend.cuda``/``ember.cuda`` with an imitation of CuPy's API (whose names
    were checked against the CuPy 14 wheel); CuPy's real behaviour is for ``test_cuda_real.py``."""
    fake = _FakeCupy()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    for name, value in (("_AVAILABLE", [None]), ("_BACKENDS", {}), ("_PEAK", {}), ("_TRACKING", [False])):
        monkeypatch.setattr(cuda_backend, name, value)
    monkeypatch.setattr(ember.ops.registry, "_XP", {})
    assert ember.cuda.is_available() and ember.cuda.device_count() == 2
    assert ember.backend.available_backends() == ["cpu", "cuda"]
    assert ember.cuda.current_device() == 0 and ember.cuda.get_device_name(1) == "Fake GPU"
    _FakeDevice.log.clear()
    ember.cuda.set_device("cuda:1")
    ember.cuda.synchronize(1)
    assert _FakeDevice.log == [("use", 1), ("synchronize", 1)]
    with pytest.raises(ember.DeviceError, match=r"cuda:2 is not available: this machine has 2 CUDA devices \("
                                                r"cuda:0 \.\. cuda:1\)"):
        ember.zeros(1, device="cuda:2")
    with pytest.raises(ember.DeviceError, match="expected a cuda device, got cpu"):
        ember.cuda.memory_allocated("cpu")

    b = get_backend(Device("cuda:1"))
    assert isinstance(b, cuda_backend.CUDABackend) and b.index == 1 and b.xp is fake
    assert get_backend(Device("cuda:1")) is b  # one backend per device
    t = ember.tensor([1.0, 2.0], device="cuda:1")
    assert t.device == "cuda:1" and (t * 3).tolist() == [3.0, 6.0] and t.cpu().tolist() == [1.0, 2.0]

    # Peak tracking: the backend put an allocator in front of the pool's malloc.
    allocate = fake.cuda.get_allocator()
    assert allocate is not fake.pool.malloc
    a, c = allocate(1000), allocate(500)
    assert ember.cuda.memory_allocated() == 1500 and ember.cuda.max_memory_allocated() == 1500
    fake.pool.free(a)
    fake.pool.free(c)
    assert ember.cuda.memory_allocated() == 0 and ember.cuda.max_memory_allocated() == 1500
    assert ember.cuda.memory_reserved() == 1500
    ember.cuda.reset_peak_memory_stats()
    assert ember.cuda.max_memory_allocated() == 0
    ember.cuda.empty_cache()
    assert ember.cuda.memory_reserved() == 0
