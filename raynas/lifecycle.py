"""One experiment lifecycle, for every kind of raynas experiment (a search, a truth build).

``execute(experiment, run_dir, resume=...)`` is the whole life of one *session* of a run:

1. start Ray (an embedded local instance, or join ``address``), with Tune's own output quieted
   for the session only (no process-wide setting is left changed);
2. let the experiment start what it needs (supernet actors) and give its work-unit trainable;
3. make the searcher, or, on a resume, rebuild it from raynas's durable copy of its state
   (:mod:`raynas.rowlog`) and re-issue the units that were live when the last session ended;
4. run a *new* Tune experiment for this session (``RUN_DIR/tune/session-N``) over that searcher,
   with a :class:`Recorder` callback that appends every row to the run's row log and saves the
   searcher's state after every unit start and completion;
5. decide the run's status (``complete``, ``interrupted``, ``failed``), let the experiment write
   its tables from the row log, and end the session's record.

Tune's experiment state is never read back: a resumed session starts a fresh Tune experiment and
the searcher re-issues what is missing. Work units are idempotent (addressed by key and supernet
version), so a resumed run equals the uninterrupted one, and nothing depends on when Tune copies
its files. Paths are taken from where the run directory is now, so a copied or moved run
directory resumes in its new place.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
from dataclasses import dataclass
from typing import Any, Iterator

from ray.tune import Callback
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, LoggerCallback, TBXLoggerCallback

from raynas.errors import SearchFailed, UsageError
from raynas.rowlog import RowLog, load_searcher_state, save_searcher_state, sessions
from raynas.storage import Location

STATUSES = ("complete", "interrupted", "failed")
#: idle worker processes an embedded Ray keeps beyond one per CPU (warm standalone workers)
IDLE_WORKERS = 4


class Experiment:
    """What one kind of experiment gives :func:`execute` (subclasses: the search driver, truth)."""

    #: Tune's FailureConfig(max_failures): in-session retries of a trial that errored
    max_failures: int = 2
    #: at most this many units at once (Tune's ConcurrencyLimiter)
    max_concurrent: int = 2

    def start(self, run_dir: Location, *, resume: bool) -> Any:
        """After Ray started: start actors; return the work-unit trainable."""
        raise NotImplementedError

    def new_searcher(self) -> tuple[Any, dict]:
        """A new searcher and the keyword arguments that rebuild it."""
        raise NotImplementedError

    def searcher_class(self) -> type:
        raise NotImplementedError

    def attach(self, searcher) -> None:
        """The session's searcher, before its Tune experiment starts (the search driver's actors
        follow its phases)."""

    def callbacks(self, run_dir: Location, *, resume: bool) -> list:
        """Extra Tune callbacks (progress lines)."""
        return []

    def stop(self) -> None:
        """Release what :meth:`start` started (actors, placement groups)."""

    def finish(self, run_dir: Location, *, status: str, outcome: dict, wall_s: float, sessions: int) -> None:
        """Write the tables from the row log; raise :class:`SearchFailed` if they disagree with
        the searcher's final ``outcome`` of a complete run."""
        raise NotImplementedError


@dataclass
class Ended:
    """How a session ended."""

    status: str
    outcome: dict
    wall_s: float
    sessions: int
    message: str | None = None


class Recorder(Callback):
    """The driver side of raynas's own record: every row into the row log, the searcher's state
    after every unit start and completion (Tune calls its searcher before its callbacks, so the
    saved state has seen exactly the rows already logged)."""

    def __init__(self, log: RowLog, run_dir: Location, searcher, kwargs: dict) -> None:
        self.log, self.run_dir, self.searcher, self.kwargs = log, run_dir, searcher, kwargs

    def save(self) -> None:
        self.log.sync()  # the rows first: the saved state must never know a row the log lacks
        save_searcher_state(self.run_dir, self.searcher, self.kwargs)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.log.row(result, trial=trial.trial_id)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.save()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.save()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.save()


# Tune adds a CSV, a JSON and a TensorBoard logger unless one of each kind is among the callbacks
# (or a process-wide environment variable says otherwise): these stand in for them, writing
# nothing (raynas's row log is the record; a write per candidate row would cost for nothing).
class _NoCSV(CSVLoggerCallback):
    def __init__(self) -> None:
        LoggerCallback.__init__(self)

    def log_trial_start(self, trial) -> None:
        pass

    def log_trial_result(self, iteration, trial, result) -> None:
        pass

    def log_trial_end(self, trial, failed: bool = False) -> None:
        pass


class _NoJson(JsonLoggerCallback):
    __init__ = _NoCSV.__init__
    log_trial_start = _NoCSV.log_trial_start
    log_trial_result = _NoCSV.log_trial_result
    log_trial_end = _NoCSV.log_trial_end


