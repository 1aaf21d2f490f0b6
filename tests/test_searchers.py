"""Searchers as state machines, driven by a cheap fake evaluator with a known optimum (no Ray).

Parametrised over the method registry: every searcher finishes, survives NaN and errored units,
continues identically after save -> restore into a fresh instance and after a driver crash
(restore of its last saved state + ``reissue_live``), keys its units stably, re-issues short
cohorts, trains isomorphic picks once, and keeps a plain-value state.
"""

import functools
import io
import itertools
import math
import pickle
import subprocess
import sys

import numpy as np
import pytest
from ray.tune.search import Searcher

from raynas.searchers import get_presets, get_searcher_class, method_names, tune_config
from raynas.spaces import get_space

SPACE = get_space("nb201")
ONE_SHOT = ["rsps", "setn", "evnas", "nao"]


def fake_acc(arch: str) -> float:
    """Known optimum: more 3x3 convs is better; ties broken by the index."""
    a = SPACE.parse(arch)
    return a.ops.count(3) / 6 + a.index / 1e7


@functools.lru_cache(maxsize=1)
def _representatives() -> dict:
    """Algebraic canonical key -> the lowest-index arch computing that function."""
    reps: dict = {}
    for a in SPACE.enumerate():
        reps.setdefault(SPACE.canonical_key(a, rule="algebraic"), str(a))
    return reps


def iso_acc(arch: str) -> float:
    """``fake_acc`` of the arch's function: isomorphic archs score the same."""
    return fake_acc(_representatives()[SPACE.canonical_key(SPACE.parse(arch), rule="algebraic")])


def fake_proxies(mask, repeats):
    """TE-NAS's proxies of an op mask, favouring 3x3 convs as ``fake_acc`` does: every active 3x3
    conv lowers the NTK condition number by 10 and adds 100 regions, so removing one is always
    the worst pruning choice; a small deterministic term (at most 3 / 30) orders the other ops."""
    n3 = sum(row[3] for row in mask)
    noise = sum((e * 5 + o) * 37 for e, row in enumerate(mask) for o, v in enumerate(row) if v) % 7 * 0.5
    return [100.0 - 10 * n3 + noise] * repeats, [1000 + 100 * n3 + int(10 * noise)] * repeats


def mask_archs(mask):
    """The op tuples inside a mask's sub-space (each edge: one of its active ops)."""
    return set(itertools.product(*[[o for o, v in enumerate(row) if v] for row in mask]))


def make(method, seed=0, **extra):
    kwargs = dict(get_presets(method)["small"].get("searcher", {}))
    kwargs.update(seed=seed, total_steps=100, **extra)
    return get_searcher_class(method)(**kwargs)


