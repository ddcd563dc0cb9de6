import numpy as np
import pytest

import ember
from ember.ops import indexing
from tests.helpers import check_op, rand, torch

X = np.arange(60.0).reshape(3, 4, 5)
MASK2 = X[:, :, 0] > 20        # shape (3, 4)
MASK1 = np.array([True, False, True, True])

# Keys on which NumPy and PyTorch agree: checked against both, with gradients.
BASIC = [
    0, -1, (1, 2), (1, 2, 3), (slice(1, 3),), (slice(None), slice(0, 4, 2)), (Ellipsis, 1), (Ellipsis, slice(-2, None)),
    (None, 0, slice(1, 3)), (slice(None), None, 2, None), (), (Ellipsis,), (slice(10, 20),), (slice(-100, 100, 3),),
    (0, Ellipsis, 4),
]
ADVANCED = [
    [0, 2, 0], ([2, 0],), (slice(None), [3, 0, 3]), (Ellipsis, [1, -1]), ([[0], [1]], [0, 2]),
    ([0, 2], slice(None), [1, 3]), ([0, 1], None, [0, 1]), (MASK2,), (slice(None), MASK1),
    (X > 30,), (slice(1, None), [[1, 1], [2, 0]], slice(None, None, 2)), ([], slice(None)),
    (1, [[0, 1], [2, 3]], slice(0, 4)), (MASK2, np.arange(int(MASK2.sum())) % 5), ([0, 0, 1], [1, 1, 1]),
]
# Keys where the result follows NumPy and differs from (or is not supported by) PyTorch.
NUMPY_ONLY = [
    (slice(None, None, -1),), (slice(None), slice(3, 0, -2)), (slice(4, 0, -2), 1, None),
    (Ellipsis, slice(None, None, -3)),
    (0, slice(None), [1, 2]),                       # ints count as advanced entries: shape (2, 4), not (4, 2)
    (slice(None), [0, 1], Ellipsis, [1, 2]),        # an (empty) ellipsis separates advanced entries
    (np.array(1), slice(None), [0, 3]),
]


def _key(key, L):
    """Tensors stand in for NumPy arrays in ``key`` (bool masks and index arrays)."""
    def conv(k):
        if isinstance(k, np.ndarray):
            return L.tensor(k) if L is ember else torch.tensor(k)
        return k
    return tuple(conv(k) for k in key) if isinstance(key, tuple) else conv(key)


def _ids(keys):
    return [indexing._describe(k) for k in keys]


@pytest.mark.parametrize("key", BASIC + ADVANCED, ids=_ids(BASIC + ADVANCED))
def test_getitem_matches_numpy_and_torch(key):
    x = rand(3, 4, 5)
    check_op(lambda L, a: a[_key(key, L)], lambda a: a[key], [x])


@pytest.mark.parametrize("key", NUMPY_ONLY, ids=_ids(NUMPY_ONLY))
def test_getitem_numpy_semantics(key):
    x = rand(3, 4, 5)
    check_op(lambda L, a: a[key], lambda a: a[key], [x], torch_check=False)


def test_basic_index_is_a_view():
    x = ember.arange(12.0).reshape(3, 4)
    y = x[1:, ::-2]
    assert np.shares_memory(y.data, x.data) and y._version is x._version
    z = x[1, 2]
    assert z.shape == () and np.shares_memory(z.data, x.data)  # a 0-d view, not a copied scalar
    assert x[[0, 1]]._base is None  # advanced indexing copies
    # the normalized key is hashable and canonical: trailing full slices are dropped
    assert x[0, :].grad_fn is None and indexing._parse((3, 4), (0, slice(None)), np).basic == (0,)
    assert hash(indexing._parse((3, 4), (slice(None, None, -1), None), np).basic) is not None


def test_getitem_second_order():
    x = ember.tensor(rand(4, 3), dtype="float64", requires_grad=True)
    y = x[[0, 0, 2], 1:] ** 3
    (g,) = ember.grad(y.sum(), x, create_graph=True)
    (h,) = ember.grad(g.sum(), x)
    want = np.zeros((4, 3))
    want[0, 1:] = 2 * 6 * x.data[0, 1:]
    want[2, 1:] = 6 * x.data[2, 1:]
    np.testing.assert_allclose(h.data, want)


