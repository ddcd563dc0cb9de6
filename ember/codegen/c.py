"""One C-style renderer for fused kernels, with two dialect tables: ``"c"`` (CPU) and ``"cuda"`` (CUDA C).

``render(kernels, dialect)`` returns one translation unit holding every kernel of a graph, plus the
symbol of each kernel (structurally identical kernels share one function).

**Expressions** come from the registry's ``c_expr`` templates (``{0}``, ``{1}``, ``{T}``), with libm
names mapped per dialect and dtype (C: ``exp`` -> ``em_expf``, the vectorizable functions of
``mathlib``; CUDA: ``expf``). Every node becomes one SSA variable, so templates that repeat an
operand never recompute it. Where a template is not what a kernel should compute, ``OVERRIDES``
(below) says what replaces it and why (NaN propagation as in NumPy, integer division by zero, bools
kept 0/1, ...). ``pow`` with a constant exponent 2, 3, 0.5, 1 or -1 is strength-reduced (as NumPy
does). Kernels compile with ``-ffp-contract=off``, so pointwise arithmetic rounds op by op exactly
like NumPy's float32/float64 loops.

**Loops (C dialect)**. The iteration shape is first simplified: size-1 dimensions dropped, and
adjacent dimensions merged wherever every operand's strides allow (a contiguous (64, 512, 512)
tensor is one loop of 16M elements; a (512,) bias broadcast over it leaves (32768, 512)). The
kernel function ``void name(outs..., ins..., int64_t t0, int64_t t1)`` runs the *tiles* ``[t0, t1)``,
so a scheduler may split the work itself; ``#pragma omp parallel for`` spreads the tiles over
threads when the range holds at least ``PARALLEL_MIN_WORK`` element-passes. Three layouts:

* pointwise: a tile is one row of the outer dimensions times a block of the last one; the inner
  loop ``#pragma omp simd`` runs over the last dimension with compile-time strides;
* *row* reductions (the last dimension is reduced): a tile is one index of the kept dimensions; each
  reduction stage is one pass over the reduced dimensions (vectorized ``omp simd reduction``, floats
  accumulate in double), values constant along the reduced axes are computed once per tile, and the
  full-shape outputs are written in the first pass that has every reduction they read (the last
  reduction's pass when they do not read it, else one more pass). With a single tile (a full
  reduction), the passes themselves run ``omp parallel for ... reduction``;
* *column* reductions (the last dimension is kept, e.g. a sum over axis 0): a tile is a block of up to
  ``BLOCK_COLUMNS`` columns with per-column accumulator arrays, so the inner loop stays contiguous.

Pointers are ``restrict`` and loops ``omp simd`` unless a kernel is built with ``noalias=False``
(in-place use); then loops that store carry no ``omp simd`` and gcc checks aliasing at run time.

**CUDA dialect**: ``extern "C" __global__`` functions with grid-stride loops; pointwise kernels give
one element per thread, column reductions one kept index per thread, row reductions one warp per
kept index (lanes stride the row, ``__shfl_xor_sync`` combines). ``Source.launch`` gives a grid/block.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import dtypes as _dt
from .kernel import CodegenError, Kernel, Value, contiguous_strides
from .mathlib import HEADER

PARALLEL_MIN_WORK = 1 << 15   # element-passes below which a kernel call stays on one thread
BLOCK_POINTWISE = 8192        # pointwise: last-dimension block per tile (when the dimension is longer)
BLOCK_COLUMNS = 256           # column reductions: columns per tile (accumulator arrays on the stack)
CUDA_BLOCK = 256

_CMP_OPS = {"eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_xor", "logical_not",
            "isnan", "isinf"}
# Ops whose result is already 0/1 on bool operands (others get "!= 0" when their result dtype is bool).
_BOOL_SAFE = _CMP_OPS | {"where", "maximum", "minimum", "clone", "cast", "bitwise_and", "bitwise_or", "bitwise_xor",
                         "relu", "bitwise_not"}


class Dialect:
    """What differs between C and CUDA C: type names, qualifiers, math names, special values."""

    def __init__(self, name: str, ctypes: dict, restrict: str, func_prefix: str, inline: str,
                 math_f: dict, math_d: dict, inf: tuple[str, str], nan: tuple[str, str], prelude: str) -> None:
        self.name, self.ctypes, self.restrict = name, ctypes, restrict
        self.func_prefix, self.inline = func_prefix, inline
        self.math_f, self.math_d, self.inf, self.nan, self.prelude = math_f, math_d, inf, nan, prelude
        self.index_t = ctypes[_dt.int64]

    def ctype(self, d: _dt.DType) -> str:
        return self.ctypes[d]


_LIBM = ("exp", "expm1", "log", "log1p", "tanh", "erf", "sqrt", "fabs", "floor", "ceil", "rint", "sin", "cos", "pow",
         "sigmoid")

# Integer floor division / modulo / power as NumPy defines them (b == 0 -> 0, INT_MIN // -1 wraps, no traps),
# and NumPy's float remainder/floor_divide (fmod based, sign of the divisor).
_HELPERS = """
{I} {L} em_floordiv_i64({L} a, {L} b) {{
  const {L} bs = (b == 0 || b == -1) ? 1 : b;
  const {L} q = b == -1 ? -a : a / bs;
  const {L} r = b == -1 ? 0 : a - q * bs;
  const {L} f = q - ((r != 0) & ((r < 0) != (bs < 0)));
  return b == 0 ? 0 : f;
}}
{I} {L} em_ipow_i64({L} a, {L} b) {{
  if (b < 0) return a == 1 ? 1 : (a == -1 ? ((b & 1) ? -1 : 1) : 0);
  {L} r = 1;
  while (b) {{
    if (b & 1) r *= a;
    a *= a;
    b >>= 1;
  }}
  return r;
}}
{I} {L} em_mod_i64({L} a, {L} b) {{
  const {L} bs = (b == 0 || b == -1) ? 1 : b;
  const {L} r = a % bs;
  const {L} f = (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
  return b == 0 ? 0 : f;
}}
"""
_FLOAT_HELPERS = """
{I} {T} em_rem{s}({T} a, {T} b) {{
  const {T} m = fmod{s}(a, b);
  const {T} z = copysign{s}(({T})0, b);
  const {T} adj = ((b < 0) != (m < 0)) ? m + b : m;
  return m != 0 ? adj : (b != b || b == 0 ? m : z);
}}
{I} {T} em_floordiv{s}({T} a, {T} b) {{
  const {T} m = fmod{s}(a, b);
  {T} d = (a - m) / b;
  d = (m != 0 && ((b < 0) != (m < 0))) ? d - 1 : d;
  {T} f = floor{s}(d);
  f = d - f > ({T})0.5 ? f + 1 : f;
  f = d != 0 ? f : copysign{s}(({T})0, a / b);
  return b == 0 ? a / b : f;
}}
"""


def _helpers(inline: str, index_t: str) -> str:
    out = _HELPERS.format(I=inline, L=index_t)
    for t, s in (("float", "f"), ("double", "")):
        out += _FLOAT_HELPERS.format(I=inline, T=t, s=s)
    return out


_C_MATH_F = {n: f"{n}f" for n in ("sqrt", "fabs", "floor", "ceil", "rint", "sin", "cos", "pow")}
_C_MATH_F.update({n: f"em_{n}f" for n in ("exp", "expm1", "log", "log1p", "tanh", "erf", "sigmoid")})
_C_MATH_D = {n: n for n in ("sqrt", "fabs", "floor", "ceil", "rint", "sin", "cos", "pow")}
_C_MATH_D.update({n: f"em_{n}" for n in ("exp", "expm1", "log", "log1p", "tanh", "erf", "sigmoid")})

C = Dialect(
    "c",
    {_dt.bool_: "uint8_t", _dt.uint8: "uint8_t", _dt.int8: "int8_t", _dt.int32: "int32_t", _dt.int64: "int64_t",
     _dt.float32: "float", _dt.float64: "double"},
    restrict="restrict", func_prefix="void", inline="static inline",
    math_f=_C_MATH_F, math_d=_C_MATH_D,
    inf=("__builtin_inff()", "__builtin_inf()"), nan=("__builtin_nanf(\"\")", "__builtin_nan(\"\")"),
    prelude=HEADER + _helpers("EM_INLINE", "int64_t"))

CUDA = Dialect(
    "cuda",
    {_dt.bool_: "unsigned char", _dt.uint8: "unsigned char", _dt.int8: "signed char", _dt.int32: "int",
     _dt.int64: "long long", _dt.float32: "float", _dt.float64: "double"},
    restrict="__restrict__", func_prefix='extern "C" __global__ void', inline="static __device__ __forceinline__",
    math_f={n: f"{n}f" for n in _LIBM if n != "sigmoid"}, math_d={n: n for n in _LIBM if n != "sigmoid"},
    inf=("__int_as_float(0x7f800000)", "__longlong_as_double(0x7ff0000000000000LL)"),
    nan=("__int_as_float(0x7fffffff)", "__longlong_as_double(0x7fffffffffffffffLL)"),
    prelude=_helpers("static __device__ __forceinline__", "long long"))

DIALECTS = {"c": C, "cuda": CUDA}

# Templates replacing the registry's c_expr: {op: {type class: template}}, type class "float", "int" or "any";
# a dialect-specific entry is keyed "c:float" etc. Reasons:
#   relu/maximum/minimum: NaN propagates, as in NumPy (the registry's "a > b ? a : b" drops a NaN in a);
#   sigmoid (C): the overflow-free vectorized em_sigmoid instead of 1/(1+exp(-x));
#   abs/floor/ceil/round/isnan/isinf/sign on integers: integer forms (no double round trip, no float builtins);
#   floor_divide/remainder: NumPy's semantics (sign of the divisor; integer x // 0 == 0, no SIGFPE);
#   pow on integers: exact, wrapping integer arithmetic (the registry's pow() goes through double);
#   sign on floats: sign(nan) is nan; cast to bool: nonzero is True; logical ops: branch-free & | ^.
OVERRIDES: dict[str, dict[str, str]] = {
    "relu": {"float": "({0} < 0 ? 0 : {0})"},
    "maximum": {"float": "(({0} > {1} || {0} != {0}) ? {0} : {1})"},
    "minimum": {"float": "(({0} < {1} || {0} != {0}) ? {0} : {1})"},
    "sigmoid": {"c:float": "sigmoid({0})"},
    "abs": {"int": "({0} < 0 ? -{0} : {0})"},
    "floor": {"int": "{0}"},
    "ceil": {"int": "{0}"},
    "round": {"int": "{0}"},
    "isnan": {"int": "0"},
    "isinf": {"int": "0"},
    "sign": {"float": "({0} != {0} ? {0} : ({T})(({0} > 0) - ({0} < 0)))"},
    "floor_divide": {"int": "em_floordiv_i64({0}, {1})", "float": "em_floordiv{s}({0}, {1})"},
    "pow": {"int": "em_ipow_i64({0}, {1})"},
    "remainder": {"int": "em_mod_i64({0}, {1})", "float": "em_rem{s}({0}, {1})"},
    "logical_and": {"any": "(({0} != 0) & ({1} != 0))"},
    "logical_or": {"any": "(({0} != 0) | ({1} != 0))"},
    "logical_xor": {"any": "(({0} != 0) ^ ({1} != 0))"},
    "logical_not": {"any": "({0} == 0)"},
}

_LIBM_RE = re.compile(r"\b(" + "|".join(_LIBM) + r")\(")


def _is_float(d: _dt.DType) -> bool:
    return d.category == _dt.FLOATING


def literal(value: Any, dtype: _dt.DType, dialect: Dialect = C) -> str:
    """``value`` as a C literal of ``dtype`` (exact: shortest round-trip decimal; inf/nan by builtins)."""
    if _is_float(dtype):
        v = float(value)
        i = 0 if dtype is _dt.float32 else 1
        if math.isnan(v):
            return dialect.nan[i]
        if math.isinf(v):
            return dialect.inf[i] if v > 0 else f"(-{dialect.inf[i]})"
        text = repr(v)
        if "e" not in text and "." not in text and "inf" not in text:
            text += ".0"
        return f"{text}f" if i == 0 else text
    v = int(value)
    if dtype is _dt.int64:
        return "(-9223372036854775807LL - 1)" if v == -(1 << 63) else f"{v}LL"
    if dtype is _dt.int32 and v == -(1 << 31):
        return "(-2147483647 - 1)"
    return f"(({dialect.ctype(dtype)}){v})" if dtype in (_dt.uint8, _dt.int8, _dt.bool_) else str(v)


def _template(node: Value, dialect: Dialect) -> str:
    """The C template of an op node, after overrides and constant-exponent pow."""
    from ..ops.registry import REGISTRY
    name = node.name
    in_dt = node.args[0].dtype
    cls = "float" if _is_float(in_dt) else "int"
    table = OVERRIDES.get(name, {})
    t = table.get(f"{dialect.name}:{cls}") or table.get(cls) or table.get("any")
    if name == "cast" and node.dtype is _dt.bool_:
        t = "({0} != 0)"
    if name == "bitwise_not" and node.dtype is _dt.bool_:
        t = "({0} == 0)"
    if name == "pow" and node.args[1].kind == "const" and _is_float(node.dtype):
        t = {2.0: "({0} * {0})", 3.0: "({0} * {0} * {0})", 1.0: "{0}", -1.0: "(({T})1 / {0})",
             0.5: "sqrt({0})"}.get(float(node.args[1].attrs["value"]), t)
    if t is None:
        t = REGISTRY[name].c_expr
    if name not in _BOOL_SAFE and node.dtype is _dt.bool_:
        t = f"(({t}) != 0)"
    return t


def _expr(node: Value, refs: list[str], dialect: Dialect) -> str:
    t = _template(node, dialect)
    fdt = node.args[0].dtype if _is_float(node.args[0].dtype) else node.dtype
    table = dialect.math_f if fdt is _dt.float32 else dialect.math_d
    t = _LIBM_RE.sub(lambda m: table.get(m.group(1), m.group(1)) + "(", t)
    return t.format(*refs, T=dialect.ctype(node.dtype), s="f" if fdt is _dt.float32 else "")


# ----------------------------------------------------------------------------- loop planning


class _Plan:
    """The simplified iteration space of a kernel: dims, which are reduced, each operand's strides."""

    def __init__(self, k: Kernel) -> None:
        shape, red_axes = k.shape, set(k.reduce_axes)
        kept_shape = [n for d, n in enumerate(shape) if d not in red_axes]
        kept_strides = iter(contiguous_strides(kept_shape))
        red_out = [0 if d in red_axes else next(kept_strides) for d in range(len(shape))]
        full = list(contiguous_strides(shape))
        ops = [list(red_out if o.reduced else full) for o in k.outputs] + [list(s) for s in k.in_strides]
        dims = [(n, d in red_axes, [s[d] for s in ops]) for d, n in enumerate(shape) if n != 1]
        if k.reductions and not any(r for _, r, _ in dims):
            dims.append((1, True, [0] * len(ops)))
        if not any(not r for _, r, _ in dims):
            dims.insert(0, (1, False, [0] * len(ops)))
        merged = [dims[0]]
        for n, r, st in dims[1:]:
            pn, pr, pst = merged[-1]
            if r == pr and all(a == b * n for a, b in zip(pst, st)):
                merged[-1] = (pn * n, r, st)
            else:
                merged.append((n, r, st))
        self.dims = [n for n, _, _ in merged]
        self.red = [r for _, r, _ in merged]
        self.strides = [[st[p] for _, _, st in merged] for p in range(len(ops))]  # per operand, per dim
        self.n_out = len(k.outputs)
        self.layout = "pointwise" if not k.reductions else ("row" if self.red[-1] else "col")
        kept = [d for d, r in enumerate(self.red) if not r]
        self.reduce_dims = [d for d, r in enumerate(self.red) if r]
        self.reduce_size = math.prod(self.dims[d] for d in self.reduce_dims)
        if self.layout == "row":
            self.tile_dims, self.block, self.n_blocks = kept, 0, 1
        else:
            last = self.dims[-1]
            limit = BLOCK_COLUMNS if self.layout == "col" else BLOCK_POINTWISE
            if self.layout == "pointwise" and last <= 2 * BLOCK_POINTWISE:
                limit = max(last, 1)
            self.block = min(limit, max(last, 1))
            self.n_blocks = -(-last // self.block) if last else 0
            self.tile_dims = kept[:-1]
        self.n_tiles = math.prod(self.dims[d] for d in self.tile_dims) * self.n_blocks
        passes = max(k.n_stages + (1 if k.full_outputs else 0), 1)
        self.work_per_tile = (self.block if self.layout != "row" else 1) * max(self.reduce_size, 1) * passes
        self.kept_size = math.prod(self.dims[d] for d in kept)


# ----------------------------------------------------------------------------- emission


class _Emitter:
    """Emits one kernel's function body; ``refs`` maps node ids to C expressions already available."""

    def __init__(self, k: Kernel, plan: _Plan, dialect: Dialect) -> None:
        self.k, self.plan, self.d = k, plan, dialect
        self.lines: list[str] = []
        self.indent = 1
        self.loop_vars: list[tuple[str, int]] = []   # (C variable, plan dim) currently in scope

    def line(self, text: str) -> None:
        self.lines.append("  " * self.indent + text)

    def var(self, node: Value) -> str:
        return f"v{self.k.index[id(node)]}"

    def index(self, p: int) -> str:
        terms = [f"b{p}"]
        for var, d in self.loop_vars:
            s = self.plan.strides[p][d]
            if s == 1:
                terms.append(var)
            elif s != 0:
                terms.append(f"{var} * {s}" if s > 0 else f"{var} * ({s})")
        return " + ".join(terms)

    def needed(self, roots: Sequence[Value], refs: dict[int, str]) -> list[Value]:
        """Nodes (in kernel order) needed to compute ``roots`` that are not in ``refs``."""
        want: set[int] = set()
        stack = [r for r in roots if id(r) not in refs]
        while stack:
            v = stack.pop()
            if id(v) in want:
                continue
            want.add(id(v))
            stack.extend(a for a in v.args if id(a) not in refs and id(a) not in want)
        return [v for v in self.k.nodes if id(v) in want]

    def compute(self, node: Value, refs: dict[int, str]) -> str:
        """The C expression of ``node`` (a load, const or op; reductions are always in ``refs``)."""
        if node.kind == "load":
            slot = self.k.input_slot[id(node)]
            return f"i{slot}[{self.index(self.plan.n_out + slot)}]"
        if node.kind == "const":
            return literal(node.attrs["value"], node.dtype, self.d)
        if node.kind == "reduce":
            raise CodegenError(f"codegen: internal error: reduction %{self.k.index[id(node)]} used before its pass")
        return _expr(node, [refs[id(a)] for a in node.args], self.d)

    def emit(self, nodes: Sequence[Value], refs: dict[int, str]) -> None:
        for v in nodes:
            self.line(f"const {self.d.ctype(v.dtype)} {self.var(v)} = {self.compute(v, refs)};")
            refs[id(v)] = self.var(v)

    @property
    def store_pass(self) -> int:
        """The pass that writes the full-shape outputs: the first one after every reduction they read
        (``n_stages + 1`` means a pass of its own after the reductions)."""
        return max((self.k.stage[id(o.value)] for o in self.k.full_outputs), default=0) + 1

    def store_full(self, body: dict[int, str]) -> None:
        """Compute and store the full-shape outputs inside the current loop nest."""
        full = [(p, o) for p, o in enumerate(self.k.outputs) if not o.reduced]
        self.emit(self.needed([o.value for _, o in full], body), body)
        for p, o in full:
            self.line(self.store(p, o, body[id(o.value)]))

    def store(self, p: int, out: Any, ref: str) -> str:
        src = out.value.dtype
        if out.dtype is _dt.bool_ and src is not _dt.bool_:
            ref = f"({ref} != 0)"
        elif out.dtype is not src:
            ref = f"({self.d.ctype(out.dtype)}){ref}"
        return f"o{p}[{self.index(p)}] = {ref};"

    # -- reductions
    def acc_type(self, r: Value) -> str:
        """Sums accumulate in double (floats) or int64; max/min in the operand's own type."""
        if r.name != "sum":
            return self.d.ctype(r.args[0].dtype)
        return self.d.ctype(_dt.float64) if _is_float(r.args[0].dtype) else self.d.ctype(_dt.int64)

    def acc_init(self, r: Value) -> str:
        src = r.args[0].dtype
        if r.name == "sum":
            return "0"
        if _is_float(src):
            inf = self.d.inf[0 if src is _dt.float32 else 1]
            return f"(-{inf})" if r.name == "max" else inf
        info = {_dt.bool_: (0, 1)}.get(src) or (int(np.iinfo(src.np).min), int(np.iinfo(src.np).max))
        return literal(info[0] if r.name == "max" else info[1], src, self.d)

    def acc_update(self, acc: str, r: Value, val: str, flag: str | None) -> str:
        if r.name == "sum":
            return f"{acc} += {val};"
        cmp = ">" if r.name == "max" else "<"
        if not _is_float(r.args[0].dtype):
            return f"{acc} = {val} {cmp} {acc} ? {val} : {acc};"
        if flag is not None:   # omp simd reduction: keep max/min plain, remember NaNs separately
            return f"{acc} = {val} {cmp} {acc} ? {val} : {acc}; {flag} |= {val} != {val};"
        return f"{acc} = ({val} {cmp} {acc} || {val} != {val}) ? {val} : {acc};"

    def finalize(self, r: Value, acc: str, flag: str | None) -> str:
        t = self.d.ctype(r.dtype)
        val = f"({t}){acc}"
        if flag is not None:
            val = f"({flag} ? {self.d.nan[0 if r.dtype is _dt.float32 else 1]} : {val})" if _is_float(r.dtype) else val
        return val

    # -- loops
    def open_loop(self, var: str, n: str, start: str = "0", step: str = "1", pragma: str | None = None) -> None:
        if pragma:
            self.lines.append(f"#pragma {pragma}")
        inc = f"++{var}" if step == "1" else f"{var} += {step}"
        self.line(f"for ({self.d.index_t} {var} = {start}; {var} < {n}; {inc}) {{")
        self.indent += 1

    def close(self) -> None:
        self.indent -= 1
        self.line("}")


def _decompose(em: _Emitter, index_var: str, dims: list[int], used: list[int]) -> None:
    """Split ``index_var`` over plan ``dims`` (row-major) and set base offsets ``b<p>`` of operands ``used``."""
    plan, L = em.plan, em.d.index_t
    if dims:
        em.line(f"{L} q = {index_var};")
    for n, d in enumerate(reversed(dims)):
        if n == len(dims) - 1:
            em.line(f"const {L} k{d} = q;")
        else:
            em.line(f"const {L} k{d} = q % {plan.dims[d]}; q /= {plan.dims[d]};")
    for p in used:
        terms = [f"k{d} * {plan.strides[p][d]}" for d in dims if plan.strides[p][d] != 0]
        em.line(f"const {L} b{p} = {' + '.join(terms) if terms else '0'};")


def _used_operands(k: Kernel, plan: _Plan) -> list[int]:
    loaded = {plan.n_out + k.input_slot[id(v)] for v in k.nodes if v.kind == "load"}
    return list(range(plan.n_out)) + sorted(loaded)


def _signature(k: Kernel, symbol: str, d: Dialect) -> str:
    q = f"{d.restrict} " if k.noalias else ""
    params = [f"{d.ctype(o.dtype)} *{q}o{p}" for p, o in enumerate(k.outputs)]
    params += [f"const {d.ctype(i.dtype)} *{q}i{s}" for s, i in enumerate(k.inputs)]
    if d is C:
        params += ["int64_t t0", "int64_t t1"]
    return f"{d.func_prefix} {symbol}({', '.join(params)})"


def _stage_groups(k: Kernel) -> list[list[Value]]:
    return [[r for r in k.reductions if k.stage[id(r)] == s] for s in range(1, k.n_stages + 1)]


def _emit_scalar_stages(em: _Emitter, inner: Any, combine: Any, simd: bool, split: bool) -> dict[int, str]:
    """Reduction passes where hoisted values are scalars (C row layout, CUDA). ``inner(accs, split, stores)``
    opens the reduced-dims loop nest of a pass (returns how many loops to close); ``combine(acc, r, flag)``
    merges partial accumulators after a pass (CUDA warps). Returns the C names of the hoisted values."""
    k = em.k
    refs: dict[int, str] = {}
    hoisted = [v for v in k.nodes if k.outer[id(v)] and v.kind != "reduce"]
    em.emit([v for v in hoisted if k.stage[id(v)] == 0], refs)
    for s, reds in enumerate(_stage_groups(k), start=1):
        accs = []
        for r in reds:
            n = k.index[id(r)]
            acc, flag = f"a{n}", (f"f{n}" if simd and r.name != "sum" and _is_float(r.args[0].dtype) else None)
            em.line(f"{em.acc_type(r)} {acc} = {em.acc_init(r)};")
            if flag:
                em.line(f"int {flag} = 0;")
            accs.append((r, acc, flag))
        opened = inner(accs, split, s == em.store_pass and bool(k.full_outputs))
        body = dict(refs)
        em.emit(em.needed([r.args[0] for r in reds], body), body)
        for r, acc, flag in accs:
            em.line(em.acc_update(acc, r, body[id(r.args[0])], flag))
        if s == em.store_pass and k.full_outputs:
            em.store_full(body)
        for _ in range(opened):
            em.close()
        em.loop_vars = []
        for r, acc, flag in accs:
            combine(acc, r, flag)
            em.line(f"const {em.d.ctype(r.dtype)} {em.var(r)} = {em.finalize(r, acc, flag)};")
            refs[id(r)] = em.var(r)
        em.emit([v for v in hoisted if k.stage[id(v)] == s], refs)
    return refs


def _store_outputs(em: _Emitter, k: Kernel, nest: Any, split: bool, n_loops: int, refs: dict[int, str],
                   guard: str = "") -> None:
    """After a reduced kernel's stages: a last pass over the row for full-shape outputs (when they were not
    stored in an earlier pass), then the reduced outputs (``guard`` prefixes their stores)."""
    if k.full_outputs and em.store_pass > k.n_stages:
        nest([], split, True)
        em.store_full(dict(refs))
        for _ in range(n_loops):
            em.close()
        em.loop_vars = []
    for p, o in enumerate(k.outputs):
        if o.reduced:
            em.line(guard + em.store(p, o, refs[id(o.value)]))


def _reduction_clause(accs: list) -> str:
    parts = []
    for r, acc, flag in accs:
        parts.append(f"reduction({'+' if r.name == 'sum' else r.name}:{acc})")
        if flag:
            parts.append(f"reduction(|:{flag})")
    return " ".join(parts)


def _hoist_uniform(em: _Emitter) -> dict[int, str]:
    """Emit, before the loops, the values that are the same at every index (computed from constants and
    inputs broadcast along every axis: Adam's bias corrections ``1 - beta ** step``); return their names.
    The compiler would have to prove the loads loop-invariant to hoist a ``powf`` itself."""
    k, plan = em.k, em.plan
    same: set[int] = set()
    for v in k.nodes:
        if v.kind == "const":
            same.add(id(v))
        elif v.kind == "load":
            if not any(plan.strides[plan.n_out + k.input_slot[id(v)]]):
                same.add(id(v))
        elif v.kind == "op" and all(id(a) in same for a in v.args):
            same.add(id(v))
    used = [a for v in k.nodes if id(v) not in same for a in v.args if id(a) in same]
    used += [o.value for o in k.outputs if id(o.value) in same]
    refs: dict[int, str] = {}
    todo = em.needed([v for v in used if v.kind == "op"], refs)
    if todo:
        em.line("if (t0 >= t1) return;  /* no elements: the hoisted loads below may have nothing to read */")
    for v in todo:
        if v.kind == "const":
            refs[id(v)] = em.compute(v, refs)
            continue
        value = f"i{k.input_slot[id(v)]}[0]" if v.kind == "load" else em.compute(v, refs)
        em.line(f"const {em.d.ctype(v.dtype)} {em.var(v)} = {value};")
        refs[id(v)] = em.var(v)
    return refs


def _render_c(k: Kernel, symbol: str) -> str:
    plan = _Plan(k)
    em = _Emitter(k, plan, C)
    used = _used_operands(k, plan)
    split = plan.layout == "row" and plan.n_tiles == 1 and plan.reduce_size * max(k.n_stages, 1) >= PARALLEL_MIN_WORK
    par_tiles = max(2, -(-PARALLEL_MIN_WORK // max(plan.work_per_tile, 1)))
    uniform = _hoist_uniform(em) if plan.layout != "row" else {}
    if not split:
        em.lines.append(f"#pragma omp parallel for schedule(static) if (t1 - t0 >= {par_tiles})")
    em.line("for (int64_t t = t0; t < t1; ++t) {")
    em.indent += 1
    red_dims = plan.reduce_dims
    if plan.layout == "row":
        _decompose(em, "t", plan.tile_dims, used)

        def nest(accs: list, par: bool, stores: bool) -> int:
            clause = " " + _reduction_clause(accs) if accs else ""
            simd = k.noalias or not stores  # "omp simd" asserts no dependences: not with stores that may alias
            for n, d in enumerate(red_dims):
                last = n == len(red_dims) - 1
                pragma = None
                if n == 0 and par:
                    pragma = f"omp parallel for{' simd' if last and simd else ''}{clause} if ({plan.reduce_size} >= " \
                             f"{PARALLEL_MIN_WORK})"
                elif last and simd:
                    pragma = f"omp simd{clause}"
                em.open_loop(f"r{d}", str(plan.dims[d]), pragma=pragma)
                em.loop_vars.append((f"r{d}", d))
            return len(red_dims)

        refs = _emit_scalar_stages(em, nest, lambda acc, r, flag: None, True, split)
        _store_outputs(em, k, nest, split, len(red_dims), refs)
    else:
        last = len(plan.dims) - 1
        if plan.n_blocks > 1:
            em.line(f"const int64_t blk = t % {plan.n_blocks};")
            em.line(f"const int64_t j0 = blk * {plan.block};")
            em.line(f"const int64_t jn = j0 + {plan.block} <= {plan.dims[last]} ? {plan.block} : "
                    f"{plan.dims[last]} - j0;")
            _decompose(em, f"t / {plan.n_blocks}", plan.tile_dims, used)
        else:
            em.line("const int64_t j0 = 0;")
            em.line(f"const int64_t jn = {plan.dims[last]};")
            _decompose(em, "t", plan.tile_dims, used)

        store_simd = "omp simd" if k.noalias else None  # loops that store outputs, which may alias inputs

        def columns(pragma: str | None = "omp simd") -> None:
            em.open_loop("jj", "jn", pragma=pragma)
            em.line("const int64_t j = j0 + jj;")
            em.loop_vars.append(("j", last))

        def reduce_nest() -> int:
            for d in red_dims:
                em.open_loop(f"r{d}", str(plan.dims[d]))
                em.loop_vars.append((f"r{d}", d))
            return len(red_dims)

        refs: dict[int, str] = uniform
        hoisted = [v for v in k.nodes if k.outer[id(v)] and k.stage[id(v)] >= 1] if k.reductions else []
        for s, reds in enumerate(_stage_groups(k), start=1):
            for r in reds:
                em.line(f"{em.acc_type(r)} a{k.index[id(r)]}[{plan.block}];")
            columns()
            for r in reds:
                em.line(f"a{k.index[id(r)]}[jj] = {em.acc_init(r)};")
            em.close()
            em.loop_vars = []
            opened = reduce_nest()
            columns("omp simd" if s != em.store_pass or not k.full_outputs else store_simd)
            body = dict(refs)
            em.emit(em.needed([r.args[0] for r in reds], body), body)
            for r in reds:
                em.line(em.acc_update(f"a{k.index[id(r)]}[jj]", r, body[id(r.args[0])], None))
            if s == em.store_pass and k.full_outputs:
                em.store_full(body)
            em.close()
            for _ in range(opened):
                em.close()
            em.loop_vars = []
            stage_vals = reds + [v for v in hoisted if k.stage[id(v)] == s and v.kind != "reduce"]
            for v in stage_vals:
                em.line(f"{C.ctype(v.dtype)} h{k.index[id(v)]}[{plan.block}];")
            columns()
            body = dict(refs)
            for r in reds:
                body[id(r)] = f"(({C.ctype(r.dtype)})a{k.index[id(r)]}[jj])"
            for v in stage_vals:
                if v.kind != "reduce":
                    em.emit(em.needed([v], body), body)
                em.line(f"h{k.index[id(v)]}[jj] = {body[id(v)]};")
            em.close()
            em.loop_vars = []
            for v in stage_vals:
                refs[id(v)] = f"h{k.index[id(v)]}[jj]"
        if k.full_outputs and em.store_pass > k.n_stages:
            opened = reduce_nest()
            columns(store_simd)
            em.store_full(dict(refs))
            em.close()
            for _ in range(opened):
                em.close()
            em.loop_vars = []
        reduced = [(p, o) for p, o in enumerate(k.outputs) if o.reduced]
        if reduced:
            columns(store_simd)
            body = dict(refs)
            em.emit(em.needed([o.value for _, o in reduced], body), body)
            for p, o in reduced:
                em.line(em.store(p, o, body[id(o.value)]))
            em.close()
            em.loop_vars = []
    em.indent -= 1
    em.line("}")
    return _signature(k, symbol, C) + " {\n" + "\n".join(em.lines) + "\n}\n"


def _render_cuda(k: Kernel, symbol: str) -> tuple[str, dict]:
    plan = _Plan(k)
    em = _Emitter(k, plan, CUDA)
    used = _used_operands(k, plan)
    all_dims = list(range(len(plan.dims)))
    kept = [d for d in all_dims if not plan.red[d]]
    red_dims = plan.reduce_dims
    tid = "(blockIdx.x * (long long)blockDim.x + threadIdx.x)"
    nthreads = "((long long)gridDim.x * blockDim.x)"
    if plan.layout == "pointwise":
        total = math.prod(plan.dims)
        threads = total
        em.open_loop("e", str(total), start=tid, step=nthreads)
        _decompose(em, "e", all_dims, used)
        refs: dict[int, str] = {}
        em.emit(em.needed([o.value for o in k.outputs], refs), refs)
        for p, o in enumerate(k.outputs):
            em.line(em.store(p, o, refs[id(o.value)]))
        em.close()
    else:
        warp = plan.layout == "row"
        n_kept = plan.kept_size
        threads = n_kept * (32 if warp else 1)
        if warp:
            em.line("const long long lane = threadIdx.x & 31;")
            em.open_loop("w", str(n_kept), start=f"({tid} >> 5)", step=f"({nthreads} >> 5)")
        else:
            em.open_loop("w", str(n_kept), start=tid, step=nthreads)
        _decompose(em, "w", kept, used)

        def nest(accs: list, par: bool, stores: bool) -> int:
            for n, d in enumerate(red_dims):
                lane_loop = warp and n == len(red_dims) - 1
                em.open_loop(f"r{d}", str(plan.dims[d]), start="lane" if lane_loop else "0",
                             step="32" if lane_loop else "1")
                em.loop_vars.append((f"r{d}", d))
            return len(red_dims)

        def combine(acc: str, r: Value, flag: str | None) -> None:
            if not warp:
                return
            em.line(f"for (int off = 16; off > 0; off >>= 1) {{ const {em.acc_type(r)} o_ = "
                    f"__shfl_xor_sync(0xffffffffu, {acc}, off); "
                    + (f"{acc} += o_; }}" if r.name == "sum" else
                       f"{acc} = (o_ {'>' if r.name == 'max' else '<'} {acc} || o_ != o_) ? o_ : {acc}; }}"))

        refs = _emit_scalar_stages(em, nest, combine, False, False)
        _store_outputs(em, k, nest, False, len(red_dims), refs, "if (lane == 0) " if warp else "")
        em.close()
    src = _signature(k, symbol, CUDA) + " {\n" + "\n".join(em.lines) + "\n}\n"
    grid = max(1, min(-(-threads // CUDA_BLOCK), 1 << 16))
    return src, {"grid": grid, "block": CUDA_BLOCK, "threads": threads}


class Source:
    """A rendered translation unit: ``text``, ``symbols`` (kernel name -> C symbol), ``functions``
    (symbol -> that function's source), ``tiles`` (C: symbol -> tile count for ``t1``) and ``launch``
    (CUDA: symbol -> grid/block)."""

    def __init__(self, dialect: str, text: str, symbols: dict[str, str], functions: dict[str, str],
                 tiles: dict[str, int], launch: dict[str, dict], kernels: list[Kernel]) -> None:
        self.dialect, self.text, self.symbols, self.functions = dialect, text, symbols, functions
        self.tiles, self.launch, self.kernels = tiles, launch, kernels

    def __repr__(self) -> str:
        return f"Source({self.dialect}, {len(self.functions)} function(s), {len(self.text)} chars)"


def render(kernels: Sequence[Kernel], dialect: str = "c") -> Source:
    """Render ``kernels`` into one translation unit of ``dialect`` ("c" or "cuda")."""
    if dialect not in DIALECTS:
        raise CodegenError(f"codegen: unknown dialect {dialect!r}; expected 'c' or 'cuda'")
    d = DIALECTS[dialect]
    names = [k.name for k in kernels]
    if len(set(names)) != len(names):
        raise CodegenError(f"codegen: kernel names must be unique within one translation unit, got {names}")
    symbols: dict[str, str] = {}
    functions: dict[str, str] = {}
    by_body: dict[str, str] = {}
    tiles: dict[str, int] = {}
    launch: dict[str, dict] = {}
    for k in kernels:
        if dialect == "c":
            body, info = _render_c(k, "@"), None
        else:
            body, info = _render_cuda(k, "@")
        sym = by_body.get(body)
        if sym is None:
            sym = f"ek_{k.name}"  # kernel symbols: ek_*, math and helper functions: em_*
            by_body[body] = sym
            functions[sym] = body.replace("@", sym, 1)
            if dialect == "c":
                tiles[sym] = _Plan(k).n_tiles
            else:
                launch[sym] = info
        symbols[k.name] = sym
    text = d.prelude + "\n" + "\n".join(functions.values())
    return Source(dialect, text, symbols, functions, tiles, launch, list(kernels))
