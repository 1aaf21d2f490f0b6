"""Searchers as state machines, driven by a cheap fake evaluator with a known optimum (no Ray).

Parametrised over the method registry: every searcher finishes, survives NaN and errored units,
and continues identically after save -> restore into a fresh instance.
"""

import itertools
import math

import numpy as np
import pytest
from ray.tune.search import Searcher

from raynas.searchers import get_presets, get_searcher_class, method_names
from raynas.spaces import get_space

SPACE = get_space("nb201")


def fake_acc(arch: str) -> float:
    """Known optimum: more 3x3 convs is better; ties broken by the index."""
    a = SPACE.parse(arch)
    return a.ops.count(3) / 6 + a.index / 1e7


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
    """Plays Tune: asks for units, answers them with fake rows, records every decision."""

    def __init__(self, searcher, nan_every=0, fail_first=None):
        self.searcher, self.n, self.log = searcher, 0, []
        self.nan_every, self.fail_first, self.failed = nan_every, fail_first, set()
        self.version = 0

    def step(self):
        """One suggest; answer it at once. Returns False once FINISHED."""
        self.n += 1
        trial = f"t{self.n}"
        unit = self.searcher.suggest(trial)
        if unit == Searcher.FINISHED:
            return False
        assert unit is not None, "a searcher answered synchronously must never wait"
        self.log.append({k: v for k, v in unit.items()})
        if self.fail_first == unit["kind"] and unit["kind"] not in self.failed:
            self.failed.add(unit["kind"])
            self.searcher.on_trial_complete(trial, None, error=True)
            return True
        rows = self.rows(unit)
        for row in rows:
            self.searcher.on_trial_result(trial, row)
        self.searcher.on_trial_complete(trial, rows[-1])
        return True

    def rows(self, unit):
        kind = unit["kind"]
        if kind == "train":
            self.version = max(self.version, unit["until"])
            row = {"kind": kind, "version": self.version, "train_loss": 1.0}
            policy = unit.get("policy")
            if isinstance(policy, dict) and policy.get("name") == "setn":
                # SETN's policy exports its alpha: a deterministic fake from the policy's seed and the version
                rng = np.random.default_rng([policy.get("seed", 0), self.version])
                row["alpha"] = rng.normal(size=(6, 5)).tolist()
            return [row]
        if kind == "score":
            out = []
            for i, arch in enumerate(unit["archs"]):
                acc = fake_acc(arch)
                if self.nan_every and i % self.nan_every == 0:
                    acc = math.nan
                out.append({"kind": kind, "arch": arch, "position": i, "valid_acc": acc, "version": self.version})
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
            acc = fake_acc(unit["arch"])
            return [{"kind": kind, "arch": unit["arch"], "epoch": e, "valid_acc": acc, "test_acc": acc} for e in (1, 2)]
        raise AssertionError(kind)

    def run(self, limit=10_000):
        while self.step():
            assert self.n < limit


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


@pytest.mark.parametrize("method", method_names())
def test_same_seed_same_decisions_and_another_seed_differs(method):
    a, b, c = Driver(make(method, seed=1)), Driver(make(method, seed=1)), Driver(make(method, seed=2))
    for d in (a, b, c):
        d.run()
    assert a.log == b.log
    assert a.log != c.log


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
        second = Driver(fresh)
        second.n, second.version = first.n, first.version
        second.run()
        assert first.log + second.log == straight.log, f"diverged after a restore at unit {cut}"


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


def test_rsps_trains_in_sequential_chunks_then_scores_cohorts():
    searcher = make("rsps", chunk_steps=30, num_candidates=10, cohort_size=4, top_k=3)
    assert searcher.suggest("a") == {"kind": "train", "supernet": 0, "until": 30, "policy": "uniform", "unit": 0}
    assert searcher.suggest("b") is None  # the next chunk waits for this one
    searcher.on_trial_complete("a", {"version": 30})
    assert searcher.suggest("c")["until"] == 60
    searcher.on_trial_complete("c", {"version": 60})
    searcher.on_trial_complete("c", {"version": 60})  # a duplicate completion is ignored
    assert searcher.suggest("d")["until"] == 90
    searcher.on_trial_complete("d", {"version": 90})
    assert searcher.suggest("e")["until"] == 100
    searcher.on_trial_complete("e", {"version": 100})
    cohorts = [searcher.suggest(t) for t in ("f", "g", "h")]
    assert [len(c["archs"]) for c in cohorts] == [4, 4, 2]
    assert len({a for c in cohorts for a in c["archs"]}) == 10


def test_rsps_scores_given_candidates_and_top_k_0_stops_after_scoring():
    given = [str(a) for a in get_space("nb201").sample(np.random.default_rng(7), 9)]
    searcher = make("rsps", candidates=given, num_candidates=None, cohort_size=4, top_k=0)
    driver = Driver(searcher)
    driver.run()
    scored = [a for u in driver.log if u["kind"] == "score" for a in u["archs"]]
    assert scored == given  # exactly those, in their order
    assert not any(u["kind"] == "standalone" for u in driver.log)
    assert searcher.best_arch is None and set(searcher.scores_) == set(given)


TWO = [str(a) for a in get_space("nb201").sample(np.random.default_rng(8), 2)]


@pytest.mark.parametrize(
    "kwargs, message",
    [({"top_k": 5, "num_candidates": 2}, "top_k=5 > num_candidates=2"), ({"chunk_steps": 0}, "chunk_steps=0; must be >= 1"),
     ({"top_k": -1}, "top_k=-1; must be >= 0"),
     ({"num_candidates": None}, "num_candidates=None; expected a count, or candidates"),
     ({"candidates": TWO, "num_candidates": 3}, "num_candidates=3 but 2 candidates given"),
     ({"candidates": [TWO[0], TWO[0]], "num_candidates": None, "top_k": 1}, "listed twice"),
     ({"candidates": ["|bad~0|"], "num_candidates": None, "top_k": 1}, "bad"),
     ({"candidates": [], "num_candidates": None}, "non-empty list")],
)
def test_rsps_validates_its_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make("rsps", **kwargs)
