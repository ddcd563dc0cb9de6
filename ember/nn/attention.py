"""``MultiheadAttention`` with PyTorch's parameters (``in_proj_weight``, ``in_proj_bias``, ``out_proj``),
masks and return values.

Masks follow ``torch.nn.MultiheadAttention``: in ``key_padding_mask`` (N, S) and a bool ``attn_mask``
(L, S) or (N * num_heads, L, S), True means *do not attend*; float masks are added to the scores.
A query whose every key is masked gets a zero output and zero weights (PyTorch returns NaN there
when ``need_weights=True``, zeros otherwise; see ``ember.nn.functional.attention``).
"""

from __future__ import annotations

from typing import Any

from ..errors import DTypeError, ShapeError
from ..ops import movement as _mov
from ..ops import reduce as _red
from ..ops.creation import empty
from ..ops.nn_ops import linear2d
from ..ops.sparse_ops import unbind_grouped
from ..tensor import Tensor
from . import init
from .functional.attention import attention, bool_bias, causal_bias
from .linear import Linear
from .module import Module
from .parameter import Parameter

__all__ = ["MultiheadAttention", "NonDynamicallyQuantizableLinear"]


class NonDynamicallyQuantizableLinear(Linear):
    """A ``Linear`` under the class name PyTorch gives ``MultiheadAttention.out_proj`` (same repr and behavior)."""


