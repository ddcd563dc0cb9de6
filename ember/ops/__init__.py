"""Ember's operations: the primitive registry and the public functions over it."""

from . import (  # noqa: F401
    composite,
    creation,
    indexing,
    linalg,
    movement,
    nn_ops,
    pointwise,
    random,
    reduce,
    registry,
    sparse_ops,
)
from .registry import REGISTRY, Op, apply  # noqa: F401
