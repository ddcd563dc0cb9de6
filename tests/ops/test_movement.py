import numpy as np
import pytest

import ember
from ember.ops import movement
from ember.tensor import _METHODS
from tests.helpers import check_op, rand, torch

if torch is not None:
    import torch.nn.functional as TF
else:  # pragma: no cover
    TF = None


def M(L):
    """The module holding the function for library ``L`` (ember's movement module, or torch)."""
    return movement if L is ember else L


def F(L):
    """``torch.nn.functional`` for torch, ember's movement module for ember."""
    return movement if L is ember else TF


def np_pad(x, pad, value=0.0):
    widths = [(0, 0)] * x.ndim
    for i in range(len(pad) // 2):
        widths[x.ndim - 1 - i] = (pad[2 * i], pad[2 * i + 1])
    crop = tuple(slice(max(-b, 0), n - max(-a, 0)) for (b, a), n in zip(widths, x.shape))
    return np.pad(x[crop], [(max(b, 0), max(a, 0)) for b, a in widths], constant_values=value)


# ----------------------------------------------------------------------------- cat / stack


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_cat(dim):
    shapes = {0: [(1, 3, 2), (2, 3, 2), (3, 3, 2)], 1: [(2, 1, 2), (2, 3, 2), (2, 2, 2)],
              -1: [(2, 3, 1), (2, 3, 2), (2, 3, 3)]}[dim]
    arrays = [rand(*s, seed=i) for i, s in enumerate(shapes)]
    check_op(lambda L, a, b, c: M(L).cat([a, b, c], dim), lambda a, b, c: np.concatenate([a, b, c], dim), arrays)


def test_cat_aliases_promotion_and_empty_pieces():
    a, b = ember.tensor([[1, 2]]), ember.tensor([[0.5, 1.5]])
    out = movement.concatenate((a, b))
    assert out.dtype is ember.float32 and out.shape == (2, 2)
    assert movement.concat([a, a], dim=1).shape == (1, 4)
    e = ember.zeros(0, 2)
    np.testing.assert_array_equal(movement.cat([e, b, e]).data, b.data)


def test_cat_errors():
    with pytest.raises(ember.ShapeError, match="non-empty"):
        movement.cat([])
    with pytest.raises(TypeError, match="element 1 is int"):
        movement.cat([ember.ones(2), 3])
    with pytest.raises(TypeError, match="list or tuple"):
        movement.cat(ember.ones(2))
    with pytest.raises(ember.ShapeError, match=r"concat: tensor 1 has 3 dims \(shape \(2, 3, 1\)\)"):
        movement.cat([ember.ones(2, 3), ember.ones(2, 3, 1)])
    with pytest.raises(ember.ShapeError, match=r"except in dimension 0.*\(2, 4\).*\(2, 3\) \(dimension 1 differs\)"):
        movement.cat([ember.ones(2, 3), ember.ones(2, 4)])
    with pytest.raises(ember.ShapeError, match="zero-dimensional"):
        movement.cat([ember.tensor(1.0), ember.tensor(2.0)])
    with pytest.raises(ember.EmberIndexError, match="dim 2 is out of range"):
        movement.cat([ember.ones(2, 3)], dim=2)


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_stack(dim):
    arrays = [rand(2, 3, seed=i) for i in range(3)]
    check_op(lambda L, a, b, c: M(L).stack([a, b, c], dim), lambda a, b, c: np.stack([a, b, c], dim), arrays)


def test_stack_errors():
    with pytest.raises(ember.ShapeError, match=r"stack: .*tensor 0 has shape \(2, 3\) and tensor 1 has shape \(3, 2\)"):
        movement.stack([ember.ones(2, 3), ember.ones(3, 2)])
    with pytest.raises(ember.EmberIndexError, match="dim 3 is out of range"):
        movement.stack([ember.ones(2, 3)], dim=3)


# ----------------------------------------------------------------------------- split / chunk / unbind / narrow


@pytest.mark.parametrize("size,dim", [(2, 0), (3, 1), ([1, 3, 1], 1), ((2, 0, 3), 0), (5, 0)])
def test_split(size, dim):
    x = rand(5, 5)
    sections = np.cumsum([size] * (5 // size) if isinstance(size, int) else size)[:-1] \
        if not isinstance(size, int) else np.arange(size, 5, size)
    check_op(lambda L, a: M(L).split(a, size, dim), lambda a: np.split(a, sections, axis=dim), [x])


def test_split_views_and_method():
    x = ember.arange(12).reshape(3, 4)
    parts = x.split(2, dim=1)
    assert [p.shape for p in parts] == [(3, 2), (3, 2)]
    assert parts[1]._version is x._version and np.shares_memory(parts[1].data, x.data)
    assert movement.split(ember.zeros(0, 2), 3)[0].shape == (0, 2)


def test_split_errors():
    x = ember.ones(4, 3)
    with pytest.raises(ember.ShapeError, match=r"section sizes \(1, 2\) must be non-negative and sum to the size 4"):
        movement.split(x, [1, 2])
    with pytest.raises(ember.ShapeError, match="split_size must be a positive int, got 0"):
        movement.split(x, 0)
    with pytest.raises(TypeError, match="int or a list of ints"):
        movement.split(x, 1.5)


@pytest.mark.parametrize("n,chunks", [(6, 3), (7, 3), (5, 4), (2, 5), (1, 1)])
def test_chunk(n, chunks):
    x = rand(n, 2)
    size = -(-n // chunks)
    check_op(lambda L, a: M(L).chunk(a, chunks, 0), lambda a: np.split(a, np.arange(size, n, size)), [x])


def test_chunk_errors():
    with pytest.raises(ember.ShapeError, match="chunks must be a positive int, got 0"):
        movement.chunk(ember.ones(3), 0)


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_unbind(dim):
    x = rand(2, 3, 4)
    check_op(lambda L, a: M(L).unbind(a, dim), lambda a: [np.take(a, i, axis=dim) for i in range(a.shape[dim])], [x])


def test_zero_dim_errors():
    for fn in (lambda t: movement.unbind(t), lambda t: movement.split(t, 1), lambda t: movement.chunk(t, 1),
               lambda t: movement.narrow(t, 0, 0, 1), lambda t: movement.index_select(t, 0, [0]),
               lambda t: movement.index_add(t, 0, [0], t)):
        with pytest.raises(ember.ShapeError, match=r"zero-dimensional|at least one dimension"):
            fn(ember.tensor(3.0))


@pytest.mark.parametrize("dim,start,length", [(0, 1, 2), (1, -3, 2), (1, 0, 0), (0, 4, 0)])
def test_narrow(dim, start, length):
    x = rand(4, 5)
    s = start % x.shape[dim] if start < 0 else start
    check_op(lambda L, a: M(L).narrow(a, dim, start, length),
             lambda a: np.take(a, np.arange(s, s + length), axis=dim), [x])


def test_narrow_errors():
    x = ember.ones(4, 5)
    with pytest.raises(ember.EmberIndexError, match="start 6 is out of range for dimension 1 with size 5"):
        movement.narrow(x, 1, 6, 1)
    with pytest.raises(ember.ShapeError, match="start 3 \\+ length 3 exceeds dimension 1 of size 5"):
        movement.narrow(x, 1, 3, 3)
    with pytest.raises(TypeError, match="start must be an int"):
        movement.narrow(x, 1, 1.0, 1)


# ----------------------------------------------------------------------------- pad / flip / repeat


@pytest.mark.parametrize("pad,value", [((1, 2), 0.0), ((0, 1, 2, 0), 1.5), ((1, 1, 1, 1, 1, 1), -1.0),
                                       ((-1, 2), 0.0), ((2, -3, -1, 0), 0.0), ((0, 0), 0.0)])
def test_pad_constant(pad, value):
    x = rand(2, 3, 4)
    check_op(lambda L, a: F(L).pad(a, pad, value=value), lambda a: np_pad(a, pad, value), [x])


@pytest.mark.parametrize("mode,pad,shape", [("reflect", (2, 1), (2, 3, 4)), ("reflect", (1, 2, 2, 0), (1, 2, 3, 4)),
                                            ("replicate", (2, 3), (2, 3, 4)), ("replicate", (1, 0, 0, 2), (1, 2, 3, 4)),
                                            ("circular", (3, 1), (2, 3, 4)), ("circular", (1, 2, 3, 0), (1, 2, 3, 4))])
def test_pad_modes(mode, pad, shape):
    x = rand(*shape)
    np_mode = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}[mode]

    def ref(a):
        widths = [(0, 0)] * a.ndim
        for i in range(len(pad) // 2):
            widths[a.ndim - 1 - i] = (pad[2 * i], pad[2 * i + 1])
        return np.pad(a, widths, mode=np_mode)
    check_op(lambda L, a: F(L).pad(a, pad, mode=mode), ref, [x])


def test_pad_int_dtype_jvp_and_double_backward():
    x = ember.tensor([[1, 2], [3, 4]])
    out = movement.pad(x, (1, 0), value=7)
    assert out.dtype is ember.int64
    np.testing.assert_array_equal(out.data, [[7, 1, 2], [7, 3, 4]])
    a = ember.tensor(rand(3), dtype="float64")
    _, t = ember.jvp(lambda v: movement.pad(v, (1, 1), value=5.0), [a], [ember.ones_like(a)])
    np.testing.assert_array_equal(t.data, [0, 1, 1, 1, 0])  # the fill value is a constant
    a.requires_grad_()
    (g,) = ember.grad((movement.pad(a, (2, 1)) ** 3).sum(), a, create_graph=True)
    (h,) = ember.grad(g.sum(), a)
    np.testing.assert_allclose(h.data, 6 * a.data)


def test_pad_errors():
    x = ember.ones(2, 3)
    with pytest.raises(ember.ShapeError, match=r"padding \(1, 2, 3\) must have an even length"):
        movement.pad(x, (1, 2, 3))
    with pytest.raises(ember.ShapeError, match="at most 2 \\* ndim = 4"):
        movement.pad(x, (1,) * 6)
    with pytest.raises(ember.ShapeError, match=r"padding \(-2, -2\) crops more than the size 3 of dimension 1"):
        movement.pad(x, (-2, -2))
    with pytest.raises(ValueError, match="unknown mode 'mirror'"):
        movement.pad(x, (1, 1), mode="mirror")
    with pytest.raises(ember.ShapeError, match="reflect padding \\(3, 0\\) of dimension 1 must be at most 2"):
        movement.pad(x, (3, 0), mode="reflect")
    with pytest.raises(ember.ShapeError, match="negative padding"):
        movement.pad(x, (-1, 0), mode="circular")
    with pytest.raises(TypeError, match="pad must be a tuple of ints"):
        movement.pad(x, 1)


@pytest.mark.parametrize("dims", [(0,), (1,), (0, 2), (-1,), (0, 1, 2)])
def test_flip(dims):
    x = rand(2, 3, 4)
    check_op(lambda L, a: M(L).flip(a, dims), lambda a: np.flip(a, dims), [x])


def test_flip_method_and_errors():
    x = ember.arange(6).reshape(2, 3)
    np.testing.assert_array_equal(x.flip(1).data, [[2, 1, 0], [5, 4, 3]])
    np.testing.assert_array_equal(x.flip(0, 1).data, [[5, 4, 3], [2, 1, 0]])
    assert not np.shares_memory(x.flip(1).data, x.data)  # a copy, as in PyTorch (x[:, ::-1] is the view)
    with pytest.raises(ember.ShapeError, match="repeats a dimension"):
        movement.flip(x, (1, -1))
    with pytest.raises(ember.EmberIndexError, match="dim 2 is out of range"):
        movement.flip(x, 2)


@pytest.mark.parametrize("shape,reps", [((2, 3), (2, 1)), ((2, 3), (1, 3, 2)), ((3,), (2, 2)), ((2, 1, 2), (1, 2, 3))])
def test_repeat(shape, reps):
    x = rand(*shape)
    check_op(lambda L, a: a.repeat(*reps), lambda a: np.tile(a, reps), [x])


def test_repeat_errors():
    with pytest.raises(ember.ShapeError, match=r"1 repeat counts \(2,\) given for a tensor of shape \(2, 3\)"):
        ember.ones(2, 3).repeat(2)
    with pytest.raises(ember.ShapeError, match="non-negative"):
        ember.ones(2).repeat(-1)
    assert ember.ones(2).repeat(0).shape == (0,)


# ----------------------------------------------------------------------------- take / index_select / index_add


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_index_select(dim):
    x = rand(4, 5, 3)
    idx = np.array([2, 0, 2, -1]) if dim != -1 else np.array([1, 1])
    check_op(lambda L, a, i: M(L).index_select(a, dim, i % a.shape[dim]),
             lambda a, i: np.take(a, i, axis=dim), [x, idx])


def test_index_select_errors():
    x = ember.ones(3, 4)
    with pytest.raises(ember.EmberIndexError, match=r"take: index 4 is out of range for dimension 1 with size 4 "
                                                     r"\(input shape \(3, 4\)"):
        movement.index_select(x, 1, ember.tensor([0, 4]))
    with pytest.raises(ember.DTypeError, match="index must be an integer tensor, got float32"):
        movement.index_select(x, 1, ember.tensor([0.0]))
    with pytest.raises(ember.ShapeError, match=r"index must be 0-D or 1-D, got shape \(1, 1\)"):
        movement.index_select(x, 0, ember.tensor([[0]]))
    assert movement.index_select(x, 0, ember.tensor(1)).shape == (1, 4)


@pytest.mark.parametrize("dim,index", [(0, [[0, 2], [1, 2], [-1, 0]]), (1, [3, 3, 0]), (2, 1), (None, [5, 0, -2])])
def test_take(dim, index):
    x = rand(3, 4, 2)
    idx = np.array(index)
    check_op(lambda L, a: movement.take(a, ember.tensor(idx), dim), lambda a: np.take(a, idx, axis=dim), [x],
             torch_check=False)
    if dim is None and torch is not None:  # torch.take is the flattened form
        check_op(lambda L, a, i: M(L).take(a, i), None, [x, idx], grad=False)


def test_take_errors():
    x = ember.ones(3, 4)
    with pytest.raises(ember.EmberIndexError, match=r"take: index -4 is out of range for dimension 0 with size 3"):
        movement.take(x, ember.tensor([-4]), 0)
    with pytest.raises(ember.DTypeError, match=r"take: index must hold integers, got float64"):
        movement.take(x, [0.5], 0)
    with pytest.raises(ember.DTypeError, match="indices must be an integer tensor, got bool"):
        movement.apply(movement.TAKE, x, ember.tensor([True]), axis=0)


def test_take_second_order():
    x = ember.tensor(rand(4, 3), dtype="float64", requires_grad=True)
    idx = ember.tensor([0, 0, 3])
    (g,) = ember.grad((movement.take(x, idx, 0) ** 2).sum(), x, create_graph=True)
    np.testing.assert_allclose(g.data[0], 4 * x.data[0])
    (h,) = ember.grad(g.sum(), x)
    np.testing.assert_allclose(h.data, np.array([4, 0, 0, 2])[:, None] * np.ones((4, 3)))


@pytest.mark.parametrize("dim", [0, 1, 2])
def test_index_add(dim):
    x = rand(3, 4, 2, seed=1)
    idx = {0: np.array([0, 2, 0, 0, 1]), 1: np.array([3, 3, 1]), 2: np.array([1])}[dim]
    shape = list(x.shape)
    shape[dim] = len(idx)
    src = rand(*shape, seed=2)

    def ref(a, i, s):
        out = a.copy()
        np.add.at(out, (slice(None),) * dim + (i,), s)
        return out
    check_op(lambda L, a, i, s: M(L).index_add(a, dim, i, s), ref, [x, idx, src])
    check_op(lambda L, a, i, s: a.index_add(dim, i, s, alpha=-2.0),
             lambda a, i, s: ref(a, i, -2.0 * s), [x, idx, src])


@pytest.mark.parametrize("shape,dim,k,dtype", [((300, 16), 0, 5000, np.float64), ((20, 300, 3), 1, 4000, np.float32),
                                               ((40, 30), 1, 3000, np.int64), ((6, 5, 400), 2, 700, np.float64)])
def test_index_add_large_matches_add_at(shape, dim, k, dtype):
    """The grouped (sort + per-occurrence passes) path, with heavy and light duplicates and negative indices."""
    rng = np.random.default_rng(0)
    n = shape[dim]
    idx = np.clip(np.minimum(rng.zipf(1.4, k) - 1, n - 1) * rng.choice([-1, 1], k), -n, n - 1)
    sshape = list(shape)
    sshape[dim] = k
    x = rng.integers(-5, 5, shape).astype(dtype)
    src = rng.integers(-5, 5, sshape).astype(dtype) if dtype == np.int64 else rng.standard_normal(sshape).astype(dtype)
    want = x.copy()
    np.add.at(want, (slice(None),) * dim + (idx,), src)
    got = movement.index_add(ember.tensor(x), dim, ember.tensor(idx), ember.tensor(src))
    assert got.dtype.np == dtype
    np.testing.assert_allclose(got.data, want, rtol=1e-4, atol=1e-3 if dtype == np.float32 else 1e-9)


def test_index_add_errors():
    x = ember.zeros(3, 4)
    with pytest.raises(ember.ShapeError, match=r"index_add: source has shape \(2, 4\) but input shape \(3, 4\) with 3 "
                                               r"indices along dimension 0 needs source shape \(3, 4\)"):
        x.index_add(0, ember.tensor([0, 1, 2]), ember.ones(2, 4))
    with pytest.raises(ember.EmberIndexError, match="index_add: index 3 is out of range for dimension 0 with size 3"):
        x.index_add(0, ember.tensor([3]), ember.ones(1, 4))
    with pytest.raises(ember.ShapeError, match=r"index must be 1-D, got shape \(1, 1\)"):
        x.index_add(0, ember.tensor([[0]]), ember.ones(1, 4))
    with pytest.raises(ember.DTypeError, match="index must be an integer tensor, got float32"):
        x.index_add(0, ember.tensor([0.0]), ember.ones(1, 4))
    with pytest.raises(ember.DTypeError, match="source dtype float32 differs from the input dtype int64"):
        ember.zeros(3, dtype="int64").index_add(0, ember.tensor([0]), ember.ones(1))
    with pytest.raises(ember.DTypeError, match="bool tensors are not supported"):
        ember.zeros(3, dtype="bool").index_add(0, ember.tensor([0]), ember.zeros(1, dtype="bool"))


def test_index_copy():
    x, src = rand(4, 3, seed=1), rand(4, 2, seed=2)
    idx = np.array([2, 0])

    def ref(a, i, s):
        out = a.copy()
        out[:, i] = s
        return out
    check_op(lambda L, a, i, s: M(L).index_copy(a, 1, i, s), ref, [x, idx, src])


def test_one_hot():
    idx = np.array([[0, 3], [2, 1]])
    check_op(lambda L, i: F(L).one_hot(i, 5), lambda i: np.eye(5, dtype=np.int64)[i], [idx], grad=False)
    check_op(lambda L, i: F(L).one_hot(i), lambda i: np.eye(4, dtype=np.int64)[i], [idx], grad=False)
    assert movement.one_hot(ember.tensor([1, 0])).dtype is ember.int64
    with pytest.raises(ember.EmberIndexError, match=r"class values must lie in \[0, 3\), got values in 0..3"):
        movement.one_hot(ember.tensor([0, 3]), 3)
    with pytest.raises(ember.EmberIndexError, match=r"got values in -1..1"):
        movement.one_hot(ember.tensor([-1, 1]), 3)
    with pytest.raises(ember.DTypeError, match="one_hot: index must be an integer tensor, got float32"):
        movement.one_hot(ember.tensor([0.0]), 3)


# ----------------------------------------------------------------------------- methods, jvp


def test_tensor_methods_installed():
    for name in _METHODS["movement"]:
        assert hasattr(movement, name), name
        assert getattr(ember.Tensor, name) is getattr(movement, name)


def test_jvp_of_linear_movement_ops():
    a = ember.tensor(rand(3, 4), dtype="float64")
    t = ember.tensor(rand(3, 4, seed=5), dtype="float64")
    for fn in (lambda v: movement.cat([v, v * 2], 1), lambda v: movement.flip(v, 0),
               lambda v: movement.take(v, ember.tensor([2, 2, 0]), 0),
               lambda v: movement.index_add(v, 1, ember.tensor([0, 0]), v[:, :2])):
        _, tan = ember.jvp(fn, [a], [t])
        np.testing.assert_allclose(tan.data, fn(t).data)  # linear: the tangent is the op applied to it
