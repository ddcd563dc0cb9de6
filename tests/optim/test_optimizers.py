"""Optimizers: trajectories against PyTorch, a NumPy reference, sparse rows, state dicts, errors."""

from __future__ import annotations

import numpy as np
import pytest

import ember
import ember.optim
from ember.optim import SGD, Adagrad, Adam, AdamW, RMSprop, SparseAdam
from ember.optim import optimizer as optimizer_module
from ember.sparse import RowSparseGrad

try:  # PyTorch is optional: comparisons against it are skipped without it
    import torch
except ImportError:  # pragma: no cover - depends on the machine
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")

# ----------------------------------------------------------------------------- a fixed least-squares problem

SHAPES = [(3, 4), (4,), (2, 3)]


def _problem() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1234)
    return {"X": rng.standard_normal((6, 3)).astype(np.float32), "Y": rng.standard_normal((6, 4)).astype(np.float32),
            "Z": rng.standard_normal((3, 5)).astype(np.float32), "U": rng.standard_normal((2, 5)).astype(np.float32)}


def _init() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


DATA = _problem()


def _loss(lib, params, data):
    W, b, C = params
    X, Y, Z, U = (data[k] for k in "XYZU")
    return ((X @ W + b - Y) ** 2).mean() + ((C @ Z - U) ** 2).sum() * 0.25


def _ember_data():
    return {k: ember.tensor(v) for k, v in DATA.items()}


def _torch_data():
    return {k: torch.tensor(v) for k, v in DATA.items()}


def run_ember(make_opt, steps=20, init=None, groups=None):
    """Parameter values after each of ``steps`` steps (and the optimizer)."""
    params = [ember.tensor(a, requires_grad=True) for a in (init or _init())]
    opt = make_opt(params if groups is None else groups(params))
    data = _ember_data()
    traj = []
    for _ in range(steps):
        opt.zero_grad()
        _loss(ember, params, data).backward()
        opt.step()
        traj.append([p.detach().numpy().copy() for p in params])
    return traj, opt, params


def run_torch(make_opt, steps=20, groups=None):
    params = [torch.tensor(a, requires_grad=True) for a in _init()]
    opt = make_opt(params if groups is None else groups(params))
    data = _torch_data()
    traj = []
    for _ in range(steps):
        opt.zero_grad()
        _loss(torch, params, data).backward()
        opt.step()
        traj.append([p.detach().numpy().copy() for p in params])
    return traj


def assert_traj_close(a, b, rtol=1e-5, atol=1e-6):
    assert len(a) == len(b)
    for step, (pa, pb) in enumerate(zip(a, b)):
        for i, (x, y) in enumerate(zip(pa, pb)):
            np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=f"step {step + 1}, parameter {i}")


def assert_traj_equal(a, b):
    for step, (pa, pb) in enumerate(zip(a, b)):
        for i, (x, y) in enumerate(zip(pa, pb)):
            assert np.array_equal(x, y), f"step {step + 1}, parameter {i} differs"


CONFIGS = [
    ("SGD", {"lr": 0.05}),
    ("SGD", {"lr": 0.05, "momentum": 0.9}),
    ("SGD", {"lr": 0.02, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    ("SGD", {"lr": 0.02, "momentum": 0.8, "dampening": 0.3, "weight_decay": 0.05}),
    ("SGD", {"lr": 0.01, "momentum": 0.5, "maximize": True}),
    ("Adam", {"lr": 0.01}),
    ("Adam", {"lr": 0.02, "betas": (0.8, 0.95), "eps": 1e-6, "weight_decay": 0.1}),
    ("Adam", {"lr": 0.01, "amsgrad": True}),
    ("Adam", {"lr": 0.01, "maximize": True, "amsgrad": True, "weight_decay": 0.01}),
    ("AdamW", {"lr": 0.01}),
    ("AdamW", {"lr": 0.02, "weight_decay": 0.1, "amsgrad": True}),
    ("Adagrad", {"lr": 0.1}),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.05, "weight_decay": 0.01, "initial_accumulator_value": 0.1}),
    ("Adagrad", {"lr": 0.05, "maximize": True, "eps": 1e-6}),
    ("RMSprop", {"lr": 0.01}),
    ("RMSprop", {"lr": 0.01, "momentum": 0.5, "centered": True}),
    ("RMSprop", {"lr": 0.005, "alpha": 0.9, "weight_decay": 0.01, "maximize": True}),
    ("RMSprop", {"lr": 0.01, "centered": True, "eps": 1e-4}),
]
IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for name, kw in CONFIGS]


