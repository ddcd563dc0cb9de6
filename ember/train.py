"""The ``ember train`` job: a small MLP or CNN on Fashion-MNIST, end to end.

It uses only Ember's public API (``ember.nn``, ``ember.optim``, ``ember.data``, ``ember.io``) and is
the reference for how a training script looks: data -> model -> optimizer -> loop with a progress
bar -> per-epoch evaluation -> checkpoint, curves and a one-line summary. Resuming from a checkpoint
continues bit-identically (the model, the optimizer, the data order and every RNG are restored).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

import ember
from ember import nn

# Fashion-MNIST's pixel mean and standard deviation over the training set (after scaling to [0, 1]).
MEAN, STD = 0.2860, 0.3530
CHECKPOINT = "checkpoint.safetensors"
OPTIMIZERS = ("sgd", "adam", "adamw")
MODELS = ("mlp", "cnn")


@dataclass
class TrainConfig:
    """Everything one run depends on; saved into the checkpoint and ``metrics.json``."""

    model: str = "cnn"
    epochs: int = 3
    batch_size: int = 64
    lr: float | None = None           # None: the optimizer's default below
    optimizer: str = "adam"
    data_dir: str | None = None       # None: Debian's copy when installed, else the bundled subset
    out: str = "runs/fashion"
    resume: str | None = None
    seed: int = 0
    device: str = "cpu"
    limit_train: int | None = None    # use only the first N training images (quick runs, tests)
    limit_test: int | None = None
    progress: bool = True
    plot: bool = True
    compile: bool = False             # run each training step through ember.jit

    def validate(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; expected one of {', '.join(MODELS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"--lr must be a positive number, got {self.lr}")
        if self.data_dir is not None and not Path(self.data_dir).is_dir():
            raise FileNotFoundError(f"--data-dir {self.data_dir}: no such directory")
        ember.device(self.device)  # raises DeviceError for an unknown device string
        if ember.device(self.device).type != "cpu":
            raise ember.DeviceError(f"--device {self.device}: only the cpu device is available in this build")


def default_lr(optimizer: str) -> float:
    return {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3}[optimizer]


def build_model(name: str) -> nn.Module:
    """``mlp``: 784-256-128-10 with ReLU. ``cnn``: conv(1->32,3x3)-pool-conv(32->64,3x3)-pool-fc128-fc10."""
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                             nn.Linear(128, 10))
    if name == "cnn":
        return nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 5 * 5, 128), nn.ReLU(), nn.Linear(128, 10))
    raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")


def build_optimizer(cfg: TrainConfig, params: Any) -> ember.optim.Optimizer:
    lr = cfg.lr if cfg.lr is not None else default_lr(cfg.optimizer)
    if cfg.optimizer == "sgd":
        return ember.optim.SGD(params, lr=lr, momentum=0.9)
    if cfg.optimizer == "adam":
        return ember.optim.Adam(params, lr=lr)
    return ember.optim.AdamW(params, lr=lr)


def load_data(cfg: TrainConfig) -> tuple[Any, Any, str]:
    """Normalized train and test sets as TensorDatasets, and where the images came from."""
    from ember.data import TensorDataset
    from ember.data.datasets import FashionMNIST

    sets = []
    source = ""
    for train, limit in ((True, cfg.limit_train), (False, cfg.limit_test)):
        ds = FashionMNIST(root=cfg.data_dir, train=train)
        source = ds.source
        x, y = ds.arrays()
        if limit is not None:
            x, y = x[:limit], y[:limit]
        x = ((np.asarray(x, dtype=np.float32) - MEAN) / STD).astype(np.float32)
        sets.append(TensorDataset(ember.from_numpy(x), ember.from_numpy(np.asarray(y, dtype=np.int64))))
    return sets[0], sets[1], source


def evaluate(model: nn.Module, loader: Any) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over ``loader``, in eval mode without gradients."""
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    with ember.no_grad():
        for x, y in loader:
            logits = model(x)
            total_loss += nn.functional.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(dim=1) == y).sum().item())
            count += y.shape[0]
    model.train()
    return total_loss / max(count, 1), correct / max(count, 1)


def _write_atomic(path: Path, data: bytes) -> None:
    from ember.io import write_atomic
    write_atomic(path, lambda tmp: Path(tmp).write_bytes(data), fn="ember train")


def plot_curves(history: dict[str, list], path: Path) -> bool:
    """Loss per step and test accuracy per epoch as a PNG; False when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    import io

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    steps = history["step_loss"]
    ax1.plot(np.arange(1, len(steps) + 1), steps, lw=0.6, alpha=0.4, label="batch")
    if len(steps) >= 20:
        k = max(len(steps) // 50, 5)
        smooth = np.convolve(steps, np.ones(k) / k, mode="valid")
        ax1.plot(np.arange(k, len(steps) + 1), smooth, lw=1.5, label=f"mean of {k}")
    ax1.set(xlabel="step", ylabel="train loss", title="training loss")
    ax1.legend()
    epochs = np.arange(1, len(history["test_acc"]) + 1)
    ax2.plot(epochs, [100 * a for a in history["test_acc"]], "o-", label="test")
    ax2.plot(epochs, [100 * a for a in history["train_acc"]], "s--", label="train (running)")
    ax2.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy", xticks=epochs)
    ax2.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    _write_atomic(path, buf.getvalue())
    return True


def _resolve_resume(path: str) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT
    if not p.is_file():
        raise FileNotFoundError(f"--resume {path}: no checkpoint file found (expected a {CHECKPOINT} or its folder)")
    return p


def make_step(model: nn.Module, optimizer: ember.optim.Optimizer) -> Any:
    """One training step on a batch: returns the loss and the number of correct predictions (as tensors, so
    the step can be compiled with ``ember.jit``)."""
    def step(x: ember.Tensor, y: ember.Tensor) -> tuple[ember.Tensor, ember.Tensor]:
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.detach(), (logits.detach().argmax(dim=1) == y).sum()
    return step


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run the job described by ``cfg``; returns the summary (also written to ``metrics.json``)."""
    from ember.data import DataLoader
    from ember.io import load_checkpoint, save_checkpoint

    cfg.validate()
    ember.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    train_set, test_set, source = load_data(cfg)
    loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed)
    test_loader = DataLoader(test_set, batch_size=1000)
    model = build_model(cfg.model)
    optimizer = build_optimizer(cfg, model.parameters())
    history: dict[str, list] = {"step_loss": [], "train_loss": [], "train_acc": [], "test_loss": [], "test_acc": []}
    start_epoch, step = 0, 0
    if cfg.resume:
        state = load_checkpoint(_resolve_resume(cfg.resume), model=model, optimizer=optimizer,
                                generators={"loader": loader.generator})
        start_epoch, step = int(state["epoch"]), int(state["step"])
        saved = state.get("extra") or {}
        history = saved.get("history", history)
        if saved.get("config", {}).get("model", cfg.model) != cfg.model:
            raise ValueError(f"--resume: the checkpoint is of model {saved['config']['model']!r}, "
                             f"not {cfg.model!r}; pass --model {saved['config']['model']}")
    n_params = model.num_parameters()
    say = print if cfg.progress else (lambda *a, **k: None)
    say(f"ember train: {cfg.model} ({n_params:,} parameters) on Fashion-MNIST from {source}: "
        f"{len(train_set):,} train / {len(test_set):,} test images; {cfg.optimizer} "
        f"lr={cfg.lr if cfg.lr is not None else default_lr(cfg.optimizer)}, batch {cfg.batch_size}, "
        f"epochs {start_epoch + 1}..{cfg.epochs}")
    if start_epoch >= cfg.epochs:
        say(f"the checkpoint already has {start_epoch} epochs; nothing to do (raise --epochs to go on)")
    train_step = make_step(model, optimizer)
    if cfg.compile:
        train_step = ember.jit(train_step, name="train_step")
    t_start = time.perf_counter()
    images = 0
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        total, correct, seen = 0.0, 0, 0
        bar = _progress(len(loader), f"epoch {epoch + 1}/{cfg.epochs}", cfg.progress)
        t_epoch = time.perf_counter()
        for x, y in loader:
            loss, hits = train_step(x, y)
            step += 1
            value = loss.item()
            history["step_loss"].append(value)
            total += value * y.shape[0]
            correct += int(hits.item())
            seen += y.shape[0]
            if bar is not None:
                bar.update(1)
                rate = seen / max(time.perf_counter() - t_epoch, 1e-9)
                bar.set_postfix(loss=f"{value:.4f}", img_s=f"{rate:,.0f}", refresh=False)
        if bar is not None:
            bar.close()
        images += seen
        test_loss, test_acc = evaluate(model, test_loader)
        history["train_loss"].append(total / seen)
        history["train_acc"].append(correct / seen)
        history["test_loss"].append(test_loss)
        history["test_acc"].append(test_acc)
        say(f"epoch {epoch + 1}: train loss {total / seen:.4f}, train acc {100 * correct / seen:.2f}%, "
            f"test loss {test_loss:.4f}, test acc {100 * test_acc:.2f}%, {time.perf_counter() - t_epoch:.1f} s")
        save_checkpoint(out / CHECKPOINT, model=model, optimizer=optimizer, step=step, epoch=epoch + 1,
                        generators={"loader": loader.generator},
                        extra={"config": asdict(cfg), "history": history})
    seconds = time.perf_counter() - t_start
    plotted = plot_curves(history, out / "curves.png") if cfg.plot and history["test_acc"] else False
    summary = {
        "model": cfg.model, "epochs": len(history["test_acc"]), "steps": step,
        "test_accuracy": history["test_acc"][-1] if history["test_acc"] else None,
        "test_loss": history["test_loss"][-1] if history["test_loss"] else None,
        "train_loss": history["train_loss"][-1] if history["train_loss"] else None,
        "seconds": seconds, "images_per_second": images / seconds if seconds > 0 else None,
        "data": source, "parameters": n_params, "out": str(out),
        "checkpoint": str(out / CHECKPOINT), "curves": str(out / "curves.png") if plotted else None,
        "history": history, "config": asdict(cfg),
    }
    _write_atomic(out / "metrics.json", json.dumps(summary, indent=1).encode())
    if summary["test_accuracy"] is not None:
        rate = f", {summary['images_per_second']:,.0f} img/s" if images else ""
        epochs = f"{summary['epochs']} epoch{'s' if summary['epochs'] != 1 else ''}"
        say(f"done: {cfg.model} test accuracy {100 * summary['test_accuracy']:.2f}% after {epochs} "
            f"({seconds:.1f} s{rate}); checkpoint, curves.png and metrics.json in {out}/")
    return summary


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="batch", leave=False, file=sys.stderr, dynamic_ncols=True,
                mininterval=0.25)