class Driver:
    """Plays Tune and the supernet actors: asks for units, answers them with fake rows, records
    every decision and (as raynas's lifecycle does) the searcher's state after every unit start
    and completion.

    The fake actors are version-addressed like the real ones: a ``train`` unit trains supernet
    ``k`` from ``start`` (a version it has reached) to ``until``; its row reports the newest
    version the actor ever reached (as a stale re-run on an old actor did: the searcher must go
    on from the version it asked for). A ``score`` row is a function of (arch, ``version``, valid
    batch ``first_batch + j * batches``) only: never of unit ids or timing.

    ``concurrent=False``: each unit is answered at once. ``concurrent=True``: units are taken
    while the searcher gives them, then the oldest live unit gets its next row (or completes).
    """

    #: a searcher computing in the background (NAO's EPD fit) answers None: wait for it and ask again
    waits_for_background = True

    def __init__(self, searcher, nan_every=0, fail_first=None, concurrent=False, acc=fake_acc, short=None,
                 actors=None):
        self.searcher, self.n, self.log = searcher, 0, []
        self.nan_every, self.fail_first, self.failed = nan_every, fail_first, set()
        self.concurrent, self.acc, self.short = concurrent, acc, short
        self.actors = actors if actors is not None else {}  # supernet -> {"version", "reached"}
        self.live: list[list] = []  # [trial, unit, rows, delivered]
        self.states: list[dict] = []
        self.done: list[tuple[str, dict, list]] = []  # (key, unit, rows) per completion
        self.finished = False

    # --- the fake actors ---------------------------------------------------------------------------
    def rows(self, unit):
        kind = unit["kind"]
        assert isinstance(unit.get("key"), str) and unit["key"], unit
        if kind == "train":
            actor = self.actors.setdefault(unit["supernet"], {"version": 0, "reached": {0}})
            assert unit["start"] in actor["reached"], f"{unit['key']} starts at a version never reached"
            assert unit["until"] > unit["start"]
            actor["reached"].add(unit["until"])
            actor["version"] = max(actor["version"], unit["until"])
            row = {"kind": kind, "key": unit["key"], "version": actor["version"], "train_loss": 1.0}
            policy = unit.get("policy")
            if isinstance(policy, dict) and policy.get("name") == "setn":
                # SETN's policy exports its alpha: a deterministic fake from the policy's seed and the version
                rng = np.random.default_rng([policy.get("seed", 0), unit["until"]])
                row["alpha"] = rng.normal(size=(6, 5)).tolist()
            return [row]
        if kind == "score":
            actor = self.actors.get(unit["supernet"], {"reached": {0}})
            assert unit["version"] in actor["reached"], f"{unit['key']} scores at a version never reached"
            out = []
            for i, arch in enumerate(unit["archs"]):
                batch = None if unit["first_batch"] is None else unit["first_batch"] + i * unit["batches"]
                acc = self.acc(arch) + ((unit["version"] * 7919 + (batch or 0) * 104_729) % 1000) * 1e-13
                if self.nan_every and i % self.nan_every == 0:
                    acc = math.nan
                out.append({"kind": kind, "arch": arch, "position": i, "valid_acc": acc, "version": unit["version"],
                            "batch": batch})
            return out
        if kind == "proxy":
            out = []
            for i, (label, mask) in enumerate(zip(unit["labels"], unit["masks"])):
                ntk, regions = fake_proxies(mask, unit["repeats"])
                if self.nan_every and i % self.nan_every == 0:
                    ntk = [math.nan] * unit["repeats"]
                out.append({"kind": kind, "label": label, "position": i, "ntk": ntk, "regions": regions})
            return out
        if kind == "standalone":
            acc = self.acc(unit["arch"])
            return [{"kind": kind, "arch": unit["arch"], "epoch": e, "valid_acc": acc, "test_acc": acc} for e in (1, 2)]
        raise AssertionError(kind)

    # --- playing Tune ------------------------------------------------------------------------------
    def _save(self):
        self.states.append(pickle.loads(pickle.dumps(self.searcher.get_state())))

    def _suggest(self):
        self.n += 1
        trial = f"t{self.n}"
        unit = self.searcher.suggest(trial)
        # a searcher computing in the background (NAO's EPD fit) answers None, maybe with
        # nothing live: Tune asks again; this Driver waits for the work, then asks again
        while unit is None and self.waits_for_background and getattr(self.searcher, "fitting", False):
            assert self.searcher.wait_for_fit(timeout=600)
            unit = self.searcher.suggest(trial)
        if unit == Searcher.FINISHED:
            self.finished = True
            return None
        if unit is None:
            return None
        self.log.append(dict(unit))
        self._save()
        rows = self.rows(unit)
        if self.short is not None:
            rows = self.short(unit, rows)
        return [trial, unit, rows, 0]

    def _complete(self, entry, error=False):
        trial, unit, rows, _ = entry
        self.searcher.on_trial_complete(trial, None if error else (rows[-1] if rows else {}), error=error)
        if not error:
            self.done.append((unit["key"], unit, rows))
        self._save()

    def step(self):
        """One event. Returns False once FINISHED."""
        if not self.concurrent:
            entry = self._suggest()
            if entry is None:
                assert self.finished, "a searcher answered synchronously must never wait"
                return False
            if self.fail_first == entry[1]["kind"] and entry[1]["kind"] not in self.failed:
                self.failed.add(entry[1]["kind"])
                self._complete(entry, error=True)
                return True
            for row in entry[2]:
                self.searcher.on_trial_result(entry[0], row)
            self._complete(entry)
            return True
        entry = self._suggest()
        if entry is not None:
            self.live.append(entry)
            return True
        if self.finished:
            assert not self.live
            return False
        assert self.live, "the searcher waits with nothing live: it would hang"
        oldest = self.live[0]
        if oldest[3] < len(oldest[2]):
            self.searcher.on_trial_result(oldest[0], oldest[2][oldest[3]])
            oldest[3] += 1
        else:
            self.live.pop(0)
            self._complete(oldest)
        return True

    def run(self, limit=20_000):
        while self.step():
            assert self.n < limit


