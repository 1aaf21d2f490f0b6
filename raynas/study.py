"""Method studies: a grid of searches (methods x seeds) run at once on one Ray, as one resumable whole.

``run_study(["rsps", "setn"], [0, 1, 2], dataset="digits")`` (``raynas study``) checks every
search's settings (:func:`raynas.settings.make_config`, as ``raynas search`` does) before Ray
starts, makes ``STUDY_DIR``, starts or joins Ray, and runs every search of the grid concurrently;
``resume_study(STUDY_DIR)`` continues one whose process was stopped (Ctrl-C) or killed: finished
searches are kept, unfinished ones resume exactly (``raynas search --resume``), never-started ones
start. Both return a :class:`Study`. Layout::

    STUDY_DIR/study.json         the grid, settings, command, each search's status, the sessions
    STUDY_DIR/runs/NAME/         each search's run directory (as ``raynas search`` leaves it)
    STUDY_DIR/logs/NAME.log      each search driver's output
    STUDY_DIR/compare.parquet    ``raynas compare``'s method table (and compare.md, compare.txt)
    STUDY_DIR/plots/             the method plots, where :mod:`raynas.plots` is installed

Design: one driver *process* per search, each ``python -m raynas.cli search ... --address A``,
all joining the one Ray at ``A`` (the cluster at ``address``; the Ray this process already has;
else an embedded local Ray this call starts with ``ray.init`` and shuts down, so that it ends
exactly what it started). Tune keeps per-experiment global state and ``Tuner.fit`` blocks its
thread, so several Tuners in one process would share what must not be shared; a driver process
per search is what ``raynas search`` already is (same resume, same status, same tables, tested),
and a dead driver takes no other search with it. (Running each driver as a Ray task was the
alternative: it would hold a CPU of the cluster per search and bury its output in worker logs.)
The embedded Ray turns token auth on for this process (Ray's default for a new local instance:
``RAY_AUTH_MODE=token`` and ``~/.ray/auth_token``), which the drivers inherit, so they join it
as ``raynas search --address`` joins any cluster (:mod:`raynas.connect`).

Sharing: with ``share`` (the default) each search gets an equal share of the cluster's CPUs (and
GPUs) as the study starts: its supernet actor(s) half its share, its light trials the other half,
each standalone training 1/``max_concurrent`` of it, never more than its own settings ask. So the
searches running at once fit the cluster together and none waits for another's resources (no
actor times out waiting for a CPU that another search holds). Ray's CPUs are logical: on 2 cores
every search progresses, each at a fraction of the speed. Settings a user gave in ``resources.*``
are kept. Without ``share`` each search asks for its own settings (an autoscaling cluster adds
the nodes).

Signals: the drivers run in sessions of their own, so a terminal's Ctrl-C reaches this process
alone; it sends each driver one SIGINT (the driver stops gently and marks its run
``interrupted``) and waits for them; a further Ctrl-C sends a second SIGINT, a third SIGKILLs the
drivers (every run stays resumable). On Linux each driver also gets SIGINT when this process dies
(``PR_SET_PDEATHSIG``), so a killed study leaves no driver running on. Nothing here prints:
progress goes to ``on_event`` as :class:`StudyEvent`.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from raynas.errors import UsageError, first_line
from raynas.results import read_json, write_json, write_parquet
from raynas.storage import Location

STUDY_FILE = "study.json"
#: bump when the layout of study.json changes
STUDY_FORMAT = 1
RUNS, LOGS, PLOTS = "runs", "logs", "plots"
#: seconds the drivers get to stop after a Ctrl-C before the next signal
STOP_TIMEOUT_S = 90.0
#: the settings a study records, and a resume reads back
_SETTINGS = ("space", "dataset", "data_dir", "data_options", "preset", "overrides", "method_overrides")


@dataclass
class StudyEvent:
    """What happened: ``kind`` is ``ray`` (the Ray the study runs on), ``started`` / ``resumed`` /
    ``kept`` (a search), ``complete`` / ``interrupted`` / ``failed`` (a search ended),
    ``summary`` (periodic), ``stopping`` (Ctrl-C) or ``done`` (the study ended)."""

    kind: str
    search: str | None = None
    message: str = ""
    elapsed_s: float = 0.0
    counts: dict = field(default_factory=dict)


@dataclass
class Study:
    """A study directory and how it stands (``status``: complete, interrupted or failed)."""

    study_dir: Location
    status: str
    searches: list[dict]
    wall_s: float
    table: object = None  # the method table (a DataFrame), None before any search finished

    @property
    def search_wall_s(self) -> float:
        """The searches' own wall times (their run summaries), summed: the study's serial cost."""
        return float(sum(s.get("wall_s") or 0.0 for s in self.searches))

    def run_dirs(self) -> list[Location]:
        return [self.study_dir / RUNS / s["name"] for s in self.searches]


# --- checking, before Ray starts ----------------------------------------------------------------
def check_study(methods, seeds, *, space: str = "nb201", dataset: str = "digits", data_dir: str | None = None,
                data_options: dict | None = None, preset: str = "small", overrides: dict | None = None,
                method_overrides: dict | None = None) -> list[dict]:
    """Every search's configuration, checked (one :class:`UsageError` line for the first bad one)."""
    from raynas.searchers import method_names
    from raynas.settings import make_config, short_repr

    methods, seeds = list(methods or []), list(seeds or [])
    if not methods:
        raise UsageError(f"--methods: expected one or more of: {', '.join(method_names())}")
    if not seeds:
        raise UsageError("--seeds: expected one or more ints >= 0")
    for what, values in (("--methods", methods), ("--seeds", seeds)):
        twice = sorted({str(v) for v in values if values.count(v) > 1})
        if twice:
            raise UsageError(f"{what}: {', '.join(twice)} given twice; expected each once")
    for method in methods:
        if method not in method_names():
            raise UsageError(f"--methods: unknown method {short_repr(method)}; expected one of: {', '.join(method_names())}")
    stray = sorted(set(method_overrides or {}) - set(methods))
    if stray:
        raise UsageError(f"--set {stray[0]}:...: method {stray[0]!r} is not in the study; expected one of: {', '.join(methods)}")
    configs = []
    for method in methods:
        for seed in seeds:
            try:
                configs.append(make_config(method, space=space, dataset=dataset, data_dir=data_dir,
                                           data_options=data_options, preset=preset, seed=seed,
                                           overrides=_merged(overrides, (method_overrides or {}).get(method))))
            except UsageError as err:
                raise UsageError(f"{method} (seed {seed}): {err}") from None
    return configs


