"""MovieLens 100K ratings, read from the copy that the ``recbole`` package ships.

``recbole`` carries ml-100k as RecBole "atomic files" (``recbole/dataset_example/ml-100k/ml-100k.inter``:
tab-separated ``user_id``, ``item_id``, ``rating``, ``timestamp`` with a typed header line). Ember only
reads that file: it never imports recbole (whose dependencies need not be installed) and never copies
the data (the MovieLens licence forbids redistribution). Install it with ``pip install --no-deps recbole``.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...tensor import Tensor
from ..dataset import DataError, Dataset, check_index, check_indices
from ..loader import _from_array

__all__ = ["MovieLens100K"]

_FILE = "ml-100k.inter"


def _recbole_dir() -> Path | None:
    try:
        spec = importlib.util.find_spec("recbole")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "dataset_example" / "ml-100k"


class MovieLens100K(Dataset[tuple]):
    """The 100,000 ratings (1-5) of 943 users on 1682 movies.

    Items are ``(user, item, rating)``: int64, int64 and float32 scalar tensors, with users and items
    re-indexed to ``0..num_users-1`` and ``0..num_items-1`` in increasing order of their original ids
    (``user_ids[u]``/``item_ids[i]`` give the original ids back). Arrays of the whole set: ``users``,
    ``items``, ``ratings``, ``timestamps``. ``root`` is a folder holding ``ml-100k.inter``; by default
    the copy inside the installed ``recbole`` package is used.
    """

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        path = self._path(root)
        if path is None or not path.is_file():
            where = f"{Path(root) / _FILE}" if root is not None else "the recbole package"
            raise FileNotFoundError(f"MovieLens100K: {_FILE} not found in {where}. Ember reads the copy shipped by "
                                    "the recbole package: run `pip install --no-deps recbole` (or pass root= a "
                                    f"folder holding {_FILE})")
        self.path = path
        with open(path, encoding="utf-8") as f:
            header = f.readline().rstrip("\n").split("\t")
        cols = [h.split(":")[0] for h in header]
        needed = ("user_id", "item_id", "rating")
        if any(c not in cols for c in needed):
            raise DataError(f"MovieLens100K: {path} has columns {cols}; expected {list(needed)} (and timestamp)")
        try:
            table = np.loadtxt(path, delimiter="\t", skiprows=1, dtype=np.float64, ndmin=2)
        except ValueError as e:
            raise DataError(f"MovieLens100K: cannot parse {path}: {e}") from None
        if table.shape[1] != len(cols) or table.shape[0] == 0:
            raise DataError(f"MovieLens100K: {path} has rows of {table.shape[1]} fields and {table.shape[0]} rows; "
                            f"expected {len(cols)} fields per row and at least one row")
        col = {c: table[:, k] for k, c in enumerate(cols)}
        self.user_ids, users = np.unique(col["user_id"].astype(np.int64), return_inverse=True)
        self.item_ids, items = np.unique(col["item_id"].astype(np.int64), return_inverse=True)
        self.users = users.reshape(-1).astype(np.int64)
        self.items = items.reshape(-1).astype(np.int64)
        self.ratings = col["rating"].astype(np.float32)
        self.timestamps = col["timestamp"].astype(np.int64) if "timestamp" in col else None

    @staticmethod
    def _path(root: str | os.PathLike | None) -> Path | None:
        if root is not None:
            return Path(root) / _FILE
        d = _recbole_dir()
        return None if d is None else d / _FILE

    @classmethod
    def is_available(cls, root: str | os.PathLike | None = None) -> bool:
        """Whether the ratings file can be found (recbole installed, or ``root`` holding it)."""
        p = cls._path(root)
        return p is not None and p.is_file()

    @property
    def num_users(self) -> int:
        return int(self.user_ids.size)

    @property
    def num_items(self) -> int:
        return int(self.item_ids.size)

    def __len__(self) -> int:
        return int(self.ratings.size)

    def _pack(self, sel: int | np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
        return (_from_array("MovieLens100K", np.asarray(self.users[sel])),
                _from_array("MovieLens100K", np.asarray(self.items[sel])),
                _from_array("MovieLens100K", np.asarray(self.ratings[sel])))

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        return self._pack(check_index("MovieLens100K", index, len(self)))

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
        return self._pack(check_indices("MovieLens100K", indices, len(self)))

    def __repr__(self) -> str:
        return f"MovieLens100K(ratings={len(self)}, users={self.num_users}, items={self.num_items}, path={self.path})"
