"""``ember train``: options, one-line errors, outputs, and a bit-identical resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

import ember
from ember.cli import main
from ember.train import TrainConfig, build_model, train

TINY = ["--limit-train", "384", "--limit-test", "200", "--batch-size", "64", "--quiet"]


def test_help_documents_every_option(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for opt in ("--model", "--epochs", "--batch-size", "--lr", "--optimizer", "--data-dir", "--out", "--resume",
                "--seed", "--device"):
        assert opt in out


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "expected a positive integer"),
    (["--model", "resnet"], "invalid choice"),
    (["--lr", "-1"], "expected a positive number"),
    (["--optimizer", "lbfgs"], "invalid choice"),
    (["--data-dir", "/no/such/folder"], "--data-dir /no/such/folder: no such directory"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--device", "cuda"], "only the cpu device is available"),
    (["--resume", "/no/such/checkpoint"], "--resume /no/such/checkpoint: no checkpoint file found"),
])
def test_bad_values_give_one_line_errors(argv, message, capsys, tmp_path):
    code = main(["train", *argv, "--out", str(tmp_path), *TINY])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_tiny_run_writes_checkpoint_curves_and_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "mlp", "--epochs", "1", "--out", str(out), *TINY]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("mlp: test accuracy")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["steps"] == 6
    assert metrics["test_accuracy"] > 0.3  # ten classes: chance is 0.1
    assert (out / "checkpoint.safetensors").stat().st_size > 0
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cnn_learns_on_a_small_slice(tmp_path):
    cfg = TrainConfig(model="cnn", epochs=1, batch_size=32, out=str(tmp_path), limit_train=640, limit_test=200,
                      progress=False, plot=False)
    summary = train(cfg)
    hist = summary["history"]["step_loss"]
    assert np.mean(hist[-5:]) < np.mean(hist[:5])
    assert summary["test_accuracy"] > 0.4


def test_resume_continues_bit_identically(tmp_path):
    common = {"model": "mlp", "batch_size": 64, "limit_train": 256, "limit_test": 128, "progress": False,
              "plot": False, "optimizer": "sgd"}
    straight = train(TrainConfig(epochs=2, out=str(tmp_path / "a"), **common))
    train(TrainConfig(epochs=1, out=str(tmp_path / "b"), **common))
    ember.manual_seed(123)  # disturb the global RNG: the checkpoint must restore it
    resumed = train(TrainConfig(epochs=2, out=str(tmp_path / "b"), resume=str(tmp_path / "b"), **common))
    assert resumed["history"]["step_loss"] == straight["history"]["step_loss"]
    models = []
    for run in ("a", "b"):
        model = build_model("mlp")
        ember.io.load_checkpoint(tmp_path / run / "checkpoint.safetensors", model=model, rng=False)
        models.append(model.state_dict())
    for k, v in models[0].items():
        np.testing.assert_array_equal(v.numpy(), models[1][k].numpy())


def test_models_have_the_documented_shapes():
    x = ember.randn(2, 1, 28, 28)
    for name in ("mlp", "cnn"):
        assert build_model(name)(x).shape == (2, 10)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg")


def test_compiled_steps_train_like_eager_steps(tmp_path):
    common = {"model": "mlp", "epochs": 1, "batch_size": 50, "limit_train": 230, "limit_test": 100,
              "progress": False, "plot": False, "optimizer": "sgd"}
    eager = train(TrainConfig(out=str(tmp_path / "eager"), **common))
    compiled = train(TrainConfig(out=str(tmp_path / "jit"), compile=True, **common))
    # SGD's update is the same arithmetic compiled; the last, smaller batch traces a second signature
    assert compiled["history"]["step_loss"] == eager["history"]["step_loss"]
    assert compiled["test_accuracy"] == eager["test_accuracy"]
