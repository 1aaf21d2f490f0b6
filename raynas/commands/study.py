"""``raynas study``: a grid of searches (methods x seeds) at once on one Ray, resumable as a whole.

    raynas study --methods rsps setn --seeds 0 1 2 --set supernet.epochs=10
    raynas study --methods rsps evnas --seeds 0 1 --set rsps:searcher.num_candidates=50 --address auto
    raynas study --resume studies/study-digits-20261201-101500

The library is :mod:`raynas.study`; this module parses, presents (one line per search state
change, a periodic summary, the method table at the end) and picks the exit code: 0 every search
complete, 130 interrupted (``--resume`` continues it), 1 a search failed, 2 bad input.
"""

from __future__ import annotations

import sys
import time


def add_parser(sub) -> None:
    from raynas.cli import _int_arg

    s = sub.add_parser("study", help="run a grid of searches (methods x seeds) concurrently on one Ray, "
                                     "resumable as a whole, and write their method table")
    s.add_argument("--methods", nargs="+", metavar="METHOD", help="the methods of the grid, e.g. rsps setn evnas nao tenas")
    s.add_argument("--seeds", nargs="+", type=_int_arg(0), metavar="SEED", help="the seeds of the grid (default 0)")
    s.add_argument("--space", default="nb201", help="search space (default nb201)")
    s.add_argument("--dataset", default="digits", help="dataset of every search (default digits)")
    s.add_argument("--data-dir", help="folder holding the dataset's files")
    s.add_argument("--data-option", action="append", metavar="KEY=VALUE", help="dataset option, e.g. resolution=16")
    s.add_argument("--preset", default="small", help="every method's preset (default small)")
    s.add_argument("--set", action="append", metavar="[METHOD:]SECTION.KEY=VALUE",
                   help="override a setting of every search, or with METHOD: of that method's only, "
                        "e.g. supernet.epochs=5 or rsps:searcher.num_candidates=50")
    s.add_argument("--storage", default="studies", help="where study directories go: a folder (default ./studies) "
                                                         "or a URI every node reaches, e.g. s3://BUCKET/studies")
    s.add_argument("--name", help="study directory name (default study-DATASET-TIME)")
    s.add_argument("--address", help="Ray cluster address the searches join (default: one embedded local Ray "
                                     "started for the study)")
    s.add_argument("--num-cpus", type=_int_arg(1, " (omit it for all CPUs)"), help="CPUs of the embedded local Ray (default: all)")
    s.add_argument("--max-searches", type=_int_arg(1), metavar="N", help="searches running at once (default: all of them)")
    s.add_argument("--no-share", action="store_true",
                   help="let each search ask for its own resources settings (an autoscaling cluster adds the nodes); "
                        "default: the cluster's CPUs and GPUs at the start are split evenly between the searches "
                        "running at once, so that all fit together")
    s.add_argument("--summary-every", type=_int_arg(1), default=60, metavar="S", help="seconds between summary lines (default 60)")
    s.add_argument("--resume", metavar="STUDY_DIR", help="continue the study in STUDY_DIR with its own grid and settings")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


def split_sets(items: list[str] | None, methods: list[str]) -> tuple[dict, dict]:
    """``--set`` items -> (overrides for every search, {method: overrides}); ``METHOD:`` prefixes
    one method's."""
    from raynas.cli import _parse_set

    common, per_method = [], {}
    for item in items or []:
        head, colon, rest = item.partition(":")
        if colon and head.isidentifier() and "." not in head and "=" not in head:
            per_method.setdefault(head, []).append(rest)
        else:
            common.append(item)
    return _parse_set(common), {method: _parse_set(values) for method, values in per_method.items()}


def _command_line(args) -> str:
    """The study's settings as the command line that makes it (recorded in study.json)."""
    import shlex

    words = ["raynas", "study", "--methods", *args.methods, "--seeds", *map(str, args.seeds or [0]),
             f"--space={args.space}", f"--dataset={args.dataset}", f"--preset={args.preset}"]
    words += [f"--data-dir={args.data_dir}"] if args.data_dir else []
    words += [f"--data-option={o}" for o in args.data_option or []]
    words += [f"--set={o}" for o in args.set or []]
    words += [f"--storage={args.storage}"] + ([f"--name={args.name}"] if args.name else [])
    words += [f"--max-searches={args.max_searches}"] if args.max_searches else []
    words += ["--no-share"] if args.no_share else []
    return shlex.join(words)


def _presenter(quiet: bool):
    def say(event) -> None:
        if quiet and event.kind not in ("failed",):
            return
        stamp = f"[study {event.elapsed_s:6.0f}s]"
        if event.kind == "ray":
            text = f"searches join {event.message}"
        elif event.kind == "summary":
            counts = ", ".join(f"{n} {k}" for k, n in sorted(event.counts.items()))
            text = f"{counts}" + (f"; {event.message}" if event.message else "")
        elif event.kind == "done":
            return
        elif event.search:
            text = f"{event.search} {event.kind}" + (f": {event.message}" if event.message else "")
        else:
            text = event.message
        print(f"{stamp} {text}", file=sys.stderr, flush=True)

    return say


def run(args) -> int:
    from raynas.cli import _parse_options
    from raynas.errors import UsageError

    say = _presenter(args.quiet)
    began = time.time()
    if args.resume is not None:
        given = [flag for flag, value in (("--methods", args.methods), ("--seeds", args.seeds), ("--set", args.set),
                                          ("--data-dir", args.data_dir), ("--data-option", args.data_option),
                                          ("--name", args.name), ("--max-searches", args.max_searches))
                 if value is not None]
        if given:
            raise UsageError(f"--resume continues a study with its own grid and settings; drop {'/'.join(given)}")
        from raynas.study import resume_study

        study = resume_study(args.resume, address=args.address, num_cpus=args.num_cpus, on_event=say,
                             summary_every_s=args.summary_every)
    else:
        if not args.methods:
            from raynas.searchers import method_names

            raise UsageError(f"--methods: expected one or more of: {', '.join(method_names())} (or --resume STUDY_DIR)")
        from raynas.study import run_study

        overrides, method_overrides = split_sets(args.set, args.methods)
        study = run_study(args.methods, args.seeds or [0], space=args.space, dataset=args.dataset,
                          data_dir=args.data_dir, data_options=_parse_options(args.data_option), preset=args.preset,
                          overrides=overrides, method_overrides=method_overrides, storage=args.storage, name=args.name,
                          address=args.address, num_cpus=args.num_cpus, share=not args.no_share,
                          max_running=args.max_searches, command=_command_line(args),
                          on_event=say, summary_every_s=args.summary_every)
    if study.table is not None and not args.quiet:
        print(study.table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if not args.quiet:
        longest = max((s.get("wall_s") or 0.0 for s in study.searches), default=0.0)
        print(f"raynas study: {study.status}: {len(study.searches)} searches in {time.time() - began:.0f} s "
              f"(their own wall times sum to {study.search_wall_s:.0f} s, the longest {longest:.0f} s)",
              file=sys.stderr)
    print(study.study_dir)
    if study.status == "complete":
        return 0
    if study.status == "interrupted":
        print(f"raynas study: interrupted; `raynas study --resume {study.study_dir}` continues it", file=sys.stderr)
        return 130
    failed = [s for s in study.searches if s["status"] == "failed"]
    print(f"raynas study: {len(failed)} search(es) failed, e.g. {failed[0]['name']}: {failed[0].get('message')}; "
          f"their logs are in {study.study_dir}/logs; `raynas study --resume {study.study_dir}` retries them",
          file=sys.stderr)
    return 1
