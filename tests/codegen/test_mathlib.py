"""The vectorized math functions of the C dialect: max ulp error against float64 NumPy/libm (float32) or
glibc (float64) over wide ranges (large |x|, tiny and denormal x, +-inf, nan), and that the loops calling
them vectorize with no libm call left. ``pytest -s`` prints the error table."""

import math
import re
import subprocess

import numpy as np
import pytest

from ember.codegen import Kernel, Output, arg, build, cc, op, render

FUNCS = ("exp", "expm1", "log", "log1p", "tanh", "sigmoid", "erf")
# Bound on the max error in ulp (float32 against a float64 reference rounded to float32; float64 against glibc).
BOUND = {"float32": 3.0, "float64": 4.0}
N = 1 << 17
RANGES = {  # (float32 range, float64 range) of the wide uniform sample
    "exp": ((-110, 95), (-760, 720)), "expm1": ((-30, 95), (-50, 720)), "log": ((0, 3e38), (0, 1e308)),
    "log1p": ((-1, 1e30), (-1, 1e300)), "tanh": ((-12, 12), (-25, 25)), "sigmoid": ((-120, 120), (-760, 760)),
    "erf": ((-7, 7), (-9, 9)),
}
_erf = np.frompyfunc(math.erf, 1, 1)


def reference(fn, x):
    x = x.astype(np.float64)
    with np.errstate(all="ignore"):
        if fn == "sigmoid":
            e = np.exp(-np.abs(x))
            return np.where(x >= 0, 1 / (1 + e), e / (1 + e))
        if fn == "erf":
            return _erf(x).astype(np.float64)
        return getattr(np, fn)(x)


def sample(fn, dtype):
    rng = np.random.default_rng(7)
    lo, hi = RANGES[fn][dtype == np.float64]
    info = np.finfo(dtype)
    parts = [rng.uniform(lo, hi, N // 4), rng.uniform(-3, 3, N // 4), rng.standard_normal(N // 8) * 1e-4,
             np.geomspace(info.smallest_subnormal, 1.0, N // 16),
             np.array([0.0, -0.0, np.inf, -np.inf, np.nan, info.max, -info.max, info.tiny, -info.tiny])]
    if fn in ("log", "log1p"):
        parts.append(np.exp(rng.uniform(-700 if dtype == np.float64 else -100, 700 if dtype == np.float64 else 88,
                                        N // 8)))
        parts.append(rng.uniform(-1, 1, N // 16))
    x = np.concatenate(parts).astype(dtype)
    return np.resize(x, N)


def ulp_error(y, ref, dtype):
    """Max |y - ref| in units of the spacing at ref (rounded to dtype); non-finite results must agree exactly."""
    with np.errstate(over="ignore"):
        r = ref.astype(dtype)
    finite = np.isfinite(r)
    assert np.array_equal(np.isnan(y), np.isnan(r)), "nan mismatch"
    assert np.array_equal(y[np.isinf(r)], r[np.isinf(r)]), "inf mismatch"
    sp = np.spacing(np.abs(r[finite])).astype(np.float64)
    return float(np.max(np.abs(y[finite].astype(np.float64) - ref[finite]) / sp))


def kernels():
    out = []
    for fn in FUNCS:
        for dt in ("float32", "float64"):
            x = arg("x", dt, (N,))
            out.append(Kernel(f"{fn}_{dt}", [x], [Output("y", op(fn, x))]))
    return out


@pytest.fixture(scope="module")
def program():
    return build(kernels(), label="test_mathlib")


ERRORS = {}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fn", FUNCS)
def test_max_ulp_error(program, fn, dtype):
    x = sample(fn, np.dtype(dtype).type)
    y = program[f"{fn}_{dtype}"].run(x)
    ref = reference(fn, x)
    err = ulp_error(y, ref, np.dtype(dtype).type)
    ERRORS[(fn, dtype)] = err
    assert err <= BOUND[dtype], f"{fn} {dtype}: max error {err:.2f} ulp > {BOUND[dtype]}"


def test_error_table():
    if ERRORS:
        print("\nmax ulp error  " + "  ".join(f"{fn:>7s}" for fn in FUNCS))
        for dt in ("float32", "float64"):
            print(f"{dt:13s}  " + "  ".join(f"{ERRORS.get((fn, dt), float('nan')):7.2f}" for fn in FUNCS))


def test_special_values(program):
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan], np.float32)
    x = np.resize(x, N)
    with np.errstate(all="ignore"):
        for fn in FUNCS:
            y = program[f"{fn}_float32"].run(x)[:5]
            ref = reference(fn, x[:5]).astype(np.float32)
            np.testing.assert_array_equal(y, ref, err_msg=fn)
            np.testing.assert_array_equal(np.signbit(y[:2]), np.signbit(ref[:2]), err_msg=f"{fn}: sign of zero")


def test_loops_vectorize_without_libm_calls(tmp_path):
    comp = cc.find_compiler()
    version = subprocess.run([*comp.command, "--version"], capture_output=True, text=True).stdout
    if "gcc" not in version.lower() and "free software foundation" not in version.lower():
        pytest.skip("vectorization report checked with gcc only")
    src = render(kernels(), "c")
    path = tmp_path / "k.c"
    path.write_text(src.text)
    flags = [f for f in cc.BASE_FLAGS if f != "-shared"]
    proc = subprocess.run([*comp.command, *flags, "-fopt-info-vec-optimized", "-S", str(path), "-o",
                           str(tmp_path / "k.s")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = src.text.splitlines()
    simd_loops = [i + 2 for i, ln in enumerate(lines) if ln.startswith("#pragma omp simd")]  # the for line
    vectorized = {int(m.group(1)) for m in re.finditer(r"k\.c:(\d+):\d+: optimized: loop vectorized", proc.stderr)}
    missed = [n for n in simd_loops if not vectorized & {n, n + 1, n + 2}]  # gcc names the loop or its body
    assert simd_loops and not missed, missed
    asm = (tmp_path / "k.s").read_text()
    calls = set(re.findall(r"call\s+(\w+)", asm))
    libm = {f"{fn}{s}" for fn in FUNCS for s in ("", "f")} | {"expf", "logf", "tanhf", "erff"}
    assert not calls & libm, calls & libm