def test_getitem_errors():
    x = ember.ones(3, 4)
    with pytest.raises(ember.EmberIndexError, match=r"index 3 is out of range for dimension 0 with size 3 "
                                                     r"\(tensor shape \(3, 4\), key \[3\]\)"):
        x[3]
    with pytest.raises(ember.EmberIndexError, match=r"index -5 is out of range for dimension 1 with size 4"):
        x[:, [0, -5]]
    with pytest.raises(ember.EmberIndexError, match=r"too many indices for a tensor of shape \(3, 4\): the key "
                                                     r"\[0, 1, 2\] indexes 3 dimensions"):
        x[0, 1, 2]
    with pytest.raises(ember.EmberIndexError, match=r"boolean mask of shape \(4,\) does not match the indexed "
                                                     r"dimensions \(3,\)"):
        x[ember.tensor([True, False, True, True])]
    with pytest.raises(ember.EmberIndexError, match=r"could not be broadcast together with shapes \(2,\) \(3,\)"):
        x[[0, 1], [0, 1, 2]]
    with pytest.raises(ember.EmberIndexError, match="must be integer or bool, got float32"):
        x[ember.tensor([0.0])]
    with pytest.raises(ember.EmberIndexError, match="single ellipsis"):
        x[..., 0, ...]
    with pytest.raises(ember.EmberIndexError, match="step cannot be zero"):
        x[::0]
    with pytest.raises(ember.EmberIndexError, match="unsupported index of type str"):
        x["a"]
    with pytest.raises(ember.EmberIndexError, match="boolean scalar"):
        x[True]
    with pytest.raises(IndexError):  # EmberIndexError is an IndexError, so `for` loops and except clauses work
        ember.ones(2)[5]


# ----------------------------------------------------------------------------- setitem


SET_KEYS = [
    (1, ()), ((slice(None), 2), ()), ((slice(None), slice(1, 3)), (3, 2, 5)), ((Ellipsis, 0), (4,)),
    (([2, 0],), (2, 4, 5)), ((slice(None), [3, 1]), (1, 5)), (([0, 2], slice(None), [1, 4]), (2, 4)),
    ((MASK2,), (5,)), ((slice(None), MASK1, 1), ()), ((None, 1), (4, 5)),
]


@pytest.mark.parametrize("key,vshape", SET_KEYS, ids=_ids([k for k, _ in SET_KEYS]))
def test_setitem_with_grad(key, vshape):
    """``b = a * 1; b[key] = v``: forward and the gradients of both ``a`` and ``v`` (vs NumPy and PyTorch)."""
    def fn(L, a, v):
        b = a * 1
        b[_key(key, L)] = v
        return b

    def ref(a, v):
        b = a.copy()
        b[key] = v
        return b
    check_op(fn, ref, [rand(3, 4, 5, seed=1), rand(*vshape, seed=2)])


def test_setitem_numpy_semantics_with_grad():
    def fn(L, a, v):
        b = a * 1
        b[0, :, [1, 2]] = v        # NumPy placement: the indexed shape is (2, 4)
        b[::-2, 1] = v[:, :1] * 3  # negative steps
        return b

    def ref(a, v):
        b = a.copy()
        b[0, :, [1, 2]] = v
        b[::-2, 1] = v[:, :1] * 3
        return b
    check_op(fn, ref, [rand(3, 4, 5, seed=1), rand(2, 4, seed=2)], torch_check=False)


