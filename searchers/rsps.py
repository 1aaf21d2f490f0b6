"""RSPS: random search with parameter sharing (Li & Talwalkar, UAI 2019), as NAS-Bench-201 runs it.

The loop (METHODS.md, SETN section: "RSPS = same loop with 100 uniformly random candidates"):
train the supernet with uniform single paths; score ``num_candidates`` uniformly random distinct
archs, each on ``score_batches`` valid batches (each candidate its own batches, fixed by its
position in the cohort); train the ``top_k`` best from scratch; the best standalone valid accuracy wins.

Deviations:
- Candidates are distinct (the benchmark's loop may draw one twice).
- Work is cut into units: training chunks of ``chunk_steps`` and scoring cohorts of
  ``cohort_size``; the result is the same as one long loop.
"""

from __future__ import annotations

from raynas.searchers.base import OneShotSearcher

PRESETS = {
    # finishes on 2 CPU cores in a few minutes on digits (the README's main job)
    "small": {
        "supernet": dict(C=8, N=1, batch_size=64, valid_batch_size=128, epochs=30, lr=0.025, lr_min=0.001,
                         weight_decay=5e-4, grad_clip=5.0),
        "searcher": dict(chunk_steps=160, num_candidates=30, cohort_size=30, score_batches=1, top_k=2,
                         standalone=dict(C=8, N=1, epochs=15, batch_size=64)),
    },
    # the benchmark's settings (SETN paper's RSPS): 250 epochs, batch 64, 100 candidates on one batch of 512
    "paper": {
        "supernet": dict(C=16, N=5, batch_size=64, valid_batch_size=512, epochs=250, lr=0.025, lr_min=0.001,
                         weight_decay=5e-4, grad_clip=5.0),
        "searcher": dict(chunk_steps=500, num_candidates=100, cohort_size=100, score_batches=1, top_k=1,
                         standalone=dict(C=16, N=5, epochs=200, batch_size=256)),
    },
}


class RSPSSearcher(OneShotSearcher):
    """Uniform weight-sharing training, random candidates scored on the supernet, best trained standalone."""

    method = "rsps"

    def _candidates(self) -> list:
        return self.sample_distinct(self.num_candidates)
