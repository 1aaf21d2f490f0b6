"""Datasets and on-device mini-batching for raynas.

Every loader returns a :class:`Splits` (train / valid / test) of float32 tensors that are already
normalised with the dataset's mean/std, so a trial keeps the whole split resident (on the CPU or
on its GPU) and draws mini-batches with :class:`Batches`, which does the benchmark-style train
augmentation (random crop with zero padding, random horizontal flip) in batch on that device.
Nothing here downloads from the internet: every dataset is read from local files (``digits`` comes
with scikit-learn), or from a storage URI the user names (``root="s3://bucket/data/fashion-mnist"``),
copied once to a node-local cache (:func:`data_cache`) and read from there.

Datasets (``load_dataset(name, root=None, **options)``):

``digits`` (the embedded default)
    scikit-learn's bundled ``load_digits``: 1,797 8x8 grayscale images, values 0..16, 10 classes.
    Input 1x8x8, scaled to [0, 1] then normalised. Split stratified with a fixed seed:
    60/20/20 train/valid/test (1,078 / 359 / 360). ``root`` is ignored. Augmentation: crop with
    padding 1, no flip (digits are not mirror-symmetric).
``fashion-mnist``
    The four standard IDX files (``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
    ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]``) from ``root`` (default
    ``/usr/share/datasets/fashion-mnist``, Debian's ``dataset-fashion-mnist``). valid = a seeded,
    stratified hold-out of ``holdout=10000`` of the 60,000 train images (1,000 per class); train =
    the other 50,000; test = the 10,000 t10k images. ``resolution=28`` (default) or ``16`` (the
    cheap ranking variant: zero-pad 28->32, then 2x2 average pool). Augmentation: crop with
    padding 4 (28) / 2 (16), horizontal flip.
``cifar10``
    torchvision's ``cifar-10-batches-py`` (``data_batch_1..5``, ``test_batch``); ``root`` is that
    folder or its parent. As the benchmark's cifar10-valid: the 50,000 train images in two seeded,
    stratified halves, 25,000 train / 25,000 valid; test = ``test_batch``. Crop pad 4, flip.
``cifar100``
    torchvision's ``cifar-100-python`` (``train``, ``test``; fine labels); ``root`` is that folder
    or its parent. train = all 50,000 train images; valid / test = seeded, stratified halves of
    the 10,000 test images (5,000 / 5,000), as the benchmark's x-valid / x-test. Crop pad 4, flip.
``imagenet16-120``
    The benchmark's pickled 16x16 ImageNet (``train_data_batch_1..10``, ``val_data``: dicts with
    ``data`` uint8 (N, 3*16*16) and 1-based ``labels``) from ``root`` (or ``root/ImageNet16``);
    only labels 1..120 are kept (as 0..119). train = all train batches; valid / test = seeded,
    stratified halves of ``val_data`` (3,000 / 3,000 in the real data). Crop pad 2, flip.

Deviation from the benchmark: its splits are fixed index files (e.g. ``cifar-split.txt``); ours
are seeded stratified draws (``split_seed=0``), the same sizes, reproducible, not the same images.

Options every loader accepts (all keyword-only):

``train_size`` / ``valid_size`` / ``test_size`` (``None`` = the whole split)
    Take a seeded, stratified subset of that split (e.g. ``train_size=6000`` for the cheap
    Fashion-MNIST preset; tests take tiny slices). Subsets never mix splits: a valid image is
    never a train image whatever the sizes.
``split_seed`` (default 0)
    Seed of the canonical splits and the subsets. Keep 0 to compare with recorded results.

Stratified means: class quotas proportional to the class counts (largest-remainder rounding,
exact total), each class's members drawn at random; the indices of a split are kept in the
files' order.

Data roles (:func:`assign_roles`, ``load_dataset(..., train_split=, score_split=)``): what a search
trains its weights on and scores its candidates on. ``train_split="train"`` (default) or
``"train+valid"`` (the whole train set: CIFAR-10's 50,000 images, as the few-shot NAS code trains
its supernets); ``score_split="valid"`` (default) or ``"test"`` (the few-shot paper scores every
arch on the test set). The returned :class:`Splits` keep their roles' names: ``train`` is what the
weights train on, ``valid`` what candidates are scored on (and SETN's alpha learns on), ``test``
the test split. A combination that scores on images the weights trained on
(``"train+valid"`` with ``"valid"``) is refused with one line.

Errors: a missing directory, a missing file or a malformed file raises :class:`DatasetError`
(a ``ValueError``) with one line naming the directory or file and the files expected.

Padding value: the benchmark pads the *raw* image with black (0) before normalising, so the
padded pixels of a normalised image are ``-mean/std`` per channel; :class:`Batches` pads with
that value (raw 0), not with normalised 0.
"""

from __future__ import annotations

import contextvars
import gzip
import hashlib
import math
import os
import pickle
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np


class _LazyModule:
    """``torch`` imported at first use: listing the datasets and checking their options (the CLI's
    usage checks) must not cost torch's import (seconds). The first attribute read imports the module
    and puts it in this module's globals in place of the stand-in."""

    def __init__(self, module: str, alias: str) -> None:
        self._module, self._alias = module, alias

    def __getattr__(self, attr: str):
        import importlib

        module = importlib.import_module(self._module)
        globals()[self._alias] = module
        return getattr(module, attr)


torch = _LazyModule("torch", "torch")
F = _LazyModule("torch.nn.functional", "F")

