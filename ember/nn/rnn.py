"""Recurrent layers: ``RNN``, ``LSTM``, ``GRU`` and their single-step cells, with PyTorch's parameters.

Parameters are named and shaped as in PyTorch (``weight_ih_l{k}`` ``(gates * hidden, input)``,
``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``, ``..._reverse`` for the backward direction),
with the gate order i, f, g, o (LSTM) and r, z, n (GRU, where r multiplies ``W_hn h + b_hn``), and
all initialized from U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)).

Each layer and direction computes the input projection of every time step with one GEMM, then
loops over time with one GEMM of the hidden state per step. The per-step slices of the projection
(and of the gates) come from ``unbind_grouped``/``split_grouped``, whose backward assembles one
gradient with one concatenation: with plain slices every step would scatter into a full-size zero
array, O(T^2) in the sequence length.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import DTypeError, ShapeError
from ..ops import movement as _mov
from ..ops import pointwise as _pw
from ..ops.creation import empty, zeros
from ..ops.nn_ops import linear2d
from ..ops.sparse_ops import split_grouped, unbind_grouped
from ..tensor import Tensor
from . import init
from .functional.linear import dropout as _dropout
from .functional.linear import linear
from .module import Module
from .parameter import Parameter

__all__ = ["GRU", "LSTM", "RNN", "GRUCell", "LSTMCell", "RNNBase", "RNNCell", "RNNCellBase"]

_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


# ----------------------------------------------------------------------------- one step


def _cell(mode: str, gi: Tensor, gh: Tensor, h: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """One time step from the gate pre-activations ``gi`` (input side) and ``gh`` (hidden side, with
    ``b_hh``; for LSTM and plain RNNs the biases may be in either, only the GRU's n gate tells them apart)."""
    hidden = h.shape[-1]
    if mode == "GRU":
        i_rz, i_n = split_grouped(gi, [2 * hidden, hidden], 1)
        h_rz, h_n = split_grouped(gh, [2 * hidden, hidden], 1)
        r, z = split_grouped(_pw.sigmoid(i_rz + h_rz), hidden, 1)
        n = _pw.tanh(i_n + r * h_n)
        return n + z * (h - n), None
    a = gi + gh
    if mode == "LSTM":
        i, f, g, o = split_grouped(a, hidden, 1)
        c = _pw.sigmoid(f) * c + _pw.sigmoid(i) * _pw.tanh(g)
        return _pw.sigmoid(o) * _pw.tanh(c), c
    return (_pw.tanh(a) if mode == "RNN_TANH" else _pw.relu(a)), None


def _direction(mode: str, x: Tensor, h: Tensor, c: Tensor | None, w_ih: Tensor, w_hh: Tensor,
               b_ih: Tensor | None, b_hh: Tensor | None, reverse: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """Run one layer in one direction over ``x`` (T, B, I): the outputs (T, B, H) and the final state."""
    steps, batch = x.shape[0], x.shape[1]
    bias = b_ih
    if b_hh is not None and mode != "GRU":  # both biases go into the input projection
        bias = b_hh if b_ih is None else b_ih + b_hh
    proj = linear2d(_mov.reshape(x, (steps * batch, x.shape[2])), w_ih, *(() if bias is None else (bias,)))
    per_step = unbind_grouped(_mov.reshape(proj, (steps, batch, proj.shape[1])), 0)
    hh_bias = () if b_hh is None or mode != "GRU" else (b_hh,)
    outs: list[Tensor | None] = [None] * steps
    for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
        h, c = _cell(mode, per_step[t], linear2d(h, w_hh, *hh_bias), h, c)
        outs[t] = h
    return _mov.stack(outs, 0), h, c


# ----------------------------------------------------------------------------- multi-layer modules


class RNNBase(Module):
    """The shared machinery of ``RNN``, ``LSTM`` and ``GRU`` (``mode`` is 'RNN_TANH', 'RNN_RELU', 'LSTM' or 'GRU')."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        name = self._layer_name(mode)
        if mode not in _GATES:
            raise ValueError(f"{name}: unknown mode {mode!r}; expected one of {tuple(_GATES)}")
        for what, v, low in (("input_size", input_size, 0), ("hidden_size", hidden_size, 1),
                             ("num_layers", num_layers, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name}: {what} must be an int >= {low}, got {v!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:
            raise ValueError(f"{name}: dropout must be a number in [0, 1], got {dropout!r}")
        if proj_size:
            raise NotImplementedError(f"{name}: proj_size is not supported (got proj_size={proj_size})")
        self.mode, self.input_size, self.hidden_size, self.num_layers = mode, input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bool(bias), bool(batch_first), float(dropout)
        self.bidirectional, self.proj_size = bool(bidirectional), 0
        gates = _GATES[mode] * hidden_size
        dirs = 2 if bidirectional else 1
        self._flat_weights_names: list[str] = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size * dirs
            for d in range(dirs):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                shapes = [(f"weight_ih{sfx}", (gates, layer_input)), (f"weight_hh{sfx}", (gates, hidden_size))]
                if bias:
                    shapes += [(f"bias_ih{sfx}", (gates,)), (f"bias_hh{sfx}", (gates,))]
                for pname, shape in shapes:
                    setattr(self, pname, Parameter(empty(*shape, dtype=dtype, device=device)))
                    self._flat_weights_names.append(pname)
        self.reset_parameters()

    @staticmethod
    def _layer_name(mode: str) -> str:
        return {"RNN_TANH": "RNN", "RNN_RELU": "RNN"}.get(mode, mode)

    def reset_parameters(self) -> None:
        """Every weight and bias from U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)), as in PyTorch."""
        k = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            init.uniform_(p, -k, k)

    @property
    def all_weights(self) -> list[list[Parameter]]:
        per = 4 if self.bias else 2
        names = self._flat_weights_names
        return [[getattr(self, n) for n in names[i:i + per]] for i in range(0, len(names), per)]

    def _weights(self, layer: int, d: int) -> tuple:
        sfx = f"_l{layer}" + ("_reverse" if d else "")
        if self.bias:
            return (getattr(self, f"weight_ih{sfx}"), getattr(self, f"weight_hh{sfx}"),
                    getattr(self, f"bias_ih{sfx}"), getattr(self, f"bias_hh{sfx}"))
        return getattr(self, f"weight_ih{sfx}"), getattr(self, f"weight_hh{sfx}"), None, None

    def _check_input(self, input: Any) -> bool:
        name = self._layer_name(self.mode)
        if not isinstance(input, Tensor):
            raise TypeError(f"{name}: input must be a Tensor, got {type(input).__name__}")
        if input.ndim not in (2, 3):
            layout = "(batch, seq, input_size)" if self.batch_first else "(seq, batch, input_size)"
            raise ShapeError(f"{name}: expected a 3-D input {layout} or a 2-D unbatched one (seq, input_size), "
                             f"got shape {input.shape}")
        if input.shape[-1] != self.input_size:
            raise ShapeError(f"{name}: input.size(-1) must equal input_size={self.input_size}, got input of shape "
                             f"{input.shape}")
        if not input.dtype.is_floating_point:
            raise DTypeError(f"{name}: expected a floating input, got {input.dtype.name}")
        return input.ndim == 3

    def _check_state(self, what: str, hx: Any, shape: tuple, batched: bool) -> Tensor:
        name = self._layer_name(self.mode)
        if not isinstance(hx, Tensor):
            raise TypeError(f"{name}: {what} must be a Tensor, got {type(hx).__name__}")
        want = shape if batched else (shape[0], shape[2])
        if tuple(hx.shape) != want:
            kind = "batched 3-D" if batched else "unbatched 2-D"
            raise ShapeError(f"{name}: expected {what} of shape {want} for {kind} input, got {hx.shape}")
        return hx if batched else _mov.unsqueeze(hx, 1)

    def forward(self, input: Tensor, hx: Any = None) -> tuple[Tensor, Any]:
        batched = self._check_input(input)
        name = self._layer_name(self.mode)
        x = input
        if not batched:
            x = _mov.unsqueeze(x, 1)
        elif self.batch_first:
            x = _mov.transpose(x, 0, 1)
        x = x.contiguous()
        dirs = 2 if self.bidirectional else 1
        batch = x.shape[1]
        state_shape = (self.num_layers * dirs, batch, self.hidden_size)
        lstm = self.mode == "LSTM"
        if hx is None:
            h0 = zeros(state_shape, dtype=x.dtype, device=x.device)
            c0 = h0 if lstm else None
        elif lstm:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"{name}: hx must be a tuple (h_0, c_0), got {type(hx).__name__}")
            h0 = self._check_state("h_0", hx[0], state_shape, batched)
            c0 = self._check_state("c_0", hx[1], state_shape, batched)
        else:
            h0, c0 = self._check_state("hx", hx, state_shape, batched), None
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            if layer and self.dropout and self.training:
                x = _dropout(x, self.dropout, True)
            outs = []
            for d in range(dirs):
                k = layer * dirs + d
                w_ih, w_hh, b_ih, b_hh = self._weights(layer, d)
                out, h, c = _direction(self.mode, x, h0[k], c0[k] if lstm else None, w_ih, w_hh, b_ih, b_hh, d == 1)
                outs.append(out)
                h_n.append(h)
                c_n.append(c)
            x = outs[0] if dirs == 1 else _mov.cat(outs, 2)
        out = x
        hn = _mov.stack(h_n, 0)
        cn = _mov.stack(c_n, 0) if lstm else None
        if not batched:
            out = _mov.squeeze(out, 1)
            hn = _mov.squeeze(hn, 1)
            cn = _mov.squeeze(cn, 1) if lstm else None
        elif self.batch_first:
            out = _mov.transpose(out, 0, 1)
        return (out, (hn, cn)) if lstm else (out, hn)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout != 0:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s


class RNN(RNNBase):
    """Elman RNN: ``h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)`` (or ReLU), stacked ``num_layers`` deep.

    ``forward(input, hx=None) -> (output, h_n)``: ``input`` (T, B, input_size) (``(B, T, ...)`` with
    ``batch_first``) or unbatched (T, input_size); ``hx``/``h_n`` (num_layers * directions, B, hidden_size).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device: Any = None, dtype: Any = None) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size, hidden_size, num_layers,
                         bias, batch_first, dropout, bidirectional, device=device, dtype=dtype)