def _factory(lib, name, kw):
    cls = getattr(lib.optim, name)
    return lambda params: cls(params, **kw)


# ----------------------------------------------------------------------------- against PyTorch


@needs_torch
@pytest.mark.parametrize(("name", "kw"), CONFIGS, ids=IDS)
def test_trajectory_matches_torch(name, kw):
    ours, _, _ = run_ember(_factory(ember, name, kw))
    theirs = run_torch(_factory(torch, name, kw))
    assert_traj_close(ours, theirs)


def _two_groups(params, extra_second=None):
    return [{"params": params[:2]}, {"params": params[2:], "lr": 0.003, **(extra_second or {})}]


@needs_torch
@pytest.mark.parametrize(("name", "kw", "extra"), [
    ("SGD", {"lr": 0.05, "momentum": 0.9}, {"momentum": 0.5, "nesterov": True}),
    ("Adam", {"lr": 0.01}, {"betas": (0.5, 0.9), "amsgrad": True}),
    ("AdamW", {"lr": 0.01}, {"weight_decay": 0.5}),
    ("Adagrad", {"lr": 0.1}, {"lr_decay": 0.1}),
    ("RMSprop", {"lr": 0.01}, {"centered": True, "momentum": 0.3}),
])
def test_parameter_groups_match_torch(name, kw, extra):
    ours, opt, _ = run_ember(_factory(ember, name, kw), groups=lambda p: _two_groups(p, extra))
    theirs = run_torch(_factory(torch, name, kw), groups=lambda p: _two_groups(p, extra))
    assert_traj_close(ours, theirs)
    assert opt.param_groups[1]["lr"] == 0.003 and opt.param_groups[0]["lr"] == kw["lr"]


@needs_torch
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_capturable_adam_matches_torch(name, amsgrad):
    kw = {"lr": 0.01, "amsgrad": amsgrad, "weight_decay": 0.05}
    ours, opt, _ = run_ember(lambda p: getattr(ember.optim, name)(p, capturable=True, **kw))
    theirs = run_torch(_factory(torch, name, kw))
    # capturable computes the bias corrections in float32 instead of Python floats: a few ulps more drift
    assert_traj_close(ours, theirs, rtol=1e-4, atol=1e-5)
    assert isinstance(opt.state_dict()["state"][0]["step"], ember.Tensor)


