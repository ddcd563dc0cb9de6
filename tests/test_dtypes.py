"""Dtypes: the promotion rules written in ember/dtypes.py's docstring (the spec), conversions and defaults."""

import copy
import itertools
import pickle

import numpy as np
import pytest

import ember
from ember import dtypes as D
from tests.helpers import torch


@pytest.fixture()
def restore_default_dtype():
    prev = ember.get_default_dtype()
    yield
    ember.set_default_dtype(prev)


# ----------------------------------------------------------------------------- the promotion table

B, U8, I8, I32, I64, F16, F32, F64 = D.bool_, D.uint8, D.int8, D.int32, D.int64, D.float16, D.float32, D.float64
ORDER = [B, U8, I8, I32, I64, F16, F32, F64]

# Row dtype promoted with column dtype, straight from the rules in the dtypes.py docstring.
TABLE = {
    B: [B, U8, I8, I32, I64, F16, F32, F64],
    U8: [U8, U8, I32, I32, I64, F16, F32, F64],   # uint8 + int8 -> int32 (Ember has no int16)
    I8: [I8, I32, I8, I32, I64, F16, F32, F64],
    I32: [I32, I32, I32, I32, I64, F16, F32, F64],  # int32 + float16 -> float16: the higher category wins
    I64: [I64, I64, I64, I64, I64, F16, F32, F64],
    F16: [F16, F16, F16, F16, F16, F16, F32, F64],
    F32: [F32, F32, F32, F32, F32, F32, F32, F64],
    F64: [F64] * 8,
}


@pytest.mark.parametrize("a,b", list(itertools.product(ORDER, ORDER)), ids=lambda d: d.name)
def test_promotion_table(a, b):
    want = TABLE[a][ORDER.index(b)]
    assert ember.promote_types(a, b) is want
    assert ember.promote_types(b, a) is want  # symmetric
    # every binary op follows it
    x, y = ember.ones(2, dtype=a), ember.ones(2, dtype=b)
    assert (x + y).dtype is want
    assert ember.maximum(x, y).dtype is want


def test_promotion_matches_torch_where_torch_has_the_types():
    if torch is None:
        pytest.skip("PyTorch is not installed")
    tmap = {B: torch.bool, U8: torch.uint8, I8: torch.int8, I32: torch.int32, I64: torch.int64,
            F16: torch.float16, F32: torch.float32, F64: torch.float64}
    for a, b in itertools.product(ORDER, ORDER):
        if {a, b} == {U8, I8}:
            continue  # torch gives int16, which Ember does not have
        want = torch.promote_types(tmap[a], tmap[b])
        assert tmap[ember.promote_types(a, b)] == want, (a, b)


def test_weak_python_scalars():
    f32, f16 = ember.ones(2), ember.ones(2, dtype="float16")
    i8, u8, b = ember.tensor([1, 2], dtype="int8"), ember.tensor([1], dtype="uint8"), ember.tensor([True])
    assert (f32 * 2.0).dtype is ember.float32 and (f16 * 2.0).dtype is ember.float16
    assert (f32 + 1).dtype is ember.float32
    assert (i8 + 1).dtype is ember.int8 and (u8 * 3).dtype is ember.uint8
    assert (i8 * 0.5).dtype is ember.float32  # a higher-category scalar lifts to that category's default
    assert (b + 1).dtype is ember.int64 and (b * 1.5).dtype is ember.float32
    assert (b & True).dtype is ember.bool_
    assert D.result_type([D.int8], [D.INTEGER]) is D.int8
    assert D.result_type([D.int8], [D.FLOATING]) is D.float32
    assert D.result_type([], [D.INTEGER, D.FLOATING]) is D.float32
    assert D.result_type([D.float16, D.int64], [D.FLOATING]) is D.float16
    assert ember.where(ember.tensor([True, False]), 1, 2.5).dtype is ember.float32


def test_out_of_range_weak_int_scalar():
    try:
        out = ember.tensor([1], dtype="int8") + 1000
    except ember.EmberError:
        return
    assert out.tolist() == [-23]  # PyTorch wraps


def test_integer_true_division_and_floating_ops_use_default_float():
    i = ember.tensor([3, 4])
    assert (i / ember.tensor([2, 2])).dtype is ember.float32
    assert ember.exp(i).dtype is ember.float32
    assert ember.sqrt(ember.tensor([4], dtype="int8")).dtype is ember.float32


