"""``Parameter``: a tensor that a ``Module`` registers as learnable."""

from __future__ import annotations

from typing import Any

from ..errors import DTypeError
from ..tensor import Tensor


class Parameter(Tensor):
    """A leaf tensor that requires grad by default and is registered when assigned to a ``Module``.

    ``Parameter(t)`` shares ``t``'s storage (no copy), like ``torch.nn.Parameter``.
    """

    __slots__ = ()

    def __init__(self, data: Any = None, requires_grad: bool = True) -> None:
        if data is None:
            from ..ops.creation import empty
            data = empty(0)
        elif not isinstance(data, Tensor):
            from ..ops.creation import tensor
            data = tensor(data)
        if requires_grad and not data.dtype.is_floating_point:
            raise DTypeError(f"Parameter: only floating tensors can require gradients, got {data.dtype.name}; "
                             "pass requires_grad=False for an integer parameter")
        self.data = data.data
        self.dtype = data.dtype
        self.device = data.device
        self.requires_grad = requires_grad
        self.grad_fn = None
        self.grad = None
        self._version = data._version
        self._base = None
        self._hooks = None
        self._post_hooks = None
        self._tangent = None

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()

    def __deepcopy__(self, memo: dict) -> Parameter:
        if id(self) in memo:
            return memo[id(self)]
        from ..ops.creation import tensor
        p = Parameter(tensor(self.data.copy(), dtype=self.dtype, device=self.device), self.requires_grad)
        memo[id(self)] = p
        return p

    def __reduce_ex__(self, protocol: Any) -> Any:
        from ..ops.creation import tensor
        return (Parameter, (tensor(self.data.copy(), dtype=self.dtype), self.requires_grad))
