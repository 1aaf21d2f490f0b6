"""End-to-end searches on a real local Ray: tables, comparison, status, actor restarts (resume: test_resume_exact.py)."""

import json
import os
import shutil
import time

import numpy as np
import pandas as pd
import pytest
import torch

from raynas.cli import main
from raynas.driver import search
from raynas.results import CANDIDATE_COLUMNS, SUMMARY_COLUMNS
from tests.conftest import TINY


@pytest.fixture(scope="module")
def rsps_run(tiny_rsps_run):
    """The session's TINY rsps run (tests/conftest.py; test_ranking.py reads it too): runs made
    here go to folders of their own."""
    return tiny_rsps_run


def test_rsps_search_writes_the_tables(rsps_run):
    candidates = pd.read_parquet(rsps_run / "candidates.parquet")
    summary = pd.read_parquet(rsps_run / "summary.parquet")
    manifest = json.loads((rsps_run / "manifest.json").read_text())
    assert list(candidates.columns) == CANDIDATE_COLUMNS
    assert len(candidates) == 6 and candidates["arch"].is_unique
    assert not candidates.duplicated(["unit", "position"]).any()
    assert candidates["valid_acc"].between(0, 1).all() and (candidates["params"] > 0).all()
    assert (candidates["supernet_version"] == manifest["supernet"]["total_steps"]).all()
    assert set(candidates["method"]) == {"rsps"} and (candidates["batches"] == 1).all()
    assert list(summary.columns) == SUMMARY_COLUMNS and len(summary) == 1
    row = summary.iloc[0]
    top2 = set(candidates.nlargest(2, "valid_acc")["arch"])
    assert row["final_arch"] in top2
    assert 0.2 < row["standalone_test_acc"] <= 1.0 and row["standalone_epochs"] == 2
    assert row["supernet_steps"] == manifest["supernet"]["total_steps"] == 3 * 16
    assert row["train_s"] > 0 and row["score_s"] > 0 and row["standalone_s"] > 0
    assert row["device_s"] == pytest.approx(row["train_s"] + row["score_s"] + row["standalone_s"])
    assert manifest["bn_mode"] == "batch" and manifest["device"] == "cpu"
    assert manifest["dataset"]["name"] == "digits" and len(manifest["dataset"]["fingerprint"]) == 64
    assert set(manifest["versions"]) >= {"raynas", "torch", "ray"}
    assert (rsps_run / "supernets" / "0" / "snapshot.pt").is_file()
    assert rsps_run.status == "complete" and row["status"] == "complete" and manifest["status"] == "complete"
    assert row["sessions"] == 1 and manifest["sessions"] == 1


