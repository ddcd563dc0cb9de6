"""Vectorizable transcendental functions for the C dialect, as one C header string (``HEADER``).

Every function is a ``static inline`` C function over ``float`` (``em_expf``) and ``double``
(``em_exp``) written without branches or libm calls: range reduction by bit manipulation,
polynomials in Horner form and ``?:`` selects that gcc if-converts into blends, so a loop calling
them auto-vectorizes under ``-O3 -march=native`` (check with ``-fopt-info-vec``). Special values
(NaN, +-inf, denormal inputs and results) are handled by selects, never by branches.

Functions: exp, expm1, log, log1p, tanh, sigmoid, erf (gelu's ``tanh`` and ``erf`` pieces are
these). The CUDA dialect does not use this header: CUDA's own ``expf``/``tanhf``/... are fast.

How the approximations were obtained (all coefficients are fitted here, none copied):

* ``exp``/``expm1``: ``x = n*ln2 + r`` with ``|r| <= ln2/2`` (Cody-Waite split of ln2 so ``n*LN2_HI``
  is exact), ``exp(r) - 1 = r + r^2 * q(r)``; ``q`` is the Chebyshev interpolant of
  ``(e^r - 1 - r)/r^2`` on ``[-ln2/2, ln2/2]`` (degree 4 for float, 9 for double, computed with
  mpmath at 60 digits). ``2^n`` is built from exponent bits in two halves so denormal results and
  overflow to inf come out right.
* ``log``: ``x = 2^k * m`` with ``m`` in ``[sqrt(1/2), sqrt(2))``, ``f = m - 1``, ``s = f/(2+f)``,
  ``log(m) = f - (f^2/2 - s*(f^2/2 + R))`` with ``R = z*F(z)``, ``z = s^2``, ``F`` the interpolant of
  ``(2 atanh(s) - 2s)/s^3`` (degree 2 for float, 6 for double). Denormal inputs are pre-scaled.
* ``log1p(x) = log(u) - ((u - 1) - x)/u`` with ``u = 1 + x`` (the rounding of ``u`` corrected).
* ``tanh(x) = sign(x) * e/(e + 2)`` with ``e = expm1(2|x|)`` (no cancellation near 0).
* ``sigmoid(x) = 1/(1 + e)`` or ``e/(1 + e)`` with ``e = exp(-|x|)`` (never overflows).
* ``erf``: ``|x| < 3/4``: ``x * A(x^2)``; otherwise ``1 - exp(-x^2) * G(t)``, ``t = 2/(2 + |x|)``,
  with ``A``, ``G`` Chebyshev interpolants of ``erf(x)/x`` and ``erfc(z) * exp(z^2)`` (as a function of
  ``t`` on ``[2/(2+zmax), 2/2.75]``, ``zmax`` = 4 for float and 6 for double, beyond which erf
  rounds to 1), both evaluated in a variable mapped to ``[-1, 1]`` (degrees 5/7 float, 10/17 double).

Measured accuracy (``tests/codegen/test_mathlib.py`` reports it) is a few ulp in float32 against a
float64 reference and a few ulp in float64 against glibc.
"""

from __future__ import annotations

# ----------------------------------------------------------------------------- coefficients (lowest order first)

