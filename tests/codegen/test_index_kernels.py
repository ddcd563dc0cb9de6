"""The C index/window kernels against the NumPy code of the ops they replace: bit-identical results."""

import ctypes

import numpy as np
import pytest

import ember
from ember.codegen import cc
from ember.codegen import index_kernels as ik
from ember.errors import EmberIndexError
from ember.ops import linalg, movement, reduce, sparse_ops

FLOATS = [np.float32, np.float64]
INTS = [np.int32, np.int64]


@pytest.fixture(autouse=True)
def kernels_on():
    old = ik.set_enabled(True)
    yield
    ik.set_enabled(old)


def numpy_path(impl, *args, **kwargs):
    """The op's reference impl with the C kernels switched off."""
    old = ik.set_enabled(False)
    try:
        return impl(np, *args, **kwargs)
    finally:
        ik.set_enabled(old)


def same(a, b):
    assert a is not None and b is not None
    assert a.shape == b.shape and a.dtype == b.dtype
    assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


def rand(rng, shape, dtype):
    x = rng.standard_normal(shape).astype(dtype)
    x.flat[::7] *= dtype(1e-6)  # magnitudes far apart: a different summation order shows in the bits
    return x


# ----------------------------------------------------------------------------- im2col / col2im

GEOMETRIES = [  # (N, C, H, W), kernel, stride, padding (t, b, l, r), dilation
    ((2, 3, 7, 9), (3, 2), (1, 2), (1, 0, 2, 1), (1, 2)),
    ((3, 2, 5, 5), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),
    ((1, 1, 4, 4), (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),
    ((2, 4, 11, 13), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    ((2, 3, 1, 1), (3, 3), (1, 1), (2, 2, 2, 2), (1, 1)),     # more padding than input
    ((0, 3, 6, 6), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1)),     # empty batch
    ((2, 2, 6, 5), (2, 3), (3, 1), (0, 1, 0, 2), (2, 1)),
]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("geom", GEOMETRIES)
def test_unfold_fold_match_numpy(dtype, geom):
    shape, k, s, p, d = geom
    rng = np.random.default_rng(0)
    x = rand(rng, shape, dtype)
    layouts = [x, x.transpose(1, 0, 2, 3).copy().transpose(1, 0, 2, 3), x[:, :, ::-1]]  # NCHW, CNHW, flipped
    for view in layouts:
        for pad_value in (0, -np.inf):
            same(linalg._unfold_impl(np, view, k, s, p, d, pad_value),
                 numpy_path(linalg._unfold_impl, view, k, s, p, d, pad_value))
    oh, ow = linalg._geometry(shape, k, s, p, d)
    cols = rand(rng, (shape[1], k[0], k[1], shape[0], oh, ow), dtype)
    for view in (cols, cols.transpose(3, 0, 1, 2, 4, 5).copy().transpose(1, 2, 3, 0, 4, 5)):
        same(linalg._fold_impl(np, view, shape[2:], k, s, p, d),
             numpy_path(linalg._fold_impl, view, shape[2:], k, s, p, d))


def test_conv2d_gradients_match_numpy_path():
    rng = np.random.default_rng(1)
    xd, wd = rand(rng, (3, 4, 9, 8), np.float32), rand(rng, (5, 4, 3, 3), np.float32)

    def grads():
        x = ember.tensor(xd, requires_grad=True)
        w = ember.tensor(wd, requires_grad=True)
        y = ember.nn.functional.conv2d(x, w, padding=1, stride=(2, 1))
        (y * y).sum().backward()
        return y.detach().numpy(), x.grad.numpy(), w.grad.numpy()

    fast = grads()
    ik.set_enabled(False)
    slow = grads()
    for a, b in zip(fast, slow):
        same(a, b)


# ----------------------------------------------------------------------------- max pooling

POOLS = [  # (N, C, H, W), kernel, stride, padding (t, b, l, r), dilation
    ((2, 3, 8, 8), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1)),     # disjoint, tiled
    ((2, 3, 7, 9), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),     # overlapping: up to 9 terms per element
    ((1, 2, 9, 8), (3, 2), (2, 1), (1, 1, 0, 1), (2, 2)),     # dilated
    ((3, 1, 5, 6), (2, 3), (3, 2), (1, 0, 1, 1), (1, 1)),     # ceil-mode style: windows into the padding
    ((0, 2, 4, 4), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1)),     # empty batch
]


