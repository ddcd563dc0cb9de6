import random
import threading
import time

import numpy as np
import pytest

from ember.runtime import engine as eng
from ember.runtime.engine import (
    EngineConfigError,
    EngineOpError,
    NaiveEngine,
    Schedule,
    ThreadedEngine,
    get_engine,
    kernel_threads,
    threads_per_kernel,
)

TIMEOUT = 5.0  # barriers and events: a failure shows up as a timeout, never as a hang


# ------------------------------------------------------------------------------------------- dynamic

def test_reads_see_exactly_the_writes_before_them():
    rng = random.Random(0)
    e = ThreadedEngine(3)
    vars_ = [e.new_var(f"v{i}") for i in range(4)]
    value = [0] * 4
    seen, expect = [], []
    model = [0] * 4
    for k in range(300):
        i = rng.randrange(4)
        if rng.random() < 0.4:
            model[i] += 1

            def write(i=i):
                v = value[i]
                time.sleep(0)  # let another thread in between the read and the store
                value[i] = v + 1
            e.push(write, writes=[vars_[i]])
        else:
            expect.append((k, model[i]))
            e.push(lambda i=i, k=k: seen.append((k, value[i])), reads=[vars_[i]])
    e.wait_all()
    assert sorted(seen) == expect
    assert value == model


def test_concurrent_readers_overlap():
    e = ThreadedEngine(2)
    a = e.new_var("a")
    barrier = threading.Barrier(2, timeout=TIMEOUT)  # passes only if both readers run at once
    done = []
    e.push(lambda: None, writes=[a])
    for _ in range(2):
        e.push(lambda: done.append(barrier.wait()), reads=[a])
    e.wait_all()
    assert sorted(done) == [0, 1]


def test_write_waits_for_running_reads_and_blocks_later_reads():
    e = ThreadedEngine(3)
    a = e.new_var("a")
    release, log = threading.Event(), []
    e.push(lambda: (release.wait(TIMEOUT), log.append("read1")), reads=[a])
    e.push(lambda: log.append("write"), writes=[a])
    e.push(lambda: log.append("read2"), reads=[a])
    assert not release.wait(0.05)
    assert log == []  # neither the write nor the read queued behind it ran while read1 held the Var
    release.set()
    e.wait_all()
    assert log == ["read1", "write", "read2"]


def test_wait_on_one_var_does_not_wait_for_others():
    e = ThreadedEngine(2)
    a, b = e.new_var("a"), e.new_var("b")
    release = threading.Event()
    e.push(lambda: release.wait(TIMEOUT), writes=[b])
    e.push(lambda: None, writes=[a])
    e.wait(a)
    assert not release.is_set()
    release.set()
    e.wait_all()


def test_exception_reraised_at_next_wait_with_op_name():
    e = ThreadedEngine(2)
    a, b = e.new_var("a"), e.new_var("b")
    ran = []

    def bad():
        raise KeyError("boom")
    e.push(bad, writes=[a], name="layer3.grad")
    e.push(lambda: ran.append("dependent"), reads=[a])
    e.push(lambda: ran.append("independent"), writes=[b])
    with pytest.raises(EngineOpError, match=r"layer3\.grad") as info:
        e.wait(b)
    assert isinstance(info.value.__cause__, KeyError)
    assert info.value.op_name == "layer3.grad"
    e.wait_all()  # reported once
    assert ran == ["independent"]  # the reader of the failed write was skipped
    e.push(lambda: ran.append("again"), reads=[a])
    e.wait_all()
    assert ran[-1] == "again"


def test_naive_engine_runs_at_push_and_raises_there():
    e = NaiveEngine()
    a = e.new_var("a")
    log = []
    e.push(lambda: log.append(1), writes=[a])
    assert log == [1]
    with pytest.raises(EngineOpError, match="'bad'"):
        e.push(lambda: 1 / 0, reads=[a], name="bad")


@pytest.mark.parametrize("kind", ["naive", "threaded"])
def test_push_rejects_var_in_reads_and_writes(kind):
    e = get_engine(kind)
    a = e.new_var("a")
    with pytest.raises(EngineConfigError, match="writes only"):
        e.push(lambda: None, reads=[a], writes=[a])
    with pytest.raises(TypeError, match="Vars"):
        e.push(lambda: None, reads=["a"])


