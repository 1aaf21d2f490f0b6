"""TE-NAS: training-free NAS by pruning (Chen, Gong & Wang, ICLR 2021), on NAS-Bench-201.

The loop (METHODS.md, TE-NAS; official ``prune_tenas.py``): start from the full supernet with
``none`` pruned on every edge (4 ops per edge, 4^6 archs). An op is *active* until pruned; each
edge is the equal-weighted mixture of its active ops. Each round, every active op of every edge
that still has more than one op is a candidate: the supernet with that op removed is scored
against the un-pruned one ("full") on two proxies (:mod:`raynas.proxies`), each a mean over
``repeats`` fresh inits and batches:

- Delta kappa = (kappa_full - kappa_pruned) / kappa_full, kappa the NTK condition number of the
  C=3, N=1 supernet (affine, tracking BN, train mode) on ``ntk_batch`` train images;
- Delta R = (R_full - R_pruned) / R_full, R the number of distinct ReLU sign patterns of the
  thin (C=1, one cell, no stem) network on ``region_batches`` x ``region_samples`` 3x3 crops.

Candidates are ranked by Delta kappa descending and Delta R ascending (values rounded to
``precision`` significant figures; ties share a rank; dense ranks from 0, as the official code);
on each edge the op with the lowest rank sum is pruned (ties: the better Delta kappa rank, then
the lower op index: the official code's stable sort over its NTK-sorted candidates). Rank 0 on
Delta kappa is the op whose removal lowers kappa most, rank 0 on Delta R the op whose removal
costs fewest regions: the lowest sum is the op the network misses least. Three rounds take
NB201 from 4 ops to 1 per edge; that arch is trained standalone (role "final").

Work units: each round's masks (the full one first, then one per candidate) are split into
``proxy`` units of ``masks_per_unit`` (default: spread over ``max_concurrent`` units) that run in
parallel (keys ``proxy/rR/J``); all units of a round share the round's seed (drawn from the
searcher's RNG), so the full mask's value of repeat ``r`` pairs with every candidate's repeat
``r``. The searcher waits for the whole round (a barrier), prunes, and starts the next; a proxy
unit that comes back short re-issues its missing masks (``proxy/rR/J/restN``).

Initialisation (``init``): ``"default"`` (the default and the ``paper`` preset's) is PyTorch's own
module init, :func:`raynas.proxies.default_init_`: what the official runs had, and so what is
behind the paper's 93.9 (the launcher's ``--init kaiming_normal`` becomes ``kaiming_normal_fanout``
/ ``kaiming_normal_fanin``, names its ``init_model`` does not know: nothing re-initialises the
networks). ``"kaiming"`` is the Kaiming normal the paper describes (fan_out for the NTK network,
fan_in for the thin one; zero biases, BN weight 1).

Deviations:
- Sampling of inits and inputs: raynas draws, per round, ``repeats`` (init, batch) pairs from the
  round's seed, each shared by every candidate, and scores the full mask once per repeat. The
  official ``prune_func_rank`` builds the NTK network once per round and, its init being a no-op,
  scores every candidate and every repeat of the round on those same default weights (each
  repeat copies them into the pruned network and reads the train loader's next batch); it builds
  the thin network anew for every candidate (fresh default weights, shared by that candidate's
  repeats; each repeat reads the next 3 batches of crops); and it re-scores the full supernet
  beside every candidate on the same weights and inputs. The pairing of full vs pruned within a
  repeat (same weights, same inputs) is the official one.
- ``torch.linalg.eigvalsh`` in float64 replaces the removed ``torch.symeig`` (float32).
- Ranks are taken on the rounded values (the official code sorts on rounded values but decides
  ties on the unrounded means of per-repeat values rounded to 3 decimals).
- The NTK batch is drawn from the normalised train split without augmentation; region inputs are
  crops drawn with replacement (the official code iterates a shuffled, augmented loader).
- Distinct sign patterns are counted exactly (``torch.unique``) instead of the official
  half-precision Gram trick; the two agree whenever the latter does not overflow.

Not a deviation: ops with mixture weight 0 (pruned ones, ``none``) do not run, so their ReLUs add
no sign pattern to the region count; the official cell skips every op whose weight is <= 0.01
(``search_cells.py``), which is the same.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.stats import rankdata

from raynas.searchers.base import WorkUnitSearcher
# the proxies' init choices, Ray-free and torch-free (raynas.proxies.INITS, which imports torch)
from raynas.searchers.arguments import TENAS_INITS as INITS
from raynas.spaces.nb201 import EDGE_NAMES, NUM_EDGES, NUM_OPS, OP_NAMES

from raynas.searchers.presets import TENAS_PRESETS as PRESETS  # defined Ray-free there (raynas.settings reads them)

FULL = "full"
_NONE = 0


def round_sig(x: float, figures: int) -> float:
    """``x`` rounded to ``figures`` significant figures (0, inf and NaN pass through)."""
    if not math.isfinite(x) or x == 0:
        return float(x)
    return float(f"{x:.{int(figures)}g}")


def label_of(edge: int, op: int) -> str:
    """A candidate's label: the edge and the op removed, e.g. ``"2<-1:nor_conv_3x3"``."""
    return f"{EDGE_NAMES[edge]}:{OP_NAMES[op]}"