def _merged(common: dict | None, extra: dict | None) -> dict:
    out = {section: dict(values) for section, values in (common or {}).items()}
    for section, values in (extra or {}).items():
        out.setdefault(section, {}).update(values)
    return out


def _check_data(dataset: str, data_dir: str | None, data_options: dict | None) -> None:
    """The data an embedded Ray's drivers will read, loaded once here (a driver joining an address
    leaves that to its actors): a bad path is one line now, not a failed search later."""
    from raynas.data import DatasetError, load_dataset

    try:
        load_dataset(dataset, data_dir, **(data_options or {}))
    except (DatasetError, TypeError) as err:
        raise UsageError(str(err)) from None


# --- the two entry points -----------------------------------------------------------------------
def run_study(methods, seeds, *, space: str = "nb201", dataset: str = "digits", data_dir: str | None = None,
              data_options: dict | None = None, preset: str = "small", overrides: dict | None = None,
              method_overrides: dict | None = None, storage="studies", name: str | None = None,
              address: str | None = None, num_cpus: int | None = None, share: bool = True,
              max_running: int | None = None, command: str | None = None,
              on_event: Callable[[StudyEvent], None] | None = None, summary_every_s: float = 60.0) -> Study:
    """Run the grid ``methods`` x ``seeds`` concurrently (see the module docstring).
    ``overrides``: ``{section: {key: value}}`` for every search; ``method_overrides``:
    ``{method: {section: {...}}}`` on top of them for one method's searches. Bad input raises
    :class:`UsageError` before Ray starts, leaving nothing behind."""
    from raynas.driver import _exists, storage_location
    from raynas.settings import check_name, check_storage

    check_storage(storage)  # the cheap checks first
    check_name(name)
    if max_running is not None and (isinstance(max_running, bool) or not isinstance(max_running, int) or max_running < 1):
        raise UsageError(f"--max-searches {max_running!r}: expected an int >= 1")
    check_study(methods, seeds, space=space, dataset=dataset, data_dir=data_dir, data_options=data_options,
                preset=preset, overrides=overrides, method_overrides=method_overrides)
    if address is not None:
        from raynas.connect import check_address

        address = check_address(address)
    elif not _ray_is_up():
        _check_data(dataset, data_dir, data_options)
    name = name or f"study-{dataset}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    study_dir = (storage_location(storage) / name).resolve()
    if _exists(study_dir, "--storage"):
        raise UsageError(f"study directory {study_dir} already exists; pass --resume {study_dir} to continue it "
                         "or choose another --name")
    record = {
        "format": STUDY_FORMAT, "name": name, "command": command, "created": _now(),
        "grid": {"methods": list(methods), "seeds": [int(s) for s in seeds]},
        "settings": {"space": space, "dataset": dataset, "data_dir": data_dir, "data_options": dict(data_options or {}),
                     "preset": preset, "overrides": overrides or {}, "method_overrides": method_overrides or {}},
        "share": bool(share), "max_running": max_running, "status": "new", "sessions": [],
        "searches": [{"name": f"{name}-{m}-s{s}", "method": m, "seed": int(s), "status": "pending", "attempts": 0}
                     for m in methods for s in seeds],
    }
    study_dir.mkdir()
    try:
        write_json(study_dir / STUDY_FILE, record)
    except OSError as err:
        study_dir.rmtree()
        raise UsageError(f"--storage {storage}: cannot write the study directory there ({err}); "
                         "expected a folder or bucket you can write") from None
    return _drive(record, study_dir, address=address, num_cpus=num_cpus, on_event=on_event,
                  summary_every_s=summary_every_s)


