"""The driver: one search from configuration to result tables.

``search(...)`` (``raynas.search``, ``raynas search``) checks the settings (before Ray starts),
makes the run directory and runs the first session of the run through
:func:`raynas.lifecycle.execute` with a :class:`SearchExperiment`: the supernet actor(s), the
method's searcher, the work-unit trainable, the tables. ``resume(RUN_DIR)`` runs the next session
of an interrupted or crashed run: the searcher comes back from raynas's durable copy of its
state, the actors from their snapshots, and the search goes on exactly as if never stopped.
Both return a :class:`Run`.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

from raynas import __version__
from raynas.errors import SearchFailed, UsageError, first_line
from raynas.results import build_tables, read_json, read_parquet, write_json
from raynas.rowlog import SEARCHER_STATE
from raynas.searchers import get_searcher_class
from raynas.settings import ResourcesSettings, make_config, resume_overrides
from raynas.spaces import get_space
from raynas.storage import Location
from raynas.cluster import cluster_view
from raynas.plan import plan_resources
from raynas.supernets import ResourceWatch, SupernetActors, compute_shares, work_unit_trainable

#: the resources section's defaults (raynas.settings.ResourcesSettings, as a dict)
DEFAULTS = {"resources": ResourcesSettings().to_dict()}


@dataclass
class Run:
    """A run directory and how it stands. ``run_dir`` is a :class:`~pathlib.Path` for a local run
    and a :class:`~raynas.storage.Location` for one in object storage; ``run / "candidates.parquet"``
    is a file of the run, and a local run is path-like (``os.fspath(run)``: its directory)."""

    run_dir: "Path | Location"
    status: str | None
    message: str | None = None

    def __post_init__(self) -> None:
        where = Location(self.run_dir)
        self.run_dir = where.local_path if where.is_local else where

    @property
    def location(self) -> Location:
        return Location(self.run_dir)

    @classmethod
    def open(cls, run_dir: "str | os.PathLike | Location") -> "Run":
        """The run in ``run_dir`` as its manifest records it (``status`` None: it never ended a session)."""
        manifest = Location(run_dir) / "manifest.json"
        status = read_json(manifest).get("status") if manifest.is_file() else None
        return cls(run_dir, status)

    @property
    def candidates(self):
        return read_parquet(self.location / "candidates.parquet")

    @property
    def summary(self):
        return read_parquet(self.location / "summary.parquet")

    @property
    def manifest(self) -> dict:
        return read_json(self.location / "manifest.json")

    # path-like: the run directory
    def __str__(self) -> str:
        return str(self.run_dir)

    def __fspath__(self) -> str:
        return os.fspath(self.location)  # TypeError for a run in object storage

    def __truediv__(self, other):
        return self.run_dir / other

    @property
    def parent(self):
        return self.run_dir.parent

    @property
    def name(self) -> str:
        return self.run_dir.name


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
    benchmark: dict | None = None,
    storage: "str | os.PathLike | Location" = "runs",
    name: str | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    verbose: int = 1,
    started_at: float | None = None,
) -> Run:
    """Run one search; return its :class:`Run` (status ``complete``, ``interrupted`` or ``failed``;
    the run directory holds the result tables whatever the status). ``storage``: a local folder or
    a URI (``s3://bucket/runs``, ``gs://...``, any pyarrow filesystem) that every node reaches. Bad
    settings raise :class:`~raynas.errors.UsageError` before Ray starts, leaving nothing behind."""
    config = make_config(method, space=space, dataset=dataset, data_dir=data_dir, data_options=data_options,
                         preset=preset, seed=seed, overrides=overrides)
    if benchmark:
        from raynas.nasbench import check_source, lookup_datasets

        lookup_datasets(benchmark["dataset"])
        check_source(benchmark["path"])
    if address is not None:
        address = _reachable(address)
    if address is None:
        # local data: fail fast, before Ray starts, with the dataset's own one-line error (the
        # files read and checked, no image converted: the driver does not import torch)
        from raynas.data import DatasetError, dataset_facts

        try:
            dataset_facts(dataset, data_dir, **(data_options or {}))
        except (DatasetError, TypeError) as err:
            raise UsageError(str(err)) from None
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = name or f"{method}-{dataset}-s{seed}-{stamp}"
    run_dir = (storage_location(storage) / name).resolve()
    if _exists(run_dir, "--storage"):
        raise UsageError(f"run directory {run_dir} already exists; pass --resume {run_dir} to continue it or choose another --name")
    config["run_id"] = name
    # {"path", "dataset", "epochs"}: the tables get the benchmark's accuracy of every arch (raynas.nasbench.lookup)
    config["benchmark"] = dict(benchmark) if benchmark else None
    run_dir.mkdir()
    try:
        write_json(run_dir / "raynas.json", config)
    except OSError as err:
        run_dir.rmtree()
        raise UsageError(f"--storage {storage}: cannot write the run directory there ({first_line(err)}); "
                         "expected a folder or bucket you can write") from None
    try:
        return _session(config, run_dir, resume=False, address=address, num_cpus=num_cpus, verbose=verbose,
                        started_at=started_at)
    finally:
        if not (run_dir / SEARCHER_STATE).exists():
            run_dir.rmtree()  # a run that never started leaves nothing behind


def storage_location(storage: "str | os.PathLike | Location", flag: str = "--storage") -> Location:
    """``storage`` as a :class:`Location`; a URI that no filesystem opens is a usage error."""
    try:
        where = Location(storage)
        where.filesystem  # opens (and caches) the URI's filesystem: an unknown scheme fails here
    except ValueError as err:
        raise UsageError(f"{flag} {storage}: {first_line(err)}; expected a local folder or a URI "
                         "such as s3://bucket/runs, gs://bucket/runs or file:///path") from None
    return where


def _exists(where: Location, flag: str) -> bool:
    try:
        return where.exists()
    except OSError as err:  # an unreachable bucket, missing credentials
        raise UsageError(f"{flag} {where}: cannot read it ({first_line(err)}); expected a folder or bucket "
                         "you can reach (credentials: the AWS_* / GOOGLE_* environment of this machine)") from None


def _reachable(address: str) -> str:
    """The cluster at ``address``, probed in seconds before anything is written (a missing token,
    a wrong address and a dead head are usage errors: one line, nothing left behind)."""
    from raynas.connect import check_address

    return check_address(address)


def resume(run_dir: "str | os.PathLike | Location", *, resources: dict | None = None, address: str | None = None,
           num_cpus: int | None = None, verbose: int = 1, started_at: float | None = None) -> Run:
    """Continue the run in ``run_dir`` (its driver died, or it was interrupted) where it is now;
    ``resources`` may change the resources section (not what the search computes)."""
    given = run_dir
    run_dir = storage_location(run_dir, "--resume").resolve()
    if not _exists(run_dir / "raynas.json", "--resume"):
        raise UsageError(f"--resume {given}: not a raynas run directory (no raynas.json); expected a RUN_DIR that `raynas search` made")
    if Run.open(run_dir).status == "complete":
        raise UsageError(f"--resume {given}: the run is complete; nothing to resume")
    if address is not None:
        address = _reachable(address)
    config = read_json(run_dir / "raynas.json")
    # a run made before the setting existed trained with unsampled ops frozen: it resumes so
    if config["supernet"]:
        config["supernet"].setdefault("offpath", "frozen")
    if resources:
        config["resources"] = {**config["resources"], **resume_overrides({"resources": resources}).get("resources", {})}
        write_json(run_dir / "raynas.json", config)
    # a run whose driver died before its searcher's first state (while Ray or the actors started)
    # has nothing to continue: its first session starts again, in the same directory
    started = (run_dir / SEARCHER_STATE).is_file()
    return _session(config, run_dir, resume=started, address=address, num_cpus=num_cpus, verbose=verbose,
                    started_at=started_at)


def _session(config: dict, run_dir: Location, *, resume: bool, address: str | None, num_cpus: int | None,
             verbose: int, started_at: float | None = None) -> Run:
    from raynas.lifecycle import execute

    experiment = SearchExperiment(config, verbose=verbose, local_data=address is None)
    ended = execute(experiment, run_dir, resume=resume, address=address, num_cpus=num_cpus, verbose=verbose,
                    started_at=started_at)
    if verbose and experiment.summary is not None:
        row = experiment.summary.iloc[0]
        if ended.status == "complete":
            outcome = (f"-> {row['final_arch']}  standalone test acc {row['standalone_test_acc']:.4f}" if row["final_arch"]
                       else "scored its candidates (no standalone training: `raynas rank` compares the scores with a truth)")
        else:
            outcome = f"{ended.status}" + (f": {ended.message}" if ended.message else "")
        print(
            f"raynas: {config['method']} on {config['dataset']} {outcome}  "
            f"({row['candidates']} candidates, {row['supernet_steps']} supernet steps, {ended.wall_s:.0f} s)\n"
            f"raynas: tables in {run_dir}",
            flush=True,
        )
    return Run(run_dir, ended.status, ended.message)


class SearchExperiment:
    """A search, as :func:`raynas.lifecycle.execute` runs it: supernet actors, the method's
    searcher, the work-unit trainable, and the tables."""

    def __init__(self, config: dict, *, verbose: int = 1, local_data: bool = False) -> None:
        self.config = config
        self.verbose = verbose
        #: the data is on this machine (checked before Ray started): the driver can plan the
        #: supernet's schedule itself and need not wait for the actor's start
        self.local_data = local_data
        self.res = dict(config["resources"])
        self.max_concurrent = int(self.res["max_concurrent"])
        self.max_failures = int(self.res["max_failures"])
        self.space = get_space(config["space"])
        self.info: dict = {}
        self.actors: SupernetActors | None = None
        self.watch: ResourceWatch | None = None
        self.summary = None

    def searcher_class(self):
        return get_searcher_class(self.config["method"])

    def start(self, run_dir: Location, *, resume: bool):
        """Size the run's requests for the cluster (a request no node can ever hold: UsageError),
        start supernet 0's actor (the others come as the search needs them), return the trainable."""
        config = self.config
        uses_supernet = getattr(self.searcher_class(), "uses_supernet", True)
        edges = config["searcher"].get("few_shot")
        subs = len(self.space.split(self.space.parse_edges(edges))) if edges else 0
        plan = plan_resources(config, cluster_view(), uses_supernet=uses_supernet, sub_supernets=subs)
        self.res, self.max_concurrent = plan.res, int(plan.res["max_concurrent"])
        run = {k: config[k] for k in ("run_id", "space", "dataset", "data_dir", "data_options")}
        run["run_dir"] = str(run_dir)
        if uses_supernet:
            # the handles are held for the session: Ray ends a (non-detached) actor once no handle is left
            self.actors = SupernetActors(actor_config(config), run_dir, plan, self.space, resume=resume)
            # a new run's actor starts while Tune does; a resumed one must first show that it
            # finds its snapshot (a run copied without them is a usage error, before anything runs)
            plan_here = self.local_data and not resume
            self.info = self.actors.start(schedule=local_schedule(config) if plan_here else None)
        else:
            from raynas.data import load_dataset

            splits = load_dataset(config["dataset"], config["data_dir"], **config["data_options"])
            self.info = {"device": "cpu", "dataset_fingerprint": splits.fingerprint(), "bn_mode": None, "offpath": None,
                         "num_classes": splits.info.num_classes, "in_channels": splits.info.in_channels,
                         "input_size": splits.info.input_size}
        self.watch = ResourceWatch(plan, self.actors)
        self.watch.compute = compute_shares(self.res, standalone_gpus=plan.standalone_gpus)
        if not plan.standalone_gpus:
            self.watch.warm_run = run
        return work_unit_trainable(run, self.res, standalone_gpus=plan.standalone_gpus, compute=self.watch.compute)

    def attach(self, searcher) -> None:
        """The session's searcher: the actors follow its phases (made when needed, then released)."""
        if self.watch is not None:
            self.watch.attach(searcher)

    def new_searcher(self):
        config, info = self.config, self.info
        kwargs = dict(config["searcher"], space=config["space"], seed=config["seed"], max_concurrent=self.max_concurrent)
        if "total_steps" in info:
            kwargs["total_steps"] = info["total_steps"]
        searcher = self.searcher_class()(**kwargs)
        # the searcher and the actors size the sub-supernets with the same rule
        # (raynas.searchers.base.sub_supernet_steps): they must agree
        if info.get("few_shot") and getattr(searcher, "few_shot_steps", None) != info["few_shot"]["steps"]:
            raise SearchFailed(f"the searcher trains each sub-supernet {searcher.few_shot_steps} steps but the actors "
                               f"were built for {info['few_shot']['steps']}")
        return searcher, kwargs

    def callbacks(self, run_dir: Location, *, resume: bool) -> list:
        from raynas.progress import Progress

        return [Progress(verbose=self.verbose, total_steps=self.info.get("total_steps")),
                *([self.watch] if self.watch is not None else [])]

    def stop(self) -> None:
        if self.actors is not None:
            self.info = self.actors.stop(self.info)  # every actor of the run; their state is in the snapshots
        self.actors = None

    def finish(self, run_dir: Location, *, status: str, outcome: dict, wall_s: float, sessions: int) -> None:
        from raynas.results import read_unit_rows

        manifest = _manifest(self.config, self.info)
        manifest.update(status=status, sessions=sessions, wall_s=wall_s,
                        outcome={k: v for k, v in outcome.items() if k != "completed"})
        rows = read_unit_rows(run_dir)
        _, self.summary = build_tables(run_dir, self.config, manifest, space=self.space, wall_s=wall_s,
                                       status=status, rows=rows)
        if status == "complete":
            _check_tables(rows, self.summary, outcome)


def local_schedule(config: dict) -> dict:
    """The one-shot supernet's schedule (``total_steps``, ``steps_per_epoch``) and its data's facts
    (classes, channels, input size) as its actor will compute them (:class:`raynas.worker.SupernetWorker`:
    whole batches of the train split), from the data on this machine without converting it
    (:func:`raynas.data.dataset_facts`: no torch here); the actor's own figures are checked
    against it when it has started. The data's fingerprint (a hash of the converted images) is
    the actor's."""
    from raynas.data import dataset_facts

    config = actor_config(config)
    supernet = config["supernet"]
    facts = dataset_facts(config["dataset"], config["data_dir"], **config["data_options"])
    per_epoch = facts.sizes["train"] // int(supernet["batch_size"])  # raynas.data.Batches, drop_last=True
    if supernet.get("total_steps") is not None:
        total = int(supernet["total_steps"])
    else:
        total = max(1, round(supernet["epochs"] * per_epoch))
    # the data's facts too: the tables need them even when a session ends before the actor answers
    return {"total_steps": total, "steps_per_epoch": per_epoch, "num_classes": facts.info.num_classes,
            "in_channels": facts.info.in_channels, "input_size": facts.info.input_size}


def actor_config(config: dict) -> dict:
    """The configuration as the supernet actors see it: the supernet section's data roles
    (``train_split``, ``score_split``: :data:`raynas.settings.DATA_ROLE_KEYS`) go to the data layer
    (``load_dataset(..., train_split=, score_split=)``, through the actors' data options), the rest
    of it to the worker. The defaults add nothing: a run's actors are those of a raynas before roles."""
    from raynas.settings import DATA_ROLE_KEYS

    supernet = dict(config["supernet"])
    roles = {k: supernet.pop(k) for k in DATA_ROLE_KEYS if k in supernet}
    roles = {k: v for k, v in roles.items() if v != {"train_split": "train", "score_split": "valid"}[k]}
    return {**config, "supernet": supernet, "data_options": {**config["data_options"], **roles}}


def data_roles(config: dict) -> dict:
    """What the run trained and scored on (manifest ``data_roles``): the supernets' train split,
    the split candidates were scored on, the split the final picks trained on and their seeds."""
    supernet = config.get("supernet") or {}
    recipe = (config.get("searcher") or {}).get("standalone") or {}
    seeds = recipe.get("seeds") or [recipe.get("seed", 777)]
    return {"supernet_train": supernet.get("train_split", "train") if supernet else None,
            "score": supernet.get("score_split", "valid") if supernet else None,
            "finals_train": recipe.get("train_split", "train"), "final_seeds": [int(x) for x in seeds]}


def _check_tables(rows, summary, outcome: dict) -> None:
    """A complete run's tables must agree with its searcher's final state."""
    logged = set(rows["key"]) if "key" in rows else set()
    missing = [k for k in outcome.get("completed", []) if k not in logged]
    if missing:
        raise SearchFailed(f"the row log lacks the rows of {len(missing)} completed unit(s), e.g. {missing[0]}; "
                           "the tables would not match the search")
    final = outcome.get("final_arch")
    if final is not None and summary.iloc[0]["final_arch"] != final:
        raise SearchFailed(f"the tables' final arch {summary.iloc[0]['final_arch']} is not the searcher's {final}")


def _manifest(config: dict, info: dict) -> dict:
    import ray

    return {
        "run_id": config["run_id"],
        "method": config["method"],
        "seed": config["seed"],
        "versions": {"raynas": __version__, "torch": info.get("torch_version") or _torch_version(), "ray": ray.__version__,
                     "python": platform.python_version()},
        "device": info.get("device"),
        "device_name": info.get("device_name"),
        "bn_mode": info.get("bn_mode"),
        "offpath": info.get("offpath"),
        "dataset": {"name": config["dataset"], "data_dir": config["data_dir"], "options": config["data_options"],
                    "fingerprint": info.get("dataset_fingerprint")},
        "num_classes": info.get("num_classes"),
        "in_channels": info.get("in_channels"),
        "input_size": info.get("input_size"),
        "supernet": {k: info.get(k) for k in ("total_steps", "steps_per_epoch", "parameters", "restored_from")},
        "few_shot": info.get("few_shot") and {
            **info["few_shot"], "variant": config["searcher"].get("few_shot_variant", "continue"),
            "sub_supernet_budget": config["searcher"].get("sub_supernet_budget", "equal")},
        "data_roles": data_roles(config),
        "config": config,
        "host": platform.node(),
    }


def _torch_version() -> str | None:
    """torch's version here, without importing it (seconds, when the driver did not need it):
    the installed package's (no local ``+cu...`` tag) where torch was not imported."""
    if "torch" in sys.modules:
        return str(sys.modules["torch"].__version__)
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return None
