"""raynas's own record of a run: the row log and the searcher's durable state.

A run directory holds, beside Tune's files (which are Tune's: nothing of raynas's reads them):

- ``rows.jsonl``: every row every work unit reported, appended by the driver the moment Tune
  hands it over (one JSON object a line, flushed per row), plus one ``{"event": "session"}`` line
  when a session (the first start or a resume) begins and one ``{"event": "end"}`` line when it
  ends. Each row carries its unit's stable ``key`` and its ``position``; a unit re-run after a
  crash reports the same (key, position) again, and the last one wins. The tables are built from
  this log alone.
- ``searcher-state.pkl``: the searcher's ``get_state()`` and constructor arguments, written
  atomically after every unit start and completion (after the searcher saw it, so the log always
  holds every row the state has seen). It is read back with a restricted unpickler that builds
  only plain Python and numpy values: loading a run directory runs no code of its own.

Reading needs neither Ray nor torch.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import time
from pathlib import Path
from typing import Any, Iterator

ROWS = "rows.jsonl"
SEARCHER_STATE = "searcher-state.pkl"
#: bump when the layout of searcher-state.pkl changes
STATE_FORMAT = 1

#: the keys Tune adds to every reported row; the log keeps what the unit itself reported
TUNE_KEYS = frozenset({
    "training_iteration", "time_total_s", "episodes_total", "timesteps_total", "node_ip", "hostname", "pid",
    "time_this_iter_s", "timestamp", "date", "time_since_restore", "timesteps_since_restore",
    "iterations_since_restore", "config", "checkpoint_dir_name", "done", "trial_id", "experiment_tag",
    "should_checkpoint", "__duplicate__", "experiment_id", "episodes_this_iter", "timesteps_this_iter",
})


def _plain(value: Any) -> Any:
    """JSON for a row value: non-finite floats as strings JSON can hold, numpy scalars as numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # 'nan', 'inf', '-inf': read back by _revive
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return _plain(value.item())
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _revive(row: dict) -> dict:
    return {k: (_NON_FINITE[v] if isinstance(v, str) and v in _NON_FINITE else v) for k, v in row.items()}


class RowLog:
    """Appends rows to a run's ``rows.jsonl`` (opened lazily; pickles without its file handle)."""

    def __init__(self, run_dir: str | os.PathLike, session: int) -> None:
        self.path = Path(run_dir) / ROWS
        self.session = int(session)
        self.began = time.time()
        self._file = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None}

    def _write(self, record: dict) -> None:
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(json.dumps(_plain(record), sort_keys=True, default=str) + "\n")
        self._file.flush()  # a SIGKILL of the driver loses no row it had been handed

    def seconds(self) -> float:
        return time.time() - self.began

    def begin(self, **facts: Any) -> None:
        self._write({"event": "session", "session": self.session, "started": self.began, **facts})

    def row(self, row: dict, *, trial: str | None = None) -> None:
        record = {k: v for k, v in row.items() if k not in TUNE_KEYS}
        self._write({**record, "session": self.session, "t": round(self.seconds(), 3), "trial": trial})

    def end(self, status: str) -> None:
        self._write({"event": "end", "session": self.session, "t": round(self.seconds(), 3), "status": status})
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_records(run_dir: str | os.PathLike) -> Iterator[dict]:
    """Every record of the log in order (a last line cut short by a crash is skipped)."""
    path = Path(run_dir) / ROWS
    if not path.is_file():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                yield _revive(json.loads(line))
            except json.JSONDecodeError:
                continue  # only the last line can be partial: the driver died while writing it


def read_rows(run_dir: str | os.PathLike) -> list[dict]:
    """The unit rows of the log, one per (key, position): a re-run unit's later row wins, in the
    place of the first."""
    latest: dict[tuple, dict] = {}
    for record in read_records(run_dir):
        if "event" in record:
            continue
        latest[(record.get("key"), record.get("position", 0))] = record
    return list(latest.values())


def sessions(run_dir: str | os.PathLike) -> list[dict]:
    """One entry per session: its number, start, wall seconds (to its end record, or to its last
    row when the driver died) and how it ended (``None``: it died)."""
    out: dict[int, dict] = {}
    for record in read_records(run_dir):
        n = record.get("session")
        if n is None:
            continue
        entry = out.setdefault(n, {"session": n, "started": None, "wall_s": 0.0, "status": None})
        if record.get("event") == "session":
            entry["started"] = record.get("started")
        if "t" in record:
            entry["wall_s"] = max(entry["wall_s"], float(record["t"]))
        if record.get("event") == "end":
            entry["status"] = record.get("status")
    return [out[n] for n in sorted(out)]


# --- the searcher's durable state ----------------------------------------------------------------
def save_searcher_state(run_dir: str | os.PathLike, searcher, kwargs: dict) -> None:
    """Write the searcher's state and constructor arguments atomically."""
    path = Path(run_dir) / SEARCHER_STATE
    payload = {"format": STATE_FORMAT, "class": f"{type(searcher).__module__}:{type(searcher).__qualname__}",
               "kwargs": kwargs, "state": searcher.get_state()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)


#: what a searcher state may hold: plain values and numpy arrays, nothing that runs code
_ALLOWED = {
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"), ("builtins", "complex"),
    ("collections", "OrderedDict"), ("collections", "defaultdict"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),
}


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not a plain value")


def load_searcher_state(run_dir: str | os.PathLike) -> dict | None:
    """The saved ``{"class", "kwargs", "state"}`` (``None`` if the run never saved one). A file
    that holds anything but plain values raises ``ValueError``."""
    path = Path(run_dir) / SEARCHER_STATE
    if not path.is_file():
        return None
    try:
        payload = _PlainUnpickler(io.BytesIO(path.read_bytes())).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as err:
        raise ValueError(f"{path}: not a raynas searcher state ({err})") from None
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        raise ValueError(f"{path}: searcher state format {payload.get('format') if isinstance(payload, dict) else '?'}; "
                         f"this raynas reads format {STATE_FORMAT}")
    return payload
