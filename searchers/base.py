"""The bookkeeping every raynas searcher shares, done once.

A raynas searcher is a Ray Tune ``Searcher`` that emits *work units* (configs with a ``kind``,
see :mod:`raynas.trainable`) and learns from their rows. Subclasses override three hooks:

- ``_next_unit()`` -> a unit dict, ``None`` (wait for results) or ``Searcher.FINISHED``;
- ``_on_row(unit, row)`` -> learn from one reported row;
- ``_on_complete(unit, last_row)`` -> a unit has finished;

list their own state attributes in ``_state_keys`` and may give ``_progress()`` (one line).

**Units are addressed, never numbered.** Every unit carries a ``key``: a string unique to that
piece of work within the search, and identical whenever the same work is issued again (a retry
after an error, a re-issue after a resume). Row logs and tables key rows by (key, position):

==============  ============================================================================
``train``       ``train/K/U``: supernet K trained from version ``start`` F until ``until`` U.
                The searcher advances K to U when the unit completes: the version it *asked
                for*, never a newer one that a row reports (a re-run chunk must not skip one).
``score``       ``score/K/cI`` (one-shot cohort I of supernet K), ``score/iI/cJ`` (NAO
                iteration I), ``score/gG`` (EvNAS generation G); ``.../restN`` for the N-th
                re-issue of a short cohort's missing archs. ``version`` V: the supernet version
                it is scored at (the trained version when the cohort was made);
                ``first_batch``: the first valid-batch index of candidate 0 (candidate j reads
                ``first_batch + j * batches``; ``None`` when ``batches`` is ``None``, the whole
                split). Both come from the cohort's place in the search, never from the unit
                counter or timing: a candidate's score is a function of (arch, V, batch).
``standalone``  ``standalone/ARCH`` (picks of the final phase; isomorphic picks, by
                :meth:`function_key`, are trained once: the next distinct pick takes the slot);
                ``standalone/ARCH/sSEED`` when the recipe names several ``seeds`` (each pick
                trains once per seed; the winner has the best mean valid accuracy over them).
``proxy``       ``proxy/rR/J``: TE-NAS round R, unit J.
==============  ============================================================================

The base also assigns ``unit``, a counter in issue order (a unit issued again keeps its own).

**Edges, one behaviour.** An errored unit is re-issued (same dict, same key) up to
``max_unit_retries`` times; then ``_on_failed`` (default: the search fails). A ``score`` or
``proxy`` unit that *completes* without a row for each of its archs (labels) -- a Tune scheduler
or stopper ended it -- re-issues exactly the missing ones (in contiguous runs, each with its own
``first_batch``, so every arch reads the batches it would have read); a ``standalone`` unit
completed before its last epoch goes again (its training resumes from its checkpoint). A
lineage that comes back short ``max_unit_retries + 1`` times in a row without a new row fails
the search, naming the likely cause. A ``train`` row with ``"diverged": True``
(the actor's loss went NaN/inf) fails the search with the row's ``message``. Failing never raises
inside Tune's loop: ``failure_`` holds one line naming the unit and its key, nothing more is
issued and ``suggest`` returns ``FINISHED`` once nothing is live. NaN/inf scores count as the
worst score.

**Resume.** ``get_state()`` is an explicit dict of plain values (version ``STATE_VERSION``, the
RNG state, live and queued units, completed keys in completion order, the method's state).
After ``set_state`` of a state saved while units ran (a driver that died), ``reissue_live()``
moves the live units back to the front of the retry queue, in unit order, without counting an
attempt: the search then continues exactly as if they had just been issued. ``outcome()`` says
where the search stands: ``{"finished", "failure", "final_arch", "phase", "completed",
"progress"}``.

**Supernet actors by phase.** ``supernets_needed()`` says which supernets' actors the search
needs alive now (those of its pending units and those its phase is about to use; none in the
standalone phase), so the driver starts an actor when a unit for it is issued and releases the
rest. ``set_supernet_limit(n)`` caps how many supernets are in use at once (scarce GPUs: a
25-way few-shot split on 2 GPUs); units for another supernet wait, and the search computes the
same. ``halt(reason)`` stops a session from outside (the cluster cannot run it): the session
fails with that reason and a resume goes on. The limit, the driver's ``on_issue`` hook and a halt
are the session's, never state.

**In a user's own Tuner** (see :func:`raynas.searchers.tune_config`): the searcher ends the
experiment itself, so it needs ``num_samples=-1``, no ``metric``/``mode`` (its rows carry no
single metric), no scheduler or stop condition that ends units early. Tune tells a searcher
these only when ``param_space`` is non-empty (``set_search_properties``): then a setting it
cannot honour is refused with one line. Otherwise it cannot know; a run Tune stops before
``FINISHED`` shows ``outcome()["finished"] is False`` (raynas's lifecycle marks it
``interrupted``). ``set_max_concurrency`` takes the ``ConcurrencyLimiter``'s limit: one limit.

:class:`SupernetSearcher` holds the one-shot pipeline's pieces (sequential train chunks, score
cohorts, the final phase) that RSPS, SETN (through :class:`OneShotSearcher`), EvNAS and NAO share.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import sys
import uuid
import warnings
from typing import Any, Sequence

import numpy as np
from ray.tune.search import Searcher

from raynas.checks import require_at_least_one
from raynas.rowlog import unpack
from raynas.spaces import get_space

logger = logging.getLogger(__name__)

#: multi-row kinds: the unit's item list, the row field naming an item, the unit's lists cut with it
_MULTI_ROW = {"score": ("archs", "arch", ("archs",)), "proxy": ("labels", "label", ("labels", "masks"))}

_HOW_TO_TUNE = "raynas.searchers.tune_config(searcher) builds a TuneConfig that fits"

#: the seeds NAS-Bench-201 trains every arch with (its headline numbers are their mean)
BENCHMARK_SEEDS = (777, 888, 999)
#: how few-shot sub-supernets start: from the one-shot supernet (weights and policy state, e.g.
#: SETN's alpha), or from scratch, each its own search (the official few-shot SETN)
FEW_SHOT_VARIANTS = ("continue", "independent")


def final_seeds(n: int) -> list[int]:
    """The first ``n`` standalone seeds: the benchmark's 777, 888, 999, then 1110, 1221, ..."""
    require_at_least_one(final_seeds=n)
    return [777 + 111 * i for i in range(int(n))]


