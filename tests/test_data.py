"""Tests for raynas.data: loaders on tiny files in the real on-disk formats, and Batches."""

from __future__ import annotations

import gzip
import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raynas import data as D
from raynas.data import Batches, DatasetError, DatasetInfo, Split, Splits, load_dataset

FMNIST_REAL = Path(D.FASHION_MNIST_DEFAULT_ROOT)
FMNIST_STEMS = D._FMNIST_FILES


# ---------------------------------------------------------------------------------------------
# writers of the real formats


def write_idx(path: Path, arr: np.ndarray, *, magic: int | None = None, gz: bool = True) -> Path:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    if magic is None:
        magic = 2051 if arr.ndim == 3 else 2049
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    raw = header + arr.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)
    return path


def label_images(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """uint8 images whose every pixel encodes the label (to check images stay with their labels)."""
    return np.broadcast_to((labels.astype(np.int64) * 7 % 256).astype(np.uint8).reshape(-1, *[1] * len(shape)),
                           (len(labels), *shape)).copy()


def make_fmnist(root: Path, n_train=60, n_test=20, *, gz_train=True, gz_test=False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    tr_y = np.arange(n_train) % 10
    te_y = np.arange(n_test) % 10
    write_idx(root / "train-images-idx3-ubyte", label_images(tr_y, (28, 28)), gz=gz_train)
    write_idx(root / "train-labels-idx1-ubyte", tr_y, gz=gz_train)
    write_idx(root / "t10k-images-idx3-ubyte", label_images(te_y, (28, 28)), gz=gz_test)
    write_idx(root / "t10k-labels-idx1-ubyte", te_y, gz=gz_test)
    return root


def dump(path: Path, obj, protocol=2) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def make_cifar10(parent: Path, per_batch=20, n_test=20) -> Path:
    d = parent / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for i in range(1, 6):
        y = (np.arange(per_batch) + i) % 10
        dump(d / f"data_batch_{i}", {b"batch_label": b"training batch", b"labels": y.tolist(),
                                     b"data": label_images(y, (3 * 32 * 32,)), b"filenames": [b"x"] * per_batch})
    y = np.arange(n_test) % 10
    dump(d / "test_batch", {b"labels": y.tolist(), b"data": label_images(y, (3 * 32 * 32,))})
    dump(d / "batches.meta", {b"label_names": [b"c%d" % i for i in range(10)]})
    return d


def make_cifar100(parent: Path, n_train=200, n_test=200) -> Path:
    d = parent / "cifar-100-python"
    d.mkdir(parents=True)
    for name, n in (("train", n_train), ("test", n_test)):
        fine = np.arange(n) % 100
        dump(d / name, {b"filenames": [b"x"] * n, b"fine_labels": fine.tolist(),
                        b"coarse_labels": (fine // 5).tolist(), b"data": label_images(fine, (3 * 32 * 32,))},
             protocol=pickle.HIGHEST_PROTOCOL)
    dump(d / "meta", {b"fine_label_names": [b"f"] * 100})
    return d


def make_imagenet16(d: Path, per_batch=30) -> Path:
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    kept = 0
    for i in range(1, 11):
        y = rng.integers(1, 1001, per_batch)
        y[:3] = [1, 120, 121]  # both ends of the kept range, and the first dropped label
        kept += int((y <= 120).sum())
        dump(d / f"train_data_batch_{i}", {"data": label_images(y - 1, (3 * 16 * 16,)), "labels": y.tolist(),
                                            "mean": np.zeros(768)}, protocol=4)
    y = np.concatenate([np.repeat(np.arange(1, 121), 2), np.arange(121, 161)])  # 240 kept + 40 dropped
    dump(d / "val_data", {"data": label_images(y - 1, (3 * 16 * 16,)), "labels": y.tolist()}, protocol=4)
    return kept


def decoded_labels(split: Split, info: DatasetInfo) -> np.ndarray:
    """Invert label_images + normalisation: label*7 % 256 from channel 0's top-left pixel."""
    raw = split.images[:, 0, 0, 0] * info.std[0] + info.mean[0]
    return np.rint(raw.numpy() * 255).astype(np.int64)


def check_split_common(s: Splits, info_size: int, channels: int, num_classes: int):
    assert s.info.input_size == info_size and s.info.in_channels == channels and s.info.num_classes == num_classes
    for split in (s.train, s.valid, s.test):
        assert split.images.dtype == torch.float32 and split.labels.dtype == torch.int64
        assert split.images.shape[1:] == (channels, info_size, info_size)
        assert len(split) == split.images.shape[0] == split.labels.shape[0]
        if len(split):
            assert 0 <= int(split.labels.min()) and int(split.labels.max()) < num_classes


def one_line(e: BaseException) -> str:
    msg = str(e)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------------------------------------
# registry


def test_registry_and_unknown_name():
    assert D.dataset_names() == sorted(["cifar10", "cifar100", "digits", "fashion-mnist", "imagenet16-120"])
    with pytest.raises(ValueError) as ei:
        load_dataset("mnist-nope")
    msg = one_line(ei.value)
    assert "unknown dataset 'mnist-nope'" in msg
    for name in D.dataset_names():
        assert name in msg
    # a bad name is a usage error like any bad data input: one line, exit 2 from the CLI
    assert isinstance(ei.value, DatasetError)


def test_register_dataset_decorator():
    @D.register_dataset("_tiny_test")
    def _tiny(root=None, **options):
        x = torch.zeros(2, 1, 2, 2)
        y = torch.zeros(2, dtype=torch.int64)
        info = DatasetInfo("_tiny_test", 1, 1, 2, (0.0,), (1.0,), 0, False)
        return Splits(info, Split(x, y), Split(x, y), Split(x, y))

    try:
        assert "_tiny_test" in D.dataset_names()
        assert len(load_dataset("_tiny_test").train) == 2
    finally:
        del D.DATASETS["_tiny_test"]


# ---------------------------------------------------------------------------------------------
# digits


def test_digits_splits_stratified_and_deterministic():
    s = load_dataset("digits")
    check_split_common(s, 8, 1, 10)
    sizes = s.sizes()
    assert sum(sizes.values()) == 1797
    assert sizes == {"train": 1078, "valid": 359, "test": 360}
    for split in (s.train, s.valid, s.test):
        counts = torch.bincount(split.labels, minlength=10)
        assert (counts > 0).all()
        # stratified: each class's share within a split matches its share overall (+-1 image)
        assert counts.max() - counts.min() <= 8
    assert s.info.pad == 1 and s.info.flip is False
    # normalised: roughly zero mean, unit std
    allx = torch.cat([s.train.images, s.valid.images, s.test.images])
    assert abs(allx.mean().item()) < 0.01 and abs(allx.std().item() - 1) < 0.01
    fp = s.fingerprint()
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert load_dataset("digits").fingerprint() == fp
    assert load_dataset("digits", split_seed=1).fingerprint() != fp
    # the three splits partition the 1,797 images (as a multiset: digits has exact duplicates)
    from sklearn.datasets import load_digits

    def rows(t):
        return sorted(tuple(r) for r in np.rint(t.reshape(len(t), -1).numpy() * 1000).astype(int).tolist())

    raw = torch.from_numpy(load_digits().data.astype(np.float32) / 16.0)
    raw = (raw - s.info.mean[0]) / s.info.std[0]
    assert rows(allx) == rows(raw)


def test_digits_subsets():
    s = load_dataset("digits", train_size=100, valid_size=50, test_size=30)
    assert s.sizes() == {"train": 100, "valid": 50, "test": 30}
    assert (torch.bincount(s.train.labels, minlength=10) == 10).all()
    full = load_dataset("digits")
    # the subset comes from the canonical train split
    full_rows = {tuple(r.flatten().tolist()) for r in full.train.images}
    assert all(tuple(r.flatten().tolist()) in full_rows for r in s.train.images)
    with pytest.raises(ValueError, match="train_size"):
        load_dataset("digits", train_size=5000)
    with pytest.raises(ValueError, match="valid_size"):
        load_dataset("digits", valid_size=0)


def test_stratified_take_exact_sizes():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 1001)
    for k in (0, 1, 10, 500, 1001):
        chosen, rest = D._stratified_take(labels, k, np.random.default_rng(1))
        assert len(chosen) == k and len(rest) == 1001 - k
        assert np.array_equal(np.sort(np.concatenate([chosen, rest])), np.arange(1001))
        counts = np.bincount(labels, minlength=7)
        got = np.bincount(labels[chosen], minlength=7)
        assert np.all(np.abs(got - counts * k / 1001) < 1)


# ---------------------------------------------------------------------------------------------
# fashion-mnist


@pytest.mark.parametrize("gz_train,gz_test", [(True, False), (False, True), (True, True), (False, False)])
def test_fashion_mnist_tiny_files(tmp_path, gz_train, gz_test):
    root = make_fmnist(tmp_path / "fm", gz_train=gz_train, gz_test=gz_test)
    s = load_dataset("fashion-mnist", root=root, holdout=10)
    check_split_common(s, 28, 1, 10)
    assert s.sizes() == {"train": 50, "valid": 10, "test": 20}
    assert (torch.bincount(s.valid.labels, minlength=10) == 1).all()  # stratified hold-out
    assert s.info.pad == 4 and s.info.flip is True
    for split in (s.train, s.valid, s.test):
        assert np.array_equal(decoded_labels(split, s.info), split.labels.numpy() * 7 % 256)
    # str root and os.PathLike both work; deterministic
    assert load_dataset("fashion_mnist", root=str(root), holdout=10).fingerprint() == s.fingerprint()


def test_fashion_mnist_16_variant(tmp_path):
    root = make_fmnist(tmp_path / "fm")
    s = load_dataset("fashion-mnist", root=root, resolution=16, holdout=20, train_size=20)
    check_split_common(s, 16, 1, 10)
    assert s.sizes() == {"train": 20, "valid": 20, "test": 20}
    assert (torch.bincount(s.train.labels, minlength=10) == 2).all()
    assert s.info.pad == 2 and s.info.flip is True
    # pad 28->32 with zeros, 2x2 average pool: the outer ring pools only padding -> raw 0
    raw = s.test.images * s.info.std[0] + s.info.mean[0]
    val = torch.from_numpy(s.test.labels.numpy() * 7 % 256).float() / 255
    assert torch.allclose(raw[:, 0, 0, :], torch.zeros(20, 16), atol=1e-5)
    assert torch.allclose(raw[:, 0, :, 15], torch.zeros(20, 16), atol=1e-5)
    assert torch.allclose(raw[:, 0, 5, 5], val, atol=1e-5)
    assert torch.allclose(raw[:, 0, 15, :], torch.zeros(20, 16), atol=1e-5)
    assert torch.allclose(raw[:, 0, 1:15, 1:15], val.view(20, 1, 1).expand(20, 14, 14), atol=1e-5)
    with pytest.raises(ValueError, match="resolution"):
        load_dataset("fashion-mnist", root=root, resolution=32)


def test_fashion_mnist_missing_dir(tmp_path):
    with pytest.raises(DatasetError) as ei:
        load_dataset("fashion-mnist", root=tmp_path / "nope")
    msg = one_line(ei.value)
    assert str(tmp_path / "nope") in msg and "does not exist" in msg
    for stem in FMNIST_STEMS:
        assert stem + ".gz" in msg
    assert "dataset-fashion-mnist" in msg


def test_fashion_mnist_missing_file(tmp_path):
    root = make_fmnist(tmp_path / "fm")
    (root / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError) as ei:
        load_dataset("fashion-mnist", root=root, holdout=10)
    msg = one_line(ei.value)
    assert f"{root} has no t10k-labels-idx1-ubyte[.gz]" in msg
    for stem in FMNIST_STEMS:
        assert stem + ".gz" in msg


@pytest.mark.parametrize("damage", ["truncated", "wrong-magic", "bad-gzip", "short-header", "count-mismatch", "label-range"])
def test_fashion_mnist_malformed(tmp_path, damage):
    root = make_fmnist(tmp_path / "fm", gz_train=True, gz_test=False)
    target = root / "t10k-images-idx3-ubyte"
    if damage == "truncated":
        target.write_bytes(target.read_bytes()[:-100])
    elif damage == "wrong-magic":
        write_idx(target, np.zeros((20, 28, 28)), magic=2049, gz=False)
    elif damage == "short-header":
        target.write_bytes(b"\x00\x00\x08")
    elif damage == "bad-gzip":
        target = root / "train-images-idx3-ubyte.gz"
        target.write_bytes(target.read_bytes()[:50])
    elif damage == "count-mismatch":
        write_idx(target, np.zeros((19, 28, 28)), gz=False)
    elif damage == "label-range":
        target = root / "t10k-labels-idx1-ubyte"
        write_idx(target, np.full(20, 10), gz=False)
    with pytest.raises(DatasetError) as ei:
        load_dataset("fashion-mnist", root=root, holdout=10)
    msg = one_line(ei.value)
    assert target.name in msg
    if damage == "wrong-magic":
        assert "magic number 2049, expected 2051" in msg
    if damage == "truncated":
        assert "header says 20x28x28" in msg


def test_fashion_mnist_bad_options(tmp_path):
    root = make_fmnist(tmp_path / "fm")
    with pytest.raises(ValueError, match="holdout"):
        load_dataset("fashion-mnist", root=root)  # default 10,000 > 60 tiny images
    with pytest.raises(ValueError, match="train_size"):
        load_dataset("fashion-mnist", root=root, holdout=10, train_size=51)


@pytest.mark.skipif(not (FMNIST_REAL / "train-images-idx3-ubyte.gz").exists()
                    and not (FMNIST_REAL / "train-images-idx3-ubyte").exists(),
                    reason=f"{FMNIST_REAL} absent (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_real_package():
    s = load_dataset("fashion-mnist")
    check_split_common(s, 28, 1, 10)
    assert s.sizes() == {"train": 50_000, "valid": 10_000, "test": 10_000}
    assert (torch.bincount(s.valid.labels, minlength=10) == 1000).all()
    assert abs(s.train.images.mean().item()) < 0.01 and abs(s.train.images.std().item() - 1) < 0.01
    s16 = load_dataset("fashion-mnist", resolution=16, train_size=6000)
    check_split_common(s16, 16, 1, 10)
    assert s16.sizes() == {"train": 6000, "valid": 10_000, "test": 10_000}
    assert torch.equal(s16.valid.labels, s.valid.labels)  # same hold-out whatever the resolution


# ---------------------------------------------------------------------------------------------
# CIFAR


@pytest.mark.parametrize("point_at_folder", [False, True])
def test_cifar10_tiny(tmp_path, point_at_folder):
    folder = make_cifar10(tmp_path)
    s = load_dataset("cifar10", root=folder if point_at_folder else tmp_path)
    check_split_common(s, 32, 3, 10)
    assert s.sizes() == {"train": 50, "valid": 50, "test": 20}
    assert (torch.bincount(s.train.labels, minlength=10) == 5).all()
    assert (torch.bincount(s.valid.labels, minlength=10) == 5).all()
    assert s.info.pad == 4 and s.info.flip
    assert s.info.mean == pytest.approx((125.3 / 255, 123.0 / 255, 113.9 / 255))
    for split in (s.train, s.valid, s.test):
        assert np.array_equal(decoded_labels(split, s.info), split.labels.numpy() * 7 % 256)
    # train and valid halves are disjoint and together the 100 train images
    s2 = load_dataset("cifar10", root=tmp_path, train_size=10, valid_size=20, test_size=10)
    assert s2.sizes() == {"train": 10, "valid": 20, "test": 10}


def test_cifar10_errors(tmp_path):
    with pytest.raises(DatasetError) as ei:
        load_dataset("cifar10")
    assert "no default location" in one_line(ei.value)
    with pytest.raises(DatasetError) as ei:
        load_dataset("cifar10", root=tmp_path / "nope")
    assert "does not exist" in one_line(ei.value) and "data_batch_1" in str(ei.value)
    folder = make_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetError) as ei:
        load_dataset("cifar10", root=tmp_path)
    msg = one_line(ei.value)
    assert f"{folder} has no data_batch_3" in msg and "test_batch" in msg
    dump(folder / "data_batch_3", {b"labels": [0, 1], b"data": np.zeros((2, 100), np.uint8)})
    with pytest.raises(DatasetError, match=r"data_batch_3 is malformed: 'data' is uint8 \(2, 100\)"):
        load_dataset("cifar10", root=tmp_path)
    dump(folder / "data_batch_3", {b"labels": [0, 11], b"data": np.zeros((2, 3072), np.uint8)})
    with pytest.raises(DatasetError, match="labels span 0..11"):
        load_dataset("cifar10", root=tmp_path)
    (folder / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="not a readable pickle"):
        load_dataset("cifar10", root=tmp_path)


def test_pickle_loading_refuses_code(tmp_path):
    folder = make_cifar10(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    dump(folder / "test_batch", {b"data": Evil(), b"labels": []})
    with pytest.raises(DatasetError, match="refusing to unpickle"):
        load_dataset("cifar10", root=tmp_path)
    assert not marker.exists()


def test_cifar100_tiny(tmp_path):
    make_cifar100(tmp_path)
    s = load_dataset("cifar100", root=tmp_path)
    check_split_common(s, 32, 3, 100)
    assert s.sizes() == {"train": 200, "valid": 100, "test": 100}
    # the test set's 2 images per class: one in x-valid, one in x-test
    assert (torch.bincount(s.valid.labels, minlength=100) == 1).all()
    assert (torch.bincount(s.test.labels, minlength=100) == 1).all()
    for split in (s.train, s.valid, s.test):
        assert np.array_equal(decoded_labels(split, s.info), split.labels.numpy() * 7 % 256)
    assert load_dataset("cifar100", root=tmp_path / "cifar-100-python").fingerprint() == s.fingerprint()
    with pytest.raises(DatasetError, match="has no test"):
        (tmp_path / "cifar-100-python" / "test").unlink()
        load_dataset("cifar100", root=tmp_path)


# ---------------------------------------------------------------------------------------------
# ImageNet16-120


def test_imagenet16_120_tiny(tmp_path):
    kept = make_imagenet16(tmp_path / "ImageNet16")
    s = load_dataset("imagenet16-120", root=tmp_path)  # parent of ImageNet16/
    check_split_common(s, 16, 3, 120)
    assert s.sizes() == {"train": kept, "valid": 120, "test": 120}
    assert int(s.train.labels.min()) == 0 and int(s.train.labels.max()) == 119
    assert (torch.bincount(s.valid.labels, minlength=120) == 1).all()
    assert s.info.pad == 2 and s.info.flip
    assert s.info.std == pytest.approx(tuple(x / 255 for x in (63.22, 61.26, 65.09)))
    for split in (s.train, s.valid, s.test):
        assert np.array_equal(decoded_labels(split, s.info), split.labels.numpy() * 7 % 256)
    s2 = load_dataset("imagenet16-120", root=tmp_path / "ImageNet16", valid_size=12)
    assert len(s2.valid) == 12 and len(s2.train) == kept


def test_imagenet16_errors(tmp_path):
    make_imagenet16(tmp_path / "in16")
    dump(tmp_path / "in16" / "val_data", {"data": np.zeros((2, 768), np.uint8), "labels": [0, 5]}, protocol=4)
    with pytest.raises(DatasetError, match="val_data is malformed: labels span 0..5, expected 1..1000"):
        load_dataset("imagenet16-120", root=tmp_path / "in16")
    (tmp_path / "in16" / "train_data_batch_10").unlink()
    with pytest.raises(DatasetError) as ei:
        load_dataset("imagenet16-120", root=tmp_path / "in16")
    assert "has no train_data_batch_10" in one_line(ei.value)
    with pytest.raises(DatasetError, match="no default location"):
        load_dataset("imagenet16-120")


# ---------------------------------------------------------------------------------------------
# Splits


def test_splits_to_and_fingerprint_cache():
    s = load_dataset("digits", train_size=50, valid_size=20, test_size=20)
    fp = s.fingerprint()
    moved = s.to("cpu")
    assert moved.fingerprint() == fp and moved.info == s.info
    fresh = Splits(s.info, moved.train, moved.valid, moved.test)
    assert fresh.fingerprint() == fp
    changed = Splits(s.info, Split(s.train.images + 1, s.train.labels), s.valid, s.test)
    assert changed.fingerprint() != fp


def test_split_validates_shapes():
    with pytest.raises(ValueError):
        Split(torch.zeros(3, 8, 8), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError):
        Split(torch.zeros(3, 1, 8, 8), torch.zeros(2, dtype=torch.int64))


# ---------------------------------------------------------------------------------------------
# Batches


def indexed_split(n=103, c=1, size=8) -> Split:
    """Images whose pixels all equal the sample index: decode which sample a row came from."""
    imgs = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, c, size, size).contiguous()
    return Split(imgs, torch.arange(n, dtype=torch.int64) % 10)


def ids(x: torch.Tensor) -> list[int]:
    return x[:, 0, 0, 0].long().tolist()


@pytest.mark.parametrize("shuffle", [True, False])
def test_batches_cover_each_sample_once(shuffle):
    split = indexed_split()
    b = Batches(split, 10, shuffle=shuffle, seed=3)
    assert len(b) == 11
    for _ in range(2):
        seen = []
        for x, y in b:
            assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
            assert torch.equal(y, x[:, 0, 0, 0].long() % 10)  # labels travel with their images
            seen += ids(x)
        assert sorted(seen) == list(range(103))
        assert (seen == list(range(103))) is (not shuffle)
    d = Batches(split, 10, drop_last=True)
    assert len(d) == 10 and sum(len(y) for _, y in d) == 100


def test_batches_epochs_reshuffle_and_seed_determinism():
    split = indexed_split()
    a = [ids(x) for x in [x for x, _ in Batches(split, 16, seed=5)]]
    b = [ids(x) for x in [x for x, _ in Batches(split, 16, seed=5)]]
    c = [ids(x) for x in [x for x, _ in Batches(split, 16, seed=6)]]
    assert a == b and a != c
    bb = Batches(split, 16, seed=5)
    e0 = [ids(x) for x, _ in bb]
    e1 = [ids(x) for x, _ in bb]
    assert e0 == a and e1 != e0 and bb.epoch == 1
    # the global RNG is neither used nor disturbed
    torch.manual_seed(0)
    before = torch.get_rng_state()
    list(Batches(split, 16, seed=5, augment=DatasetInfo("t", 10, 1, 8, (0.0,), (1.0,), 2, True)))
    assert torch.equal(before, torch.get_rng_state())


@pytest.mark.parametrize("cut", [0, 3, 7, 11, 13, 22, 25])
def test_batches_state_dict_round_trip(cut):
    info = DatasetInfo("t", 10, 1, 8, (0.5,), (0.25,), 2, True)
    split = Split(torch.randn(103, 1, 8, 8), torch.arange(103) % 10)
    ref = Batches(split, 10, augment=info, seed=11)
    stream = ref.forever()
    reference = [next(stream) for _ in range(40)]
    src = Batches(split, 10, augment=info, seed=11)
    it = src.forever()
    for _ in range(cut):
        next(it)
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    resumed = Batches(split, 10, augment=info, seed=999)  # the seed comes from the state
    resumed.load_state_dict(torch.load(buf))
    it2 = resumed.forever()
    for k in range(cut, 40):
        x, y = next(it2)
        assert torch.equal(x, reference[k][0]) and torch.equal(y, reference[k][1]), k
    # epoch-wise iteration resumes mid-epoch too: the rest of the epoch, then the next epochs
    again = Batches(split, 10, augment=info)
    again.load_state_dict(src.state_dict())
    got = [b for b in again] + [b for b in again]
    want = reference[cut : cut + len(got)]
    assert all(torch.equal(g[0], w[0]) for g, w in zip(got, want))
    with pytest.raises(ValueError, match="batch_size"):
        Batches(split, 12, augment=info).load_state_dict(src.state_dict())


def test_batches_augmentation_shapes_and_change():
    s = load_dataset("digits")
    plain = next(iter(Batches(s.train, 64, seed=0)))[0]
    aug_iter = iter(Batches(s.train, 64, seed=0, augment=s.info))
    aug = next(aug_iter)[0]
    assert aug.shape == plain.shape == (64, 1, 8, 8)
    assert not torch.equal(aug, plain)  # same order (same seed), pixels moved
    assert len(list(Batches(s.train, 64, augment=s.info, drop_last=False))) == 17


def reference_crop_flip(x, offsets, flips, pad, fill):
    out = []
    for i in range(x.shape[0]):
        xp = torch.cat([F.pad(x[i, c : c + 1], (pad,) * 4, value=float(fill[c])) for c in range(x.shape[1])])
        r, c = offsets[i].tolist()
        crop = xp[:, r : r + x.shape[2], c : c + x.shape[3]]
        out.append(crop.flip(-1) if flips[i] else crop)
    return torch.stack(out)


@pytest.mark.parametrize("pad,c,size", [(0, 1, 8), (1, 1, 8), (2, 3, 16), (4, 3, 32)])
def test_crop_flip_matches_reference(pad, c, size):
    g = torch.Generator().manual_seed(pad)
    x = torch.randn(37, c, size, size, generator=g)
    offsets = torch.randint(0, 2 * pad + 1, (37, 2), generator=g)
    flips = torch.rand(37, generator=g) < 0.5
    fill = torch.randn(c, generator=g)
    got = D.crop_flip(x, offsets, flips, pad, fill)
    assert torch.equal(got, reference_crop_flip(x, offsets, flips, pad, fill))


@pytest.mark.parametrize("flip", [False, True])
def test_crop_offsets_within_pad_single_bright_pixel(flip):
    pad, size, n = 2, 16, 2000
    mean, std = (0.2, 0.4, 0.6), (0.5, 0.25, 0.2)
    info = DatasetInfo("t", 10, 3, size, mean, std, pad, flip)
    black = torch.tensor([-m / s for m, s in zip(mean, std)]).view(1, 3, 1, 1)
    imgs = black.expand(n, 3, size, size).clone()
    r0, c0 = 6, 4
    imgs[:, :, r0, c0] = 10.0
    b = Batches(Split(imgs, torch.zeros(n, dtype=torch.int64)), 256, augment=info, seed=0)
    drs, dcs, mirrored = set(), set(), 0
    for x, _ in b:
        assert x.shape == (len(x), 3, size, size)
        bright = (x[:, 0] == 10.0).nonzero()
        assert bright.shape[0] == len(x)  # exactly one bright pixel per image, never cropped away
        assert torch.all(x[:, 1][x[:, 0] != 10.0] == black[0, 1, 0, 0])  # padding is raw black
        for _, r, c in bright.tolist():
            drs.add(r - r0)
            if abs(c - c0) <= pad:  # unflipped: columns c0-pad..c0+pad (disjoint from the mirrored ones)
                dcs.add(c - c0)
            else:
                assert flip and abs((size - 1 - c) - c0) <= pad
                mirrored += 1
                dcs.add((size - 1 - c) - c0)
    assert drs == set(range(-pad, pad + 1))  # every row offset, none beyond pad
    assert dcs == set(range(-pad, pad + 1))
    if flip:
        assert 0.4 * n < mirrored < 0.6 * n
    else:
        assert mirrored == 0


def test_batches_device_argument_and_forever_guard():
    split = indexed_split(5)
    b = Batches(split, 8, device="cpu", shuffle=False)
    assert len(b) == 1 and ids(next(iter(b))[0]) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="no batch per epoch"):
        next(Batches(split, 8, drop_last=True).forever())
    with pytest.raises(ValueError):
        Batches(split, 0)


# ---------------------------------------------------------------------------------------------
# dataset_facts: what load_dataset would load, with nothing converted (the driver's check)

FACT_CASES = [
    ("digits", None, {}),
    ("digits", None, {"train_size": 100, "valid_size": 50, "split_seed": 3}),
    ("digits", None, {"train_split": "train+valid", "score_split": "test"}),
    ("fashion-mnist", "fmnist", {"holdout": 30}),
    ("fashion-mnist", "fmnist", {"resolution": 16, "holdout": 20, "train_size": 15}),
    ("cifar10", "cifar10", {"valid_size": 20}),
    ("cifar100", "cifar100", {"score_split": "test"}),
    ("imagenet16-120", "imagenet16", {"valid_size": 12, "train_split": "train+valid", "score_split": "test"}),
]


def _fact_root(tmp_path: Path, kind: str | None) -> Path | None:
    if kind is None:
        return None
    return {"fmnist": lambda: make_fmnist(tmp_path / "f"), "cifar10": lambda: make_cifar10(tmp_path),
            "cifar100": lambda: make_cifar100(tmp_path),
            "imagenet16": lambda: (make_imagenet16(tmp_path / "ImageNet16"), tmp_path)[1]}[kind]()


@pytest.mark.parametrize("name,kind,options", FACT_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(FACT_CASES)])
def test_dataset_facts_agree_with_load_dataset(tmp_path, name, kind, options):
    root = _fact_root(tmp_path, kind)
    facts = D.dataset_facts(name, root, **options)
    splits = load_dataset(name, root, **options)
    assert facts.info == splits.info
    assert facts.sizes == splits.sizes()


def test_dataset_facts_refuse_what_load_dataset_refuses(tmp_path):
    folder = make_fmnist(tmp_path / "f")
    (folder / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01")  # header only: too short
    for call in (D.dataset_facts, load_dataset):
        with pytest.raises(DatasetError) as err:
            call("fashion-mnist", folder)
        assert "t10k-labels" in one_line(err.value)
    for bad in ({"train_size": 10**6}, {"resolution": 20}, {"colour": True}):
        with pytest.raises(DatasetError) as facts_err:
            D.dataset_facts("digits", **bad)
        with pytest.raises(DatasetError) as load_err:
            load_dataset("digits", **bad)
        assert str(facts_err.value) == str(load_err.value)


def test_the_drivers_data_check_and_schedule_import_no_torch():
    # the driver checks the data and plans the supernet's schedule before Ray starts: torch's
    # import (seconds) is the actor's, not the driver's; the plan is what the actor will compute
    import json
    import subprocess
    import sys

    from raynas.driver import actor_config
    from raynas.settings import make_config

    code = (
        "import json, sys\n"
        "from raynas import cli\n"
        "from raynas.driver import local_schedule\n"
        "from raynas.settings import make_config\n"
        "args = cli.build_parser().parse_args(['search', '--method', 'rsps', '--dataset', 'digits',"
        " '--data-option', 'train_size=500'])\n"
        "cli._check_search(args)\n"
        "config = make_config('rsps', dataset='digits', data_options={'train_size': 500})\n"
        "print(json.dumps({'schedule': local_schedule(config), 'torch': 'torch' in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["torch"] is False
    config = actor_config(make_config("rsps", dataset="digits", data_options={"train_size": 500}))
    splits = load_dataset("digits", train_size=500)
    batch_size = config["supernet"]["batch_size"]
    assert got["schedule"]["steps_per_epoch"] == len(Batches(splits.train, batch_size, drop_last=True)) == 500 // batch_size
    assert got["schedule"]["total_steps"] == round(config["supernet"]["epochs"] * (500 // batch_size))
    assert (got["schedule"]["num_classes"], got["schedule"]["in_channels"], got["schedule"]["input_size"]) == (10, 1, 8)