def resume_study(study_dir, *, address: str | None = None, num_cpus: int | None = None,
                 on_event: Callable[[StudyEvent], None] | None = None, summary_every_s: float = 60.0) -> Study:
    """Continue the study in ``study_dir`` with its own grid and settings (see the module docstring)."""
    from raynas.driver import _exists, storage_location

    given = study_dir
    study_dir = storage_location(study_dir, "--resume").resolve()
    if not _exists(study_dir / STUDY_FILE, "--resume"):
        raise UsageError(f"--resume {given}: not a raynas study directory (no {STUDY_FILE}); "
                         "expected a STUDY_DIR that `raynas study` made")
    record = read_json(study_dir / STUDY_FILE)
    if record.get("status") == "complete":
        raise UsageError(f"--resume {given}: the study is complete; nothing to resume")
    alive = [s for s in [record.get("driver") or {}, *record["searches"]] if _alive(s.get("pid"), s.get("host"))]
    if alive:
        what = alive[0].get("name", "the study")
        raise UsageError(f"--resume {given}: {what} still runs (pid {alive[0]['pid']} on this host); "
                         "wait for it to end, or stop it, then resume")
    if address is not None:
        from raynas.connect import check_address

        address = check_address(address)
    elif not _ray_is_up():
        settings = record["settings"]
        _check_data(settings["dataset"], settings["data_dir"], settings["data_options"])
    return _drive(record, study_dir, address=address, num_cpus=num_cpus, on_event=on_event,
                  summary_every_s=summary_every_s)


