"""Random tensors: seeding, explicit generators, ranges and moments, and argument errors."""

import numpy as np
import pytest

import ember


def test_manual_seed_reproducibility():
    ember.manual_seed(123)
    a = (ember.rand(3, 4), ember.randn(5), ember.randint(0, 10, (6,)), ember.randperm(7),
         ember.normal(1.0, 2.0, (3,)), ember.uniform((3,), -1.0, 1.0))
    ember.manual_seed(123)
    b = (ember.rand(3, 4), ember.randn(5), ember.randint(0, 10, (6,)), ember.randperm(7),
         ember.normal(1.0, 2.0, (3,)), ember.uniform((3,), -1.0, 1.0))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.data, y.data)
    ember.manual_seed(124)
    assert not np.array_equal(ember.rand(3, 4).data, a[0].data)
    state = ember.get_rng_state()
    c = ember.randn(4)
    ember.set_rng_state(state)
    np.testing.assert_array_equal(ember.randn(4).data, c.data)
    assert ember.default_generator.initial_seed() == 124
    s = ember.seed()
    assert isinstance(s, int) and ember.default_generator.initial_seed() == s


def test_generators_are_independent_streams():
    g1 = ember.Generator().manual_seed(7)
    g2 = ember.Generator(seed=7)
    x = ember.rand(5, generator=g1)
    ember.randn(1000)  # the default stream does not disturb the others
    ember.rand(3, generator=ember.Generator(seed=7))
    y = ember.rand(5, generator=g2)
    np.testing.assert_array_equal(x.data, y.data)
    ember.manual_seed(0)
    d1 = ember.rand(5)
    ember.manual_seed(0)
    ember.rand(5, generator=g1)  # drawing from g1 leaves the default stream where it was
    ember.manual_seed(0)
    np.testing.assert_array_equal(ember.rand(5).data, d1.data)
    assert not np.array_equal(ember.rand(5, generator=ember.Generator(seed=1)).data,
                              ember.rand(5, generator=ember.Generator(seed=2)).data)
    g = ember.Generator(seed=3)
    st = g.get_state()
    first = ember.randn(4, generator=g)
    g.set_state(st)
    np.testing.assert_array_equal(ember.randn(4, generator=g).data, first.data)
    assert ember.Generator().manual_seed(-1).initial_seed() == -1  # negative seeds work, as in PyTorch


def test_random_ranges_and_moments():
    g = ember.Generator(seed=11)
    u = ember.rand(20000, generator=g)
    assert u.dtype is ember.float32 and u.shape == (20000,)
    assert 0.0 <= u.data.min() and u.data.max() < 1.0
    assert abs(u.data.mean() - 0.5) < 0.01 and abs(u.data.var() - 1 / 12) < 0.005
    n = ember.randn(200, 100, generator=g, dtype="float64")
    assert n.dtype is ember.float64 and n.shape == (200, 100)
    assert abs(n.data.mean()) < 0.02 and abs(n.data.std() - 1) < 0.02
    m = ember.normal(3.0, 0.5, (20000,), generator=g)
    assert abs(m.data.mean() - 3.0) < 0.02 and abs(m.data.std() - 0.5) < 0.01
    v = ember.uniform((20000,), -2.0, 4.0, generator=g)
    assert -2.0 <= v.data.min() and v.data.max() < 4.0 and abs(v.data.mean() - 1.0) < 0.05
    r = ember.randint(3, 7, (20000,), generator=g)
    assert r.dtype is ember.int64 and set(np.unique(r.data)) == {3, 4, 5, 6}
    assert ember.randint(5, size=(10,), generator=g).data.max() < 5
    assert ember.randint(0, 200, (4,), dtype="uint8").dtype is ember.uint8
    p = ember.randperm(50, generator=g)
    assert p.dtype is ember.int64 and sorted(p.tolist()) == list(range(50))
    assert ember.randperm(0).shape == (0,) and ember.randperm(5, dtype="int32").dtype is ember.int32
    assert ember.rand(2, 3).shape == (2, 3) and ember.rand((2, 3)).shape == (2, 3) and ember.randn().shape == ()
    assert ember.normal(0.0, 0.0, (3,)).tolist() == [0.0, 0.0, 0.0]
    assert ember.rand_like(ember.zeros(2, 2, dtype="float64")).dtype is ember.float64
    assert ember.randn_like(ember.zeros(3)).shape == (3,)
    t = ember.randn(3, requires_grad=True)
    assert t.requires_grad and t.is_leaf


@pytest.mark.parametrize("call,exc,msg", [
    (lambda: ember.rand(2, dtype="int64"), ember.DTypeError, "rand: expected a floating dtype, got int64"),
    (lambda: ember.randn(-1), ember.ShapeError, "randn: negative dimension"),
    (lambda: ember.rand(2.5), ember.ShapeError, "rand: shape must be a sequence of ints"),
    (lambda: ember.randint(5, 2, (3,)), ValueError, "randint: expected low < high, got low=5, high=2"),
    (lambda: ember.randint(0, 5, (3,), dtype="float32"), ember.DTypeError, "randint: expected an integer dtype"),
    (lambda: ember.randint(0, 300, (3,), dtype="uint8"), ValueError, r"randint: the range \[0, 300\) does not fit"),
    (lambda: ember.randint(-1, 3, (3,), dtype="uint8"), ValueError, "does not fit in uint8"),
    (lambda: ember.normal(0.0, -1.0, (2,)), ValueError, "normal: std must be non-negative"),
    (lambda: ember.uniform((2,), 1.0, 0.0), ValueError, "uniform: expected low <= high"),
    (lambda: ember.randperm(-1), ember.ShapeError, "randperm: n must be non-negative"),
    (lambda: ember.randperm(2.5), TypeError, "randperm: n must be an int"),
    (lambda: ember.rand(2, generator="x"), TypeError, "rand: generator must be an ember.Generator, got str"),
    (lambda: ember.manual_seed(1.5), TypeError, "manual_seed: seed must be an int, got float"),
    (lambda: ember.randint(0, 5, (2,), dtype="bool"), ember.DTypeError, "randint: expected an integer dtype"),
])
def test_random_errors(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


def test_randint_torch_style_high_size():
    r = ember.randint(3, (50,))
    assert r.shape == (50,) and r.dtype is ember.int64 and 0 <= int(r.min()) and int(r.max()) < 3
