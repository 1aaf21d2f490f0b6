"""P3 on a real ``ray start`` cluster, and where a few-shot search's time goes there.

1. Starts ``--nodes`` real Ray nodes on this machine (``ray start --head`` / ``--address``, 1 CPU
   each, token auth on, each its own temp dir and ports: tests/multinode.py) and runs P3 over
   them (:func:`few_shot_parallel.measure`: K sub-supernet actors of 1 CPU each, SPREAD, trained
   one after another vs all at once; ratio = speed-up / usable parallelism, here
   min(K, nodes x CPUs per node, cores)).
2. Runs a real few-shot search (``raynas search --few-shot EDGES --address ...``, default
   resources) on the same cluster and splits its wall time, from the run's own record: the
   rows' ``seconds`` (compute the units measured themselves), and Tune's trial start / last
   result times (``tune/session-0``, read here only): the time some unit ran vs the time none
   did (Ray, actors and trial workers starting, units waiting for resources), phase by phase.

    python benchmarks/few_shot_cluster.py                         # 2 nodes, K=2, then rsps small on digits
    python benchmarks/few_shot_cluster.py --search-args="--set supernet.epochs=10"
    python benchmarks/few_shot_cluster.py --no-search              # P3 only

Every node this script starts is ended when it ends (its own process sessions, never ``ray stop``).
"""

from __future__ import annotations

import argparse
import ast
import glob
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tests.multinode import RayCluster  # noqa: E402  (the test harness: real `ray start` nodes)


def _intervals_union(spans: list[tuple[float, float]]) -> float:
    total, end = 0.0, None
    for a, b in sorted(spans):
        if end is None or a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


def _phase(row: dict) -> str:
    kind = row.get("kind", "?")
    if kind == "train":
        return "train one-shot" if row.get("supernet", 0) == 0 else "train sub-supernets"
    return kind


