"""The ``ember`` command: ``ember train`` (the main job), ``ember info``, ``ember demo`` and ``ember run``.

``main(argv)`` returns the exit status; the console script ``ember = "ember.cli:main"`` calls it.
Subcommands plug in through ``_build_parser``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------------------------------------- BLAS
from .backend.blas import blas_info, blas_threads, set_blas_threads  # noqa: F401  (re-exported)

# ---------------------------------------------------------------------------------------------- compiler

def c_compiler() -> dict[str, Any] | None:
    """The first C compiler on PATH (``$CC``, then cc, gcc, clang): ``{"name", "path", "version"}``."""
    candidates = [os.environ["CC"].split()[0]] if os.environ.get("CC") else []
    candidates += ["cc", "gcc", "clang"]
    for name in candidates:
        path = shutil.which(name)
        if path is None:
            continue
        version = ""
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
            lines = (out.stdout or out.stderr).strip().splitlines()
            version = lines[0].strip() if lines else ""
        return {"name": name, "path": path, "version": version}
    return None


# ---------------------------------------------------------------------------------------------- info

def _torch_version() -> str | None:
    """torch's version if it is importable (imports it, so only call this when asked)."""
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        import torch
    except Exception as e:  # a broken install: say so rather than crash `ember info`
        return f"present but fails to import ({type(e).__name__}: {e})"
    return str(torch.__version__)


def collect_info() -> dict[str, Any]:
    """Everything ``ember info`` prints, as a dict."""
    import numpy as np

    import ember
    from ember.backend import available_backends

    return {
        "ember": ember.__version__,
        "python": f"{platform.python_version()} ({platform.python_implementation()}, {sys.executable})",
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
        "blas": blas_info(),
        "compiler": c_compiler(),
        "devices": available_backends(),
        "torch": _torch_version(),
    }


def format_info(info: dict[str, Any]) -> str:
    blas = info["blas"]
    if blas["name"] or blas["library"]:
        parts = [blas["name"] or os.path.basename(blas["library"])]
        if blas["version"]:
            parts.append(blas["version"])
        extra = []
        if blas["core"]:
            extra.append(f"core {blas['core']}")
        extra.append(f"threads {blas['threads'] if blas['threads'] is not None else 'unknown'}")
        blas_line = " ".join(parts) + " (" + ", ".join(extra) + ")"
    else:
        blas_line = "unknown (numpy.show_config reports none)"
    cc = info["compiler"]
    cc_line = f"{cc['path']}: {cc['version'] or 'version unknown'}" if cc else "not found (cc, gcc, clang not on PATH)"
    rows = [
        ("Ember", info["ember"]),
        ("Python", info["python"]),
        ("Platform", f"{info['platform']}, {info['cpus']} CPUs"),
        ("NumPy", info["numpy"]),
        ("BLAS", blas_line),
        ("C compiler", cc_line),
        ("Devices", ", ".join(info["devices"])),
        ("PyTorch", info["torch"] or "not installed"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k + ':':<{width + 1}} {v}" for k, v in rows)


def _cmd_info(args: argparse.Namespace) -> int:
    info = collect_info()
    if args.json:
        import json
        print(json.dumps(info, indent=2))
    else:
        print(format_info(info))
    return 0


# ---------------------------------------------------------------------------------------------- demo

def _load_demo() -> Any:
    """``examples/demo_mlp.py`` as a module (it lives beside the package in a source checkout)."""
    path = Path(__file__).resolve().parent.parent / "examples" / "demo_mlp.py"
    if not path.exists():
        raise FileNotFoundError(f"the demo script was not found at {path}; "
                                "`ember demo` needs a source checkout of Ember")
    spec = importlib.util.spec_from_file_location("ember_demo_mlp", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        demo = _load_demo()
    except FileNotFoundError as e:
        print(f"ember demo: {e}", file=sys.stderr)
        return 1
    demo.main(steps=args.steps, seed=args.seed)
    return 0


# ---------------------------------------------------------------------------------------------- train

def _cmd_train(args: argparse.Namespace) -> int:
    from . import errors
    from .train import TrainConfig, train

    cfg = TrainConfig(model=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      optimizer=args.optimizer, data_dir=args.data_dir, out=args.out, resume=args.resume,
                      seed=args.seed, device=args.device, limit_train=args.limit_train, limit_test=args.limit_test,
                      progress=not args.quiet, plot=not args.no_plot, compile=args.compile)
    try:
        summary = train(cfg)
    except (errors.EmberError, ValueError, OSError) as e:  # bad values and files: one line, no traceback
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"ember train: error: {msg}", file=sys.stderr)
        return 2
    if args.quiet and summary["test_accuracy"] is not None:
        print(f"{summary['model']}: test accuracy {100 * summary['test_accuracy']:.2f}% "
              f"after {summary['epochs']} epoch{'s' if summary['epochs'] != 1 else ''} ({summary['seconds']:.1f} s)")
    return 0


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _add_train_parser(sub: Any) -> None:
    p = sub.add_parser(
        "train", help="train a small CNN or MLP on Fashion-MNIST (the main job)",
        description="Train a small CNN (default) or MLP on Fashion-MNIST with Ember, showing a progress bar, "
                    "per-epoch train loss and test accuracy, then save a checkpoint, a PNG of the curves and "
                    "metrics.json into --out. Data: --data-dir if given, else Debian's "
                    "/usr/share/datasets/fashion-mnist/ (package dataset-fashion-mnist) when installed, else "
                    "the subset bundled with Ember (6000 train / 1000 test images).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", choices=["cnn", "mlp"], default="cnn",
                   help="cnn: conv32-pool-conv64-pool-fc128-fc10; mlp: 784-256-128-10")
    p.add_argument("--epochs", type=_positive_int, default=3, help="passes over the training set")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="images per step")
    p.add_argument("--lr", type=_positive_float, default=None,
                   help="learning rate (default: 1e-3 for adam/adamw, 0.05 for sgd)")
    p.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], default="adam",
                   help="adam, adamw, or sgd with momentum 0.9")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="a folder with the four Fashion-MNIST IDX files (.gz or raw)")
    p.add_argument("--out", default="runs/fashion", metavar="DIR",
                   help="output folder for checkpoint.safetensors, curves.png, metrics.json")
    p.add_argument("--resume", default=None, metavar="PATH",
                   help="continue from a checkpoint file (or its folder) up to --epochs")
    p.add_argument("--seed", type=int, default=0, help="seed for initialization and data order")
    p.add_argument("--device", default="cpu", help="device to train on")
    p.add_argument("--limit-train", type=_positive_int, default=None, metavar="N",
                   help="use only the first N training images (quick runs)")
    p.add_argument("--limit-test", type=_positive_int, default=None, metavar="N",
                   help="use only the first N test images")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines; print the summary")
    p.add_argument("--no-plot", action="store_true", help="skip curves.png")
    p.add_argument("--compile", action="store_true",
                   help="compile the training step with ember.jit (traced on its first calls, then replayed)")
    p.set_defaults(func=_cmd_train)


# ---------------------------------------------------------------------------------------------- run

def _cmd_run(args: argparse.Namespace) -> int:
    from .distributed.launch import LaunchError, run

    try:
        return run(args.nprocs, args.script, args.args, hosts=args.hosts, servers=args.servers)
    except LaunchError as e:
        print(f"ember run: error: {str(e).removeprefix('ember run: ')}", file=sys.stderr)
        return 2


def _add_run_parser(sub: Any) -> None:
    p = sub.add_parser(
        "run", help="run a script on N MPI processes (distributed training)",
        description="Run `python SCRIPT ARGS...` on N MPI ranks with mpiexec (the one beside this Python, else "
                    "the one on PATH). Inside the script, ember.distributed.init() joins the job. A rank that "
                    "fails aborts the whole job. Exits with mpiexec's status.")
    p.add_argument("-n", "--nprocs", type=_positive_int, required=True, metavar="N", help="number of processes")
    p.add_argument("--hosts", default=None, metavar="H1,H2", help="comma-separated hosts to run on (mpiexec -hosts)")
    p.add_argument("--servers", type=_nonnegative_int, default=None, metavar="S",
                   help="make the last S ranks parameter servers (sets EMBER_PS_SERVERS=S)")
    p.add_argument("script", help="the Python script every rank runs")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the script")
    p.set_defaults(func=_cmd_run)


# ---------------------------------------------------------------------------------------------- main

def _int_at_least(low: int, expected: str) -> Any:
    """An argparse type: an integer of at least ``low``, else an error saying it expected ``expected``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value
    return parse


_positive_int = _int_at_least(1, "a positive integer")
_nonnegative_int = _int_at_least(0, "an integer >= 0")


def _build_parser() -> argparse.ArgumentParser:
    import ember

    parser = argparse.ArgumentParser(prog="ember", description="Ember: a deep-learning framework.")
    parser.add_argument("--version", action="version", version=f"ember {ember.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_train_parser(sub)

    p = sub.add_parser("info", help="versions, BLAS, C compiler, devices, PyTorch",
                       description="Print the versions and the machine facts that matter to Ember.")
    p.add_argument("--json", action="store_true", help="print the facts as JSON")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("demo", help="train a tiny MLP on two spirals (examples/demo_mlp.py)",
                       description="Train a tiny two-layer MLP on a synthetic 2-D problem with the core API.")
    p.add_argument("--steps", type=_positive_int, default=600, help="SGD steps (default 600)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(func=_cmd_demo)
    _add_run_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ember`` command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits on --help/--version (0) and on bad usage (2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("ember: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ember info | head`
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