def without(active: Sequence[Sequence[int]], edge: int, op: int) -> list[list[int]]:
    """A copy of the 0/1 mask ``active`` with ``op`` of ``edge`` removed."""
    mask = [list(map(int, row)) for row in active]
    mask[edge][op] = 0
    return mask


def relative_change(full: Sequence[float], pruned: Sequence[float]) -> float:
    """mean over repeats of ``(full_r - pruned_r) / full_r``."""
    if len(full) != len(pruned) or not full:
        raise ValueError(f"full has {len(full)} repeats and pruned {len(pruned)}; expected the same number >= 1")
    return float(np.mean([(f - p) / f if f != 0 else math.nan for f, p in zip(full, pruned)]))


def prune_choices(candidates: Sequence[dict], precision: int = 3) -> tuple[dict[int, int], list[dict]]:
    """The op to prune on each edge, from candidates ``{"edge", "op", "delta_ntk", "delta_regions"}``.

    Ranks (dense, from 0, ties shared, on values rounded to ``precision`` significant figures):
    ``delta_ntk`` descending, ``delta_regions`` ascending; on each edge the lowest rank sum is
    pruned, ties going to the better ``delta_ntk`` rank, then the lower op index. A NaN delta
    ranks as the least prunable. Returns ``({edge: op}, candidates with their ranks)``."""
    if not candidates:
        return {}, []
    ntk = np.array([round_sig(c["delta_ntk"], precision) for c in candidates], dtype=float)
    regions = np.array([round_sig(c["delta_regions"], precision) for c in candidates], dtype=float)
    ntk[np.isnan(ntk)] = -np.inf
    regions[np.isnan(regions)] = np.inf
    rank_ntk = rankdata(-ntk, method="dense").astype(int) - 1
    rank_regions = rankdata(regions, method="dense").astype(int) - 1
    ranked = [dict(c, rank_ntk=int(a), rank_regions=int(b), rank_sum=int(a + b))
              for c, a, b in zip(candidates, rank_ntk, rank_regions)]
    best: dict[int, dict] = {}
    for c in sorted(ranked, key=lambda c: (c["rank_sum"], c["rank_ntk"], c["op"])):
        best.setdefault(c["edge"], c)
    return {e: c["op"] for e, c in sorted(best.items())}, ranked


