"""The ``raynas`` command line.

    raynas search --method rsps --dataset digits            # embedded local Ray, small preset
    raynas search --resume runs/rsps-digits-s0-...          # continue after the driver died
    raynas compare runs/*                                   # method table, no Ray needed
    raynas rank runs/* --truth truth/fashion-mnist16.parquet # supernet ranking vs the truth
    raynas truth --output truth/new.parquet ...             # build a ground-truth table
    raynas space nb201 --info                               # the space's facts

Usage errors print one line and exit 2; nothing is overwritten.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

from raynas import __version__


def _parse_set(items: list[str]) -> dict:
    """``section.key=value`` pairs -> nested overrides (values parsed as Python literals)."""
    out: dict = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise ValueError(f"--set {item!r}; expected SECTION.KEY=VALUE, e.g. supernet.epochs=5")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        out.setdefault(section, {})[name] = value
    return out


def _with_few_shot(overrides: dict, edges: str | None) -> dict:
    if edges:
        overrides.setdefault("searcher", {})["few_shot"] = edges
    return overrides


def _parse_options(items: list[str]) -> dict:
    out = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--data-option {item!r}; expected KEY=VALUE, e.g. resolution=16")
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw
    return out


def build_parser() -> argparse.ArgumentParser:
    from raynas.data import dataset_names
    from raynas.searchers import method_names
    from raynas.spaces import space_names

    parser = argparse.ArgumentParser(prog="raynas", description="Weight-sharing NAS on Ray Tune.")
    parser.add_argument("--version", action="version", version=f"raynas {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("search", help="run one search (or resume one) and write its result tables")
    s.add_argument("--method", default="rsps", help=f"one of: {', '.join(method_names())} (default rsps)")
    s.add_argument("--space", default="nb201", help=f"one of: {', '.join(space_names())} (default nb201)")
    s.add_argument("--dataset", default="digits", help=f"one of: {', '.join(dataset_names())} (default digits)")
    s.add_argument("--data-dir", help="folder holding the dataset's files (fashion-mnist defaults to Debian's)")
    s.add_argument("--data-option", action="append", metavar="KEY=VALUE", help="dataset option, e.g. resolution=16")
    s.add_argument("--preset", default="small", help="small (minutes on 2 CPU cores), paper, or rank (rsps: a ranking run; "
                        "see truth/README.md) (default small)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--few-shot", metavar="EDGES",
                   help="few-shot NAS: split the space on these edges, e.g. '1<-0' (5 sub-supernets) or '1<-0,3<-2' (25)")
    s.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override a setting, e.g. supernet.epochs=5 or searcher.num_candidates=50")
    s.add_argument("--candidates", metavar="FILE",
                   help="score exactly these archs (rsps): a truth table, a candidates.parquet or a text file of "
                        "arch strings; with --preset rank, a ranking run for `raynas rank`")
    s.add_argument("--storage", default="runs", help="folder of run directories (default ./runs)")
    s.add_argument("--name", help="run directory name (default METHOD-DATASET-sSEED-TIME)")
    s.add_argument("--address", help="Ray cluster address to join (default: start an embedded local Ray)")
    s.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray (default: all)")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue the search in RUN_DIR")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    s.add_argument("-v", "--verbose", action="store_true", help="every candidate, and the workers' logs")

    c = sub.add_parser("compare", help="print the method table of finished runs (reads files only)")
    c.add_argument("runs", nargs="+", metavar="RUN_DIR")
    c.add_argument("--format", choices=("text", "markdown", "csv", "parquet"), default="text")
    c.add_argument("--output", help="write the table here (required for parquet)")
    c.add_argument("--runs-table", action="store_true", help="one row per run instead of per method")

    p = sub.add_parser("space", help="facts of a search space")
    p.add_argument("name", help=f"one of: {', '.join(space_names())}")
    p.add_argument("--info", action="store_true", help="ops, edges, size, unique archs (the default)")
    p.add_argument("--arch", help="an arch (string or index): its index, string, parameters and FLOPs")
    p.add_argument("--C", type=int, default=16)
    p.add_argument("--N", type=int, default=5)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--input-size", type=int, default=32)

    d = sub.add_parser("data", help="load a dataset and print its splits")
    d.add_argument("name", help=f"one of: {', '.join(dataset_names())}")
    d.add_argument("--data-dir")
    d.add_argument("--data-option", action="append", metavar="KEY=VALUE")

    r = sub.add_parser("rank", help="rank agreement of runs' supernet scores with a truth table (reads files only)")
    r.add_argument("runs", nargs="+", metavar="RUN_DIR")
    r.add_argument("--truth", required=True, metavar="TABLE", help="truth parquet, e.g. truth/fashion-mnist16.parquet")
    r.add_argument("--format", choices=("text", "csv", "json"), default="text")
    r.add_argument("--top-k", type=int, action="append", metavar="K", help="top-k precision for K (default 5 and 10)")

    t = sub.add_parser("truth", help="build a ground-truth table: a stratified sample of archs trained standalone, several seeds each")
    t.add_argument("--output", help="the table to write (.parquet; never overwritten) and its .json beside it")
    t.add_argument("--dataset", default="fashion-mnist", help=f"one of: {', '.join(dataset_names())} (default fashion-mnist)")
    t.add_argument("--data-dir", help="folder holding the dataset's files (fashion-mnist defaults to Debian's)")
    t.add_argument("--data-option", action="append", metavar="KEY=VALUE", help="dataset option, e.g. resolution=16")
    t.add_argument("--space", default="nb201", help=f"one of: {', '.join(space_names())} (default nb201)")
    t.add_argument("--archs", type=int, default=40, help="archs in the sample (default 40)")
    t.add_argument("--seeds", type=int, default=6, help="training seeds per arch, 0..K-1 (default 6)")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--C", type=int, default=8)
    t.add_argument("--N", type=int, default=1)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--sample-seed", type=int, default=0, help="seed of the arch sample (default 0)")
    t.add_argument("--strata", type=int, default=4, help="parameter-count strata of the sample (default 4)")
    t.add_argument("--weak-fraction", type=float, default=0.15, help="share of weak archs forced in (default 0.15)")
    t.add_argument("--storage", default="runs", help="folder of the Tune experiment (default ./runs)")
    t.add_argument("--name", help="experiment directory name (default truth-OUTPUT-TIME)")
    t.add_argument("--address", help="Ray cluster address to join (default: start an embedded local Ray)")
    t.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray (default: all)")
    t.add_argument("--max-concurrent", type=int, help="trainings at once (default: what the cluster holds)")
    t.add_argument("--resume", metavar="EXPERIMENT_DIR", help="continue a build whose driver died, with its own settings")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    return parser


def _cmd_search(args) -> int:
    from raynas.driver import search

    if args.resume and any(v is not None for v in (args.data_dir, args.name, args.set, args.data_option, args.few_shot,
                                                   args.candidates)):
        raise ValueError("--resume continues a run with its own settings; "
                         "drop --data-dir/--name/--set/--data-option/--few-shot/--candidates")
    overrides = _with_few_shot(_parse_set(args.set), args.few_shot)
    if args.candidates:
        from raynas.ranking import read_archs

        overrides.setdefault("searcher", {})["candidates"] = read_archs(args.candidates)
    run_dir = search(
        args.method,
        space=args.space,
        dataset=args.dataset,
        data_dir=args.data_dir,
        data_options=_parse_options(args.data_option),
        preset=args.preset,
        seed=args.seed,
        overrides=overrides,
        storage=args.storage,
        name=args.name,
        address=args.address,
        resume=args.resume,
        num_cpus=args.num_cpus,
        verbose=0 if args.quiet else (2 if args.verbose else 1),
    )
    print(run_dir)
    return 0


def _cmd_compare(args) -> int:
    from raynas.results import compare_table, load_summaries

    summaries = load_summaries(args.runs)
    table = summaries if args.runs_table else compare_table(summaries)
    if args.format == "parquet":
        if not args.output:
            raise ValueError("--format parquet needs --output FILE")
        if Path(args.output).exists():
            raise ValueError(f"--output {args.output} already exists; choose a new file")
        table.to_parquet(args.output, index=False)
        return 0
    if args.format == "markdown":
        text = _markdown(table)
    elif args.format == "csv":
        text = table.to_csv(index=False).rstrip("\n")
    else:
        text = table.to_string(index=False, float_format=lambda v: f"{v:.4f}")
    if args.output:
        if Path(args.output).exists():
            raise ValueError(f"--output {args.output} already exists; choose a new file")
        Path(args.output).write_text(text + "\n")
    else:
        print(text)
    return 0


def _markdown(table) -> str:
    def cell(v):
        # arch strings are full of '|': escape them or they split the markdown cell
        return f"{v:.4f}" if isinstance(v, float) else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def _cmd_space(args) -> int:
    from raynas.spaces import get_space

    space = get_space(args.name)
    net = dict(C=args.C, N=args.N, num_classes=args.num_classes)
    if args.arch:
        arch = space.parse(int(args.arch) if args.arch.isdigit() else args.arch)
        print(f"arch       {arch}\nindex      {space.index_of(arch)}\nops        {arch.ops}")
        print(f"parameters {space.count_parameters(arch, **net):,} (C={args.C}, N={args.N}, {args.num_classes} classes)")
        print(f"FLOPs      {space.count_flops(arch, input_size=args.input_size, **net):,} ({args.input_size}x{args.input_size} input)")
        return 0
    archs = list(space.enumerate())
    unique = len({space.canonical_key(a) for a in archs})
    print(f"space      {space.name}\nops        {', '.join(f'{i} {n}' for i, n in enumerate(space.op_names))}")
    print(f"edges      {', '.join(space.edge_names)}\narchs      {len(archs):,}\nunique     {unique:,} (the benchmark's isomorphism rule)")
    return 0


def _cmd_data(args) -> int:
    from raynas.data import load_dataset

    splits = load_dataset(args.name, args.data_dir, **_parse_options(args.data_option))
    i = splits.info
    print(f"dataset    {i.name}: {i.num_classes} classes, {i.in_channels}x{i.input_size}x{i.input_size}")
    print(f"splits     train {len(splits.train)}, valid {len(splits.valid)}, test {len(splits.test)}")
    print(f"augment    crop pad {i.pad}, flip {i.flip}\nhash       {splits.fingerprint()}")
    return 0


def _cmd_rank(args) -> int:
    import json

    from raynas.ranking import rank_runs

    table = rank_runs(args.runs, args.truth, top_k=tuple(args.top_k or (5, 10)))
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

    if args.resume and any(v is not None for v in (args.output, args.data_dir, args.name, args.data_option)):
        raise ValueError("--resume continues a build with its own settings; drop --output/--data-dir/--name/--data-option")
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"search": _cmd_search, "compare": _cmd_compare, "space": _cmd_space, "data": _cmd_data,
                "rank": _cmd_rank, "truth": _cmd_truth}
    try:
        return handlers[args.command](args)
    except (ValueError, FileNotFoundError) as err:  # UsageError, DatasetError and bad names are ValueErrors
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"raynas {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raynas: interrupted; `raynas search --resume RUN_DIR` continues a search", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
