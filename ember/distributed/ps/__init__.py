"""A parameter server on MPI, after Petuum's Bosen and XDL: sharded dense and sparse tables, server-side
optimizers, and BSP / SSP / ASP consistency.

One MPI job holds both roles: the last ``S`` ranks are servers (``ember run -n N --servers S`` sets
``EMBER_PS_SERVERS``), the others workers. Servers own shards of named tables, run the optimizer
for them and answer pulls within the consistency bound; workers pull the parameters a step needs
and push gradients, with the communication in a background thread.

    ps = ember.distributed.ps.init(consistency="ssp", staleness=2)
    if ps.is_server:
        ps.serve()                      # returns when every worker finished
        raise SystemExit
    ps.create_sparse("emb", 16, optimizer=("adagrad", {"lr": 0.05}), min_count=2)
    ps.create_dense("w", (16, 1), init=w0, optimizer=("adam", {"lr": 1e-3}))
    for ids, y in loader:
        rows = ps.pull_sparse("emb", ids)            # only the rows of this batch
        ...
        ps.push_sparse("emb", ids, grad_rows)        # asynchronous; applied by the servers' Adagrad
        ps.push_dense("w", w_grad)
        ps.clock()
    ps.finish()

Models use ``Embedding`` (an ``nn.Embedding`` whose table lives on the servers: forward pulls the
batch's unique rows, backward pushes their gradient, ``prefetch`` pulls the next batch's rows ahead)
and ``DenseParameters`` (a module's parameters kept in one dense table). See ``consistency`` for the
exact guarantee, ``optimizers`` for the update rules and ``tables`` for row creation, frequency
filtering and eviction.
"""

from __future__ import annotations

from .client import ParameterServer, current, init
from .consistency import Consistency
from .layers import DenseParameters, Embedding
from .protocol import PSError
from .tables import TableSpec

__all__ = ["Consistency", "DenseParameters", "Embedding", "PSError", "ParameterServer", "TableSpec", "current",
           "init"]
