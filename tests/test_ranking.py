"""Ranking statistics, the truth table's reliability, the stratified sample, and the truth build."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ray.tune.search import Searcher
from scipy import stats

from raynas.cli import main
from raynas.ranking import read_archs, read_truth, rank_runs, rank_stats, truth_archs, truth_reliability, truth_values
from raynas.spaces import get_space
from raynas.truth import TABLE_COLUMNS, TruthSearcher, build_truth, stratified_sample

#: archs no tiny search of seed 0 draws (another stream)
ARCHS = [str(a) for a in get_space("nb201").sample(np.random.default_rng(12345), 40)]


# --- rank_stats -------------------------------------------------------------------------------
def test_concordant_and_reversed_rankings():
    archs = [f"a{i}" for i in range(10)]
    truth = dict(zip(archs, np.linspace(0.5, 0.9, 10)))
    same = rank_stats(dict(zip(archs, range(10))), truth)
    assert same["n"] == 10 and same["kendall_tau"] == pytest.approx(1.0) and same["spearman"] == pytest.approx(1.0)
    assert same["top5_precision"] == 1.0 and same["top10_precision"] == 1.0 and same["regret"] == 0.0
    assert same["kendall_p"] < 1e-5
    rev = rank_stats(dict(zip(archs, range(10, 0, -1))), truth)
    assert rev["kendall_tau"] == pytest.approx(-1.0) and rev["spearman"] == pytest.approx(-1.0)
    # the score's top 5 is the truth's bottom 5; over all 10 archs the sets coincide
    assert rev["top5_precision"] == 0.0 and rev["top10_precision"] == 1.0
    assert rev["regret"] == pytest.approx(0.4)


def test_a_small_case_by_hand_over_the_archs_both_hold():
    # scores 1..5 for a..e; truth swaps (a, b) and (d, e): 2 discordant pairs of 10
    scores = {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "only_scored": 9, "nan_scored": math.nan}
    truth = pd.Series({"a": 2.0, "b": 1.0, "c": 3.0, "d": 5.0, "e": 4.0, "only_truth": 0.0, "nan_scored": 7.0})
    out = rank_stats(scores, truth, top_k=(1, 2, 6))
    assert out["n"] == 5
    assert out["kendall_tau"] == pytest.approx((8 - 2) / 10)
    assert out["spearman"] == pytest.approx(1 - 6 * 4 / (5 * (25 - 1)))  # rank differences -1,1,0,-1,1
    assert out["top1_precision"] == 0.0  # score picks e (truth 4), the truth's best is d
    assert out["top2_precision"] == 1.0  # {d, e} both ways
    assert math.isnan(out["top6_precision"])  # more than the 5 shared archs
    assert out["regret"] == pytest.approx(1.0)


def test_too_few_shared_archs_and_bad_input_are_refused():
    with pytest.raises(ValueError, match="share 1 arch"):
        rank_stats({"a": 1, "b": 2}, {"a": 1, "c": 2})
    with pytest.raises(ValueError, match="top_k=0"):
        rank_stats({"a": 1, "b": 2}, {"a": 1, "b": 2}, top_k=(0,))
    with pytest.raises(ValueError, match="expected a pandas Series or a dict"):
        rank_stats([1, 2], {"a": 1, "b": 2})


# --- reliability ------------------------------------------------------------------------------
def _table(values: np.ndarray, archs=None) -> pd.DataFrame:
    """Long format from an (archs, seeds) matrix."""
    archs = archs or [f"arch{i}" for i in range(values.shape[0])]
    return pd.DataFrame([{"arch": a, "seed": s, "valid_acc": values[i, s]}
                         for i, a in enumerate(archs) for s in range(values.shape[1])])


def test_reliability_of_agreeing_seeds_and_of_pure_noise():
    rng = np.random.default_rng(0)
    signal = rng.random(30)
    agreeing = signal[:, None] + np.array([0.0, 0.01, -0.02, 0.03])  # each seed shifts every arch alike
    r = truth_reliability(_table(agreeing))
    assert r["single_seed_tau_min"] == pytest.approx(1.0) and r["split_half_tau"] == pytest.approx(1.0)
    assert r["seeds"] == 4 and r["archs"] == 30 and r["split_halvings"] == 3  # {0,1}|{2,3}, {0,2}|.., {0,3}|..
    noise = truth_reliability(_table(rng.random((400, 4))))
    # tau of independent rankings of 400 archs: mean 0, sd ~0.033
    assert abs(noise["single_seed_tau_mean"]) < 0.1 and abs(noise["split_half_tau"]) < 0.12


def test_split_half_tau_follows_spearman_brown():
    # value = signal + noise, equal variances: one seed's Pearson r = 1/2, i.e. Kendall tau =
    # (2/pi) asin(1/2) = 1/3; a mean of 3 seeds vs another: r = 3/4, tau = (2/pi) asin(3/4)
    rng = np.random.default_rng(0)
    values = rng.normal(size=(800, 1)) + rng.normal(size=(800, 6))  # over many seeds: sd ~0.013
    r = truth_reliability(_table(values))
    assert r["split_halvings"] == 10  # C(6, 3) / 2
    assert r["single_seed_tau_mean"] == pytest.approx(1 / 3, abs=0.04)
    assert r["split_half_tau"] == pytest.approx(2 / math.pi * math.asin(0.75), abs=0.04)
    many = truth_reliability(_table(rng.normal(size=(50, 1)) + rng.normal(size=(50, 12))), splits=7)
    assert many["split_halvings"] == 7 and math.isfinite(many["split_half_tau"])


def test_reliability_skips_incomplete_archs_and_needs_two_seeds():
    table = _table(np.arange(20, dtype=float)[:, None] + np.zeros((20, 3)))
    table = table.drop(index=table.index[(table["arch"] == "arch3") & (table["seed"] == 1)])
    r = truth_reliability(table)
    assert r["complete_archs"] == 19 and r["split_half_tau"] == pytest.approx(1.0)
    assert truth_values(table)["arch3"] == pytest.approx(3.0)  # mean of the seeds it has
    with pytest.raises(ValueError, match="1 seed"):
        truth_reliability(_table(np.ones((5, 1))))


# --- the sample and the searcher -------------------------------------------------------------
NET = dict(C=4, N=1, num_classes=10, in_channels=1)


def test_stratified_sample_spans_sizes_includes_weak_archs_and_is_deterministic():
    space = get_space("nb201")
    sample = stratified_sample(space, 24, seed=3, strata=4, weak_fraction=0.25, pool=300, net=NET)
    assert len(sample) == 24 and sample["arch"].is_unique
    archs = [space.parse(a) for a in sample["arch"]]
    assert len({space.canonical_key(a) for a in archs}) == 24  # one per isomorphism class
    assert not any(space.canonical_key(a, rule="algebraic") == () for a in archs)  # no zero cell
    counts = sample["stratum"].value_counts()
    assert counts["weak"] == 6 and all(counts[f"q{i}"] in (4, 5) for i in range(1, 5))
    forced = sample[sample["stratum"] == "weak"]
    weak_ops = (0, 4)  # none, avg_pool_3x3
    assert all(sum(o in weak_ops for o in space.parse(a).ops) >= 4 for a in forced["arch"]) and forced["weak"].all()
    by = sample.groupby("stratum")["params"]
    for lo, hi in zip(["q1", "q2", "q3"], ["q2", "q3", "q4"]):
        assert by.max()[lo] <= by.min()[hi]  # strata are ordered by size
    assert by.max()["q4"] > 2 * by.min()["q1"]
    assert sample["params"].tolist() == [space.count_parameters(a, **NET) for a in archs]
    assert stratified_sample(space, 24, seed=3, strata=4, weak_fraction=0.25, pool=300, net=NET).equals(sample)
    assert not stratified_sample(space, 24, seed=4, strata=4, weak_fraction=0.25, pool=300, net=NET).equals(sample)
    with pytest.raises(ValueError, match="pool=30; must be >= 2 \\* n = 48"):
        stratified_sample(space, 24, pool=30)
    with pytest.raises(ValueError, match="strata=0"):
        stratified_sample(space, 24, strata=0)


def _drive(searcher, fail=()):
    """Run a searcher to the end without Ray: complete every unit at once (``fail``: unit ids that error)."""
    units = []
    for i in range(1000):
        unit = searcher.suggest(f"t{i}")
        if unit == Searcher.FINISHED:
            return units
        if unit is None:
            raise AssertionError("the truth searcher waited with nothing live")
        units.append(unit)
        searcher.on_trial_complete(f"t{i}", {"valid_acc": 0.5}, error=unit["unit"] in fail)
    raise AssertionError("never finished")


def test_truth_searcher_emits_one_standalone_unit_per_arch_and_seed_seed_major():
    searcher = TruthSearcher(archs=ARCHS[:3], seeds=[5, 7], standalone={"C": 4, "epochs": 1})
    units = _drive(searcher)
    assert [(u["arch"], u["seed"]) for u in units] == [(a, s) for s in (5, 7) for a in ARCHS[:3]]
    assert all(u["kind"] == "standalone" and u["role"] == "truth" and u["C"] == 4 for u in units)
    assert [u["unit"] for u in units] == list(range(6)) and len(searcher.done_) == 6
    # a unit failing for good is recorded and the build goes on
    flaky = TruthSearcher(archs=ARCHS[:3], seeds=[0, 1], max_unit_retries=1)
    units = _drive(flaky, fail={2})
    assert len(units) == 7 and flaky.failed_ == [2] and len(flaky.done_) == 5
    # save -> restore mid-way continues identically
    a = TruthSearcher(archs=ARCHS[:4], seeds=[0, 1, 2])
    for i in range(5):
        a.suggest(f"t{i}")
        a.on_trial_complete(f"t{i}", {"valid_acc": 0.1})
    b = TruthSearcher(archs=ARCHS[:4], seeds=[0, 1, 2])
    b.set_state(a.get_state())
    assert _drive(a) == _drive(b)
    with pytest.raises(ValueError, match="standalone seed=3"):
        TruthSearcher(archs=ARCHS[:2], seeds=[0, 1], standalone={"seed": 3})
    with pytest.raises(ValueError, match="seeds=\\[1, 1\\]"):
        TruthSearcher(archs=ARCHS[:2], seeds=[1, 1])


# --- end to end -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_truth(ray_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("truth") / "digits.parquet"
    build_truth("digits", output=out, archs=4, seeds=2, recipe=dict(C=4, N=1, epochs=1, batch_size=128),
                strata=2, weak_fraction=0.25, pool=40, storage=out.parent / "runs", max_concurrent=2, verbose=0)
    return out


def test_truth_build_writes_the_table_and_its_reliability(tiny_truth, capsys):
    table, meta = read_truth(tiny_truth)
    assert list(table.columns) == TABLE_COLUMNS and len(table) == 8
    assert table.groupby("arch")["seed"].apply(sorted).tolist() == [[0, 1]] * 4
    assert table["valid_acc"].between(0, 1).all() and table["test_acc"].between(0, 1).all()
    assert (table["epochs"] == 1).all() and (table["params"] > 0).all() and (table["seconds"] > 0).all()
    assert set(table["stratum"]) <= {"weak", "q1", "q2"} and (table["stratum"] == "weak").sum() == 2
    # the two seeds really differ (the unit's seed reached the training)
    assert not np.allclose(*[g.sort_values("arch")["valid_acc"].to_numpy() for _, g in table.groupby("seed")])
    r = meta["reliability"]
    assert r["archs"] == 4 and r["seeds"] == 2 and r["split_halvings"] == 1
    assert -1.0 <= r["single_seed_tau_mean"] <= 1.0
    assert r["split_half_tau"] == pytest.approx(r["single_seed_tau_mean"])  # one seed per half
    assert meta["recipe"] == {"C": 4, "N": 1, "epochs": 1, "batch_size": 128}
    assert meta["dataset"] == "digits" and len(meta["dataset_fingerprint"]) == 64 and meta["missing_rows"] == 0
    assert meta["cost"]["max_concurrent"] == 2 and meta["cost"]["train_s"] > 0
    assert json.loads(tiny_truth.with_suffix(".json").read_text())["reliability"] == r
    assert truth_archs(tiny_truth) == list(dict.fromkeys(table["arch"]))
    # never overwritten: exit 2, one line, before any Ray work
    before = tiny_truth.read_bytes()
    assert main(["truth", "--dataset", "digits", "--output", str(tiny_truth)]) == 2
    assert "already exists" in capsys.readouterr().err and tiny_truth.read_bytes() == before
    assert main(["truth", "--resume", str(tiny_truth.parent)]) == 2
    assert "not a truth experiment" in capsys.readouterr().err


def test_a_resumed_truth_build_rebuilds_the_same_table(tiny_truth, tmp_path):
    # the driver died after the trainings, before the table: --resume restores the finished
    # experiment (no training is repeated) and writes the table from its rows
    table, meta = read_truth(tiny_truth)
    moved = tmp_path / tiny_truth.name
    tiny_truth.rename(moved)
    tiny_truth.with_suffix(".json").rename(moved.with_suffix(".json"))
    try:
        assert main(["truth", "--resume", meta["experiment"], "-q"]) == 0
        again, meta2 = read_truth(tiny_truth)
        pd.testing.assert_frame_equal(again, table)
        assert meta2["reliability"] == meta["reliability"] and meta2["cost"]["wall_s"] > meta["cost"]["wall_s"]
    finally:
        for path in (tiny_truth, tiny_truth.with_suffix(".json")):
            path.unlink(missing_ok=True)
        moved.rename(tiny_truth)
        moved.with_suffix(".json").rename(tiny_truth.with_suffix(".json"))


@pytest.fixture(scope="module")
def rsps_run(tiny_rsps_run):
    """The session's TINY rsps run (tests/conftest.py), alone in its folder (test_search_e2e.py reads it too)."""
    return tiny_rsps_run


