"""Result tables of a run, written beside Tune's own files, and the comparison of runs.

- ``candidates.parquet``: one row per scored candidate.
- ``summary.parquet``: one row per run (method, final arch, standalone accuracy, cost split).
- ``manifest.json``: seed, versions, device, BN mode, dataset and its content hash, full config.

Tables are built from the rows Tune persisted (each trial's ``result.json``), so they hold
exactly what the trials reported; a unit that ran twice (a retry, a resumed search) is counted
once, by its unit id and position. Reading and comparing needs no Ray.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

CANDIDATE_COLUMNS = [
    "run_id", "method", "seed", "arch", "arch_index", "supernet_version", "supernet", "valid_acc",
    "valid_loss", "batches", "samples", "params", "flops", "wall_s", "device_s", "unit", "position",
]
SUMMARY_COLUMNS = [
    "run_id", "method", "space", "dataset", "seed", "preset", "final_arch", "final_arch_index",
    "standalone_valid_acc", "standalone_test_acc", "standalone_epochs", "candidates",
    "supernet_steps", "train_s", "score_s", "standalone_s", "device_s", "wall_s", "bn_mode", "device",
]
TABLES = ("candidates.parquet", "summary.parquet", "manifest.json")


def read_trial_rows(run_dir: str | Path) -> pd.DataFrame:
    """Every row every trial of the run reported, with its unit config flattened in."""
    rows = []
    for path in sorted(Path(run_dir).glob("*/result.json")):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                row = json.loads(line)
                config = row.pop("config", {}) or {}
                row.setdefault("unit", config.get("unit", -1))
                for key in ("until", "C", "N", "epochs"):
                    if key in config:
                        row.setdefault(f"unit_{key}", config[key])
                rows.append(row)
    return pd.DataFrame(rows)


def _last_per(frame: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """One row per key (a re-run unit reports again: keep its latest row)."""
    if frame.empty:
        return frame
    order = [c for c in ("timestamp", "time_total_s") if c in frame.columns]
    if order:
        frame = frame.sort_values(order, kind="stable")
    return frame.drop_duplicates(subset=list(keys), keep="last").sort_values(list(keys), kind="stable")


def build_tables(run_dir: str | Path, config: dict, manifest: dict, *, space, wall_s: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write ``candidates.parquet`` and ``summary.parquet`` (and the manifest) into ``run_dir``."""
    run_dir = Path(run_dir)
    rows = read_trial_rows(run_dir)
    kind = rows["kind"] if "kind" in rows else pd.Series(dtype=object)
    net = {k: config["supernet"].get(k) for k in ("C", "N") if k in config.get("supernet", {})}
    net.update(num_classes=manifest.get("num_classes", 10), in_channels=manifest.get("in_channels", 3))

    scored = _last_per(rows[kind == "score"], ["unit", "position"])
    candidates = pd.DataFrame(
        {
            "run_id": config["run_id"],
            "method": config["method"],
            "seed": config["seed"],
            "arch": scored.get("arch", pd.Series(dtype=str)).astype(str),
            "supernet_version": scored.get("version", pd.Series(dtype="int64")),
            "supernet": scored.get("supernet", pd.Series(dtype="int64")),
            "valid_acc": scored.get("valid_acc", pd.Series(dtype=float)),
            "valid_loss": scored.get("valid_loss", pd.Series(dtype=float)),
            "batches": scored.get("batches", pd.Series(dtype="int64")),
            "samples": scored.get("samples", pd.Series(dtype="int64")),
            "device_s": scored.get("seconds", pd.Series(dtype=float)),
            "unit": scored.get("unit", pd.Series(dtype="int64")),
            "position": scored.get("position", pd.Series(dtype="int64")),
        }
    ).reset_index(drop=True)
    archs = [space.parse(a) for a in candidates["arch"]]
    candidates["arch_index"] = [space.index_of(a) for a in archs]
    size_net = dict(net, input_size=manifest.get("input_size", 32))
    candidates["params"] = [space.count_parameters(a, **net) for a in archs]
    candidates["flops"] = [space.count_flops(a, **size_net) for a in archs]
    # scoring is serial on the actor: a candidate's wall time is its device time
    candidates["wall_s"] = candidates["device_s"]
    candidates = candidates[CANDIDATE_COLUMNS]
    for column in ("supernet_version", "supernet", "batches", "samples", "unit", "position", "params", "flops"):
        candidates[column] = candidates[column].astype("int64")

    trained = _last_per(rows[kind == "train"], ["unit"])
    standalone = _last_per(rows[kind == "standalone"], ["unit", "epoch"])
    finals = standalone.groupby("unit").tail(1) if not standalone.empty else standalone
    if not finals.empty and "role" in finals:
        finals = finals[finals["role"] == "final"]
    best = finals.sort_values("valid_acc", ascending=False, kind="stable").head(1) if "valid_acc" in finals else finals.head(0)
    final_arch = str(best["arch"].iloc[0]) if len(best) else None
    train_s = float(trained["seconds"].sum()) if "seconds" in trained else 0.0
    # training-free proxies (TE-NAS) are this run's scoring cost
    proxies = _last_per(rows[kind == "proxy"], ["unit", "position"])
    score_s = float(candidates["device_s"].sum()) + (float(proxies["seconds"].sum()) if "seconds" in proxies else 0.0)
    standalone_s = float(finals["seconds"].sum()) if "seconds" in finals else 0.0
    summary = pd.DataFrame(
        [
            {
                "run_id": config["run_id"],
                "method": config["method"],
                "space": config["space"],
                "dataset": config["dataset"],
                "seed": config["seed"],
                "preset": config.get("preset"),
                "final_arch": final_arch,
                "final_arch_index": space.index_of(space.parse(final_arch)) if final_arch else -1,
                "standalone_valid_acc": float(best["valid_acc"].iloc[0]) if len(best) else math.nan,
                "standalone_test_acc": float(best["test_acc"].iloc[0]) if len(best) and "test_acc" in best else math.nan,
                "standalone_epochs": int(best["epoch"].iloc[0]) if len(best) else 0,
                "candidates": len(candidates),
                "supernet_steps": int(trained["version"].max()) if "version" in trained and len(trained) else 0,
                "train_s": train_s,
                "score_s": score_s,
                "standalone_s": standalone_s,
                "device_s": train_s + score_s + standalone_s,
                "wall_s": wall_s,
                "bn_mode": manifest.get("bn_mode"),
                "device": manifest.get("device"),
            }
        ],
        columns=SUMMARY_COLUMNS,
    )
    candidates.to_parquet(run_dir / "candidates.parquet", index=False)
    summary.to_parquet(run_dir / "summary.parquet", index=False)
    write_json(run_dir / "manifest.json", manifest)
    return candidates, summary


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / "raynas.json").is_file()


