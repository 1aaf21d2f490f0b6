"""The ``raynas`` command line.

    raynas search --method rsps --dataset digits            # embedded local Ray, small preset
    raynas search --resume runs/rsps-digits-s0-...          # continue after the driver died
    raynas compare runs/*                                   # method table, no Ray needed
    raynas rank runs/* --truth truth/fashion-mnist16.parquet # supernet ranking vs the truth
    raynas truth --output truth/new.parquet ...             # build a ground-truth table
    raynas space nb201 --info                               # the space's facts

Usage errors (:class:`raynas.errors.UsageError`, :class:`raynas.data.DatasetError`, bad arguments)
print one line and exit 2, before Ray starts, leaving nothing behind; nothing is overwritten. Any
other error is a bug: its traceback is printed and the exit code is 1.
"""

from __future__ import annotations

import argparse
import ast
import sys
import time
from pathlib import Path

from raynas import __version__
from raynas.errors import UsageError


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (no usage block): ``raynas search: error: ...``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_arg(minimum: int, meaning: str = ""):
    """An argparse type: an int in ASCII digits, >= ``minimum`` (``int()`` alone takes '\u0663' as 3)."""

    def parse(text: str) -> int:
        from raynas.spaces.base import is_index_text

        if not is_index_text(text.strip()) or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"{_short(text)}: expected an int >= {minimum}{meaning}")
        return int(text)

    parse.__name__ = "int"
    return parse


