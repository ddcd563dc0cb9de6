"""The nested-state format: Python trees of tensors and plain values <-> JSON + named arrays.

A tree (an optimizer state dict, a whole training checkpoint) is split in two:

* every tensor goes into the safetensors payload under a generated key built from its path
  (``optimizer/state/0/exp_avg``); the same tensor object seen twice is stored once;
* everything else becomes one JSON document (stored in the file's ``__metadata__`` under
  ``ember.tree``) in which tensors are references to their payload key.

JSON alone would lose information (int dict keys become strings, tuples become lists,
``inf``/``nan`` are not JSON), so values JSON cannot hold exactly are tagged objects. Plain
JSON objects never appear otherwise, so a JSON object is always a tag with exactly one key:

====================  =========================================================
``{"tensor": key}``   an ember Tensor stored in the payload under ``key``
``{"ndarray": key}``  a NumPy array stored in the payload (comes back as NumPy)
``{"dict": [[k, v], ...]}``  a dict; keys are encoded like values, order is kept
``{"tuple": [...]}``  a tuple (lists are plain JSON arrays)
``{"float": "inf"}``  a non-finite float: ``"inf"``, ``"-inf"`` or ``"nan"``
``{"int": "123..."}`` an int too large for a JSON double (beyond 2**53)
``{"numpy": [dtype, value]}``  a NumPy scalar such as ``np.float32(0.5)``
====================  =========================================================

``None``, bools, ints, finite floats (written with ``repr``, so they round-trip exactly),
strings and lists are plain JSON.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import dtypes as _dt
from ..device import get_backend
from ..errors import EmberError
from ..tensor import Tensor

TREE_KEY = "ember.tree"
_MAX_SAFE_INT = 2 ** 53
_NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}
_ALLOWED = "an ember Tensor, a NumPy array or scalar, None, bool, int, float, str, list, tuple or dict"
_KEY_TYPES = (str, int, float, bool, type(None), tuple)


class CheckpointError(EmberError, ValueError):
    """A checkpoint file or the state being saved is invalid (the message names the file and key)."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist (also a ``FileNotFoundError``)."""


def _sub(path: str, key: Any) -> str:
    return f"{path}[{key!r}]"


def _where(path: str) -> str:
    return f"at {path}" if path else "at the top level"


def tensor_to_numpy(t: Tensor) -> np.ndarray:
    """The host copy of a tensor's data, C-contiguous (views are materialized, not saved strided)."""
    return _contiguous(get_backend(t.device).to_numpy(t.data))


def _contiguous(a: np.ndarray) -> np.ndarray:
    # not np.ascontiguousarray: it turns 0-d arrays into 1-d ones
    return a if a.flags.c_contiguous else np.array(a, order="C")


class TreeEncoder:
    """Turns a tree into a JSON-compatible node, collecting its arrays in ``self.arrays``.

    ``fn`` and ``file`` only feed error messages (``save_tree: cannot save 'x.safetensors': ...``).
    """

    def __init__(self, fn: str, file: str) -> None:
        self.fn = fn
        self.file = file
        self.arrays: dict[str, np.ndarray] = {}
        self._keys_by_id: dict[int, str] = {}
        self._used = {"__metadata__"}  # reserved by the safetensors header
        self._active: set[int] = set()

    def _error(self, msg: str) -> CheckpointError:
        return CheckpointError(f"{self.fn}: cannot save {self.file!r}: {msg}")

    def _store(self, arr: np.ndarray, parts: tuple[str, ...], ref: Any) -> str:
        key = self._keys_by_id.get(id(ref))
        if key is not None:
            return key
        base = "/".join(parts) or "tensor"
        key, n = base, 1
        while key in self._used:  # paths can collide ({0: a, "0": b}); keep every key unique
            key = f"{base}~{n}"
            n += 1
        self._used.add(key)
        self._keys_by_id[id(ref)] = key
        self.arrays[key] = arr
        return key

    def encode(self, obj: Any, path: str = "", parts: tuple[str, ...] = ()) -> Any:
        if isinstance(obj, np.generic):  # before float: np.float64 is a float subclass
            d = self._check_np_dtype(obj.dtype, path)
            return {"numpy": [d.name, self.encode(obj.item(), path, parts)]}
        if obj is None:
            return None
        if isinstance(obj, bool):
            return bool(obj)
        if isinstance(obj, str):
            return str(obj)
        if isinstance(obj, int):
            v = int(obj)
            return v if -_MAX_SAFE_INT <= v <= _MAX_SAFE_INT else {"int": str(v)}
        if isinstance(obj, float):
            v = float(obj)
            if math.isfinite(v):
                return v
            return {"float": "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")}
        if isinstance(obj, Tensor):
            return {"tensor": self._store(tensor_to_numpy(obj), parts, obj)}
        if isinstance(obj, np.ndarray):
            self._check_np_dtype(obj.dtype, path)
            return {"ndarray": self._store(_contiguous(obj), parts, obj)}
        if isinstance(obj, (list, tuple, dict)):
            if id(obj) in self._active:
                raise self._error(f"the value {_where(path)} contains itself (a reference cycle)")
            self._active.add(id(obj))
            try:
                if isinstance(obj, dict):
                    return {"dict": [[self._encode_key(k, path), self.encode(v, _sub(path, k), (*parts, str(k)))]
                                     for k, v in obj.items()]}
                items = [self.encode(v, _sub(path, i), (*parts, str(i))) for i, v in enumerate(obj)]
                return {"tuple": items} if isinstance(obj, tuple) else items
            finally:
                self._active.discard(id(obj))
        raise self._error(f"the value {_where(path)} is a {type(obj).__name__}; expected {_ALLOWED}")

    def _encode_key(self, key: Any, path: str) -> Any:
        if not isinstance(key, _KEY_TYPES) or (isinstance(key, tuple) and not _plain_key(key)):
            raise self._error(f"the dict {_where(path)} has a key {key!r} of type {type(key).__name__}; "
                              "expected str, int, float, bool, None or a tuple of those")
        return self.encode(key, path)

    def _check_np_dtype(self, npd: np.dtype, path: str) -> _dt.DType:
        try:
            return _dt.from_numpy_dtype(npd)
        except EmberError:
            raise self._error(f"the NumPy value {_where(path)} has dtype {npd}; expected one of "
                              f"{', '.join(d.name for d in _dt.ALL)}") from None


