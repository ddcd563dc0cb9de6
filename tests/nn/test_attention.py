"""Attention and transformers: SDPA, MultiheadAttention, TransformerEncoder(Layer), GPTBlock and GPT."""

from __future__ import annotations

import math

import numpy as np
import pytest

import ember
import ember.nn.functional as F
from ember.errors import DTypeError, ShapeError
from ember.nn.attention import MultiheadAttention
from ember.nn.transformer import GPT, GPTBlock, TransformerEncoder, TransformerEncoderLayer
from tests.helpers import check_op

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="needs torch")


def _load(e, t):
    e.load_state_dict({k: v.detach().numpy() for k, v in t.state_dict().items()})
    assert list(e.state_dict()) == list(t.state_dict())


def _np_sdpa(q, k, v, mask=None, causal=False, scale=None):
    s = q @ np.swapaxes(k, -1, -2) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    if causal:
        s = np.where(np.tril(np.ones(s.shape[-2:], bool)), s, -np.inf)
    if mask is not None:
        s = np.where(mask, s, -np.inf) if mask.dtype == bool else s + mask
    m = s.max(-1, keepdims=True)
    m = np.where(np.isinf(m), 0, m)
    e = np.exp(s - m)
    d = e.sum(-1, keepdims=True)
    return (e / np.where(d == 0, 1, d)) @ v


# ----------------------------------------------------------------------------- scaled_dot_product_attention


def _sdpa_inputs():
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((2, 3, 6, 5)), rng.standard_normal((2, 3, 6, 2))
    bool_mask = rng.random((4, 6)) > 0.3
    bool_mask[1] = False  # a fully masked query row
    float_mask = rng.standard_normal((3, 4, 6))
    float_mask[0, 2] = -np.inf
    return q, k, v, bool_mask, float_mask


@pytest.mark.parametrize("case", ["plain", "causal", "bool_mask", "float_mask", "scale"])
def test_sdpa_three_ways(case):
    q, k, v, bool_mask, float_mask = _sdpa_inputs()
    mask = {"bool_mask": bool_mask, "float_mask": float_mask}.get(case)
    kw = {"is_causal": case == "causal", "scale": 0.3 if case == "scale" else None}
    arrays = [q, k, v] + ([mask] if mask is not None else [])

    def fn(lib, q, k, v, *m):
        f = F.scaled_dot_product_attention if lib is ember else torch.nn.functional.scaled_dot_product_attention
        return f(q, k, v, attn_mask=m[0] if m else None, **kw)

    check_op(fn, lambda q, k, v, *m: _np_sdpa(q, k, v, m[0] if m else None, kw["is_causal"], kw["scale"]),
             arrays, diff=[0, 1, 2])


def test_sdpa_fully_masked_row_is_zero_not_nan():
    q, k, v, bool_mask, _ = _sdpa_inputs()
    tq, tk, tv = (ember.tensor(a, requires_grad=True) for a in (q, k, v))
    out = F.scaled_dot_product_attention(tq, tk, tv, attn_mask=ember.tensor(bool_mask))
    assert np.isfinite(out.data).all() and not out.data[:, :, 1].any()
    out.sum().backward()
    assert all(np.isfinite(t.grad.data).all() for t in (tq, tk, tv))
    assert not tq.grad.data[:, :, 1].any()


def test_sdpa_dropout():
    q, k, v, _, _ = (ember.tensor(a) if isinstance(a, np.ndarray) else a for a in _sdpa_inputs())
    ref = F.scaled_dot_product_attention(q, k, v)
    a = F.scaled_dot_product_attention(q, k, v, dropout_p=0.5, generator=ember.Generator().manual_seed(3))
    b = F.scaled_dot_product_attention(q, k, v, dropout_p=0.5, generator=ember.Generator().manual_seed(3))
    np.testing.assert_array_equal(a.data, b.data)
    assert not np.allclose(a.data, ref.data)
    assert not F.scaled_dot_product_attention(q, k, v, dropout_p=1.0).data.any()
    # dropout is unbiased: the mean over many draws approaches the output without dropout
    gen = ember.Generator().manual_seed(0)
    mean = np.mean([F.scaled_dot_product_attention(q, k, v, dropout_p=0.3, generator=gen).data for _ in range(400)], 0)
    assert np.abs(mean - ref.data).max() < 0.15


