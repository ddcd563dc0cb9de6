"""The server side: ``ServerState`` (tables, vector clock, deferred reads, checkpoints; no MPI) and
``serve``, the MPI loop that feeds it requests and sends its replies.

A server is single-threaded: it handles requests one at a time in arrival order, so a push is
applied (and acknowledged) before anything the same worker sent after it. Reads that the
consistency bound does not allow yet are parked and answered as soon as the clock ticks that
allow them arrive. The loop polls with matched probes and sleeps a little when idle (up to
``_MAX_IDLE_SLEEP``) instead of spinning in a blocking receive, so servers sharing cores with
workers leave them the CPU.

Checkpoints: server ``k`` of ``S`` writes ``ps-shard-{k}-of-{S}.safetensors`` (``ember.io.save_tree``,
atomic) in the checkpoint directory. Loading reads every shard file of the checkpoint and keeps the
rows this server owns under the current number of servers, so a checkpoint can be restored on a
different number of servers.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ... import io as _io
from .consistency import DeferredReads, VectorClock
from .protocol import (
    CLOCK,
    CLOCKS,
    CREATE,
    DONE,
    LOAD,
    OP_NAMES,
    PULL_DENSE,
    PULL_SPARSE,
    PUSH_DENSE,
    PUSH_SPARSE,
    SAVE,
    STATS,
    TAG_REPLY,
    TAG_REQUEST,
    PSError,
    dense_ranges,
    shard_of,
)
from .tables import DenseShard, SparseShard, TableSpec

__all__ = ["ServerState", "serve", "shard_file"]

_MAX_IDLE_SLEEP = 3e-4  # about 5% of a core while idle; the worst added latency
SHARD_FORMAT = "ember-ps-shard-1"


def shard_file(directory: str, server: int, num_servers: int) -> str:
    """The path of server ``server``'s shard in a checkpoint directory."""
    return os.path.join(directory, f"ps-shard-{server:05d}-of-{num_servers:05d}.safetensors")


@dataclass
class Reply:
    """A reply to send: to ``worker``, answering ``request_id``."""

    worker: int
    request_id: int
    ok: bool
    value: Any


