"""P2 at scale: scoring N candidates through Tune (batched rows) vs the same scoring in one process.

The plain side is raynas's own scoring code in this process (a ``SupernetWorker``, one torch
thread: what the actor runs), with no Ray in the loop. raynas's side is the same cohorts as
``score`` work units on the supernet actor (1 CPU), through the trainable and tuner that
``raynas search`` uses, timed by a Tune callback from the first score unit's start to the last
one's end (Tune's experiment start, paid once per search, is reported apart; a 1-step train unit
first starts the trial process, as a search's first chunk does). The scores must agree.

    python benchmarks/scoring_scale.py --sizes 100,1000,15625 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import numpy as np


def _settings(args) -> dict:
    return dict(dataset=args.dataset, data_options={}, C=args.C, N=args.N, batch_size=64,
                valid_batch_size=args.valid_batch_size, total_steps=10**9, seed=0)


def plain(worker, archs: list[str], cohort: int) -> tuple[float, list[float]]:
    start = time.perf_counter()
    scores = []
    for i in range(0, len(archs), cohort):
        scores += [r["valid_acc"] for r in worker.score(archs[i:i + cohort], batches=1, start=i, version=worker.version)]
    return time.perf_counter() - start, scores


def raynas(args, run_id: str, storage: str, archs: list[str], cohort: int, version: int) -> tuple[float, float, list[float]]:
    from ray.tune import Callback

    from raynas.driver import DEFAULTS
    from raynas.lifecycle import make_tuner
    from raynas.rowlog import unpack
    from raynas.supernets import work_unit_trainable
    from orchestration import _Units  # this folder is on sys.path when run as a script

    class Clock(Callback):
        def __init__(self):
            self.first = self.last = None
            self.scores = {}

        def on_trial_start(self, iteration, trials, trial, **info):
            if trial.config.get("kind") == "score" and self.first is None:
                self.first = time.perf_counter()

        def on_trial_result(self, iteration, trials, trial, result, **info):
            for row in unpack(result):
                if row.get("kind") == "score":
                    self.scores[row["position"] + trial.config["first_batch"]] = row["valid_acc"]

        def on_trial_complete(self, iteration, trials, trial, **info):
            if trial.config.get("kind") == "score":
                self.last = time.perf_counter()

    run = {"run_id": run_id, "run_dir": storage, "space": "nb201", "dataset": args.dataset, "data_dir": None,
           "data_options": {}}
    res = dict(DEFAULTS["resources"], max_concurrent=1)
    units = [{"kind": "train", "until": version, "start": version, "policy": "uniform", "supernet": 0}]
    units += [{"kind": "score", "archs": archs[i:i + cohort], "batches": 1, "first_batch": i, "version": version,
               "supernet": 0, "key": f"score/0/c{i}"} for i in range(0, len(archs), cohort)]
    clock = Clock()
    tuner = make_tuner(work_unit_trainable(run, res, standalone_gpus=0), _Units(units), storage=storage,
                       name=f"{run_id}-{time.time_ns()}", max_concurrent=1, callbacks=[clock])
    began = time.perf_counter()
    grid = tuner.fit()
    assert not grid.errors, grid.errors
    return clock.last - clock.first, clock.first - began, [clock.scores[i] for i in range(len(archs))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--C", type=int, default=16)
    parser.add_argument("--N", type=int, default=2)
    parser.add_argument("--valid-batch-size", type=int, default=256)
    parser.add_argument("--sizes", default="100,1000,15625")
    parser.add_argument("--cohort", type=int, default=625, help="candidates per score unit (at most; the few-shot paper preset's)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved pairs per size (1 for sizes >= 10,000)")
    args = parser.parse_args()

    import ray
    import torch

    from raynas.actor import create_supernet_actor
    from raynas.spaces import get_space
    from raynas.worker import SupernetWorker

    torch.set_num_threads(1)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="raynas")
    storage = tempfile.mkdtemp(prefix="raynas-p2-")
    actor = create_supernet_actor("p2", 0, _settings(args), num_cpus=1)
    version = ray.get(actor.train.remote("uniform", steps=5))["version"]
    worker = SupernetWorker(**_settings(args), device="cpu", num_threads=1)
    worker.train("uniform", steps=5)  # the same weights: same seed, same 5 steps
    space = get_space("nb201")
    rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        archs = [str(a) for a in space.enumerate()][:n] if n >= len(space) else \
            [str(a) for a in space.sample(np.random.default_rng(n), n)]
        cohort = min(args.cohort, max(1, n))
        plain_s, raynas_s, start_s = [], [], []
        for _ in range(1 if n >= 10_000 else args.repeats):
            p, plain_scores = plain(worker, archs, cohort)
            r, s, raynas_scores = raynas(args, "p2", storage, archs, cohort, version)
            if not np.allclose(plain_scores, raynas_scores, atol=1e-6):  # same weights, batches, code
                raise SystemExit(f"scores differ at {n} candidates: plain {plain_scores[:3]} raynas {raynas_scores[:3]}")
            plain_s.append(p)
            raynas_s.append(r)
            start_s.append(s)
        row = {"candidates": n, "cohort": cohort, "plain_s": [round(x, 2) for x in plain_s],
               "raynas_s": [round(x, 2) for x in raynas_s], "tune_start_s": [round(x, 2) for x in start_s],
               "ratio": round(statistics.median(plain_s) / statistics.median(raynas_s), 3),
               "ms_per_candidate": round(1000 * statistics.median(raynas_s) / n, 2),
               "load": os.getloadavg()[0]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({"machine": f"{platform.node()} {os.cpu_count()} cores, torch {torch.__version__}, "
                                 f"ray {ray.__version__}", "setting": vars(args), "rows": rows}, indent=2))
    ray.shutdown()


if __name__ == "__main__":
    main()
