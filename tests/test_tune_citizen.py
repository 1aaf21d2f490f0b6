"""A raynas searcher in a user's own ``tune.Tuner``, on a real local Ray: the work-unit trainable
wrapped as the driver wraps it, the supernet actor started by hand, a ``ConcurrencyLimiter``.

It finishes (rsps, setn); a metric/mode or a finite ``num_samples`` that Tune tells it about is
refused at ``fit()``'s start with one line; with an empty ``param_space`` Tune tells it nothing,
and a search Tune stops early says so in ``outcome()``; under ASHA (which stops score cohorts
early) the short cohorts are re-issued and the search ends with every candidate scored as
without ASHA.
"""

import pytest

from raynas.searchers import get_searcher_class, tune_config
from tests.conftest import TINY

SEARCHER = dict(TINY["searcher"], top_k=1, standalone=dict(TINY["searcher"]["standalone"], epochs=1))
SUPERNET = dict(TINY["supernet"], C=4, N=1, epochs=2)  # 32 steps on digits: 2 chunks of at most 20


def _setup(method, tmp_path, name, seed=0):
    """The actor of supernet 0, the searcher and the trainable of one user-made run."""
    import ray

    from raynas.actor import create_supernet_actor
    from raynas.supernets import work_unit_trainable

    run_id = f"citizen-{name}-{tmp_path.name}"
    worker = dict(SUPERNET, space="nb201", dataset="digits", seed=seed,
                  snapshot_dir=str(tmp_path / "supernets" / "0"))
    actor = create_supernet_actor(run_id, 0, worker, num_cpus=1, num_gpus=0)
    total_steps = ray.get(actor.info.remote())["total_steps"]
    searcher = get_searcher_class(method)(**SEARCHER, total_steps=total_steps, seed=seed, max_concurrent=2)
    run = {"run_id": run_id, "space": "nb201", "dataset": "digits", "data_dir": None, "data_options": {},
           "run_dir": str(tmp_path)}
    trainable = work_unit_trainable(run, {"trial_cpus": 0.25, "standalone_cpus": 1.0}, standalone_gpus=0)
    return actor, searcher, trainable


def _run_config(tmp_path, name):
    from ray import tune

    return tune.RunConfig(name=name, storage_path=str(tmp_path / "tune"), verbose=0)


def _check_finished(grid, searcher):
    outcome = searcher.outcome()
    assert grid.num_errors == 0
    assert outcome["finished"] and outcome["failure"] is None and outcome["phase"] == "done", outcome
    assert set(searcher.scores_) == set(searcher.candidates_)
    assert len(searcher.candidates_) == SEARCHER["num_candidates"]
    assert outcome["final_arch"] in searcher.candidates_
    assert len(grid) == len(outcome["completed"])  # one trial per unit: no unit ran twice
    return outcome