def _project(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    lead = x.shape[:-1]
    out = linear2d(_mov.reshape(x, (-1, x.shape[-1])), w, *(() if b is None else (b,)))
    return _mov.reshape(out, lead + (w.shape[0],))


class MultiheadAttention(Module):
    """Multi-head attention (PyTorch's ``nn.MultiheadAttention``).

    ``forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
    average_attn_weights=True, is_causal=False) -> (output, weights or None)``: ``query`` (L, N, E),
    ``key`` (S, N, kdim), ``value`` (S, N, vdim) (batch first with ``batch_first``; unbatched 2-D
    inputs work too). ``weights`` is (N, L, S), or (N, num_heads, L, S) without averaging.
    ``is_causal`` without ``attn_mask`` applies the causal mask (PyTorch requires the mask as well).
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: int | None = None,
                 vdim: int | None = None, batch_first: bool = False, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        for what, v in (("embed_dim", embed_dim), ("num_heads", num_heads)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"MultiheadAttention: {what} must be a positive int, got {v!r}")
        if embed_dim % num_heads:
            raise ValueError(f"MultiheadAttention: embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout <= 1.0:
            raise ValueError(f"MultiheadAttention: dropout must be between 0 and 1, got {dropout!r}")
        if add_bias_kv or add_zero_attn:
            raise NotImplementedError("MultiheadAttention: add_bias_kv and add_zero_attn are not supported")
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, float(dropout)
        self.kdim = embed_dim if kdim is None else kdim
        self.vdim = embed_dim if vdim is None else vdim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.head_dim = embed_dim // num_heads
        self.batch_first = bool(batch_first)
        if self._qkv_same_embed_dim:
            self.in_proj_weight = Parameter(empty(3 * embed_dim, embed_dim, dtype=dtype, device=device))
            for n in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                self.register_parameter(n, None)
        else:
            self.q_proj_weight = Parameter(empty(embed_dim, embed_dim, dtype=dtype, device=device))
            self.k_proj_weight = Parameter(empty(embed_dim, self.kdim, dtype=dtype, device=device))
            self.v_proj_weight = Parameter(empty(embed_dim, self.vdim, dtype=dtype, device=device))
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = Parameter(empty(3 * embed_dim, dtype=dtype, device=device))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = NonDynamicallyQuantizableLinear(embed_dim, embed_dim, bias=bias, device=device, dtype=dtype)
        self.bias_k = self.bias_v = None
        self.add_zero_attn = False
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """PyTorch's init: Xavier-uniform projections, zero biases (``out_proj.weight`` keeps Linear's init)."""
        if self._qkv_same_embed_dim:
            init.xavier_uniform_(self.in_proj_weight)
        else:
            for w in (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
                init.xavier_uniform_(w)
        if self.in_proj_bias is not None:
            init.zeros_(self.in_proj_bias)
            init.zeros_(self.out_proj.bias)

    # ------------------------------------------------------------------ forward
    def _masks(self, key_padding_mask: Any, attn_mask: Any, batch: int, length: int, source: int,
               batched: bool, dtype: Any) -> Tensor | None:
        """One additive float mask broadcastable to (N, H, L, S) (``-inf`` = masked), or None."""
        name = "MultiheadAttention"
        parts = []
        if key_padding_mask is not None:
            want = (batch, source) if batched else (source,)
            if not isinstance(key_padding_mask, Tensor) or tuple(key_padding_mask.shape) != want:
                raise ShapeError(f"{name}: expected key_padding_mask of shape {want} (batch, source length), got "
                                 f"{getattr(key_padding_mask, 'shape', type(key_padding_mask).__name__)}")
            parts.append(_mov.reshape(self._additive(key_padding_mask, dtype), (batch, 1, 1, source)))
        if attn_mask is not None:
            if not isinstance(attn_mask, Tensor):
                raise TypeError(f"{name}: attn_mask must be a Tensor, got {type(attn_mask).__name__}")
            heads = self.num_heads
            if attn_mask.shape == (length, source):
                parts.append(self._additive(attn_mask, dtype))
            elif attn_mask.shape == (batch * heads, length, source):
                parts.append(_mov.reshape(self._additive(attn_mask, dtype), (batch, heads, length, source)))
            else:
                three = (batch * heads, length, source) if batched else (heads, length, source)
                raise ShapeError(f"{name}: expected attn_mask of shape {(length, source)} or {three} "
                                 f"(target length {length}, source length {source}), got {attn_mask.shape}")
        if not parts:
            return None
        out = parts[0]
        for p in parts[1:]:
            out = out + p
        return out

    @staticmethod
    def _additive(mask: Tensor, dtype: Any) -> Tensor:
        if mask.dtype.is_bool:
            return bool_bias(~mask, dtype)  # True = masked out here
        if not mask.dtype.is_floating_point:
            raise DTypeError(f"MultiheadAttention: masks must be bool (True = masked) or floating (added to the "
                             f"scores), got {mask.dtype.name}")
        return mask.to(dtype)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        name = "MultiheadAttention"
        for what, t in (("query", query), ("key", key), ("value", value)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name}: {what} must be a Tensor, got {type(t).__name__}")
        batched = query.ndim == 3
        if query.ndim not in (2, 3) or key.ndim != query.ndim or value.ndim != query.ndim:
            raise ShapeError(f"{name}: query, key and value must all be 3-D (batched) or all 2-D (unbatched), got "
                             f"{query.shape}, {key.shape} and {value.shape}")
        if not query.dtype.is_floating_point:
            raise DTypeError(f"{name}: expected floating inputs, got {query.dtype.name}")
        e, h, dh = self.embed_dim, self.num_heads, self.head_dim
        for what, t, n in (("query", query, e), ("key", key, self.kdim), ("value", value, self.vdim)):
            if t.shape[-1] != n:
                raise ShapeError(f"{name}: expected {what} with {n} features in its last dimension, got {t.shape}")
        # to (N, L, E): batch first
        if not batched:
            q_in, k_in, v_in = (_mov.unsqueeze(t, 0) for t in (query, key, value))
        elif self.batch_first:
            q_in, k_in, v_in = query, key, value
        else:
            q_in, k_in, v_in = (_mov.transpose(t, 0, 1) for t in (query, key, value))
        n, length, source = q_in.shape[0], q_in.shape[1], k_in.shape[1]
        if k_in.shape[:2] != v_in.shape[:2] or k_in.shape[0] != n:
            raise ShapeError(f"{name}: key {key.shape} and value {value.shape} must have the same batch and source "
                             f"length, matching query {query.shape}")
        b = self.in_proj_bias
        if self._qkv_same_embed_dim and query is key and key is value:
            qkv = _project(q_in, self.in_proj_weight, b)  # self-attention: one GEMM for q, k and v
            qkv = _mov.permute(_mov.reshape(qkv, (n, length, 3, h, dh)), (2, 0, 3, 1, 4))
            q, k, v = unbind_grouped(qkv, 0)
        else:
            if self._qkv_same_embed_dim:
                wq, wk, wv = (self.in_proj_weight[i * e:(i + 1) * e] for i in range(3))
            else:
                wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
            bq, bk, bv = (None, None, None) if b is None else (b[0:e], b[e:2 * e], b[2 * e:])
            q = _mov.permute(_mov.reshape(_project(q_in, wq, bq), (n, length, h, dh)), (0, 2, 1, 3))
            k = _mov.permute(_mov.reshape(_project(k_in, wk, bk), (n, source, h, dh)), (0, 2, 1, 3))
            v = _mov.permute(_mov.reshape(_project(v_in, wv, bv), (n, source, h, dh)), (0, 2, 1, 3))
        mask = self._masks(key_padding_mask, attn_mask, n, length, source, batched, q.dtype)
        causal = is_causal and attn_mask is None
        if causal and mask is not None:
            # the causal mask joins the other masks as one additive term
            mask = mask + causal_bias(length, source, q.dtype, q.device)
            causal = False
        p = self.dropout if self.training else 0.0
        out, weights = attention(q, k, v, mask, p, causal, None, None, name)
        out = _mov.reshape(_mov.permute(out, (0, 2, 1, 3)), (n, length, e))
        out = self.out_proj(out)
        if not batched:
            out = _mov.squeeze(out, 0)
        elif not self.batch_first:
            out = _mov.transpose(out, 0, 1)
        if not need_weights:
            return out, None
        if average_attn_weights:
            weights = _red.mean(weights, 1)
        if not batched:
            weights = _mov.squeeze(weights, 0)
        return out, weights

