"""What a run asks of the cluster, and its supernet actors.

- :func:`cluster_view`: the cluster as the search will have it: its live nodes' resources, the
  autoscaler's node types where Ray (its cluster config) or the cluster launcher (the head's
  ``~/ray_bootstrap_config.yaml``) says them, and whether an autoscaler can add nodes.
- :func:`plan_resources`: every request of the run sized per node (:class:`Plan`): a supernet
  actor's, a light trial's, a standalone training's, and how many supernet actors live at once.
  A request that no node could ever hold, on a cluster that cannot grow, is a
  :class:`~raynas.errors.UsageError` at once, before anything starts.
- :class:`SupernetActors`: the run's actors, made when the search first needs one and killed when
  it no longer does (:meth:`raynas.searchers.base.WorkUnitSearcher.supernets_needed`): the
  one-shot supernet once its sub-supernets take over, each sub-supernet once scored, all of
  them when the search trains standalone. A made-again actor resumes from its snapshot.
- :class:`ResourceWatch`: the Tune callback that keeps the actors so and ends the session with
  one line (status ``failed``, the run resumable) when an actor dies in its start or does not
  start within the timeout, or a unit waits for a node the cluster does not have.
- :func:`demands`: the requests a run makes, phase by phase (cluster files, autoscaler checks).

Used by :class:`raynas.driver.SearchExperiment` (and the truth experiment's trainable); the
actors' bodies are :mod:`raynas.actor` / :mod:`raynas.worker`. Nothing here prints.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ray.tune import Callback

from raynas.errors import SearchFailed, UsageError

#: seconds an actor may take to start, or a unit may wait for a node the cluster lacks
#: (``resources.placement_timeout_s`` unset): a cluster of the nodes it has / one that grows
TIMEOUT_S, AUTOSCALED_TIMEOUT_S = 120.0, 900.0
#: seconds a placed actor may take in its ``__init__`` (loading its data, building its supernet)
#: beyond the placement timeout, before the run fails as stuck
INIT_TIMEOUT_S = 600.0
#: the smallest CPU share of an actor (a logical share: the actor still runs one thread)
MIN_ACTOR_CPUS = 0.05
#: where the cluster launcher leaves the cluster's config on the head node
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"
#: node types the read-only autoscaler of a `ray start` / local cluster names after node ids
_NODE_ID_TYPE = re.compile(r"node_[0-9a-f]{16,}")
_TOLERANCE = 1e-6


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


# --- the cluster ------------------------------------------------------------------------------------
def plain_resources(resources: dict) -> dict[str, float]:
    """The resources a request can ask for (CPU, GPU, custom ones): no memory, node or accelerator
    labels, nothing at 0."""
    out = {}
    for key, value in dict(resources).items():
        key = str(key)
        if key in ("memory", "object_store_memory") or key.startswith(("node:", "accelerator_type:")):
            continue
        if float(value) > 0:
            out[key] = float(value)
    return out


def format_resources(resources: dict) -> str:
    """``{CPU: 1, GPU: 1}``: CPU and GPU first, then the others by name."""
    order = {"CPU": 0, "GPU": 1}
    items = sorted(((k, v) for k, v in resources.items() if v), key=lambda kv: (order.get(kv[0], 2), kv[0]))
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in items) + "}"


def _fits(ask: dict, have: dict) -> bool:
    return all(have.get(k, 0.0) + _TOLERANCE >= v for k, v in ask.items() if v > 0)


def _ask(cpus: float, gpus: float = 0.0) -> dict[str, float]:
    return {"CPU": float(cpus), **({"GPU": float(gpus)} if gpus else {})}


@dataclass(frozen=True)
class NodeType:
    """One node type an autoscaler can add: its resources and at most how many (-1: no bound)."""

    name: str
    resources: dict
    max_workers: int


@dataclass(frozen=True)
class ClusterView:
    """The cluster the search will have: ``nodes`` (the live nodes' resources), ``node_types``
    (what an autoscaler can add, where known) and ``autoscaler`` (True: nodes can be added;
    False: the live nodes are all there will be; None: not known). ``unbounded``: a cluster that
    can add any node asked for (:func:`demands` without a view)."""

    nodes: tuple = ()
    node_types: tuple = ()
    autoscaler: bool | None = False
    unbounded: bool = False

    @classmethod
    def from_node_types(cls, available_node_types: dict, head_node_type: str | None = None) -> "ClusterView":
        """The view of a cluster file (``available_node_types`` of a launcher YAML): its head is
        live, every type can be added up to its ``max_workers``."""
        types = tuple(NodeType(str(name), plain_resources(t.get("resources") or {}), int(t.get("max_workers", 0) or 0))
                      for name, t in available_node_types.items())
        head = available_node_types.get(head_node_type, {}) if head_node_type else {}
        nodes = (plain_resources(head.get("resources") or {}),) if head_node_type else ()
        return cls(nodes, types, True)

    def shapes(self) -> list[dict]:
        """Every node the search can run on: the live ones and the types that can be added."""
        return [*self.nodes, *(t.resources for t in self.node_types if t.max_workers != 0)]

    def can_hold(self, ask: dict) -> bool | None:
        """Whether some node (live or addable) holds ``ask``; None where the cluster can grow into
        nodes this view does not know."""
        if self.unbounded or any(_fits(ask, s) for s in self.shapes()):
            return True
        return None if self.autoscaler is not False and not self.node_types else False

    def total(self, key: str) -> float:
        """``key`` over the live nodes."""
        return sum(n.get(key, 0.0) for n in self.nodes)

    def largest(self, key: str, *, holding: dict | None = None) -> float:
        """The most ``key`` of one node (live or addable) that also holds ``holding``."""
        return max((s.get(key, 0.0) for s in self.shapes() if holding is None or _fits(holding, s)), default=0.0)

    def capacity(self, key: str) -> float | None:
        """The most ``key`` the cluster can have at once: the live nodes', or the node types'
        bound where an autoscaler adds them (None: no bound)."""
        if self.unbounded:
            return None
        live = self.total(key)
        if self.autoscaler is not True or not self.node_types:
            return live
        if any(t.max_workers < 0 and t.resources.get(key, 0) > 0 for t in self.node_types):
            return None
        return max(live, sum(t.max_workers * t.resources.get(key, 0.0) for t in self.node_types if t.max_workers > 0))

    def describe(self) -> str:
        """One clause: what the cluster offers."""
        counts = Counter(format_resources(n) for n in self.nodes)
        nodes = ", ".join(f"{c} node{'s' if c > 1 else ''} {r}" for r, c in counts.items()) or "no live node"
        addable = [t for t in self.node_types if t.max_workers != 0]
        if self.unbounded:
            return "the cluster adds any node asked for"
        if addable:
            return f"the cluster has {nodes}; its autoscaler adds " + ", ".join(
                f"{t.name} {format_resources(t.resources)} (up to {t.max_workers if t.max_workers > 0 else 'any number'})"
                for t in addable)
        return f"the cluster has {nodes}" + {True: "; an autoscaler adds nodes (of types raynas cannot see)",
                                             False: " and no autoscaler to add others",
                                             None: "; no autoscaler seen"}[self.autoscaler]


def cluster_view(*, bootstrap_config: str | Path = BOOTSTRAP_CONFIG) -> ClusterView:
    """The connected cluster's :class:`ClusterView` (Ray must be initialised)."""
    import ray

    nodes = tuple(plain_resources(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive"))
    types = _node_types(bootstrap_config)
    return ClusterView(nodes, types, _autoscaler(types))


def _node_types(bootstrap_config: str | Path) -> tuple:
    """The autoscaler's node types: from Ray's cluster config (an autoscaler that reports it to
    the GCS), else from the cluster launcher's config on this (head) node, else none known."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # an older GCS, a Ray client
        config = None
    if config is not None and config.node_group_configs:
        return tuple(NodeType(g.name, plain_resources(dict(g.resources)), int(g.max_count))
                     for g in config.node_group_configs)
    path = Path(bootstrap_config).expanduser()
    if not path.is_file():
        return ()
    try:
        import yaml

        doc = yaml.safe_load(path.read_text()) or {}
        return tuple(NodeType(str(name), plain_resources(t.get("resources") or {}), int(t.get("max_workers", 0) or 0))
                     for name, t in (doc.get("available_node_types") or {}).items())
    except Exception:  # not a launcher config after all
        return ()


def _autoscaler(types: tuple) -> bool | None:
    """Whether an autoscaler can add nodes: the node types say so where known; else a v2
    autoscaler reports to the GCS, or the v1 monitor's report names real node types (a `ray
    start` or local cluster's read-only monitor names them after node ids: no autoscaler)."""
    import ray

    if types:
        return any(t.max_workers != 0 for t in types)
    try:
        node = ray._private.worker.global_worker.node
        if node.is_head() and not node._ray_params.autoscaling_config:
            return False  # this process started the head itself (an embedded local Ray): no autoscaler
    except Exception:
        pass
    try:
        from ray.autoscaler.v2.sdk import get_cluster_status

        status = get_cluster_status(ray.get_runtime_context().gcs_address)
        if status.stats.autoscaler_version not in (None, "", "0") or status.pending_launches or status.pending_nodes:
            return True
    except Exception:
        pass
    report = _monitor_report()
    if report is None:
        return None
    names = set(report.get("active_nodes") or {}) | set((report.get("node_type_mapping") or {}).values())
    if report.get("pending_launches") or report.get("pending_nodes") or any(
            not _NODE_ID_TYPE.fullmatch(str(n)) for n in names):
        return True
    return False


def _monitor_report(wait_s: float = 2.0) -> dict | None:
    """The v1 monitor's last autoscaler report (the GCS key ``ray status`` reads)."""
    try:
        from ray._private import ray_constants
        from ray.experimental.internal_kv import _internal_kv_get
    except ImportError:
        return None
    deadline = time.monotonic() + wait_s
    while True:
        try:
            raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        except Exception:
            return None
        if raw:
            try:
                return json.loads(raw).get("autoscaler_report") or None
            except ValueError:
                return None
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)


def _pending_bundles() -> list[tuple[dict, int]]:
    """Ray's pending resource demands (bundle, count): what waits for resources, as the
    autoscaler sees it."""
    import ray

    try:
        from ray.autoscaler.v2.sdk import get_cluster_status

        demand = get_cluster_status(ray.get_runtime_context().gcs_address).resource_demands
    except Exception:
        return []
    return [(plain_resources(request.bundle), int(request.count))
            for group in [*demand.ray_task_actor_demand, *demand.placement_group_demand]
            for request in group.bundles_by_count]


def pending_demands() -> str:
    """Ray's pending resource demands, as the autoscaler sees them (one clause; '' if none)."""
    counts: Counter = Counter()
    for bundle, count in _pending_bundles():
        counts[format_resources(bundle)] += count
    if not counts:
        return ""
    return "Ray's pending demands: " + ", ".join(f"{r} x{c}" for r, c in counts.most_common())


def _same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(abs(a[k] - b[k]) <= _TOLERANCE for k in a)


# --- the plan ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """A run's requests, sized for its cluster."""

    #: the resources section as sized (``actor_cpus``, ``standalone_cpus``, GPUs, ``max_concurrent``,
    #: ``max_actors``): what the trainable and the searcher get
    res: dict
    #: one supernet actor's request ({} for a method without a supernet)
    actor: dict
    #: a light trial's (train/score unit)
    trial: dict
    #: a standalone training's or proxy unit's
    standalone: dict
    #: supernet actors alive at once (the searcher's supernet limit)
    actors_at_once: int
    #: seconds an actor may take to start, or a unit wait for a node the cluster lacks
    timeout_s: float
    view: ClusterView = field(repr=False, default_factory=ClusterView)

    @property
    def standalone_gpus(self) -> float:
        return self.standalone.get("GPU", 0.0)


def _first(*values):
    return next(v for v in values if v is not None)


def _floor2(x: float) -> float:
    return math.floor(x * 100 + 1e-9) / 100


def _packs(items: list[dict], nodes: Sequence[dict]) -> bool:
    """Whether ``items`` fit onto ``nodes`` (first fit, largest first)."""
    free = [dict(n) for n in nodes]
    for item in sorted(items, key=lambda r: (r.get("GPU", 0.0), r.get("CPU", 0.0)), reverse=True):
        for node in free:
            if _fits(item, node):
                for k, v in item.items():
                    node[k] = node.get(k, 0.0) - v
                break
        else:
            return False
    return True


def _actor_share(most: float, actors: int, trials: int, trial_cpus: float, gpus: float, nodes: Sequence[dict]):
    """The largest CPU share (<= ``most``) with which ``actors`` actors and ``trials`` light
    trials pack onto ``nodes`` at once; None if none does."""
    free = sum(n.get("CPU", 0.0) for n in nodes) - trials * trial_cpus
    share = _floor2(min(most, free / actors))
    while share >= MIN_ACTOR_CPUS:
        if _packs([_ask(share, gpus)] * actors + [_ask(trial_cpus)] * trials, nodes):
            return share
        share = min(_floor2(share * 0.8), round(share - 0.01, 2))
    return None


def _infeasible(what: str, ask: dict, view: ClusterView, hint: str) -> UsageError:
    return UsageError(f"resources: {what} asks for {format_resources(ask)}, which no node can ever hold: "
                      f"{view.describe()}; {hint}")


def _hint(ask: dict, cpus_key: str, gpus_key: str) -> str:
    if ask.get("GPU"):
        return (f"ask for fewer GPUs (--gpus 0 runs on CPU; or resources.{gpus_key}) or use a cluster whose "
                "nodes (or node types) have them")
    return f"lower resources.{cpus_key} or add bigger nodes"


def plan_resources(config: dict, view: ClusterView, *, uses_supernet: bool = True, sub_supernets: int = 0) -> Plan:
    """The run's requests sized for ``view`` (see the module docstring).

    GPUs: ``resources.gpus`` (``--gpus``) for supernet actors and standalone trainings alike,
    ``actor_gpus`` / ``standalone_gpus`` for one role, else 1 if a live node has a GPU, else 0.
    CPU shares are bounds, shrunk per node: a standalone training to the largest node (that has
    its GPUs); an actor so that it and a light trial share the largest node; on a cluster that
    cannot grow, so that the actors alive at once and ``max_concurrent`` light trials pack onto
    its nodes. Actors alive at once: ``resources.max_actors``, else every supernet the search uses
    at once (the one-shot one, or all ``sub_supernets``), but for GPU actors no more than the
    cluster's GPUs (live, or the autoscaler's node types' bound) hold, at least one. On a fixed
    cluster that cannot pack them all, fewer (the others wait their turn). Raises
    :class:`UsageError` for a request no node can ever hold.
    """
    res = dict(config["resources"])
    present = 1.0 if view.total("GPU") > 0 else 0.0
    gpus = res.get("gpus")
    actor_gpus = float(_first(res.get("actor_gpus"), gpus, present))
    standalone_gpus = float(_first(res.get("standalone_gpus"), gpus, present))
    fixed = view.autoscaler is not True and not view.unbounded
    trial_cpus = float(res["trial_cpus"])

    def shrunk(want: float, most: float) -> float:
        return min(float(want), most) if most > 0 else float(want)

    standalone = _ask(shrunk(res["standalone_cpus"], view.largest("CPU", holding=_ask(0, standalone_gpus))),
                      standalone_gpus)
    largest = view.largest("CPU", holding=_ask(0, actor_gpus))
    most = shrunk(res["actor_cpus"], largest - trial_cpus if largest > trial_cpus else largest)
    actor = _ask(most, actor_gpus)
    # what no node can ever hold fails now, before anything starts (the actor first: it starts first)
    for what, ask, keys in (("a supernet actor", actor, ("actor_cpus", "actor_gpus")),
                            ("a standalone training", standalone, ("standalone_cpus", "standalone_gpus"))):
        if (uses_supernet or ask is standalone) and view.can_hold(ask) is False:
            raise _infeasible(what, ask, view, _hint(ask, *keys))
    timeout = float(res.get("placement_timeout_s") or (TIMEOUT_S if fixed else AUTOSCALED_TIMEOUT_S))
    res.update(standalone_cpus=standalone["CPU"], standalone_gpus=standalone_gpus, actor_gpus=actor_gpus)
    if not uses_supernet:
        res["max_actors"] = 0
        return Plan(res, {}, _ask(trial_cpus), standalone, 0, timeout, view)
    K = int(sub_supernets)
    wanted = max(1, K)
    if res.get("max_actors") is not None:
        limit = min(wanted, int(res["max_actors"]))
    elif actor_gpus > 0:
        cap = view.capacity("GPU")
        limit = wanted if cap is None else max(1, min(wanted, int(cap / actor_gpus + _TOLERANCE)))
    else:
        limit = wanted
    mc = int(res["max_concurrent"])

    def concurrent(actors: int) -> int:
        # under few-shot, one unit per sub-supernet alive can run at once
        return max(mc, min(K, actors)) if K else mc

    share = most
    if fixed:
        for actors in range(limit, 0, -1):
            fitted = _actor_share(most, actors, concurrent(actors), trial_cpus, actor_gpus, view.nodes)
            if fitted is not None:
                limit, share = actors, fitted
                break
        else:  # nothing packs: ask as sized per node; the timeout says what is missing
            limit = 1
    res.update(actor_cpus=share, max_concurrent=concurrent(limit), max_actors=limit)
    return Plan(res, _ask(share, actor_gpus), _ask(trial_cpus), standalone, limit, timeout, view)


def demands(config: dict, view: ClusterView | None = None, *, phase: str = "supernets") -> list[dict]:
    """The resource requests a run of ``config`` (:func:`raynas.settings.make_config`) makes at
    once in one ``phase``, one dict per request, as Ray's autoscaler sees them:

    - ``"supernets"``: each supernet actor alive at once (the one-shot supernet's, or the
      sub-supernets' of few-shot NAS) and each light trial calling them (``max_concurrent``);
      empty for a method without a supernet;
    - ``"standalone"``: each standalone training (or TE-NAS proxy unit) at once
      (``max_concurrent``); the actors are gone by then.

    ``view``: the cluster to size for (:func:`cluster_view`, or
    :meth:`ClusterView.from_node_types` of a cluster file's ``available_node_types``); without
    one, a cluster that adds any node asked for (each request at its setting; GPUs only where
    ``resources.gpus`` / ``actor_gpus`` / ``standalone_gpus`` ask for them)."""
    from raynas.settings import _traits
    from raynas.spaces import get_space

    if phase not in ("supernets", "standalone"):
        raise ValueError(f"phase={phase!r}; expected 'supernets' or 'standalone'")
    view = view if view is not None else ClusterView(autoscaler=True, unbounded=True)
    edges = config["searcher"].get("few_shot")
    space = get_space(config["space"])
    subs = len(space.split(space.parse_edges(edges))) if edges else 0
    uses = getattr(_traits(config["method"]), "uses_supernet", True)
    plan = plan_resources(config, view, uses_supernet=uses, sub_supernets=subs)
    if phase == "standalone":
        return [dict(plan.standalone) for _ in range(plan.res["max_concurrent"])]
    if not uses:
        return []
    return [dict(plan.actor) for _ in range(plan.actors_at_once)] + [dict(plan.trial) for _ in range(plan.res["max_concurrent"])]


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

    # --- making and killing -------------------------------------------------------------------------
    def worker_kwargs(self, k: int) -> dict:
        """The worker settings of supernet ``k`` (a resumed or made-again actor must find its snapshot)."""
        snapshots = self.run_dir / "supernets"
        expect = k in self.trained or (self.searcher is not None and getattr(self.searcher, "trained_", {}).get(k, 0) > 0)
        kwargs = dict(self.base, snapshot_dir=str(snapshots / str(k)), expect_snapshot=bool(expect))
        if k > 0:
            region = self.regions[k - 1]
            kwargs.update(allowed_ops=[list(a) for a in region.allowed_ops], total_steps=self.steps, epochs=None,
                          init_from=str(snapshots / "0" / "snapshot.pt"))
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
        live.node = self.nodes[k] = ray.get(live.ready)
        return True

    # --- the session --------------------------------------------------------------------------------
    def start(self) -> dict:
        """Make supernet 0's actor and return its facts (plus the few-shot layout). Raises
        :class:`UsageError` (one line) if it cannot start: nothing of the session began."""
        import ray

        self._make(0)
        live = self.live[0]
        facts = live.actor.info.remote()
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
        if self.regions:
            self.steps = self.config["searcher"].get("few_shot_steps") or max(1, info["total_steps"] // len(self.regions))
            info["few_shot"] = {"edges": self.edges, "sub_supernets": len(self.regions), "steps": self.steps,
                                "strategy": self.plan.res.get("placement_strategy", "SPREAD"),
                                "actor_cpus": self.plan.actor["CPU"], "actor_gpus": self.plan.actor.get("GPU", 0.0),
                                "max_actors": self.plan.actors_at_once,
                                "regions": [[list(a) for a in r.allowed_ops] for r in self.regions]}
        return info

    def attach(self, searcher) -> None:
        """From now on the actors follow ``searcher``'s needs (its limit: the plan's actors at once)."""
        self.searcher = searcher
        if hasattr(searcher, "set_supernet_limit"):
            searcher.set_supernet_limit(self.plan.actors_at_once)
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

    def _late(self, k: int, live: _Live, now: float | None = None) -> str | None:
        """One line if actor ``k`` is late: still waiting for resources (its request among Ray's
        pending demands) after the timeout, or not started at all :data:`INIT_TIMEOUT_S` later
        (a worker process that does not come up, an ``__init__`` that hangs)."""
        waited = (time.monotonic() if now is None else now) - live.asked
        if waited <= self.plan.timeout_s:
            return None
        if any(_same(self.ask(k), bundle) for bundle, _ in _pending_bundles()):
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
        return _ask(options["num_cpus"], options.get("num_gpus", 0.0))

    def forget_dead(self) -> None:
        """After a unit failed: an actor Ray gave up restarting is forgotten, so that the unit's
        re-issue makes it again from its snapshot."""
        from raynas.actor import get_supernet_actor

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
                + f"; {_hint(ask, 'actor_cpus', 'actor_gpus')}, or raise resources.placement_timeout_s")

    def stop(self, info: dict | None = None) -> dict:
        """Kill every actor of the run; return ``info`` with the few-shot actors' nodes and history."""
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
        self.checked = self.looked = 0.0

    def __getstate__(self) -> dict:
        # Tune pickles its callbacks with the run config: the actors and searcher are this driver's
        return {"plan": self.plan, "actors": None, "searcher": None, "pending": {}, "checked": 0.0, "looked": 0.0}

    def attach(self, searcher) -> None:
        self.searcher = searcher
        if self.actors is not None:
            self.actors.attach(searcher)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
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
        if not late or now - self.looked < 5.0:
            return None
        self.looked = now
        running = any(t.status == Trial.RUNNING for t in trials)
        nodes = [plain_resources(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]
        for trial in late:
            ask = plain_resources(trial.placement_group_factory.required_resources)
            if any(_fits(ask, n) for n in nodes):
                # a live node can hold it: it waits its turn behind units that run, or its trial
                # process is starting; stuck only if nothing has run for much longer
                if running or now - self.pending[trial.trial_id] <= self.plan.timeout_s + INIT_TIMEOUT_S:
                    continue
            demand = pending_demands()
            kind = trial.config.get("kind", "unit")
            return (f"work unit {trial.config.get('key', trial.trial_id)} ({kind}) asked for {format_resources(ask)} "
                    f"and could not be placed within {self.plan.timeout_s:g} s; {cluster_view().describe()}"
                    + (f"; {demand}" if demand else "")
                    + f"; {_hint(ask, 'standalone_cpus' if kind in ('standalone', 'proxy') else 'trial_cpus', 'standalone_gpus')}"
                    ", or raise resources.placement_timeout_s")
        return None


# --- the trainable ----------------------------------------------------------------------------------
def work_unit_trainable(run: dict, res: dict, *, standalone_gpus: float):
    """The work-unit trainable of a run, each unit sized by its kind (``res``: the resources section)."""
    from ray import tune

    from raynas.trainable import unit_resources, work_unit

    return tune.with_resources(
        tune.with_parameters(work_unit, run=run),
        lambda unit: unit_resources(unit, trial_cpus=res["trial_cpus"], standalone_cpus=res["standalone_cpus"],
                                    standalone_gpus=standalone_gpus),
    )


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