# --- one session of a study ---------------------------------------------------------------------
def _drive(record: dict, study_dir: Location, *, address, num_cpus, on_event, summary_every_s) -> Study:
    began = time.time()
    say = on_event or (lambda event: None)
    record["driver"] = {"pid": os.getpid(), "host": platform.node()}
    record["status"] = "running"
    todo = [s for s in record["searches"] if _search_status(study_dir, s) != "complete"]
    for entry in record["searches"]:
        if entry not in todo:
            entry["status"] = "complete"
            say(StudyEvent("kept", entry["name"], "complete in an earlier session: kept", 0.0))
    stopped = False
    with _study_ray(address, num_cpus) as (target, totals):
        say(StudyEvent("ray", message=f"Ray at {target} ({_format_totals(totals)})", elapsed_s=time.time() - began))
        running = max(1, min(len(todo), record.get("max_running") or len(todo))) if todo else 1
        configs = _configs(record)
        shares = {s["name"]: (share_resources(configs[s["name"]], running, totals, _user_resources(record, s["method"]))
                              if record.get("share", True) else {}) for s in todo}
        pool = _Drivers(record, study_dir, target, say, began)
        queue = list(todo)
        last_summary = time.monotonic()
        try:
            while queue or pool.live:
                while queue and not stopped and len(pool.live) < running:
                    entry = queue.pop(0)
                    pool.start(entry, shares[entry["name"]])
                    write_json(study_dir / STUDY_FILE, record)
                if pool.reap():
                    write_json(study_dir / STUDY_FILE, record)
                if stopped and not pool.live:
                    break
                if time.monotonic() - last_summary >= summary_every_s:
                    last_summary = time.monotonic()
                    say(StudyEvent("summary", message=pool.summary(), elapsed_s=time.time() - began,
                                   counts=_counts(record)))
                time.sleep(0.5)
        except KeyboardInterrupt:
            stopped = True
            say(StudyEvent("stopping", message="stopping every search (their runs stay resumable)",
                           elapsed_s=time.time() - began))
            pool.stop()
        finally:
            pool.kill_all()  # only after an error of this process itself: the drivers it started
            for entry in record["searches"]:
                if entry["status"] == "running":
                    entry["status"] = _search_status(study_dir, entry) or "interrupted"
            write_json(study_dir / STUDY_FILE, record)
    table = write_comparison(study_dir, record)
    statuses = {s["status"] for s in record["searches"]}
    # from the searches alone: a Ctrl-C that came as the last one finished leaves a complete study
    status = ("complete" if statuses == {"complete"} else "failed" if "failed" in statuses and not stopped
              else "interrupted")
    wall = time.time() - began
    record["sessions"].append({"started": began, "wall_s": round(wall, 3), "status": status, "address": target,
                               "host": platform.node()})
    record.update(status=status, driver=None)
    write_json(study_dir / STUDY_FILE, record)
    study = Study(study_dir, status, record["searches"], sum(s["wall_s"] for s in record["sessions"]), table)
    say(StudyEvent("done", message=status, elapsed_s=wall, counts=_counts(record)))
    return study


