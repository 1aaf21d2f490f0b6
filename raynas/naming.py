"""Names of a run's Ray actors, without importing torch: light trials (``train``/``score``
units) only look an actor up by name and call it, so their processes never load torch."""

from __future__ import annotations

NAMESPACE = "raynas"


def actor_name(run_id: str, supernet: int) -> str:
    return f"{run_id}/supernet-{supernet}"


def get_supernet_actor(run_id: str, supernet: int = 0):
    import ray

    return ray.get_actor(actor_name(run_id, supernet), namespace=NAMESPACE)