@needs_torch
@pytest.mark.parametrize(("name", "kw"), [c for c in CONFIGS if c[0] in ("Adam", "AdamW", "RMSprop", "Adagrad")][::2])
def test_state_dict_layout_matches_torch(name, kw):
    _, opt, _ = run_ember(_factory(ember, name, kw), steps=3)
    tparams = [torch.tensor(a, requires_grad=True) for a in _init()]
    topt = getattr(torch.optim, name)(tparams, **kw)
    data = _torch_data()
    for _ in range(3):
        topt.zero_grad()
        _loss(torch, tparams, data).backward()
        topt.step()
    ours, theirs = opt.state_dict(), topt.state_dict()
    assert list(ours["state"]) == list(theirs["state"]) == [0, 1, 2]
    assert [g["params"] for g in ours["param_groups"]] == [g["params"] for g in theirs["param_groups"]]
    assert set(ours["param_groups"][0]) <= set(theirs["param_groups"][0])
    for i in ours["state"]:
        assert set(ours["state"][i]) == set(theirs["state"][i])
        for k, v in ours["state"][i].items():
            assert isinstance(v, ember.Tensor)
            np.testing.assert_allclose(v.numpy(), theirs["state"][i][k].numpy(), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- torch-free references


def test_sgd_matches_hand_computed_numpy():
    lr, momentum, wd = 0.05, 0.9, 0.01
    params = [ember.tensor(a, requires_grad=True) for a in _init()]
    opt = SGD(params, lr=lr, momentum=momentum, weight_decay=wd)
    ref = [a.astype(np.float64) for a in _init()]
    bufs = [None] * 3
    data = _ember_data()
    for _ in range(5):
        opt.zero_grad()
        _loss(ember, params, data).backward()
        grads = [p.grad.numpy().astype(np.float64) for p in params]
        # the same gradient evaluated at the reference point (they stay within float32 rounding)
        for i, g in enumerate(grads):
            d = g + wd * ref[i]
            bufs[i] = d if bufs[i] is None else momentum * bufs[i] + d
            ref[i] = ref[i] - lr * bufs[i]
        opt.step()
        for p, r in zip(params, ref):
            np.testing.assert_allclose(p.detach().numpy(), r, rtol=1e-5, atol=1e-6)


def test_adam_first_step_is_lr_times_sign():
    # With zero state, Adam's first step is lr * g / (|g| + eps') = lr * sign(g) up to eps.
    p = ember.tensor([1.0, -2.0, 3.0], requires_grad=True)
    p.grad = ember.tensor([0.5, -4.0, 0.0])
    Adam([p], lr=0.1).step()
    np.testing.assert_allclose(p.detach().numpy(), [0.9, -1.9, 3.0], rtol=1e-6)


DESCENDING = [c for c in CONFIGS if not c[1].get("maximize")]


@pytest.mark.parametrize(("name", "kw"), DESCENDING, ids=[i for i, c in zip(IDS, CONFIGS) if c in DESCENDING])
def test_loss_decreases(name, kw):
    data = _ember_data()
    params = [ember.tensor(a, requires_grad=True) for a in _init()]
    opt = getattr(ember.optim, name)(params, **kw)
    first = _loss(ember, params, data).item()
    for _ in range(40):
        opt.zero_grad()
        loss = _loss(ember, params, data)
        loss.backward()
        opt.step()
    assert _loss(ember, params, data).item() < 0.9 * first


@pytest.mark.parametrize(("name", "kw"), CONFIGS, ids=IDS)
def test_numpy_fast_path_is_bit_identical_to_tensor_ops(name, kw, monkeypatch):
    fast, _, _ = run_ember(_factory(ember, name, kw), steps=6)
    monkeypatch.setattr(optimizer_module, "_FAST_PATH", False)
    slow, _, _ = run_ember(_factory(ember, name, kw), steps=6)
    assert_traj_equal(fast, slow)


@pytest.mark.parametrize(("name", "kw"), CONFIGS, ids=IDS)
def test_traceable_path_matches_eager(name, kw, monkeypatch):
    eager, _, _ = run_ember(_factory(ember, name, kw), steps=6)
    monkeypatch.setattr(optimizer_module, "_FORCE_TRACEABLE", True)
    traced, _, _ = run_ember(_factory(ember, name, kw), steps=6)
    assert_traj_close(traced, eager, rtol=1e-5, atol=1e-6)


def test_updates_are_in_place_and_bump_versions():
    p = ember.tensor([1.0, 2.0], requires_grad=True)
    alias = p.detach()
    data_before, version_before = p.data, p._version[0]
    opt = Adam([p], lr=0.1)
    p.grad = ember.tensor([1.0, -1.0])
    opt.step()
    assert p.data is data_before and p._version[0] > version_before
    np.testing.assert_allclose(alias.numpy(), [0.9, 2.1], rtol=1e-6)


def test_params_without_grad_are_skipped():
    a = ember.tensor([1.0, 2.0], requires_grad=True)
    b = ember.tensor([3.0], requires_grad=True)
    opt = Adam([a, b], lr=0.1)
    a.grad = ember.tensor([1.0, 1.0])
    opt.step()
    np.testing.assert_array_equal(b.detach().numpy(), [3.0])
    assert b not in opt.state and list(opt.state_dict()["state"]) == [0]


def test_zero_grad():
    a = ember.tensor([1.0, 2.0], requires_grad=True)
    opt = SGD([a], lr=0.1)
    (a * a).sum().backward()
    g = a.grad
    opt.zero_grad(set_to_none=False)
    assert a.grad is g and np.array_equal(g.numpy(), [0.0, 0.0])
    opt.zero_grad()
    assert a.grad is None


def test_step_with_closure_returns_loss_and_records_gradients():
    a = ember.tensor([1.0, -2.0], requires_grad=True)
    opt = SGD([a], lr=0.25)

    def closure():
        opt.zero_grad()
        loss = (a * a).sum()
        loss.backward()
        return loss

    with ember.no_grad():  # the closure still records: step() enables gradients for it
        loss = opt.step(closure)
    assert loss.item() == 5.0
    np.testing.assert_allclose(a.detach().numpy(), [0.5, -1.0])


def test_add_param_group_and_named_parameters():
    a = ember.tensor([1.0], requires_grad=True)
    b = ember.tensor([1.0], requires_grad=True)
    opt = SGD([("a", a)], lr=0.1, momentum=0.5)
    opt.add_param_group({"params": [("b", b)], "lr": 1.0})
    assert opt.param_groups[1]["momentum"] == 0.5 and opt.param_groups[1]["param_names"] == ["b"]
    a.grad = ember.tensor([1.0])
    b.grad = ember.tensor([1.0])
    opt.step()
    np.testing.assert_allclose([a.item(), b.item()], [0.9, 0.0])
    assert "Parameter Group 1" in repr(opt) and "lr: 1.0" in repr(opt)


def test_float64_parameters_keep_their_dtype():
    p = ember.tensor(np.arange(4.0), dtype=ember.float64, requires_grad=True)
    p.grad = ember.ones(4, dtype=ember.float64)
    opt = Adam([p])
    opt.step()
    assert p.dtype is ember.float64 and opt.state[p]["exp_avg"].dtype is ember.float64


# ----------------------------------------------------------------------------- state dicts


ROUND_TRIP = [c for c in CONFIGS if not c[1].get("maximize")] + [("SparseAdam", {"lr": 0.05})]


def _sparse_problem_grads(params, step):
    """Row-sparse gradients for the SparseAdam round trip (deterministic per step)."""
    rng = np.random.default_rng(100 + step)
    for p in params:
        rows = np.unique(rng.integers(0, p.shape[0], size=2))
        vals = rng.standard_normal((rows.size, *p.shape[1:])).astype(np.float32)
        p.grad = RowSparseGrad(ember.tensor(rows), ember.tensor(vals), p.shape)


def _run_steps(opt, params, steps, start, sparse):
    data = _ember_data()
    for s in range(start, start + steps):
        opt.zero_grad()
        if sparse:
            _sparse_problem_grads(params, s)
        else:
            _loss(ember, params, data).backward()
        opt.step()


@pytest.mark.parametrize(("name", "kw"), ROUND_TRIP, ids=[f"{n}-{kw}" for n, kw in ROUND_TRIP])
def test_state_dict_round_trip_is_bit_identical(name, kw):
    sparse = name == "SparseAdam"
    inits = _init() if not sparse else [np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32),
                                        np.random.default_rng(1).standard_normal((5,)).astype(np.float32)]
    cls = getattr(ember.optim, name)

    full = [ember.tensor(a, requires_grad=True) for a in inits]
    _run_steps(cls(full, **kw), full, 10, 0, sparse)

    first = [ember.tensor(a, requires_grad=True) for a in inits]
    opt = cls(first, **kw)
    _run_steps(opt, first, 5, 0, sparse)
    saved = opt.state_dict()
    snapshot = {i: {k: (v.numpy().copy() if isinstance(v, ember.Tensor) else v) for k, v in st.items()}
                for i, st in saved["state"].items()}

    fresh = [ember.tensor(p.detach().numpy(), requires_grad=True) for p in first]
    opt2 = cls(fresh, **{k: v for k, v in kw.items() if k != "lr"}, lr=0.123)  # lr comes from the state dict
    opt2.load_state_dict(saved)
    assert opt2.param_groups[0]["lr"] == kw["lr"]
    _run_steps(opt2, fresh, 5, 5, sparse)
    for a, b in zip(full, fresh):
        assert np.array_equal(a.detach().numpy(), b.detach().numpy())
    # loading copied the state: stepping opt2 did not write into the dict it was given
    for i, st in saved["state"].items():
        for k, v in st.items():
            assert np.array_equal(v.numpy() if isinstance(v, ember.Tensor) else v, snapshot[i][k])


