"""Hand-written C kernels for the window and index ops that NumPy runs slowly.

The reference impls of ``unfold2d``/``fold2d`` (im2col / col2im, conv2d forward and input gradient),
``index_add`` (``take``'s gradient), ``gather``/``scatter_add`` (cross-entropy's target pick and its
gradient), ``scatter_rows`` (``embed_rows``' gradient), ``segment_sum`` (embedding bags), ``max_pool2d``
and its backward, and ``argmax``/``argmin`` along a non-last axis call these when ``xp is numpy``, the
data is float32/float64, the indices int32/int64 and a C compiler exists. (``take``/``embed_rows`` stay on
``np.take``, which is as fast as a C row copy.) Each function below returns the op's result, or None when
it does not apply (unsupported dtype or layout, no compiler, kernels switched off, or an index out of
range); the caller then runs its unchanged NumPy code, which also raises the op's own error for bad indices. The C code
checks every index before it writes anything and never reads or writes out of bounds.

Results are bit-identical to the NumPy code: copies are copies, and sums add in NumPy's order:

* col2im adds the kernel offsets in row-major order into a zeroed plane, as the NumPy loop does;
* scatter-adds (``scatter_add``, ``index_add``) add in index order, as ``np.add.at``. (``index_add``'s
  NumPy path for 256 indices and more groups duplicates by an unstable argsort, so its order among
  duplicates is unspecified; the C path keeps ``np.add.at``'s.)
* row-segment sums (``segment_sum``, ``scatter_rows``) reproduce ``np.add.reduceat`` along axis 0:
  the first row plus NumPy's pairwise sum of the others, column by column;
* max pooling takes the same first maximum per window and adds gradients in kernel-offset order. Equal
  values rather than equal bits there: a window holding both 0.0 and -0.0 may yield the other zero, and a
  gradient that is not finite reaches only its window's maximum (the NumPy path multiplies it by 0 for the
  other elements, which makes NaN), as in PyTorch.

Sizes are run-time arguments: one translation unit per data dtype (with int32 and int64 index
variants) is compiled once per machine and then comes from ``ember.codegen``'s disk cache.
Parallel loops split work so that every destination element is written by one thread only.
``EMBER_INDEX_KERNELS=0`` (or ``set_enabled(False)``) switches them off.
"""

from __future__ import annotations

import ctypes
import os
import threading
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from . import cc
from .kernel import CodegenError

__all__ = ["argext", "col2im", "enabled", "gather", "im2col", "index_add", "library", "max_pool", "max_pool_backward",
           "scatter_add", "scatter_rows", "segment_sum", "set_enabled", "source"]

_ENABLED = [os.environ.get("EMBER_INDEX_KERNELS", "1").strip().lower() not in ("0", "false", "no", "off")]
_DATA = {np.dtype(np.float32): ("float", "f32"), np.dtype(np.float64): ("double", "f64")}
_LANES = {"float": ("int32_t", 8), "double": ("int64_t", 4)}  # 32-byte vectors: lane integer type, lanes
_INDEX = {np.dtype(np.int32): ("int32_t", "i32"), np.dtype(np.int64): ("int64_t", "i64")}
_PARALLEL_MIN = 1 << 15  # element-passes below which a call stays on one thread (OpenMP start-up costs ~µs)

_COMMON = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#define EK_NT() omp_get_num_threads()
#define EK_TID() omp_get_thread_num()
#else
#define EK_NT() 1
#define EK_TID() 0
#endif
#define EK_PAR_MIN PARALLEL_MIN
#if !defined(EK_NO_VECTOR) && (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12))
#define EK_VECTOR 1  /* __builtin_shufflevector on 32-byte vector types (EK_NO_VECTOR: scalar code, for tests) */
#endif

static inline int64_t ek_ceil_div(int64_t a, int64_t b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }

/* [*lo, *hi): the positions o in [0, count) with 0 <= o * step + off < size */
static inline void ek_span(int64_t off, int64_t step, int64_t size, int64_t count, int64_t *lo, int64_t *hi) {
    int64_t a = ek_ceil_div(-off, step), b = ek_ceil_div(size - off, step);
    if (a < 0) a = 0;
    if (b > count) b = count;
    if (b < a) b = a;
    *lo = a;
    *hi = b;
}
"""

_PER_DATA = r"""
/* im2col: out (C, kh, kw, N, OH, OW) contiguous from x (N, C, H, W) with element strides xn, xc, xh, xw;
   padding reads as *padv. Each (c, n) writes its own rows of out. */
int64_t ek_im2col_@S@(@T@ *restrict out, const @T@ *restrict x, const @T@ *restrict padv,
                     int64_t n, int64_t c, int64_t h, int64_t w, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                     int64_t pt, int64_t pl, int64_t dh, int64_t dw, int64_t oh, int64_t ow,
                     int64_t xn, int64_t xc, int64_t xh, int64_t xw) {
    const @T@ pv = *padv;
    const int64_t plane = oh * ow, step = sw * xw;
    #pragma omp parallel for collapse(2) schedule(static) if (c * n * kh * kw * plane >= EK_PAR_MIN)
    for (int64_t ci = 0; ci < c; ci++)
        for (int64_t ni = 0; ni < n; ni++) {
            const @T@ *src = x + ci * xc + ni * xn;
            for (int64_t i = 0; i < kh; i++) {
                int64_t ylo, yhi;
                ek_span(i * dh - pt, sh, h, oh, &ylo, &yhi);
                for (int64_t j = 0; j < kw; j++) {
                    int64_t xlo, xhi;
                    ek_span(j * dw - pl, sw, w, ow, &xlo, &xhi);
                    @T@ *dst = out + (((ci * kh + i) * kw + j) * n + ni) * plane;
                    const int64_t m = xhi - xlo, y0 = m ? ylo : 0, y1 = m ? yhi : 0;  /* m == 0: all padding */
                    for (int64_t q = 0; q < y0 * ow; q++) dst[q] = pv;
                    for (int64_t q = y1 * ow; q < plane; q++) dst[q] = pv;
                    for (int64_t oy = y0; oy < y1; oy++) {
                        @T@ *row = dst + oy * ow;
                        const @T@ *s = src + (oy * sh + i * dh - pt) * xh + (xlo * sw + j * dw - pl) * xw;
                        for (int64_t ox = 0; ox < xlo; ox++) row[ox] = pv;
                        if (step == 1) memcpy(row + xlo, s, (size_t)m * sizeof(@T@));
                        else for (int64_t q = 0; q < m; q++) row[xlo + q] = s[q * step];
                        for (int64_t ox = xhi; ox < ow; ox++) row[ox] = pv;
                    }
                }
            }
        }
    return 0;
}

