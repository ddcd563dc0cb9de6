"""Pipeline parallelism: one stage of a sequential model per rank, microbatches flowing through them.

    stages = [nn.Sequential(...), nn.Sequential(...)]      # build all (same seed), or pass this rank's only
    pipe = dist.Pipeline(stages, microbatches=8, schedule="1f1b")
    opt = ember.optim.SGD(pipe.parameters(), lr=0.1)       # this rank's stage parameters
    opt.zero_grad()
    loss = pipe.step(x, y, F.cross_entropy)                # x read on the first stage, y on the last
    opt.step()

``step`` splits the batch along dim 0 into ``microbatches`` nearly equal pieces. Stage ``s`` receives
each microbatch's activation from stage ``s - 1`` (``ember.distributed.recv``), runs its module and sends
the result to stage ``s + 1`` (``send``); the last stage applies ``loss_fn``. Backward runs through the
same differentiable send/recv ops, so gradients flow back stage by stage and accumulate into ``.grad``
over the microbatches (``step`` does not zero them, as ``loss.backward()`` does not).

Schedules (both give the same gradients; they differ in how many microbatches each stage keeps alive):

* ``"gpipe"``: every stage runs all forwards, then all backwards. Stage memory: ``microbatches`` graphs.
* ``"1f1b"``: stage ``s`` of ``S`` runs ``S - s - 1`` warm-up forwards, then alternates one forward and one
  backward, then drains the remaining backwards. Stage memory: at most ``S - s`` graphs.

With ``loss_reduction="mean"`` (the default) ``loss_fn`` must return the mean over its microbatch and each
microbatch's loss is weighted by its share of the batch, so the gradients and the returned loss equal
those of the unsplit model on the whole batch; with ``"sum"`` the microbatch losses are added as they are.
Layers whose result depends on the batch composition (batch norm) see microbatches, not the batch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..autograd import no_grad
from ..errors import ShapeError
from ..nn.containers import ModuleList
from ..nn.module import Module
from ..ops.movement import cat, split
from ..tensor import Tensor
from .comm import Communicator, world
from .p2p import recv, send, wait_sends

__all__ = ["Pipeline"]

_SCHEDULES = ("gpipe", "1f1b")


def _sizes(n: int, m: int) -> list[int]:
    """``m`` nearly equal microbatch sizes summing to ``n`` (the first ``n % m`` one larger)."""
    return [n // m + (1 if k < n % m else 0) for k in range(m)]


class Pipeline(Module):
    """This rank's stage of a pipeline over the ranks of ``comm`` (the world by default).

    ``stages``: a list, tuple or ``ModuleList`` with one Module per rank (rank ``r`` keeps ``stages[r]``), or
    this rank's own stage Module. ``microbatches``: how many pieces ``step`` splits a batch into.
    ``schedule``: ``"1f1b"`` or ``"gpipe"``. The stage is the only submodule, so ``parameters()`` and
    ``state_dict()`` are its own.
    Construction is collective (it duplicates ``comm`` so pipeline messages never mix with others).
    """

    def __init__(self, stages: Module | Sequence[Module], microbatches: int, schedule: str = "1f1b",
                 comm: Communicator | None = None, loss_reduction: str = "mean") -> None:
        super().__init__()
        if comm is None:
            comm = world()
        if not isinstance(comm, Communicator):
            raise TypeError(f"Pipeline: comm must be an ember.distributed.Communicator or None, got "
                            f"{type(comm).__name__}")
        if isinstance(stages, Module) and not isinstance(stages, ModuleList):
            stage = stages
        elif isinstance(stages, (list, tuple, ModuleList)):
            if len(stages) != comm.size:
                raise ValueError(f"Pipeline: got {len(stages)} stages for {comm.size} ranks; pass one stage per "
                                 "rank, or only this rank's stage Module")
            stage = stages[comm.rank]
        else:
            raise TypeError(f"Pipeline: stages must be a Module (this rank's stage) or a list of Modules (one per "
                            f"rank), got {type(stages).__name__}")
        if not isinstance(stage, Module):
            raise TypeError(f"Pipeline: stage {comm.rank} is a {type(stage).__name__}, expected an ember.nn.Module")
        if isinstance(microbatches, bool) or not isinstance(microbatches, (int, np.integer)) or microbatches < 1:
            raise ValueError(f"Pipeline: microbatches must be an int >= 1, got {microbatches!r}")
        if schedule not in _SCHEDULES:
            raise ValueError(f"Pipeline: unknown schedule {schedule!r}; expected one of {', '.join(_SCHEDULES)}")
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"Pipeline: loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")
        self.stage = stage
        self.microbatches = int(microbatches)
        self.schedule = schedule
        self.loss_reduction = loss_reduction
        self.comm = Communicator(comm.mpi.Dup(), check=comm.check)
        self.rank, self.num_stages = self.comm.rank, self.comm.size
        self.max_live = 0  # after a step: the most microbatch graphs this stage held at once

    @property
    def is_first(self) -> bool:
        return self.rank == 0

    @property
    def is_last(self) -> bool:
        return self.rank == self.num_stages - 1

    def extra_repr(self) -> str:
        return f"stage={self.rank}/{self.num_stages}, microbatches={self.microbatches}, schedule={self.schedule!r}"

    # ------------------------------------------------------------------ helpers
    def _split(self, name: str, what: str, t: Any) -> tuple[Tensor, ...]:
        if not isinstance(t, Tensor):
            raise TypeError(f"Pipeline.{name}: stage {self.rank} needs {what} as a Tensor, got {type(t).__name__}")
        if t.ndim == 0 or t.shape[0] < self.microbatches:
            raise ShapeError(f"Pipeline.{name}: {what} of shape {t.shape} cannot be split into {self.microbatches} "
                             "microbatches along dim 0")
        return split(t, _sizes(t.shape[0], self.microbatches), 0)

    def _stage_out(self, name: str, x: Tensor) -> Tensor:
        y = self.stage(x)
        if not isinstance(y, Tensor):
            raise TypeError(f"Pipeline.{name}: stage {self.rank} returned {type(y).__name__}, expected a Tensor")
        return y

    # ------------------------------------------------------------------ training
    def step(self, inputs: Tensor | None = None, targets: Tensor | None = None,
             loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None) -> float:
        """Run forward and backward of one batch through the pipeline with the configured schedule.

        ``inputs`` is read on the first stage, ``targets`` and ``loss_fn(output, target) -> 0-d Tensor`` on
        the last (other ranks may pass None). Gradients accumulate into this stage's parameters' ``.grad``.
        Returns the batch loss (the weighted sum of the microbatch losses) on every rank.
        """
        m, s = self.microbatches, self.rank
        xs = self._split("step", "inputs", inputs) if self.is_first else None
        ts: tuple[Tensor, ...] = ()
        if self.is_last:
            if not callable(loss_fn):
                raise TypeError(f"Pipeline.step: the last stage (rank {s}) needs a callable loss_fn, got "
                                f"{type(loss_fn).__name__}")
            ts = self._split("step", "targets", targets)
        n = sum(t.shape[0] for t in ts)
        total = 0.0

        def forward(k: int) -> Tensor:
            nonlocal total
            x = xs[k] if xs is not None else recv(s - 1, comm=self.comm)
            y = self._stage_out("step", x)
            if not self.is_last:
                return send(y, s + 1, comm=self.comm)
            if y.ndim == 0 or y.shape[0] != ts[k].shape[0]:
                raise ShapeError(f"Pipeline.step: microbatch {k} reached the last stage with shape {y.shape} but its "
                                 f"targets have shape {ts[k].shape}; do inputs and targets have the same batch size?")
            loss = loss_fn(y, ts[k])
            if not isinstance(loss, Tensor) or loss.ndim != 0:
                raise ShapeError(f"Pipeline.step: loss_fn must return a 0-d Tensor, got "
                                 f"{getattr(loss, 'shape', type(loss).__name__)}")
            if self.loss_reduction == "mean":
                loss = loss * (ts[k].shape[0] / n)
            total += float(loss.detach().item())
            return loss

        def backward(r: Tensor) -> None:
            if r.requires_grad:  # a loss, or a send's delegate (blocks until the next stage sends the gradient)
                r.backward()

        live: deque[Tensor] = deque()
        self.max_live = 0
        warmup = m if self.schedule == "gpipe" else min(self.num_stages - s - 1, m)
        for k in range(m):
            live.append(forward(k))
            self.max_live = max(self.max_live, len(live))
            if k >= warmup:
                backward(live.popleft())
        while live:
            backward(live.popleft())
        wait_sends()
        out = np.array([total], dtype=np.float64)
        self.comm.mpi.Bcast(out, root=self.num_stages - 1)
        return float(out[0])

    # ------------------------------------------------------------------ inference
    def forward(self, inputs: Tensor | None = None) -> Tensor | None:
        """Run the batch through the pipeline without gradients (microbatch by microbatch). The first stage
        reads ``inputs``; the last stage returns the outputs concatenated along dim 0, other stages None."""
        with no_grad():
            xs = self._split("forward", "inputs", inputs) if self.is_first else None
            outs = []
            for k in range(self.microbatches):
                x = xs[k] if xs is not None else recv(self.rank - 1, comm=self.comm)
                y = self._stage_out("forward", x)
                if self.is_last:
                    outs.append(y)
                else:
                    send(y, self.rank + 1, comm=self.comm)
            wait_sends()
        return cat(outs, 0) if self.is_last else None
