"""Learning-rate schedulers: value sequences against PyTorch and closed forms, state dicts, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

import ember
import ember.optim
from ember.optim import lr_scheduler as S

try:  # PyTorch is optional: comparisons against it are skipped without it
    import torch
except ImportError:  # pragma: no cover - depends on the machine
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")


def _groups(lib, opt_name="SGD", **kw):
    """An optimizer with two parameter groups (lr 0.1 and 0.05)."""
    a = lib.zeros(2, requires_grad=True)
    b = lib.zeros(3, requires_grad=True)
    opt_kw = {"momentum": 0.9} if opt_name == "SGD" else {}
    opt_kw.update(kw)
    return getattr(lib.optim, opt_name)([{"params": [a]}, {"params": [b], "lr": 0.05}], lr=0.1, **opt_kw)


def _record(opt, sched, steps, metrics=None):
    """get_last_lr() after construction and after each step, plus momentum/beta1 of each group."""
    lrs = [list(sched.get_last_lr())]
    moms = [[g.get("momentum", g.get("betas", (None,))[0]) for g in opt.param_groups]]
    for i in range(steps):
        opt.step()
        if metrics is None:
            sched.step()
        else:
            sched.step(metrics[i])
        lrs.append(list(sched.get_last_lr()))
        moms.append([g.get("momentum", g.get("betas", (None,))[0]) for g in opt.param_groups])
    return np.array(lrs, dtype=float), np.array(moms, dtype=float)


# Each case builds the same scheduler for either library: fn(lib_lr_scheduler_module, optimizer).
CASES = {
    "StepLR": lambda m, o: m.StepLR(o, step_size=7, gamma=0.5),
    "MultiStepLR": lambda m, o: m.MultiStepLR(o, milestones=[5, 12, 12, 20], gamma=0.3),
    "ExponentialLR": lambda m, o: m.ExponentialLR(o, gamma=0.9),
    "CosineAnnealingLR": lambda m, o: m.CosineAnnealingLR(o, T_max=10, eta_min=0.001),
    "CosineAnnealingLR-long": lambda m, o: m.CosineAnnealingLR(o, T_max=30),
    "LinearLR-warmup": lambda m, o: m.LinearLR(o, start_factor=0.1, total_iters=8),
    "LinearLR-decay": lambda m, o: m.LinearLR(o, start_factor=1.0, end_factor=0.2, total_iters=10),
    "LambdaLR": lambda m, o: m.LambdaLR(o, lambda e: 0.95 ** e),
    "LambdaLR-per-group": lambda m, o: m.LambdaLR(o, [lambda e: 1 / (e + 1), lambda e: min(1.0, (e + 1) / 5)]),
    "MultiplicativeLR": lambda m, o: m.MultiplicativeLR(o, lambda e: 0.9 if e % 2 else 1.0),
    "ConstantLR": lambda m, o: m.ConstantLR(o, factor=0.5, total_iters=4),
    "PolynomialLR": lambda m, o: m.PolynomialLR(o, total_iters=20, power=2.0),
    "SequentialLR-warmup-cosine": lambda m, o: m.SequentialLR(
        o, [m.LinearLR(o, start_factor=0.1, total_iters=5), m.CosineAnnealingLR(o, T_max=25)], milestones=[5]),
    "SequentialLR-three": lambda m, o: m.SequentialLR(
        o, [m.ConstantLR(o, factor=0.2, total_iters=3), m.ExponentialLR(o, gamma=0.8),
            m.StepLR(o, step_size=4, gamma=0.5)], milestones=[6, 15]),
    "ChainedScheduler": lambda m, o: m.ChainedScheduler([m.ExponentialLR(o, gamma=0.9),
                                                         m.StepLR(o, step_size=5, gamma=0.5)]),
    "OneCycleLR-cos": lambda m, o: m.OneCycleLR(o, max_lr=[1.0, 0.5], total_steps=30),
    "OneCycleLR-linear": lambda m, o: m.OneCycleLR(o, max_lr=0.8, total_steps=30, anneal_strategy="linear",
                                                   pct_start=0.25),
    "OneCycleLR-three-phase": lambda m, o: m.OneCycleLR(o, max_lr=1.0, epochs=3, steps_per_epoch=10,
                                                        three_phase=True, div_factor=10.0, final_div_factor=100.0),
    "OneCycleLR-no-momentum": lambda m, o: m.OneCycleLR(o, max_lr=1.0, total_steps=30, cycle_momentum=False),
}


@needs_torch
@pytest.mark.parametrize("case", list(CASES))
def test_matches_torch(case):
    ours = _record(opt := _groups(ember), CASES[case](S, opt), 30)
    theirs = _record(topt := _groups(torch), CASES[case](torch.optim.lr_scheduler, topt), 30)
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-12, atol=0)
    np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-12, atol=0)


@needs_torch
@pytest.mark.parametrize("three_phase", [False, True])
def test_one_cycle_cycles_adam_beta1_like_torch(three_phase):
    def run(lib, mod):
        opt = _groups(lib, "Adam", betas=(0.9, 0.99))
        sched = mod.OneCycleLR(opt, max_lr=0.01, total_steps=25, base_momentum=0.8, max_momentum=0.9,
                               three_phase=three_phase)
        lrs, beta1 = _record(opt, sched, 25)
        return lrs, beta1, [g["betas"][1] for g in opt.param_groups]

    ours, theirs = run(ember, S), run(torch, torch.optim.lr_scheduler)
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-12)
    np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-12)
    assert ours[2] == theirs[2] == [0.99, 0.99]
    assert 0.8 - 1e-12 <= ours[1].min() < 0.81 and ours[1].max() == pytest.approx(0.9)  # the peak is between steps


@needs_torch
def test_reduce_lr_on_plateau_matches_torch():
    metrics = [1.0, 0.9, 0.95, 0.95, 0.91, 0.96, 0.97, 0.8, 0.85, 0.85, 0.85, 0.85, 0.85, 0.85, 0.85, 0.7] * 2

    def run(lib, mod, **kw):
        opt = _groups(lib)
        return _record(opt, mod.ReduceLROnPlateau(opt, **kw), len(metrics), metrics)[0]

    for kw in [{"patience": 1}, {"patience": 2, "cooldown": 2, "factor": 0.5, "min_lr": [0.01, 0.02]},
               {"mode": "max", "patience": 0, "threshold_mode": "abs", "threshold": 0.01}]:
        np.testing.assert_allclose(run(ember, S, **kw), run(torch, torch.optim.lr_scheduler, **kw), rtol=1e-12)


@needs_torch
def test_step_with_epoch_uses_closed_form_like_torch():
    def run(lib, mod):
        opt = _groups(lib)
        sched = mod.StepLR(opt, step_size=3, gamma=0.5)
        out = []
        for e in (4, 9, 2):
            opt.step()
            with pytest.warns(UserWarning, match="deprecated"):
                sched.step(e)
            out.append(sched.get_last_lr())
        return out

    np.testing.assert_allclose(run(ember, S), run(torch, torch.optim.lr_scheduler), rtol=1e-12)


# ----------------------------------------------------------------------------- torch-free references


def test_warmup_then_cosine_against_closed_form():
    opt = _groups(ember)
    sched = S.SequentialLR(opt, [S.LinearLR(opt, start_factor=0.1, total_iters=5),
                                 S.CosineAnnealingLR(opt, T_max=20, eta_min=0.0)], milestones=[5])
    lrs, _ = _record(opt, sched, 25)
    for t in range(26):
        for base, got in zip((0.1, 0.05), lrs[t]):
            want = base * (0.1 + 0.9 * t / 5) if t < 5 else base * (1 + math.cos(math.pi * (t - 5) / 20)) / 2
            assert got == pytest.approx(want, rel=1e-9, abs=1e-15), t
    assert [g["lr"] for g in opt.param_groups] == list(lrs[-1])


def test_step_and_exponential_closed_forms():
    opt = _groups(ember)
    sched = S.StepLR(opt, step_size=4, gamma=0.5)
    lrs, _ = _record(opt, sched, 12)
    np.testing.assert_allclose(lrs[:, 0], [0.1 * 0.5 ** (t // 4) for t in range(13)], rtol=1e-12)
    opt = _groups(ember)
    lrs, _ = _record(opt, S.ExponentialLR(opt, gamma=0.9), 10)
    np.testing.assert_allclose(lrs[:, 1], [0.05 * 0.9 ** t for t in range(11)], rtol=1e-12)


def test_one_cycle_endpoints():
    opt = _groups(ember)
    sched = S.OneCycleLR(opt, max_lr=1.0, total_steps=20, pct_start=0.25, div_factor=10.0, final_div_factor=50.0)
    lrs, moms = _record(opt, sched, 19)
    assert lrs[0, 0] == pytest.approx(0.1) and lrs.max() == pytest.approx(1.0)
    assert int(np.argmax(lrs[:, 0])) == 4  # the peak at pct_start * total_steps - 1
    assert lrs[-1, 0] == pytest.approx(0.1 / 50)
    assert moms[0, 0] == pytest.approx(0.95) and moms[4, 0] == pytest.approx(0.85)
    opt.step()
    with pytest.raises(ValueError, match="OneCycleLR: tried to step 21 times, but total_steps is 20"):
        sched.step()
        sched.step()


def test_scheduler_drives_optimizer_updates():
    p = ember.tensor([1.0], requires_grad=True)
    opt = ember.optim.SGD([p], lr=1.0)
    sched = S.MultiStepLR(opt, milestones=[1], gamma=0.1)
    for _ in range(2):
        p.grad = ember.tensor([1.0])
        opt.step()
        sched.step()
    assert p.item() == pytest.approx(1.0 - 1.0 - 0.1)


# ----------------------------------------------------------------------------- state dicts


ROUND_TRIP = ["StepLR", "CosineAnnealingLR", "LinearLR-warmup", "LambdaLR", "SequentialLR-warmup-cosine",
              "SequentialLR-three", "ChainedScheduler", "OneCycleLR-cos", "OneCycleLR-three-phase"]


@pytest.mark.parametrize("case", ROUND_TRIP)
def test_state_dict_round_trip(case):
    opt = _groups(ember)
    sched = CASES[case](S, opt)
    full, _ = _record(opt, sched, 24)

    opt1 = _groups(ember)
    sched1 = CASES[case](S, opt1)
    _record(opt1, sched1, 12)
    saved_sched, saved_opt = sched1.state_dict(), opt1.state_dict()

    opt2 = _groups(ember)
    sched2 = CASES[case](S, opt2)  # build the scheduler first, then load: its constructor rewrites the lrs
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    assert sched2.get_last_lr() == list(full[12])
    rest, _ = _record(opt2, sched2, 12)
    np.testing.assert_array_equal(rest, full[12:])
    assert "optimizer" not in saved_sched


def test_lambda_state_dict_saves_callable_objects_only():
    class Decay:
        def __init__(self) -> None:
            self.rate = 0.5

        def __call__(self, epoch: int) -> float:
            return self.rate ** epoch

    opt = _groups(ember)
    sched = S.LambdaLR(opt, [lambda e: 1.0, Decay()])
    sd = sched.state_dict()
    assert sd["lr_lambdas"] == [None, {"rate": 0.5}]
    sd["lr_lambdas"][1]["rate"] = 0.25
    sched.load_state_dict(sd)
    assert sched.lr_lambdas[1].rate == 0.25


def test_resume_with_last_epoch():
    opt = _groups(ember)
    sched = S.ExponentialLR(opt, gamma=0.5)
    for _ in range(3):
        opt.step()
        sched.step()
    resumed = S.ExponentialLR(opt, gamma=0.5, last_epoch=sched.last_epoch)
    assert resumed.base_lrs == [0.1, 0.05] and resumed.last_epoch == 4


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("make", "err", "match"), [
    (lambda o: S.StepLR(o, step_size=0), ValueError, "StepLR: step_size must be a positive integer, got 0"),
    (lambda o: S.StepLR(o, step_size=2, gamma="x"), TypeError, "StepLR: gamma must be a number"),
    (lambda o: S.MultiStepLR(o, milestones=[2, -1]), ValueError, "MultiStepLR: each milestone must be"),
    (lambda o: S.CosineAnnealingLR(o, T_max=0), ValueError, "CosineAnnealingLR: T_max must be a positive integer"),
    (lambda o: S.LinearLR(o, start_factor=0.0), ValueError, r"LinearLR: start_factor must be in \(0, 1\], got 0.0"),
    (lambda o: S.LinearLR(o, end_factor=1.5), ValueError, "LinearLR: end_factor must be in"),
    (lambda o: S.LinearLR(o, total_iters=0), ValueError, "LinearLR: total_iters must be a positive integer"),
    (lambda o: S.ConstantLR(o, factor=2.0), ValueError, "ConstantLR: factor must be between 0 and 1"),
    (lambda o: S.LambdaLR(o, 3), TypeError, "LambdaLR: lr_lambda must be a function"),
    (lambda o: S.LambdaLR(o, [lambda e: 1.0]), ValueError, r"LambdaLR: lr_lambda must have one value per parameter"),
    (lambda o: S.OneCycleLR(o, max_lr=1.0), ValueError, "OneCycleLR: give either total_steps"),
    (lambda o: S.OneCycleLR(o, max_lr=1.0, total_steps=0), ValueError, "total_steps must be a positive integer"),
    (lambda o: S.OneCycleLR(o, max_lr=1.0, total_steps=10, pct_start=1.5), ValueError, "pct_start must be"),
    (lambda o: S.OneCycleLR(o, max_lr=1.0, total_steps=10, anneal_strategy="exp"), ValueError,
     "anneal_strategy must be 'cos' or 'linear', got 'exp'"),
    (lambda o: S.OneCycleLR(o, max_lr=[1.0], total_steps=10), ValueError, "max_lr must have one value per"),
    (lambda o: S.SequentialLR(o, [S.StepLR(o, 2)], milestones=[3]), ValueError,
     "SequentialLR: expects one milestone fewer than schedulers"),
    (lambda o: S.SequentialLR(o, [], milestones=[]), ValueError, "at least one scheduler"),
    (lambda o: S.SequentialLR(o, [S.StepLR(_groups(ember), 2), S.StepLR(o, 2)], [3]), ValueError,
     r"same optimizer, but schedulers\[0\]"),
    (lambda o: S.ChainedScheduler([S.ReduceLROnPlateau(o)]), ValueError, "ReduceLROnPlateau"),
    (lambda o: S.ExponentialLR(o, gamma=0.5, last_epoch=3), KeyError, "has no 'initial_lr'"),
    (lambda o: S.ExponentialLR("opt", gamma=0.5), TypeError,
     "ExponentialLR: expected an ember.optim.Optimizer, got str"),
    (lambda o: S.ReduceLROnPlateau(o, mode="up"), ValueError, "mode must be 'min' or 'max'"),
    (lambda o: S.ReduceLROnPlateau(o, factor=1.0), ValueError, "factor must be < 1.0"),
])
def test_bad_arguments(make, err, match):
    with pytest.raises(err, match=match):
        make(_groups(ember))


def test_one_cycle_needs_momentum_or_betas():
    a = ember.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="OneCycleLR: cycle_momentum needs an optimizer with momentum or betas, "
                                         "Adagrad has neither"):
        S.OneCycleLR(ember.optim.Adagrad([a]), max_lr=0.1, total_steps=10)
    S.OneCycleLR(ember.optim.Adagrad([a]), max_lr=0.1, total_steps=10, cycle_momentum=False)
