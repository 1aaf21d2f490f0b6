"""The work-unit trainable: one Tune trial = one unit of NAS work (DESIGN.md, "Work unit").

A unit's config says its kind; every unit also carries ``key`` (stable: the same work issued
again has the same key) and ``unit`` (a counter):

- ``{"kind": "train", "supernet": k, "start": F, "until": U, "policy": {...}}``: the supernet
  actor's chunk from version F to U under the policy (an actor already past F replays the chunk
  from its version-U snapshot, or redoes it from its version-F one); one row.
- ``{"kind": "score", "supernet": k, "version": V, "archs": [...], "batches": b, "first_batch": s}``:
  the actor scores the cohort at supernet version V, candidate j on valid batches s + j*b...;
  one row per candidate so searchers see each in ``on_trial_result``. Optional
  ``"path_mode": "decoded"`` scores each arch's EvNAS mixture instead of its single path.
- ``{"kind": "standalone", "arch": s, "epochs": E, "seed": S, "train_split": T, ...}``: trains the
  arch from scratch with seed S (777) on the train split or train+valid (T) in the trial itself (it holds its own GPU when the cluster has them); a row per epoch and a raynas
  checkpoint every few epochs (``RUN_DIR/checkpoints/``, by key; the run directory may be a storage
  URI such as ``s3://bucket/runs/r1``), so a re-issued unit resumes, on whichever node it runs.
- ``{"kind": "proxy", "masks": [...], "labels": [...], "repeats": R, "seed": s, ...}``: TE-NAS's
  training-free proxies (:func:`raynas.proxies.score_masks`) of each (6, 5) 0/1 op mask, computed
  in the trial itself (like standalone units, it holds its own CPU/GPU share); one row per mask
  with per-repeat lists ``ntk`` and ``regions``.

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
import torch
from ray import tune

from raynas.actor import get_supernet_actor
from raynas.data import load_dataset
from raynas.spaces import get_space
from raynas.standalone import RECIPE, StandaloneTraining
from raynas.storage import Location
from raynas.worker import atomic_torch_save, load_plain

#: a score cohort is sent to its actor in this many slices (overlap of scoring and reporting)
SCORE_SLICES = 8

KINDS = ("train", "score", "standalone", "proxy")


@functools.lru_cache(maxsize=2)
def _splits(dataset: str, data_dir: str | None, options: tuple):
    # trials are reused (reuse_actors=True): keep the data resident across standalone units
    return load_dataset(dataset, data_dir, **dict(options))


def work_unit(config: dict, run: dict) -> None:
    """Run one work unit. ``run`` carries the run's identity and data (``tune.with_parameters``).

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
        # while this trial reports the rows of slice i (one Tune round trip per row). One caller's
        # calls run in order.
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
            for row in ray.get(ref):
                tune.report({**base, "supernet": config.get("supernet", 0), "position": position, **row})
                position += 1
    elif kind == "standalone":
        _standalone(config, run, base)
    elif kind == "proxy":
        _proxy(config, run, base)
    else:
        raise ValueError(f"work unit kind={kind!r}; expected one of {KINDS}")


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
    try:
        return load_plain(path, map_location=device)
    except FileNotFoundError:
        return None


def _standalone(config: dict, run: dict, base: dict) -> None:
    splits = _splits(run["dataset"], run.get("data_dir"), tuple(sorted((run.get("data_options") or {}).items())))
    device = "cuda" if ray.get_gpu_ids() else "cpu"
    recipe = {k: config[k] for k in RECIPE if k in config}
    # torch would use every core of the node; the trial holds only its CPU share
    torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
    training = StandaloneTraining(
        get_space(run["space"]), config["arch"], splits, C=config.get("C", 16), N=config.get("N", 5),
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
        tune.report(saved["row"])
    # a checkpoint every few epochs (~10 per training, and after the last one)
    every = int(config.get("checkpoint_every") or max(1, -(-training.recipe["epochs"] // 10)))
    while not training.done:
        row = {**base, "arch": str(training.arch), "role": config.get("role", ""), "device": device,
               **training.run_epoch()}
        row["position"] = row.get("epoch", 0)
        if training.epoch % every == 0 or training.done:
            atomic_torch_save({"key": base["key"], "training": training.state_dict(), "row": row}, path)
        tune.report(row)


def _proxy(config: dict, run: dict, base: dict) -> None:
    import time

    from raynas.proxies import score_masks

    splits = _splits(run["dataset"], run.get("data_dir"), tuple(sorted((run.get("data_options") or {}).items())))
    device = "cuda" if ray.get_gpu_ids() else "cpu"
    torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
    options = {k: config[k] for k in ("repeats", "ntk_batch", "region_samples", "region_batches", "ntk_C", "ntk_N",
                                      "init") if k in config}
    start = time.perf_counter()
    rows = score_masks(config["masks"], splits.train.images, num_classes=splits.info.num_classes,
                       seed=config["seed"], device=device, **options)
    seconds = (time.perf_counter() - start) / max(1, len(rows))
    for position, (label, row) in enumerate(zip(config["labels"], rows)):
        tune.report({**base, "round": config.get("round", -1), "label": label, "position": position,
                     "device": device, "seconds": seconds, **row})


def unit_resources(config: dict, *, trial_cpus: float, standalone_cpus: float, standalone_gpus: float) -> dict[str, Any]:
    """Trials that call actors are light (CPU only: the actor holds the GPU); standalone
    trainings and proxy units compute, so they hold their own CPU/GPU share (a GPU asked for even
    where no node has one yet: the request is what makes an autoscaler add one). The shares come
    sized for the cluster (:func:`raynas.plan.plan_resources`)."""
    if config.get("kind") in ("standalone", "proxy"):
        return {"CPU": standalone_cpus, "GPU": standalone_gpus}
    return {"CPU": trial_cpus}
