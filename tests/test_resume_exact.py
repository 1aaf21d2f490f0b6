"""Exact resume at every kill point: a search whose driver is killed (SIGKILL, or Ctrl-C) again and
again, each time resumed, ends with the very candidates, scores and final arch of the same search
run without interruption: zero rows lost or duplicated, costs counting the work before each kill.

One run per method is killed at successive moments (right after a train unit ended, mid-scoring,
mid-standalone...), each read off the run's own row log as it grows; the rsps run is also copied
and moved between kills, and must resume in its new place without writing into the old one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from raynas.driver import resume, search
from raynas.errors import UsageError
from raynas.results import compare_table, load_summaries
from raynas.status import run_status
from raynas.rowlog import read_records, read_rows
from tests.multinode import _session_pids

RAYNAS = [sys.executable, "-m", "raynas.cli"]
ENV = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")

STANDALONE = {"C": 4, "N": 1, "epochs": 3, "batch_size": 128}
#: per method: the settings (48 supernet steps on digits), and the kill moments, each a predicate
#: over the unit rows the session being killed has logged
SETTINGS = {
    "rsps": {"supernet": {"epochs": 3, "valid_batch_size": 64},
             "searcher": {"chunk_steps": 16, "num_candidates": 8, "cohort_size": 3, "top_k": 2,
                          "standalone": STANDALONE}},
    "setn": {"supernet": {"epochs": 3, "valid_batch_size": 64},
             "searcher": {"chunk_steps": 16, "num_candidates": 8, "cohort_size": 3, "top_k": 2,
                          "standalone": STANDALONE}},
    "evnas": {"supernet": {"epochs": 3, "valid_batch_size": 256},
              "searcher": {"population_size": 4, "generations": 3, "tournament_size": 2,
                           "standalone": STANDALONE}},
}


def _count(rows, kind):
    return sum(1 for r in rows if r.get("kind") == kind)


def after_first_train(rows):
    return _count(rows, "train") >= 1


def after_second_train(rows):
    return _count(rows, "train") >= 2


def mid_scoring(rows):
    return _count(rows, "score") >= 4


def mid_standalone(rows):
    return _count(rows, "standalone") >= 2


KILLS = {
    "rsps": [after_first_train, mid_scoring, mid_standalone],
    "setn": [after_second_train, mid_standalone],
    "evnas": [after_first_train, mid_scoring, after_second_train],
}


def _set_args(settings: dict) -> list[str]:
    out = []
    for section, values in settings.items():
        for key, value in values.items():
            out += ["--set", f"{section}.{key}={value!r}"]
    return out


def _unit_rows(run_dir: Path) -> list[dict]:
    return [r for r in read_records(run_dir) if "event" not in r]


def _drive(args: list[str], run_dir: Path, kill_when, sig=signal.SIGKILL, timeout=300) -> subprocess.Popen:
    """Start a driver; stop it with ``sig`` the moment ``kill_when(rows)`` holds for the rows this
    driver has logged (the earlier sessions' rows are not its own)."""
    before = len(_unit_rows(run_dir)) if run_dir.is_dir() else 0
    driver = subprocess.Popen(RAYNAS + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
                              start_new_session=True)
    deadline = time.time() + timeout
    while time.time() < deadline and driver.poll() is None:
        if run_dir.is_dir() and kill_when(_unit_rows(run_dir)[before:]):
            break
        time.sleep(0.02)
    assert driver.poll() is None, f"the search ended before the kill point {kill_when.__name__}:\n{driver.stdout.read()}"
    os.kill(driver.pid, sig)
    try:
        driver.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        pytest.fail(f"the driver did not stop within 120 s of {sig!r}")
    _wait_session_gone(driver.pid)  # the embedded Ray shares the driver's fate
    return driver


#: Ray's per-node agents: when their raylet and GCS die with the driver they wait out the GCS
#: reconnect timeout (60 s) before exiting; they run no work and write nothing of the run
NODE_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read().replace("\0", " ")
    except OSError:
        return ""  # gone


def _wait_session_gone(sid: int, timeout: float = 60) -> None:
    """Until the driver's embedded Ray is gone: its workers (which could still write into the run)
    must follow the driver within ``timeout``; the node agents left waiting for the GCS are killed."""
    deadline = time.monotonic() + timeout
    while True:
        lines = {pid: _cmdline(pid) for pid in _session_pids(sid)}
        working = {pid: line for pid, line in lines.items() if line and not line.startswith(NODE_AGENTS)}
        if not working or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for pid in _session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not working, f"processes of the killed driver's Ray still alive after {timeout} s: " + \
        "; ".join(line[:80] for line in working.values())  # read before the kill: a dead process has none


def _files(run_dir: Path) -> dict:
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in run_dir.rglob("*") if p.is_file()}