def test_rank_a_run_against_a_truth_of_its_archs(rsps_run, tmp_path, capsys):
    candidates = pd.read_parquet(rsps_run / "candidates.parquet")
    scores = candidates.groupby("arch")["valid_acc"].mean()
    held = list(scores.index[:5])  # the truth holds 5 of the run's 6 archs, and 2 it never scored
    rng = np.random.default_rng(0)
    truth_rows = [{"arch": a, "seed": s, "valid_acc": float(rng.random())} for a in held + ARCHS[-2:] for s in (0, 1)]
    path = tmp_path / "truth.parquet"
    pd.DataFrame(truth_rows).to_parquet(path)
    truth = pd.DataFrame(truth_rows).groupby("arch")["valid_acc"].mean()

    table = rank_runs([rsps_run], path)
    row = table.iloc[0]
    assert row["run_id"] == "rsps" and row["method"] == "rsps" and row["scored"] == 6 and row["n"] == 5
    assert row["status"] == "complete"
    assert row["kendall_tau"] == pytest.approx(stats.kendalltau(scores[held], truth[held]).statistic)
    assert row["spearman"] == pytest.approx(stats.spearmanr(scores[held], truth[held]).statistic)
    assert math.isnan(row["top10_precision"])

    assert main(["rank", str(rsps_run.parent), "--truth", str(path), "--format", "json", "--top-k", "2"]) == 0
    (parsed,) = json.loads(capsys.readouterr().out)
    assert parsed["n"] == 5 and parsed["kendall_tau"] == pytest.approx(row["kendall_tau"]) and "top2_precision" in parsed
    assert main(["rank", str(rsps_run), "--truth", str(path), "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("run_id,method,seed,status,scored,n,kendall_tau") and len(lines) == 2
    assert main(["rank", str(rsps_run), "--truth", str(path)]) == 0
    assert "rsps" in capsys.readouterr().out
    # errors: one line, exit 2
    assert main(["rank", str(rsps_run), "--truth", str(tmp_path / "none.parquet")]) == 2
    assert "no such file" in capsys.readouterr().err
    far = tmp_path / "far.parquet"
    pd.DataFrame([{"arch": a, "seed": 0, "valid_acc": 0.5} for a in ARCHS[-3:]]).to_parquet(far)
    assert main(["rank", str(rsps_run), "--truth", str(far)]) == 2
    assert "share 0 arch" in capsys.readouterr().err


def test_read_archs_from_a_table_or_a_text_file(tmp_path):
    table = tmp_path / "t.parquet"
    pd.DataFrame({"arch": [ARCHS[2], ARCHS[0], ARCHS[2]], "seed": [0, 0, 1]}).to_parquet(table)
    assert read_archs(table) == [ARCHS[2], ARCHS[0]]  # each once, in order
    text = tmp_path / "archs.txt"
    text.write_text(f"# two archs\n{ARCHS[1]}\n\n{ARCHS[3]}\n")
    assert read_archs(text) == [ARCHS[1], ARCHS[3]]
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_archs(tmp_path / "none.txt")
    pd.DataFrame({"name": ["x"]}).to_parquet(tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="no 'arch' column"):
        read_archs(tmp_path / "other.parquet")


def test_a_ranking_run_scores_exactly_the_truths_archs(ray_session, tmp_path, capsys):
    truth = tmp_path / "truth.parquet"
    rng = np.random.default_rng(1)
    rows = [{"arch": a, "seed": s, "valid_acc": float(rng.random())} for a in ARCHS[:6] for s in (0, 1)]
    pd.DataFrame(rows).to_parquet(truth)
    storage = tmp_path / "runs"
    assert main(["search", "--method", "rsps", "--preset", "rank", "--dataset", "digits", "--candidates", str(truth),
                 "--set", "supernet.epochs=1", "--set", "searcher.chunk_steps=8", "--storage", str(storage),
                 "--name", "rank", "-q"]) == 0
    run = storage / "rank"
    candidates = pd.read_parquet(run / "candidates.parquet")
    assert sorted(candidates["arch"]) == sorted(ARCHS[:6])
    assert (candidates["samples"] == 359).all()  # each on the whole valid split of digits
    summary = pd.read_parquet(run / "summary.parquet").iloc[0]
    assert summary["final_arch"] is None and summary["standalone_epochs"] == 0
    assert rank_runs([run], truth).iloc[0]["n"] == 6
    capsys.readouterr()
    # a method that picks its own candidates, and the rank preset without any: one line, exit 2
    assert main(["search", "--method", "setn", "--candidates", str(truth), "--storage", str(storage)]) == 2
    assert "chooses its own candidates" in capsys.readouterr().err
    assert main(["search", "--method", "rsps", "--preset", "rank", "--storage", str(storage)]) == 2
    assert "add --candidates FILE" in capsys.readouterr().err
    assert sorted(p.name for p in storage.iterdir()) == ["rank"]


SHIPPED = Path(__file__).resolve().parents[1] / "truth" / "fashion-mnist16.parquet"


def test_the_shipped_truth_is_the_stratified_sample_and_agrees_with_itself():
    table, facts = read_truth(SHIPPED)
    net = dict(C=facts["recipe"]["C"], N=facts["recipe"]["N"], num_classes=10, in_channels=1)
    sample = stratified_sample(facts["space"], facts["archs"], seed=facts["sample_seed"], strata=facts["strata"],
                               weak_fraction=facts["weak_fraction"], pool=facts["pool"], net=net)
    assert truth_archs(SHIPPED) == list(sample["arch"])  # built by the command it records
    assert len(table) == facts["archs"] * len(facts["seeds"]) and facts["missing_rows"] == 0
    assert all(sorted(seeds) == facts["seeds"] for _, seeds in table.groupby("arch")["seed"])
    assert table["valid_acc"].between(0.1, 1.0).all() and (table["epochs"] == facts["recipe"]["epochs"]).all()
    reliability = truth_reliability(table)
    assert reliability["split_half_tau"] == pytest.approx(facts["reliability"]["split_half_tau"])
    assert reliability["split_half_tau"] >= 0.6  # the bar a truth must clear to rank anything
    assert json.loads(SHIPPED.with_suffix(".json").read_text())["reliability"] == facts["reliability"]
