"""How well supernet scores rank architectures, against a ground-truth table (no Ray needed).

A *truth table* is long-format parquet, one row per (arch, training seed) of a standalone
training: ``arch``, ``seed``, ``valid_acc``, ``test_acc``, ``params``, ... (built by
:func:`raynas.truth.build_truth`, ``raynas truth``). An arch's truth is the mean over its seeds
of ``valid_acc``: a supernet scores candidates on the valid split, so its scores are compared
with the truth's valid accuracy (``test_acc`` is kept in the table for reporting only).

- :func:`rank_stats`: Kendall tau-b and Spearman rho (scipy's, with their p-values), top-k
  precision and the regret of the score's top pick, over the archs both sides hold.
- :func:`truth_reliability`: how much the truth agrees with itself: Kendall tau between every
  pair of single seeds, and split-half tau (mean of half the seeds vs mean of the other half,
  averaged over halvings). A truth whose split-half tau is low cannot rank anything.
- :func:`rank_run`: :func:`rank_stats` of a run's ``candidates.parquet`` against a truth file.
- :func:`load_truth`: the per-arch truth of a table, or of a benchmark truth (NAS-Bench-201 /
  NATS-Bench, :mod:`raynas.nasbench`: one (dataset, epochs) of it chosen) or a benchmark file.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from raynas.errors import UsageError
from raynas.storage import Location

#: the metadata key under which a truth parquet carries its recipe and reliability
TRUTH_METADATA_KEY = b"raynas.truth"
TRUTH_COLUMNS = ("arch", "seed", "valid_acc")
#: columns of a run's candidates.parquet that no truth table has (a run's scores are not a truth)
RUN_ONLY_COLUMNS = ("run_id", "supernet_version", "position")


def _as_series(values, name: str) -> pd.Series:
    if isinstance(values, pd.Series):
        series = values.copy()
    elif isinstance(values, Mapping):
        series = pd.Series(dict(values), dtype=float)
    else:
        raise ValueError(f"{name}: {type(values).__name__}; expected a pandas Series or a dict arch -> value")
    series.index = series.index.map(str)
    if series.index.has_duplicates:
        dups = sorted(set(series.index[series.index.duplicated()]))[:3]
        raise ValueError(f"{name}: archs given more than once, e.g. {dups}; average them first")
    return series.astype(float)


def _top(series: pd.Series, k: int) -> set[str]:
    """The ``k`` archs of highest value (ties broken by arch string, so the pick is deterministic)."""
    order = sorted(series.items(), key=lambda item: (-item[1], item[0]))
    return {arch for arch, _ in order[:k]}


def rank_stats(scores, truth, top_k: Sequence[int] = (5, 10)) -> dict:
    """Rank agreement of ``scores`` with ``truth`` (both arch -> value, higher is better).

    Only archs both hold (with finite values) count. Returns ``n``, ``kendall_tau`` (tau-b, ties
    handled) and ``kendall_p``, ``spearman`` and ``spearman_p``, ``top{k}_precision`` for each
    ``k`` (the share of the truth's top k among the score's top k; NaN when ``k > n``), and
    ``regret`` (the truth's best minus the truth of the score's top pick).
    """
    scores = _as_series(scores, "scores")
    truth = _as_series(truth, "truth")
    common = scores.index.intersection(truth.index)
    both = pd.DataFrame({"score": scores.loc[common], "truth": truth.loc[common]})
    both = both[np.isfinite(both["score"]) & np.isfinite(both["truth"])].sort_index()
    n = len(both)
    if n < 2:
        raise ValueError(
            f"scores and truth share {n} arch(s) with finite values ({len(scores)} scored, {len(truth)} in the truth); "
            "need >= 2: score the truth's archs (raynas.truth.truth_archs)"
        )
    out: dict = {"n": n}
    kendall = stats.kendalltau(both["score"], both["truth"])
    spearman = stats.spearmanr(both["score"], both["truth"])
    out["kendall_tau"], out["kendall_p"] = float(kendall.statistic), float(kendall.pvalue)
    out["spearman"], out["spearman_p"] = float(spearman.statistic), float(spearman.pvalue)
    for k in top_k:
        if int(k) < 1:
            raise ValueError(f"top_k={k!r}; must be >= 1")
        k = int(k)
        out[f"top{k}_precision"] = (
            len(_top(both["score"], k) & _top(both["truth"], k)) / k if k <= n else math.nan
        )
    pick = next(iter(_top(both["score"], 1)))
    out["regret"] = float(both["truth"].max() - both.loc[pick, "truth"])
    return out


# --- the truth table ------------------------------------------------------------------------
def read_truth(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """A truth table and its metadata (recipe, dataset, reliability; ``{}`` if it has none)."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"truth table {path}: no such file; build one with `raynas truth` (see truth/README.md)")
    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(TRUTH_METADATA_KEY)
    frame = table.to_pandas()
    holds = (f"a truth table holds one row per (arch, training seed) of a standalone training, columns "
             f"{', '.join(TRUTH_COLUMNS)} (build one with `raynas truth`)")
    if raw is None and any(c in frame.columns for c in RUN_ONLY_COLUMNS):
        raise ValueError(f"truth table {path}: is a run's table of supernet scores (it has "
                         f"{', '.join(c for c in RUN_ONLY_COLUMNS if c in frame.columns)}), not a truth; {holds}")
    missing = [c for c in TRUTH_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"truth table {path}: no column(s) {missing}; {holds}")
    if frame.empty:
        raise ValueError(f"truth table {path}: has no rows; {holds}")
    if not pd.api.types.is_numeric_dtype(frame["valid_acc"]) or pd.api.types.is_bool_dtype(frame["valid_acc"]):
        raise ValueError(f"truth table {path}: valid_acc is {frame['valid_acc'].dtype}, not a number; {holds}")
    return frame, (json.loads(raw) if raw else {})


