"""Checkpoints: flat state dicts, nested trees, training checkpoints, atomic writes, bad files."""

import json
import math
import os
import pickle
import random
import struct

import numpy as np
import pytest
import safetensors.numpy

import ember
from ember.io import (
    CheckpointError,
    CheckpointNotFoundError,
    load,
    load_checkpoint,
    load_metadata,
    load_tree,
    save,
    save_checkpoint,
    save_tree,
)
from ember.io import checkpoint as ckpt

DTYPES = [ember.float32, ember.float64, ember.float16, ember.int8, ember.int32, ember.int64, ember.uint8,
          ember.bool_]
SHAPES = [(), (0,), (2, 0, 3), (5,), (2, 3, 4)]


def sample(dtype, shape, seed=0):
    rng = np.random.default_rng(seed)
    if dtype.is_bool:
        arr = rng.random(shape) < 0.5
    elif dtype.is_integer:
        info = np.iinfo(dtype.np)
        arr = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype.np)
    else:
        arr = rng.standard_normal(shape).astype(dtype.np)
        if arr.size >= 4:  # special values must survive bit for bit
            arr.flat[:4] = [np.inf, -np.inf, np.nan, -0.0]
    return ember.from_numpy(np.asarray(arr, dtype=dtype.np))


def raises(exc, *parts):
    """pytest.raises that also checks every part appears in the message."""
    class Ctx:
        def __enter__(self):
            self.cm = pytest.raises(exc)
            self.info = self.cm.__enter__()
            return self.info

        def __exit__(self, *args):
            out = self.cm.__exit__(*args)
            msg = str(self.info.value)
            for p in parts:
                assert str(p) in msg, f"{p!r} not in error message: {msg}"
            return out
    return Ctx()


def same_tensor(a, b):
    assert isinstance(b, ember.Tensor)
    assert a.dtype is b.dtype and a.shape == b.shape
    assert np.ascontiguousarray(a.numpy()).tobytes() == b.numpy().tobytes()


