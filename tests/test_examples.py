"""The examples run and the benchmark's smoke mode prints its table."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo_mlp():
    return _load(ROOT / "examples" / "demo_mlp.py")


def test_demo_mlp_loss_decreases(demo_mlp, capsys):
    result = demo_mlp.main(steps=60, n=128, hidden=16, seed=1, print_every=20)
    assert result["loss"] < 0.9 * result["initial_loss"]
    assert result["losses"][-1] < result["losses"][0]
    assert 0.5 <= result["accuracy"] <= 1.0
    out = capsys.readouterr().out
    assert out.count("loss") >= 4 and "accuracy" in out


def test_demo_mlp_is_reproducible(demo_mlp):
    a = demo_mlp.main(steps=3, n=64, hidden=8, seed=7, verbose=False)
    b = demo_mlp.main(steps=3, n=64, hidden=8, seed=7, verbose=False)
    assert a["loss"] == b["loss"] and a["accuracy"] == b["accuracy"]


def test_demo_mlp_rejects_zero_steps(demo_mlp):
    with pytest.raises(ValueError, match="steps"):
        demo_mlp.main(steps=0, verbose=False)


def _bench(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "eager_overhead.py"), "--quick", *args],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def test_eager_overhead_quick_prints_table(tmp_path):
    out_json = tmp_path / "bench.json"
    proc = _bench("--json", str(out_json))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "ember µs" in out and "torch µs" in out and "ratio" in out
    rows = ("add 16x16 no-grad", "mul 64x64 grad", "matmul 64x64 grad", "sum 64x64 no-grad", "MLP 784-1024-1024-10")
    for row in rows:
        assert row in out
    result = json.loads(out_json.read_text())
    assert len(result["ops"]) == 12
    assert result["mlp"]["ember_ms"] > 0
    assert all(r["status"] in ("PASS", "MISS", "n/a") for r in result["ops"])
    if result["meta"]["torch"] is not None:  # same data and weights: the losses agree
        assert abs(result["mlp"]["ember_loss"] - result["mlp"]["torch_loss"]) < 1e-3


def test_eager_overhead_without_torch_says_na():
    proc = _bench("--no-torch")
    assert proc.returncode == 0, proc.stderr
    assert "n/a" in proc.stdout and "MLP 784-1024-1024-10" in proc.stdout


def _readme_python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]


def test_readme_code_runs():
    """Every Python block of the README runs, in order, in one namespace (the tour's names carry over)."""
    blocks = _readme_python_blocks()
    assert len(blocks) >= 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["w"].grad is not None and namespace["h"].shape == (5,)


def test_readme_test_command_matches_ci():
    """The README's test command is the one .ci/run runs."""
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = "pip install -e '.[test]' && python -m pytest"
    assert command in readme and command in ci
