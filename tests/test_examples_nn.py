"""The nn examples learn at tiny sizes, and the training-step benchmark's smoke mode prints its table."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    path = ROOT / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fashion():
    return _load("fashion_mnist")


@pytest.fixture(scope="module")
def char_gpt():
    return _load("char_gpt")


@pytest.fixture(scope="module")
def lstm():
    return _load("lstm_sequence")


@pytest.fixture(scope="module")
def ctr():
    return _load("ctr")


def test_fashion_mnist_mlp_beats_chance(fashion, capsys):
    r = fashion.main(model="mlp", epochs=2, batch_size=64, hidden=32, train_size=1200, test_size=300, lr=5e-3, seed=1)
    assert r["train_size"] == 1200 and r["test_size"] == 300
    assert r["test_accuracy"] > 0.5             # chance is 0.10
    assert r["losses"][-1] < r["losses"][0] < math.log(10)
    out = capsys.readouterr().out
    assert out.count("test accuracy") >= 3      # before training and after each epoch


def test_fashion_mnist_cnn_learns(fashion):
    r = fashion.main(model="cnn", epochs=2, batch_size=16, hidden=16, channels=(4, 8), train_size=512,
                     test_size=200, lr=1e-2, seed=0, verbose=False)
    assert r["test_accuracy"] > 0.3
    assert r["test_loss"] < math.log(10)


def test_fashion_mnist_rejects_unknown_model(fashion):
    with pytest.raises(ValueError, match="mlp"):
        fashion.build_model("rnn")


def test_char_gpt_learns_and_samples(char_gpt, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat. the dog sat on the log. " * 40)
    r = char_gpt.main(text=text, steps=40, batch_size=8, block_size=16, d_model=32, n_layer=1, n_head=2,
                      lr=1e-2, sample_len=37, prompt="the ", seed=0)
    assert r["loss"] < 0.7 * r["initial_loss"]
    assert len(r["generated"]) == 37
    assert set(r["generated"]) <= set(r["vocab"]) and set(r["vocab"]) == set("the catsondmgl.")
    assert r["sample"].startswith("the ")
    assert "sample" in capsys.readouterr().out


def test_char_gpt_default_corpus_ships(char_gpt):
    corpus = char_gpt.DEFAULT_TEXT
    assert corpus.is_file() and 30_000 <= corpus.stat().st_size <= 60_000
    r = char_gpt.main(steps=3, batch_size=2, block_size=8, d_model=16, n_layer=1, n_head=1, sample_len=5,
                      verbose=False)
    assert len(r["generated"]) == 5 and set(r["generated"]) <= set(r["vocab"])


def test_lstm_sequence_beats_baselines(lstm):
    r = lstm.main(steps=60, batch_size=16, length=24, hidden=16, lr=2e-2, test_size=64, seed=0, verbose=False)
    assert r["loss"] < 0.5 * r["initial_loss"]
    assert r["test_mse"] < 0.5 * r["zero_mse"]


def test_ctr_synthetic_auc(ctr, capsys):
    r = ctr.main(num_samples=12_000, rows=500, dim=8, hidden=(32,), epochs=2, batch_size=256, seed=0)
    assert r["auc"] > 0.55 and r["bayes_auc"] > r["auc"] - 0.05
    assert r["losses"][-1] < r["losses"][0]
    assert "AUC" in capsys.readouterr().out


def test_ctr_movielens(ctr, capsys, monkeypatch):
    if ctr.MovieLens100K.is_available():
        r = ctr.main_movielens(epochs=1, dim=8, hidden=(16,), max_ratings=20_000, batch_size=512, verbose=False)
        assert r["auc"] > 0.55
    monkeypatch.setattr(ctr.MovieLens100K, "is_available", classmethod(lambda cls, root=None: False))
    assert ctr.main_movielens(epochs=1) is None
    assert "recbole" in capsys.readouterr().out


def _bench(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_steps.py"), "--quick", "--only", "mlp",
                           *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def test_train_steps_quick_prints_table(tmp_path):
    out_json = tmp_path / "steps.json"
    proc = _bench("--json", str(out_json))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    out = proc.stdout
    for column in ("workload", "ember ms/step", "jit ms/step", "torch ms/step", "ratio", "target", "pass/miss",
                   "jit/eager", "jit/torch"):
        assert column in out
    assert "MLP 784-1024-1024-10" in out and "<=1.25x" in out
    result = json.loads(out_json.read_text())
    (row,) = result["rows"]
    assert row["workload"] == "mlp" and row["ember_ms"] > 0 and row["jit_ms"] > 0
    assert row["status"] in ("PASS", "MISS", "n/a")
    if result["meta"]["torch"] is not None:
        assert row["torch_ms"] > 0 and row["ratio"] > 0
        assert row["ember"]["params"] == row["torch"]["params"] == 784 * 1024 + 1024 * 1024 + 1024 * 10 + 2058
    else:
        assert "n/a" in out


def test_train_steps_without_torch_says_na():
    proc = _bench("--no-torch")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    row = next(line for line in proc.stdout.splitlines() if line.startswith("MLP 784-1024-1024-10"))
    assert "n/a" in row and "torch: disabled by --no-torch" in proc.stdout


def test_train_steps_with_torch_absent_says_so(monkeypatch):
    spec = importlib.util.spec_from_file_location("train_steps", ROOT / "benchmarks" / "train_steps.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setitem(sys.modules, "torch", None)  # find_spec("torch") -> None, as when it is not installed
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    result = bench.run(["mlp"], quick=True)
    table = bench.format_table(result)
    assert result["meta"]["torch"] is None and result["rows"][0]["ember_ms"] > 0
    assert "PyTorch n/a (not installed)" in table and "torch: not installed" in table
    row = next(line for line in table.splitlines() if line.startswith("MLP 784-1024-1024-10"))
    cells = [c.strip() for c in row.split("|")]
    assert cells[3] == "n/a" and cells[4] == "n/a" and cells[-1] == "n/a"  # torch ms, ratio, jit/torch
    assert float(cells[2]) > 0  # the compiled step ran