@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("geom", POOLS + [((2, 2, 9, 6), (3, 3), (3, 3), (0, 0, 0, 0), (1, 1)),
                                          ((2, 3, 11, 11), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1)),   # a row and
                                          ((2, 2, 10, 11), (3, 3), (3, 3), (0, 0, 0, 0), (1, 1)),   # column left
                                          ((2, 3, 6, 38), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1)),    # 2x2 rows of
                                          ((1, 2, 4, 32), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1))])   # whole vectors
def test_max_pool_forward_and_backward_match_numpy(dtype, geom, strided):
    """Same values as the NumPy path: ties go to the first maximum, NaN is the maximum, -inf windows and
    windows into the padding work; x and g may be strided views."""
    shape, k, s, p, d = geom
    rng = np.random.default_rng(sum(shape))
    x = np.round(rng.standard_normal(shape) * 2).astype(dtype)  # few distinct values: many ties
    if x.size:
        x.flat[5] = np.nan
        x.flat[::11] = -np.inf
        x.flat[-3] = np.nan
    if strided:
        x = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)  # strided in H and W
    oh, ow = linalg._geometry(shape, k, s, p, d)
    out = linalg._maxpool_impl(np, x, k, s, p, d, (oh, ow))
    ref = numpy_path(linalg._maxpool_impl, x, k, s, p, d, (oh, ow))
    np.testing.assert_array_equal(out, ref)
    g = rng.standard_normal((shape[1], shape[0], oh, ow)).astype(dtype)
    g = g.transpose(1, 0, 2, 3) if strided else np.ascontiguousarray(g.transpose(1, 0, 2, 3))
    grad = linalg._maxpool_backward_impl(np, g, x, ref, k, s, p, d, (oh, ow))
    want = numpy_path(linalg._maxpool_backward_impl, g, x, ref, k, s, p, d, (oh, ow))
    assert grad.shape == want.shape and grad.dtype == want.dtype
    np.testing.assert_array_equal(grad, want)  # the order of the terms is NumPy's: equal, not just close


@pytest.mark.parametrize("dtype", FLOATS)
def test_max_pool_backward_scalar_fallback_matches_the_vector_path(dtype):
    """Compilers without __builtin_shufflevector get the scalar 2x2 loop: built here with EK_NO_VECTOR, it gives
    the same gradients as the vector path (ties, NaN, -inf, a row tail)."""
    if not cc.available():
        pytest.skip("no C compiler")
    tag = ik._DATA[np.dtype(dtype)][1]
    scalar = cc.load("#define EK_NO_VECTOR 1\n" + ik.source(dtype), f"index_kernels_{tag}_scalar")
    f = scalar.function(f"ek_maxpool_bwd_{tag}", 4, 26)
    f.restype = ctypes.c_int64
    rng = np.random.default_rng(3)
    x = np.round(rng.standard_normal((2, 3, 6, 38)) * 2).astype(dtype)
    x.flat[5], x.flat[-3], x.flat[::11] = np.nan, np.nan, -np.inf
    out = numpy_path(linalg._maxpool_impl, x, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), (3, 19))
    g = rng.standard_normal(out.shape).astype(dtype)
    want = linalg._maxpool_backward_impl(np, g, x, out, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), (3, 19))
    got = np.empty_like(x)
    strides = [s // x.itemsize for a in (x, g, out) for s in a.strides]
    assert f(*(a.ctypes.data for a in (got, g, x, out)), 2, 3, 6, 38, 2, 2, 2, 2, 0, 0, 1, 1, 3, 19, *strides) == 0
    np.testing.assert_array_equal(got, want)


def test_max_pool2d_module_gradients_match_numpy_path():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 12, 12)).astype(np.float32)

    def run():
        t = ember.tensor(x, requires_grad=True)
        y = ember.nn.functional.max_pool2d(t, 3, stride=2, padding=1)
        (y * y).sum().backward()
        return y.detach().numpy(), t.grad.numpy()
    got = run()
    old = ik.set_enabled(False)
    try:
        want = run()
    finally:
        ik.set_enabled(old)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- take / index_add


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("itype", INTS)
def test_index_add_matches_numpy(dtype, itype):
    rng = np.random.default_rng(2)
    x = rand(rng, (3, 7, 5), dtype)
    for axis in range(3):
        n = x.shape[axis]
        for k in (0, 1, 9, 300):  # 300: index_add's NumPy path groups rows instead of np.add.at
            idx = rng.integers(-n, n, k).astype(itype)  # duplicates and negatives
            src = rand(rng, x.shape[:axis] + (k,) + x.shape[axis + 1:], dtype)
            expect = x.copy()
            np.add.at(expect, (slice(None),) * axis + (idx,), src)
            got = movement._index_add_impl(np, x, idx, src, axis)
            same(got, expect)
            if k < 256:
                same(got, numpy_path(movement._index_add_impl, x, idx, src, axis))
    zero = np.broadcast_to(np.zeros((), dtype), (50, 3))  # take's gradient seed
    idx = rng.integers(0, 50, 400).astype(itype)
    src = rand(rng, (400, 3), dtype)
    expect = np.zeros((50, 3), dtype)
    np.add.at(expect, idx, src)
    same(movement._index_add_impl(np, zero, idx, src, 0), expect)