# q(r) = (exp(r) - 1 - r) / r^2 on [-ln2/2, ln2/2]
_Q = {
    "f": [0.5, 0.1666657702559799, 0.041666554662050534, 0.008363173074513711, 0.001392617611993558],
    "d": [0.5000000000000001, 0.16666666666666669, 0.041666666666624164, 0.008333333333330065,
          0.0013888888917196719, 0.00019841269863040545, 2.4801521322368692e-05, 2.7557268480310024e-06,
          2.7620075879983367e-07, 2.5100375832561234e-08],
}
# F(z) = (2 atanh(s) - 2 s) / (s z), z = s^2 in [0, (3 - 2 sqrt 2)^2]
_F = {
    "f": [0.6666668503957586, 0.3998878056602198, 0.2957994939197279],
    "d": [0.666666666666667, 0.39999999999899505, 0.28571428625975487, 0.2222221113479508, 0.18182889125261723,
          0.15331721600556042, 0.14616449685043406],
}
# erf(x)/x = A(u * A_SCALE - 1), u = x^2 in [0, 9/16]
_ERF_A = {
    "f": [1.0309528170656652, -0.08960376715984655, 0.007314458876925304, -0.00048087156463558656,
          2.606190820529675e-05, -1.1890034736722354e-06],
    "d": [1.0309528156012642, -0.0896037671090999, 0.007314485234578211, -0.000480872478031452,
          2.599164517570422e-05, -1.186568422147177e-06, 4.678558330163392e-08, -1.6217928017585119e-09,
          5.012952566544622e-11, -1.3998947677380024e-12, 3.552903127102359e-14],
}
# erfc(z) * exp(z^2) = G(B_SCALE / (2 + z) + B_SHIFT), z in [3/4, zmax]
_ERF_G = {
    "f": [0.2821909873916693, 0.18016853080963185, 0.03974129515719156, 0.00486773675382666,
          3.7919357568319586e-05, -6.854704540248878e-05, -1.6478197876224722e-06, 1.3760741171195234e-06],
    "d": [0.2458108043840275, 0.19869989217993136, 0.05382333879871982, 0.008545561146485635,
          0.00023459019375750558, -0.00017016631325892262, -1.1849816152251973e-05, 5.4762949717103126e-06,
          2.148635102828039e-07, -2.3103817443733672e-07, 1.2363891747923716e-08, 9.166704204573563e-09,
          -1.8679340598563085e-09, -1.7732813520040517e-10, 1.3191614581354528e-10, -1.4552935146349714e-11,
          -4.895111655461119e-12, 1.5247531780761976e-12],
}

# Per-type constants: C type, bit types, exponent layout, clamps. MAGIC = 1.5 * 2^MANT: adding it rounds to an
# integer (the low mantissa bits of the sum are that integer), without a float-to-int conversion.
_TYPES: dict[str, dict[str, object]] = {
    "f": {"T": "float", "U": "uint32_t", "I": "int32_t", "MANT": 23, "BIAS": 127, "MAGIC": "12582912.0f",
          "LOG2E": "1.44269504088896341f", "LN2HI": "0.693145751953125f", "LN2LO": "1.428606765330187e-06f",
          "EXP_HI": "88.8f", "EXP_LO": "-104.0f", "EM1_LO": "-20.0f", "EM1_BIG": 24, "TANH_SAT": "9.1f",
          "MIN_NORMAL": "1.17549435e-38f", "DENORM_SCALE": "8388608.0f", "DENORM_BITS": 23,
          "SQRT2": "1.41421356237309505f", "SIGN": "0x80000000u", "EXPO_MASK": "0x7fffffu",
          "ONE_BITS": "0x3f800000u", "ERF_ZA": "0.75f", "ERF_ZMAX": "4.0f", "A_SCALE": "3.5555555555555554f",
          "B_SCALE": "10.153846153846153f", "B_SHIFT": "-2.6923076923076925f", "INF": "__builtin_inff()",
          "NAN": "__builtin_nanf(\"\")"},
    "d": {"T": "double", "U": "uint64_t", "I": "int64_t", "MANT": 52, "BIAS": 1023, "MAGIC": "6755399441055744.0",
          "LOG2E": "1.4426950408889634", "LN2HI": "0.6931471803691238", "LN2LO": "1.9082149292705877e-10",
          "EXP_HI": "709.9", "EXP_LO": "-746.0", "EM1_LO": "-40.0", "EM1_BIG": 53, "TANH_SAT": "19.5",
          "MIN_NORMAL": "2.2250738585072014e-308", "DENORM_SCALE": "4503599627370496.0", "DENORM_BITS": 52,
          "SQRT2": "1.4142135623730951", "SIGN": "0x8000000000000000ull", "EXPO_MASK": "0xfffffffffffffull",
          "ONE_BITS": "0x3ff0000000000000ull", "ERF_ZA": "0.75", "ERF_ZMAX": "6.0",
          "A_SCALE": "3.5555555555555554", "B_SCALE": "8.380952380952381", "B_SHIFT": "-2.0476190476190474",
          "INF": "__builtin_inf()", "NAN": "__builtin_nan(\"\")"},
}