class _Drivers:
    """The search driver processes this session started, by search name."""

    def __init__(self, record: dict, study_dir: Location, address: str, say, began: float) -> None:
        self.record, self.study_dir, self.address, self.say, self.began = record, study_dir, address, say, began
        self.live: dict[str, tuple[subprocess.Popen, dict, object]] = {}

    def _logs(self):
        """Where a driver's output goes: the study's logs/ folder, or, for a study in object storage
        (nothing appends there), a local file copied in when the driver ends."""
        if self.study_dir.is_local:
            folder = self.study_dir.local_path / LOGS
            folder.mkdir(exist_ok=True)
            return folder
        if not hasattr(self, "_scratch"):
            self._scratch = tempfile.mkdtemp(prefix="raynas-study-logs-")
        return Path(self._scratch)

    def start(self, entry: dict, resources: dict) -> None:
        run_dir = self.study_dir / RUNS / entry["name"]
        resume = (run_dir / "raynas.json").is_file()
        command = _search_command(self.record, entry, self.study_dir / RUNS, run_dir if resume else None,
                                  resources, self.address)
        log_path = self._logs() / f"{entry['name']}.log"
        log = open(log_path, "a")
        log.write(f"# {_now()} {'resume' if resume else 'start'}: {subprocess.list2cmdline(command)}\n")
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, preexec_fn=_parent_death_signal())
        entry.update(status="running", pid=process.pid, host=platform.node(), started=time.time(), ended=None,
                     attempts=entry.get("attempts", 0) + 1, resources=resources, log=f"{LOGS}/{entry['name']}.log")
        self.live[entry["name"]] = (process, entry, (log, log_path))
        self.say(StudyEvent("resumed" if resume else "started", entry["name"], f"pid {process.pid}",
                            time.time() - self.began))

    def reap(self) -> bool:
        """Record the drivers that ended; whether any did."""
        ended = [name for name, (process, _, _) in self.live.items() if process.poll() is not None]
        for name in ended:
            process, entry, (log, log_path) = self.live.pop(name)
            log.close()
            if not self.study_dir.is_local:
                (self.study_dir / LOGS / f"{name}.log").write_text(open(log_path).read())
            status = _search_status(self.study_dir, entry)
            if process.returncode == 0 and status == "complete":
                outcome = "complete"
            elif process.returncode == 130 or status == "interrupted":
                outcome = "interrupted"
            else:
                outcome = "failed"
            entry.update(status=outcome, exit_code=process.returncode, ended=time.time(), pid=None)
            entry.update(_run_facts(self.study_dir / RUNS / name))
            message = _last_line(log_path) if outcome == "failed" else _outcome_text(entry)
            entry["message"] = message if outcome == "failed" else None
            self.say(StudyEvent(outcome, name, message, time.time() - self.began))
        return bool(ended)

    def summary(self) -> str:
        from raynas.status import run_status

        parts = []
        for name, (_, entry, _) in self.live.items():
            try:
                status = run_status(self.study_dir / RUNS / name)
                parts.append(f"{entry['method']} s{entry['seed']}: {status.get('phase') or 'starting'}"
                             + (f" ({status['progress']})" if status.get("progress") else ""))
            except (UsageError, OSError, ValueError):
                parts.append(f"{entry['method']} s{entry['seed']}: starting")
        return "; ".join(parts)

    def _signal(self, signum: int) -> None:
        for process, _, _ in self.live.values():
            if process.poll() is None:
                try:
                    os.kill(process.pid, signum)
                except ProcessLookupError:
                    pass

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGINT to every driver, then wait for them; each Ctrl-C meanwhile escalates (SIGINT again,
        then SIGKILL), as does a driver that has not ended within ``timeout_s``."""
        escalation = [signal.SIGINT, signal.SIGINT, signal.SIGKILL]
        step = 0
        self._signal(escalation[step])
        deadline = time.monotonic() + timeout_s
        while self.live:
            try:
                self.reap()
                if self.live and time.monotonic() > deadline and step < len(escalation) - 1:
                    step = len(escalation) - 1
                    self._signal(escalation[step])
                time.sleep(0.2)
            except KeyboardInterrupt:
                step = min(step + 1, len(escalation) - 1)
                self._signal(escalation[step])

    def kill_all(self) -> None:
        if self.live:
            self._signal(signal.SIGKILL)
            for process, _, _ in self.live.values():
                process.wait()
            self.reap()


def _search_command(record: dict, entry: dict, runs: Location, resume_dir, resources: dict, address: str) -> list[str]:
    """``raynas search`` for one search of the study: a new run under ``runs``, or ``--resume``."""
    command = [sys.executable, "-m", "raynas.cli", "search"]
    sets = [f"--set=resources.{key}={value!r}" for key, value in resources.items()]
    if resume_dir is not None:
        return [*command, "--resume", str(resume_dir), *sets, "--address", address]
    settings = record["settings"]
    command += ["--method", entry["method"], "--seed", str(entry["seed"]), "--space", settings["space"],
                "--dataset", settings["dataset"], "--preset", settings["preset"]]
    if settings.get("data_dir"):
        command += ["--data-dir", str(settings["data_dir"])]
    command += [f"--data-option={key}={value!r}" for key, value in (settings.get("data_options") or {}).items()]
    overrides = _merged(settings.get("overrides"), (settings.get("method_overrides") or {}).get(entry["method"]))
    command += [f"--set={section}.{key}={value!r}" for section, values in overrides.items() for key, value in values.items()]
    return [*command, *sets, "--storage", str(runs), "--name", entry["name"], "--address", address]


def _parent_death_signal():
    """``preexec_fn`` for a driver: SIGINT when this process dies (Linux's ``PR_SET_PDEATHSIG``),
    so a killed study stops its drivers gently; None elsewhere. ``prctl`` is looked up here, in
    the parent: between fork and exec (other threads of Ray about) the child only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, int(signal.SIGINT), 0, 0, 0)  # 1: PR_SET_PDEATHSIG


