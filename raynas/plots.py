"""Plots of runs as PNG files, read from their tables and row logs alone (no Ray, no torch).

- :func:`score_vs_truth_figure`: a run's supernet score of each candidate against its truth (a
  truth table's mean valid accuracy), with the Kendall tau of :func:`raynas.ranking.rank_stats`
  (the figure ``raynas rank`` prints) in the title.
- :func:`comparison_figure`: one point per method, the final arch's test accuracy (trained
  standalone here, or the benchmark's) vs the search's cost, mean and spread (error bars: standard
  deviation over seeds) over the *complete* runs, as :func:`raynas.results.compare_table` averages them.
- :func:`trajectory_figure`: a run's best-so-far supernet score and best-so-far standalone valid
  accuracy against its cost (search wall seconds over all sessions, or supernet steps).
- :func:`plot_runs`: every plot of some runs, or why one was skipped; :func:`write_plots` writes
  them as PNGs into a folder (local or a URI), never over an existing file.

Figures are :class:`matplotlib.figure.Figure` objects drawn by the Agg canvas directly: nothing
here selects a backend or touches ``pyplot``'s global state, and nothing prints.
"""

from __future__ import annotations

import io
import math
import os
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from raynas.storage import Location

#: the kinds of plot, in the order :func:`plot_runs` returns them
KINDS = ("score-vs-truth", "comparison", "trajectory")
#: what a cost axis measures: search wall seconds (all sessions) or supernet optimizer steps
COSTS = {"wall": "search wall time (s)", "steps": "supernet steps"}
_SUMMARY_COST = {"wall": "wall_s", "steps": "supernet_steps"}
#: what the comparison's accuracy is: the final arch trained standalone here, or the benchmark's figure of it
ACCURACIES = {"standalone": "final arch: standalone test accuracy", "benchmark": "final arch: NAS-Bench-201 test accuracy"}
_SIZE = (6.4, 4.8)
_DPI = 100


@dataclass(frozen=True)
class Plot:
    """One plot: its file name, the figure (``None`` when skipped, with the reason in ``skipped``)
    and the facts it shows (points drawn, tau, ...), for a caller to report or check."""

    kind: str
    name: str
    figure: object | None
    facts: dict = field(default_factory=dict)
    skipped: str | None = None


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=_SIZE, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)  # the figure's own canvas: no backend is chosen for the process
    return figure, figure.add_subplot()


def png_bytes(figure) -> bytes:
    """The figure as a PNG file's bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


# --- runs -------------------------------------------------------------------------------------
def find_runs(paths: Iterable["str | os.PathLike | Location"]) -> list[Location]:
    """The run directories among ``paths`` (each a run with its tables, or a folder of such runs
    one level down, as :func:`raynas.results.load_summaries` reads them); a path that holds none
    raises ``FileNotFoundError`` naming it and what was expected."""
    found: list[Location] = []
    for given in paths:
        try:
            found.extend(_runs_at(Location(given)))
        except FileNotFoundError:
            raise
        except (ValueError, OSError) as err:  # a URI pyarrow cannot open, a folder it cannot list
            raise FileNotFoundError(f"{given}: cannot read it ({str(err).splitlines()[0]}); "
                                    "expected a finished raynas run directory (or a folder of them)") from None
    return found


def _runs_at(path: Location) -> list[Location]:
    from raynas.results import is_run_dir

    if (path / "summary.parquet").is_file():
        return [path]
    inner = [child for child in path.iterdir() if (child / "summary.parquet").is_file()]
    if inner:
        return inner
    if is_run_dir(path):
        raise FileNotFoundError(f"{path}: a raynas run without its tables (no summary.parquet: it has not finished; "
                                f"`raynas status {path}` says where it stands)")
    raise FileNotFoundError(f"{path}: no summary.parquet; expected a finished raynas run directory (or a folder of them)")


def _identity(summary: pd.Series) -> str:
    status = summary.get("status")
    status = status if isinstance(status, str) else "unknown"
    text = f"{summary['run_id']} ({summary['method']}, seed {summary['seed']})"
    return text if status == "complete" else f"{text}, {status}"


def _file_stem(run_id: str, taken: set[str]) -> str:
    """``run_id`` as part of a file name, made unique among ``taken`` (two storages may hold the same name)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", str(run_id)).strip("._") or "run"
    unique, n = stem, 1
    while unique in taken:
        n += 1
        unique = f"{stem}-{n}"
    taken.add(unique)
    return unique