/* col2im: out (C, N, H, W) contiguous = the sum of cols (C, kh, kw, N, OH, OW; element strides s0..s5)
   over the windows, padding dropped. Every out element adds its terms in kernel-offset order into 0. */
int64_t ek_col2im_@S@(@T@ *restrict out, const @T@ *restrict cols,
                     int64_t c, int64_t kh, int64_t kw, int64_t n, int64_t oh, int64_t ow, int64_t h, int64_t w,
                     int64_t sh, int64_t sw, int64_t pt, int64_t pl, int64_t dh, int64_t dw,
                     int64_t s0, int64_t s1, int64_t s2, int64_t s3, int64_t s4, int64_t s5) {
    #pragma omp parallel for collapse(2) schedule(static) if (c * n * kh * kw * oh * ow >= EK_PAR_MIN)
    for (int64_t ci = 0; ci < c; ci++)
        for (int64_t ni = 0; ni < n; ni++) {
            @T@ *dst = out + (ci * n + ni) * h * w;
            memset(dst, 0, (size_t)(h * w) * sizeof(@T@));
            for (int64_t i = 0; i < kh; i++) {
                int64_t ylo, yhi;
                ek_span(i * dh - pt, sh, h, oh, &ylo, &yhi);
                for (int64_t j = 0; j < kw; j++) {
                    int64_t xlo, xhi;
                    ek_span(j * dw - pl, sw, w, ow, &xlo, &xhi);
                    const int64_t m = xhi - xlo;
                    if (m == 0) continue;
                    const @T@ *base = cols + ci * s0 + i * s1 + j * s2 + ni * s3 + xlo * s5;
                    for (int64_t oy = ylo; oy < yhi; oy++) {
                        @T@ *row = dst + (oy * sh + i * dh - pt) * w + (xlo * sw + j * dw - pl);
                        const @T@ *s = base + oy * s4;
                        if (sw == 1 && s5 == 1) for (int64_t q = 0; q < m; q++) row[q] += s[q];
                        else for (int64_t q = 0; q < m; q++) row[q * sw] += s[q * s5];
                    }
                }
            }
        }
    return 0;
}

/* max_pool2d: out (N, C, OH, OW) contiguous = the maximum of each window of x (N, C, H, W; element strides
   xn, xc, xh, xw), padding counting as -inf; a NaN in a window makes its maximum NaN (as np.maximum).
   Per plane, one pass per kernel offset over the windows it meets inside the input (vectorizable rows). */
int64_t ek_maxpool_@S@(@T@ *restrict out, const @T@ *restrict x,
                      int64_t n, int64_t c, int64_t h, int64_t w, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                      int64_t pt, int64_t pl, int64_t dh, int64_t dw, int64_t oh, int64_t ow,
                      int64_t xn, int64_t xc, int64_t xh, int64_t xw) {
    const int64_t step = sw * xw;
    #pragma omp parallel for collapse(2) schedule(static) if (n * c * oh * ow * kh * kw >= EK_PAR_MIN)
    for (int64_t ni = 0; ni < n; ni++)
        for (int64_t ci = 0; ci < c; ci++) {
            const @T@ *src = x + ni * xn + ci * xc;
            @T@ *dst = out + (ni * c + ci) * oh * ow;
            for (int64_t q = 0; q < oh * ow; q++) dst[q] = -(@T@)INFINITY;
            for (int64_t i = 0; i < kh; i++) {
                int64_t ylo, yhi;
                ek_span(i * dh - pt, sh, h, oh, &ylo, &yhi);
                for (int64_t j = 0; j < kw; j++) {
                    int64_t xlo, xhi;
                    ek_span(j * dw - pl, sw, w, ow, &xlo, &xhi);
                    for (int64_t oy = ylo; oy < yhi; oy++) {
                        const @T@ *row = src + (oy * sh + i * dh - pt) * xh + (j * dw - pl) * xw;
                        @T@ *d = dst + oy * ow;
                        for (int64_t ox = xlo; ox < xhi; ox++) {
                            const @T@ v = row[ox * step], m = d[ox];
                            d[ox] = (m != m || m >= v) ? m : v;
                        }
                    }
                }
            }
        }
    return 0;
}

/* The backward of one plane whose windows tile it (stride = kernel, no dilation, no padding; rows and
   columns past the last window are zeroed by the caller): every element of a window gets the window's
   gradient or 0, in one pass. Inlined with constant KH, KW for the usual sizes. */
static inline __attribute__((always_inline)) void ek_pool_tiles_@S@(
        @T@ *restrict dst, const @T@ *restrict xs, const @T@ *restrict os, const @T@ *restrict gs,
        int64_t oh, int64_t ow, int64_t w, int64_t xh, int64_t xw, int64_t oh_s, int64_t ow_s, int64_t gh,
        int64_t gw, const int64_t KH, const int64_t KW) {
    for (int64_t oy = 0; oy < oh; oy++)
        for (int64_t i = 0; i < KH; i++) {
            const @T@ *xr = xs + (oy * KH + i) * xh;
            @T@ *d = dst + (oy * KH + i) * w;
            for (int64_t ox = 0; ox < ow; ox++) {
                const @T@ m = os[oy * oh_s + ox * ow_s], gv = gs[oy * gh + ox * gw];
                int before = 0;  /* a maximum in an earlier row of this window */
                for (int64_t r = 0; r < i; r++)
                    for (int64_t j = 0; j < KW; j++) {
                        const @T@ v = xs[(oy * KH + r) * xh + (ox * KW + j) * xw];
                        before |= v == m || (v != v && m != m);
                    }
                for (int64_t j = 0; j < KW; j++) {
                    const @T@ v = xr[(ox * KW + j) * xw];
                    const int hit = !before && (v == m || (v != v && m != m));
                    d[ox * KW + j] = hit ? gv : (@T@)0;
                    before |= hit;
                }
            }
        }
}

#ifdef EK_VECTOR
typedef @T@ ek_vec_@S@ __attribute__((vector_size(32)));
typedef @IV@ ek_ivec_@S@ __attribute__((vector_size(32)));

/* The 2x2 window rule of ek_pool_tiles2 (below) on @L@ windows side by side: two contiguous loads per row
   split into even and odd columns by shuffles, compared as vectors, the four results interleaved back. */
