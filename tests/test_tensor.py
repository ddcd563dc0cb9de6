"""The Tensor object: metadata, values out, NumPy interop, conversions, operators and Python protocols."""

import numpy as np
import pytest

import ember
from tests.helpers import torch

# ----------------------------------------------------------------------------- metadata and repr


def test_metadata():
    t = ember.zeros(2, 3, 4)
    assert t.shape == (2, 3, 4) and t.ndim == 3 and t.dim() == 3
    assert t.size() == (2, 3, 4) and t.size(1) == 3 and t.size(-1) == 4
    assert t.numel() == 24 and t.element_size() == 4 and t.nbytes == 96
    assert t.dtype is ember.float32 and t.device == ember.device("cpu") and t.device == "cpu"
    assert t.is_leaf and not t.requires_grad and t.grad is None and t.grad_fn is None
    assert ember.zeros(2, dtype="float64").element_size() == 8


def test_repr():
    assert repr(ember.tensor([1.0, 2.5])) == "tensor([1.0000, 2.5000])"
    assert repr(ember.tensor([0.5, 1e-8])) == "tensor([5.0000e-01, 1.0000e-08])"
    assert repr(ember.tensor([1, 2])) == "tensor([1, 2])"
    assert repr(ember.tensor(3.5)) == "tensor(3.5000)"
    assert repr(ember.tensor([[1, 2], [3, 4]])) == "tensor([[1, 2],\n        [3, 4]])"
    assert repr(ember.tensor([1.0, 2.0], dtype="float64")) == "tensor([1., 2.], dtype=ember.float64)"
    assert repr(ember.tensor([1, 2], dtype="int32")) == "tensor([1, 2], dtype=ember.int32)"
    assert repr(ember.tensor([1.0], requires_grad=True)) == "tensor([1.], requires_grad=True)"
    assert repr(ember.tensor([1.0], requires_grad=True) * 2) == "tensor([2.], grad_fn=<mulBackward>)"
    long = repr(ember.arange(5000))
    assert "..." in long and len(long) < 200  # summarized, like PyTorch
    assert repr(ember.float16) == "ember.float16"


def test_repr_of_empty_tensor_shows_shape():
    assert repr(ember.zeros(0, 3)) == "tensor([], size=(0, 3))"


# ----------------------------------------------------------------------------- values out


def test_item_tolist():
    assert ember.tensor([[1.5]]).item() == 1.5
    v = ember.tensor([3]).item()
    assert v == 3 and type(v) is int
    assert type(ember.tensor(True).item()) is bool
    assert type(ember.tensor(2.0).item()) is float
    with pytest.raises(ember.ShapeError, match=r"item: only one-element tensors.*shape \(2,\)"):
        ember.tensor([1, 2]).item()
    assert ember.tensor([[1, 2], [3, 4]]).tolist() == [[1, 2], [3, 4]]
    assert ember.tensor(5).tolist() == 5
    assert ember.tensor([0.5], requires_grad=True).item() == 0.5  # item works with grad


def test_numpy_shares_memory_and_refuses_grad():
    t = ember.tensor([1.0, 2.0])
    a = t.numpy()
    assert isinstance(a, np.ndarray) and a.dtype == np.float32
    a[0] = 10
    assert t[0].item() == 10
    g = ember.tensor([1.0], requires_grad=True)
    with pytest.raises(ember.AutogradError, match=r"requires grad.*detach\(\)\.numpy\(\)"):
        g.numpy()
    np.testing.assert_array_equal(g.detach().numpy(), [1.0])
    assert np.asarray(ember.tensor([1, 2])).dtype == np.int64