def _lit(v: float, s: str) -> str:
    return repr(float(v)) + ("f" if s == "f" else "")


def _horner(var: str, coeffs: list[float], s: str) -> str:
    """``c0 + var*(c1 + var*(...))`` as a C expression with fused multiply-adds where the CPU has them."""
    expr = _lit(coeffs[-1], s)
    for c in reversed(coeffs[:-1]):
        expr = f"EM_FMA{s.upper() if s == 'f' else 'D'}({var}, {expr}, {_lit(c, s)})"
    return expr


# One template for both types; {sfx} is "f" for float and "" for double (function names).
_TEMPLATE = """
/* ---- {T} ---- */
EM_INLINE {T} em_from_bits{sfx}({U} u) {{ {T} f; __builtin_memcpy(&f, &u, sizeof f); return f; }}
EM_INLINE {U} em_to_bits{sfx}({T} f) {{ {U} u; __builtin_memcpy(&u, &f, sizeof u); return u; }}
EM_INLINE {T} em_abs{sfx}({T} x) {{ return em_from_bits{sfx}(em_to_bits{sfx}(x) & ~({U}){SIGN}); }}
EM_INLINE {T} em_copysign{sfx}({T} m, {T} s) {{
  return em_from_bits{sfx}((em_to_bits{sfx}(m) & ~({U}){SIGN}) | (em_to_bits{sfx}(s) & ({U}){SIGN}));
}}
/* 2^k for BIAS - 1 >= k >= 1 - BIAS (exponent bits) */
EM_INLINE {T} em_pow2i{sfx}({I} k) {{ return em_from_bits{sfx}(({U})(k + {BIAS}) << {MANT}); }}

EM_INLINE {T} em_exp{sfx}({T} x) {{
  {T} xc = x > {EXP_HI} ? {EXP_HI} : x;
  xc = xc < {EXP_LO} ? {EXP_LO} : xc;
  const {T} t = xc * {LOG2E} + {MAGIC};
  const {T} n = t - {MAGIC};
  const {I} k = ({I})(em_to_bits{sfx}(t) - em_to_bits{sfx}({MAGIC}));
  {T} r = xc - n * {LN2HI};
  r = r - n * {LN2LO};
  const {T} p = 1 + (r + r * r * {Q});
  const {I} k1 = k >> 1;
  return p * em_pow2i{sfx}(k1) * em_pow2i{sfx}(k - k1);
}}

EM_INLINE {T} em_expm1{sfx}({T} x) {{
  {T} xc = x > {EXP_HI} ? {EXP_HI} : x;
  xc = xc < {EM1_LO} ? {EM1_LO} : xc;
  const {T} t = xc * {LOG2E} + {MAGIC};
  const {T} n = t - {MAGIC};
  const {I} k = ({I})(em_to_bits{sfx}(t) - em_to_bits{sfx}({MAGIC}));
  {T} r = xc - n * {LN2HI};
  r = r - n * {LN2LO};
  const {T} e = r + r * r * {Q};
  const {T} s2 = 2 * em_pow2i{sfx}(k - 1);
  const {T} small = s2 * e + (s2 - 1);
  const {T} big = 2 * (em_pow2i{sfx}(k - 1) * (e + 1)) - 1;
  const {T} y = k > {EM1_BIG} ? big : small;
  return x == 0 ? x : y;
}}

EM_INLINE {T} em_log{sfx}({T} x) {{
  const int sub = x < {MIN_NORMAL};
  const {T} xs = x * {DENORM_SCALE};
  const {U} ix = em_to_bits{sfx}(sub ? xs : x);
  {I} k = ({I})(ix >> {MANT}) - {BIAS} - (sub ? {DENORM_BITS} : 0);
  const {T} m1 = em_from_bits{sfx}((ix & {EXPO_MASK}) | {ONE_BITS});
  const {T} mh = m1 * ({T})0.5;
  const int big = m1 > {SQRT2};
  const {T} m = big ? mh : m1;
  k += big;
  const {T} f = m - 1;
  const {T} s = f / (2 + f);
  const {T} z = s * s;
  const {T} R = z * {F};
  const {T} hfsq = ({T})0.5 * f * f;
  const {T} kf = {KCONV};
  {T} y = kf * {LN2HI} + ((f - (hfsq - s * (hfsq + R))) + kf * {LN2LO});
  y = x == 0 ? -{INF} : y;
  y = x < 0 ? {NAN} : y;
  y = x == {INF} ? x : y;
  return x != x ? x : y;
}}

EM_INLINE {T} em_log1p{sfx}({T} x) {{
  const {T} u = 1 + x;
  const {T} l = em_log{sfx}(u);
  const {T} y = l - ((u - 1) - x) / u;
  return (u == {INF} || u == 0) ? l : (x == 0 ? x : y);
}}

EM_INLINE {T} em_tanh{sfx}({T} x) {{
  {T} a = em_abs{sfx}(x);
  a = a > {TANH_SAT} ? {TANH_SAT} : a;
  const {T} e = em_expm1{sfx}(2 * a);
  return em_copysign{sfx}(e / (e + 2), x);
}}

EM_INLINE {T} em_sigmoid{sfx}({T} x) {{
  const {T} e = em_exp{sfx}(-em_abs{sfx}(x));
  const {T} r = 1 / (1 + e);
  return x >= 0 ? r : e * r;
}}

EM_INLINE {T} em_erf{sfx}({T} x) {{
  const {T} a = em_abs{sfx}(x);
  const {T} u = a * a * {A_SCALE} - 1;
  const {T} small = a * {A};
  const {T} z = a < {ERF_ZMAX} ? a : {ERF_ZMAX};
  const {T} v = {B_SCALE} / (2 + z) + {B_SHIFT};
  const {T} big = 1 - em_exp{sfx}(-(z * z)) * {G};
  const {T} y = em_copysign{sfx}(a < {ERF_ZA} ? small : big, x);
  return x != x ? x : y;
}}
"""

