"""``Dropout``: zeroes elements at random while training, the identity in evaluation mode."""

from __future__ import annotations

from typing import Any

from ..tensor import Tensor
from .functional.linear import dropout
from .module import Module

__all__ = ["Dropout"]


class Dropout(Module):
    """While training, zero each element with probability ``p`` and scale the others by ``1 / (1 - p)``;
    in eval mode return the input unchanged. Draws from Ember's default generator, so
    ``ember.manual_seed`` makes the masks reproducible."""

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: probability p must be between 0 and 1, got {p!r}")
        self.p = p
        self.inplace = inplace

    def forward(self, input: Tensor) -> Any:
        if not isinstance(input, Tensor):
            raise TypeError(f"Dropout: expected a Tensor input, got {type(input).__name__}")
        return dropout(input, self.p, self.training, self.inplace)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"