def test_from_numpy_is_zero_copy_both_ways():
    a = np.arange(6.0).reshape(2, 3)
    t = ember.from_numpy(a)
    assert t.dtype is ember.float64 and t.shape == (2, 3)
    a[0, 0] = 100  # numpy -> tensor
    assert t[0, 0].item() == 100
    t.add_(1)  # tensor -> numpy (in place)
    np.testing.assert_array_equal(a, [[101, 2, 3], [4, 5, 6]])
    t.zero_()
    assert not a.any()
    i = ember.from_numpy(np.array([1, 2], dtype=np.int32))
    assert i.dtype is ember.int32
    assert np.shares_memory(ember.as_tensor(a).data, a)
    assert not np.shares_memory(ember.tensor(a).data, a)  # tensor() copies
    with pytest.raises(TypeError, match=r"from_numpy: expected a numpy.ndarray, got list"):
        ember.from_numpy([1, 2])
    with pytest.raises(ember.DTypeError, match="uint16 has no Ember equivalent"):
        ember.from_numpy(np.zeros(2, dtype=np.uint16))


# ----------------------------------------------------------------------------- conversions


def test_to_dtype_and_shortcuts():
    t = ember.tensor([1.5, -2.7])
    assert t.to("int64").tolist() == [1, -2]  # truncates toward zero
    assert t.to(ember.float64).dtype is ember.float64
    assert t.to(np.float64).dtype is ember.float64
    assert t.to(float).dtype is ember.float64 and t.to(int).dtype is ember.int64
    assert t.to("cpu", "float16").dtype is ember.float16
    assert t.to(ember.tensor([1], dtype="int32")).dtype is ember.int32
    assert t.to(dtype="float64", device="cpu").dtype is ember.float64
    assert t.to("float32") is t and t.to("cpu") is t
    c = t.to("float32", copy=True)
    assert c is not t and not np.shares_memory(c.data, t.data)
    assert t.float().dtype is ember.float32 and t.double().dtype is ember.float64
    assert t.half().dtype is ember.float16 and t.long().dtype is ember.int64 and t.int().dtype is ember.int32
    assert t.bool().tolist() == [True, True] and ember.tensor([0.0]).bool().tolist() == [False]
    assert t.type("float64").dtype is ember.float64 and t.cpu() is t
    with pytest.raises(ember.DTypeError, match="unknown dtype 'foo'"):
        t.to("foo")
    with pytest.raises(ember.DeviceError, match="not available"):
        t.to("cuda")


def test_to_keeps_the_graph_between_float_dtypes():
    x = ember.tensor([1.0, 2.0], requires_grad=True)
    (x.double() * x.double()).sum().backward()
    assert x.grad.dtype is ember.float32
    np.testing.assert_allclose(x.grad.data, [2, 4])


def test_clone_and_contiguous():
    x = ember.tensor([1.0, 2.0], requires_grad=True)
    c = x.clone()
    assert not np.shares_memory(c.data, x.data) and c.grad_fn is not None
    c.sum().backward()
    np.testing.assert_array_equal(x.grad.data, [1, 1])
    t = ember.tensor(np.arange(12.0).reshape(3, 4)).T
    assert not t.is_contiguous()
    tc = t.contiguous()
    assert tc.is_contiguous() and tc.data.flags.c_contiguous
    np.testing.assert_array_equal(tc.data, t.data)
    assert tc.contiguous() is tc


def test_transpose_properties():
    x = ember.zeros(2, 3, 4)
    assert x.T.shape == (4, 3, 2)
    assert x.mT.shape == (2, 4, 3)
    m = ember.tensor([[1, 2, 3], [4, 5, 6]])
    assert m.T.tolist() == [[1, 4], [2, 5], [3, 6]] and m.mT.tolist() == m.T.tolist()
    v = ember.tensor([1, 2])
    assert v.T.tolist() == [1, 2]


# ----------------------------------------------------------------------------- operators


