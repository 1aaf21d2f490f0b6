"""TE-NAS's NTK rows: the official loop (one ``autograd.grad`` per image) against the batched
``torch.func`` path, timed on ``score_masks`` as a TE-NAS proxy unit runs it.

The settings are the ``small`` preset's (``ntk_batch``, ``repeats``, region samples and batches,
and the searcher's defaults for the rest: ``ntk_C``, ``ntk_N``, ``init``) on digits, read from
the preset and from the unit the searcher issues for round 0 (its seed and masks: the full
supernet and its one-op-pruned candidates; the first ``--masks`` of them). Each pair of calls
runs both paths on the same masks, in alternating order, on one torch thread; the figures of the
two paths must agree (NTK condition numbers to 1e-6 relative, region counts exactly).

    python benchmarks/tenas_ntk.py
    python benchmarks/tenas_ntk.py --masks 20 --pairs 3
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import time


def small_preset_unit(masks: int) -> tuple[dict, dict]:
    """(score_masks keyword arguments, the round-0 unit) for the small preset's TE-NAS round 0."""
    from raynas.settings import make_config
    from raynas.searchers.tenas import TENASSearcher

    # the searcher warns that Tune has not configured it: here it only issues one unit, no Tune
    logging.getLogger("raynas.searchers.base").setLevel(logging.ERROR)
    searcher_settings = make_config("tenas", preset="small")["searcher"]
    # one unit holds the whole round
    unit = TENASSearcher(**searcher_settings, max_concurrent=1).suggest("benchmark")
    options = {k: unit[k] for k in ("repeats", "ntk_batch", "region_samples", "region_batches", "ntk_C", "ntk_N",
                                    "init")}
    unit = dict(unit, masks=unit["masks"][:masks], labels=unit["labels"][:masks])
    return options, unit


def same_figures(a: list[dict], b: list[dict]) -> bool:
    return all(
        len(x["ntk"]) == len(y["ntk"])
        and all(math.isclose(p, q, rel_tol=1e-6) for p, q in zip(x["ntk"], y["ntk"]))
        and x["regions"] == y["regions"]
        for x, y in zip(a, b)
    ) and len(a) == len(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--masks", type=int, default=20, help="masks per score_masks call (default 20)")
    parser.add_argument("--pairs", type=int, default=3, help="(loop, batched) pairs of calls (default 3)")
    args = parser.parse_args()

    import torch

    from raynas.data import load_dataset
    from raynas.proxies import score_masks

    torch.set_num_threads(1)
    splits = load_dataset("digits")
    options, unit = small_preset_unit(args.masks)
    n = len(unit["masks"])
    print(f"small preset on digits: {n} masks, {options}, seed {unit['seed']}, torch {torch.__version__}, 1 thread")

    def timed(method: str) -> tuple[float, list[dict]]:
        start = time.perf_counter()
        rows = score_masks(unit["masks"], splits.train.images, num_classes=splits.info.num_classes,
                           seed=unit["seed"], ntk_method=method, **options)
        return time.perf_counter() - start, rows

    timed("batched")  # warm-up: first-call costs of torch.func and the data, off the clock
    seconds: dict[str, list[float]] = {"loop": [], "batched": []}
    reference = None
    for pair in range(args.pairs):
        order = ("loop", "batched") if pair % 2 == 0 else ("batched", "loop")
        for method in order:
            dt, rows = timed(method)
            seconds[method].append(dt)
            if reference is None:
                reference = rows
            assert same_figures(reference, rows), f"pair {pair}: {method} figures differ from the first call's"

    print(f"\n{'path':<8} {'s/mask (median)':>16} {'s/mask (min)':>13} {'calls':>6}")
    for method, values in seconds.items():
        print(f"{method:<8} {statistics.median(values) / n:>16.3f} {min(values) / n:>13.3f} {len(values):>6}")
    ratios = [a / b for a, b in zip(seconds["loop"], seconds["batched"])]
    print(f"\nloop / batched per pair: {', '.join(f'{r:.2f}' for r in ratios)} "
          f"(median {statistics.median(ratios):.2f}); figures equal in every call")


if __name__ == "__main__":
    main()
