"""One real local Ray instance for the whole test session (ray.init costs seconds and ~1 GiB)."""

import os

import pytest

# A private local instance: no token needed, no dashboard, no usage reporting.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


@pytest.fixture(scope="session")
def ray_session():
    import ray

    if not ray.is_initialized():
        # logical CPUs above the 2 physical ones: light trials and an actor can overlap
        ray.init(address="local", num_cpus=4, namespace="raynas", include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


#: a search small enough for a test (seconds of compute on 2 cores)
TINY = {
    "supernet": {"epochs": 3, "valid_batch_size": 64},
    "searcher": {"chunk_steps": 20, "num_candidates": 6, "cohort_size": 4, "top_k": 2,
                 "standalone": {"C": 4, "N": 1, "epochs": 2, "batch_size": 128}},
}
