"""Ground truth for ranking: a fixed, seeded, stratified sample of archs trained standalone.

``build_truth(...)`` (``raynas truth``) draws the sample (:func:`stratified_sample`), trains every
(arch, seed) pair from scratch as a ``standalone`` work unit on Ray Tune (spread over the
cluster's workers by :class:`TruthSearcher`), and writes a long-format parquet table, one row per
(arch, seed), whose metadata (and a JSON file beside it) hold the recipe, the dataset's hash, the
cost and the table's own reliability (:func:`raynas.ranking.truth_reliability`). ``raynas rank``
then measures supernet scores against it.

The sample spans sizes and includes weak archs, so a ranking is tested where it matters: archs
are drawn from a pool of uniform archs (one per isomorphism class; archs whose cell computes
zero are left out: they all score exactly chance and would make the ranking trivially easy),
sorted by parameter count into ``strata`` equal-size strata, and drawn equally from each; a
``weak_fraction`` of the sample is forced from archs with many ``none``/pooling edges.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ray.tune import Callback
from ray.tune.search import Searcher

from raynas.errors import SearchFailed, UsageError

from raynas.searchers.base import WorkUnitSearcher
from raynas.spaces import get_space

logger = logging.getLogger(__name__)

#: the standalone recipe of a truth (on top of raynas.standalone.RECIPE): the benchmark's
#: network at the cheap ranking size
TRUTH_RECIPE = dict(C=8, N=1, epochs=10, batch_size=64)
TABLE_COLUMNS = [
    "arch", "arch_index", "seed", "stratum", "weak", "params", "flops", "valid_acc", "valid_loss",
    "test_acc", "test_loss", "train_acc", "train_loss", "epochs", "seconds", "device", "unit",
]


# --- the sample -------------------------------------------------------------------------------
def _is_weak_op(name: str) -> bool:
    return name == "none" or "pool" in name


def _computes_zero(space, arch) -> bool:
    """The cell's output is zero for any input (only spaces with an algebraic key can tell)."""
    try:
        return space.canonical_key(arch, rule="algebraic") == ()
    except (TypeError, ValueError):
        return False


