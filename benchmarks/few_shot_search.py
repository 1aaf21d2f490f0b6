"""P3 in a real search: the few-shot sub-supernet phase of a whole `raynas search`, from the
run's own timings (no pre-warmed actors).

Runs ``raynas search --method rsps --dataset digits --few-shot 0`` (embedded Ray on this
machine, default resources; or ``--address``), then reads the run's row log: the sub-supernets'
training phase spans from the first sub-supernet unit's start to its last row; its ideal length
is the images the sub-supernets trained at one actor's one-core speed (the one-shot phase's
img/s: one actor, one torch thread), spread over min(K, cores) cores. Per-core ratio = ideal /
actual; start-up waits (an actor's process, torch, its data) count against it.

    python benchmarks/few_shot_search.py [--cores 2] [-- extra raynas search args]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from few_shot_cluster import search_timings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--root", default=None)
    parser.add_argument("extra", nargs="*", help="more `raynas search` arguments (after --)")
    args = parser.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="raynas-fewshot-"))
    name = f"fs-{time.strftime('%H%M%S')}"
    command = [str(ROOT / ".venv" / "bin" / "raynas"), "search", "--method", "rsps", "--dataset", "digits",
               "--few-shot", "0", "--storage", str(root), "--name", name, "-q", *args.extra]
    began = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - began
    run_dir = root / name
    from raynas.rowlog import read_records

    rows = [r for r in read_records(run_dir) if r.get("kind") == "train"]
    one_shot = [r for r in rows if r.get("supernet", 0) == 0]
    subs = [r for r in rows if r.get("supernet", 0) > 0]
    # one actor alone: the one-shot supernet's fastest chunk (its first, as a rule: later ones share
    # the cores with the warm-up of the standalone workers and the sub-supernets' actors' start)
    single = max(r["samples_per_s"] for r in one_shot)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    batch = manifest["config"]["supernet"]["batch_size"]
    K = manifest["few_shot"]["sub_supernets"]
    images = sum(r["steps"] for r in subs) * batch
    timings = search_timings(run_dir)
    phase = next(p for p in timings["phases"] if p["phase"] == "train sub-supernets")
    span = phase["to_s"] - phase["from_s"]
    usable = min(K, args.cores)
    ideal = images / single / usable
    out = {"wall_s": round(wall, 1), "sub_supernets": K, "cores": args.cores, "one_actor_img_per_s": round(single),
           "sub_supernet_images": images, "phase_span_s": round(span, 1), "ideal_s": round(ideal, 1),
           "per_core_ratio": round(ideal / span, 3), "phase": phase, "timings": timings,
           "load": os.getloadavg(), "run_dir": str(run_dir)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
