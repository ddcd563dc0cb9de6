"""Random number generation: seeded ``Generator``s and the random primitives.

Each draw is an op with no tensor inputs whose ``generator`` attribute is the
source of randomness, so a traced program can make the generator state an input
and draw fresh numbers on every replay. Streams are PCG64 (NumPy), reproducible
across runs and platforms for a given seed.

Draws for a GPU tensor are made on that GPU, from a stream of the device's array
library (CuPy's ``cupy.random.default_rng``, XORWOW) that the generator keeps per
device and seeds with its own seed. They are reproducible for a seed on that
device, but they are not the numbers the CPU stream gives for the same seed (as in
PyTorch, where CPU and CUDA generators differ too); ``get_state``/``set_state``
carry the CPU stream only, and ``set_state``/``manual_seed`` restart the device
streams from the seed.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from .. import dtypes as _dt
from ..device import to_device
from ..errors import DTypeError, ShapeError
from ..tensor import Tensor, _make
from ._shape import check_shape_arg
from .registry import Op, apply


class Generator:
    """A seeded random stream, like ``torch.Generator``: ``ember.Generator().manual_seed(0)``."""

    def __init__(self, device: Any = "cpu", seed: int | None = None) -> None:
        self.device = to_device(device)
        self.manual_seed(np.random.SeedSequence().entropy if seed is None else seed)

    def manual_seed(self, seed: int) -> Generator:
        """Restart the stream from ``seed`` (any int; negative seeds are taken modulo 2**64)."""
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"manual_seed: seed must be an int, got {type(seed).__name__}")
        self._seed = int(seed)
        self.rng = np.random.Generator(np.random.PCG64(self._seed % (1 << 64) if self._seed < 0 else self._seed))
        self._device_rngs: dict[Any, Any] = {}
        return self

    def stream(self, device: Any, xp: Any) -> Any:
        """The random stream that draws for ``device``: ``self.rng`` on the CPU, else a ``Generator`` of the
        device's array namespace ``xp`` seeded with this generator's seed (made on first use; draw from it
        with the device current, inside ``_on(device)``)."""
        if device.type == "cpu":
            return self.rng
        rng = self._device_rngs.get(device)
        if rng is None:
            with _on(device):  # CuPy allocates the stream's state on the current device
                rng = self._device_rngs[device] = xp.random.default_rng(self._seed % (1 << 64))
        return rng

    def initial_seed(self) -> int:
        return self._seed

    def get_state(self) -> dict:
        """The stream's state (a JSON-compatible dict) for checkpoints."""
        return {"seed": self._seed, "bit_generator": self.rng.bit_generator.state}

    def set_state(self, state: dict) -> None:
        self._seed = state["seed"]
        self.rng.bit_generator.state = state["bit_generator"]
        self._device_rngs = {}


def _on(device: Any) -> Any:
    """A context that makes ``device`` the current GPU (nothing on the CPU)."""
    if device.type == "cpu":
        return contextlib.nullcontext()
    from ..device import get_backend
    return get_backend(device).activate()


default_generator = Generator(seed=0)


def manual_seed(seed: int) -> Generator:
    """Seed the default generator (used when no ``generator=`` is given)."""
    return default_generator.manual_seed(seed)


def seed() -> int:
    """Seed the default generator from OS entropy and return the seed."""
    s = int(np.random.SeedSequence().entropy % (2 ** 63))
    default_generator.manual_seed(s)
    return s


def get_rng_state() -> dict:
    return default_generator.get_state()


def set_rng_state(state: dict) -> None:
    default_generator.set_state(state)


def _infer(shape: tuple, dtype: _dt.DType, **_: Any) -> tuple:
    return shape, dtype


# The kernels draw from the stream of the output's device (``xp`` is its array namespace); the calls are
# the same on NumPy's and CuPy's ``Generator``.
def _uniform(xp: Any, shape: tuple, dtype: _dt.DType, low: float, high: float, generator: Generator,
             device: Any) -> Any:
    if device.type == "cpu":
        return generator.rng.uniform(low, high, size=shape).astype(dtype.np)
    with _on(device):
        return generator.stream(device, xp).uniform(low, high, size=shape).astype(dtype.np)


def _normal(xp: Any, shape: tuple, dtype: _dt.DType, mean: float, std: float, generator: Generator,
            device: Any) -> Any:
    if device.type == "cpu":
        return (generator.rng.standard_normal(size=shape) * std + mean).astype(dtype.np)
    with _on(device):
        return (generator.stream(device, xp).standard_normal(size=shape) * std + mean).astype(dtype.np)


def _randint(xp: Any, shape: tuple, dtype: _dt.DType, low: int, high: int, generator: Generator,
             device: Any) -> Any:
    if device.type == "cpu":
        return generator.rng.integers(low, high, size=shape).astype(dtype.np)
    with _on(device):
        return generator.stream(device, xp).integers(low, high, size=shape).astype(dtype.np)


UNIFORM = Op("uniform", infer=_infer, impl=_uniform)
NORMAL = Op("normal", infer=_infer, impl=_normal)
RANDINT = Op("randint", infer=_infer, impl=_randint)


