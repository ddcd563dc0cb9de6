"""Ember: a deep-learning framework: eager tensors, autodiff, a graph compiler with generated kernels.

The public API mirrors PyTorch where it can: ``ember.tensor``, ``ember.randn``,
``x.backward()``, ``ember.no_grad()``, ``ember.grad`` ...
"""

from __future__ import annotations

__version__ = "0.1.0"

from .backend.blas import tune_thread_timeout as _tune_thread_timeout

_tune_thread_timeout()  # before NumPy loads OpenBLAS where it can be (see ember.backend.blas)

from . import dtypes
from .dtypes import (DType, bool_, float16, float32, float64, get_default_dtype, int8, int32, int64,
                     promote_types, set_default_dtype, uint8)
from .device import Device, device
from .errors import (AutogradError, DeviceError, DTypeError, EmberError, EmberIndexError, ShapeError,
                     TraceError)
from .tensor import Tensor
from . import autograd, ops
from .autograd import enable_grad, grad, is_grad_enabled, jvp, no_grad, set_grad_enabled
from .ops.creation import (arange, as_tensor, empty, empty_like, eye, from_dlpack, from_numpy, full, full_like,
                           linspace, ones, ones_like, tensor, zeros, zeros_like)
from .ops.random import (Generator, default_generator, get_rng_state, manual_seed, normal, rand, rand_like,
                         randint, randn, randn_like, randperm, seed, set_rng_state, uniform)
from .ops.pointwise import (abs, add, cast, ceil, clamp, clip, cos, div, divide, eq, erf, exp, exp2, expm1,
                            floor, floor_divide, fmod, ge, gt, isfinite, isinf, isnan, le, log, log1p, log2,
                            logical_and, logical_not, logical_or, logical_xor, lt, masked_fill, maximum,
                            minimum, mul, multiply, ne, neg, negative, pow, reciprocal, relu, remainder, round,
                            rsqrt, sigmoid, sign, sin, sqrt, square, sub, subtract, tanh, true_divide, where)
from .ops.reduce import (all, amax, amin, any, argmax, argmin, cumsum, logsumexp, max, mean, min, norm, prod,
                         std, sum, var)
from .ops.pointwise import bitwise_and, bitwise_not, bitwise_or, bitwise_xor
from .ops.movement import (broadcast_to, cat, chunk, concat, concatenate, expand, flatten, flip, gather, index_add,
                           index_copy, index_select, movedim, narrow, one_hot, pad, permute, repeat, reshape,
                           scatter_add, split, squeeze, stack, swapaxes, take, take_along_dim, transpose, unbind,
                           unsqueeze, view)
from .ops.linalg import avg_pool2d, bmm, conv2d, matmul, max_pool2d, mm
from .ops.composite import log_softmax, softmax

bool = bool_
float = float32
double = float64
half = float16
long = int64
int = int32

from . import io, nn, optim, data
from . import cuda
from .io import load, save
from . import graph
from .graph import jit, placeholder
from .amp import GradScaler, autocast
