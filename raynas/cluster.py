"""The cluster as a search will have it, read from a live Ray.

- :func:`cluster_view`: its live nodes' resources, the autoscaler's node types where Ray (its
  cluster config) or the cluster launcher (the head's ``~/ray_bootstrap_config.yaml``) says them,
  and whether an autoscaler can add nodes (:class:`ClusterView`, :class:`NodeType`).
- :func:`pending_demands`: what the cluster is waiting to place (for "does not start" errors).
- Request arithmetic shared by :mod:`raynas.plan` and :mod:`raynas.supernets`: a request's
  plain resources, its one-line form, whether it fits a node.

Nothing here prints.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

#: where the cluster launcher leaves the cluster's config on the head node
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"
#: node types the read-only autoscaler of a `ray start` / local cluster names after node ids
_NODE_ID_TYPE = re.compile(r"node_[0-9a-f]{16,}")
TOLERANCE = 1e-6


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


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


def fits(ask: dict, have: dict) -> bool:
    return all(have.get(k, 0.0) + TOLERANCE >= v for k, v in ask.items() if v > 0)


def request(cpus: float, gpus: float = 0.0) -> dict[str, float]:
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
        if self.unbounded or any(fits(ask, s) for s in self.shapes()):
            return True
        return None if self.autoscaler is not False and not self.node_types else False

    def total(self, key: str) -> float:
        """``key`` over the live nodes."""
        return sum(n.get(key, 0.0) for n in self.nodes)

    def largest(self, key: str, *, holding: dict | None = None) -> float:
        """The most ``key`` of one node (live or addable) that also holds ``holding``."""
        return max((s.get(key, 0.0) for s in self.shapes() if holding is None or fits(holding, s)), default=0.0)

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


def pending_bundles() -> list[tuple[dict, int]]:
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
    for bundle, count in pending_bundles():
        counts[format_resources(bundle)] += count
    if not counts:
        return ""
    return "Ray's pending demands: " + ", ".join(f"{r} x{c}" for r, c in counts.most_common())


def same_request(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(abs(a[k] - b[k]) <= TOLERANCE for k in a)

