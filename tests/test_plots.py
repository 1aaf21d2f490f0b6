"""``raynas plot``: real PNGs of real finished runs, with the content the tables say they show.

One module fixture makes three tiny real searches on digits (two RSPS seeds and one random
search, which has no supernet scores), in-process on the session's local Ray; every test here
reads them (plots need no Ray).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from raynas.cli import main
from raynas.plots import plot_runs, trajectory
from raynas.results import read_parquet, write_parquet
from raynas.storage import Location

STANDALONE = "searcher.standalone={'C': 4, 'N': 1, 'epochs': 1, 'batch_size': 128}"
RSPS = ["--set", "supernet.epochs=1", "--set", "supernet.C=4", "--set", "searcher.chunk_steps=8",
        "--set", "searcher.num_candidates=6", "--set", "searcher.cohort_size=6", "--set", "searcher.top_k=1"]
RUN_FILES = ("raynas.json", "rows.jsonl", "candidates.parquet", "summary.parquet", "manifest.json")


@pytest.fixture(scope="module")
def runs(ray_session, tmp_path_factory):
    """Three finished runs in one folder, and a truth table of the RSPS runs' archs (:func:`_truth`)."""
    storage = tmp_path_factory.mktemp("plot-runs")
    for name, method, seed, extra in [("rsps-s0", "rsps", 0, RSPS), ("rsps-s1", "rsps", 1, RSPS),
                                      ("random-s0", "random", 0, ["--set", "searcher.num_samples=1"])]:
        assert main(["search", "--method", method, "--dataset", "digits", "--seed", str(seed), "--storage",
                     str(storage), "--name", name, "-q", "--set", STANDALONE, *extra]) == 0
    return storage, _truth(storage, storage.parent / "truth.parquet")


def _truth(storage: Path, path: Path) -> Path:
    """A truth table (2 seeds, random accuracies) over 5 of rsps-s0's 6 archs and all of rsps-s1's."""
    first, second = (list(dict.fromkeys(pd.read_parquet(storage / r / "candidates.parquet")["arch"]))
                     for r in ("rsps-s0", "rsps-s1"))
    archs = list(dict.fromkeys(first[:5] + [a for a in second if a != first[5]]))
    rng = np.random.default_rng(0)
    pd.DataFrame([{"arch": a, "seed": s, "valid_acc": float(rng.random())} for a in archs for s in (0, 1)]).to_parquet(path)
    return path


def _image(data: bytes | Path) -> np.ndarray:
    import io

    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"), dtype=float)


def _drawn(plots, kind):
    return {p.facts.get("run_id"): p for p in plots if p.kind == kind and p.figure is not None}


def test_plot_writes_real_pngs_of_every_run_and_says_what_it_skipped(runs, tmp_path, capsys):
    storage, truth = runs
    out = tmp_path / "plots"
    assert main(["plot", str(storage), "--truth", str(truth), "--output", str(out)]) == 0
    captured = capsys.readouterr()
    expected = {"score-vs-truth-rsps-s0.png", "score-vs-truth-rsps-s1.png", "comparison.png",
                "trajectory-rsps-s0.png", "trajectory-rsps-s1.png", "trajectory-random-s0.png"}
    assert sorted(Path(line).name for line in captured.out.splitlines()) == sorted(expected)
    assert {p.name for p in out.iterdir()} == expected
    for path in out.iterdir():
        pixels = _image(path)
        assert pixels.shape == (480, 640, 3) and pixels.std() > 10  # drawn on, not a blank canvas
    # the random search has no supernet scores: skipped, and said so (one line)
    (note,) = [line for line in captured.err.splitlines() if "score-vs-truth-random-s0.png" in line]
    assert note.startswith("raynas plot: skipped") and "share 0 arch" in note

    # without a truth: that plot is skipped with a note; --cost steps draws the same runs on steps
    out2 = tmp_path / "no-truth"
    assert main(["plot", str(storage / "rsps-s0"), str(storage / "random-s0"), "--output", str(out2),
                 "--cost", "steps"]) == 0
    captured = capsys.readouterr()
    assert {p.name for p in out2.iterdir()} == {"comparison.png", "trajectory-rsps-s0.png"}
    assert "skipped the score-vs-truth plots: no --truth TABLE given" in captured.err
    assert "trajectory-random-s0.png: random-s0: it trained no supernet" in captured.err
    import sys

    assert "matplotlib.pyplot" not in sys.modules  # figures on their own Agg canvas: no process-wide backend