static inline void ek_tile2_vec_@S@(@T@ *d0, @T@ *d1, const @T@ *x0, const @T@ *x1, const @T@ *orow,
                                   const @T@ *grow) {
    ek_vec_@S@ m, gv, p0, p1, q0, q1;
    __builtin_memcpy(&m, orow, 32);
    __builtin_memcpy(&gv, grow, 32);
    __builtin_memcpy(&p0, x0, 32);
    __builtin_memcpy(&p1, x0 + @L@, 32);
    __builtin_memcpy(&q0, x1, 32);
    __builtin_memcpy(&q1, x1 + @L@, 32);
    const ek_vec_@S@ a = __builtin_shufflevector(p0, p1, @EVEN@), b = __builtin_shufflevector(p0, p1, @ODD@);
    const ek_vec_@S@ c = __builtin_shufflevector(q0, q1, @EVEN@), e = __builtin_shufflevector(q0, q1, @ODD@);
    const ek_ivec_@S@ nan = (ek_ivec_@S@)(m != m);
    const ek_ivec_@S@ ea = (ek_ivec_@S@)(a == m) | ((ek_ivec_@S@)(a != a) & nan);
    const ek_ivec_@S@ eb = (ek_ivec_@S@)(b == m) | ((ek_ivec_@S@)(b != b) & nan);
    const ek_ivec_@S@ ec = (ek_ivec_@S@)(c == m) | ((ek_ivec_@S@)(c != c) & nan);
    const ek_ivec_@S@ ee = (ek_ivec_@S@)(e == m) | ((ek_ivec_@S@)(e != e) & nan);
    const ek_ivec_@S@ g = (ek_ivec_@S@)gv;
    const ek_ivec_@S@ ra = g & ea, rb = g & eb & ~ea, rc = g & ec & ~(ea | eb), re = g & ee & ~(ea | eb | ec);
    const ek_ivec_@S@ o0 = __builtin_shufflevector(ra, rb, @LO@), o1 = __builtin_shufflevector(ra, rb, @HI@);
    const ek_ivec_@S@ o2 = __builtin_shufflevector(rc, re, @LO@), o3 = __builtin_shufflevector(rc, re, @HI@);
    __builtin_memcpy(d0, &o0, 32);
    __builtin_memcpy(d0 + @L@, &o1, 32);
    __builtin_memcpy(d1, &o2, 32);
    __builtin_memcpy(d1 + @L@, &o3, 32);
}
#endif

/* ek_pool_tiles for 2x2 windows on contiguous rows: @L@ windows at a time where the compiler has
   __builtin_shufflevector (3x faster than the compiler's own vectorization of the strided loop, which gathers);
   a row's last windows go through zero-padded copies (scalar code for them measured slower). */
static void ek_pool_tiles2_@S@(@T@ *restrict dst, const @T@ *restrict xs, const @T@ *restrict os,
                              const @T@ *restrict gs, int64_t oh, int64_t ow, int64_t w, int64_t xh, int64_t oh_s,
                              int64_t gh) {
    for (int64_t oy = 0; oy < oh; oy++) {
        const @T@ *x0 = xs + 2 * oy * xh, *x1 = x0 + xh, *orow = os + oy * oh_s, *grow = gs + oy * gh;
        @T@ *d0 = dst + 2 * oy * w, *d1 = d0 + w;
        int64_t ox = 0;
#ifdef EK_VECTOR
        for (; ox + @L@ <= ow; ox += @L@)
            ek_tile2_vec_@S@(d0 + 2 * ox, d1 + 2 * ox, x0 + 2 * ox, x1 + 2 * ox, orow + ox, grow + ox);
        if (ox < ow) {  /* the last windows through zero-padded copies */
            const int64_t r = ow - ox;
            @T@ b[10 * @L@] = {0};  /* x0, x1, max, grad, d0, d1 */
            memcpy(b, x0 + 2 * ox, (size_t)(2 * r) * sizeof(@T@));
            memcpy(b + 2 * @L@, x1 + 2 * ox, (size_t)(2 * r) * sizeof(@T@));
            memcpy(b + 4 * @L@, orow + ox, (size_t)r * sizeof(@T@));
            memcpy(b + 5 * @L@, grow + ox, (size_t)r * sizeof(@T@));
            ek_tile2_vec_@S@(b + 6 * @L@, b + 8 * @L@, b, b + 2 * @L@, b + 4 * @L@, b + 5 * @L@);
            memcpy(d0 + 2 * ox, b + 6 * @L@, (size_t)(2 * r) * sizeof(@T@));
            memcpy(d1 + 2 * ox, b + 8 * @L@, (size_t)(2 * r) * sizeof(@T@));
        }
#else
        /* each window's gradient to the first of a, b, c, e (row-major) equal to the max m, or to the first
           NaN when m is NaN; bitwise, not short-circuit: no branches to mispredict */
        for (; ox < ow; ox++) {
            const @T@ m = orow[ox], gv = grow[ox];
            const @T@ a = x0[2 * ox], b = x0[2 * ox + 1], c = x1[2 * ox], e = x1[2 * ox + 1];
            const int nan = m != m;
            const int ea = (a == m) | ((a != a) & nan), eb = (b == m) | ((b != b) & nan);
            const int ec = (c == m) | ((c != c) & nan), ee = (e == m) | ((e != e) & nan);
            d0[2 * ox] = ea ? gv : (@T@)0;
            d0[2 * ox + 1] = eb & !ea ? gv : (@T@)0;
            d1[2 * ox] = ec & !(ea | eb) ? gv : (@T@)0;
            d1[2 * ox + 1] = ee & !(ea | eb | ec) ? gv : (@T@)0;
        }
#endif
    }
}

/* max_pool2d backward: grad (N, C, H, W) contiguous gets each window's gradient g at the window's first
   maximum (row-major over the kernel offsets, padding reading as -inf; a NaN counts as the maximum; out is
   the forward's result); a window whose first maximum is padding drops its gradient. Per element the terms
   are added into 0 in kernel-offset order, as the NumPy path adds them. Strides of x, g, out in elements. */