__all__ = [
    "Batches",
    "DATASETS",
    "DatasetError",
    "DatasetInfo",
    "FASHION_MNIST_DEFAULT_ROOT",
    "crop_flip",
    "SCORE_SPLITS",
    "Split",
    "Splits",
    "TRAIN_SPLITS",
    "assign_roles",
    "check_options",
    "check_roles",
    "join_splits",
    "data_cache",
    "dataset_facts",
    "dataset_names",
    "dataset_options",
    "load_dataset",
    "register_dataset",
]

FASHION_MNIST_DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"


class DatasetError(ValueError):
    """A dataset directory or file is missing or malformed (the message is one line)."""


# ---------------------------------------------------------------------------------------------
# containers


@dataclass(frozen=True)
class DatasetInfo:
    """What a network and the train augmentation need to know about a dataset.

    ``pad`` / ``flip`` describe the benchmark-style train augmentation: random crop of the
    original size from the image zero-padded (in raw pixel space) by ``pad`` on each side, and a
    random horizontal flip with probability 0.5 when ``flip``.
    """

    name: str
    num_classes: int
    in_channels: int
    input_size: int  # H == W
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pad: int
    flip: bool


@dataclass
class Split:
    """One split: ``images`` float32 (N, C, H, W), normalised; ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dim() != 4:
            raise ValueError(f"Split.images must be (N, C, H, W), got shape {tuple(self.images.shape)}")
        if self.labels.dim() != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(
                f"Split.labels must be (N,) with N={self.images.shape[0]}, got shape {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))


@dataclass
class Splits:
    """train / valid / test of one dataset, with its :class:`DatasetInfo`."""

    info: DatasetInfo
    train: Split
    valid: Split
    test: Split
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    def fingerprint(self) -> str:
        """sha256 hex digest of the three splits' tensors (shape, dtype and bytes); cached."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for name in ("train", "valid", "test"):
                split = getattr(self, name)
                for t in (split.images, split.labels):
                    arr = t.detach().cpu().contiguous().numpy()
                    h.update(f"{name}:{arr.dtype.str}:{arr.shape};".encode())
                    h.update(memoryview(arr).cast("B"))
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def to(self, device) -> "Splits":
        out = Splits(self.info, self.train.to(device), self.valid.to(device), self.test.to(device))
        out._fingerprint = self._fingerprint  # same bytes wherever they live
        return out

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "valid": len(self.valid), "test": len(self.test)}


@dataclass(frozen=True)
class DatasetFacts:
    """What :func:`dataset_facts` finds: a dataset's :class:`DatasetInfo` and its splits' sizes
    (``{"train", "valid", "test"}``, in the data roles asked), with no image converted."""

    info: DatasetInfo
    sizes: dict[str, int]

    def in_roles(self, train_split: str = "train", score_split: str = "valid") -> "DatasetFacts":
        """The sizes as :func:`assign_roles` would give the splits."""
        n = self.sizes
        train = n["train"] if train_split == "train" else n["train"] + n["valid"]
        scored = n["valid"] if score_split == "valid" else n["test"]
        return DatasetFacts(self.info, {"train": train, "valid": scored, "test": n["test"]})


# ---------------------------------------------------------------------------------------------
# data roles: what the weights train on, what candidates are scored on

#: what a search's weights may train on (raynas.settings mirrors these without importing this module)
TRAIN_SPLITS = ("train", "train+valid")
#: what a search's candidates may be scored on
SCORE_SPLITS = ("valid", "test")


def check_roles(train_split: str = "train", score_split: str = "valid") -> None:
    """Refuse an unknown role or one that leaks (scoring on images the weights trained on), with
    one line (:class:`DatasetError`)."""
    if train_split not in TRAIN_SPLITS:
        raise DatasetError(f"train_split={train_split!r}; expected one of {', '.join(map(repr, TRAIN_SPLITS))}")
    if score_split not in SCORE_SPLITS:
        raise DatasetError(f"score_split={score_split!r}; expected one of {', '.join(map(repr, SCORE_SPLITS))}")
    if train_split == "train+valid" and score_split == "valid":
        raise DatasetError("train_split='train+valid' with score_split='valid' scores candidates on images the "
                           "weights trained on; expected score_split='test' (or train_split='train')")


def join_splits(a: Split, b: Split) -> Split:
    """The images of ``a`` then those of ``b``, as one split (e.g. train and valid: the whole train set)."""
    return Split(torch.cat([a.images, b.images]), torch.cat([a.labels, b.labels]))


def assign_roles(splits: Splits, train_split: str = "train", score_split: str = "valid") -> Splits:
    """``splits`` as a search uses them (see the module docstring): ``train`` = the train split or
    train and valid joined, ``valid`` = the valid or the test split, ``test`` = the test split.
    The defaults return ``splits`` itself. The fingerprint stays the dataset's (the same images
    in other roles; a run records its roles apart), so a run's recorded data hash is that of its
    files and options whatever the roles."""
    check_roles(train_split, score_split)
    if isinstance(splits, DatasetFacts):
        return splits.in_roles(train_split, score_split)
    if (train_split, score_split) == ("train", "valid"):
        return splits
    train = splits.train if train_split == "train" else join_splits(splits.train, splits.valid)
    scored = splits.valid if score_split == "valid" else splits.test
    out = Splits(splits.info, train, scored, splits.test)
    out._fingerprint = splits.fingerprint()
    return out


# ---------------------------------------------------------------------------------------------
# registry

DATASETS: dict[str, Callable[..., Splits]] = {}


def register_dataset(name: str):
    """Decorator: register ``loader(root=None, **options) -> Splits`` under ``name``."""

    def deco(fn: Callable[..., Splits]) -> Callable[..., Splits]:
        DATASETS[name] = fn
        return fn

    return deco


