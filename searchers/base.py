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
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import uuid
import warnings
from typing import Any

import numpy as np
from ray.tune.search import Searcher

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
