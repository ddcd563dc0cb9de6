"""MNIST and Fashion-MNIST from IDX files (gzip-compressed or raw).

Where the files are looked for, in order:

1. ``root`` when given (the four standard file names, ``.gz`` or not, directly in ``root`` or in the
   torchvision layout ``root/<ClassName>/raw``); missing files are an error naming them;
2. Fashion-MNIST only: Debian's ``dataset-fashion-mnist`` package, ``/usr/share/datasets/fashion-mnist``;
3. Fashion-MNIST only: the stratified subset bundled with ember (6000 train / 1000 test images, 600 and
   100 per class; see ``_fashion_mnist/README.md``).

There is no network download: ``download=True`` raises an error that says where files are looked for.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...tensor import Tensor
from ..dataset import DataError, Dataset, check_index, check_indices
from ..loader import _from_array

__all__ = ["MNIST", "FashionMNIST", "read_idx"]

# IDX type byte -> big-endian NumPy dtype
_IDX_TYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}

_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
BUNDLED_FASHION_DIR = Path(__file__).resolve().parent / "_fashion_mnist"


def read_idx(path: str | os.PathLike, ndim: int | None = None) -> np.ndarray:
    """Read one IDX file (``.gz`` is decompressed) into a native-endian NumPy array.

    The header is checked strictly: two zero bytes, a known type code, the number of dimensions
    (``ndim`` when given) and a payload of exactly the announced size. Any violation, or a corrupt
    gzip stream, raises ``DataError`` naming the file.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"read_idx: no such file: {path}") from None
    if path.suffix == ".gz" or raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"read_idx: {path} is not a valid gzip file ({e})") from None
    if len(raw) < 4:
        raise DataError(f"read_idx: {path} is too short for an IDX header ({len(raw)} bytes)")
    zero0, zero1, code, nd = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0 or code not in _IDX_TYPES:
        raise DataError(f"read_idx: {path} has a bad IDX magic number {raw[:4].hex()}; expected 0000 followed "
                        f"by a type code in {[hex(c) for c in _IDX_TYPES]} and the number of dimensions")
    if ndim is not None and nd != ndim:
        raise DataError(f"read_idx: {path} holds a {nd}-dimensional array; expected {ndim} dimensions")
    header = 4 + 4 * nd
    if len(raw) < header:
        raise DataError(f"read_idx: {path} is truncated inside its header ({len(raw)} of {header} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=nd, offset=4))
    dtype = _IDX_TYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - header
    if got != expected:
        what = "truncated" if got < expected else "longer than its header says"
        raise DataError(f"read_idx: {path} is {what}: the header announces shape {dims} of {dtype.newbyteorder('=')} "
                        f"({expected} bytes of data) but the file holds {got}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _scale(images: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1], in one pass (the same rounding for items, batches and arrays())."""
    return np.divide(images, np.float32(255), dtype=np.float32)


def _find_pair(root: Path, names: Sequence[str]) -> list[Path] | None:
    found = []
    for name in names:
        for cand in (root / (name + ".gz"), root / name):
            if cand.is_file():
                found.append(cand)
                break
        else:
            return None
    return found


class MNIST(Dataset[tuple]):
    """The MNIST handwritten digits: items are ``(image, label)``, ``image`` a float32 tensor of shape
    ``(1, 28, 28)`` in [0, 1] (after ``transform``), ``label`` a Python int (collated to int64).

    Attributes: ``data`` (uint8, ``(N, 28, 28)``), ``targets`` (int64, ``(N,)``), ``classes``,
    ``source`` (the directory used, or ``"bundled subset"``). ``arrays()`` gives the whole split at once.
    MNIST has no bundled copy: pass ``root``.
    """

    classes: list[str] = ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five", "6 - six",
                          "7 - seven", "8 - eight", "9 - nine"]
    debian_dir: Path | None = None
    bundled_dir: Path | None = None

    def __init__(self, root: str | os.PathLike | None = None, train: bool = True,
                 transform: Callable[[Tensor], Any] | None = None, download: bool = False,
                 target_transform: Callable[[int], Any] | None = None) -> None:
        name = type(self).__name__
        if not isinstance(train, bool):
            raise TypeError(f"{name}: train must be a bool, got {train!r}")
        for what, fn in (("transform", transform), ("target_transform", target_transform)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name}: {what} must be callable, got {type(fn).__name__}")
        if download:
            raise DataError(f"{name}: download=True is not supported: ember never downloads data. It reads the "
                            f"IDX files from {self._where()}. Put the four files there (or in a folder you pass "
                            "as root) and call again without download=True.")
        self.train = train
        self.transform = transform
        self.target_transform = target_transform
        files, self.source = self._locate(root)
        images = read_idx(files[0], ndim=3)
        labels = read_idx(files[1], ndim=1)
        if images.dtype != np.uint8 or images.shape[1:] != (28, 28):
            raise DataError(f"{name}: {files[0]} holds {images.dtype} images of shape {images.shape[1:]}; "
                            "expected uint8 images of shape (28, 28)")
        if labels.shape[0] != images.shape[0]:
            raise DataError(f"{name}: {files[1]} has {labels.shape[0]} labels but {files[0]} has "
                            f"{images.shape[0]} images")
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.classes)):
            raise DataError(f"{name}: {files[1]} has labels outside 0..{len(self.classes) - 1} "
                            f"(min {labels.min()}, max {labels.max()})")
        self.files = files
        self.data = images
        self.targets = labels.astype(np.int64)

    @classmethod
    def _where(cls) -> str:
        places = ["the root you pass"]
        if cls.debian_dir is not None:
            places.append(f"{cls.debian_dir} (Debian package dataset-fashion-mnist)")
        if cls.bundled_dir is not None:
            places.append(f"the subset bundled with ember ({cls.bundled_dir})")
        return ", then ".join(places)

    def _locate(self, root: str | os.PathLike | None) -> tuple[list[Path], str]:
        names = _FILES[self.train]
        name = type(self).__name__
        if root is not None:
            root = Path(root)
            for d in (root, root / name / "raw"):
                found = _find_pair(d, names)
                if found:
                    return found, str(d)
            missing = [n for n in names if not (root / n).is_file() and not (root / (n + ".gz")).is_file()]
            raise FileNotFoundError(f"{name}: {root} lacks {', '.join(m + '[.gz]' for m in missing)} "
                                    f"(also looked in {root / name / 'raw'})")
        if self.debian_dir is not None and self.debian_dir.is_dir():
            found = _find_pair(self.debian_dir, names)
            if found:
                return found, str(self.debian_dir)
        if self.bundled_dir is not None:
            found = _find_pair(self.bundled_dir, names)
            if found:
                return found, "bundled subset"
        raise FileNotFoundError(f"{name}: no copy of the {'train' if self.train else 'test'} split found; looked "
                                f"in {self._where()}. Pass root= a folder holding {', '.join(names)} (.gz or raw)")

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __getitem__(self, index: int) -> tuple:
        i = check_index(type(self).__name__, index, len(self))
        image: Any = _from_array(type(self).__name__, _scale(self.data[i][None]))
        label: Any = int(self.targets[i])
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            label = self.target_transform(label)
        return image, label

    def __getattr__(self, name: str) -> Any:
        # The batched getter exists only without transforms (they are defined per item).
        if name == "__getitems__" and self.__dict__.get("transform") is None \
                and self.__dict__.get("target_transform") is None and "data" in self.__dict__:
            return self._getitems
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _getitems(self, indices: Sequence[int]) -> tuple:
        idx = check_indices(type(self).__name__, indices, len(self))
        return _scale(self.data[idx][:, None]), self.targets[idx]

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The whole split as NumPy arrays: float32 images ``(N, 1, 28, 28)`` in [0, 1] and int64 labels
        (transforms are not applied). ``TensorDataset(*map(ember.from_numpy, ds.arrays()))`` trains fast."""
        return _scale(self.data[:, None]), self.targets.copy()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(split={'train' if self.train else 'test'}, n={len(self)}, "
                f"source={self.source!r})")


class FashionMNIST(MNIST):
    """Zalando's Fashion-MNIST (same format as MNIST, 10 clothing classes).

    Without ``root`` it reads Debian's full copy when installed, else the stratified subset shipped
    with ember (6000 train / 1000 test images).
    """

    classes: list[str] = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                          "Bag", "Ankle boot"]
    debian_dir = DEBIAN_FASHION_DIR
    bundled_dir = BUNDLED_FASHION_DIR