def _comparable(run_dir: Path) -> tuple[pd.DataFrame, pd.Series]:
    candidates = pd.read_parquet(run_dir / "candidates.parquet")
    columns = ["arch", "supernet", "supernet_version", "valid_acc", "valid_loss", "batches", "samples"]
    table = candidates[columns].sort_values(["supernet_version", "supernet", "arch"]).reset_index(drop=True)
    return table, pd.read_parquet(run_dir / "summary.parquet").iloc[0]


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(KILLS))
def test_killed_again_and_again_the_search_equals_the_uninterrupted_one(method, ray_session, tmp_path):
    settings = SETTINGS[method]
    reference = search(method, dataset="digits", overrides=settings, storage=tmp_path / "ref", name=f"ref-{method}",
                       seed=3, verbose=0)
    assert reference.status == "complete"
    expected, expected_summary = _comparable(reference.run_dir)

    # run ids (actor names) unique in the test session's Ray, where the last session runs
    run_dir = tmp_path / "a" / f"run-{method}"
    start = ["search", "--method", method, "--seed", "3", "--storage", str(tmp_path / "a"), "--name", run_dir.name,
             "--num-cpus", "2", "-q", *_set_args(settings)]
    kills = KILLS[method]
    for i, kill_when in enumerate(kills):
        # evnas's second stop is a Ctrl-C: a clean stop, status interrupted, exit 130
        sig = signal.SIGINT if method == "evnas" and i == 1 else signal.SIGKILL
        args = start if i == 0 else ["search", "--resume", str(run_dir), "--num-cpus", "2", "-q"]
        driver = _drive(args, run_dir, kill_when, sig=sig)
        if sig == signal.SIGINT:
            assert driver.returncode == 130, driver.stdout.read()
            manifest = json.loads((run_dir / "manifest.json").read_text())
            assert manifest["status"] == "interrupted"
            assert pd.read_parquet(run_dir / "summary.parquet").iloc[0]["status"] == "interrupted"
            table = compare_table(load_summaries([run_dir]))  # listed as unfinished, never averaged in
            assert table.iloc[0]["runs"] == 0 and table.iloc[0]["unfinished"] == 1
            assert run_status(run_dir)["status"] == "interrupted"
        else:
            assert not (run_dir / "summary.parquet").exists() or \
                pd.read_parquet(run_dir / "summary.parquet").iloc[0]["status"] != "complete"
            assert run_status(run_dir)["status"] == "died"
        if method == "rsps" and i == 0:
            # a copy without its supernets' snapshots is refused, never retrained from zero
            broken = tmp_path / "broken" / run_dir.name
            shutil.copytree(run_dir, broken)
            shutil.rmtree(broken / "supernets")
            with pytest.raises(UsageError, match="snapshot.*supernets"):
                resume(broken, verbose=0)
            # a copy resumes in its own place; the original is never written again
            copy = tmp_path / "b" / run_dir.name
            shutil.copytree(run_dir, copy)
            before = _files(run_dir)
            original, run_dir = run_dir, copy
            start_args_dir = original
        elif method == "rsps" and i == 1:
            moved = tmp_path / "c" / run_dir.name
            moved.parent.mkdir()
            shutil.move(str(run_dir), moved)
            run_dir = moved

    # the last session runs to the end (in this process: the kills above needed drivers of their own)
    assert resume(run_dir, verbose=0).status == "complete"
    got, summary = _comparable(run_dir)
    pd.testing.assert_frame_equal(got, expected)
    rows = read_rows(run_dir)
    keys = [(r["key"], r.get("position", 0)) for r in rows]
    assert len(keys) == len(set(keys))
    assert summary["status"] == "complete" and summary["sessions"] == len(kills) + 1
    for column in ("final_arch", "standalone_test_acc", "standalone_valid_acc", "candidates", "supernet_steps"):
        assert summary[column] == expected_summary[column], column
    # costs include the work of every session, before each kill too
    sessions = [r for r in read_records(run_dir) if r.get("event") == "session"]
    assert len(sessions) == len(kills) + 1
    assert summary["train_s"] > 0 and summary["wall_s"] > 0
    last_session = max(r.get("t", 0.0) for r in read_records(run_dir) if r.get("session") == len(kills))
    assert summary["wall_s"] > last_session
    if method == "rsps":
        assert _files(start_args_dir) == before, "the original run directory was written after it was copied"
        assert not (tmp_path / "b" / run_dir.name).exists()  # it was moved on
        from raynas.cli import main

        assert main(["search", "--resume", str(run_dir)]) == 2  # a complete run: nothing to resume
