"""EvNAS: the decode, the genetic operators' statistics, the policy, decoded scoring, the loop."""

import math
from math import comb

import numpy as np
import pandas as pd
import pytest
import torch
from ray.tune.search import Searcher

from raynas.policies import decoded_weights, make_policy
from raynas.searchers.evnas import EvNASPolicy, EvNASSearcher, crossover, evolve, mutate, tournament
from raynas.spaces import get_space
from raynas.worker import SupernetWorker

SPACE = get_space("nb201")
ARCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
E = math.e


# --- decode -------------------------------------------------------------------------------------
def test_decoded_weights_are_softmax_of_the_one_hot():
    arch = SPACE.parse(ARCH)  # ops (3, 3, 3, 1, 3, 3)
    w = decoded_weights(arch, 5)
    assert w.shape == (6, 5) and w.dtype == torch.float32 and not w.requires_grad
    chosen, other = E / (E + 4), 1 / (E + 4)  # 0.4046..., 0.1488...
    assert abs(chosen - 0.4046) < 1e-4 and abs(other - 0.1488) < 1e-4
    expected = torch.full((6, 5), other, dtype=torch.float64)
    for e, o in enumerate(arch.ops):
        expected[e, o] = chosen
    torch.testing.assert_close(w.double(), expected, rtol=0, atol=1e-7)
    assert w.argmax(1).tolist() == list(arch.ops)
    # op tuples work as well as archs; a sub-space softmaxes over the allowed ops only
    torch.testing.assert_close(decoded_weights(arch.ops, 5), w)
    allowed = [(0, 3)] + [tuple(range(5))] * 5
    r = decoded_weights(arch, 5, allowed_ops=allowed)
    torch.testing.assert_close(r[0].double(), torch.tensor([1 / (E + 1), 0, 0, E / (E + 1), 0], dtype=torch.float64),
                               rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="edge 0 uses op 3, outside the edge's allowed ops \\(0, 1\\)"):
        decoded_weights(arch, 5, allowed_ops=[(0, 1)] + [tuple(range(5))] * 5)


# --- genetic operators --------------------------------------------------------------------------
def test_tournament_winner_statistics():
    rng = np.random.default_rng(0)
    P, k, draws = 20, 5, 20_000
    fitness = rng.permutation(P).astype(float)  # distinct: rank r (0 = best) holds value P-1-r
    best, second, worst = int(np.argmax(fitness)), int(np.argsort(fitness)[-2]), int(np.argmin(fitness))
    wins = np.bincount([tournament(fitness, k, rng) for _ in range(draws)], minlength=P) / draws
    # the best wins iff it is drawn: k/P; the second iff drawn and the best is not: C(P-2, k-1)/C(P, k)
    assert abs(wins[best] - k / P) < 0.015
    assert abs(wins[second] - comb(P - 2, k - 1) / comb(P, k)) < 0.015
    assert wins[worst] == 0  # k >= 2: someone better is always in the draw
    assert tournament(fitness, P, rng) == best  # a tournament of everyone picks the best


def test_crossover_takes_each_row_from_one_parent():
    rng = np.random.default_rng(1)
    a, b = rng.random((6, 5)), rng.random((6, 5))
    from_a = []
    for _ in range(4000):
        child = crossover(a, b, rng)
        row_a = (child == a).all(1)
        assert (row_a | (child == b).all(1)).all()
        from_a.append(row_a.mean())
    assert abs(np.mean(from_a) - 0.5) < 0.02


def test_mutation_redraws_rows_at_the_rate():
    rng = np.random.default_rng(2)
    base = rng.random((6, 5))
    changed = []
    for _ in range(5000):
        m = mutate(base, 0.1, rng)
        same = (m == base).all(1)
        assert ((m != base).all(1) | same).all()  # a row is redrawn as a whole or kept
        assert ((m >= 0) & (m < 1)).all()
        changed.append(1 - same.mean())
    assert abs(np.mean(changed) - 0.1) < 0.01  # 30,000 rows: sd 0.0017
    assert (mutate(base, 0.0, rng) == base).all()


