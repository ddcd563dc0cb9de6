"""Consistency models of the parameter server: BSP, SSP with a staleness bound, ASP.

Every worker has a clock: the number of times it called ``clock()`` (it starts at 0). The updates a
worker pushes while its clock is ``c`` belong to clock ``c``. Each server keeps a vector clock, the
last clock value every worker announced; a worker announces a tick after sending the pushes of the
clock it closes, on the same ordered channel, so when a server has seen worker ``w`` at clock ``c``
it has applied all of ``w``'s updates from clocks ``< c``.

The guarantee (Ho et al., "More effective distributed ML via a stale synchronous parallel parameter
server", NIPS 2013): with staleness ``s``, a read made at clock ``c`` includes every update from clocks
``< c - s`` of every worker. The server answers a read only once ``min_w clock[w] >= c - s``;
until then the read waits (other requests go on being served). A read may see more (fresher) updates
than that; never fewer.

* ``bsp`` is ``s = 0``: a read at clock ``c`` sees all updates of all workers' earlier clocks, so no
  worker gets more than one clock ahead of the slowest one's reads;
* ``ssp`` with ``staleness=s``: a fast worker may run up to ``s`` clocks ahead;
* ``asp``: reads never wait.

A worker that finished (sent ``done``) counts as infinitely far ahead: it pushes nothing more.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["MODELS", "Consistency", "DeferredReads", "VectorClock"]

MODELS = ("bsp", "ssp", "asp")


@dataclass(frozen=True)
class Consistency:
    """A consistency model: ``model`` in ``bsp``/``ssp``/``asp`` and its staleness bound (None for ASP)."""

    model: str
    staleness: int | None

    @classmethod
    def parse(cls, model: Any = "bsp", staleness: Any = None, where: str = "consistency") -> Consistency:
        """Check and build: ``("bsp")``, ``("ssp", s)`` with an int ``s >= 0``, ``("asp")``."""
        if not isinstance(model, str) or model.lower() not in MODELS:
            raise ValueError(f"{where}: consistency must be one of {', '.join(MODELS)}, got {model!r}")
        model = model.lower()
        if model == "ssp":
            if staleness is None:
                raise ValueError(f"{where}: consistency 'ssp' needs a staleness bound (an int >= 0), got None")
            if isinstance(staleness, bool) or not isinstance(staleness, int) or staleness < 0:
                raise ValueError(f"{where}: staleness must be an int >= 0, got {staleness!r}")
            return cls("ssp", int(staleness))
        if staleness is not None and not (model == "bsp" and staleness == 0):
            raise ValueError(f"{where}: staleness={staleness!r} only applies to consistency 'ssp' (BSP is "
                             f"staleness 0, ASP has no bound), got consistency {model!r}")
        return cls(model, 0 if model == "bsp" else None)

    def required(self, clock: int) -> int | None:
        """The least global clock (the minimum over workers) that a read at worker clock ``clock`` must wait
        for; None when it never waits (ASP, or a bound reaching before the first clock)."""
        if self.staleness is None:
            return None
        need = int(clock) - self.staleness
        return need if need > 0 else None

    def __str__(self) -> str:
        return f"ssp(staleness={self.staleness})" if self.model == "ssp" else self.model


class VectorClock:
    """A server's view of every worker's clock; ``min`` is the global clock that gates reads."""

    def __init__(self, num_workers: int) -> None:
        if num_workers < 1:
            raise ValueError(f"VectorClock: need at least one worker, got {num_workers}")
        self.clocks = [0] * num_workers
        self.done = [False] * num_workers

    def advance(self, worker: int, clock: int) -> bool:
        """Record that ``worker`` reached ``clock``; True when the global clock moved."""
        if not 0 <= worker < len(self.clocks):
            raise ValueError(f"VectorClock: worker {worker} out of range for {len(self.clocks)} workers")
        if clock < self.clocks[worker]:
            raise ValueError(f"VectorClock: worker {worker}'s clock went back from {self.clocks[worker]} to {clock}")
        before = self.min
        self.clocks[worker] = int(clock)
        return self.min != before

    def finish(self, worker: int) -> bool:
        """Mark ``worker`` as done (it no longer holds anybody back); True when the global clock moved."""
        before = self.min
        self.done[worker] = True
        return self.min != before

    @property
    def all_done(self) -> bool:
        return all(self.done)

    @property
    def min(self) -> float:
        """The slowest active worker's clock (``inf`` once every worker is done)."""
        active = [c for c, d in zip(self.clocks, self.done) if not d]
        return min(active) if active else math.inf

    @property
    def now(self) -> int:
        """The global clock as an int, for "last touched" stamps (the highest clock once all are done)."""
        m = self.min
        return int(m) if m != math.inf else max(self.clocks)

    def allows(self, required: int | None) -> bool:
        """Whether a read that needs global clock ``required`` can be answered now."""
        return required is None or self.min >= required


class DeferredReads:
    """Reads that must wait for the global clock, released in arrival order once it allows them."""

    def __init__(self, clock: VectorClock) -> None:
        self.clock = clock
        self._waiting: list[tuple[int, Any]] = []

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, required: int, item: Any) -> None:
        self._waiting.append((required, item))

    def release(self) -> Iterator[Any]:
        """The waiting reads the current global clock allows (removed from the queue), oldest first."""
        if not self._waiting:
            return iter(())
        ready = [item for need, item in self._waiting if self.clock.allows(need)]
        self._waiting = [(need, item) for need, item in self._waiting if not self.clock.allows(need)]
        return iter(ready)