def test_state_dict_layout_with_groups():
    a, b, c = (ember.tensor([1.0, 2.0], requires_grad=True) for _ in range(3))
    opt = Adam([{"params": [a, b]}, {"params": [c], "lr": 0.5}])
    for p in (a, c):
        p.grad = ember.ones(2)
    opt.step()
    sd = opt.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1], [2]]
    assert sd["param_groups"][1]["lr"] == 0.5 and sd["param_groups"][0]["betas"] == (0.9, 0.999)
    assert sorted(sd["state"]) == [0, 2]
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    assert sd["state"][2]["step"].item() == 1.0


def test_load_state_dict_accepts_string_indices_and_numpy_arrays():
    a = ember.tensor([1.0, 2.0], requires_grad=True)
    opt = SGD([a], lr=0.1, momentum=0.9)
    sd = {"state": {"0": {"momentum_buffer": np.array([0.5, 0.25], dtype=np.float64)}},
          "param_groups": [{"lr": 0.2, "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.0,
                            "nesterov": False, "maximize": False, "params": [0]}]}
    opt.load_state_dict(sd)
    buf = opt.state[a]["momentum_buffer"]
    assert isinstance(buf, ember.Tensor) and buf.dtype is ember.float32
    a.grad = ember.zeros(2)
    opt.step()
    np.testing.assert_allclose(a.detach().numpy(), [1.0 - 0.2 * 0.45, 2.0 - 0.2 * 0.225], rtol=1e-6)


