"""The work-unit trainable: one Tune trial = one unit of NAS work (DESIGN.md, "Work unit").

A unit's config says its kind:

- ``{"kind": "train", "supernet": k, "until": V, "policy": {...}}``: the supernet actor trains
  until version V under the policy; one row.
- ``{"kind": "score", "supernet": k, "archs": [...], "batches": b}``: the actor scores the
  cohort; one row per candidate so searchers see each in ``on_trial_result``. Optional
  ``"path_mode": "decoded"`` scores each arch's EvNAS mixture instead of its single path.
- ``{"kind": "standalone", "arch": s, "epochs": E, ...}``: trains the arch from scratch in the
  trial itself (it holds its own GPU when the cluster has them); a row and a checkpoint per
  epoch, so a retried trial resumes.
- ``{"kind": "proxy", "masks": [...], "labels": [...], "repeats": R, "seed": s, ...}``: TE-NAS's
  training-free proxies (:func:`raynas.proxies.score_masks`) of each (6, 5) 0/1 op mask, computed
  in the trial itself (like standalone units, it holds its own CPU/GPU share); one row per mask
  with per-repeat lists ``ntk`` and ``regions``.

Trials only look actors up by name; they create none (they run inside placement groups).
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from raynas.actor import get_supernet_actor
from raynas.data import load_dataset
from raynas.spaces import get_space
from raynas.standalone import RECIPE, StandaloneTraining

#: a score cohort is sent to its actor in this many slices (overlap of scoring and reporting)
SCORE_SLICES = 8
#: valid batches reserved per unit id in the fixed batch sequence of scoring
SCORE_BATCH_STRIDE = 100_003

KINDS = ("train", "score", "standalone", "proxy")


@functools.lru_cache(maxsize=2)
def _splits(dataset: str, data_dir: str | None, options: tuple):
    # trials are reused (reuse_actors=True): keep the data resident across standalone units
    return load_dataset(dataset, data_dir, **dict(options))


def work_unit(config: dict, run: dict) -> None:
    """Run one work unit. ``run`` carries the run's identity and data (``tune.with_parameters``)."""
    kind = config.get("kind")
    base = {"kind": kind, "unit": config.get("unit", -1)}
    if kind == "train":
        actor = get_supernet_actor(run["run_id"], config.get("supernet", 0))
        out = ray.get(actor.train.remote(config.get("policy", "uniform"), until=config["until"]))
        tune.report({**base, "supernet": config.get("supernet", 0), **out})
    elif kind == "score":
        actor = get_supernet_actor(run["run_id"], config.get("supernet", 0))
        archs = config["archs"]
        # The cohort goes to the actor in slices, all queued at once: the actor scores slice i+1
        # while this trial reports the rows of slice i (one Tune round trip per row). One caller's
        # calls run in order, so the valid-batch stream is consumed exactly as by one call.
        size = max(1, -(-len(archs) // SCORE_SLICES))
        # each candidate's valid batches are fixed by (unit, position): same seed, same scores,
        # whatever order concurrent cohorts reach the actor in (and a re-run unit repeats itself)
        batches = config.get("batches", 1)
        offset = config.get("unit", 0) * SCORE_BATCH_STRIDE
        refs = [actor.score.remote(archs[i:i + size], batches=batches, path_mode=config.get("path_mode", "arch"),
                                   start=None if batches is None else offset + i * batches)
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


def _standalone(config: dict, run: dict, base: dict) -> None:
    splits = _splits(run["dataset"], run.get("data_dir"), tuple(sorted((run.get("data_options") or {}).items())))
    device = "cuda" if ray.get_gpu_ids() else "cpu"
    recipe = {k: config[k] for k in RECIPE if k in config}
    # torch would use every core of the node; the trial holds only its CPU share
    torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
    training = StandaloneTraining(
        get_space(run["space"]), config["arch"], splits, C=config.get("C", 16), N=config.get("N", 5),
        seed=config.get("seed", 777), device=device, eval_every=config.get("eval_every", 1), **recipe,
    )
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            saved = torch.load(Path(directory) / "state.pt", map_location=device, weights_only=False)
        training.load_state_dict(saved["training"])
        # The rows reported before a driver died may not have reached result.json (Tune copies it
        # from a staging folder later than checkpoints): report the checkpoint's row again, so
        # the last epoch's row exists even when the training was already done.
        tune.report(saved["row"])
    # a checkpoint every few epochs (~10 per training): each one is a copy to storage
    every = int(config.get("checkpoint_every") or max(1, training.recipe["epochs"] // 10))
    while not training.done:
        row = {**base, "arch": str(training.arch), "role": config.get("role", ""), "device": device,
               **training.run_epoch()}
        if training.epoch % every and not training.done:
            tune.report(row)
            continue
        with tempfile.TemporaryDirectory() as directory:
            torch.save({"training": training.state_dict(), "row": row}, Path(directory) / "state.pt")
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(directory))


def _proxy(config: dict, run: dict, base: dict) -> None:
    import time

    from raynas.proxies import score_masks

    splits = _splits(run["dataset"], run.get("data_dir"), tuple(sorted((run.get("data_options") or {}).items())))
    device = "cuda" if ray.get_gpu_ids() else "cpu"
    torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
    options = {k: config[k] for k in ("repeats", "ntk_batch", "region_samples", "region_batches", "ntk_C", "ntk_N")
               if k in config}
    start = time.perf_counter()
    rows = score_masks(config["masks"], splits.train.images, num_classes=splits.info.num_classes,
                       seed=config["seed"], device=device, **options)
    seconds = (time.perf_counter() - start) / max(1, len(rows))
    for position, (label, row) in enumerate(zip(config["labels"], rows)):
        tune.report({**base, "round": config.get("round", -1), "label": label, "position": position,
                     "device": device, "seconds": seconds, **row})


def unit_resources(config: dict, *, trial_cpus: float, standalone_cpus: float, standalone_gpus: float) -> dict[str, Any]:
    """Trials that call actors are light; standalone trainings and proxy units compute, so they
    hold their own CPU/GPU share."""
    if config.get("kind") in ("standalone", "proxy"):
        return {"CPU": standalone_cpus, "GPU": standalone_gpus}
    return {"CPU": trial_cpus}