def test_index_add_out_of_range():
    x, src = np.ones((4, 3), np.float32), np.ones((2, 3), np.float32)
    for bad in ([0, 4], [-5, 1]):
        assert ik.index_add(x, np.array(bad), src, 0) is None
        with pytest.raises(EmberIndexError, match=r"index_add: index .* is out of range"):
            movement._index_add_impl(np, x, np.array(bad), src, 0)
    w = ember.tensor(x, requires_grad=True)
    ember.index_select(w, 0, [1, 3, 3]).sum().backward()  # take's gradient is index_add
    same(w.grad.numpy(), np.array([[0] * 3, [1] * 3, [0] * 3, [2] * 3], np.float32))


# ----------------------------------------------------------------------------- gather / scatter_add


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("itype", INTS)
def test_gather_scatter_add_match_numpy(dtype, itype):
    rng = np.random.default_rng(3)
    x = rand(rng, (4, 6, 700), dtype)  # inner 700: more than one block of columns
    for axis in range(3):
        for k in (0, 1, 5):
            shape = list(x.shape)
            shape[axis] = k
            idx = rng.integers(-x.shape[axis], x.shape[axis], shape).astype(itype)
            same(movement._gather_impl(np, x, idx, axis), numpy_path(movement._gather_impl, x, idx, axis))
            src = rand(rng, tuple(shape), dtype)
            same(movement._scatter_add_impl(np, x, idx, src, axis),
                 numpy_path(movement._scatter_add_impl, x, idx, src, axis))
    # src larger than index (PyTorch allows it): only its leading part is added
    idx = rng.integers(0, 4, (2, 6, 700)).astype(itype)
    src = rand(rng, (3, 6, 700), dtype)
    same(movement._scatter_add_impl(np, x, idx, src, 0), numpy_path(movement._scatter_add_impl, x, idx, src, 0))


def test_gather_out_of_range_and_cross_entropy():
    x = np.zeros((3, 4), np.float32)
    assert ik.gather(x, np.array([[0], [4], [1]]), 1) is None
    assert ik.scatter_add(x, np.array([[0], [-5], [1]]), np.ones((3, 1), np.float32), 1) is None
    with pytest.raises(EmberIndexError, match="gather"):
        movement._gather_impl(np, x, np.array([[0], [4], [1]]), 1)
    rng = np.random.default_rng(4)
    logits, target = rand(rng, (16, 10), np.float32), rng.integers(0, 10, 16)

    def loss_and_grad():
        z = ember.tensor(logits, requires_grad=True)
        loss = ember.nn.functional.cross_entropy(z, ember.tensor(target))
        loss.backward()
        return loss.detach().numpy(), z.grad.numpy()

    fast = loss_and_grad()
    ik.set_enabled(False)
    for a, b in zip(fast, loss_and_grad()):
        same(a, b)


# ----------------------------------------------------------------------------- scatter_rows / segment_sum


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("itype", INTS)
@pytest.mark.parametrize("num,shape", [(10, (50, 3)), (7, (1000, 16)), (5, (300,)), (3, (0, 5)), (4, (1, 2)),
                                       (2, (3000, 4)), (9, (40, 2, 3))])
def test_scatter_rows_matches_numpy(dtype, itype, num, shape):
    rng = np.random.default_rng(5)
    g = rand(rng, shape, dtype)
    ids = rng.integers(0, num, shape[0]).astype(itype)  # 3000 ids over 2 rows: pairwise sums recurse
    same(sparse_ops._scatter_rows_impl(np, g, ids, num), numpy_path(sparse_ops._scatter_rows_impl, g, ids, num))