# --- Ray for the study --------------------------------------------------------------------------
def _ray_is_up() -> bool:
    import ray

    return ray.is_initialized()


class _study_ray:
    """The Ray the study's drivers join, and its CPUs and GPUs: this process's Ray if it has one,
    the cluster at ``address`` (joined only to read its size), else an embedded local Ray started
    here and shut down at the end."""

    def __init__(self, address: str | None, num_cpus: int | None) -> None:
        self.address, self.num_cpus, self.started = address, num_cpus, False

    def __enter__(self):
        import ray

        if not ray.is_initialized():
            if self.address:
                from raynas.connect import joined

                with joined(self.address):
                    ray.init(address=self.address, namespace="raynas", include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address="local", num_cpus=self.num_cpus, namespace="raynas", include_dashboard=False,
                         log_to_driver=False)
            self.started = True
        target = ray.get_runtime_context().gcs_address
        totals = {k: float(v) for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
        if self.started and self.address:
            ray.shutdown()  # the drivers join the cluster themselves; this process holds no connection
            self.started = False
        return target, totals

    def __exit__(self, *exc) -> None:
        if self.started:
            import ray

            ray.shutdown()


def _format_totals(totals: dict) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in sorted(totals.items())) or "no CPUs"


# --- resources ------------------------------------------------------------------------------------
def share_resources(config: dict, searches: int, totals: dict, keep: set | frozenset = frozenset()) -> dict:
    """``resources.*`` overrides that give one of ``searches`` concurrent searches an equal share
    of a cluster of ``totals`` (``{"CPU": n, "GPU": m}``): its actors half of its CPUs, its light
    trials the other half, a standalone training 1/``max_concurrent``; GPUs split likewise where the
    cluster has some; never above the search's own settings, and never a key in ``keep`` (the
    user's own settings)."""
    from raynas.settings import _traits
    from raynas.spaces import get_space

    res = config["resources"]
    budget_cpus = float(totals.get("CPU", 0.0)) / max(1, searches)
    budget_gpus = float(totals.get("GPU", 0.0)) / max(1, searches)
    m = int(res["max_concurrent"])
    edges = config["searcher"].get("few_shot")
    space = get_space(config["space"])
    subs = len(space.split(space.parse_edges(edges))) if edges else 0
    actors = max(1, subs) if getattr(_traits(config["method"]), "uses_supernet", True) else 0
    trials = max(m, subs) if subs else m

    def floor(x: float) -> float:  # never a share that rounds above the budget
        return math.floor(x * 10_000) / 10_000

    out: dict = {}
    if budget_cpus > 0:
        if actors:
            out["actor_cpus"] = min(float(res["actor_cpus"]), floor(budget_cpus / 2 / actors))
            out["trial_cpus"] = min(float(res["trial_cpus"]), floor(budget_cpus / 2 / trials))
        out["standalone_cpus"] = min(float(res["standalone_cpus"]), floor(budget_cpus / m))
    if budget_gpus > 0 and res.get("gpus") is None:
        if actors and res.get("actor_gpus") is None:
            out["actor_gpus"] = min(1.0, floor(budget_gpus / actors))
        if res.get("standalone_gpus") is None:
            out["standalone_gpus"] = min(1.0, floor(budget_gpus / m))
    return {k: v for k, v in out.items() if k not in keep and k != "gpus"}


def _user_resources(record: dict, method: str) -> set:
    settings = record["settings"]
    return set(_merged(settings.get("overrides"), (settings.get("method_overrides") or {}).get(method)).get("resources", {}))


def _configs(record: dict) -> dict:
    from raynas.settings import make_config

    settings = record["settings"]
    return {s["name"]: make_config(s["method"], space=settings["space"], dataset=settings["dataset"],
                                   data_dir=settings["data_dir"], data_options=settings["data_options"],
                                   preset=settings["preset"], seed=s["seed"],
                                   overrides=_merged(settings["overrides"], settings["method_overrides"].get(s["method"])))
            for s in record["searches"]}


