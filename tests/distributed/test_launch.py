"""``ember run``: the mpiexec command line, the ranks' environment, and a failing rank ending the job."""

import os
import subprocess
import sys
import time

import pytest

from ember import cli
from ember.distributed import launch
from tests.distributed._mpi import ROOT, mpiexec

JOB = """
import os, sys
import ember.distributed as dist
comm = dist.init()
sys.stdout.write(f"<rank {comm.rank}/{comm.size} args={sys.argv[1:]} servers={os.environ.get('EMBER_PS_SERVERS')} "
                 f"omp={os.environ.get('OMP_NUM_THREADS')}>\\n")
sys.stdout.flush()
if "fail" in sys.argv and comm.rank == 1:
    raise ValueError("rank one is broken")
if "exit" in sys.argv and comm.rank == 0:
    sys.exit(3)
comm.barrier()   # the healthy ranks wait here: the failing one must end the job
"""


def test_run_passes_args_and_environment(tmp_path):
    mpiexec()  # skip without MPI
    path = tmp_path / "job.py"
    path.write_text(JOB)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                            "MKL_NUM_THREADS")}
    proc = subprocess.run([sys.executable, "-m", "ember.cli", "run", "-n", "3", "--servers", "1", str(path),
                           "--lr", "0.1", "x"], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    threads = max(1, (os.cpu_count() or 1) // 3)
    for r in range(3):
        assert f"<rank {r}/3 args=['--lr', '0.1', 'x'] servers=1 omp={threads}>" in proc.stdout, proc.stdout


@pytest.mark.parametrize("how", ["fail", "exit"])
def test_failing_rank_ends_the_job_promptly(tmp_path, how):
    mpiexec()
    path = tmp_path / "job.py"
    path.write_text(JOB)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ember.cli", "run", "-n", "3", str(path), how],
                          capture_output=True, text=True, timeout=30, cwd=tmp_path)
    elapsed = time.perf_counter() - start
    assert proc.returncode != 0
    assert elapsed < 10, f"took {elapsed:.1f} s"
    if how == "fail":
        assert "[rank 1] Traceback (most recent call last):" in proc.stderr, proc.stderr
        assert "[rank 1] ValueError: rank one is broken" in proc.stderr
        assert "job.py" in proc.stderr and "runpy" not in proc.stderr  # launcher frames are trimmed
    else:
        assert proc.returncode == 3, proc.stderr


def test_command_line_and_environment():
    cmd = launch.build_command(4, "train.py", ["--epochs", "2"], hosts="a, b", mpiexec="/x/mpiexec")
    assert cmd == ["/x/mpiexec", "-n", "4", "-hosts", "a,b", sys.executable, "-m", "mpi4py", "train.py",
                   "--epochs", "2"]
    env = launch.launch_env(2, servers=1, base={"PATH": "/bin"})
    assert env["EMBER_PS_SERVERS"] == "1"
    assert env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)  # a source checkout: ranks import this ember
    env = launch.launch_env(64, base={"OPENBLAS_NUM_THREADS": "3"})
    assert env["OPENBLAS_NUM_THREADS"] == "3" and "OMP_NUM_THREADS" not in env and "EMBER_PS_SERVERS" not in env
    with pytest.raises(launch.LaunchError, match="--servers must be an int in \\[0, 1\\]"):
        launch.launch_env(2, servers=2)
    with pytest.raises(launch.LaunchError, match="-n must be a positive integer"):
        launch.build_command(0, "x.py", mpiexec="mpiexec")
    with pytest.raises(launch.LaunchError, match="--hosts"):
        launch.build_command(2, "x.py", hosts=" , ", mpiexec="mpiexec")


def test_missing_mpiexec_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(launch.LaunchError, match=r"pip install 'ember\[distributed\]'"):
        launch.find_mpiexec()


def test_cli_errors(capsys, tmp_path):
    assert cli.main(["run", "-n", "2", str(tmp_path / "missing.py")]) == 2
    assert "ember run: error: script" in capsys.readouterr().err
    assert cli.main(["run", "script.py"]) == 2          # -n is required
    assert "-n" in capsys.readouterr().err
    assert cli.main(["run", "-n", "0", "script.py"]) == 2
    assert cli.main(["run", "-n", "2", "--servers", "-1", "script.py"]) == 2
    script = tmp_path / "s.py"
    script.write_text("")
    assert cli.main(["run", "-n", "2", "--servers", "2", str(script)]) == 2
    assert "--servers must be an int in [0, 1]" in capsys.readouterr().err