def test_score_vs_truth_shows_every_shared_candidate_and_the_tau_raynas_rank_prints(runs, capsys):
    storage, truth = runs
    plots = plot_runs([storage], truth=truth)
    assert main(["rank", str(storage / "rsps-s0"), str(storage / "rsps-s1"), "--truth", str(truth),
                 "--format", "json"]) == 0
    ranked = {row["run_id"]: row for row in json.loads(capsys.readouterr().out)}
    drawn = _drawn(plots, "score-vs-truth")
    assert set(drawn) == {"rsps-s0", "rsps-s1"}
    for run_id, plot in drawn.items():
        (ax,) = plot.figure.axes
        (points,) = ax.collections
        assert len(points.get_offsets()) == plot.facts["n"] == ranked[run_id]["n"]
        assert plot.facts["kendall_tau"] == pytest.approx(ranked[run_id]["kendall_tau"])
        assert f"Kendall tau {ranked[run_id]['kendall_tau']:.4f}" in ax.get_title()
    # rsps-s0 scored 6 archs, the truth holds 5 of them: 5 points, each at (truth, score)
    (ax,) = drawn["rsps-s0"].figure.axes
    scores = pd.read_parquet(storage / "rsps-s0" / "candidates.parquet").groupby("arch")["valid_acc"].mean()
    table = pd.read_parquet(truth).groupby("arch")["valid_acc"].mean()
    common = table.index.intersection(scores.index)
    assert len(common) == 5 and len(scores) == 6
    expected = sorted(zip(table[common].to_numpy(), scores[common].to_numpy()))
    np.testing.assert_allclose(sorted(map(tuple, ax.collections[0].get_offsets().data)), expected)


def test_comparison_is_one_point_per_method_with_its_spread_over_seeds(runs):
    storage, _ = runs
    (plot,) = [p for p in plot_runs([storage]) if p.kind == "comparison"]
    (ax,) = plot.figure.axes
    assert len(ax.containers) == 2  # rsps and random, one error-bar point each
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["random, 1 run(s)", "rsps, 2 run(s)"]
    summaries = pd.concat(pd.read_parquet(storage / r / "summary.parquet") for r in ("rsps-s0", "rsps-s1"))
    rsps = ax.containers[1]
    (x,), (y,) = rsps.lines[0].get_xdata(), rsps.lines[0].get_ydata()
    assert y == pytest.approx(summaries["standalone_test_acc"].mean())
    assert x == pytest.approx(summaries["wall_s"].mean())
    point = next(p for p in plot.facts["points"] if p["method"] == "rsps")
    assert point["test_acc_std"] == pytest.approx(summaries["standalone_test_acc"].std())
    assert point["cost_std"] == pytest.approx(summaries["wall_s"].std()) and point["cost_std"] > 0
    # the error bars span mean +- std (matplotlib draws them as line segments)
    bars = [segment for collection in rsps.lines[2] for segment in collection.get_segments()]
    spans = sorted(abs(s[1] - s[0]).max() for s in map(np.asarray, bars))
    assert spans == pytest.approx(sorted([2 * point["cost_std"], 2 * point["test_acc_std"]]))


def test_trajectory_draws_every_candidate_and_the_best_so_far(runs):
    storage, _ = runs
    drawn = _drawn(plot_runs([storage]), "trajectory")
    (ax,) = drawn["rsps-s0"].figure.axes
    candidates = pd.read_parquet(storage / "rsps-s0" / "candidates.parquet")
    (dots,) = ax.collections
    assert len(dots.get_offsets()) == len(candidates) == drawn["rsps-s0"].facts["candidates"] == 6
    assert sorted(dots.get_offsets()[:, 1]) == pytest.approx(sorted(candidates["valid_acc"]))
    best, standalone = ax.lines  # the step lines: best score so far, best standalone so far
    assert best.get_ydata()[-1] == pytest.approx(candidates["valid_acc"].max())
    assert np.all(np.diff(best.get_ydata()) >= 0)
    summary = pd.read_parquet(storage / "rsps-s0" / "summary.parquet").iloc[0]
    assert standalone.get_ydata()[-1] == pytest.approx(summary["standalone_valid_acc"])
    # the random search: no supernet, one standalone training
    events = trajectory(storage / "random-s0")
    assert list(events["kind"]) == ["standalone"] and (events["steps"] == 0).all()
    (ax,) = drawn["random-s0"].figure.axes
    assert not ax.collections and len(ax.lines) == 1
    # RSPS scores after all its training and trains its pick standalone last
    rsps = trajectory(storage / "rsps-s0")
    assert list(rsps["kind"]) == ["score"] * 6 + ["standalone"]
    assert (rsps["steps"] == summary["supernet_steps"]).all() and summary["supernet_steps"] > 0
    assert rsps["wall_s"].iloc[-1] > rsps["wall_s"].iloc[:-1].max() > 0


