"""Fused C kernels against NumPy: layouts (odd sizes, views, broadcasting), dtypes, chains, reductions,
softmax / layer_norm, integer and NaN semantics. Every kernel of this module is compiled in one
translation unit (one compiler run), built by the ``program`` fixture."""

import math

import numpy as np
import pytest

from ember import dtypes as dt
from ember.codegen import (
    CodegenError,
    Kernel,
    Output,
    arg,
    arg_like,
    build,
    const,
    op,
    reduce,
    render,
    where,
)
from ember.errors import DTypeError, ShapeError

CASES = {}
RNG = np.random.default_rng(1234)


def case(fn):
    """Register a case: ``fn()`` returns (kernel, input arrays, expected outputs, rtol, atol)."""
    CASES[fn.__name__] = fn()
    return fn


def f32(*shape, lo=-3.0, hi=3.0):
    return RNG.uniform(lo, hi, shape).astype(np.float32)


def f64(*shape, lo=-3.0, hi=3.0):
    return RNG.uniform(lo, hi, shape)


# ----------------------------------------------------------------------------- pointwise layouts


for _n in (1, 7, 1023, 4097):
    for _t in (np.float32, np.float64):
        def _affine(n=_n, t=_t):
            x, a, b = (RNG.standard_normal(s).astype(t) for s in ((3, n), (n,), (3, 1)))
            xv, av, bv = arg_like("x", x), arg_like("a", a), arg_like("b", b)
            k = Kernel(f"affine_{n}_{t.__name__}", [xv, av, bv], [Output("y", xv * av + bv)])
            return k, [x, a, b], [x * a + b], 0, 0  # op-by-op rounding: bit-identical to NumPy
        _affine.__name__ = f"affine_{_n}_{_t.__name__}"
        case(_affine)


@case
def uniform_hoisted():
    """Adam's shape: per-element update with a bias correction from a 0-d step count (hoisted out of the loop)."""
    p, step = f32(37, 300), np.array(3.0, np.float32)
    pv, sv = arg_like("p", p), arg_like("step", step)
    corr = op("sub", const(1.0, "float32"), op("pow", const(0.9, "float32"), sv))
    k = Kernel("uniform_hoisted", [pv, sv], [Output("y", pv / corr), Output("c", corr + pv * 0)])
    c = np.float32(1) - np.power(np.float32(0.9), step)
    return k, [p, step], [p / c, c + p * np.float32(0)], 1e-6, 0


@case
def transposed_and_stepped():
    base = f32(1023, 14)
    x = base.T                      # (14, 1023), strides (1, 14)
    y = f32(29, 2047)[::2, ::2]     # (15, 1024) -> sliced with steps
    y = y[:14, :1023]
    xv, yv = arg_like("x", x), arg_like("y", y)
    k = Kernel("views", [xv, yv], [Output("out", op("maximum", xv, yv) - xv * yv)])
    return k, [x, y], [np.maximum(x, y) - x * y], 0, 0


@case
def flipped():
    x = f64(5, 37)[::-1, ::-3]
    xv = arg_like("x", x)
    k = Kernel("flipped", [xv], [Output("out", xv * 2.0 - 1.0)])
    return k, [x], [x * 2.0 - 1.0], 0, 0


@case
def broadcast_outer():
    a, b, s = f32(7, 1), f32(1, 4097), np.array(2.5, np.float32)
    av, bv, sv = arg_like("a", a), arg_like("b", b), arg_like("s", s)
    k = Kernel("outer", [av, bv, sv], [Output("out", (av - bv) * sv)])
    return k, [a, b, s], [(a - b) * s], 0, 0


@case
def broadcast_stride0_view():
    x = np.broadcast_to(f32(1, 513), (9, 513))   # a stride-0 view as the argument
    xv = arg_like("x", x)
    k = Kernel("stride0", [xv], [Output("out", xv * xv)])
    return k, [x], [x * x], 0, 0


@case
def two_outputs_and_cast():
    x = f32(33, 65)
    xv = arg_like("x", x)
    k = Kernel("two_out", [xv], [Output("sq", xv * xv), Output("pos", op("gt", xv, 0.0)),
                                  Output("as_f64", xv, dtype=dt.float64)])
    return k, [x], [x * x, x > 0, x.astype(np.float64)], 0, 0


# ----------------------------------------------------------------------------- transcendental chains


def gelu_tanh(v, c=math.sqrt(2 / math.pi)):
    return 0.5 * v * (1 + np.tanh(c * (v + 0.044715 * v ** 3)))


