"""A run's supernet actors, and the Tune callback that keeps them.

- :class:`SupernetActors`: the run's actors, made when the search first needs one and killed when
  it no longer does (:meth:`raynas.searchers.base.WorkUnitSearcher.supernets_needed`): the
  one-shot supernet once its sub-supernets take over, each sub-supernet once scored, all of
  them when the search trains standalone. A made-again actor resumes from its snapshot.
- :class:`ResourceWatch`: the Tune callback that keeps the actors so and ends the session with
  one line (status ``failed``, the run resumable) when an actor dies in its start or does not
  start within the timeout, or a unit waits for a node the cluster does not have.
- :func:`work_unit_trainable`: the work-unit trainable with the plan's resources.

What the actors ask for is :mod:`raynas.plan`'s (sized for :mod:`raynas.cluster`'s view). Used by
:class:`raynas.driver.SearchExperiment` (and the truth experiment's trainable); the actors' bodies
are :mod:`raynas.actor` / :mod:`raynas.worker`. Nothing here prints.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from ray.tune import Callback

from raynas.cluster import (cluster_view, fits, format_resources, pending_bundles, pending_demands, plain_resources, request,
                            same_request)
from raynas.errors import SearchFailed, UsageError
from raynas.searchers.base import sub_supernet_steps, sub_supernets_inherit
from raynas.plan import Plan, resource_hint

#: seconds a placed actor may take in its ``__init__`` (loading its data, building its supernet)
#: beyond the placement timeout, before the run fails as stuck
INIT_TIMEOUT_S = 600.0

# --- the actors -------------------------------------------------------------------------------------
@dataclass
class _Live:
    actor: Any
    asked: float  # monotonic time it was asked for
    ready: Any  # ObjectRef of its node id: resolves once __init__ is done
    node: str | None = None
    looked: float = 0.0  # when it was last checked for being late


class SupernetActors:
    """The run's supernet actors (0: the one-shot supernet; 1..K: the few-shot sub-supernets),
    each made when the search first needs it and killed when it no longer does.

    :meth:`start` makes actor 0 and waits (within the timeout) for its facts; after
    :meth:`attach`, every unit the searcher issues first runs :meth:`reconcile`, which kills the
    actors not in the searcher's :meth:`supernets_needed` and makes the missing ones (before Tune
    makes the unit's trial), and :meth:`check` (from :class:`ResourceWatch`) watches the ones
    starting. A made-again actor finds its supernet's snapshot (``expect_snapshot``).
    ``history`` records each change (supernet, event, the search's phase, the actors alive)."""

    def __init__(self, config: dict, run_dir, plan: Plan, space, *, resume: bool = False) -> None:
        self.config, self.run_dir, self.plan = config, run_dir, plan
        edges = config["searcher"].get("few_shot")
        self.edges = space.parse_edges(edges) if edges else None
        self.regions = space.split(self.edges) if edges else []
        # one read of the row log for every actor (a 2-edge split has 26)
        self.trained = _trained_supernets(run_dir) if resume else set()
        self.base = dict(config["supernet"], space=config["space"], dataset=config["dataset"],
                         data_dir=config["data_dir"], data_options=config["data_options"], seed=config["seed"])
        self.steps: int | None = None
        self.live: dict[int, _Live] = {}
        self.nodes: dict[int, str] = {}
        self.history: list[dict] = []
        self.searcher = None
        self.failure: str | None = None
        #: supernet 0's facts (``info()``), and while they are on their way: the ref and what they must say
        self.facts: dict = {}
        self.facts_ref = None
        self.expected: dict = {}

    # --- making and killing -------------------------------------------------------------------------
    def worker_kwargs(self, k: int) -> dict:
        """The worker settings of supernet ``k`` (a resumed or made-again actor must find its snapshot)."""
        snapshots = self.run_dir / "supernets"
        expect = k in self.trained or (self.searcher is not None and getattr(self.searcher, "trained_", {}).get(k, 0) > 0)
        kwargs = dict(self.base, snapshot_dir=str(snapshots / str(k)), expect_snapshot=bool(expect))
        if k > 0:
            region = self.regions[k - 1]
            # the independent few-shot variant starts each sub-supernet from scratch
            inherit = sub_supernets_inherit(self.config["searcher"])
            kwargs.update(allowed_ops=[list(a) for a in region.allowed_ops], total_steps=self.steps, epochs=None,
                          init_from=str(snapshots / "0" / "snapshot.pt") if inherit else None)
        return kwargs

    def options(self, k: int) -> dict:
        """The actor's Ray options: its CPU/GPU share; sub-supernets SPREAD over the nodes."""
        res = self.plan.res
        options = dict(num_cpus=self.plan.actor["CPU"], num_gpus=self.plan.actor.get("GPU", 0.0),
                       max_restarts=res["max_restarts"], timeout_s=min(60.0, self.plan.timeout_s))
        if k > 0 and res.get("placement_strategy", "SPREAD") == "SPREAD":
            options["scheduling_strategy"] = "SPREAD"
        return options

    def _make(self, k: int) -> None:
        from raynas.actor import create_supernet_actor

        actor = create_supernet_actor(self.config["run_id"], k, self.worker_kwargs(k), **self.options(k))
        self.live[k] = _Live(actor, time.monotonic(), actor.node_id.remote())
        self._record(k, "start")

    def _kill(self, k: int, event: str = "release") -> None:
        import ray

        if k == 0 and self.facts_ref is not None:  # its facts first (the manifest's)
            try:
                self.failure = self.failure or self._receive_facts(timeout=5.0)
            except Exception:
                pass
        live = self.live.pop(k)
        try:
            self._resolve(k, live)
        except Exception:  # it died starting: nothing to note
            pass
        try:
            ray.kill(live.actor)  # its state is in its snapshots
        except Exception:  # already gone
            pass
        self._record(k, event)

    def _record(self, k: int, event: str) -> None:
        phase = self.searcher.outcome()["phase"] if self.searcher is not None else "start"
        self.history.append({"supernet": k, "event": event, "phase": phase, "alive": sorted(self.live)})

    def _resolve(self, k: int, live: _Live) -> bool:
        """Note the node of a started actor (True once started; raises RayActorError if it died starting)."""
        import ray

        if live.node is not None:
            return True
        done, _ = ray.wait([live.ready], timeout=0)
        if not done:
            return False
        try:
            live.node = self.nodes[k] = ray.get(live.ready)
        except ray.exceptions.ActorUnavailableError:
            # its node went away while it started: Ray restarts it (max_restarts); ask again
            live.ready = live.actor.node_id.remote()
            return False
        return True

    # --- the session --------------------------------------------------------------------------------
    def start(self, schedule: dict | None = None) -> dict:
        """Make supernet 0's actor and return its facts (plus the few-shot layout). Raises
        :class:`UsageError` (one line) if it cannot start: nothing of the session began.

        ``schedule`` (``total_steps``, ``steps_per_epoch``, as the driver computed them from the
        data it checked): return at once with those, so the actor's start (its process, torch,
        its data) overlaps Tune's; the actor's own facts are checked against them when they come
        (:meth:`check`) and join the info at :meth:`stop`."""
        import ray

        self._make(0)
        live = self.live[0]
        facts = live.actor.info.remote()
        if schedule is not None:
            self.expected, self.facts_ref = dict(schedule), facts
            return self._layout(dict(schedule))
        try:
            while not ray.wait([facts], timeout=1.0)[0]:
                message = self._late(0, live)
                if message is not None:
                    self.stop()
                    raise UsageError(message)
            info = ray.get(facts)
            self._resolve(0, live)
        except ray.exceptions.RayActorError as err:
            self.stop()
            raise UsageError(f"the supernet actor could not start: {root_cause(err)}") from None
        self.facts = info
        return self._layout(info)

    def _layout(self, info: dict) -> dict:
        """``info`` with the few-shot layout (the sub-supernets' steps from the one-shot's)."""
        if self.regions:
            searcher = self.config["searcher"]
            self.steps = sub_supernet_steps(info["total_steps"], len(self.regions), steps=searcher.get("few_shot_steps"),
                                            budget=searcher.get("sub_supernet_budget", "equal"))
            info["few_shot"] = {"edges": self.edges, "sub_supernets": len(self.regions), "steps": self.steps,
                                "strategy": self.plan.res.get("placement_strategy", "SPREAD"),
                                "actor_cpus": self.plan.actor["CPU"], "actor_gpus": self.plan.actor.get("GPU", 0.0),
                                "max_actors": self.plan.actors_at_once,
                                "regions": [[list(a) for a in r.allowed_ops] for r in self.regions]}
        return info

    def supernet_limit(self) -> int:
        """The supernets in use at once: the plan's actors at once, plus one where every
        sub-supernet's CPU actor fits at once and the user set no ``max_actors``: then the
        sub-supernets' actors start (a process, torch and the data each: tens of seconds on a
        busy node) during the one-shot supernet's last chunk, beside its actor, rather than
        after it. One actor over the plan for one chunk is a small CPU share Ray queues if it
        must; a GPU actor over the plan would hold a GPU, or have the autoscaler add a node."""
        limit = int(self.plan.actors_at_once)
        K = len(self.regions or ())
        if (K and limit >= K and not self.plan.actor.get("GPU")
                and (self.config.get("resources") or {}).get("max_actors") is None):
            return limit + 1
        return limit

    def attach(self, searcher) -> None:
        """From now on the actors follow ``searcher``'s needs (its limit: the plan's actors at once)."""
        self.searcher = searcher
        if hasattr(searcher, "set_supernet_limit"):
            searcher.set_supernet_limit(self.supernet_limit())
        searcher.on_issue = self.on_issue

    def on_issue(self, unit: dict) -> None:
        """The searcher issues ``unit``: its supernet's actor must exist before Tune makes the trial."""
        self.reconcile()

    def reconcile(self) -> None:
        """Kill the actors the search no longer needs, then make the ones it needs. Never raises
        (it runs inside the searcher and Tune's loop): a failure is kept for :meth:`check`."""
        if self.searcher is None or self.failure is not None:
            return
        try:
            needed = set(self.searcher.supernets_needed())
            for k in sorted(set(self.live) - needed):
                self._kill(k)
            for k in sorted(needed - set(self.live)):
                self._make(k)
        except Exception as err:
            self.failure = f"the supernet actors could not follow the search: {root_cause(err)}"

    def check(self) -> str | None:
        """One line if an actor died in its start or did not start within the timeout, else None."""
        import ray

        if self.failure is not None:
            return self.failure
        if self.facts_ref is not None:
            self.failure = self._receive_facts()
            if self.failure is not None:
                return self.failure
        now = time.monotonic()
        for k, live in list(self.live.items()):
            try:
                if self._resolve(k, live):
                    continue
            except ray.exceptions.RayActorError as err:
                self.failure = f"supernet actor {k} could not start: {root_cause(err)}"
                return self.failure
            if now - live.looked < 2.0:
                continue
            live.looked = now
            message = self._late(k, live, now)
            if message is not None:
                self.failure = message
                return message
        return None

    def _receive_facts(self, timeout: float = 0.0) -> str | None:
        """Take supernet 0's facts once they are there; one line if they disagree with the
        schedule the search started with, or if the actor died in its start."""
        import ray

        if not ray.wait([self.facts_ref], timeout=timeout)[0]:
            return None
        try:
            self.facts = ray.get(self.facts_ref)
        except ray.exceptions.RayActorError as err:
            self.facts_ref = None
            if 0 not in self.live:  # released by the search meanwhile: nothing failed
                return None
            return f"the supernet actor could not start: {root_cause(err)}"
        self.facts_ref = None
        for key, value in self.expected.items():
            if self.facts.get(key) != value:
                return (f"the supernet actor's {key} is {self.facts.get(key)}, the search was planned with {value} "
                        "(a bug: the driver and the actor read the data differently)")
        return None

    def _late(self, k: int, live: _Live, now: float | None = None) -> str | None:
        """One line if actor ``k`` is late: still waiting for resources (its request among Ray's
        pending demands) after the timeout, or not started at all :data:`INIT_TIMEOUT_S` later
        (a worker process that does not come up, an ``__init__`` that hangs)."""
        waited = (time.monotonic() if now is None else now) - live.asked
        if waited <= self.plan.timeout_s:
            return None
        if any(same_request(self.ask(k), bundle) for bundle, _ in pending_bundles()):
            return self.not_started(k)
        if waited > self.plan.timeout_s + INIT_TIMEOUT_S:
            if _placed(live.actor):
                return (f"supernet actor {k} got its node but its start (loading its data, building its supernet) "
                        f"did not end within {waited:.0f} s; see its log (raynas search -v)")
            return self.not_started(k)
        return None

    def ask(self, k: int) -> dict:
        """What actor ``k`` asks Ray for."""
        options = self.options(k)
        return request(options["num_cpus"], options.get("num_gpus", 0.0))

    def forget_dead(self) -> None:
        """After a unit failed: an actor Ray gave up restarting is forgotten, so that the unit's
        re-issue makes it again from its snapshot."""
        from raynas.naming import get_supernet_actor

        for k, live in list(self.live.items()):
            if live.node is None:
                continue
            try:
                get_supernet_actor(self.config["run_id"], k)
            except ValueError:
                self.live.pop(k)
                self._record(k, "died")

    def not_started(self, k: int) -> str:
        ask = self.ask(k)
        demand = pending_demands()
        return (f"supernet actor {k} asked for {format_resources(ask)} and did not start within "
                f"{self.plan.timeout_s:g} s; {cluster_view().describe()}" + (f"; {demand}" if demand else "")
                + f"; {resource_hint(ask, 'actor_cpus', 'actor_gpus')}, or raise resources.placement_timeout_s")

    def stop(self, info: dict | None = None) -> dict:
        """Kill every actor of the run; return ``info`` with supernet 0's facts, the few-shot
        actors' nodes and history."""
        if self.facts_ref is not None and 0 in self.live:
            try:
                self._receive_facts(timeout=5.0)
            except Exception:  # the facts are for the manifest; a dead actor has none to give
                pass
        if self.facts:
            info = {**self.facts, **dict(info or {})}
        for k in sorted(self.live):
            try:
                self._kill(k, "stop")
            except Exception:
                pass
        info = dict(info or {})
        if info.get("few_shot"):
            info["few_shot"] = {**info["few_shot"],
                                "nodes": [self.nodes.get(k) for k in range(len(self.regions) + 1)],
                                "actors": list(self.history)}
        return info


def _placed(actor) -> bool:
    """Whether Ray gave the actor a worker process (it is past waiting for resources)."""
    try:
        from ray._private.state import actors

        info = actors(actor._actor_id.hex())
        return bool(info.get("Pid")) or info.get("State") == "ALIVE"
    except Exception:  # the GCS's actor table out of reach: count the whole wait
        return False


def _trained_supernets(run_dir) -> set[int]:
    """The supernets with a train row in the run's row log (their snapshots must exist)."""
    from raynas.rowlog import read_records

    return {r.get("supernet", 0) for r in read_records(run_dir) if r.get("kind") == "train" and r.get("steps", 1) > 0}


# --- the watch --------------------------------------------------------------------------------------
class ResourceWatch(Callback):
    """Tune callback of a session (driver side): keeps the supernet actors to the search's needs
    at every step, and ends the session (the searcher halted, :class:`SearchFailed` raised out of
    ``tuner.fit()``) with one line when an actor died in its start or did not start within the
    plan's timeout, or a unit has waited longer than that for resources that no live node has
    (the autoscaler did not deliver), or :data:`INIT_TIMEOUT_S` longer while nothing runs."""

    def __init__(self, plan: Plan, actors: SupernetActors | None = None) -> None:
        self.plan, self.actors = plan, actors
        self.searcher = None
        self.pending: dict[str, float] = {}  # trial id -> when first seen pending
        self.silent: dict[str, float] = {}  # trial id of a running compute unit with no row yet -> its start
        #: what a standalone/proxy unit's task asks for, by kind (:func:`compute_shares`)
        self.compute: dict[str, dict] = {}
        #: the run (as the trainable sees it) whose standalone workers to warm up; None: do not
        self.warm_run: dict | None = None
        self.warmed: list | None = None
        #: a unit has reported: the supernet actor is up (the warm-up waits for that, see warm())
        self.reported = False
        self.checked = self.looked = 0.0

    def __getstate__(self) -> dict:
        # Tune pickles its callbacks with the run config: the actors and searcher are this driver's
        return {"plan": self.plan, "actors": None, "searcher": None, "pending": {}, "silent": {}, "compute": self.compute,
                "warm_run": None, "warmed": None, "reported": False, "checked": 0.0, "looked": 0.0}

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        from raynas.trainable import COMPUTE_KINDS

        # a standalone/proxy trial is light; its task may still wait for its share of a node
        if trial.config.get("kind") in COMPUTE_KINDS:
            self.silent[trial.trial_id] = time.monotonic()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.silent.pop(trial.trial_id, None)
        self.reported = True

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.silent.pop(trial.trial_id, None)

    def attach(self, searcher) -> None:
        self.searcher = searcher
        if self.actors is not None:
            self.actors.attach(searcher)
        issue = getattr(searcher, "on_issue", None)

        def on_issue(unit: dict) -> None:
            if issue is not None:
                issue(unit)
            self.warm()

        searcher.on_issue = on_issue

    def warm(self) -> None:
        """Once the searcher says standalone trainings come soon, start that many warm-up tasks
        (:func:`raynas.trainable.warm_workers`: worker processes with torch and the data loaded,
        on the CPU the supernet phase leaves idle), once per session. CPU trainings only: Ray
        keeps GPU and CPU task workers apart. Not before the first row: until then the actor's
        and the first trial's processes are starting, and a warm-up beside them only delays the
        first chunk (8 s of 50 on 2 cores). Never raises (it runs inside Tune's loop)."""
        if self.warm_run is None or self.warmed is not None or self.searcher is None or not self.reported:
            return
        try:
            count = int(getattr(self.searcher, "standalone_soon", lambda: 0)())
            if count > 0:
                from raynas.trainable import warm_workers

                self.warmed = warm_workers(self.warm_run, count)
        except Exception:  # a warm-up is an optimisation; the trainings start cold without it
            self.warmed = []

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.silent.pop(trial.trial_id, None)
        if self.actors is not None:
            self.actors.forget_dead()

    def on_step_end(self, iteration, trials, **info) -> None:
        now = time.monotonic()
        if now - self.checked < 0.25:
            return
        self.checked = now
        message = None
        if self.actors is not None:
            self.actors.reconcile()
            message = self.actors.check()
        self.warm()
        message = message or self._stuck(trials, now)
        if message:
            if self.searcher is not None:
                self.searcher.halt(message)
            raise SearchFailed(message)

    def _stuck(self, trials, now: float) -> str | None:
        from ray.tune.experiment import Trial

        import ray

        pending = [t for t in trials if t.status == Trial.PENDING]
        self.pending = {t.trial_id: self.pending.get(t.trial_id, now) for t in pending}
        late = [t for t in pending if now - self.pending[t.trial_id] > self.plan.timeout_s]
        # a running standalone/proxy trial whose task has not given a row: late once its task's
        # ask is among Ray's pending demands after the timeout
        waiting = [t for t in trials if t.status == Trial.RUNNING and t.trial_id in self.silent
                   and now - self.silent[t.trial_id] > self.plan.timeout_s]
        if not (late or waiting) or now - self.looked < 5.0:
            return None
        self.looked = now
        if waiting:
            asks = [bundle for bundle, _ in pending_bundles()]
            for trial in waiting:
                task = self.compute.get(trial.config.get("kind"), {})
                if any(same_request(plain_resources({k: task.get(k, 0.0) for k in ("CPU", "GPU")}), bundle)
                       for bundle in asks):
                    late.append(trial)
        running = any(t.status == Trial.RUNNING and t.trial_id not in self.silent for t in trials)
        nodes = [plain_resources(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]
        for trial in late:
            ask = self._ask(trial)
            if any(fits(ask, n) for n in nodes):
                # a live node can hold it: it waits its turn behind units that run, or its trial
                # process is starting; stuck only if nothing has run for much longer
                if running or now - self.pending[trial.trial_id] <= self.plan.timeout_s + INIT_TIMEOUT_S:
                    continue
            demand = pending_demands()
            kind = trial.config.get("kind", "unit")
            return (f"work unit {trial.config.get('key', trial.trial_id)} ({kind}) asked for {format_resources(ask)} "
                    f"and could not be placed within {self.plan.timeout_s:g} s; {cluster_view().describe()}"
                    + (f"; {demand}" if demand else "")
                    + f"; {resource_hint(ask, 'standalone_cpus' if kind in ('standalone', 'proxy') else 'trial_cpus', 'standalone_gpus')}"
                    ", or raise resources.placement_timeout_s")
        return None

    def _ask(self, trial) -> dict:
        """What a unit holds in all: its trial's request, plus its task's for a standalone/proxy unit."""
        ask = plain_resources(trial.placement_group_factory.required_resources)
        task = self.compute.get(trial.config.get("kind"))
        if task:
            ask = {k: round(ask.get(k, 0.0) + task.get(k, 0.0), 4) for k in ("CPU", "GPU")}
            ask = plain_resources(ask)
        return ask


# --- the trainable ----------------------------------------------------------------------------------
def compute_shares(res: dict, *, standalone_gpus: float) -> dict[str, dict]:
    """What the task of a standalone or proxy unit asks for, by kind (its unit's total less the
    trial's CPU share: :func:`raynas.trainable.compute_resources`)."""
    from raynas.trainable import COMPUTE_KINDS, compute_resources, unit_resources

    shares = dict(trial_cpus=res["trial_cpus"], standalone_cpus=res["standalone_cpus"], standalone_gpus=standalone_gpus)
    return {kind: compute_resources(unit_resources({"kind": kind}, **shares), trial_cpus=res["trial_cpus"])
            for kind in COMPUTE_KINDS}


def work_unit_trainable(run: dict, res: dict, *, standalone_gpus: float, compute: dict | None = None):
    """The work-unit trainable of a run. Every trial asks for the same ``trial_cpus``, so Tune
    reuses one trial process for units of every kind; a standalone or proxy unit's compute runs
    in a task holding the rest of its share (``compute``: :func:`compute_shares`, sized in the driver)."""
    from ray import tune

    from raynas.trainable import work_unit

    run = {**run, "compute": compute or compute_shares(res, standalone_gpus=standalone_gpus)}
    return tune.with_resources(tune.with_parameters(work_unit, run=run), {"CPU": res["trial_cpus"]})


_ERROR_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(\w*(?:Error|Exception)): (.+?)\s*$")
#: errors whose message says it all (the user's data, paths, settings): shown without their type
_BARE = ("DatasetError", "ValueError", "FileNotFoundError", "UsageError")


def root_cause(err: BaseException) -> str:
    """The innermost error's one line (Ray wraps an actor's ``__init__`` error with its traceback):
    ``message`` for a data/setting error, ``Type: message`` for others (CUDA, out of memory)."""
    text = str(err)
    found = [m for m in (_ERROR_LINE.match(line) for line in text.splitlines()) if m]
    found = [m for m in found if m.group(1) not in ("RayActorError", "ActorDiedError", "RayTaskError")] or found
    if found:
        kind, message = found[-1].group(1), found[-1].group(2)
        return message if kind in _BARE else f"{kind}: {message}"
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__