def load_summaries(run_dirs: Iterable[str | Path]) -> pd.DataFrame:
    """The summary rows of finished runs (a directory holding several runs is searched one level down)."""
    frames = []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        found = [run_dir / "summary.parquet"] if (run_dir / "summary.parquet").is_file() else sorted(
            run_dir.glob("*/summary.parquet")
        )
        if not found:
            raise FileNotFoundError(f"{run_dir}: no summary.parquet; expected a finished raynas run directory (or a folder of them)")
        frames.extend(pd.read_parquet(p) for p in found)
    return pd.concat(frames, ignore_index=True)


def compare_table(summaries: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, dataset): mean and spread over seeds of accuracy and cost."""
    grouped = summaries.groupby(["method", "dataset"], sort=True)
    table = grouped.agg(
        runs=("run_id", "count"),
        test_acc_mean=("standalone_test_acc", "mean"),
        test_acc_std=("standalone_test_acc", "std"),
        valid_acc_mean=("standalone_valid_acc", "mean"),
        wall_s_mean=("wall_s", "mean"),
        device_s_mean=("device_s", "mean"),
        train_s_mean=("train_s", "mean"),
        score_s_mean=("score_s", "mean"),
        standalone_s_mean=("standalone_s", "mean"),
        final_archs=("final_arch", lambda s: "; ".join(sorted(set(map(str, s))))),
    )
    return table.reset_index()