# ----------------------------------------------------------------------------- DType objects and conversion


def test_dtype_objects():
    assert [d.name for d in D.ALL] == ["bool", "uint8", "int8", "int32", "int64", "float16", "float32", "float64"]
    assert F32.is_floating_point and not F32.is_integer and not F32.is_bool
    assert I8.is_integer and U8.is_integer and B.is_bool
    assert [d.itemsize for d in D.ALL] == [1, 1, 1, 4, 8, 2, 4, 8]
    assert repr(F64) == "ember.float64"
    assert ember.float is ember.float32 and ember.double is ember.float64 and ember.half is ember.float16
    assert ember.long is ember.int64 and ember.int is ember.int32 and ember.bool is ember.bool_
    for d in D.ALL:
        assert pickle.loads(pickle.dumps(d)) is d
        assert copy.deepcopy(d) is d


@pytest.mark.parametrize("spec,want", [
    ("float32", F32), ("float", F32), ("double", F64), ("half", F16), ("long", I64), ("int", I32),
    ("bool", B), ("bool_", B), ("uint8", U8), (F16, F16), (np.float64, F64), (np.dtype("int8"), I8),
    (np.int32, I32), (np.bool_, B), (float, F64), (int, I64), (bool, B),
])
def test_to_dtype(spec, want):
    assert D.to_dtype(spec) is want


@pytest.mark.parametrize("spec,msg", [
    ("foo", r"unknown dtype 'foo'; expected one of bool, uint8, int8, int32, int64, float16, float32, float64"),
    (None, "expected a dtype, got None"),
    (np.complex64, "NumPy dtype complex64 has no Ember equivalent"),
    (np.uint16, "NumPy dtype uint16 has no Ember equivalent"),
    (3, "cannot interpret 3 as a dtype"),
    (object(), "cannot interpret <object"),
])
def test_to_dtype_errors(spec, msg):
    with pytest.raises(ember.DTypeError, match=msg):
        D.to_dtype(spec)
    with pytest.raises(TypeError):  # DTypeError is a TypeError too
        D.to_dtype(spec)


def test_dtype_errors_through_the_public_api():
    with pytest.raises(ember.DTypeError, match="unknown dtype 'flaot32'"):
        ember.zeros(2, dtype="flaot32")
    with pytest.raises(ember.DTypeError, match="unknown dtype"):
        ember.ones(2).to("float33")
    with pytest.raises(ember.DTypeError, match="uint16 has no Ember equivalent"):
        ember.tensor(np.zeros(2, dtype=np.uint16))


# ----------------------------------------------------------------------------- default dtype


def test_set_default_dtype(restore_default_dtype):
    assert ember.get_default_dtype() is ember.float32
    ember.set_default_dtype("float64")
    assert ember.get_default_dtype() is ember.float64
    assert ember.tensor([1.5]).dtype is ember.float64
    assert ember.zeros(2).dtype is ember.float64 and ember.ones(2).dtype is ember.float64
    assert ember.rand(2).dtype is ember.float64 and ember.randn(2).dtype is ember.float64
    assert ember.arange(0.0, 1.0, 0.5).dtype is ember.float64 and ember.linspace(0, 1, 3).dtype is ember.float64
    assert ember.eye(2).dtype is ember.float64
    assert ember.full((2,), 1.5).dtype is ember.float64
    assert (ember.tensor([1, 2]) * 0.5).dtype is ember.float64
    assert ember.mean(ember.tensor([1, 2])).dtype is ember.float64
    assert ember.tensor([1, 2]).dtype is ember.int64  # integers are unaffected
    assert (ember.ones(2, dtype="float32") * 2.0).dtype is ember.float32  # weak scalars still weak
    ember.set_default_dtype(ember.float16)
    assert ember.tensor([1.0]).dtype is ember.float16


def test_set_default_dtype_errors(restore_default_dtype):
    with pytest.raises(ember.DTypeError, match="set_default_dtype: expected a floating dtype, got int32"):
        ember.set_default_dtype("int32")
    with pytest.raises(ember.DTypeError, match="unknown dtype"):
        ember.set_default_dtype("float128")
    assert ember.get_default_dtype() is ember.float32
