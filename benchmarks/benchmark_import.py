"""Import a full-size NAS-Bench-201 file: peak memory and time of `raynas truth --from-benchmark`.

No benchmark file can be downloaded here, so this script writes one in the real format: the
official ``nas_201_api`` classes (``ArchResults`` / ``ResultsCount``) build every arch's record
as the official ``exps/NAS-Bench-201/statistics.py`` does, with v1.1's layout (``full``: 200
epochs on cifar10-valid, cifar10, cifar100 and ImageNet16-120, each arch trained under 1, 2 or 3
seeds in v1.1's proportions, every eval set at every epoch; ``less``: 12 epochs, cifar10-valid
twice and the others once), random values. The file is a torch legacy-format ``.pth`` (what
torch 1.4 wrote in 2020) of ``{'meta_archs', 'total_archs', 'arch2infos', 'evaluated_indexes'}``.
``torch.save`` would need the whole dict in memory (~28 GB), so the pickle is written arch by
arch: each record's opcodes from ``pickle.dumps(..., protocol=2)`` (torch's protocol) inside the
dict's SETITEMS batches of 1,000, as the pickler itself batches them.

    python benchmarks/benchmark_import.py --output /tmp/nb201-full.pth          # write, then import
    python benchmarks/benchmark_import.py --archs 20 --check                   # small file vs the official API

The import runs in a child process so that its peak RSS is its own (``ru_maxrss``).
"""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MAGIC, PROTOCOL_VERSION = 0x1950A86A20F9469CFC6C, 1001
SYS_INFO = dict(protocol_version=PROTOCOL_VERSION, little_endian=True, type_sizes=dict(short=2, int=4, long=4))
EVAL_SETS = {"cifar10-valid": ["x-valid", "ori-test"], "cifar10": ["ori-test"],
             "cifar100": ["ori-test", "x-valid", "x-test"], "ImageNet16-120": ["ori-test", "x-valid", "x-test"]}
CLASSES = {"cifar10-valid": 10, "cifar10": 10, "cifar100": 100, "ImageNet16-120": 120}
SEEDS = (777, 888, 999)
#: v1.1: 2,225 archs trained once, 5,439 twice, 7,961 three times
SEED_SHARES = np.array([2225, 5439, 7961]) / 15625


def _result(ResultsCount, dataset, seed, epochs, arch_str, rng):
    acc = (rng.random(epochs) * 100).tolist()
    results = ResultsCount(dataset, None, dict(enumerate(acc)), dict(enumerate(rng.random(epochs).tolist())),
                           float(rng.random() + 0.1), float(rng.random() * 200), {"channel": 16, "num_cells": 5,
                           "arch_str": arch_str, "class_num": CLASSES[dataset]}, seed, epochs, [float(rng.random() * 0.02)])
    results.update_train_info(dict(enumerate(acc)), dict(enumerate((rng.random(epochs) * 100).tolist())),
                              dict(enumerate(rng.random(epochs).tolist())), dict(enumerate(rng.random(epochs).tolist())))
    accs, losses, times = {}, {}, {}
    for name in EVAL_SETS[dataset]:
        a, l, t = (rng.random(epochs) * 100).tolist(), rng.random(epochs).tolist(), rng.random(epochs).tolist()
        for i in range(epochs):
            key = f"{name}@{i}"
            accs[key], losses[key], times[key] = a[i], l[i], t[i]
    results.update_eval(accs, losses, times)
    return results


def arch_record(index: int, arch_str: str, rng) -> dict:
    """One arch's ``{'less', 'full'}`` record, built with the official classes."""
    from nas_201_api import ArchResults, ResultsCount

    full, less = ArchResults(index, arch_str), ArchResults(index, arch_str)
    seeds = SEEDS[: 1 + int(rng.choice(3, p=SEED_SHARES))]
    for dataset in EVAL_SETS:
        for seed in seeds:
            full.update(dataset, seed, _result(ResultsCount, dataset, seed, 200, arch_str, rng))
        for seed in SEEDS[:2] if dataset == "cifar10-valid" else SEEDS[:1]:
            less.update(dataset, seed, _result(ResultsCount, dataset, seed, 12, arch_str, rng))
    return {"less": less.state_dict(), "full": full.state_dict()}