class LSTM(RNNBase):
    """Long short-term memory (gates i, f, g, o). ``forward(input, (h_0, c_0)=None) -> (output, (h_n, c_n))``."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device=device, dtype=dtype)


class GRU(RNNBase):
    """Gated recurrent unit (gates r, z, n). ``forward(input, hx=None) -> (output, h_n)``."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device=device, dtype=dtype)


# ----------------------------------------------------------------------------- cells


class RNNCellBase(Module):
    """The shared machinery of the single-step cells."""

    _mode = "RNN_TANH"
    _name = "RNNCell"

    def __init__(self, input_size: int, hidden_size: int, bias: bool, gates: int, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        for what, v, low in (("input_size", input_size, 0), ("hidden_size", hidden_size, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{self._name}: {what} must be an int >= {low}, got {v!r}")
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bool(bias)
        self.weight_ih = Parameter(empty(gates * hidden_size, input_size, dtype=dtype, device=device))
        self.weight_hh = Parameter(empty(gates * hidden_size, hidden_size, dtype=dtype, device=device))
        if bias:
            self.bias_ih = Parameter(empty(gates * hidden_size, dtype=dtype, device=device))
            self.bias_hh = Parameter(empty(gates * hidden_size, dtype=dtype, device=device))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every weight and bias from U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)), as in PyTorch."""
        k = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            init.uniform_(p, -k, k)

    def _prepare(self, input: Any, states: list[Any]) -> tuple[Tensor, list[Tensor], bool]:
        name = self._name
        if not isinstance(input, Tensor):
            raise TypeError(f"{name}: input must be a Tensor, got {type(input).__name__}")
        if input.ndim not in (1, 2) or input.shape[-1] != self.input_size:
            raise ShapeError(f"{name}: expected input of shape (batch, {self.input_size}) or ({self.input_size},), "
                             f"got {input.shape}")
        if not input.dtype.is_floating_point:
            raise DTypeError(f"{name}: expected a floating input, got {input.dtype.name}")
        batched = input.ndim == 2
        x = input if batched else _mov.unsqueeze(input, 0)
        want = (x.shape[0], self.hidden_size)
        out = []
        for i, s in enumerate(states):
            if s is None:
                out.append(zeros(want, dtype=x.dtype, device=x.device))
                continue
            if not isinstance(s, Tensor):
                raise TypeError(f"{name}: hidden state must be a Tensor, got {type(s).__name__}")
            expect = want if batched else (self.hidden_size,)
            if tuple(s.shape) != expect:
                what = "hx" if len(states) == 1 else ("h_0", "c_0")[i]
                raise ShapeError(f"{name}: expected {what} of shape {expect} for input of shape {input.shape}, "
                                 f"got {s.shape}")
            out.append(s if batched else _mov.unsqueeze(s, 0))
        return x, out, batched

    def _step(self, x: Tensor, h: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor | None]:
        gi = linear(x, self.weight_ih, self.bias_ih)
        gh = linear(h, self.weight_hh, self.bias_hh)
        return _cell(self._mode, gi, gh, h, c)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            s += f", nonlinearity={self.nonlinearity}"
        return s


class RNNCell(RNNCellBase):
    """One Elman RNN step: ``h' = tanh(x W_ih^T + b_ih + h W_hh^T + b_hh)`` (or ReLU).

    ``forward(input, hx=None) -> h'``: ``input`` (B, input_size) or (input_size,).
    """

    _name = "RNNCell"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device: Any = None, dtype: Any = None) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNNCell: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        self._mode = "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU"
        super().__init__(input_size, hidden_size, bias, 1, device=device, dtype=dtype)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        x, (h,), batched = self._prepare(input, [hx])
        h, _ = self._step(x, h, None)
        return h if batched else _mov.squeeze(h, 0)


class LSTMCell(RNNCellBase):
    """One LSTM step. ``forward(input, (h, c)=None) -> (h', c')``."""

    _mode = "LSTM"
    _name = "LSTMCell"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__(input_size, hidden_size, bias, 4, device=device, dtype=dtype)

    def forward(self, input: Tensor, hx: Any = None) -> tuple[Tensor, Tensor]:
        if hx is not None and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise TypeError(f"LSTMCell: hx must be a tuple (h, c), got {type(hx).__name__}")
        x, (h, c), batched = self._prepare(input, [None, None] if hx is None else list(hx))
        h, c = self._step(x, h, c)
        return (h, c) if batched else (_mov.squeeze(h, 0), _mov.squeeze(c, 0))


class GRUCell(RNNCellBase):
    """One GRU step. ``forward(input, hx=None) -> h'``."""

    _mode = "GRU"
    _name = "GRUCell"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__(input_size, hidden_size, bias, 3, device=device, dtype=dtype)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        x, (h,), batched = self._prepare(input, [hx])
        h, _ = self._step(x, h, None)
        return h if batched else _mov.squeeze(h, 0)

