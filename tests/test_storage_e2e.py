"""A run directory in object storage, end to end: a few-shot search whose ``--storage`` is an
``s3://`` bucket on a real S3-protocol server (moto's, on localhost), its driver SIGKILLed while
the sub-supernets train and the run resumed from the bucket alone, ends with the candidates of
the same search run uninterrupted on a local disk (the session's ``few_shot_run`` of
tests/conftest.py); the tables are read back from the bucket, and nothing of the run is written
to a local folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from raynas.results import read_parquet
from raynas.rowlog import read_records
from raynas.storage import Location
from tests.conftest import FEW, make_bucket

RAYNAS = [sys.executable, "-m", "raynas.cli"]

#: the session's reference search (tests/conftest.py FEW, seed 0) as `raynas search` arguments
SETTINGS = [
    *(a for section, values in FEW.items() for key, value in values.items() if key != "few_shot"
      for a in ("--set", f"{section}.{key}={value!r}")),
    "--few-shot", FEW["searcher"]["few_shot"], "--num-cpus", "4",
]
COLUMNS = ["arch", "supernet", "supernet_version", "valid_acc", "valid_loss", "batches", "samples"]


def _env(extra: dict) -> dict:
    return dict(os.environ, RAY_USAGE_STATS_ENABLED="0", **extra)


def _comparable(candidates: pd.DataFrame) -> pd.DataFrame:
    return candidates[COLUMNS].sort_values(["supernet", "arch"]).reset_index(drop=True)


def _sub_supernet_rows(run_dir: Location) -> int:
    try:
        return sum(1 for r in read_records(run_dir) if r.get("kind") == "train" and r.get("supernet", 0) > 0)
    except OSError:
        return 0


@pytest.fixture(scope="module")
def reference(few_shot_run):
    """The same search, uninterrupted, on a local disk (one for the session: tests/conftest.py)."""
    assert few_shot_run.status == "complete", few_shot_run.message
    return few_shot_run.run_dir


@pytest.mark.slow
def test_few_shot_search_in_s3_survives_sigkill_and_matches_a_local_run(s3_server, reference, tmp_path):
    bucket = make_bucket("raynas-e2e")
    run_dir = Location(f"{bucket}/runs/fs")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    args = RAYNAS + ["search", "--method", "rsps", "--storage", f"{bucket}/runs", "--name", "fs", "-q", *SETTINGS]
    driver = subprocess.Popen(args, env=_env(s3_server), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    deadline = time.time() + 400
    while time.time() < deadline and driver.poll() is None and _sub_supernet_rows(run_dir) < 1:
        time.sleep(0.2)
    assert driver.poll() is None, f"the search ended before the sub-supernets trained:\n{driver.stdout.read()}"
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and its embedded Ray: nothing is left running
    driver.wait()

    # the bucket alone holds the run: the status reads it, the resume continues it
    status = subprocess.run(RAYNAS + ["status", str(run_dir)], env=_env(s3_server), cwd=cwd, capture_output=True,
                            text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert "died" in status.stdout
    resumed = subprocess.run(RAYNAS + ["search", "--resume", str(run_dir), "-q", "--num-cpus", "4"], env=_env(s3_server),
                             cwd=cwd, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr

    # the tables, read back from the bucket, are the uninterrupted local run's
    candidates = read_parquet(run_dir / "candidates.parquet")
    pd.testing.assert_frame_equal(_comparable(candidates), _comparable(pd.read_parquet(reference / "candidates.parquet")))
    summary = read_parquet(run_dir / "summary.parquet").iloc[0]
    local = pd.read_parquet(reference / "summary.parquet").iloc[0]
    assert summary["status"] == "complete" and summary["sessions"] == 2
    assert summary["final_arch"] == local["final_arch"]
    assert summary["supernet_steps"] == local["supernet_steps"]
    # every supernet's snapshots and the standalone checkpoints are in the bucket, and no file of
    # the run went to a local folder (a URI once became a folder named "s3:")
    names = {child.name for child in run_dir.iterdir()}
    assert {"raynas.json", "searcher-state.pkl", "rows", "supernets", "checkpoints", "tune"} <= names
    assert {c.name for c in (run_dir / "supernets").iterdir()} == {str(k) for k in range(6)}
    assert list(cwd.iterdir()) == []


def _cli(argv, capsys) -> tuple[int, list[str]]:
    from raynas.cli import main

    code = main(argv)
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip()]


def test_storage_uris_that_cannot_hold_a_run_are_one_line_usage_errors(s3_server, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bucket = make_bucket("raynas-bad-input")
    started = time.monotonic()
    cases = {
        ("search", "--storage", "nosuch://bucket/runs"): "unknown storage scheme nosuch://",
        ("search", "--storage", "s3:///runs"): "no bucket",
        ("search", "--storage", "s3://raynas-no-such-bucket/runs"): "--storage s3://raynas-no-such-bucket/runs: cannot",
        ("search", "--resume", f"{bucket}/runs/none"): "not a raynas run directory",
        ("search", "--dataset", "fashion-mnist", "--data-dir", f"{bucket}/data/none"): f"{bucket}/data/none",
        ("search", "--data-dir", "nosuch://bucket/data"): "--data-dir nosuch://bucket/data: unknown storage scheme",
        ("status", f"{bucket}/runs/none"): "not a raynas run directory",
        ("compare", f"{bucket}/runs/none"): "no summary.parquet",
    }
    for argv, expected in cases.items():
        code, lines = _cli(list(argv), capsys)
        assert code == 2 and len(lines) == 1 and expected in lines[0], (argv, lines)
    assert time.monotonic() - started < 20, "usage errors must come before any expensive start-up"
    # nothing was left behind: no object in the bucket, no local folder named after a URI
    assert Location(bucket).iterdir() == []
    assert list(tmp_path.iterdir()) == []
