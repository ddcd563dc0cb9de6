"""ember.data: datasets, samplers, DataLoader (order, determinism, prefetching, errors) and roc_auc."""

import gc
import threading
import time
import traceback
from collections import namedtuple

import numpy as np
import pytest

import ember
from ember.data import (
    BatchSampler,
    DataError,
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    Subset,
    TensorDataset,
    default_collate,
    default_convert,
    random_split,
    roc_auc,
)
from ember.errors import DTypeError, EmberError, EmberIndexError, ShapeError


def make_xy(n=50, d=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32), np.arange(n, dtype=np.int64)


def ids_of(loader):
    """The sample ids visited, batch by batch (datasets here carry their index as the 2nd field)."""
    return [b[1].numpy().tolist() for b in loader]


class Items(Dataset):
    """A per-item dataset (no batched getter) returning (features, index)."""

    def __init__(self, n=20, fail_at=None):
        self.x, _ = make_xy(n)
        self.fail_at = fail_at

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        if i == self.fail_at:
            raise KeyError(f"broken item {i}")
        return self.x[i], i


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "ember-data-prefetch" and t.is_alive()]


def wait_no_prefetch_threads(timeout=3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        gc.collect()
        if not prefetch_threads():
            return True
        time.sleep(0.02)
    return False


# ----------------------------------------------------------------------------------------- datasets
def test_tensor_dataset_items_and_batch():
    x, y = make_xy(10)
    ds = TensorDataset(ember.from_numpy(x), y)
    assert len(ds) == 10
    a, b = ds[3]
    np.testing.assert_array_equal(a.numpy(), x[3])
    assert b.dtype == ember.int64 and b.item() == 3
    np.testing.assert_array_equal(ds[-1][0].numpy(), x[-1])
    xb, yb = ds.__getitems__([4, 0, 9, -2])
    np.testing.assert_array_equal(xb.numpy(), x[[4, 0, 9, 8]])
    np.testing.assert_array_equal(yb.numpy(), [4, 0, 9, 8])
    # the batched getter gives exactly what collating the items gives
    ref = default_collate([ds[i] for i in [4, 0, 9]])
    got = ds.__getitems__([4, 0, 9])
    for r, g in zip(ref, got):
        assert r.dtype == g.dtype
        np.testing.assert_array_equal(r.numpy(), g.numpy())


def test_tensor_dataset_errors():
    with pytest.raises(ShapeError, match=r"TensorDataset: .*same size in dim 0.*\(4, 2\).*\(5,\)"):
        TensorDataset(ember.zeros(4, 2), ember.zeros(5))
    with pytest.raises(ShapeError, match=r"0-d"):
        TensorDataset(ember.tensor(1.0))
    with pytest.raises(TypeError, match=r"TensorDataset: argument 1 .*list"):
        TensorDataset(ember.zeros(3), [1, 2, 3])
    with pytest.raises(ValueError, match=r"at least one"):
        TensorDataset()
    ds = TensorDataset(ember.zeros(3))
    with pytest.raises(EmberIndexError, match=r"index 3 is out of range for a dataset of 3"):
        ds[3]
    with pytest.raises(EmberIndexError, match=r"index 5"):
        ds.__getitems__([0, 5])
    with pytest.raises(TypeError, match=r"index must be an int"):
        ds[1.5]


def test_subset_and_random_split():
    x, y = make_xy(10)
    ds = TensorDataset(x, y)
    sub = Subset(ds, [7, 2, 5])
    assert len(sub) == 3 and sub[1][1].item() == 2
    assert hasattr(sub, "__getitems__")  # the fast path survives wrapping
    np.testing.assert_array_equal(sub.__getitems__([2, 0])[1].numpy(), [5, 7])
    assert not hasattr(Subset(Items(5), [0]), "__getitems__")

    parts = random_split(ds, [3, 7], generator=ember.Generator(seed=1))
    assert [len(p) for p in parts] == [3, 7]
    assert sorted(parts[0].indices + parts[1].indices) == list(range(10))
    again = random_split(ds, [3, 7], generator=ember.Generator(seed=1))
    assert again[0].indices == parts[0].indices
    assert [len(p) for p in random_split(ds, [0.5, 0.3, 0.2])] == [5, 3, 2]
    assert [len(p) for p in random_split(TensorDataset(ember.zeros(11)), [0.5, 0.5])] == [6, 5]
    with pytest.raises(ValueError, match=r"random_split: the lengths \[3, 3\] sum to 6, but the dataset has 10"):
        random_split(ds, [3, 3])
    with pytest.raises(ValueError, match=r"non-negative ints"):
        random_split(ds, [-1, 11])


# ----------------------------------------------------------------------------------------- samplers
def test_sequential_and_random_sampler():
    data = list(range(10))
    assert list(SequentialSampler(data)) == data and len(SequentialSampler(data)) == 10
    perm = list(RandomSampler(data, generator=ember.Generator(seed=3)))
    assert sorted(perm) == data and perm != data
    assert perm == list(RandomSampler(data, generator=ember.Generator(seed=3)))
    # reference: the sampler is a NumPy PCG64 permutation from the generator's seed
    assert perm == np.random.Generator(np.random.PCG64(3)).permutation(10).tolist()
    many = list(RandomSampler(data, num_samples=25, generator=ember.Generator(seed=0)))
    assert len(many) == 25
    assert sorted(many[:10]) == data and sorted(many[10:20]) == data and len(set(many[20:])) == 5
    rep = list(RandomSampler(data, replacement=True, num_samples=200, generator=ember.Generator(seed=0)))
    assert len(rep) == 200 and set(rep) <= set(data) and len(set(rep)) < 200
    # without a generator, the order follows ember's default generator
    ember.manual_seed(5)
    a = list(RandomSampler(data))
    ember.manual_seed(5)
    assert list(RandomSampler(data)) == a
    with pytest.raises(ValueError, match=r"RandomSampler: num_samples must be an int >= 1, got 0"):
        RandomSampler(data, num_samples=0)
    with pytest.raises(TypeError, match=r"RandomSampler: replacement must be a bool"):
        RandomSampler(data, replacement=1)
    with pytest.raises(TypeError, match=r"ember.Generator"):
        RandomSampler(data, generator=np.random.default_rng(0))


def test_batch_sampler():
    bs = BatchSampler(SequentialSampler(range(10)), 3, drop_last=False)
    assert list(bs) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]] and len(bs) == 4
    bs = BatchSampler(SequentialSampler(range(10)), 3, drop_last=True)
    assert list(bs) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]] and len(bs) == 3
    assert list(BatchSampler(range(6), 3, False)) == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(ValueError, match=r"BatchSampler: batch_size must be an int >= 1, got 0"):
        BatchSampler(range(3), 0, False)


