"""Saving and loading tensors: flat state dicts, nested trees and training checkpoints.

Everything is a safetensors file: tensors in the payload, everything else as JSON text in the
header's ``__metadata__``. Loading parses JSON and copies bytes; it never unpickles or executes
anything. Writes are atomic: a temporary file in the target's directory is written, fsynced and
then renamed over the target, so a crash or an error leaves any existing file untouched.

The header's ``ember.format`` says what a file holds:

* ``state_dict-1``: a flat ``{str: Tensor}`` dict (``save``/``load``); files without
  ``ember.format`` (written by other tools) are read as flat dicts too;
* ``tree-1``: any nested tree (``save_tree``/``load_tree``), see ``ember.io.tree``;
* ``checkpoint-1``: a training checkpoint (``save_checkpoint``/``load_checkpoint``), a tree
  ``{"step", "epoch", "model", "optimizer", "scheduler", "rng", "generators", "extra"}``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import random
import secrets
import struct
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .. import dtypes as _dt
from ..device import to_device
from ..ops.creation import from_numpy
from ..ops.random import Generator, get_rng_state, set_rng_state
from ..tensor import Tensor
from .tree import TREE_KEY, CheckpointError, CheckpointNotFoundError, TreeDecoder, TreeEncoder, tensor_to_numpy

FORMAT_KEY = "ember.format"
STATE_DICT_FORMAT = "state_dict-1"
TREE_FORMAT = "tree-1"
CHECKPOINT_FORMAT = "checkpoint-1"
_KEYS_KEY = "ember.keys"  # the saved key order of a flat state dict (safetensors sorts its header)
_KNOWN_FORMATS = (STATE_DICT_FORMAT, TREE_FORMAT, CHECKPOINT_FORMAT)
_DESCRIBE = {None: "a plain state dict (a safetensors file saved with ember.save or another tool)",
             STATE_DICT_FORMAT: "a plain state dict (saved with ember.save)",
             TREE_FORMAT: "a nested tree (saved with ember.io.save_tree)",
             CHECKPOINT_FORMAT: "a training checkpoint (saved with ember.io.save_checkpoint)"}

# safetensors dtype names of the dtypes Ember has; other names (BF16, U32, ...) cannot be loaded.
_ST_DTYPES = {"BOOL": _dt.bool_, "U8": _dt.uint8, "I8": _dt.int8, "I32": _dt.int32, "I64": _dt.int64,
              "F16": _dt.float16, "F32": _dt.float32, "F64": _dt.float64}
_COMPONENTS = ("model", "optimizer", "scheduler")


# ---------------------------------------------------------------------------------------------- helpers
def _safetensors() -> Any:
    """The safetensors modules, imported on first use so ``import ember`` works without them."""
    try:
        import safetensors
        import safetensors.numpy
    except ImportError:  # pragma: no cover - safetensors is a dependency
        raise CheckpointError("ember.io needs the 'safetensors' package: pip install safetensors") from None
    return safetensors


def _fspath(fn: str, path: Any) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(f"{fn}: path must be a str or os.PathLike, got {type(path).__name__}")
    file = os.fspath(path)
    if not isinstance(file, str):
        file = os.fsdecode(file)
    return file


def _to_tensor(arr: np.ndarray, device: Any) -> Tensor:
    if not (arr.flags.writeable and arr.flags.aligned and arr.flags.c_contiguous):
        arr = np.array(arr, copy=True, order="C")
    t = from_numpy(arr)
    return t if device.type == "cpu" else t.to(device)


def _check_format(fn: str, file: str, meta: dict[str, str], accepted: tuple, hint: str) -> str | None:
    fmt = meta.get(FORMAT_KEY)
    if fmt is not None and fmt not in _KNOWN_FORMATS:
        raise CheckpointError(f"{fn}: {file!r} has format {fmt!r}, which this version of ember cannot read "
                              f"(it reads {', '.join(_KNOWN_FORMATS)}); it was probably written by a newer ember")
    if fmt not in accepted:
        raise CheckpointError(f"{fn}: {file!r} is {_DESCRIBE[fmt]}, not {_DESCRIBE[accepted[0]]}; {hint}")
    return fmt


# ---------------------------------------------------------------------------------------------- writing
def write_atomic(path: str | os.PathLike, writer: Callable[[str], Any], *, fn: str = "write_atomic",
                 errors: tuple[type[BaseException], ...] = (OSError,)) -> None:
    """Write ``path`` atomically: ``writer(tmp)`` fills a temporary file in the same directory, which is
    fsynced and renamed over ``path``. On any failure the temporary file is removed and an existing file at
    ``path`` is unchanged; failures of the types in ``errors`` become a ``CheckpointError`` naming ``fn``."""
    file = os.fspath(path)
    if os.path.isdir(file):
        raise CheckpointError(f"{fn}: cannot write {file!r}: it is a directory; expected a file path")
    directory = os.path.dirname(os.path.abspath(file))
    if not os.path.isdir(directory):
        raise CheckpointError(f"{fn}: cannot write {file!r}: the directory {directory!r} does not exist")
    tmp = os.path.join(directory, f".{os.path.basename(file)}.{secrets.token_hex(6)}.tmp")
    try:
        # O_EXCL: never clobber another file; mode 0o666 lets the umask decide, as for a normal open().
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as e:
        raise CheckpointError(f"{fn}: cannot write {file!r}: creating a temporary file in {directory!r} "
                              f"failed: {e.strerror or e}") from e
    try:
        writer(tmp)
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.fsync(fd)  # the data must be on disk before the rename makes it the file
        finally:
            os.close(fd)
        os.replace(tmp, file)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, errors):
            raise CheckpointError(f"{fn}: writing {file!r} failed ({type(e).__name__}: {e}); "
                                  "an existing file at that path is unchanged") from e
        raise
    _fsync_dir(directory)


def _write(fn: str, file: str, arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write a safetensors file atomically."""
    st = _safetensors()
    write_atomic(file, lambda tmp: st.numpy.save_file(arrays, tmp, metadata=metadata), fn=fn,
                 errors=(OSError, st.SafetensorError))


