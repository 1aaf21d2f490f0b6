"""Balanced one-shot NAO: size-balanced sampling, lr restarts, the encoder-predictor-decoder,
generation, the EPD fit off Tune's loop, and an end-to-end search on a real local Ray."""

import copy
import math
import pickle
import threading
import time

import numpy as np
import pandas as pd
import pytest
import torch

from raynas.policies import BALANCED_REFERENCE, BalancedPolicy, make_policy
from raynas.results import read_unit_rows
from raynas.searchers.nao import (
    NAOSearcher,
    arch_tokens,
    build_epd,
    fit_epd,
    generate_archs,
    minmax_normalise,
    one_torch_thread,
)
from raynas.spaces import get_space
from raynas.worker import SupernetWorker, cosine_lr, restarted_cosine_lr
from tests.test_searchers import Driver, make

SPACE = get_space("nb201")
CHECK = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"


def ref_size(arch) -> int:
    return SPACE.count_parameters(SPACE.parse(arch), **BALANCED_REFERENCE)


def within(freq: np.ndarray, probs: np.ndarray, n: int, sigmas: float = 4.5) -> bool:
    return bool(np.all(np.abs(freq - probs) <= sigmas * np.sqrt(probs * (1 - probs) / n) + 1e-12))


class FitWaitingDriver(Driver):
    """The test Driver, asking again as Tune does while the searcher's EPD fit runs in the
    background (it blocks on the fit instead of spinning). Each wait is recorded: how long the
    ``suggest`` that answered ``None`` took, whether the fit was still running right after it,
    and the progress line then; ``on_wait(driver)`` runs before each wait."""

    waits_for_background = False  # this Driver waits itself, and records each wait

    def __init__(self, searcher, on_wait=None, **kwargs):
        super().__init__(searcher, **kwargs)
        self.on_wait, self.waits = on_wait, []

    def _suggest(self):
        while True:
            was_fitting = self.searcher.fitting
            start = time.perf_counter()
            entry = super()._suggest()
            seconds = time.perf_counter() - start
            if entry is not None or self.finished or not (was_fitting or self.searcher.fitting):
                return entry
            fit = self.searcher._fit
            self.waits.append({"seconds": seconds, "running": fit is not None and not fit.done(),
                               "progress": self.searcher.outcome()["progress"]})
            if self.on_wait is not None:
                self.on_wait(self)
            assert self.searcher.wait_for_fit(timeout=600)


def synchronous(searcher):
    searcher._fit_in_background = False  # the fit inside suggest, Tune's loop waiting: the reference
    return searcher


def same_search(a, b):
    """Two NAO searchers that made the same search: pools, history, EPD weights, RNG, result."""
    assert a.archs_ == b.archs_ and a.latest_ == b.latest_ and a.history_ == b.history_
    assert set(a.epd_state_) == set(b.epd_state_)
    assert all(np.array_equal(a.epd_state_[k], b.epd_state_[k]) for k in a.epd_state_)
    assert a.rng_.bit_generator.state == b.rng_.bit_generator.state
    assert a.outcome() == b.outcome()


# --- balanced sampling -----------------------------------------------------------------------------
def test_balanced_sizes_are_the_reference_networks_parameter_counts():
    policy = BalancedPolicy(SPACE, 5)
    assert policy.size(SPACE.parse(CHECK)) == 1_288_506  # METHODS.md's check figure
    rng = np.random.default_rng(0)
    for arch in SPACE.sample(rng, 4):
        assert policy.size(arch) == ref_size(arch)
    # default floor: the smallest arch holding a parametric op = one 1x1 conv edge
    assert policy.floor == ref_size((2, 0, 0, 0, 0, 0)) > ref_size((0,) * 6) == ref_size((1, 4, 1, 4, 1, 4))


def test_balanced_pool_frequencies_follow_size_with_the_floor():
    pool = [(0,) * 6, (1, 4, 0, 0, 4, 1), (3, 0, 0, 0, 0, 0), (3,) * 6]
    policy = make_policy({"name": "balanced", "archs": [str(SPACE.arch(p)) for p in pool]}, SPACE, 5)
    floor = ref_size((2, 0, 0, 0, 0, 0))
    weights = np.array([floor, floor, ref_size(pool[2]), ref_size(pool[3])], dtype=float)
    probs = weights / weights.sum()
    rng = np.random.default_rng(1)
    n = 60_000
    index = {SPACE.arch(p): i for i, p in enumerate(pool)}
    counts = np.bincount([index[policy.path(rng, s)] for s in range(n)], minlength=4)
    assert within(counts / n, probs, n)
    # the two op-free archs are floored to the same weight; without a floor they are not sampled more
    assert counts[3] / counts[2] == pytest.approx(weights[3] / weights[2], rel=0.08)
    raw = make_policy({"name": "balanced", "archs": [str(SPACE.arch(p)) for p in pool], "floor": 0}, SPACE, 5)
    assert raw.probs[0] == pytest.approx(ref_size(pool[0]) / sum(ref_size(p) for p in pool))