# --- finishing, picking, determinism ------------------------------------------------------------------
@pytest.mark.parametrize("method", method_names())
def test_every_searcher_finishes_and_picks_well(method):
    driver = Driver(make(method))
    driver.run()
    kinds = [u["kind"] for u in driver.log]
    assert kinds.count("standalone") >= 1
    assert [u["unit"] for u in driver.log] == list(range(len(driver.log)))
    finals = [u["arch"] for u in driver.log if u.get("role") == "final"]
    sampled = {a for u in driver.log if u["kind"] == "score" for a in u["archs"]}
    # proxy units (TE-NAS) score op masks: every arch inside a scored mask counts as seen
    inside = set().union(*[mask_archs(m) for u in driver.log if u["kind"] == "proxy" for m in u["masks"]])
    sampled |= {str(SPACE.arch(ops)) for ops in inside}
    sampled = sampled or set(finals)
    # the final picks are the best of what was scored
    best = max(sampled, key=fake_acc)
    assert best in finals
    outcome = driver.searcher.outcome()
    assert outcome["finished"] and outcome["failure"] is None and outcome["phase"] == "done"
    assert outcome["final_arch"] == driver.searcher.best_arch in finals
    assert outcome["completed"] == [key for key, _, _ in driver.done] and isinstance(outcome["progress"], str)


@pytest.mark.parametrize("method", method_names())
def test_same_seed_same_decisions_and_another_seed_differs(method):
    a, b, c = Driver(make(method, seed=1)), Driver(make(method, seed=1)), Driver(make(method, seed=2))
    for d in (a, b, c):
        d.run()
    assert a.log == b.log
    assert a.log != c.log


@pytest.mark.parametrize("method", method_names())
def test_keys_are_unique_stable_and_name_the_work(method):
    driver = Driver(make(method), fail_first="standalone")
    driver.run()
    by_unit = {}
    for u in driver.log:
        by_unit.setdefault(u["unit"], u["key"])
        assert by_unit[u["unit"]] == u["key"]  # a retried unit keeps its key
    assert len(set(by_unit.values())) == len(by_unit)  # one key per piece of work
    trained: dict = {}
    for u in driver.log:
        if u["kind"] == "train":
            k = u["supernet"]
            assert u["key"] == f"train/{k}/{u['until']}" and u["start"] == trained.get(k, 0)
            trained[k] = u["until"]
        elif u["kind"] == "score":
            assert u["key"].startswith("score/") and u["version"] == trained[u["supernet"]]
            assert (u["first_batch"] is None) == (u["batches"] is None)
        elif u["kind"] == "standalone":
            assert u["key"] == f"standalone/{u['arch']}"
        else:
            assert u["key"].startswith(f"proxy/r{u['round']}/")
    # first batches come from the cohorts' places, not the unit counter: equal across seeds' runs
    firsts = [(u["key"], u["first_batch"]) for u in driver.log if u["kind"] == "score"]
    other = Driver(make(method, seed=9))
    other.run()
    assert firsts == [(u["key"], u["first_batch"]) for u in other.log if u["kind"] == "score"]


