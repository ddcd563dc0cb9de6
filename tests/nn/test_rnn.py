"""RNN, LSTM, GRU and their cells against PyTorch: outputs, states, every gradient, names, init, repr, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

import ember
from ember.errors import ShapeError
from ember.nn.rnn import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="needs torch")
_t = (lambda name: getattr(torch.nn, name)) if torch is not None else (lambda name: None)

LAYERS = {"rnn_tanh": (RNN, _t("RNN"), {}), "rnn_relu": (RNN, _t("RNN"), {"nonlinearity": "relu"}),
          "lstm": (LSTM, _t("LSTM"), {}), "gru": (GRU, _t("GRU"), {})}
CONFIGS = [
    {"num_layers": 1},
    {"num_layers": 2, "batch_first": True, "bidirectional": True, "states": True},
    {"num_layers": 2, "bias": False, "bidirectional": True},
    {"num_layers": 3, "batch_first": True, "states": True},
    {"num_layers": 2, "bidirectional": True, "states": True, "unbatched": True},
]


def _pair(kind: str, **kw):
    ecls, tcls, extra = LAYERS[kind]
    t = tcls(3, 5, **extra, **kw)
    e = ecls(3, 5, **extra, **kw)
    e.load_state_dict({k: v.detach().numpy() for k, v in t.state_dict().items()})
    assert list(e.state_dict()) == list(t.state_dict())
    return e, t


def _leaf(a: np.ndarray):
    return ember.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)


@needs_torch
@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_matches_torch(kind, cfg):
    cfg = dict(cfg)
    states, unbatched = cfg.pop("states", False), cfg.pop("unbatched", False)
    e, t = _pair(kind, **cfg)
    rng = np.random.default_rng(0)
    steps, batch = 4, 2
    shape = (steps, 3) if unbatched else ((batch, steps, 3) if cfg.get("batch_first") else (steps, batch, 3))
    ex, tx = _leaf(rng.standard_normal(shape).astype(np.float32))
    dirs = 2 if cfg.get("bidirectional") else 1
    s_shape = (cfg["num_layers"] * dirs,) + (() if unbatched else (batch,)) + (5,)
    leaves = [(ex, tx)]
    ehx = thx = None
    if states:
        hs = [_leaf(rng.standard_normal(s_shape).astype(np.float32)) for _ in range(2 if kind == "lstm" else 1)]
        leaves += hs
        if kind == "lstm":
            ehx, thx = (hs[0][0], hs[1][0]), (hs[0][1], hs[1][1])
        else:
            ehx, thx = hs[0]
    eo, eh = e(ex, ehx)
    to, th = t(tx, thx)
    eouts = [eo] + (list(eh) if kind == "lstm" else [eh])
    touts = [to] + (list(th) if kind == "lstm" else [th])
    eloss = tloss = 0
    for a, b in zip(eouts, touts):
        assert a.shape == tuple(b.shape)
        np.testing.assert_allclose(a.data, b.detach().numpy(), rtol=1e-5, atol=1e-5)
        w = rng.standard_normal(a.shape).astype(np.float32)
        eloss = eloss + (a * ember.tensor(w)).sum()
        tloss = tloss + (b * torch.tensor(w)).sum()
    eloss.backward()
    tloss.backward()
    for a, b in leaves:
        np.testing.assert_allclose(a.grad.data, b.grad.numpy(), rtol=1e-4, atol=1e-5)
    for (name, p), (_, tp) in zip(e.named_parameters(), t.named_parameters()):
        np.testing.assert_allclose(p.grad.data, tp.grad.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_gradcheck_float64(kind):
    ecls, _, _ = LAYERS[kind]
    m = ecls(2, 3, num_layers=2, bidirectional=True).double()
    x = ember.randn(3, 2, 2, dtype=ember.float64, requires_grad=True)
    h = ember.randn(4, 2, 3, dtype=ember.float64, requires_grad=True)

    def fn(x, h):
        out, hn = m(x, (h, h * 0.5) if kind == "lstm" else h)
        return out, (hn[0] if kind == "lstm" else hn)

    assert ember.autograd.gradcheck(fn, [x, h])


CELLS = {"rnn": (RNNCell, _t("RNNCell"), {}), "rnn_relu": (RNNCell, _t("RNNCell"), {"nonlinearity": "relu"}),
         "lstm": (LSTMCell, _t("LSTMCell"), {}), "gru": (GRUCell, _t("GRUCell"), {}),
         "gru_nobias": (GRUCell, _t("GRUCell"), {"bias": False})}


@needs_torch
@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize("batched", [True, False])
def test_cells_match_torch(kind, batched):
    ecls, tcls, kw = CELLS[kind]
    t, e = tcls(3, 4, **kw), ecls(3, 4, **kw)
    e.load_state_dict({k: v.detach().numpy() for k, v in t.state_dict().items()})
    rng = np.random.default_rng(1)
    lead = (2,) if batched else ()
    ex, tx = _leaf(rng.standard_normal(lead + (3,)).astype(np.float32))
    lstm = kind == "lstm"
    hs = [_leaf(rng.standard_normal(lead + (4,)).astype(np.float32)) for _ in range(2 if lstm else 1)]
    eo = e(ex, tuple(h[0] for h in hs) if lstm else hs[0][0])
    to = t(tx, tuple(h[1] for h in hs) if lstm else hs[0][1])
    eo, to = (list(eo), list(to)) if lstm else ([eo], [to])
    eloss = tloss = 0
    for a, b in zip(eo, to):
        np.testing.assert_allclose(a.data, b.detach().numpy(), rtol=1e-5, atol=1e-6)
        eloss = eloss + (a * a).sum()
        tloss = tloss + (b * b).sum()
    eloss.backward()
    tloss.backward()
    for a, b in [(ex, tx)] + hs:
        np.testing.assert_allclose(a.grad.data, b.grad.numpy(), rtol=1e-4, atol=1e-6)
    for p, tp in zip(e.parameters(), t.parameters()):
        np.testing.assert_allclose(p.grad.data, tp.grad.numpy(), rtol=1e-4, atol=1e-6)
    # no state: zeros
    out = e(ex)
    ref = t(tx)
    np.testing.assert_allclose((out[0] if lstm else out).data, (ref[0] if lstm else ref).detach().numpy(), atol=1e-6)


@needs_torch
def test_dropout_between_layers():
    e, t = _pair("lstm", num_layers=2, dropout=0.5)
    x = ember.randn(4, 2, 3)
    e.eval()
    t.eval()
    np.testing.assert_allclose(e(x)[0].data, t(torch.tensor(x.data))[0].detach().numpy(), atol=1e-6)
    e.train()
    ember.manual_seed(0)
    a = e(x)[0].data
    ember.manual_seed(1)
    b = e(x)[0].data
    assert not np.allclose(a, b)
    one = LSTM(3, 5, num_layers=2, dropout=1.0)
    ref = LSTM(3, 5, num_layers=2)
    ref.load_state_dict(one.state_dict())
    # dropout 1 zeroes the second layer's input: its output no longer depends on x
    np.testing.assert_allclose(one(x)[0].data, one(x * 2)[0].data)
    assert not np.allclose(ref(x)[0].data, ref(x * 2)[0].data)


def test_init_names_repr():
    ember.manual_seed(0)
    m = GRU(10, 64, num_layers=2, bidirectional=True)
    k = 1 / math.sqrt(64)
    for name, p in m.named_parameters():
        assert np.abs(p.data).max() <= k, name
    w = m.weight_hh_l1_reverse.data
    assert w.shape == (192, 64) and abs(w.std() - k / math.sqrt(3)) < 0.01 * k * 3
    assert m.weight_ih_l1.shape == (192, 128)
    assert [n for n, _ in LSTM(3, 4, bias=False).named_parameters()] == ["weight_ih_l0", "weight_hh_l0"]
    assert repr(RNN(3, 4, 2, nonlinearity="relu", bias=False, batch_first=True, dropout=0.5, bidirectional=True)) == \
        "RNN(3, 4, num_layers=2, bias=False, batch_first=True, dropout=0.5, bidirectional=True)"
    assert repr(LSTM(3, 4)) == "LSTM(3, 4)"
    assert repr(RNNCell(3, 4, nonlinearity="relu")) == "RNNCell(3, 4, nonlinearity=relu)"
    assert repr(LSTMCell(3, 4, bias=False)) == "LSTMCell(3, 4, bias=False)"
    assert [n for n, _ in GRUCell(3, 4, bias=False).named_parameters()] == ["weight_ih", "weight_hh"]


def test_errors():
    m = LSTM(3, 4, num_layers=2)
    with pytest.raises(ShapeError, match=r"LSTM: input.size\(-1\) must equal input_size=3"):
        m(ember.randn(5, 2, 6))
    with pytest.raises(ShapeError, match="LSTM: expected a 3-D input"):
        m(ember.randn(5, 2, 1, 3))
    with pytest.raises(ShapeError, match=r"LSTM: expected h_0 of shape \(2, 2, 4\).*got \(1, 2, 4\)"):
        m(ember.randn(5, 2, 3), (ember.zeros(1, 2, 4), ember.zeros(2, 2, 4)))
    with pytest.raises(ShapeError, match=r"expected c_0 of shape \(2, 4\) for unbatched 2-D input"):
        m(ember.randn(5, 3), (ember.zeros(2, 4), ember.zeros(2, 1, 4)))
    with pytest.raises(TypeError, match="tuple"):
        m(ember.randn(5, 2, 3), ember.zeros(2, 2, 4))
    with pytest.raises(ShapeError, match=r"GRU: expected hx of shape \(1, 2, 4\)"):
        GRU(3, 4)(ember.randn(5, 2, 3), ember.zeros(1, 3, 4))
    with pytest.raises(ShapeError, match=r"GRUCell: expected input of shape \(batch, 3\)"):
        GRUCell(3, 4)(ember.randn(2, 5))
    with pytest.raises(ShapeError, match="RNNCell: expected hx of shape"):
        RNNCell(3, 4)(ember.randn(2, 3), ember.zeros(3, 4))
    with pytest.raises(ValueError, match="nonlinearity"):
        RNN(3, 4, nonlinearity="gelu")
    with pytest.raises(NotImplementedError, match="proj_size"):
        LSTM(3, 4, proj_size=2)
    with pytest.raises(ValueError, match="hidden_size"):
        GRU(3, 0)