def assert_identical(a, b, path="root"):
    """Same structure, same Python types (tuple vs list, int vs bool vs float, key types), same bits."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, ember.Tensor):
        same_tensor(a, b)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), path
    elif isinstance(a, dict):
        assert [(type(k), k) for k in a] == [(type(k), k) for k in b], path
        for k in a:
            assert_identical(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{path}[{i}]")
    elif isinstance(a, (float, np.floating)):
        assert struct.pack("<d", a) == struct.pack("<d", b) or (math.isnan(a) and math.isnan(b)), path
    else:
        assert a == b, path


# ---------------------------------------------------------------------------------------------- flat
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_every_dtype_and_shape_round_trips(tmp_path, dtype):
    sd = {f"t{i}": sample(dtype, shape, seed=i) for i, shape in enumerate(SHAPES)}
    save(sd, tmp_path / "m.safetensors")
    out = load(tmp_path / "m.safetensors")
    assert list(out) == list(sd)
    for k in sd:
        same_tensor(sd[k], out[k])


def test_non_contiguous_tensors_are_saved_contiguously(tmp_path):
    base = ember.arange(24, dtype=ember.float32).reshape(2, 3, 4)
    sd = {"transposed": base.permute(2, 0, 1), "strided": base[:, ::2, 1::2], "flipped": base.flip(2),
          "expanded": ember.arange(3).reshape(3, 1).expand(3, 5), "zero_d_view": base[1, 2, 3]}
    assert not sd["transposed"].is_contiguous()
    save(sd, str(tmp_path / "v.safetensors"))
    out = load(str(tmp_path / "v.safetensors"))
    for k, t in sd.items():
        assert out[k].is_contiguous()
        assert out[k].shape == t.shape and out[k].dtype is t.dtype
        np.testing.assert_array_equal(out[k].numpy(), t.numpy())


def test_loaded_tensors_are_independent_writable_and_detached(tmp_path):
    f = tmp_path / "m.safetensors"
    w = ember.randn(3, 4, requires_grad=True)
    save({"w": w}, f)
    out = load(f)["w"]
    assert not out.requires_grad and out.device == ember.device("cpu")
    out.add_(1.0)  # writable
    save({"w": ember.zeros(3, 4)}, f)  # overwriting the file does not change what was loaded
    np.testing.assert_array_equal(out.numpy(), w.detach().numpy() + 1.0)


def test_key_order_and_user_metadata(tmp_path):
    f = tmp_path / "m.safetensors"
    sd = {"z.weight": ember.ones(2), "a.bias": ember.zeros(1), "m": ember.ones(1)}
    save(sd, f, metadata={"author": "me", "epoch": "3"})
    assert list(load(f)) == ["z.weight", "a.bias", "m"]
    assert load_metadata(f) == {"author": "me", "epoch": "3"}


def test_plain_safetensors_from_another_tool_loads(tmp_path):
    f = tmp_path / "other.safetensors"
    safetensors.numpy.save_file({"x": np.arange(6, dtype=np.int32).reshape(2, 3)}, str(f), metadata={"format": "np"})
    out = load(f)
    assert out["x"].dtype is ember.int32 and out["x"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert load_tree(f)["x"].shape == (2, 3)


def test_load_bad_device(tmp_path):
    f = tmp_path / "m.safetensors"
    save({"a": ember.ones(1)}, f)
    with pytest.raises(ember.DeviceError):
        load(f, device="tpu")


def test_save_validates_input_and_writes_nothing(tmp_path):
    f = tmp_path / "bad.safetensors"
    with raises(CheckpointError, "save", str(f), "key 3", "int", "must be str"):
        save({3: ember.ones(1)}, f)
    with raises(CheckpointError, "save", str(f), "'w'", "list", "expected an ember Tensor"):
        save({"ok": ember.ones(1), "w": [1.0, 2.0]}, f)
    with raises(CheckpointError, "save", str(f), "__metadata__", "reserved"):
        save({"__metadata__": ember.ones(1)}, f)
    with raises(CheckpointError, "save", str(f), "expected a dict", "list"):
        save([ember.ones(1)], f)
    with raises(CheckpointError, "save", str(f), "metadata", "int"):
        save({"a": ember.ones(1)}, f, metadata={"step": 3})
    with raises(CheckpointError, "save", "'ember.format'", "reserved"):
        save({"a": ember.ones(1)}, f, metadata={"ember.format": "x"})
    with raises(CheckpointError, "save", "path must be a str", "int"):
        save({"a": ember.ones(1)}, 3)
    assert os.listdir(tmp_path) == []


def test_save_to_missing_directory_or_onto_a_directory(tmp_path):
    with raises(CheckpointError, "save", "does not exist", "nope"):
        save({"a": ember.ones(1)}, tmp_path / "nope" / "m.safetensors")
    with raises(CheckpointError, "save", str(tmp_path), "directory"):
        save({"a": ember.ones(1)}, tmp_path)


# ---------------------------------------------------------------------------------------------- trees
def optimizer_like_state():
    shared = ember.randn(3)
    return {
        "state": {
            0: {"step": ember.tensor(7.0), "exp_avg": ember.randn(2, 3), "exp_avg_sq": ember.rand(2, 3)},
            1: {"step": ember.tensor(7.0), "exp_avg": shared, "exp_avg_sq": shared,
                "max_exp_avg_sq": ember.zeros(0, 2, dtype=ember.float64)},
            "0": {"note": "str key next to the int key 0"},
        },
        "param_groups": [
            {"lr": 0.1, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False,
             "maximize": False, "foreach": None, "capturable": False, "differentiable": False,
             "fused": None, "params": [0, 1], "nested": ((1, (2.5, [3])), []), "empty": {}, "empty_t": ()},
        ],
        "floats": [math.inf, -math.inf, math.nan, -0.0, 0.1, 1e-300, 5e-324, 1.7976931348623157e308, 1.0, 3],
        "bools_vs_ints": [True, 1, 1.0, False, 0, 0.0],
        "big_ints": [2 ** 53 + 1, -(2 ** 64), 10 ** 40],
        "strings": ["", "ünïcødé ✓", "a/b", "with \"quotes\" and \\ backslash", "null"],
        "keys": {(1, "a"): "tuple key", 2.5: "float key", None: "none key", True: "bool key", "a/b": ember.ones(1)},
        "numpy": [np.float32(0.1), np.int64(-3), np.bool_(True), np.float16(np.inf),
                  np.arange(4, dtype=np.int32).reshape(2, 2)],
        "uint8": ember.tensor([0, 255], dtype=ember.uint8),
    }


def test_nested_state_round_trips_exactly(tmp_path):
    f = tmp_path / "opt.safetensors"
    state = optimizer_like_state()
    save_tree(state, f)
    out = load_tree(f)
    assert_identical(state, out)
    # one tensor object stored twice comes back as one object
    assert out["state"][1]["exp_avg"] is out["state"][1]["exp_avg_sq"]
    assert out["state"][0]["exp_avg"] is not out["state"][1]["exp_avg"]


def test_tree_tensor_keys_are_readable_and_unique(tmp_path):
    f = tmp_path / "t.safetensors"
    save_tree({0: ember.ones(1), "0": ember.zeros(1), "__metadata__": ember.ones(2), "w": [ember.ones(3)]}, f)
    with open(f, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    assert set(header) - {"__metadata__"} == {"0", "0~1", "__metadata__~1", "w/0"}
    out = load_tree(f)
    assert out[0].tolist() == [1.0] and out["0"].tolist() == [0.0] and out["__metadata__"].shape == (2,)


def test_tree_top_level_values(tmp_path):
    f = tmp_path / "t.safetensors"
    for obj in (ember.arange(3), 3, None, [1, (2,)], "s", math.nan):
        save_tree(obj, f)
        assert_identical(obj, load_tree(f))


def test_tree_rejects_unsupported_values_with_path(tmp_path):
    f = tmp_path / "t.safetensors"
    with raises(CheckpointError, "save_tree", str(f), "['state'][0]['fn']", "function", "expected"):
        save_tree({"state": {0: {"fn": lambda x: x}}}, f)
    with raises(CheckpointError, "save_tree", str(f), "['g']", "key", "frozenset"):
        save_tree({"g": {frozenset([1]): 1}}, f)
    with raises(CheckpointError, "save_tree", "['a'][1]", "uint32"):
        save_tree({"a": [1, np.zeros(2, dtype=np.uint32)]}, f)
    with raises(CheckpointError, "save_tree", "['s']", "set"):
        save_tree({"s": {1, 2}}, f)
    cyclic = {"a": []}
    cyclic["a"].append(cyclic)
    with raises(CheckpointError, "save_tree", "cycle"):
        save_tree(cyclic, f)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------- atomic writes
def _half_writer(real):
    def writer(arrays, filename, metadata=None):
        data = safetensors.numpy.save(arrays, metadata=metadata)
        with open(filename, "wb") as fh:
            fh.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")
    return writer


@pytest.mark.parametrize("kind", ["save", "save_tree", "save_checkpoint"])
def test_failed_write_leaves_old_file_and_no_temp_files(tmp_path, monkeypatch, kind):
    f = tmp_path / "ck.safetensors"
    save({"old": ember.arange(5)}, f)
    before = f.read_bytes()
    monkeypatch.setattr(safetensors.numpy, "save_file", _half_writer(safetensors.numpy.save_file))
    new = {"new": ember.ones(1000)}
    call = {"save": lambda: save(new, f), "save_tree": lambda: save_tree(new, f),
            "save_checkpoint": lambda: save_checkpoint(f, model=TinyLinear(2, 2))}[kind]
    with raises(CheckpointError, kind, str(f), "No space left", "unchanged"):
        call()
    assert f.read_bytes() == before
    assert os.listdir(tmp_path) == ["ck.safetensors"]
    monkeypatch.undo()
    assert load(f)["old"].tolist() == [0, 1, 2, 3, 4]


def test_failed_fsync_or_interrupt_cleans_up(tmp_path, monkeypatch):
    f = tmp_path / "new.safetensors"

    def bad_fsync(fd):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(os, "fsync", bad_fsync)
    with raises(CheckpointError, "save", str(f), "Input/output error"):
        save({"a": ember.ones(2)}, f)
    assert os.listdir(tmp_path) == []  # no target created, no temp file left

    def interrupted(fd):
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save({"a": ember.ones(2)}, f)
    assert os.listdir(tmp_path) == []


def test_write_goes_through_a_temp_file_in_the_same_directory(tmp_path, monkeypatch):
    f = tmp_path / "m.safetensors"
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append((os.path.dirname(src), os.path.basename(src), dst))
        assert os.path.exists(src)
        real_replace(src, dst)
    monkeypatch.setattr(os, "replace", spy)
    save({"a": ember.ones(2)}, f)
    ((directory, name, dst),) = seen
    assert directory == str(tmp_path) and name != "m.safetensors" and name.endswith(".tmp")
    assert dst == str(f)


# ---------------------------------------------------------------------------------------------- bad files
def test_missing_file(tmp_path):
    f = tmp_path / "absent.safetensors"
    for fn, call in (("load", load), ("load_tree", load_tree), ("load_checkpoint", load_checkpoint),
                     ("load_metadata", load_metadata)):
        with raises(CheckpointNotFoundError, fn, "no such file", str(f)) as info:
            call(f)
        assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ember.EmberError)


def test_random_bytes(tmp_path):
    f = tmp_path / "noise.safetensors"
    f.write_bytes(np.random.default_rng(1).bytes(4096))
    with raises(CheckpointError, "load", str(f), "not a valid safetensors file"):
        load(f)


def test_truncated_file_names_file_and_tensor(tmp_path):
    f = tmp_path / "m.safetensors"
    save({"small": ember.ones(2), "big": ember.ones(1000)}, f)
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with raises(CheckpointError, "load", str(f), "truncated", "'big'"):
        load(f)
    f.write_bytes(data[:20])  # cut inside the header
    with raises(CheckpointError, "load_tree", str(f), "header length"):
        load_tree(f)
    f.write_bytes(data[:5])
    with raises(CheckpointError, "load", str(f), "only 5 bytes"):
        load(f)


def test_files_that_are_not_safetensors(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("these are not the tensors you are looking for\n" * 10)
    with raises(CheckpointError, "load", str(text), "not a valid safetensors file"):
        load(text)
    pkl = tmp_path / "model.pt"
    pkl.write_bytes(pickle.dumps({"w": [1.0] * 100}, protocol=4))
    with raises(CheckpointError, "load", str(pkl), "pickle"):
        load(pkl)
    npz = tmp_path / "arrays.npz"
    np.savez(npz, a=np.ones(100))
    with raises(CheckpointError, "load", str(npz), "zip"):
        load(npz)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with raises(CheckpointError, "load", str(empty), "only 0 bytes"):
        load(empty)
    with raises(CheckpointError, "load", str(tmp_path), "directory"):
        load(tmp_path)


def _raw_file(path, header, data=b""):
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


def test_malformed_headers(tmp_path):
    f = tmp_path / "m.safetensors"
    _raw_file(f, [1, 2])
    with raises(CheckpointError, "load", str(f), "not a JSON object"):
        load(f)
    f.write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{}")
    with raises(CheckpointError, "load", str(f), "not a JSON object"):
        load(f)
    _raw_file(f, {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 8)
    with raises(CheckpointError, "load", str(f), "'w'", "8 bytes", "span 4"):
        load(f)
    _raw_file(f, {"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4)
    with raises(CheckpointError, "load", str(f), "'w'", "malformed"):
        load(f)
    _raw_file(f, {"w": {"dtype": "F32"}})
    with raises(CheckpointError, "load", str(f), "'w'", "data_offsets"):
        load(f)
    _raw_file(f, {"__metadata__": {"a": 1}})
    with raises(CheckpointError, "load", str(f), "__metadata__"):
        load(f)
    safetensors.numpy.save_file({"u": np.zeros(2, dtype=np.uint32)}, str(f))
    with raises(CheckpointError, "load", str(f), "'u'", "'U32'", "F32"):
        load(f)


def test_corrupt_tree_metadata(tmp_path):
    f = tmp_path / "t.safetensors"
    cases = [("{not json", "not valid JSON"),
             ('{"dict": [["w", {"tensor": "missing"}]]}', "['w']"),
             ('{"dict": [["w", {"bogus": 1}]]}', "unknown or malformed tag"),
             ('{"a": 1, "b": 2}', "one-key tag"),
             ('{"dict": [[[1], 2]]}', "dict key"),
             ('{"dict": [["x", {"float": "huge"}]]}', "['x']")]
    for text, part in cases:
        safetensors.numpy.save_file({"t": np.ones(1, np.float32)}, str(f),
                                    metadata={"ember.format": "tree-1", "ember.tree": text})
        with raises(CheckpointError, "load_tree", str(f), part):
            load_tree(f)
    safetensors.numpy.save_file({}, str(f), metadata={"ember.format": "tree-1"})
    with raises(CheckpointError, "load_tree", str(f), "ember.tree"):
        load_tree(f)


def test_formats_and_versions(tmp_path):
    sd_file, ck_file, tree_file = tmp_path / "sd.st", tmp_path / "ck.st", tmp_path / "tree.st"
    save({"w": ember.ones(2)}, sd_file)
    save_checkpoint(ck_file, model=TinyLinear(2, 2), step=3)
    save_tree({"a": 1}, tree_file)
    with raises(CheckpointError, "load_checkpoint", str(sd_file), "plain state dict", "ember.load"):
        load_checkpoint(sd_file, model=TinyLinear(2, 2))
    with raises(CheckpointError, "load_checkpoint", str(tree_file), "nested tree"):
        load_checkpoint(tree_file)
    with raises(CheckpointError, "load", str(ck_file), "training checkpoint", "load_checkpoint"):
        load(ck_file)
    with raises(CheckpointError, "load", str(tree_file), "nested tree", "load_tree"):
        load(tree_file)
    assert load_tree(ck_file)["step"] == 3  # a checkpoint is a tree
    assert list(load_tree(sd_file)) == ["w"]  # so is a flat dict
    for fmt, fn in (("checkpoint-2", load_checkpoint), ("state_dict-7", load), ("tree-2", load_tree)):
        safetensors.numpy.save_file({}, str(sd_file), metadata={"ember.format": fmt, "ember.tree": "null"})
        with raises(CheckpointError, fn.__name__, str(sd_file), repr(fmt), "cannot read", "checkpoint-1"):
            fn(sd_file)


def test_loading_never_unpickles(tmp_path, monkeypatch):
    save({"w": ember.ones(3)}, tmp_path / "a.st")
    save_tree(optimizer_like_state(), tmp_path / "b.st")
    model, opt = TinyLinear(2, 3), None
    opt = TinySGD(model.parameters(), lr=0.1, momentum=0.9)
    save_checkpoint(tmp_path / "c.st", model=model, optimizer=opt, generators={"g": ember.Generator(seed=1)})

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle used while loading")
    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(np, "load", forbidden)
    load(tmp_path / "a.st")
    load_tree(tmp_path / "b.st")
    load_checkpoint(tmp_path / "c.st", model=model, optimizer=opt, generators={"g": ember.Generator()})


# ---------------------------------------------------------------------------------------------- checkpoints
class TinyLinear:
    """A stand-in for nn.Module: two ember parameters, state_dict/load_state_dict(strict)."""

    def __init__(self, n_in, n_out, generator=None):
        self.weight = (ember.randn(n_in, n_out, generator=generator) * 0.5).requires_grad_()
        self.bias = ember.zeros(n_out, requires_grad=True)
        self.strict_seen = None

    def parameters(self):
        return [self.weight, self.bias]

    def __call__(self, x):
        return x @ self.weight + self.bias

    def state_dict(self):
        return {"weight": self.weight.detach(), "bias": self.bias.detach()}

    def load_state_dict(self, sd, strict=True):
        self.strict_seen = strict
        if strict and set(sd) != {"weight", "bias"}:
            raise KeyError(f"keys {sorted(sd)}")
        with ember.no_grad():
            self.weight.copy_(sd["weight"])
            self.bias.copy_(sd["bias"])


class TinySGD:
    """A stand-in optimizer (SGD with momentum) whose state dict has PyTorch's layout."""

    def __init__(self, params, lr, momentum):
        self.params = list(params)
        self.param_groups = [{"lr": lr, "momentum": momentum, "dampening": 0.0, "nesterov": False,
                              "maximize": False, "foreach": None, "params": list(range(len(self.params)))}]
        self.state = {}

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        group = self.param_groups[0]
        with ember.no_grad():
            for i, p in enumerate(self.params):
                st = self.state.setdefault(i, {"step": ember.tensor(0.0), "momentum_buffer": ember.zeros(p.shape)})
                st["step"].add_(1.0)
                st["momentum_buffer"].mul_(group["momentum"]).add_(p.grad)
                p.sub_(st["momentum_buffer"] * group["lr"])

    def state_dict(self):
        return {"state": {i: dict(s) for i, s in self.state.items()},
                "param_groups": [dict(g) for g in self.param_groups]}

    def load_state_dict(self, sd):
        assert all(type(i) is int for i in sd["state"]), "int keys must come back as ints"
        self.state = {i: {k: v.clone() for k, v in s.items()} for i, s in sd["state"].items()}
        self.param_groups = [dict(g) for g in sd["param_groups"]]


