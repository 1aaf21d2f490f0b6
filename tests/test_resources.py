"""Resources that fit the cluster the search will have: requests sized per node, GPUs asked for
before they exist, supernet actors made when the search needs them and released when it no
longer does, few sub-supernets alive at a time on scarce resources, and whatever cannot start
failing the run with one line instead of a silent wait.

The sizing and the searchers' needs run without Ray (views of made-up clusters, the fake Tune of
``tests/test_searchers.py``); the rest on real local Ray instances and the tiny digits search.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from raynas.errors import UsageError
from raynas.searchers import method_names
from raynas.settings import make_config
from raynas.cluster import ClusterView, NodeType
from raynas.plan import demands, plan_resources
from raynas.supernets import SupernetActors
from raynas.trainable import unit_resources
from tests.conftest import FEW
from tests.test_searchers import Driver, make

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ["arch", "supernet", "supernet_version", "valid_acc", "valid_loss", "batches", "samples"]


def _config(method="rsps", resources=None, few_shot=True):
    searcher = {"few_shot": "1<-0"} if few_shot else {}
    return make_config(method, overrides={"resources": resources or {}, "searcher": searcher})


def _fixed(*cpus, gpus=0.0):
    return ClusterView(tuple({"CPU": float(c), **({"GPU": gpus} if gpus else {})} for c in cpus), (), False)


def _packs(plan, view):
    from raynas.plan import _packs

    return _packs([plan.actor] * plan.actors_at_once + [plan.trial] * plan.res["max_concurrent"], view.nodes)


def _comparable(candidates: pd.DataFrame) -> pd.DataFrame:
    return candidates[COLUMNS].sort_values(["supernet", "arch"]).reset_index(drop=True)


# --- sizing, without Ray ------------------------------------------------------------------------------
def test_shares_are_sized_per_node_so_that_the_search_fits():
    # the reported hang: two 1-CPU nodes. All 5 sub-supernets and their 5 light trials pack onto
    # them at once (actors released before the standalone phase, so it gets the whole CPU)
    two = _fixed(1, 1)
    plan = plan_resources(_config(), two, sub_supernets=5)
    assert plan.actors_at_once == 5 and plan.res["max_concurrent"] == 5 and _packs(plan, two)
    assert plan.res["actor_cpus"] == 0.15 and plan.standalone == {"CPU": 1.0}
    # one 1-CPU node: fewer sub-supernets at a time (the others wait their turn), still packed
    one = _fixed(1)
    plan = plan_resources(_config(), one, sub_supernets=5)
    assert 1 <= plan.actors_at_once < 5 and _packs(plan, one)
    # a one-shot search on that node: the actor leaves room for its light trials
    plan = plan_resources(_config(few_shot=False), one)
    assert plan.actors_at_once == 1 and plan.actor == {"CPU": 0.5} and _packs(plan, one)
    # a big node keeps the settings as they are
    plan = plan_resources(_config(few_shot=False), _fixed(16))
    assert plan.actor == {"CPU": 1.0} and plan.standalone == {"CPU": 1.0} and plan.res["max_concurrent"] == 2
    # a standalone share larger than any node is cut to the largest node
    assert plan_resources(_config(resources={"standalone_cpus": 8.0}), _fixed(2, 4)).standalone == {"CPU": 4.0}


def test_gpu_requests_default_to_the_cluster_and_gpus_asks_regardless():
    gpu_node = _fixed(8, gpus=2.0)
    # default: GPUs where the cluster has them, else CPU
    assert plan_resources(_config(few_shot=False), gpu_node).actor == {"CPU": 1.0, "GPU": 1.0}
    assert "GPU" not in plan_resources(_config(few_shot=False), _fixed(8)).actor
    # --gpus N: actors and standalone trainings alike; actor_gpus / standalone_gpus for one role
    plan = plan_resources(_config(resources={"gpus": 1.0}), gpu_node, sub_supernets=5)
    assert plan.actor == {"CPU": 1.0, "GPU": 1.0} and plan.standalone == {"CPU": 1.0, "GPU": 1.0}
    assert plan.actors_at_once == 2  # 5 sub-supernets queue for the 2 GPUs
    plan = plan_resources(_config(resources={"gpus": 1.0, "actor_gpus": 0.5}), gpu_node, sub_supernets=5)
    assert plan.actor["GPU"] == 0.5 and plan.standalone["GPU"] == 1.0 and plan.actors_at_once == 4
    assert plan_resources(_config(resources={"gpus": 0.0}), gpu_node).actor == {"CPU": 1.0}
    # what the work units and the actors ask Ray for
    standalone = unit_resources({"kind": "standalone"}, trial_cpus=plan.res["trial_cpus"],
                                standalone_cpus=plan.res["standalone_cpus"], standalone_gpus=plan.standalone_gpus)
    assert standalone == {"CPU": 1.0, "GPU": 1.0}
    assert unit_resources({"kind": "train"}, trial_cpus=0.25, standalone_cpus=1.0, standalone_gpus=1.0) == {"CPU": 0.25}
    from raynas.spaces import get_space

    actors = SupernetActors(_config(resources={"gpus": 1.0}), Path("/nonexistent"), plan, get_space("nb201"))
    assert actors.options(0)["num_gpus"] == 0.5 and "scheduling_strategy" not in actors.options(0)
    assert actors.options(3)["num_gpus"] == 0.5 and actors.options(3)["scheduling_strategy"] == "SPREAD"


def test_a_request_no_node_can_ever_hold_is_one_usage_error():
    with pytest.raises(UsageError) as err:
        plan_resources(_config(resources={"gpus": 1.0}), _fixed(4))
    message = str(err.value)
    assert "\n" not in message and "supernet actor asks for {CPU: 1, GPU: 1}" in message
    assert "1 node {CPU: 4} and no autoscaler" in message and "--gpus 0" in message
    # a method without a supernet: its standalone trainings
    with pytest.raises(UsageError, match=r"standalone training asks for \{CPU: 1, GPU: 1\}"):
        plan_resources(_config("random", resources={"gpus": 1.0}, few_shot=False), _fixed(4), uses_supernet=False)
    # an autoscaler whose node types lack GPUs: just as impossible
    cpu_types = ClusterView(({},), (NodeType("cpu", {"CPU": 4.0}, 4),), True)
    with pytest.raises(UsageError, match="its autoscaler adds cpu"):
        plan_resources(_config(resources={"gpus": 1.0}), cpu_types)


def _aws_view() -> ClusterView:
    config = yaml.safe_load((ROOT / "cluster" / "aws.yaml").read_text())
    return ClusterView.from_node_types(config["available_node_types"], config["head_node_type"]), config


def test_gpus_on_an_autoscaled_cluster_without_gpus_yet_become_gpu_demands():
    from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
    from ray.autoscaler._private.resource_demand_scheduler import _default_utilization_scorer, get_nodes_for

    view, config = _aws_view()
    assert view.total("GPU") == 0  # GPU workers scale from zero
    plan = plan_resources(_config(resources={"gpus": 1.0}), view, sub_supernets=5)
    assert plan.actor == {"CPU": 1.0, "GPU": 1.0} and plan.actors_at_once == 5 and plan.timeout_s == 900
    asked = demands(_config(resources={"gpus": 1.0}), view)
    assert asked == [{"CPU": 1.0, "GPU": 1.0}] * 5 + [{"CPU": 0.25}] * 5
    scorer = functools.partial(_default_utilization_scorer,
                               node_availability_summary=NodeAvailabilitySummary(node_availabilities={}))
    head = config["head_node_type"]
    types = config["available_node_types"]
    for phase in ("supernets", "standalone"):
        to_add, residual = get_nodes_for(types, {head: 1}, head, 100, demands(_config(resources={"gpus": 1.0}), view,
                                                                              phase=phase), scorer)
        assert to_add and all(types[t]["resources"].get("GPU") for t in to_add) and not residual
    # without --gpus on a GPU-less cluster: CPU demands only, no GPU node launched
    to_add, _ = get_nodes_for(types, {head: 1}, head, 100, demands(_config(), view), scorer)
    assert not any(types[t]["resources"].get("GPU") for t in to_add)
    # a 25-way split queues for the GPUs the node types can have (10 here), never needs 26 at once
    assert plan_resources(_config(resources={"gpus": 1.0}), view, sub_supernets=25).actors_at_once == 10
    # an autoscaler whose node types raynas cannot see: one GPU actor at a time unless told more
    unseen = ClusterView(({"CPU": 4.0},), (), True)
    assert plan_resources(_config(resources={"gpus": 1.0}), unseen, sub_supernets=25).actors_at_once == 1
    assert plan_resources(_config(resources={"gpus": 1.0, "max_actors": 6}), unseen, sub_supernets=25).actors_at_once == 6
    # the cluster files' phases: standalone trainings only once the actors are gone
    assert demands(_config(resources={"gpus": 1.0}), phase="standalone") == [{"CPU": 1.0, "GPU": 1.0}] * 5
    assert demands(_config("random", resources={"gpus": 1.0}, few_shot=False)) == []


# --- the searchers' needs, without Ray ----------------------------------------------------------------
class _Watch:
    """Plays the driver's actors: at each issue, what the searcher says it needs."""

    def __init__(self, searcher):
        self.searcher, self.needs = searcher, []

    def __call__(self, unit):
        needed = self.searcher.supernets_needed()
        used = {u.get("supernet", 0) for u in self.searcher.live_.values() if u["kind"] in ("train", "score")}
        self.needs.append((unit, needed, used))