for _t in (np.float32, np.float64):
    def _chain(t=_t):
        x, a, b = (RNG.standard_normal(s).astype(t) for s in ((64, 1023), (1023,), (1023,)))
        xv, av, bv = arg_like("x", x), arg_like("a", a), arg_like("b", b)
        z = xv * av + bv
        g = z * 0.5 * (op("tanh", (z + z * z * z * 0.044715) * math.sqrt(2 / math.pi)) + 1.0)
        out = g * op("sigmoid", g) + xv
        k = Kernel(f"chain_{t.__name__}", [xv, av, bv], [Output("out", out)])
        zr = x.astype(np.float64) * a + b
        gr = gelu_tanh(zr)
        ref = gr / (1 + np.exp(-gr)) + x
        tol = 2e-6 if t is np.float32 else 1e-14
        return k, [x, a, b], [ref], tol, tol
    _chain.__name__ = f"chain_{_t.__name__}"
    case(_chain)


@case
def unary_math_f32():
    x = f32(4097, lo=-6, hi=6)
    p = np.abs(x) + 1e-3
    xv, pv = arg_like("x", x), arg_like("p", p)
    outs = [Output("erf", op("erf", xv)), Output("sqrt", op("sqrt", pv)), Output("rsqrt", op("rsqrt", pv)),
            Output("log1p", op("log1p", pv)), Output("expm1", op("expm1", xv)), Output("relu", op("relu", xv)),
            Output("sq", op("pow", xv, 2.0)), Output("abs", op("abs", xv)), Output("floor", op("floor", xv))]
    xd, pd = x.astype(np.float64), p.astype(np.float64)
    erf = np.frompyfunc(math.erf, 1, 1)(xd).astype(np.float64)
    refs = [erf, np.sqrt(pd), 1 / np.sqrt(pd), np.log1p(pd), np.expm1(xd), np.maximum(xd, 0), xd * xd, np.abs(xd),
            np.floor(xd)]
    return Kernel("unary_f32", [xv, pv], outs), [x, p], refs, 4e-7, 1e-7


# ----------------------------------------------------------------------------- reductions


@case
def sum_max_last_axis():
    x = f32(37, 4097)
    xv = arg_like("x", x)
    k = Kernel("sum_max_last", [xv], [Output("s", reduce("sum", xv, -1), reduced=True),
                                      Output("m", reduce("amax", xv, -1), reduced=True, keepdim=False)])
    return k, [x], [x.astype(np.float64).sum(-1, keepdims=True), x.max(-1)], 1e-6, 1e-5


@case
def sum_max_axis0():
    x = f64(1023, 7)
    xv = arg_like("x", x)
    k = Kernel("sum_max_axis0", [xv], [Output("s", reduce("sum", xv, 0), reduced=True, keepdim=False),
                                       Output("m", reduce("amax", xv, 0), reduced=True, keepdim=False)])
    return k, [x], [x.sum(0), x.max(0)], 1e-12, 1e-12


@case
def sum_axis0_wide():
    x = f32(9, 1025)  # more columns than one block
    xv = arg_like("x", x)
    k = Kernel("sum_axis0_wide", [xv], [Output("s", reduce("sum", xv * xv, 0), reduced=True)])
    return k, [x], [(x.astype(np.float64) ** 2).sum(0, keepdims=True)], 1e-6, 1e-6


@case
def middle_axis_noncontig():
    x = f32(6, 40, 9).transpose(0, 2, 1)[:, ::2, :]   # (6, 5, 40), axis 1 reduced
    xv = arg_like("x", x)
    k = Kernel("middle_axis", [xv], [Output("s", reduce("sum", xv, 1), reduced=True, keepdim=False),
                                     Output("mn", reduce("amin", xv, 1), reduced=True, keepdim=False)])
    return k, [x], [x.astype(np.float64).sum(1), x.min(1)], 1e-6, 1e-6


@case
def two_axes_transposed():
    x = f64(8, 33, 17).transpose(2, 0, 1)   # reduce axes (1, 2) of a non-contiguous view
    xv = arg_like("x", x)
    k = Kernel("two_axes", [xv], [Output("s", reduce("sum", xv, (1, 2)), reduced=True)])
    return k, [x], [x.sum((1, 2), keepdims=True)], 1e-12, 1e-12


@case
def full_reduction_parallel():
    x = f32(1 << 18)
    xv = arg_like("x", x)
    k = Kernel("full_sum", [xv], [Output("s", reduce("sum", xv, 0), reduced=True, keepdim=False),
                                  Output("m", reduce("amax", op("abs", xv), 0), reduced=True, keepdim=False)])
    return k, [x], [np.array(x.astype(np.float64).sum()), np.array(np.abs(x).max())], 1e-6, 1e-4


