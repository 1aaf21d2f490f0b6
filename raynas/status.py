"""Where a run stands, read from its files alone (``raynas status RUN_DIR``; no Ray is started).

A run's status is ``complete``, ``interrupted`` or ``failed`` once a session ended; a run whose
last session has no end record is ``running`` (its driver is alive on this host) or ``died`` (it
was killed: ``raynas search --resume`` continues it exactly).
"""

from __future__ import annotations

import os
import platform

from raynas.errors import UsageError
from raynas.results import is_run_dir, read_json
from raynas.rowlog import load_searcher_state, read_rows, sessions
from raynas.storage import Location


def _alive(pid: int | None, host: str | None) -> bool:
    if not pid or host != platform.node():
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, PermissionError, ValueError):
        return False
    return True


def _last_session_record(run_dir: Location) -> dict | None:
    from raynas.rowlog import read_records

    last = None
    for record in read_records(run_dir):
        if record.get("event") == "session":
            last = record
    return last


def run_status(run_dir: "str | os.PathLike | Location") -> dict:
    """The run's status, phase, progress, sessions and what a resume would do, as plain values
    (``run_dir``: a local path or a URI)."""
    given = run_dir
    try:
        run_dir = Location(run_dir)
        found = is_run_dir(run_dir)
    except (ValueError, OSError) as err:
        raise UsageError(f"{given}: cannot read it ({str(err).splitlines()[0]}); expected a raynas run directory") from None
    if not found:
        raise UsageError(f"{run_dir}: not a raynas run directory (no raynas.json); expected a RUN_DIR that `raynas search` made")
    config = read_json(run_dir / "raynas.json")
    past = sessions(run_dir)
    saved = load_searcher_state(run_dir)
    out: dict = {"run_dir": str(run_dir), "run_id": config.get("run_id"), "method": config.get("method"),
                 "dataset": config.get("dataset"), "seed": config.get("seed"), "sessions": len(past),
                 "wall_s": sum(s["wall_s"] for s in past), "rows": len(read_rows(run_dir))}
    if not past or past[-1]["status"] is None:
        record = _last_session_record(run_dir) or {}
        out["status"] = "running" if _alive(record.get("pid"), record.get("host")) else ("died" if past else "new")
    else:
        out["status"] = past[-1]["status"]
    if saved is None:
        out.update(phase="not started", progress="no unit has started", resume="start it again (nothing to continue)")
        return out
    from raynas.searchers import get_searcher_class

    searcher = get_searcher_class(config["method"])(**saved["kwargs"])
    searcher.set_state(saved["state"])
    state = saved["state"]
    # what a resume re-issues: the units that were running, those queued for a retry, and the
    # queued re-issues of short cohorts
    live = [*state.get("live", {}).values(), *state.get("retry", []), *_units(state.get("extra", []))]
    outcome = searcher.outcome()
    out.update(phase=outcome.get("phase"), progress=outcome.get("progress"), failure=outcome.get("failure"),
               final_arch=outcome.get("final_arch"), live_units=[u.get("key") for u in live])
    if out["status"] == "complete":
        out["resume"] = "nothing: the run is complete"
    elif outcome.get("failure"):
        out["resume"] = f"nothing: the search failed ({outcome['failure']})"
    else:
        kinds = sorted({u.get("kind", "?") for u in live})
        redo = f"re-issue {len(live)} unit(s) that were running ({', '.join(kinds)}), then " if live else ""
        out["resume"] = f"{redo}continue phase {outcome.get('phase')} ({outcome.get('progress')})"
    return out


def _units(extra) -> list[dict]:
    if isinstance(extra, dict):
        extra = list(extra.values())
    return [u for u in extra if isinstance(u, dict)]


def format_status(status: dict) -> str:
    lines = [
        f"run       {status['run_id']}  ({status['method']} on {status['dataset']}, seed {status['seed']})",
        f"status    {status['status']}" + (f": {status['failure']}" if status.get("failure") else ""),
        f"phase     {status.get('phase')}",
        f"progress  {status.get('progress')}",
        f"sessions  {status['sessions']} ({status['wall_s']:.0f} s wall), {status['rows']} unit rows logged",
    ]
    if status.get("final_arch"):
        lines.append(f"final     {status['final_arch']}")
    lines.append(f"resume    {status.get('resume')}")
    return "\n".join(lines)
