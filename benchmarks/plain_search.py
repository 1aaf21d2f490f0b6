"""The plain side of benchmarks/whole_job.py: one raynas search in one process, no Ray started.

    python benchmarks/plain_search.py --method rsps --dataset digits [--set SECTION.KEY=VALUE ...] --out DIR

It does the search ``raynas search`` does, with raynas's Ray-free parts, one work unit at a time:

- the configuration exactly as the CLI builds it (:func:`raynas.settings.make_config`);
- the resources sized by :func:`raynas.plan.plan_resources` for this machine as one fixed Ray node
  would see it (its CPUs, no GPU): the supernet actor's CPU share gives its torch threads (as
  :class:`raynas.actor.SupernetActor` takes ``int(share)``), the standalone share the standalone
  training's; ``max_concurrent`` goes to the searcher as the driver passes it;
- the supernet as the actor builds it: :meth:`raynas.supernets.SupernetActors.worker_kwargs` of
  :func:`raynas.driver.actor_config`, in a :class:`raynas.worker.SupernetWorker` on the CPU, with no
  snapshots (``snapshot_dir=None``: the plain loop keeps no checkpoints);
- the searcher as :meth:`raynas.driver.SearchExperiment.new_searcher` makes it (``total_steps``
  from the worker's info);
- each unit executed as :func:`raynas.trainable.work_unit` does (train, score, standalone), its rows
  fed to ``searcher.on_trial_result`` and its last row to ``searcher.on_trial_complete``.

This is the physical limit of orchestration on one machine: no processes, no messages, no
checkpoints, one unit at a time. It skips the FLOP/parameter table raynas builds at the end
(``raynas.results.build_tables``): only the candidates' scores and the final arch are compared.
Writes ``DIR/plain.json``: the candidates' scores, the final arch, the standalone trainings' last
rows, each unit's own seconds and a timeline (seconds since this script started; ``started`` is
the epoch time of its first line, so a caller can add the interpreter's start-up).

Methods whose units are all train/score/standalone run (rsps, setn, evnas, nao, random); TE-NAS's
proxy units and few-shot NAS (several supernets) are refused: this benchmark does not need them.
"""

from __future__ import annotations

import time

STARTED = time.time()  # before the imports: they are part of what is measured
CLOCK = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402


def since_start() -> float:
    return round(time.perf_counter() - CLOCK, 3)


def parse_set(items: list[str] | None) -> dict:
    """``SECTION.KEY=VALUE`` pairs exactly as ``raynas search --set`` reads them (the CLI's own parser)."""
    from raynas.cli import _parse_set
    from raynas.errors import UsageError

    try:
        return _parse_set(items or [])
    except UsageError as err:
        raise SystemExit(str(err)) from None