int64_t ek_maxpool_bwd_@S@(@T@ *restrict grad, const @T@ *restrict g, const @T@ *restrict x,
                          const @T@ *restrict out,
                          int64_t n, int64_t c, int64_t h, int64_t w, int64_t kh, int64_t kw, int64_t sh,
                          int64_t sw, int64_t pt, int64_t pl, int64_t dh, int64_t dw, int64_t oh, int64_t ow,
                          int64_t xn, int64_t xc, int64_t xh, int64_t xw, int64_t gn, int64_t gc, int64_t gh,
                          int64_t gw, int64_t on, int64_t oc, int64_t oh_s, int64_t ow_s) {
    int64_t failed = 0;
    const int64_t step = sw * xw, plane = oh * ow;
    #pragma omp parallel if (n * c * plane * kh * kw >= EK_PAR_MIN)
    {
        /* per thread: the forward's result, this plane's gradients (contiguous) and the first-maximum offsets */
        @T@ *buf = malloc((size_t)(2 * plane + 1) * sizeof(@T@));
        int32_t *arg = malloc((size_t)(plane + 1) * sizeof(int32_t));
        if (!buf || !arg) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp for collapse(2) schedule(static)
        for (int64_t ni = 0; ni < n; ni++)
            for (int64_t ci = 0; ci < c; ci++) {
                if (!buf || !arg) continue;
                const @T@ *xs = x + ni * xn + ci * xc;
                if (sh == kh && sw == kw && dh == 1 && dw == 1 && pt == 0 && pl == 0 && oh * kh <= h && ow * kw <= w) {
                    @T@ *dst = grad + (ni * c + ci) * h * w;
                    /* rows and columns past the last window (floor mode) get no gradient */
                    for (int64_t y = 0; y < oh * kh; y++)
                        for (int64_t q = ow * kw; q < w; q++) dst[y * w + q] = 0;
                    memset(dst + oh * kh * w, 0, (size_t)((h - oh * kh) * w) * sizeof(@T@));
                    const @T@ *os = out + ni * on + ci * oc, *gs = g + ni * gn + ci * gc;
                    const int unit = xw == 1 && ow_s == 1 && gw == 1;  /* rows contiguous: vectorizable */
                    if (unit && kh == 2 && kw == 2)
                        ek_pool_tiles2_@S@(dst, xs, os, gs, oh, ow, w, xh, oh_s, gh);
                    else if (unit && kh == 3 && kw == 3)
                        ek_pool_tiles_@S@(dst, xs, os, gs, oh, ow, w, xh, 1, oh_s, 1, gh, 1, 3, 3);
                    else
                        ek_pool_tiles_@S@(dst, xs, os, gs, oh, ow, w, xh, xw, oh_s, ow_s, gh, gw, kh, kw);
                    continue;
                }
                @T@ *o = buf, *gg = buf + plane;
                for (int64_t oy = 0; oy < oh; oy++)
                    for (int64_t ox = 0; ox < ow; ox++) {
                        o[oy * ow + ox] = out[ni * on + ci * oc + oy * oh_s + ox * ow_s];
                        gg[oy * ow + ox] = g[ni * gn + ci * gc + oy * gh + ox * gw];
                    }
                for (int64_t q = 0; q < plane; q++) arg[q] = -1;
                for (int64_t i = 0; i < kh; i++) {
                    int64_t ylo, yhi;
                    ek_span(i * dh - pt, sh, h, oh, &ylo, &yhi);
                    for (int64_t j = 0; j < kw; j++) {
                        int64_t xlo, xhi;
                        ek_span(j * dw - pl, sw, w, ow, &xlo, &xhi);
                        const int32_t q = (int32_t)(i * kw + j);
                        for (int64_t oy = 0; oy < oh; oy++) {
                            const @T@ *ov = o + oy * ow;
                            int32_t *a = arg + oy * ow;
                            const int64_t x0 = oy >= ylo && oy < yhi ? xlo : ow, x1 = oy >= ylo && oy < yhi ? xhi : ow;
                            const @T@ *row = xs + (oy * sh + i * dh - pt) * xh + (j * dw - pl) * xw;
                            for (int64_t ox = 0; ox < x0; ox++)      /* padding: -inf */
                                a[ox] = (a[ox] < 0 && ov[ox] == -(@T@)INFINITY) ? q : a[ox];
                            for (int64_t ox = x0; ox < x1; ox++) {
                                const @T@ v = row[ox * step], m = ov[ox];
                                a[ox] = (a[ox] < 0 && (v == m || (v != v && m != m))) ? q : a[ox];
                            }
                            for (int64_t ox = x1; ox < ow; ox++)
                                a[ox] = (a[ox] < 0 && ov[ox] == -(@T@)INFINITY) ? q : a[ox];
                        }
                    }
                }
                @T@ *dst = grad + (ni * c + ci) * h * w;
                memset(dst, 0, (size_t)(h * w) * sizeof(@T@));
                for (int64_t i = 0; i < kh; i++) {
                    int64_t ylo, yhi;
                    ek_span(i * dh - pt, sh, h, oh, &ylo, &yhi);
                    for (int64_t j = 0; j < kw; j++) {
                        int64_t xlo, xhi;
                        ek_span(j * dw - pl, sw, w, ow, &xlo, &xhi);
                        const int32_t q = (int32_t)(i * kw + j);
                        for (int64_t oy = ylo; oy < yhi; oy++) {
                            @T@ *d = dst + (oy * sh + i * dh - pt) * w + (j * dw - pl);
                            const int32_t *a = arg + oy * ow;
                            const @T@ *gr = gg + oy * ow;
                            for (int64_t ox = xlo; ox < xhi; ox++)
                                if (a[ox] == q) d[ox * sw] += gr[ox];
                        }
                    }
                }
            }
        free(buf);
        free(arg);
    }
    return failed ? 2 : 0;
}

/* argmax (want_max) or argmin over the middle axis of x (outer, n, inner), n >= 1: out (outer, inner) holds the
   first position of the extreme, or of the first NaN (NumPy's rule: update while !(v <= best), stop at a NaN) */
int64_t ek_argext_@S@(int64_t *restrict out, const @T@ *restrict x, int64_t outer, int64_t n, int64_t inner,
                      int64_t want_max) {
    const int64_t blk = 256, nb = (inner + blk - 1) / blk;
    #pragma omp parallel for collapse(2) schedule(static) if (outer * n * inner >= EK_PAR_MIN)
    for (int64_t o = 0; o < outer; o++)
        for (int64_t b = 0; b < nb; b++) {
            const int64_t e0 = b * blk, m = e0 + blk < inner ? blk : inner - e0;
            const @T@ *xb = x + o * n * inner + e0;
            int64_t *ob = out + o * inner + e0;
            @T@ best[256];
            for (int64_t e = 0; e < m; e++) {
                best[e] = xb[e];
                ob[e] = 0;
            }
            for (int64_t q = 1; q < n; q++) {
                const @T@ *r = xb + q * inner;
                if (want_max)
                    for (int64_t e = 0; e < m; e++) {
                        const int upd = (best[e] == best[e]) & !(r[e] <= best[e]);
                        best[e] = upd ? r[e] : best[e];
                        ob[e] = upd ? q : ob[e];
                    }
                else
                    for (int64_t e = 0; e < m; e++) {
                        const int upd = (best[e] == best[e]) & !(r[e] >= best[e]);
                        best[e] = upd ? r[e] : best[e];
                        ob[e] = upd ? q : ob[e];
                    }
            }
        }
    return 0;
}

