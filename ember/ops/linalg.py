"""Linear algebra: matmul (BLAS through the backend), convolution and pooling.

``matmul`` is a primitive over operands of rank >= 2 with broadcast batch
dimensions; the 1-D cases of NumPy/PyTorch semantics are handled by reshaping
around it, so its vjp stays two matmuls.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from ..codegen import index_kernels as _ik
from ..errors import DTypeError, ShapeError
from ..tensor import Tensor
from ._shape import broadcast_shapes
from .movement import permute, reshape, squeeze, unsqueeze
from .pointwise import promote
from .registry import Op, apply, composite


def _matmul_infer(a: Tensor, b: Tensor) -> tuple:
    dtype = a.dtype
    if dtype is not b.dtype:
        raise DTypeError(f"matmul: dtypes differ: {dtype.name} @ {b.dtype.name}")
    if dtype.is_bool:
        raise DTypeError("matmul: bool tensors are not supported")
    sa, sb = a.data.shape, b.data.shape
    if sa[-1] != sb[-2]:
        raise ShapeError(f"matmul: inner dimensions differ: {sa} @ {sb} ({sa[-1]} vs {sb[-2]})")
    if len(sa) == 2 and len(sb) == 2:
        return (sa[0], sb[1]), dtype
    return broadcast_shapes("matmul", sa[:-2], sb[:-2]) + (sa[-2], sb[-1]), dtype


def _matmul_vjp(ctx: Any, g: Tensor) -> tuple:
    from .movement import transpose
    a, b = ctx.inputs
    ga = matmul(g, transpose(b, -1, -2)) if a.requires_grad else None
    gb = matmul(transpose(a, -1, -2), g) if b.requires_grad else None
    return ga, gb


def _matmul_jvp(ctx: Any, ta: Tensor | None, tb: Tensor | None) -> Tensor:
    a, b = ctx.inputs
    out = None
    if ta is not None:
        out = apply(MATMUL, ta, b)
    if tb is not None:
        t = apply(MATMUL, a, tb)
        out = t if out is None else out + t
    return out


def _blas_ready(a: Any) -> Any:
    """``a`` itself when BLAS can read its matrices (unit stride along rows or columns), else a C copy.

    NumPy's matmul falls back to a naive loop, orders of magnitude slower, for other strides, e.g.
    the zero strides of an expanded gradient (``y.sum().backward()``).
    """
    if a.ndim < 2 or a.flags.c_contiguous:
        return a
    it = a.itemsize
    (m, n), (s0, s1) = a.shape[-2:], a.strides[-2:]
    if (s1 == it and s0 % it == 0 and s0 >= n * it) or (s0 == it and s1 % it == 0 and s1 >= m * it):
        return a
    return a.copy()


MATMUL = Op("matmul", infer=_matmul_infer, impl=lambda xp, a, b: xp.matmul(_blas_ready(a), _blas_ready(b)),
            vjp=_matmul_vjp, jvp=_matmul_jvp)


def matmul(a: Tensor, b: Tensor, *, out: Tensor | None = None) -> Tensor:
    """Matrix product with NumPy/PyTorch semantics: 1-D operands, batching and broadcasting.

    ``out=`` writes the product into an existing tensor's storage through BLAS, with no new
    allocation; as in PyTorch it is not differentiable.
    """
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise TypeError(f"matmul: expected Tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.dtype is not b.dtype:
        a, b = promote("matmul", a, b)
    if out is not None:
        return _matmul_into(a, b, out)
    na, nb = a.data.ndim, b.data.ndim
    if na >= 2 and nb >= 2:
        return apply(MATMUL, a, b)
    if na == 0 or nb == 0:
        raise ShapeError(f"matmul: both operands need at least 1 dimension, got {a.shape} @ {b.shape}")
    a2 = reshape(a, (1, a.shape[0])) if a.ndim == 1 else a
    b2 = reshape(b, (b.shape[0], 1)) if b.ndim == 1 else b
    if a2.shape[-1] != b2.shape[-2]:
        raise ShapeError(f"matmul: inner dimensions differ: {a.shape} @ {b.shape} "
                         f"({a2.shape[-1]} vs {b2.shape[-2]})")
    out = apply(MATMUL, a2, b2)
    shape = out.shape
    if a.ndim == 1:
        shape = shape[:-2] + shape[-1:]
    if b.ndim == 1:
        shape = shape[:-1]
    return reshape(out, shape)


def _matmul_into(a: Tensor, b: Tensor, out: Tensor) -> Tensor:
    from ..autograd import STATE
    from ..errors import AutogradError, DeviceError
    if not isinstance(out, Tensor):
        raise TypeError(f"matmul: out must be a Tensor, got {type(out).__name__}")
    if STATE.grad_enabled and (a.requires_grad or b.requires_grad or out.requires_grad):
        raise AutogradError("matmul: out= does not support automatic differentiation (an input or out requires "
                            "grad); call it under ember.no_grad() or drop out=")
    if STATE.tracer is not None:  # traced: an ordinary matmul whose result is copied into out
        return out.copy_(matmul(a, b))
    if a.ndim == 0 or b.ndim == 0:
        raise ShapeError(f"matmul: both operands need at least 1 dimension, got {a.shape} @ {b.shape}")
    sa = (1,) + a.shape if a.ndim == 1 else a.shape
    sb = b.shape + (1,) if b.ndim == 1 else b.shape
    shape, dtype = _matmul_infer(_Spec(sa, a.dtype), _Spec(sb, b.dtype))
    if a.ndim == 1:
        shape = shape[:-2] + shape[-1:]
    if b.ndim == 1:
        shape = shape[:-1]
    if out.shape != shape:
        raise ShapeError(f"matmul: out has shape {out.shape}, but {a.shape} @ {b.shape} gives {shape}")
    if out.dtype is not dtype:
        raise DTypeError(f"matmul: out has dtype {out.dtype.name}, but the product is {dtype.name}")
    if out.device != a.device or b.device != a.device:
        raise DeviceError(f"matmul: tensors are on different devices: {a.device}, {b.device}, out on {out.device}")
    if not out.data.flags.writeable:
        raise AutogradError(f"matmul: out (shape {out.shape}) is read-only")
    from .registry import _xp
    _xp(a.device).matmul(_blas_ready(a.data), _blas_ready(b.data), out=out.data)
    out._version[0] += 1
    return out


class _Spec:
    """A shape and dtype without data: enough for the matmul infer rule (which reads ``.data.shape``)."""

    __slots__ = ("dtype", "shape")

    def __init__(self, shape: tuple, dtype: Any) -> None:
        self.shape, self.dtype = shape, dtype

    @property
    def data(self) -> _Spec:
        return self


def mm(a: Tensor, b: Tensor) -> Tensor:
    """Matrix product of two 2-D tensors."""
    if a.ndim != 2 or b.ndim != 2:
        raise ShapeError(f"mm: expected 2-D tensors, got {a.shape} and {b.shape}")
    return matmul(a, b)


def bmm(a: Tensor, b: Tensor) -> Tensor:
    """Batched matrix product of two 3-D tensors with equal batch size."""
    if a.ndim != 3 or b.ndim != 3 or a.shape[0] != b.shape[0]:
        raise ShapeError(f"bmm: expected 3-D tensors with equal batch size, got {a.shape} and {b.shape}")
    return matmul(a, b)


# ============================================================================= convolution and pooling
#
# Both are im2col + GEMM composites over two linear primitives that are each other's adjoint:
#
# * ``unfold2d`` (im2col) copies every kh x kw window of the (padded) input out of ONE strided
#   view, into columns laid out (C, kh, kw, N, OH, OW);
# * ``fold2d`` (col2im) sums columns of that layout back into an (N, C, H, W) tensor, as a loop
#   over the kh*kw kernel offsets, each adding one strided slice (no scatter, no loop over pixels).
#
# Reshaping the columns to (C*kh*kw, N*OH*OW) is free, so a convolution is ONE GEMM
# ``(O, C*kh*kw) @ (C*kh*kw, N*OH*OW)`` (one per group) whose (O, N*OH*OW) product already is the
# output: (N, O, OH, OW) is a permuted view of it, no copy; and the incoming gradient of that view
# reshapes back to (O, N*OH*OW) for free when it keeps the layout (as pointwise ops' results do).
# The layout is "CNHW": every (H, W) plane stays contiguous, so converting to or mixing with NCHW
# tensors runs at copy speed. (Putting the batch innermost instead, (C, kh, kw, OH, OW, N), makes
# fold ~2x faster in NumPy but leaves "CHWN" tensors that cost ~25x a copy to convert or to
# combine with NCHW ones.)


def _out_len(size: int, k: int, s: int, p0: int, p1: int, d: int) -> int:
    return (size + p0 + p1 - d * (k - 1) - 1) // s + 1


def _geometry(x_shape: tuple, kernel: tuple, stride: tuple, padding: tuple, dilation: tuple) -> tuple[int, int]:
    h, w = x_shape[-2:]
    return (_out_len(h, kernel[0], stride[0], padding[0], padding[1], dilation[0]),
            _out_len(w, kernel[1], stride[1], padding[2], padding[3], dilation[1]))


def _unfold_infer(x: Tensor, kernel: tuple, stride: tuple, padding: tuple, dilation: tuple,
                  pad_value: Any) -> tuple:
    if x.ndim != 4:
        raise ShapeError(f"unfold2d: expected a 4-D input (N, C, H, W), got shape {x.shape}")
    oh, ow = _geometry(x.shape, kernel, stride, padding, dilation)
    if oh < 1 or ow < 1:
        raise ShapeError(f"unfold2d: kernel {kernel} (dilation {dilation}) does not fit the input {x.shape} "
                         f"padded by {padding} (output would be {oh}x{ow})")
    n, c = x.shape[:2]
    return (c, kernel[0], kernel[1], n, oh, ow), x.dtype


def _fill_border(buf: Any, padding: tuple, h: int, w: int, value: Any) -> None:
    pt, pb, pl, pr = padding
    if pt:
        buf[..., :pt, :] = value
    if pb:
        buf[..., pt + h:, :] = value
    if pl:
        buf[..., pt:pt + h, :pl] = value
    if pr:
        buf[..., pt:pt + h, pl + w:] = value


def _unfold_impl(xp: Any, x: Any, kernel: tuple, stride: tuple, padding: tuple, dilation: tuple,
                 pad_value: Any) -> Any:
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    oh, ow = _geometry(x.shape, kernel, stride, padding, dilation)
    if xp is np:
        cols = _ik.im2col(x, kernel, stride, padding, dilation, pad_value, (oh, ow))
        if cols is not None:
            return cols
    if any(padding):
        pt, pb, pl, pr = padding
        buf = xp.empty((c, n, h + pt + pb, w + pl + pr), dtype=x.dtype)
        _fill_border(buf, padding, h, w, pad_value)
        buf[:, :, pt:pt + h, pl:pl + w] = x.transpose(1, 0, 2, 3)
        x = buf.transpose(1, 0, 2, 3)
    s_n, s_c, s_h, s_w = x.strides
    windows = xp.lib.stride_tricks.as_strided(
        x, shape=(c, kh, kw, n, oh, ow), strides=(s_c, dh * s_h, dw * s_w, s_n, sh * s_h, sw * s_w))
    return xp.ascontiguousarray(windows)


def _fold_infer(cols: Tensor, size: tuple, kernel: tuple, stride: tuple, padding: tuple, dilation: tuple) -> tuple:
    oh, ow = _geometry(size, kernel, stride, padding, dilation)
    if cols.ndim != 6 or cols.shape[1:3] != kernel or cols.shape[4:] != (oh, ow):
        raise ShapeError(f"fold2d: expected columns of shape (C, {kernel[0]}, {kernel[1]}, N, {oh}, {ow}) for "
                         f"output size {size}, kernel {kernel}, stride {stride}, padding {padding}, dilation "
                         f"{dilation}; got {cols.shape}")
    return (cols.shape[3], cols.shape[0]) + tuple(size), cols.dtype


def _fold_impl(xp: Any, cols: Any, size: tuple, kernel: tuple, stride: tuple, padding: tuple,
               dilation: tuple) -> Any:
    if xp is np:
        out = _ik.col2im(cols, size, kernel, stride, padding, dilation)
        if out is not None:
            return out
    c, kh, kw, n, oh, ow = cols.shape
    h, w = size
    pt, pb, pl, pr = padding
    (sh, sw), (dh, dw) = stride, dilation
    buf = xp.zeros((c, n, h + pt + pb, w + pl + pr), dtype=cols.dtype)
    for i in range(kh):
        rows = slice(i * dh, i * dh + sh * (oh - 1) + 1, sh)
        for j in range(kw):
            buf[:, :, rows, j * dw:j * dw + sw * (ow - 1) + 1:sw] += cols[:, i, j]
    return buf[:, :, pt:pt + h, pl:pl + w].transpose(1, 0, 2, 3)


def _window_attrs(attrs: dict) -> dict:
    return {k: attrs[k] for k in ("kernel", "stride", "padding", "dilation")}


def _unfold_vjp(ctx: Any, g: Tensor) -> tuple:
    return (apply(FOLD2D, g, size=tuple(ctx.in_meta[0][0][2:]), **_window_attrs(ctx.attrs)),)


def _unfold_jvp(ctx: Any, t: Tensor) -> Tensor:
    # Linear up to the padding constant: the tangent of a padded entry is 0, whatever pad_value is.
    return apply(UNFOLD2D, t, pad_value=0, **_window_attrs(ctx.attrs))


UNFOLD2D = Op("unfold2d", infer=_unfold_infer, impl=_unfold_impl, vjp=_unfold_vjp, jvp=_unfold_jvp,
              save_inputs=False, linear=True)
FOLD2D = Op("fold2d", infer=_fold_infer, impl=_fold_impl,
            vjp=lambda ctx, g: (apply(UNFOLD2D, g, pad_value=0, **_window_attrs(ctx.attrs)),),
            save_inputs=False, linear=True)


# ----------------------------------------------------------------------------- argument checking


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def _pair(name: str, what: str, value: Any, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints, each at least ``minimum``."""
    vals = (value, value) if _is_int(value) else tuple(value) if isinstance(value, (tuple, list)) else None
    if vals is None or len(vals) != 2 or not all(_is_int(v) for v in vals) or min(vals) < minimum:
        bound = "positive" if minimum == 1 else "non-negative"
        raise ShapeError(f"{name}: {what} must be a {bound} int or a pair of them, got {value!r}")
    return int(vals[0]), int(vals[1])


