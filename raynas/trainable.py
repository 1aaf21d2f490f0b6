"""The work-unit trainable: one Tune trial = one unit of NAS work (DESIGN.md, "Work unit").

A unit's config says its kind; every unit also carries ``key`` (stable: the same work issued
again has the same key) and ``unit`` (a counter):

- ``{"kind": "train", "supernet": k, "start": F, "until": U, "policy": {...}}``: the supernet
  actor's chunk from version F to U under the policy (an actor already past F replays the chunk
  from its version-U snapshot, or redoes it from its version-F one); one row.
- ``{"kind": "score", "supernet": k, "version": V, "archs": [...], "batches": b, "first_batch": s}``:
  the actor scores the cohort at supernet version V, candidate j on valid batches s + j*b...;
  the rows come back in slices, one Tune report per slice (a batch: ``{"rows": [...]}``,
  :func:`raynas.rowlog.unpack`), and land in the row log and the tables one per candidate. Optional
  ``"path_mode": "decoded"`` scores each arch's EvNAS mixture instead of its single path.
- ``{"kind": "standalone", "arch": s, "epochs": E, "seed": S, "train_split": T, ...}``: trains the
  arch from scratch with seed S (777) on the train split or train+valid (T); a row per epoch and a raynas
  checkpoint every few epochs (``RUN_DIR/checkpoints/``, by key; the run directory may be a storage
  URI such as ``s3://bucket/runs/r1``), so a re-issued unit resumes, on whichever node it runs.
- ``{"kind": "proxy", "masks": [...], "labels": [...], "repeats": R, "seed": s, ...}``: TE-NAS's
  training-free proxies (:func:`raynas.proxies.score_masks`) of each (6, 5) 0/1 op mask; one
  batch of rows (a row per mask, with per-repeat lists ``ntk`` and ``regions``).

Every trial is light and alike: it asks for ``trial_cpus`` only and never imports torch, so Tune
reuses one trial process for units of every kind. The compute of a ``standalone`` or ``proxy``
unit runs in a Ray task that the trial starts and streams rows from (a generator task); the task
holds the unit's compute share (``standalone_cpus`` less the trial's, ``standalone_gpus``: the
unit's total is the setting), and Ray reuses the task's worker process, with torch imported and
the data resident, for the next such unit.

Trials only look actors up by name; they create none (they run inside placement groups): the
driver makes a unit's actor as the searcher issues the unit (:class:`raynas.supernets.SupernetActors`).
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from typing import Any

import ray
from ray import tune

from raynas.naming import get_supernet_actor
from raynas.storage import Location

#: a score cohort is sent to its actor in this many slices (overlap of scoring and reporting)
SCORE_SLICES = 8

KINDS = ("train", "score", "standalone", "proxy")
#: kinds whose compute runs in a task of their own (the trial streams its rows)
COMPUTE_KINDS = ("standalone", "proxy")


@functools.lru_cache(maxsize=2)
def _splits(dataset: str, data_dir: str | None, options: tuple):
    # Ray reuses a task's worker process: the data stays resident across standalone/proxy units
    from raynas.data import load_dataset

    return load_dataset(dataset, data_dir, **dict(options))


def work_unit(config: dict, run: dict) -> None:
    """Run one work unit. ``run`` carries the run's identity and data (``tune.with_parameters``),
    and ``run["compute"]``: what a standalone or proxy unit's task asks Ray for (the driver sizes it).

    Every row carries the unit's ``key`` (stable across re-issues), ``unit`` and ``position``
    (0 for a train row, the candidate's place in its cohort, the epoch of a standalone row): the
    run's row log keys rows by (key, position), so a unit re-run after a crash replaces its rows.
    """
    kind = config.get("kind")
    base = {"kind": kind, "unit": config.get("unit", -1), "key": config.get("key") or f"unit/{config.get('unit', -1)}"}
    if kind == "train":
        actor = _actor(run["run_id"], config.get("supernet", 0))
        # the chunk is addressed by the versions it spans: a re-run chunk replays or redoes exactly it
        out = ray.get(actor.train.remote(config.get("policy", "uniform"), until=config["until"], start=config.get("start")))
        tune.report({**base, "position": 0, "supernet": config.get("supernet", 0), **out})
    elif kind == "score":
        actor = _actor(run["run_id"], config.get("supernet", 0))
        archs = config["archs"]
        # The cohort goes to the actor in slices, all queued at once: the actor scores slice i+1
        # while this trial reports slice i, one Tune report per slice (a batch of rows: Tune's
        # round trip per report, ~8 ms, would otherwise cap scoring at ~125 candidates/s). One
        # caller's calls run in order.
        size = max(1, -(-len(archs) // SCORE_SLICES))
        # each candidate's valid batches are fixed by the cohort's place in the search
        # ("first_batch", from the searcher) and the candidate's position: same seed, same scores,
        # whatever order concurrent cohorts reach the actor in, and a re-run cohort repeats itself
        batches = config.get("batches", 1)
        first = int(config.get("first_batch") or 0)
        refs = [actor.score.remote(archs[i:i + size], batches=batches, path_mode=config.get("path_mode", "arch"),
                                   start=None if batches is None else first + i * batches, version=config.get("version"))
                for i in range(0, len(archs), size)]
        position = 0
        for ref in refs:
            rows = [{"position": position + j, **row} for j, row in enumerate(ray.get(ref))]
            if rows:
                # the batch also reads as its last row (Tune's schedulers and stoppers see a metric)
                tune.report({**base, "supernet": config.get("supernet", 0), **rows[-1], "rows": rows})
            position += len(rows)
    elif kind in COMPUTE_KINDS:
        rows = _compute_task(kind, run).remote(config, run, base)
        # rows stream back as the task makes them (a standalone training: one per epoch)
        for ref in rows:
            tune.report(ray.get(ref))
    else:
        raise ValueError(f"work unit kind={kind!r}; expected one of {KINDS}")


def _compute(config: dict, run: dict, base: dict):
    """The body of a standalone or proxy unit's task: its rows, one by one (torch imported here only)."""
    if base["kind"] == "standalone":
        yield from _standalone(config, run, base)
    else:
        yield from _proxy(config, run, base)


_compute_remote = ray.remote(_compute)


def warm_up(run: dict) -> int:
    """Load what a standalone training needs (torch, the network code, the run's data) into this
    worker process and return its pid: run as a task while the supernets train, it leaves warm
    workers that Ray hands the standalone tasks next (imports and data: seconds per process)."""
    from raynas.standalone import StandaloneTraining  # noqa: F401 (the import is the point)

    _run_splits(run)
    return os.getpid()


_warm_remote = ray.remote(warm_up)


def warm_workers(run: dict, count: int) -> list:
    """Start ``count`` :func:`warm_up` tasks (0 CPUs: they use what the supernet phase leaves
    idle); their refs (nobody needs to wait for them). Ray reuses a worker only for tasks of the
    same runtime environment, and the standalone tasks inherit their trial's, which Tune gives
    environment variables of its own: the warm-up tasks get the same."""
    return [_warm_remote.options(num_cpus=0, max_retries=0, name="raynas-warm-up", scheduling_strategy="DEFAULT",
                                 runtime_env={"env_vars": _trial_env_vars()}).remote(run) for _ in range(int(count))]


def _trial_env_vars() -> dict:
    """The environment variables Tune gives its trial processes (``ray.tune.execution.class_cache``:
    its defaults plus those it passes on from the driver's environment)."""
    try:
        from ray.tune.execution.class_cache import DEFAULT_ENV_VARS, ENV_VARS_TO_PROPAGATE
    except ImportError:  # another Tune: the warm-up still runs, its worker may not be the one reused
        return {}
    return {**DEFAULT_ENV_VARS, **{k: os.environ[k] for k in ENV_VARS_TO_PROPAGATE if k in os.environ}}


def _compute_task(kind: str, run: dict):
    ask = (run.get("compute") or {}).get(kind) or {"CPU": 1.0}
    # The unit is retried by its searcher (same key), never by Ray behind Tune's back. "DEFAULT":
    # not inside the trial's placement group (Tune's, sized for the light trial alone).
    return _compute_remote.options(num_cpus=ask.get("CPU", 0.0), num_gpus=ask.get("GPU", 0.0), max_retries=0,
                                   num_returns="streaming", name=f"raynas-{kind}", scheduling_strategy="DEFAULT")


def _actor(run_id: str, supernet: int, wait_s: float = 10.0):
    """The unit's supernet actor, by name. The driver makes it when it issues the unit; a unit
    Tune retries on its own may come just before the driver makes a dead actor again: wait a
    little, then say which actor is missing (one line) rather than hang."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return get_supernet_actor(run_id, supernet)
        except ValueError:
            if time.monotonic() > deadline:
                raise LookupError(f"supernet actor {supernet} of run {run_id} is not running (the driver makes it when "
                                  "it issues the unit; the session may have stopped)") from None
            time.sleep(0.1)


def checkpoint_path(run_dir: str | os.PathLike | Location, key: str) -> Location:
    """Where raynas keeps the checkpoint of the standalone training with this unit key
    (``run_dir``: a local path or a storage URI)."""
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return Location(run_dir) / "checkpoints" / f"{digest}.pt"


def load_checkpoint(path: str | os.PathLike | Location, device: Any = "cpu") -> dict | None:
    """A standalone checkpoint written by :func:`_standalone` (weights-only: tensors and plain
    values), or ``None`` when there is none yet (one read, no separate existence check)."""
    from raynas.worker import load_plain

    try:
        return load_plain(path, map_location=device)
    except FileNotFoundError:
        return None


def _device_and_threads(run: dict, kind: str) -> str:
    import torch

    # torch would use every core of the node; the unit holds only its CPU share (trial and task together)
    torch.set_num_threads(int((run.get("compute") or {}).get(kind, {}).get("threads", 1)))
    # a task with 0 GPUs can still see CUDA devices: use one only when Ray granted it
    return "cuda" if ray.get_gpu_ids() else "cpu"


def _run_splits(run: dict):
    return _splits(run["dataset"], run.get("data_dir"), tuple(sorted((run.get("data_options") or {}).items())))


def _standalone(config: dict, run: dict, base: dict):
    from raynas.spaces import get_space
    from raynas.standalone import RECIPE, StandaloneTraining
    from raynas.worker import atomic_torch_save

    device = _device_and_threads(run, "standalone")
    recipe = {k: config[k] for k in RECIPE if k in config}
    training = StandaloneTraining(
        get_space(run["space"]), config["arch"], _run_splits(run), C=config.get("C", 16), N=config.get("N", 5),
        seed=config.get("seed", 777), device=device, eval_every=config.get("eval_every", 1),
        train_split=config.get("train_split", "train"), **recipe,
    )
    # raynas's own checkpoint, by unit key (not Tune's): a unit re-issued after a crash, in this
    # session or a resumed one, continues the same training from its last checkpoint
    path = checkpoint_path(run["run_dir"], base["key"])
    saved = load_checkpoint(path, device)
    if saved is not None:
        training.load_state_dict(saved["training"])
        # the rows after this checkpoint are redone; its own row is reported again so that a
        # finished training still ends on its last epoch's row
        yield saved["row"]
    # a checkpoint every few epochs: ~10 per training (ceil(epochs / 10)), and after the last one
    every = int(config.get("checkpoint_every") or checkpoint_every(training.recipe["epochs"]))
    while not training.done:
        row = {**base, "arch": str(training.arch), "role": config.get("role", ""), "device": device,
               **training.run_epoch()}
        row["position"] = row.get("epoch", 0)
        if training.epoch % every == 0 or training.done:
            atomic_torch_save({"key": base["key"], "training": training.state_dict(), "row": row}, path)
        yield row


def checkpoint_every(epochs: int) -> int:
    """Epochs between a standalone training's checkpoints: about ten per training."""
    return max(1, -(-int(epochs) // 10))


def _proxy(config: dict, run: dict, base: dict):
    from raynas.proxies import score_masks

    device = _device_and_threads(run, "proxy")
    splits = _run_splits(run)
    options = {k: config[k] for k in ("repeats", "ntk_batch", "region_samples", "region_batches", "ntk_C", "ntk_N",
                                      "init") if k in config}
    start = time.perf_counter()
    rows = score_masks(config["masks"], splits.train.images, num_classes=splits.info.num_classes,
                       seed=config["seed"], device=device, **options)
    seconds = (time.perf_counter() - start) / max(1, len(rows))
    # one batch: a row per mask (and, for Tune, the last row's fields)
    batch = [{"label": label, "position": position, **row}
             for position, (label, row) in enumerate(zip(config["labels"], rows))]
    yield {**base, "round": config.get("round", -1), "device": device, "seconds": seconds,
           **(batch[-1] if batch else {}), "rows": batch}


def unit_resources(config: dict, *, trial_cpus: float, standalone_cpus: float, standalone_gpus: float) -> dict[str, Any]:
    """What a unit holds in all. Trials that call actors are light (CPU only: the actor holds the
    GPU); standalone trainings and proxy units compute, so they hold their own CPU/GPU share (a
    GPU asked for even where no node has one yet: the request is what makes an autoscaler add
    one): the light trial plus a task with the rest (:func:`compute_resources`). The shares come
    sized for the cluster (:func:`raynas.plan.plan_resources`)."""
    if config.get("kind") in COMPUTE_KINDS:
        return {"CPU": standalone_cpus, "GPU": standalone_gpus}
    return {"CPU": trial_cpus}


def compute_resources(unit: dict, *, trial_cpus: float) -> dict[str, Any]:
    """What the task of a standalone or proxy unit asks Ray for, given the unit's total
    (:func:`unit_resources`): the total less the trial's CPU share (the trial only waits for the
    task's rows), all its GPUs, and the torch threads of the total."""
    cpus = float(unit.get("CPU", 0.0))
    return {"CPU": round(max(0.0, cpus - trial_cpus), 4), "GPU": float(unit.get("GPU") or 0.0),
            "threads": max(1, int(cpus))}
