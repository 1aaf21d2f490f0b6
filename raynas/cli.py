"""The ``raynas`` command line.

    raynas search --method rsps --dataset digits            # embedded local Ray, small preset
    raynas search --resume runs/rsps-digits-s0-...          # continue after the driver died
    raynas compare runs/*                                   # method table, no Ray needed
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
    s.add_argument("--preset", default="small", help="small (minutes on 2 CPU cores) or paper (default small)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override a setting, e.g. supernet.epochs=5 or searcher.num_candidates=50")
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
    return parser


def _cmd_search(args) -> int:
    from raynas.driver import search

    if args.resume and any(v is not None for v in (args.data_dir, args.name, args.set, args.data_option)):
        raise ValueError("--resume continues a run with its own settings; drop --data-dir/--name/--set/--data-option")
    run_dir = search(
        args.method,
        space=args.space,
        dataset=args.dataset,
        data_dir=args.data_dir,
        data_options=_parse_options(args.data_option),
        preset=args.preset,
        seed=args.seed,
        overrides=_parse_set(args.set),
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"search": _cmd_search, "compare": _cmd_compare, "space": _cmd_space, "data": _cmd_data}
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
