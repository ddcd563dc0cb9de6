"""ember.data.datasets: IDX/MNIST readers, the bundled Fashion-MNIST subset, CharDataset, SyntheticCTR,
MovieLens100K."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

import ember
from ember.data import DataError, DataLoader, TensorDataset, default_collate, roc_auc
from ember.data.datasets import MNIST, CharDataset, FashionMNIST, MovieLens100K, SyntheticCTR, bags_to_offsets, read_idx
from ember.data.datasets import mnist as mnist_mod
from ember.errors import EmberIndexError, ShapeError

NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def idx_bytes(array, code=0x08):
    """IDX encoding written independently of the reader: magic, big-endian dims, big-endian data."""
    dt = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    head = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return head + np.asarray(array).astype(dt).tobytes()


def write(path, payload, gz):
    path = Path(str(path) + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def make_mnist(root, n=12, seed=0, gz=True, split="train"):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    img_name, lab_name = NAMES[split]
    write(root / img_name, idx_bytes(images), gz)
    write(root / lab_name, idx_bytes(labels), gz)
    return images, labels


# ----------------------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("code,dtype", [(0x08, np.uint8), (0x09, np.int8), (0x0B, np.int16), (0x0C, np.int32),
                                        (0x0D, np.float32), (0x0E, np.float64)])
def test_read_idx_round_trip(tmp_path, gz, code, dtype):
    a = (np.arange(24).reshape(2, 3, 4) * (1 if code in (0x08, 0x09) else -7)).astype(dtype)
    if code == 0x08:
        a = np.abs(a).astype(dtype)
    path = write(tmp_path / "a.idx", idx_bytes(a, code), gz)
    got = read_idx(path, ndim=3)
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, a)


def test_read_idx_errors(tmp_path):
    good = idx_bytes(np.zeros((3, 2, 2), np.uint8))
    cases = {
        "magic.idx": (b"\x01" + good[1:], "bad IDX magic number"),
        "type.idx": (good[:2] + b"\x07" + good[3:], "bad IDX magic number 00000703"),
        "short.idx": (good[:3], "too short for an IDX header"),
        "hdr.idx": (good[:9], "truncated inside its header"),
        "trunc.idx": (good[:-1], r"truncated: the header announces shape \(3, 2, 2\)"),
        "long.idx": (good + b"\x00", "longer than its header says"),
    }
    for name, (payload, msg) in cases.items():
        p = write(tmp_path / name, payload, gz=False)
        with pytest.raises(DataError, match=msg) as info:
            read_idx(p)
        assert name in str(info.value)
    with pytest.raises(DataError, match=r"holds a 3-dimensional array; expected 1"):
        read_idx(write(tmp_path / "dims.idx", good, gz=False), ndim=1)
    bad_gz = tmp_path / "x.idx.gz"
    bad_gz.write_bytes(gzip.compress(good)[:-12])
    with pytest.raises(DataError, match=r"x\.idx\.gz is not a valid gzip file"):
        read_idx(bad_gz)
    with pytest.raises(FileNotFoundError, match=r"read_idx: no such file: .*nothere"):
        read_idx(tmp_path / "nothere")


# ----------------------------------------------------------------------------------------- MNIST
@pytest.mark.parametrize("gz", [True, False])
def test_mnist_from_root(tmp_path, gz):
    images, labels = make_mnist(tmp_path, n=12, gz=gz)
    ds = MNIST(root=tmp_path)
    assert len(ds) == 12 and ds.source == str(tmp_path)
    np.testing.assert_array_equal(ds.data, images)
    assert ds.targets.dtype == np.int64 and ds.targets.tolist() == labels.tolist()
    img, lab = ds[5]
    assert img.shape == (1, 28, 28) and img.dtype == ember.float32
    np.testing.assert_allclose(img.numpy()[0], images[5] / 255.0, rtol=1e-6)
    assert isinstance(lab, int) and lab == labels[5]
    x, y = ds.arrays()
    assert x.shape == (12, 1, 28, 28) and x.dtype == np.float32 and y.dtype == np.int64
    assert 0.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_array_equal(x[5], img.numpy())
    # the batched getter equals collated items, bit for bit
    ref = default_collate([ds[i] for i in [3, 0, 11]])
    got = ds.__getitems__([3, 0, 11])
    np.testing.assert_array_equal(ref[0].numpy(), got[0])
    np.testing.assert_array_equal(ref[1].numpy(), got[1])
    batches = list(DataLoader(ds, batch_size=5))
    assert [b[0].shape for b in batches] == [(5, 1, 28, 28), (5, 1, 28, 28), (2, 1, 28, 28)]
    assert batches[0][1].dtype == ember.int64
    with pytest.raises(EmberIndexError, match=r"MNIST: index 12 is out of range"):
        ds[12]


def test_mnist_transforms_and_layouts(tmp_path):
    make_mnist(tmp_path / "MNIST" / "raw", n=4, split="test")
    ds = MNIST(root=tmp_path, train=False, transform=lambda t: t * 2, target_transform=lambda y: -1)
    assert ds.source == str(tmp_path / "MNIST" / "raw")
    img, lab = ds[0]
    assert lab == -1
    np.testing.assert_allclose(img.numpy(), 2 * ds.data[:1].astype(np.float64) / 255.0, rtol=1e-6)
    assert not hasattr(ds, "__getitems__")  # per-item transforms: no batched fast path
    xb, yb = next(iter(DataLoader(ds, batch_size=4)))
    assert yb.tolist() == [-1] * 4
    np.testing.assert_allclose(xb.numpy(), 2 * ds.data[:, None].astype(np.float64) / 255.0, rtol=1e-6)
    fm = FashionMNIST(root=tmp_path / "MNIST" / "raw", train=False)
    assert fm.classes[0] == "T-shirt/top" and len(fm) == 4


def test_mnist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"MNIST: .* lacks train-images-idx3-ubyte\[.gz\], "
                                                r"train-labels-idx1-ubyte\[.gz\]"):
        MNIST(root=tmp_path)
    make_mnist(tmp_path, n=3)
    with pytest.raises(FileNotFoundError, match=r"lacks t10k-images"):
        MNIST(root=tmp_path, train=False)
    with pytest.raises(FileNotFoundError, match=r"MNIST: no copy of the train split found.*Pass root="):
        MNIST()
    with pytest.raises(DataError, match=r"download=True is not supported.*never downloads.*/usr/share/datasets"):
        FashionMNIST(download=True)
    with pytest.raises(TypeError, match=r"train must be a bool"):
        MNIST(root=tmp_path, train="yes")
    # labels that do not match the images
    write(tmp_path / NAMES["train"][1], idx_bytes(np.zeros(4, np.uint8)), gz=True)
    with pytest.raises(DataError, match=r"has 4 labels but .* has 3 images"):
        MNIST(root=tmp_path)
    write(tmp_path / NAMES["train"][1], idx_bytes(np.full(3, 10, np.uint8)), gz=True)
    with pytest.raises(DataError, match=r"labels outside 0..9"):
        MNIST(root=tmp_path)
    write(tmp_path / NAMES["train"][0], idx_bytes(np.zeros((3, 14, 14), np.uint8)), gz=True)
    with pytest.raises(DataError, match=r"shape \(14, 14\); expected uint8 images of shape \(28, 28\)"):
        MNIST(root=tmp_path)
    # a corrupt file found by the lookup is reported with its name
    write(tmp_path / NAMES["train"][0], idx_bytes(np.zeros((3, 28, 28), np.uint8))[:-5], gz=True)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz is truncated"):
        MNIST(root=tmp_path)


def test_bundled_fashion_subset(monkeypatch, tmp_path):
    monkeypatch.setattr(FashionMNIST, "debian_dir", tmp_path / "absent")
    counts = {True: 600, False: 100}
    for train in (True, False):
        ds = FashionMNIST(train=train)
        assert ds.source == "bundled subset"
        assert ds.data.shape == (10 * counts[train], 28, 28) and ds.data.dtype == np.uint8
        assert np.bincount(ds.targets, minlength=10).tolist() == [counts[train]] * 10
        assert ds.data.mean() > 30  # real images, not blank
    lic = (mnist_mod.BUNDLED_FASHION_DIR / "LICENSE").read_text()
    assert "Copyright (c) 2017 Zalando SE" in lic and "Permission is hereby granted" in lic
    size = sum(p.stat().st_size for p in mnist_mod.BUNDLED_FASHION_DIR.iterdir())
    assert size < 5e6


def test_bundled_subset_is_part_of_debian_copy(monkeypatch, tmp_path):
    if not mnist_mod.DEBIAN_FASHION_DIR.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    full = FashionMNIST(train=False)
    assert full.source == str(mnist_mod.DEBIAN_FASHION_DIR) and len(full) == 10000
    monkeypatch.setattr(FashionMNIST, "debian_dir", tmp_path / "absent")
    sub = FashionMNIST(train=False)
    rows = {(bytes(img), int(lab)) for img, lab in zip(full.data.reshape(len(full), -1), full.targets)}
    assert all((bytes(img), int(lab)) in rows for img, lab in zip(sub.data.reshape(len(sub), -1), sub.targets))


# ----------------------------------------------------------------------------------------- CharDataset
def test_char_dataset_windows_and_vocab():
    text = "hello ember, hello world!"
    ds = CharDataset(text, block_size=5)
    chars = sorted(set(text))
    assert ds.vocab_size == len(chars) and [ds.itos[i] for i in range(ds.vocab_size)] == chars
    ids = np.array([chars.index(c) for c in text])
    assert len(ds) == len(text) - 5
    for i in (0, 7, len(ds) - 1):
        x, y = ds[i]
        assert x.dtype == ember.int64 and x.shape == (5,)
        np.testing.assert_array_equal(x.numpy(), ids[i:i + 5])
        np.testing.assert_array_equal(y.numpy(), ids[i + 1:i + 6])
    xb, yb = ds.__getitems__([3, 0, len(ds) - 1])
    ref = default_collate([ds[3], ds[0], ds[len(ds) - 1]])
    np.testing.assert_array_equal(xb.numpy(), ref[0].numpy())
    np.testing.assert_array_equal(yb.numpy(), ref[1].numpy())
    assert ds.decode(ds.encode("hello")) == "hello"
    assert ds.decode(ember.tensor(ds.encode("world"))) == "world"
    with pytest.raises(ValueError, match=r"CharDataset.encode: character 'z' is not in the vocabulary"):
        ds.encode("z")
    with pytest.raises(ValueError, match=r"CharDataset.decode: ids must be ints in"):
        ds.decode([ds.vocab_size])
    x, y = next(iter(DataLoader(ds, batch_size=4, shuffle=True, seed=0)))
    assert x.shape == (4, 5) and (x.numpy()[:, 1:] == y.numpy()[:, :-1]).all()


def test_char_dataset_files_and_bytes(tmp_path):
    text = "naïve café — ünïcode\n" * 3
    path = tmp_path / "input.txt"
    path.write_text(text, encoding="utf-8")
    for src in (path, str(path)):
        ds = CharDataset(src, block_size=8)
        assert ds.path == path and ds.decode(ds.__getitems__([0])[0].numpy()[0]) == text[:8]
    b = CharDataset(path, block_size=4, level="byte")
    raw = text.encode("utf-8")
    assert b.vocab_size == 256 and len(b) == len(raw) - 4
    np.testing.assert_array_equal(b[2][0].numpy(), list(raw[2:6]))
    assert b.decode(b.encode(text)) == text and b.itos[ord("a")] == b"a"
    with pytest.raises(FileNotFoundError, match=r"CharDataset: no such file: .*missing.txt"):
        CharDataset(str(tmp_path / "missing.txt"), 4)
    with pytest.raises(FileNotFoundError, match=r"no such file"):
        CharDataset("missing.txt", 4)
    with pytest.raises(DataError, match=r"has 3 characters, fewer than block_size \+ 1 = 4"):
        CharDataset("abc", 3)
    with pytest.raises(ValueError, match=r"block_size must be an int >= 1, got 0"):
        CharDataset("abcdef", 0)
    with pytest.raises(ValueError, match=r"level must be 'char' or 'byte', got 'word'"):
        CharDataset("abcdef", 2, level="word")
    (tmp_path / "bad.bin").write_bytes(b"\xff\xfe\xfa" * 10)
    with pytest.raises(DataError, match=r"not valid UTF-8"):
        CharDataset(tmp_path / "bad.bin", 4)
    assert len(CharDataset(tmp_path / "bad.bin", 4, level="byte")) == 26


# ----------------------------------------------------------------------------------------- SyntheticCTR
def test_ctr_shapes_determinism_and_prefix():
    a = SyntheticCTR(3000, vocab_sizes=5000, seed=3)
    b = SyntheticCTR(3000, vocab_sizes=5000, seed=3)
    c = SyntheticCTR(3000, vocab_sizes=5000, seed=4)
    for name in ("sparse", "dense", "labels", "logits"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.sparse, c.sparse)
    longer = SyntheticCTR(20000, vocab_sizes=5000, seed=3)  # spans two generation chunks
    np.testing.assert_array_equal(longer.sparse[:3000], a.sparse)
    np.testing.assert_array_equal(longer.labels[:3000], a.labels)
    assert a.sparse.shape == (3000, 26) and a.sparse.dtype == np.int64
    assert a.dense.shape == (3000, 13) and a.dense.dtype == np.float32 and (a.dense >= 0).all()
    assert set(np.unique(a.labels)) == {0.0, 1.0}
    assert (a.sparse >= 0).all() and (a.sparse < 5000).all()
    ids, dense, label = a[10]
    assert ids.shape == (26,) and ids.dtype == ember.int64 and dense.dtype == ember.float32
    assert label.shape == () and label.dtype == ember.float32
    got = a.__getitems__([10, 2, 2999])
    ref = default_collate([a[10], a[2], a[2999]])
    for g, r in zip(got, ref):
        assert g.dtype == r.dtype
        np.testing.assert_array_equal(g.numpy(), r.numpy())
    sizes = list(range(100, 2700, 100))
    v = SyntheticCTR(500, vocab_sizes=sizes, seed=0)
    assert (v.sparse < np.array(sizes)).all() and v.vocab_sizes == sizes


def test_ctr_power_law_ids():
    ds = SyntheticCTR(20000, vocab_sizes=10_000, zipf_a=1.2, seed=0)
    for f in (0, 13, 25):
        counts = np.bincount(ds.sparse[:, f], minlength=10_000)
        top = np.sort(counts)[::-1]
        # head-heavy: the top id alone takes ~10-20%, the top 1% of ids over half of the mass
        assert 0.05 < top[0] / counts.sum() < 0.3
        assert top[:100].sum() / counts.sum() > 0.5
        assert set(np.argsort(counts)[::-1][:3]) != {0, 1, 2}  # frequent ids are scattered
    flat = SyntheticCTR(20000, vocab_sizes=1000, zipf_a=0.0, seed=0)
    c = np.bincount(flat.sparse[:, 0], minlength=1000)
    assert c.max() / c.mean() < 2.0  # zipf_a=0: uniform


def test_ctr_label_model_and_learnability():
    ds = SyntheticCTR(30000, vocab_sizes=10_000, seed=0)
    rate = ds.labels.mean()
    assert 0.2 < rate < 0.3
    bayes = roc_auc(ds.logits, ds.labels)
    assert 0.75 < bayes < 0.85
    # A model fit on the data alone learns most of the signal: smoothed per-id click rates of every field
    # (computed out of fold on the training half) plus the dense features, combined by least squares.
    def rates(rows, f, k=20):
        y = ds.labels[rows]
        clicks = np.bincount(ds.sparse[rows, f], weights=y, minlength=10_000)
        seen = np.bincount(ds.sparse[rows, f], minlength=10_000)
        return (clicks + k * y.mean()) / (seen + k)

    def features(rows, stat_rows):
        cols = [rates(stat_rows, f)[ds.sparse[rows, f]] for f in range(ds.num_fields)]
        return np.column_stack(cols + [ds.dense[rows], np.ones(len(rows))])

    tr, te = np.arange(20000), np.arange(20000, 30000)
    a, b = tr[:10000], tr[10000:]
    w = np.linalg.lstsq(np.vstack([features(a, b), features(b, a)]),
                        np.concatenate([ds.labels[a], ds.labels[b]]), rcond=None)[0]
    learned = roc_auc(features(te, tr) @ w, ds.labels[te])
    assert 0.7 < learned <= roc_auc(ds.logits[te], ds.labels[te]) + 0.01
    uninformative = [f for f in range(26) if f not in ds.informative_fields]
    no_dense = SyntheticCTR(30000, vocab_sizes=10_000, seed=0, num_dense=0)
    assert len(uninformative) == 13 and 0.7 < roc_auc(no_dense.logits, no_dense.labels) < 0.9


def test_ctr_multi_hot():
    ds = SyntheticCTR(2000, vocab_sizes=1000, bag_size=4, seed=1)
    assert ds.sparse.shape == (2000, 26, 4) and ds.mask.shape == (2000, 26, 4)
    lengths = ds.mask.sum(-1)
    assert lengths.min() == 1 and lengths.max() == 4
    assert (ds.sparse[ds.mask == 0] == 0).all()
    # masks are prefixes: real ids first, then padding
    assert (np.diff(ds.mask, axis=-1) <= 0).all()
    ids, mask, dense, _ = ds[3]
    assert ids.shape == (26, 4) and mask.dtype == ember.float32 and dense.shape == (13,)
    assert 0.74 < roc_auc(ds.logits, ds.labels) < 0.86
    batch = next(iter(DataLoader(ds, batch_size=8)))
    flat, offsets = bags_to_offsets(batch[0][:, 5], batch[1][:, 5])
    ref_ids, ref_off = [], []
    for row_ids, row_mask in zip(ds.sparse[:8, 5], ds.mask[:8, 5]):
        ref_off.append(len(ref_ids))
        ref_ids += row_ids[row_mask > 0].tolist()
    assert flat.tolist() == ref_ids and offsets.tolist() == ref_off and flat.dtype == ember.int64
    with pytest.raises(ShapeError, match=r"bags_to_offsets: ids and mask must have the same shape"):
        bags_to_offsets(np.zeros((2, 3)), np.zeros((2, 4)))


def test_ctr_errors():
    with pytest.raises(ValueError, match=r"SyntheticCTR: vocab_sizes has 2 entries but num_fields is 26"):
        SyntheticCTR(10, vocab_sizes=[5, 5])
    with pytest.raises(ValueError, match=r"SyntheticCTR: num_samples must be an int >= 0, got -1"):
        SyntheticCTR(-1)
    with pytest.raises(ValueError, match=r"zipf_a must be a number in"):
        SyntheticCTR(10, zipf_a=-1.0)
    with pytest.raises(TypeError, match=r"vocab_sizes must be an int or a list"):
        SyntheticCTR(10, vocab_sizes="100")


def test_ctr_trains_through_tensor_dataset_loader():
    ds = SyntheticCTR(1000, vocab_sizes=100, seed=0)
    loader = DataLoader(ds, batch_size=256, shuffle=True, seed=0)
    total = 0
    for ids, dense, label in loader:
        assert ids.shape[1:] == (26,) and dense.shape[1:] == (13,) and label.ndim == 1
        total += label.shape[0]
    assert total == 1000 and len(loader) == 4
    td = TensorDataset(ds.sparse, ds.dense, ds.labels)
    assert len(td) == 1000


# ----------------------------------------------------------------------------------------- MovieLens
def test_movielens_missing_root_message(tmp_path):
    assert not MovieLens100K.is_available(root=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps recbole"):
        MovieLens100K(root=tmp_path)


def test_movielens_small_file(tmp_path):
    (tmp_path / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "10\t7\t3\t100\n3\t7\t5\t101\n10\t2\t1\t102\n")
    ds = MovieLens100K(root=tmp_path)
    assert (ds.num_users, ds.num_items, len(ds)) == (2, 2, 3)
    assert ds.user_ids.tolist() == [3, 10] and ds.item_ids.tolist() == [2, 7]
    u, i, r = ds[0]
    assert (u.item(), i.item(), r.item()) == (1, 1, 3.0) and u.dtype == ember.int64 and r.dtype == ember.float32
    ub, ib, rb = ds.__getitems__([2, 1])
    assert ub.tolist() == [1, 0] and ib.tolist() == [0, 1] and rb.tolist() == [1.0, 5.0]
    (tmp_path / "ml-100k.inter").write_text("user:token\titem:token\n1\t2\n")
    with pytest.raises(DataError, match=r"expected \['user_id', 'item_id', 'rating'\]"):
        MovieLens100K(root=tmp_path)


def test_movielens_from_recbole():
    if not MovieLens100K.is_available():
        pytest.skip("recbole (which carries ml-100k) is not installed: pip install --no-deps recbole")
    ds = MovieLens100K()
    assert (len(ds), ds.num_users, ds.num_items) == (100_000, 943, 1682)
    assert ds.users.min() == 0 and ds.users.max() == 942 and ds.items.max() == 1681
    assert set(np.unique(ds.ratings).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    with open(ds.path) as f:
        f.readline()
        first = [int(v) for v in f.readline().split("\t")[:3]]
    u, i, r = ds[0]
    assert ds.user_ids[u.item()] == first[0] and ds.item_ids[i.item()] == first[1] and r.item() == first[2]