@case
def int_and_bool_reductions():
    x = RNG.integers(-1000, 1000, (13, 257)).astype(np.int32)
    xv = arg_like("x", x)
    pos = op("gt", xv, 0)
    k = Kernel("int_red", [xv], [Output("s", reduce("sum", xv, -1, dtype=dt.int64), reduced=True, keepdim=False),
                                 Output("m", reduce("amax", xv, -1), reduced=True, keepdim=False),
                                 Output("count", reduce("sum", pos, -1), reduced=True, keepdim=False),
                                 Output("any", reduce("amax", pos, -1), reduced=True, keepdim=False)])
    return k, [x], [x.astype(np.int64).sum(-1), x.max(-1), (x > 0).sum(-1), (x > 0).any(-1)], 0, 0


@case
def empty_sum():
    x = np.zeros((4, 0), np.float32)
    xv = arg_like("x", x)
    k = Kernel("empty_sum", [xv], [Output("s", reduce("sum", xv, -1), reduced=True, keepdim=False)])
    return k, [x], [np.zeros(4, np.float32)], 0, 0


# ----------------------------------------------------------------------------- softmax, log_softmax, layer_norm


def softmax_kernel(name, x, axis):
    xv = arg_like("x", x)
    e = op("exp", xv - reduce("amax", xv, axis))
    return Kernel(name, [xv], [Output("y", e / reduce("sum", e, axis))])


def softmax_ref(x, axis):
    e = np.exp(x.astype(np.float64) - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


@case
def softmax_last():
    x = f32(64, 1023, lo=-20, hi=20)
    return softmax_kernel("softmax_last", x, -1), [x], [softmax_ref(x, -1)], 3e-6, 1e-9


@case
def softmax_axis0():
    x = f32(257, 33, lo=-20, hi=20)
    return softmax_kernel("softmax_axis0", x, 0), [x], [softmax_ref(x, 0)], 3e-6, 1e-9


@case
def log_softmax_last():
    x = f64(17, 4097, lo=-50, hi=50)
    xv = arg_like("x", x)
    m = reduce("amax", xv, -1)
    lse = op("log", reduce("sum", op("exp", xv - m), -1)) + m
    k = Kernel("log_softmax", [xv], [Output("y", xv - lse)])
    ref = x - (np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) + x.max(-1, keepdims=True))
    return k, [x], [ref], 1e-13, 1e-12


def layer_norm_ref(x, eps=1e-5):
    xd = x.astype(np.float64)
    mean = xd.mean(-1, keepdims=True)
    var = ((xd - mean) ** 2).mean(-1, keepdims=True)
    return (xd - mean) / np.sqrt(var + eps), mean, 1 / np.sqrt(var + eps)


@case
def layer_norm():
    x = f32(129, 1023, lo=-2, hi=5)
    w, b = f32(1023), f32(1023)
    xv, wv, bv = arg_like("x", x), arg_like("w", w), arg_like("b", b)
    n = x.shape[-1]
    mean = reduce("sum", xv, -1) * (1.0 / n)
    d = xv - mean
    rstd = op("rsqrt", reduce("sum", d * d, -1) * (1.0 / n) + 1e-5)
    k = Kernel("layer_norm", [xv, wv, bv], [Output("y", d * rstd * wv + bv), Output("mean", mean, reduced=True),
                                             Output("rstd", rstd, reduced=True)])
    y, m, r = layer_norm_ref(x)
    return k, [x, w, b], [y * w + b, m, r], 2e-6, 2e-6


for _axis in (-1, 0):
    def _centered(axis=_axis):
        x = f32(65, 129)
        xv = arg_like("x", x)
        d = xv - reduce("sum", xv, axis) * (1.0 / x.shape[axis])
        k = Kernel(f"centered_{-axis}", [xv], [Output("d", d), Output("ss", reduce("sum", d * d, axis), reduced=True)])
        dr = x.astype(np.float64) - x.astype(np.float64).mean(axis, keepdims=True)
        return k, [x], [dr, (dr * dr).sum(axis, keepdims=True)], 2e-6, 2e-6
    _centered.__name__ = f"centered_{-_axis}"
    case(_centered)


# ----------------------------------------------------------------------------- integer, bool and NaN semantics


@case
def integer_division():
    a = np.array([7, -7, 7, -7, 0, 5, -2**31, 9, -9], np.int32)
    b = np.array([2, 2, -2, -2, 3, 0, -1, 0, 4], np.int32)
    av, bv = arg_like("a", a), arg_like("b", b)
    k = Kernel("int_div", [av, bv], [Output("q", op("floor_divide", av, bv)), Output("r", op("remainder", av, bv)),
                                     Output("abs", op("abs", av)), Output("mx", op("maximum", av, bv))])
    with np.errstate(all="ignore"):
        return k, [a, b], [np.floor_divide(a, b), np.remainder(a, b), np.abs(a), np.maximum(a, b)], 0, 0