/* NumPy's pairwise summation (pairwise_sum in numpy/_core/src/umath/loops_utils.h.src) of the m rows
   x + ROW(q) * d, q < m, column by column, into res; acc holds 8 * d scratch elements. */
#define EK_ROW(q) (x + (pos ? pos[first + (q)] : first + (q)) * d)
static int ek_pairwise_@S@(@T@ *restrict res, const @T@ *restrict x, const int64_t *pos, int64_t first,
                          int64_t m, int64_t d, @T@ *restrict acc) {
    if (m < 8) {
        for (int64_t e = 0; e < d; e++) res[e] = (@T@)-0.0;  /* NumPy starts at -0.0: a sum of -0.0 stays -0.0 */
        for (int64_t q = 0; q < m; q++) {
            const @T@ *r = EK_ROW(q);
            for (int64_t e = 0; e < d; e++) res[e] += r[e];
        }
        return 0;
    }
    if (m <= 128) {
        for (int64_t u = 0; u < 8; u++) memcpy(acc + u * d, EK_ROW(u), (size_t)d * sizeof(@T@));
        int64_t q = 8;
        for (; q < m - m % 8; q += 8)
            for (int64_t u = 0; u < 8; u++) {
                const @T@ *r = EK_ROW(q + u);
                @T@ *a = acc + u * d;
                for (int64_t e = 0; e < d; e++) a[e] += r[e];
            }
        for (int64_t e = 0; e < d; e++)
            res[e] = ((acc[e] + acc[d + e]) + (acc[2 * d + e] + acc[3 * d + e]))
                   + ((acc[4 * d + e] + acc[5 * d + e]) + (acc[6 * d + e] + acc[7 * d + e]));
        for (; q < m; q++) {
            const @T@ *r = EK_ROW(q);
            for (int64_t e = 0; e < d; e++) res[e] += r[e];
        }
        return 0;
    }
    int64_t m2 = m / 2;
    m2 -= m2 % 8;
    @T@ *right = malloc((size_t)d * sizeof(@T@));
    if (!right) return 2;
    int rc = ek_pairwise_@S@(res, x, pos, first, m2, d, acc);
    if (!rc) rc = ek_pairwise_@S@(right, x, pos, first + m2, m - m2, d, acc);
    for (int64_t e = 0; e < d; e++) res[e] += right[e];
    free(right);
    return rc;
}

/* out = np.add.reduceat of the m >= 1 rows (first row + pairwise sum of the rest) */
static int ek_segment_@S@(@T@ *restrict out, const @T@ *restrict x, const int64_t *pos, int64_t first, int64_t m,
                         int64_t d, @T@ *restrict acc) {
    const @T@ *r0 = EK_ROW(0);
    if (m == 1) {
        memcpy(out, r0, (size_t)d * sizeof(@T@));
        return 0;
    }
    int rc = ek_pairwise_@S@(out, x, pos, first + 1, m - 1, d, acc);
    for (int64_t e = 0; e < d; e++) out[e] = r0[e] + out[e];
    return rc;
}
#undef EK_ROW
"""

_PER_INDEX = r"""
static int64_t ek_check_@S@_@J@(const @I@ *idx, int64_t k, int64_t lo, int64_t hi) {
    int64_t bad = 0;
    for (int64_t q = 0; q < k; q++) bad |= (idx[q] < lo) | (idx[q] >= hi);
    return bad;
}

/* index_add: out (outer, n, inner) += src (outer, k, inner) at rows idx (k), in index order per row.
   Threads own whole slices o, or (few slices) ranges of destination rows, scanning all of idx. */
int64_t ek_index_add_@S@_@J@(@T@ *restrict out, const @T@ *restrict src, const @I@ *restrict idx,
                           int64_t outer, int64_t n, int64_t k, int64_t inner) {
    if (ek_check_@S@_@J@(idx, k, -n, n)) return 1;
    #pragma omp parallel if (outer * k * inner >= EK_PAR_MIN)
    {
        const int64_t nt = EK_NT(), t = EK_TID();
        if (outer >= 4 * nt) {
            #pragma omp for schedule(static)
            for (int64_t o = 0; o < outer; o++)
                for (int64_t q = 0; q < k; q++) {
                    int64_t v = idx[q];
                    v += v < 0 ? n : 0;
                    @T@ *dst = out + (o * n + v) * inner;
                    const @T@ *s = src + (o * k + q) * inner;
                    for (int64_t e = 0; e < inner; e++) dst[e] += s[e];
                }
        } else {
            const int64_t r0 = n * t / nt, r1 = n * (t + 1) / nt;
            for (int64_t o = 0; o < outer; o++)
                for (int64_t q = 0; q < k; q++) {
                    int64_t v = idx[q];
                    v += v < 0 ? n : 0;
                    if (v < r0 || v >= r1) continue;
                    @T@ *dst = out + (o * n + v) * inner;
                    const @T@ *s = src + (o * k + q) * inner;
                    for (int64_t e = 0; e < inner; e++) dst[e] += s[e];
                }
        }
    }
    return 0;
}

/* gather: out (outer, k, inner) = x (outer, n, inner) at [o, idx[o, q, e], e] */
int64_t ek_gather_@S@_@J@(@T@ *restrict out, const @T@ *restrict x, const @I@ *restrict idx,
                        int64_t outer, int64_t n, int64_t k, int64_t inner) {
    if (ek_check_@S@_@J@(idx, outer * k * inner, -n, n)) return 1;
    #pragma omp parallel for collapse(2) schedule(static) if (outer * k * inner >= EK_PAR_MIN)
    for (int64_t o = 0; o < outer; o++)
        for (int64_t q = 0; q < k; q++) {
            const @I@ *ir = idx + (o * k + q) * inner;
            @T@ *orow = out + (o * k + q) * inner;
            const @T@ *xb = x + o * n * inner;
            for (int64_t e = 0; e < inner; e++) {
                int64_t v = ir[e];
                v += v < 0 ? n : 0;
                orow[e] = xb[v * inner + e];
            }
        }
    return 0;
}