_PRELUDE = """#include <stdint.h>
#include <math.h>
#define EM_INLINE static inline __attribute__((always_inline, unused))
/* Kernels compile with -ffp-contract=off (pointwise arithmetic rounds like NumPy, op by op); the math
   functions fuse explicitly where the CPU has FMA instructions. */
#ifdef __FMA__
#define EM_FMAF(a, b, c) __builtin_fmaf((a), (b), (c))
#define EM_FMAD(a, b, c) __builtin_fma((a), (b), (c))
#else
#define EM_FMAF(a, b, c) ((a) * (b) + (c))
#define EM_FMAD(a, b, c) ((a) * (b) + (c))
#endif
"""


def _render() -> str:
    parts = [_PRELUDE]
    for s, t in _TYPES.items():
        kconv = "(float)k" if s == "f" else \
            "(em_from_bits(0x4330000000000000ull | (uint64_t)(k + 2048)) - 4503599627372544.0)"
        parts.append(_TEMPLATE.format(
            sfx="f" if s == "f" else "", Q=_horner("r", _Q[s], s), F=_horner("z", _F[s], s),
            A=_horner("u", _ERF_A[s], s), G=_horner("v", _ERF_G[s], s), KCONV=kconv, **t))
    return "".join(parts)


HEADER: str = _render()
"""The C source of the math functions (include it once per translation unit)."""

# Registry op name -> math function base name (``em_<name>f`` for float, ``em_<name>`` for double).
FUNCTIONS: tuple[str, ...] = ("exp", "expm1", "log", "log1p", "tanh", "sigmoid", "erf")