def test_sdpa_errors():
    q, k, v = ember.randn(2, 4, 5), ember.randn(2, 6, 5), ember.randn(2, 6, 3)
    with pytest.raises(ShapeError, match="same feature size"):
        F.scaled_dot_product_attention(q, ember.randn(2, 6, 4), v)
    with pytest.raises(ShapeError, match="same sequence length"):
        F.scaled_dot_product_attention(q, k, ember.randn(2, 5, 3))
    with pytest.raises(ShapeError, match=r"attn_mask of shape \(3, 6\) does not broadcast.*\(2, 4, 6\)"):
        F.scaled_dot_product_attention(q, k, v, attn_mask=ember.ones(3, 6).bool())
    with pytest.raises(DTypeError, match="attn_mask must be bool"):
        F.scaled_dot_product_attention(q, k, v, attn_mask=ember.ones(4, 6, dtype=ember.int64))
    with pytest.raises(ValueError, match="not both"):
        F.scaled_dot_product_attention(q, k, v, attn_mask=ember.ones(4, 6).bool(), is_causal=True)
    with pytest.raises(ShapeError, match="at least 2 dimensions"):
        F.scaled_dot_product_attention(ember.randn(5), k, v)


# ----------------------------------------------------------------------------- MultiheadAttention

MHA_CONFIGS = [
    {},
    {"batch_first": True},
    {"kdim": 3, "vdim": 5},
    {"bias": False, "batch_first": True},
    {"unbatched": True},
]


def _mha_inputs(cfg, rng, n=2, length=4, source=5, embed=8, self_attn=False):
    unbatched, bf = cfg.get("unbatched", False), cfg.get("batch_first", False)

    def shape(seq, feat):
        return (seq, feat) if unbatched else ((n, seq, feat) if bf else (seq, n, feat))

    q = rng.standard_normal(shape(length, embed)).astype(np.float32)
    if self_attn:
        return q, q, q
    k = rng.standard_normal(shape(source, cfg.get("kdim", embed))).astype(np.float32)
    v = rng.standard_normal(shape(source, cfg.get("vdim", embed))).astype(np.float32)
    return q, k, v