def _fraction_arg(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{_short(text)}: expected a number in 0..1")
    return value


def _gpus_arg(text: str) -> float:
    """An argparse type: a finite number of GPUs >= 0."""
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{_short(text)}: expected a number of GPUs >= 0 (e.g. 1, 0.5, or 0 for CPU only)")
    return value


def _short(value, limit: int = 60) -> str:
    from raynas.spaces.base import short_repr

    return short_repr(value, limit)


def _parse_set(items: list[str]) -> dict:
    """``section.key=value`` pairs -> nested overrides (values parsed as Python literals)."""
    out: dict = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not name or not section:
            raise UsageError(f"--set {_short(item)}; expected SECTION.KEY=VALUE, e.g. supernet.epochs=5")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        out.setdefault(section, {})[name] = value
    return out


def _with_few_shot(overrides: dict, edges: str | None) -> dict:
    if edges is not None:
        overrides.setdefault("searcher", {})["few_shot"] = edges
    return overrides


def _final_seeds_arg(text: str) -> list[int]:
    """``--final-seeds``: a count N (the benchmark's seeds 777, 888, 999, then 1110...) or a
    comma-separated list of seeds (``777,888``)."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [int(p) for p in parts if p]
    except ValueError:
        values = []
    if not values or any(v < 0 for v in values) or ("," not in str(text) and values[0] < 1) \
            or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{_short(text)}: expected a count N >= 1 (seeds 777, 888, 999, ...) or a "
                                         "comma-separated list of distinct seeds, e.g. 777,888")
    if "," in str(text):
        return values
    return [777 + 111 * i for i in range(values[0])]


def _with_finals(overrides: dict, seeds: list[int] | None, train: str | None) -> dict:
    """``--final-seeds`` / ``--final-train`` into the standalone recipe (searcher.standalone)."""
    if seeds is None and train is None:
        return overrides
    searcher = overrides.setdefault("searcher", {})
    recipe = dict(searcher.get("standalone") or {})
    if seeds is not None:
        recipe["seeds"] = seeds
    if train is not None:
        recipe["train_split"] = {"train": "train", "full": "train+valid"}[train]
    searcher["standalone"] = recipe
    return overrides


def _with_gpus(overrides: dict, gpus: float | None) -> dict:
    if gpus is not None:
        overrides.setdefault("resources", {})["gpus"] = gpus
    return overrides


def _parse_options(items: list[str]) -> dict:
    out = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--data-option {_short(item)}; expected KEY=VALUE, e.g. resolution=16")
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw
    return out


def build_parser() -> argparse.ArgumentParser:
    from raynas.data import dataset_names
    from raynas.searchers import method_names
    from raynas.spaces import space_names

    parser = _Parser(prog="raynas", description="Weight-sharing NAS on Ray Tune.")
    parser.add_argument("--version", action="version", version=f"raynas {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("search", help="run one search (or resume one) and write its result tables")
    s.add_argument("--method", default="rsps", help=f"one of: {', '.join(method_names())} (default rsps)")
    s.add_argument("--space", default="nb201", help=f"one of: {', '.join(space_names())} (default nb201)")
    s.add_argument("--dataset", default="digits", help=f"one of: {', '.join(dataset_names())} (default digits)")
    s.add_argument("--data-dir", help="folder holding the dataset's files (fashion-mnist defaults to Debian's)")
    s.add_argument("--data-option", action="append", metavar="KEY=VALUE", help="dataset option, e.g. resolution=16")
    s.add_argument("--preset", default="small", help="small (minutes on 2 CPU cores), paper, few-shot-paper "
                        "(rsps/setn: the official few-shot NAS protocol), or rank (rsps: a ranking run; "
                        "see truth/README.md) (default small)")
    s.add_argument("--seed", type=_int_arg(0), default=0)
    s.add_argument("--few-shot", metavar="EDGES",
                   help="few-shot NAS: split the space on these edges, e.g. '1<-0' (5 sub-supernets) or '1<-0,3<-2' (25)")
    s.add_argument("--final-seeds", type=_final_seeds_arg, metavar="N|S1,S2",
                   help="train each final pick with N seeds (777, 888, 999, ...: the benchmark's) or these seeds; the "
                        "summary gives their mean and std (default: the preset's, one seed 777)")
    s.add_argument("--final-train", choices=("train", "full"),
                   help="final picks train on the train split (valid held out: picks compared on it) or the full "
                        "train set, train+valid, as the benchmark's headline numbers (the search's best pick wins)")
    s.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override a setting, e.g. supernet.epochs=5 or searcher.num_candidates=50")
    s.add_argument("--candidates", metavar="FILE",
                   help="score exactly these archs (rsps): a truth table, a candidates.parquet or a text file of "
                        "arch strings; with --preset rank, a ranking run for `raynas rank`")
    s.add_argument("--benchmark", metavar="PATH",
                   help="add NAS-Bench-201's accuracy of every candidate and of the final pick to the tables: a truth "
                        "made by `raynas truth --from-benchmark` (fast) or the benchmark file/folder itself")
    s.add_argument("--benchmark-dataset", metavar="NAME",
                   help="the benchmark's dataset to look up (default: the run's; needed for digits/fashion-mnist): "
                        "cifar10, cifar100 or imagenet16-120")
    s.add_argument("--storage", default="runs", help="where run directories go: a folder (default ./runs) or a URI "
                        "every node reaches, e.g. s3://BUCKET/runs, gs://BUCKET/runs")
    s.add_argument("--name", help="run directory name (default METHOD-DATASET-sSEED-TIME)")
    s.add_argument("--address", help="Ray cluster address to join (default: start an embedded local Ray)")
    s.add_argument("--num-cpus", type=_int_arg(1, " (omit it for all CPUs)"), help="CPUs of the embedded local Ray (default: all)")
    s.add_argument("--gpus", type=_gpus_arg, metavar="N",
                   help="GPUs for each supernet actor and standalone training (e.g. 1, or 0.5 to share one), asked "
                        "for even before a node has one so that an autoscaler adds GPU nodes; 0: CPU only "
                        "(default: 1 if the cluster has GPUs when the search starts, else 0); = --set resources.gpus=N")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue the search in RUN_DIR (a folder or a URI)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    s.add_argument("-v", "--verbose", action="store_true", help="every candidate, and the workers' logs")

    st = sub.add_parser("status", help="where a run stands: status, phase, progress, what a resume would do (reads files only)")
    st.add_argument("run", metavar="RUN_DIR")
    st.add_argument("--format", choices=("text", "json"), default="text")

    c = sub.add_parser("compare", help="print the method table of finished runs (reads files only)")
    c.add_argument("runs", nargs="+", metavar="RUN_DIR")
    c.add_argument("--format", choices=("text", "markdown", "csv", "parquet"), default="text")
    c.add_argument("--output", help="write the table here (required for parquet)")
    c.add_argument("--runs-table", action="store_true", help="one row per run instead of per method")

    p = sub.add_parser("space", help="facts of a search space")
    p.add_argument("name", help=f"one of: {', '.join(space_names())}")
    p.add_argument("--info", action="store_true", help="ops, edges, size, unique archs (the default)")
    p.add_argument("--arch", help="an arch (string or index): its index, string, parameters and FLOPs")
    p.add_argument("--C", type=_int_arg(1), default=16)
    p.add_argument("--N", type=_int_arg(1), default=5)
    p.add_argument("--num-classes", type=_int_arg(1), default=10)
    p.add_argument("--input-size", type=_int_arg(1), default=32)

    d = sub.add_parser("data", help="load a dataset and print its splits")
    d.add_argument("name", help=f"one of: {', '.join(dataset_names())}")
    d.add_argument("--data-dir")
    d.add_argument("--data-option", action="append", metavar="KEY=VALUE")

    r = sub.add_parser("rank", help="rank agreement of runs' supernet scores with a truth table (reads files only)")
    r.add_argument("runs", nargs="+", metavar="RUN_DIR")
    r.add_argument("--truth", required=True, metavar="TABLE", help="truth parquet, e.g. truth/fashion-mnist16.parquet, "
                        "or a NAS-Bench-201 / NATS-Bench file (or a truth imported from one)")
    r.add_argument("--truth-dataset", metavar="NAME", help="a benchmark truth's dataset, e.g. cifar10-valid, cifar100")
    r.add_argument("--truth-epochs", type=_int_arg(1), metavar="E", help="a benchmark truth's epoch budget, e.g. 200 or 12")
    r.add_argument("--format", choices=("text", "csv", "json"), default="text")
    r.add_argument("--top-k", type=_int_arg(1), action="append", metavar="K", help="top-k precision for K (default 5 and 10)")

    t = sub.add_parser("truth", help="build a ground-truth table: a stratified sample of archs trained standalone, several seeds each")
    t.add_argument("--output", help="the table to write (.parquet; never overwritten) and its .json beside it")
    t.add_argument("--from-benchmark", metavar="PATH", help="import NAS-Bench-201 (.pth v1.0/v1.1) or NATS-Bench topology "
                        "(NATS-tss-v1_0-3ffb9-simple folder) instead of training: every arch, dataset, epoch budget, seed")
    t.add_argument("--dataset", default="fashion-mnist", help=f"one of: {', '.join(dataset_names())} (default fashion-mnist)")
    t.add_argument("--data-dir", help="folder holding the dataset's files (fashion-mnist defaults to Debian's)")
    t.add_argument("--data-option", action="append", metavar="KEY=VALUE", help="dataset option, e.g. resolution=16")
    t.add_argument("--space", default="nb201", help=f"one of: {', '.join(space_names())} (default nb201)")
    t.add_argument("--archs", type=_int_arg(1), default=40, help="archs in the sample (default 40)")
    t.add_argument("--seeds", type=_int_arg(1), default=6, help="training seeds per arch, 0..K-1 (default 6)")
    t.add_argument("--epochs", type=_int_arg(1), default=10)
    t.add_argument("--C", type=_int_arg(1), default=8)
    t.add_argument("--N", type=_int_arg(1), default=1)
    t.add_argument("--batch-size", type=_int_arg(1), default=64)
    t.add_argument("--sample-seed", type=_int_arg(0), default=0, help="seed of the arch sample (default 0)")
    t.add_argument("--strata", type=_int_arg(1), default=4, help="parameter-count strata of the sample (default 4)")
    t.add_argument("--weak-fraction", type=_fraction_arg, default=0.15, help="share of weak archs forced in (default 0.15)")
    t.add_argument("--storage", default="runs", help="folder of the Tune experiment (default ./runs)")
    t.add_argument("--name", help="experiment directory name (default truth-OUTPUT-TIME)")
    t.add_argument("--address", help="Ray cluster address to join (default: start an embedded local Ray)")
    t.add_argument("--num-cpus", type=_int_arg(1, " (omit it for all CPUs)"), help="CPUs of the embedded local Ray (default: all)")
    t.add_argument("--max-concurrent", type=_int_arg(1), help="trainings at once (default: what the cluster holds)")
    t.add_argument("--resume", metavar="EXPERIMENT_DIR", help="continue a build whose driver died, with its own settings")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress lines")

    for name in COMMAND_MODULES:
        _command_module(name).add_parser(sub)
    return parser


# Commands with a module of their own, raynas/commands/NAME.py: ``add_parser(sub)`` adds the
# subcommand (importing nothing heavy: ``raynas --help`` stays fast) and ``run(args) -> int`` runs
# it. Like this file they are the presenting layer: they print; the library under them does not.
COMMAND_MODULES: tuple[str, ...] = ("plot", "study", "export")


def _command_module(name: str):
    import importlib

    return importlib.import_module(f"raynas.commands.{name}")


def _check_search(args) -> dict:
    """Every argument of ``raynas search`` checked before Ray starts (nothing written): the
    overrides to pass on."""
    from raynas import settings

    if args.resume is not None:
        if any(v is not None for v in (args.data_dir, args.name, args.data_option, args.few_shot, args.candidates,
                                       args.final_seeds, args.final_train, args.benchmark)):
            raise UsageError("--resume continues a run with its own settings; "
                             "drop --data-dir/--name/--data-option/--few-shot/--candidates/--final-seeds/--final-train/--benchmark")
        # a resume may change where and how the search runs (resources), not what it computes
        return settings.resume_overrides(_with_gpus(_parse_set(args.set), args.gpus))
    settings.check_storage(args.storage)
    settings.check_name(args.name)
    args.benchmark_source = _benchmark_source(args)
    overrides = _with_gpus(_with_few_shot(_parse_set(args.set), args.few_shot), args.gpus)
    overrides = _with_finals(overrides, args.final_seeds, args.final_train)
    if args.candidates is not None:
        from raynas.ranking import read_archs

        try:
            overrides.setdefault("searcher", {})["candidates"] = read_archs(args.candidates)
        except (ValueError, FileNotFoundError) as err:
            raise UsageError(f"--candidates: {err}") from None
    settings.make_config(args.method, space=args.space, dataset=args.dataset, data_dir=args.data_dir,
                         data_options=_parse_options(args.data_option), preset=args.preset, seed=args.seed,
                         overrides=overrides)
    return overrides


def _benchmark_source(args) -> dict | None:
    """``--benchmark`` / ``--benchmark-dataset`` checked (before Ray starts): the run's
    ``benchmark`` setting, ``{"path", "dataset", "epochs"}``, or None."""
    if args.benchmark is None:
        if args.benchmark_dataset is not None:
            raise UsageError("--benchmark-dataset needs --benchmark PATH")
        return None
    from raynas.nasbench import check_source, lookup_datasets

    dataset = args.benchmark_dataset or args.dataset
    if args.benchmark_dataset is None and dataset not in ("cifar10", "cifar100", "imagenet16-120"):
        raise UsageError(f"--benchmark: dataset {dataset!r} is not one of NAS-Bench-201's; name the benchmark's "
                         "dataset to look the archs up on with --benchmark-dataset cifar10|cifar100|imagenet16-120")
    lookup_datasets(dataset)
    check_source(args.benchmark)
    return {"path": str(Path(args.benchmark).resolve()), "dataset": dataset, "epochs": 200}


def _cmd_search(args) -> int:
    overrides = _check_search(args)
    from raynas.driver import search

    verbose = 0 if args.quiet else (2 if args.verbose else 1)
    if args.resume:
        from raynas.driver import resume

        run = resume(args.resume, resources=overrides.get("resources"), address=args.address,
                     num_cpus=args.num_cpus, verbose=verbose, started_at=args.started_at)
    else:
        run = search(
            args.method,
            space=args.space,
            dataset=args.dataset,
            data_dir=args.data_dir,
            data_options=_parse_options(args.data_option),
            preset=args.preset,
            seed=args.seed,
            overrides=overrides,
            benchmark=args.benchmark_source,
            storage=args.storage,
            name=args.name,
            address=args.address,
            num_cpus=args.num_cpus,
            verbose=verbose,
            started_at=args.started_at,
        )
    print(run.run_dir)
    return _exit_code(run, "search")


def _exit_code(run, command: str) -> int:
    """0: complete; 130: interrupted (resumable); 1: failed."""
    if run.status == "complete":
        return 0
    if run.status == "interrupted":
        print(f"raynas {command}: interrupted; `raynas search --resume {run.run_dir}` continues it", file=sys.stderr)
        return 130
    print(f"raynas {command}: failed: {run.message or 'see the run directory'}", file=sys.stderr)
    return 1


def _cmd_status(args) -> int:
    import json

    from raynas.status import format_status, run_status

    status = run_status(args.run)
    print(json.dumps(status, indent=2, default=str) if args.format == "json" else format_status(status))
    return 0


def _cmd_compare(args) -> int:
    from raynas.results import compare_table, load_summaries

    try:
        summaries = load_summaries(args.runs)
    except (ValueError, FileNotFoundError) as err:  # a RUN_DIR without its tables
        raise UsageError(str(err)) from None
    table = summaries if args.runs_table else compare_table(summaries)
    status = summaries["status"].fillna("unknown") if "status" in summaries else None
    if status is not None and (status != "complete").any():
        # unfinished runs are listed (column `unfinished`, or `status` per run), never averaged in
        names = ", ".join(f"{r} ({s})" for r, s in zip(summaries["run_id"], status) if s != "complete")
        print(f"raynas compare: note: unfinished runs left out of the means: {names}", file=sys.stderr)
    if args.format == "parquet":
        if not args.output:
            raise UsageError("--format parquet needs --output FILE")
        if Path(args.output).exists():
            raise UsageError(f"--output {args.output} already exists; choose a new file")
        table.to_parquet(args.output, index=False)
        return 0
    if args.format == "markdown":
        from raynas.results import markdown_table

        text = markdown_table(table)
    elif args.format == "csv":
        text = table.to_csv(index=False).rstrip("\n")
    else:
        text = table.to_string(index=False, float_format=lambda v: f"{v:.4f}")
    if args.output:
        if Path(args.output).exists():
            raise UsageError(f"--output {args.output} already exists; choose a new file")
        Path(args.output).write_text(text + "\n")
    else:
        print(text)
    return 0


def _cmd_space(args) -> int:
    from raynas.spaces import get_space

    from raynas.spaces.base import is_index_text

    try:
        space = get_space(args.name)
    except ValueError as err:
        raise UsageError(str(err)) from None
    net = dict(C=args.C, N=args.N, num_classes=args.num_classes)
    if args.arch is not None:
        # an index only in ASCII digits: '\u0663' is not index 3; an int is the benchmark's index
        text = args.arch.strip()
        try:
            arch = space.arch_from_benchmark_index(int(text)) if is_index_text(text) else space.parse(args.arch)
        except ValueError as err:
            raise UsageError(f"--arch: {err}") from None
        print(f"arch       {arch}\nindex      {space.benchmark_index(arch)} (NAS-Bench-201's, the tables' arch_index)\n"
              f"code       {space.index_of(arch)} (raynas's base-5 code, the tables' arch_code)\nops        {arch.ops}")
        print(f"parameters {space.count_parameters(arch, **net):,} (C={args.C}, N={args.N}, {args.num_classes} classes)")
        print(f"FLOPs      {space.count_flops(arch, input_size=args.input_size, **net):,} ({args.input_size}x{args.input_size} input)")
        return 0
    archs = list(space.enumerate())
    unique = len({space.canonical_key(a) for a in archs})
    print(f"space      {space.name}\nops        {', '.join(f'{i} {n}' for i, n in enumerate(space.op_names))}")
    print(f"edges      {', '.join(space.edge_names)}\narchs      {len(archs):,}\nunique     {unique:,} (the benchmark's isomorphism rule)")
    return 0


def _cmd_data(args) -> int:
    from raynas.data import check_options, load_dataset

    options = _parse_options(args.data_option)
    check_options(args.name, options)  # before the data (and torch) are read
    splits = load_dataset(args.name, args.data_dir, **options)
    i = splits.info
    print(f"dataset    {i.name}: {i.num_classes} classes, {i.in_channels}x{i.input_size}x{i.input_size}")
    print(f"splits     train {len(splits.train)}, valid {len(splits.valid)}, test {len(splits.test)}")
    print(f"augment    crop pad {i.pad}, flip {i.flip}\nhash       {splits.fingerprint()}")
    return 0


def _cmd_rank(args) -> int:
    import json

    from raynas.ranking import load_truth, rank_runs

    try:
        # a candidates table or a stray parquet is refused here, in one line
        truth = load_truth(args.truth, dataset=args.truth_dataset, epochs=args.truth_epochs)
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(f"--truth: {err}") from None
    try:
        table = rank_runs(args.runs, truth, top_k=tuple(args.top_k or (5, 10)))
    except FileNotFoundError as err:  # a RUN_DIR without candidates.parquet
        raise UsageError(str(err)) from None
    if args.format == "json":
        print(json.dumps(table.to_dict(orient="records"), indent=2, default=str))
    elif args.format == "csv":
        print(table.to_csv(index=False).rstrip("\n"))
    else:
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


def _cmd_truth(args) -> int:
    import shlex

    from raynas.truth import build_truth

    from raynas import settings
    from raynas.data import check_options

    if args.from_benchmark is not None:
        return _truth_from_benchmark(args)
    if args.resume and any(v is not None for v in (args.output, args.data_dir, args.name, args.data_option)):
        raise UsageError("--resume continues a build with its own settings; drop --output/--data-dir/--name/--data-option")
    if args.resume is None:
        settings.check_storage(args.storage)
        settings.check_name(args.name)
        try:
            check_options(args.dataset, _parse_options(args.data_option))
        except ValueError as err:
            raise UsageError(str(err)) from None
    # the settings as a command line, recorded in the table's metadata (how it was built)
    command = ["raynas", "truth", "--dataset", args.dataset]
    command += [f"--data-dir={args.data_dir}"] if args.data_dir else []
    command += [f"--data-option={o}" for o in args.data_option or []]
    command += [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in (
        "space", "archs", "seeds", "epochs", "C", "N", "batch_size", "sample_seed", "strata", "weak_fraction")]
    command += ["--output", str(args.output)]
    output = build_truth(
        args.dataset,
        output=args.output,
        data_dir=args.data_dir,
        data_options=_parse_options(args.data_option),
        space=args.space,
        archs=args.archs,
        seeds=args.seeds,
        recipe=dict(C=args.C, N=args.N, epochs=args.epochs, batch_size=args.batch_size),
        sample_seed=args.sample_seed,
        strata=args.strata,
        weak_fraction=args.weak_fraction,
        storage=args.storage,
        name=args.name,
        address=args.address,
        num_cpus=args.num_cpus,
        max_concurrent=args.max_concurrent,
        resume=args.resume,
        command=shlex.join(command),
        verbose=0 if args.quiet else 1,
    )
    print(output)
    return 0


def _truth_from_benchmark(args) -> int:
    from raynas.nasbench import check_output, import_benchmark

    if args.output is None:
        raise UsageError("--output is required: the .parquet file the truth goes to")
    if args.resume is not None:
        raise UsageError("--from-benchmark imports a file at once; drop --resume")
    check_output(args.output)
    if not args.quiet:
        print(f"raynas truth: importing {args.from_benchmark} (a full NAS-Bench-201 .pth takes minutes)", file=sys.stderr,
              flush=True)
    output, meta = import_benchmark(args.from_benchmark, args.output)
    if not args.quiet:
        held = ", ".join(f"{h['dataset']}/{h['epochs']}ep ({h['archs']:,} archs)" for h in meta["held"])
        print(f"raynas truth: {meta['rows']:,} rows, {meta['archs']:,} archs of {meta['source']['format']} "
              f"{meta['source']['version']}: {held}; {meta['cost']['wall_s']:.0f} s, peak RSS "
              f"{meta['cost']['peak_rss_mb'] / 1024:.1f} GiB", file=sys.stderr, flush=True)
    print(output)
    return 0


def main(argv: list[str] | None = None) -> int:
    started_at = time.time()  # a search's recorded wall time counts from here (imports, Ray's start)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version, or a bad argument (one line, exit 2)
        return done.code if isinstance(done.code, int) else 2
    args.started_at = started_at
    handlers = {"search": _cmd_search, "status": _cmd_status, "compare": _cmd_compare, "space": _cmd_space, "data": _cmd_data,
                "rank": _cmd_rank, "truth": _cmd_truth}
    handlers.update({name: _command_module(name).run for name in COMMAND_MODULES})
    try:
        return handlers[args.command](args)
    except Exception as err:
        from raynas.data import DatasetError

        if not isinstance(err, (UsageError, DatasetError)):
            import traceback

            traceback.print_exc()  # a bug: its traceback, exit 1
            return 1
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        if len(message) > 500:  # one line a terminal can show; the input is quoted in it already
            message = message[:497] + "..."
        print(f"raynas {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        how = {"truth": "`raynas truth --resume EXPERIMENT_DIR` continues the build",
               "study": "`raynas study --resume STUDY_DIR` continues the study"}.get(
            args.command, "`raynas search --resume RUN_DIR` continues a search")
        print(f"raynas {args.command}: interrupted; {how}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