# --- supernet score vs truth --------------------------------------------------------------------
def score_vs_truth_figure(run_dir: "str | os.PathLike | Location", truth: pd.Series, *, title: str | None = None):
    """``(figure, stats)``: the run's candidates' supernet scores against ``truth`` (arch -> value,
    e.g. :func:`raynas.ranking.truth_values` of a truth table), over the archs both hold with
    finite values, and :func:`raynas.ranking.rank_stats` of the same (``stats["n"]`` points).
    ``ValueError`` when they share fewer than 2 archs."""
    from raynas.ranking import rank_stats, run_scores

    run_dir = Location(run_dir)
    scores = run_scores(run_dir)
    stats = rank_stats(scores, truth)
    # the archs rank_stats compares: held by both, finite on both sides
    both = pd.DataFrame({"score": scores, "truth": truth.rename(index=str)}).dropna()
    both = both[np.isfinite(both["score"]) & np.isfinite(both["truth"])]
    figure, ax = _figure()
    ax.scatter(both["truth"], both["score"], s=18, alpha=0.8, label=f"candidates (n={stats['n']})")
    ax.set_xlabel("truth: valid accuracy (mean over seeds)")
    ax.set_ylabel("supernet score: valid accuracy")
    ax.set_title(f"{title or run_dir.name}\nKendall tau {stats['kendall_tau']:.4f}, Spearman {stats['spearman']:.4f}",
                 fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return figure, {**stats, "points": len(both)}


# --- the method comparison ----------------------------------------------------------------------
def comparison_figure(summaries: pd.DataFrame, *, cost: str = "wall", accuracy: str = "standalone"):
    """``(figure, facts)``: one point per (method, dataset) of :func:`raynas.results.compare_table`
    with complete runs and a final accuracy: its mean test accuracy vs mean search cost, error
    bars one standard deviation over seeds (none for a single run). ``accuracy``: ``standalone``
    (the final arch trained here: ``compare_table``'s ``test_acc_mean``/``_std``) or ``benchmark``
    (NAS-Bench-201's test accuracy of the final arch, ``bench_test_acc``, for runs searched with
    ``--benchmark``). ``facts["points"]`` lists what was drawn; ``figure`` is ``None`` when nothing
    could be."""
    from raynas.results import compare_table

    column = _cost_column(cost)
    if accuracy not in ACCURACIES:
        raise ValueError(f"accuracy={accuracy!r}; expected one of {sorted(ACCURACIES)}")
    table = compare_table(summaries)
    status = summaries["status"].fillna("unknown") if "status" in summaries else pd.Series("unknown", summaries.index)
    complete = summaries[status == "complete"]
    spread = complete.groupby(["method", "dataset"])[column].agg(["mean", "std"])
    if accuracy == "benchmark":
        bench = complete.get("bench_test_acc", pd.Series(math.nan, index=complete.index)).astype(float)
        bench = bench.groupby([complete["method"], complete["dataset"]]).agg(["mean", "std"])
    several = table["dataset"].nunique() > 1
    points = []
    for row in table.itertuples(index=False):
        y_mean, y_std = (row.test_acc_mean, row.test_acc_std) if accuracy == "standalone" else (
            bench.loc[(row.method, row.dataset)] if (row.method, row.dataset) in bench.index else (math.nan, math.nan))
        if row.runs == 0 or not math.isfinite(y_mean):
            continue  # only unfinished runs, or none trained a final arch (a ranking run) / looked it up
        x_mean, x_std = spread.loc[(row.method, row.dataset)]
        points.append({"method": row.method, "dataset": row.dataset, "runs": int(row.runs),
                       "test_acc_mean": float(y_mean), "test_acc_std": _or_zero(y_std),
                       "cost_mean": float(x_mean), "cost_std": _or_zero(x_std)})
    unfinished = [f"{r} ({s})" for r, s in zip(summaries["run_id"], status) if s != "complete"]
    facts = {"cost": cost, "points": points, "unfinished": unfinished}
    if not points:
        return None, facts
    figure, ax = _figure()
    for point in points:
        label = f"{point['method']} ({point['dataset']})" if several else point["method"]
        ax.errorbar(point["cost_mean"], point["test_acc_mean"], xerr=point["cost_std"], yerr=point["test_acc_std"],
                    fmt="o", capsize=4, markersize=7, label=f"{label}, {point['runs']} run(s)")
    ax.set_xlabel(f"{COSTS[cost]}, mean over seeds")
    ax.set_ylabel(ACCURACIES[accuracy])
    ax.set_title("methods: mean and standard deviation over seeds (complete runs)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return figure, facts


def _or_zero(value) -> float:
    """A spread for an error bar: the std of one run is NaN, drawn as no bar."""
    value = float(value)
    return value if math.isfinite(value) else 0.0


def _cost_column(cost: str) -> str:
    if cost not in _SUMMARY_COST:
        raise ValueError(f"cost={cost!r}; expected one of {sorted(_SUMMARY_COST)}")
    return _SUMMARY_COST[cost]


# --- the search trajectory ----------------------------------------------------------------------
def trajectory(run_dir: "str | os.PathLike | Location") -> pd.DataFrame:
    """The run's results in the order they came, from its row log: one row per scored candidate
    (``kind`` score, its supernet score) and per standalone training (``kind`` standalone, its last
    epoch's valid accuracy), with ``wall_s`` (search seconds since the run began, over all
    sessions) and ``steps`` (supernet optimizer steps trained by then, every supernet's)."""
    from raynas.rowlog import read_rows, sessions

    run_dir = Location(run_dir)
    # a row's t counts from its session's start: earlier sessions' wall time comes first
    offsets, total = {}, 0.0
    for entry in sessions(run_dir):
        offsets[entry["session"]] = total
        total += entry["wall_s"]
    rows = pd.DataFrame(read_rows(run_dir))
    columns = ["kind", "wall_s", "steps", "value", "arch", "key"]
    if rows.empty or "kind" not in rows:
        return pd.DataFrame(columns=columns)
    rows = rows[rows["kind"].isin(["train", "score", "standalone"])].copy()
    rows["wall_s"] = rows["session"].map(offsets).fillna(0.0) + rows["t"].astype(float)
    rows = rows.sort_values("wall_s", kind="stable")
    trained: dict = {}
    steps = []
    absent = pd.Series(None, index=rows.index, dtype=object)  # a run without a supernet (random search)
    for kind, supernet, version in zip(rows["kind"], rows.get("supernet", absent), rows.get("version", absent)):
        if kind == "train" and version is not None and not pd.isna(version):
            trained[supernet] = max(trained.get(supernet, 0), int(version))
        steps.append(sum(trained.values()))
    rows["steps"] = steps
    scores = rows[rows["kind"] == "score"]
    standalone = rows[rows["kind"] == "standalone"]
    if not standalone.empty:  # a training's result is its last epoch
        standalone = standalone.sort_values(["key", "position"], kind="stable").groupby("key").tail(1)
    out = pd.concat([scores, standalone]).sort_values("wall_s", kind="stable")
    out = out.rename(columns={"valid_acc": "value"})
    return out.reindex(columns=columns).reset_index(drop=True)


def trajectory_figure(run_dir: "str | os.PathLike | Location", *, cost: str = "wall", title: str | None = None):
    """``(figure, facts)``: every candidate's supernet score (dots) with its best so far (a step
    line), and the best-so-far standalone valid accuracy, against the run's cost; ``figure`` is
    ``None`` (``facts["skipped"]`` says why) when the run has nothing to draw on that axis."""
    _cost_column(cost)
    run_dir = Location(run_dir)
    events = trajectory(run_dir)
    x = "wall_s" if cost == "wall" else "steps"
    scores = events[events["kind"] == "score"]
    standalone = events[events["kind"] == "standalone"]
    facts = {"cost": cost, "candidates": len(scores), "standalone": len(standalone)}
    if scores.empty and standalone.empty:
        return None, {**facts, "skipped": "its row log holds no scored candidate and no standalone training"}
    if cost == "steps" and not (events["steps"] > 0).any():
        return None, {**facts, "skipped": "it trained no supernet, so it has no supernet steps (plot it with --cost wall)"}
    figure, ax = _figure()
    if not scores.empty:
        ax.scatter(scores[x], scores["value"], s=10, alpha=0.35, color="tab:blue", label="candidate: supernet score")
        ax.step(scores[x], scores["value"].cummax(), where="post", color="tab:blue", label="supernet score, best so far")
    if not standalone.empty:
        ax.step(standalone[x], standalone["value"].cummax(), where="post", color="tab:orange", marker="s",
                label="standalone valid accuracy, best so far")
    ax.set_xlim(left=0)  # the search's start: where the first result came shows the start-up's cost
    ax.set_xlabel(COSTS[cost])
    ax.set_ylabel("valid accuracy")
    ax.set_title(f"{title or run_dir.name}: search trajectory", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return figure, facts


# --- all plots of some runs -------------------------------------------------------------------
def plot_runs(run_dirs: Sequence["str | os.PathLike | Location"], *,
              truth: "str | os.PathLike | pd.Series | None" = None, cost: str = "wall",
              accuracy: str = "standalone") -> list[Plot]:
    """Every plot of these runs (folders of runs are searched one level down): a score-vs-truth
    plot per run (when ``truth`` is given: a truth table's path, or :func:`raynas.ranking.load_truth`'s
    series, the truth ``raynas rank`` ranks against), the method comparison (``accuracy``: see
    :func:`comparison_figure`), a trajectory per run. A plot that cannot be drawn comes back with
    its reason in ``skipped``. Unfinished runs get their own plots (their status in the title) and
    are left out of the comparison's means."""
    from raynas.results import load_summaries

    _cost_column(cost)
    found = find_runs(run_dirs)
    summaries = load_summaries(found)
    if len(summaries) != len(found):
        raise ValueError(f"{len(found)} runs hold {len(summaries)} summary rows; expected one row per run")
    taken: set[str] = set()
    stems = [_file_stem(run_id, taken) for run_id in summaries["run_id"]]
    plots: list[Plot] = []
    if truth is None:
        plots += [Plot("score-vs-truth", f"score-vs-truth-{s}.png", None, skipped="no truth table given")
                  for s in stems]
    else:
        from raynas.ranking import load_truth

        values = truth if isinstance(truth, pd.Series) else load_truth(truth)
        for run_dir, stem, (_, summary) in zip(found, stems, summaries.iterrows()):
            name = f"score-vs-truth-{stem}.png"
            try:
                figure, stats = score_vs_truth_figure(run_dir, values, title=_identity(summary))
            except ValueError as err:  # no supernet scores (TE-NAS, random), or archs the truth lacks
                plots.append(Plot("score-vs-truth", name, None, {"run_id": summary["run_id"]},
                                  skipped=f"{summary['run_id']}: {str(err).splitlines()[0]}"))
                continue
            plots.append(Plot("score-vs-truth", name, figure, {"run_id": summary["run_id"], **stats}))
    figure, facts = comparison_figure(summaries, cost=cost, accuracy=accuracy)
    plots.append(Plot("comparison", "comparison.png", figure, facts, skipped=None if figure is not None else (
        "no complete run trained a final arch standalone" if accuracy == "standalone" else
        "no complete run has the benchmark's accuracy of its final arch (search with --benchmark PATH)")))
    for run_dir, stem, (_, summary) in zip(found, stems, summaries.iterrows()):
        figure, facts = trajectory_figure(run_dir, cost=cost, title=_identity(summary))
        facts = {"run_id": summary["run_id"], **facts}
        skipped = facts.pop("skipped", None)
        plots.append(Plot("trajectory", f"trajectory-{stem}.png", figure, facts,
                          skipped=f"{summary['run_id']}: {skipped}" if skipped else None))
    return plots


def write_plots(plots: Iterable[Plot], output: "str | os.PathLike | Location") -> list[Location]:
    """Write the drawn plots as PNGs into the folder ``output`` (made if missing; local or a URI)
    and return where they went. Never overwrites: if any of the files exists, ``FileExistsError``
    before anything is written. A failure while writing removes what this call wrote."""
    output = Location(output)
    drawn = [p for p in plots if p.figure is not None]
    if output.is_file():
        raise FileExistsError(f"{output}: is a file; expected a folder for the PNGs")
    existing = [output / p.name for p in drawn if (output / p.name).exists()]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise FileExistsError(f"{existing[0]} already exists{more}; plots never overwrite: choose a new folder")
    images = [(output / p.name, png_bytes(p.figure)) for p in drawn]  # every one rendered before any is written
    made = _missing_folders(output)
    written: list[Location] = []
    try:
        for target, data in images:
            target.write_bytes(data)
            written.append(target)
    except BaseException:
        for target in written:
            target.unlink(missing_ok=True)
        for folder in made:  # deepest first; one that something else wrote into stays
            try:
                os.rmdir(folder)
            except OSError:
                break
        raise
    return written


def _missing_folders(output: Location) -> list:
    """The local folders that writing into ``output`` will make, deepest first."""
    if not output.is_local:
        return []  # object-store prefixes are not made
    missing, folder = [], output.local_path.absolute()
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing
