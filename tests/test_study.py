"""raynas study: a real grid of searches on one embedded Ray, Ctrl-C'd once a search finished and
resumed to completion; bad input refused before Ray starts."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from raynas.cli import main
from raynas.rowlog import sessions

#: the smallest searches that still train, score and train a final pick; SETN's longer supernet
#: keeps it running after RSPS finished, so the study can be interrupted between the two
TINY = ["--set", "supernet.epochs=1", "--set", "searcher.num_candidates=4", "--set", "searcher.cohort_size=4",
        "--set", "searcher.top_k=1", "--set", "searcher.standalone={'C': 4, 'N': 1, 'epochs': 1, 'batch_size': 128}",
        "--set", "setn:supernet.epochs=20"]


def _record(study_dir: Path) -> dict:
    try:
        return json.loads((study_dir / "study.json").read_text())
    except (OSError, ValueError):  # not written yet, or being replaced
        return {}


@pytest.fixture(scope="module")
def interrupted_then_resumed(tmp_path_factory):
    """A study of rsps and setn (seed 0) started as a real process, SIGINT'ed once one search is
    complete, then resumed in-process: (study_dir, the record after the interrupt, exit codes)."""
    root = tmp_path_factory.mktemp("study")
    study_dir = root / "studies" / "grid"
    command = [sys.executable, "-m", "raynas.cli", "study", "--methods", "rsps", "setn", "--seeds", "0",
               "--num-cpus", "2", "--storage", str(root / "studies"), "--name", "grid", *TINY]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    with open(root / "study.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and process.poll() is None:
                if any(s["status"] == "complete" for s in _record(study_dir).get("searches", [])):
                    break
                time.sleep(0.5)
            process.send_signal(signal.SIGINT)  # Ctrl-C: every driver is stopped, gently
            first_rc = process.wait(timeout=300)
        finally:
            if process.poll() is None:
                process.kill()
    after_interrupt = _record(study_dir)
    resumed_rc = main(["study", "--resume", str(study_dir), "--num-cpus", "2", "-q"])
    return study_dir, after_interrupt, first_rc, resumed_rc, (root / "study.log").read_text()


def test_a_study_runs_its_searches_at_once_and_resumes_to_completion(interrupted_then_resumed):
    study_dir, after_interrupt, first_rc, resumed_rc, log = interrupted_then_resumed
    by_method = {s["method"]: s for s in after_interrupt["searches"]}
    assert first_rc == 130, log[-3000:]
    assert after_interrupt["status"] == "interrupted"
    assert by_method["rsps"]["status"] == "complete" and by_method["setn"]["status"] == "interrupted", log[-3000:]
    assert "setn-s0 interrupted" in log and "--resume" in log

    assert resumed_rc == 0
    record = _record(study_dir)
    assert record["status"] == "complete" and len(record["sessions"]) == 2
    done = {s["method"]: s for s in record["searches"]}
    rsps_dir, setn_dir = (study_dir / "runs" / done[m]["name"] for m in ("rsps", "setn"))
    # the finished search was kept as it was; the other continued its run in a second session
    assert done["rsps"]["attempts"] == 1 and [s["status"] for s in sessions(rsps_dir)] == ["complete"]
    assert done["setn"]["attempts"] == 2
    assert [s["status"] for s in sessions(setn_dir)] == ["interrupted", "complete"]
    # concurrently: the two searches' first sessions overlap in time
    (a0, a1), (b0, b1) = done["rsps"]["spans"][0], done["setn"]["spans"][0]
    assert a0 < b1 and b0 < a1, (done["rsps"]["spans"], done["setn"]["spans"])
    # each shared the 2 CPUs: half of its share for the actor, half for its trials
    assert done["rsps"]["resources"]["actor_cpus"] == pytest.approx(0.5)

    table = pd.read_parquet(study_dir / "compare.parquet")
    assert sorted(table["method"]) == ["rsps", "setn"]
    assert table["runs"].tolist() == [1, 1] and table["unfinished"].tolist() == [0, 0]
    assert table["test_acc_mean"].between(0, 1).all()
    assert "| rsps | digits | 1 |" in (study_dir / "compare.md").read_text()
    for name in ("rsps", "setn"):
        assert (study_dir / "logs" / f"{done[name]['name']}.log").read_text().strip()
    if record.get("plots_skipped") is None:  # raynas.plots drew them: real PNG files
        assert (study_dir / "plots" / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_complete_study_and_an_existing_name_are_refused(interrupted_then_resumed, capsys):
    study_dir = interrupted_then_resumed[0]
    assert main(["study", "--resume", str(study_dir)]) == 2
    assert "the study is complete" in capsys.readouterr().err
    before = sorted(p.name for p in study_dir.iterdir())
    assert main(["study", "--methods", "rsps", "--storage", str(study_dir.parent), "--name", study_dir.name]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in study_dir.iterdir()) == before


@pytest.mark.parametrize("args, says", [
    (["--methods", "rsps", "nope"], "unknown method 'nope'; expected one of: evnas, nao"),
    (["--methods", "rsps", "--seeds", "-1"], "--seeds: '-1': expected an int >= 0"),
    (["--methods", "rsps", "--seeds", "0", "0"], "--seeds: 0 given twice"),
    (["--methods", "rsps", "evnas", "--set", "searcher.num_candidates=4"], "evnas (seed 0): unknown setting searcher.num_candidates"),
    (["--methods", "rsps", "--set", "setn:supernet.epochs=1"], "method 'setn' is not in the study"),
    (["--methods", "rsps", "--set", "supernet.epochs"], "--set 'supernet.epochs'; expected SECTION.KEY=VALUE"),
    (["--methods", "rsps", "--storage", "nope://bucket"], "unknown storage scheme nope://"),
    (["--methods", "rsps", "--resume", "x"], "drop --methods"),
    ([], "--methods: expected one or more of"),
])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(tmp_path, monkeypatch, capsys, args, says):
    monkeypatch.chdir(tmp_path)
    storage = [] if any(a.startswith("--storage") for a in args) else ["--storage", str(tmp_path / "studies")]
    assert main(["study", *args, *storage]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []
