"""``ember.data``: datasets, samplers and a prefetching ``DataLoader`` with ``torch.utils.data``'s API.

    from ember.data import DataLoader, TensorDataset
    from ember.data.datasets import FashionMNIST

    images, labels = FashionMNIST(train=True).arrays()
    loader = DataLoader(TensorDataset(images, labels), batch_size=128, shuffle=True, seed=0)
    for x, y in loader:
        ...
"""

from . import datasets
from .dataset import DataError, Dataset, IterableDataset, Subset, TensorDataset, random_split
from .loader import DataLoader, default_collate, default_convert
from .metrics import roc_auc
from .sampler import BatchSampler, DistributedSampler, RandomSampler, Sampler, SequentialSampler

__all__ = ["BatchSampler", "DataError", "DataLoader", "Dataset", "DistributedSampler", "IterableDataset",
           "RandomSampler", "Sampler", "SequentialSampler", "Subset", "TensorDataset", "datasets", "default_collate",
           "default_convert", "random_split", "roc_auc"]
