"""Transformer blocks: PyTorch's ``TransformerEncoderLayer``/``TransformerEncoder``, and a decoder-only
GPT (``GPTBlock``, ``GPT``) with causal self-attention, learned positions and a tied LM head."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

from ..autograd import no_grad
from ..device import array_module
from ..errors import DTypeError, ShapeError
from ..ops import movement as _mov
from ..ops import pointwise as _pw
from ..ops.composite import softmax
from ..ops.creation import arange
from ..ops.random import Generator, rand
from ..ops.reduce import cumsum
from ..ops.reduce import sum as _sum
from ..tensor import Tensor, _make
from . import init
from .activation import GELU
from .attention import MultiheadAttention
from .containers import ModuleList, Sequential
from .dropout import Dropout
from .embedding import Embedding
from .functional.activation import gelu, relu
from .functional.loss import cross_entropy
from .linear import Linear
from .module import Module
from .norm import LayerNorm
from .parameter import Parameter

__all__ = ["GPT", "GPTBlock", "TransformerEncoder", "TransformerEncoderLayer"]


def _activation(name: str, activation: Any) -> Callable[[Tensor], Tensor]:
    if activation == "relu":
        return relu
    if activation == "gelu":
        return gelu
    if callable(activation):
        return activation
    raise ValueError(f"{name}: activation must be 'relu', 'gelu' or a callable, got {activation!r}")


class TransformerEncoderLayer(Module):
    """Self-attention and a feed-forward block, each with a residual connection and LayerNorm
    (post-norm by default, pre-norm with ``norm_first``), with PyTorch's submodule names.

    ``forward(src, src_mask=None, src_key_padding_mask=None, is_causal=False)``: ``src`` (S, N, d_model)
    ((N, S, d_model) with ``batch_first``); masks as in ``MultiheadAttention`` (True = masked out).
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: Any = "relu", layer_norm_eps: float = 1e-5, batch_first: bool = False,
                 norm_first: bool = False, bias: bool = True, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first, **kw)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, **kw)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, **kw)
        self.norm_first = bool(norm_first)
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **kw)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **kw)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.activation = _activation("TransformerEncoderLayer", activation)
        self.batch_first = bool(batch_first)

    def _sa_block(self, x: Tensor, attn_mask: Tensor | None, key_padding_mask: Tensor | None,
                  is_causal: bool) -> Tensor:
        x = self.self_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask, need_weights=False,
                           is_causal=is_causal)[0]
        return self.dropout1(x)

    def _ff_block(self, x: Tensor) -> Tensor:
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def forward(self, src: Tensor, src_mask: Tensor | None = None, src_key_padding_mask: Tensor | None = None,
                is_causal: bool = False) -> Tensor:
        if not isinstance(src, Tensor):
            raise TypeError(f"TransformerEncoderLayer: src must be a Tensor, got {type(src).__name__}")
        d = self.linear1.in_features
        if src.ndim not in (2, 3) or src.shape[-1] != d:
            raise ShapeError(f"TransformerEncoderLayer: expected src of shape (S, N, {d}), (N, S, {d}) with "
                             f"batch_first, or (S, {d}), got {src.shape}")
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            return x + self._ff_block(self.norm2(x))
        x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal))
        return self.norm2(x + self._ff_block(x))


def _clone(module: Module) -> Module:
    """A deep copy of ``module`` with fresh copies of its parameters and buffers (shared ones stay shared)."""
    memo: dict[int, Any] = {}
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) in memo:
            continue
        data = _make(t.data.copy(), t.dtype, t.device)
        memo[id(t)] = Parameter(data, t.requires_grad) if isinstance(t, Parameter) else data
    # parameters are given by the memo, so deepcopy never reduces a tensor (and never follows its _base)
    return copy.deepcopy(module, memo)