def test_evolve_keeps_the_elite_and_mutates_only_children():
    rng = np.random.default_rng(3)
    pop = rng.random((10, 6, 5))
    fitness = rng.random(10)
    best = int(np.argmax(fitness))
    for _ in range(200):
        nxt = evolve(pop, fitness, num_elites=1, tournament_size=3, mutation_rate=1.0, rng=rng)
        assert nxt.shape == pop.shape
        assert (nxt[0] == pop[best]).all()  # the elite, first and untouched
        # mutation rate 1: every row of every child is fresh, none is a parent's
        parent_rows = pop.reshape(-1, 5)
        for child in nxt[1:]:
            assert not (child[:, None, :] == parent_rows[None]).all(-1).any()
    # no mutation: every child row comes from some parent's same edge row
    nxt = evolve(pop, fitness, num_elites=2, tournament_size=3, mutation_rate=0.0, rng=rng)
    order = np.argsort(-fitness)
    assert (nxt[:2] == pop[order[:2]]).all()
    for child in nxt[2:]:
        assert all((child[e] == pop[:, e]).all(1).any() for e in range(6))


# --- the policy ---------------------------------------------------------------------------------
def test_policy_cycles_individuals_by_step_from_the_generation_start():
    archs = [ARCH, "|none~0|+|skip_connect~0|none~1|+|none~0|none~1|avg_pool_3x3~2|", ARCH]
    policy = make_policy({"name": "evnas", "archs": archs, "start": 10}, SPACE, num_cells=3)
    assert isinstance(policy, EvNASPolicy)
    rng = np.random.default_rng(0)
    paths = [policy.path(rng, s) for s in range(10, 17)]
    for s, w in zip(range(10, 17), paths):
        torch.testing.assert_close(w, decoded_weights(SPACE.parse(archs[(s - 10) % 3]), 5))
    assert paths[0] is paths[3] is paths[2]  # precomputed once: equal archs share one tensor
    assert paths[1] is not paths[0] and paths[0].device == torch.device("cpu")
    with pytest.raises(ValueError, match="archs is empty"):
        make_policy({"name": "evnas", "archs": []}, SPACE, 3)


# --- decoded scoring on the worker --------------------------------------------------------------
def test_decoded_scoring_is_the_mixture_forward_on_the_whole_valid_split():
    worker = SupernetWorker(dataset="digits", C=4, N=1, epochs=1, valid_batch_size=100, seed=0)
    worker.train({"name": "evnas", "archs": [ARCH, 0]}, until=2)  # the mixture path trains
    row = worker.score([ARCH], batches=None, path_mode="decoded")[0]
    # the same by hand: hand-built weights, a direct supernet call per batch, eval mode
    w = torch.full((6, 5), 1 / (E + 4))
    for e, o in enumerate(SPACE.parse(ARCH).ops):
        w[e, o] = E / (E + 4)
    worker.supernet.eval()
    correct = loss = n = 0
    with torch.no_grad():
        for x, y in worker.valid_full:
            logits = worker.supernet(x, w)
            correct += (logits.argmax(1) == y).sum().item()
            loss += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
            n += len(y)
    assert row["arch"] == ARCH and row["samples"] == n == len(worker.splits.valid) and row["batches"] == 4
    assert row["valid_acc"] == pytest.approx(correct / n) and row["valid_loss"] == pytest.approx(loss / n, rel=1e-5)
    single = worker.score([ARCH], batches=None)[0]  # the single path is another network
    assert single["valid_loss"] != pytest.approx(row["valid_loss"], rel=1e-4)
    with pytest.raises(ValueError, match="path_mode='mixture'; expected one of"):
        worker.score([ARCH], path_mode="mixture")


# --- the searcher -------------------------------------------------------------------------------
def make(**kw):
    args = dict(total_steps=31, population_size=6, generations=3, tournament_size=3, seed=0,
                standalone=dict(C=4, N=1, epochs=1))
    args.update(kw)
    return EvNASSearcher(**args)


def fitness_of(arch):
    return SPACE.parse(arch).ops.count(3) / 6