def test_balanced_rejection_over_a_subspace_matches_the_size_law():
    # edges 0..3 fixed (one op each): 25 archs, enumerable, sizes from 73k to ~0.5M
    sub = SPACE.restrict({0: [1], 1: [0], 2: [4], 3: [2]})
    assert len(sub) == 25
    policy = BalancedPolicy(sub, 5)  # no archs: the whole sub-space, by rejection
    archs = list(sub.enumerate())
    weights = np.array([max(ref_size(a), policy.floor) for a in archs], dtype=float)
    probs = weights / weights.sum()
    rng = np.random.default_rng(2)
    n = 20_000
    index = {a: i for i, a in enumerate(archs)}
    counts = np.bincount([index[policy.path(rng, s)] for s in range(n)], minlength=len(archs))
    assert within(counts / n, probs, n)
    assert probs.max() / probs.min() > 4  # the law is far from uniform: the test has power


def test_balanced_policy_validates():
    with pytest.raises(ValueError, match="archs is empty"):
        make_policy({"name": "balanced", "archs": []}, SPACE, 5)
    with pytest.raises(ValueError, match="floor=-1"):
        make_policy({"name": "balanced", "floor": -1}, SPACE, 5)


# --- lr restarts -----------------------------------------------------------------------------------
def test_lr_restarts_schedule_at_cycle_boundaries():
    lr, low = 0.025, 0.001
    # total 10 in 3 cycles: starts at ceil(k * 10 / 3) = 0, 4, 7
    values = [restarted_cosine_lr(s, 10, lr, low, 3) for s in range(11)]
    assert values[0] == values[4] == values[7] == lr
    assert values[3] == pytest.approx(cosine_lr(3, 4, lr, low))
    assert values[6] == pytest.approx(cosine_lr(2, 3, lr, low))
    assert values[10] == pytest.approx(low)
    assert values[3] < values[2] < values[1] < values[0]
    assert [restarted_cosine_lr(s, 10, lr, low, 1) for s in range(11)] == [cosine_lr(s, 10, lr, low) for s in range(11)]


def test_worker_restarts_its_cosine_each_cycle():
    worker = SupernetWorker(dataset="digits", C=4, N=1, total_steps=6, lr_restarts=2, valid_batch_size=64,
                            lr=0.1, lr_min=0.0)
    used = []
    for step in range(6):
        worker.train("uniform", until=step + 1)
        used.append(worker.optimizer.param_groups[0]["lr"])
    expected = [0.1 * 0.5 * (1 + math.cos(math.pi * k / 3)) for k in (0, 1, 2)] * 2
    assert used == pytest.approx(expected)
    with pytest.raises(ValueError, match="lr_restarts=0; must be >= 1"):
        SupernetWorker(dataset="digits", C=4, N=1, total_steps=6, lr_restarts=0)


# --- the encoder-predictor-decoder -----------------------------------------------------------------
def test_minmax_normalisation():
    assert minmax_normalise([2.0, 4.0, 3.0]).tolist() == [0.0, 1.0, 0.5]
    assert minmax_normalise([-1.0, 1.0]).tolist() == [0.0, 1.0]
    assert minmax_normalise([0.7, 0.7]).tolist() == [0.5, 0.5]


def test_epd_init_leaves_the_global_torch_rng_alone_and_is_seeded():
    before = torch.get_rng_state()
    a = build_epd(5, 6, torch.Generator().manual_seed(3))
    b = build_epd(5, 6, torch.Generator().manual_seed(3))
    assert torch.equal(before, torch.get_rng_state())
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert max(p.abs().max().item() for p in a.parameters()) <= 0.04


