"""NAS-Bench-201 and NATS-Bench (topology) files as raynas truth tables; no Ray, prints nothing.

Formats read (through the official packages, the ``raynas[benchmarks]`` extra):

- **NAS-Bench-201** ``NAS-Bench-201-v1_0-e61699.pth`` / ``-v1_1-096897.pth``: a ``torch.save``d
  dict ``{'meta_archs': [15,625 arch strings], 'total_archs', 'arch2infos': {index: {'less':
  ArchResults state, 'full': ArchResults state}}, 'evaluated_indexes'}`` (legacy or zip torch
  format). ``less`` is the API's ``hp='12'`` (12 epochs), ``full`` its ``hp='200'``.
- **NATS-Bench topology** ``NATS-tss-v1_0-3ffb9-simple/``: ``meta.pickle.pbz2`` (``meta_archs``)
  and one ``{index:06d}.pickle.pbz2`` per arch, ``{hp: ArchResults state}`` with hp ``'12'``/``'200'``.

Memory: the official ``NASBench201API`` unpickles the whole ``.pth`` (~28 GB for v1.1). Here the
``.pth``'s pickle is streamed (:class:`_StreamingUnpickler`, a restricted pure-Python unpickler
that never imports or runs anything but the few types these files hold): each arch's record
becomes an official ``nas_201_api.ArchResults`` (``create_from_state_dict``), is turned into rows
and dropped, so at most one pickle batch (1,000 archs) is alive at once. Tensors (trained weights,
when a file holds them) are never read.

A row of the truth (:data:`COLUMNS`) is one (arch, benchmark dataset, epochs, seed) at the last
epoch. Accuracies are fractions (the files hold percentages). Which of the benchmark's splits
each column holds, per benchmark dataset (the official ``get_more_info``'s choice):

============== ========================= ================= =================================
dataset        trained on                valid_acc         test_acc
============== ========================= ================= =================================
cifar10-valid  CIFAR-10 train half (25k) ``x-valid`` (25k) ``ori-test`` (CIFAR-10 test, 10k)
cifar10        CIFAR-10 train (50k)      none (NaN)        ``ori-test``
cifar100       CIFAR-100 train           ``x-valid`` (5k)  ``x-test`` (5k)
ImageNet16-120 ImageNet16-120 train      ``x-valid`` (3k)  ``x-test`` (3k)
============== ========================= ================= =================================

``arch_index`` is the benchmark's index (checked against :func:`raynas.spaces.nb201.benchmark_order`
for every record and every ``meta_archs`` entry); ``arch_code`` is raynas's base-5 code.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import math
import os
import pickle
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from raynas.errors import UsageError
from raynas.spaces.nb201 import NUM_ARCHS, NB201Arch, benchmark_order

COLUMNS = [
    "arch", "arch_index", "arch_code", "dataset", "epochs", "seed", "params", "flops", "latency_s",
    "train_acc", "train_loss", "valid_acc", "valid_loss", "test_acc", "test_loss", "seconds",
]
BENCHMARK_DATASETS = ("cifar10-valid", "cifar10", "cifar100", "ImageNet16-120")
#: per benchmark dataset: the eval set behind valid_acc and behind test_acc (None: not measured)
SPLITS = {"cifar10-valid": ("x-valid", "ori-test"), "cifar10": (None, "ori-test"),
          "cifar100": ("x-valid", "x-test"), "ImageNet16-120": ("x-valid", "x-test")}
#: a raynas dataset (or a benchmark name) -> (benchmark dataset of the valid figure, of the test
#: figure): raynas's cifar10 is the benchmark's cifar10-valid protocol (its supernets score on the
#: valid half); the test figure the papers report for CIFAR-10 is cifar10's (trained on all 50k)
LOOKUP_DATASETS = {"cifar10": ("cifar10-valid", "cifar10"), "cifar10-valid": ("cifar10-valid", "cifar10-valid"),
                   "cifar100": ("cifar100", "cifar100"), "imagenet16-120": ("ImageNet16-120", "ImageNet16-120"),
                   "ImageNet16-120": ("ImageNet16-120", "ImageNet16-120")}
NB201_HPS = {"less": 12, "full": 200}
NATS_META = "meta.pickle.pbz2"
FORMATS = ("nas-bench-201", "nats-tss-simple")
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_EXPECTED = ("expected a NAS-Bench-201 .pth (NAS-Bench-201-v1_0-e61699.pth / -v1_1-096897.pth) or a NATS-Bench "
             "topology folder (NATS-tss-v1_0-3ffb9-simple)")


class BenchmarkError(UsageError):
    """A path that is not a benchmark raynas reads: one line naming it and what was expected."""


def _official(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise BenchmarkError(f"reading benchmark files needs the official API package {module!r}: "
                             "pip install 'raynas[benchmarks]'") from None


# --- the streaming reader of a torch .pth -----------------------------------------------------
class _Dropped:
    """What a tensor (or any torch object) in the file becomes: nothing is read or built."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __call__(self, *args, **kwargs):
        return None

    def __setstate__(self, state) -> None:
        pass


