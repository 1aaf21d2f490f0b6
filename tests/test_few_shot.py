"""Few-shot NAS: sub-supernets as parallel actors, each initialised from the one-shot supernet."""

import json

import pandas as pd
import pytest

from raynas.driver import search
from raynas.rowlog import read_rows
from raynas.spaces import get_space

FEW = {
    "supernet": {"epochs": 2, "valid_batch_size": 64, "C": 4, "N": 1},
    "searcher": {"chunk_steps": 16, "num_candidates": 10, "cohort_size": 5, "top_k": 1, "few_shot": "1<-0",
                 "few_shot_steps": 8, "standalone": {"C": 4, "N": 1, "epochs": 1, "batch_size": 128}},
}


# the end-to-end few-shot rsps search (each candidate on its region, versions, inheritance from the
# one-shot snapshot) is tests/test_protocols.py's module run, under the official protocol's settings


def test_few_shot_needs_a_one_shot_method(tmp_path):
    from raynas.driver import UsageError, make_config

    with pytest.raises(UsageError, match="no few-shot variant"):
        make_config("random", overrides={"searcher": {"few_shot": "0"}})


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
