"""RSPS: random search with parameter sharing (Li & Talwalkar, UAI 2019), as NAS-Bench-201 runs it.

The loop (METHODS.md, SETN section: "RSPS = same loop with 100 uniformly random candidates"):
train the supernet with uniform single paths; score ``num_candidates`` uniformly random distinct
archs, each on ``score_batches`` valid batches of an advancing stream (each candidate sees
different batches); train the ``top_k`` best from scratch; the best standalone valid accuracy wins.

Deviations:
- Candidates are distinct (the benchmark's loop may draw one twice).
- Work is cut into units: training chunks of ``chunk_steps`` and scoring cohorts of
  ``cohort_size``; the result is the same as one long loop.
"""

from __future__ import annotations

from ray.tune.search import Searcher

from raynas.searchers.base import WorkUnitSearcher

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


class RSPSSearcher(WorkUnitSearcher):
    """Uniform weight-sharing training, random candidates scored on the supernet, best trained standalone."""

    method = "rsps"
    _state_keys = ("phase_", "trained_until_", "candidates_", "cohorts_issued_", "scores_", "picks_", "standalone_")

    def __init__(
        self,
        *,
        total_steps: int,
        chunk_steps: int = 500,
        num_candidates: int = 100,
        cohort_size: int = 100,
        score_batches: int | None = 1,
        top_k: int = 1,
        standalone: dict | None = None,
        policy: dict | str = "uniform",
        supernet: int = 0,
        space: str = "nb201",
        seed: int = 0,
        max_concurrent: int = 4,
    ) -> None:
        super().__init__(space=space, seed=seed, max_concurrent=max_concurrent)
        for key, value in (("total_steps", total_steps), ("chunk_steps", chunk_steps),
                           ("num_candidates", num_candidates), ("cohort_size", cohort_size), ("top_k", top_k)):
            if int(value) < 1:
                raise ValueError(f"{key}={value!r}; must be >= 1")
        if top_k > num_candidates:
            raise ValueError(f"top_k={top_k} > num_candidates={num_candidates}; must be <= num_candidates")
        self.total_steps = int(total_steps)
        self.chunk_steps = int(chunk_steps)
        self.num_candidates = int(num_candidates)
        self.cohort_size = int(cohort_size)
        self.score_batches = score_batches
        self.top_k = int(top_k)
        self.standalone = dict(standalone or {})
        self.policy = policy
        self.supernet = supernet
        self.phase_ = "train"
        self.trained_until_ = 0
        self.candidates_: list[str] = []
        self.cohorts_issued_ = 0
        self.scores_: dict[str, float] = {}
        self.picks_: list[str] = []
        self.standalone_: dict[str, dict] = {}

    def _live(self, kind: str) -> bool:
        return any(u["kind"] == kind for u in self.live_.values()) or any(u["kind"] == kind for u in self.retry_)

    def _next_unit(self):
        if self.phase_ == "train":
            if self.trained_until_ < self.total_steps:
                if self._live("train"):
                    return None  # chunks are sequential: each continues the previous one's weights
                until = min(self.trained_until_ + self.chunk_steps, self.total_steps)
                return {"kind": "train", "supernet": self.supernet, "until": until, "policy": self.policy}
            self.phase_ = "score"
            self.candidates_ = [str(a) for a in self._candidates()]
        if self.phase_ == "score":
            start = self.cohorts_issued_ * self.cohort_size
            if start < len(self.candidates_):
                self.cohorts_issued_ += 1
                return {"kind": "score", "supernet": self.supernet, "batches": self.score_batches,
                        "archs": self.candidates_[start:start + self.cohort_size]}
            if self._live("score") or any(c not in self.scores_ for c in self.candidates_):
                return None
            ranked = sorted(self.candidates_, key=lambda a: self.scores_[a], reverse=True)
            self.picks_ = ranked[: self.top_k]
            self.phase_ = "standalone"
        if self.phase_ == "standalone":
            issued = {u["arch"] for u in self.live_.values() if u["kind"] == "standalone"} | set(self.standalone_)
            issued |= {u["arch"] for u in self.retry_ if u["kind"] == "standalone"}
            for arch in self.picks_:
                if arch not in issued:
                    return {"kind": "standalone", "arch": arch, "role": "final", **self.standalone}
            if self._live("standalone"):
                return None
            return Searcher.FINISHED
        return None

    def _candidates(self) -> list:
        """The archs to score: uniform random (SETN overrides this with its template's top-K)."""
        return self.sample_distinct(self.num_candidates)

    def _on_row(self, unit: dict, row: dict) -> None:
        if unit["kind"] == "score" and "arch" in row:
            self.scores_[row["arch"]] = row["valid_acc"]

    def _on_complete(self, unit: dict, row: dict) -> None:
        if unit["kind"] == "train":
            self.trained_until_ = max(self.trained_until_, int(row.get("version", unit["until"])))
        elif unit["kind"] == "standalone":
            self.standalone_[unit["arch"]] = row

    @property
    def best_arch(self) -> str | None:
        """The winner: best standalone valid accuracy among the picks (``None`` until known)."""
        if not self.standalone_:
            return None
        return max(self.standalone_, key=lambda a: self.standalone_[a].get("valid_acc", 0.0))