class _NoTBX(TBXLoggerCallback):
    __init__ = _NoCSV.__init__
    log_trial_start = _NoCSV.log_trial_start
    log_trial_result = _NoCSV.log_trial_result
    log_trial_end = _NoCSV.log_trial_end


@contextlib.contextmanager
def _quiet_tune(verbose: int) -> Iterator[None]:
    """Tune's experiment box and INFO lines are noise beside raynas's own progress: off for the
    session, and put back after it."""
    saved_env = {k: os.environ.get(k) for k in ("RAY_AIR_NEW_OUTPUT",)}
    # Tune's result grid looks for its own per-trial logs, which raynas does not write (the row
    # log is the record): its "could not fetch metrics" warnings say nothing about the run
    levels = {"ray.tune.analysis.experiment_analysis": logging.ERROR}
    if verbose < 2:
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
        levels["ray.tune"] = logging.WARNING
    saved_levels = {name: logging.getLogger(name).level for name in levels}
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)


def init_ray(address: str | None, num_cpus: int | None, verbose: int) -> bool:
    """Start an embedded local Ray (``address=None``) or join a cluster; returns whether this call
    started it (and so should shut it down). An already initialised Ray is used as it is.

    A cluster is probed first (:func:`raynas.connect.check_address`, a few seconds at most): one
    that cannot be joined (nothing listens, not a Ray GCS, a missing or wrong token) raises
    :class:`UsageError` naming what happened and what to do, before anything starts. Once joined,
    a watch (:func:`raynas.connect.watch_head`) ends the process in one line, exit 130, when the
    head stops answering (before Ray's own end of it, 60 s on, which says and records nothing);
    the handlers registered with :func:`raynas.connect.head_watch` record the run first."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = dict(namespace="raynas", log_to_driver=verbose >= 2, include_dashboard=False)
    if address:
        from raynas.connect import check_address, joined, watch_head

        kwargs["address"] = check_address(address)
        with joined(kwargs["address"]):
            ray.init(**kwargs)
        watch_head(kwargs["address"])
    else:
        # "local": always a fresh embedded instance, never a stray cluster found on the machine
        kwargs["address"] = "local"
        if num_cpus:
            kwargs["num_cpus"] = num_cpus
        # Ray kills idle workers beyond one per CPU after a second; the warm standalone workers
        # (torch and the data loaded while the supernets train: raynas.trainable.warm_workers)
        # are idle until the trainings come, and there are at most max_concurrent of them
        kwargs["_system_config"] = {"num_workers_soft_limit": int(num_cpus or os.cpu_count() or 1) + IDLE_WORKERS}
        ray.init(**kwargs)
    return True


def _trial_name(trial) -> str:
    # the default name spells out the whole config (a cohort of archs): keep it short
    return f"unit{trial.config.get('unit', 'x'):>05}-{trial.config.get('kind', 'unit')}-{trial.trial_id}"


def make_tuner(trainable, searcher, *, storage: "str | os.PathLike | Location", name: str, max_concurrent: int,
               max_failures: int = 2, callbacks: list = ()):
    """The Tune experiment of one session: a raynas searcher behind Tune's ConcurrencyLimiter, no
    sample limit (the searcher says when it is done), reused trial workers, short trial names,
    and none of Tune's per-row loggers (raynas's row log is the record). ``storage`` may be a
    URI: Tune then writes through the same pyarrow filesystem as raynas."""
    from ray import tune

    from raynas.searchers import tune_config

    storage = Location(storage)
    where = ({"storage_path": str(storage)} if storage.is_local
             else {"storage_path": storage.fs_path, "storage_filesystem": storage.filesystem})

    return tune.Tuner(
        trainable,
        tune_config=tune_config(searcher, max_concurrent=max_concurrent, reuse_actors=True,
                                trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(
            name=name,
            **where,
            verbose=0,
            callbacks=[*callbacks, _NoCSV(), _NoJson(), _NoTBX()],
            failure_config=tune.FailureConfig(max_failures=max_failures),
        ),
    )


def _restored_searcher(experiment: Experiment, run_dir: Location):
    saved = load_searcher_state(run_dir)
    if saved is None:
        raise UsageError(f"--resume {run_dir}: the run has no searcher state (searcher-state.pkl); "
                         "it never started its first unit: start it again instead")
    cls = experiment.searcher_class()
    if saved["class"] != f"{cls.__module__}:{cls.__qualname__}":
        raise UsageError(f"--resume {run_dir}: its searcher state was written by {saved['class']}; "
                         f"this run's method uses {cls.__module__}:{cls.__qualname__}")
    kwargs = dict(saved["kwargs"], max_concurrent=experiment.max_concurrent)
    searcher = cls(**kwargs)
    searcher.set_state(saved["state"])
    searcher.reissue_live()  # the last session's live units ran in a Tune experiment that is gone
    return searcher, kwargs


def _record_a_lost_head(began, facts) -> None:
    """If the driver joined a cluster, have the head watch write the run up as ``interrupted``
    when the head goes away: every Ray call then blocks until Ray ends the process, so neither
    :meth:`Experiment.stop` nor ``execute``'s own ``finally`` would ever run."""
    from raynas.connect import head_watch

    watch = head_watch()
    if watch is None:
        return

    def head_lost(message: str) -> str:
        experiment, run_dir, searcher, log, previous_wall, prior = facts()
        if began():  # from here the run has a state to resume; record it without Ray
            experiment.finish(run_dir, status="interrupted", outcome=searcher.outcome(),
                              wall_s=previous_wall + log.seconds(), sessions=prior + 1)
            log.end("interrupted")
        return f"the run is resumable: `raynas search --resume {run_dir}` on a live cluster (--address HOST:PORT) continues it"

    watch.on_lost(head_lost)