def test_batch_sampler_matches_torch():
    torch = pytest.importorskip("torch")
    for n, b, drop in [(10, 3, False), (10, 3, True), (9, 3, False), (1, 4, False), (1, 4, True)]:
        ours = BatchSampler(SequentialSampler(range(n)), b, drop)
        ref = torch.utils.data.BatchSampler(torch.utils.data.SequentialSampler(range(n)), b, drop)
        assert list(ours) == list(ref) and len(ours) == len(ref)


def torch_style_partition(n, r, rank, drop_last):
    """NumPy reference of PyTorch's DistributedSampler for shuffle=False."""
    if drop_last and n % r:
        per = -(-(n - r) // r)
    else:
        per = -(-n // r)
    idx = list(range(n))
    if not drop_last:
        idx = (idx * (per * r // max(n, 1) + 1))[:per * r]
    else:
        idx = idx[:per * r]
    return idx[rank:per * r:r]


@pytest.mark.parametrize("n,r", [(10, 3), (12, 4), (5, 8), (7, 2), (1, 3)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_distributed_sampler_partitions(n, r, drop_last):
    parts = [list(DistributedSampler(range(n), num_replicas=r, rank=k, shuffle=False, drop_last=drop_last))
             for k in range(r)]
    counts = {len(p) for p in parts}
    assert len(counts) == 1 and counts.pop() == len(DistributedSampler(range(n), r, 0, drop_last=drop_last))
    for k in range(r):
        assert parts[k] == torch_style_partition(n, r, k, drop_last)
    union = [i for p in parts for i in p]
    if not drop_last:
        assert set(union) == set(range(n))
    if n % r == 0:
        assert sorted(union) == list(range(n))  # disjoint and complete


def test_distributed_sampler_shuffle_epochs():
    n, r = 20, 4
    def epoch_parts(epoch, seed=0):
        out = []
        for k in range(r):
            s = DistributedSampler(range(n), num_replicas=r, rank=k, shuffle=True, seed=seed)
            s.set_epoch(epoch)
            out.append(list(s))
        return out
    e0, e1 = epoch_parts(0), epoch_parts(1)
    assert sorted(i for p in e0 for i in p) == list(range(n))  # ranks agree on one permutation
    assert sorted(i for p in e1 for i in p) == list(range(n))
    assert e0 != e1 and e0 == epoch_parts(0) and e0 != epoch_parts(0, seed=1)
    # the permutation is seeded by seed + epoch
    perm = np.random.Generator(np.random.PCG64(1)).permutation(n)
    assert e1[2] == perm[2::4].tolist()


def test_distributed_sampler_defaults_and_errors():
    s = DistributedSampler(range(7), shuffle=False)
    assert (s.num_replicas, s.rank) == (1, 0) and list(s) == list(range(7))
    with pytest.raises(ValueError, match=r"DistributedSampler: rank must be an int in \[0, 2\] "
                                         r"\(num_replicas=3\), got 3"):
        DistributedSampler(range(7), num_replicas=3, rank=3)
    with pytest.raises(ValueError, match=r"rank must be"):
        DistributedSampler(range(7), num_replicas=3, rank=-1)
    with pytest.raises(ValueError, match=r"num_replicas must be an int >= 1, got 0"):
        DistributedSampler(range(7), num_replicas=0, rank=0)
    with pytest.raises(TypeError, match=r"set_epoch: epoch must be an int"):
        s.set_epoch("1")


def test_distributed_sampler_matches_torch():
    torch = pytest.importorskip("torch")
    for n, r, drop in [(10, 3, False), (10, 3, True), (5, 8, False), (16, 4, False), (3, 2, True)]:
        for k in range(r):
            ours = DistributedSampler(range(n), num_replicas=r, rank=k, shuffle=False, drop_last=drop)
            ref = torch.utils.data.DistributedSampler(range(n), num_replicas=r, rank=k, shuffle=False, drop_last=drop)
            assert list(ours) == list(ref) and len(ours) == len(ref)


# ----------------------------------------------------------------------------------------- collate
def test_default_collate_structures():
    Pair = namedtuple("Pair", "a b")
    batch = [{"x": np.full((2,), i, np.float64), "n": i, "f": i * 0.5, "t": (ember.tensor([i, i]), True),
              "s": f"s{i}", "p": Pair(i, np.int32(i))} for i in range(3)]
    out = default_collate(batch)
    assert out["x"].dtype == ember.float64 and out["x"].shape == (3, 2)
    assert out["n"].dtype == ember.int64 and out["n"].tolist() == [0, 1, 2]
    assert out["f"].dtype == ember.float32 and out["f"].tolist() == [0.0, 0.5, 1.0]
    assert isinstance(out["t"], tuple) and out["t"][0].tolist() == [[0, 0], [1, 1], [2, 2]]
    assert out["t"][1].dtype == ember.bool_
    assert out["s"] == ["s0", "s1", "s2"]
    assert isinstance(out["p"], Pair) and out["p"].b.dtype == ember.int32
    assert isinstance(default_collate([[1, 2], [3, 4]]), list)


def test_default_collate_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    batch = [(rng.standard_normal((2, 3)).astype(np.float32), int(k), {"w": rng.standard_normal(4)})
             for k in range(5)]
    ours = default_collate(batch)
    ref = torch.utils.data.default_collate(batch)
    np.testing.assert_array_equal(ours[0].numpy(), ref[0].numpy())
    np.testing.assert_array_equal(ours[1].numpy(), ref[1].numpy())
    np.testing.assert_array_equal(ours[2]["w"].numpy(), ref[2]["w"].numpy())
    assert str(ref[2]["w"].dtype).endswith(ours[2]["w"].dtype.name)


def test_default_collate_errors():
    with pytest.raises(ShapeError, match=r"default_collate: .*element 0 has shape \(2,\) but element 1 "
                                         r"has shape \(3,\)"):
        default_collate([np.zeros(2), np.zeros(3)])
    with pytest.raises(DTypeError, match=r"same dtype"):
        default_collate([ember.zeros(2), ember.zeros(2, dtype=ember.int64)])
    with pytest.raises(TypeError, match=r"element 0 is a Tensor but element 1 is ndarray"):
        default_collate([ember.zeros(2), np.zeros(2)])
    with pytest.raises(ValueError, match=r"empty batch"):
        default_collate([])
    with pytest.raises(ValueError, match=r"same length"):
        default_collate([(1, 2), (1,)])
    with pytest.raises(ValueError, match=r"same keys"):
        default_collate([{"a": 1}, {"b": 1}])
    with pytest.raises(TypeError, match=r"found object"):
        default_collate([object(), object()])
    with pytest.raises(DTypeError, match=r"uint16"):
        default_collate([np.zeros(2, np.uint16)])


def test_default_convert():
    out = default_convert({"a": np.arange(3), "b": (np.float32(2), "x", 5)})
    assert isinstance(out["a"], ember.Tensor) and out["a"].dtype == ember.int64
    assert out["b"][0].dtype == ember.float32 and out["b"][1:] == ("x", 5)


# ----------------------------------------------------------------------------------------- DataLoader
def test_loader_sequential_batches_and_len():
    x, y = make_xy(10)
    for drop_last, sizes in [(False, [3, 3, 3, 1]), (True, [3, 3, 3])]:
        for prefetch in (0, 2):
            loader = DataLoader(TensorDataset(x, y), batch_size=3, drop_last=drop_last, prefetch=prefetch)
            batches = list(loader)
            assert len(loader) == len(sizes) == len(batches)
            assert [b[0].shape[0] for b in batches] == sizes
            np.testing.assert_array_equal(np.concatenate([b[0].numpy() for b in batches]), x[:sum(sizes)])
            assert batches[0][1].dtype == ember.int64


def test_loader_matches_torch_order():
    torch = pytest.importorskip("torch")
    x, y = make_xy(23)
    ours = DataLoader(TensorDataset(x, y), batch_size=5)
    ref = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
                                      batch_size=5)
    assert len(ours) == len(ref)
    for (a, b), (ra, rb) in zip(ours, ref):
        np.testing.assert_array_equal(a.numpy(), ra.numpy())
        np.testing.assert_array_equal(b.numpy(), rb.numpy())


def test_loader_shuffle_determinism():
    x, y = make_xy(40)
    ds = TensorDataset(x, y)
    a = DataLoader(ds, batch_size=8, shuffle=True, seed=123)
    b = DataLoader(ds, batch_size=8, shuffle=True, seed=123, prefetch=0)
    ea1, ea2 = ids_of(a), ids_of(a)
    eb1 = []
    for batch in b:
        ember.randn(100)  # random draws in the "model" do not change the order
        eb1.append(batch[1].numpy().tolist())
    eb2 = ids_of(b)
    assert ea1 == eb1 and ea2 == eb2
    assert ea1 != ea2  # a new order each epoch
    assert sorted(i for bt in ea1 for i in bt) == list(range(40))
    assert ids_of(DataLoader(ds, batch_size=8, shuffle=True, seed=124)) != ea1
    # an explicit generator is used as given
    g = ember.Generator(seed=123)
    assert ids_of(DataLoader(ds, batch_size=8, shuffle=True, generator=g)) == ea1
    # reference: epoch 1 is the first PCG64 permutation of the seed
    perm = np.random.Generator(np.random.PCG64(123)).permutation(40)
    assert [i for bt in ea1 for i in bt] == perm.tolist()


def test_loader_seed_from_default_generator():
    ds = TensorDataset(*make_xy(30))
    ember.manual_seed(7)
    a = DataLoader(ds, batch_size=4, shuffle=True)
    ember.manual_seed(7)
    b = DataLoader(ds, batch_size=4, shuffle=True)
    ember.randn(10)  # after construction, default draws do not matter
    assert ids_of(a) == ids_of(b)


def test_loader_state_dict_restores_order():
    ds = TensorDataset(*make_xy(30))
    a = DataLoader(ds, batch_size=4, shuffle=True, seed=1)
    ids_of(a)
    state = a.state_dict()
    e2, e3 = ids_of(a), ids_of(a)
    b = DataLoader(ds, batch_size=4, shuffle=True, seed=99)
    b.load_state_dict(state)
    assert ids_of(b) == e2 and ids_of(b) == e3
    with pytest.raises(ValueError, match=r"load_state_dict: expected a dict with a 'generator' entry"):
        b.load_state_dict({"gen": 1})


def test_loader_prefetch_equivalence_per_item_path():
    ds = Items(37)
    outs = []
    for prefetch in (0, 1, 3):
        loader = DataLoader(ds, batch_size=4, shuffle=True, seed=5, prefetch=prefetch)
        outs.append([(b[0].numpy().copy(), b[1].numpy().copy()) for b in loader])
    for other in outs[1:]:
        assert len(other) == len(outs[0])
        for (a0, a1), (b0, b1) in zip(outs[0], other):
            np.testing.assert_array_equal(a0, b0)
            np.testing.assert_array_equal(a1, b1)


def test_loader_fast_path_equals_item_path():
    x, y = make_xy(33)
    ds = TensorDataset(x, y)
    fast = DataLoader(ds, batch_size=5, shuffle=True, seed=2)
    slow = DataLoader(ds, batch_size=5, shuffle=True, seed=2, collate_fn=lambda b: default_collate(b))
    assert fast._fast and not slow._fast
    for (a, b), (c, d) in zip(fast, slow):
        np.testing.assert_array_equal(a.numpy(), c.numpy())
        np.testing.assert_array_equal(b.numpy(), d.numpy())
        assert a.dtype == c.dtype and b.dtype == d.dtype


def test_loader_custom_collate_and_no_batching():
    ds = Items(7)
    seen = []

    def collate(samples):
        seen.append(len(samples))
        return sum(i for _, i in samples)

    assert list(DataLoader(ds, batch_size=3, collate_fn=collate)) == [0 + 1 + 2, 3 + 4 + 5, 6]
    assert seen == [3, 3, 1]
    single = list(DataLoader(ds, batch_size=None))
    assert len(single) == 7 and single[2][1] == 2 and isinstance(single[2][0], ember.Tensor)
    custom = DataLoader(ds, batch_sampler=[[6, 0], [3]])
    assert ids_of(custom) == [[6, 0], [3]] and len(custom) == 2
    sampled = DataLoader(ds, batch_size=2, sampler=[5, 4, 3])
    assert ids_of(sampled) == [[5, 4], [3]]


@pytest.mark.parametrize("prefetch", [0, 2])
def test_loader_reraises_dataset_errors(prefetch):
    loader = DataLoader(Items(20, fail_at=9), batch_size=4, prefetch=prefetch)
    got = []
    with pytest.raises(KeyError, match=r"broken item 9") as info:
        for b in loader:
            got.append(b[1].numpy().tolist())
    assert got == [[0, 1, 2, 3], [4, 5, 6, 7]]
    text = "".join(traceback.format_exception(info.value))
    assert "__getitem__" in text and 'raise KeyError(f"broken item {i}")' in text
    if prefetch:
        assert "prefetch thread" in text
    assert wait_no_prefetch_threads()
    # the loader still works afterwards
    assert ids_of(DataLoader(Items(6), batch_size=4, prefetch=prefetch)) == [[0, 1, 2, 3], [4, 5]]


def test_loader_early_break_and_reiterate():
    class Slow(Items):
        def __getitem__(self, i):
            time.sleep(0.001)
            return super().__getitem__(i)

    loader = DataLoader(Slow(40), batch_size=2, shuffle=True, seed=0, prefetch=2)
    first = None
    for k, b in enumerate(loader):
        if k == 0:
            first = b[1].numpy().tolist()
            assert prefetch_threads(), "the loader should prefetch in a background thread"
        if k == 2:
            break
    assert wait_no_prefetch_threads(), "breaking out of the loop left the prefetch thread running"
    full = ids_of(loader)
    assert len(full) == 20 and sorted(i for b in full for i in b) == list(range(40))
    assert full[0] != first  # a new epoch, not the remainder of the interrupted one
    it = iter(loader)
    next(it)
    it.close()
    assert next(it, None) is None
    del it
    assert wait_no_prefetch_threads()


def test_loader_iterable_dataset():
    class Stream(IterableDataset):
        def __iter__(self):
            return iter([(float(i), i) for i in range(7)])

        def __len__(self):
            return 7

    batches = list(DataLoader(Stream(), batch_size=3))
    assert [b[1].tolist() for b in batches] == [[0, 1, 2], [3, 4, 5], [6]]
    assert batches[0][0].dtype == ember.float32
    assert len(DataLoader(Stream(), batch_size=3)) == 3 and len(DataLoader(Stream(), batch_size=3, drop_last=True)) == 2
    assert len(list(DataLoader(Stream(), batch_size=3, drop_last=True))) == 2
    with pytest.raises(ValueError, match=r"IterableDataset"):
        DataLoader(Stream(), shuffle=True)


def test_loader_argument_errors():
    ds = Items(5)
    with pytest.raises(ValueError, match=r"DataLoader: sampler is mutually exclusive with shuffle"):
        DataLoader(ds, sampler=[0, 1], shuffle=True)
    with pytest.raises(ValueError, match=r"batch_sampler is mutually exclusive"):
        DataLoader(ds, batch_size=2, batch_sampler=[[0]])
    with pytest.raises(ValueError, match=r"DataLoader: batch_size must be an int >= 1, got 0"):
        DataLoader(ds, batch_size=0)
    with pytest.raises(ValueError, match=r"DataLoader: prefetch must be an int >= 0, got -1"):
        DataLoader(ds, prefetch=-1)
    with pytest.raises(ValueError, match=r"either generator or seed"):
        DataLoader(ds, seed=1, generator=ember.Generator(seed=1))
    with pytest.raises(TypeError, match=r"DataLoader: dataset must define __getitem__ and __len__"):
        DataLoader(5)
    with pytest.raises(TypeError, match=r"collate_fn must be callable"):
        DataLoader(ds, collate_fn=3)
    with pytest.raises(ValueError, match=r"drop_last needs a batch_size"):
        DataLoader(ds, batch_size=None, drop_last=True)


def test_data_error_is_ember_error():
    assert issubclass(DataError, EmberError) and issubclass(DataError, ValueError)


# ----------------------------------------------------------------------------------------- roc_auc
def brute_auc(s, y):
    pos, neg = s[y == 1], s[y == 0]
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / (pos.size * neg.size)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_vs_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 300
    y = (rng.random(n) < 0.3).astype(np.int64)
    s = rng.integers(0, 12, size=n).astype(np.float32) + y  # many ties, some signal
    assert roc_auc(s, y) == pytest.approx(brute_auc(s, y), abs=1e-12)
    cont = rng.standard_normal(n)
    assert roc_auc(ember.from_numpy(cont), ember.from_numpy(y.astype(np.float32))) == pytest.approx(
        brute_auc(cont, y), abs=1e-12)
    assert roc_auc(np.ones(n), y) == 0.5
    assert roc_auc(y.astype(float), y) == 1.0 and roc_auc(-y.astype(float), y) == 0.0


def test_roc_auc_errors():
    with pytest.raises(ValueError, match=r"roc_auc: needs both classes, got 0 positives and 3 negatives"):
        roc_auc([0.1, 0.2, 0.3], [0, 0, 0])
    with pytest.raises(ValueError, match=r"roc_auc: labels must be 0 or 1, got values \[0, 2\]"):
        roc_auc([0.1, 0.2], [0, 2])
    with pytest.raises(ShapeError, match=r"same length"):
        roc_auc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match=r"NaN"):
        roc_auc([np.nan, 0.2], [0, 1])
