"""The CPU backend: NumPy arrays, BLAS through NumPy's matmul."""

from __future__ import annotations

from typing import Any

import numpy as np


class CPUBackend:
    """Allocation, conversion and DLPack for host memory."""

    name = "cpu"
    xp = np

    @staticmethod
    def empty(shape: tuple[int, ...], np_dtype: np.dtype) -> np.ndarray:
        return np.empty(shape, dtype=np_dtype)

    @staticmethod
    def asarray(data: Any, np_dtype: np.dtype | None = None) -> np.ndarray:
        return np.asarray(data, dtype=np_dtype)

    @staticmethod
    def to_numpy(array: np.ndarray) -> np.ndarray:
        return array

    @staticmethod
    def from_dlpack(obj: Any) -> np.ndarray:
        return np.from_dlpack(obj)

    @staticmethod
    def synchronize() -> None:
        pass


BACKEND = CPUBackend()