def test_searcher_loop_generations_barriers_and_final_pick():
    s = make()
    units, n = [], 0
    while True:
        n += 1
        unit = s.suggest(f"t{n}")
        if unit == Searcher.FINISHED:
            break
        assert s.suggest("other") is None  # every phase is a barrier
        units.append(unit)
        if unit["kind"] == "train":
            s.on_trial_complete(f"t{n}", {"version": unit["until"]})
        elif unit["kind"] == "score":
            for i, a in enumerate(unit["archs"]):
                s.on_trial_result(f"t{n}", {"arch": a, "position": i, "valid_acc": fitness_of(a)})
            s.on_trial_complete(f"t{n}", {})
        else:
            s.on_trial_complete(f"t{n}", {"valid_acc": 0.9})
    assert [u["kind"] for u in units] == ["train", "score"] * 3 + ["standalone"]
    trains = [u for u in units if u["kind"] == "train"]
    assert [u["until"] for u in trains] == [10, 20, 31] and [u["policy"]["start"] for u in trains] == [0, 10, 20]
    for g, (train, score) in enumerate(zip(trains, units[1::2])):
        population = s.history_[g]["archs"]
        assert train["policy"]["name"] == "evnas" and train["policy"]["archs"] == population
        assert score["path_mode"] == "decoded" and score["batches"] is None
        assert score["archs"] == list(dict.fromkeys(population))  # each distinct arch once
        assert s.history_[g]["fitness"] == [fitness_of(a) for a in population]
        if g:  # the elite: the previous generation's fittest, first
            prev = s.history_[g - 1]
            assert population[0] == prev["archs"][int(np.argmax(prev["fitness"]))]
    last = s.history_[-1]
    best = int(np.argmax(last["fitness"]))
    assert units[-1]["arch"] == s.best_arch == last["archs"][best] and units[-1]["role"] == "final"
    # the final arch is the per-edge argmax of the best individual's chromosome
    assert tuple(s.population_[best].argmax(1)) == SPACE.parse(s.best_arch).ops


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(tournament_size=7, population_size=6), "tournament_size=7 > population_size=6"),
        (dict(num_elites=6), "num_elites=6; must be in 0..population_size-1=5"),
        (dict(total_steps=2), "total_steps=2 < generations=3"),
        (dict(mutation_rate=1.5), "mutation_rate=1.5; must be in \\[0, 1\\]"),
        (dict(generations=0), "generations=0; must be >= 1"),
        (dict(score_batches=0), "score_batches=0; must be >= 1"),
    ],
)
def test_searcher_validates_its_arguments(kw, message):
    with pytest.raises(ValueError, match=message):
        make(**kw)


# --- end to end on a real local Ray -------------------------------------------------------------
TINY = {
    "supernet": {"C": 4, "N": 1, "epochs": 2, "valid_batch_size": 128},
    "searcher": {"population_size": 4, "generations": 2, "tournament_size": 2,
                 "standalone": {"C": 4, "N": 1, "epochs": 1, "batch_size": 128}},
}


def test_evnas_search_end_to_end(ray_session, tmp_path):
    from raynas.driver import search

    run = search("evnas", dataset="digits", overrides=TINY, storage=tmp_path, name="evnas", seed=0, verbose=0)
    candidates = pd.read_parquet(run / "candidates.parquet")
    summary = pd.read_parquet(run / "summary.parquet").iloc[0]
    total = 2 * 16  # 2 epochs of 16 steps (1,078 digits, batch 64)
    assert summary["supernet_steps"] == total
    cohorts = [c for _, c in candidates.groupby("unit", sort=True)]
    assert len(cohorts) == 2  # one cohort per generation
    assert [c["supernet_version"].iloc[0] for c in cohorts] == [16, 32]  # scored after its generation's epoch
    assert (candidates["samples"] == 359).all() and (candidates["batches"] == 3).all()  # the whole valid split
    for c in cohorts:
        assert c["arch"].is_unique and 1 <= len(c) <= 4
    # the searcher's own state: the cohorts are the generations' distinct archs, the final their best
    from raynas.rowlog import load_searcher_state

    state = load_searcher_state(run)["state"]
    history = state["history_"]
    assert [list(c["arch"]) for c in cohorts] == [list(dict.fromkeys(h["archs"])) for h in history]
    assert len(candidates) == sum(len(set(h["archs"])) for h in history)
    last = history[-1]
    best = int(np.argmax(last["fitness"]))
    assert summary["final_arch"] == last["archs"][best]
    assert tuple(state["population_"][best].argmax(1)) == SPACE.parse(summary["final_arch"]).ops
    assert np.isfinite(summary["standalone_test_acc"])


def test_the_presets_run_cell_bn_on_running_statistics_as_the_official_launcher():
    # searchNAS201.sh passes --track_running_stats on all three runs
    from raynas.settings import make_config

    for preset in ("paper", "small"):
        assert make_config("evnas", preset=preset)["supernet"]["bn_mode"] == "running", preset
    worker = SupernetWorker(dataset="digits", C=4, N=1, total_steps=1, valid_batch_size=64, bn_mode="running")
    # the search cells' op BNs (affine=False; the residual blocks' BNs are affine)
    cell_bns = [m for m in worker.supernet.cells.modules() if isinstance(m, torch.nn.BatchNorm2d) and not m.affine]
    assert cell_bns and all(m.track_running_stats for m in cell_bns)