def _numpy_scalar(dtype, data=None):
    return np.frombuffer(data, dtype=dtype)[0].item() if data is not None else None


_SAFE_GLOBALS: dict[tuple[str, str], Callable] = {
    ("collections", "OrderedDict"): dict, ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set, ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar, ("numpy", "dtype"): np.dtype,
}


class _StreamingUnpickler(pickle._Unpickler):  # the pure-Python unpickler: its opcodes can be hooked
    """Unpickles a benchmark's top-level dict, handing each ``arch2infos`` item to ``on_record``
    instead of keeping it, and forgetting the memo entries no later record can need."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, on_record: Callable[[object, object], None]) -> None:
        super().__init__(file, encoding="latin1")
        self.on_record = on_record
        self.records = 0
        self._got: set = set()

    def persistent_load(self, pid):
        return None  # a tensor's storage: never read

    def find_class(self, module: str, name: str):
        if module == "torch" or module.startswith("torch."):
            return _Dropped
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"holds a {module}.{name} object, which no benchmark file holds") from None

    def _is_arch2infos(self) -> bool:
        outer = self.metastack[-1] if self.metastack else []
        return len(self.metastack) == 2 and len(outer) >= 2 and outer[-2] == "arch2infos"

    def _take(self, items: list) -> None:
        target = self.metastack[-1][-1]
        for i in range(0, len(items), 2):
            self.on_record(items[i], items[i + 1])
            target[items[i]] = None  # the index stays, its record is gone
            self.records += 1
        items.clear()
        self._prune()

    def _prune(self) -> None:
        """Keep the memo entries a later record may refer to: strings other than per-epoch keys
        ('x-valid@199') and immutable values referred to since the last prune; a container of one
        arch's record is never shared with another arch's (a GET of one fails loudly)."""
        keep = {}
        for index, obj in self.memo.items():
            if isinstance(obj, str):
                if "@" not in obj or index in self._got:
                    keep[index] = obj
            elif index in self._got and isinstance(obj, (bytes, int, float, tuple)):
                keep[index] = obj
            elif any(obj is held for stack in self.metastack for held in stack[-2:]):
                keep[index] = obj
        self.memo = keep
        self._got = set()

    def load_setitems(self):
        if self._is_arch2infos():
            self._take(self.stack)
            self.stack = self.metastack.pop()
            self.append = self.stack.append
            return
        super().load_setitems()

    def load_setitem(self):
        outer = self.stack
        if len(self.metastack) == 1 and len(outer) >= 4 and outer[-4] == "arch2infos" and isinstance(outer[-3], dict):
            value, key = outer.pop(), outer.pop()
            self.on_record(key, value)
            outer[-1][key] = None
            self.records += 1
            self._prune()
            return
        super().load_setitem()

    def _get(self, index: int):
        self._got.add(index)
        try:
            self.append(self.memo[index])
        except KeyError:
            raise pickle.UnpicklingError(f"refers back to object {index}, shared between archs, which no "
                                         "benchmark file does") from None

    def load_binget(self):
        self._get(self.read(1)[0])

    def load_long_binget(self):
        import struct

        self._get(struct.unpack("<I", self.read(4))[0])

    def load_get(self):
        self._get(int(self.readline()[:-1]))

    dispatch[pickle.SETITEMS[0]] = load_setitems
    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.BINGET[0]] = load_binget
    dispatch[pickle.LONG_BINGET[0]] = load_long_binget
    dispatch[pickle.GET[0]] = load_get


def _open_pickle(path: Path) -> tuple[io.BufferedIOBase, str]:
    """The main pickle stream of a torch file (zip or legacy format) and the format's name."""
    with open(path, "rb") as probe:
        head = probe.read(4)
    if head[:2] == b"PK":
        try:
            archive = zipfile.ZipFile(path)
            member = next(n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl"))
        except (zipfile.BadZipFile, StopIteration, OSError):
            raise BenchmarkError(f"{path}: a zip file but not a torch-saved one (no data.pkl), or truncated; "
                                 f"{_EXPECTED}") from None
        return io.BufferedReader(archive.open(member), buffer_size=1 << 20), "torch zip"
    stream = open(path, "rb", buffering=1 << 20)
    try:
        magic = pickle.load(stream)
        if magic != _TORCH_LEGACY_MAGIC:
            raise ValueError
        pickle.load(stream)  # protocol version
        pickle.load(stream)  # sys info
    except Exception:  # any unpickling failure: the file is not a torch legacy file
        stream.close()
        raise BenchmarkError(f"{path}: not a torch-saved file; {_EXPECTED}") from None
    return stream, "torch legacy"


# --- records -> rows --------------------------------------------------------------------------
@dataclass
class _Rows:
    """Rows of the truth, column by column (15,625 archs x ~25 rows stay small)."""

    keep: Callable[[str, int], bool] = lambda dataset, epochs: True
    columns: dict = field(default_factory=lambda: {c: [] for c in COLUMNS})
    archs: set = field(default_factory=set)

    def add(self, index: int, epochs: int, results) -> None:
        """Every (dataset, seed) of one official ``ArchResults`` at its last epoch."""
        arch = NB201Arch.from_benchmark_index(index)
        self.archs.add(index)
        for dataset in results.get_dataset_names():
            if not self.keep(dataset, epochs):
                continue
            valid_set, test_set = SPLITS.get(dataset, ("x-valid", "x-test"))
            for seed in results.get_dataset_seeds(dataset):
                run = results.query(dataset, seed)
                train = run.get_train()
                valid, test = _eval(run, valid_set), _eval(run, test_set)
                latency = run.get_latency()
                c = self.columns
                c["arch"].append(str(arch))
                c["arch_index"].append(index)
                c["arch_code"].append(arch.index)
                c["dataset"].append(dataset)
                c["epochs"].append(epochs)
                c["seed"].append(int(seed))
                # the files count in millions (params 'MB', FLOPs 'M'); raynas counts units
                c["params"].append(int(round(float(run.params) * 1e6)))
                c["flops"].append(int(round(float(run.flop) * 1e6)))
                c["latency_s"].append(float(latency) if latency and latency > 0 else math.nan)
                c["train_acc"].append(_fraction(train["accuracy"]))
                c["train_loss"].append(_number(train["loss"]))
                c["valid_acc"].append(_fraction(valid[0]))
                c["valid_loss"].append(_number(valid[1]))
                c["test_acc"].append(_fraction(test[0]))
                c["test_loss"].append(_number(test[1]))
                c["seconds"].append(_number(train["all_time"]))

    def frame(self) -> pd.DataFrame:
        table = pd.DataFrame(self.columns, columns=COLUMNS)
        for column in ("arch_index", "arch_code", "epochs", "seed", "params", "flops"):
            table[column] = table[column].astype("int64")
        return table.sort_values(["arch_index", "dataset", "epochs", "seed"], kind="stable").reset_index(drop=True)


def _number(value) -> float:
    return math.nan if value is None else float(value)


def _fraction(value) -> float:
    return _number(value) / 100.0


def _eval(run, name: str | None) -> tuple[float | None, float | None]:
    """(accuracy, loss) of eval set ``name`` at the run's last epoch (the official ``get_eval``;
    the v1.0 files store some sets at the last epoch only, without times)."""
    if name is None or name not in run.get_eval_set():
        return None, None
    try:
        info = run.get_eval(name)
        return info["accuracy"], info["loss"]
    except (KeyError, ValueError, AssertionError):
        key = f"{name}@{run.epochs - 1}"
        return run.eval_acc1es.get(key), run.eval_losses.get(key)


def _check_record(path: Path, index, results) -> int:
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < NUM_ARCHS:
        raise BenchmarkError(f"{path}: a record keyed {index!r}, not an arch index 0..{NUM_ARCHS - 1}; {_EXPECTED}")
    expected = str(NB201Arch.from_benchmark_index(index))
    if results.arch_str != expected:
        raise BenchmarkError(f"{path}: record {index} is arch {str(results.arch_str)[:120]}, but the official order has "
                             f"{expected} there; {_EXPECTED}")
    return index


def _check_meta_archs(path: Path, meta_archs) -> None:
    if not isinstance(meta_archs, (list, tuple)) or len(meta_archs) != NUM_ARCHS:
        size = len(meta_archs) if isinstance(meta_archs, (list, tuple)) else type(meta_archs).__name__
        raise BenchmarkError(f"{path}: meta_archs lists {size} archs; a benchmark lists all {NUM_ARCHS:,} {_EXPECTED[8:]}")
    codes = benchmark_order()[0]
    for index, text in enumerate(meta_archs):
        if text != str(NB201Arch.from_index(codes[index])):
            raise BenchmarkError(f"{path}: meta_archs[{index}] is {str(text)[:120]!r}, not the official order's "
                                 f"{NB201Arch.from_index(codes[index])}; {_EXPECTED}")


# --- the two formats --------------------------------------------------------------------------
def detect(path: str | os.PathLike) -> str:
    """The format of ``path`` (one of :data:`FORMATS`), from its layout only (cheap: nothing is
    unpickled but a NATS folder's small meta file)."""
    path = Path(path)
    if path.is_dir():
        if (path / NATS_META).is_file():
            return "nats-tss-simple"
        raise BenchmarkError(f"{path}: a folder without {NATS_META}; {_EXPECTED}")
    if not path.is_file():
        raise BenchmarkError(f"{path}: no such file or folder; {_EXPECTED}")
    stream, _ = _open_pickle(path)
    stream.close()
    return "nas-bench-201"


def _read_nb201(path: Path, rows: _Rows, wanted: set[int] | None) -> dict:
    archresults = _official("nas_201_api").ArchResults

    def on_record(index, info) -> None:
        if wanted is not None and index not in wanted:
            return
        if not isinstance(info, dict) or not set(info) & set(NB201_HPS):
            raise BenchmarkError(f"{path}: record {index!r} holds {sorted(info) if isinstance(info, dict) else type(info).__name__}, "
                                 f"not 'less'/'full' results; {_EXPECTED}")
        for hp, state in info.items():
            if hp not in NB201_HPS:
                continue
            try:
                results = archresults.create_from_state_dict(state)
            except Exception as err:  # the official class refuses it: not a benchmark record
                raise BenchmarkError(f"{path}: record {index} {hp}: not an ArchResults state ({err}); {_EXPECTED}") from None
            _check_record(path, index, results)
            rows.add(index, NB201_HPS[hp], results)

    stream, container = _open_pickle(path)
    unpickler = _StreamingUnpickler(stream, on_record)
    try:
        top = unpickler.load()
    except BenchmarkError:
        raise
    except (EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, TypeError, IndexError, KeyError,
            AttributeError, OSError) as err:
        raise BenchmarkError(f"{path}: truncated or damaged ({type(err).__name__}: {str(err)[:120]}); {_EXPECTED}") from None
    finally:
        stream.close()
    if not isinstance(top, dict) or not {"meta_archs", "arch2infos", "evaluated_indexes"} <= set(top):
        keys = sorted(map(str, top))[:6] if isinstance(top, dict) else type(top).__name__
        raise BenchmarkError(f"{path}: holds {keys}, not meta_archs/arch2infos/evaluated_indexes; {_EXPECTED}")
    _check_meta_archs(path, top["meta_archs"])
    held = set(top["arch2infos"])
    evaluated = set(top["evaluated_indexes"])
    if evaluated != held:
        missing = sorted(evaluated - held) or sorted(held - evaluated)
        raise BenchmarkError(f"{path}: evaluated_indexes and arch2infos disagree on {len(evaluated ^ held)} arch(s), "
                             f"e.g. index {missing[0]} (truncated or edited); {_EXPECTED}")
    name = path.name
    version = "v1.0" if "v1_0" in name else "v1.1" if "v1_1" in name else "unknown"
    return {"format": "nas-bench-201", "container": container, "version": version, "evaluated": len(evaluated)}


def _nats_file(folder: Path, index: int) -> Path | None:
    for name in (f"{index:06d}.{NATS_META[5:]}", f"{index}.{NATS_META[5:]}"):
        if (folder / name).is_file():
            return folder / name
    return None


def _read_nats(path: Path, rows: _Rows, wanted: set[int] | None) -> dict:
    nats = _official("nats_bench.api_utils")
    try:
        meta = nats.pickle_load(str(path / NATS_META))
    except Exception as err:  # bz2/pickle errors of a damaged file
        raise BenchmarkError(f"{path}: {NATS_META} is truncated or damaged ({type(err).__name__}); {_EXPECTED}") from None
    if not isinstance(meta, dict) or "meta_archs" not in meta:
        raise BenchmarkError(f"{path}: {NATS_META} holds no meta_archs; {_EXPECTED}")
    _check_meta_archs(path, meta["meta_archs"])
    evaluated = 0
    for index in sorted(wanted) if wanted is not None else range(NUM_ARCHS):
        file = _nats_file(path, index)
        if file is None:
            continue
        evaluated += 1
        try:
            info = nats.pickle_load(str(file))
            hps = {hp: nats.ArchResults.create_from_state_dict(state) for hp, state in info.items()}
        except Exception as err:  # bz2/pickle/state errors of a damaged record
            raise BenchmarkError(f"{file}: truncated or damaged ({type(err).__name__}); {_EXPECTED}") from None
        for hp, results in hps.items():
            _check_record(path, index, results)
            rows.add(index, int(hp), results)
    if wanted is None and evaluated == 0:
        raise BenchmarkError(f"{path}: holds no arch files ({{index:06d}}.pickle.pbz2); {_EXPECTED}")
    return {"format": "nats-tss-simple", "container": "bz2 pickles", "version": "v1.0" if "v1_0" in path.name else "unknown",
            "evaluated": evaluated}


def read_benchmark(path: str | os.PathLike, *, archs: Iterable[int] | None = None,
                   keep: Callable[[str, int], bool] | None = None) -> tuple[pd.DataFrame, dict]:
    """The truth rows of a benchmark (:data:`COLUMNS`) and facts about it (format, version,
    archs evaluated). ``archs``: only these benchmark indexes; ``keep(dataset, epochs)``: only
    those results. Raises :class:`BenchmarkError` (one line) for anything that is not a benchmark."""
    path = Path(path)
    kind = detect(path)
    rows = _Rows(keep=keep or (lambda dataset, epochs: True))
    wanted = None if archs is None else {int(a) for a in archs}
    facts = (_read_nb201 if kind == "nas-bench-201" else _read_nats)(path, rows, wanted)
    return rows.frame(), facts


# --- the truth table --------------------------------------------------------------------------
def _fingerprint(path: Path) -> tuple[int, str]:
    """Total bytes and sha256 of a file, or of a folder's files in name order."""
    digest, size = hashlib.sha256(), 0
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    for file in files:
        if path.is_dir():
            digest.update(file.name.encode())
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
                size += len(chunk)
    return size, digest.hexdigest()


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def check_output(output: str | os.PathLike) -> None:
    """Refuse an ``output`` that is not a new ``.parquet`` (a truth, or its .json, is never overwritten)."""
    from raynas.truth import _sidecar

    output = Path(output)
    if output.suffix != ".parquet":
        raise UsageError(f"--output {output}; expected a .parquet file name")
    for target in (output, _sidecar(output)):
        if target.exists():
            raise UsageError(f"--output {output}: {target} already exists; choose a new file (a truth is never overwritten)")


def import_benchmark(path: str | os.PathLike, output: str | os.PathLike) -> tuple[Path, dict]:
    """Write the truth of benchmark ``path`` to ``output`` (.parquet, never overwritten) and its
    facts to ``output`` with a ``.json`` suffix; returns ``(output, facts)``. Nothing is left
    behind when the path is not a benchmark."""
    from raynas.ranking import TRUTH_METADATA_KEY
    from raynas.results import write_json
    from raynas.truth import _sidecar, _versions, _write

    path, output = Path(path), Path(output)
    check_output(output)
    start = time.perf_counter()
    table, facts = read_benchmark(path)
    read_s = time.perf_counter() - start
    size, sha256 = _fingerprint(path)
    held = table.groupby(["dataset", "epochs"])
    meta = {
        "kind": "benchmark",
        "source": {"path": str(path.resolve()), "name": path.name, "bytes": size, "sha256": sha256, **facts},
        "metric": "valid_acc",
        "truth": "mean over seeds of valid_acc, per (dataset, epochs): choose them with `raynas rank --truth-dataset "
                 "--truth-epochs`",
        "splits": {d: {"valid_acc": v, "test_acc": t} for d, (v, t) in SPLITS.items()},
        "accuracy_unit": "fraction (the files hold percentages)",
        "held": [{"dataset": d, "epochs": int(e), "archs": int(g["arch_index"].nunique()), "rows": len(g),
                  "seeds": sorted(int(s) for s in g["seed"].unique())} for (d, e), g in held],
        "archs": int(table["arch_index"].nunique()),
        "complete": int(table["arch_index"].nunique()) == NUM_ARCHS,
        "rows": len(table),
        "cost": {"read_s": read_s, "peak_rss_mb": _peak_rss_mb()},
        "versions": _versions(),
        "built": dt.datetime.now().isoformat(timespec="seconds"),
    }
    try:
        _write(table, meta, output, metadata_key=TRUTH_METADATA_KEY)
        meta["cost"]["wall_s"] = time.perf_counter() - start
        write_json(_sidecar(output), meta)
    except BaseException:
        for target in (output, _sidecar(output), output.with_name(f".{output.name}.tmp")):
            target.unlink(missing_ok=True)
        raise
    return output, meta


# --- lookups ----------------------------------------------------------------------------------
def lookup_datasets(dataset: str) -> tuple[str, str]:
    """(benchmark dataset of the valid figure, of the test figure) for a raynas or benchmark name."""
    try:
        return LOOKUP_DATASETS[dataset]
    except KeyError:
        raise UsageError(f"dataset {dataset!r} has no NAS-Bench-201 counterpart; name the benchmark's dataset with "
                         f"--benchmark-dataset {{cifar10,cifar100,imagenet16-120}}") from None


def is_benchmark_truth(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a parquet truth made by :func:`import_benchmark`."""
    import pyarrow.parquet as pq

    from raynas.ranking import TRUTH_METADATA_KEY

    path = Path(path)
    if not (path.is_file() and path.suffix == ".parquet"):
        return False
    import json

    raw = (pq.read_schema(path).metadata or {}).get(TRUTH_METADATA_KEY)
    return bool(raw) and json.loads(raw).get("kind") == "benchmark"


def check_source(path: str | os.PathLike) -> str:
    """``'truth'`` for a benchmark truth parquet, the format for a benchmark; else BenchmarkError."""
    path = Path(path)
    if path.suffix == ".parquet":
        if path.is_file() and is_benchmark_truth(path):
            return "truth"
        raise BenchmarkError(f"{path}: not a truth made by `raynas truth --from-benchmark`; {_EXPECTED}, or such a truth")
    return detect(path)


def benchmark_truth(path: str | os.PathLike, *, archs: Iterable[int] | None = None,
                    datasets: Iterable[str] | None = None, epochs: int | None = None) -> pd.DataFrame:
    """Truth rows from a benchmark truth parquet (reading only the rows asked for) or a benchmark."""
    datasets = None if datasets is None else sorted(set(datasets))
    path = Path(path)
    if check_source(path) == "truth":
        filters = []
        if datasets is not None:
            filters.append(("dataset", "in", datasets))
        if epochs is not None:
            filters.append(("epochs", "==", int(epochs)))
        if archs is not None:
            filters.append(("arch_index", "in", sorted({int(a) for a in archs})))
        return pd.read_parquet(path, filters=filters or None)
    keep = lambda d, e: (datasets is None or d in datasets) and (epochs is None or e == int(epochs))  # noqa: E731
    return read_benchmark(path, archs=archs, keep=keep)[0]


def lookup(source: dict, archs: Iterable[str]) -> pd.DataFrame:
    """``bench_valid_acc`` and ``bench_test_acc`` (means over seeds) of each arch string, from
    ``source`` = ``{"path", "dataset", "epochs"}`` (a run's ``benchmark`` setting); NaN where the
    benchmark holds no result."""
    archs = sorted(set(archs))
    valid_ds, test_ds = lookup_datasets(source["dataset"])
    indexes = {a: NB201Arch.from_string(a).benchmark_index for a in archs}
    rows = benchmark_truth(source["path"], archs=indexes.values(), datasets={valid_ds, test_ds},
                           epochs=int(source.get("epochs", 200)))
    valid = rows[rows["dataset"] == valid_ds].groupby("arch_index")["valid_acc"].mean()
    test = rows[rows["dataset"] == test_ds].groupby("arch_index")["test_acc"].mean()
    return pd.DataFrame({"bench_valid_acc": [valid.get(indexes[a], math.nan) for a in archs],
                         "bench_test_acc": [test.get(indexes[a], math.nan) for a in archs]}, index=archs)