def test_operators_with_python_scalars_on_both_sides():
    x = ember.tensor([1.0, 2.0, 4.0])
    np.testing.assert_allclose((x + 1).data, [2, 3, 5])
    np.testing.assert_allclose((1 + x).data, [2, 3, 5])
    np.testing.assert_allclose((x - 1).data, [0, 1, 3])
    np.testing.assert_allclose((1 - x).data, [0, -1, -3])
    np.testing.assert_allclose((x * 2).data, [2, 4, 8])
    np.testing.assert_allclose((2 * x).data, [2, 4, 8])
    np.testing.assert_allclose((x / 2).data, [0.5, 1, 2])
    np.testing.assert_allclose((2 / x).data, [2, 1, 0.5])
    np.testing.assert_allclose((x ** 2).data, [1, 4, 16])
    np.testing.assert_allclose((2 ** x).data, [2, 4, 16])
    np.testing.assert_allclose((x // 3).data, [0, 0, 1])
    np.testing.assert_allclose((7 // x).data, [7, 3, 1])
    np.testing.assert_allclose((x % 3).data, [1, 2, 1])
    np.testing.assert_allclose((7 % x).data, [0, 1, 3])
    np.testing.assert_allclose((-x).data, [-1, -2, -4])
    assert (+x) is x
    np.testing.assert_allclose(abs(ember.tensor([-1.5, 2.0])).data, [1.5, 2])
    for r in (x + 1, 1 + x, 2 / x, 2 ** x):
        assert r.dtype is ember.float32  # Python scalars are weak
    i = ember.tensor([1, 2])
    assert (i + 1).dtype is ember.int64 and (1 + i).dtype is ember.int64
    assert (i / ember.tensor([2, 2])).tolist() == [0.5, 1.0]
    assert (2.5 * i).dtype is ember.float32
    assert (2 ** i).tolist() == [2, 4]
    assert ((2 > i).tolist(), (i >= 2).tolist(), (i == 1).tolist(), (1 != i).tolist()) == (
        [True, False], [False, True], [True, False], [False, True])
    b = ember.tensor([True, False])
    assert (~b).tolist() == [False, True]
    assert (b & ember.tensor([True, True])).tolist() == [True, False]
    assert (b | False).tolist() == [True, False] and (True ^ b).tolist() == [False, True]
    m = ember.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert (m @ ember.tensor([1.0, 1.0])).tolist() == [3.0, 7.0]
    with pytest.raises(TypeError, match="add: unsupported operand of type str"):
        x + "a"
    with pytest.raises(TypeError, match="unsupported operand of type NoneType"):
        None * x


def test_operator_gradients_with_scalars_on_the_left():
    x = ember.tensor([1.0, 2.0], dtype="float64", requires_grad=True)
    (2 / x + 3 - x + 2 ** x).sum().backward()
    np.testing.assert_allclose(x.grad.data, -2 / x.data ** 2 - 1 + np.log(2) * 2 ** x.data)


def test_true_division_of_integer_tensor_by_python_scalar():
    i = ember.tensor([1, 2])
    assert (i / 2).tolist() == [0.5, 1.0] and (i / 2).dtype is ember.float32
    assert (2 / i).tolist() == [2.0, 1.0] and (2 / i).dtype is ember.float32


def test_numpy_operands_on_the_left_do_not_return_ndarrays():
    t = ember.tensor([1.0, 2.0], requires_grad=True)
    out = np.float64(2.0) * t
    assert isinstance(out, ember.Tensor) and out.requires_grad
    with pytest.raises(TypeError):
        np.ones(2) + t


def test_bitwise_operators_on_integers():
    a, b = ember.tensor([5, 6]), ember.tensor([3, 3])
    assert (a & b).tolist() == [1, 2]
    assert (a | b).tolist() == [7, 7]
    assert (~a).tolist() == [-6, -7]


def test_inplace_operators():
    x = ember.tensor([1.0, 2.0])
    y = x
    x += 1
    x *= 3
    x -= 1
    x /= 2
    assert x is y and x.tolist() == [2.5, 4.0]
    i = ember.tensor([1, 2])
    with pytest.raises(ember.DTypeError, match="result type float32 can't be cast to the tensor's dtype int64"):
        i.add_(0.5)
    with pytest.raises(ember.ShapeError, match=r"result of shape \(2, 2\) cannot be written into a tensor of shape"):
        ember.ones(2).add_(ember.ones(2, 2))
    z = ember.zeros(2, 2)
    assert z.fill_(3).tolist() == [[3, 3], [3, 3]]
    assert z.copy_(ember.tensor([1, 2])).tolist() == [[1, 2], [1, 2]] and z.dtype is ember.float32
    assert z.zero_().tolist() == [[0, 0], [0, 0]]


# ----------------------------------------------------------------------------- Python protocols


def test_bool_is_ambiguous_for_several_elements():
    assert bool(ember.tensor([1])) is True and bool(ember.tensor(0.0)) is False
    with pytest.raises(ember.ShapeError, match=r"truth value of a tensor with 2 elements is ambiguous.*any\(\)"):
        bool(ember.tensor([1, 2]))
    with pytest.raises(ValueError, match="ambiguous"):
        if ember.zeros(0):
            pass


def test_len_iter_index_float_int():
    t = ember.tensor([[1, 2], [3, 4], [5, 6]])
    assert len(t) == 3
    rows = list(t)
    assert [r.tolist() for r in rows] == [[1, 2], [3, 4], [5, 6]]
    with pytest.raises(TypeError, match="len\\(\\) of a 0-d tensor"):
        len(ember.tensor(1))
    with pytest.raises(TypeError, match="iteration over a 0-d tensor"):
        iter(ember.tensor(1))
    assert list(range(10))[ember.tensor(3)] == 3
    assert [0, 1, 2][ember.tensor([2])] == 2
    with pytest.raises(TypeError, match="only one-element integer tensors can be used as an index"):
        [0, 1][ember.tensor(1.0)]
    with pytest.raises(TypeError, match="index"):
        [0, 1][ember.tensor([0, 1])]
    assert float(ember.tensor([2.5])) == 2.5 and int(ember.tensor(2.7)) == 2
    assert hash(t) == hash(t) and {t: 1}[t] == 1  # hashable by identity


def test_iter_rows_keep_the_graph():
    x = ember.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    total = None
    for k, row in enumerate(x):
        total = row.sum() * (k + 1) if total is None else total + row.sum() * (k + 1)
    total.backward()
    np.testing.assert_array_equal(x.grad.data, [[1, 1], [2, 2]])


def test_tensor_constructor_matches_ember_tensor():
    t = ember.Tensor([1.0, 2.0])
    assert isinstance(t, ember.Tensor) and t.dtype is ember.float32 and t.tolist() == [1.0, 2.0]
    t2 = ember.Tensor([1, 2], dtype="float64", requires_grad=True)
    assert t2.dtype is ember.float64 and t2.requires_grad


@pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
def test_scalar_results_match_torch():
    x = np.array([1.0, -2.0, 3.0], dtype=np.float32)
    e, t = ember.tensor(x), torch.tensor(x)
    for f in (lambda v: 1 - v, lambda v: 2 / v, lambda v: 3 ** v, lambda v: -v * 0.5, lambda v: 7 % v,
              lambda v: 7 // v):
        np.testing.assert_allclose(f(e).data, f(t).numpy(), rtol=1e-6)


def test_reshape_that_copies_is_not_an_alias():
    x = ember.arange(12.0).reshape(3, 4)
    y = x.T.reshape(12)  # NumPy must copy: y owns its memory
    with ember.no_grad():
        y.add_(1)
    assert x._version[0] == 0 and x.tolist()[0][0] == 0.0
    v = x.reshape(4, 3)  # a true view shares data and version counter
    v.add_(1)
    assert x._version[0] == 1 and x.tolist()[0][0] == 1.0


def test_bitwise_on_floats_and_bool_negation_raise():
    with pytest.raises(ember.DTypeError, match="bitwise_and"):
        ember.ones(2) & ember.ones(2)
    with pytest.raises(ember.DTypeError, match="neg"):
        -ember.tensor([True])
    assert (~ember.tensor([True, False])).tolist() == [False, True]
