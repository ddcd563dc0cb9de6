"""Distributed training on MPI: communicators and collectives over ember tensors, data parallelism
(with sufficient-factor broadcasting), differentiable send/recv, pipeline and hybrid parallelism, the
parameter server (``ember.distributed.ps``), and the ``ember run`` launcher.

    import ember.distributed as dist
    comm = dist.init()                      # the world; a failing rank aborts the whole job
    dist.get_rank(), dist.get_world_size(), dist.get_local_rank()
    comm.allreduce_(t, op="mean")           # collectives, point-to-point, sub-communicators
    model = dist.DistributedDataParallel(model)

Launch with ``ember run -n 4 script.py`` (mpiexec underneath). mpi4py is imported on first use, so
importing this package works without it (``is_initialized()`` is then False).
"""

from __future__ import annotations

from . import ps
from .comm import (
                   Communicator,
                   DistributedError,
                   Handle,
                   get_local_rank,
                   get_rank,
                   get_world_size,
                   init,
                   is_initialized,
                   world,
)
from .data_parallel import DistributedDataParallel
from .hybrid import HybridParallel, ShardedLinear
from .p2p import recv, send, wait_sends
from .pipeline import Pipeline
from .sfb import LayerPlan, SFBDataParallel, plan

__all__ = ["Communicator", "DistributedDataParallel", "DistributedError", "Handle", "HybridParallel", "LayerPlan",
           "Pipeline", "SFBDataParallel", "ShardedLinear", "get_local_rank", "get_rank", "get_world_size", "init",
           "is_initialized", "plan", "ps", "recv", "send", "wait_sends", "world"]
