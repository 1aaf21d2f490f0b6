"""SETN: the template ranking, the alpha step inside the worker, its state, and one real search."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from raynas.policies import make_policy
from raynas.searchers import get_searcher_class
from raynas.searchers.setn import SETNPolicy, template_scores, template_top_k
from raynas.spaces import get_space
from raynas.worker import SupernetWorker

SPACE = get_space("nb201")
FULL = SPACE.allowed_ops


def _worker(**kw):
    kw = {"dataset": "digits", "C": 4, "N": 1, "total_steps": 20, "valid_batch_size": 64, "num_threads": 1, **kw}
    return SupernetWorker(**kw)


# --- the template -------------------------------------------------------------------------
def test_template_ranks_a_base5_alpha_by_hand():
    # alpha[e, o] = c_e * o with c_e = 0.01 * 5**e: log_softmax(alpha[e])[o] = c_e * o - const_e, so an
    # arch's score is best(all 4s) - 0.01 * sum_e (4 - o_e) * 5**e: the k-th best (from 0) has the base-5
    # digits of k as 4 - o_e (edge 0 least significant), and no two archs tie
    alpha = np.array([[0.01 * 5**e * o for o in range(5)] for e in range(6)])
    top = template_top_k(alpha, 40, FULL)
    expected = [tuple(4 - (k // 5**e) % 5 for e in range(6)) for k in range(40)]
    assert top == expected
    ops, scores = template_scores(alpha, FULL)
    best = sum(0.01 * 5**e * 4 - math.log(sum(math.exp(0.01 * 5**e * o) for o in range(5))) for e in range(6))
    assert scores.max() == pytest.approx(best, abs=1e-9)
    assert len(ops) == 5**6 and tuple(ops[0]) == (0,) * 6 and tuple(ops[1]) == (0, 0, 0, 0, 0, 1)


def test_template_breaks_ties_by_index():
    # edge 0 prefers op 3 (by 2 nats), edge 1 op 2 (by 1 nat), the rest are flat: the 625 archs
    # (3, 2, *, *, *, *) tie for first, in index order; next the (3, x != 2, ...) group (loses 1 < 2)
    alpha = np.zeros((6, 5))
    alpha[0, 3], alpha[1, 2] = 2.0, 1.0
    top = template_top_k(alpha, 627, FULL)
    assert top[:625] == [(3, 2, a, b, c, d) for a in range(5) for b in range(5) for c in range(5) for d in range(5)]
    assert top[625:] == [(3, 0, 0, 0, 0, 0), (3, 0, 0, 0, 0, 1)]
    assert template_top_k(np.zeros((6, 5)), 3, FULL) == [SPACE.arch_from_index(i).ops for i in range(3)]


def test_template_on_a_sub_space_renormalises_over_allowed_ops():
    sub = SPACE.restrict({0: [1, 2], 3: [4]})
    alpha = np.zeros((6, 5))
    alpha[0] = [9.0, 0.0, 1.0, 0.0, 0.0]  # op 0 is the largest but not allowed on edge 0
    ops, scores = template_scores(alpha, sub.allowed_ops)
    assert len(ops) == len(sub) == 2 * 5**4
    assert template_top_k(alpha, 1, sub.allowed_ops) == [(2, 0, 0, 4, 0, 0)]
    # log(e / (1 + e)) on edge 0, log 1 on edge 3, log(1/5) on the other four
    assert scores.max() == pytest.approx(math.log(math.e / (1 + math.e)) + 4 * math.log(0.2))
    with pytest.raises(ValueError, match=r"alpha of shape \(5, 5\)"):
        template_scores(np.zeros((5, 5)), FULL)


# --- the policy inside the worker ---------------------------------------------------------
def test_alpha_init_is_seeded_and_small():
    a = make_policy({"name": "setn", "seed": 3}, SPACE, 1).alpha.detach()
    b = make_policy({"name": "setn", "seed": 3}, SPACE, 1).alpha.detach()
    c = make_policy({"name": "setn", "seed": 4}, SPACE, 1).alpha.detach()
    assert a.shape == (6, 5) and torch.equal(a, b) and not torch.equal(a, c)
    assert 2e-4 < float(a.std()) < 5e-3
    with pytest.raises(ValueError, match="lr=0"):
        make_policy({"name": "setn", "lr": 0}, SPACE, 1)


def test_alpha_step_moves_alpha_by_adam_and_leaves_the_supernet_alone():
    worker = _worker()
    policy = make_policy({"name": "setn", "seed": 1}, worker.space, worker.supernet.num_cells, worker.device)
    worker.supernet.train()
    x, y = worker.splits.valid.images[:64], worker.splits.valid.labels[:64]
    # parameters, not buffers: a train-mode forward updates the stem BN's running stats (as officially)
    before = {k: v.detach().clone() for k, v in worker.supernet.named_parameters()}
    # the gradient, computed apart
    alpha = policy.alpha.detach().clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(worker.supernet(x, alpha.softmax(-1)), y)
    (grad,) = torch.autograd.grad(loss, [alpha])
    start = policy.alpha.detach().clone()
    step_loss, _ = policy.arch_step(worker, x, y)
    assert float(step_loss) == pytest.approx(float(loss.detach()))
    delta = policy.alpha.detach() - start
    # Adam's first step: each coordinate moves by lr against the sign of (grad + wd * alpha)
    g = grad + 1e-3 * start
    big = g.abs() > 1e-5
    assert big.sum() >= 20
    assert torch.allclose(delta[big], -3e-4 * g[big].sign(), rtol=1e-3)
    for key, value in worker.supernet.named_parameters():
        assert torch.equal(value, before[key]), key
    # no gradient reaches the weights (offpath=decay keeps zero ones on them between steps)
    assert all(p.grad is None or not p.grad.any() for p in worker.supernet.parameters())
    assert policy.alpha.grad is None and not worker.optimizer.state


def test_after_step_draws_its_own_valid_stream_and_reports_through_export():
    worker = _worker()
    policy = make_policy({"name": "setn", "seed": 0}, worker.space, worker.supernet.num_cells, worker.device)
    start = policy.alpha.detach().clone()
    position = (worker.valid_batches.epoch, worker.valid_batches.position)
    assert policy.after_step(worker, 1) == {}
    assert not torch.equal(policy.alpha.detach(), start)
    assert (worker.valid_batches.epoch, worker.valid_batches.position) == position  # the scoring stream is untouched
    assert policy._valid.position == 1 and policy._valid.batch_size == worker.config["batch_size"]
    out = policy.export()
    assert np.asarray(out["alpha"]).shape == (6, 5) and json.loads(json.dumps(out)) == out
    assert 0 < out["arch_loss"] < 10 and 0 <= out["arch_acc"] <= 1
    assert "arch_loss" not in policy.export()  # means since the previous export


def test_alpha_steps_reduce_the_arch_loss_on_a_fixed_batch():
    worker = _worker()
    spec = {"name": "setn", "seed": 0, "lr": 0.05}
    policy = make_policy(spec, worker.space, worker.supernet.num_cells, worker.device)
    worker.train({"name": "uniform"}, until=10)  # some trained weights, so ops differ
    worker.supernet.train()
    x, y = worker.splits.valid.images[:128], worker.splits.valid.labels[:128]
    losses = [float(policy.arch_step(worker, x, y)[0]) for _ in range(8)]
    with torch.no_grad():
        final = float(torch.nn.functional.cross_entropy(worker.supernet(x, policy.arch_weights()), y))
    assert final < losses[0] - 1e-3
    assert sum(b < a for a, b in zip(losses, losses[1:] + [final])) >= 6


def test_train_under_setn_exports_alpha_and_resumes_from_a_snapshot(tmp_path):
    spec = {"name": "setn", "seed": 2, "lr": 3e-4, "betas": [0.5, 0.999], "weight_decay": 1e-3, "eps": 1e-8}
    first = _worker(snapshot_dir=str(tmp_path))
    row = first.train(spec, until=6)
    assert row["alpha"] == first.policy.alpha.detach().tolist() and math.isfinite(row["arch_loss"])
    resumed = _worker(snapshot_dir=str(tmp_path))  # reads the snapshot the first train() wrote
    assert isinstance(resumed.policy, SETNPolicy) and resumed.version == 6
    assert torch.equal(resumed.policy.alpha, first.policy.alpha)
    a, b = first.train(spec, until=12), resumed.train(spec, until=12)
    # identical continuation: alpha, Adam state and the policy's valid stream all came back
    assert a["alpha"] == b["alpha"] and a["arch_loss"] == b["arch_loss"]
    assert all(torch.equal(p, q) for p, q in zip(first.supernet.parameters(), resumed.supernet.parameters()))


def test_searcher_keeps_alpha_and_builds_its_policy_spec():
    cls = get_searcher_class("setn")
    searcher = cls(total_steps=10, chunk_steps=10, num_candidates=5, cohort_size=5, seed=7)
    unit = searcher.suggest("a")
    assert unit["policy"] == {"name": "setn", "seed": 7, "lr": 3e-4, "betas": [0.5, 0.999], "weight_decay": 1e-3,
                              "eps": 1e-8}
    alpha = np.zeros((6, 5))
    alpha[2, 1] = 1.0
    searcher.on_trial_complete("a", {"version": 10, "alpha": alpha.tolist()})
    cohort = searcher.suggest("b")
    assert cohort["archs"] == [str(SPACE.arch(ops)) for ops in template_top_k(alpha, 5, FULL)]
    assert all(SPACE.parse(a).ops[2] == 1 for a in cohort["archs"])
    assert np.array_equal(searcher.alpha(0), alpha)
    with pytest.raises(ValueError, match="arch_lr=-1"):
        cls(total_steps=10, arch_lr=-1)
    with pytest.raises(ValueError, match="policy="):
        cls(total_steps=10, policy="uniform")


def test_few_shot_takes_each_regions_top_k_from_its_own_alpha():
    cls = get_searcher_class("setn")
    searcher = cls(total_steps=10, chunk_steps=10, num_candidates=3, cohort_size=50, few_shot=[0], few_shot_steps=5,
                   max_concurrent=10)
    cohorts, n = [], 0
    while True:
        n += 1
        unit = searcher.suggest(f"t{n}")
        assert unit is not None
        if unit["kind"] != "train":
            break
        k = unit["supernet"]
        alpha = np.zeros((6, 5))
        if k:
            alpha[1, k - 1] = 1.0  # sub-supernet k (edge 0 = op k-1) prefers op k-1 on edge 1
        searcher.on_trial_complete(f"t{n}", {"version": unit["until"], "alpha": alpha.tolist()})
    while unit is not None and unit["kind"] == "score":
        cohorts.append(unit)
        n += 1
        unit = searcher.suggest(f"t{n}")
    assert [c["supernet"] for c in cohorts] == [1, 2, 3, 4, 5]
    for c in cohorts:
        o = c["supernet"] - 1
        assert c["archs"] == [str(SPACE.arch((o, o, 0, 0, 0, last))) for last in range(3)]


def test_policy_on_a_sub_space_gives_disallowed_ops_zero_weight():
    sub = SPACE.restrict({0: [1, 2], 4: [3]})
    worker = _worker(allowed_ops=sub.allowed_ops)
    policy = make_policy({"name": "setn", "seed": 0}, worker.space, worker.supernet.num_cells, worker.device)
    policy.after_step(worker, 1)
    weights = policy.arch_weights().detach()
    assert torch.allclose(weights.sum(-1), torch.ones(6))
    assert (weights[0, [0, 3, 4]] == 0).all() and (weights[4, [0, 1, 2, 4]] == 0).all() and weights[4, 3] == 1
    assert all(policy.path(np.random.default_rng(i), 0) in sub for i in range(20))


# --- one real search ----------------------------------------------------------------------
def _train_rows(run_dir: Path) -> list[dict]:
    from raynas.results import read_unit_rows

    rows = read_unit_rows(run_dir)
    return rows[rows["kind"] == "train"].to_dict("records")


#: seconds of compute: 32 supernet steps in 2 chunks, 6 candidates in one cohort, 2 one-epoch standalones
SMALL = {
    "supernet": {"C": 4, "epochs": 2, "valid_batch_size": 64},
    "searcher": {"chunk_steps": 20, "num_candidates": 6, "cohort_size": 6, "top_k": 2,
                 "standalone": {"C": 4, "N": 1, "epochs": 1, "batch_size": 128}},
}


def test_setn_search_scores_the_template_top_k_of_the_final_alpha(ray_session, tmp_path):
    from raynas.driver import search

    run_dir = search("setn", dataset="digits", overrides=SMALL, storage=tmp_path, name="setn", seed=0, verbose=0)
    candidates = pd.read_parquet(run_dir / "candidates.parquet").sort_values(["unit", "position"])
    summary = pd.read_parquet(run_dir / "summary.parquet").iloc[0]
    trains = sorted(_train_rows(run_dir), key=lambda r: r["version"])
    assert [r["version"] for r in trains] == [20, 32]
    assert all(math.isfinite(r["arch_loss"]) for r in trains)
    alpha = np.asarray(trains[-1]["alpha"])
    init = make_policy({"name": "setn", "seed": 0}, SPACE, 1).alpha.detach().numpy()
    assert alpha.shape == (6, 5) and not np.allclose(alpha, init)
    expected = [str(SPACE.arch(ops)) for ops in template_top_k(alpha, 6, FULL)]
    assert list(candidates["arch"]) == expected
    assert set(candidates["method"]) == {"setn"} and (candidates["batches"] == 1).all()
    assert summary["final_arch"] in set(candidates.nlargest(2, "valid_acc")["arch"])
    assert summary["supernet_steps"] == 32 and np.isfinite(summary["standalone_test_acc"])