def test_decoder_attention_is_the_published_one_with_its_input_projection():
    model = build_epd(5, 6, torch.Generator().manual_seed(6))
    H = model.hidden_size
    assert model.attn_in.weight.shape == (H, H) and model.attn_in.bias is None  # official input_proj
    assert model.attn_out.weight.shape == (H, 2 * H) and model.attn_out.bias is None  # official output_proj
    h = model.encode(arch_tokens(SPACE.sample(np.random.default_rng(6), 3)))
    out = torch.randn(3, 6, H, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        got = model._attend(out, h)
        # official Attention.forward: x = input_proj(input); attn = softmax(x h^T); mix = attn h;
        # tanh(output_proj([mix; input])), then the decoder's out layer and log-softmax
        attn = torch.softmax(out @ model.attn_in.weight.T @ h.transpose(1, 2), dim=-1)
        mixed = torch.tanh(torch.cat((attn @ h, out), dim=-1) @ model.attn_out.weight.T)
        torch.testing.assert_close(got, torch.log_softmax(model.out(mixed), dim=-1))
        # the projection is used: without it (the identity) the decoder would say something else
        plain = torch.softmax(out @ h.transpose(1, 2), dim=-1)
        unprojected = torch.tanh(torch.cat((plain @ h, out), dim=-1) @ model.attn_out.weight.T)
        assert not torch.allclose(got, torch.log_softmax(model.out(unprojected), dim=-1))


def test_decoder_reproduces_the_archs_it_was_fitted_on():
    archs = list(dict.fromkeys(SPACE.sample(np.random.default_rng(4), 8)))
    g = torch.Generator().manual_seed(4)
    model = build_epd(5, 6, g)
    targets = torch.tensor(minmax_normalise([a.ops.count(3) for a in archs]), dtype=torch.float32)
    with one_torch_thread():
        fit_epd(model, arch_tokens(archs), targets, epochs=150, lr=1e-2, generator=g)
        model.eval()
        with torch.no_grad():
            decoded = model.decode(model.encode(arch_tokens(archs)))
    assert decoded.tolist() == [list(a.ops) for a in archs]


def test_generation_yields_valid_unseen_archs_up_the_predictor():
    rng = np.random.default_rng(5)
    pool = list(dict.fromkeys(SPACE.sample(rng, 30)))
    g = torch.Generator().manual_seed(5)
    model = build_epd(5, 6, g)
    targets = torch.tensor(minmax_normalise([a.ops.count(3) for a in pool]), dtype=torch.float32)
    top = sorted(pool, key=lambda a: a.ops.count(3), reverse=True)[:10]
    with one_torch_thread():
        fit_epd(model, arch_tokens(pool), targets, epochs=150, lr=1e-2, generator=g)
        new, info = generate_archs(model, SPACE, top, count=10, exclude=pool)
    assert len(new) == len(set(new)) == 10
    assert all(a in SPACE for a in new) and not set(new) & set(pool)
    assert info["predicted_after"] > info["predicted_before"]
    # the predictor learnt "more 3x3 convs is better": the new archs have more than the pool
    assert np.mean([a.ops.count(3) for a in new]) > np.mean([a.ops.count(3) for a in pool]) + 0.5
    # a sub-space: decoding stays inside it
    sub = SPACE.restrict({0: [3], 5: [1, 3]})
    sub_new, _ = generate_archs(model, sub, [a for a in pool if a in sub] or [sub.arch((3, 0, 0, 0, 0, 3))],
                                count=3, exclude=())
    assert sub_new and all(a in sub for a in sub_new)


def test_isomorphic_copies_augment_the_training_pairs():
    searcher = make("nao", seed=0, expand=3)
    lonely = SPACE.arch((3, 3, 3, 3, 3, 3))
    crowded = SPACE.arch((0, 0, 0, 0, 0, 0))  # output is zero: many archs compute the same
    assert searcher._isomorphic(lonely) == []
    siblings = searcher._isomorphic(crowded)
    assert len(siblings) > 10 and crowded not in siblings
    assert all(SPACE.canonical_key(s) == SPACE.canonical_key(crowded) for s in siblings)
    tokens, y = searcher._training_pairs([lonely, crowded], np.array([1.0, 0.0]), [0, 1], torch.Generator())
    assert tokens.shape == (1 + 3, 6) and y.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert len({tuple(t) for t in tokens[1:].tolist()}) == 3


# --- the searcher ----------------------------------------------------------------------------------
@pytest.mark.parametrize("rescore", [True, False])
def test_iterations_train_the_new_pool_and_score_the_cumulative_pool(rescore):
    driver = FitWaitingDriver(make("nao", seed=3, epd_epochs=3, rescore=rescore))
    driver.run()
    s = driver.searcher
    trains = [u for u in driver.log if u["kind"] == "train"]
    assert [u["until"] for u in trains] == [50, 100]  # total_steps=100, 2 iterations, chunks of 80 cut at 50
    first, second = (u["policy"]["archs"] for u in trains)
    assert trains[0]["policy"]["name"] == "balanced" and len(first) == 60 and len(second) == 20
    assert not set(first) & set(second)
    scored = [a for u in driver.log if u["kind"] == "score" for a in u["archs"]]
    assert scored[:60] == first
    assert scored[60:] == (first + second if rescore else second)
    finals = [u["arch"] for u in driver.log if u.get("role") == "final"]
    assert finals == s.distinct_functions(sorted(first + second, key=lambda a: s.latest_[a], reverse=True), 5)
    assert s.history_[0]["generated"] + s.history_[0]["filled"] == 20


def test_the_fit_runs_off_the_loop_and_searches_as_a_fit_inside_suggest():
    # 100 epochs: seconds of fitting, while suggest must answer at once
    background = FitWaitingDriver(make("nao", seed=3, epd_epochs=100))
    background.run()
    inside = Driver(synchronous(make("nao", seed=3, epd_epochs=100)))
    inside.run()  # the plain Driver: a searcher fitting inside suggest never answers None
    assert len(background.waits) == 1  # 2 iterations: one fit, one wait for it
    wait = background.waits[0]
    assert wait["seconds"] < 0.2 and wait["running"]
    assert wait["progress"].startswith("iteration 1/2, fitting the predictor")
    # the same units (keys, archs, unit numbers), pools, EPD weights, history and RNG
    assert background.log == inside.log
    assert [key for key, _, _ in background.done] == [key for key, _, _ in inside.done]
    same_search(background.searcher, inside.searcher)
    assert background.searcher.history_[0]["generated"] + background.searcher.history_[0]["filled"] == 20
    assert not background.searcher.fitting


def test_a_state_saved_mid_fit_is_from_before_it_and_resumes_identically():
    reference = Driver(synchronous(make("nao", seed=5, epd_epochs=40)))
    reference.run()
    captured = {}

    def capture(driver):
        if captured:
            return
        s = driver.searcher
        assert s._fit is not None and not s._fit.done()  # mid-fit
        captured["state"] = pickle.loads(pickle.dumps(s.get_state()))
        captured["units"] = len(driver.log)
        captured["actors"] = copy.deepcopy(driver.actors)
        # a pickled searcher (Tune pickles its search algorithm) carries no fit, and fits again
        captured["pickled"] = pickle.loads(pickle.dumps(s))

    straight = FitWaitingDriver(make("nao", seed=5, epd_epochs=40), on_wait=capture)
    straight.run()
    assert straight.log == reference.log
    same_search(straight.searcher, reference.searcher)
    state, k = captured["state"], captured["units"]
    # nothing of the fit applied: the iteration's scoring done, its pool and RNG as before the fit
    assert state["phase_"] == "score" and state["iteration_"] == 0 and state["history_"] == []
    assert state["epd_state_"] is None and len(state["archs_"]) == 60 and state["latest_"] == {}
    assert len(state["scores_"]) == 60 and state["score_offset_"] == 0
    assert captured["pickled"]._fit is None and not captured["pickled"].fitting

    def restore_mid_fit(driver):
        # set_state while a fit runs drops it: the next suggest fits again from the state
        if len(driver.waits) == 1:
            driver.searcher.set_state(pickle.loads(pickle.dumps(state)))
            assert not driver.searcher.fitting

    for searcher, on_wait in ((make("nao", seed=5, epd_epochs=40), restore_mid_fit), (captured["pickled"], None)):
        searcher.set_state(pickle.loads(pickle.dumps(state)))
        resumed = FitWaitingDriver(searcher, on_wait=on_wait, actors=copy.deepcopy(captured["actors"]))
        resumed.run()
        assert resumed.log == reference.log[k:]  # the same subsequent units, numbers and keys
        same_search(resumed.searcher, reference.searcher)


def test_a_fit_that_raises_fails_the_search_with_one_line():
    searcher = make("nao", seed=0, epd_epochs=2)
    searcher.epd_state_ = {"embedding.weight": np.zeros((6, 32), dtype=np.float32)}  # another layout
    driver = FitWaitingDriver(searcher)
    driver.run()
    assert driver.finished and not searcher.fitting
    outcome = searcher.outcome()
    assert not outcome["final_arch"] and outcome["phase"] == "score"
    assert outcome["failure"].startswith("nao iteration 1/2: fitting the predictor failed: ValueError: nao: the "
                                         "saved EPD weights are of another layout")
    assert "\n" not in outcome["failure"]
    assert not [u for u in driver.log if u["kind"] == "train" and u["until"] > 50]  # nothing after the fit


def test_a_halt_mid_fit_stops_the_fit():
    searcher = make("nao", seed=0, epd_epochs=100_000)  # hours, unless stopped
    fits = []

    def halt(driver):
        fits.append(driver.searcher._fit)
        driver.searcher.halt("the cluster is gone")

    FitWaitingDriver(searcher, on_wait=halt).run()
    assert searcher.outcome()["failure"] == "the cluster is gone" and not searcher.fitting
    assert fits[0].join(timeout=30) and fits[0].result is None  # cancelled at its next batch


def test_one_torch_thread_in_a_background_thread_leaves_the_callers_setting():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        inside, entered, leave = [], threading.Event(), threading.Event()

        def fit():
            with one_torch_thread():
                inside.append(torch.get_num_threads())
                entered.set()
                leave.wait(30)

        thread = threading.Thread(target=fit)
        thread.start()
        assert entered.wait(30)
        assert inside == [1] and torch.get_num_threads() == 2  # this thread keeps its own
        with one_torch_thread():  # overlapping users: each thread restores its own
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        leave.set()
        thread.join(30)
        fresh = []
        later = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
        later.start()
        later.join(30)
        assert fresh == [2]  # the default a new thread starts with is back
    finally:
        torch.set_num_threads(before)


def test_a_cohort_that_came_back_short_is_scored_again():
    searcher = make("nao", seed=0, cohort_size=100)
    assert searcher.suggest("t0")["until"] == 50
    searcher.on_trial_complete("t0", {"version": 50})
    cohort = searcher.suggest("t1")
    assert cohort["kind"] == "score" and len(cohort["archs"]) == 60
    for i, arch in enumerate(cohort["archs"][:45]):
        searcher.on_trial_result("t1", {"arch": arch, "position": i, "valid_acc": 0.5})
    searcher.on_trial_complete("t1", {})
    again = searcher.suggest("t2")
    assert again["kind"] == "score" and again["archs"] == cohort["archs"][45:]
    assert again["key"] == cohort["key"] + "/rest1" and again["first_batch"] == cohort["first_batch"] + 45
    assert again["version"] == cohort["version"] == 50


def test_searcher_validates_its_arguments():
    with pytest.raises(ValueError, match="exceeds the space's 15625 archs"):
        NAOSearcher(total_steps=10, seed_archs=15_000, new_archs=700, iterations=2)
    with pytest.raises(ValueError, match="total_steps=2 < iterations=4"):
        NAOSearcher(total_steps=2, iterations=4)
    with pytest.raises(ValueError, match="top_k=6 > seed_archs=5"):
        NAOSearcher(total_steps=10, seed_archs=5, top_k=6)


# --- end to end ------------------------------------------------------------------------------------
TINY_NAO = {
    "supernet": {"epochs": 2, "lr_restarts": 2, "valid_batch_size": 64},
    "searcher": {"seed_archs": 8, "new_archs": 4, "top_archs": 4, "chunk_steps": 16, "cohort_size": 8, "top_k": 2,
                 "epd_epochs": 3, "expand": 2, "standalone": {"C": 4, "N": 1, "epochs": 1, "batch_size": 128}},
}


def test_nao_search_end_to_end(ray_session, tmp_path):
    from raynas.driver import search

    run = search("nao", overrides=TINY_NAO, storage=tmp_path, name="nao", verbose=0)
    candidates = pd.read_parquet(run / "candidates.parquet")
    summary = pd.read_parquet(run / "summary.parquet").iloc[0]
    steps = summary["supernet_steps"]
    assert steps == 2 * 16  # digits: 16 steps per epoch
    # iteration 1 scores its 8 seed archs at half the steps; iteration 2 all 12 at the end
    assert len(candidates) == 8 + 12
    assert sorted(candidates["supernet_version"].unique().tolist()) == [steps // 2, steps]
    last = candidates[candidates["supernet_version"] == steps]
    assert last["arch"].is_unique and set(candidates["arch"]) == set(last["arch"])
    assert summary["final_arch"] in set(last.nlargest(2, "valid_acc")["arch"])
    assert np.isfinite(summary["standalone_test_acc"])
    rows = read_unit_rows(run)
    trains = rows[rows["kind"] == "train"].sort_values("version")
    # the lr restarted at the end of iteration 1 (the row's lr is the next step's)
    assert trains["lr"].tolist() == pytest.approx([0.025, 0.001])
