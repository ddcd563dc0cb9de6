"""Compiled mode: the graph IR, tracing (``ember.jit``), the symbolic API, passes and compilation."""

from .compile import optimize
from .ir import Graph, Node
from .trace import CompiledFunction, jit

__all__ = ["CompiledFunction", "Graph", "Node", "jit", "optimize"]
