"""The run's supernet actors: start them (the one-shot supernet and, under few-shot NAS, its
sub-supernets), tell their final facts, stop them; and the work-unit trainable sized for the run.

Used by :class:`raynas.driver.SearchExperiment` (and the truth experiment's trainable); the
actors' bodies are :mod:`raynas.actor` / :mod:`raynas.worker`.
"""

from __future__ import annotations

from pathlib import Path

from raynas.errors import UsageError


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def start_supernets(config: dict, run_dir: Path, res: dict, space, actor_gpus: float, *,
                     resume: bool = False) -> tuple[dict, dict, list]:
    """Start the one-shot supernet's actor (id 0) and, under few-shot NAS, one actor per
    sub-supernet (ids 1..K) in a placement group. Returns the facts of supernet 0 (plus the
    few-shot layout) and the resources section, adjusted so the actors fit the cluster."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from raynas.actor import create_supernet_actor

    edges = config["searcher"].get("few_shot")
    regions = space.split(space.parse_edges(edges)) if edges else []
    # one read of the row log for every actor (a 2-edge split has 26)
    trained = _trained_supernets(run_dir) if resume else set()
    res = dict(res)
    if regions:
        # K + 1 actors and up to K concurrent light trials must fit the cluster's CPUs
        res["max_concurrent"] = max(res["max_concurrent"], len(regions))
        cpus = float(ray.cluster_resources().get("CPU", 1))
        spare = cpus - res["max_concurrent"] * res["trial_cpus"] - res["standalone_cpus"]
        res["actor_cpus"] = round(max(0.05, min(res["actor_cpus"], spare / (len(regions) + 1))), 2)
    worker_kwargs = dict(config["supernet"], space=config["space"], dataset=config["dataset"],
                         data_dir=config["data_dir"], data_options=config["data_options"], seed=config["seed"],
                         snapshot_dir=str(run_dir / "supernets" / "0"),
                         # a resumed run continues its supernets: a missing snapshot is an error, never a silent restart
                         expect_snapshot=resume and 0 in trained)
    actors = [create_supernet_actor(config["run_id"], 0, worker_kwargs, num_cpus=res["actor_cpus"],
                                    num_gpus=actor_gpus, max_restarts=res["max_restarts"])]
    try:
        info = ray.get(actors[0].info.remote())
    except ray.exceptions.RayActorError as err:
        # no restart either: a shared Ray (a test session, a cluster) keeps no broken named actor
        ray.kill(actors[0], no_restart=True)
        raise UsageError(f"the supernet actor could not start: {_root_cause(err)}") from None
    if not regions:
        return info, res, actors
    steps = config["searcher"].get("few_shot_steps") or max(1, info["total_steps"] // len(regions))
    bundle = {"CPU": res["actor_cpus"], **({"GPU": actor_gpus} if actor_gpus else {})}
    group = placement_group([bundle] * len(regions), strategy=res["placement_strategy"],
                            name=f"{config['run_id']}/sub-supernets")
    try:
        ray.get(group.ready(), timeout=res["placement_timeout_s"])
    except ray.exceptions.GetTimeoutError:
        raise UsageError(
            f"the cluster cannot place {len(regions)} sub-supernet actors of {bundle} "
            f"(strategy {res['placement_strategy']}) within {res['placement_timeout_s']} s; "
            "lower resources.actor_cpus/actor_gpus or add nodes"
        ) from None
    for k, region in enumerate(regions, start=1):
        kwargs = dict(worker_kwargs, allowed_ops=[list(a) for a in region.allowed_ops], total_steps=steps,
                      epochs=None, snapshot_dir=str(run_dir / "supernets" / str(k)),
                      expect_snapshot=resume and k in trained,
                      init_from=str(run_dir / "supernets" / "0" / "snapshot.pt"))
        strategy = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=k - 1)
        actors.append(create_supernet_actor(config["run_id"], k, kwargs, num_cpus=res["actor_cpus"],
                                            num_gpus=actor_gpus, max_restarts=res["max_restarts"],
                                            scheduling_strategy=strategy))
    nodes = ray.get([a.node_id.remote() for a in actors])
    info["few_shot"] = {"edges": space.parse_edges(edges), "sub_supernets": len(regions), "steps": steps,
                        "strategy": res["placement_strategy"], "actor_cpus": res["actor_cpus"],
                        "nodes": nodes, "regions": [[list(a) for a in r.allowed_ops] for r in regions]}
    return info, res, actors


def _trained_supernets(run_dir: Path) -> set[int]:
    """The supernets with a train row in the run's row log (their snapshots must exist)."""
    from raynas.rowlog import read_records

    return {r.get("supernet", 0) for r in read_records(run_dir) if r.get("kind") == "train" and r.get("steps", 1) > 0}


def work_unit_trainable(run: dict, res: dict, *, standalone_gpus: float):
    """The work-unit trainable of a run, each unit sized by its kind (``res``: the resources section)."""
    from ray import tune

    from raynas.trainable import unit_resources, work_unit

    return tune.with_resources(
        tune.with_parameters(work_unit, run=run),
        lambda unit: unit_resources(unit, trial_cpus=res["trial_cpus"], standalone_cpus=res["standalone_cpus"],
                                    standalone_gpus=standalone_gpus),
    )


def _root_cause(err: BaseException) -> str:
    """The innermost error's one-line message (Ray wraps an actor's __init__ error twice)."""
    text = str(err)
    for line in text.splitlines():
        for marker in ("DatasetError: ", "ValueError: ", "FileNotFoundError: "):
            if marker in line:
                return line.split(marker, 1)[1].strip()
    return text.splitlines()[0] if text else type(err).__name__


def final_info(config: dict, info: dict) -> dict:
    """The actor's facts at the end (device, BN mode, data hash); falls back to the start's."""
    import ray

    from raynas.actor import get_supernet_actor

    if "total_steps" not in info:
        return info
    try:
        return {**ray.get(get_supernet_actor(config["run_id"], 0).info.remote()), "few_shot": info.get("few_shot")}
    except Exception:  # the actor may be gone after a failure; the start's facts still hold
        return info


def stop_supernets(config: dict, info: dict) -> None:
    """Free the run's actors and placement group: their state is in the snapshots (a shared
    Ray, a test session or a cluster, runs many searches)."""
    import ray
    from ray.util import get_placement_group, remove_placement_group

    from raynas.actor import get_supernet_actor

    if "total_steps" not in info:
        return
    count = 1 + (info.get("few_shot") or {}).get("sub_supernets", 0)
    for k in range(count):
        try:
            ray.kill(get_supernet_actor(config["run_id"], k))
        except ValueError:  # already gone
            pass
    if count > 1:
        try:
            remove_placement_group(get_placement_group(f"{config['run_id']}/sub-supernets"))
        except ValueError:
            pass