def dataset_names() -> list[str]:
    return sorted(DATASETS)


def _canonical_name(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    return key if key in DATASETS else str(name)


def dataset_options(name: str) -> dict[str, object]:
    """The options dataset ``name`` takes (its loader's keyword-only arguments) -> their defaults."""
    import inspect

    key = _canonical_name(name)
    if key not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; expected one of: {', '.join(dataset_names())}")
    return {p.name: p.default for p in inspect.signature(DATASETS[key]).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


def check_options(name: str, options: dict) -> None:
    """Refuse an option dataset ``name`` does not take, with one line naming the ones it does
    (:class:`DatasetError`); the values are checked when the data are read."""
    import difflib

    valid = dataset_options(name)
    for option in options:
        if option not in valid:
            close = difflib.get_close_matches(str(option), list(valid), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise DatasetError(f"{name}: unknown option {option!r}{hint}; {name} takes: {', '.join(valid)}")


def load_dataset(name: str, root: str | os.PathLike | None = None, *, train_split: str = "train",
                 score_split: str = "valid", **options) -> Splits:
    """Load dataset ``name`` (see the module docstring) from ``root`` (None = its default), in the
    data roles ``train_split`` / ``score_split`` (:func:`assign_roles`).

    ``root`` may be a storage URI (``s3://bucket/data/fashion-mnist``, ``gs://...``, any pyarrow
    filesystem, or a :class:`raynas.storage.Location`): the folder is copied once to a node-local
    cache (:func:`data_cache`; again only when its files change) and loaded from there, so the
    splits and their fingerprint are those of the same files on a local disk. Errors name the URI.
    """
    key = _canonical_name(name)
    if key not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; expected one of: {', '.join(dataset_names())}")
    check_options(key, options)
    check_roles(train_split, score_split)
    root, remote = _storage_root(root)
    if remote is None:
        return assign_roles(DATASETS[key](root=root, **options), train_split, score_split)
    try:
        local = remote.local_copy(data_cache())
    except FileNotFoundError:
        raise DatasetError(f"{key}: {remote} does not exist (no file or folder at that URI); pass the URI of "
                           f"the folder that holds the {key} files") from None
    except (OSError, ValueError) as err:
        raise DatasetError(f"{key}: cannot copy {remote} to the local cache {data_cache()}: {err}") from None
    try:
        return assign_roles(DATASETS[key](root=local, **options), train_split, score_split)
    except DatasetError as err:  # name the URI the user gave, not the cache's copy
        raise DatasetError(str(err).replace(str(local), str(remote))) from None


#: set by dataset_facts() for its call: _build counts the splits and converts no image
_FACTS_ONLY = contextvars.ContextVar("raynas_data_facts_only", default=False)


def dataset_facts(name: str, root: str | os.PathLike | None = None, *, train_split: str = "train",
                  score_split: str = "valid", **options) -> DatasetFacts:
    """What :func:`load_dataset` with the same arguments would load, checked the same way (the
    same files read, the same one-line :class:`DatasetError`), but only its info and split sizes:
    no image is converted and torch is not imported (seconds), so a driver can check its data and
    plan a schedule before anything starts. A registered loader that builds its splits itself
    loads them (the sizes are then theirs)."""
    token = _FACTS_ONLY.set(True)
    try:
        loaded = load_dataset(name, root, train_split=train_split, score_split=score_split, **options)
    finally:
        _FACTS_ONLY.reset(token)
    if isinstance(loaded, Splits):
        return DatasetFacts(loaded.info, loaded.sizes())
    return loaded


def data_cache() -> Path:
    """The node-local folder that holds copies of datasets read from storage URIs:
    ``$RAYNAS_CACHE/data`` (default ``~/.cache/raynas/data``)."""
    return Path(os.environ.get("RAYNAS_CACHE") or "~/.cache/raynas").expanduser() / "data"


def _storage_root(root):
    """(``root`` for a loader, its :class:`raynas.storage.Location` when it is in object storage
    else ``None``): a ``file://`` URI or a local Location becomes its local path."""
    from raynas.storage import Location, is_uri

    if not isinstance(root, Location) and not is_uri(root):
        return root, None
    where = Location(root)
    return (where.local_path, None) if where.is_local else (None, where)


# ---------------------------------------------------------------------------------------------
# splitting helpers


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(stream)])


def _quotas(counts: np.ndarray, k: int) -> np.ndarray:
    """Largest-remainder apportionment of ``k`` over classes with ``counts`` members."""
    n = int(counts.sum())
    prod = counts.astype(np.int64) * int(k)
    q = prod // n
    rem = int(k - q.sum())
    if rem:
        order = np.argsort(-(prod % n), kind="stable")
        q[order[:rem]] += 1
    return q


def _stratified_take(labels: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split positions 0..N-1 into (chosen k, rest), stratified by ``labels``; both sorted."""
    n = labels.shape[0]
    if not 0 <= k <= n:
        raise ValueError(f"cannot take {k} of {n}")
    classes, inv = np.unique(labels, return_inverse=True)
    counts = np.bincount(inv, minlength=len(classes))
    q = _quotas(counts, k)
    keys = rng.random(n)
    order = np.lexsort((keys, inv))  # grouped by class, random within class
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(n) - starts[inv[order]]
    mask = np.zeros(n, dtype=bool)
    mask[order[rank < q[inv[order]]]] = True
    return np.flatnonzero(mask), np.flatnonzero(~mask)


def _check_size(dataset: str, option: str, value, available: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= int(value) <= available:
        raise DatasetError(
            f"{dataset}: {option}={value!r} must be an integer in 1..{available} (the size of that split)"
        )
    return int(value)


def _subset(dataset, option, value, labels, seed, stream) -> np.ndarray | None:
    k = _check_size(dataset, option, value, labels.shape[0])
    if k is None or k == labels.shape[0]:
        return None
    return _stratified_take(labels, k, _rng(seed, stream))[0]


# ---------------------------------------------------------------------------------------------
# tensor building


def _to_images(raw: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 normalised (N, C, H, W)."""
    x = torch.from_numpy(np.ascontiguousarray(raw)).to(torch.float32).div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def _build(
    info: DatasetInfo,
    parts: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    *,
    train_size,
    valid_size,
    test_size,
    split_seed: int,
    convert: Callable[[np.ndarray], torch.Tensor] | None = None,
) -> "Splits | DatasetFacts":
    """Assemble the Splits (while :func:`dataset_facts` runs: a :class:`DatasetFacts` of their
    sizes, nothing converted).

    ``parts``: split name -> (raw images, all labels of that source, indices of this split in it
    or None for all). The optional subsets are drawn first, so only the images kept are
    converted (``convert``: raw -> normalised float32 tensor; default uint8 / 255 then mean/std).
    """
    if convert is None:
        convert = lambda raw: _to_images(raw, info.mean, info.std)  # noqa: E731
    facts_only = _FACTS_ONLY.get()
    out = {}
    for stream, (name, size) in enumerate(
        (("train", train_size), ("valid", valid_size), ("test", test_size)), start=101
    ):
        raw, labels, idx = parts[name]
        if idx is None:
            idx = np.arange(labels.shape[0])
        sub = _subset(info.name, f"{name}_size", size, labels[idx], split_seed, stream)
        if sub is not None:
            idx = idx[sub]
        if facts_only:
            out[name] = int(idx.shape[0])
            continue
        whole = idx.shape[0] == labels.shape[0] and np.array_equal(idx, np.arange(labels.shape[0]))
        images = convert(raw if whole else raw[idx])
        lab = torch.from_numpy(np.ascontiguousarray(labels[idx], dtype=np.int64))
        out[name] = Split(images.contiguous(), lab)
    if facts_only:
        return DatasetFacts(info, out)
    return Splits(info, out["train"], out["valid"], out["test"])


# ---------------------------------------------------------------------------------------------
# digits

_DIGITS_INFO = DatasetInfo(
    name="digits",
    num_classes=10,
    in_channels=1,
    input_size=8,
    mean=(0.3053,),
    std=(0.3760,),
    pad=1,
    flip=False,
)


@register_dataset("digits")
def load_digits(
    root=None, *, train_size=None, valid_size=None, test_size=None, split_seed: int = 0
) -> Splits:
    """scikit-learn's bundled digits (offline): 1x8x8, 10 classes, stratified 60/20/20 split.

    ``root`` is ignored (the data ship with scikit-learn). Values 0..16 are scaled to [0, 1] and
    normalised with mean 0.3053 / std 0.3760 (of all 1,797 images). Augmentation: pad 1, no flip.
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    d = _sk_load_digits()
    data = np.asarray(d.data, dtype=np.float32).reshape(-1, 1, 8, 8) / 16.0
    labels = np.asarray(d.target, dtype=np.int64)
    n = labels.shape[0]
    n_train = int(round(0.6 * n))
    n_valid = int(round(0.2 * n))
    rng = _rng(split_seed, 0)
    train_idx, rest = _stratified_take(labels, n_train, rng)
    v_pos, t_pos = _stratified_take(labels[rest], n_valid, rng)
    valid_idx, test_idx = rest[v_pos], rest[t_pos]
    parts = {"train": (data, labels, train_idx), "valid": (data, labels, valid_idx), "test": (data, labels, test_idx)}
    return _build(
        _DIGITS_INFO, parts, train_size=train_size, valid_size=valid_size, test_size=test_size,
        split_seed=split_seed,
        convert=lambda raw: torch.from_numpy(np.ascontiguousarray(raw)).sub(_DIGITS_INFO.mean[0]).div_(_DIGITS_INFO.std[0]),
    )


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX files)

_FMNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_FMNIST_HINT = "(install Debian's dataset-fashion-mnist or pass --data-dir)"
_FMNIST_STATS = {28: ((0.2860,), (0.3530,)), 16: ((0.2190,), (0.3132,))}


def _fmnist_expected() -> str:
    return "expected " + ", ".join(f + ".gz" for f in _FMNIST_FILES) + " (or uncompressed)"


def _read_idx(path: Path, *, kind: str, dataset: str, expected: str) -> np.ndarray:
    """Parse one IDX file (uint8 data): kind 'images' (magic 2051, 3 dims) or 'labels' (2049, 1)."""

    def bad(what: str) -> DatasetError:
        return DatasetError(f"{dataset}: {path} is malformed: {what}; {expected}")

    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise bad(f"cannot read it ({type(e).__name__}: {e})") from None
    want_magic, ndim = (2051, 3) if kind == "images" else (2049, 1)
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise bad(f"{len(raw)} bytes, shorter than the {header}-byte IDX header")
    magic = int.from_bytes(raw[:4], "big")
    if magic != want_magic:
        raise bad(f"magic number {magic}, expected {want_magic} (IDX {kind}: uint8, {ndim} dims)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    size = math.prod(dims)
    if len(raw) - header != size:
        raise bad(
            f"header says {'x'.join(map(str, dims))} = {size} bytes of data, file has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _find_file(directory: Path, stem: str, *, dataset: str, expected: str, hint: str = "") -> Path:
    for name in (stem + ".gz", stem):
        p = directory / name
        if p.is_file():
            return p
    raise DatasetError(f"{dataset}: {directory} has no {stem}[.gz]; {expected}{' ' + hint if hint else ''}")


@register_dataset("fashion-mnist")
def load_fashion_mnist(
    root=None,
    *,
    resolution: int = 28,
    holdout: int = 10_000,
    train_size=None,
    valid_size=None,
    test_size=None,
    split_seed: int = 0,
) -> Splits:
    """Fashion-MNIST from the four IDX files (gzipped or not) in ``root``.

    ``root=None`` -> ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``).
    valid = a seeded stratified hold-out of ``holdout`` (10,000) train images, train = the rest
    (50,000), test = the 10,000 t10k images; ``train_size`` etc. subset those. ``resolution=16``
    zero-pads 28->32 and 2x2 average-pools to 16x16. Normalised with the 60k train images'
    mean/std at that resolution (28: 0.2860/0.3530, 16: 0.2190/0.3132). Augmentation: crop pad 4
    (28) / 2 (16), flip.
    """
    name = "fashion-mnist"
    if resolution not in _FMNIST_STATS:
        raise DatasetError(f"{name}: resolution={resolution!r}; expected 28 or 16")
    directory = Path(root if root is not None else FASHION_MNIST_DEFAULT_ROOT).expanduser()
    expected = _fmnist_expected()
    if not directory.is_dir():
        raise DatasetError(f"{name}: directory {directory} does not exist; {expected} {_FMNIST_HINT}")
    paths = [_find_file(directory, s, dataset=name, expected=expected, hint=_FMNIST_HINT) for s in _FMNIST_FILES]
    arrays = [
        _read_idx(p, kind="images" if "images" in p.name else "labels", dataset=name, expected=expected)
        for p in paths
    ]
    tr_x, tr_y, te_x, te_y = arrays
    for img_p, lab_p, x, y in ((paths[0], paths[1], tr_x, tr_y), (paths[2], paths[3], te_x, te_y)):
        if x.shape[1:] != (28, 28):
            raise DatasetError(f"{name}: {img_p} is malformed: images are {x.shape[1]}x{x.shape[2]}, expected 28x28; {expected}")
        if x.shape[0] != y.shape[0]:
            raise DatasetError(f"{name}: {img_p} has {x.shape[0]} images but {lab_p} has {y.shape[0]} labels; {expected}")
        if y.size and int(y.max()) > 9:
            raise DatasetError(f"{name}: {lab_p} is malformed: label {int(y.max())} outside 0..9; {expected}")
    holdout = _check_size(name, "holdout", holdout, tr_x.shape[0] - 1)
    mean, std = _FMNIST_STATS[resolution]
    pad = 4 if resolution == 28 else 2
    info = DatasetInfo(name, 10, 1, resolution, mean, std, pad, True)

    def images(x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x)).view(-1, 1, 28, 28)
        if resolution == 16:
            t = F.avg_pool2d(F.pad(t.to(torch.float32), (2, 2, 2, 2)), 2)  # 0..255 floats
        else:
            t = t.to(torch.float32)
        return t.div_(255.0).sub_(mean[0]).div_(std[0])

    tr_y = tr_y.astype(np.int64)
    te_y = te_y.astype(np.int64)
    valid_idx, train_idx = _stratified_take(tr_y, holdout, _rng(split_seed, 0))
    parts = {"train": (tr_x, tr_y, train_idx), "valid": (tr_x, tr_y, valid_idx), "test": (te_x, te_y, None)}
    return _build(info, parts, train_size=train_size, valid_size=valid_size, test_size=test_size,
                  split_seed=split_seed, convert=images)


# ---------------------------------------------------------------------------------------------
# pickled batches (CIFAR, ImageNet16): a restricted unpickler that only rebuilds numpy arrays

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "numpy.core.multiarray"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "numpy.core.multiarray"),
    ("numpy.core.multiarray", "scalar"): ("numpy._core.multiarray", "numpy.core.multiarray"),
    ("numpy._core.multiarray", "scalar"): ("numpy._core.multiarray", "numpy.core.multiarray"),
    ("numpy.core.numeric", "_frombuffer"): ("numpy._core.numeric", "numpy.core.numeric"),
    ("numpy._core.numeric", "_frombuffer"): ("numpy._core.numeric", "numpy.core.numeric"),
    ("numpy", "ndarray"): ("numpy",),
    ("numpy", "dtype"): ("numpy",),
    ("_codecs", "encode"): ("_codecs",),  # bytes in protocol-2 pickles written by Python 3
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        modules = _ALLOWED_GLOBALS.get((module, name))
        if modules is None:
            raise pickle.UnpicklingError(f"refusing to unpickle global {module}.{name}")
        import importlib

        for m in modules:
            try:
                return getattr(importlib.import_module(m), name)
            except (ImportError, AttributeError):
                continue
        raise pickle.UnpicklingError(f"cannot resolve {module}.{name}")


def _load_pickle(path: Path, *, dataset: str, expected: str) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise DatasetError(f"{dataset}: {path} is malformed: not a readable pickle ({type(e).__name__}: {e}); {expected}") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{dataset}: {path} is malformed: pickle holds {type(obj).__name__}, expected a dict; {expected}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _batch_arrays(
    d: dict, path: Path, *, dataset: str, expected: str, label_key: str, pixels: int, lo: int, hi: int
) -> tuple[np.ndarray, np.ndarray]:
    """Validate one pickled batch: 'data' uint8 (N, pixels), labels in lo..hi; return both."""

    def bad(what: str) -> DatasetError:
        return DatasetError(f"{dataset}: {path} is malformed: {what}; {expected}")

    for key in ("data", label_key):
        if key not in d:
            raise bad(f"no {key!r} entry (has {', '.join(map(str, sorted(d, key=str)))})")
    data = d["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != pixels:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise bad(f"'data' is {desc}, expected uint8 (N, {pixels})")
    try:
        labels = np.asarray(d[label_key], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise bad(f"{label_key!r} is not a list of integers") from None
    if labels.shape[0] != data.shape[0]:
        raise bad(f"{data.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and (int(labels.min()) < lo or int(labels.max()) > hi):
        raise bad(f"labels span {int(labels.min())}..{int(labels.max())}, expected {lo}..{hi}")
    return data, labels


def _resolve_dir(root, *, dataset: str, subdirs: Sequence[str], marker: str, expected: str) -> Path:
    """``root`` itself when it holds ``marker``, else its first existing ``subdirs`` entry, else root."""
    if root is None:
        raise DatasetError(f"{dataset}: no default location; pass root (--data-dir); {expected}")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DatasetError(f"{dataset}: directory {base} does not exist; {expected}")
    if (base / marker).is_file():
        return base
    for sub in subdirs:
        if (base / sub).is_dir():
            return base / sub
    return base


def _need(directory: Path, name: str, *, dataset: str, expected: str) -> Path:
    p = directory / name
    if not p.is_file():
        raise DatasetError(f"{dataset}: {directory} has no {name}; {expected}")
    return p


_CIFAR10_INFO = DatasetInfo(
    "cifar10", 10, 3, 32,
    tuple(x / 255 for x in (125.3, 123.0, 113.9)), tuple(x / 255 for x in (63.0, 62.1, 66.7)), 4, True,
)
_CIFAR100_INFO = DatasetInfo(
    "cifar100", 100, 3, 32,
    tuple(x / 255 for x in (129.3, 124.1, 112.4)), tuple(x / 255 for x in (68.2, 65.4, 70.4)), 4, True,
)
_IMAGENET16_INFO = DatasetInfo(
    "imagenet16-120", 120, 3, 16,
    tuple(x / 255 for x in (122.68, 116.66, 104.01)), tuple(x / 255 for x in (63.22, 61.26, 65.09)), 2, True,
)


def _halves(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified halves (first gets the odd one out)."""
    n = labels.shape[0]
    second, first = _stratified_take(labels, n // 2, _rng(seed, 0))
    return first, second


@register_dataset("cifar10")
def load_cifar10(
    root=None, *, train_size=None, valid_size=None, test_size=None, split_seed: int = 0
) -> Splits:
    """CIFAR-10 in torchvision's format (``cifar-10-batches-py/`` under ``root``, or ``root`` itself).

    As the benchmark's cifar10-valid: the 50k train images in seeded stratified halves
    (25k train / 25k valid); test = ``test_batch``. Benchmark mean/std; crop pad 4, flip.
    """
    name = "cifar10"
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    expected = "expected cifar-10-batches-py/{" + ", ".join(files) + "} (torchvision's CIFAR-10 format)"
    d = _resolve_dir(root, dataset=name, subdirs=("cifar-10-batches-py",), marker="data_batch_1", expected=expected)
    paths = [_need(d, f, dataset=name, expected=expected) for f in files]
    loaded = [
        _batch_arrays(_load_pickle(p, dataset=name, expected=expected), p, dataset=name, expected=expected,
                      label_key="labels", pixels=3 * 32 * 32, lo=0, hi=9)
        for p in paths
    ]
    tr_x = np.concatenate([x for x, _ in loaded[:5]]).reshape(-1, 3, 32, 32)
    tr_y = np.concatenate([y for _, y in loaded[:5]])
    te_x, te_y = loaded[5][0].reshape(-1, 3, 32, 32), loaded[5][1]
    info = _CIFAR10_INFO
    a, b = _halves(tr_y, split_seed)
    parts = {"train": (tr_x, tr_y, a), "valid": (tr_x, tr_y, b), "test": (te_x, te_y, None)}
    return _build(info, parts, train_size=train_size, valid_size=valid_size, test_size=test_size, split_seed=split_seed)


@register_dataset("cifar100")
def load_cifar100(
    root=None, *, train_size=None, valid_size=None, test_size=None, split_seed: int = 0
) -> Splits:
    """CIFAR-100 (fine labels) in torchvision's format (``cifar-100-python/`` under ``root``, or ``root``).

    train = the 50k train images; valid / test = seeded stratified halves (5k / 5k) of the test
    set, as the benchmark's x-valid / x-test. Benchmark mean/std; crop pad 4, flip.
    """
    name = "cifar100"
    files = ["train", "test"]
    expected = "expected cifar-100-python/{train, test} (torchvision's CIFAR-100 format)"
    d = _resolve_dir(root, dataset=name, subdirs=("cifar-100-python",), marker="train", expected=expected)
    loaded = []
    for f in files:
        p = _need(d, f, dataset=name, expected=expected)
        loaded.append(
            _batch_arrays(_load_pickle(p, dataset=name, expected=expected), p, dataset=name, expected=expected,
                          label_key="fine_labels", pixels=3 * 32 * 32, lo=0, hi=99)
        )
    (tr_x, tr_y), (te_x, te_y) = loaded
    info = _CIFAR100_INFO
    a, b = _halves(te_y, split_seed)
    tr_x, te_x = tr_x.reshape(-1, 3, 32, 32), te_x.reshape(-1, 3, 32, 32)
    parts = {"train": (tr_x, tr_y, None), "valid": (te_x, te_y, a), "test": (te_x, te_y, b)}
    return _build(info, parts, train_size=train_size, valid_size=valid_size, test_size=test_size, split_seed=split_seed)


@register_dataset("imagenet16-120")
def load_imagenet16_120(
    root=None, *, train_size=None, valid_size=None, test_size=None, split_seed: int = 0
) -> Splits:
    """The benchmark's ImageNet16-120: pickled ``train_data_batch_1..10`` and ``val_data``.

    Files in ``root`` (or ``root/ImageNet16``); labels 1..1000, only 1..120 kept (-> 0..119).
    train = all train batches; valid / test = seeded stratified halves of ``val_data``
    (3,000 / 3,000 in the real data). Benchmark ImageNet16 mean/std; crop pad 2, flip.
    """
    name = "imagenet16-120"
    files = [f"train_data_batch_{i}" for i in range(1, 11)] + ["val_data"]
    expected = "expected " + ", ".join(files) + " (the benchmark's pickled ImageNet16)"
    d = _resolve_dir(root, dataset=name, subdirs=("ImageNet16", "imagenet16"), marker="val_data", expected=expected)
    paths = [_need(d, f, dataset=name, expected=expected) for f in files]
    xs, ys = [], []
    for p in paths:
        x, y = _batch_arrays(_load_pickle(p, dataset=name, expected=expected), p, dataset=name,
                             expected=expected, label_key="labels", pixels=3 * 16 * 16, lo=1, hi=1000)
        keep = y <= 120
        xs.append(x[keep])
        ys.append(y[keep] - 1)
    tr_x = np.concatenate(xs[:10]).reshape(-1, 3, 16, 16)
    tr_y = np.concatenate(ys[:10])
    va_x, va_y = xs[10].reshape(-1, 3, 16, 16), ys[10]
    if tr_y.size == 0 or va_y.size < 2:
        raise DatasetError(f"{name}: {d} holds no images with labels 1..120 in the train batches or fewer than 2 in val_data; {expected}")
    info = _IMAGENET16_INFO
    a, b = _halves(va_y, split_seed)
    parts = {"train": (tr_x, tr_y, None), "valid": (va_x, va_y, a), "test": (va_x, va_y, b)}
    return _build(info, parts, train_size=train_size, valid_size=valid_size, test_size=test_size, split_seed=split_seed)


# ---------------------------------------------------------------------------------------------
# batching


class _CropFlip:
    """Vectorised random crop + horizontal flip, with the constant index grids cached.

    A sample's crop is given by ``shift`` = row * (W + 2 pad) + col of its top-left corner in the
    padded image, and ``flip`` (0/1). One padded copy of the batch and one gather; no Python
    loop per sample.
    """

    def __init__(self, channels: int, size: int, pad: int, fill: torch.Tensor) -> None:
        self.c, self.h, self.w, self.pad = int(channels), int(size), int(size), int(pad)
        self.hp, self.wp = self.h + 2 * self.pad, self.w + 2 * self.pad
        self.fill = fill
        dev = fill.device
        rows = (torch.arange(self.h, device=dev) * self.wp).view(self.h, 1)
        ar_w = torch.arange(self.w, device=dev)
        # table[0]: no flip, table[1]: flipped; offsets within one padded image
        self.table = torch.stack([rows + ar_w, rows + (self.w - 1 - ar_w)])  # (2, H, W)
        self._cap = 0

    def _grow(self, b: int) -> None:
        dev = self.fill.device
        self._cap = max(b, 2 * self._cap)
        per = self.c * self.hp * self.wp
        self.base = (torch.arange(self._cap, device=dev) * per).view(-1, 1, 1, 1) + (
            torch.arange(self.c, device=dev) * (self.hp * self.wp)
        ).view(1, self.c, 1, 1)
        self.canvas = self.fill.view(1, self.c, 1, 1).expand(self._cap, self.c, self.hp, self.wp)

    def shifts(self, offsets: torch.Tensor) -> torch.Tensor:
        """(N, 2) (row, col) crop corners in 0..2*pad -> (N,) flat shifts."""
        return offsets[:, 0] * self.wp + offsets[:, 1]

    def __call__(self, x: torch.Tensor, shift: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        if b > self._cap:
            self._grow(b)
        p = self.pad
        if p:
            xp = self.canvas[:b].clone()
            xp[:, :, p : p + self.h, p : p + self.w] = x
        else:
            xp = x.contiguous()
        grid = self.table.index_select(0, flip.long())  # (B, H, W)
        idx = grid.view(b, 1, self.h, self.w) + (self.base[:b] + shift.view(b, 1, 1, 1))
        return xp.view(-1).index_select(0, idx.view(-1)).view(b, self.c, self.h, self.w)


def crop_flip(
    x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int, fill: torch.Tensor
) -> torch.Tensor:
    """Random crop + horizontal flip of a batch (functional form of what :class:`Batches` does).

    ``x`` (B, C, H, W) with H == W; ``offsets`` int64 (B, 2) in 0..2*pad: (row, col) of the
    crop's top-left corner in the image padded by ``pad`` with ``fill`` (C,) per channel;
    ``flips`` bool (B,): flip that sample horizontally after cropping.
    """
    b, c, h, w = x.shape
    if h != w:
        raise ValueError(f"crop_flip needs square images, got {h}x{w}")
    op = _CropFlip(c, h, pad, fill.to(device=x.device, dtype=x.dtype))
    return op(x, op.shifts(offsets.to(x.device)), flips.to(x.device))


class Batches:
    """Iterates mini-batches of a :class:`Split` resident on one device.

    Each batch is an index select of the resident tensors; with ``augment`` (a
    :class:`DatasetInfo`) the batch is randomly cropped (padding ``augment.pad``, padded pixels
    are raw black, i.e. ``-mean/std``) and, when ``augment.flip``, horizontally flipped with
    probability 0.5, all vectorised on the device. The order and the augmentation draws of an
    epoch come from this object's own ``torch.Generator`` (CPU, seeded with ``seed``; the global
    RNG is never touched), so a stream is identical on any device.

    ``iter(batches)`` yields the rest of the current epoch (a whole epoch when it starts fresh);
    the next ``iter`` starts the next epoch (reshuffled). ``forever()`` chains epochs endlessly.
    ``state_dict()`` / ``load_state_dict()`` capture (epoch, position, RNG state): a fresh
    ``Batches`` over the same split that loads the state continues the identical stream.
    Batches are fresh tensors (safe to modify).
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        shuffle: bool = True,
        augment: DatasetInfo | None = None,
        drop_last: bool = False,
        seed: int = 0,
        device=None,
    ) -> None:
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        images, labels = split.images, split.labels
        if device is not None:
            images, labels = images.to(device), labels.to(device)
        self.images, self.labels = images, labels
        self.device = images.device
        self.n = int(labels.shape[0])
        self.augment = augment
        self._pad = 0
        self._flip = False
        self._fill = None
        if augment is not None:
            c = images.shape[1]
            if len(augment.mean) != c or len(augment.std) != c:
                raise ValueError(f"augment info {augment.name!r} has {len(augment.mean)} channels, split has {c}")
            self._pad = int(augment.pad)
            self._flip = bool(augment.flip)
            self._fill = torch.tensor(
                [-m / s for m, s in zip(augment.mean, augment.std)], dtype=images.dtype, device=self.device
            )
        self._augmenting = augment is not None and (self._pad > 0 or self._flip)
        self._op = None
        if self._augmenting:
            if images.shape[2] != images.shape[3]:
                raise ValueError(f"augmentation needs square images, got {images.shape[2]}x{images.shape[3]}")
            self._op = _CropFlip(images.shape[1], images.shape[2], self._pad, self._fill)
        self._gen = torch.Generator(device="cpu")
        self._gen.manual_seed(self.seed)
        self._epoch = 0
        self._pos = 0
        self._epoch_state = self._gen.get_state()
        self._plan = None  # (perm, crop shifts, flips) of the current epoch, on the device
        self._next_state = None

    # -- sizes and cursor
    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def position(self) -> int:
        """Batches already taken from the current epoch."""
        return self._pos

    # -- epoch plan
    def _prepare(self):
        if self._plan is None:
            g = self._gen
            g.set_state(self._epoch_state)
            n = self.n
            perm = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
            offsets = flips = None
            if self._augmenting:
                offsets = torch.randint(0, 2 * self._pad + 1, (n, 2), generator=g)
                if self._flip:
                    flips = (torch.rand(n, generator=g) < 0.5).long()
                else:
                    flips = torch.zeros(n, dtype=torch.long)
                offsets, flips = self._op.shifts(offsets).to(self.device), flips.to(self.device)
            self._next_state = g.get_state()
            self._plan = (perm.to(self.device), offsets, flips)
        return self._plan

    def _advance(self):
        self._prepare()
        self._epoch += 1
        self._pos = 0
        self._epoch_state = self._next_state
        self._plan = None

    def _batch(self, plan, i: int):
        perm, offsets, flips = plan
        s = i * self.batch_size
        e = min(s + self.batch_size, self.n)
        idx = perm[s:e]
        x = self.images.index_select(0, idx)
        y = self.labels.index_select(0, idx)
        if self._augmenting:
            x = self._op(x, offsets[s:e], flips[s:e])
        return x, y

    def _run_epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        nb = len(self)
        if self._pos >= nb:
            self._advance()
        plan = self._prepare()
        while self._pos < nb:
            i = self._pos
            self._pos += 1
            yield self._batch(plan, i)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self._run_epoch()

    def forever(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless stream of batches across epochs (reshuffled each epoch)."""
        if len(self) == 0:
            raise ValueError(
                f"Batches.forever: no batch per epoch (n={self.n}, batch_size={self.batch_size}, drop_last={self.drop_last})"
            )
        while True:
            yield from self._run_epoch()

    # -- resumption
    def state_dict(self) -> dict:
        return {
            "version": 1,
            "seed": self.seed,
            "epoch": self._epoch,
            "position": self._pos,
            "rng_state": self._epoch_state.clone(),
            "n": self.n,
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "augment": self._augmenting,
        }

    def load_state_dict(self, d: dict) -> None:
        """Continue the stream saved by :meth:`state_dict` (start a new ``iter`` afterwards)."""
        for key in ("n", "batch_size", "shuffle", "drop_last", "augment"):
            mine = getattr(self, "_augmenting" if key == "augment" else key)
            if d.get(key) != mine:
                raise ValueError(f"Batches.load_state_dict: saved {key}={d.get(key)!r}, this one has {mine!r}")
        self.seed = int(d["seed"])
        self._epoch = int(d["epoch"])
        self._pos = int(d["position"])
        state = d["rng_state"]
        if not isinstance(state, torch.Tensor):
            state = torch.as_tensor(np.asarray(state, dtype=np.uint8))
        self._epoch_state = state.to(device="cpu", dtype=torch.uint8).clone()
        self._plan = None
        self._next_state = None
