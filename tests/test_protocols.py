"""The official protocols as settings: the few-shot budget and variants, the data roles, the finals.

One tiny few-shot search (digits, C=4/N=1, 16 one-shot steps) runs for the module, through the
CLI (it is also the suite's end-to-end few-shot search: regions, versions, inheritance), with the
official few-shot layout scaled down: sub-supernets at half the one-shot budget,
supernets on train+valid, candidates scored on the test split, two final seeds on the whole train
set. Everything else is checked on the searchers and the data layer without Ray.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from raynas.data import load_dataset
from raynas.errors import UsageError
from raynas.results import final_winner
from raynas.settings import make_config
from raynas.spaces import get_space
from tests.test_searchers import Driver, fake_acc

SPACE = get_space("nb201")
TINY_STANDALONE = {"C": 4, "N": 1, "epochs": 1, "batch_size": 128}


# --- the presets ----------------------------------------------------------------------------------
def test_few_shot_paper_presets_are_the_official_protocols():
    from raynas.searchers.base import sub_supernet_steps

    rsps = make_config("rsps", preset="few-shot-paper")
    net, search = rsps["supernet"], rsps["searcher"]
    assert (net["epochs"], net["batch_size"], net["weight_decay"], net["grad_clip"], net["lr"], net["lr_min"]) == \
        (600, 48, 1e-4, None, 0.025, 0.001)
    assert (net["bn_mode"], net["train_split"], net["score_split"]) == ("batch", "train+valid", "test")
    assert search["few_shot"] == [0] and search["policy"] == "per_cell" and search["sub_supernet_budget"] == 0.5
    assert search["num_candidates"] == len(SPACE) and search["score_batches"] is None  # every arch, whole split
    assert search["standalone"]["seeds"] == [777, 888, 999] and search["standalone"]["train_split"] == "train+valid"
    # CIFAR-10 at batch 48 on the 50k train set: 1041 steps an epoch; 600 epochs, then 300 per sub-supernet
    assert sub_supernet_steps(600 * 1041, 5, budget=search["sub_supernet_budget"]) == 300 * 1041
    assert sub_supernet_steps(600 * 1041, 5) == 600 * 1041 // 5  # "equal": today's 1/K each
    setn = make_config("setn", preset="few-shot-paper")
    assert setn["searcher"]["few_shot_variant"] == "independent" and setn["searcher"]["sub_supernet_budget"] == 1.0
    assert (setn["supernet"]["epochs"], setn["supernet"]["batch_size"]) == (300, 48)
    assert (setn["supernet"]["train_split"], setn["supernet"]["score_split"]) == ("train", "valid")


@pytest.mark.parametrize("method, overrides, message", [
    ("rsps", {"supernet": {"train_split": "train+valid"}}, "scores candidates on images the supernet trained on"),
    ("setn", {"supernet": {"score_split": "test"}}, "learns on the score split"),
    ("setn", {"supernet": {"train_split": "train+valid", "score_split": "test"}}, "learns on the score split"),
    ("rsps", {"searcher": {"few_shot_variant": "independent"}}, "without few_shot"),
    ("rsps", {"searcher": {"few_shot": "0", "few_shot_steps": 4, "sub_supernet_budget": 0.5}}, "give one of them"),
    ("rsps", {"searcher": {"sub_supernet_budget": -1}}, "'equal' or a fraction > 0"),
    ("rsps", {"searcher": {"standalone": {"seeds": [777, 777]}}}, "distinct ints"),
    ("rsps", {"searcher": {"standalone": {"train_split": "valid"}}}, "train_split='valid'"),
])
def test_leaking_or_contradictory_protocols_are_refused_with_one_line(method, overrides, message):
    with pytest.raises(UsageError, match=message) as err:
        make_config(method, overrides=overrides)
    assert "\n" not in str(err.value)


def test_final_seeds_flag_takes_a_count_or_a_list_and_refuses_the_rest(capsys):
    from raynas.cli import _final_seeds_arg, main

    assert _final_seeds_arg("3") == [777, 888, 999] and _final_seeds_arg("5,9") == [5, 9]
    assert main(["search", "--final-seeds", "0"]) == 2
    assert "--final-seeds" in capsys.readouterr().err


# --- the data roles ---------------------------------------------------------------------------------
def test_data_roles_route_the_whole_train_set_and_the_test_split():
    plain = load_dataset("digits")
    roles = load_dataset("digits", train_split="train+valid", score_split="test")
    assert len(roles.train) == len(plain.train) + len(plain.valid)
    assert bool((roles.valid.images == plain.test.images).all()) and len(roles.valid) == len(plain.test)
    assert len(load_dataset("digits", score_split="test").train) == len(plain.train)
    assert roles.fingerprint() == plain.fingerprint()  # the dataset's hash; the run records its roles apart


def test_the_actors_get_the_roles_as_data_options_and_the_worker_trains_on_them():
    from raynas.driver import actor_config
    from raynas.worker import SupernetWorker

    config = make_config("rsps", overrides={"supernet": {"train_split": "train+valid", "score_split": "test",
                                                         "C": 4, "N": 1, "total_steps": 2}})
    actors = actor_config(config)
    assert "train_split" not in actors["supernet"] and actors["data_options"] == {"train_split": "train+valid",
                                                                                  "score_split": "test"}
    assert actor_config(make_config("rsps"))["data_options"] == {}  # the defaults: the actors of before
    worker = SupernetWorker(**actors["supernet"], dataset="digits", data_options=actors["data_options"])
    plain = load_dataset("digits")
    assert len(worker.splits.train) == len(plain.train) + len(plain.valid)
    (row,) = worker.score([SPACE.sample(np.random.default_rng(0))], batches=None)
    assert row["samples"] == len(plain.test)  # scored on the test split


# --- the searchers: sub-supernet budget, the independent variant, the finals ----------------------
def _drive(method, **kwargs):
    from raynas.searchers import get_searcher_class

    searcher = get_searcher_class(method)(total_steps=40, chunk_steps=10, num_candidates=6, cohort_size=6,
                                          top_k=1, few_shot=[0], standalone=dict(TINY_STANDALONE), **kwargs)
    driver = Driver(searcher)
    driver.run()
    return searcher, driver


def test_a_half_budget_trains_each_sub_supernet_half_the_one_shot_steps():
    searcher, driver = _drive("rsps", sub_supernet_budget=0.5)
    until = {}
    for unit in driver.log:
        if unit["kind"] == "train":
            until[unit["supernet"]] = unit["until"]
    assert until == {0: 40, 1: 20, 2: 20, 3: 20, 4: 20, 5: 20}
    _, equal = _drive("rsps")
    assert {u["until"] for u in equal.log if u["kind"] == "train" and u["supernet"] > 0} == {8}


def test_the_independent_variant_trains_no_one_shot_supernet_and_no_sub_supernet_inherits(tmp_path):
    from raynas.supernets import SupernetActors

    searcher, driver = _drive("setn", few_shot_variant="independent", sub_supernet_budget=1.0)
    trains = [u for u in driver.log if u["kind"] == "train"]
    assert {u["supernet"] for u in trains} == {1, 2, 3, 4, 5} and max(u["until"] for u in trains) == 40
    assert searcher.outcome()["finished"] and searcher.best_arch is not None
    for variant, inherits in (("continue", True), ("independent", False)):
        config = make_config("setn", overrides={"searcher": {"few_shot": "1<-0", "few_shot_variant": variant}})
        config["run_id"] = "r"
        actors = SupernetActors(config, tmp_path, None, SPACE)
        actors.steps = 8
        assert (actors.worker_kwargs(3)["init_from"] is not None) == inherits


def test_the_independent_setn_sub_supernet_starts_from_scratch(tmp_path):
    """A sub-supernet worker of the independent variant: no parent, a fresh alpha (its init)."""
    from raynas.policies import SETNPolicy
    from raynas.worker import SupernetWorker

    region = SPACE.split([0])[2]
    spec = {"name": "setn", "seed": 0, "lr": 3e-4, "betas": [0.5, 0.999], "weight_decay": 1e-3, "eps": 1e-8}
    common = dict(dataset="digits", C=4, N=1, total_steps=4, batch_size=64, valid_batch_size=64,
                  allowed_ops=[list(a) for a in region.allowed_ops])
    parent = SupernetWorker(dataset="digits", C=4, N=1, total_steps=4, batch_size=64, valid_batch_size=64,
                            snapshot_dir=tmp_path / "0")
    parent.train(spec, until=4)
    inherited = SupernetWorker(**common, init_from=tmp_path / "0" / "snapshot.pt")
    fresh = SupernetWorker(**common)
    first_inherited = inherited.train(spec, until=1)["alpha"]
    first_fresh = fresh.train(spec, until=1)["alpha"]
    own = SETNPolicy(region, 1, **{k: v for k, v in spec.items() if k != "name"})
    assert inherited.initialized_from is not None and fresh.initialized_from is None
    # one Adam step (lr 3e-4) from its own init, not from the parent's 4-step alpha
    start = own.alpha.detach()
    assert max(abs(a - b) for ra, rb in zip(first_fresh, start.tolist()) for a, b in zip(ra, rb)) < 5e-4
    assert first_inherited != first_fresh


def test_every_pick_trains_once_per_seed_and_the_best_mean_valid_wins():
    from raynas.searchers import get_searcher_class

    searcher = get_searcher_class("rsps")(total_steps=20, chunk_steps=10, num_candidates=6, cohort_size=6, top_k=2,
                                          standalone=dict(TINY_STANDALONE, seeds=[777, 888]))
    driver = Driver(searcher, acc=fake_acc)
    driver.run()
    finals = [u for u in driver.log if u["kind"] == "standalone"]
    assert len(finals) == 4 and sorted({u["seed"] for u in finals}) == [777, 888]
    assert all(u["key"] == f"standalone/{u['arch']}/s{u['seed']}" for u in finals)
    assert searcher.best_arch == max({u["arch"] for u in finals}, key=fake_acc)
    # a resumed searcher (its state mid-finals) issues exactly the trainings still missing
    state = next(s for s in driver.states if len(s["finals"]) == 1 and not s["live"])
    again = get_searcher_class("rsps")(total_steps=20, chunk_steps=10, num_candidates=6, cohort_size=6, top_k=2,
                                       standalone=dict(TINY_STANDALONE, seeds=[777, 888]))
    again.set_state(state)
    rest = Driver(again, acc=fake_acc)
    rest.run()
    assert [u["key"] for u in rest.log if u["kind"] == "standalone"] == [u["key"] for u in finals[1:]]
    assert again.best_arch == searcher.best_arch


def test_the_winner_rule_is_the_mean_valid_accuracy_else_the_first_pick():
    rows = [{"arch": "a", "unit": 5, "valid_acc": 0.9}, {"arch": "a", "unit": 6, "valid_acc": 0.5},
            {"arch": "b", "unit": 7, "valid_acc": 0.8}, {"arch": "b", "unit": 8, "valid_acc": 0.7}]
    assert final_winner(rows) == "b"  # 0.75 > 0.7
    assert final_winner([{"arch": "b", "unit": 9}, {"arch": "a", "unit": 3}]) == "a"  # train+valid: the first pick
    assert final_winner([{"arch": "a", "unit": 1, "valid_acc": math.nan}, {"arch": "b", "unit": 2, "valid_acc": 0.1}]) == "b"
    assert final_winner([]) is None


# --- one tiny search end to end ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def few_shot_run(ray_session, tmp_path_factory):
    from raynas.cli import main

    storage = tmp_path_factory.mktemp("protocols")
    sets = {"supernet.total_steps": 16, "supernet.C": 4, "supernet.N": 1, "supernet.valid_batch_size": 128,
            "supernet.train_split": "train+valid", "supernet.score_split": "test",
            "searcher.chunk_steps": 8, "searcher.num_candidates": 5, "searcher.cohort_size": 5,
            "searcher.score_batches": None, "searcher.top_k": 1, "searcher.sub_supernet_budget": 0.5,
            "searcher.standalone": TINY_STANDALONE}
    args = ["search", "--method", "rsps", "--few-shot", "1<-0", "--final-seeds", "2", "--final-train", "full",
            "--storage", str(storage), "--name", "few", "-q"]
    for key, value in sets.items():
        args += ["--set", f"{key}={value!r}"]
    assert main(args) == 0
    return storage / "few"


def test_the_tiny_official_protocol_trains_scores_and_finals_where_it_says(few_shot_run):
    from raynas.rowlog import read_rows

    manifest = json.loads((few_shot_run / "manifest.json").read_text())
    plain = load_dataset("digits")
    assert manifest["few_shot"]["steps"] == 8 and manifest["few_shot"]["sub_supernet_budget"] == 0.5
    assert manifest["data_roles"] == {"supernet_train": "train+valid", "score": "test", "finals_train": "train+valid",
                                      "final_seeds": [777, 888]}
    # the supernet's epoch is the whole train set's (train + valid) at batch 64
    assert manifest["supernet"]["steps_per_epoch"] == (len(plain.train) + len(plain.valid)) // 64
    trained = {}
    for row in read_rows(few_shot_run):
        if row["kind"] == "train":
            trained[row["supernet"]] = max(trained.get(row["supernet"], 0), row["version"])
    assert trained == {0: 16, 1: 8, 2: 8, 3: 8, 4: 8, 5: 8}  # each sub-supernet half the one-shot steps
    candidates = pd.read_parquet(few_shot_run / "candidates.parquet")
    assert len(candidates) == 5 and (candidates["samples"] == len(plain.test)).all()  # scored on the test split
    # each candidate on its own region's sub-supernet (split on edge 1<-0: region k holds op k there)
    assert manifest["few_shot"]["edges"] == [0] and manifest["few_shot"]["sub_supernets"] == 5
    for arch, supernet, version in zip(candidates["arch"], candidates["supernet"], candidates["supernet_version"]):
        assert supernet == SPACE.parse(arch).ops[0] + 1 and version == 8
    parent = few_shot_run / "supernets" / "0" / "snapshot.pt"
    assert torch.load(parent, weights_only=True)["version"] == 16
    for k in range(1, 6):  # each initialised from the one-shot supernet (the "continue" variant)
        state = torch.load(few_shot_run / "supernets" / str(k) / "snapshot.pt", weights_only=True)
        assert state["version"] == 8 and state["initialized_from"] == str(parent)
    finals = pd.read_parquet(few_shot_run / "standalone.parquet")
    assert sorted(finals["train_seed"]) == [777, 888] and (finals["train_split"] == "train+valid").all()
    assert (finals["train_size"] == len(plain.train) + len(plain.valid)).all() and finals["valid_acc"].isna().all()
    assert finals["winner"].all() and finals["test_acc"].between(0, 1).all()
    summary = pd.read_parquet(few_shot_run / "summary.parquet").iloc[0]
    assert summary["final_seeds"] == 2 and summary["final_train_split"] == "train+valid"
    assert summary["final_test_acc_mean"] == pytest.approx(finals["test_acc"].mean())
    assert summary["final_test_acc_std"] == pytest.approx(finals["test_acc"].std())
    assert summary["standalone_test_acc"] == pytest.approx(summary["final_test_acc_mean"])
    assert summary["final_arch"] == finals["arch"].iloc[0] and summary["final_arch"] in set(candidates["arch"])
    assert summary["supernet_steps"] == 16 + 5 * 8  # every supernet's steps
