"""Ember's exception hierarchy.

Every error a user can cause by passing bad input is an ``EmberError``; the
subclasses also derive from the matching builtin so ``except ValueError`` keeps
working for code written against NumPy or PyTorch.
"""

from __future__ import annotations


class EmberError(Exception):
    """Base class of every error Ember raises on purpose."""


class ShapeError(EmberError, ValueError):
    """Shapes do not fit the operation (broadcasting, matmul, reshape, ...)."""


class DTypeError(EmberError, TypeError):
    """A dtype is unsupported by, or incompatible with, the operation."""


class DeviceError(EmberError, RuntimeError):
    """Tensors live on different or unavailable devices."""


class AutogradError(EmberError, RuntimeError):
    """Misuse of automatic differentiation (double backward, in-place on saved tensors, ...)."""


class TraceError(EmberError, RuntimeError):
    """Something that cannot be traced was done inside a traced function."""


class EmberIndexError(EmberError, IndexError):
    """An index is out of range or of an unsupported kind."""