@case
def float_division_semantics():
    a = np.array([1.0, -1.0, 5.5, -5.5, 1.0, 0.0, 7.0], np.float64)
    b = np.array([0.1, 0.1, 2.0, 2.0, 0.0, -3.0, -np.inf], np.float64)
    av, bv = arg_like("a", a), arg_like("b", b)
    k = Kernel("float_div", [av, bv], [Output("q", op("floor_divide", av, bv)), Output("r", op("remainder", av, bv))])
    with np.errstate(all="ignore"):
        return k, [a, b], [np.floor_divide(a, b), np.remainder(a, b)], 0, 0


@case
def nan_propagation():
    x = np.array([[1.0, np.nan, 3.0], [-1.0, 2.0, -np.inf], [np.nan, np.nan, 0.0]], np.float32)
    y = np.array([0.5, 0.5, np.nan], np.float32)
    xv, yv = arg_like("x", x), arg_like("y", y)
    k = Kernel("nans", [xv, yv], [Output("mx", op("maximum", xv, yv)), Output("mn", op("minimum", yv, xv)),
                                  Output("relu", op("relu", xv)), Output("sign", op("sign", xv)),
                                  Output("amax", reduce("amax", xv, -1), reduced=True),
                                  Output("isnan", op("isnan", xv))])
    return k, [x, y], [np.maximum(x, y), np.minimum(y, x), np.maximum(x, 0), np.sign(x), x.max(-1, keepdims=True),
                       np.isnan(x)], 0, 0


@case
def bool_logic_and_where():
    x = f32(5, 129)
    c = RNG.random((5, 129)) > 0.5
    xv, cv = arg_like("x", x), arg_like("c", c)
    pos = op("gt", xv, 0.0)
    k = Kernel("logic", [xv, cv], [Output("and", op("logical_and", pos, cv)), Output("xor", op("logical_xor", pos, cv)),
                                   Output("not", op("logical_not", cv)), Output("w", where(cv, xv, -1.0)),
                                   Output("i", op("cast", xv * 10.0, dtype=dt.int32)),
                                   Output("b", op("cast", xv, dtype=dt.bool_)),
                                   Output("badd", op("add", cv, cv))])
    return k, [x, c], [np.logical_and(x > 0, c), np.logical_xor(x > 0, c), ~c, np.where(c, x, -1.0).astype(np.float32),
                       (x * np.float32(10)).astype(np.int32), x.astype(bool), c | c], 0, 0


@case
def inf_and_int64_constants():
    x = RNG.integers(-5, 5, 300).astype(np.int64)
    xv = arg_like("x", x)
    big = const(-(2**63), dt.int64)
    k = Kernel("consts", [xv], [Output("y", op("maximum", xv * 3, big)),
                                Output("f", where(op("gt", xv, 0), op("cast", xv, dtype=dt.float32),
                                                  const(-math.inf, dt.float32)))])
    return k, [x], [np.maximum(x * 3, -(2**63)), np.where(x > 0, x.astype(np.float32), -np.inf)], 0, 0


# ----------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def program():
    return build([c[0] for c in CASES.values()], label="test_kernels")