def _fsync_dir(directory: str) -> None:
    """Make the rename itself durable (best effort: not every platform can fsync a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _user_metadata(fn: str, file: str, metadata: Any) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise CheckpointError(f"{fn}: cannot save {file!r}: metadata must be a dict of str -> str, "
                              f"got {type(metadata).__name__}")
    out = {}
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise CheckpointError(f"{fn}: cannot save {file!r}: metadata must map str -> str, got "
                                  f"{k!r} ({type(k).__name__}) -> {type(v).__name__}")
        if k.startswith("ember."):
            raise CheckpointError(f"{fn}: cannot save {file!r}: metadata key {k!r} uses the prefix 'ember.', "
                                  "which is reserved for ember's own entries")
        out[k] = v
    return out


# ---------------------------------------------------------------------------------------------- reading
def _read_header(fn: str, file: str) -> tuple[dict, int]:
    """Parse and check a safetensors header ourselves, so a bad file gets a precise message."""
    try:
        size = os.path.getsize(file)
        with open(file, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{fn}: {file!r} is not a safetensors file: it has only {size} bytes "
                                      "(a safetensors file starts with an 8-byte header length)")
            (n,) = struct.unpack("<Q", prefix)
            if n > size - 8:
                raise CheckpointError(
                    f"{fn}: {file!r} is not a valid safetensors file: its header length field says {n} bytes "
                    f"but the file has {size - 8} bytes after it (a truncated file or not a safetensors file"
                    f"{_guess_kind(prefix)})")
            raw = f.read(n)
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"{fn}: no such file: {file!r}") from None
    except IsADirectoryError:
        raise CheckpointError(f"{fn}: {file!r} is a directory; expected a safetensors file") from None
    except OSError as e:
        raise CheckpointError(f"{fn}: cannot read {file!r}: {e.strerror or e}") from e
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        header = None
    if not isinstance(header, dict):
        raise CheckpointError(f"{fn}: {file!r} is not a valid safetensors file: its header is not a JSON object "
                              f"(a corrupt file or not a safetensors file{_guess_kind(prefix)})")
    return header, size - 8 - n


def _guess_kind(prefix: bytes) -> str:
    if prefix.startswith(b"PK\x03\x04"):
        return "; it looks like a zip archive, e.g. a torch.save or .npz file, which ember does not load"
    if prefix[:1] == b"\x80" and 2 <= prefix[1] <= 5:
        return "; it looks like a pickle, which ember never loads"
    return ""


def _read(fn: str, path: Any) -> tuple[str, dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file: (path as str, arrays by key in file order, metadata)."""
    file = _fspath(fn, path)
    st = _safetensors()
    header, data_len = _read_header(fn, file)
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise CheckpointError(f"{fn}: corrupt safetensors file {file!r}: __metadata__ must map str -> str")
    for key, entry in header.items():
        _check_entry(fn, file, key, entry, data_len)
    try:
        with st.safe_open(file, framework="np") as f:
            arrays = {k: f.get_tensor(k) for k in header}
    except (st.SafetensorError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{fn}: corrupt safetensors file {file!r}: {e}") from e
    return file, arrays, meta


def _check_entry(fn: str, file: str, key: str, entry: Any, data_len: int) -> None:
    bad = f"{fn}: corrupt safetensors file {file!r}: the header entry for tensor {key!r}"
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise CheckpointError(f"{bad} must have dtype, shape and data_offsets, got {str(entry)[:80]}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in _ST_DTYPES:
        raise CheckpointError(f"{fn}: tensor {key!r} in {file!r} has dtype {dtype!r}, which ember cannot load; "
                              f"expected one of {', '.join(_ST_DTYPES)}")
    ok_shape = isinstance(shape, list) and all(type(s) is int and s >= 0 for s in shape)
    ok_offsets = (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                  and 0 <= offsets[0] <= offsets[1])
    if not (ok_shape and ok_offsets):
        raise CheckpointError(f"{bad} has a malformed shape {shape!r} or data_offsets {offsets!r}")
    nbytes = math.prod(shape) * _ST_DTYPES[dtype].itemsize
    if offsets[1] - offsets[0] != nbytes:
        raise CheckpointError(f"{bad} says shape {tuple(shape)} of {dtype} ({nbytes} bytes) but data_offsets "
                              f"{offsets} span {offsets[1] - offsets[0]} bytes")
    if offsets[1] > data_len:
        raise CheckpointError(f"{fn}: {file!r} is truncated: tensor {key!r} needs bytes {offsets[0]}..{offsets[1]} "
                              f"of the data section but the file holds only {data_len} bytes of data "
                              "(an interrupted write, copy or download?)")


def _flat(file: str, arrays: dict[str, np.ndarray], meta: dict[str, str], device: Any) -> dict[str, Tensor]:
    keys: list = list(arrays)
    with contextlib.suppress(ValueError, TypeError):
        saved = json.loads(meta.get(_KEYS_KEY, "null"))
        if isinstance(saved, list) and sorted(saved) == sorted(keys):
            keys = saved
    return {k: _to_tensor(arrays[k], device) for k in keys}


def _decode(fn: str, file: str, arrays: dict[str, np.ndarray], meta: dict[str, str], device: Any) -> Any:
    text = meta.get(TREE_KEY)
    if text is None:
        raise CheckpointError(f"{fn}: corrupt ember file {file!r}: its metadata has no {TREE_KEY!r} entry")
    try:
        node = json.loads(text)
        return TreeDecoder(arrays, fn, file, lambda a: _to_tensor(a, device)).decode(node)
    except (ValueError, RecursionError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{fn}: corrupt ember file {file!r}: the {TREE_KEY!r} entry is not valid JSON "
                              f"({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------------------------------------- flat
def save(state_dict: Mapping[str, Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> None:
    """Save a flat ``{name: Tensor}`` dict (e.g. ``model.state_dict()``) as a safetensors file, atomically.

    ``metadata`` is an optional ``{str: str}`` dict stored in the header (read it back with
    ``ember.io.load_metadata``). Non-contiguous tensors are saved contiguously.
    """
    file = _fspath("save", path)
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(f"save: cannot save {file!r}: expected a dict of str -> Tensor, got "
                              f"{type(state_dict).__name__} (nested state goes through ember.io.save_tree)")
    arrays = {}
    for k, v in state_dict.items():
        if not isinstance(k, str):
            raise CheckpointError(f"save: cannot save {file!r}: key {k!r} is a {type(k).__name__}; state dict "
                                  "keys must be str (ember.io.save_tree keeps int keys)")
        if k == "__metadata__":
            raise CheckpointError(f"save: cannot save {file!r}: the key '__metadata__' is reserved by safetensors")
        if not isinstance(v, Tensor):
            raise CheckpointError(f"save: cannot save {file!r}: the value for key {k!r} is a {type(v).__name__}; "
                                  "expected an ember Tensor (nested state goes through ember.io.save_tree)")
        arrays[k] = tensor_to_numpy(v)
    meta = _user_metadata("save", file, metadata)
    meta[FORMAT_KEY] = STATE_DICT_FORMAT
    meta[_KEYS_KEY] = json.dumps(list(arrays))
    _write("save", file, arrays, meta)


def load(path: str | os.PathLike, device: Any = "cpu") -> dict[str, Tensor]:
    """Load a flat state dict saved by ``save`` (or any safetensors file of Ember dtypes), in saved order."""
    dev = to_device(device)
    file, arrays, meta = _read("load", path)
    _check_format("load", file, meta, (STATE_DICT_FORMAT, None),
                  "load it with ember.io.load_checkpoint or ember.io.load_tree")
    return _flat(file, arrays, meta, dev)


def load_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The user metadata saved with ``save(..., metadata=...)`` (ember's own ``ember.*`` entries left out)."""
    _, _, meta = _read("load_metadata", path)
    return {k: v for k, v in meta.items() if not k.startswith("ember.")}


# ---------------------------------------------------------------------------------------------- trees
def _write_tree(fn: str, file: str, obj: Any, fmt: str) -> None:
    enc = TreeEncoder(fn, file)
    node = enc.encode(obj)
    meta = {FORMAT_KEY: fmt, TREE_KEY: json.dumps(node, allow_nan=False, separators=(",", ":"))}
    _write(fn, file, enc.arrays, meta)


def save_tree(obj: Any, path: str | os.PathLike) -> None:
    """Save a nested structure of tensors and plain values (e.g. an optimizer's state dict), atomically.

    Dicts (with str, int, float, bool, None or tuple keys), lists, tuples, None, bools, ints,
    floats (``inf``/``nan`` too), strings, ember Tensors and NumPy arrays/scalars come back
    exactly as they went in: same types, same key types, same order.
    """
    _write_tree("save_tree", _fspath("save_tree", path), obj, TREE_FORMAT)


def load_tree(path: str | os.PathLike, device: Any = "cpu") -> Any:
    """Load what ``save_tree`` saved. A checkpoint file gives its whole tree; a flat file its dict."""
    dev = to_device(device)
    file, arrays, meta = _read("load_tree", path)
    fmt = meta.get(FORMAT_KEY)
    if fmt in (None, STATE_DICT_FORMAT):
        return _flat(file, arrays, meta, dev)
    _check_format("load_tree", file, meta, (TREE_FORMAT, CHECKPOINT_FORMAT), "")
    return _decode("load_tree", file, arrays, meta, dev)


# ---------------------------------------------------------------------------------------------- RNG
def _rng_state() -> dict:
    """The default ember generator's, NumPy's global and Python's ``random`` states, as JSON-able dicts."""
    ns = np.random.get_state(legacy=False)
    version, internal, gauss_next = random.getstate()
    return {
        "ember": get_rng_state(),
        "numpy": {"bit_generator": ns["bit_generator"], "key": ns["state"]["key"].tolist(),
                  "pos": int(ns["state"]["pos"]), "has_gauss": int(ns["has_gauss"]), "gauss": float(ns["gauss"])},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def _numpy_state(s: dict) -> dict:
    return {"bit_generator": s["bit_generator"], "state": {"key": np.asarray(s["key"], dtype=np.uint32),
                                                           "pos": s["pos"]},
            "has_gauss": s["has_gauss"], "gauss": s["gauss"]}


def _python_state(s: dict) -> tuple:
    return (s["version"], tuple(s["internal"]), s["gauss_next"])


def _check_generator_state(state: Any) -> None:
    Generator(seed=0).set_state(state)  # on a scratch generator: raises on a malformed state


def _validated_restores(fn: str, file: str, rng: Any, gens: Mapping[str, Any], saved_gens: Any) -> list:
    """Check every RNG state on scratch objects first, so a bad file changes nothing; return the restores."""
    todo: list = []
    checks: list = []
    if rng is not None:
        if not isinstance(rng, dict):
            raise CheckpointError(f"{fn}: corrupt checkpoint {file!r}: key 'rng' should be a dict, got "
                                  f"{type(rng).__name__}")
        if "ember" in rng:
            checks.append(("rng/ember", lambda: _check_generator_state(rng["ember"])))
            todo.append(lambda: set_rng_state(rng["ember"]))
        if "numpy" in rng:
            checks.append(("rng/numpy", lambda: np.random.RandomState().set_state(_numpy_state(rng["numpy"]))))
            todo.append(lambda: np.random.set_state(_numpy_state(rng["numpy"])))
        if "python" in rng:
            checks.append(("rng/python", lambda: random.Random().setstate(_python_state(rng["python"]))))
            todo.append(lambda: random.setstate(_python_state(rng["python"])))
    for name, gen in gens.items():
        state = saved_gens[name]
        if isinstance(gen, Generator):
            checks.append((f"generators/{name}", lambda s=state: _check_generator_state(s)))
        todo.append(lambda g=gen, s=state: g.set_state(s))
    for key, check in checks:
        try:
            check()
        except (TypeError, ValueError, KeyError, IndexError, OverflowError) as e:
            raise CheckpointError(f"{fn}: corrupt checkpoint {file!r}: the RNG state under key {key!r} is "
                                  f"malformed ({type(e).__name__}: {e})") from None
    return todo


# ---------------------------------------------------------------------------------------------- checkpoints
def _check_step(fn: str, file: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise CheckpointError(f"{fn}: cannot save {file!r}: {name} must be an int, got {value!r}")


def _check_generators(fn: str, generators: Any, method: str) -> dict[str, Any]:
    if generators is None:
        return {}
    if not isinstance(generators, Mapping):
        raise CheckpointError(f"{fn}: generators must be a dict of name -> ember.Generator, got "
                              f"{type(generators).__name__}")
    for name, gen in generators.items():
        if not isinstance(name, str):
            raise CheckpointError(f"{fn}: generator names must be str, got {name!r} ({type(name).__name__})")
        if not callable(getattr(gen, method, None)):
            raise CheckpointError(f"{fn}: generators[{name!r}] must be an ember.Generator (something with "
                                  f"{method}()), got {type(gen).__name__}")
    return dict(generators)


def save_checkpoint(path: str | os.PathLike, *, model: Any = None, optimizer: Any = None, scheduler: Any = None,
                    step: int = 0, epoch: int = 0, rng: bool = True, generators: Mapping[str, Any] | None = None,
                    extra: Any = None) -> None:
    """Save everything needed to resume training bit-identically, in one atomic safetensors file.

    ``model``, ``optimizer`` and ``scheduler`` are anything with ``state_dict()``. With ``rng``
    the states of the default ember generator, NumPy's global generator and Python's ``random``
    are saved; ``generators={"name": gen}`` adds other ember Generators (a DataLoader's shuffling
    generator, say). ``extra`` is any JSON-serializable value of your own (it comes back with its
    tuples, int keys and floats intact).
    """
    fn = "save_checkpoint"
    file = _fspath(fn, path)
    _check_step(fn, file, "step", step)
    _check_step(fn, file, "epoch", epoch)
    gens = _check_generators(fn, generators, "get_state")
    if extra is not None:
        try:
            json.dumps(extra)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{fn}: cannot save {file!r}: extra must be JSON-serializable "
                                  f"(got {type(extra).__name__}): {e}") from None
    tree: dict[str, Any] = {"step": int(step), "epoch": int(epoch)}
    for name, obj in zip(_COMPONENTS, (model, optimizer, scheduler)):
        if obj is None:
            continue
        if not callable(getattr(obj, "state_dict", None)):
            raise CheckpointError(f"{fn}: cannot save {file!r}: {name} must have a state_dict() method, got "
                                  f"{type(obj).__name__}")
        tree[name] = obj.state_dict()
    if rng:
        tree["rng"] = _rng_state()
    if gens:
        tree["generators"] = {name: gen.get_state() for name, gen in gens.items()}
    if extra is not None:
        tree["extra"] = extra
    _write_tree(fn, file, tree, CHECKPOINT_FORMAT)


def _accepts_strict(method: Any) -> bool:
    try:
        params = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == "strict" or p.kind is p.VAR_KEYWORD for p in params)


def load_checkpoint(path: str | os.PathLike, *, model: Any = None, optimizer: Any = None, scheduler: Any = None,
                    generators: Mapping[str, Any] | None = None, strict: bool = True, rng: bool = True) -> dict:
    """Restore a checkpoint written by ``save_checkpoint`` into the given objects, in place.

    Each object passed must have been saved (else ``CheckpointError`` naming the missing key);
    ``strict`` goes to ``model.load_state_dict``. The RNG states are restored if they were saved
    (``rng=False`` leaves them alone), and so is every generator in ``generators``. The whole file
    is read and checked before anything is changed. Returns ``{"step", "epoch", "extra"}``;
    ``ember.io.load_tree(path)`` gives the raw tree.
    """
    fn = "load_checkpoint"
    objects = dict(zip(_COMPONENTS, (model, optimizer, scheduler)))
    for name, obj in objects.items():
        if obj is not None and not callable(getattr(obj, "load_state_dict", None)):
            raise CheckpointError(f"{fn}: {name} must have a load_state_dict() method, got {type(obj).__name__}")
    gens = _check_generators(fn, generators, "set_state")
    file, arrays, meta = _read(fn, path)
    _check_format(fn, file, meta, (CHECKPOINT_FORMAT,),
                  "load a state dict with ember.load(path) and model.load_state_dict(...)")
    tree = _decode(fn, file, arrays, meta, to_device("cpu"))
    if not isinstance(tree, dict):
        raise CheckpointError(f"{fn}: corrupt checkpoint {file!r}: expected a dict at the top level, "
                              f"got {type(tree).__name__}")
    held = ", ".join(map(str, tree))
    for key in ("step", "epoch"):
        if key not in tree:
            raise CheckpointError(f"{fn}: corrupt checkpoint {file!r}: the key {key!r} is missing (it holds: {held})")
    for name, obj in objects.items():
        if obj is not None and name not in tree:
            raise CheckpointError(f"{fn}: checkpoint {file!r} has no {name!r} state, but {name}= was given; "
                                  f"it was saved without {name}= (it holds: {held})")
    saved_gens = tree.get("generators") or {}
    for name in gens:
        if not isinstance(saved_gens, dict) or name not in saved_gens:
            have = ", ".join(map(repr, saved_gens)) if isinstance(saved_gens, dict) else "none"
            raise CheckpointError(f"{fn}: checkpoint {file!r} has no state for generator {name!r} "
                                  f"(key 'generators/{name}'); saved generators: {have or 'none'}")
    restores = _validated_restores(fn, file, tree.get("rng") if rng else None, gens, saved_gens)

    for name, obj in objects.items():
        if obj is None:
            continue
        if name == "model" and _accepts_strict(obj.load_state_dict):
            obj.load_state_dict(tree[name], strict=strict)
        else:
            obj.load_state_dict(tree[name])
    for restore in restores:
        restore()
    return {"step": tree["step"], "epoch": tree["epoch"], "extra": tree.get("extra")}
