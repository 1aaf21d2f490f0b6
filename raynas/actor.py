"""SupernetActor: a supernet's weights, optimizer and data, held in one Ray actor.

The body is :class:`raynas.worker.SupernetWorker`; this module only makes it an actor, places it
on the device Ray grants (a whole or fractional GPU, else CPU with as many torch threads as CPUs
granted) and names it so trials can look it up. Ray restarts a dead actor (``max_restarts``) by
calling ``__init__`` again, which finds the run's last snapshot and resumes from it.
"""

from __future__ import annotations

from typing import Any

import ray

from raynas.worker import SupernetWorker

NAMESPACE = "raynas"


class _SupernetActor(SupernetWorker):
    def __init__(self, **worker_kwargs: Any) -> None:
        # Actors with 0 GPUs can still see CUDA devices: use one only when Ray granted it.
        if worker_kwargs.get("device") is None:
            worker_kwargs["device"] = "cuda" if ray.get_gpu_ids() else "cpu"
        if worker_kwargs.get("num_threads") is None:
            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
            worker_kwargs["num_threads"] = max(1, int(cpus))
        super().__init__(**worker_kwargs)

    def node_id(self) -> str:
        """The Ray node this actor runs on (placement checks, manifests)."""
        return ray.get_runtime_context().get_node_id()


SupernetActor = ray.remote(_SupernetActor)


def actor_name(run_id: str, supernet: int) -> str:
    return f"{run_id}/supernet-{supernet}"


def create_supernet_actor(
    run_id: str,
    supernet: int,
    worker_kwargs: dict,
    *,
    num_cpus: float = 1,
    num_gpus: float = 0,
    max_restarts: int = 3,
    scheduling_strategy: Any = None,
):
    """Start (or, if it already runs, return) the named actor of one (sub-)supernet."""
    options = dict(
        name=actor_name(run_id, supernet),
        namespace=NAMESPACE,
        get_if_exists=True,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        max_restarts=max_restarts,
        # a call interrupted by a restart is retried on the restarted actor; work units are
        # addressed by version, so a retried train call only does the missing steps
        max_task_retries=max_restarts,
    )
    if scheduling_strategy is not None:
        options["scheduling_strategy"] = scheduling_strategy
    return SupernetActor.options(**options).remote(**worker_kwargs)


def get_supernet_actor(run_id: str, supernet: int = 0):
    return ray.get_actor(actor_name(run_id, supernet), namespace=NAMESPACE)