@pytest.mark.parametrize("name", list(CASES))
def test_kernel_matches_numpy(program, name):
    kernel, inputs, expected, rtol, atol = CASES[name]
    fn = program[kernel.name]
    outs = fn.run(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    assert len(outs) == len(expected)
    for o, out, ref in zip(kernel.outputs, outs, expected):
        ref = np.asarray(ref)
        assert out.shape == o.shape == tuple(np.shape(ref)) or out.size == ref.size, (o.name, out.shape, ref.shape)
        ref = ref.reshape(out.shape)
        if rtol == 0 and atol == 0:
            np.testing.assert_array_equal(out, ref.astype(out.dtype), err_msg=f"{name}: output {o.name}")
        else:
            np.testing.assert_allclose(out, ref, rtol=rtol, atol=atol, err_msg=f"{name}: output {o.name}")


def test_kernel_counts_and_layouts(program):
    """softmax and layer_norm are one kernel each (multi-pass); their loops are the expected layouts."""
    src = program.source
    sm = src.functions[src.symbols["softmax_last"]]
    assert sm.count("omp simd reduction") == 2 and "omp parallel for" in sm
    col = src.functions[src.symbols["softmax_axis0"]]
    assert "a1[256]" in col or "[33]" in col   # per-column accumulators
    ln = src.functions[src.symbols["layer_norm"]]
    assert ln.count("reduction(+:") == 2
    # the output that a later reduction reads is written in that reduction's pass (no extra pass)
    for name in ("centered_1", "centered_0"):
        f = src.functions[src.symbols[name]]
        assert f.count("for (int64_t r") == (2 if name == "centered_1" else 2 + 0), f
    # no libm calls left for the transcendental functions in the C dialect
    chain = src.functions[src.symbols["chain_float32"]]
    assert "em_tanhf(" in chain and "em_sigmoidf(" in chain and "tanh(" not in chain.replace("em_tanhf(", "")


def test_values_the_same_at_every_index_are_computed_before_the_loop(program):
    src = program.source
    f = src.functions[src.symbols["uniform_hoisted"]]
    loop = f.index("for (int64_t t")
    assert "powf(" in f[:loop] and "powf(" not in f[loop:], f
    p = np.empty((0, 4), np.float32)  # NumPy gives empty arrays zero strides: p reads as "the same everywhere"
    pv, sv = arg_like("p", p), arg("s", "float32", ())
    empty = Kernel("uniform_empty", [pv, sv], [Output("y", op("div", pv, op("exp", sv)))])
    fn = build([empty], label="test_uniform_empty")["uniform_empty"]
    assert fn.run(p, np.array(1.0, np.float32)).shape == (0, 4)


def test_identical_kernels_share_one_function():
    def k(name):
        x = arg("x", "float32", (8, 8))
        return Kernel(name, [x], [Output("y", op("exp", x))])
    src = render([k("a"), k("b")])
    assert src.symbols["a"] == src.symbols["b"] and len(src.functions) == 1


def test_bind_run_tiles_and_check(program):
    kernel, inputs, expected, *_ = CASES["softmax_last"]
    fn = program[kernel.name]
    out = np.empty(kernel.outputs[0].shape, np.float32)
    run = fn.bind(out, *inputs)
    run()
    np.testing.assert_allclose(out, expected[0], rtol=3e-6, atol=1e-9)
    out[:] = 0
    half = fn.n_tiles // 2
    fn.run_tiles(0, half, out, *inputs)
    assert np.all(out[half:] == 0) and np.all(out[:half] > 0)
    fn.run_tiles(half, fn.n_tiles, out, *inputs)
    np.testing.assert_allclose(out, expected[0], rtol=3e-6, atol=1e-9)
    with pytest.raises(ShapeError, match="must have shape"):
        fn.check(out, inputs[0][:, :-1])
    with pytest.raises(DTypeError, match="must be float32"):
        fn.check(out, inputs[0].astype(np.float64))
    with pytest.raises(ShapeError, match="C-contiguous"):
        fn.check(np.empty(out.shape[::-1], np.float32).T, *inputs)
    with pytest.raises(ValueError, match="overlaps"):
        fn.check(inputs[0], inputs[0])
    with pytest.raises(TypeError, match="expected 1 output"):
        fn.check(out)


def test_build_time_validation():
    x = arg("x", "float32", (4, 5))
    y = arg("y", "float64", (4, 5))
    with pytest.raises(DTypeError, match="add"):
        op("add", x, y)
    with pytest.raises(DTypeError, match="floating"):
        op("exp", arg("i", "int32", (3,)))
    with pytest.raises(CodegenError, match="not a pointwise op"):
        op("matmul", x, x)
    with pytest.raises(CodegenError, match="takes 1 operand"):
        op("exp", x, x)
    with pytest.raises(ShapeError, match="cannot be broadcast"):
        Kernel("bad", [x, arg("z", "float32", (3,))], [Output("o", x)])
    with pytest.raises(CodegenError, match="varies along the reduced axes"):
        Kernel("bad", [x], [Output("o", x + reduce("sum", x, -1), reduced=True)])
    with pytest.raises(CodegenError, match="different axis sets"):
        Kernel("bad", [x], [Output("o", reduce("sum", x, 0) + reduce("sum", x, 1))])
    with pytest.raises(CodegenError, match="not among its inputs"):
        Kernel("bad", [], [Output("o", x * 2.0)])
    with pytest.raises(ShapeError, match="empty dimension"):
        e = arg("e", "float32", (3, 0))
        Kernel("bad", [e], [Output("o", reduce("amax", e, -1), reduced=True)])
    with pytest.raises(DTypeError, match="float16"):
        arg("h", "float16", (3,))
    with pytest.raises(CodegenError, match="identifier"):
        Kernel("bad name", [x], [Output("o", x)])
