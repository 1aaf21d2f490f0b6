"""Keep a run resumable even when the driver dies while Tune writes its state.

Tune writes its experiment state in a staging folder and then copies the files into the run
directory; a driver killed (SIGKILL, the OOM killer) in the middle of that copy leaves a
truncated file there, and ``Tuner.restore`` then silently restarts the experiment from scratch
(seen on Ray 2.60: ``EOFError`` loading ``search_gen_state-*.json``). raynas therefore keeps its
own copy of the last *complete* set of state files, switched atomically, and puts it back before
a resume when any file in the run directory does not load. The copy is taken from Tune's staging
folder between two controller steps: the controller writes that folder synchronously (a
background thread uploads it), so the set copied is always one consistent moment.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from ray import cloudpickle
from ray.tune import Callback

STATE_PATTERNS = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl", "tuner.pkl")
BACKUP = ".raynas-state"


def _loads(path: Path) -> bool:
    try:
        if path.name.startswith("experiment_state-"):
            json.loads(path.read_text())
        else:
            with open(path, "rb") as f:
                cloudpickle.load(f)
        return True
    except Exception:  # truncated or empty: exactly what this module guards against
        return False


def state_files(run_dir: Path) -> list[Path]:
    return sorted(p for pattern in STATE_PATTERNS for p in run_dir.glob(pattern))


def backup(run_dir: str | os.PathLike, source: str | os.PathLike | None = None) -> bool:
    """Copy the state files of ``source`` (default: the run directory) into a new backup folder
    of the run and switch ``current`` to it, only if every file loads. Returns whether it did."""
    run_dir = Path(run_dir)
    files = state_files(Path(source) if source else run_dir)
    if not files or not all(_loads(p) for p in files):
        return False
    root = run_dir / BACKUP
    root.mkdir(exist_ok=True)
    target = root / f"state-{time.time_ns()}"
    target.mkdir()
    for path in files:
        shutil.copy2(path, target / path.name)
    pointer = root / "current"
    previous = pointer.read_text().strip() if pointer.exists() else None
    tmp = root / f".current.{os.getpid()}.tmp"
    tmp.write_text(target.name)
    os.replace(tmp, pointer)  # the switch: a reader sees the old set or the new one, never a mix
    if previous and (root / previous).is_dir():
        shutil.rmtree(root / previous, ignore_errors=True)
    return True


def repair(run_dir: str | os.PathLike) -> list[str]:
    """Before a resume: if any state file of the run does not load, put the last complete
    backup set in place. Returns the names of the files restored (empty: nothing to do)."""
    run_dir = Path(run_dir)
    files = state_files(run_dir)
    if files and all(_loads(p) for p in files):
        return []
    pointer = run_dir / BACKUP / "current"
    if not pointer.exists():
        return []
    source = run_dir / BACKUP / pointer.read_text().strip()
    for path in files:
        path.unlink()
    restored = []
    for path in sorted(source.iterdir()):
        shutil.copy2(path, run_dir / path.name)
        restored.append(path.name)
    return restored


class StateBackup(Callback):
    """Backs up the run's Tune state (from Tune's staging folder) at most every ``every_s``
    seconds, between controller steps."""

    def __init__(self, run_dir: str | os.PathLike, every_s: float = 2.0) -> None:
        self.run_dir = str(run_dir)
        self.every_s = every_s
        self._last = 0.0
        self._seen: tuple = ()

    def on_step_end(self, iteration, trials, **info) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        staging = _staging_dir(trials)
        if staging is None:
            return
        stamp = tuple((p.name, p.stat().st_mtime_ns) for p in state_files(staging))
        if stamp != self._seen and backup(self.run_dir, staging):
            self._seen = stamp


def _staging_dir(trials) -> Path | None:
    for trial in trials:
        path = getattr(getattr(trial, "storage", None), "experiment_driver_staging_path", None)
        if path and Path(path).is_dir():
            return Path(path)
    return None