class ServerState:
    """Everything server ``index`` of ``num_servers`` holds, and how it answers each request."""

    def __init__(self, index: int, num_servers: int, num_workers: int) -> None:
        self.index, self.num_servers, self.num_workers = index, num_servers, num_workers
        self.tables: dict[str, SparseShard | DenseShard] = {}
        self.clock = VectorClock(num_workers)
        self.deferred = DeferredReads(self.clock)
        self.requests = 0

    # ------------------------------------------------------------------ dispatch
    def handle(self, worker: int, message: Any) -> list[Reply]:
        """Handle one request from ``worker``; the replies to send now (possibly to other workers too,
        whose parked reads this request released)."""
        try:
            op, rid, args = message
        except (TypeError, ValueError):
            raise PSError(f"parameter server {self.index}: malformed request from worker {worker}: "
                          f"{str(message)[:100]}") from None
        self.requests += 1
        if op == CLOCK:
            moved = self.clock.advance(worker, int(args))
            return self._released() if moved else []
        try:
            if op in (PULL_SPARSE, PULL_DENSE):
                required = args[-1]
                if not self.clock.allows(required):
                    self._table(op, args[0])  # fail now for an unknown table rather than later
                    self.deferred.add(required, (worker, rid, op, args))
                    return []
                return [Reply(worker, rid, True, self._read(op, args))]
            if op == DONE:
                moved = self.clock.finish(worker)
                return [Reply(worker, rid, True, None), *(self._released() if moved else [])]
            return [Reply(worker, rid, True, self._other(op, args))]
        except Exception as e:
            return [Reply(worker, rid, False, (type(e).__name__, f"{OP_NAMES.get(op, op)}: {e}"))]

    def _released(self) -> list[Reply]:
        out = []
        for worker, rid, op, args in self.deferred.release():
            try:
                out.append(Reply(worker, rid, True, self._read(op, args)))
            except Exception as e:
                out.append(Reply(worker, rid, False, (type(e).__name__, f"{OP_NAMES[op]}: {e}")))
        self._evict()
        return out

    def _evict(self) -> None:
        now = self.clock.now
        for t in self.tables.values():
            if isinstance(t, SparseShard):
                t.evict(now)

    def _table(self, op: int, name: str, kind: type | None = None) -> Any:
        t = self.tables.get(name)
        if t is None:
            raise PSError(f"no table named {name!r} on this server (tables: {sorted(self.tables) or 'none'}); "
                          "create it first")
        want = kind or (SparseShard if op in (PULL_SPARSE, PUSH_SPARSE) else DenseShard)
        if not isinstance(t, want):
            raise PSError(f"table {name!r} is a {t.spec.kind} table; {OP_NAMES[op]} needs a "
                          f"{'sparse' if want is SparseShard else 'dense'} one")
        return t

    def _read(self, op: int, args: tuple) -> Any:
        t = self._table(op, args[0])
        if op == PULL_SPARSE:
            return t.pull(args[1], self.clock.now)
        return t.pull()

    def _other(self, op: int, args: tuple) -> Any:
        if op == PUSH_SPARSE:
            self._table(op, args[0]).push(args[1], args[2], self.clock.now)
            return None
        if op == PUSH_DENSE:
            self._table(op, args[0]).push(args[1])
            return None
        if op == CREATE:
            return self.create(TableSpec.from_dict(args[0]), args[1])
        if op == STATS:
            return {"server": self.index, **self._table(op, args[0], object).stats()}
        if op == CLOCKS:
            return {"clocks": list(self.clock.clocks), "done": list(self.clock.done), "waiting": len(self.deferred)}
        if op == SAVE:
            return self.save(args[0])
        if op == LOAD:
            return self.load(args[0], args[1])
        raise PSError(f"unknown operation {op!r}")

    # ------------------------------------------------------------------ tables
    def create(self, spec: TableSpec, values: np.ndarray | None) -> bool:
        """Create a table (True), or check that an existing one has the same spec (False)."""
        old = self.tables.get(spec.name)
        if old is not None:
            diff = old.spec.differences(spec, ("kind", "shape", "dtype", "optimizer", "init", "seed", "min_count",
                                               "evict_after"))
            if diff:
                raise PSError(f"table {spec.name!r} already exists with a different definition ("
                              f"{'; '.join(diff)}); every worker must create it with the same arguments")
            return False
        spec.rule  # noqa: B018  (parse the optimizer now: a bad spec fails at creation)
        if spec.kind == "sparse":
            self.tables[spec.name] = SparseShard(spec)
        else:
            lo, hi = dense_ranges(spec.size, self.num_servers)[self.index]
            self.tables[spec.name] = DenseShard(spec, lo, hi, values)
        return True

    # ------------------------------------------------------------------ checkpoints
    def save(self, directory: str) -> str:
        """Write this server's shard of every table into ``directory``; returns the file written."""
        path = shard_file(directory, self.index, self.num_servers)
        tree = {"format": SHARD_FORMAT, "server": self.index, "num_servers": self.num_servers,
                "tables": {name: t.snapshot() for name, t in self.tables.items()}}
        _io.save_tree(tree, path)
        return path

    def load(self, directory: str, saved_servers: int) -> int:
        """Replace the contents of every table by the checkpoint's (read from all of its ``saved_servers``
        shard files); returns the number of sparse rows this server now holds."""
        snaps = []
        for k in range(saved_servers):
            path = shard_file(directory, k, saved_servers)
            tree = _io.load_tree(path)
            if not isinstance(tree, dict) or tree.get("format") != SHARD_FORMAT:
                raise PSError(f"load: {path!r} is not a parameter-server shard (format {tree.get('format')!r})")
            snaps.append((path, tree["tables"]))
        fresh: dict[str, SparseShard | DenseShard] = {}
        for name, table in self.tables.items():
            missing = [p for p, tables in snaps if name not in tables]
            if missing:
                raise PSError(f"load: table {name!r} is not in the checkpoint file {missing[0]!r}")
            spec = table.spec
            for path, tables in snaps:
                saved = TableSpec.from_dict(tables[name]["spec"])
                diff = spec.differences(saved, ("kind", "shape", "dtype"))
                if saved.optimizer[0] != spec.optimizer[0]:
                    diff.append(f"optimizer: {spec.optimizer[0]!r} != {saved.optimizer[0]!r}")
                if diff:
                    raise PSError(f"load: table {name!r} in {path!r} does not match the table created in this job "
                                  f"(created != saved: {'; '.join(diff)})")
            if isinstance(table, SparseShard):
                fresh[name] = self._load_sparse(spec, [tables[name] for _, tables in snaps])
            else:
                fresh[name] = self._load_dense(table, [tables[name] for _, tables in snaps])
        self.tables = fresh
        return sum(len(t) for t in fresh.values() if isinstance(t, SparseShard))

    def _load_sparse(self, spec: TableSpec, snaps: list[dict]) -> SparseShard:
        shard = SparseShard(spec)
        now = self.clock.now
        for snap in snaps:
            for key in ("keys", "pending_keys"):
                snap[key] = np.asarray(snap[key], dtype=np.int64)
            mine = shard_of(snap["keys"], self.num_servers) == self.index
            mine_p = shard_of(snap["pending_keys"], self.num_servers) == self.index
            shard.merge(snap, mine, mine_p, now)
        return shard

    def _load_dense(self, table: DenseShard, snaps: list[dict]) -> DenseShard:
        lo, hi = table.lo, table.hi
        values = np.empty(hi - lo, dtype=table.dtype)
        state = {k: np.empty(hi - lo, dtype=table.dtype) for k in table.state}
        step = 0
        for snap in snaps:
            a, b = max(lo, int(snap["lo"])), min(hi, int(snap["hi"]))
            if snap["hi"] > snap["lo"]:
                step = max(step, int(snap["step"]))
            if a >= b:
                continue
            src = slice(a - int(snap["lo"]), b - int(snap["lo"]))
            values[a - lo:b - lo] = snap["values"][src]
            for k in state:
                state[k][a - lo:b - lo] = snap["state"][k][src]
        shard = DenseShard(table.spec, lo, hi, values)
        shard.state, shard.step = state, step
        return shard


# ---------------------------------------------------------------------------------------------- the MPI loop
def serve(comm: Any, state: ServerState, worker_ranks: list[int]) -> dict[str, Any]:
    """Answer requests on ``comm`` until every worker has sent ``done``; returns a summary."""
    from mpi4py import MPI

    rank_to_worker = {r: i for i, r in enumerate(worker_ranks)}
    status = MPI.Status()
    sends: list[Any] = []
    idle = 0.0
    start = time.perf_counter()
    while not state.clock.all_done:
        msg = comm.improbe(MPI.ANY_SOURCE, TAG_REQUEST, status)
        if msg is None:
            if sends:
                sends = [r for r in sends if not r.Test()]
            idle = min(_MAX_IDLE_SLEEP, idle * 2 or 2e-5)
            time.sleep(idle)
            continue
        idle = 0.0
        source = status.Get_source()
        request = msg.recv()
        worker = rank_to_worker.get(source)
        if worker is None:
            raise PSError(f"parameter server {state.index}: got a request from rank {source}, which is not a worker")
        for r in state.handle(worker, request):
            sends.append(comm.isend((r.request_id, r.ok, r.value), dest=worker_ranks[r.worker], tag=TAG_REPLY))
        if len(sends) > 64:
            sends = [r for r in sends if not r.Test()]
    MPI.Request.Waitall(sends)
    return {"server": state.index, "requests": state.requests, "seconds": time.perf_counter() - start,
            "tables": {name: t.stats() for name, t in state.tables.items()}}
