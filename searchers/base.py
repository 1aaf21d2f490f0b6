"""The bookkeeping every raynas searcher shares, done once.

A raynas searcher is a Ray Tune ``Searcher`` that emits *work units* (configs with a ``kind``,
see :mod:`raynas.trainable`) and learns from their rows. This base keeps the live units, numbers
them, returns ``FINISHED`` once, ignores duplicate completions, re-issues errored units a bounded
number of times, turns NaN scores into the worst score, and saves its state as an explicit dict
(with a version and the RNG state) written atomically. Subclasses override three hooks:

- ``_next_unit()`` -> a unit dict, ``None`` (wait for results) or ``Searcher.FINISHED``;
- ``_on_row(unit, row)`` -> learn from one reported row;
- ``_on_complete(unit, last_row)`` -> a unit has finished;

and list their own state attributes in ``_state_keys``.

:class:`OneShotSearcher` adds the pipeline most weight-sharing methods share (train the supernet
in chunks under a policy -> score candidates in cohorts -> train the best standalone); a method
on it overrides ``_candidates()`` and names its training policy.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import uuid
import warnings
from typing import Any, Sequence

import numpy as np
from ray.tune.search import Searcher

from raynas.checks import require_at_least_one
from raynas.spaces import get_space

logger = logging.getLogger(__name__)


class WorkUnitSearcher(Searcher):
    """Base of raynas searchers: live units, finishing, retries, NaN handling, state."""

    #: bump when the saved state's layout changes
    STATE_VERSION = 1
    #: names of the subclass's own state attributes (plain Python / numpy values)
    _state_keys: tuple[str, ...] = ()

    def __init__(self, *, space: str = "nb201", seed: int = 0, max_concurrent: int = 4, max_unit_retries: int = 2):
        super().__init__(metric=None, mode=None)
        if int(max_concurrent) < 1:
            raise ValueError(f"max_concurrent={max_concurrent!r}; must be >= 1")
        self.space = space
        self.seed = seed
        self.max_concurrent = int(max_concurrent)
        self.max_unit_retries = int(max_unit_retries)
        self.space_ = get_space(space)
        self.rng_ = np.random.default_rng(seed)
        self.live_: dict[str, dict] = {}
        self.retry_: list[dict] = []
        self.attempts_: dict[int, int] = {}
        self.next_unit_ = 0
        self.finished_ = False

    # --- Tune's interface -----------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict | str | None:
        if self.finished_:
            return Searcher.FINISHED
        if len(self.live_) >= self.max_concurrent:
            return None
        if self.retry_:
            unit = self.retry_.pop(0)
        else:
            unit = self._next_unit()
            if unit is None:
                return None
            if unit == Searcher.FINISHED:
                if self.live_:
                    return None
                self.finished_ = True
                return Searcher.FINISHED
            unit = {**unit, "unit": self.next_unit_}
            self.next_unit_ += 1
        self.live_[trial_id] = unit
        return unit

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        unit = self.live_.get(trial_id)
        if unit is not None:
            self._on_row(unit, self._clean(result))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        unit = self.live_.pop(trial_id, None)
        if unit is None:  # unknown or already completed: Tune may report twice around restores
            return
        if error:
            attempts = self.attempts_[unit["unit"]] = self.attempts_.get(unit["unit"], 0) + 1
            if attempts <= self.max_unit_retries:
                logger.warning("work unit %s (%s) failed; re-issuing it (attempt %d)", unit["unit"], unit["kind"], attempts + 1)
                self.retry_.append(unit)
                return
            logger.error("work unit %s (%s) failed %d times; giving up on it", unit["unit"], unit["kind"], attempts)
            self._on_failed(unit)
            return
        self._on_complete(unit, self._clean(result or {}))

    # --- hooks ----------------------------------------------------------------------------
    def _next_unit(self) -> dict | str | None:
        raise NotImplementedError

    def _on_row(self, unit: dict, row: dict) -> None:
        pass

    def _on_complete(self, unit: dict, row: dict) -> None:
        pass

    def _on_failed(self, unit: dict) -> None:
        """A unit failed for good. Default: stop the search (its state would be incomplete)."""
        raise RuntimeError(f"work unit {unit['unit']} ({unit['kind']}) failed {self.max_unit_retries + 1} times")

    def _live(self, kind: str, supernet: int | None = None) -> bool:
        """Whether a unit of ``kind`` (on ``supernet``) is running or waiting to be re-issued."""
        return any(u["kind"] == kind and (supernet is None or u.get("supernet") == supernet)
                   for u in [*self.live_.values(), *self.retry_])

    def _final_units(self, picks: list[str]):
        """The last phase of every method: each pick trained standalone once (role "final"; the
        best valid accuracy wins), then ``FINISHED``. Needs ``self.standalone`` (the recipe) and
        ``self.standalone_`` (arch -> last row of its training)."""
        issued = set(self.standalone_) | {u["arch"] for u in [*self.live_.values(), *self.retry_]
                                          if u["kind"] == "standalone"}
        for arch in picks:
            if arch not in issued:
                return {"kind": "standalone", "arch": arch, "role": "final", **self.standalone}
        if self._live("standalone"):
            return None
        return Searcher.FINISHED

    @property
    def idle(self) -> bool:
        """No unit is live or waiting to be re-issued."""
        return not self.live_ and not self.retry_

    # --- helpers --------------------------------------------------------------------------
    @staticmethod
    def _clean(row: dict) -> dict:
        """NaN/inf scores count as the worst score: a diverged candidate must never win."""
        row = dict(row)
        for key in ("valid_acc", "test_acc"):
            value = row.get(key)
            if isinstance(value, float) and not math.isfinite(value):
                row[key] = 0.0
        for key in ("valid_loss", "test_loss"):
            value = row.get(key)
            if isinstance(value, float) and not math.isfinite(value):
                row[key] = math.inf
        return row

    def sample_distinct(self, n: int) -> list:
        """``n`` distinct uniform archs (all of them if the space is smaller)."""
        n = min(int(n), len(self.space_))
        seen: dict = {}
        while len(seen) < n:
            for arch in self.space_.sample(self.rng_, n - len(seen)):
                seen.setdefault(arch, None)
        return list(seen)[:n]

    # --- state ----------------------------------------------------------------------------
    def get_state(self) -> dict:
        state = {
            "state_version": self.STATE_VERSION,
            "class": type(self).__name__,
            "rng": self.rng_.bit_generator.state,
            "live": self.live_,
            "retry": self.retry_,
            "attempts": self.attempts_,
            "next_unit": self.next_unit_,
            "finished": self.finished_,
        }
        state.update({key: getattr(self, key) for key in self._state_keys})
        return state

    def set_state(self, state: dict) -> None:
        if state.get("state_version") != self.STATE_VERSION or state.get("class") != type(self).__name__:
            warnings.warn(
                f"{type(self).__name__}: restoring state written by {state.get('class')} "
                f"version {state.get('state_version')}; this is version {self.STATE_VERSION}",
                stacklevel=2,
            )
        self.rng_.bit_generator.state = state["rng"]
        self.live_ = state["live"]
        self.retry_ = state["retry"]
        self.attempts_ = state["attempts"]
        self.next_unit_ = state["next_unit"]
        self.finished_ = state["finished"]
        for key in self._state_keys:
            setattr(self, key, state[key])

    def save(self, checkpoint_path: str) -> None:
        tmp = f"{checkpoint_path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            pickle.dump(self.get_state(), f)
        os.replace(tmp, checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(space={self.space!r}, seed={self.seed!r})"

    # what the driver needs to know to build the actors and the result tables
    def describe(self) -> dict[str, Any]:
        return {"method": getattr(self, "method", type(self).__name__), "space": self.space, "seed": self.seed}


class OneShotSearcher(WorkUnitSearcher):
    """The one-shot pipeline: train the supernet in sequential chunks under a policy, score a
    set of candidates in cohorts, train the ``top_k`` best standalone; the best standalone valid
    accuracy wins. Methods override :meth:`_candidates` (and pass their own ``policy``).
    ``top_k=0`` stops after scoring (a ranking run: the scores are the result).

    Few-shot NAS (Zhao et al., ICML 2021) with ``few_shot=EDGES``: after the one-shot supernet
    (id 0) is trained, the sub-supernets ``1..K`` (one per region of ``space.split(EDGES)``,
    each initialised from the one-shot snapshot by its actor) train ``few_shot_steps`` steps
    each, concurrently; every candidate is then scored on the sub-supernet whose region holds it.
    """

    supports_few_shot = True
    _state_keys = ("phase_", "trained_", "exports_", "candidates_", "cohorts_", "cohorts_issued_", "scores_",
                   "picks_", "standalone_")

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
        few_shot: Sequence[int] | None = None,
        few_shot_steps: int | None = None,
        space: str = "nb201",
        seed: int = 0,
        max_concurrent: int = 4,
    ) -> None:
        super().__init__(space=space, seed=seed, max_concurrent=max_concurrent)
        require_at_least_one(total_steps=total_steps, chunk_steps=chunk_steps, num_candidates=num_candidates,
                             cohort_size=cohort_size)
        if int(top_k) < 0:
            raise ValueError(f"top_k={top_k!r}; must be >= 0 (0: score only, train nothing standalone)")
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
        self.few_shot = None if few_shot is None else self.space_.parse_edges(few_shot)
        self.regions_ = self.space_.split(self.few_shot) if self.few_shot else []
        if self.few_shot and few_shot_steps is None:
            few_shot_steps = max(1, self.total_steps // len(self.regions_))
        if few_shot_steps is not None and int(few_shot_steps) < 1:
            raise ValueError(f"few_shot_steps={few_shot_steps!r}; must be >= 1")
        self.few_shot_steps = few_shot_steps
        self.phase_ = "train"
        #: supernet id -> version reached (0: the one-shot supernet; 1..K: sub-supernets)
        self.trained_: dict[int, int] = {0: 0}
        #: supernet id -> the policy's exported values in its last train row (SETN's alpha, ...)
        self.exports_: dict[int, dict] = {}
        self.candidates_: list[str] = []
        self.cohorts_: list[dict] = []
        self.cohorts_issued_ = 0
        self.scores_: dict[str, float] = {}
        self.picks_: list[str] = []
        self.standalone_: dict[str, dict] = {}

    def _train_unit(self, supernet: int, total: int) -> dict | None:
        """The next chunk of ``supernet`` (chunks of one supernet are sequential: each continues
        the previous one's weights), ``None`` while its chunk runs or once it is done."""
        done = self.trained_.get(supernet, 0)
        if done >= total or self._live("train", supernet):
            return None
        return {"kind": "train", "supernet": supernet, "until": min(done + self.chunk_steps, total),
                "policy": self.policy}

    def _next_unit(self):
        if self.phase_ == "train":
            if self.trained_[0] < self.total_steps:
                return self._train_unit(0, self.total_steps)
            self.phase_ = "train_sub" if self.few_shot else "score"
        if self.phase_ == "train_sub":
            subs = range(1, len(self.regions_) + 1)
            for k in subs:
                unit = self._train_unit(k, self.few_shot_steps)
                if unit is not None:
                    return unit
            if any(self.trained_.get(k, 0) < self.few_shot_steps for k in subs):
                return None
            self.phase_ = "score"
        if self.phase_ == "score":
            if not self.cohorts_:
                self.candidates_ = [str(a) for a in self._candidates()]
                self.cohorts_ = self._cohorts(self.candidates_)
            if self.cohorts_issued_ < len(self.cohorts_):
                self.cohorts_issued_ += 1
                return dict(self.cohorts_[self.cohorts_issued_ - 1])
            if self._live("score") or any(c not in self.scores_ for c in self.candidates_):
                return None
            ranked = sorted(self.candidates_, key=lambda a: self.scores_[a], reverse=True)
            self.picks_ = ranked[: self.top_k]
            self.phase_ = "standalone"
        if self.phase_ == "standalone":
            return self._final_units(self.picks_)
        return None

    def supernet_of(self, arch) -> int:
        """The supernet that scores ``arch``: its region's sub-supernet under few-shot, else 0."""
        if not self.few_shot:
            return 0
        return 1 + self.space_.region_of(self.space_.parse(arch), self.few_shot)

    def _cohorts(self, candidates: list[str]) -> list[dict]:
        """Score units: candidates grouped by the supernet that scores them, ``cohort_size`` each."""
        by_supernet: dict[int, list[str]] = {}
        for arch in candidates:
            by_supernet.setdefault(self.supernet_of(arch), []).append(arch)
        return [{"kind": "score", "supernet": k, "batches": self.score_batches, "archs": archs[i:i + self.cohort_size]}
                for k, archs in sorted(by_supernet.items()) for i in range(0, len(archs), self.cohort_size)]

    def _candidates(self) -> list:
        """The archs to score once the supernet(s) are trained."""
        raise NotImplementedError

    def _on_row(self, unit: dict, row: dict) -> None:
        if unit["kind"] == "score" and "arch" in row:
            self.scores_[row["arch"]] = row["valid_acc"]

    def _on_complete(self, unit: dict, row: dict) -> None:
        if unit["kind"] == "train":
            k = unit.get("supernet", 0)
            self.trained_[k] = max(self.trained_.get(k, 0), int(row.get("version", unit["until"])))
            self.exports_[k] = {key: row[key] for key in self._export_keys if key in row}
        elif unit["kind"] == "standalone":
            self.standalone_[unit["arch"]] = row

    #: keys of a train row the method's policy exports and the searcher keeps (SETN: "alpha")
    _export_keys: tuple[str, ...] = ()

    @property
    def best_arch(self) -> str | None:
        """The winner: best standalone valid accuracy among the picks (``None`` until known)."""
        if not self.standalone_:
            return None
        return max(self.standalone_, key=lambda a: self.standalone_[a].get("valid_acc", 0.0))