class TinyStepLR:
    """A stand-in scheduler: halves the optimizer's lr every ``step_size`` steps."""

    def __init__(self, optimizer, step_size, gamma):
        self.optimizer, self.step_size, self.gamma = optimizer, step_size, gamma
        self.last_epoch = 0
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]

    def step(self):
        self.last_epoch += 1
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = base * self.gamma ** (self.last_epoch // self.step_size)

    def state_dict(self):
        return {"step_size": self.step_size, "gamma": self.gamma, "last_epoch": self.last_epoch,
                "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, sd):
        self.__dict__.update(sd)


def make_run(init_seed):
    model = TinyLinear(4, 2, generator=ember.Generator(seed=init_seed))
    opt = TinySGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = TinyStepLR(opt, step_size=3, gamma=0.5)
    return model, opt, sched


DATA_X = ember.randn(16, 4, generator=ember.Generator(seed=123))
DATA_Y = ember.randn(16, 2, generator=ember.Generator(seed=456))


def train_steps(model, opt, sched, loader_gen, n):
    """Every step uses all four sources of randomness a resume must restore."""
    for _ in range(n):
        idx = ember.randperm(16, generator=loader_gen)[:8]  # the data loader's shuffling generator
        x = DATA_X[idx] + 0.01 * ember.randn(8, 4)  # the default ember generator
        y = DATA_Y[idx] + ember.tensor(np.random.normal(0, 0.01, (8, 2)).astype(np.float32))  # NumPy's global
        scale = 1.0 + 0.1 * random.random()  # Python's random
        loss = (((model(x) - y) ** 2) * scale).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def seed_everything(s):
    ember.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


def snapshot(model, opt=None):
    out = [model.weight.detach().numpy().tobytes(), model.bias.detach().numpy().tobytes()]
    if opt is not None:
        out += [opt.state[i][k].numpy().tobytes() for i in sorted(opt.state) for k in ("step", "momentum_buffer")]
    return out


def test_resume_is_bit_identical(tmp_path):
    f = tmp_path / "ck.safetensors"
    seed_everything(0)
    model, opt, sched = make_run(init_seed=1)
    loader = ember.Generator(seed=2)
    train_steps(model, opt, sched, loader, 10)
    expected = snapshot(model, opt)
    expected_lr = opt.param_groups[0]["lr"]

    seed_everything(0)
    model, opt, sched = make_run(init_seed=1)
    loader = ember.Generator(seed=2)
    train_steps(model, opt, sched, loader, 5)
    save_checkpoint(f, model=model, optimizer=opt, scheduler=sched, step=5, epoch=1,
                    generators={"loader": loader}, extra={"best_loss": 0.25, "tags": ("a", "b")})
    halfway = snapshot(model, opt)

    def resume(rng=True):
        seed_everything(99)  # a new process: different RNG states and a differently initialised model
        model2, opt2, sched2 = make_run(init_seed=7)
        loader2 = ember.Generator(seed=8)
        info = load_checkpoint(f, model=model2, optimizer=opt2, scheduler=sched2, generators={"loader": loader2},
                               rng=rng)
        assert snapshot(model2, opt2) == halfway
        train_steps(model2, opt2, sched2, loader2, 5)
        return info, snapshot(model2, opt2), opt2.param_groups[0]["lr"]

    info, got, lr = resume()
    assert info == {"step": 5, "epoch": 1, "extra": {"best_loss": 0.25, "tags": ("a", "b")}}
    assert got == expected
    assert lr == expected_lr
    # the test can fail: without the RNG states the continuation differs
    _, got_without_rng, _ = resume(rng=False)
    assert got_without_rng[:2] != expected[:2]


def test_rng_states_are_restored(tmp_path):
    f = tmp_path / "ck.safetensors"
    gen = ember.Generator(seed=5)
    ember.randn(3), np.random.rand(2), random.random(), ember.rand(2, generator=gen), random.gauss(0, 1)
    save_checkpoint(f, generators={"g": gen})

    def draw():
        return (ember.randn(4).numpy().tobytes(), np.random.rand(3).tobytes(), np.random.standard_normal(),
                random.random(), random.gauss(0, 1), ember.randint(0, 100, (5,), generator=gen).tolist())
    first = draw()
    draw()  # move every stream further
    load_checkpoint(f, generators={"g": gen})
    assert draw() == first
    assert gen.initial_seed() == 5


def test_rng_false_saves_and_restores_nothing(tmp_path):
    f = tmp_path / "ck.safetensors"
    save_checkpoint(f, rng=False)
    assert "rng" not in load_tree(f)
    ember.manual_seed(3)
    a = ember.randn(2).tolist()
    ember.manual_seed(3)
    load_checkpoint(f)
    assert ember.randn(2).tolist() == a
    save_checkpoint(f)  # with rng, but load with rng=False
    ember.manual_seed(3)
    load_checkpoint(f, rng=False)
    assert ember.randn(2).tolist() == a


def test_strict_is_passed_to_the_model(tmp_path):
    f = tmp_path / "ck.safetensors"
    model = TinyLinear(2, 2)
    save_checkpoint(f, model=model)
    load_checkpoint(f, model=model, strict=False)
    assert model.strict_seen is False
    load_checkpoint(f, model=model)
    assert model.strict_seen is True


def test_missing_parts_raise_before_anything_changes(tmp_path):
    f = tmp_path / "ck.safetensors"
    save_checkpoint(f, model=TinyLinear(2, 2, generator=ember.Generator(seed=1)), generators={"a": ember.Generator()})
    model = TinyLinear(2, 2, generator=ember.Generator(seed=2))
    before = snapshot(model)
    opt = TinySGD(model.parameters(), 0.1, 0.9)
    with raises(CheckpointError, "load_checkpoint", str(f), "'optimizer'", "optimizer="):
        load_checkpoint(f, model=model, optimizer=opt)
    with raises(CheckpointError, "load_checkpoint", str(f), "'generators/loader'", "'a'"):
        load_checkpoint(f, model=model, generators={"loader": ember.Generator()})
    assert snapshot(model) == before
    with raises(CheckpointError, "load_checkpoint", "scheduler", "load_state_dict", "int"):
        load_checkpoint(f, scheduler=3)
    with raises(CheckpointError, "load_checkpoint", "generators['x']", "Generator", "str"):
        load_checkpoint(f, generators={"x": "not a generator"})


def test_malformed_rng_state_changes_nothing(tmp_path):
    f = tmp_path / "ck.safetensors"
    model = TinyLinear(2, 2, generator=ember.Generator(seed=1))
    tree = {"step": 0, "epoch": 0, "model": model.state_dict(),
            "rng": {"ember": ember.get_rng_state(), "numpy": {"bit_generator": "MT19937", "key": [1, 2]}}}
    ckpt._write_tree("test", str(f), tree, ckpt.CHECKPOINT_FORMAT)
    other = TinyLinear(2, 2, generator=ember.Generator(seed=2))
    before = snapshot(other)
    ember.manual_seed(11)
    with raises(CheckpointError, "load_checkpoint", str(f), "'rng/numpy'", "malformed"):
        load_checkpoint(f, model=other)
    assert snapshot(other) == before
    assert ember.get_rng_state() == ember.manual_seed(11).get_state()


def test_save_checkpoint_validates_before_writing(tmp_path):
    f = tmp_path / "ck.safetensors"
    save_checkpoint(f, step=1)
    before = f.read_bytes()
    with raises(CheckpointError, "save_checkpoint", str(f), "extra", "JSON-serializable", "Tensor"):
        save_checkpoint(f, extra={"t": ember.ones(1)})
    with raises(CheckpointError, "save_checkpoint", str(f), "extra", "set"):
        save_checkpoint(f, extra={1, 2})
    with raises(CheckpointError, "save_checkpoint", str(f), "step", "1.5"):
        save_checkpoint(f, step=1.5)
    with raises(CheckpointError, "save_checkpoint", str(f), "epoch", "True"):
        save_checkpoint(f, epoch=True)
    with raises(CheckpointError, "save_checkpoint", str(f), "optimizer", "state_dict", "list"):
        save_checkpoint(f, optimizer=[1])
    with raises(CheckpointError, "save_checkpoint", "generators['g']", "get_state", "int"):
        save_checkpoint(f, generators={"g": 1})
    with raises(CheckpointError, "save_checkpoint", "generator names", "int"):
        save_checkpoint(f, generators={1: ember.Generator()})
    assert f.read_bytes() == before
    assert os.listdir(tmp_path) == ["ck.safetensors"]


def test_checkpoint_holds_readable_tensor_keys(tmp_path):
    f = tmp_path / "ck.safetensors"
    model = TinyLinear(2, 3)
    opt = TinySGD(model.parameters(), 0.1, 0.9)
    model(ember.ones(1, 2)).sum().backward()
    opt.step()
    save_checkpoint(f, model=model, optimizer=opt, step=1)
    with open(f, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    assert {"model/weight", "model/bias", "optimizer/state/0/momentum_buffer",
            "optimizer/state/1/step"} <= set(header)
    assert header["__metadata__"]["ember.format"] == "checkpoint-1"
    tree = load_tree(f)
    assert tree["optimizer"]["param_groups"][0]["params"] == [0, 1]
    assert tree["rng"]["ember"] == json.loads(json.dumps(tree["rng"]["ember"]))  # JSON-able forms