# ----------------------------------------------------------------------------- row-sparse gradients

ROW_STEPS = [[1, 4, 7], [0, 4], [9, 4, 1], [7]]  # rows 2, 3, 5, 6 and 8 are never touched
UNTOUCHED = [2, 3, 5, 6, 8]


def _sparse_values(step, n):
    return np.random.default_rng(step).standard_normal((n, 3)).astype(np.float32)


def _run_sparse_ember(opt_cls, kw, weight, steps=ROW_STEPS):
    p = ember.tensor(weight, requires_grad=True)
    opt = opt_cls([p], **kw)
    for s, rows in enumerate(steps):
        p.grad = RowSparseGrad(ember.tensor(rows), ember.tensor(_sparse_values(s, len(rows))), p.shape)
        opt.step()
    return p, opt


def _run_sparse_torch(name, kw, weight, steps=ROW_STEPS):
    p = torch.tensor(weight, requires_grad=True)
    opt = getattr(torch.optim, name)([p], **kw)
    for s, rows in enumerate(steps):
        p.grad = torch.sparse_coo_tensor(torch.tensor([rows]), torch.tensor(_sparse_values(s, len(rows))),
                                         tuple(p.shape), check_invariants=True)
        opt.step()
    return p


SPARSE_CONFIGS = [("SGD", {"lr": 0.1}), ("SGD", {"lr": 0.1, "maximize": True}), ("Adagrad", {"lr": 0.5}),
                  ("Adagrad", {"lr": 0.5, "lr_decay": 0.1, "initial_accumulator_value": 0.2}),
                  ("SparseAdam", {"lr": 0.05}), ("SparseAdam", {"lr": 0.05, "betas": (0.5, 0.9), "maximize": True})]


