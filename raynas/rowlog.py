"""raynas's own record of a run: the row log and the searcher's durable state.

A run directory holds, beside Tune's files (which are Tune's: nothing of raynas's reads them):

- ``rows.jsonl``: every row every work unit reported, appended by the driver the moment Tune
  hands it over (one JSON object a line, flushed per row), plus one ``{"event": "session"}`` line
  when a session (the first start or a resume) begins and one ``{"event": "end"}`` line when it
  ends. Each row carries its unit's stable ``key`` and its ``position``; a unit re-run after a
  crash reports the same (key, position) again, and the last one wins. The tables are built from
  this log alone.
- In object storage (a run directory that is an ``s3://``... URI), where nothing can be appended
  to, the same lines go to numbered segments ``rows/s{session}-{n}.jsonl``: one written before
  every save of the searcher's state (so the state never knows a row the log lacks), every few
  seconds while rows come, and at the session's end. Readers take ``rows.jsonl`` and then the
  segments in order; a row not yet in a segment when the driver died is re-reported by the unit
  that is re-issued on resume, as a local log's last partial line would be.
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
from typing import Any, Iterator

from raynas.storage import Location

ROWS = "rows.jsonl"
#: the row log's segments in object storage
SEGMENTS = "rows"
#: in object storage, buffered rows are written out at least this often (seconds)
SEGMENT_EVERY_S = 5.0
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


#: a result holding several rows (a slice of a score cohort, a proxy unit's masks): the rows
#: under this key, each completed by the result's other fields
BATCH = "rows"


def unpack(result: dict) -> list[dict]:
    """The rows of one reported result: a batch (``{"rows": [...], **shared}``: one Tune report
    for a slice of candidates) gives one row per candidate, each with the shared fields; any
    other result is one row."""
    batch = result.get(BATCH)
    if not isinstance(batch, list):
        return [result]
    shared = {k: v for k, v in result.items() if k != BATCH}
    return [{**shared, **row} for row in batch]


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
    """Appends rows to a run's row log: ``rows.jsonl`` in a local run directory (opened lazily,
    flushed per row), numbered segments in object storage (see the module docstring). Pickles
    without its file handle or buffer."""

    def __init__(self, run_dir: "str | os.PathLike | Location", session: int, *, began: float | None = None) -> None:
        self.run_dir = Location(run_dir)
        self.session = int(session)
        # the session's start (epoch seconds): the command's own start when it says so, so that
        # the run's wall time counts its imports and Ray's start too
        self.began = time.time() if began is None else float(began)
        self._file = None
        self._buffer: list[str] = []
        self._segment = 0
        self._synced = time.monotonic()

    @property
    def path(self) -> Location:
        return self.run_dir / ROWS

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None, "_buffer": []}

    def _write(self, record: dict) -> None:
        line = json.dumps(_plain(record), sort_keys=True, default=str) + "\n"
        if self.run_dir.is_local:
            if self._file is None:
                self.run_dir.mkdir()
                self._file = open(self.path.local_path, "a", encoding="utf-8")
            self._file.write(line)
            self._file.flush()  # a SIGKILL of the driver loses no row it had been handed
            return
        self._buffer.append(line)
        if time.monotonic() - self._synced >= SEGMENT_EVERY_S:
            self.sync()

    def sync(self) -> None:
        """Make every row written so far durable (in object storage: write them as a segment)."""
        self._synced = time.monotonic()
        if not self._buffer:
            return
        self._segment += 1
        name = f"s{self.session:04d}-{self._segment:06d}.jsonl"
        (self.run_dir / SEGMENTS / name).write_text("".join(self._buffer))
        self._buffer = []

    def seconds(self) -> float:
        return time.time() - self.began

    def begin(self, **facts: Any) -> None:
        self._write({"event": "session", "session": self.session, "started": self.began, **facts})
        self.sync()

    def row(self, row: dict, *, trial: str | None = None) -> None:
        """Log one reported result: a batch is logged as its rows, one line per candidate."""
        t = round(self.seconds(), 3)
        for one in unpack(row):
            record = {k: v for k, v in one.items() if k not in TUNE_KEYS}
            self._write({**record, "session": self.session, "t": t, "trial": trial})

    def end(self, status: str) -> None:
        self._write({"event": "end", "session": self.session, "t": round(self.seconds(), 3), "status": status})
        self.close()

    def close(self) -> None:
        self.sync()
        if self._file is not None:
            self._file.close()
            self._file = None


def _lines(run_dir: Location) -> Iterator[str]:
    local = run_dir / ROWS
    if local.is_file():
        if local.is_local:
            with open(local.local_path, encoding="utf-8") as f:
                yield from f
        else:
            yield from local.read_text().splitlines()
    if not run_dir.is_local:
        for segment in (run_dir / SEGMENTS).iterdir():
            if segment.name.endswith(".jsonl"):
                yield from segment.read_text().splitlines()


def read_records(run_dir: "str | os.PathLike | Location") -> Iterator[dict]:
    """Every record of the log in order (a last line cut short by a crash is skipped)."""
    for line in _lines(Location(run_dir)):
        line = line.strip()
        if not line:
            continue
        try:
            yield _revive(json.loads(line))
        except json.JSONDecodeError:
            continue  # only the last line can be partial: the driver died while writing it


def read_rows(run_dir: "str | os.PathLike | Location") -> list[dict]:
    """The unit rows of the log, one per (key, position): a re-run unit's later row wins, in the
    place of the first."""
    latest: dict[tuple, dict] = {}
    for record in read_records(run_dir):
        if "event" in record:
            continue
        latest[(record.get("key"), record.get("position", 0))] = record
    return list(latest.values())


def sessions(run_dir: "str | os.PathLike | Location") -> list[dict]:
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
def save_searcher_state(run_dir: "str | os.PathLike | Location", searcher, kwargs: dict) -> None:
    """Write the searcher's state and constructor arguments atomically."""
    payload = {"format": STATE_FORMAT, "class": f"{type(searcher).__module__}:{type(searcher).__qualname__}",
               "kwargs": kwargs, "state": searcher.get_state()}
    (Location(run_dir) / SEARCHER_STATE).write_bytes(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))


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


def load_searcher_state(run_dir: "str | os.PathLike | Location") -> dict | None:
    """The saved ``{"class", "kwargs", "state"}`` (``None`` if the run never saved one). A file
    that holds anything but plain values raises ``ValueError``."""
    path = Location(run_dir) / SEARCHER_STATE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        payload = _PlainUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as err:
        raise ValueError(f"{path}: not a raynas searcher state ({err})") from None
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        raise ValueError(f"{path}: searcher state format {payload.get('format') if isinstance(payload, dict) else '?'}; "
                         f"this raynas reads format {STATE_FORMAT}")
    return payload
