"""The three-way op check used across the suite (see the project README, "Testing").

``check_op(fn, ref, arrays)`` runs ``fn(lib, *tensors)`` with ``lib`` = ember and
compares it against

1. the NumPy reference ``ref(*arrays)`` (forward),
2. central finite differences in float64 (``ember.autograd.gradcheck``),
3. PyTorch's forward and backward (``fn(torch, *tensors)``) when torch is importable.

Writing ``fn`` against the shared PyTorch-style API (``lib.exp``, ``x.sum(dim=1)``)
lets one lambda drive both libraries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import ember

try:  # PyTorch is optional: comparisons against it are skipped without it
    import torch
except ImportError:  # pragma: no cover - depends on the machine
    torch = None


def rand(*shape: int, seed: int = 0, low: float = -2.0, high: float = 2.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, size=shape)


def to_ember(arrays: Sequence[Any], dtype: Any, diff: Sequence[int]) -> list:
    out = []
    for i, a in enumerate(arrays):
        if isinstance(a, np.ndarray) and a.dtype.kind == "f":
            t = ember.tensor(a, dtype=dtype)
            if i in diff:
                t.requires_grad_(True)
            out.append(t)
        elif isinstance(a, np.ndarray):
            out.append(ember.tensor(a))
        else:
            out.append(a)
    return out


def _float_positions(arrays: Sequence[Any]) -> list[int]:
    return [i for i, a in enumerate(arrays) if isinstance(a, np.ndarray) and a.dtype.kind == "f"]


def _outputs(out: Any) -> list:
    if isinstance(out, (tuple, list)):
        return list(out)
    return [out]


def check_forward(fn: Callable, ref: Callable, arrays: Sequence[Any], atol: float = 1e-5, rtol: float = 1e-5,
                  dtype: Any = "float32") -> None:
    ins = to_ember(arrays, dtype, [])
    got = _outputs(fn(ember, *ins))
    np_in = [a.astype(ember.dtypes.to_dtype(dtype).np) if isinstance(a, np.ndarray) and a.dtype.kind == "f"
             else a for a in arrays]
    want = _outputs(ref(*np_in))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        w = np.asarray(w)
        assert g.shape == w.shape, f"shape {g.shape} != reference {w.shape}"
        np.testing.assert_allclose(g.data.astype(np.float64) if g.dtype.is_floating_point else g.data, w,
                                   atol=atol, rtol=rtol)


def check_grad(fn: Callable, arrays: Sequence[Any], diff: Sequence[int] | None = None, **kw: Any) -> None:
    diff = _float_positions(arrays) if diff is None else diff
    ins = to_ember(arrays, "float64", diff)
    assert ember.autograd.gradcheck(lambda *xs: fn(ember, *xs), ins, **kw)


def check_torch(fn: Callable, arrays: Sequence[Any], diff: Sequence[int] | None = None, atol: float = 1e-5,
                rtol: float = 1e-4, dtype: str = "float32") -> None:
    if torch is None:
        return
    diff = _float_positions(arrays) if diff is None else diff
    ins = to_ember(arrays, dtype, diff)
    tins = []
    for i, a in enumerate(arrays):
        if isinstance(a, np.ndarray):
            t = torch.tensor(a.astype(getattr(np, dtype)) if a.dtype.kind == "f" else a)
            if i in diff:
                t.requires_grad_(True)
            tins.append(t)
        else:
            tins.append(a)
    got = _outputs(fn(ember, *ins))
    want = _outputs(fn(torch, *tins))
    rng = np.random.default_rng(1)
    e_loss, t_loss = None, None
    for g, w in zip(got, want):
        assert tuple(g.shape) == tuple(w.shape), f"shape {g.shape} != torch {tuple(w.shape)}"
        w_np = w.detach().numpy()
        np.testing.assert_allclose(g.data.astype(np.float64) if g.dtype.is_floating_point else g.data,
                                   w_np, atol=atol, rtol=rtol)
        if g.requires_grad and w.requires_grad:
            p = rng.standard_normal(g.shape)
            e_term = (g * ember.tensor(p, dtype=g.dtype)).sum()
            t_term = (w * torch.tensor(p, dtype=w.dtype)).sum()
            e_loss = e_term if e_loss is None else e_loss + e_term
            t_loss = t_term if t_loss is None else t_loss + t_term
    if e_loss is None:
        return
    e_loss.backward()
    t_loss.backward()
    for i in diff:
        eg, tg = ins[i].grad, tins[i].grad
        if tg is None:
            assert eg is None or np.allclose(eg.data, 0), f"input {i}: ember has a gradient, torch has none"
            continue
        assert eg is not None, f"input {i}: torch has a gradient, ember has none"
        np.testing.assert_allclose(eg.data, tg.numpy(), atol=atol * 10, rtol=rtol * 10,
                                   err_msg=f"gradient of input {i}")


def check_op(fn: Callable, ref: Callable | None, arrays: Sequence[Any], diff: Sequence[int] | None = None,
             grad: bool = True, torch_check: bool = True, atol: float = 1e-5, rtol: float = 1e-5,
             grad_kw: dict | None = None) -> None:
    """All three checks; ``diff`` lists the inputs to differentiate (default: every float array)."""
    if ref is not None:
        check_forward(fn, ref, arrays, atol=atol, rtol=rtol)
    if grad:
        check_grad(fn, arrays, diff, **(grad_kw or {}))
    if torch_check:
        check_torch(fn, arrays, diff, atol=max(atol, 1e-5), rtol=max(rtol, 1e-4))