@pytest.mark.parametrize(("name", "kw"), SPARSE_CONFIGS)
def test_sparse_step_touches_only_its_rows(name, kw):
    weight = np.random.default_rng(7).standard_normal((10, 3)).astype(np.float32)
    p, opt = _run_sparse_ember(getattr(ember.optim, name), kw, weight)
    out = p.detach().numpy()
    np.testing.assert_array_equal(out[UNTOUCHED], weight[UNTOUCHED])
    assert not np.array_equal(out[[0, 1, 4, 7, 9]], weight[[0, 1, 4, 7, 9]])
    state = opt.state[p]
    for key in ("exp_avg", "exp_avg_sq", "sum"):
        if key in state:
            init = kw.get("initial_accumulator_value", 0.0) if key == "sum" else 0.0
            np.testing.assert_array_equal(state[key].numpy()[UNTOUCHED], np.full((5, 3), init, np.float32))
    if name == "SparseAdam":
        assert state["step"] == len(ROW_STEPS)


@needs_torch
@pytest.mark.filterwarnings("ignore:Sparse invariant checks")
@pytest.mark.parametrize(("name", "kw"), SPARSE_CONFIGS)
def test_sparse_step_matches_torch(name, kw):
    weight = np.random.default_rng(7).standard_normal((10, 3)).astype(np.float32)
    p, _ = _run_sparse_ember(getattr(ember.optim, name), kw, weight)
    tp = _run_sparse_torch(name, kw, weight)
    np.testing.assert_allclose(p.detach().numpy(), tp.detach().numpy(), rtol=1e-5, atol=1e-6)


@needs_torch
def test_sparse_adam_step_count_is_per_parameter():
    # the second parameter gets gradients on fewer steps: its bias correction uses its own count
    w1 = np.random.default_rng(1).standard_normal((4, 2)).astype(np.float32)
    w2 = np.random.default_rng(2).standard_normal((4, 2)).astype(np.float32)
    ep = [ember.tensor(w, requires_grad=True) for w in (w1, w2)]
    tp = [torch.tensor(w, requires_grad=True) for w in (w1, w2)]
    eo, to = SparseAdam(ep, lr=0.1), torch.optim.SparseAdam(tp, lr=0.1)
    for s in range(4):
        vals = np.random.default_rng(s).standard_normal((2, 2)).astype(np.float32)
        for k in range(2):
            if k == 1 and s < 2:
                ep[k].grad, tp[k].grad = None, None
                continue
            rows = [s % 4, (s + 2) % 4]
            ep[k].grad = RowSparseGrad(ember.tensor(rows), ember.tensor(vals), (4, 2))
            tp[k].grad = torch.sparse_coo_tensor(torch.tensor([rows]), torch.tensor(vals), (4, 2),
                                                 check_invariants=True)
        eo.step()
        to.step()
    assert eo.state[ep[1]]["step"] == 2
    for e, t in zip(ep, tp):
        np.testing.assert_allclose(e.detach().numpy(), t.detach().numpy(), rtol=1e-5, atol=1e-6)


