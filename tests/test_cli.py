"""The `ember` command: `ember info`, `ember demo`, and argparse-style errors for bad usage."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ember
from ember import cli

ROOT = Path(__file__).resolve().parent.parent


def test_info_prints_the_expected_fields(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for field in ("Ember:", "Python:", "NumPy:", "BLAS:", "C compiler:", "Devices:", "PyTorch:"):
        assert field in out, f"{field!r} missing from:\n{out}"
    assert ember.__version__ in out
    assert np.__version__ in out
    assert "cpu" in out.split("Devices:")[1].splitlines()[0]


def test_info_json_is_machine_readable(capsys):
    assert cli.main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["ember"] == ember.__version__
    assert info["numpy"] == np.__version__
    assert "cpu" in info["devices"]
    assert set(info["blas"]) >= {"name", "version", "threads"}
    assert info["blas"]["threads"] is None or info["blas"]["threads"] >= 1


def test_info_without_torch_or_compiler(monkeypatch, capsys):
    real_find_spec = cli.importlib.util.find_spec
    monkeypatch.setattr(cli.importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real_find_spec(name, *a))
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("CC", raising=False)
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "PyTorch:" in out and "not installed" in out
    assert "not found" in out.split("C compiler:")[1].splitlines()[0]


@pytest.mark.parametrize("argv", [["bogus"], [], ["info", "--nope"], ["demo", "--steps", "0"]])
def test_bad_usage_is_a_one_line_error(argv, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "ember" in err and "error:" in err
    assert "Traceback" not in err


def test_bad_subcommand_from_the_shell_exits_nonzero_without_traceback():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "ember.cli", "bogus"], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=60)
    assert proc.returncode != 0
    assert "invalid choice: 'bogus'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_version_flag(capsys):
    assert cli.main(["--version"]) == 0
    assert ember.__version__ in capsys.readouterr().out


def test_demo_runs(capsys):
    assert cli.main(["demo", "--steps", "5"]) == 0
    out = capsys.readouterr().out
    assert "step" in out and "accuracy" in out
