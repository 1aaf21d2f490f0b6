"""Keep a run resumable even when the driver dies while Tune writes its state.

Tune writes its experiment state (``experiment_state-*``, ``search_gen_state-*``,
``searcher-state-*``) in a staging folder, then a background thread copies the files one by one
into the run directory. A driver killed (SIGKILL, the OOM killer) in the middle of that copy
leaves the run directory with a truncated file (``Tuner.restore`` then silently restarts the
experiment from scratch: ``EOFError`` on Ray 2.60) or, worse, with files from two different
moments that all load: the searcher then waits for a trial that Tune's trial list never had,
and the resumed run hangs. raynas therefore keeps its own copy of the last *complete* set of
state files, taken from the staging folder after Tune wrote it and before Tune copies it (see
:class:`StateBackup`), and switched atomically: never older than the run directory's set.
Before a resume, the run directory's set is replaced by that copy whenever the two differ.

``tuner.pkl`` is not part of the set: Tune writes it once, straight into the run directory,
before the experiment starts; a repair never touches it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from ray import cloudpickle
from ray.tune import Callback

STATE_PATTERNS = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl")
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


def _same(one: Path, other: Path) -> bool:
    return one.stat().st_size == other.stat().st_size and one.read_bytes() == other.read_bytes()


def repair(run_dir: str | os.PathLike) -> list[str]:
    """Before a resume: unless the run's state files are exactly raynas's last complete copy,
    put that copy in their place (a file cut short, or files of two moments, both happen when
    the driver dies during Tune's copy). Returns the names of the files restored (empty:
    nothing to do, or no copy to restore from)."""
    run_dir = Path(run_dir)
    pointer = run_dir / BACKUP / "current"
    if not pointer.exists():
        return []
    source = run_dir / BACKUP / pointer.read_text().strip()
    saved = sorted(source.iterdir()) if source.is_dir() else []
    if not saved:
        return []
    files = state_files(run_dir)
    if [p.name for p in files] == [p.name for p in saved] and all(_same(p, source / p.name) for p in files):
        return []
    for path in files:
        path.unlink()
    for path in saved:
        shutil.copy2(path, run_dir / path.name)
    return [path.name for path in saved]


class StateBackup(Callback):
    """Backs up the run's Tune state from Tune's staging folder each time Tune writes it.

    Tune asks its callbacks for their state (:meth:`get_state`) right after writing the state
    files to the staging folder and right before it starts copying them to the run directory:
    the one moment the staging set is complete and not yet copied. The backup is taken there, so
    it is never older than what reached the run directory. (The callback itself keeps no state
    for Tune: ``get_state`` returns ``None``.)
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = str(run_dir)
        self._trials: list | None = None
        self._staging: Path | None = None

    def on_step_begin(self, iteration, trials, **info) -> None:
        # Tune's own trial list: trials added later in this step (before its state write) show in it
        self._trials = trials

    def get_state(self) -> None:
        if self._staging is None and self._trials:
            self._staging = _staging_dir(self._trials)
        if self._staging is not None:
            backup(self.run_dir, self._staging)
        return None


def _staging_dir(trials) -> Path | None:
    for trial in trials:
        path = getattr(getattr(trial, "storage", None), "experiment_driver_staging_path", None)
        if path and Path(path).is_dir():
            return Path(path)
    return None