def test_scatter_rows_signed_zeros_and_errors():
    g = np.array([[-0.0, 1.0], [-0.0, -0.0], [2.0, -0.0]], np.float32)
    ids = np.array([1, 1, 0])
    same(sparse_ops._scatter_rows_impl(np, g, ids, 3), numpy_path(sparse_ops._scatter_rows_impl, g, ids, 3))
    for bad in ([0, 3, 1], [0, -1, 1]):
        assert ik.scatter_rows(g, np.array(bad), 3) is None
        with pytest.raises(EmberIndexError, match="scatter_rows"):
            sparse_ops._scatter_rows_impl(np, g, np.array(bad), 3)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("itype", INTS)
def test_segment_sum_matches_numpy(dtype, itype):
    rng = np.random.default_rng(6)
    cases = [((100, 4), [0, 10, 10, 40, 41, 99]),   # empty and one-row segments
             ((20000, 3), [0]),                       # one long segment
             ((37,), [0, 5, 30]),                     # 1-D rows
             ((0, 2), [0, 0]),                        # no rows
             ((12, 2, 3), [0, 1, 2, 3, 4, 12]),
             ((5, 3), [])]
    for shape, off in cases:
        x = rand(rng, shape, dtype)
        offsets = np.array(off, dtype=itype)
        same(sparse_ops._segment_sum_impl(np, x, offsets, None),
             numpy_path(sparse_ops._segment_sum_impl, x, offsets, None))
    x = rand(rng, (10, 2), dtype)
    for bad in ([0, 5, 3], [0, 11], [-1, 2]):
        assert ik.segment_sum(x, np.array(bad, dtype=itype)) is None


def test_embedding_bag_gradient_matches_numpy_path():
    rng = np.random.default_rng(7)
    table = rand(rng, (30, 8), np.float32)
    ids, offsets = rng.integers(0, 30, 200), np.array([0, 3, 3, 50, 120])

    def run():
        w = ember.tensor(table, requires_grad=True)
        rows = sparse_ops.embed_rows(w, ids)
        out = sparse_ops.segment_sum(rows, offsets)
        (out * out).sum().backward()
        return out.detach().numpy(), w.grad.numpy()

    fast = run()
    ik.set_enabled(False)
    for a, b in zip(fast, run()):
        same(a, b)


# ----------------------------------------------------------------------------- argmax / argmin


@pytest.mark.parametrize("dtype", FLOATS)
def test_argmax_argmin_match_numpy(dtype):
    rng = np.random.default_rng(8)
    for shape, axis in [((3, 7, 5), 1), ((4, 9, 2, 3), 0), ((6, 600), 0), ((2, 3, 1000), -2), ((5, 1, 4), 1)]:
        x = rng.integers(-3, 3, shape).astype(dtype)  # ties: the first one wins
        x.flat[rng.integers(0, x.size, 3)] = np.nan   # NaN: the first NaN wins
        for keepdim in (False, True):
            for name in ("argmax", "argmin"):
                impl = reduce._arg_impl(name)
                same(impl(np, x, axis, keepdim), numpy_path(impl, x, axis, keepdim))


# ----------------------------------------------------------------------------- fallbacks and caching


def test_unsupported_inputs_fall_back():
    x = np.arange(12).reshape(3, 4)
    src = np.ones((1, 4))
    assert ik.index_add(x, np.array([0]), src.astype(x.dtype), 0) is None              # integer data
    assert ik.index_add(x.astype(np.float16), np.array([0]), src.astype(np.float16), 0) is None
    assert ik.index_add(x.astype(np.float32), np.array([0], np.uint8), src.astype(np.float32), 0) is None
    assert ik.index_add(x.astype(np.float32), np.array([0]), src, 0) is None          # mixed float dtypes
    assert ik.argext(x.astype(np.float32), 1, False, True) is None     # last axis: NumPy is fast there
    assert ik.gather(x.astype(np.float32), np.zeros((2, 4), np.int64), 1) is None  # index smaller outside axis
    ik.set_enabled(False)
    assert ik.index_add(x.astype(np.float32), np.array([0]), src.astype(np.float32), 0) is None


def test_one_library_per_dtype_is_cached():
    lib = ik.library(np.float32)
    assert lib is not None and ik.library(np.float32) is lib
    before = cc.STATS["memory_hits"]
    again = cc.load(ik.source(np.float32))
    assert again is lib and cc.STATS["memory_hits"] == before + 1
    assert "ek_gather_f32_i32" in ik.source(np.float32) and "ek_gather_f64_i64" in ik.source(np.float64)
