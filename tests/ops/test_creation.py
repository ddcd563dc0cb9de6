"""Creating tensors: from data, filled, ranges, and DLPack exchange with PyTorch."""

import numpy as np
import pytest

import ember
from tests.helpers import torch

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")

# ----------------------------------------------------------------------------- tensor(): dtype inference


@pytest.mark.parametrize("data,dtype,shape", [
    (1.5, ember.float32, ()),
    ([1.0, 2.0], ember.float32, (2,)),
    ([1, 2.5], ember.float32, (2,)),
    (3, ember.int64, ()),
    ([[1, 2], [3, 4]], ember.int64, (2, 2)),
    ([True, False], ember.bool_, (2,)),
    ([], ember.float32, (0,)),
    ([[]], ember.float32, (1, 0)),
    (np.array([1, 2], dtype=np.int32), ember.int32, (2,)),
    (np.array([1.0], dtype=np.float64), ember.float64, (1,)),
    (np.array([1.0], dtype=np.float16), ember.float16, (1,)),
    (np.float64(1.5), ember.float64, ()),  # NumPy scalars keep their dtype too
    (np.int8(3), ember.int8, ()),
    (np.array([True]), ember.bool_, (1,)),
])
def test_tensor_dtype_inference(data, dtype, shape):
    t = ember.tensor(data)
    assert t.dtype is dtype and t.shape == shape
    np.testing.assert_array_equal(t.data, np.asarray(data))
    if torch is not None:
        assert str(torch.tensor(data).dtype).replace("torch.", "") == dtype.name


def test_tensor_copies_and_converts():
    a = np.array([1.0, 2.0])
    t = ember.tensor(a)
    a[0] = 9
    assert t.tolist() == [1.0, 2.0]
    assert ember.tensor([1, 2], dtype="float16").dtype is ember.float16
    assert ember.tensor([1.7, -1.7], dtype=ember.int32).tolist() == [1, -1]
    src = ember.tensor([1, 2], dtype="int32")
    c = ember.tensor(src)
    assert c.dtype is ember.int32 and not np.shares_memory(c.data, src.data)
    assert ember.tensor([ember.tensor(1.0), ember.tensor(2.0)]).tolist() == [1.0, 2.0]
    r = ember.tensor([1.0], requires_grad=True)
    assert r.requires_grad and r.is_leaf


def test_tensor_errors():
    with pytest.raises(ember.ShapeError, match=r"tensor: cannot build a tensor from list.*inhomogeneous"):
        ember.tensor([[1, 2], [3]])
    with pytest.raises(ember.DTypeError, match="<U1 has no Ember equivalent"):
        ember.tensor(["a"])
    with pytest.raises(ember.DTypeError, match="does not fit in int64"):
        ember.tensor([1, 2 ** 70])
    with pytest.raises(ember.DTypeError, match="tensor: only floating tensors can require gradients, got int64"):
        ember.tensor([1, 2], requires_grad=True)
    with pytest.raises(ember.DTypeError, match="does not fit in int8"):
        ember.tensor([1000], dtype="int8")


# ----------------------------------------------------------------------------- filled tensors


def test_zeros_ones_full_empty():
    for shape_args in [(2, 3), ((2, 3),), ([2, 3],)]:
        z = ember.zeros(*shape_args)
        assert z.shape == (2, 3) and z.dtype is ember.float32 and not z.data.any()
    assert ember.zeros().shape == ()
    assert ember.ones(2, dtype="int32").tolist() == [1, 1] and ember.ones(2, dtype="int32").dtype is ember.int32
    assert ember.ones(2, dtype=ember.bool_).tolist() == [True, True]
    assert ember.zeros(0, 3).shape == (0, 3)
    f = ember.full((2, 2), 7)
    assert f.dtype is ember.int64 and f.tolist() == [[7, 7], [7, 7]]
    assert ember.full((2,), 7.0).dtype is ember.float32
    assert ember.full((2,), True).dtype is ember.bool_
    assert ember.full((2,), 1.5, dtype="int64").tolist() == [1, 1]
    assert ember.full(3, 2.0).tolist() == [2.0, 2.0, 2.0]
    assert ember.full((1,), ember.tensor(4.0)).tolist() == [4.0]
    e = ember.empty(2, 3, dtype="float64")
    assert e.shape == (2, 3) and e.dtype is ember.float64
    assert ember.zeros(2, requires_grad=True).requires_grad


def test_like_functions():
    x = ember.tensor([[1, 2, 3]], dtype="int32")
    for f in (ember.zeros_like, ember.ones_like, ember.empty_like):
        out = f(x)
        assert out.shape == (1, 3) and out.dtype is ember.int32
    assert ember.ones_like(x, dtype="float32").tolist() == [[1.0, 1.0, 1.0]]
    assert ember.full_like(x, 3.7).tolist() == [[3, 3, 3]]  # the dtype is x's
    assert ember.zeros_like(ember.ones(2), requires_grad=True).requires_grad
    assert not ember.zeros_like(ember.ones(2, requires_grad=True)).requires_grad
    with pytest.raises(TypeError, match="zeros_like: expected a Tensor, got ndarray"):
        ember.zeros_like(np.zeros(2))


