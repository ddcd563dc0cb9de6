"""Pull/push throughput of the parameter server, in rows per second.

    mpiexec -n 4 python -m ember.distributed.ps.bench                 # 2 workers + 2 servers
    ember run -n 4 --servers 2 ember/distributed/ps/bench.py --ids 50000 --dim 16

Every worker repeatedly pulls (and pushes gradients for) ``--ids`` distinct random int64 ids of a
sparse table of width ``--dim`` (Adagrad on the servers), first one request at a time (the round
trip included), then with ``--depth`` requests in flight. Rows are created by the first pushes; the
timed rounds run on existing rows. Worker 0 prints rows/s per worker and summed over workers.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

try:
    from . import init
except ImportError:  # run as a script (ember run ... bench.py)
    from ember.distributed.ps import init


def _rate(fn: Callable[[], None], rows: int, seconds: float) -> float:
    fn()  # warm up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n * rows / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ember.distributed.ps.bench", description=__doc__.split("\n")[0])
    p.add_argument("--ids", type=int, default=50_000, help="distinct ids per request")
    p.add_argument("--dim", type=int, default=16, help="row width")
    p.add_argument("--depth", type=int, default=4, help="requests in flight in the pipelined rounds")
    p.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    p.add_argument("--servers", type=int, default=None, help="default: EMBER_PS_SERVERS")
    args = p.parse_args(argv)
    ps = init(args.servers, consistency="asp")
    if ps.is_server:
        ps.serve()
        return 0
    ps.create_sparse("bench", args.dim, optimizer="adagrad")
    rng = np.random.default_rng(ps.worker_index)
    batches = [np.unique(rng.integers(-2 ** 62, 2 ** 62, args.ids)) for _ in range(args.depth)]
    grads = [np.full((b.size, args.dim), 0.01, np.float32) for b in batches]
    for b, g in zip(batches, grads):  # create the rows
        ps.push_sparse("bench", b, g)
    ps.barrier()
    rows = batches[0].size

    def pull_one() -> None:
        ps.pull_sparse_async("bench", batches[0]).result()

    def pull_many() -> None:
        for f in [ps.pull_sparse_async("bench", b) for b in batches]:
            f.result()

    def push_one() -> None:
        ps.push_sparse("bench", batches[0], grads[0]).result()

    def push_many() -> None:
        for b, g in zip(batches, grads):
            ps.push_sparse("bench", b, g)
        ps.flush()

    results = {}
    for name, fn, n in (("pull, 1 in flight", pull_one, rows), (f"pull, {args.depth} in flight", pull_many,
                                                                  rows * args.depth),
                        ("push, 1 in flight", push_one, rows), (f"push, {args.depth} in flight", push_many,
                                                                 rows * args.depth)):
        ps.barrier()
        results[name] = _rate(fn, n, args.seconds)
    ps.barrier()
    totals = ps.worker_comm.allreduce(np.array(list(results.values())))
    if ps.worker_index == 0:
        print(f"ps bench: {ps.num_workers} workers + {ps.num_servers} servers, {rows} distinct ids x dim {args.dim} "
              f"(float32, Adagrad) per request")
        for (name, r), total in zip(results.items(), totals):
            print(f"  {name:<20s} {r / 1e6:6.2f} M rows/s per worker, {total / 1e6:6.2f} M rows/s in all "
                  f"({total * args.dim * 4 / 2 ** 20:7.1f} MiB/s)")
    ps.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