# ---------------------------------------------------------------------------------------- env vars

def test_engine_selection_from_env(monkeypatch):
    monkeypatch.delenv("EMBER_ENGINE", raising=False)
    assert isinstance(get_engine(), ThreadedEngine)
    monkeypatch.setenv("EMBER_ENGINE", "naive")
    assert isinstance(get_engine(), NaiveEngine)
    assert Schedule([(lambda: None, [], [0])]).inline
    monkeypatch.setenv("EMBER_ENGINE", "Threaded")
    assert isinstance(get_engine(), ThreadedEngine)
    monkeypatch.setenv("EMBER_ENGINE", "async")
    with pytest.raises(EngineConfigError, match=r"EMBER_ENGINE must be one of 'naive', 'threaded', got 'async'"):
        get_engine()
    with pytest.raises(ValueError, match="naive"):
        Schedule([])
    with pytest.raises(EngineConfigError, match="engine kind"):
        get_engine("fast")


def test_worker_count_from_env(monkeypatch):
    monkeypatch.setenv("EMBER_ENGINE_THREADS", "3")
    assert ThreadedEngine().workers == 3
    monkeypatch.delenv("EMBER_ENGINE_THREADS")
    assert ThreadedEngine().workers == min(eng.cpu_count(), 4)
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("EMBER_ENGINE_THREADS", bad)
        with pytest.raises(EngineConfigError, match="EMBER_ENGINE_THREADS must be a positive integer"):
            ThreadedEngine()


def test_threads_per_kernel_and_kernel_threads_restore():
    assert threads_per_kernel(2, cores=8) == 4
    assert threads_per_kernel(3, cores=2) == 1
    before_blas, before_omp = eng.set_blas_threads(None), eng.set_omp_threads(None)
    with kernel_threads(1):
        if before_blas is not None:
            assert eng.set_blas_threads(None) == 1
        if before_omp is not None:
            assert eng.set_omp_threads(None) == 1
    assert eng.set_blas_threads(None) == before_blas
    assert eng.set_omp_threads(None) == before_omp


# ------------------------------------------------------------------------------------------- static

def test_schedule_edges_raw_war_waw_and_extra():
    nop = lambda: None  # noqa: E731
    steps = [
        (nop, [], ["x"]),        # 0 writes x
        (nop, ["x"], ["y"]),     # 1 RAW on x
        (nop, ["x"], ["z"]),     # 2 RAW on x (independent of 1)
        (nop, [], ["x"]),        # 3 WAR after 1 and 2 (WAW on 0 implied)
        (nop, [], ["y"]),        # 4 WAW after 1
        (nop, ["w"], ["w"]),     # 5 in-place on a fresh id: a root
    ]
    s = Schedule(steps, extra_edges=[(2, 4)], mode="threaded", workers=2)
    assert s.succs == [(1, 2), (3, 4), (3, 4), (), (), ()]
    assert s.roots == [0, 5]
    assert s.stats() == {"steps": 6, "edges": 6, "critical_path": 3, "max_width": 2, "workers": 2}
    assert "6 steps, 6 edges, critical path 3, max width 2" in s.explain()
    for bad in [(4, 2), (0, 6), (1, 1)]:
        with pytest.raises(EngineConfigError, match="extra edge"):
            Schedule(steps, extra_edges=[bad])


def test_schedule_extra_edge_orders_aliased_buffers():
    # "a" and "b" share arena memory: step 2 may only overwrite it after step 1 has read "a".
    for _ in range(50):
        arena = np.zeros(1)
        got = []

        def read_a():
            time.sleep(0)
            got.append(arena[0])

        steps = [(lambda: arena.fill(1.0), [], ["a"]), (read_a, ["a"], ["out"]),
                 (lambda: arena.fill(2.0), [], ["b"])]
        s = Schedule(steps, extra_edges=[(1, 2)], mode="threaded", workers=2, inline=False)
        assert 2 in s.succs[1]
        s.run()
        assert got == [1.0]