def _body(obj) -> bytes:
    """The opcodes that build ``obj`` (a protocol-2 pickle without its PROTO header and STOP)."""
    data = pickle.dumps(obj, protocol=2)
    return data[2:-1]


def write_benchmark(path: Path, archs: int, seed: int = 0) -> dict:
    """A NAS-Bench-201 v1.1-layout .pth holding the first ``archs`` benchmark indexes."""
    from raynas.spaces.nb201 import NUM_ARCHS, NB201Arch

    rng = np.random.default_rng(seed)
    meta = [str(NB201Arch.from_benchmark_index(i)) for i in range(NUM_ARCHS)]
    start, cpu = time.perf_counter(), time.process_time()
    with open(path, "wb") as out:
        for small in (MAGIC, PROTOCOL_VERSION, SYS_INFO):
            pickle.dump(small, out, protocol=2)
        out.write(b"\x80\x02}(")  # PROTO 2, EMPTY_DICT (the top dict), MARK
        out.write(_body("meta_archs") + _body(meta) + _body("total_archs") + _body(NUM_ARCHS))
        out.write(_body("arch2infos") + b"}")
        for first in range(0, archs, 1000):
            out.write(b"(")
            for index in range(first, min(first + 1000, archs)):
                out.write(_body(index) + _body(arch_record(index, meta[index], rng)))
            out.write(b"u")  # SETITEMS
        out.write(_body("evaluated_indexes") + _body(list(range(archs))) + b"u.")
        pickle.dump([], out, protocol=2)  # the (no) tensor storages
    return {"archs": archs, "bytes": path.stat().st_size, "write_s": time.perf_counter() - start,
            "write_cpu_s": time.process_time() - cpu}


def _child(args) -> int:
    from raynas.nasbench import import_benchmark

    start = time.perf_counter()
    _, meta = import_benchmark(args.input, args.truth)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"import_s": time.perf_counter() - start, "rows": meta["rows"], "archs": meta["archs"],
                      "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024}))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="/tmp/NAS-Bench-201-v1_1-full-size.pth")
    parser.add_argument("--archs", type=int, default=15625)
    parser.add_argument("--keep", action="store_true", help="keep an existing --output (skip writing)")
    parser.add_argument("--check", action="store_true", help="compare with the official NASBench201API (small files)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--truth", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args)
    path = Path(args.output)
    written = {"archs": args.archs, "bytes": path.stat().st_size, "write_s": None} if args.keep and path.exists() \
        else write_benchmark(path, args.archs)
    print(f"file {path}: {written['bytes'] / 2**30:.2f} GiB, {written['archs']} archs"
          + (f", written in {written['write_s']:.0f} s ({written['write_cpu_s']:.0f} s CPU)" if written["write_s"] else ""),
          flush=True)
    truth = path.with_suffix(".parquet")
    for old in (truth, truth.with_suffix(".json")):
        old.unlink(missing_ok=True)
    done = subprocess.run([sys.executable, __file__, "--child", "--input", str(path), "--truth", str(truth)],
                          capture_output=True, text=True)
    if done.returncode:
        print(done.stderr, file=sys.stderr)
        return done.returncode
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"import: {figures['import_s']:.0f} s wall ({figures['cpu_s']:.0f} s CPU), peak RSS {figures['peak_rss_mb'] / 1024:.2f} GiB, "
          f"{figures['rows']:,} rows for {figures['archs']:,} archs -> {truth}")
    if args.check:
        import pandas as pd
        from nas_201_api import NASBench201API

        api = NASBench201API(str(path), verbose=False)
        table = pd.read_parquet(truth)
        for row in table.sample(min(50, len(table)), random_state=0).itertuples():
            info = api.get_more_info(int(row.arch_index), row.dataset, hp=str(row.epochs), is_random=int(row.seed))
            assert abs(info["train-accuracy"] / 100 - row.train_acc) < 1e-12
            if row.dataset != "cifar10":
                assert abs(info["valid-accuracy"] / 100 - row.valid_acc) < 1e-12
            assert abs(info["test-accuracy"] / 100 - row.test_acc) < 1e-12
        print("check: 50 rows agree with the official NASBench201API")
    return 0


if __name__ == "__main__":
    sys.exit(main())