@needs_torch
@pytest.mark.parametrize("cfg", MHA_CONFIGS, ids=lambda c: "-".join(c) or "default")
@pytest.mark.parametrize("masks", ["none", "padding", "bool_attn", "float_attn3d", "both"])
@pytest.mark.parametrize("self_attn", [False, True])
def test_mha_matches_torch(cfg, masks, self_attn):
    if self_attn and "kdim" in cfg:
        pytest.skip("self-attention needs kdim == vdim == embed_dim")
    rng = np.random.default_rng(1)
    kw = {k: v for k, v in cfg.items() if k != "unbatched"}
    t = torch.nn.MultiheadAttention(8, 2, **kw)
    e = MultiheadAttention(8, 2, **kw)
    _load(e, t)
    n, length, source = 2, 4, (4 if self_attn else 5)
    arrays = _mha_inputs(cfg, rng, n, length, source, self_attn=self_attn)
    unbatched = cfg.get("unbatched", False)
    ekw, tkw = {}, {}
    if masks in ("padding", "both"):
        kpm = rng.random((source,) if unbatched else (n, source)) > 0.6
        kpm[..., 0] = False  # no fully masked row here: torch's need_weights path gives NaN there
        ekw["key_padding_mask"], tkw["key_padding_mask"] = ember.tensor(kpm), torch.tensor(kpm)
    if masks in ("bool_attn", "both"):
        am = rng.random((length, source)) > 0.7
        am[:, 0] = False
        ekw["attn_mask"], tkw["attn_mask"] = ember.tensor(am), torch.tensor(am)
    if masks == "float_attn3d":
        am = rng.standard_normal(((1 if unbatched else n) * 2, length, source)).astype(np.float32)
        ekw["attn_mask"], tkw["attn_mask"] = ember.tensor(am), torch.tensor(am)
    if self_attn:
        ex = ember.tensor(arrays[0], requires_grad=True)
        tx = torch.tensor(arrays[0], requires_grad=True)
        eins, tins = [ex] * 3, [tx] * 3
        leaves = [(ex, tx)]
    else:
        leaves = [(ember.tensor(a, requires_grad=True), torch.tensor(a, requires_grad=True)) for a in arrays]
        eins, tins = [a for a, _ in leaves], [b for _, b in leaves]
    for avg in (True, False):
        eo, ew = e(*eins, average_attn_weights=avg, **ekw)
        to, tw = t(*tins, average_attn_weights=avg, **tkw)
        np.testing.assert_allclose(eo.data, to.detach().numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(ew.data, tw.detach().numpy(), rtol=1e-4, atol=1e-6)
    eo2, none = e(*eins, need_weights=False, **ekw)
    assert none is None
    np.testing.assert_allclose(eo2.data, eo.data, rtol=1e-6)
    g = rng.standard_normal(eo.shape).astype(np.float32)
    gw = rng.standard_normal(ew.shape).astype(np.float32)
    ((eo * ember.tensor(g)).sum() + (ew * ember.tensor(gw)).sum()).backward()
    ((to * torch.tensor(g)).sum() + (tw * torch.tensor(gw)).sum()).backward()
    for a, b in leaves:
        np.testing.assert_allclose(a.grad.data, b.grad.numpy(), rtol=1e-4, atol=1e-5)
    for (name, p), (_, tp) in zip(e.named_parameters(), t.named_parameters()):
        np.testing.assert_allclose(p.grad.data, tp.grad.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)


@needs_torch
def test_mha_fully_masked_row_and_causal():
    rng = np.random.default_rng(2)
    t = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    e = MultiheadAttention(8, 2, batch_first=True)
    _load(e, t)
    x = rng.standard_normal((2, 4, 8)).astype(np.float32)
    kpm = np.zeros((2, 4), bool)
    kpm[1] = True  # every key of sample 1 is padding
    ex = ember.tensor(x, requires_grad=True)
    eo, ew = e(ex, ex, ex, key_padding_mask=ember.tensor(kpm))
    assert np.isfinite(eo.data).all() and not ew.data[1].any()
    with torch.no_grad():
        to, _ = t(*[torch.tensor(x)] * 3, key_padding_mask=torch.tensor(kpm), need_weights=False)
    np.testing.assert_allclose(eo.data, to.numpy(), atol=1e-6)  # torch's SDPA path: zeros for sample 1's attention
    eo.sum().backward()
    assert np.isfinite(ex.grad.data).all()
    # is_causal without a mask applies the causal mask
    causal = np.triu(np.ones((4, 4), bool), 1)
    eo, ew = e(ex, ex, ex, is_causal=True)
    to, tw = t(*[torch.tensor(x)] * 3, attn_mask=torch.tensor(causal), is_causal=True)
    np.testing.assert_allclose(eo.data, to.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(ew.data, tw.detach().numpy(), atol=1e-6)
    eo, _ = e(ex, ex, ex, is_causal=True, key_padding_mask=ember.tensor(kpm * False))
    np.testing.assert_allclose(eo.data, to.detach().numpy(), atol=1e-5)


def test_mha_functional_gradcheck():
    m = MultiheadAttention(4, 2, kdim=3, vdim=2).double()
    q = ember.randn(3, 2, 4, dtype=ember.float64, requires_grad=True)
    k = ember.randn(5, 2, 3, dtype=ember.float64, requires_grad=True)
    v = ember.randn(5, 2, 2, dtype=ember.float64, requires_grad=True)
    kpm = ember.tensor([[False, True, False, False, True], [False] * 5])
    assert ember.autograd.gradcheck(lambda q, k, v: m(q, k, v, key_padding_mask=kpm), [q, k, v])


def test_mha_init_repr_dropout_errors():
    ember.manual_seed(0)
    m = MultiheadAttention(64, 4)
    bound = math.sqrt(6 / (64 + 192))
    w = m.in_proj_weight.data
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
    assert not m.in_proj_bias.data.any() and not m.out_proj.bias.data.any()
    assert np.abs(m.out_proj.weight.data).max() <= 1 / 8
    assert repr(MultiheadAttention(8, 2)) == ("MultiheadAttention(\n  (out_proj): NonDynamicallyQuantizableLinear("
                                              "in_features=8, out_features=8, bias=True)\n)")
    assert [n for n, _ in MultiheadAttention(8, 2, kdim=4, vdim=6).named_parameters()] == \
        ["q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]
    d = MultiheadAttention(8, 2, dropout=0.5)
    x = ember.randn(3, 2, 8)
    d.eval()
    np.testing.assert_array_equal(d(x, x, x)[0].data, d(x, x, x)[0].data)
    d.train()
    assert not np.allclose(d(x, x, x)[0].data, d(x, x, x)[0].data)
    with pytest.raises(ValueError, match="divisible"):
        MultiheadAttention(10, 3)
    with pytest.raises(ShapeError, match=r"MultiheadAttention: expected query with 8 features.*\(3, 2, 5\)"):
        m8 = MultiheadAttention(8, 2)
        m8(ember.randn(3, 2, 5), x, x)
    with pytest.raises(ShapeError, match=r"expected key_padding_mask of shape \(2, 3\)"):
        m8(x, x, x, key_padding_mask=ember.zeros(3, 2).bool())
    with pytest.raises(ShapeError, match=r"expected attn_mask of shape \(3, 3\) or \(4, 3, 3\)"):
        m8(x, x, x, attn_mask=ember.zeros(2, 3).bool())
    with pytest.raises(ShapeError, match="all be 3-D"):
        m8(x, ember.randn(3, 8), x)
    with pytest.raises(NotImplementedError, match="add_bias_kv"):
        MultiheadAttention(8, 2, add_bias_kv=True)


# ----------------------------------------------------------------------------- TransformerEncoder(Layer)


@needs_torch
@pytest.mark.parametrize("cfg", [{}, {"activation": "gelu", "norm_first": True, "batch_first": True},
                                 {"bias": False, "batch_first": True}])
def test_encoder_layer_matches_torch(cfg):
    t = torch.nn.TransformerEncoderLayer(8, 2, 16, **cfg)
    e = TransformerEncoderLayer(8, 2, 16, **cfg)
    _load(e, t)
    assert repr(e) == repr(t)
    t.eval()
    e.eval()
    rng = np.random.default_rng(3)
    bf = cfg.get("batch_first", False)
    x = rng.standard_normal((2, 5, 8) if bf else (5, 2, 8)).astype(np.float32)
    kpm = np.zeros((2, 5), bool)
    kpm[0, 3:] = True
    causal = np.triu(np.ones((5, 5), bool), 1)
    ex, tx = ember.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    eo = e(ex, src_mask=ember.tensor(causal), src_key_padding_mask=ember.tensor(kpm))
    to = t(tx, src_mask=torch.tensor(causal), src_key_padding_mask=torch.tensor(kpm))
    np.testing.assert_allclose(eo.data, to.detach().numpy(), rtol=1e-4, atol=1e-5)
    g = rng.standard_normal(eo.shape).astype(np.float32)
    eo.backward(ember.tensor(g))
    to.backward(torch.tensor(g))
    np.testing.assert_allclose(ex.grad.data, tx.grad.numpy(), rtol=1e-4, atol=1e-5)
    for (name, p), (_, tp) in zip(e.named_parameters(), t.named_parameters()):
        np.testing.assert_allclose(p.grad.data, tp.grad.numpy(), rtol=1e-3, atol=1e-5, err_msg=name)


@needs_torch
def test_encoder_stack_matches_torch():
    t = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0), 2,
                                    norm=torch.nn.LayerNorm(8), enable_nested_tensor=False)
    from ember.nn.norm import LayerNorm
    e = TransformerEncoder(TransformerEncoderLayer(8, 2, 16, dropout=0.0), 2, norm=LayerNorm(8))
    _load(e, t)
    # the copies are independent
    assert not np.shares_memory(e.layers[0].linear1.weight.data, e.layers[1].linear1.weight.data)
    x = np.random.default_rng(4).standard_normal((5, 2, 8)).astype(np.float32)
    ex, tx = ember.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    eo, to = e(ex, is_causal=True), t(tx, mask=torch.nn.Transformer.generate_square_subsequent_mask(5), is_causal=True)
    np.testing.assert_allclose(eo.data, to.detach().numpy(), rtol=1e-4, atol=1e-5)
    eo.sum().backward()
    to.sum().backward()
    np.testing.assert_allclose(ex.grad.data, tx.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_encoder_layer_errors_and_dropout():
    layer = TransformerEncoderLayer(8, 2, 16, dropout=0.5)
    with pytest.raises(ShapeError, match=r"TransformerEncoderLayer: expected src of shape \(S, N, 8\)"):
        layer(ember.randn(5, 2, 7))
    with pytest.raises(ValueError, match="activation"):
        TransformerEncoderLayer(8, 2, activation="swish")
    x = ember.randn(5, 2, 8)
    assert not np.allclose(layer(x).data, layer(x).data)
    layer.eval()
    np.testing.assert_array_equal(layer(x).data, layer(x).data)


# ----------------------------------------------------------------------------- GPT


if torch is not None:
    class _TorchBlock(torch.nn.Module):
        """The reference pre-norm block, written out by hand, with GPTBlock's parameter names."""

        def __init__(self, d, h, approximate):
            super().__init__()
            self.ln1, self.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
            self.attn = torch.nn.MultiheadAttention(d, h, batch_first=True)
            self.mlp = torch.nn.Sequential(torch.nn.Linear(d, 4 * d), torch.nn.GELU(approximate),
                                           torch.nn.Linear(4 * d, d))
            self.h = h

        def forward(self, x):
            b, t, d = x.shape
            a = self.ln1(x)
            qkv = a @ self.attn.in_proj_weight.T + self.attn.in_proj_bias
            q, k, v = (z.reshape(b, t, self.h, d // self.h).transpose(1, 2) for z in qkv.split(d, -1))
            s = q @ k.transpose(-1, -2) / math.sqrt(d // self.h)
            s = s.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf"))
            y = (s.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
            x = x + self.attn.out_proj(y)
            return x + self.mlp(self.ln2(x))


@needs_torch
@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gpt_block_matches_hand_written_torch(approximate):
    t = _TorchBlock(16, 4, approximate)
    e = GPTBlock(16, 4, gelu_approximate=approximate)
    e.load_state_dict({k: v.detach().numpy() for k, v in t.state_dict().items()})
    x = np.random.default_rng(5).standard_normal((2, 6, 16)).astype(np.float32)
    ex, tx = ember.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    eo, to = e(ex), t(tx)
    np.testing.assert_allclose(eo.data, to.detach().numpy(), rtol=1e-4, atol=1e-5)
    (eo * eo).sum().backward()
    (to * to).sum().backward()
    np.testing.assert_allclose(ex.grad.data, tx.grad.numpy(), rtol=1e-4, atol=1e-4)
    tparams = dict(t.named_parameters())
    for name, p in e.named_parameters():
        np.testing.assert_allclose(p.grad.data, tparams[name].grad.numpy(), rtol=1e-3, atol=1e-4, err_msg=name)


def test_gpt_causal_and_untrained_loss():
    ember.manual_seed(0)
    m = GPT(vocab_size=64, block_size=8, d_model=32, n_layer=2, n_head=4)
    idx = ember.randint(0, 64, (3, 8))
    # random targets (the input tokens themselves would be favored by the tied head)
    logits, loss = m(idx, ember.randint(0, 64, (3, 8)))
    assert logits.shape == (3, 8, 64)
    assert abs(loss.item() - math.log(64)) < 0.1
    changed = idx.data.copy()
    changed[:, 5] = (changed[:, 5] + 1) % 64
    logits2, _ = m(ember.tensor(changed))
    np.testing.assert_allclose(logits2.data[:, :5], logits.data[:, :5], rtol=1e-5, atol=1e-6)
    assert not np.allclose(logits2.data[:, 5:], logits.data[:, 5:])
    assert m.lm_head.weight is m.tok_emb.weight
    assert GPT(64, 8, 32, 1, 4, tie_weights=False).lm_head.weight is not None


def test_gpt_learns_a_repeated_sequence():
    ember.manual_seed(0)
    m = GPT(vocab_size=16, block_size=8, d_model=32, n_layer=2, n_head=2)
    seq = np.tile(np.arange(4), 3)
    idx, tgt = ember.tensor(np.stack([seq[:8], seq[1:9]])), ember.tensor(np.stack([seq[1:9], seq[2:10]]))
    losses = []
    for _ in range(40):
        _, loss = m(idx, tgt)
        losses.append(loss.item())
        for p in m.parameters():
            p.grad = None
        loss.backward()
        with ember.no_grad():
            for p in m.parameters():
                p.sub_(p.grad * 0.1)
    assert losses[-1] < 0.1 * losses[0], losses
    # greedy generation continues the pattern
    out = m.generate(ember.tensor([[0, 1, 2, 3]]), 6, temperature=0)
    assert out.tolist() == [[0, 1, 2, 3, 0, 1, 2, 3, 0, 1]]


def test_gpt_generate_and_errors():
    ember.manual_seed(0)
    m = GPT(vocab_size=20, block_size=4, d_model=16, n_layer=1, n_head=2)
    start = ember.tensor([[1, 2], [3, 4]])
    a = m.generate(start, 7, top_k=3, generator=ember.Generator().manual_seed(1))
    b = m.generate(start, 7, top_k=3, generator=ember.Generator().manual_seed(1))
    assert a.shape == (2, 9) and a.tolist() == b.tolist()  # the context is cropped to block_size
    assert a.tolist()[0][:2] == [1, 2] and 0 <= a.data.min() and a.data.max() < 20
    # top_k=1 is greedy
    np.testing.assert_array_equal(m.generate(start, 3, top_k=1).data, m.generate(start, 3, temperature=0).data)
    with pytest.raises(ShapeError, match="sequence length 5 exceeds block_size 4"):
        m(ember.zeros(1, 5, dtype=ember.int64))
    with pytest.raises(DTypeError, match="integer token ids"):
        m(ember.zeros(1, 3))
    with pytest.raises(ShapeError, match="targets"):
        m(ember.zeros(1, 3, dtype=ember.int64), ember.zeros(1, 2, dtype=ember.int64))