def search_timings(run_dir: Path, session: int = 0) -> dict:
    """Wall time of one session of a run split into: some unit running (Tune's trial start to its
    last result) vs none; and compute (the rows' own ``seconds``), phase by phase."""
    from raynas.rowlog import read_records

    records = [r for r in read_records(run_dir) if r.get("session") == session]
    begin = next(r for r in records if r.get("event") == "session")["started"]
    end = next((r["t"] for r in records if r.get("event") == "end"), max(r.get("t", 0) for r in records))
    rows = [r for r in records if "event" not in r]
    by_trial: dict[str, list[dict]] = {}
    for row in rows:
        by_trial.setdefault(row.get("trial"), []).append(row)

    # Tune's record of when each trial started running (its resources granted, its worker up)
    state_files = sorted(glob.glob(str(run_dir / "tune" / f"session-{session}" / "experiment_state-*.json")))
    starts: dict[str, tuple[float, float]] = {}
    if state_files:
        state = json.loads(Path(state_files[-1]).read_text())
        for trial, meta in state["trial_data"]:
            trial, meta = (json.loads(trial) if isinstance(trial, str) else trial), json.loads(meta)
            if meta.get("start_time"):
                starts[trial["trial_id"]] = (meta["start_time"] - begin, (meta.get("last_result_time") or 0) - begin)

    spans, phases = [], {}
    for trial, trows in by_trial.items():
        last = max(r["t"] for r in trows)
        seconds = [float(r.get("seconds") or 0) for r in trows]
        # a standalone training's rows count its seconds so far; the others' rows each their own
        compute = max(seconds) if trows[0].get("kind") == "standalone" else sum(seconds)
        start = starts.get(trial, (None,))[0]
        if start is None:  # no Tune record: the unit's first row less its own compute
            first = min(trows, key=lambda r: r["t"])
            start = first["t"] - float(first.get("seconds") or 0)
        spans.append((start, last))
        first = min(trows, key=lambda r: r["t"])
        # from the unit's start to its first compute: its trial worker, and the actor it calls, getting ready
        ready = max(0.0, first["t"] - float(first.get("seconds") or 0) - start)
        p = phases.setdefault(_phase(trows[0]), {"units": 0, "first_start_s": start, "last_row_s": last,
                                                 "compute_s": 0.0, "spans": [], "ready": []})
        p["ready"].append(ready)
        p["units"] += 1
        p["first_start_s"] = min(p["first_start_s"], start)
        p["last_row_s"] = max(p["last_row_s"], last)
        p["compute_s"] += compute
        p["spans"].append((start, last))
    busy = _intervals_union(spans)
    compute = sum(p["compute_s"] for p in phases.values())
    ordered = sorted(phases.items(), key=lambda kv: kv[1]["first_start_s"])
    out_phases, previous_end = [], 0.0
    for name, p in ordered:
        out_phases.append({"phase": name, "units": p["units"],
                           "idle_before_s": round(max(0.0, p["first_start_s"] - previous_end), 1),
                           "from_s": round(p["first_start_s"], 1), "to_s": round(p["last_row_s"], 1),
                           "units_running_s": round(_intervals_union(p["spans"]), 1),
                           "compute_s": round(p["compute_s"], 1),
                           "unit_start_to_first_compute_s": {"median": round(statistics.median(p["ready"]), 1),
                                                             "max": round(max(p["ready"]), 1)}})
        previous_end = max(previous_end, p["last_row_s"])
    return {"wall_s": round(end, 1), "some_unit_running_s": round(busy, 1), "no_unit_running_s": round(end - busy, 1),
            "compute_s": round(compute, 1), "compute_share": round(compute / end, 3) if end else None,
            "before_first_unit_s": round(min(s for s, _ in spans), 1) if spans else None,
            "after_last_row_s": round(end - max(b for _, b in spans), 1) if spans else None,
            "phases": out_phases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--cpus-per-node", type=int, default=1)
    parser.add_argument("--subs", type=int, default=2, help="P3's sub-supernets K (regions of edge 1<-0: at most 5)")
    parser.add_argument("--dataset", default="fashion-mnist", help="P3's dataset")
    parser.add_argument("--data-option", action="append", default=None,
                        help="P3's dataset options (default resolution=16, train_size=6000)")
    parser.add_argument("--C", type=int, default=8)
    parser.add_argument("--N", type=int, default=1)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-search", action="store_true", help="P3 only")
    parser.add_argument("--search-args", default="--method rsps --dataset digits --few-shot 0",
                        help="the search's arguments (besides --address/--storage/--name)")
    parser.add_argument("--root", help="folder for the cluster's logs and the run (default: a new temp dir)")
    args = parser.parse_args()
    options = {k: ast.literal_eval(v) for k, v in
               (o.split("=", 1) for o in (args.data_option or ["resolution=16", "train_size=6000"]))}

    root = Path(args.root or tempfile.mkdtemp(prefix="raynas-p3-cluster-"))
    cluster = RayCluster(root / "cluster", num_cpus=args.cpus_per_node)
    report: dict = {"machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores",
                    "load_average_at_start": os.getloadavg(), "setting": vars(args), "root": str(root)}
    try:
        started = time.monotonic()
        cluster.start_head()
        for _ in range(args.nodes - 1):
            cluster.add_node()
        cluster.wait_for_nodes(args.nodes)
        report["cluster_start_s"] = round(time.monotonic() - started, 1)

        # P3, from a driver that joins the cluster with its token (a subprocess: this process
        # keeps no Ray of its own, and the search below is its own driver too)
        code = ("import json, sys\n"
                "import ray\n"
                "from few_shot_parallel import measure\n"
                "a = json.loads(sys.argv[2])\n"
                "ray.init(address=sys.argv[1], namespace='raynas', log_to_driver=False)\n"
                "print('RESULT ' + json.dumps(measure(**a)))\n")
        usable = min(args.subs, args.nodes * args.cpus_per_node, os.cpu_count() or 1)
        p3 = dict(subs=args.subs, dataset=args.dataset, options=options, C=args.C, N=args.N, steps=args.steps,
                  repeats=args.repeats, usable=usable)
        done = subprocess.run([sys.executable, "-c", code, cluster.address, json.dumps(p3)], env=cluster.env(
            PYTHONPATH=os.pathsep.join([str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH", "")])),
            capture_output=True, text=True, timeout=3600)
        if done.returncode:
            raise SystemExit(f"P3 failed:\n{done.stderr[-3000:]}")
        report["P3"] = json.loads(done.stdout.split("RESULT ", 1)[1])

        if not args.no_search:
            storage = root / "runs"
            command = [sys.executable, "-m", "raynas.cli", "search", *shlex.split(args.search_args),
                       "--address", cluster.address, "--storage", str(storage), "--name", "search", "-q"]
            started = time.monotonic()
            done = subprocess.run(command, env=cluster.env(), capture_output=True, text=True, timeout=7200)
            report["search"] = {"command": shlex.join(["raynas", *command[3:]]), "exit": done.returncode,
                                "driver_s": round(time.monotonic() - started, 1)}
            if done.returncode:
                report["search"]["stderr"] = done.stderr[-2000:]
            else:
                run_dir = storage / "search"
                manifest = json.loads((run_dir / "manifest.json").read_text())
                few = manifest.get("few_shot") or {}
                report["search"].update(status=manifest["status"], actor_cpus=few.get("actor_cpus"),
                                        nodes=len({n for n in few.get("nodes", []) if n}),
                                        timings=search_timings(run_dir))
    finally:
        cluster.shutdown()
    report["load_average_at_end"] = os.getloadavg()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