def _check_tensor(name: str, what: str, x: Any) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: {what} must be a Tensor, got {type(x).__name__}")


def _batched(name: str, x: Tensor) -> tuple[Tensor, bool]:
    """``x`` as (N, C, H, W), and whether it came unbatched (C, H, W)."""
    _check_tensor(name, "input", x)
    if x.ndim == 4:
        return x, False
    if x.ndim == 3:
        return unsqueeze(x, 0), True
    raise ShapeError(f"{name}: expected a 3-D (C, H, W) or 4-D (N, C, H, W) input, got shape {x.shape}")


def _to_nchw(cols_out: Tensor, unbatched: bool) -> Tensor:
    """(C, N, OH, OW) -> the (N, C, OH, OW) view (or (C, OH, OW) for an unbatched input)."""
    out = permute(cols_out, (1, 0, 2, 3))
    return squeeze(out, 0) if unbatched else out


def _to_unbatched(out: Tensor, unbatched: bool) -> Tensor:
    return squeeze(out, 0) if unbatched else out


def _unfold(x: Tensor, kernel: tuple, stride: tuple, padding: tuple, dilation: tuple,
            pad_value: Any = 0) -> Tensor:
    return apply(UNFOLD2D, x, kernel=kernel, stride=stride, padding=padding, dilation=dilation, pad_value=pad_value)