@pytest.fixture(scope="module")
def fifo_rsps(ray_session, tmp_path_factory):
    """rsps in a hand-written Tuner: TuneConfig(ConcurrencyLimiter(searcher), num_samples=-1)."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    tmp_path = tmp_path_factory.mktemp("fifo")
    actor, searcher, trainable = _setup("rsps", tmp_path, "fifo")
    tuner = tune.Tuner(trainable, run_config=_run_config(tmp_path, "fifo"),
                       tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=2),
                                                   num_samples=-1, reuse_actors=True))
    grid = tuner.fit()
    ray_session.kill(actor)
    return grid, searcher


def test_rsps_finishes_in_a_hand_written_tuner(fifo_rsps):
    grid, searcher = fifo_rsps
    outcome = _check_finished(grid, searcher)
    assert [k for k in outcome["completed"] if k.startswith("train/")] == ["train/0/20", "train/0/32"]
    assert searcher.max_concurrent == 2  # the limiter's limit, negotiated: one limit


def test_setn_finishes_in_a_tuner_from_tune_config_with_a_plain_param_space(ray_session, tmp_path):
    from ray import tune

    actor, searcher, trainable = _setup("setn", tmp_path, "setn")
    # a non-empty param_space: Tune calls set_search_properties; plain values ride along in every unit
    tuner = tune.Tuner(trainable, param_space={"note": "mine"}, run_config=_run_config(tmp_path, "setn"),
                       tune_config=tune_config(searcher, reuse_actors=True))
    grid = tuner.fit()
    ray_session.kill(actor)
    _check_finished(grid, searcher)
    assert all(r.config["note"] == "mine" for r in grid)
    assert searcher.alpha(0) is not None  # the actor's SETN policy exported its alpha


def test_asha_stops_score_cohorts_and_the_search_still_scores_every_candidate(ray_session, fifo_rsps, tmp_path,
                                                                               monkeypatch):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    # train rows carry no valid_acc: without this Tune's strict metric check stops the run at once
    monkeypatch.setenv("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    actor, searcher, trainable = _setup("rsps", tmp_path, "asha")
    asha = ASHAScheduler(metric="valid_acc", mode="max", grace_period=1, reduction_factor=2)
    tuner = tune.Tuner(trainable, run_config=_run_config(tmp_path, "asha"),
                       tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=2),
                                                   num_samples=-1, reuse_actors=True, scheduler=asha))
    grid = tuner.fit()
    ray_session.kill(actor)
    outcome = searcher.outcome()
    assert outcome["finished"] and outcome["failure"] is None, outcome
    assert set(searcher.scores_) == set(searcher.candidates_)
    # the stopped cohorts' missing archs were scored by re-issued units, each on its own batches
    # at the cohort's version: the scores (and so the result) are those of the run without ASHA
    fifo = fifo_rsps[1]
    assert searcher.candidates_ == fifo.candidates_
    assert searcher.scores_ == pytest.approx(fifo.scores_, abs=1e-6)
    assert searcher.picks_ == fifo.picks_
    assert any("/rest" in key for key in outcome["completed"]), "ASHA stopped no cohort: the test lost its point"
    assert grid.num_errors == 0


def test_metric_or_finite_num_samples_is_refused_at_fit_start(ray_session, tmp_path):
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    def trainable(config):  # never runs: the refusal comes first
        raise AssertionError("a refused search started a trial")

    for kwargs, message in [(dict(metric="valid_acc", mode="max"), "metric='valid_acc', mode='max'; a raynas"),
                            (dict(num_samples=1), "num_samples=1; a raynas searcher ends the experiment itself")]:
        searcher = get_searcher_class("rsps")(**SEARCHER, total_steps=32)
        kwargs.setdefault("num_samples", -1)
        tuner = tune.Tuner(trainable, param_space={"note": 1}, run_config=_run_config(tmp_path, "refused"),
                           tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=2),
                                                       **kwargs))
        with pytest.raises(ValueError, match=message):
            tuner.fit()
    with pytest.raises(ValueError, match="metric='valid_acc'"):
        tune_config(get_searcher_class("setn")(**SEARCHER, total_steps=32), metric="valid_acc", mode="max")


def test_num_samples_1_without_param_space_stops_unfinished_and_outcome_says_so(ray_session, tmp_path):
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    actor, searcher, trainable = _setup("rsps", tmp_path, "one")
    # Tune's default num_samples=1 and no param_space: Tune tells the searcher nothing and stops
    # after one unit; the searcher cannot know, its outcome shows the search unfinished
    tuner = tune.Tuner(trainable, run_config=_run_config(tmp_path, "one"),
                       tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=2)))
    grid = tuner.fit()
    ray_session.kill(actor)
    outcome = searcher.outcome()
    assert len(grid) == 1 and not outcome["finished"] and outcome["failure"] is None
    assert outcome["completed"] == ["train/0/20"] and outcome["progress"] == "phase train: supernet 0 at version 20"
