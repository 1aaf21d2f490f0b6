"""P4: how well supernet scores rank archs, against the shipped truth.

One-shot (uniform single paths) vs few-shot (5 sub-supernets split on edge 1<-0) vs balanced
sampling (size-balanced single paths), at equal total supernet steps, several seeds each, every
run scoring exactly the truth's archs on the whole valid split (RSPS's ``rank`` preset on the
truth's data and network). Kendall tau, Spearman and top-k precision per run (``raynas rank``),
then mean and spread per variant.

Budget (``--epochs E``, default 30 epochs of 93 steps = 2,790 steps per run):
- one-shot and balanced: E epochs on one supernet;
- few-shot: E/2 epochs on the one-shot supernet, then each of the 5 sub-supernets
  (initialised from it) E/2 * steps_per_epoch / 5 steps: the same total;
- few-shot-official (not in the default set): the official few-shot protocol's budgets, E epochs
  on the one-shot supernet, then each sub-supernet E/2 epochs (3.5x the total).

    python benchmarks/ranking.py --truth truth/fashion-mnist16.parquet
    python benchmarks/ranking.py --truth truth/fashion-mnist16.parquet --seeds 0 --variants one-shot

Off-path weights: ``--offpath decay frozen`` runs every variant under each ``supernet.offpath``
(runs named ``VARIANT-OFFPATH-sSEED``; without the flag, the settings' default and the old names).
A reduced budget for a loaded machine: ``--epochs 10 --score-batches 4`` (each arch on 4 valid
batches of 500 instead of the whole split).

Finished runs are kept in ``--storage`` and not run again; ``--rank-only`` just ranks them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

#: the truth's data (truth/README.md)
DATA = dict(resolution=16, train_size=6000)
VARIANTS = ("one-shot", "few-shot", "balanced", "few-shot-official")
STEPS_PER_EPOCH = 93  # 6,000 images at batch 64, last partial batch dropped


def variant_overrides(variant: str, epochs: int) -> tuple[dict, int]:
    """(overrides, total supernet steps) of one variant at ``epochs`` epochs of budget."""
    total = epochs * STEPS_PER_EPOCH
    if variant == "one-shot":
        return {"supernet": {"epochs": epochs}}, total
    if variant == "balanced":
        return {"supernet": {"epochs": epochs}, "searcher": {"policy": "balanced"}}, total
    if variant == "few-shot":
        if epochs % 2:
            raise SystemExit(f"--epochs {epochs}: few-shot splits the budget in two halves; expected an even number")
        half = epochs // 2
        sub_steps = half * STEPS_PER_EPOCH // 5
        # the 6 actors share the machine's cores (train units run max_concurrent at a time)
        return ({"supernet": {"epochs": half}, "searcher": {"few_shot": [0], "few_shot_steps": sub_steps},
                 "resources": {"actor_cpus": 0.3}},
                half * STEPS_PER_EPOCH + 5 * sub_steps)
    if variant == "few-shot-official":
        # the official protocol's budgets: the one-shot supernet fully, then each sub-supernet half
        # of that (600 + 5 x 300 epochs there), 3.5x the others' total
        sub_steps = total // 2
        return ({"supernet": {"epochs": epochs}, "searcher": {"few_shot": [0], "few_shot_steps": sub_steps},
                 "resources": {"actor_cpus": 0.3}},
                total + 5 * sub_steps)
    raise SystemExit(f"--variants: unknown {variant!r}; expected some of {', '.join(VARIANTS)}")


def in_process_scores(variant: str, seed: int, overrides: dict, archs: list[str], where: Path,
                      num_threads: int = 1) -> dict:
    """One run's supernet scores of ``archs`` without Ray or Tune (``--in-process``): the same
    :class:`raynas.worker.SupernetWorker` code an actor runs, on the ``rank`` preset's settings
    with ``overrides``, trained in one call per supernet and scored like RSPS's score units
    (candidate j on the valid batches fixed by its position). For a loaded machine where Ray's
    start-up times out; the numbers are those a search would give up to the searcher's chunking."""
    import inspect

    from raynas.settings import make_config
    from raynas.spaces import get_space
    from raynas.worker import SupernetWorker

    overrides = {k: v for k, v in overrides.items() if k != "resources"}
    overrides["searcher"] = {**overrides.get("searcher", {}), "candidates": archs}
    config = make_config("rsps", dataset="fashion-mnist", data_options=DATA, preset="rank", seed=seed,
                         overrides=overrides)
    accepted = inspect.signature(SupernetWorker.__init__).parameters
    settings = {k: v for k, v in config["supernet"].items() if k in accepted}
    common = dict(settings, space="nb201", dataset="fashion-mnist", data_options=DATA, device="cpu",
                  num_threads=num_threads)
    searcher = config["searcher"]
    batches = searcher.get("score_batches")
    policy = searcher.get("policy", "uniform")
    parent = SupernetWorker(**common, seed=seed)
    parent.train(policy, until=parent.total_steps)
    if not searcher.get("few_shot"):
        rows = parent.score(archs, batches=batches, start=0 if batches else None)
        return {r["arch"]: r["valid_acc"] for r in rows}
    space = get_space("nb201")
    edges = searcher["few_shot"]
    parent_snapshot = parent.snapshot(where / f"{variant}-s{seed}-parent.pt")
    scores = {}
    for k, region in enumerate(space.split(edges)):
        mine = [a for a in archs if space.region_of(space.parse(a), edges) == k]
        sub = SupernetWorker(**{**common, "epochs": None, "total_steps": searcher["few_shot_steps"]}, seed=seed,
                             allowed_ops=[list(o) for o in region.allowed_ops], init_from=parent_snapshot)
        sub.train(policy, until=sub.total_steps)
        if mine:
            scores.update({r["arch"]: r["valid_acc"] for r in sub.score(mine, batches=batches,
                                                                        start=0 if batches else None)})
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--truth", required=True, help="the truth table (its archs are scored; its mean valid acc ranks them)")
    parser.add_argument("--candidates", help="archs to score if not the truth's (e.g. while the truth is being built)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS[:3]))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--offpath", nargs="+", choices=["decay", "frozen"],
                        help="run every variant under each of these supernet.offpath settings")
    parser.add_argument("--score-batches", type=int, help="valid batches of 500 per arch (default: the whole split)")
    parser.add_argument("--storage", default="runs/p4")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--rank-only", action="store_true")
    parser.add_argument("--in-process", action="store_true",
                        help="no Ray: train and score with the worker in this process (scores.json per run)")
    parser.add_argument("--output", help="write the per-run table here (.csv)")
    args = parser.parse_args()

    from raynas.ranking import rank_runs, read_archs

    storage = Path(args.storage)
    plan = []
    for offpath in args.offpath or [None]:
        for variant in args.variants:
            overrides, steps = variant_overrides(variant, args.epochs)
            if offpath is not None:
                overrides = {**overrides, "supernet": {**overrides["supernet"], "offpath": offpath}}
            if args.score_batches is not None:
                overrides = {**overrides, "searcher": {**overrides.get("searcher", {}),
                                                       "score_batches": args.score_batches}}
            name = variant if offpath is None else f"{variant}-{offpath}"
            for seed in args.seeds:
                plan.append((name, seed, overrides, steps))
    if args.in_process:
        import pandas as pd

        from raynas.ranking import load_truth, rank_stats

        archs = read_archs(args.candidates or args.truth)
        truth = load_truth(args.truth)
        storage.mkdir(parents=True, exist_ok=True)
        rows = []
        for variant, seed, overrides, steps in plan:
            out = storage / f"{variant}-s{seed}.json"
            if not out.is_file() and not args.rank_only:
                began = time.perf_counter()
                scores = in_process_scores(variant, seed, overrides, archs, storage, num_threads=args.num_cpus)
                out.write_text(json.dumps({"scores": scores, "seconds": time.perf_counter() - began, "steps": steps}))
                print(f"{variant}-s{seed}: {steps} supernet steps, {time.perf_counter() - began:.0f} s", flush=True)
            if out.is_file():
                done = json.loads(out.read_text())
                rows.append({"variant": variant, "seed": seed, **rank_stats(done["scores"], truth),
                             "seconds": done["seconds"], "supernet_steps_total": done["steps"]})
        table = pd.DataFrame(rows)
        if args.output:
            table.to_csv(args.output, index=False)
        metrics = [c for c in table.columns if c in ("kendall_tau", "spearman") or c.startswith("top")]
        pd.set_option("display.width", 200)
        print(table.round(3).to_string(index=False))
        print()
        print(table.groupby("variant", sort=False)[metrics].agg(["mean", "std"]).round(3).to_string())
        print(f"\nmachine: {platform.node()} {os.cpu_count()} CPUs, {args.epochs} epochs budget, "
              f"score batches {args.score_batches or 'all'}, in process, truth {args.truth}")
        return
    if not args.rank_only:
        import ray

        from raynas.driver import search

        archs = read_archs(args.candidates or args.truth)
        ray.init(address="local", num_cpus=args.num_cpus, namespace="raynas", include_dashboard=False,
                 log_to_driver=False)
        for variant, seed, overrides, steps in plan:
            name = f"{variant}-s{seed}"
            if (storage / name / "summary.parquet").is_file():
                continue
            began = time.perf_counter()
            overrides = {**overrides, "searcher": {**overrides.get("searcher", {}), "candidates": archs}}
            search("rsps", dataset="fashion-mnist", data_options=DATA, preset="rank", seed=seed,
                   overrides=overrides, storage=storage, name=name, verbose=0)
            print(f"{name}: {steps} supernet steps, {time.perf_counter() - began:.0f} s", flush=True)
        ray.shutdown()

    import pandas as pd

    dirs = [storage / f"{variant}-s{seed}" for variant, seed, _, _ in plan]
    table = rank_runs([d for d in dirs if (d / "summary.parquet").is_file()], args.truth)
    table.insert(0, "variant", [run_id.rsplit("-s", 1)[0] for run_id in table["run_id"]])
    steps = {}
    for d in dirs:
        if (d / "manifest.json").is_file():
            manifest = json.loads((d / "manifest.json").read_text())
            few = (manifest.get("few_shot") or {})
            steps[str(d)] = manifest["supernet"]["total_steps"] + few.get("sub_supernets", 0) * few.get("steps", 0)
    table["supernet_steps_total"] = [steps.get(str(storage / run_id)) for run_id in table["run_id"]]
    if args.output:
        table.to_csv(args.output, index=False)
    metrics = [c for c in table.columns if c in ("kendall_tau", "spearman") or c.startswith("top")]
    summary = table.groupby("variant", sort=False)[metrics].agg(["mean", "std"])
    pd.set_option("display.width", 200)
    print(table.to_string(index=False))
    print()
    print(summary.round(3).to_string())
    print(f"\nmachine: {platform.node()} {os.cpu_count()} CPUs, {args.epochs} epochs budget, "
          f"score batches {args.score_batches or 'all'}, truth {args.truth}")


if __name__ == "__main__":
    main()
