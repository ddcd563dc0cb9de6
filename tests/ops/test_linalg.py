"""matmul, conv2d (im2col + GEMM), max/avg pooling and the unfold2d/fold2d primitives.

Every op is checked three ways (``check_op``): a NumPy reference (naive loops on tiny inputs),
float64 finite differences, and PyTorch's forward and backward when torch is installed.
"""

import numpy as np
import pytest

import ember
from ember.ops import linalg
from tests.helpers import check_op, rand, torch


def F(L):
    """Where the conv/pool functions live: ``torch.nn.functional`` or ``ember.ops.linalg``."""
    return L.nn.functional if (torch is not None and L is torch) else linalg


def distinct(*shape, seed=0, scale=0.1):
    """Values that are all different (by at least ``scale``): no ties inside pooling windows."""
    n = int(np.prod(shape))
    return np.random.default_rng(seed).permutation(n).reshape(shape).astype(np.float64) * scale - n * scale / 2


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


# ----------------------------------------------------------------------------- NumPy references


def _conv_padding(padding, kernel, dilation):
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        out = []
        for k, d in zip(kernel, dilation):
            total = d * (k - 1)
            out += [total // 2, total - total // 2]
        return tuple(out)
    ph, pw = _pair(padding)
    return (ph, ph, pw, pw)


def conv2d_ref(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """Direct convolution: a loop over output pixels and kernel offsets."""
    squeeze = x.ndim == 3
    x = x[None] if squeeze else x
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    o, cg, kh, kw = w.shape
    pt, pb, pl, pr = _conv_padding(padding, (kh, kw), (dh, dw))
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    n, _, hp, wp = xp.shape
    oh, ow = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
    og = o // groups
    out = np.zeros((n, o, oh, ow))
    for g in range(groups):
        for y in range(oh):
            for z in range(ow):
                for i in range(kh):
                    for j in range(kw):
                        patch = xp[:, g * cg:(g + 1) * cg, y * sh + i * dh, z * sw + j * dw]
                        out[:, g * og:(g + 1) * og, y, z] += patch @ w[g * og:(g + 1) * og, :, i, j].T
    if b is not None:
        out += b[None, :, None, None]
    return out[0] if squeeze else out


def _pool_out(size, k, s, p, d, ceil_mode):
    span = size + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def max_pool2d_ref(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    (kh, kw) = _pair(kernel_size)
    (sh, sw) = _pair(stride if stride is not None else kernel_size)
    (ph, pw), (dh, dw) = _pair(padding), _pair(dilation)
    n, c, h, w = x.shape
    oh, ow = _pool_out(h, kh, sh, ph, dh, ceil_mode), _pool_out(w, kw, sw, pw, dw, ceil_mode)
    out = np.full((n, c, oh, ow), -np.inf)
    for y in range(oh):
        for z in range(ow):
            for i in range(kh):
                for j in range(kw):
                    r, q = y * sh - ph + i * dh, z * sw - pw + j * dw
                    if 0 <= r < h and 0 <= q < w:
                        out[:, :, y, z] = np.maximum(out[:, :, y, z], x[:, :, r, q])
    return out


def avg_pool2d_ref(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                   divisor_override=None):
    (kh, kw) = _pair(kernel_size)
    (sh, sw) = _pair(stride if stride is not None else kernel_size)
    (ph, pw) = _pair(padding)
    n, c, h, w = x.shape
    oh, ow = _pool_out(h, kh, sh, ph, 1, ceil_mode), _pool_out(w, kw, sw, pw, 1, ceil_mode)
    out = np.zeros((n, c, oh, ow))
    for y in range(oh):
        for z in range(ow):
            r0, q0 = y * sh - ph, z * sw - pw
            r1, q1 = min(r0 + kh, h + ph), min(q0 + kw, w + pw)   # the window, clipped to the padded input
            inside = x[:, :, max(r0, 0):min(r1, h), max(q0, 0):min(q1, w)]
            if divisor_override:
                div = divisor_override
            elif count_include_pad:
                div = (r1 - r0) * (q1 - q0)
            else:
                div = inside.shape[2] * inside.shape[3]
            out[:, :, y, z] = inside.sum(axis=(2, 3)) / div
    return out


# ----------------------------------------------------------------------------- matmul

MATMUL_SHAPES = [
    ((3,), (3,)), ((3,), (3, 4)), ((2, 3), (3,)), ((2, 3), (3, 4)),
    ((5, 2, 3), (3,)), ((3,), (5, 3, 4)), ((5, 2, 3), (5, 3, 4)), ((5, 2, 3), (3, 4)), ((2, 3), (5, 3, 4)),
    ((1, 2, 3), (4, 3, 5)), ((6, 1, 2, 3), (5, 3, 4)), ((2, 1, 2, 3), (1, 4, 3, 2)), ((1, 3), (3, 1)),
]


@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES, ids=[f"{a}@{b}" for a, b in MATMUL_SHAPES])
def test_matmul(sa, sb):
    check_op(lambda L, a, b: L.matmul(a, b), np.matmul, [rand(*sa, seed=1), rand(*sb, seed=2)])


def test_matmul_operator_mm_bmm():
    a, b = rand(2, 3, seed=1), rand(3, 4, seed=2)
    check_op(lambda L, x, y: x @ y, np.matmul, [a, b])
    check_op(lambda L, x, y: L.mm(x, y), np.matmul, [a, b])
    a3, b3 = rand(4, 2, 3, seed=3), rand(4, 3, 5, seed=4)
    check_op(lambda L, x, y: L.bmm(x, y), np.matmul, [a3, b3])


def test_matmul_transposed_and_expanded_operands():
    # Non-contiguous operands (views, zero strides) give the same result as contiguous ones.
    a, b = rand(4, 3, seed=1), rand(5, 4, seed=2)
    check_op(lambda L, x, y: L.matmul(x.transpose(0, 1), y.transpose(0, 1)), lambda x, y: x.T @ y.T, [a, b])
    x = ember.tensor(rand(3, 1, seed=3))
    out = ember.matmul(x.expand(3, 4), ember.ones(4, 2).expand(4, 2))
    np.testing.assert_allclose(out.data, np.broadcast_to(x.data, (3, 4)) @ np.ones((4, 2)), rtol=1e-6)


def test_matmul_second_derivative():
    a = ember.tensor(rand(3, 3, seed=1), dtype="float64", requires_grad=True)
    (g,) = ember.grad((a @ a).sum(), a, create_graph=True)   # g = 1 a^T + a^T 1
    (h,) = ember.grad((g * g).sum(), a)
    np.testing.assert_allclose(h.data, 2 * (g.data @ np.ones((3, 3)) + np.ones((3, 3)) @ g.data).T, rtol=1e-12)

    def first(t):
        with ember.enable_grad():  # gradcheck evaluates under no_grad
            return ember.grad((t @ t).sum(), t, create_graph=True)[0]

    assert ember.autograd.gradcheck(first, [a])


@pytest.mark.parametrize("sa,sb,msg", [
    ((2, 3), (4, 5), r"matmul: inner dimensions differ: \(2, 3\) @ \(4, 5\) \(3 vs 4\)"),
    ((3,), (4,), r"matmul: inner dimensions differ: \(3,\) @ \(4,\) \(3 vs 4\)"),
    ((2, 3), (4,), r"matmul: inner dimensions differ: \(2, 3\) @ \(4,\)"),
    ((5, 2, 3), (4, 3, 2), r"matmul: shapes \(5,\) and \(4,\) cannot be broadcast"),
    ((), (3,), r"matmul: both operands need at least 1 dimension"),
])
def test_matmul_errors(sa, sb, msg):
    with pytest.raises(ember.ShapeError, match=msg):
        ember.matmul(ember.ones(*sa), ember.ones(*sb))


def test_mm_bmm_errors():
    with pytest.raises(ember.ShapeError, match=r"mm: expected 2-D tensors, got \(2, 3, 4\) and \(4, 2\)"):
        ember.mm(ember.ones(2, 3, 4), ember.ones(4, 2))
    with pytest.raises(ember.ShapeError, match="bmm: expected 3-D tensors with equal batch size"):
        ember.bmm(ember.ones(2, 3, 4), ember.ones(3, 4, 2))
    with pytest.raises(ember.DTypeError, match="matmul: bool tensors are not supported"):
        ember.matmul(ember.ones(2, 2, dtype="bool"), ember.ones(2, 2, dtype="bool"))


# ----------------------------------------------------------------------------- conv2d

CONV = [
    # (input shape, weight shape, bias, kwargs)
    ("plain", (2, 3, 5, 6), (4, 3, 3, 3), True, {}),
    ("stride2", (2, 3, 7, 6), (4, 3, 3, 2), True, {"stride": 2}),
    ("pad1", (1, 2, 5, 5), (3, 2, 3, 3), False, {"padding": 1}),
    ("pad_pair_stride_pair", (2, 2, 6, 7), (3, 2, 2, 3), True, {"padding": (2, 1), "stride": (2, 3)}),
    ("dilation", (1, 2, 7, 8), (2, 2, 3, 2), True, {"dilation": (2, 3), "padding": 1}),
    ("groups2", (2, 4, 5, 5), (6, 2, 3, 3), True, {"groups": 2, "padding": 1}),
    ("depthwise", (2, 3, 6, 5), (6, 1, 3, 3), False, {"groups": 3, "stride": 2}),
    ("same_even_kernel", (1, 2, 5, 6), (3, 2, 4, 2), True, {"padding": "same"}),
    ("same_dilated", (2, 1, 6, 5), (2, 1, 3, 3), False, {"padding": "same", "dilation": 2}),
    ("valid", (1, 2, 4, 5), (2, 2, 2, 2), False, {"padding": "valid"}),
    ("1x1", (3, 4, 3, 2), (5, 4, 1, 1), True, {}),
    ("kernel_eq_input", (2, 2, 3, 3), (3, 2, 3, 3), True, {}),
    ("odd_sizes", (3, 3, 9, 4), (5, 3, 4, 3), True, {"stride": (3, 1), "padding": (1, 2), "dilation": (1, 2)}),
]


@pytest.mark.filterwarnings("ignore:Using padding='same'")  # torch's note about even kernels
@pytest.mark.parametrize("name,xs,ws,bias,kw", CONV, ids=[c[0] for c in CONV])
def test_conv2d(name, xs, ws, bias, kw):
    arrays = [rand(*xs, seed=1), rand(*ws, seed=2)]
    if bias:
        arrays.append(rand(ws[0], seed=3))
        check_op(lambda L, x, w, b: F(L).conv2d(x, w, b, **kw), lambda x, w, b: conv2d_ref(x, w, b, **kw), arrays,
                 atol=1e-4, rtol=1e-4)
    else:
        check_op(lambda L, x, w: F(L).conv2d(x, w, **kw), lambda x, w: conv2d_ref(x, w, **kw), arrays,
                 atol=1e-4, rtol=1e-4)


def test_conv2d_unbatched_and_positional_args():
    x, w, b = rand(2, 5, 4, seed=1), rand(3, 2, 2, 2, seed=2), rand(3, seed=3)
    check_op(lambda L, x, w, b: F(L).conv2d(x, w, b, 1, 1), lambda x, w, b: conv2d_ref(x, w, b, padding=1),
             [x, w, b], atol=1e-4, rtol=1e-4)


def test_conv2d_output_is_a_view_of_one_gemm():
    x = ember.tensor(rand(2, 3, 5, 5, seed=1), dtype="float32")
    w = ember.tensor(rand(4, 3, 3, 3, seed=2), dtype="float32", requires_grad=True)
    out = linalg.conv2d(x, w)
    assert out.shape == (2, 4, 3, 3) and out.dtype is ember.float32
    # (O, N*OH*OW) GEMM product seen as (N, O, OH, OW): no copy after the GEMM
    assert out.data.base is not None and out.data.base.shape == (4, 2 * 3 * 3)
    assert out.grad_fn.name == "permute"


def test_conv2d_grad_of_weight_only_and_no_grad():
    x = ember.tensor(rand(2, 2, 4, 4, seed=1), dtype="float64")
    w = ember.tensor(rand(3, 2, 3, 3, seed=2), dtype="float64", requires_grad=True)
    linalg.conv2d(x, w, padding=1).sum().backward()
    assert x.grad is None and w.grad.shape == w.shape
    with ember.no_grad():
        assert not linalg.conv2d(x, w).requires_grad


def test_conv2d_second_derivative_finite_differences():
    x = ember.tensor(rand(1, 2, 4, 5, seed=1), dtype="float64", requires_grad=True)
    w = ember.tensor(rand(3, 2, 2, 3, seed=2), dtype="float64", requires_grad=True)

    def grads(x, w):
        with ember.enable_grad():  # gradcheck evaluates under no_grad
            y = linalg.conv2d(x, w, stride=(1, 2), padding=1)
            return ember.grad((y * y).sum(), (x, w), create_graph=True)

    assert ember.autograd.gradcheck(grads, [x, w])


def test_conv2d_double_backward_matches_torch():
    torch = pytest.importorskip("torch")
    xs, ws = rand(2, 3, 6, 5, seed=1), rand(4, 3, 3, 2, seed=2)
    px, pw = rand(2, 3, 6, 5, seed=3), rand(4, 3, 3, 2, seed=4)
    kw = {"stride": (2, 1), "padding": 1, "dilation": (1, 2)}

    def second(L, grad, make, x, w):
        y = F(L).conv2d(x, w, **kw)
        gx, gw = grad((y * y).sum() + y.tanh().sum(), (x, w), create_graph=True)
        s = (gx * make(px)).sum() + (gw * make(pw)).sum()
        return list(grad(s, (x, w)))

    ex = ember.tensor(xs, dtype="float64", requires_grad=True)
    ew = ember.tensor(ws, dtype="float64", requires_grad=True)
    e = second(ember, ember.grad, lambda a: ember.tensor(a, dtype="float64"), ex, ew)
    tx = torch.tensor(xs, requires_grad=True)
    tw = torch.tensor(ws, requires_grad=True)
    t = second(torch, lambda o, i, create_graph=False: torch.autograd.grad(o, i, create_graph=create_graph),
               torch.tensor, tx, tw)
    for a, b in zip(e, t):
        np.testing.assert_allclose(a.data, b.detach().numpy(), rtol=1e-9, atol=1e-9)


def test_conv2d_forward_mode():
    x, w = rand(1, 2, 5, 4, seed=1), rand(3, 2, 3, 3, seed=2)
    tx, tw = rand(1, 2, 5, 4, seed=3), rand(3, 2, 3, 3, seed=4)
    f = lambda x, w: linalg.conv2d(x, w, padding=1, stride=2)  # noqa: E731
    t64 = lambda a: ember.tensor(a, dtype="float64")  # noqa: E731
    out, tangent = ember.jvp(f, (t64(x), t64(w)), (t64(tx), t64(tw)))
    # bilinear: the tangent is conv(tx, w) + conv(x, tw)
    want = conv2d_ref(tx, w, padding=1, stride=2) + conv2d_ref(x, tw, padding=1, stride=2)
    np.testing.assert_allclose(tangent.data, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out.data, conv2d_ref(x, w, padding=1, stride=2), rtol=1e-10)


def _conv_error(x_shape, w_shape, b_shape=None, **kw):
    b = ember.ones(*b_shape) if b_shape else None
    return linalg.conv2d(ember.ones(*x_shape), ember.ones(*w_shape), b, **kw)


@pytest.mark.parametrize("args,kw,err,msg", [
    (((2, 3, 8, 8), (5, 4, 3, 3)), {}, ember.ShapeError,
     r"conv2d: input has 3 channels but weight expects 4 \(input \(2, 3, 8, 8\), weight \(5, 4, 3, 3\)\)"),
    (((2, 4, 8, 8), (6, 1, 3, 3)), {"groups": 2}, ember.ShapeError,
     r"conv2d: input has 4 channels but weight expects 1 x groups=2 = 2"),
    (((2, 4, 8, 8), (5, 2, 3, 3)), {"groups": 2}, ember.ShapeError,
     r"conv2d: out_channels 5 is not divisible by groups=2"),
    (((2, 3, 8, 8), (5, 3, 3, 3), (4,)), {}, ember.ShapeError, r"conv2d: bias must have shape \(5,\)"),
    (((2, 3, 2, 8), (5, 3, 3, 3)), {}, ember.ShapeError,
     r"conv2d: kernel of effective size 3x3 .* is larger than the padded input 2x8"),
    (((2, 3, 5, 5), (5, 3, 3, 3)), {"dilation": 3}, ember.ShapeError, r"effective size 7x7"),
    (((2, 3, 8), (5, 3, 3, 3)), {}, ember.ShapeError, None),  # 3-D input is unbatched: fits
    (((3, 8), (5, 3, 3, 3)), {}, ember.ShapeError, r"conv2d: expected a 3-D \(C, H, W\) or 4-D"),
    (((2, 3, 8, 8), (5, 3, 3)), {}, ember.ShapeError, r"conv2d: weight must be 4-D"),
    (((2, 3, 8, 8), (5, 3, 3, 3)), {"stride": 0}, ember.ShapeError,
     r"conv2d: stride must be a positive int or a pair of them, got 0"),
    (((2, 3, 8, 8), (5, 3, 3, 3)), {"padding": (1, 2, 3)}, ember.ShapeError, r"conv2d: padding must be"),
    (((2, 3, 8, 8), (5, 3, 3, 3)), {"padding": "full"}, ember.ShapeError,
     r"conv2d: padding must be 'same', 'valid'"),
    (((2, 3, 8, 8), (5, 3, 3, 3)), {"padding": "same", "stride": 2}, ember.ShapeError,
     r"padding='same' is not supported for strided convolutions"),
    (((2, 3, 8, 8), (5, 3, 3, 3)), {"groups": 0}, ember.ShapeError, r"conv2d: groups must be a positive int"),
])
def test_conv2d_errors(args, kw, err, msg):
    if msg is None:  # (C, H, W) with a 3-channel weight is a valid unbatched input
        assert _conv_error((3, 8, 8), args[1]).shape == (5, 6, 6)
        return
    with pytest.raises(err, match=msg):
        _conv_error(*args, **kw)


def test_conv2d_dtype_errors():
    x, w = ember.ones(1, 2, 4, 4), ember.ones(3, 2, 3, 3)
    with pytest.raises(ember.DTypeError, match="conv2d: weight dtype float64 differs from input dtype float32"):
        linalg.conv2d(x, w.double())
    with pytest.raises(ember.DTypeError, match="conv2d: bias dtype float64 differs"):
        linalg.conv2d(x, w, ember.ones(3, dtype="float64"))
    with pytest.raises(ember.DTypeError, match="conv2d: expected floating tensors, got int64"):
        linalg.conv2d(x.long(), w.long())
    with pytest.raises(TypeError, match="conv2d: weight must be a Tensor, got ndarray"):
        linalg.conv2d(x, np.ones((3, 2, 3, 3)))


# ----------------------------------------------------------------------------- max_pool2d

MAXPOOL = [
    ("k2", (2, 3, 6, 6), {"kernel_size": 2}),
    ("k3s1_overlap", (1, 2, 5, 6), {"kernel_size": 3, "stride": 1}),
    ("k3s2p1", (2, 2, 7, 6), {"kernel_size": 3, "stride": 2, "padding": 1}),
    ("rect", (1, 3, 7, 8), {"kernel_size": (3, 2), "stride": (2, 1), "padding": (1, 1)}),
    ("dilation", (2, 1, 9, 8), {"kernel_size": 3, "stride": 2, "dilation": (2, 3), "padding": 1}),
    ("odd_ceil", (1, 2, 7, 9), {"kernel_size": 3, "stride": 2, "ceil_mode": True}),
    ("ceil_pad", (1, 2, 6, 8), {"kernel_size": (2, 3), "stride": (2, 2), "padding": (1, 1), "ceil_mode": True}),
]


@pytest.mark.parametrize("name,xs,kw", MAXPOOL, ids=[m[0] for m in MAXPOOL])
def test_max_pool2d(name, xs, kw):
    check_op(lambda L, x: F(L).max_pool2d(x, **kw), lambda x: max_pool2d_ref(x, **kw), [distinct(*xs)])


def test_max_pool2d_unbatched_and_return_indices():
    kw = {"kernel_size": 3, "stride": 2, "padding": 1, "dilation": (1, 2), "ceil_mode": True}
    check_op(lambda L, x: F(L).max_pool2d(x, return_indices=True, **kw),
             lambda x: (max_pool2d_ref(x[None], **kw)[0], _argmax_ref(x[None], **kw)[0]), [distinct(2, 7, 8)])
    check_op(lambda L, x: F(L).max_pool2d(x, 2, return_indices=True),
             lambda x: (max_pool2d_ref(x, 2), _argmax_ref(x, 2)), [distinct(2, 3, 4, 6, seed=1)])


def _argmax_ref(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Flat index (h * W + w) of each window's maximum, as PyTorch's return_indices."""
    (kh, kw), (sh, sw) = _pair(kernel_size), _pair(stride if stride is not None else kernel_size)
    (ph, pw), (dh, dw) = _pair(padding), _pair(dilation)
    n, c, h, w = x.shape
    oh, ow = _pool_out(h, kh, sh, ph, dh, ceil_mode), _pool_out(w, kw, sw, pw, dw, ceil_mode)
    out = np.zeros((n, c, oh, ow), dtype=np.int64)
    for a in range(n):
        for b in range(c):
            for y in range(oh):
                for z in range(ow):
                    best = None
                    for i in range(kh):
                        for j in range(kw):
                            r, q = y * sh - ph + i * dh, z * sw - pw + j * dw
                            if 0 <= r < h and 0 <= q < w and (best is None or x[a, b, r, q] > best[0]):
                                best = (x[a, b, r, q], r * w + q)
                    out[a, b, y, z] = best[1]
    return out


def test_max_pool2d_ties_send_the_gradient_to_the_first_maximum():
    # Every window is a tie: PyTorch sends each window's gradient to its first (row-major) element,
    # and overlapping windows add up. An evenly split gradient would give fractions instead.
    x = ember.zeros(1, 1, 4, 5, dtype="float64", requires_grad=True)
    linalg.max_pool2d(x, kernel_size=(2, 3), stride=1).sum().backward()
    want = np.zeros((4, 5))
    want[:3, :3] = 1
    np.testing.assert_array_equal(x.grad.data[0, 0], want)
    y = ember.tensor([[[[1.0, 3.0, 3.0], [3.0, 0.0, 3.0]]]], dtype="float64", requires_grad=True)
    out, idx = linalg.max_pool2d(y, 2, stride=1, return_indices=True)
    out.sum().backward()
    np.testing.assert_array_equal(idx.data.ravel(), [1, 1])
    np.testing.assert_array_equal(y.grad.data[0, 0], [[0, 2, 0], [0, 0, 0]])
    if torch is not None:
        t = torch.tensor(y.data, requires_grad=True)
        torch.nn.functional.max_pool2d(t, 2, stride=1).sum().backward()
        np.testing.assert_array_equal(t.grad.numpy(), y.grad.data)


def test_max_pool2d_padding_never_wins_and_integers():
    x = ember.full((1, 1, 3, 3), -5.0)
    np.testing.assert_array_equal(linalg.max_pool2d(x, 3, stride=1, padding=1).data, np.full((1, 1, 3, 3), -5.0))
    xi = ember.tensor(np.arange(-20, 16).reshape(1, 1, 6, 6))
    out = linalg.max_pool2d(xi, 2, padding=1)
    assert out.dtype is ember.int64
    np.testing.assert_array_equal(out.data, max_pool2d_ref(xi.data, 2, padding=1).astype(np.int64))


def test_max_pool2d_forward_mode_ignores_padding():
    x = distinct(1, 2, 5, 4)
    t = rand(1, 2, 5, 4, seed=3)
    _out, tangent = ember.jvp(lambda a: linalg.max_pool2d(a, 3, stride=2, padding=1),
                             (ember.tensor(x, dtype="float64"),), (ember.tensor(t, dtype="float64"),))
    eps = 1e-6
    fd = (max_pool2d_ref(x + eps * t, 3, 2, 1) - max_pool2d_ref(x - eps * t, 3, 2, 1)) / (2 * eps)
    np.testing.assert_allclose(tangent.data, fd, atol=1e-6)
    assert np.isfinite(tangent.data).all()


# ----------------------------------------------------------------------------- avg_pool2d

AVGPOOL = [
    ("k2", (2, 3, 6, 6), {"kernel_size": 2}),
    ("k3s1", (1, 2, 5, 6), {"kernel_size": 3, "stride": 1}),
    ("k3s2p1", (2, 2, 7, 6), {"kernel_size": 3, "stride": 2, "padding": 1}),
    ("exclude_pad", (2, 2, 7, 6), {"kernel_size": 3, "stride": 2, "padding": 1, "count_include_pad": False}),
    ("rect", (1, 3, 7, 8), {"kernel_size": (3, 2), "stride": (2, 1), "padding": (1, 1)}),
    ("ceil", (1, 2, 7, 9), {"kernel_size": 3, "stride": 2, "ceil_mode": True}),
    ("ceil_pad", (1, 2, 6, 8), {"kernel_size": (2, 3), "stride": 2, "padding": 1, "ceil_mode": True}),
    ("ceil_pad_exclude", (1, 2, 6, 8), {"kernel_size": (2, 3), "stride": 2, "padding": 1, "ceil_mode": True,
                                            "count_include_pad": False}),
    ("divisor", (1, 2, 5, 5), {"kernel_size": 2, "divisor_override": 3}),
]


@pytest.mark.parametrize("name,xs,kw", AVGPOOL, ids=[a[0] for a in AVGPOOL])
def test_avg_pool2d(name, xs, kw):
    check_op(lambda L, x: F(L).avg_pool2d(x, **kw), lambda x: avg_pool2d_ref(x, **kw), [rand(*xs, seed=1)])


def test_avg_pool2d_unbatched():
    check_op(lambda L, x: F(L).avg_pool2d(x, 2, 1, 1), lambda x: avg_pool2d_ref(x[None], 2, 1, 1)[0],
             [rand(3, 4, 5, seed=2)])


@pytest.mark.parametrize("fn,args,kw,err,msg", [
    ("max_pool2d", (5,), {"padding": 3}, ember.ShapeError,
     r"max_pool2d: padding \(3, 3\) must be at most half the kernel size \(5, 5\)"),
    ("avg_pool2d", (2,), {"padding": 2}, ember.ShapeError, r"avg_pool2d: padding \(2, 2\) must be at most half"),
    ("max_pool2d", (7,), {}, ember.ShapeError, r"max_pool2d: kernel \(7, 7\) .* is larger than the input 6x6"),
    ("max_pool2d", (0,), {}, ember.ShapeError, r"max_pool2d: kernel_size must be a positive int"),
    ("max_pool2d", (2,), {"stride": (1, 0)}, ember.ShapeError, r"max_pool2d: stride must be a positive int"),
    ("max_pool2d", (2,), {"ceil_mode": "yes"}, TypeError, r"max_pool2d: ceil_mode must be a bool"),
    ("avg_pool2d", (2,), {"divisor_override": 0}, ember.ShapeError, r"avg_pool2d: divisor_override must be"),
])
def test_pool_errors(fn, args, kw, err, msg):
    with pytest.raises(err, match=msg):
        getattr(linalg, fn)(ember.ones(1, 2, 6, 6), *args, **kw)


def test_pool_input_errors():
    with pytest.raises(ember.ShapeError, match=r"avg_pool2d: expected a 3-D \(C, H, W\) or 4-D"):
        linalg.avg_pool2d(ember.ones(6, 6), 2)
    with pytest.raises(ember.DTypeError, match="avg_pool2d: expected a floating tensor, got int64"):
        linalg.avg_pool2d(ember.ones(1, 1, 4, 4, dtype="int64"), 2)
    with pytest.raises(ember.DTypeError, match="max_pool2d: bool tensors are not supported"):
        linalg.max_pool2d(ember.ones(1, 1, 4, 4, dtype="bool"), 2)


# ----------------------------------------------------------------------------- unfold2d / fold2d


def test_unfold_fold_match_torch_functional():
    kw = {"kernel_size": (2, 3), "dilation": (1, 2), "padding": 1, "stride": (2, 1)}
    x = rand(2, 3, 6, 7, seed=1)
    n_cols = linalg.unfold(ember.tensor(x), **kw).shape[2]
    check_op(lambda L, x: F(L).unfold(x, **kw), None, [x])
    check_op(lambda L, c: F(L).fold(c, (6, 7), **kw), None, [rand(2, 3 * 6, n_cols, seed=2)])
    if torch is not None:
        np.testing.assert_allclose(linalg.unfold(ember.tensor(x), **kw).data,
                                   torch.nn.functional.unfold(torch.tensor(x), **kw).numpy())


def test_unfold_fold_primitives_are_adjoint():
    # <unfold(x), c> == <x, fold(c)>: each primitive is the other's vjp.
    attrs = {"kernel": (3, 2), "stride": (2, 1), "padding": (1, 2, 0, 1), "dilation": (1, 2)}
    x = ember.tensor(rand(2, 3, 7, 6, seed=1), dtype="float64")
    cols = ember.ops.apply(linalg.UNFOLD2D, x, pad_value=0, **attrs)
    assert cols.shape == (3, 3, 2, 2, 4, 5)
    c = ember.tensor(rand(*cols.shape, seed=2), dtype="float64")
    back = ember.ops.apply(linalg.FOLD2D, c, size=(7, 6), **attrs)
    assert back.shape == x.shape
    np.testing.assert_allclose((cols.data * c.data).sum(), (x.data * back.data).sum(), rtol=1e-12)
    check = ember.autograd.gradcheck
    x.requires_grad_(True)
    c.requires_grad_(True)
    assert check(lambda t: ember.ops.apply(linalg.UNFOLD2D, t, pad_value=0, **attrs), [x])
    assert check(lambda t: ember.ops.apply(linalg.FOLD2D, t, size=(7, 6), **attrs), [c])


def test_unfold_reads_any_input_layout():
    # A transposed (non-contiguous) input gives the same windows as its contiguous copy.
    base = rand(3, 2, 6, 5, seed=1)
    x = ember.tensor(base.transpose(1, 0, 2, 3).copy()).permute(1, 0, 2, 3)
    w = ember.tensor(rand(4, 2, 3, 3, seed=2))
    got = linalg.conv2d(x, w, padding=1).data
    np.testing.assert_allclose(got, conv2d_ref(base, w.data, padding=1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(linalg.conv2d(x, w).data, conv2d_ref(base, w.data), rtol=1e-4, atol=1e-4)


def test_fold_errors():
    with pytest.raises(ember.ShapeError, match=r"fold: input of shape \(1, 6, 5\) does not match output_size"):
        linalg.fold(ember.ones(1, 6, 5), (4, 4), 2)
    with pytest.raises(ember.ShapeError, match="unfold2d: expected a 4-D input"):
        ember.ops.apply(linalg.UNFOLD2D, ember.ones(2, 3, 4), kernel=(2, 2), stride=(1, 1), padding=(0, 0, 0, 0),
                        dilation=(1, 1), pad_value=0)


def test_small_cnn_end_to_end():
    # conv -> relu -> max pool -> grouped conv -> avg pool -> flatten -> linear, against PyTorch:
    # the CNHW-physical views conv2d returns flow through other ops and back correctly.
    def net(L, x, w1, b1, w2, w3):
        f = F(L)
        h = f.max_pool2d(L.relu(f.conv2d(x, w1, b1, padding=1)), 2)
        h = f.avg_pool2d(f.conv2d(h, w2, stride=1, padding="same", groups=2), 2, ceil_mode=True)
        return L.matmul(h.reshape(h.shape[0], -1), w3).tanh()

    arrays = [rand(2, 3, 8, 7, seed=1), rand(4, 3, 3, 3, seed=2) * 0.5, rand(4, seed=3),
              rand(6, 2, 3, 3, seed=4) * 0.5, rand(6 * 2 * 2, 5, seed=5) * 0.3]
    check_op(net, None, arrays, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- matmul(out=)

@pytest.mark.parametrize("sa,sb", [((4, 5), (5, 3)), ((5,), (5, 3)), ((4, 5), (5,)), ((2, 4, 5), (5, 3)),
                                   ((2, 1, 4, 5), (3, 5, 2))])
def test_matmul_out_writes_in_place(sa, sb):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(sa).astype(np.float32), rng.standard_normal(sb).astype(np.float32)
    want = a @ b
    out = ember.empty(*want.shape)
    storage, version = out.data, out._version[0]
    result = ember.matmul(ember.tensor(a), ember.tensor(b.T).T if b.ndim == 2 else ember.tensor(b), out=out)
    assert result is out and out.data is storage and out._version[0] == version + 1
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5)


def test_matmul_out_errors():
    a, b = ember.randn(4, 5), ember.randn(5, 3)
    msg = r"matmul: out has shape \(3, 3\), but \(4, 5\) @ \(5, 3\) gives \(4, 3\)"
    with pytest.raises(ember.ShapeError, match=msg):
        ember.matmul(a, b, out=ember.empty(3, 3))
    with pytest.raises(ember.DTypeError, match="matmul: out has dtype float64, but the product is float32"):
        ember.matmul(a, b, out=ember.empty(4, 3, dtype="float64"))
    with pytest.raises(ember.ShapeError, match="inner dimensions differ"):
        ember.matmul(a, a, out=ember.empty(4, 5))
    with pytest.raises(TypeError, match="matmul: out must be a Tensor, got ndarray"):
        ember.matmul(a, b, out=np.empty((4, 3), np.float32))
    with pytest.raises(ember.AutogradError, match="out= does not support automatic differentiation"):
        ember.matmul(a.requires_grad_(), b, out=ember.empty(4, 3))
    with ember.no_grad():
        ember.matmul(a, b, out=ember.empty(4, 3))  # fine without recording


def test_max_pool2d_second_order_gradients_match_finite_differences():
    x = ember.tensor(distinct(1, 2, 6, 6, seed=3), dtype=ember.float64, requires_grad=True)

    def first_grad_norm(t):
        (g,) = ember.grad((linalg.max_pool2d(t, 3, stride=2, padding=1) ** 2).sum(), [t], create_graph=True)
        return (g * g).sum()

    ember.autograd.gradcheck(first_grad_norm, [x])


@pytest.mark.parametrize("kw", [{"kernel_size": 3, "stride": 1, "dilation": 2}, {"kernel_size": 2, "ceil_mode": True},
                                {"kernel_size": (3, 2), "stride": (2, 1), "padding": (1, 0)}])
def test_max_pool2d_overlapping_windows_with_ties_match_torch(kw):
    # many ties (a coarse grid of values) in overlapping windows: each window's gradient goes to its first maximum
    a = np.random.default_rng(5).integers(0, 3, size=(2, 3, 7, 9)).astype(np.float32)
    x = ember.tensor(a, requires_grad=True)
    out = linalg.max_pool2d(x, **kw)
    out.backward(ember.tensor(np.arange(out.numel(), dtype=np.float32).reshape(out.shape)))
    if torch is None:
        pytest.skip("torch not installed")
    t = torch.tensor(a, requires_grad=True)
    ref = torch.nn.functional.max_pool2d(t, **kw)
    ref.backward(torch.arange(ref.numel(), dtype=torch.float32).reshape(ref.shape))
    np.testing.assert_array_equal(out.detach().numpy(), ref.detach().numpy())
    np.testing.assert_array_equal(x.grad.numpy(), t.grad.numpy())


def test_max_pool2d_nan_wins_its_window():
    a = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    a[0, 0, 1, 0] = np.nan
    x = ember.tensor(a, requires_grad=True)
    out = linalg.max_pool2d(x, 2)
    assert np.isnan(out.detach().numpy()[0, 0, 0, 0]) and out.detach().numpy()[0, 0, 1, 1] == 15
    out.sum().backward()
    g = x.grad.numpy()[0, 0]
    assert g[1, 0] == 1 and g[1, 1] == 0 and g.sum() == 4