class TransformerEncoder(Module):
    """``num_layers`` deep copies of ``encoder_layer`` (in ``layers``), then an optional final ``norm``."""

    def __init__(self, encoder_layer: TransformerEncoderLayer, num_layers: int, norm: Module | None = None,
                 enable_nested_tensor: bool = True, mask_check: bool = True) -> None:
        super().__init__()
        if not isinstance(encoder_layer, Module):
            raise TypeError(f"TransformerEncoder: encoder_layer must be a Module, got {type(encoder_layer).__name__}")
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"TransformerEncoder: num_layers must be a positive int, got {num_layers!r}")
        self.layers = ModuleList([_clone(encoder_layer) for _ in range(num_layers)])
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, src: Tensor, mask: Tensor | None = None, src_key_padding_mask: Tensor | None = None,
                is_causal: bool | None = None) -> Tensor:
        x = src
        for layer in self.layers:
            x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=bool(is_causal))
        return x if self.norm is None else self.norm(x)


# ----------------------------------------------------------------------------- GPT


class GPTBlock(Module):
    """A pre-norm decoder block: ``x + attn(ln1(x))`` with a causal mask, then ``x + mlp(ln2(x))`` (GELU).

    ``forward(x)`` with ``x`` (B, T, d_model). ``attn`` is a batch-first ``MultiheadAttention``;
    ``mlp`` is ``Sequential(Linear(d, mlp_ratio * d), GELU(gelu_approximate), Linear(mlp_ratio * d, d), Dropout)``
    (GPT-2's tanh approximation by default; ``'none'`` for the exact erf form); ``drop`` is the residual
    dropout after attention.
    """

    def __init__(self, d_model: int, n_head: int, dropout: float = 0.0, mlp_ratio: int = 4, bias: bool = True,
                 gelu_approximate: str = "tanh") -> None:
        super().__init__()
        self.ln1 = LayerNorm(d_model, bias=bias)
        self.attn = MultiheadAttention(d_model, n_head, dropout=dropout, bias=bias, batch_first=True)
        self.drop = Dropout(dropout)
        self.ln2 = LayerNorm(d_model, bias=bias)
        hidden = mlp_ratio * d_model
        self.mlp = Sequential(Linear(d_model, hidden, bias=bias), GELU(gelu_approximate),
                              Linear(hidden, d_model, bias=bias), Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim != 3 or x.shape[-1] != self.attn.embed_dim:
            raise ShapeError(f"GPTBlock: expected x of shape (batch, seq, {self.attn.embed_dim}), got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        h = self.ln1(x)
        x = x + self.drop(self.attn(h, h, h, need_weights=False, is_causal=True)[0])
        return x + self.mlp(self.ln2(x))


class GPT(Module):
    """A decoder-only language model: token + learned position embeddings, ``n_layer`` ``GPTBlock``s, a final
    LayerNorm and a linear head over the vocabulary (sharing the token embedding's weight with ``tie_weights``).

    Initialized as GPT-2: N(0, 0.02) weights and embeddings, zero biases, and the residual output
    projections scaled by ``1 / sqrt(2 * n_layer)``. ``forward(idx, targets=None) -> (logits, loss or None)``.
    """

    def __init__(self, vocab_size: int, block_size: int, d_model: int, n_layer: int, n_head: int,
                 dropout: float = 0.0, tie_weights: bool = True, mlp_ratio: int = 4, bias: bool = True,
                 gelu_approximate: str = "tanh") -> None:
        super().__init__()
        for what, v in (("vocab_size", vocab_size), ("block_size", block_size), ("d_model", d_model),
                        ("n_layer", n_layer), ("n_head", n_head)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"GPT: {what} must be a positive int, got {v!r}")
        self.vocab_size, self.block_size, self.tie_weights = vocab_size, block_size, bool(tie_weights)
        self.tok_emb = Embedding(vocab_size, d_model)
        self.pos_emb = Embedding(block_size, d_model)
        self.drop = Dropout(dropout)
        self.blocks = ModuleList([GPTBlock(d_model, n_head, dropout, mlp_ratio, bias, gelu_approximate)
                                  for _ in range(n_layer)])
        self.ln_f = LayerNorm(d_model, bias=bias)
        self.lm_head = Linear(d_model, vocab_size, bias=False)
        self._init_weights(n_layer)
        if tie_weights:
            self.lm_head.weight = self.tok_emb.weight

    def _init_weights(self, n_layer: int) -> None:
        for m in self.modules():
            if isinstance(m, (Linear, Embedding)):
                init.normal_(m.weight, 0.0, 0.02)
                if getattr(m, "bias", None) is not None:
                    init.zeros_(m.bias)
            elif isinstance(m, MultiheadAttention):
                init.normal_(m.in_proj_weight, 0.0, 0.02)
        residual_std = 0.02 / math.sqrt(2 * n_layer)
        for block in self.blocks:
            init.normal_(block.attn.out_proj.weight, 0.0, residual_std)
            init.normal_(block.mlp[2].weight, 0.0, residual_std)

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        if not isinstance(idx, Tensor) or idx.ndim != 2:
            raise ShapeError(f"GPT: expected idx of shape (batch, seq), got "
                             f"{getattr(idx, 'shape', type(idx).__name__)}")
        if not idx.dtype.is_integer:
            raise DTypeError(f"GPT: idx must hold integer token ids, got {idx.dtype.name}")
        t = idx.shape[1]
        if t > self.block_size:
            raise ShapeError(f"GPT: sequence length {t} exceeds block_size {self.block_size} (idx shape {idx.shape})")
        x = self.drop(self.tok_emb(idx) + self.pos_emb(arange(t, device=idx.device)))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        if targets is None:
            return logits, None
        if not isinstance(targets, Tensor) or targets.shape != idx.shape:
            raise ShapeError(f"GPT: targets must have idx's shape {idx.shape}, got "
                             f"{getattr(targets, 'shape', type(targets).__name__)}")
        loss = cross_entropy(_mov.reshape(logits, (-1, self.vocab_size)), _mov.reshape(targets, (-1,)))
        return logits, loss

    @no_grad()
    def generate(self, idx: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: Generator | None = None) -> Tensor:
        """Append ``max_new_tokens`` sampled tokens to ``idx`` (B, T), feeding back at most ``block_size``
        tokens of context. ``temperature`` 0 picks the most likely token; ``top_k`` samples among the k
        most likely. Runs without recording gradients, in whatever mode (train/eval) the model is in."""
        if not isinstance(idx, Tensor) or idx.ndim != 2:
            raise ShapeError(f"GPT.generate: expected idx of shape (batch, seq), got "
                             f"{getattr(idx, 'shape', type(idx).__name__)}")
        if temperature < 0:
            raise ValueError(f"GPT.generate: temperature must be non-negative, got {temperature}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"GPT.generate: top_k must be a positive int or None, got {top_k!r}")
        for _ in range(max_new_tokens):
            context = idx if idx.shape[1] <= self.block_size else idx[:, -self.block_size:]
            logits = self(context)[0][:, -1, :]
            if temperature == 0:
                nxt = _mov.unsqueeze(logits.argmax(-1), 1)
            else:
                logits = logits / temperature
                if top_k is not None and top_k < logits.shape[-1]:
                    xp = array_module(logits.device)
                    part = xp.partition(logits.data, logits.shape[-1] - top_k, axis=-1)
                    kth = part[:, -top_k:].min(-1, keepdims=True)
                    logits = _pw.where(logits < _make(kth, logits.dtype, logits.device), float("-inf"), logits)
                cdf = cumsum(softmax(logits, -1), -1)
                # u < cdf[-1], so the count of cdf entries <= u is a token of positive probability
                u = rand(cdf.shape[0], 1, dtype=cdf.dtype, device=cdf.device, generator=generator) * cdf[:, -1:]
                nxt = _pw.clamp(_sum(cdf <= u, -1, keepdim=True), max=self.vocab_size - 1)
            idx = _mov.cat([idx, nxt.to(idx.dtype)], 1)
        return idx
