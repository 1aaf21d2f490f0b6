"""Random search over standalone training: the baseline that shares no weights.

``num_samples`` distinct uniform archs, each trained from scratch with the benchmark's recipe
(scaled epochs); the best valid accuracy wins. No supernet.
"""

from __future__ import annotations

from ray.tune.search import Searcher

from raynas.searchers.base import WorkUnitSearcher

PRESETS = {
    "small": {"searcher": dict(num_samples=4, standalone=dict(C=8, N=1, epochs=15, batch_size=64))},
    "paper": {"searcher": dict(num_samples=100, standalone=dict(C=16, N=5, epochs=200, batch_size=256))},
}


class RandomSearcher(WorkUnitSearcher):
    """Trains ``num_samples`` random archs standalone; the best valid accuracy wins."""

    method = "random"
    uses_supernet = False
    _state_keys = ("archs_", "issued_", "standalone_")

    def __init__(self, *, num_samples: int = 100, standalone: dict | None = None, space: str = "nb201",
                 seed: int = 0, max_concurrent: int = 2, total_steps: int | None = None) -> None:
        super().__init__(space=space, seed=seed, max_concurrent=max_concurrent)
        if int(num_samples) < 1:
            raise ValueError(f"num_samples={num_samples!r}; must be >= 1")
        self.num_samples = int(num_samples)
        self.standalone = dict(standalone or {})
        self.archs_ = [str(a) for a in self.sample_distinct(self.num_samples)]
        self.issued_ = 0
        self.standalone_: dict[str, dict] = {}

    def _next_unit(self):
        if self.issued_ < len(self.archs_):
            self.issued_ += 1
            return {"kind": "standalone", "arch": self.archs_[self.issued_ - 1], "role": "final", **self.standalone}
        return Searcher.FINISHED

    def _on_complete(self, unit: dict, row: dict) -> None:
        self.standalone_[unit["arch"]] = row