@pytest.mark.parametrize("call,exc,msg", [
    (lambda: ember.zeros(-1), ember.ShapeError, r"zeros: negative dimension in shape \(-1,\)"),
    (lambda: ember.ones(2, -3), ember.ShapeError, "ones: negative dimension"),
    (lambda: ember.zeros(2.5), ember.ShapeError, r"zeros: shape must be a sequence of ints, got \(2.5,\)"),
    (lambda: ember.empty("a"), ember.ShapeError, "empty: shape must be a sequence of ints"),
    (lambda: ember.full("ab", 1.0), ember.ShapeError, "full: size must be an int or a sequence of ints"),
    (lambda: ember.full((2,), ember.ones(2)), ember.ShapeError, "fill_value must be a number or a one-element"),
    (lambda: ember.zeros(2, dtype="int4"), ember.DTypeError, "unknown dtype 'int4'"),
    (lambda: ember.ones(2, dtype="int64", requires_grad=True), ember.DTypeError,
     "ones: only floating tensors can require gradients"),
])
def test_filled_errors(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


# ----------------------------------------------------------------------------- ranges


def test_arange():
    assert ember.arange(5).tolist() == [0, 1, 2, 3, 4] and ember.arange(5).dtype is ember.int64
    assert ember.arange(2, 8, 3).tolist() == [2, 5]
    assert ember.arange(5, 0, -2).tolist() == [5, 3, 1]
    f = ember.arange(1, 2, 0.25)
    assert f.dtype is ember.float32 and f.tolist() == [1.0, 1.25, 1.5, 1.75]
    assert ember.arange(5.0).dtype is ember.float32
    assert ember.arange(3, dtype="float64").dtype is ember.float64
    assert ember.arange(0, 1, 0.1).shape == (10,)
    assert ember.arange(3, 3).shape == (0,)
    assert ember.arange(ember.tensor(3)).tolist() == [0, 1, 2]
    if torch is not None:
        for args in [(0, 1, 0.1), (1, 2.5, 0.3), (-3, 7, 2), (10, 0, -3)]:
            np.testing.assert_allclose(ember.arange(*args).data, torch.arange(*args).numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="arange: step must be nonzero"):
        ember.arange(0, 5, 0)
    with pytest.raises(ValueError, match="arange: step -1 goes away from end"):
        ember.arange(0, 5, -1)
    with pytest.raises(ValueError, match="arange: end must be a finite number"):
        ember.arange(0, float("inf"))


def test_linspace_eye():
    np.testing.assert_allclose(ember.linspace(0, 1, 5).data, [0, 0.25, 0.5, 0.75, 1])
    assert ember.linspace(0, 1, 1).tolist() == [0.0] and ember.linspace(0, 1, 0).shape == (0,)
    assert ember.linspace(0, 10, 3, dtype="int64").tolist() == [0, 5, 10]
    with pytest.raises(ValueError, match="linspace: steps must be non-negative, got -1"):
        ember.linspace(0, 1, -1)
    with pytest.raises(TypeError, match=r"linspace: steps must be an int, got 2.5"):
        ember.linspace(0, 1, 2.5)
    np.testing.assert_array_equal(ember.eye(3).data, np.eye(3))
    e = ember.eye(2, 3, dtype="int64")
    assert e.dtype is ember.int64 and e.tolist() == [[1, 0, 0], [0, 1, 0]]
    with pytest.raises(ember.ShapeError, match="eye: negative dimension"):
        ember.eye(-1)
    with pytest.raises(ember.ShapeError, match="eye: n and m must be ints"):
        ember.eye(2.5)


# ----------------------------------------------------------------------------- DLPack


@needs_torch
def test_from_dlpack_torch_is_zero_copy():
    t = torch.arange(6.0).reshape(2, 3)
    e = ember.from_dlpack(t)
    assert e.dtype is ember.float32 and e.shape == (2, 3)
    np.testing.assert_array_equal(e.data, t.numpy())
    t[0, 0] = 100.0  # torch -> ember
    assert e[0, 0].item() == 100.0
    e.add_(1)  # ember -> torch
    assert t[1, 2].item() == 6.0 and t[0, 0].item() == 101.0
    for tt, dt in [(torch.tensor([True, False]), ember.bool_), (torch.tensor([1, 2], dtype=torch.int32), ember.int32),
                   (torch.tensor([1.0], dtype=torch.float64), ember.float64)]:
        assert ember.from_dlpack(tt).dtype is dt
    strided = torch.arange(6.0).reshape(2, 3).t()
    np.testing.assert_array_equal(ember.from_dlpack(strided).data, strided.numpy())


@needs_torch
def test_torch_from_dlpack_ember_is_zero_copy():
    e = ember.arange(6).reshape(2, 3)
    t = torch.from_dlpack(e)
    assert t.dtype == torch.int64 and tuple(t.shape) == (2, 3)
    t[0, 0] = 7  # torch -> ember
    assert e[0, 0].item() == 7
    e.mul_(2)  # ember -> torch
    assert t[0, 0].item() == 14 and t[1, 2].item() == 10
    f = ember.tensor(2.5)
    assert torch.from_dlpack(f).item() == 2.5
    tt = torch.from_dlpack(ember.tensor(np.arange(6.0).reshape(2, 3)).T)
    np.testing.assert_array_equal(tt.numpy(), np.arange(6.0).reshape(2, 3).T)


def test_from_dlpack_numpy_and_errors():
    a = np.arange(4.0)
    e = ember.from_dlpack(a)
    a[0] = 5
    assert e[0].item() == 5 and e.dtype is ember.float64
    with pytest.raises(TypeError, match=r"from_dlpack: expected an object with __dlpack__.*got list"):
        ember.from_dlpack([1, 2])
    if torch is not None:
        with pytest.raises(ember.DTypeError, match="from_dlpack: cannot import"):
            ember.from_dlpack(torch.ones(2, dtype=torch.bfloat16))
