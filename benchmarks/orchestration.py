"""P1 and P2: raynas's orchestration against a plain single-process PyTorch loop, in one run.

P1: supernet training throughput (images/s) through the SupernetActor and `train` work units
    on Ray Tune vs a plain loop training the same supernet on the same data and batch size in
    one process with the same number of threads.
P2: scoring a cohort of candidates through `score` work units on Ray Tune (several cohorts in
    one fit, as in a search) vs a plain loop scoring them in-process (same supernet and batches).

Both sides are timed in the same run, interleaved (plain, raynas, plain, raynas, ...), and the
ratio is plain time / raynas time (1.0 = no overhead). raynas's side is the marginal cost of
units inside one Tune fit (a search pays Tune's start once: reported apart as search_start_s).
Run:

    python benchmarks/orchestration.py --dataset digits --C 16 --N 2
    python benchmarks/orchestration.py --dataset fashion-mnist --data-option resolution=16 --C 8 --N 1
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def plain_training(args, steps: int) -> float:
    """A plain loop: supernet, SGD, resident batches, uniform single paths. Returns images/s."""
    from raynas.data import Batches, load_dataset
    from raynas.spaces import get_space

    torch.set_num_threads(args.threads)
    splits = load_dataset(args.dataset, None, **args.data_options)
    space = get_space("nb201")
    net = space.build_supernet(C=args.C, N=args.N, num_classes=splits.info.num_classes,
                               in_channels=splits.info.in_channels)
    opt = torch.optim.SGD(net.parameters(), lr=0.025, momentum=0.9, nesterov=True, weight_decay=5e-4)
    batches = Batches(splits.train, args.batch_size, augment=splits.info, drop_last=True, seed=0).forever()
    rng = np.random.default_rng(0)
    net.train()
    for _ in range(5):  # warm-up, as the actor's first chunk is
        x, y = next(batches)
        F.cross_entropy(net(x, space.sample(rng)), y).backward()
    start = time.perf_counter()
    for _ in range(steps):
        x, y = next(batches)
        loss = F.cross_entropy(net(x, space.sample(rng)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
    return steps * args.batch_size / (time.perf_counter() - start)


def plain_scoring(args, archs) -> float:
    """Scores the archs in-process on one valid batch each. Returns seconds."""
    from raynas.data import Batches, load_dataset
    from raynas.spaces import get_space

    torch.set_num_threads(args.threads)
    splits = load_dataset(args.dataset, None, **args.data_options)
    space = get_space("nb201")
    net = space.build_supernet(C=args.C, N=args.N, num_classes=splits.info.num_classes,
                               in_channels=splits.info.in_channels).eval()
    stream = Batches(splits.valid, args.valid_batch_size, seed=1).forever()
    start = time.perf_counter()
    with torch.no_grad():
        for arch in archs:
            x, y = next(stream)
            logits = net(x, space.parse(arch))
            (logits.argmax(1) == y).float().mean().item()
    return time.perf_counter() - start


class _Units:
    """A searcher that emits a fixed list of work units, one at a time, then finishes."""

    def __new__(cls, units):
        from raynas.searchers.base import WorkUnitSearcher

        class FixedUnits(WorkUnitSearcher):
            def __init__(self, units):
                super().__init__(max_concurrent=1)
                self.units_ = list(units)

            def _next_unit(self):
                from ray.tune.search import Searcher

                if self.units_:
                    return self.units_.pop(0)
                return Searcher.FINISHED if self.idle else None

        return FixedUnits(units)


def raynas_units(args, run_id: str, units: list[dict], storage: str) -> float:
    """Runs the units through Tune on the existing actor, exactly as ``raynas search`` sets Tune
    up (``raynas.driver``'s trainable, ``raynas.lifecycle``'s tuner). Returns wall seconds of the fit."""
    from raynas.driver import DEFAULTS
    from raynas.supernets import work_unit_trainable
    from raynas.lifecycle import make_tuner

    run = {"run_id": run_id, "run_dir": storage, "space": "nb201", "dataset": args.dataset, "data_dir": None,
           "data_options": args.data_options}
    res = dict(DEFAULTS["resources"], max_concurrent=1)
    trainable = work_unit_trainable(run, res, standalone_gpus=0)
    tuner = make_tuner(trainable, _Units(units), storage=storage, name=f"{run_id}-{time.time_ns()}", max_concurrent=1)
    start = time.perf_counter()
    grid = tuner.fit()
    seconds = time.perf_counter() - start
    assert not grid.errors, grid.errors
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-option", action="append", default=[])
    parser.add_argument("--C", type=int, default=16)
    parser.add_argument("--N", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--valid-batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the plain loop = actor CPUs")
    parser.add_argument("--steps", type=int, default=600, help="P1 steps per measurement")
    parser.add_argument("--chunk", type=int, default=200, help="P1 steps per train work unit")
    parser.add_argument("--candidates", type=int, default=100, help="P2 cohort size")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    args.data_options = {k: ast.literal_eval(v) for k, v in (o.split("=", 1) for o in args.data_option)}

    import ray

    from raynas.actor import create_supernet_actor
    from raynas.spaces import get_space

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="raynas")
    storage = tempfile.mkdtemp(prefix="raynas-bench-")
    run_id = "bench"
    actor = create_supernet_actor(run_id, 0, dict(dataset=args.dataset, data_options=args.data_options, C=args.C,
                                                  N=args.N, batch_size=args.batch_size,
                                                  valid_batch_size=args.valid_batch_size,
                                                  total_steps=10**9, seed=0),
                                  num_cpus=args.threads)
    ray.get(actor.train.remote("uniform", steps=5))  # warm-up, as the plain loop's
    archs = [str(a) for a in get_space("nb201").sample(np.random.default_rng(0), args.candidates)]

    # Each side is timed in one run, interleaved. A search pays Tune's start (first trial worker,
    # experiment set-up) once; the per-unit cost is what scales. So raynas is timed as the
    # marginal cost of units inside one fit: fit(1 + k units) - fit(1 unit), over k units.
    p1_plain, p1_raynas, p2_plain, p2_raynas, start_costs = [], [], [], [], []
    version = 5

    def chunks(n):
        nonlocal version
        out = []
        for _ in range(n):
            version += args.chunk
            out.append({"kind": "train", "until": version, "policy": "uniform", "supernet": 0})
        return out

    k = args.steps // args.chunk
    cohort = {"kind": "score", "archs": archs, "batches": 1, "supernet": 0}
    for _ in range(args.repeats):
        p1_plain.append(plain_training(args, args.steps))
        one = raynas_units(args, run_id, chunks(1), storage)
        many = raynas_units(args, run_id, chunks(1 + k), storage)
        p1_raynas.append(k * args.chunk * args.batch_size / (many - one))
        start_costs.append(one - args.chunk * args.batch_size / p1_raynas[-1])
        p2_plain.append(plain_scoring(args, archs))
        one = raynas_units(args, run_id, [cohort], storage)
        many = raynas_units(args, run_id, [cohort] * 3, storage)
        p2_raynas.append((many - one) / 2)

    med = statistics.median
    result = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, ray {ray.__version__}",
        "setting": {k: v for k, v in vars(args).items() if k != "data_option"},
        "P1_plain_img_per_s": [round(v, 1) for v in p1_plain],
        "P1_raynas_img_per_s": [round(v, 1) for v in p1_raynas],
        "P1_ratio": round(med(p1_raynas) / med(p1_plain), 3),
        "P2_plain_s": [round(v, 3) for v in p2_plain],
        "P2_raynas_s": [round(v, 3) for v in p2_raynas],
        "P2_ratio": round(med(p2_plain) / med(p2_raynas), 3),
        "search_start_s": [round(v, 2) for v in start_costs],
    }
    print(json.dumps(result, indent=2))
    ray.shutdown()


if __name__ == "__main__":
    main()