def stratified_sample(
    space,
    n: int,
    *,
    seed: int = 0,
    strata: int = 4,
    weak_fraction: float = 0.15,
    weak_edges: int = 4,
    pool: int = 1500,
    net: dict | None = None,
) -> pd.DataFrame:
    """``n`` archs of distinct isomorphism classes spanning sizes, with some weak ones.

    A pool of ``pool`` uniform draws (one arch per isomorphism class, zero-computing cells left
    out) is the reference distribution. ``round(weak_fraction * n)`` archs are drawn from the
    pool's *weak* archs (at least ``weak_edges`` edges are ``none`` or pooling); the rest equally
    from ``strata`` equal-size strata of the pool sorted by the parameter count of the network
    ``net`` (``C``, ``N``, ``num_classes``, ``in_channels``). Deterministic per ``seed``.
    Returns a frame with ``arch`` (string), ``params``, ``stratum`` (``weak`` or ``q1``..) and ``weak``.
    """
    space = get_space(space)
    n, strata, pool = int(n), int(strata), int(pool)
    if n < 1:
        raise ValueError(f"n={n!r}; must be >= 1")
    if not 1 <= strata <= n:
        raise ValueError(f"strata={strata!r}; must be in 1..n={n}")
    if not 0.0 <= float(weak_fraction) < 1.0:
        raise ValueError(f"weak_fraction={weak_fraction!r}; must be in [0, 1)")
    if not 0 <= int(weak_edges) <= space.num_edges:
        raise ValueError(f"weak_edges={weak_edges!r}; must be in 0..{space.num_edges}")
    if pool < 2 * n:
        raise ValueError(f"pool={pool!r}; must be >= 2 * n = {2 * n} so the strata have archs to choose from")
    rng = np.random.default_rng(seed)
    classes: dict = {}
    for arch in space.sample(rng, pool):
        key = space.canonical_key(arch)
        if key not in classes and not _computes_zero(space, arch):
            classes[key] = arch
    archs = list(classes.values())
    if len(archs) < n:
        raise ValueError(f"pool={pool} holds {len(archs)} distinct archs; need >= n={n}: raise pool")
    net = dict(net or {})
    params = np.array([space.count_parameters(a, **net) for a in archs], dtype=np.int64)
    weak_ops = {i for i, name in enumerate(space.op_names) if _is_weak_op(name)}
    weak = np.array([sum(o in weak_ops for o in a.ops) >= int(weak_edges) for a in archs])

    n_weak = min(int(round(float(weak_fraction) * n)), int(weak.sum()))
    forced = list(rng.choice(np.flatnonzero(weak), size=n_weak, replace=False)) if n_weak else []
    rest = np.setdiff1d(np.arange(len(archs)), forced)
    # equal-size strata of the pool by size; ties in size broken at random
    order = rest[np.lexsort((rng.random(len(rest)), params[rest]))]
    groups = np.array_split(order, strata)
    quota = np.full(strata, (n - n_weak) // strata)
    quota[rng.choice(strata, size=(n - n_weak) % strata, replace=False)] += 1
    rows = [(i, "weak") for i in forced]
    for s, (group, k) in enumerate(zip(groups, quota)):
        rows += [(i, f"q{s + 1}") for i in rng.choice(group, size=int(k), replace=False)]
    return pd.DataFrame(
        {
            "arch": [str(archs[i]) for i, _ in rows],
            "params": [int(params[i]) for i, _ in rows],
            "stratum": [s for _, s in rows],
            "weak": [bool(weak[i]) for i, _ in rows],
        }
    )


# --- the searcher -----------------------------------------------------------------------------
class TruthSearcher(WorkUnitSearcher):
    """One ``standalone`` unit (role ``truth``) per (arch, seed), seed-major: all archs under the
    first seed, then the next, so a truth stopped early holds whole seeds. A unit that fails for
    good is recorded in ``failed_`` and the build goes on (the table lacks that row)."""

    method = "truth"
    uses_supernet = False
    _state_keys = ("units_", "issued_", "done_", "failed_")

    def __init__(self, *, archs: Sequence[str], seeds: Sequence[int], standalone: dict | None = None,
                 space: str = "nb201", seed: int = 0, max_concurrent: int = 2, max_unit_retries: int = 2) -> None:
        super().__init__(space=space, seed=seed, max_concurrent=max_concurrent, max_unit_retries=max_unit_retries)
        if not archs:
            raise ValueError("archs=[]; expected at least one arch")
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds={list(seeds)!r}; expected distinct training seeds, at least one")
        standalone = dict(standalone or {})
        if "seed" in standalone:
            raise ValueError(f"standalone seed={standalone['seed']!r}; the training seed comes from seeds, drop it")
        self.archs = [str(self.space_.parse(a)) for a in archs]
        self.seeds = [int(s) for s in seeds]
        self.standalone = standalone
        self.units_: list[tuple[str, int]] = [(a, s) for s in self.seeds for a in self.archs]
        self.issued_ = 0
        self.done_: dict[int, dict] = {}
        self.failed_: list[int] = []

    def _next_unit(self):
        if self.issued_ < len(self.units_):
            arch, seed = self.units_[self.issued_]
            self.issued_ += 1
            return {"kind": "standalone", "key": f"standalone/{arch}/s{seed}", "arch": arch, "seed": seed,
                    "role": "truth", **self.standalone}
        return Searcher.FINISHED

    def _on_complete(self, unit: dict, row: dict) -> None:
        self.done_[unit["unit"]] = {k: row.get(k) for k in ("valid_acc", "test_acc", "seconds")}

    def _on_failed(self, unit: dict) -> None:
        logger.error("truth: %s seed %s failed for good; the table will lack it", unit["arch"], unit["seed"])
        self.failed_.append(unit["unit"])


class _Progress(Callback):
    """One line per finished training, with an estimate of the time left."""

    def __init__(self, total: int, verbose: int, done: int = 0) -> None:
        self.total, self.verbose, self.done, self.before = total, verbose, done, done
        self.start = time.perf_counter()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.done += 1
        if not self.verbose:
            return
        row = trial.last_result or {}
        elapsed = time.perf_counter() - self.start
        left = elapsed / (self.done - self.before) * (self.total - self.done)
        print(f"[raynas truth {elapsed:6.0f}s] {self.done}/{self.total} {row.get('arch')} seed "
              f"{trial.config.get('seed')}: valid acc {row.get('valid_acc', math.nan):.4f} "
              f"({row.get('seconds', math.nan):.0f} s); ~{left / 60:.0f} min left", file=sys.stderr, flush=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        if self.verbose:
            print(f"[raynas truth] {trial.config.get('arch')} seed {trial.config.get('seed')} failed; see {trial.path}",
                  file=sys.stderr, flush=True)


# --- the build --------------------------------------------------------------------------------
class TruthExperiment:
    """A truth build as :func:`raynas.lifecycle.execute` runs it: standalone trainings only."""

    max_failures = 2

    def __init__(self, config: dict, sample: pd.DataFrame, *, max_concurrent: int | None, verbose: int) -> None:
        self.config, self.sample, self.verbose = config, sample, verbose
        self.requested_concurrency = max_concurrent
        self.max_concurrent = int(max_concurrent or 1)
        self.res: dict = {}
        self.gpus = 0.0
        self.cpus = 0.0
        recipe = config["recipe"]
        # short trainings: a checkpoint, and the valid evaluation, at the end only
        self.standalone = dict(recipe, checkpoint_every=recipe["epochs"], eval_every=recipe["epochs"])
        self.units = [(a, s) for s in config["seeds"] for a in sample["arch"]]

    def searcher_class(self):
        return TruthSearcher

    def attach(self, searcher) -> None:
        pass  # no supernet actors follow the searcher's phases here

    def start(self, run_dir: Path, *, resume: bool):
        import ray

        from raynas.driver import DEFAULTS
        from raynas.cluster import cluster_gpus
        from raynas.supernets import work_unit_trainable

        config = self.config
        res = dict(DEFAULTS["resources"])
        self.gpus = cluster_gpus()
        self.cpus = float(ray.cluster_resources().get("CPU", 0))
        standalone_gpus = 1.0 if self.gpus else 0.0
        fits = int(self.gpus // standalone_gpus) if self.gpus else int(max(self.cpus, 1) // res["standalone_cpus"])
        wanted = self.requested_concurrency
        res["max_concurrent"] = self.max_concurrent = max(1, min(fits, int(wanted)) if wanted else fits)
        self.res = res
        if self.verbose:
            recipe = config["recipe"]
            print(f"raynas truth: {len(self.sample)} archs x {len(config['seeds'])} seeds = {len(self.units)} trainings "
                  f"({recipe['epochs']} epochs, C={recipe['C']}, N={recipe['N']}) on {config['dataset']}, "
                  f"{res['max_concurrent']} at once; experiment in {run_dir}", file=sys.stderr, flush=True)
        run = {"run_id": run_dir.name, "run_dir": str(run_dir), "space": config["space"], "dataset": config["dataset"],
               "data_dir": config["data_dir"], "data_options": config["data_options"]}
        return work_unit_trainable(run, res, standalone_gpus=standalone_gpus)

    def new_searcher(self):
        kwargs = dict(archs=list(self.sample["arch"]), seeds=self.config["seeds"], standalone=self.standalone,
                      space=self.config["space"], seed=self.config["sample_seed"], max_concurrent=self.max_concurrent)
        return TruthSearcher(**kwargs), kwargs

    def callbacks(self, run_dir: Path, *, resume: bool) -> list:
        from raynas.results import read_unit_rows

        done = _finished_units(read_unit_rows(run_dir)) if resume else 0
        return [_Progress(len(self.units), self.verbose, done)]

    def stop(self) -> None:
        pass

    def finish(self, run_dir: Path, *, status: str, outcome: dict, wall_s: float, sessions: int) -> None:
        pass  # the table is written by build_truth once the build is complete


def _sidecar(output: Path) -> Path:
    return output.with_suffix(".json")


def build_truth(
    dataset: str = "fashion-mnist",
    *,
    output: str | os.PathLike | None = None,
    data_dir: str | None = None,
    data_options: dict | None = None,
    space: str = "nb201",
    archs: int = 40,
    seeds: int | Sequence[int] = 6,
    recipe: dict | None = None,
    sample_seed: int = 0,
    strata: int = 4,
    weak_fraction: float = 0.15,
    pool: int = 1500,
    storage: str | os.PathLike = "runs",
    name: str | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    max_concurrent: int | None = None,
    resume: str | os.PathLike | None = None,
    command: str | None = None,
    verbose: int = 1,
) -> Path:
    """Train a stratified sample of ``archs`` archs under each of ``seeds`` training seeds (a
    count -> seeds 0..k-1) standalone, and write the truth table to ``output`` (parquet, refused
    if it exists) and its facts to ``output`` with a ``.json`` suffix. Returns ``output``.

    ``recipe``: ``C``, ``N`` and standalone settings (``epochs``, ``batch_size``, ``lr``, ...) over
    :data:`TRUTH_RECIPE`. The Tune experiment goes to ``storage/name``; ``resume=`` that
    directory continues a build whose driver died, with the settings it was started with.
    ``max_concurrent`` (default: what the cluster's CPUs, or GPUs, hold) caps the trainings run at once.
    """
    from raynas.data import DatasetError, dataset_names, load_dataset
    from raynas.lifecycle import execute
    from raynas.ranking import TRUTH_METADATA_KEY, truth_reliability
    from raynas.driver import storage_location
    from raynas.results import read_json, read_unit_rows, write_json
    from raynas.rowlog import SEARCHER_STATE
    from raynas.standalone import RECIPE

    if resume is not None:
        run_dir = storage_location(resume, "--resume").resolve()
        if not (run_dir / "truth.json").is_file():
            raise UsageError(f"--resume {resume}: not a truth experiment (no truth.json); expected a directory `raynas truth` made")
        config = read_json(run_dir / "truth.json")
    else:
        if output is None:
            raise UsageError("--output is required: the .parquet file the truth goes to")
        if dataset not in dataset_names():
            raise UsageError(f"unknown dataset {dataset!r}; expected one of: {', '.join(dataset_names())}")
        seed_list = list(range(int(seeds))) if isinstance(seeds, (int, np.integer)) else [int(s) for s in seeds]
        if len(seed_list) < 2 or len(set(seed_list)) != len(seed_list):
            raise UsageError(f"seeds={seeds!r}; need >= 2 distinct training seeds (the table measures its own reliability)")
        if int(archs) < 2:
            raise UsageError(f"archs={archs!r}; must be >= 2")
        recipe = {**TRUTH_RECIPE, **(recipe or {})}
        unknown = set(recipe) - set(RECIPE) - {"C", "N"}
        if unknown:
            raise UsageError(f"recipe: unknown settings {sorted(unknown)}; expected C, N or some of {sorted(RECIPE)}")
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = (storage_location(storage) / (name or f"truth-{Path(output).stem}-{stamp}")).resolve()
        if run_dir.exists():
            raise UsageError(f"experiment directory {run_dir} already exists; pass --resume {run_dir} to continue it or choose another --name")
        config = dict(dataset=dataset, data_dir=data_dir, data_options=dict(data_options or {}), space=space,
                      archs=int(archs), seeds=seed_list, recipe=recipe, sample_seed=int(sample_seed),
                      strata=int(strata), weak_fraction=float(weak_fraction), pool=int(pool), output=str(output),
                      command=command)
    output = Path(config["output"])
    for path in (output, _sidecar(output)):
        if path.exists():
            raise UsageError(f"--output {output}: {path} already exists; choose a new file (a truth is never overwritten)")
    if output.suffix != ".parquet":
        raise UsageError(f"--output {output}; expected a .parquet file name")
    recipe = config["recipe"]
    try:
        splits = load_dataset(config["dataset"], config["data_dir"], **config["data_options"])
    except (DatasetError, TypeError) as err:
        raise UsageError(str(err)) from None
    info = splits.info
    net = dict(C=recipe["C"], N=recipe["N"], num_classes=info.num_classes, in_channels=info.in_channels)
    try:
        sample = stratified_sample(config["space"], config["archs"], seed=config["sample_seed"], strata=config["strata"],
                                   weak_fraction=config["weak_fraction"], pool=config["pool"], net=net)
    except ValueError as err:
        raise UsageError(str(err)) from None

    if resume is None:
        run_dir.mkdir()
        write_json(run_dir / "truth.json", config)
    experiment = TruthExperiment(config, sample, max_concurrent=max_concurrent, verbose=verbose)
    try:
        ended = execute(experiment, run_dir, resume=resume is not None, address=address, num_cpus=num_cpus,
                        verbose=verbose)
    finally:
        if resume is None and not (run_dir / SEARCHER_STATE).exists():
            run_dir.rmtree()  # a build that never started leaves nothing behind
    if ended.status != "complete":
        reason = f": {ended.message}" if ended.message else ""
        raise SearchFailed(f"the truth build {ended.status}{reason}; `raynas truth --resume {run_dir}` continues it") \
            if ended.status == "failed" else KeyboardInterrupt()
    wall_s, res, gpus = ended.wall_s, experiment.res, experiment.gpus
    searcher_units = experiment.units
    table = _table(read_unit_rows(run_dir), searcher_units, sample, space=config["space"], net=net,
                   input_size=info.input_size)
    missing = len(searcher_units) - len(table)
    reliability = truth_reliability(table)
    meta = {
        **config,
        "metric": "valid_acc",
        "truth": "mean over seeds of valid_acc (the split a supernet scores on)",
        "splits": splits.sizes(),
        "dataset_fingerprint": splits.fingerprint(),
        "standalone": {**RECIPE, **{k: v for k, v in recipe.items() if k not in ("C", "N")}},
        "rows": len(table),
        "missing_rows": missing,
        "reliability": reliability,
        "cost": {"wall_s": wall_s, "train_s": float(table["seconds"].sum()), "max_concurrent": res["max_concurrent"],
                 "cluster_cpus": experiment.cpus, "cluster_gpus": gpus,
                 "device": str(table["device"].iloc[0]) if len(table) else None},
        "versions": _versions(),
        "host": platform.node(),
        "built": dt.datetime.now().isoformat(timespec="seconds"),
        "experiment": str(run_dir),
    }
    _write(table, meta, output, metadata_key=TRUTH_METADATA_KEY)
    write_json(_sidecar(output), meta)
    if verbose:
        r = reliability
        print(
            f"raynas truth: {r['archs']} archs x {r['seeds']} seeds ({missing} trainings missing) -> {output}\n"
            f"raynas truth: single-seed tau {r['single_seed_tau_mean']:.3f} "
            f"(min {r['single_seed_tau_min']:.3f}, max {r['single_seed_tau_max']:.3f}); "
            f"split-half tau {r['split_half_tau']:.3f} over {r['split_halvings']} halvings; "
            f"truth valid acc {r['truth_min']:.4f}..{r['truth_max']:.4f}; "
            f"{wall_s / 60:.1f} min wall, {meta['cost']['train_s'] / 60:.1f} min of training",
            flush=True,
        )
    return output


def _finished_units(rows: pd.DataFrame) -> int:
    if rows.empty or "kind" not in rows:
        return 0
    rows = rows[rows["kind"] == "standalone"]
    return int(rows.loc[rows["epoch"] == rows["epochs"], "key"].nunique())


def _table(rows: pd.DataFrame, units: list[tuple[str, int]], sample: pd.DataFrame, *, space: str, net: dict,
           input_size: int) -> pd.DataFrame:
    """One row per finished (arch, seed) of ``units``: its last epoch's row."""
    if rows.empty or "kind" not in rows:
        raise RuntimeError("truth: no training finished; see the experiment's trial logs")
    rows = rows[rows["kind"] == "standalone"]
    finals = rows[rows["epoch"] == rows["epochs"]].copy()
    wanted = {f"standalone/{a}/s{s}": s for a, s in units}
    if not set(finals["key"]) <= set(wanted):
        raise RuntimeError("truth: a training's arch and seed are not this build's; the experiment directory is another's")
    finals["seed"] = [wanted[k] for k in finals["key"]]
    the_space = get_space(space)
    facts = sample.set_index("arch")
    archs = [the_space.parse(a) for a in finals["arch"]]
    finals["arch_index"] = [the_space.index_of(a) for a in archs]
    finals["stratum"] = [facts.loc[a, "stratum"] for a in finals["arch"]]
    finals["weak"] = [bool(facts.loc[a, "weak"]) for a in finals["arch"]]
    finals["params"] = [int(facts.loc[a, "params"]) for a in finals["arch"]]
    finals["flops"] = [the_space.count_flops(a, **net, input_size=input_size) for a in archs]
    table = finals.reindex(columns=TABLE_COLUMNS)
    order = {arch: i for i, arch in enumerate(sample["arch"])}
    table = table.sort_values(by=["arch", "seed"], key=lambda c: c.map(order) if c.name == "arch" else c)
    for column in ("arch_index", "seed", "params", "flops", "epochs", "unit"):
        table[column] = table[column].astype("int64")
    return table.reset_index(drop=True)


def _write(table: pd.DataFrame, meta: dict, output: Path, *, metadata_key: bytes) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.Table.from_pandas(table, preserve_index=False)
    metadata = dict(arrow.schema.metadata or {})
    metadata[metadata_key] = json.dumps(meta, sort_keys=True, default=str).encode()
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    pq.write_table(arrow.replace_schema_metadata(metadata), tmp)
    os.replace(tmp, output)


def _versions() -> dict[str, Any]:
    import ray
    import torch

    from raynas import __version__

    return {"raynas": __version__, "torch": torch.__version__, "ray": ray.__version__,
            "python": platform.python_version()}
