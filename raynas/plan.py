"""What a run asks of the cluster, sized per node.

- :func:`plan_resources`: every request of the run (:class:`Plan`): a supernet actor's, a light
  trial's, a standalone training's, and how many supernet actors live at once. A request that no
  node could ever hold, on a cluster that cannot grow, is a :class:`~raynas.errors.UsageError` at
  once, before anything starts.
- :func:`demands`: the requests a run makes, phase by phase (cluster files, autoscaler checks).

Pure arithmetic over a :class:`~raynas.cluster.ClusterView`; nothing here talks to Ray or prints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from raynas.cluster import TOLERANCE, ClusterView, request, fits, format_resources
from raynas.errors import UsageError

#: seconds an actor may take to start, or a unit may wait for a node the cluster lacks
#: (``resources.placement_timeout_s`` unset): a cluster of the nodes it has / one that grows
TIMEOUT_S, AUTOSCALED_TIMEOUT_S = 120.0, 900.0
#: the smallest CPU share of an actor (a logical share: the actor still runs one thread)
MIN_ACTOR_CPUS = 0.05


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
            if fits(item, node):
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
        if _packs([request(share, gpus)] * actors + [request(trial_cpus)] * trials, nodes):
            return share
        share = min(_floor2(share * 0.8), round(share - 0.01, 2))
    return None


def _infeasible(what: str, ask: dict, view: ClusterView, hint: str) -> UsageError:
    return UsageError(f"resources: {what} asks for {format_resources(ask)}, which no node can ever hold: "
                      f"{view.describe()}; {hint}")


def resource_hint(ask: dict, cpus_key: str, gpus_key: str) -> str:
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

    standalone = request(shrunk(res["standalone_cpus"], view.largest("CPU", holding=request(0, standalone_gpus))),
                      standalone_gpus)
    largest = view.largest("CPU", holding=request(0, actor_gpus))
    most = shrunk(res["actor_cpus"], largest - trial_cpus if largest > trial_cpus else largest)
    actor = request(most, actor_gpus)
    # what no node can ever hold fails now, before anything starts (the actor first: it starts first)
    for what, ask, keys in (("a supernet actor", actor, ("actor_cpus", "actor_gpus")),
                            ("a standalone training", standalone, ("standalone_cpus", "standalone_gpus"))):
        if (uses_supernet or ask is standalone) and view.can_hold(ask) is False:
            raise _infeasible(what, ask, view, resource_hint(ask, *keys))
    timeout = float(res.get("placement_timeout_s") or (TIMEOUT_S if fixed else AUTOSCALED_TIMEOUT_S))
    res.update(standalone_cpus=standalone["CPU"], standalone_gpus=standalone_gpus, actor_gpus=actor_gpus)
    if not uses_supernet:
        res["max_actors"] = 0
        return Plan(res, {}, request(trial_cpus), standalone, 0, timeout, view)
    K = int(sub_supernets)
    wanted = max(1, K)
    if res.get("max_actors") is not None:
        limit = min(wanted, int(res["max_actors"]))
    elif actor_gpus > 0:
        cap = view.capacity("GPU")
        limit = wanted if cap is None else max(1, min(wanted, int(cap / actor_gpus + TOLERANCE)))
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
    return Plan(res, request(share, actor_gpus), request(trial_cpus), standalone, limit, timeout, view)


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


