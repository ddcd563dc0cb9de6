"""Every registry op with a ``c_expr``, for every dtype its ``infer`` accepts, against the op's own NumPy
reference kernel (``impl``): one consumer of the registry checked against another."""

import numpy as np
import pytest

from ember import dtypes as dt
from ember.codegen import Kernel, Output, arg, build, op
from ember.errors import DTypeError
from ember.ops.registry import REGISTRY

N = 515
DTYPES = (dt.float32, dt.float64, dt.int64, dt.int32, dt.int8, dt.uint8, dt.bool_)
RNG = np.random.default_rng(5)


def sample(d, i):
    if d is dt.bool_:
        return RNG.random(N) > 0.5
    if d.is_floating_point:
        x = RNG.standard_normal(N) * 4
        x[:12] = [0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.5, -2.5, np.inf, -np.inf, np.nan, 1e-40]
        return x.astype(d.np)
    info = np.iinfo(d.np)
    x = RNG.integers(max(info.min, -50), min(info.max, 50), N, endpoint=True).astype(d.np)
    x[:6] = [0, 1, info.max, info.min, 2, 3] if i == 0 else [2, 0, -1 if info.min else 1, 3, 0, 7]
    return x


def cases():
    out = []
    for name, reg in sorted(REGISTRY.items()):
        if reg.c_expr is None:
            continue
        arity = max(i + 1 for i in range(3) if "{" + str(i) + "}" in reg.c_expr)
        for d in DTYPES:
            if name == "cast":
                for target in (dt.float32, dt.int32, dt.bool_, dt.uint8):
                    if target is not d:
                        out.append((name, d, {"dtype": target}))
                continue
            try:
                if name == "where":
                    op("where", arg("c", "bool", (N,)), arg("a", d, (N,)), arg("b", d, (N,)))
                else:
                    op(name, *[arg(f"x{i}", d, (N,)) for i in range(arity)])
            except DTypeError:
                continue
            out.append((name, d, {}))
    return out


CASES = cases()


def case_id(c):
    extra = f"_to_{c[2]['dtype'].name}" if c[2] else ""
    return f"{c[0]}_{c[1].name}{extra}"


def make(c):
    name, d, attrs = c
    arity = max(i + 1 for i in range(3) if "{" + str(i) + "}" in REGISTRY[name].c_expr)
    dts = [dt.bool_, d, d] if name == "where" else [d] * arity
    args = [arg(f"x{i}", t, (N,)) for i, t in enumerate(dts)]
    return Kernel(case_id(c), args, [Output("y", op(name, *args, **attrs))]), dts


@pytest.fixture(scope="module")
def program():
    return build([make(c)[0] for c in CASES], label="test_registry")


def test_every_pointwise_op_is_covered():
    names = {c[0] for c in CASES}
    assert {"add", "exp", "where", "cast", "floor_divide", "remainder", "maximum", "logical_xor", "sigmoid",
            "erf", "bitwise_and", "isnan"} <= names


EXACT = {"cast", "floor", "ceil", "round", "abs", "neg", "clone", "sign", "relu", "maximum", "minimum", "where", "add",
         "sub", "mul", "div"}


@pytest.mark.parametrize("c", CASES, ids=case_id)
def test_matches_registry_impl(program, c):
    name, d, attrs = c
    kernel, dts = make(c)
    inputs = [sample(t, i) for i, t in enumerate(dts)]
    if name == "pow" and d.is_integer:
        inputs[1] = np.abs(inputs[1]) % 4       # NumPy refuses negative integer powers
    with np.errstate(all="ignore"):
        ref = np.asarray(REGISTRY[name].impl(np, *inputs, **attrs)).astype(kernel.outputs[0].dtype.np)
    out = program[kernel.name].run(*inputs)
    keep = np.ones(N, bool)
    if name in ("floor", "ceil", "round") and d.is_integer:  # NumPy goes through float64 (inexact beyond 2**53)
        keep = np.abs(inputs[0].astype(np.float64)) < 2.0**53
    out, ref = out[keep], ref[keep]
    if ref.dtype.kind == "f" and name not in EXACT:
        np.testing.assert_allclose(out, ref, rtol=4 * np.finfo(ref.dtype).eps, atol=0, equal_nan=True)
    else:
        np.testing.assert_array_equal(out, ref)