def sub_supernet_steps(total_steps: int, regions: int, *, budget: "float | str" = "equal",
                       steps: int | None = None) -> int:
    """The training steps of each few-shot sub-supernet: ``steps`` when given; ``budget="equal"``:
    the one-shot budget shared out, ``total_steps // regions`` each (the few-shot total equals the
    one-shot's); a number ``f``: ``round(f * total_steps)`` each (the official few-shot code: 0.5,
    i.e. 600 one-shot epochs then 300 per sub-supernet)."""
    if steps is not None:
        return int(steps)
    if budget == "equal":
        return max(1, int(total_steps) // max(1, int(regions)))
    return max(1, round(float(budget) * int(total_steps)))


def sub_supernets_inherit(searcher: dict) -> bool:
    """Whether the sub-supernets of a few-shot search (its searcher settings) start from the
    one-shot supernet (``few_shot_variant="continue"``, the default) or from scratch."""
    return searcher.get("few_shot_variant", "continue") == "continue"


def check_tune_settings(owner: str, *, metric=None, mode=None, num_samples=-1, scheduler=None, stop=None,
                        config: dict | None = None) -> None:
    """Refuse, with one line, the Tune settings a raynas searcher cannot honour."""
    if metric is not None or mode is not None:
        raise ValueError(f"{owner}: metric={metric!r}, mode={mode!r}; a raynas searcher ends the experiment itself "
                         "and its rows carry no single metric (train rows have no valid_acc): leave metric and mode "
                         f"out of TuneConfig ({_HOW_TO_TUNE})")
    # Tune passes num_samples=-1 on as sys.maxsize
    if num_samples is not None and int(num_samples) != -1 and int(num_samples) < sys.maxsize:
        raise ValueError(f"{owner}: num_samples={num_samples!r}; a raynas searcher ends the experiment itself after "
                         "a number of units it cannot know in advance (retries, short cohorts): pass num_samples=-1 "
                         f"({_HOW_TO_TUNE})")
    if scheduler is not None and type(scheduler).__name__ != "FIFOScheduler":
        raise ValueError(f"{owner}: scheduler={type(scheduler).__name__}; raynas work units must run to their end "
                         "(a score cohort is not a trial to stop early): leave scheduler out (Tune's FIFOScheduler)")
    if stop:
        raise ValueError(f"{owner}: stop={stop!r}; raynas work units must run to their end: leave stop out "
                         "(stop the search with its own settings, or Ctrl-C and resume)")
    unresolved = sorted(_unresolved(config or {}))
    if unresolved:
        raise ValueError(f"{owner}: param_space holds search-space definitions at {unresolved}; a raynas searcher "
                         "chooses every unit itself: pass plain values (they ride along in every unit) or none")


def _unresolved(config: dict, prefix: str = "") -> list[str]:
    from ray.tune.search.sample import Domain

    out = []
    for key, value in config.items():
        if isinstance(value, Domain) or (isinstance(value, dict) and set(value) == {"grid_search"}):
            out.append(f"{prefix}{key}")
        elif isinstance(value, dict):
            out.extend(_unresolved(value, f"{prefix}{key}."))
    return out


def _runs(positions: Sequence[int]) -> list[list[int]]:
    """Sorted positions cut into runs of consecutive integers."""
    runs: list[list[int]] = []
    for p in sorted(positions):
        if runs and p == runs[-1][-1] + 1:
            runs[-1].append(p)
        else:
            runs.append([p])
    return runs


class WorkUnitSearcher(Searcher):
    """Base of raynas searchers: keys, live units, finishing, retries, short units, failure, state."""

    #: bump when the saved state's layout changes (2: keys, versions, completed, failure, rests)
    STATE_VERSION = 2
    #: names of the subclass's own state attributes (plain Python / numpy values)
    _state_keys: tuple[str, ...] = ()

    def __init__(self, *, space: str = "nb201", seed: int = 0, max_concurrent: int = 4, max_unit_retries: int = 2):
        super().__init__(metric=None, mode=None)
        if int(max_concurrent) < 1:
            raise ValueError(f"max_concurrent={max_concurrent!r}; must be >= 1")
        if int(max_unit_retries) < 0:
            raise ValueError(f"max_unit_retries={max_unit_retries!r}; must be >= 0")
        self.space = space
        self.seed = seed
        self.max_concurrent = int(max_concurrent)
        self.max_unit_retries = int(max_unit_retries)
        self.space_ = get_space(space)
        self.rng_ = np.random.default_rng(seed)
        self.live_: dict[str, dict] = {}  # trial id -> unit
        self.retry_: list[dict] = []  # issued units to run again (errored, or live when the driver died)
        self.extra_: list[dict] = []  # new units the base made (a short unit's missing items)
        self.attempts_: dict[str, int] = {}  # key -> failed attempts
        self.rests_: dict[str, int] = {}  # key of a short unit's lineage -> rest units made
        self.stalls_: dict[str, int] = {}  # lineage key -> short returns in a row that brought no new row
        self.seen_: dict[str, list[str]] = {}  # trial id -> items of a live multi-row unit that got a row
        self.next_unit_ = 0
        self.finished_ = False
        self.failure_: str | None = None
        self.completed_: list[str] = []  # unit keys, in completion order
        #: standalone unit key -> its last row's facts (arch, unit, seed, train split, accuracies)
        self.finals_: dict[str, dict] = {}
        self._tune_checked = False  # Tune's settings seen (set_search_properties) or vouched for (tune_config)
        self._warned = False
        # --- the driver's, not state (never saved, dropped when pickled) -------------------
        #: at most this many supernets in use at once (their actors alive); None: no limit
        #: (:meth:`set_supernet_limit`; raynas's driver sets it per session from the cluster)
        self.supernet_limit: int | None = None
        #: called with each unit just before :meth:`suggest` returns it (raynas's driver starts
        #: the unit's supernet actor there, before Tune makes the trial); None in a user's Tuner
        self.on_issue = None
        #: why this session stopped from outside the search (:meth:`halt`), else None
        self.halted_: str | None = None

    # --- Tune's interface -----------------------------------------------------------------
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec) -> bool:
        """Tune's settings (called only when ``param_space`` is non-empty): refuses what it
        cannot honour with one line (see :func:`check_tune_settings`)."""
        check_tune_settings(type(self).__name__, metric=metric, mode=mode, num_samples=spec.get("num_samples", -1),
                            stop=spec.get("stop"), config=config)
        self._tune_checked = True
        return True

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        """The ``ConcurrencyLimiter``'s limit becomes this searcher's own (one limit, not two)."""
        require_at_least_one(max_concurrent=max_concurrent)
        self.max_concurrent = int(max_concurrent)
        return True

    def set_supernet_limit(self, limit: int | None) -> None:
        """Use at most ``limit`` supernets at once (``None``: no limit): units for another supernet
        wait until one in use is done with. Scarce GPUs queue many sub-supernets this way; the
        search computes the same (units are addressed by key and version, never by order)."""
        if limit is not None:
            require_at_least_one(supernet_limit=limit)
        self.supernet_limit = None if limit is None else int(limit)

    def halt(self, reason: str) -> None:
        """Stop issuing units for a reason outside the search (the cluster cannot run it): the
        session ends ``failed`` with ``reason`` (``outcome()["failure"]``), but nothing of it is
        saved, so a resume goes on with the search as it stood."""
        if self.halted_ is None:
            self.halted_ = reason
            logger.error("%s: the session stops: %s", type(self).__name__, reason)

    def __getstate__(self) -> dict:
        # the driver's hook holds actor handles: not part of a pickled searcher (Tune pickles its
        # search algorithm with the tuner)
        return {**self.__dict__, "on_issue": None}

    def suggest(self, trial_id: str) -> dict | str | None:
        if not self._tune_checked and not self._warned:
            self._warned = True
            logger.warning("%s: Tune has not told this searcher its settings (param_space is empty); it needs "
                           "num_samples=-1, no metric/mode and no scheduler, else the search stops unfinished or "
                           "crashes; %s", type(self).__name__, _HOW_TO_TUNE)
        if self.finished_:
            return Searcher.FINISHED
        if self.halted_ is not None:  # stopped from outside: the saved state stays unfinished
            return None if self.live_ else Searcher.FINISHED
        if self.failure_ is not None:
            if self.live_:
                return None
            self.finished_ = True
            return Searcher.FINISHED
        if len(self.live_) >= self.max_concurrent:
            return None
        if self.retry_:
            unit = self.retry_.pop(0)
        else:
            unit = self.extra_.pop(0) if self.extra_ else self._next_unit()
            if unit is None:
                return None
            if unit == Searcher.FINISHED:
                if self.live_ or self.retry_ or self.extra_:
                    return None
                self.finished_ = True
                return Searcher.FINISHED
            unit = {**unit, "unit": self.next_unit_}
            unit.setdefault("key", f"{unit['kind']}/u{self.next_unit_}")
            self.next_unit_ += 1
        self.live_[trial_id] = unit
        if self.on_issue is not None:
            self.on_issue(unit)
        return dict(unit)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        for row in unpack(result):  # a batch (a slice of a cohort) holds one row per candidate
            self._on_result(trial_id, row)

    def _on_result(self, trial_id: str, result: dict) -> None:
        unit = self.live_.get(trial_id)
        if unit is None:
            return
        row = self._clean(result)
        if row.get("diverged"):
            self._fail(self._diverged_reason(unit, row))
            return
        if unit["kind"] in _MULTI_ROW:
            item = row.get(_MULTI_ROW[unit["kind"]][1])
            if item is not None:
                self.seen_.setdefault(trial_id, []).append(item)
        self._on_row(unit, row)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        unit = self.live_.pop(trial_id, None)
        seen = set(self.seen_.pop(trial_id, []))
        if unit is None:  # unknown or already completed: Tune may report twice around restores
            return
        if error and self.halted_ is not None:
            self.retry_.insert(0, unit)  # stopped from outside: not the unit's failure, not an attempt
            return
        if error:
            attempts = self.attempts_[unit["key"]] = self.attempts_.get(unit["key"], 0) + 1
            if attempts <= self.max_unit_retries:
                logger.warning("work unit %s (%s) failed; re-issuing it (attempt %d)", unit["key"], unit["kind"],
                               attempts + 1)
                self.retry_.append(unit)
                return
            logger.error("work unit %s (%s) failed %d times; giving up on it", unit["key"], unit["kind"], attempts)
            self._on_failed(unit)
            return
        rows = [self._clean(r) for r in unpack(result or {})]
        row = rows[-1] if rows else {}
        if row.get("diverged"):
            self._fail(self._diverged_reason(unit, row))
            return
        if unit["kind"] in _MULTI_ROW:
            for one in rows:
                item = one.get(_MULTI_ROW[unit["kind"]][1])
                if item is not None and item not in seen:
                    # a scheduler's STOP: Tune hands the stopping result to the searcher only here
                    seen.add(item)
                    self._on_row(unit, one)
        elif unit["kind"] == "standalone" and row.get("epoch", 0) < row.get("epochs", 0):
            self._standalone_stopped(unit, row)
            return
        if unit["kind"] == "standalone":
            self.finals_[unit["key"]] = {"arch": unit["arch"], "unit": unit["unit"], "role": unit.get("role", ""),
                                         "train_seed": unit.get("seed"), **{k: row[k] for k in (
                                             "valid_acc", "test_acc", "train_split") if k in row}}
        self._on_complete(unit, row)
        self.completed_.append(unit["key"])
        if unit["kind"] in _MULTI_ROW:
            items = unit[_MULTI_ROW[unit["kind"]][0]]
            missing = [p for p, item in enumerate(items) if item not in seen]
            if missing:
                self._reissue_short(unit, missing, progressed=len(missing) < len(items))

    # --- resume and outcome ----------------------------------------------------------------
    def reissue_live(self) -> None:
        """After ``set_state`` of a state saved while units ran: every live unit goes back to the
        front of the retry queue (in unit order, not counted as an attempt), so it is issued
        again, with its key and unit number, before anything new."""
        live = sorted(self.live_.values(), key=lambda u: u["unit"])
        self.retry_ = live + self.retry_
        self.live_ = {}
        self.seen_ = {}

    def outcome(self) -> dict:
        """Where the search stands, as plain values: ``finished`` (it returned ``FINISHED``),
        ``failure`` (one line, or ``None``), ``final_arch`` (the winner of a finished search, else
        ``None``; also ``None`` for a ranking run that trains nothing standalone), ``phase``,
        ``completed`` (unit keys in completion order) and ``progress`` (one human line)."""
        done = self.finished_ and self.failure_ is None
        return {"finished": bool(self.finished_), "failure": self.failure_ or self.halted_,
                "final_arch": self.best_arch if done else None, "phase": "done" if done else self._phase(),
                "completed": list(self.completed_), "progress": self._progress()}

    @property
    def best_arch(self) -> str | None:
        """The search's result (``None`` until known)."""
        return None

    def _phase(self) -> str:
        return str(getattr(self, "phase_", "run"))

    def _progress(self) -> str:
        return f"phase {self._phase()}: {len(self.completed_)} units completed"

    # --- hooks ----------------------------------------------------------------------------
    def _next_unit(self) -> dict | str | None:
        raise NotImplementedError

    def _on_row(self, unit: dict, row: dict) -> None:
        pass

    def _on_complete(self, unit: dict, row: dict) -> None:
        pass

    def _on_failed(self, unit: dict) -> None:
        """A unit failed for good. Default: the search fails (its state would be incomplete)."""
        self._fail(f"work unit {unit['key']} ({unit['kind']}, unit {unit['unit']}) failed "
                   f"{self.max_unit_retries + 1} times")

    # --- failure and short units ------------------------------------------------------------
    def _fail(self, reason: str) -> None:
        """The search fails: the first reason is kept; nothing more is issued."""
        if self.failure_ is None:
            self.failure_ = reason
            self.retry_, self.extra_ = [], []
            logger.error("%s: the search failed: %s", type(self).__name__, reason)

    @staticmethod
    def _diverged_reason(unit: dict, row: dict) -> str:
        message = row.get("message") or "the supernet's loss became non-finite"
        return f"work unit {unit['key']} ({unit['kind']}) diverged: {message}"

    def _stalled(self, root: str, unit: dict, progressed: bool, what: str) -> bool:
        """Count a short return of lineage ``root``; fail the search (and say True) once
        ``max_unit_retries + 1`` returns in a row brought nothing new."""
        self.stalls_[root] = 0 if progressed else self.stalls_.get(root, 0) + 1
        if self.stalls_[root] <= self.max_unit_retries:
            return False
        self._fail(f"{unit['kind']} unit {unit['key']} came back short {self.stalls_[root]} times without a new "
                   f"row ({what}); something ends raynas units early (a Tune scheduler such as ASHA, or a stop "
                   f"condition): raynas units must run to their end ({_HOW_TO_TUNE})")
        return True

    def _reissue_short(self, unit: dict, missing: list[int], *, progressed: bool) -> None:
        """A multi-row unit came back without rows for the items at ``missing``: queue exactly
        those again (a unit per run of consecutive positions, keys ``ROOT/restN``), or fail once
        its lineage has come back ``max_unit_retries + 1`` times in a row without a new row."""
        items_field, _, fields = _MULTI_ROW[unit["kind"]]
        items = unit[items_field]
        shown = ", ".join(str(items[p]) for p in missing[:3]) + (", ..." if len(missing) > 3 else "")
        root = unit.get("cohort", unit["key"])
        if self._stalled(root, unit, progressed, f"no rows for {len(missing)} of its {len(items)} {items_field}: "
                                                 f"{shown}"):
            return
        logger.warning("%s unit %s came back without rows for %d of its %d %s (%s); re-issuing them", unit["kind"],
                       unit["key"], len(missing), len(items), items_field, shown)
        for run in _runs(missing):
            self.rests_[root] = n = self.rests_.get(root, 0) + 1
            rest = {k: v for k, v in unit.items() if k != "unit"}
            for field in fields:
                rest[field] = [unit[field][p] for p in run]
            if unit["kind"] == "score" and unit.get("first_batch") is not None:
                rest["first_batch"] = int(unit["first_batch"]) + run[0] * int(unit.get("batches") or 1)
            rest.update(key=f"{root}/rest{n}", cohort=root)
            self.extra_.append(rest)

    def _standalone_stopped(self, unit: dict, row: dict) -> None:
        """A standalone unit completed before its last epoch (a scheduler stopped it): the same
        unit goes again (its trial resumes from the checkpoint kept by key), unless it stalls."""
        reached = int(row.get("epoch", 0))
        progressed = reached > self.rests_.get(unit["key"], 0)
        self.rests_[unit["key"]] = max(reached, self.rests_.get(unit["key"], 0))
        if not self._stalled(unit["key"], unit, progressed, f"stopped at epoch {reached} of {row.get('epochs')}"):
            logger.warning("standalone unit %s stopped at epoch %d of %s; re-issuing it", unit["key"], reached,
                           row.get("epochs"))
            self.retry_.append(unit)

    # --- helpers --------------------------------------------------------------------------
    def _pending(self, kind: str | None = None) -> list[dict]:
        """Units running or waiting to run (live, retry queue, extra queue), of ``kind``."""
        return [u for u in [*self.live_.values(), *self.retry_, *self.extra_] if kind is None or u["kind"] == kind]

    def _live(self, kind: str, supernet: int | None = None) -> bool:
        """Whether a unit of ``kind`` (on ``supernet``) is running or waiting to be (re-)issued."""
        return any(supernet is None or u.get("supernet") == supernet for u in self._pending(kind))

    def supernets_in_use(self) -> set[int]:
        """The supernets of the units running or waiting to run."""
        return {int(u.get("supernet", 0)) for u in self._pending() if u["kind"] in ("train", "score")}

    def supernets_needed(self) -> set[int]:
        """The supernets whose actors the search needs alive now: those of its pending units and
        those its phase is about to use (a method without a supernet: none). The driver keeps
        exactly these actors (creating one when a unit for it is issued) and releases the rest;
        never more than :attr:`supernet_limit` beyond the ones in use."""
        return self.supernets_in_use()

    def _admit(self, wanted: Sequence[int], busy: set[int]) -> list[int]:
        """Of ``wanted`` (in order), the supernets a unit may go to now: each one already ``busy``,
        then new ones while fewer than :attr:`supernet_limit` are busy."""
        if self.supernet_limit is None:
            return list(wanted)
        busy, out = set(busy), []
        for k in wanted:
            if k in busy:
                out.append(k)
            elif len(busy) < self.supernet_limit:
                busy.add(k)
                out.append(k)
        return out

    def standalone_soon(self) -> int:
        """How many standalone trainings the search will start at once soon (its last supernet
        work is in flight), so the driver can warm their worker processes meanwhile; 0: none
        soon. A hint only: it changes nothing the search computes."""
        return 0

    @property
    def idle(self) -> bool:
        """No unit is live or waiting to be issued."""
        return not self._pending()

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

    def function_key(self, arch) -> Any:
        """The function an arch computes: the space's exact algebraic canonical key where it has
        one (NB201), else its ``canonical_key``. Archs with equal keys are trained once."""
        arch = self.space_.parse(arch)
        try:
            return self.space_.canonical_key(arch, rule="algebraic")
        except TypeError:  # a space without rules
            return self.space_.canonical_key(arch)

    def distinct_functions(self, ranked: Sequence, k: int | None = None) -> list:
        """The first ``k`` (all if ``None``) of ``ranked`` that compute distinct functions: a
        pick isomorphic to an earlier one is skipped and the next distinct one takes its slot."""
        out, keys = [], set()
        for arch in ranked:
            key = self.function_key(arch)
            if key not in keys:
                keys.add(key)
                out.append(arch)
                if k is not None and len(out) >= k:
                    break
        return out

    def sample_distinct(self, n: int, *, functions: bool = False) -> list:
        """``n`` distinct uniform archs (all of them if the space is smaller); ``functions=True``:
        archs computing distinct functions (:meth:`function_key`)."""
        n = min(int(n), len(self.space_))
        if n == len(self.space_) and not functions:
            # the whole space, in a seeded order (uniform draws would need ~n ln n of them)
            archs = list(self.space_.enumerate())
            return [archs[i] for i in self.rng_.permutation(len(archs))]
        key = self.function_key if functions else (lambda a: a)
        seen: dict = {}
        for _ in range(1000):
            if len(seen) >= n:
                break
            for arch in self.space_.sample(self.rng_, n - len(seen)):
                seen.setdefault(key(arch), arch)
        if len(seen) < n:
            raise ValueError(f"asked for {n} archs computing distinct functions; the space {self.space!r} "
                             f"gave only {len(seen)} in 1000 rounds of sampling: ask for fewer")
        return list(seen.values())[:n]

    def _final_seeds(self) -> list[int]:
        """The seeds each final pick trains with: the recipe's ``seeds``, else its ``seed`` (777)."""
        recipe = getattr(self, "standalone", None) or {}
        return [int(s) for s in (recipe.get("seeds") or [recipe.get("seed", BENCHMARK_SEEDS[0])])]

    def _standalone_unit(self, arch: str, role: str = "final", seed: int | None = None) -> dict:
        """The standalone training of ``arch`` with ``seed`` (the first of :meth:`_final_seeds`
        unless given): key ``standalone/ARCH``, or ``standalone/ARCH/sSEED`` under several seeds."""
        seeds = self._final_seeds()
        seed = seeds[0] if seed is None else int(seed)
        key = f"standalone/{arch}" if len(seeds) == 1 else f"standalone/{arch}/s{seed}"
        recipe = {k: v for k, v in self.standalone.items() if k != "seeds"}
        return {"kind": "standalone", "key": key, "arch": arch, "role": role, **recipe, "seed": seed}

    def _final_units(self, picks: list[str]):
        """The last phase of every method: each pick trained standalone once per seed (role
        "final"; the best mean valid accuracy over the seeds wins, :func:`raynas.results.final_winner`),
        then ``FINISHED``. Picks computing the same function are trained once. Needs
        ``self.standalone`` (the recipe)."""
        issued = set(self.finals_) | set(self.completed_) | {u["key"] for u in self._pending("standalone")}
        for arch in self.distinct_functions(picks):
            for seed in self._final_seeds():
                unit = self._standalone_unit(arch, seed=seed)
                if unit["key"] not in issued:
                    return unit
        if self._live("standalone"):
            return None
        return Searcher.FINISHED

    def _best_standalone(self) -> str | None:
        """The winner of the final trainings (:func:`raynas.results.final_winner` of their rows)."""
        from raynas.results import final_winner

        rows = list(self.finals_.values())
        if not rows:  # a state saved before raynas kept finals_
            rows = [{**row, "arch": arch} for arch, row in getattr(self, "standalone_", {}).items()]
        return final_winner(rows)

    # --- state ----------------------------------------------------------------------------
    def get_state(self) -> dict:
        state = {
            "state_version": self.STATE_VERSION,
            "class": type(self).__name__,
            "rng": self.rng_.bit_generator.state,
            "live": self.live_,
            "retry": self.retry_,
            "extra": self.extra_,
            "attempts": self.attempts_,
            "rests": self.rests_,
            "stalls": self.stalls_,
            "seen": self.seen_,
            "next_unit": self.next_unit_,
            "finished": self.finished_,
            "failure": self.failure_,
            "completed": self.completed_,
            "finals": self.finals_,
        }
        state.update({key: getattr(self, key) for key in self._state_keys})
        return state

    def set_state(self, state: dict) -> None:
        if state.get("state_version") != self.STATE_VERSION:
            raise ValueError(f"{type(self).__name__}: a searcher state of layout version {state.get('state_version')} "
                             f"(written by {state.get('class')}); this raynas reads version {self.STATE_VERSION}: "
                             "start the search again")
        if state.get("class") != type(self).__name__:
            warnings.warn(f"{type(self).__name__}: restoring state written by {state.get('class')}", stacklevel=2)
        self.rng_.bit_generator.state = state["rng"]
        self.live_ = state["live"]
        self.retry_ = state["retry"]
        self.extra_ = state["extra"]
        self.attempts_ = state["attempts"]
        self.rests_ = state["rests"]
        self.stalls_ = state["stalls"]
        self.seen_ = state["seen"]
        self.next_unit_ = state["next_unit"]
        self.finished_ = state["finished"]
        self.failure_ = state["failure"]
        self.completed_ = state["completed"]
        self.finals_ = state.get("finals", {})  # absent from states of raynas before multi-seed finals
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