# ----------------------------------------------------------------------------- convolution


def _conv_padding(padding: Any, kernel: tuple, stride: tuple, dilation: tuple) -> tuple[int, int, int, int]:
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding != "same":
            raise ShapeError(f"conv2d: padding must be 'same', 'valid', an int or a pair of ints, got {padding!r}")
        if stride != (1, 1):
            raise ShapeError(f"conv2d: padding='same' is not supported for strided convolutions (stride {stride})")
        out = []
        for k, d in zip(kernel, dilation):
            total = d * (k - 1)  # as PyTorch: the odd extra row/column goes at the bottom/right
            out += [total // 2, total - total // 2]
        return tuple(out)
    ph, pw = _pair("conv2d", "padding", padding, 0)
    return (ph, ph, pw, pw)


@composite
def conv2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride: Any = 1, padding: Any = 0,
           dilation: Any = 1, groups: int = 1) -> Tensor:
    """2-D convolution (cross-correlation) with PyTorch's semantics.

    ``input`` is (N, C, H, W) or unbatched (C, H, W); ``weight`` is (O, C/groups, kh, kw); ``bias`` is (O,).
    ``stride``/``dilation`` are ints or pairs, ``padding`` an int, a pair, ``'same'`` or ``'valid'``.
    Computed as im2col (``unfold2d``) + one GEMM per group; gradients come from those primitives.
    """
    name = "conv2d"
    x, unbatched = _batched(name, input)
    _check_tensor(name, "weight", weight)
    if weight.ndim != 4:
        raise ShapeError(f"{name}: weight must be 4-D (out_channels, in_channels/groups, kh, kw), "
                         f"got shape {weight.shape}")
    for what, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            _check_tensor(name, what, t)
            if t.dtype is not x.dtype:
                raise DTypeError(f"{name}: {what} dtype {t.dtype.name} differs from input dtype {x.dtype.name}")
    if not x.dtype.is_floating_point:
        raise DTypeError(f"{name}: expected floating tensors, got {x.dtype.name}")
    if not _is_int(groups) or groups < 1:
        raise ShapeError(f"{name}: groups must be a positive int, got {groups!r}")
    groups = int(groups)
    o, cg, kh, kw = weight.shape
    n, c, h, w = x.shape
    shapes = f"input {tuple(input.shape)}, weight {weight.shape}"
    if o % groups:
        raise ShapeError(f"{name}: out_channels {o} is not divisible by groups={groups} ({shapes})")
    if c != cg * groups:
        expects = f"{cg}" if groups == 1 else f"{cg} x groups={groups} = {cg * groups}"
        raise ShapeError(f"{name}: input has {c} channels but weight expects {expects} ({shapes})")
    if bias is not None and bias.shape != (o,):
        raise ShapeError(f"{name}: bias must have shape ({o},) to match the weight's {o} output channels, "
                         f"got {bias.shape}")
    kernel = (kh, kw)
    stride = _pair(name, "stride", stride, 1)
    dilation = _pair(name, "dilation", dilation, 1)
    pad = _conv_padding(padding, kernel, stride, dilation)
    oh, ow = _geometry(x.shape, kernel, stride, pad, dilation)
    if oh < 1 or ow < 1 or min(kernel) < 1:
        eff = (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1)
        raise ShapeError(f"{name}: kernel of effective size {eff[0]}x{eff[1]} (kernel {kernel}, dilation "
                         f"{dilation}) is larger than the padded input {h + pad[0] + pad[1]}x{w + pad[2] + pad[3]} "
                         f"({shapes}, padding {padding!r})")

    cols = _unfold(x, kernel, stride, pad, dilation)          # (C, kh, kw, N, OH, OW)
    k, length = cg * kh * kw, n * oh * ow
    if groups == 1:
        y = matmul(reshape(weight, (o, k)), reshape(cols, (k, length)))
    else:
        y = matmul(reshape(weight, (groups, o // groups, k)), reshape(cols, (groups, k, length)))
    y = _to_nchw(reshape(y, (o, n, oh, ow)), unbatched)
    # The bias is added in the (N)CHW layout the caller sees, so that in compiled mode it fuses with the
    # activation that follows (one kernel reading the GEMM's output through the permutation).
    return y if bias is None else y + reshape(bias, (o, 1, 1))


# ----------------------------------------------------------------------------- pooling


def _pool_len(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> tuple[int, int]:
    """Output length (PyTorch's rule) and the extra padding a ceil-mode last window needs."""
    span = size + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1  # the last window must start inside the input or the left padding
    return out, max(0, (out - 1) * s + d * (k - 1) + 1 - (size + 2 * p))


def _pool_setup(name: str, x: Tensor, kernel_size: Any, stride: Any, padding: Any, dilation: Any,
                ceil_mode: bool) -> tuple:
    kernel = _pair(name, "kernel_size", kernel_size, 1)
    stride = kernel if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) \
        else _pair(name, "stride", stride, 1)
    ph, pw = _pair(name, "padding", padding, 0)
    dilation = _pair(name, "dilation", dilation, 1)
    if not isinstance(ceil_mode, bool):
        raise TypeError(f"{name}: ceil_mode must be a bool, got {ceil_mode!r}")
    if ph > kernel[0] // 2 or pw > kernel[1] // 2:
        raise ShapeError(f"{name}: padding {(ph, pw)} must be at most half the kernel size {kernel}")
    oh, eh = _pool_len(x.shape[2], kernel[0], stride[0], ph, dilation[0], ceil_mode)
    ow, ew = _pool_len(x.shape[3], kernel[1], stride[1], pw, dilation[1], ceil_mode)
    if oh < 1 or ow < 1:
        raise ShapeError(f"{name}: kernel {kernel} (dilation {dilation}, padding {(ph, pw)}) is larger than the "
                         f"input {x.shape[2]}x{x.shape[3]} (input shape {x.shape}; output would be {oh}x{ow})")
    return kernel, stride, (ph, ph + eh, pw, pw + ew), dilation, (oh, ow)


# Max pooling is three small primitives rather than a composite over unfold/argmax/gather: NumPy's
# argmax along a short strided axis and the scatter-add in gather's gradient cost ten times more than
# a few whole-array passes, one per kernel offset. The three are linear adjoints of each other in
# their first input (the window mask depends on x only through comparisons), so gradients of any
# order and forward mode come from the same two kernels.

def _pool_windows(shape: tuple, kernel: tuple, stride: tuple, dilation: tuple, out_hw: tuple) -> list:
    """For each kernel offset in row-major order, the (rows, cols) slices of the padded input it reads."""
    (oh, ow), views = out_hw, []
    for a in range(kernel[0]):
        r0 = a * dilation[0]
        for b in range(kernel[1]):
            c0 = b * dilation[1]
            views.append((slice(r0, r0 + stride[0] * (oh - 1) + 1, stride[0]),
                          slice(c0, c0 + stride[1] * (ow - 1) + 1, stride[1])))
    return views


def _padded(xp: Any, x: Any, pad: tuple, value: Any) -> Any:
    if not any(pad):
        return x
    return xp.pad(x, ((0, 0), (0, 0), (pad[0], pad[1]), (pad[2], pad[3])), constant_values=value)


def _lowest(dtype: Any) -> Any:
    return -np.inf if dtype.kind == "f" else np.iinfo(dtype).min


def _maxpool_impl(xp: Any, x: Any, kernel: tuple, stride: tuple, pad: tuple, dilation: tuple,
                  out_hw: tuple) -> Any:
    if xp is np:
        out = _ik.max_pool(x, kernel, stride, pad, dilation, out_hw)
        if out is not None:
            return out
    xpad = _padded(xp, x, pad, _lowest(x.dtype))
    out = None
    for rows, cols in _pool_windows(xpad.shape, kernel, stride, dilation, out_hw):
        v = xpad[:, :, rows, cols]
        out = v.copy() if out is None else xp.maximum(out, v, out=out)  # maximum propagates NaN
    return out


def _first_max_masks(xp: Any, x: Any, out: Any, kernel: tuple, stride: tuple, pad: tuple, dilation: tuple,
                     out_hw: tuple):
    """Yield (rows, cols, mask) per kernel offset: mask marks the windows whose first maximum
    (row-major, NaN counting as the maximum) sits at that offset, so every window is marked once."""
    xpad = _padded(xp, x, pad, _lowest(x.dtype))
    nan = x.dtype.kind == "f" and bool(xp.isnan(out).any())
    taken = None
    for rows, cols in _pool_windows(xpad.shape, kernel, stride, dilation, out_hw):
        v = xpad[:, :, rows, cols]
        hit = v == out
        if nan:
            hit |= xp.isnan(v) & xp.isnan(out)
        if taken is None:
            taken = hit.copy()
        else:
            hit &= ~taken
            taken |= hit
        yield rows, cols, hit


def _maxpool_backward_impl(xp: Any, g: Any, x: Any, out: Any, kernel: tuple, stride: tuple, pad: tuple,
                           dilation: tuple, out_hw: tuple) -> Any:
    if xp is np:
        grad = _ik.max_pool_backward(g, x, out, kernel, stride, pad, dilation, out_hw)
        if grad is not None:
            return grad
    n, c, h, w = x.shape
    hp, wp = h + pad[0] + pad[1], w + pad[2] + pad[3]
    disjoint = all(s == k * d for s, k, d in zip(stride, kernel, dilation))  # each input in at most one window
    tiled = disjoint and dilation == (1, 1) and (hp, wp) == (out_hw[0] * kernel[0], out_hw[1] * kernel[1])
    grad = (xp.empty if tiled else xp.zeros)((n, c, hp, wp), dtype=g.dtype)
    for rows, cols, mask in _first_max_masks(xp, x, out, kernel, stride, pad, dilation, out_hw):
        if disjoint:
            xp.multiply(g, mask, out=grad[:, :, rows, cols])
        else:
            grad[:, :, rows, cols] += g * mask
    return grad[:, :, pad[0]:pad[0] + h, pad[2]:pad[2] + w]


def _maxpool_select_impl(xp: Any, t: Any, x: Any, out: Any, kernel: tuple, stride: tuple, pad: tuple,
                         dilation: tuple, out_hw: tuple) -> Any:
    tpad = _padded(xp, t, pad, 0)
    res = xp.zeros(out.shape, dtype=t.dtype)
    for rows, cols, mask in _first_max_masks(xp, x, out, kernel, stride, pad, dilation, out_hw):
        res += tpad[:, :, rows, cols] * mask
    return res


def _pool_attrs(ctx: Any) -> dict:
    return {k: ctx.attrs[k] for k in ("kernel", "stride", "pad", "dilation", "out_hw")}


def _maxpool_vjp(ctx: Any, g: Tensor) -> tuple:
    return (apply(MAXPOOL2D_BACKWARD, g, ctx.inputs[0].detach(), ctx.out.detach(), **_pool_attrs(ctx)),)


def _maxpool_jvp(ctx: Any, t: Tensor | None) -> Tensor | None:
    if t is None:
        return None
    return apply(MAXPOOL2D_SELECT, t, ctx.inputs[0].detach(), ctx.out.detach(), **_pool_attrs(ctx))


def _adjoint_vjp(other: str):
    def vjp(ctx: Any, g: Tensor) -> tuple:
        x, out = ctx.inputs[1], ctx.inputs[2]
        return apply(REGISTRY_POOL[other], g, x, out, **_pool_attrs(ctx)), None, None
    return vjp


MAXPOOL2D = Op("max_pool2d", infer=lambda x, kernel, stride, pad, dilation, out_hw: (x.shape[:2] + out_hw, x.dtype),
               impl=_maxpool_impl, vjp=_maxpool_vjp, jvp=_maxpool_jvp, save_output=True)
MAXPOOL2D_BACKWARD = Op("max_pool2d_backward",
                        infer=lambda g, x, out, **_: (x.shape, g.dtype), impl=_maxpool_backward_impl,
                        vjp=_adjoint_vjp("select"), linear=True, diff_args=(0,))
MAXPOOL2D_SELECT = Op("max_pool2d_select",
                      infer=lambda t, x, out, **_: (out.shape, t.dtype), impl=_maxpool_select_impl,
                      vjp=_adjoint_vjp("backward"), linear=True, diff_args=(0,))
REGISTRY_POOL = {"backward": MAXPOOL2D_BACKWARD, "select": MAXPOOL2D_SELECT}


@composite
def max_pool2d(input: Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
               ceil_mode: bool = False, return_indices: bool = False) -> Any:
    """2-D max pooling with PyTorch's semantics (padding counts as -inf).

    The gradient of each window goes to its first maximum (row-major), exactly as in PyTorch.
    With ``return_indices`` also returns, like PyTorch, the flat ``h * W + w`` index of each maximum.
    """
    from .reduce import argmax
    name = "max_pool2d"
    x, unbatched = _batched(name, input)
    if x.dtype.is_bool:
        raise DTypeError(f"{name}: bool tensors are not supported")
    kernel, stride, pad, dilation, (oh, ow) = _pool_setup(name, x, kernel_size, stride, padding, dilation,
                                                          ceil_mode)
    out = _to_unbatched(apply(MAXPOOL2D, x, kernel=kernel, stride=stride, pad=pad, dilation=dilation,
                              out_hw=(oh, ow)), unbatched)
    if not return_indices:
        return out
    from .creation import arange
    n, c, _, w = x.shape
    lowest = float("-inf") if x.dtype.is_floating_point else int(np.iinfo(x.dtype.np).min)
    cols = reshape(_unfold(x.detach(), kernel, stride, pad, dilation, lowest), (c, kernel[0] * kernel[1], n, oh, ow))
    idx = argmax(cols, 1, keepdim=True)                        # first maximum of each window
    top = reshape(arange(oh, device=x.device) * stride[0] - pad[0], (1, 1, 1, oh, 1))
    left = reshape(arange(ow, device=x.device) * stride[1] - pad[2], (1, 1, 1, 1, ow))
    flat = ((idx // kernel[1]) * dilation[0] + top) * w + (idx % kernel[1]) * dilation[1] + left
    return out, _to_nchw(reshape(flat, (c, n, oh, ow)), unbatched)


def _window_counts(size: int, out: int, k: int, s: int, p: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output position: window length clipped to the padded input, and to the input itself."""
    start = np.arange(out) * s - p
    end = np.minimum(start + k, size + p)
    return end - start, np.minimum(end, size) - np.maximum(start, 0)


@composite
def avg_pool2d(input: Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: int | None = None) -> Tensor:
    """2-D average pooling with PyTorch's semantics: the mean of each window (padding counts as 0).

    ``count_include_pad=False`` divides by the number of non-padding elements instead; ``divisor_override``
    divides by that number.
    """
    from .reduce import sum as _sum
    name = "avg_pool2d"
    x, unbatched = _batched(name, input)
    if not x.dtype.is_floating_point:
        raise DTypeError(f"{name}: expected a floating tensor, got {x.dtype.name}")
    kernel, stride, pad, dilation, (oh, ow) = _pool_setup(name, x, kernel_size, stride, padding, 1, ceil_mode)
    n, c, h, w = x.shape
    cols = reshape(_unfold(x, kernel, stride, pad, dilation), (c, kernel[0] * kernel[1], n, oh, ow))
    total = _sum(cols, 1)                                       # (C, N, OH, OW)
    if divisor_override is not None:
        if not _is_int(divisor_override) or divisor_override == 0:
            raise ShapeError(f"{name}: divisor_override must be a non-zero int, got {divisor_override!r}")
        out = total / float(divisor_override)
    else:
        rows_pad, rows = _window_counts(h, oh, kernel[0], stride[0], pad[0])
        cols_pad, cols_in = _window_counts(w, ow, kernel[1], stride[1], pad[2])
        rh, rw = (rows_pad, cols_pad) if count_include_pad else (rows, cols_in)
        counts = np.multiply.outer(rh, rw)
        if (counts == counts.flat[0]).all():
            out = total / float(counts.flat[0])
        else:
            from .creation import tensor
            out = total / tensor(counts, dtype=x.dtype, device=x.device)
    return _to_nchw(out, unbatched)


# ----------------------------------------------------------------------------- PyTorch's F.unfold / F.fold


def unfold(input: Tensor, kernel_size: Any, dilation: Any = 1, padding: Any = 0, stride: Any = 1) -> Tensor:
    """PyTorch's ``nn.functional.unfold``: (N, C, H, W) -> (N, C*kh*kw, L) sliding-window columns."""
    name = "unfold"
    x, unbatched = _batched(name, input)
    kernel = _pair(name, "kernel_size", kernel_size, 1)
    ph, pw = _pair(name, "padding", padding, 0)
    stride, dilation = _pair(name, "stride", stride, 1), _pair(name, "dilation", dilation, 1)
    cols = _unfold(x, kernel, stride, (ph, ph, pw, pw), dilation)
    c, kh, kw, n, oh, ow = cols.shape
    out = reshape(permute(cols, (3, 0, 1, 2, 4, 5)), (n, c * kh * kw, oh * ow))
    return squeeze(out, 0) if unbatched else out


def fold(input: Tensor, output_size: Any, kernel_size: Any, dilation: Any = 1, padding: Any = 0,
         stride: Any = 1) -> Tensor:
    """PyTorch's ``nn.functional.fold``: (N, C*kh*kw, L) columns summed back into (N, C, H, W)."""
    name = "fold"
    _check_tensor(name, "input", input)
    if input.ndim not in (2, 3):
        raise ShapeError(f"{name}: expected a 2-D or 3-D input (N, C*kh*kw, L), got shape {input.shape}")
    cols = unsqueeze(input, 0) if input.ndim == 2 else input
    size = _pair(name, "output_size", output_size, 1)
    kernel = _pair(name, "kernel_size", kernel_size, 1)
    ph, pw = _pair(name, "padding", padding, 0)
    stride, dilation = _pair(name, "stride", stride, 1), _pair(name, "dilation", dilation, 1)
    pad = (ph, ph, pw, pw)
    oh, ow = _geometry(size, kernel, stride, pad, dilation)
    n, ckk, length = cols.shape
    kk = kernel[0] * kernel[1]
    if ckk % kk or oh < 1 or ow < 1 or length != oh * ow:
        raise ShapeError(f"{name}: input of shape {input.shape} does not match output_size {size}, kernel {kernel}, "
                         f"dilation {dilation}, padding {(ph, pw)}, stride {stride} (expected (N, C*{kk}, "
                         f"{max(oh, 0) * max(ow, 0)}))")
    c6 = permute(reshape(cols, (n, ckk // kk, kernel[0], kernel[1], oh, ow)), (1, 2, 3, 0, 4, 5))
    out = apply(FOLD2D, c6, size=size, kernel=kernel, stride=stride, padding=pad, dilation=dilation)
    return squeeze(out, 0) if input.ndim == 2 else out
