"""Random search over standalone training: the baseline that shares no weights.

``num_samples`` uniform archs computing distinct functions (the space's algebraic canonical key:
isomorphic archs are drawn once), each trained from scratch with the benchmark's recipe (scaled
epochs, unit ``standalone/ARCH``); the best valid accuracy wins. No supernet.
"""

from __future__ import annotations

from ray.tune.search import Searcher

from raynas.searchers.base import WorkUnitSearcher

from raynas.searchers.presets import RANDOM_PRESETS as PRESETS  # defined Ray-free there (raynas.settings reads them)


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
        self.archs_ = [str(a) for a in self.sample_distinct(self.num_samples, functions=True)]
        self.issued_ = 0
        self.standalone_: dict[str, dict] = {}

    def _next_unit(self):
        if self.issued_ < len(self.archs_):
            self.issued_ += 1
            return self._standalone_unit(self.archs_[self.issued_ - 1])
        return Searcher.FINISHED

    def _on_complete(self, unit: dict, row: dict) -> None:
        self.standalone_[unit["arch"]] = row

    @property
    def best_arch(self) -> str | None:
        """The best standalone valid accuracy so far (``None`` before the first training)."""
        return self._best_standalone()

    def _phase(self) -> str:
        return "standalone"

    def _progress(self) -> str:
        return f"phase standalone: {len(self.standalone_)}/{len(self.archs_)} archs trained"