class SupernetSearcher(WorkUnitSearcher):
    """The one-shot pipeline's shared pieces: sequential train chunks addressed by version,
    score cohorts addressed by their place in the search, the final phase.

    State: ``phase_``; ``trained_`` (supernet -> the version reached, as asked for);
    ``exports_`` (supernet -> the policy's exported values in its last train row, e.g. SETN's
    alpha); ``cohorts_`` (the current scoring round's units) and ``cohorts_issued_``;
    ``scores_`` (arch -> supernet score, this round); ``picks_``; ``standalone_`` (arch -> the
    last row of its standalone training).
    """

    _state_keys = ("phase_", "trained_", "exports_", "cohorts_", "cohorts_issued_", "scores_", "picks_",
                   "standalone_")
    #: keys of a train row the method's policy exports and the searcher keeps (SETN: "alpha")
    _export_keys: tuple[str, ...] = ()

    def __init__(self, *, standalone: dict | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.standalone = dict(standalone or {})
        self.phase_ = "train"
        #: supernet id -> version reached (0: the one-shot supernet; 1..K: sub-supernets)
        self.trained_: dict[int, int] = {0: 0}
        self.exports_: dict[int, dict] = {}
        self.cohorts_: list[dict] = []
        self.cohorts_issued_ = 0
        self.scores_: dict[str, float] = {}
        self.picks_: list[str] = []
        self.standalone_: dict[str, dict] = {}

    # --- units ----------------------------------------------------------------------------
    def _train_unit(self, supernet: int, until: int, policy: Any) -> dict | None:
        """The chunk of ``supernet`` from its version to ``until`` (chunks of one supernet are
        sequential: each continues the previous one's weights); ``None`` while one runs or once
        the supernet is there."""
        start = self.trained_.get(supernet, 0)
        if start >= until or self._live("train", supernet):
            return None
        return {"kind": "train", "key": f"train/{supernet}/{until}", "supernet": supernet, "start": start,
                "until": int(until), "policy": policy}

    def _make_cohorts(self, archs: Sequence[str], *, key: str, supernet: int = 0, batches: int | None,
                      cohort_size: int | None = None, first: int = 0, **extra: Any) -> list[dict]:
        """Score units for ``archs`` on ``supernet`` at its trained version: ``cohort_size`` each
        (keys ``KEY/cI``), or one unit keyed ``KEY``. Candidate ``i`` of ``archs`` reads valid
        batches from ``(first + i) * batches``."""
        archs = list(archs)
        size = cohort_size or max(1, len(archs))
        version = self.trained_.get(supernet, 0)
        return [{"kind": "score", "key": key if cohort_size is None else f"{key}/c{i // size}", "supernet": supernet,
                 "version": version, "batches": batches,
                 "first_batch": None if batches is None else (first + i) * int(batches),
                 "archs": archs[i:i + size], **extra}
                for i in range(0, len(archs), size)]

    def _next_cohort(self) -> dict | None:
        """The next of this round's cohorts not yet issued (``None`` once all are, or while its
        supernet waits for one of the :attr:`supernet_limit` in use)."""
        if self.cohorts_issued_ < len(self.cohorts_):
            if not self._admit([int(self.cohorts_[self.cohorts_issued_].get("supernet", 0))], self.supernets_in_use()):
                return None
            self.cohorts_issued_ += 1
            return dict(self.cohorts_[self.cohorts_issued_ - 1])
        return None

    def _waiting_cohort_supernets(self) -> list[int]:
        """The supernets of this round's cohorts not yet issued, in issue order, once each."""
        return list(dict.fromkeys(int(c.get("supernet", 0)) for c in self.cohorts_[self.cohorts_issued_:]))

    def supernets_needed(self) -> set[int]:
        """Those in use, and every supernet the search trains or scores on until its final
        phase (:meth:`WorkUnitSearcher.supernets_needed`); none once it trains standalone."""
        used = self.supernets_in_use()
        if self.finished_ or self.failure_ is not None or self._phase() in ("standalone", "final", "done"):
            return used
        return used | {int(k) for k in self.trained_}

    def _round_archs(self) -> list[str]:
        return [a for c in self.cohorts_ for a in c["archs"]]

    def _round_scored(self) -> bool:
        """Every cohort of the round issued, none running or queued, every arch scored."""
        return (self.cohorts_issued_ >= len(self.cohorts_) and not self._live("score")
                and all(a in self.scores_ for a in self._round_archs()))

    def _start_round(self, cohorts: list[dict]) -> None:
        self.cohorts_, self.cohorts_issued_, self.scores_ = cohorts, 0, {}

    # --- results --------------------------------------------------------------------------
    def _on_row(self, unit: dict, row: dict) -> None:
        if unit["kind"] == "score" and "arch" in row:
            self.scores_[row["arch"]] = float(row.get("valid_acc", 0.0))

    def _on_complete(self, unit: dict, row: dict) -> None:
        if unit["kind"] == "train":
            k = unit.get("supernet", 0)
            reported = row.get("version")
            if reported is not None and int(reported) != int(unit["until"]):
                logger.warning("train unit %s reported version %s; the search goes on from the version it asked "
                               "for, %s", unit["key"], reported, unit["until"])
            # NOTE: the version asked for, never a newer one a row reports (a re-run unit must not skip a chunk)
            self.trained_[k] = int(unit["until"])
            self.exports_[k] = {key: row[key] for key in self._export_keys if key in row}
        elif unit["kind"] == "standalone":
            self.standalone_[unit["arch"]] = row

    @property
    def best_arch(self) -> str | None:
        """The winner: best standalone valid accuracy among the picks (``None`` until known)."""
        return self._best_standalone()

    def _progress(self) -> str:
        phase = self._phase()
        if phase.startswith("train"):
            versions = ", ".join(f"supernet {k} at version {v}" for k, v in sorted(self.trained_.items()))
            return f"phase {phase}: {versions}"
        if phase == "score":
            archs = self._round_archs()
            return f"phase score: {sum(a in self.scores_ for a in archs)}/{len(archs)} candidates scored"
        if phase in ("standalone", "final", "done"):
            return f"phase {phase}: {len(self.standalone_)}/{len(self.picks_)} picks trained standalone"
        return f"phase {phase}: {len(self.completed_)} units completed"


class OneShotSearcher(SupernetSearcher):
    """The one-shot pipeline: train the supernet in sequential chunks under a policy, score a
    set of candidates in cohorts, train the ``top_k`` best standalone (isomorphic picks once);
    the best standalone valid accuracy wins. Methods override :meth:`_candidates` (and pass their
    own ``policy``). ``top_k=0`` stops after scoring (a ranking run: the scores are the result).

    Few-shot NAS (Zhao et al., ICML 2021) with ``few_shot=EDGES``: after the one-shot supernet
    (id 0) is trained, the sub-supernets ``1..K`` (one per region of ``space.split(EDGES)``,
    each initialised from the one-shot snapshot by its actor) train ``few_shot_steps`` steps
    each, concurrently; every candidate is then scored on the sub-supernet whose region holds it.
    Their budget (:func:`sub_supernet_steps`): ``few_shot_steps``, else ``sub_supernet_budget``:
    ``"equal"`` (``total_steps // K`` each: few-shot costs what one-shot costs) or a fraction of
    the one-shot's ``total_steps`` *each* (the official code: 0.5). ``few_shot_variant``:
    ``"continue"`` (sub-supernets start from the trained one-shot supernet: its weights and its
    policy's state) or ``"independent"`` (the one-shot supernet is not trained; each
    sub-supernet is its own search from scratch: the official few-shot SETN).
    """

    supports_few_shot = True
    _state_keys = SupernetSearcher._state_keys + ("candidates_",)

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
        sub_supernet_budget: float | str = "equal",
        few_shot_variant: str = "continue",
        space: str = "nb201",
        seed: int = 0,
        max_concurrent: int = 4,
    ) -> None:
        super().__init__(standalone=standalone, space=space, seed=seed, max_concurrent=max_concurrent)
        require_at_least_one(total_steps=total_steps, chunk_steps=chunk_steps, num_candidates=num_candidates,
                             cohort_size=cohort_size)
        if int(top_k) < 0:
            raise ValueError(f"top_k={top_k!r}; must be >= 0 (0: score only, train nothing standalone)")
        if top_k > num_candidates:
            raise ValueError(f"top_k={top_k} > num_candidates={num_candidates}; must be <= num_candidates")
        if score_batches is not None and int(score_batches) < 1:
            raise ValueError(f"score_batches={score_batches!r}; must be >= 1, or None for the whole valid split")
        self.total_steps = int(total_steps)
        self.chunk_steps = int(chunk_steps)
        self.num_candidates = int(num_candidates)
        self.cohort_size = int(cohort_size)
        self.score_batches = score_batches
        self.top_k = int(top_k)
        self.policy = policy
        self.few_shot = None if few_shot is None else self.space_.parse_edges(few_shot)
        self.regions_ = self.space_.split(self.few_shot) if self.few_shot else []
        if sub_supernet_budget != "equal" and (isinstance(sub_supernet_budget, bool)
                                              or not isinstance(sub_supernet_budget, (int, float))
                                              or not math.isfinite(sub_supernet_budget) or sub_supernet_budget <= 0):
            raise ValueError(f"sub_supernet_budget={sub_supernet_budget!r}; expected 'equal' or a fraction > 0 of "
                             "the one-shot supernet's steps (each sub-supernet's)")
        if few_shot_variant not in FEW_SHOT_VARIANTS:
            raise ValueError(f"few_shot_variant={few_shot_variant!r}; expected one of {', '.join(FEW_SHOT_VARIANTS)}")
        if few_shot_steps is not None and sub_supernet_budget != "equal":
            raise ValueError(f"few_shot_steps={few_shot_steps!r} and sub_supernet_budget={sub_supernet_budget!r}; "
                             "give one of them (steps, or a fraction of the one-shot steps)")
        if few_shot_variant != "continue" and not self.few_shot:
            raise ValueError(f"few_shot_variant={few_shot_variant!r} without few_shot; expected few_shot=EDGES "
                             "(--few-shot) to split the supernet")
        self.sub_supernet_budget = sub_supernet_budget
        self.few_shot_variant = few_shot_variant
        if few_shot_steps is not None and int(few_shot_steps) < 1:
            raise ValueError(f"few_shot_steps={few_shot_steps!r}; must be >= 1")
        if self.few_shot:
            few_shot_steps = sub_supernet_steps(self.total_steps, len(self.regions_), budget=sub_supernet_budget,
                                                steps=few_shot_steps)
        self.few_shot_steps = few_shot_steps
        self.candidates_: list[str] = []

    def _chunk(self, supernet: int, total: int) -> dict | None:
        done = self.trained_.get(supernet, 0)
        return self._train_unit(supernet, min(done + self.chunk_steps, total), self.policy)

    def _next_unit(self):
        if self.phase_ == "train":
            # the independent variant trains no one-shot supernet: each sub-supernet starts from scratch
            if self.trained_[0] < self.total_steps and self.few_shot_variant == "continue":
                return self._chunk(0, self.total_steps)
            self.phase_ = "train_sub" if self.few_shot else "score"
        if self.phase_ == "train_sub":
            subs = range(1, len(self.regions_) + 1)
            for k in self._admit(self._untrained_subs(), self.supernets_in_use() | self._subs_in_progress()):
                unit = self._chunk(k, self.few_shot_steps)
                if unit is not None:
                    return unit
            if any(self.trained_.get(k, 0) < self.few_shot_steps for k in subs):
                return None
            self.phase_ = "score"
        if self.phase_ == "score":
            if not self.cohorts_:
                self.candidates_ = [str(a) for a in self._candidates()]
                self._start_round(self._cohorts(self.candidates_))
            unit = self._next_cohort()
            if unit is not None:
                return unit
            if not self._round_scored():
                return None
            # a stable sort: ties keep the candidates' order
            ranked = sorted(self.candidates_, key=lambda a: self.scores_[a], reverse=True)
            self.picks_ = self.distinct_functions(ranked, self.top_k) if self.top_k else []
            self.phase_ = "standalone"
        if self.phase_ == "standalone":
            return self._final_units(self.picks_)
        return None

    def standalone_soon(self) -> int:
        """The final trainings (top_k picks x seeds, at most ``max_concurrent`` at once) while the
        supernets train or the candidates are scored: warming their workers takes a process start
        and torch's import (seconds each), best hidden behind the supernet training."""
        if not self.top_k or self.finished_ or self.failure_ is not None:
            return 0
        if self.phase_ in ("train", "train_sub", "score"):
            return min(self.top_k * len(self._final_seeds()), self.max_concurrent)
        return 0

    def _last_chunk_issued(self) -> bool:
        """The one-shot supernet's last training chunk is running or waiting to run."""
        return any(u["kind"] == "train" and int(u.get("supernet", 0)) == 0 and int(u["until"]) >= self.total_steps
                   for u in self._pending())

    def _untrained_subs(self) -> list[int]:
        return [k for k in range(1, len(self.regions_) + 1) if self.trained_.get(k, 0) < self.few_shot_steps]

    def _subs_in_progress(self) -> set[int]:
        """Sub-supernets part-way through their training (kept, not released between chunks)."""
        return {k for k in self._untrained_subs() if self.trained_.get(k, 0) > 0}

    def supernets_needed(self) -> set[int]:
        """By phase: the one-shot supernet while it trains and (without few-shot) scores; under
        few-shot, the sub-supernets from their training to their last cohort (all of them at once,
        from the one-shot supernet's last chunk on, with no :attr:`supernet_limit` or one above K; else the
        ones in use and the next admitted, so a
        sub-supernet is released once trained and made again from its snapshot to score); none
        in the standalone phase."""
        used = self.supernets_in_use()
        if self.finished_ or self.failure_ is not None:
            return used
        K = len(self.regions_)
        if self.phase_ == "train":
            if K and (self.supernet_limit is None or self.supernet_limit > K) and self._last_chunk_issued():
                # the sub-supernets' actors start (a process each, torch, data) while the last
                # one-shot chunk trains: they read its snapshot only at their first step
                return used | {0} | set(range(1, K + 1))
            return used | {0}
        if self.phase_ == "train_sub":
            if self.supernet_limit is None or self.supernet_limit >= K:
                return used | set(range(1, K + 1))  # trained, then scored: never made twice
            return used | set(self._admit(self._untrained_subs(), used | self._subs_in_progress()))
        if self.phase_ == "score":
            return used | set(self._admit(self._waiting_cohort_supernets(), used))
        return used

    def supernet_of(self, arch) -> int:
        """The supernet that scores ``arch``: its region's sub-supernet under few-shot, else 0."""
        if not self.few_shot:
            return 0
        return 1 + self.space_.region_of(self.space_.parse(arch), self.few_shot)

    def _cohorts(self, candidates: list[str]) -> list[dict]:
        """Score units: candidates grouped by the supernet that scores them, ``cohort_size`` each
        (``score/K/cI``); candidate i of supernet K's group reads valid batches from
        ``i * score_batches``."""
        by_supernet: dict[int, list[str]] = {}
        for arch in candidates:
            by_supernet.setdefault(self.supernet_of(arch), []).append(arch)
        return [unit for k, archs in sorted(by_supernet.items())
                for unit in self._make_cohorts(archs, key=f"score/{k}", supernet=k, batches=self.score_batches,
                                               cohort_size=self.cohort_size)]

    def _candidates(self) -> list:
        """The archs to score once the supernet(s) are trained."""
        raise NotImplementedError