def test_schedule_runs_independent_steps_concurrently():
    barrier = threading.Barrier(2, timeout=TIMEOUT)
    s = Schedule([(barrier.wait, [], ["a"]), (barrier.wait, [], ["b"])], mode="threaded", workers=2)
    assert not s.inline
    for _ in range(3):
        s.run()


def test_schedule_exception_names_step_and_skips_dependents():
    ran = []
    fail = [True]

    def grad_w1():
        if fail[0]:
            raise ValueError("bad shape")
        ran.append("grad_w1")
    steps = [(grad_w1, [], ["g1"]), (lambda: ran.append("update1"), ["g1"], ["w1"]),
             (lambda: ran.append("grad_w2"), [], ["g2"])]
    for mode in ("naive", "threaded"):
        ran.clear()
        fail[0] = True
        s = Schedule(steps, mode=mode, workers=2)
        with pytest.raises(EngineOpError, match=r"step 0 \(grad_w1\)") as info:
            s.run()
        assert isinstance(info.value.__cause__, ValueError)
        assert "update1" not in ran
        fail[0] = False
        ran.clear()
        s.run()
        assert sorted(ran) == ["grad_w1", "grad_w2", "update1"]


def _random_program(seed: int, n_steps: int = 200, n_bufs: int = 20):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal((16, 16)) for _ in range(n_bufs)]
    prog = []
    for _ in range(n_steps):
        kind = rng.integers(4)
        r = [int(x) for x in rng.choice(n_bufs, size=2, replace=False)]
        w = int(rng.integers(n_bufs))
        prog.append((int(kind), r, w))
    return init, prog


def _kernel(bufs, kind, r, w):
    a, b, out = bufs[r[0]], bufs[r[1]], bufs[w]
    if kind == 0:
        np.add(a, b, out=out)
    elif kind == 1:
        np.tanh(a @ b * 0.1, out=out)  # a temporary first: out may alias a or b
    elif kind == 2:
        np.multiply(out, 0.5, out=out)  # in place: reads and writes w only
    else:
        out[...] = np.sin(a) - b.T


def _reads(kind, r, w):
    return [w] if kind == 2 else r


@pytest.mark.parametrize("seed", [0, 1])
def test_random_dag_naive_threaded_dynamic_agree_with_sequential(seed):
    init, prog = _random_program(seed)
    ref = [x.copy() for x in init]
    for kind, r, w in prog:
        _kernel(ref, kind, r, w)

    for mode in ("naive", "threaded"):
        bufs = [x.copy() for x in init]
        steps = [(lambda k=k, r=r, w=w: _kernel(bufs, k, r, w), _reads(k, r, w), [w]) for k, r, w in prog]
        s = Schedule(steps, mode=mode, workers=3, inline=False if mode == "threaded" else None)
        s.run()
        for got, want in zip(bufs, ref):
            np.testing.assert_array_equal(got, want)

    for kind in ("naive", "threaded"):
        e = get_engine(kind, workers=3)
        bufs = [x.copy() for x in init]
        vars_ = [e.new_var(str(i)) for i in range(len(bufs))]
        for k, r, w in prog:
            reads = [vars_[i] for i in _reads(k, r, w) if i != w]
            e.push(lambda k=k, r=r, w=w: _kernel(bufs, k, r, w), reads=reads, writes=[vars_[w]])
        e.wait_all()
        for got, want in zip(bufs, ref):
            np.testing.assert_array_equal(got, want)


def test_independent_gemms_overlap_in_time():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((1000, 1000), dtype=np.float32), rng.standard_normal((1000, 1000), dtype=np.float32)
    outs = [np.empty((1000, 1000), np.float32) for _ in range(2)]
    spans = [None, None]

    def gemm(i):
        t0 = time.perf_counter()
        np.matmul(a, b, out=outs[i])
        spans[i] = (t0, time.perf_counter())

    s = Schedule([(lambda: gemm(0), ["a", "b"], ["c0"]), (lambda: gemm(1), ["a", "b"], ["c1"])],
                 mode="threaded", workers=2, kernel_threads=1)
    s.run()
    (s0, e0), (s1, e1) = spans
    assert max(s0, s1) < min(e0, e1), f"GEMMs did not overlap: {spans}"
    np.testing.assert_array_equal(outs[0], outs[1])