# --- what the runs say ----------------------------------------------------------------------------
def _search_status(study_dir: Location, entry: dict) -> str | None:
    """The search's run status from its manifest (None: no run directory, or it never ended a session)."""
    manifest = study_dir / RUNS / entry["name"] / "manifest.json"
    try:
        return read_json(manifest).get("status") if manifest.is_file() else None
    except (OSError, ValueError):
        return None


def _run_facts(run_dir: Location) -> dict:
    """The figures a study keeps of an ended search: its time span and its summary's."""
    from raynas.results import read_parquet
    from raynas.rowlog import sessions

    facts: dict = {}
    try:
        spans = [s for s in sessions(run_dir) if s.get("started")]
        facts["spans"] = [[s["started"], s["started"] + s["wall_s"]] for s in spans]
        if (run_dir / "summary.parquet").is_file():
            row = read_parquet(run_dir / "summary.parquet").iloc[0]
            facts.update(wall_s=float(row["wall_s"]), final_arch=row["final_arch"],
                         test_acc=None if math.isnan(row["standalone_test_acc"]) else float(row["standalone_test_acc"]))
    except (OSError, ValueError, KeyError):
        pass
    return facts


def _outcome_text(entry: dict) -> str:
    text = f"{entry.get('wall_s', 0):.0f} s"
    if entry.get("final_arch"):
        text += f", final {entry['final_arch']}"
    if entry.get("test_acc") is not None:
        text += f", test acc {entry['test_acc']:.4f}"
    return text


def _last_line(path) -> str:
    try:
        lines = [line.strip() for line in open(path, errors="replace") if line.strip() and not line.startswith("#")]
    except OSError:
        return "no output"
    return lines[-1][:300] if lines else "no output"


def write_comparison(study_dir: Location, record: dict):
    """``compare.parquet``, ``compare.md`` and ``compare.txt`` from the searches that wrote a
    summary (``raynas compare``'s method table: complete runs averaged, the others counted), and
    the plots where :mod:`raynas.plots` exists; returns the table (None if no search wrote one)."""
    from raynas.results import compare_table, load_summaries, markdown_table

    run_dirs = [study_dir / RUNS / s["name"] for s in record["searches"]]
    done = [r for r in run_dirs if (r / "summary.parquet").is_file()]
    if not done:
        return None
    summaries = load_summaries(done)
    table = compare_table(summaries)
    write_parquet(study_dir / "compare.parquet", table)
    (study_dir / "compare.md").write_text(markdown_table(table) + "\n")
    (study_dir / "compare.txt").write_text(table.to_string(index=False, float_format=lambda v: f"{v:.4f}") + "\n")
    record["plots_skipped"] = _plots(study_dir, done)  # None: the plots are in plots/
    return table


def _plots(study_dir: Location, run_dirs: list[Location]) -> str | None:
    """The runs' plots into ``plots/`` (the last session's replaced), where :mod:`raynas.plots`
    exists; returns why none were drawn (a run whose tables cannot be plotted), else None."""
    from raynas import plots

    try:
        drawn = plots.plot_runs(run_dirs)
        (study_dir / PLOTS).rmtree()  # the study's own earlier plots: write_plots never overwrites
        plots.write_plots(drawn, study_dir / PLOTS)
    except (ValueError, OSError) as err:
        return first_line(err)
    return None


# --- small helpers ------------------------------------------------------------------------------
def _counts(record: dict) -> dict:
    counts: dict = {}
    for entry in record["searches"]:
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
    return counts


def _alive(pid, host) -> bool:
    """A raynas process ``pid`` runs on this host (a recycled pid running something else does not count)."""
    from raynas.status import _alive as alive

    if not alive(pid, host):
        return False
    try:
        return b"raynas" in Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: the pid alone


def _now() -> str:
    return dt.datetime.now().isoformat(timespec="seconds")


__all__ = ["run_study", "resume_study", "check_study", "share_resources", "write_comparison", "Study", "StudyEvent"]