@needs_torch
@pytest.mark.filterwarnings("ignore:Sparse invariant checks")
def test_sparse_duplicate_rows_are_summed_like_torch():
    weight = np.random.default_rng(3).standard_normal((5, 2)).astype(np.float32)
    rows, vals = [3, 1, 3], np.array([[1.0, 2.0], [0.5, -1.0], [3.0, -2.0]], np.float32)
    p = ember.tensor(weight, requires_grad=True)
    p.grad = RowSparseGrad(ember.tensor(rows), ember.tensor(vals), (5, 2))
    Adagrad([p], lr=0.3).step()
    tp = torch.tensor(weight, requires_grad=True)
    tp.grad = torch.sparse_coo_tensor(torch.tensor([rows]), torch.tensor(vals), (5, 2), check_invariants=True)
    torch.optim.Adagrad([tp], lr=0.3).step()
    np.testing.assert_allclose(p.detach().numpy(), tp.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_sparse_sgd_equals_dense_sgd_on_the_same_gradient():
    weight = np.random.default_rng(5).standard_normal((6, 3)).astype(np.float32)
    sparse = RowSparseGrad(ember.tensor([0, 4]), ember.tensor(_sparse_values(0, 2)), (6, 3))
    a = ember.tensor(weight, requires_grad=True)
    b = ember.tensor(weight, requires_grad=True)
    a.grad, b.grad = sparse, sparse.to_dense()
    SGD([a], lr=0.3).step()
    SGD([b], lr=0.3).step()
    np.testing.assert_array_equal(a.detach().numpy(), b.detach().numpy())


def test_empty_sparse_gradient_changes_nothing():
    weight = np.ones((4, 2), np.float32)
    for cls in (SGD, Adagrad, SparseAdam):
        p = ember.tensor(weight, requires_grad=True)
        p.grad = RowSparseGrad(ember.zeros(0, dtype=ember.int64), ember.zeros(0, 2), (4, 2))
        cls([p], lr=0.1).step()
        np.testing.assert_array_equal(p.detach().numpy(), weight)


def _sparse_param():
    p = ember.tensor(np.ones((4, 2), np.float32), requires_grad=True)
    p.grad = RowSparseGrad(ember.tensor([1]), ember.ones(1, 2), (4, 2))
    return p


@pytest.mark.parametrize(("make", "err", "match"), [
    (lambda p: Adam([p]), TypeError, "Adam does not support; use ember.optim.SparseAdam"),
    (lambda p: AdamW([p]), TypeError, "AdamW does not support; use ember.optim.SparseAdam"),
    (lambda p: RMSprop([p]), TypeError, "RMSprop.*row-sparse"),
    (lambda p: SGD([p], lr=0.1, momentum=0.9), ValueError, "SGD.*without momentum.*momentum=0.9"),
    (lambda p: SGD([p], lr=0.1, weight_decay=0.1), ValueError, "weight_decay=0.1 is not compatible"),
    (lambda p: Adagrad([p], weight_decay=0.1), ValueError, "Adagrad: weight_decay=0.1 is not compatible"),
])
def test_sparse_gradient_errors(make, err, match):
    p = _sparse_param()
    with pytest.raises(err, match=match):
        make(p).step()
    np.testing.assert_array_equal(p.detach().numpy(), np.ones((4, 2)))


def test_sparse_adam_rejects_dense_gradients():
    p = ember.tensor([1.0, 2.0], requires_grad=True)
    p.grad = ember.ones(2)
    with pytest.raises(TypeError, match=r"SparseAdam: parameter 0 \(shape \(2,\)\) has a dense gradient"):
        SparseAdam([p]).step()


def test_sparse_updates_refuse_to_be_traced(monkeypatch):
    monkeypatch.setattr(optimizer_module, "_FORCE_TRACEABLE", True)
    with pytest.raises(ember.TraceError, match="SparseAdam: row-sparse"):
        SparseAdam([_sparse_param()]).step()


# ----------------------------------------------------------------------------- bad input


def _p():
    return ember.tensor([1.0, 2.0], requires_grad=True)


@pytest.mark.parametrize(("make", "err", "match"), [
    (lambda: SGD([_p()], lr=-0.1), ValueError, r"SGD: invalid learning rate: -0.1"),
    (lambda: SGD([_p()], lr=0.1, momentum=-1), ValueError, r"SGD: invalid momentum: -1"),
    (lambda: SGD([_p()], lr=0.1, nesterov=True), ValueError, "Nesterov momentum requires a momentum"),
    (lambda: SGD([_p()], lr="0.1"), TypeError, "SGD: learning rate must be a number, got str"),
    (lambda: Adam([_p()], lr=float("nan")), ValueError, "Adam: invalid learning rate: nan"),
    (lambda: Adam([_p()], betas=(1.0, 0.999)), ValueError, "Adam: invalid beta parameter at index 0: 1.0"),
    (lambda: Adam([_p()], betas=(0.9, -0.1)), ValueError, "beta parameter at index 1: -0.1"),
    (lambda: Adam([_p()], betas=0.9), ValueError, r"Adam: betas must be a pair \(beta1, beta2\), got 0.9"),
    (lambda: Adam([_p()], eps=-1e-8), ValueError, "Adam: invalid epsilon value: -1e-08"),
    (lambda: AdamW([_p()], weight_decay=-0.01), ValueError, "AdamW: invalid weight_decay value: -0.01"),
    (lambda: SparseAdam([_p()], lr=0.0), ValueError,
     r"SparseAdam: invalid learning rate: 0.0; expected a value in \(0"),
    (lambda: Adagrad([_p()], lr_decay=-1), ValueError, "Adagrad: invalid lr_decay value: -1"),
    (lambda: Adagrad([_p()], initial_accumulator_value=-1), ValueError, "initial_accumulator_value: -1"),
    (lambda: RMSprop([_p()], alpha=-0.5), ValueError, "RMSprop: invalid alpha value: -0.5"),
    (lambda: SGD([{"params": [_p()], "lr": -1.0}], lr=0.1), ValueError, "SGD: invalid learning rate: -1.0"),
    (lambda: SGD([], lr=0.1), ValueError, "SGD: got an empty parameter list"),
    (lambda: SGD(_p(), lr=0.1), TypeError, "SGD: params must be an iterable .* got a single Tensor"),
    (lambda: SGD({_p()}, lr=0.1), TypeError, "not a set"),
    (lambda: SGD(3, lr=0.1), TypeError, "SGD: params must be an iterable of tensors .* got int"),
    (lambda: SGD([np.zeros(2)], lr=0.1), TypeError, "can only optimize tensors, but parameter 0 is a ndarray"),
    (lambda: SGD([_p() * 2], lr=0.1), ValueError, "can't optimize a non-leaf tensor"),
    (lambda: SGD([ember.tensor([1, 2])], lr=0.1), ember.DTypeError, "floating-point tensors, but parameter 0"),
    (lambda: SGD([{"lr": 0.1}]), ValueError, "the group has no 'params' entry"),
])
def test_bad_hyperparameters_and_params(make, err, match):
    with pytest.raises(err, match=match):
        make()


def test_a_parameter_given_twice():
    a, b = _p(), _p()
    with pytest.raises(ValueError, match=r"SGD: parameter group contains the same tensor twice \(parameter 2"):
        SGD([a, b, a], lr=0.1)
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
        SGD([{"params": [a]}, {"params": [b, a]}], lr=0.1)
    opt = SGD([a], lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [a]})
    with pytest.raises(ValueError, match="SGD: invalid learning rate: -2"):
        opt.add_param_group({"params": [b], "lr": -2})
    assert len(opt.param_groups) == 1