class TENASSearcher(WorkUnitSearcher):
    """Prunes the NB201 supernet with TE-NAS's NTK and linear-region proxies, then trains the
    remaining single path standalone."""

    method = "tenas"
    uses_supernet = False
    _state_keys = ("active_", "round_", "round_seed_", "round_masks_", "issued_", "proxies_", "history_",
                   "final_arch_", "standalone_")

    def __init__(
        self,
        *,
        repeats: int = 3,
        ntk_batch: int = 72,
        region_samples: int = 1000,
        region_batches: int = 3,
        ntk_C: int = 3,
        ntk_N: int = 1,
        precision: int = 3,
        init: str = "default",
        masks_per_unit: int | None = None,
        standalone: dict | None = None,
        space: str = "nb201",
        seed: int = 0,
        max_concurrent: int = 2,
        total_steps: int | None = None,  # the driver's supernet budget: TE-NAS trains no supernet
    ) -> None:
        super().__init__(space=space, seed=seed, max_concurrent=max_concurrent)
        if self.space != "nb201":
            raise ValueError(f"space={space!r}; TE-NAS here prunes the NB201 supernet, expected 'nb201'")
        for key, value, low in (("repeats", repeats, 1), ("ntk_batch", ntk_batch, 2),
                                ("region_samples", region_samples, 1), ("region_batches", region_batches, 1),
                                ("ntk_C", ntk_C, 1), ("ntk_N", ntk_N, 1), ("precision", precision, 1)):
            if int(value) < low:
                raise ValueError(f"{key}={value!r}; must be >= {low}")
        if init not in INITS:
            raise ValueError(f"init={init!r}; expected one of {', '.join(map(repr, INITS))}")
        if masks_per_unit is not None and int(masks_per_unit) < 1:
            raise ValueError(f"masks_per_unit={masks_per_unit!r}; must be >= 1 "
                             "(or None: spread each round over max_concurrent units)")
        self.repeats = int(repeats)
        self.ntk_batch = int(ntk_batch)
        self.region_samples = int(region_samples)
        self.region_batches = int(region_batches)
        self.ntk_C = int(ntk_C)
        self.ntk_N = int(ntk_N)
        self.precision = int(precision)
        self.init = init
        self.masks_per_unit = None if masks_per_unit is None else int(masks_per_unit)
        self.standalone = dict(standalone or {})
        self.total_steps = total_steps
        # `none` is pruned before the first round (official: alpha[:, 0] = -INF)
        self.active_: list[list[int]] = [[0 if o == _NONE else 1 for o in range(NUM_OPS)] for _ in range(NUM_EDGES)]
        self.round_ = 0  # rounds finished
        self.round_seed_: int | None = None
        self.round_masks_: list[tuple[str, list[list[int]]]] = []  # this round's (label, mask), full first
        self.issued_ = 0  # masks of this round handed out
        self.proxies_: dict[str, dict] = {}  # label -> {"ntk": [...], "regions": [...]}
        self.history_: list[dict] = []
        self.final_arch_: str | None = None
        self.standalone_: dict[str, dict] = {}

    # --- the round state machine -------------------------------------------------------------
    def _next_unit(self):
        while self.final_arch_ is None:
            if not self.round_masks_:
                if all(sum(row) == 1 for row in self.active_):
                    self.final_arch_ = str(self.space_.arch([row.index(1) for row in self.active_]))
                    break
                self._start_round()
            if self.issued_ < len(self.round_masks_):
                return self._proxy_unit()
            if self._live("proxy") or any(label not in self.proxies_ for label, _ in self.round_masks_):
                return None  # the round's barrier
            self._finish_round()
        return self._final_units([self.final_arch_])

    def _start_round(self) -> None:
        self.round_seed_ = int(self.rng_.integers(2**31 - 1))
        masks = [(FULL, [list(row) for row in self.active_])]
        for e, row in enumerate(self.active_):
            if sum(row) > 1:
                masks += [(label_of(e, o), without(self.active_, e, o)) for o in range(NUM_OPS) if row[o]]
        self.round_masks_ = masks
        self.issued_ = 0
        self.proxies_ = {}

    def _proxy_unit(self) -> dict:
        size = self.masks_per_unit or math.ceil(len(self.round_masks_) / self.max_concurrent)
        chunk = self.round_masks_[self.issued_:self.issued_ + size]
        key = f"proxy/r{self.round_}/{self.issued_ // size}"
        self.issued_ += len(chunk)
        return {"kind": "proxy", "key": key, "round": self.round_, "seed": self.round_seed_,
                "labels": [label for label, _ in chunk], "masks": [mask for _, mask in chunk],
                "repeats": self.repeats, "ntk_batch": self.ntk_batch, "region_samples": self.region_samples,
                "region_batches": self.region_batches, "ntk_C": self.ntk_C, "ntk_N": self.ntk_N,
                "init": self.init}

    def _finish_round(self) -> None:
        full = self.proxies_[FULL]
        candidates = []
        for label, _ in self.round_masks_[1:]:
            edge_name, op_name = label.split(":")
            pruned = self.proxies_[label]
            candidates.append({
                "edge": EDGE_NAMES.index(edge_name), "op": OP_NAMES.index(op_name), "label": label,
                "delta_ntk": relative_change(full["ntk"], pruned["ntk"]),
                "delta_regions": relative_change(full["regions"], pruned["regions"]),
            })
        choices, ranked = prune_choices(candidates, self.precision)
        for e, o in choices.items():
            self.active_[e][o] = 0
        self.history_.append({"round": self.round_, "seed": self.round_seed_, "full": full, "candidates": ranked,
                              "pruned": {EDGE_NAMES[e]: OP_NAMES[o] for e, o in choices.items()},
                              "active": [list(row) for row in self.active_]})
        self.round_ += 1
        self.round_masks_ = []
        self.issued_ = 0

    # --- results -------------------------------------------------------------------------------
    def _on_row(self, unit: dict, row: dict) -> None:
        if unit["kind"] == "proxy" and unit["round"] == self.round_ and "label" in row:
            self.proxies_[row["label"]] = {"ntk": [float(v) for v in row["ntk"]],
                                           "regions": [float(v) for v in row["regions"]]}

    def _on_complete(self, unit: dict, row: dict) -> None:
        # a proxy unit that came back short: the base re-issues its missing masks (proxy/rR/J/restN)
        if unit["kind"] == "standalone":
            self.standalone_[unit["arch"]] = row

    def _phase(self) -> str:
        if self.final_arch_ is None:
            return "prune"
        return "standalone"

    def _progress(self) -> str:
        if self.final_arch_ is None:
            done = sum(label in self.proxies_ for label, _ in self.round_masks_)
            left = max(sum(row) for row in self.active_) - 1
            return (f"phase prune: round {self.round_ + 1} of {self.round_ + left}, "
                    f"{done}/{len(self.round_masks_)} masks scored")
        return f"phase standalone: {len(self.standalone_)}/1 picks trained standalone"

    @property
    def best_arch(self) -> str | None:
        """The pruned single path once it has been trained standalone (``None`` until then)."""
        return self.final_arch_ if self.final_arch_ in self.standalone_ else None

    def describe(self) -> dict:
        return {**super().describe(), "rounds": self.round_, "history": self.history_}
