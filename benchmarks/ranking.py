"""P4: how well supernet scores rank archs, against the shipped truth.

One-shot (uniform single paths) vs few-shot (5 sub-supernets split on edge 1<-0) vs balanced
sampling (size-balanced single paths), at equal total supernet steps, several seeds each, every
run scoring exactly the truth's archs on the whole valid split (RSPS's ``rank`` preset on the
truth's data and network). Kendall tau, Spearman and top-k precision per run (``raynas rank``),
then mean and spread per variant.

Budget (``--epochs E``, default 30 epochs of 93 steps = 2,790 steps per run):
- one-shot and balanced: E epochs on one supernet;
- few-shot: E/2 epochs on the one-shot supernet, then each of the 5 sub-supernets
  (initialised from it) E/2 * steps_per_epoch / 5 steps: the same total.

    python benchmarks/ranking.py --truth truth/fashion-mnist16.parquet
    python benchmarks/ranking.py --truth truth/fashion-mnist16.parquet --seeds 0 --variants one-shot

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
VARIANTS = ("one-shot", "few-shot", "balanced")
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
    raise SystemExit(f"--variants: unknown {variant!r}; expected some of {', '.join(VARIANTS)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--truth", required=True, help="the truth table (its archs are scored; its mean valid acc ranks them)")
    parser.add_argument("--candidates", help="archs to score if not the truth's (e.g. while the truth is being built)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--storage", default="runs/p4")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--rank-only", action="store_true")
    parser.add_argument("--output", help="write the per-run table here (.csv)")
    args = parser.parse_args()

    from raynas.ranking import rank_runs, read_archs

    storage = Path(args.storage)
    plan = []
    for variant in args.variants:
        overrides, steps = variant_overrides(variant, args.epochs)
        for seed in args.seeds:
            plan.append((variant, seed, overrides, steps))
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
    print(f"\nmachine: {platform.node()} {os.cpu_count()} CPUs, {args.epochs} epochs budget, truth {args.truth}")


if __name__ == "__main__":
    main()
