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


@pytest.fixture(scope="session")
def tiny_rsps_run(ray_session, tmp_path_factory):
    """One finished :data:`TINY` rsps search (digits, seed 0), alone in its storage folder: the run
    that test_search_e2e.py and test_ranking.py read (made once for the session; nothing may write
    beside it or into it)."""
    from raynas.driver import search

    return search("rsps", dataset="digits", overrides=TINY, storage=tmp_path_factory.mktemp("tiny"), name="rsps",
                  seed=0, verbose=0)


#: a tiny few-shot rsps (edge 1<-0: 5 sub-supernets of 8 steps each), default resources
FEW = {
    "supernet": {"epochs": 2, "valid_batch_size": 64, "C": 4, "N": 1},
    "searcher": {"chunk_steps": 16, "num_candidates": 10, "cohort_size": 5, "top_k": 1, "few_shot": "1<-0",
                 "few_shot_steps": 8, "standalone": {"C": 4, "N": 1, "epochs": 1, "batch_size": 128}},
}


@pytest.fixture(scope="session")
def few_shot_run(ray_session, tmp_path_factory):
    """One uninterrupted :data:`FEW` search (seed 0) on the session's Ray: the reference that the
    runs of test_resources.py and test_storage_e2e.py (capped, stuck and resumed, killed and resumed
    from S3) must equal, made once for the session rather than once per module."""
    from raynas.driver import search

    return search("rsps", overrides=FEW, storage=tmp_path_factory.mktemp("few"), name="few", verbose=0)


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-protocol server (moto's) on localhost for the session, and the environment that
    points pyarrow's S3 filesystem (and every process started with it) at it. Yields that
    environment; each test makes its own bucket with :func:`make_bucket`."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    try:
        with pytest.MonkeyPatch.context() as patch:  # the environment is put back after the session
            for key, value in env.items():
                patch.setenv(key, value)
            yield env
    finally:
        server.stop()


def make_bucket(name: str) -> str:
    """Create bucket ``name`` on the test S3 server (:func:`s3_server` must be active); returns ``s3://name``."""
    import boto3

    boto3.client("s3").create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test: tiny steps' threads only contend on a shared 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