def _plain_key(key: tuple) -> bool:
    return all(isinstance(k, _KEY_TYPES) and (not isinstance(k, tuple) or _plain_key(k)) for k in key)


class TreeDecoder:
    """Rebuilds a tree from its JSON node and the arrays read from the file."""

    def __init__(self, arrays: dict[str, np.ndarray], fn: str, file: str, to_tensor: Any) -> None:
        self.arrays = arrays
        self.fn = fn
        self.file = file
        self.to_tensor = to_tensor
        self._tensors: dict[str, Tensor] = {}  # one tensor per key, so shared tensors stay shared

    def _error(self, path: str, msg: str) -> CheckpointError:
        return CheckpointError(f"{self.fn}: corrupt ember tree in {self.file!r} {_where(path)}: {msg}")

    def decode(self, node: Any, path: str = "") -> Any:
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):
            return [self.decode(v, _sub(path, i)) for i, v in enumerate(node)]
        if not isinstance(node, dict) or len(node) != 1:
            raise self._error(path, f"expected a JSON value or a one-key tag object, got {_short(node)}")
        ((tag, body),) = node.items()
        if tag == "dict":
            return self._decode_dict(body, path)
        if tag == "tuple":
            if not isinstance(body, list):
                raise self._error(path, f"a 'tuple' tag holds a list, got {_short(body)}")
            return tuple(self.decode(v, _sub(path, i)) for i, v in enumerate(body))
        if tag in ("tensor", "ndarray"):
            if not isinstance(body, str) or body not in self.arrays:
                raise self._error(path, f"it references tensor {body!r}, which is not in the file")
            if tag == "ndarray":
                return self.arrays[body]
            if body not in self._tensors:
                self._tensors[body] = self.to_tensor(self.arrays[body])
            return self._tensors[body]
        if tag == "float" and body in _NONFINITE:
            return _NONFINITE[body]
        if tag == "int" and isinstance(body, str):
            try:
                return int(body)
            except ValueError:
                pass
        elif tag == "numpy" and isinstance(body, list) and len(body) == 2 and isinstance(body[0], str):
            try:
                return _dt.to_dtype(body[0]).np.type(self.decode(body[1], path))
            except (EmberError, TypeError, ValueError, OverflowError):
                pass
        raise self._error(path, f"unknown or malformed tag {_short(node)}")

    def _decode_dict(self, body: Any, path: str) -> dict:
        if not isinstance(body, list):
            raise self._error(path, f"a 'dict' tag holds a list of [key, value] pairs, got {_short(body)}")
        out = {}
        for item in body:
            if not isinstance(item, list) or len(item) != 2:
                raise self._error(path, f"a dict item must be a [key, value] pair, got {_short(item)}")
            key = self.decode(item[0], path)
            if not isinstance(key, _KEY_TYPES) or (isinstance(key, tuple) and not _plain_key(key)):
                raise self._error(path, f"a dict key must be a str, number, bool, None or tuple, got {_short(key)}")
            out[key] = self.decode(item[1], _sub(path, key))
        return out


def _short(x: Any) -> str:
    r = repr(x)
    return r if len(r) <= 80 else r[:77] + "..."
