"""``raynas export RUN_DIR --output DIR``: the final network of a complete run as a ``torch.export``
program, a state dict and export.json (arch, benchmark index, input normalisation, the recipe
that trained it); see :mod:`raynas.export` and docs/export.md."""

from __future__ import annotations


def add_parser(sub) -> None:
    from raynas.cli import _int_arg

    p = sub.add_parser("export", help="write the final network of a complete run: torch.export program, state dict, "
                                      "arch and recipe (reads files only)")
    p.add_argument("run", metavar="RUN_DIR", help="a complete run (a folder or a URI)")
    p.add_argument("--output", required=True, metavar="DIR", help="a new (or empty) folder, or a URI, to write into")
    p.add_argument("--train-seed", type=_int_arg(0), metavar="SEED",
                   help="the final training to export when the winner trained with several seeds (default: the lowest)")
    p.add_argument("--data-dir", help="the run's data set on this machine, if not where the run read it "
                                      "(its normalisation is recorded; its fingerprint must match the run's)")


def run(args) -> int:
    from raynas.export import export_run

    done = export_run(args.run, args.output, train_seed=args.train_seed, data_dir=args.data_dir)
    meta = done["metadata"]
    test = meta["accuracy"]["test"]
    print(done["output"])
    print(f"  arch             {meta['arch']}")
    print(f"  benchmark index  {meta['benchmark_index']}")
    print(f"  test accuracy    {'n/a' if test is None else f'{test:.4f}'} (seed {meta['recipe']['seed']}, "
          f"{meta['recipe']['epochs']} epochs)")
    for path in done["files"]:
        print(f"  wrote            {path}")
    return 0
