"""Result tables of a run, written beside Tune's own files, and the comparison of runs.

- ``candidates.parquet``: one row per scored candidate.
- ``summary.parquet``: one row per run (method, final arch, standalone accuracy, cost split).
- ``standalone.parquet``: one row per final training (pick x seed): its seed, the split it trained
  on, its valid and test accuracy, whether its arch won.
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
    "arch_code", "bench_valid_acc", "bench_test_acc",
]
SUMMARY_COLUMNS = [
    "run_id", "method", "space", "dataset", "seed", "preset", "final_arch", "final_arch_index",
    "standalone_valid_acc", "standalone_test_acc", "standalone_epochs", "final_seeds", "final_train_split",
    "final_test_acc_mean", "final_test_acc_std", "candidates",
    "supernet_steps", "train_s", "score_s", "standalone_s", "device_s", "wall_s", "bn_mode", "offpath", "device",
    "status", "sessions", "final_arch_code", "bench_dataset", "bench_valid_acc", "bench_test_acc",
]
#: how a run ended: its searcher finished / it was stopped before (resumable) / it cannot finish
STATUSES = ("complete", "interrupted", "failed")
TABLES = ("candidates.parquet", "summary.parquet", "standalone.parquet", "manifest.json")
STANDALONE_COLUMNS = [
    "run_id", "method", "seed", "arch", "arch_index", "role", "train_seed", "train_split", "train_size", "epochs",
    "valid_acc", "test_acc", "seconds", "winner", "unit",
]


def final_winner(rows: Iterable[dict]) -> str | None:
    """The winning arch of a run's final trainings: ``rows`` the last row of each (arch, seed)
    training (role "final"; dicts with ``arch``, ``unit``, ``valid_acc`` where measured). The best
    mean valid accuracy over an arch's seeds wins (non-finite counts as 0); ties and archs without
    a valid accuracy (trained on train+valid: nothing held out) go to the arch issued first, so
    finals on the whole train set pick the search's own best. Searchers and tables both use this."""
    order: dict[str, float] = {}
    scores: dict[str, list[float]] = {}
    for i, row in enumerate(rows):
        if row.get("role", "final") not in ("final", None):
            continue
        arch = str(row["arch"])
        unit = row.get("unit")
        rank = float(unit) if isinstance(unit, (int, float)) and math.isfinite(unit) else float(i)
        order[arch] = min(order.get(arch, math.inf), rank)
        value = row.get("valid_acc")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            scores.setdefault(arch, []).append(float(value) if math.isfinite(value) else 0.0)
    if not order:
        return None
    def key(arch):
        values = scores.get(arch)
        return (-(sum(values) / len(values)) if values else math.inf, order[arch])
    return min(order, key=key)


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
    # arch_index: the benchmark's (NAS-Bench-201's order); arch_code: the space's own (base 5)
    candidates["arch_index"] = [space.benchmark_index(a) for a in archs]
    candidates["arch_code"] = [space.index_of(a) for a in archs]
    size_net = dict(net, input_size=manifest.get("input_size", 32))
    candidates["params"] = [space.count_parameters(a, **net) for a in archs]
    candidates["flops"] = [space.count_flops(a, **size_net) for a in archs]
    # scoring is serial on the actor: a candidate's wall time is its device time
    candidates["wall_s"] = candidates["device_s"]
    candidates["bench_valid_acc"] = candidates["bench_test_acc"] = math.nan  # see _add_benchmark
    candidates = candidates[CANDIDATE_COLUMNS]
    for column in ("supernet_version", "supernet", "batches", "samples", "unit", "position", "params", "flops"):
        candidates[column] = candidates[column].astype("int64")

    trained = _ordered(rows[kind == "train"], ["unit"])
    standalone = _ordered(rows[kind == "standalone"], ["unit", "position"])
    finals = standalone.groupby("key").tail(1) if not standalone.empty else standalone
    if not finals.empty and "role" in finals:
        finals = finals[finals["role"] == "final"]
    final_arch = final_winner(finals.to_dict("records")) if len(finals) else None
    best = finals[finals["arch"] == final_arch] if final_arch is not None else finals.head(0)
    # every seed of the winner; its accuracies are their means (one seed: that training's)
    best_test = best["test_acc"].astype(float) if "test_acc" in best else pd.Series(dtype=float)
    best_valid = best["valid_acc"].astype(float) if "valid_acc" in best else pd.Series(dtype=float)
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
                "final_arch_index": space.benchmark_index(space.parse(final_arch)) if final_arch else -1,
                "standalone_valid_acc": float(best_valid.mean()) if best_valid.notna().any() else math.nan,
                "standalone_test_acc": float(best_test.mean()) if best_test.notna().any() else math.nan,
                "standalone_epochs": int(best["epoch"].iloc[0]) if len(best) else 0,
                "final_seeds": int(len(best)),
                "final_train_split": (str(best["train_split"].iloc[0]) if len(best) and "train_split" in best
                                      and isinstance(best["train_split"].iloc[0], str) else
                                      (config.get("searcher", {}).get("standalone") or {}).get("train_split", "train")),
                "final_test_acc_mean": float(best_test.mean()) if best_test.notna().any() else math.nan,
                # over the seeds (ddof 1): NaN with one seed
                "final_test_acc_std": float(best_test.std()) if best_test.notna().sum() > 1 else math.nan,
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
                "offpath": manifest.get("offpath"),
                "device": manifest.get("device"),
                "status": status,
                "sessions": int(manifest.get("sessions", 1)),
                "final_arch_code": space.index_of(space.parse(final_arch)) if final_arch else -1,
            }
        ],
        columns=SUMMARY_COLUMNS,
    )
    _add_benchmark(candidates, summary, config.get("benchmark"))
    write_parquet(run_dir / "candidates.parquet", candidates)
    write_parquet(run_dir / "summary.parquet", summary)
    write_parquet(run_dir / "standalone.parquet", _standalone_table(finals, config, space, final_arch))
    write_json(run_dir / "manifest.json", manifest)
    return candidates, summary


def _standalone_table(finals: pd.DataFrame, config: dict, space, winner: str | None) -> pd.DataFrame:
    """One row per final training (the last row of each pick x seed), in issue order."""
    finals = _ordered(finals, ["unit"])

    def column(name: str, dtype) -> pd.Series:  # rows of an older raynas lack the newer fields
        return finals[name] if name in finals else pd.Series([None] * len(finals), index=finals.index, dtype=dtype)

    table = pd.DataFrame({
        "run_id": config["run_id"], "method": config["method"], "seed": config["seed"],
        "arch": column("arch", object).astype(str),
        "role": column("role", object),
        "train_seed": column("train_seed", "float64"),
        "train_split": column("train_split", object),
        "train_size": column("train_size", "float64"),
        "epochs": column("epoch", "float64"),
        "valid_acc": column("valid_acc", "float64").astype(float),
        "test_acc": column("test_acc", "float64").astype(float),
        "seconds": column("seconds", "float64").astype(float),
        "unit": column("unit", "float64"),
    }).reset_index(drop=True)
    table["arch_index"] = [space.benchmark_index(space.parse(a)) for a in table["arch"]]
    table["winner"] = table["arch"] == winner
    # an older raynas trained every final with seed 777, on the train split
    table["train_seed"] = table["train_seed"].fillna(777).astype("int64")
    table["train_split"] = table["train_split"].fillna("train").astype(str)
    for name in ("epochs", "unit"):
        table[name] = table[name].fillna(-1).astype("int64")
    table["train_size"] = table["train_size"].fillna(-1).astype("int64")
    return table[STANDALONE_COLUMNS]


def _add_benchmark(candidates: pd.DataFrame, summary: pd.DataFrame, source: dict | None) -> None:
    """The benchmark's accuracy (``bench_valid_acc``, ``bench_test_acc``) of every candidate and
    of the final pick, looked up once here in the driver (only these archs' rows are read)."""
    summary["bench_dataset"] = source["dataset"] if source else None
    final = summary["final_arch"].iloc[0]
    archs = set(candidates["arch"]) | ({final} if isinstance(final, str) else set())
    if not source or not archs:
        return
    from raynas.nasbench import lookup

    looked = lookup(source, archs)
    for column in ("bench_valid_acc", "bench_test_acc"):
        candidates[column] = candidates["arch"].map(looked[column]).astype(float)
        summary[column] = float(looked.loc[final, column]) if isinstance(final, str) else math.nan


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


def markdown_table(table) -> str:
    """A DataFrame as a markdown table ('|' in arch strings escaped)."""
    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)