def node_cpus() -> float:
    """The CPUs an embedded local Ray gives its one node here (the CPUs this process may use)."""
    try:
        return float(len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return float(os.cpu_count() or 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="rsps")
    parser.add_argument("--space", default="nb201")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE")
    parser.add_argument("--num-cpus", type=float, default=None, help="the node's CPUs (default: this machine's)")
    parser.add_argument("--out", required=True, help="folder for plain.json")
    args = parser.parse_args(argv)

    import torch
    from ray.tune.search import Searcher  # the FINISHED marker; imports Ray's Python side, starts nothing

    from raynas.cluster import ClusterView
    from raynas.data import load_dataset
    from raynas.driver import actor_config
    from raynas.plan import plan_resources
    from raynas.searchers import get_searcher_class
    from raynas.settings import make_config
    from raynas.spaces import get_space
    from raynas.standalone import RECIPE, StandaloneTraining
    from raynas.supernets import SupernetActors
    from raynas.worker import SupernetWorker

    timeline: dict[str, float] = {"imported": since_start()}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    config = make_config(args.method, space=args.space, dataset=args.dataset, preset=args.preset, seed=args.seed,
                         overrides=parse_set(args.set))
    config["run_id"], config["benchmark"] = "plain", None
    if config["searcher"].get("few_shot"):
        raise SystemExit("plain_search: few-shot NAS (several supernets) is not supported by this benchmark")
    space = get_space(config["space"])
    searcher_class = get_searcher_class(config["method"])
    uses_supernet = getattr(searcher_class, "uses_supernet", True)
    view = ClusterView(nodes=({"CPU": args.num_cpus or node_cpus()},), autoscaler=False)
    plan = plan_resources(config, view, uses_supernet=uses_supernet)
    actor_threads = max(1, int(plan.actor.get("CPU", 1.0))) if uses_supernet else None
    standalone_threads = max(1, int(plan.res["standalone_cpus"]))

    worker = None
    if uses_supernet:
        kwargs = SupernetActors(actor_config(config), out_dir / "unused", plan, space).worker_kwargs(0)
        kwargs.update(snapshot_dir=None, expect_snapshot=False, device="cpu", num_threads=actor_threads)
        worker = SupernetWorker(**kwargs)
        info = worker.info()
    else:
        splits = load_dataset(config["dataset"], config["data_dir"], **config["data_options"])
        info = {"device": "cpu", "num_classes": splits.info.num_classes}
    timeline["worker_ready"] = since_start()

    searcher_kwargs = dict(config["searcher"], space=config["space"], seed=config["seed"],
                           max_concurrent=int(plan.res["max_concurrent"]))
    if "total_steps" in info:
        searcher_kwargs["total_steps"] = info["total_steps"]
    searcher = searcher_class(**searcher_kwargs)
    # what Tune tells a searcher when it runs it (raynas's tune_config vouches for the same)
    searcher.set_search_properties(None, None, {}, num_samples=-1)

    splits_cache: dict = {}

    def standalone_splits():
        # the trainable loads the data once per trial process (config's data options, not the actor's roles)
        if "splits" not in splits_cache:
            splits_cache["splits"] = load_dataset(config["dataset"], config["data_dir"], **config["data_options"])
        return splits_cache["splits"]

    def run_unit(unit: dict):
        """The rows of one unit, as raynas.trainable.work_unit reports them."""
        kind = unit.get("kind")
        base = {"kind": kind, "unit": unit.get("unit", -1), "key": unit.get("key") or f"unit/{unit.get('unit', -1)}"}
        if kind == "train":
            torch.set_num_threads(actor_threads)
            out = worker.train(unit.get("policy", "uniform"), until=unit["until"], start=unit.get("start"))
            yield {**base, "position": 0, "supernet": unit.get("supernet", 0), **out}
        elif kind == "score":
            torch.set_num_threads(actor_threads)
            batches = unit.get("batches", 1)
            first = int(unit.get("first_batch") or 0)
            # candidate j reads valid batches first + j * batches..., whatever the slicing
            rows = worker.score(unit["archs"], batches=batches, path_mode=unit.get("path_mode", "arch"),
                                start=None if batches is None else first, version=unit.get("version"))
            for position, row in enumerate(rows):
                yield {**base, "supernet": unit.get("supernet", 0), "position": position, **row}
        elif kind == "standalone":
            torch.set_num_threads(standalone_threads)  # the standalone trial's CPU share
            recipe = {k: unit[k] for k in RECIPE if k in unit}
            training = StandaloneTraining(space, unit["arch"], standalone_splits(), C=unit.get("C", 16),
                                          N=unit.get("N", 5), seed=unit.get("seed", 777), device="cpu",
                                          eval_every=unit.get("eval_every", 1),
                                          train_split=unit.get("train_split", "train"), **recipe)
            while not training.done:
                row = {**base, "arch": str(training.arch), "role": unit.get("role", ""), "device": "cpu",
                       **training.run_epoch()}
                row["position"] = row.get("epoch", 0)
                yield row
        else:
            raise SystemExit(f"plain_search: work unit kind {kind!r} is not supported by this benchmark")

    candidates: dict[str, dict] = {}
    standalone: dict[str, dict] = {}
    units: list[dict] = []
    count = 0
    while True:
        trial_id = f"plain{count:05d}"
        unit = searcher.suggest(trial_id)
        if unit == Searcher.FINISHED:
            break
        if unit is None:
            raise SystemExit(f"plain_search: the searcher waits for results with no unit running "
                             f"({searcher.outcome()['progress']})")
        count += 1
        began = time.perf_counter()
        last = None
        for row in run_unit(unit):
            searcher.on_trial_result(trial_id, row)
            last = row
            t = since_start()
            kind = unit["kind"]
            timeline.setdefault(f"first_{kind}_row", t)
            timeline[f"last_{kind}_row"] = t
            if kind == "score":
                candidates[row["arch"]] = {k: row.get(k) for k in ("valid_acc", "valid_loss", "supernet", "version",
                                                                   "batches", "key", "position", "seconds")}
            elif kind == "standalone":
                standalone[unit["key"]] = row
        searcher.on_trial_complete(trial_id, last)
        units.append({"key": unit["key"], "kind": unit["kind"], "seconds": round(time.perf_counter() - began, 4),
                      "own_seconds": last.get("seconds") if last else None})

    outcome = searcher.outcome()
    timeline["end"] = since_start()
    if outcome.get("failure"):
        print(f"plain_search: the search failed: {outcome['failure']}", file=sys.stderr)
    result = {
        "method": config["method"], "dataset": config["dataset"], "preset": config["preset"],
        "started": STARTED, "final_arch": outcome.get("final_arch"), "finished": outcome.get("finished"),
        "failure": outcome.get("failure"), "candidates": candidates, "standalone": standalone, "units": units,
        "timeline": timeline, "total_steps": info.get("total_steps"),
        "threads": {"supernet": actor_threads, "standalone": standalone_threads},
        "max_concurrent": int(plan.res["max_concurrent"]), "node_cpus": view.nodes[0]["CPU"],
        "tables": "skipped (no FLOP/parameter table)", "config": config,
    }
    (out_dir / "plain.json").write_text(json.dumps(result, indent=1, default=str))
    print(f"plain_search: {config['method']} on {config['dataset']} -> {outcome.get('final_arch')} "
          f"({len(candidates)} candidates, {count} units, {timeline['end']:.1f} s)")
    return 0 if outcome.get("finished") and not outcome.get("failure") else 1


if __name__ == "__main__":
    sys.exit(main())