def _args(name: str, size: tuple, dtype: Any, device: Any, generator: Generator | None,
          floating: bool = True) -> tuple:
    from .creation import check_integral_sizes
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = tuple(size[0])
    check_integral_sizes(name, size)
    shape = check_shape_arg(name, size)
    d = _dt.to_dtype(dtype) if dtype is not None else (_dt.get_default_dtype() if floating else _dt.int64)
    if floating and not d.is_floating_point:
        raise DTypeError(f"{name}: expected a floating dtype, got {d.name}")
    if generator is not None and not isinstance(generator, Generator):
        raise TypeError(f"{name}: generator must be an ember.Generator, got {type(generator).__name__}")
    gen = generator if generator is not None else default_generator
    return shape, d, to_device(device), gen


def _draw(op: Op, shape: tuple, d: _dt.DType, dev: Any, gen: Generator, requires_grad: bool, **params: Any) -> Tensor:
    from ..autograd import no_grad
    with no_grad():
        t = apply(op, shape=shape, dtype=d, generator=gen, device=dev, **params)
    if requires_grad:
        t.requires_grad_(True)
    return t


def rand(*size: Any, dtype: Any = None, device: Any = None, generator: Generator | None = None,
         requires_grad: bool = False) -> Tensor:
    """Uniform samples in [0, 1)."""
    shape, d, dev, gen = _args("rand", size, dtype, device, generator)
    return _draw(UNIFORM, shape, d, dev, gen, requires_grad, low=0.0, high=1.0)


def randn(*size: Any, dtype: Any = None, device: Any = None, generator: Generator | None = None,
          requires_grad: bool = False) -> Tensor:
    """Standard normal samples."""
    shape, d, dev, gen = _args("randn", size, dtype, device, generator)
    return _draw(NORMAL, shape, d, dev, gen, requires_grad, mean=0.0, std=1.0)


def uniform(size: Any, low: float = 0.0, high: float = 1.0, dtype: Any = None, device: Any = None,
            generator: Generator | None = None, requires_grad: bool = False) -> Tensor:
    """Uniform samples in [low, high)."""
    if not high >= low:
        raise ValueError(f"uniform: expected low <= high, got low={low}, high={high}")
    shape, d, dev, gen = _args("uniform", (size,), dtype, device, generator)
    return _draw(UNIFORM, shape, d, dev, gen, requires_grad, low=float(low), high=float(high))


def normal(mean: float = 0.0, std: float = 1.0, size: Any = (), dtype: Any = None, device: Any = None,
           generator: Generator | None = None, requires_grad: bool = False) -> Tensor:
    """Normal samples with the given mean and standard deviation."""
    if std < 0:
        raise ValueError(f"normal: std must be non-negative, got {std}")
    shape, d, dev, gen = _args("normal", (size,), dtype, device, generator)
    return _draw(NORMAL, shape, d, dev, gen, requires_grad, mean=float(mean), std=float(std))


def randint(low: int, high: int | None = None, size: Any = (), dtype: Any = None, device: Any = None,
            generator: Generator | None = None) -> Tensor:
    """Integers uniform in [low, high), int64 by default; ``randint(high, size)`` starts at 0, as in PyTorch."""
    if isinstance(high, (tuple, list)):
        low, high, size = 0, low, high
    if high is None:
        low, high = 0, low
    if high <= low:
        raise ValueError(f"randint: expected low < high, got low={low}, high={high}")
    shape, d, dev, gen = _args("randint", (size,), dtype, device, generator, floating=False)
    if d.is_floating_point or d.is_bool:
        raise DTypeError(f"randint: expected an integer dtype, got {d.name}")
    info = np.iinfo(d.np)
    if low < info.min or high - 1 > info.max:
        raise ValueError(f"randint: the range [{low}, {high}) does not fit in {d.name} "
                         f"([{info.min}, {info.max}])")
    return _draw(RANDINT, shape, d, dev, gen, False, low=int(low), high=int(high))


def rand_like(x: Tensor, dtype: Any = None, generator: Generator | None = None) -> Tensor:
    return rand(x.shape, dtype=dtype or x.dtype, device=x.device, generator=generator)


def randn_like(x: Tensor, dtype: Any = None, generator: Generator | None = None) -> Tensor:
    return randn(x.shape, dtype=dtype or x.dtype, device=x.device, generator=generator)


def randperm(n: int, dtype: Any = None, device: Any = None, generator: Generator | None = None) -> Tensor:
    """A random permutation of ``0..n-1``."""
    if isinstance(n, bool) or not hasattr(n, "__index__"):
        raise TypeError(f"randperm: n must be an int, got {n!r}")
    if n < 0:
        raise ShapeError(f"randperm: n must be non-negative, got {n}")
    from .creation import tensor
    if generator is not None and not isinstance(generator, Generator):
        raise TypeError(f"randperm: generator must be an ember.Generator, got {type(generator).__name__}")
    gen = generator if generator is not None else default_generator
    dev = to_device(device)
    if dev.type == "cpu":
        return tensor(gen.rng.permutation(n), dtype=dtype or _dt.int64, device=device)
    # On a GPU: the order of n uniform draws (CuPy's Generator has no permutation), made on the device.
    from ..device import get_backend
    xp = get_backend(dev).xp
    d = _dt.to_dtype(dtype) if dtype is not None else _dt.int64
    with _on(dev):
        perm = xp.argsort(gen.stream(dev, xp).random(n)) if n else xp.zeros(0, dtype=np.int64)
    return _make(perm.astype(d.np, copy=False), d, dev)
