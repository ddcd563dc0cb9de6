"""The compiler driver: memory and disk caches (a second process compiles nothing), corrupt entries rebuilt,
atomic files, EMBER_DEBUG output, the OpenMP fallback, and what happens without a compiler."""

import json
import os
import stat
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

from ember.codegen import CodegenError, Kernel, Output, arg, available, build, cc, op

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from ember.codegen import Kernel, Output, arg, build, cc, op
    x = arg("x", "float32", (5, 3))
    prog = build([Kernel(sys.argv[1], [x], [Output("y", op("tanh", x) * 3.0)])])
    y = prog[sys.argv[1]].run(np.ones((5, 3), np.float32))
    print(json.dumps({"stats": cc.STATS, "y": float(y[0, 0]), "path": str(prog.library.path)}))
""")


def tiny(name, scale=3.0):
    x = arg("x", "float32", (5, 3))
    return Kernel(name, [x], [Output("y", op("tanh", x) * scale)])


def run_child(name, env_extra=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, name], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """A private, empty cache directory and a cleared in-memory cache."""
    monkeypatch.setenv("EMBER_CACHE_DIR", str(tmp_path))
    cc.clear_memory_cache()
    yield tmp_path
    cc.clear_memory_cache()


def test_memory_then_disk_cache(own_cache):
    before = dict(cc.STATS)
    p1 = build([tiny("mem")])
    p2 = build([tiny("mem")])
    assert p2.library is p1.library
    assert cc.STATS["compiled"] == before["compiled"] + 1
    assert cc.STATS["memory_hits"] == before["memory_hits"] + 1
    files = sorted(f.name for f in own_cache.iterdir())
    key = p1.library.key
    assert files == [f"{key}.c", f"{key}.json", f"{key}.so"]   # no temporary files left behind
    meta = json.loads((own_cache / f"{key}.json").read_text())
    assert meta["openmp"] in (True, False) and "-O3" in meta["flags"]
    # A second process finds the library on disk and compiles nothing.
    child, _ = run_child("mem", {"EMBER_CACHE_DIR": str(own_cache)})
    assert child["stats"]["compiled"] == 0 and child["stats"]["disk_hits"] == 1
    assert child["path"] == str(p1.library.path)
    assert child["y"] == pytest.approx(3 * np.tanh(1.0), rel=1e-6)


def test_corrupt_entries_are_rebuilt(own_cache):
    # Child processes only: a library this process had loaded must not be damaged under it.
    env = {"EMBER_CACHE_DIR": str(own_cache)}
    first, _ = run_child("corrupt", env)
    so = Path(first["path"])
    meta = so.with_suffix(".json")
    for damage in ("so", "json"):
        if damage == "so":
            so.write_bytes(so.read_bytes()[:200] + b"garbage")
        else:
            meta.write_text("{not json")
        child, _ = run_child("corrupt", env)
        assert child["stats"]["rebuilt_corrupt"] == 1 and child["stats"]["compiled"] == 1, (damage, child)
        assert child["y"] == pytest.approx(3 * np.tanh(1.0), rel=1e-6)
    again, _ = run_child("corrupt", env)
    assert again["stats"]["compiled"] == 0 and again["stats"]["disk_hits"] == 1


def test_concurrent_processes_share_one_entry(own_cache):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EMBER_CACHE_DIR": str(own_cache)}
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, "race"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env, cwd=ROOT) for _ in range(3)]
    outs = [p.communicate() for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    paths = {json.loads(o[0].strip().splitlines()[-1])["path"] for o in outs}
    assert len(paths) == 1
    assert not [f for f in own_cache.iterdir() if f.name.startswith(".")]


def test_cache_key_depends_on_source_flags_and_compiler():
    comp = cc.find_compiler()
    k = cc.cache_key("int x;", comp, cc.BASE_FLAGS)
    assert k == cc.cache_key("int x;", comp, cc.BASE_FLAGS)
    assert k != cc.cache_key("int y;", comp, cc.BASE_FLAGS)
    assert k != cc.cache_key("int x;", comp, cc.BASE_FLAGS + ("-O2",))
    other = cc.Compiler(comp.command, comp.path, comp.version + " (other build)")
    assert k != cc.cache_key("int x;", other, cc.BASE_FLAGS)


def test_debug_levels_print_source_and_timing(own_cache, monkeypatch, capsys):
    monkeypatch.setenv("EMBER_DEBUG", "2")
    build([tiny("debugged")])
    err = capsys.readouterr().err
    assert "void ek_debugged(float *restrict o0" in err and "em_tanhf(" in err
    assert "debugged: compiled in" in err
    cc.clear_memory_cache()
    monkeypatch.setenv("EMBER_DEBUG", "1")
    build([tiny("debugged")])
    err = capsys.readouterr().err
    assert "disk cache hit" in err and "void ek_debugged" not in err


def test_compile_error_is_reported(own_cache):
    with pytest.raises(CodegenError, match=r"failed .* on .*\.c"):
        cc.load("this is not C;")


@pytest.mark.parametrize("rejected", ["-fopenmp", "-march=native"])
def test_flag_fallbacks(own_cache, tmp_path, monkeypatch, rejected):
    real = cc.find_compiler().path
    wrapper = tmp_path / f"cc-without{rejected}"
    wrapper.write_text(f'#!/bin/sh\nfor a in "$@"; do [ "$a" = "{rejected}" ] && exit 1; done\nexec {real} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("CC", str(wrapper))
    monkeypatch.setattr(cc, "_WARNED", set())
    try:
        assert cc.find_compiler(refresh=True).path == str(wrapper)
        with pytest.warns(RuntimeWarning, match=f"cannot compile with {rejected if rejected == '-fopenmp' else '.*'}"):
            p = build([tiny("fallback", 2.0)])
        assert p.library.openmp is False
        meta = json.loads(p.library.path.with_suffix(".json").read_text())
        assert rejected not in meta["flags"] and "-O3" in meta["flags"]
        np.testing.assert_allclose(p["fallback"].run(np.ones((5, 3), np.float32)), 2 * np.tanh(1.0), rtol=1e-6)
    finally:
        monkeypatch.delenv("CC")
        cc.find_compiler(refresh=True)


@pytest.mark.needs_no_compiler
def test_without_a_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(cc, "_WARNED", set())
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            assert cc.find_compiler(refresh=True) is None
            assert available() is False
            assert available() is False
        msgs = [str(w.message) for w in seen]
        assert sum("no C compiler found" in m for m in msgs) == 1
        with pytest.raises(CodegenError, match="no C compiler"):
            build([tiny("nocc")])
    finally:
        monkeypatch.undo()
        cc.find_compiler(refresh=True)