def test_setitem_no_grad_writes_in_place():
    x = ember.zeros(3, 4)
    data, version = x.data, x._version[0]
    x[1] = 5
    x[:, 0] = ember.tensor([1.0, 2.0, 3.0])
    x[[0, 2], [3, 3]] = ember.tensor([7.0, 8.0])
    x[x > 6] = -1.0
    assert x.data is data and x._version[0] == version + 4
    np.testing.assert_array_equal(x.data, [[1, 0, 0, -1], [2, 5, 5, 5], [3, 0, 0, -1]])
    # through a view: the base sees the write, and the shared version counter moves
    row = x[2]
    row[1:3] = 9
    np.testing.assert_array_equal(x.data[2], [3, 9, 9, -1])
    assert x._version is row._version
    # dtype casting and broadcasting from leading size-1 dims, like NumPy/PyTorch
    i = ember.zeros(2, 3, dtype="int64")
    i[0] = ember.tensor([[1.7, 2.2, 3.9]])
    np.testing.assert_array_equal(i.data, [[1, 2, 3], [0, 0, 0]])
    # a leaf that requires grad can be written under no_grad (optimizer-style updates)
    w = ember.ones(3, requires_grad=True)
    with ember.no_grad():
        w[0] = 2.0
    assert w.grad_fn is None and w.data[0] == 2


def test_setitem_duplicates_last_write_wins():
    x = ember.zeros(3)
    x[[0, 0, 1]] = ember.tensor([1.0, 2.0, 3.0])
    np.testing.assert_array_equal(x.data, [2, 3, 0])
    y = ember.zeros(3) * 1
    v = ember.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y[[0, 0, 1]] = v
    np.testing.assert_array_equal(y.data, [2, 3, 0])


def test_setitem_records_history():
    a = ember.tensor(rand(4), requires_grad=True)
    b = a * 2
    b[1:3] = a[:2] * 10  # reads the old value of a, not b
    assert b.grad_fn is not None and b.grad_fn.op.name == "setslice"
    b.sum().backward()
    np.testing.assert_allclose(a.grad.data, [12, 10, 0, 2])


def test_setitem_errors():
    x = ember.zeros(3, 4)
    with pytest.raises(ember.ShapeError, match=r"value of shape \(3,\) cannot be broadcast to the indexed shape \(4,\) "
                                               r"\(tensor shape \(3, 4\), key \[0\]\)"):
        x[0] = ember.ones(3)
    with pytest.raises(ember.ShapeError, match=r"indexed shape \(2, 4\)"):
        x[[0, 1]] = ember.ones(3, 4)
    with pytest.raises(ember.EmberIndexError, match="index 4 is out of range for dimension 1"):
        x[0, 4] = 1.0
    with pytest.raises(ember.EmberIndexError, match=r"boolean mask of shape \(3, 3\) does not match"):
        x[ember.zeros(3, 3, dtype="bool")] = 1.0
    with pytest.raises(TypeError, match="value must be a Tensor or a number, got str"):
        x[0] = "a"
    with pytest.raises(ember.DTypeError, match=r"cannot assign the float 1\.5 to a tensor of dtype int64"):
        ember.zeros(2, dtype="int64")[0] = 1.5
    with pytest.raises(ember.AutogradError, match="read-only"):
        ember.zeros(3).expand(2, 3)[0] = 1.0
    leaf = ember.zeros(3, requires_grad=True)
    with pytest.raises(ember.AutogradError, match="leaf tensor that requires grad"):
        leaf[0] = 1.0
    with pytest.raises(ember.AutogradError, match="in-place operation on a view"):
        (leaf * 1)[0:2][0] = ember.ones((), requires_grad=True)


def test_setitem_after_save_is_detected():
    a = ember.tensor(rand(4), requires_grad=True)
    b = a * 1
    c = b * b  # mul saves b for its gradient
    b[0] = 5.0
    assert b._version[0] == 1
    with pytest.raises(ember.AutogradError, match="modified by an in-place operation"):
        c.sum().backward()
    # the same without recording: the direct write bumps the version counter too
    b2 = a * 1
    c2 = b2.exp() * b2
    with ember.no_grad():
        b2[1:] = 0.0
    with pytest.raises(ember.AutogradError, match=r"input 1 \(shape \(4,\), float64\) needed for the gradient was "
                                                  "modified"):
        c2.sum().backward()