def test_status_of_a_complete_run(rsps_run, capsys):
    assert main(["status", str(rsps_run)]) == 0
    text = capsys.readouterr().out
    assert "status    complete" in text and "nothing: the run is complete" in text
    assert main(["status", str(rsps_run), "--format", "json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["status"] == "complete" and status["sessions"] == 1 and status["live_units"] == []


def test_random_search_and_compare_over_both(ray_session, rsps_run, capsys, tmp_path):
    tiny = {"searcher": {"num_samples": 2, "standalone": {"C": 4, "N": 1, "epochs": 1, "batch_size": 128}}}
    shutil.copytree(rsps_run, tmp_path / "rsps")  # a folder of both runs (a copied run is a run)
    random_run = search("random", overrides=tiny, storage=tmp_path, name="random", verbose=0)
    summary = pd.read_parquet(random_run / "summary.parquet").iloc[0]
    assert summary["candidates"] == 0 and np.isfinite(summary["standalone_test_acc"])
    capsys.readouterr()
    assert main(["compare", str(rsps_run), str(random_run)]) == 0
    text = capsys.readouterr().out
    assert "rsps" in text and "random" in text
    assert main(["compare", str(tmp_path), "--format", "csv"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("method,dataset,runs") and len(table) == 3
    assert main(["compare", str(rsps_run), "--format", "markdown"]) == 0
    assert "\\|" in capsys.readouterr().out  # arch pipes escaped inside the cell
    out = tmp_path / "table.parquet"
    assert main(["compare", str(rsps_run), "--format", "parquet", "--output", str(out)]) == 0
    assert len(pd.read_parquet(out)) == 1


def test_actor_killed_mid_training_resumes_from_its_snapshot(ray_session, tmp_path):
    import ray

    from raynas.actor import create_supernet_actor

    kwargs = dict(dataset="digits", C=4, N=1, total_steps=400, valid_batch_size=64, snapshot_every=10,
                  snapshot_dir=str(tmp_path))
    actor = create_supernet_actor("kill-test", 0, kwargs, num_cpus=1, max_restarts=2)
    assert ray.get(actor.info.remote())["version"] == 0
    call = actor.train.remote("uniform", until=400)
    deadline = time.time() + 60
    while not (tmp_path / "snapshot.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    ray.kill(actor, no_restart=False)
    snapped = torch.load(tmp_path / "snapshot.pt", weights_only=True)["version"]
    assert snapped >= 10
    out = ray.get(call, timeout=120)  # retried on the restarted actor
    info = ray.get(actor.info.remote())
    assert info["restored_from"] == str(tmp_path / "snapshot.pt")
    assert out["version"] == info["version"] == 400
    assert out["steps"] <= 400 - snapped  # it resumed past the snapshot, not from scratch
    ray.kill(actor, no_restart=True)


GOOD = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
# bad input of every command, one line and exit 2: tests/test_bad_input.py (in process, and cold processes)


def test_resume_of_a_non_run_and_an_existing_run_dir_are_refused(tmp_path, capsys, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("ray.init was called for a refused run directory"))
    (tmp_path / "notarun").mkdir()
    assert main(["search", "--resume", str(tmp_path / "notarun")]) == 2
    assert "not a raynas run directory" in capsys.readouterr().err
    existing = tmp_path / "taken"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    assert main(["search", "--storage", str(tmp_path), "--name", "taken"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in existing.iterdir()] == ["keep.txt"] and (existing / "keep.txt").read_text() == "mine"


def test_cli_version_and_space_info(capsys):
    assert main(["--version"]) == 0 and capsys.readouterr().out.startswith("raynas ")
    assert main(["space", "nb201", "--arch", GOOD]) == 0 and "1,288,506" in capsys.readouterr().out
    assert main(["space", "nb201", "--info"]) == 0
    out = capsys.readouterr().out
    assert "15,625" in out and "6,466" in out


def test_same_seed_same_search_on_cpu(ray_session, rsps_run, tmp_path):
    again = search("rsps", dataset="digits", overrides=TINY, storage=tmp_path, name="rsps-again", seed=0, verbose=0)
    first = pd.read_parquet(rsps_run / "candidates.parquet").sort_values("arch")
    second = pd.read_parquet(again / "candidates.parquet").sort_values("arch")
    assert list(first["arch"]) == list(second["arch"])
    assert list(first["valid_acc"]) == list(second["valid_acc"])
    one, two = (pd.read_parquet(r / "summary.parquet").iloc[0] for r in (rsps_run, again))
    assert one["final_arch"] == two["final_arch"]
    assert one["standalone_test_acc"] == two["standalone_test_acc"]


def test_a_diverging_supernet_fails_the_run_and_leaves_no_process_state_changed(ray_session, tmp_path, capsys):
    import logging

    env, levels = dict(os.environ), {n: logging.getLogger(n).level for n in ("ray.tune", "ray")}
    code = main(["search", "--storage", str(tmp_path), "--name", "nan", "-q",
                 "--set", "supernet.lr=1e30", "--set", "supernet.epochs=3",
                 "--set", "supernet.C=4", "--set", "supernet.N=1"])
    assert code == 1
    err = capsys.readouterr().err
    assert "failed" in err and "diverged" in err and "lower supernet.lr" in err
    summary = pd.read_parquet(tmp_path / "nan" / "summary.parquet").iloc[0]
    assert summary["status"] == "failed" and summary["final_arch"] is None
    assert json.loads((tmp_path / "nan" / "manifest.json").read_text())["status"] == "failed"
    assert dict(os.environ) == env  # the library changed no environment variable
    assert {n: logging.getLogger(n).level for n in levels} == levels