# --- save/restore and crash/resume ------------------------------------------------------------------
@pytest.mark.parametrize("method", method_names())
def test_save_restore_mid_search_continues_identically(method, tmp_path):
    straight = Driver(make(method, seed=5))
    straight.run()
    for cut in (1, len(straight.log) // 2, len(straight.log) - 1):
        first = Driver(make(method, seed=5))
        for _ in range(cut):
            first.step()
        path = str(tmp_path / f"state-{cut}.pkl")
        first.searcher.save(path)
        fresh = make(method, seed=99)  # a different seed: everything must come from the state
        fresh.restore(path)
        second = Driver(fresh, actors=first.actors)
        second.n = first.n
        second.run()
        assert first.log + second.log == straight.log, f"diverged after a restore at unit {cut}"


@pytest.mark.parametrize("which", ["last", "older"])
@pytest.mark.parametrize("method", method_names())
def test_resume_after_a_crash_reissues_live_units_and_ends_identically(method, which):
    """The driver dies at an event (a suggest, a row, a completion); a fresh searcher restores
    its last saved state, re-issues the live units and finishes: the same units (by key), the
    same rows, the same completions and the same final arch as an uninterrupted search.
    ``older``: a state saved well before the kill, while the actors went on (their rows then
    report newer versions than the units ask for): version-addressed work ends the same."""
    kw = dict(seed=3, max_concurrent=3, **({"chunk_steps": 30} if method in ("rsps", "setn", "nao") else {}))
    straight = Driver(make(method, **kw), concurrent=True)
    straight.run()
    events = straight.n + sum(len(rows) + 1 for _, _, rows in straight.done)
    def by_key(done):
        # a stale re-run chunk's row reports the actor's newer version: all else must be equal
        return {key: (unit, [{k: v for k, v in r.items() if not (unit["kind"] == "train" and k == "version")}
                             for r in rows]) for key, unit, rows in done}

    expected = by_key(straight.done)
    reissued = 0
    for cut in sorted({3, 7, events // 3, events // 2, events - 5}):
        first = Driver(make(method, **kw), concurrent=True)
        for _ in range(cut):
            if not first.step():
                break
        fresh = make(method, **dict(kw, seed=77))
        saved = first.states[-1] if which == "last" else first.states[len(first.states) // 2]
        fresh.set_state(pickle.loads(pickle.dumps(saved)))
        live_before = sorted(u["key"] for u in saved["live"].values())
        fresh.reissue_live()
        reissued += len(live_before)
        assert not fresh.live_ and sorted(u["key"] for u in fresh.retry_[:len(live_before)]) == live_before
        second = Driver(fresh, concurrent=True, actors=first.actors)  # the actors outlive the driver
        second.n = first.n
        second.run()
        got = by_key(first.done + second.done)
        assert got == expected, f"cut at event {cut}: other units or rows"
        assert fresh.outcome() == straight.searcher.outcome(), f"cut at event {cut}"
    assert reissued >= 3 or which == "older"  # the cuts fell while units ran


# --- edges: NaN, errors, failures, short cohorts --------------------------------------------------
@pytest.mark.parametrize("method", method_names())
def test_nan_scores_never_win(method):
    driver = Driver(make(method), nan_every=2)
    driver.run()
    scored_nan = {a for u in driver.log if u["kind"] == "score" for i, a in enumerate(u["archs"]) if i % 2 == 0}
    finals = {u["arch"] for u in driver.log if u.get("role") == "final"}
    assert not (finals & scored_nan)


@pytest.mark.parametrize("method", method_names())
def test_errored_unit_is_reissued(method):
    driver = Driver(make(method), fail_first="standalone")
    driver.run()
    standalone = [u for u in driver.log if u["kind"] == "standalone"]
    first = standalone[0]
    assert sum(u["unit"] == first["unit"] for u in standalone) == 2  # the same unit, once more


@pytest.mark.parametrize("method", method_names())
def test_a_unit_failing_for_good_fails_the_search_without_raising(method):
    searcher = make(method)
    unit = searcher.suggest("a")
    for attempt in range(searcher.max_unit_retries + 1):
        searcher.on_trial_complete(f"t{attempt}" if attempt else "a", None, error=True)
        if attempt < searcher.max_unit_retries:
            again = searcher.suggest(f"t{attempt + 1}")
            assert again["key"] == unit["key"] and again["unit"] == unit["unit"]
    outcome = searcher.outcome()
    assert unit["key"] in outcome["failure"] and "failed 3 times" in outcome["failure"]
    assert searcher.suggest("b") == Searcher.FINISHED and not outcome["finished"]
    assert searcher.outcome()["finished"] and searcher.outcome()["final_arch"] is None


@pytest.mark.parametrize("method", ONE_SHOT)
def test_a_diverged_train_row_fails_the_search_with_its_message(method):
    searcher = make(method, max_concurrent=1)
    unit = searcher.suggest("a")
    assert unit["kind"] == "train"
    row = {"version": unit["start"] + 3, "diverged": True, "train_loss": math.nan,
           "message": "supernet loss became nan at step 4 (lr 0.025); lower supernet.lr or check the data"}
    searcher.on_trial_result("a", row)
    searcher.on_trial_complete("a", row)
    assert "loss became nan at step 4" in searcher.failure_ and unit["key"] in searcher.failure_
    assert searcher.trained_[unit["supernet"]] == 0  # the chunk did not count
    assert searcher.suggest("b") == Searcher.FINISHED


def _drop_half_of_the_first_cohort():
    seen = []

    def short(unit, rows):
        if unit["kind"] == "score" and not seen:
            seen.append(unit["key"])
            return rows[: max(1, len(rows) // 2)]
        return rows
    return short


@pytest.mark.parametrize("method", ONE_SHOT)
def test_a_short_cohort_reissues_exactly_its_missing_archs(method):
    straight = Driver(make(method, seed=4))
    straight.run()
    driver = Driver(make(method, seed=4), short=_drop_half_of_the_first_cohort())
    driver.run()
    scores = [u for u in driver.log if u["kind"] == "score"]
    first, rest = scores[0], next(u for u in scores if u["key"].endswith("/rest1"))
    half = max(1, len(first["archs"]) // 2)
    assert rest["key"] == f"{first['key']}/rest1" and rest["archs"] == first["archs"][half:]
    assert rest["version"] == first["version"] and rest["supernet"] == first["supernet"]
    if first["first_batch"] is not None:  # each missing arch reads the batches it would have read
        assert rest["first_batch"] == first["first_batch"] + half * first["batches"]
    else:
        assert rest["first_batch"] is None
    # the same search otherwise: same rows per arch, same final arch
    rows = lambda d: sorted((r["arch"], r["version"], r["valid_acc"]) for _, u, rs in d.done for r in rs  # noqa: E731
                            if u["kind"] == "score")
    assert rows(driver) == rows(straight)
    assert driver.searcher.outcome()["final_arch"] == straight.searcher.outcome()["final_arch"]


@pytest.mark.parametrize("method", ONE_SHOT + ["tenas"])
def test_units_that_always_come_back_short_fail_the_search_instead_of_hanging(method):
    def drop_last(unit, rows):
        return rows[:-1] if unit["kind"] in ("score", "proxy") else rows

    driver = Driver(make(method), short=drop_last)
    driver.run(limit=2000)
    failure = driver.searcher.outcome()["failure"]
    assert "came back short 3 times without a new row" in failure and "ASHA" in failure
    assert driver.log[-1]["key"].endswith("/rest3")


# --- isomorphic picks ---------------------------------------------------------------------------------
def _isomorphic_pair(rng):
    groups: dict = {}
    for a in SPACE.enumerate():
        groups.setdefault(SPACE.canonical_key(a, rule="algebraic"), []).append(str(a))
    sizes = [g for g in groups.values() if len(g) >= 2]
    group = sizes[int(rng.integers(len(sizes)))]
    return group[0], group[1]


def test_isomorphic_picks_are_trained_once_and_the_next_distinct_pick_takes_the_slot():
    a, a_iso = _isomorphic_pair(np.random.default_rng(0))
    b = next(str(x) for x in SPACE.sample(np.random.default_rng(1), 50)
             if SPACE.canonical_key(x, rule="algebraic") != SPACE.canonical_key(SPACE.parse(a), rule="algebraic"))
    scores = {a: 0.9, a_iso: 0.8, b: 0.7}
    searcher = make("rsps", candidates=[b, a_iso, a], num_candidates=None, cohort_size=3, top_k=2)
    driver = Driver(searcher, acc=lambda arch: scores[arch])
    driver.run()
    assert [u["arch"] for u in driver.log if u["kind"] == "standalone"] == [a, b]


@pytest.mark.parametrize("method", method_names())
def test_every_methods_final_picks_compute_distinct_functions(method):
    driver = Driver(make(method), acc=iso_acc)
    driver.run()
    finals = [u["arch"] for u in driver.log if u.get("role") == "final"]
    keys = [SPACE.canonical_key(SPACE.parse(a), rule="algebraic") for a in finals]
    assert len(set(keys)) == len(keys) == len(set(finals))
    top_k = getattr(driver.searcher, "top_k", None) or getattr(driver.searcher, "num_samples", 1)
    assert len(finals) == top_k or method in ("evnas", "tenas")


# --- the state is plain values --------------------------------------------------------------------------
class _PlainOnly(pickle.Unpickler):
    ALLOWED = {("builtins", "set"), ("builtins", "frozenset"), ("numpy", "ndarray"), ("numpy", "dtype"),
               ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name}")
        return super().find_class(module, name)


@pytest.mark.parametrize("method", method_names())
def test_state_holds_plain_values_only_at_every_step(method):
    driver = Driver(make(method, **({"epd_epochs": 2} if method == "nao" else {})))
    driver.run()
    for state in driver.states[:: max(1, len(driver.states) // 8)] + driver.states[-1:]:
        _PlainOnly(io.BytesIO(pickle.dumps(state))).load()
    assert driver.states[-1]["state_version"] == 2 and driver.states[-1]["completed"]


def test_a_state_of_another_layout_is_refused():
    state = make("rsps").get_state()
    with pytest.raises(ValueError, match="layout version 1 .*start the search again"):
        make("rsps").set_state({**state, "state_version": 1})


# --- unit-level checks ------------------------------------------------------------------------------
def test_rsps_trains_in_sequential_chunks_then_scores_cohorts():
    searcher = make("rsps", chunk_steps=30, num_candidates=10, cohort_size=4, top_k=3)
    assert searcher.suggest("a") == {"kind": "train", "key": "train/0/30", "supernet": 0, "start": 0, "until": 30,
                                     "policy": "uniform", "unit": 0}
    assert searcher.suggest("b") is None  # the next chunk waits for this one
    searcher.on_trial_complete("a", {"version": 30})
    assert searcher.suggest("c")["until"] == 60
    searcher.on_trial_complete("c", {"version": 60})
    searcher.on_trial_complete("c", {"version": 60})  # a duplicate completion is ignored
    unit = searcher.suggest("d")
    assert (unit["start"], unit["until"]) == (60, 90)
    searcher.on_trial_complete("d", {"version": 160})  # a row reporting a newer version is not adopted
    assert searcher.trained_[0] == 90
    assert searcher.suggest("e")["until"] == 100
    searcher.on_trial_complete("e", {"version": 100})
    cohorts = [searcher.suggest(t) for t in ("f", "g", "h")]
    assert [len(c["archs"]) for c in cohorts] == [4, 4, 2]
    assert [c["key"] for c in cohorts] == ["score/0/c0", "score/0/c1", "score/0/c2"]
    assert [c["first_batch"] for c in cohorts] == [0, 4, 8] and {c["version"] for c in cohorts} == {100}
    assert len({a for c in cohorts for a in c["archs"]}) == 10
    assert searcher.outcome()["progress"] == "phase score: 0/10 candidates scored"


def test_reissue_live_puts_live_units_first_in_unit_order_without_an_attempt():
    searcher = make("rsps", chunk_steps=100, num_candidates=10, cohort_size=3, top_k=1, max_concurrent=4)
    searcher.on_trial_complete("x", None)
    train = searcher.suggest("a")
    searcher.on_trial_complete("a", {"version": 100})
    cohorts = [searcher.suggest(t) for t in ("c2", "c1", "c3")]
    searcher.on_trial_complete("c1", None, error=True)  # cohort 1 errored once: queued for a retry
    state = pickle.loads(pickle.dumps(searcher.get_state()))
    fresh = make("rsps", chunk_steps=100, num_candidates=10, cohort_size=3, top_k=1, max_concurrent=4, seed=8)
    fresh.set_state(state)
    fresh.reissue_live()
    again = [fresh.suggest(t) for t in ("n1", "n2", "n3")]
    assert [u["key"] for u in again] == [cohorts[0]["key"], cohorts[2]["key"], cohorts[1]["key"]]
    assert [u["unit"] for u in again] == [cohorts[0]["unit"], cohorts[2]["unit"], cohorts[1]["unit"]]
    assert fresh.attempts_ == {cohorts[1]["key"]: 1} and train["key"] == "train/0/100"
    assert fresh.suggest("n4")["key"] == "score/0/c3"


def test_rsps_scores_given_candidates_and_top_k_0_stops_after_scoring():
    given = [str(a) for a in get_space("nb201").sample(np.random.default_rng(7), 9)]
    searcher = make("rsps", candidates=given, num_candidates=None, cohort_size=4, top_k=0)
    driver = Driver(searcher)
    driver.run()
    scored = [a for u in driver.log if u["kind"] == "score" for a in u["archs"]]
    assert scored == given  # exactly those, in their order
    assert not any(u["kind"] == "standalone" for u in driver.log)
    assert searcher.best_arch is None and set(searcher.scores_) == set(given)
    assert searcher.outcome()["finished"] and searcher.outcome()["final_arch"] is None


TWO = [str(a) for a in get_space("nb201").sample(np.random.default_rng(8), 2)]


@pytest.mark.parametrize(
    "kwargs, message",
    [({"top_k": 5, "num_candidates": 2}, "top_k=5 > num_candidates=2"), ({"chunk_steps": 0}, "chunk_steps=0; must be >= 1"),
     ({"top_k": -1}, "top_k=-1; must be >= 0"),
     ({"num_candidates": None}, "num_candidates=None; expected a count, or candidates"),
     ({"candidates": TWO, "num_candidates": 3}, "num_candidates=3 but 2 candidates given"),
     ({"candidates": [TWO[0], TWO[0]], "num_candidates": None, "top_k": 1}, "listed twice"),
     ({"candidates": ["|bad~0|"], "num_candidates": None, "top_k": 1}, "bad"),
     ({"candidates": [], "num_candidates": None}, "non-empty list"),
     ({"score_batches": 0}, "score_batches=0; must be >= 1")],
)
def test_rsps_validates_its_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make("rsps", **kwargs)


# --- Tune's settings, without a Tune run ------------------------------------------------------------------
@pytest.mark.parametrize(
    "metric, mode, spec, message",
    [("valid_acc", "max", {"num_samples": sys.maxsize}, "metric='valid_acc', mode='max'; a raynas searcher"),
     (None, None, {"num_samples": 1}, "num_samples=1; a raynas searcher ends the experiment itself"),
     (None, None, {"num_samples": sys.maxsize, "stop": {"training_iteration": 2}}, "stop=")],
)
def test_set_search_properties_refuses_what_it_cannot_honour(metric, mode, spec, message):
    with pytest.raises(ValueError, match=message):
        make("rsps").set_search_properties(metric, mode, {"note": 1}, **spec)


def test_set_search_properties_accepts_plain_values_and_refuses_search_spaces():
    from ray import tune

    searcher = make("setn")
    assert searcher.set_search_properties(None, None, {"note": "x"}, num_samples=sys.maxsize) is True
    with pytest.raises(ValueError, match=r"search-space definitions at \['lr'\]"):
        searcher.set_search_properties(None, None, {"lr": tune.uniform(0, 1)}, num_samples=sys.maxsize)


def test_tune_config_builds_what_a_raynas_searcher_needs_and_refuses_the_rest():
    from ray.tune.schedulers import ASHAScheduler

    searcher = make("rsps", max_concurrent=3)
    config = tune_config(searcher, reuse_actors=True)
    assert config.num_samples == -1 and config.metric is None and config.search_alg.max_concurrent == 3
    assert searcher.max_concurrent == 3
    for kwargs, message in [({"metric": "valid_acc", "mode": "max"}, "metric='valid_acc'"),
                            ({"num_samples": 1}, "num_samples=1"),
                            ({"scheduler": ASHAScheduler(metric="valid_acc", mode="max")},
                             "scheduler=AsyncHyperBandScheduler"),
                            ({"max_concurrent_trials": 2}, "max_concurrent_trials= is set from the searcher")]:
        with pytest.raises(ValueError, match=message):
            tune_config(make("rsps"), **kwargs)


# --- policies on the actor side ---------------------------------------------------------------------------
def test_policies_and_worker_import_without_ray():
    code = ("import sys; sys.modules['ray'] = None\n"
            "import raynas.policies, raynas.worker\n"
            "from raynas.policies import Policy, make_policy, normalise_spec, decoded_weights, register_policy\n"
            "from raynas.spaces import get_space\n"
            "space = get_space('nb201')\n"
            "for spec in ('uniform', {'name': 'setn', 'seed': 1}, {'name': 'evnas', 'archs': [str(space.arch([1]*6))]},"
            " {'name': 'balanced'}, 'per_cell'):\n"
            "    make_policy(spec, space, 1)\n"
            "assert not any(m == 'raynas.searchers' or m.startswith('raynas.searchers.') for m in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_scheduler_stop_keeps_its_row_and_a_stopped_standalone_goes_again():
    searcher = make("rsps", chunk_steps=100, num_candidates=4, cohort_size=4, top_k=1,
                    standalone={"C": 4, "epochs": 3})
    searcher.suggest("a")
    searcher.on_trial_complete("a", {"version": 100})
    cohort = searcher.suggest("b")
    searcher.on_trial_result("b", {"arch": cohort["archs"][0], "valid_acc": 0.5})
    # Tune's STOP: the stopping row reaches the searcher only as the completion's result
    searcher.on_trial_complete("b", {"arch": cohort["archs"][1], "valid_acc": 0.6})
    assert searcher.scores_ == {cohort["archs"][0]: 0.5, cohort["archs"][1]: 0.6}
    rest = searcher.suggest("c")
    assert rest["archs"] == cohort["archs"][2:] and rest["first_batch"] == 2
    for i, arch in enumerate(rest["archs"]):
        searcher.on_trial_result("c", {"arch": arch, "valid_acc": 0.1 * i})
    searcher.on_trial_complete("c", {"arch": rest["archs"][-1], "valid_acc": 0.1})
    final = searcher.suggest("d")
    assert final["key"] == f"standalone/{cohort['archs'][1]}"
    searcher.on_trial_complete("d", {"arch": final["arch"], "epoch": 1, "epochs": 3, "valid_acc": 0.7})
    again = searcher.suggest("e")  # stopped at epoch 1 of 3: the same unit again (it resumes by key)
    assert again == final and not searcher.standalone_
    for trial in ("e", "f", "g"):  # no further epoch, three times: the search fails, clearly
        searcher.on_trial_complete(trial, {"arch": final["arch"], "epoch": 1, "epochs": 3, "valid_acc": 0.7})
        if searcher.failure_ is None:
            assert searcher.suggest({"e": "f", "f": "g"}[trial]) == final
    assert "stopped at epoch 1 of 3" in searcher.failure_ and searcher.suggest("h") == Searcher.FINISHED


def test_the_whole_space_as_candidates_is_every_arch_once_in_a_seeded_order():
    kwargs = dict(total_steps=32, chunk_steps=16, num_candidates=15625, cohort_size=625, top_k=0)
    a, b = (get_searcher_class("rsps")(**kwargs, seed=seed) for seed in (0, 0))
    whole = a.sample_distinct(15625)
    assert len(set(whole)) == 15625 == len(whole)
    assert whole == b.sample_distinct(15625) and whole != list(a.space_.enumerate())
