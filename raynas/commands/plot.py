"""``raynas plot RUN_DIR... --output DIR``: PNG plots of finished runs (reads files only, no Ray).

Writes, into DIR (made if missing; a folder or a URI), ``score-vs-truth-RUN.png`` per run (with
``--truth``), ``comparison.png`` (the method comparison) and ``trajectory-RUN.png`` per run, and
prints each file it wrote; what it skipped, and why, goes to stderr. It never overwrites: if any
of its files is already in DIR, it writes nothing and exits 2 (choose a new DIR).
"""

from __future__ import annotations

import sys


def add_parser(sub) -> None:
    from raynas.cli import _int_arg

    p = sub.add_parser("plot", help="PNG plots of runs: supernet score vs truth, method comparison, search "
                                    "trajectory (reads files only)")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="finished runs, or folders of them (paths or URIs)")
    p.add_argument("--output", required=True, metavar="DIR",
                   help="folder for the PNGs (made if missing; nothing in it is overwritten)")
    p.add_argument("--truth", metavar="TABLE",
                   help="the truth of the score-vs-truth plots, as `raynas rank --truth` takes it: a truth parquet, e.g. "
                        "truth/fashion-mnist16.parquet, or a benchmark truth or file (without it they are skipped)")
    p.add_argument("--truth-dataset", metavar="NAME", help="a benchmark truth's dataset, e.g. cifar10-valid, cifar100")
    p.add_argument("--truth-epochs", type=_int_arg(1), metavar="E", help="a benchmark truth's epoch budget, e.g. 200 or 12")
    p.add_argument("--cost", choices=("wall", "steps"), default="wall",
                   help="cost axis: search wall seconds (default) or supernet optimizer steps")
    p.add_argument("--accuracy", choices=("standalone", "benchmark"), default="standalone",
                   help="the comparison's accuracy: the final arch's standalone test accuracy (default) or its "
                        "NAS-Bench-201 test accuracy (runs searched with --benchmark)")


def run(args) -> int:
    from raynas.errors import UsageError
    from raynas.plots import plot_runs, write_plots

    truth = None
    if args.truth is not None:
        from raynas.ranking import load_truth

        try:  # the truth `raynas rank` ranks against; a stray parquet or a run's table: one line, before any plot
            truth = load_truth(args.truth, dataset=args.truth_dataset, epochs=args.truth_epochs)
        except (ValueError, FileNotFoundError) as err:
            raise UsageError(f"--truth: {err}") from None
    elif args.truth_dataset is not None or args.truth_epochs is not None:
        raise UsageError("--truth-dataset/--truth-epochs choose within a benchmark truth; add --truth TABLE")
    try:
        plots = plot_runs(args.runs, truth=truth, cost=args.cost, accuracy=args.accuracy)
    except FileNotFoundError as err:  # a RUN_DIR that is not a finished run
        raise UsageError(str(err)) from None
    drawn = [p for p in plots if p.figure is not None]
    if not drawn:
        raise UsageError("nothing to plot: " + "; ".join(dict.fromkeys(p.skipped for p in plots)))
    try:
        written = write_plots(plots, args.output)
    except FileExistsError as err:
        raise UsageError(f"--output: {err}") from None
    comparison = next(p for p in plots if p.kind == "comparison")
    if comparison.facts.get("unfinished"):  # as `raynas compare`: plotted on their own, never averaged in
        print(f"raynas plot: note: unfinished runs left out of the comparison's means: "
              f"{', '.join(comparison.facts['unfinished'])}", file=sys.stderr)
    skipped = [p for p in plots if p.figure is None]
    if args.truth is None and any(p.kind == "score-vs-truth" for p in skipped):
        print("raynas plot: skipped the score-vs-truth plots: no --truth TABLE given", file=sys.stderr)
    for plot in skipped:
        if plot.kind != "score-vs-truth" or args.truth is not None:
            print(f"raynas plot: skipped {plot.name}: {plot.skipped}", file=sys.stderr)
    for path in written:
        print(path)
    return 0
