"""The driver: one search from configuration to result tables.

``search(...)`` (and ``raynas search``) starts an embedded local Ray or joins a cluster, creates
the supernet actor(s), runs the method's searcher in a ``tune.Tuner`` over the work-unit
trainable, and writes the run's tables. ``resume=RUN_DIR`` continues a search whose driver died:
Tune restores its trials and the searcher's state, and the actors resume from their snapshots.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from raynas import __version__
from raynas.data import dataset_names
from raynas.results import build_tables, is_run_dir, write_json
from raynas.searchers import get_presets, get_searcher_class, method_names
from raynas.spaces import get_space, space_names

#: defaults of every search, under a method's preset and the user's overrides
DEFAULTS: dict[str, dict[str, Any]] = {
    "supernet": dict(bn_mode="batch", snapshot_every=None),
    "searcher": dict(),
    "resources": dict(actor_cpus=1.0, actor_gpus=None, trial_cpus=0.25, standalone_cpus=1.0,
                      standalone_gpus=None, max_concurrent=2, max_failures=2, max_restarts=3,
                      placement_strategy="SPREAD", placement_timeout_s=120),
}


class UsageError(ValueError):
    """Bad input from the user: the CLI prints it on one line and exits 2."""


def _merge(base: dict, extra: dict | None) -> dict:
    out = copy.deepcopy(base)
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def make_config(method: str, *, space: str = "nb201", dataset: str = "digits", data_dir: str | None = None,
                data_options: dict | None = None, preset: str = "small", seed: int = 0,
                overrides: dict | None = None) -> dict:
    """The full configuration of a search (validated names; sections merged)."""
    if method not in method_names():
        raise UsageError(f"unknown method {method!r}; expected one of: {', '.join(method_names())}")
    if space not in space_names():
        raise UsageError(f"unknown space {space!r}; expected one of: {', '.join(space_names())}")
    if dataset not in dataset_names():
        raise UsageError(f"unknown dataset {dataset!r}; expected one of: {', '.join(dataset_names())}")
    presets = get_presets(method)
    if preset not in presets:
        raise UsageError(f"unknown preset {preset!r} for method {method!r}; expected one of: {', '.join(sorted(presets))}")
    config = _merge(DEFAULTS, presets[preset])
    config = _merge(config, overrides)
    unknown = set(overrides or {}) - set(DEFAULTS)
    if unknown:
        raise UsageError(f"overrides: unknown sections {sorted(unknown)}; expected some of {sorted(DEFAULTS)}")
    if config["searcher"].get("candidates") is not None and not getattr(get_searcher_class(method), "takes_candidates", False):
        raise UsageError(f"--candidates: method {method!r} chooses its own candidates; expected one of: "
                         f"{', '.join(m for m in method_names() if getattr(get_searcher_class(m), 'takes_candidates', False))}")
    if "num_candidates" in config["searcher"] and config["searcher"]["num_candidates"] is None \
            and config["searcher"].get("candidates") is None:
        raise UsageError(f"preset {preset!r} scores given archs; add --candidates FILE "
                         "(e.g. truth/fashion-mnist16.parquet) or --set searcher.num_candidates=N")
    few_shot = config["searcher"].get("few_shot")
    if few_shot:
        if not getattr(get_searcher_class(method), "supports_few_shot", False):
            raise UsageError(f"--few-shot: method {method!r} has no few-shot variant; expected one of the one-shot "
                             f"methods: {', '.join(m for m in method_names() if getattr(get_searcher_class(m), 'supports_few_shot', False))}")
        try:
            config["searcher"]["few_shot"] = get_space(space).parse_edges(few_shot)
        except ValueError as err:
            raise UsageError(f"--few-shot {few_shot}: {err}") from None
    config.update(method=method, space=space, dataset=dataset, data_dir=data_dir,
                  data_options=dict(data_options or {}), preset=preset, seed=int(seed))
    return config


def _init_ray(address: str | None, num_cpus: int | None, verbose: int) -> None:
    import ray

    # standalone trials checkpoint every few epochs; Tune's warning about the resulting
    # experiment snapshots is noise at this scale
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if verbose < 2:
        # raynas prints its own progress: Tune's experiment box and INFO lines are noise here
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        logging.getLogger("ray.tune").setLevel(logging.WARNING)
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = dict(namespace="raynas", log_to_driver=verbose >= 2, include_dashboard=False)
    if address:
        kwargs["address"] = address
    else:
        # "local": always a fresh embedded instance, never a stray cluster found on the machine
        kwargs["address"] = "local"
        if num_cpus:
            kwargs["num_cpus"] = num_cpus
    ray.init(**kwargs)


def _cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def search(
    method: str = "rsps",
    *,
    space: str = "nb201",
    dataset: str = "digits",
    data_dir: str | None = None,
    data_options: dict | None = None,
    preset: str = "small",
    seed: int = 0,
    overrides: dict | None = None,
    storage: str | os.PathLike = "runs",
    name: str | None = None,
    address: str | None = None,
    resume: str | os.PathLike | None = None,
    num_cpus: int | None = None,
    verbose: int = 1,
) -> Path:
    """Run one search; return its run directory (which holds the result tables)."""
    if resume is not None:
        run_dir = Path(resume).resolve()
        if not is_run_dir(run_dir):
            raise UsageError(f"--resume {resume}: not a raynas run directory (no raynas.json); expected a RUN_DIR that `raynas search` made")
        config = json.loads((run_dir / "raynas.json").read_text())
    else:
        config = make_config(method, space=space, dataset=dataset, data_dir=data_dir, data_options=data_options,
                             preset=preset, seed=seed, overrides=overrides)
        if data_dir is not None and not Path(data_dir).is_dir():
            raise UsageError(f"--data-dir {data_dir}: no such directory; expected the folder holding the {dataset} files")
        if address is None:
            # local data: fail fast, before Ray starts, with the dataset's own one-line error
            from raynas.data import DatasetError, load_dataset

            try:
                load_dataset(dataset, data_dir, **(data_options or {}))
            except (DatasetError, TypeError) as err:
                raise UsageError(str(err)) from None
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        name = name or f"{method}-{dataset}-s{seed}-{stamp}"
        run_dir = (Path(storage) / name).resolve()
        if run_dir.exists():
            raise UsageError(f"run directory {run_dir} already exists; pass --resume {run_dir} to continue it or choose another --name")
        config["run_id"] = name
        run_dir.mkdir(parents=True)
        write_json(run_dir / "raynas.json", config)
    try:
        return _run(config, run_dir, resume=resume is not None, address=address, num_cpus=num_cpus, verbose=verbose)
    except UsageError:
        if resume is None and not any(run_dir.glob("*/result.json")):
            shutil.rmtree(run_dir, ignore_errors=True)  # a run that never started leaves nothing behind
        raise


def _run(config: dict, run_dir: Path, *, resume: bool, address: str | None, num_cpus: int | None, verbose: int) -> Path:
    from ray import tune

    from raynas.progress import Progress
    from raynas.resume import StateBackup, repair

    started = time.perf_counter()
    _init_ray(address, num_cpus, verbose)
    res = config["resources"]
    gpus = _cluster_gpus()
    actor_gpus = res["actor_gpus"] if res["actor_gpus"] is not None else (1.0 if gpus else 0.0)
    standalone_gpus = res["standalone_gpus"] if res["standalone_gpus"] is not None else (1.0 if gpus else 0.0)
    searcher_cls = get_searcher_class(config["method"])
    space = get_space(config["space"])
    run = {k: config[k] for k in ("run_id", "space", "dataset", "data_dir", "data_options")}

    info: dict = {}
    supernet_actors: list = []
    if getattr(searcher_cls, "uses_supernet", True):
        # the handles are held for the whole search: Ray ends a (non-detached) actor once no handle is left
        info, res, supernet_actors = _start_supernets(config, run_dir, res, space, actor_gpus)
    else:
        from raynas.data import load_dataset

        splits = load_dataset(config["dataset"], config["data_dir"], **config["data_options"])
        info = {"device": "cpu", "dataset_fingerprint": splits.fingerprint(), "bn_mode": None,
                "num_classes": splits.info.num_classes, "in_channels": splits.info.in_channels,
                "input_size": splits.info.input_size}

    trainable = work_unit_trainable(run, res, standalone_gpus=standalone_gpus)
    progress = Progress(verbose=verbose, total_steps=info.get("total_steps"))
    callbacks = [progress, StateBackup(run_dir)]
    if resume:
        from ray.tune.logger import JsonLoggerCallback

        # as work_unit_tuner sets up a new run: result.json only
        os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
        callbacks.append(JsonLoggerCallback())
        restored = repair(run_dir)
        if restored and verbose:
            print(f"raynas: Tune's state in {run_dir} was not one complete moment (the driver died while "
                  f"Tune copied it); resuming from raynas's last complete copy ({', '.join(restored)})", file=sys.stderr)
        tuner = tune.Tuner.restore(str(run_dir), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        searcher_kwargs = dict(config["searcher"], space=config["space"], seed=config["seed"],
                               max_concurrent=res["max_concurrent"])
        if "total_steps" in info:
            searcher_kwargs["total_steps"] = info["total_steps"]
        if info.get("few_shot"):
            searcher_kwargs["few_shot_steps"] = info["few_shot"]["steps"]
        searcher = searcher_cls(**searcher_kwargs)
        tuner = work_unit_tuner(trainable, searcher, run_dir, res, callbacks=callbacks)
    if resume:
        # restored run configs drop callbacks: they are re-attached
        tuner._local_tuner._run_config.callbacks = callbacks
    grid = tuner.fit()
    errors = [r.error for r in grid if r.error is not None]
    if errors:
        print(f"raynas: {len(errors)} work unit(s) failed for good; first: {errors[0]}", file=sys.stderr)

    info = _final_info(config, info)
    _stop_supernets(config, info)
    del supernet_actors
    manifest = _manifest(config, info)
    state_path = run_dir / "raynas-wall.json"
    previous = json.loads(state_path.read_text())["wall_s"] if state_path.exists() else 0.0
    wall_s = previous + time.perf_counter() - started
    write_json(state_path, {"wall_s": wall_s})
    _, summary = build_tables(run_dir, config, manifest, space=space, wall_s=wall_s)
    if verbose:
        row = summary.iloc[0]
        outcome = (f"-> {row['final_arch']}  standalone test acc {row['standalone_test_acc']:.4f}" if row["final_arch"]
                   else "scored its candidates (no standalone training: `raynas rank` compares the scores with a truth)")
        print(
            f"raynas: {config['method']} on {config['dataset']} {outcome}  "
            f"({row['candidates']} candidates, {row['supernet_steps']} supernet steps, {wall_s:.0f} s)\n"
            f"raynas: tables in {run_dir}",
            flush=True,
        )
    return run_dir


def _start_supernets(config: dict, run_dir: Path, res: dict, space, actor_gpus: float) -> tuple[dict, dict, list]:
    """Start the one-shot supernet's actor (id 0) and, under few-shot NAS, one actor per
    sub-supernet (ids 1..K) in a placement group. Returns the facts of supernet 0 (plus the
    few-shot layout) and the resources section, adjusted so the actors fit the cluster."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from raynas.actor import create_supernet_actor

    edges = config["searcher"].get("few_shot")
    regions = space.split(space.parse_edges(edges)) if edges else []
    res = dict(res)
    if regions:
        # K + 1 actors and up to K concurrent light trials must fit the cluster's CPUs
        res["max_concurrent"] = max(res["max_concurrent"], len(regions))
        cpus = float(ray.cluster_resources().get("CPU", 1))
        spare = cpus - res["max_concurrent"] * res["trial_cpus"] - res["standalone_cpus"]
        res["actor_cpus"] = round(max(0.05, min(res["actor_cpus"], spare / (len(regions) + 1))), 2)
    worker_kwargs = dict(config["supernet"], space=config["space"], dataset=config["dataset"],
                         data_dir=config["data_dir"], data_options=config["data_options"], seed=config["seed"],
                         snapshot_dir=str(run_dir / "supernets" / "0"))
    actors = [create_supernet_actor(config["run_id"], 0, worker_kwargs, num_cpus=res["actor_cpus"],
                                    num_gpus=actor_gpus, max_restarts=res["max_restarts"])]
    try:
        info = ray.get(actors[0].info.remote())
    except ray.exceptions.RayActorError as err:
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


