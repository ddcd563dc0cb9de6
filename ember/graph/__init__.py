"""Compiled mode: the graph IR, tracing (``ember.jit``), the symbolic API, passes and compilation."""

from .compile import optimize
from .ir import Graph, Node
from .symbolic import SymbolicFunction, building, compile, grad, placeholder, variable
from .trace import CompiledFunction, jit

__all__ = ["CompiledFunction", "Graph", "Node", "SymbolicFunction", "building", "compile", "grad", "jit", "optimize",
           "placeholder", "variable"]