def test_load_state_dict_mismatches():
    a, b, c = _p(), _p(), _p()
    opt = Adam([{"params": [a, b]}, {"params": [c]}])
    for p in (a, b, c):
        p.grad = ember.ones(2)
    opt.step()
    sd = opt.state_dict()
    with pytest.raises(ValueError, match=r"loaded state dict has 2 parameter group\(s\), but the optimizer has 1"):
        Adam([_p(), _p(), _p()]).load_state_dict(sd)
    with pytest.raises(ValueError, match=r"parameter group 0 has 2 parameter\(s\) in the loaded state dict, but 1 in"):
        Adam([{"params": [_p()]}, {"params": [_p(), _p()]}]).load_state_dict(sd)
    with pytest.raises(ValueError, match="expected a dict with 'state' and 'param_groups'"):
        Adam([_p()]).load_state_dict({"param_groups": []})
    other = Adam([{"params": [ember.zeros(3, requires_grad=True), _p()]}, {"params": [_p()]}])
    with pytest.raises(ember.ShapeError, match=r"state 'exp_avg' of parameter 0 has shape \(2,\).*shape \(3,\)"):
        other.load_state_dict(sd)
    bad = {"state": {5: {}}, "param_groups": sd["param_groups"]}
    with pytest.raises(ValueError, match="entry for parameter 5, which is in none of the loaded parameter groups"):
        Adam([{"params": [_p(), _p()]}, {"params": [_p()]}]).load_state_dict(bad)
    corrupt = {"state": {}, "param_groups": [dict(sd["param_groups"][0], lr=-1.0), sd["param_groups"][1]]}
    with pytest.raises(ValueError, match=r"Adam: invalid learning rate: -1\.0"):
        Adam([{"params": [_p(), _p()]}, {"params": [_p()]}]).load_state_dict(corrupt)