def work_unit_trainable(run: dict, res: dict, *, standalone_gpus: float):
    """The work-unit trainable of a run, each unit sized by its kind (``res``: the resources section)."""
    from ray import tune

    from raynas.trainable import unit_resources, work_unit

    return tune.with_resources(
        tune.with_parameters(work_unit, run=run),
        lambda unit: unit_resources(unit, trial_cpus=res["trial_cpus"], standalone_cpus=res["standalone_cpus"],
                                    standalone_gpus=standalone_gpus),
    )


def work_unit_tuner(trainable, searcher, run_dir: Path, res: dict, *, callbacks: list):
    """A new Tune experiment in ``run_dir`` driven by a raynas searcher (at most ``res["max_concurrent"]`` live units)."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.search import ConcurrencyLimiter

    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=res["max_concurrent"]),
            num_samples=-1,
            reuse_actors=True,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=run_dir.name,
            storage_path=str(run_dir.parent),
            verbose=0,
            # result.json is what raynas's tables read; Tune's CSV and TensorBoard loggers would
            # cost a write per candidate row for nothing
            callbacks=[*callbacks, JsonLoggerCallback()],
            failure_config=tune.FailureConfig(max_failures=res["max_failures"]),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )


def _root_cause(err: BaseException) -> str:
    """The innermost error's one-line message (Ray wraps an actor's __init__ error twice)."""
    text = str(err)
    for line in text.splitlines():
        for marker in ("DatasetError: ", "ValueError: ", "FileNotFoundError: "):
            if marker in line:
                return line.split(marker, 1)[1].strip()
    return text.splitlines()[0] if text else type(err).__name__


def _trial_name(trial) -> str:
    # the default name spells out the whole config (a cohort of archs): keep it short
    return f"unit{trial.config.get('unit', 'x'):>05}-{trial.config.get('kind', 'unit')}-{trial.trial_id}"


def _final_info(config: dict, info: dict) -> dict:
    """The actor's facts at the end (device, BN mode, data hash); falls back to the start's."""
    import ray

    from raynas.actor import get_supernet_actor

    if "total_steps" not in info:
        return info
    try:
        return {**ray.get(get_supernet_actor(config["run_id"], 0).info.remote()), "few_shot": info.get("few_shot")}
    except Exception:  # the actor may be gone after a failure; the start's facts still hold
        return info


def _stop_supernets(config: dict, info: dict) -> None:
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


def _manifest(config: dict, info: dict) -> dict:
    import ray
    import torch

    return {
        "run_id": config["run_id"],
        "method": config["method"],
        "seed": config["seed"],
        "versions": {"raynas": __version__, "torch": torch.__version__, "ray": ray.__version__,
                     "python": platform.python_version()},
        "device": info.get("device"),
        "device_name": info.get("device_name"),
        "bn_mode": info.get("bn_mode"),
        "dataset": {"name": config["dataset"], "data_dir": config["data_dir"], "options": config["data_options"],
                    "fingerprint": info.get("dataset_fingerprint")},
        "num_classes": info.get("num_classes"),
        "in_channels": info.get("in_channels"),
        "input_size": info.get("input_size"),
        "supernet": {k: info.get(k) for k in ("total_steps", "steps_per_epoch", "parameters", "restored_from")},
        "few_shot": info.get("few_shot"),
        "config": config,
        "host": platform.node(),
    }
