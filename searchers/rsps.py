"""RSPS: random search with parameter sharing (Li & Talwalkar, UAI 2019), as NAS-Bench-201 runs it.

The loop (METHODS.md, SETN section: "RSPS = same loop with 100 uniformly random candidates"):
train the supernet with uniform single paths; score ``num_candidates`` uniformly random distinct
archs, each on ``score_batches`` valid batches (each candidate its own batches, fixed by its
position in the candidate list); train the ``top_k`` best from scratch; the best standalone valid
accuracy wins.

Deviations:
- Candidates are distinct (the benchmark's loop may draw one twice).
- The ``top_k`` picks compute distinct functions: a pick isomorphic to a better one (same
  algebraic canonical key) is skipped and the next distinct candidate trains instead (the
  benchmark's loop would train the same function twice).
- Work is cut into units: training chunks of ``chunk_steps`` and scoring cohorts of
  ``cohort_size`` (a cohort that comes back short re-issues its missing archs); the result is
  the same as one long loop.

``candidates=[...]`` scores exactly those archs instead of random ones, and the ``rank`` preset
scores them on the whole valid split and trains nothing standalone: a ranking run, whose scores
``raynas rank`` compares with a ground-truth table (``--candidates truth/fashion-mnist16.parquet``).
"""

from __future__ import annotations

from typing import Sequence

from raynas.searchers.base import OneShotSearcher

from raynas.searchers.presets import RSPS_PRESETS as PRESETS  # defined Ray-free there (raynas.settings reads them)


class RSPSSearcher(OneShotSearcher):
    """Uniform weight-sharing training, random candidates scored on the supernet, best trained standalone."""

    method = "rsps"
    #: scores a given list of archs with ``candidates=[...]`` (``raynas search --candidates``)
    takes_candidates = True

    def __init__(self, *, candidates: Sequence[str] | None = None, num_candidates: int | None = 100, **kwargs) -> None:
        if candidates is not None:
            if isinstance(candidates, str) or len(candidates) == 0:
                raise ValueError(f"candidates={candidates!r}; expected a non-empty list of arch strings")
            if num_candidates is not None and int(num_candidates) != len(candidates):
                raise ValueError(f"num_candidates={num_candidates} but {len(candidates)} candidates given; "
                                 "give one or the other")
            num_candidates = len(candidates)
        elif num_candidates is None:
            raise ValueError("num_candidates=None; expected a count, or candidates=[...] to score given archs")
        super().__init__(num_candidates=num_candidates, **kwargs)
        if candidates is not None:
            parsed = [self.space_.parse(a) for a in candidates]  # ValueError names a bad string
            strings = [str(a) for a in parsed]
            if len(set(strings)) != len(strings):
                raise ValueError("candidates: an arch is listed twice; expected distinct archs")
        self.candidates = None if candidates is None else strings

    def _candidates(self) -> list:
        if self.candidates is not None:
            return list(self.candidates)
        return self.sample_distinct(self.num_candidates)
