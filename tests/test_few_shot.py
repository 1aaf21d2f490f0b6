"""Few-shot NAS: sub-supernets as parallel actors, each initialised from the one-shot supernet."""

import json
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch

from raynas.driver import search
from raynas.rowlog import read_rows
from raynas.spaces import get_space

FEW = {
    "supernet": {"epochs": 2, "valid_batch_size": 64, "C": 4, "N": 1},
    "searcher": {"chunk_steps": 16, "num_candidates": 10, "cohort_size": 5, "top_k": 1, "few_shot": "1<-0",
                 "few_shot_steps": 8, "standalone": {"C": 4, "N": 1, "epochs": 1, "batch_size": 128}},
}


def test_few_shot_rsps_scores_each_candidate_on_its_region(ray_session, tmp_path):
    run = search("rsps", overrides=FEW, storage=tmp_path, name="few", verbose=0)
    manifest = json.loads((run / "manifest.json").read_text())
    few = manifest["few_shot"]
    assert few["edges"] == [0] and few["sub_supernets"] == 5 and few["steps"] == 8
    candidates = pd.read_parquet(run / "candidates.parquet")
    space = get_space("nb201")
    assert len(candidates) == 10
    for arch, supernet, version in zip(candidates["arch"], candidates["supernet"], candidates["supernet_version"]):
        region = space.parse(arch).ops[0]  # split on edge 1<-0: region k holds op k there
        assert supernet == region + 1 and version == 8
    parent = run / "supernets" / "0" / "snapshot.pt"
    assert torch.load(parent, weights_only=True)["version"] == manifest["supernet"]["total_steps"]
    trained_subs = {int(k) for k in candidates["supernet"]}
    for k in range(1, 6):
        state = torch.load(run / "supernets" / str(k) / "snapshot.pt", weights_only=True)
        assert state["version"] == 8 and state["initialized_from"] == str(parent)
    assert trained_subs <= set(range(1, 6))
    summary = pd.read_parquet(run / "summary.parquet").iloc[0]
    assert summary["final_arch"] in set(candidates["arch"])
    # every supernet's steps: the one-shot supernet's and each sub-supernet's
    assert summary["supernet_steps"] == manifest["supernet"]["total_steps"] + 5 * 8


def test_few_shot_needs_a_one_shot_method(tmp_path):
    from raynas.driver import UsageError, make_config

    with pytest.raises(UsageError, match="no few-shot variant"):
        make_config("random", overrides={"searcher": {"few_shot": "0"}})


TWO_NODES = textwrap.dedent(
    """
    import json, os, sys
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray
    from ray.cluster_utils import Cluster
    from raynas.driver import search

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3})
    cluster.add_node(num_cpus=3)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="raynas", log_to_driver=False)
    overrides = json.loads(sys.argv[2])
    run = search("rsps", overrides=overrides, storage=sys.argv[1], name="two", address=cluster.address, verbose=0)
    manifest = json.loads((run / "manifest.json").read_text())
    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    print(json.dumps({"nodes": sorted(nodes), "actor_nodes": manifest["few_shot"]["nodes"], "run": str(run)}))
    ray.shutdown()
    cluster.shutdown()
    """
)


def test_sub_supernets_spread_over_a_two_node_cluster(tmp_path):
    overrides = json.loads(json.dumps(FEW))
    overrides["searcher"]["few_shot_steps"] = 4
    result = subprocess.run([sys.executable, "-c", TWO_NODES, str(tmp_path), json.dumps(overrides)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    sub_nodes = out["actor_nodes"][1:]
    assert len(sub_nodes) == 5 and set(sub_nodes) == set(out["nodes"])  # SPREAD: both nodes hold sub-supernets
    candidates = pd.read_parquet(f"{out['run']}/candidates.parquet")
    assert len(candidates) == 10 and candidates["supernet"].between(1, 5).all()


def test_few_shot_setn_takes_each_regions_template_from_its_own_alpha(ray_session, tmp_path):
    import numpy as np

    from raynas.searchers.setn import template_top_k

    few = json.loads(json.dumps(FEW))
    few["searcher"]["num_candidates"] = 2
    few["searcher"].pop("cohort_size")
    run = search("setn", overrides=few, storage=tmp_path, name="few-setn", verbose=0)
    candidates = pd.read_parquet(run / "candidates.parquet")
    space = get_space("nb201")
    rows = sorted((r for r in read_rows(run.run_dir) if r["kind"] == "train"), key=lambda r: r["version"])
    for k, region in enumerate(space.split([0]), start=1):
        alpha = [r["alpha"] for r in rows if r["supernet"] == k][-1]
        expected = {str(space.arch(ops)) for ops in template_top_k(np.asarray(alpha), 2, region.allowed_ops)}
        assert set(candidates.loc[candidates["supernet"] == k, "arch"]) == expected
    assert len(candidates) == 10