def execute(experiment: Experiment, run_dir: Location, *, resume: bool, address: str | None = None,
            num_cpus: int | None = None, verbose: int = 1, started_at: float | None = None) -> Ended:
    """One session of a run (see the module docstring). Returns how it ended; the experiment's
    tables are written whatever the status. ``run_dir``: a local path or a URI (:mod:`raynas.storage`).
    ``started_at`` (epoch seconds): when the session's command began (its wall time counts from
    there; default: now). Ray is shut down before the tables are written, so the wall time in
    them counts its shutdown too."""
    run_dir = Location(run_dir)
    prior = sessions(run_dir)
    previous_wall = sum(s["wall_s"] for s in prior)
    log = RowLog(run_dir, len(prior), began=started_at)
    status, message, outcome = "interrupted", None, {}
    started_ray = began = False
    with _quiet_tune(verbose):
        try:
            try:
                started_ray = init_ray(address, num_cpus, verbose)
                _record_a_lost_head(lambda: began, lambda: (experiment, run_dir, searcher, log,
                                                            previous_wall, len(prior)))
                trainable = experiment.start(run_dir, resume=resume)
                searcher, kwargs = _restored_searcher(experiment, run_dir) if resume else experiment.new_searcher()
                experiment.attach(searcher)
                recorder = Recorder(log, run_dir, searcher, kwargs)
                recorder.save()  # from here on the run is resumable
                log.begin(resumed=bool(resume), pid=os.getpid(), host=platform.node())
                began = True
                tuner = make_tuner(trainable, searcher, storage=run_dir / "tune", name=f"session-{log.session}",
                                   max_concurrent=experiment.max_concurrent, max_failures=experiment.max_failures,
                                   callbacks=[*experiment.callbacks(run_dir, resume=resume), recorder])
                try:
                    tuner.fit()
                except KeyboardInterrupt:
                    pass  # a second Ctrl-C: Tune's graceful stop was cut short; the state on disk holds
                except SearchFailed:
                    pass  # an experiment's callback halted the searcher (the cluster cannot run it): its outcome says why
                outcome = searcher.outcome()
                if outcome.get("failure"):
                    status, message = "failed", outcome["failure"]
                elif outcome.get("finished"):
                    status = "complete"
                else:
                    # Tune stopped asking before the searcher finished: Ctrl-C (Tune stops gently on
                    # the first), or a stop condition; the run is resumable
                    status = "interrupted"
            except KeyboardInterrupt:
                status = "interrupted"
            except BaseException:
                if began:  # a bug or a broken cluster mid-session: the run says so (its state still holds)
                    log.end("failed")
                raise
            finally:
                experiment.stop()
                if started_ray:  # the tables need no Ray: its shutdown counts in the wall time they record
                    import ray

                    ray.shutdown()
                    started_ray = False
            wall_s = previous_wall + log.seconds()
            if not began:  # stopped before its first unit: nothing to write up
                return Ended(status=status, outcome=outcome, wall_s=wall_s, sessions=len(prior), message=message)
            try:
                experiment.finish(run_dir, status=status, outcome=outcome, wall_s=wall_s, sessions=len(prior) + 1)
            except SearchFailed as err:
                status, message = "failed", str(err)
                experiment.finish(run_dir, status=status, outcome=outcome, wall_s=wall_s, sessions=len(prior) + 1)
            finally:
                log.end(status)
        finally:
            if started_ray:
                import ray

                ray.shutdown()
    return Ended(status=status, outcome=outcome, wall_s=wall_s, sessions=len(prior) + 1, message=message)
