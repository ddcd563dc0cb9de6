"""Character- and byte-level language-model datasets over any text."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...tensor import Tensor
from ..dataset import DataError, Dataset, check_index, check_indices
from ..loader import _from_array

__all__ = ["CharDataset"]

_PATHLIKE = re.compile(r"^\S+\.[A-Za-z0-9]{1,8}$")


class CharDataset(Dataset[tuple]):
    """Next-token prediction windows over a text: item ``i`` is ``(x, y)`` with ``x = ids[i:i+block_size]``
    and ``y = ids[i+1:i+block_size+1]``, both int64 tensors of shape ``(block_size,)``.

    ``path_or_text``: a ``pathlib.Path`` or a path string (read as UTF-8 text for ``level="char"``, as raw
    bytes for ``level="byte"``), or the text itself (``str`` or ``bytes``). A string is taken as a path
    when it names an existing file, or when it is a single word ending in a file extension such as
    ``"input.txt"`` (then a missing file is an error rather than a tiny text).

    ``level="char"``: the vocabulary is the sorted set of characters in the text. ``level="byte"``: the
    256 byte values (UTF-8 of a ``str``), so any text encodes. ``stoi``/``itos`` map tokens (characters,
    or 1-byte ``bytes``) to ids and back; ``encode(str) -> list[int]``, ``decode(ids) -> str``.
    ``__getitems__`` returns a whole batch ``(x, y)`` of shape ``(B, block_size)`` with one fancy index.
    """

    def __init__(self, path_or_text: str | bytes | os.PathLike, block_size: int, level: str = "char") -> None:
        if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
            raise ValueError(f"CharDataset: block_size must be an int >= 1, got {block_size!r}")
        if level not in ("char", "byte"):
            raise ValueError(f"CharDataset: level must be 'char' or 'byte', got {level!r}")
        self.block_size = int(block_size)
        self.level = level
        self.path: Path | None = None
        source = self._read(path_or_text)
        if level == "byte":
            raw = source.encode("utf-8") if isinstance(source, str) else bytes(source)
            self.ids = np.frombuffer(raw, dtype=np.uint8)
            self.itos: dict[int, Any] = {i: bytes([i]) for i in range(256)}
        else:
            if isinstance(source, bytes):
                try:
                    source = source.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"CharDataset: {self.path or 'the text'} is not valid UTF-8 ({e}); use "
                                    "level='byte' for arbitrary bytes") from None
            codes = np.frombuffer(source.encode("utf-32-le"), dtype="<u4")
            uniq, inv = np.unique(codes, return_inverse=True)
            self.itos = {i: chr(c) for i, c in enumerate(uniq.tolist())}
            small = np.uint8 if uniq.size <= 256 else np.uint16 if uniq.size <= 65536 else np.int32
            self.ids = inv.reshape(-1).astype(small)
        self.stoi: dict[Any, int] = {s: i for i, s in self.itos.items()}
        if self.ids.size < self.block_size + 1:
            where = f"{self.path}" if self.path is not None else "the text"
            raise DataError(f"CharDataset: {where} has {self.ids.size} {'bytes' if level == 'byte' else 'characters'}"
                            f", fewer than block_size + 1 = {self.block_size + 1}; use a longer text or a smaller "
                            "block_size")
        self._offsets = np.arange(self.block_size + 1, dtype=np.int64)

    def _read(self, src: Any) -> str | bytes:
        if isinstance(src, os.PathLike) or (isinstance(src, str) and "\n" not in src
                                            and (os.path.isfile(src) or _PATHLIKE.match(src))):
            self.path = Path(src)
            try:
                data = self.path.read_bytes()
            except FileNotFoundError:
                raise FileNotFoundError(f"CharDataset: no such file: {self.path}") from None
            except IsADirectoryError:
                raise DataError(f"CharDataset: {self.path} is a directory; expected a text file") from None
            return data
        if isinstance(src, (str, bytes, bytearray)):
            return src if isinstance(src, str) else bytes(src)
        raise TypeError(f"CharDataset: path_or_text must be a path, a str or bytes, got {type(src).__name__}")

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (characters must be in the vocabulary)."""
        if not isinstance(text, str):
            raise TypeError(f"CharDataset.encode: expected a str, got {type(text).__name__}")
        if self.level == "byte":
            return list(text.encode("utf-8"))
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise ValueError(f"CharDataset.encode: character {e.args[0]!r} is not in the vocabulary of "
                             f"{self.vocab_size} characters") from None

    def decode(self, ids: Sequence[int] | np.ndarray | Tensor) -> str:
        """The text of a sequence of ids (invalid UTF-8 from byte-level ids is replaced by U+FFFD)."""
        arr = np.asarray(ids.data if isinstance(ids, Tensor) else ids).reshape(-1)
        if arr.size and (arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() >= self.vocab_size):
            raise ValueError(f"CharDataset.decode: ids must be ints in [0, {self.vocab_size}), got dtype "
                             f"{arr.dtype}, range [{arr.min()}, {arr.max()}]")
        if self.level == "byte":
            return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")
        return "".join(self.itos[int(i)] for i in arr)

    def __len__(self) -> int:
        return int(self.ids.size - self.block_size)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        i = check_index("CharDataset", index, len(self))
        w = self.ids[i:i + self.block_size + 1].astype(np.int64)
        return _from_array("CharDataset", w[:-1]), _from_array("CharDataset", w[1:])

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        idx = check_indices("CharDataset", indices, len(self))
        w = self.ids[idx[:, None] + self._offsets].astype(np.int64)
        return (_from_array("CharDataset", np.ascontiguousarray(w[:, :-1])),
                _from_array("CharDataset", np.ascontiguousarray(w[:, 1:])))

    def __repr__(self) -> str:
        src = str(self.path) if self.path is not None else "<text>"
        return (f"CharDataset({src}, level={self.level!r}, tokens={self.ids.size}, vocab_size={self.vocab_size}, "
                f"block_size={self.block_size})")