/* scatter_add: out (outer, n, inner) [o, idx[o, q, e], e] += src (outer, k, inner) [o, q, e], q in order.
   Destinations of different (o, e) never meet, so threads take (o, block of e) pairs. */
int64_t ek_scatter_add_@S@_@J@(@T@ *restrict out, const @T@ *restrict src, const @I@ *restrict idx,
                             int64_t outer, int64_t n, int64_t k, int64_t inner) {
    if (ek_check_@S@_@J@(idx, outer * k * inner, -n, n)) return 1;
    const int64_t blk = 512, nb = (inner + blk - 1) / blk;
    #pragma omp parallel for collapse(2) schedule(static) if (outer * k * inner >= EK_PAR_MIN)
    for (int64_t o = 0; o < outer; o++)
        for (int64_t b = 0; b < nb; b++) {
            const int64_t e0 = b * blk, e1 = e0 + blk < inner ? e0 + blk : inner;
            @T@ *ob = out + o * n * inner;
            for (int64_t q = 0; q < k; q++) {
                const @I@ *ir = idx + (o * k + q) * inner;
                const @T@ *sr = src + (o * k + q) * inner;
                for (int64_t e = e0; e < e1; e++) {
                    int64_t v = ir[e];
                    v += v < 0 ? n : 0;
                    ob[v * inner + e] += sr[e];
                }
            }
        }
    return 0;
}

/* scatter_rows: out (num, d), zeroed, gets at row r the reduceat-sum of the rows of g (k, d) whose id is r,
   in index order; rows no id names stay 0. A stable LSD radix sort of the ids (8 bits a pass, O(k) memory and
   time whatever num is) groups the positions; threads then take whole groups. */
int64_t ek_scatter_rows_@S@_@J@(@T@ *restrict out, const @T@ *restrict g, const @I@ *restrict idx,
                              int64_t k, int64_t num, int64_t d) {
    if (ek_check_@S@_@J@(idx, k, 0, num)) return 1;
    if (k == 0 || d == 0) return 0;
    int64_t *buf = malloc((size_t)(5 * k + 1) * sizeof(int64_t));
    if (!buf) return 2;
    int64_t *key = buf, *pos = buf + k, *key2 = buf + 2 * k, *pos2 = buf + 3 * k, *starts = buf + 4 * k;
    for (int64_t q = 0; q < k; q++) {
        key[q] = idx[q];
        pos[q] = q;
    }
    for (int64_t shift = 0; shift < 63 && ((num - 1) >> shift) > 0; shift += 8) {
        int64_t count[257] = {0};
        for (int64_t q = 0; q < k; q++) count[((key[q] >> shift) & 255) + 1]++;
        for (int64_t v = 0; v < 256; v++) count[v + 1] += count[v];
        for (int64_t q = 0; q < k; q++) {
            const int64_t at = count[(key[q] >> shift) & 255]++;
            key2[at] = key[q];
            pos2[at] = pos[q];
        }
        int64_t *t = key; key = key2; key2 = t;
        t = pos; pos = pos2; pos2 = t;
    }
    int64_t runs = 0;
    for (int64_t q = 0; q < k; q++)
        if (q == 0 || key[q] != key[q - 1]) starts[runs++] = q;
    starts[runs] = k;
    int64_t rc = 0;
    #pragma omp parallel if (k * d >= EK_PAR_MIN)
    {
        @T@ *acc = malloc((size_t)(8 * d) * sizeof(@T@));
        int bad = acc == NULL;
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < runs; r++) {
            const int64_t b = starts[r];
            if (!bad) bad = ek_segment_@S@(out + key[b] * d, g, pos, b, starts[r + 1] - b, d, acc);
        }
        if (bad) {
            #pragma omp atomic write
            rc = 2;
        }
        free(acc);
    }
    free(buf);
    return rc;
}

/* segment_sum: out (b, d), zeroed: row i = reduceat-sum of x rows off[i] .. off[i + 1] (the last to n);
   offsets that are negative, decreasing or past n are an error. */
