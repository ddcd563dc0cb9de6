"""Code generation for fused kernels: a kernel IR, a C/CUDA renderer, and a compiler with caches.

How a fusion pass builds and runs kernels::

    from ember.codegen import Kernel, Output, arg, available, build, op, reduce

    x = arg("x", "float32", (64, 512))                 # shape + strides in elements (stride 0: broadcast)
    m = reduce("amax", x, axes=-1)                     # a reduction reads as its keepdim result, broadcast
    e = op("exp", x - m)                               # any registry op with a c_expr, by name
    kern = Kernel("softmax", [x], [Output("y", e / reduce("sum", e, axes=-1)),
                                   Output("max", m, reduced=True)])
    if available():                                    # else keep the NumPy kernels
        prog = build([kern, ...])                      # one translation unit per graph; compiled once, cached
        fn = prog["softmax"]                           # fn(outputs..., inputs...): NumPy arrays
        fn(y, mx, x_array)
        run = fn.bind(y, mx, x_array)                  # planned buffers: pointers fixed, run() per step

``render(kernels, "cuda")`` gives the CUDA C of the same kernels (``compile_ptx`` checks it with nvcc).
Graph nodes map one to one: ``op(node.op.name, *args, **node.attrs)`` for pointwise nodes (``cast``
takes ``dtype=``), ``reduce(node.op.name, arg, node.attrs["axes"])`` for ``sum``/``amax``/``amin``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence

from .c import PARALLEL_MIN_WORK, Source, render
from .cc import KernelFunction, Library, available, cache_dir, compile_ptx, debug_level, find_compiler, load
from .kernel import CodegenError, Input, Kernel, Output, Value, arg, arg_like, cast, const, op, reduce, where

__all__ = ["PARALLEL_MIN_WORK", "CodegenError", "Input", "Kernel", "KernelFunction", "Library", "Output", "Program",
           "Source", "Value", "arg", "arg_like", "available", "build", "cache_dir", "cast", "compile_ptx", "const",
           "find_compiler", "load", "op", "reduce", "render", "where"]


class Program:
    """The compiled kernels of one translation unit: ``program[name]`` is a ``KernelFunction``."""

    def __init__(self, source: Source, library: Library) -> None:
        self.source, self.library = source, library
        self.functions = {k.name: KernelFunction(k, library, source.symbols[k.name],
                                                 source.tiles[source.symbols[k.name]]) for k in source.kernels}

    def __getitem__(self, name: str) -> KernelFunction:
        try:
            return self.functions[name]
        except KeyError:
            raise KeyError(f"no kernel named {name!r}; this program has {', '.join(self.functions)}") from None

    def __iter__(self) -> Iterator[KernelFunction]:
        return iter(self.functions.values())

    def __repr__(self) -> str:
        return f"Program({', '.join(self.functions)}; {self.library!r})"


def build(kernels: Sequence[Kernel], label: str | None = None) -> Program:
    """Render ``kernels`` as one C translation unit, compile it (through the memory and disk caches) and
    return their callables. Raises CodegenError when there is no C compiler (check ``available()``)."""
    kernels = list(kernels)
    source = render(kernels, "c")
    label = label or ",".join(k.name for k in kernels[:4]) + ("..." if len(kernels) > 4 else "")
    if debug_level() >= 2:
        for sym, text in source.functions.items():
            print(f"[ember.codegen] --- {sym} ---\n{text}", file=sys.stderr)
    return Program(source, load(source.text, label))
