"""Datasets: MNIST/Fashion-MNIST (IDX files; a Fashion-MNIST subset is bundled), character-level text,
synthetic click-through data and MovieLens 100K (through the ``recbole`` package's copy)."""

from .ctr import SyntheticCTR, bags_to_offsets
from .mnist import MNIST, FashionMNIST, read_idx
from .movielens import MovieLens100K
from .text import CharDataset

__all__ = ["MNIST", "CharDataset", "FashionMNIST", "MovieLens100K", "SyntheticCTR", "bags_to_offsets", "read_idx"]
