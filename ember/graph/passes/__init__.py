"""Graph passes, one per module, applied in the order of ``PIPELINE``.

Each pass is ``run(graph, ctx) -> (graph, notes)``: it returns a new (or the same) graph and a list
of short lines saying what it changed; ``ember.graph.compile`` records nodes before/after and time
for ``explain()``. ``ctx`` is a ``PassContext`` (the memory budget, and the memory plan once made).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import algebraic, constant_fold, cse, dce, fuse, layout, memory_plan, remat


@dataclass
class PassContext:
    memory_budget: int | None = None
    fuse: bool = True
    memory: Any = None
    notes: dict[str, Any] = field(default_factory=dict)


PIPELINE = [dce, cse, constant_fold, algebraic, layout, cse, dce, remat, fuse, memory_plan]

__all__ = ["PIPELINE", "PassContext"]