@pytest.mark.parametrize("method", method_names())
@pytest.mark.parametrize("limit", [None, 2])
def test_every_searcher_says_which_supernets_it_needs_and_keeps_a_limit(method, limit):
    few = {"few_shot": [0]} if method in ("rsps", "setn") else {}
    searcher = make(method, **few)
    searcher.set_supernet_limit(limit)
    watch = searcher.on_issue = _Watch(searcher)
    Driver(searcher, concurrent=True).run()  # it asserts the searcher never waits with nothing live
    assert searcher.outcome()["finished"] and watch.needs
    uses_supernet = getattr(type(searcher), "uses_supernet", True)
    for unit, needed, used in watch.needs:
        if unit["kind"] in ("train", "score"):
            assert unit["supernet"] in needed  # its actor exists before Tune makes the trial
        if unit["kind"] == "standalone":
            assert needed == set() or not uses_supernet  # every actor released for the final phase
        assert used <= needed
        if limit is not None:
            assert len(used) <= limit and len(needed) <= max(limit, len(used))
    if not uses_supernet:
        assert all(not needed for _, needed, _ in watch.needs)
    if few:
        # the one-shot supernet is released once its sub-supernets take over, and never made again
        first_sub = next(i for i, (u, _, _) in enumerate(watch.needs) if u.get("supernet", 0) > 0)
        assert all(0 not in needed for _, needed, _ in watch.needs[first_sub:])