int64_t ek_segment_sum_@S@_@J@(@T@ *restrict out, const @T@ *restrict x, const @I@ *restrict off,
                             int64_t b, int64_t n, int64_t d) {
    for (int64_t i = 0; i < b; i++) {
        const int64_t s = off[i], e = i + 1 < b ? off[i + 1] : n;
        if (s < 0 || e < s || e > n) return 1;
    }
    if (d == 0) return 0;
    int64_t rc = 0;
    #pragma omp parallel if (n * d >= EK_PAR_MIN)
    {
        @T@ *acc = malloc((size_t)(8 * d) * sizeof(@T@));
        int bad = acc == NULL;
        #pragma omp for schedule(static)
        for (int64_t i = 0; i < b; i++) {
            const int64_t s = off[i], e = i + 1 < b ? off[i + 1] : n;
            if (e > s && !bad) bad = ek_segment_@S@(out + i * d, x, NULL, s, e - s, d, acc);
        }
        if (bad) {
            #pragma omp atomic write
            rc = 2;
        }
        free(acc);
    }
    return rc;
}
"""


def _shuffles(lanes: int) -> dict[str, str]:
    """Shuffle indices over two vectors of ``lanes``: their even and odd lanes, and the two halves of an
    interleave."""
    def text(indices: Iterable[int]) -> str:
        return ", ".join(map(str, indices))
    return {"@EVEN@": text(range(0, 2 * lanes, 2)), "@ODD@": text(range(1, 2 * lanes, 2)),
            "@LO@": text(i for k in range(lanes // 2) for i in (k, k + lanes)),
            "@HI@": text(i for k in range(lanes // 2, lanes) for i in (k, k + lanes))}


def source(dtype: Any) -> str:
    """The C translation unit of the kernels for float ``dtype`` (float32 or float64), both index types."""
    ctype, tag = _DATA[np.dtype(dtype)]
    itype_v, lanes = _LANES[ctype]
    per_data = _PER_DATA
    for key, value in (("@IV@", itype_v), ("@L@", str(lanes)), *_shuffles(lanes).items()):
        per_data = per_data.replace(key, value)
    parts = [_COMMON.replace("PARALLEL_MIN", str(_PARALLEL_MIN)),
             per_data.replace("@T@", ctype).replace("@S@", tag)]
    for itype, itag in _INDEX.values():
        parts.append(_PER_INDEX.replace("@T@", ctype).replace("@S@", tag).replace("@I@", itype)
                     .replace("@J@", itag))
    return "\n".join(parts)


_LOCK = threading.Lock()
_LIBS: dict[str, Any] = {}      # data tag -> Library, or None after a failed build
_FUNCS: dict[str, Any] = {}     # symbol -> ctypes function returning int64


def enabled() -> bool:
    """Whether the kernels may be used (switched on, and a C compiler exists)."""
    return _ENABLED[0] and cc.available()


def set_enabled(flag: bool) -> bool:
    """Switch the kernels on or off (for benchmarks and tests); returns the previous setting."""
    old = _ENABLED[0]
    _ENABLED[0] = bool(flag)
    return old


def library(dtype: Any) -> cc.Library | None:
    """The compiled kernels for float ``dtype`` (through ``cc.load``'s caches), or None when they cannot be built."""
    tag = _DATA[np.dtype(dtype)][1]
    if tag in _LIBS:
        return _LIBS[tag]
    with _LOCK:
        if tag not in _LIBS:
            lib = None
            if cc.available():
                try:
                    lib = cc.load(source(dtype), f"index_kernels_{tag}")
                except CodegenError as e:
                    warnings.warn(f"ember.codegen.index_kernels: cannot build the {tag} kernels; using NumPy:\n{e}",
                                  RuntimeWarning, stacklevel=2)
            _LIBS[tag] = lib
    return _LIBS[tag]


def _function(dtype: np.dtype, name: str, index: np.dtype | None, n_pointers: int, n_ints: int) -> Any:
    sym = f"ek_{name}_{_DATA[dtype][1]}" + (f"_{_INDEX[index][1]}" if index is not None else "")
    f = _FUNCS.get(sym)
    if f is None:
        lib = library(dtype)
        if lib is None:
            return None
        f = lib.function(sym, n_pointers, n_ints)
        f.restype = ctypes.c_int64  # 0 ok, 1 an index out of range, 2 out of memory
        _FUNCS[sym] = f
    return f


def _data_ok(*arrays: Any) -> np.dtype | None:
    """The common float dtype of ``arrays`` when the kernels handle it, else None."""
    if not _ENABLED[0]:
        return None
    dt = arrays[0].dtype
    if dt not in _DATA or any(a.dtype != dt for a in arrays[1:]):
        return None
    return dt


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


def _ints(*values: Any) -> list[int]:
    return [int(v) for v in values]  # attrs may hold NumPy ints, which ctypes does not take as c_int64


def _prod(shape: Sequence[int]) -> int:
    p = 1
    for s in shape:
        p *= s
    return p


def _elem_strides(a: np.ndarray) -> tuple[int, ...] | None:
    it = a.itemsize
    if any(s % it for s in a.strides):
        return None
    return tuple(s // it for s in a.strides)


def _fresh_copy(x: np.ndarray, any_zero: bool) -> np.ndarray:
    """A writeable C-contiguous copy of ``x``; a broadcast zero (a gradient seed) becomes fresh zeroed pages.
    ``any_zero``: -0.0 counts as that zero too (as index_add's NumPy path has it), else only +0.0 does."""
    if x.ndim and x.size and not any(x.strides):
        v = x.flat[0]
        if v == 0 and (any_zero or not np.signbit(v)):
            return np.zeros(x.shape, dtype=x.dtype)
    return np.array(x, order="C")


def _index(index: Any) -> np.ndarray | None:
    if not isinstance(index, np.ndarray) or index.dtype not in _INDEX:
        return None
    return np.ascontiguousarray(index)


# ----------------------------------------------------------------------------- im2col / col2im


def im2col(x: np.ndarray, kernel: tuple, stride: tuple, padding: tuple, dilation: tuple, pad_value: Any,
           out_hw: tuple[int, int]) -> np.ndarray | None:
    """``unfold2d``: the (C, kh, kw, N, OH, OW) columns of the (N, C, H, W) ``x``, or None."""
    dt = _data_ok(x)
    strides = _elem_strides(x) if dt is not None else None
    if strides is None:
        return None
    f = _function(dt, "im2col", None, 3, 18)
    if f is None:
        return None
    n, c, h, w = x.shape
    (kh, kw), (oh, ow) = kernel, out_hw
    out = np.empty((c, kh, kw, n, oh, ow), dtype=dt)
    pad = np.array(pad_value, dtype=dt)
    f(_ptr(out), _ptr(x), _ptr(pad), n, c, h, w, *_ints(kh, kw, *stride, padding[0], padding[2], *dilation, oh, ow),
      *strides)
    return out


def col2im(cols: np.ndarray, size: tuple, kernel: tuple, stride: tuple, padding: tuple,
           dilation: tuple) -> np.ndarray | None:
    """``fold2d``: the (N, C, H, W) window sums of (C, kh, kw, N, OH, OW) ``cols`` (a view of a (C, N, H, W)
    array), or None."""
    dt = _data_ok(cols)
    strides = _elem_strides(cols) if dt is not None else None
    if strides is None:
        return None
    f = _function(dt, "col2im", None, 2, 20)
    if f is None:
        return None
    c, kh, kw, n, oh, ow = cols.shape
    h, w = size
    out = np.empty((c, n, h, w), dtype=dt)
    f(_ptr(out), _ptr(cols), c, kh, kw, n, oh, ow, *_ints(h, w, *stride, padding[0], padding[2], *dilation),
      *strides)
    return out.transpose(1, 0, 2, 3)


# ----------------------------------------------------------------------------- max pooling


def max_pool(x: np.ndarray, kernel: tuple, stride: tuple, pad: tuple, dilation: tuple,
             out_hw: tuple[int, int]) -> np.ndarray | None:
    """``max_pool2d``: the (N, C, OH, OW) window maxima of the (N, C, H, W) ``x`` (padding -inf), or None."""
    dt = _data_ok(x)
    strides = _elem_strides(x) if dt is not None else None
    if strides is None:
        return None
    f = _function(dt, "maxpool", None, 2, 18)
    if f is None:
        return None
    n, c, h, w = x.shape
    out = np.empty((n, c) + tuple(out_hw), dtype=dt)
    f(_ptr(out), _ptr(x), n, c, h, w, *_ints(*kernel, *stride, pad[0], pad[2], *dilation, *out_hw), *strides)
    return out


def max_pool_backward(g: np.ndarray, x: np.ndarray, out: np.ndarray, kernel: tuple, stride: tuple, pad: tuple,
                      dilation: tuple, out_hw: tuple[int, int]) -> np.ndarray | None:
    """``max_pool2d_backward``: the (N, C, H, W) gradient of ``x`` given the window gradients ``g`` and the
    forward's result ``out``, each window's going to its first maximum, or None."""
    dt = _data_ok(g, x, out)
    layouts = [_elem_strides(a) for a in (x, g, out)] if dt is not None else [None]
    if any(s is None for s in layouts):
        return None
    f = _function(dt, "maxpool_bwd", None, 4, 26)
    if f is None:
        return None
    n, c, h, w = x.shape
    grad = np.empty(x.shape, dtype=dt)
    if f(_ptr(grad), _ptr(g), _ptr(x), _ptr(out), n, c, h, w,
         *_ints(*kernel, *stride, pad[0], pad[2], *dilation, *out_hw), *layouts[0], *layouts[1], *layouts[2]):
        return None
    return grad


# ----------------------------------------------------------------------------- rows: index_add


def index_add(x: np.ndarray, index: np.ndarray, src: np.ndarray, axis: int) -> np.ndarray | None:
    """A copy of ``x`` with ``src`` added at the 1-D ``index`` along ``axis`` in index order (``np.add.at``),
    or None."""
    dt = _data_ok(x, src)
    idx = _index(index) if dt is not None else None
    if idx is None or idx.ndim != 1:
        return None
    f = _function(dt, "index_add", idx.dtype, 3, 4)
    if f is None:
        return None
    if src.shape != x.shape[:axis] + (idx.size,) + x.shape[axis + 1:]:
        return None
    out = _fresh_copy(x, True)
    src = np.ascontiguousarray(src)
    if f(_ptr(out), _ptr(src), _ptr(idx), _prod(x.shape[:axis]), x.shape[axis], idx.size,
         _prod(x.shape[axis + 1:])):
        return None
    return out


# ----------------------------------------------------------------------------- gather / scatter_add


def _gather_layout(x: np.ndarray, index: np.ndarray, axis: int) -> tuple[int, int, int, int] | None:
    """(outer, n, k, inner) when ``index`` matches ``x`` outside ``axis`` (the common case), else None."""
    if index.ndim != x.ndim or index.shape[:axis] != x.shape[:axis] or index.shape[axis + 1:] != x.shape[axis + 1:]:
        return None
    return _prod(x.shape[:axis]), x.shape[axis], index.shape[axis], _prod(x.shape[axis + 1:])


def gather(x: np.ndarray, index: np.ndarray, axis: int) -> np.ndarray | None:
    """PyTorch's gather along ``axis`` for an ``index`` of ``x``'s shape outside ``axis``, or None."""
    dt = _data_ok(x)
    idx = _index(index) if dt is not None else None
    layout = _gather_layout(x, idx, axis) if idx is not None else None
    if layout is None:
        return None
    f = _function(dt, "gather", idx.dtype, 3, 4)
    if f is None:
        return None
    x = np.ascontiguousarray(x)
    out = np.empty(idx.shape, dtype=dt)
    if f(_ptr(out), _ptr(x), _ptr(idx), *layout):
        return None
    return out


def scatter_add(x: np.ndarray, index: np.ndarray, src: np.ndarray, axis: int) -> np.ndarray | None:
    """A copy of ``x`` with ``src[:index.shape]`` added at ``index`` along ``axis`` in index order
    (``np.add.at``), or None."""
    dt = _data_ok(x, src)
    idx = _index(index) if dt is not None else None
    layout = _gather_layout(x, idx, axis) if idx is not None else None
    if layout is None:
        return None
    f = _function(dt, "scatter_add", idx.dtype, 3, 4)
    if f is None:
        return None
    if src.ndim != idx.ndim:
        return None
    if src.shape != idx.shape:
        src = src[tuple(slice(0, s) for s in idx.shape)]
        if src.shape != idx.shape:
            return None
    out = _fresh_copy(x, False)
    src = np.ascontiguousarray(src)
    if f(_ptr(out), _ptr(src), _ptr(idx), *layout):
        return None
    return out


def argext(x: np.ndarray, axis: int, keepdim: bool, want_max: bool) -> np.ndarray | None:
    """``np.argmax`` (or ``np.argmin``) along ``axis`` when that is not the last axis (NumPy copies the array
    to move it last and then pays a call per row), or None."""
    dt = _data_ok(x)
    if dt is None or x.ndim == 0 or axis in (-1, x.ndim - 1) or x.shape[axis] == 0:
        return None
    f = _function(dt, "argext", None, 2, 4)
    if f is None:
        return None
    axis %= x.ndim
    x = np.ascontiguousarray(x)
    shape = x.shape[:axis] + x.shape[axis + 1:]
    out = np.empty(shape, dtype=np.int64)
    f(_ptr(out), _ptr(x), _prod(x.shape[:axis]), x.shape[axis], _prod(x.shape[axis + 1:]), int(want_max))
    return out.reshape(x.shape[:axis] + (1,) + x.shape[axis + 1:]) if keepdim else out


# ----------------------------------------------------------------------------- embedding rows, segments


def scatter_rows(g: np.ndarray, ids: np.ndarray, num: int) -> np.ndarray | None:
    """A zero (num, ...) table with the rows of ``g`` summed in at the 1-D ``ids`` (each row as
    ``np.add.reduceat`` over its ids in index order), or None."""
    dt = _data_ok(g)
    idx = _index(ids) if dt is not None else None
    if idx is None or idx.ndim != 1 or g.ndim < 1 or g.shape[0] != idx.size:
        return None
    f = _function(dt, "scatter_rows", idx.dtype, 3, 3)
    if f is None:
        return None
    g = np.ascontiguousarray(g)
    num = int(num)
    out = np.zeros((num,) + g.shape[1:], dtype=dt)
    if f(_ptr(out), _ptr(g), _ptr(idx), idx.size, num, _prod(g.shape[1:])):
        return None
    return out


def segment_sum(x: np.ndarray, offsets: np.ndarray) -> np.ndarray | None:
    """Row sums of the segments ``x[offsets[i]:offsets[i + 1]]`` (the last to the end; empty ones 0),
    each as ``np.add.reduceat``, or None (also for invalid offsets)."""
    dt = _data_ok(x)
    off = _index(offsets) if dt is not None else None
    if off is None or off.ndim != 1 or x.ndim < 1:
        return None
    f = _function(dt, "segment_sum", off.dtype, 3, 3)
    if f is None:
        return None
    x = np.ascontiguousarray(x)
    out = np.zeros((off.size,) + x.shape[1:], dtype=dt)
    if f(_ptr(out), _ptr(x), _ptr(off), off.size, x.shape[0], _prod(x.shape[1:])):
        return None
    return out
