"""SupernetActor: a supernet's weights, optimizer and data, held in one Ray actor.

The body is :class:`raynas.worker.SupernetWorker`; this module only makes it an actor (a class
that loads the worker, and torch, in the actor's process only), places it
on the device Ray grants (a whole or fractional GPU, else CPU with as many torch threads as CPUs
granted) and names it so trials can look it up. Ray restarts a dead actor (``max_restarts``) by
calling ``__init__`` again, which finds the run's last snapshot and resumes from it.

:func:`create_supernet_actor` reuses a live actor of the same name only when it was made with
the same supernet settings (:func:`raynas.worker.worker_settings`: all but device, threads and
``expect_snapshot``); otherwise it raises rather than hand back another run's supernet. It never
waits without a bound. Which actors live when, and how long one may take to start, is the
driver's (:class:`raynas.supernets.SupernetActors`): an actor is made when the search first
needs it and killed when it no longer does; a new one resumes from the supernet's snapshot.
"""

from __future__ import annotations

import time
from typing import Any

import ray

from raynas.naming import NAMESPACE, actor_name, get_supernet_actor  # noqa: F401 (re-exported: the names live there)


class _SupernetActor:
    """A :class:`raynas.worker.SupernetWorker` behind a Ray actor. The class itself imports
    nothing heavy: a process that only holds a handle (a light trial: Ray loads the actor's class
    to read its methods when a handle is deserialised) never loads torch; the worker, and torch,
    load in the actor's own process."""

    def __init__(self, **worker_kwargs: Any) -> None:
        from raynas.worker import SupernetWorker

        # Actors with 0 GPUs can still see CUDA devices: use one only when Ray granted it.
        if worker_kwargs.get("device") is None:
            worker_kwargs["device"] = "cuda" if ray.get_gpu_ids() else "cpu"
        if worker_kwargs.get("num_threads") is None:
            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
            worker_kwargs["num_threads"] = max(1, int(cpus))
        self.worker = SupernetWorker(**worker_kwargs)

    def train(self, *args: Any, **kwargs: Any) -> dict:
        """:meth:`raynas.worker.SupernetWorker.train`."""
        return self.worker.train(*args, **kwargs)

    def score(self, *args: Any, **kwargs: Any) -> list[dict]:
        """:meth:`raynas.worker.SupernetWorker.score`."""
        return self.worker.score(*args, **kwargs)

    def info(self) -> dict:
        """:meth:`raynas.worker.SupernetWorker.info`."""
        return self.worker.info()

    def settings(self) -> dict:
        """:meth:`raynas.worker.SupernetWorker.settings`."""
        return self.worker.settings()

    def node_id(self) -> str:
        """The Ray node this actor runs on (placement checks, manifests)."""
        return ray.get_runtime_context().get_node_id()


SupernetActor = ray.remote(_SupernetActor)


def _wait_until_released(name: str, timeout_s: float = 30.0) -> None:
    """Wait (briefly) until Ray no longer resolves ``name``: a killed actor frees its name a moment later."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return
        time.sleep(0.1)


def create_supernet_actor(
    run_id: str,
    supernet: int,
    worker_kwargs: dict,
    *,
    num_cpus: float = 1,
    num_gpus: float = 0,
    max_restarts: int = 3,
    scheduling_strategy: Any = None,
    timeout_s: float = 60.0,
):
    """Start (or, if it already runs, return) the named actor of one (sub-)supernet; returns at
    once (the actor starts in the background: its first call waits for it).

    An actor of that name that runs already is returned only if its settings equal
    ``worker_kwargs``' (device and threads aside); else ValueError naming the first that differs
    (also when that actor does not answer within ``timeout_s``: it is still starting elsewhere).
    """
    name = actor_name(run_id, supernet)
    try:
        existing = ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        existing = None
    if existing is not None:
        # imports torch (the worker's signature): only when there is an actor to compare with
        from raynas.worker import settings_difference, worker_settings

        wanted = worker_settings(worker_kwargs)
        try:
            have = ray.get(existing.settings.remote(), timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise ValueError(f"a supernet actor {name!r} exists but did not answer within {timeout_s:g} s (still "
                             "starting for another run with the same run id?); use a new run id") from None
        except ray.exceptions.RayActorError:
            # an actor of that name that died in its creation (a run that could not start): it
            # holds the name only until Ray has buried it; end it for good and start a new one
            ray.kill(existing, no_restart=True)
            _wait_until_released(name)
            existing, have = None, None
    if existing is not None:
        key = settings_difference(have, wanted)
        if key is not None:
            raise ValueError(f"a supernet actor {name!r} already runs with {key}={have.get(key)!r}; this run asks "
                             f"for {key}={wanted.get(key)!r} (another run with the same run id? use a new run id, "
                             "or the same settings)")
        return existing
    options = dict(
        name=name,
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