def truth_values(table: pd.DataFrame, metric: str = "valid_acc") -> pd.Series:
    """Each arch's truth: the mean over its seeds of ``metric``."""
    if metric not in table.columns:
        raise ValueError(f"truth metric={metric!r}; the table has {sorted(table.columns)}")
    return table.groupby("arch")[metric].mean()


def _seed_matrix(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """arch x seed matrix of ``metric`` (a repeated (arch, seed) counts once, its mean)."""
    return table.pivot_table(index="arch", columns="seed", values=metric, aggfunc="mean")


def truth_reliability(table: pd.DataFrame, *, metric: str = "valid_acc", splits: int = 20, seed: int = 0) -> dict:
    """How much a truth table agrees with itself.

    ``single_seed_tau_mean/min/max``: Kendall tau-b between the archs' values under two single
    seeds, over every pair of seeds (archs holding both). ``split_half_tau``: tau between the
    mean of one half of the seeds and the mean of the other half (archs holding every seed),
    averaged over all halvings or, when there are more than ``splits``, that many seeded random
    ones. It measures a truth of half the seeds; the table's mean over all seeds is more
    reliable still, so it is a lower bound for the table itself.
    """
    matrix = _seed_matrix(table, metric)
    seeds = list(matrix.columns)
    out: dict = {"archs": int(matrix.shape[0]), "seeds": len(seeds), "metric": metric}
    if len(seeds) < 2:
        raise ValueError(f"truth_reliability: the table has {len(seeds)} seed(s); need >= 2 seeds per arch")
    taus = []
    for a, b in itertools.combinations(seeds, 2):
        pair = matrix[[a, b]].dropna()
        if len(pair) >= 2:
            taus.append(float(stats.kendalltau(pair[a], pair[b]).statistic))
    out["single_seed_tau_mean"] = float(np.mean(taus)) if taus else math.nan
    out["single_seed_tau_min"] = float(np.min(taus)) if taus else math.nan
    out["single_seed_tau_max"] = float(np.max(taus)) if taus else math.nan
    full = matrix.dropna()
    out["complete_archs"] = int(len(full))
    half = len(seeds) // 2
    # each halving once: fix the first seed in the first half (its complement is the same split)
    halvings = [(seeds[0], *rest) for rest in itertools.combinations(seeds[1:], half - 1)]
    if len(seeds) % 2 == 1:  # odd: the halves differ in size, both orientations are distinct
        halvings += [tuple(c) for c in itertools.combinations(seeds[1:], half)]
    if len(halvings) > splits:
        rng = np.random.default_rng(seed)
        halvings = [halvings[i] for i in sorted(rng.choice(len(halvings), size=splits, replace=False))]
    halves = []
    if len(full) >= 2:
        for first in halvings:
            rest = [s for s in seeds if s not in first]
            tau = stats.kendalltau(full[list(first)].mean(axis=1), full[rest].mean(axis=1)).statistic
            halves.append(float(tau))
    out["split_half_tau"] = float(np.mean(halves)) if halves else math.nan
    out["split_half_tau_min"] = float(np.min(halves)) if halves else math.nan
    out["split_halvings"] = len(halves)
    values = full.mean(axis=1)
    out["truth_min"] = float(values.min()) if len(values) else math.nan
    out["truth_max"] = float(values.max()) if len(values) else math.nan
    out["seed_std_mean"] = float(full.std(axis=1, ddof=1).mean()) if len(full) else math.nan
    return out


def select_truth(table: pd.DataFrame, *, dataset: str | None = None, epochs: int | None = None,
                 where: str = "truth table") -> pd.DataFrame:
    """The rows of one (dataset, epochs) of a benchmark truth (a table without a ``dataset``
    column is one truth already). A raynas name picks the benchmark dataset a supernet's valid
    scores compare with (cifar10 -> cifar10-valid)."""
    if "dataset" not in table.columns or "epochs" not in table.columns:
        if dataset is not None or epochs is not None:
            raise ValueError(f"{where}: holds one truth (no dataset/epochs columns); drop --truth-dataset/--truth-epochs")
        return table
    from raynas.nasbench import LOOKUP_DATASETS

    held = table[["dataset", "epochs"]].drop_duplicates().sort_values(["dataset", "epochs"])
    listing = ", ".join(f"{d}/{e}" for d, e in held.itertuples(index=False))
    name = LOOKUP_DATASETS.get(dataset, (dataset,))[0] if dataset is not None else None
    chosen = held
    if name is not None:
        chosen = chosen[chosen["dataset"] == name]
    if epochs is not None:
        chosen = chosen[chosen["epochs"] == int(epochs)]
    if len(chosen) != 1:
        why = "holds no" if chosen.empty else "holds several truths for this"
        raise ValueError(f"{where}: {why} --truth-dataset {dataset} --truth-epochs {epochs}; it holds (dataset/epochs) "
                         f"{listing}: choose one with --truth-dataset and --truth-epochs")
    d, e = chosen.iloc[0]
    rows = table[(table["dataset"] == d) & (table["epochs"] == e)]
    if not np.isfinite(rows["valid_acc"]).any():
        raise ValueError(f"{where}: {d}/{e} has no valid accuracy (trained on train+valid); choose cifar10-valid")
    return rows


def load_truth(path: str | Path, *, dataset: str | None = None, epochs: int | None = None) -> pd.Series:
    """Each arch's truth (mean valid accuracy over seeds) from a truth table, a benchmark truth
    (one ``dataset``/``epochs`` of it) or a NAS-Bench-201 / NATS-Bench file or folder itself."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".pth":
        from raynas.nasbench import benchmark_truth, lookup_datasets

        name = lookup_datasets(dataset)[0] if dataset is not None else None
        table = benchmark_truth(path, datasets=None if name is None else [name], epochs=epochs)
        return truth_values(select_truth(table, dataset=dataset, epochs=epochs, where=f"benchmark {path}"))
    table, _ = read_truth(path)
    return truth_values(select_truth(table, dataset=dataset, epochs=epochs, where=f"truth table {path}"))


def truth_archs(path: str | Path) -> list[str]:
    """The archs of a truth table (what a ranking run should score), in the table's order."""
    table, _ = read_truth(path)
    return list(dict.fromkeys(table["arch"].astype(str)))


def read_archs(path: str | Path) -> list[str]:
    """Archs listed in a file, in order, each once: a parquet with an ``arch`` column (a truth
    table, a run's candidates) or a text file of one arch string per line (``#`` comments)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; expected a parquet with an 'arch' column or a text file of archs")
    if path.suffix == ".parquet":
        table = pd.read_parquet(path)
        if "arch" not in table:
            raise ValueError(f"{path}: no 'arch' column; expected a truth table or a run's candidates.parquet")
        archs = table["arch"].astype(str)
    else:
        archs = [line.strip() for line in path.read_text().splitlines()]
        archs = [a for a in archs if a and not a.startswith("#")]
    archs = list(dict.fromkeys(archs))
    if not archs:
        raise ValueError(f"{path}: lists no archs")
    return archs


# --- runs -------------------------------------------------------------------------------------
def _run_dirs(paths: Iterable["str | Path | Location"]) -> list[Location]:
    found: list[Location] = []
    for path in paths:
        path = Location(path)
        if (path / "candidates.parquet").is_file():
            found.append(path)
            continue
        inner = [child for child in path.iterdir() if (child / "candidates.parquet").is_file()]
        if not inner:
            raise FileNotFoundError(f"{path}: no candidates.parquet; expected a finished raynas run directory (or a folder of them)")
        found.extend(inner)
    return found


def run_scores(run_dir: "str | Path | Location") -> pd.Series:
    """A run's supernet score per arch: its candidates' ``valid_acc`` (the mean when scored more than once)."""
    from raynas.results import read_parquet

    path = Location(run_dir) / "candidates.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no candidates.parquet; expected a finished raynas run directory")
    candidates = read_parquet(path)[["arch", "valid_acc"]]
    return candidates.groupby("arch")["valid_acc"].mean()


def rank_run(run_dir: str | Path, truth_path: str | Path, *, top_k: Sequence[int] = (5, 10)) -> dict:
    """:func:`rank_stats` of the run's candidate scores against the truth's mean valid accuracy."""
    table, _ = read_truth(truth_path)
    return _rank_one(Location(run_dir), truth_values(table), top_k)


def _rank_one(run_dir: Location, truth: pd.Series, top_k: Sequence[int]) -> dict:
    from raynas.results import read_parquet

    scores = run_scores(run_dir)
    identity: dict = {"run_id": run_dir.name, "method": None, "seed": None, "status": "unknown"}
    summary = run_dir / "summary.parquet"
    if summary.is_file():
        row = read_parquet(summary).iloc[0]
        # an unfinished run's scores are ranked as they are, and flagged by its status
        identity = {"run_id": row["run_id"], "method": row["method"], "seed": int(row["seed"]),
                    "status": row.get("status") if isinstance(row.get("status"), str) else "unknown"}
    try:
        result = rank_stats(scores, truth, top_k=top_k)
    except ValueError as err:
        # a run and a truth that cannot be compared: bad input (one line, exit 2), not a bug
        raise UsageError(f"{run_dir}: {err}") from None
    return {**identity, "scored": len(scores), **result}


def rank_runs(run_dirs: Iterable[str | Path], truth_path: "str | Path | pd.Series", *,
              top_k: Sequence[int] = (5, 10)) -> pd.DataFrame:
    """One :func:`rank_run` row per run (a folder of runs is searched one level down); the truth
    is a table's path or :func:`load_truth`'s series."""
    truth = truth_path if isinstance(truth_path, pd.Series) else load_truth(truth_path)
    return pd.DataFrame([_rank_one(d, truth, top_k) for d in _run_dirs(run_dirs)])