def test_a_limit_changes_only_the_order_of_a_few_shot_search():
    def keyed(limit):
        searcher = make("rsps", few_shot=[0])
        searcher.set_supernet_limit(limit)
        driver = Driver(searcher, concurrent=True)
        driver.run()
        return {key: rows for key, _, rows in driver.done}, searcher.best_arch

    assert keyed(None) == keyed(1) == keyed(3)


def test_the_driver_hook_and_limit_are_not_state():
    import pickle

    searcher = make("rsps", few_shot=[0])
    searcher.set_supernet_limit(2)
    searcher.on_issue = lambda unit: None
    searcher.halt("the cluster went away")
    assert "on_issue" not in searcher.get_state() and "supernet_limit" not in searcher.get_state()
    assert pickle.loads(pickle.dumps(searcher)).on_issue is None
    outcome = searcher.outcome()
    assert outcome["failure"] == "the cluster went away" and not outcome["finished"]
    with pytest.raises(ValueError, match="supernet_limit=0"):
        searcher.set_supernet_limit(0)


# --- on real Ray ----------------------------------------------------------------------------------------
def _cli(args, cwd, timeout=600):
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    return subprocess.run([sys.executable, "-m", "raynas.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_gpus_on_a_machine_without_gpus_fail_at_once_in_one_line(tmp_path):
    started = time.monotonic()
    done = _cli(["search", "--gpus", "1", "--storage", str(tmp_path / "runs"), "--name", "g", "-q",
                 "--set", "supernet.epochs=1", "--num-cpus", "2"], tmp_path, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("raynas search:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr
    assert "a supernet actor asks for {CPU: 1, GPU: 1}, which no node can ever hold" in errors[0]
    assert "the cluster has 1 node {CPU: 2} and no autoscaler" in errors[0]
    assert not (tmp_path / "runs" / "g").exists()  # nothing left behind
    assert time.monotonic() - started < 120  # no wait for a timeout: infeasible at once


SMALL = textwrap.dedent(
    """
    import json, os, sys
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray
    from raynas.driver import search

    nodes, storage, overrides = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    if len(nodes) > 1:
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": nodes[0]})
        for cpus in nodes[1:]:
            cluster.add_node(num_cpus=cpus)
        cluster.wait_for_nodes()
        address = cluster.address
        ray.init(address=address, namespace="raynas", log_to_driver=False)
    else:
        cluster, address = None, None
        ray.init(address="local", num_cpus=nodes[0], namespace="raynas", include_dashboard=False, log_to_driver=False)
    run = search("rsps", overrides=overrides, storage=storage, name="small", address=address, verbose=0)
    few = run.manifest["few_shot"]
    print(json.dumps({"status": run.status, "message": run.message, "max_actors": few["max_actors"],
                      "actor_cpus": few["actor_cpus"], "actors": few["actors"], "run": str(run)}))
    ray.shutdown()
    if cluster is not None:
        cluster.shutdown()
    """
)


@pytest.mark.slow
# two 1-CPU nodes: tests/test_multinode.py runs that case on real `ray start` nodes
@pytest.mark.parametrize("nodes", [[1]], ids=["one-1-cpu-node"])
def test_a_few_shot_search_with_default_resources_finishes_on_small_clusters(nodes, tmp_path):
    done = subprocess.run([sys.executable, "-c", SMALL, json.dumps(nodes), str(tmp_path), json.dumps(FEW)],
                          capture_output=True, text=True, timeout=900, env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"))
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["status"] == "complete", out["message"]
    if len(nodes) == 2:
        assert out["max_actors"] == 5  # all sub-supernets at once: no actor made twice
        assert [h["supernet"] for h in out["actors"] if h["event"] == "start"] == [0, 1, 2, 3, 4, 5]
    else:
        assert out["max_actors"] < 5
    candidates = pd.read_parquet(Path(out["run"]) / "candidates.parquet")
    assert len(candidates) == 10 and candidates["supernet"].between(1, 5).all()


@pytest.fixture(scope="module")
def few_run(few_shot_run):
    """The session's uninterrupted FEW search (tests/conftest.py; test_storage_e2e.py compares with it too)."""
    return few_shot_run


def test_actors_are_released_by_phase(ray_session, few_run):
    assert few_run.status == "complete"
    history = few_run.manifest["few_shot"]["actors"]
    # CPU actors that all fit at once (no max_actors): the sub-supernets' actors start during the
    # one-shot supernet's last chunk, beside its actor (they read its snapshot file at their first
    # step); it goes once they are seeded, when its chunks are done
    release_0 = next(i for i, h in enumerate(history) if h["supernet"] == 0 and h["event"] == "release")
    assert history[release_0]["phase"] == "train_sub" and history[release_0]["alive"] == [1, 2, 3, 4, 5]
    early = history[:release_0]
    assert [h["supernet"] for h in early if h["event"] == "start"] == [0, 1, 2, 3, 4, 5]
    assert all(h["phase"] == "train" for h in early[1:]) and max(len(h["alive"]) for h in early) == 6
    # each sub-supernet lives from its training to its last cohort, is never made twice, and is
    # released while scoring goes on or when the standalone phase begins
    starts = [h["supernet"] for h in history if h["event"] == "start"]
    assert starts == [0, 1, 2, 3, 4, 5]
    releases = {h["supernet"]: h for h in history if h["event"] == "release"}
    assert set(releases) == {0, 1, 2, 3, 4, 5}
    assert {releases[k]["phase"] for k in range(1, 6)} <= {"score", "standalone"}
    # no actor lives in the standalone phase: those still alive when it begins are released then,
    # one after another (each record lists those left), none is made in it, and the trainings get
    # the CPUs the actors held
    final = [i for i, h in enumerate(history) if h["phase"] == "standalone"]
    assert all(history[i]["event"] == "release" for i in final)
    assert final == list(range(len(history) - len(final), len(history)))
    assert history[-1]["alive"] == []
    names = ray_session.util.list_named_actors(all_namespaces=True)
    assert not [n for n in names if "few/supernet" in str(n)]
    summary = few_run.summary.iloc[0]
    # every supernet's steps count: the one-shot supernet's and the 5 sub-supernets' 8 each
    assert summary["supernet_steps"] == few_run.manifest["supernet"]["total_steps"] + 5 * 8


def test_a_cap_on_live_actors_queues_sub_supernets_with_the_same_result(ray_session, few_run, tmp_path):
    from raynas.driver import search

    capped = json.loads(json.dumps(FEW))
    capped["resources"] = {"max_actors": 2}
    run = search("rsps", overrides=capped, storage=tmp_path, name="capped", verbose=0)
    assert run.status == "complete", run.message
    history = run.manifest["few_shot"]["actors"]
    assert max(len(h["alive"]) for h in history) <= 2 and run.manifest["few_shot"]["max_actors"] == 2
    # sub-supernets released after their training are made again, from their snapshots, to score
    starts = [h["supernet"] for h in history if h["event"] == "start"]
    assert len(starts) > 6 and set(starts) == {0, 1, 2, 3, 4, 5}
    pd.testing.assert_frame_equal(_comparable(run.candidates), _comparable(few_run.candidates))
    assert run.summary.iloc[0]["final_arch"] == few_run.summary.iloc[0]["final_arch"]


def test_a_gpu_request_is_a_demand_the_autoscaler_sees(ray_session):
    from ray.autoscaler.v2.sdk import get_cluster_status

    from raynas.actor import SupernetActor
    from raynas.cluster import pending_demands

    actor = SupernetActor.options(num_cpus=0.5, num_gpus=1, name="demand-probe", namespace="raynas").remote(
        total_steps=1)
    try:
        deadline = time.monotonic() + 60
        seen = ""
        while time.monotonic() < deadline and "GPU: 1" not in seen:
            seen = pending_demands()
            time.sleep(0.5)
        assert "{CPU: 0.5, GPU: 1} x1" in seen
        status = get_cluster_status(ray_session.get_runtime_context().gcs_address)
        bundles = [r.bundle for d in status.resource_demands.ray_task_actor_demand for r in d.bundles_by_count]
        assert {"CPU": 0.5, "GPU": 1.0} in bundles
    finally:
        ray_session.kill(actor)


@pytest.mark.slow
def test_sub_supernets_that_cannot_start_fail_the_run_in_one_line_and_it_resumes(ray_session, few_run, tmp_path,
                                                                                 monkeypatch):
    from raynas.driver import resume, search

    real = SupernetActors.options
    # session 1: the sub-supernets ask for a GPU this machine lacks (as if the autoscaler never
    # delivered): the run fails when they have not started within the timeout
    monkeypatch.setattr(SupernetActors, "options",
                        lambda self, k: {**real(self, k), **({"num_gpus": 1.0} if k > 0 else {})})
    overrides = json.loads(json.dumps(FEW))
    overrides["resources"] = {"placement_timeout_s": 5}
    run = search("rsps", overrides=overrides, storage=tmp_path, name="stuck", verbose=0)
    assert run.status == "failed" and "\n" not in run.message
    assert run.message.startswith("supernet actor 1 asked for {CPU: 0.55, GPU: 1} and did not start within 5 s; "
                                  "the cluster has 1 node {CPU: 4} and no autoscaler"), run.message
    assert "Ray's pending demands: {CPU: 0.55, GPU: 1} x5" in run.message  # all 5 asked for at once
    assert run.summary.iloc[0]["status"] == "failed"
    # session 2: a sub-supernet's __init__ raises: one line, the actor's own error
    real_kwargs = SupernetActors.worker_kwargs
    monkeypatch.setattr(SupernetActors, "options", real)
    monkeypatch.setattr(SupernetActors, "worker_kwargs",
                        lambda self, k: {**real_kwargs(self, k), **({"bn_mode": "broken"} if k == 2 else {})})
    run = resume(run.run_dir, verbose=0)
    assert run.status == "failed" and run.message.startswith("supernet actor 2 could not start: bn_mode='broken'")
    # session 3: the cluster is fine again: the run goes on and ends as if never stopped
    monkeypatch.setattr(SupernetActors, "worker_kwargs", real_kwargs)
    run = resume(run.run_dir, verbose=0)
    assert run.status == "complete", run.message
    assert run.summary.iloc[0]["sessions"] == 3
    pd.testing.assert_frame_equal(_comparable(run.candidates), _comparable(few_run.candidates))


def test_a_unit_waiting_for_a_node_the_cluster_lacks_fails_the_run(ray_session, tmp_path, monkeypatch):
    import raynas.trainable
    from raynas.driver import search

    real = raynas.trainable.unit_resources
    # the standalone trainings ask for a GPU no node has (the trainable's resources are
    # computed in this driver, from the module function)
    monkeypatch.setattr(raynas.trainable, "unit_resources",
                        lambda unit, **kw: {**real(unit, **kw), **({"GPU": 1.0} if unit["kind"] == "standalone" else {})})
    overrides = {"searcher": {"num_samples": 2, "standalone": {"C": 4, "N": 1, "epochs": 1, "batch_size": 128}},
                 "resources": {"placement_timeout_s": 3}}
    started = time.monotonic()
    run = search("random", overrides=overrides, storage=tmp_path, name="unplaced", verbose=0)
    assert run.status == "failed" and "\n" not in run.message
    assert "(standalone) asked for {CPU: 1, GPU: 1} and could not be placed within 3 s" in run.message
    assert "the cluster has 1 node {CPU: 4}" in run.message
    assert time.monotonic() - started < 120
    assert (run.run_dir / "searcher-state.pkl").exists()  # kept: a resume goes on


def test_gpus_flag_is_checked_before_anything_starts(tmp_path, capsys):
    from raynas.cli import _check_search, build_parser, main

    assert main(["search", "--gpus", "-1", "--storage", str(tmp_path)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("raynas search:")]
    assert len(errors) == 1 and "--gpus: '-1': expected a number of GPUs >= 0" in errors[0]
    args = build_parser().parse_args(["search", "--gpus", "0.5", "--storage", str(tmp_path), "--set", "supernet.epochs=1"])
    assert _check_search(args)["resources"] == {"gpus": 0.5}
    args = build_parser().parse_args(["search", "--resume", str(tmp_path), "--gpus", "2"])
    assert _check_search(args) == {"resources": {"gpus": 2.0}}  # a resume may change the GPUs it asks for
    assert not list(tmp_path.iterdir())
