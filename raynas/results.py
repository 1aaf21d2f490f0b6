"""Result tables of a run, written beside Tune's own files, and the comparison of runs.

- ``candidates.parquet``: one row per scored candidate.
- ``summary.parquet``: one row per run (method, final arch, standalone accuracy, cost split).
- ``manifest.json``: seed, versions, device, BN mode, dataset and its content hash, full config.

Tables are built from the run's row log (:mod:`raynas.rowlog`, written by the driver as Tune hands
each row over), so they hold exactly what the units reported; a unit that ran twice (a retry, a
resumed search) is counted once, by its stable key and position. Every table carries the run's
``status`` (complete, interrupted, failed). Reading and comparing needs no Ray.
"""

from __future__ import annotations

import io
import json
import math
import os
from typing import Iterable, Sequence

import pandas as pd

from raynas.storage import Location

CANDIDATE_COLUMNS = [
    "run_id", "method", "seed", "arch", "arch_index", "supernet_version", "supernet", "valid_acc",
    "valid_loss", "batches", "samples", "params", "flops", "wall_s", "device_s", "unit", "position",
]
SUMMARY_COLUMNS = [
    "run_id", "method", "space", "dataset", "seed", "preset", "final_arch", "final_arch_index",
    "standalone_valid_acc", "standalone_test_acc", "standalone_epochs", "candidates",
    "supernet_steps", "train_s", "score_s", "standalone_s", "device_s", "wall_s", "bn_mode", "device",
    "status", "sessions",
]
#: how a run ended: its searcher finished / it was stopped before (resumable) / it cannot finish
STATUSES = ("complete", "interrupted", "failed")
TABLES = ("candidates.parquet", "summary.parquet", "manifest.json")


def read_unit_rows(run_dir: "str | os.PathLike | Location") -> pd.DataFrame:
    """Every unit row of the run's row log, one per (key, position) (:mod:`raynas.rowlog`)."""
    from raynas.rowlog import read_rows

    return pd.DataFrame(read_rows(run_dir))


def _ordered(frame: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    keys = [k for k in keys if k in frame.columns]
    return frame.sort_values(keys, kind="stable") if keys and not frame.empty else frame


def build_tables(run_dir: "str | os.PathLike | Location", config: dict, manifest: dict, *, space, wall_s: float,
                 status: str = "complete", rows: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write ``candidates.parquet`` and ``summary.parquet`` (and the manifest) into ``run_dir``,
    from the run's row log (``rows``: those rows, if already read)."""
    run_dir = Location(run_dir)
    rows = read_unit_rows(run_dir) if rows is None else rows
    kind = rows["kind"] if "kind" in rows else pd.Series(dtype=object)
    net = {k: config["supernet"].get(k) for k in ("C", "N") if k in config.get("supernet", {})}
    net.update(num_classes=manifest.get("num_classes", 10), in_channels=manifest.get("in_channels", 3))

    scored = _ordered(rows[kind == "score"], ["unit", "position"])
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

    trained = _ordered(rows[kind == "train"], ["unit"])
    standalone = _ordered(rows[kind == "standalone"], ["unit", "position"])
    finals = standalone.groupby("key").tail(1) if not standalone.empty else standalone
    if not finals.empty and "role" in finals:
        finals = finals[finals["role"] == "final"]
    best = finals.sort_values("valid_acc", ascending=False, kind="stable").head(1) if "valid_acc" in finals else finals.head(0)
    final_arch = str(best["arch"].iloc[0]) if len(best) else None
    train_s = float(trained["seconds"].sum()) if "seconds" in trained else 0.0
    # training-free proxies (TE-NAS) are this run's scoring cost
    proxies = rows[kind == "proxy"]
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
                # every supernet's optimizer steps (the one-shot supernet's and each sub-supernet's)
                "supernet_steps": int(trained.groupby("supernet")["version"].max().sum())
                if "version" in trained and len(trained) else 0,
                "train_s": train_s,
                "score_s": score_s,
                "standalone_s": standalone_s,
                "device_s": train_s + score_s + standalone_s,
                "wall_s": wall_s,
                "bn_mode": manifest.get("bn_mode"),
                "device": manifest.get("device"),
                "status": status,
                "sessions": int(manifest.get("sessions", 1)),
            }
        ],
        columns=SUMMARY_COLUMNS,
    )
    write_parquet(run_dir / "candidates.parquet", candidates)
    write_parquet(run_dir / "summary.parquet", summary)
    write_json(run_dir / "manifest.json", manifest)
    return candidates, summary


def write_parquet(path: "str | os.PathLike | Location", frame: pd.DataFrame) -> None:
    """``frame`` as a parquet file at ``path`` (local or in object storage), atomically."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    Location(path).write_bytes(buffer.getvalue())


def read_parquet(path: "str | os.PathLike | Location") -> pd.DataFrame:
    """A parquet table from a local path or a URI."""
    path = Location(path)
    if path.is_local:
        return pd.read_parquet(path.local_path)
    return pd.read_parquet(io.BytesIO(path.read_bytes()))


def write_json(path: "str | os.PathLike | Location", data: dict) -> None:
    Location(path).write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: "str | os.PathLike | Location") -> dict:
    return json.loads(Location(path).read_text())


def is_run_dir(path: "str | os.PathLike | Location") -> bool:
    return (Location(path) / "raynas.json").is_file()


def load_summaries(run_dirs: Iterable["str | os.PathLike | Location"]) -> pd.DataFrame:
    """The summary rows of runs, local or in object storage (a directory holding several runs is
    searched one level down), with each run's ``status``."""
    frames = []
    for run_dir in run_dirs:
        run_dir = Location(run_dir)
        found = [run_dir / "summary.parquet"] if (run_dir / "summary.parquet").is_file() else [
            child / "summary.parquet" for child in run_dir.iterdir() if (child / "summary.parquet").is_file()
        ]
        if not found:
            raise FileNotFoundError(f"{run_dir}: no summary.parquet; expected a finished raynas run directory (or a folder of them)")
        frames.extend(read_parquet(p) for p in found)
    return pd.concat(frames, ignore_index=True)


def compare_table(summaries: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, dataset): mean and spread over seeds of accuracy and cost, over the
    *complete* runs only; ``unfinished`` counts the others (interrupted, failed, or written before
    raynas recorded a status), which never enter a mean."""
    summaries = summaries.copy()
    if "status" not in summaries:
        summaries["status"] = "unknown"
    summaries["status"] = summaries["status"].fillna("unknown")
    complete = summaries[summaries["status"] == "complete"]
    grouped = complete.groupby(["method", "dataset"], sort=True)
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
    ).reset_index()
    unfinished = summaries[summaries["status"] != "complete"].groupby(["method", "dataset"]).size()
    unfinished = unfinished.rename("unfinished").reset_index()
    table = table.merge(unfinished, on=["method", "dataset"], how="outer")
    table["runs"] = table["runs"].fillna(0).astype("int64")
    table["unfinished"] = table["unfinished"].fillna(0).astype("int64")
    return table.sort_values(["method", "dataset"]).reset_index(drop=True)
