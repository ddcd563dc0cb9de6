"""Linear layers and reshaping layers: ``Identity``, ``Linear``, ``Bilinear``, ``Flatten``, ``Unflatten``."""

from __future__ import annotations

import math
from typing import Any

from ..errors import ShapeError
from ..ops.creation import empty
from ..ops.movement import flatten, reshape
from ..tensor import Tensor
from . import init
from .functional.linear import bilinear, linear
from .module import Module
from .parameter import Parameter

__all__ = ["Bilinear", "Flatten", "Identity", "Linear", "Unflatten"]


def _check_input(layer: str, x: Any) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{layer}: expected a Tensor input, got {type(x).__name__}")


def _positive(layer: str, **sizes: Any) -> None:
    for what, n in sizes.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{layer}: {what} must be a non-negative int, got {n!r}")


class Identity(Module):
    """Returns its input unchanged; accepts (and ignores) any constructor arguments, like PyTorch's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def forward(self, input: Any) -> Any:
        return input


class Linear(Module):
    """``y = x @ weight.T + bias`` on the last dimension: (*, in_features) -> (*, out_features).

    ``weight`` is (out_features, in_features) and ``bias`` (out_features,), both initialized from
    U(-1/sqrt(in_features), 1/sqrt(in_features)) as in PyTorch.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device: Any = None,
                 dtype: Any = None) -> None:
        super().__init__()
        _positive("Linear", in_features=in_features, out_features=out_features)
        self.in_features = in_features
        self.out_features = out_features
        self.weight = Parameter(empty(out_features, in_features, dtype=dtype, device=device))
        if bias:
            self.bias = Parameter(empty(out_features, dtype=dtype, device=device))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default: kaiming_uniform_(a=sqrt(5)) for the weight, which is U(-1/sqrt(fan_in),
        1/sqrt(fan_in)), and the same bound for the bias."""
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input: Tensor) -> Tensor:
        _check_input("Linear", input)
        if input.ndim == 0 or input.shape[-1] != self.in_features:
            raise ShapeError(f"Linear: expected input of shape (*, {self.in_features}) (in_features="
                             f"{self.in_features}), got {input.shape}")
        return linear(input, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Bilinear(Module):
    """``y[..., k] = x1 @ weight[k] @ x2 + bias[k]``: (*, in1_features), (*, in2_features) -> (*, out_features).

    Parameters are initialized from U(-1/sqrt(in1_features), 1/sqrt(in1_features)) as in PyTorch.
    """

    def __init__(self, in1_features: int, in2_features: int, out_features: int, bias: bool = True,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        _positive("Bilinear", in1_features=in1_features, in2_features=in2_features, out_features=out_features)
        self.in1_features, self.in2_features, self.out_features = in1_features, in2_features, out_features
        self.weight = Parameter(empty(out_features, in1_features, in2_features, dtype=dtype, device=device))
        if bias:
            self.bias = Parameter(empty(out_features, dtype=dtype, device=device))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1 / math.sqrt(self.in1_features) if self.in1_features > 0 else 0.0
        init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input1: Tensor, input2: Tensor) -> Tensor:
        _check_input("Bilinear", input1)
        _check_input("Bilinear", input2)
        if (input1.ndim == 0 or input1.shape[-1] != self.in1_features or input2.ndim == 0
                or input2.shape[-1] != self.in2_features or input1.shape[:-1] != input2.shape[:-1]):
            raise ShapeError(f"Bilinear: expected inputs of shapes (*, {self.in1_features}) and "
                             f"(*, {self.in2_features}) with equal leading dimensions, got {input1.shape} and "
                             f"{input2.shape}")
        return bilinear(input1, input2, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in1_features={self.in1_features}, in2_features={self.in2_features}, "
                f"out_features={self.out_features}, bias={self.bias is not None}")


class Flatten(Module):
    """Flatten dimensions ``start_dim`` to ``end_dim`` into one (by default all but the batch dimension)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim = start_dim
        self.end_dim = end_dim

    def forward(self, input: Tensor) -> Tensor:
        _check_input("Flatten", input)
        n = input.ndim
        lo = self.start_dim + n if self.start_dim < 0 else self.start_dim
        hi = self.end_dim + n if self.end_dim < 0 else self.end_dim
        if n and not (0 <= lo < n and 0 <= hi < n and lo <= hi):
            raise ShapeError(f"Flatten: start_dim={self.start_dim}, end_dim={self.end_dim} do not fit an input of "
                             f"shape {input.shape}")
        return flatten(input, self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Unflatten(Module):
    """Split dimension ``dim`` into ``unflattened_size`` (one entry may be -1)."""

    def __init__(self, dim: int, unflattened_size: Any) -> None:
        super().__init__()
        if isinstance(unflattened_size, int) or not all(isinstance(s, int) for s in unflattened_size):
            raise TypeError(f"Unflatten: unflattened_size must be a tuple of ints, got {unflattened_size!r}")
        self.dim = dim
        self.unflattened_size = tuple(unflattened_size)

    def forward(self, input: Tensor) -> Tensor:
        _check_input("Unflatten", input)
        n = input.ndim
        d = self.dim + n if self.dim < 0 else self.dim
        if not 0 <= d < n:
            raise ShapeError(f"Unflatten: dim {self.dim} is out of range for an input of shape {input.shape}")
        sizes = self.unflattened_size
        known = math.prod(s for s in sizes if s != -1)
        size = input.shape[d]
        if sizes.count(-1) > 1 or (-1 not in sizes and known != size) or (-1 in sizes and (known == 0 or size % known)):
            raise ShapeError(f"Unflatten: cannot split dimension {self.dim} of size {size} (input shape "
                             f"{input.shape}) into {sizes}")
        return reshape(input, input.shape[:d] + sizes + input.shape[d + 1:])

    def extra_repr(self) -> str:
        return f"dim={self.dim}, unflattened_size={self.unflattened_size}"
