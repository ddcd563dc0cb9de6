"""The CUDA dialect: it renders every kernel of test_kernels, compiles with ``nvcc --ptx`` where nvcc exists
(and through NVRTC, run on the GPU, where CuPy and a GPU exist),
and computes the right values when run on the CPU under a small emulation of CUDA (one warp of 32 lanes as
32 threads, ``__shfl_xor_sync`` through a barrier), compiled as C++ by g++."""

import ctypes
import re
import shutil
import subprocess

import numpy as np
import pytest

from ember.codegen import CodegenError, cc, render
from ember.codegen.c import CUDA

from .test_kernels import CASES

EMULATED = ["affine_1023_float32", "transposed_and_stepped", "flipped", "broadcast_outer", "two_outputs_and_cast",
            "chain_float32", "sum_max_last_axis", "sum_max_axis0", "middle_axis_noncontig", "two_axes_transposed",
            "full_reduction_parallel", "int_and_bool_reductions", "empty_sum", "softmax_last", "softmax_axis0",
            "log_softmax_last", "layer_norm", "centered_1", "centered_0", "integer_division", "nan_propagation",
            "bool_logic_and_where", "inf_and_int64_constants"]

SHIM = r"""
#include <barrier>
#include <cstring>
#include <math.h>
#include <thread>
#include <vector>
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
struct em_dim { unsigned x; };
static thread_local em_dim threadIdx;
static const em_dim blockIdx{0}, blockDim{32}, gridDim{1};
static std::barrier<>* em_bar;
static unsigned char em_lanes[32][8];
template <class T> static T __shfl_xor_sync(unsigned, T v, int off) {
  std::memcpy(em_lanes[threadIdx.x], &v, sizeof v);
  em_bar->arrive_and_wait();
  T o;
  std::memcpy(&o, em_lanes[threadIdx.x ^ off], sizeof o);
  em_bar->arrive_and_wait();
  return o;
}
static inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
static inline double __longlong_as_double(long long i) { double f; std::memcpy(&f, &i, 8); return f; }
"""


def kernels():
    return [c[0] for c in CASES.values()]


def test_cuda_dialect_renders():
    src = render(kernels(), "cuda")
    assert src.dialect == "cuda" and len(src.launch) == len(src.functions)
    for sym, text in src.functions.items():
        assert text.startswith(f'extern "C" __global__ void {sym}(')
        assert "gridDim.x * blockDim.x" in text           # grid-stride loop
        assert "#pragma omp" not in text and "em_expf" not in text and "int64_t" not in text
        assert src.launch[sym]["block"] == 256 and src.launch[sym]["grid"] >= 1
    row = src.functions[src.symbols["softmax_last"]]
    assert row.count("__shfl_xor_sync") == 2 and "lane" in row and "expf(" in row
    col = src.functions[src.symbols["softmax_axis0"]]
    assert "__shfl_xor_sync" not in col
    assert "erff(" in src.functions[src.symbols["unary_f32"]]
    with pytest.raises(CodegenError, match="unknown dialect"):
        render(kernels()[:1], "metal")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
def test_cuda_compiles_to_ptx():
    src = render(kernels(), "cuda")
    ptx = cc.compile_ptx(src.text)
    entries = set(re.findall(r"\.entry\s+(\w+)", ptx))
    assert set(src.functions) <= entries


def _launcher(kernel, sym):
    params = [f"void *p{n}" for n in range(len(kernel.outputs) + len(kernel.inputs))]
    casts = [f"({CUDA.ctype(o.dtype)} *)p{n}" for n, o in enumerate(kernel.outputs)]
    casts += [f"(const {CUDA.ctype(i.dtype)} *)p{len(kernel.outputs) + n}" for n, i in enumerate(kernel.inputs)]
    return (f'extern "C" void run_{sym}({", ".join(params)}) {{\n'
            f"  std::barrier<> bar(32); em_bar = &bar; std::vector<std::thread> lanes;\n"
            f"  for (unsigned l = 0; l < 32; ++l)\n"
            f"    lanes.emplace_back([=] {{ threadIdx.x = l; {sym}({', '.join(casts)}); }});\n"
            f"  for (auto &t : lanes) t.join();\n}}\n")


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler for the CUDA emulation")
    chosen = [CASES[n][0] for n in EMULATED]
    src = render(chosen, "cuda")
    text = SHIM + src.text + "".join(_launcher(k, src.symbols[k.name]) for k in chosen)
    d = tmp_path_factory.mktemp("cuda-emu")
    (d / "emu.cpp").write_text(text)
    proc = subprocess.run([cxx, "-std=c++20", "-O1", "-fPIC", "-shared", "-pthread", str(d / "emu.cpp"), "-o",
                           str(d / "emu.so")], capture_output=True, text=True)
    if proc.returncode != 0 and "barrier" in proc.stderr:
        pytest.skip("the C++ compiler lacks <barrier> (C++20)")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return ctypes.CDLL(str(d / "emu.so")), src.symbols


@pytest.mark.parametrize("name", EMULATED)
def test_cuda_kernels_compute_correctly_under_emulation(emulated, name):
    lib, symbols = emulated
    kernel, inputs, expected, rtol, atol = CASES[name]
    outs = [np.empty(o.shape, o.dtype.np) for o in kernel.outputs]
    f = getattr(lib, f"run_{symbols[kernel.name]}")
    f.argtypes = [ctypes.c_void_p] * (len(outs) + len(inputs))
    f(*[a.ctypes.data for a in (*outs, *inputs)])
    for o, out, ref in zip(kernel.outputs, outs, expected):
        ref = np.asarray(ref).reshape(out.shape)
        if rtol == 0 and atol == 0:
            np.testing.assert_array_equal(out, ref.astype(out.dtype), err_msg=f"{name}: {o.name}")
        else:  # CUDA's own expf/tanhf and a different summation order: a little more slack
            np.testing.assert_allclose(out, ref, rtol=max(rtol, 1e-5), atol=max(atol, 1e-6),
                                       err_msg=f"{name}: {o.name}")


def _cuda_ready() -> bool:
    import ember
    return ember.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_ready(), reason="needs a GPU and CuPy (pip install 'ember[cuda]')")
def test_cuda_kernels_compile_with_nvrtc_and_compute_correctly_on_the_gpu():
    """The same kernels through NVRTC (CuPy's RawModule), launched with the renderer's configuration."""
    import cupy

    chosen = [CASES[n][0] for n in EMULATED]
    src = render(chosen, "cuda")
    module = cupy.RawModule(code=src.text)
    for name in EMULATED:
        kernel, inputs, expected, rtol, atol = CASES[name]
        sym = src.symbols[kernel.name]
        outs = [cupy.empty(o.shape, o.dtype.np) for o in kernel.outputs]
        launch = src.launch[sym]
        module.get_function(sym)((launch["grid"],), (launch["block"],), (*outs, *map(cupy.asarray, inputs)))
        cupy.cuda.Device().synchronize()
        for o, out, ref in zip(kernel.outputs, outs, expected):
            np.testing.assert_allclose(cupy.asnumpy(out), np.asarray(ref).reshape(out.shape), rtol=max(rtol, 1e-5),
                                       atol=max(atol, 1e-6), err_msg=f"{name}: {o.name}")