def test_unfinished_runs_are_plotted_but_left_out_of_the_means(runs, tmp_path, capsys):
    storage, _ = runs
    mixed = tmp_path / "mixed"
    for name in ("rsps-s0", "rsps-s1"):
        shutil.copytree(storage / name, mixed / name, ignore=shutil.ignore_patterns("tune", "supernets", "checkpoints"))
    # rsps-s1 as a search stopped by Ctrl-C leaves it: its tables say interrupted
    summary = read_parquet(mixed / "rsps-s1" / "summary.parquet")
    summary["status"] = "interrupted"
    write_parquet(mixed / "rsps-s1" / "summary.parquet", summary)
    out = tmp_path / "out"
    assert main(["plot", str(mixed), "--output", str(out)]) == 0
    assert "unfinished runs left out of the comparison's means: rsps-s1 (interrupted)" in capsys.readouterr().err
    plots = plot_runs([mixed])
    (comparison,) = [p for p in plots if p.kind == "comparison"]
    assert [(p["method"], p["runs"]) for p in comparison.facts["points"]] == [("rsps", 1)]
    assert "interrupted" in _drawn(plots, "trajectory")["rsps-s1"].figure.axes[0].get_title()
    assert (out / "trajectory-rsps-s1.png").is_file()


def test_the_comparison_on_the_benchmarks_accuracy(runs, tmp_path, capsys):
    storage, _ = runs
    # runs searched without --benchmark have no benchmark accuracy: the comparison is skipped, said so
    out = tmp_path / "out"
    assert main(["plot", str(storage / "rsps-s0"), "--accuracy", "benchmark", "--output", str(out)]) == 0
    assert "skipped comparison.png: no complete run has the benchmark's accuracy" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["trajectory-rsps-s0.png"]
    # the same runs as a search with --benchmark leaves them: the final pick's bench_test_acc in the summary
    looked_up = tmp_path / "looked-up"
    for name, bench in (("rsps-s0", 0.91), ("rsps-s1", 0.87), ("random-s0", None)):
        shutil.copytree(storage / name, looked_up / name, ignore=shutil.ignore_patterns("tune", "supernets", "checkpoints"))
        if bench is not None:
            summary = read_parquet(looked_up / name / "summary.parquet")
            summary["bench_test_acc"] = bench
            write_parquet(looked_up / name / "summary.parquet", summary)
    (plot,) = [p for p in plot_runs([looked_up], accuracy="benchmark") if p.kind == "comparison"]
    (point,) = plot.facts["points"]  # random-s0 has no benchmark figure: no point
    assert point["method"] == "rsps" and point["test_acc_mean"] == pytest.approx(0.89)
    assert point["test_acc_std"] == pytest.approx(np.std([0.91, 0.87], ddof=1))
    (ax,) = plot.figure.axes
    assert ax.containers[0].lines[0].get_ydata()[0] == pytest.approx(0.89) and "NAS-Bench-201" in ax.get_ylabel()


def test_bad_input_is_one_line_exit_2_and_leaves_nothing(runs, tmp_path, capsys):
    storage, truth = runs
    out = tmp_path / "out"

    def refused(*argv) -> str:
        assert main(["plot", *argv]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("raynas plot: error:")
        return lines[0]

    assert "no summary.parquet" in refused(str(tmp_path / "nowhere"), "--output", str(out))
    unfinished = tmp_path / "died"
    unfinished.mkdir()
    shutil.copy(storage / "rsps-s0" / "raynas.json", unfinished)  # a run that never wrote its tables
    assert "it has not finished" in refused(str(unfinished), "--output", str(out))
    candidates = storage / "rsps-s0" / "candidates.parquet"
    assert "not a truth" in refused(str(storage), "--truth", str(candidates), "--output", str(out))
    assert "--truth" in refused(str(storage), "--truth", str(tmp_path / "none.parquet"), "--output", str(out))
    assert "invalid choice" in refused(str(storage), "--cost", "epochs", "--output", str(out))
    assert "required: --output" in refused(str(storage))
    assert "add --truth TABLE" in refused(str(storage), "--truth-epochs", "200", "--output", str(out))
    assert not out.exists()
    # an existing PNG is never overwritten: nothing is written, the old file stays
    out.mkdir()
    (out / "comparison.png").write_bytes(b"mine")
    assert "comparison.png already exists" in refused(str(storage), "--output", str(out))
    assert [p.name for p in out.iterdir()] == ["comparison.png"] and (out / "comparison.png").read_bytes() == b"mine"
    (tmp_path / "file").write_text("x")
    assert "is a file" in refused(str(storage), "--output", str(tmp_path / "file"))


def test_runs_and_plots_in_object_storage(runs, s3_server, capsys):
    from tests.conftest import make_bucket

    storage, truth = runs
    bucket = make_bucket("plots")
    run = Location(f"{bucket}/runs/rsps-s0")
    for name in RUN_FILES:
        (run / name).write_bytes((storage / "rsps-s0" / name).read_bytes())
    out = Location(f"{bucket}/plots")
    assert main(["plot", str(run), "--truth", str(truth), "--output", str(out)]) == 0
    written = capsys.readouterr().out.split()
    assert sorted(written) == sorted(str(out / n) for n in
                                     ("score-vs-truth-rsps-s0.png", "comparison.png", "trajectory-rsps-s0.png"))
    for uri in written:
        assert _image(Location(uri).read_bytes()).std() > 10
    assert main(["plot", str(run), "--output", str(out)]) == 2  # the same names again: refused
    assert "already exists" in capsys.readouterr().err
