"""Write the Fashion-MNIST subset bundled with ember (ember/data/datasets/_fashion_mnist/).

Reads the full dataset (Debian's ``dataset-fashion-mnist`` package by default) and keeps, for each
split, the same number of images of every class, chosen with a seeded generator and kept in their
original order: 6000 train images (600 per class) and 1000 test images (100 per class). The output
is gzip-compressed IDX with a zero timestamp, so rerunning the script reproduces identical bytes.

    python scripts/make_fashion_subset.py [--src /usr/share/datasets/fashion-mnist] [--out DIR]
"""

from __future__ import annotations

import argparse
import gzip
import struct
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ember.data.datasets.mnist import read_idx  # noqa: E402

SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 6000),
          "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 1000)}


def stratified(labels: np.ndarray, total: int, seed: int) -> np.ndarray:
    """Sorted indices of ``total // n_classes`` random items of each class."""
    classes = np.unique(labels)
    per_class = total // len(classes)
    if per_class * len(classes) != total:
        raise SystemExit(f"make_fashion_subset: {total} is not divisible by the {len(classes)} classes")
    rng = np.random.default_rng(seed)
    picks = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        if members.size < per_class:
            raise SystemExit(f"make_fashion_subset: class {c} has only {members.size} items, need {per_class}")
        picks.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(picks))


def write_idx(path: Path, array: np.ndarray) -> None:
    """uint8 array -> gzip IDX (type 0x08), deterministic bytes."""
    assert array.dtype == np.uint8
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with open(path, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, compresslevel=9, mtime=0) as gz:
        gz.write(header + np.ascontiguousarray(array).tobytes())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    ap.add_argument("--out", type=Path, default=ROOT / "ember" / "data" / "datasets" / "_fashion_mnist")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for k, (img_name, lab_name, total) in enumerate(SPLITS.values()):
        images = read_idx(args.src / (img_name + ".gz"), ndim=3)
        labels = read_idx(args.src / (lab_name + ".gz"), ndim=1)
        idx = stratified(labels, total, args.seed + k)
        write_idx(args.out / (img_name + ".gz"), images[idx])
        write_idx(args.out / (lab_name + ".gz"), labels[idx])
        counts = np.bincount(labels[idx], minlength=10)
        print(f"{img_name}: {idx.size} of {labels.size} images, per class {counts.tolist()}")
    size = sum(p.stat().st_size for p in args.out.glob("*.gz"))
    print(f"wrote {args.out} ({size / 1e6:.2f} MB of IDX files)")


if __name__ == "__main__":
    main()
