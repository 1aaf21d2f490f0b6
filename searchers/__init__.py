"""One Ray Tune searcher per NAS method, from a registry by method name.

``get_searcher_class("rsps")`` imports lazily (as Ray Tune's own search registry does), so
listing the methods costs nothing and one broken method does not break the others.

A raynas searcher in your own ``tune.Tuner``: build the ``TuneConfig`` with :func:`tune_config`,
which gives what a raynas searcher needs (it ends the experiment itself, so ``num_samples=-1``;
no metric/mode: its rows carry no single metric; no scheduler: units must run to their end;
the searcher's own concurrency limit through ``ConcurrencyLimiter``) and refuses, with one line,
the arguments it cannot honour::

    from ray import tune
    from raynas.searchers import get_searcher_class, tune_config

    searcher = get_searcher_class("rsps")(total_steps=480, chunk_steps=160, num_candidates=30)
    tuner = tune.Tuner(trainable, tune_config=tune_config(searcher, reuse_actors=True))
    tuner.fit()
    print(searcher.outcome())  # finished? failure? final_arch, phase, progress

``trainable``: the work-unit trainable with the run's supernet actors started (see
``raynas.driver``). Tune tells a searcher its settings only when ``param_space`` is non-empty;
then a bad ``num_samples``/``metric``/``stop`` is refused at ``fit()``'s start. With an empty
``param_space`` and a TuneConfig built by hand, a search that Tune stops early cannot know it:
``searcher.outcome()["finished"]`` stays ``False`` (raynas's own lifecycle marks such a run
``interrupted``).
"""

from __future__ import annotations

import importlib

#: method name -> "module:Class" inside raynas.searchers
SEARCHERS: dict[str, str] = {
    "rsps": "rsps:RSPSSearcher",
    "random": "random_search:RandomSearcher",
    "tenas": "tenas:TENASSearcher",
    "evnas": "evnas:EvNASSearcher",
    "setn": "setn:SETNSearcher",
    "nao": "nao:NAOSearcher",
}


def method_names() -> list[str]:
    return sorted(SEARCHERS)


def _module(method: str):
    if method not in SEARCHERS:
        raise ValueError(f"unknown method {method!r}; expected one of: {', '.join(method_names())}")
    return importlib.import_module(f"raynas.searchers.{SEARCHERS[method].split(':')[0]}")


def get_searcher_class(method: str):
    return getattr(_module(method), SEARCHERS[method].split(":")[1])


def get_presets(method: str) -> dict:
    """The method's presets: name -> {"supernet": {...}, "searcher": {...}}. Read from
    :mod:`raynas.searchers.presets` (no ``ray``, no torch); a method registered without an entry
    there falls back to its module's ``PRESETS`` (importing it)."""
    from raynas.searchers.presets import PRESETS

    if method in SEARCHERS and method in PRESETS:
        return PRESETS[method]
    return _module(method).PRESETS


def tune_config(searcher, *, max_concurrent: int | None = None, **kwargs):
    """A ``tune.TuneConfig`` that runs ``searcher`` (a raynas searcher) to its end: wrapped in a
    ``ConcurrencyLimiter`` of ``max_concurrent`` (default: the searcher's own), ``num_samples=-1``;
    ``kwargs`` go to ``TuneConfig`` (``reuse_actors``, ``trial_name_creator``, ...). ``metric``,
    ``mode``, ``num_samples`` other than -1, a ``scheduler`` other than FIFO, ``search_alg`` and
    ``max_concurrent_trials`` are refused with one line (``ValueError``)."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from raynas.searchers.base import WorkUnitSearcher, check_tune_settings

    if not isinstance(searcher, WorkUnitSearcher):
        raise ValueError(f"tune_config: searcher={type(searcher).__name__}; expected a raynas searcher "
                         f"(get_searcher_class(METHOD)(...), METHOD one of: {', '.join(method_names())})")
    for key in ("search_alg", "max_concurrent_trials"):
        if key in kwargs:
            raise ValueError(f"tune_config: {key}= is set from the searcher; pass max_concurrent=N instead")
    owner = f"tune_config({type(searcher).__name__})"
    check_tune_settings(owner, metric=kwargs.pop("metric", None), mode=kwargs.pop("mode", None),
                        num_samples=kwargs.pop("num_samples", -1), scheduler=kwargs.get("scheduler"))
    limit = searcher.max_concurrent if max_concurrent is None else int(max_concurrent)
    config = tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=limit), num_samples=-1, **kwargs)
    searcher._tune_checked = True  # these settings are the ones it needs
    return config


__all__ = ["SEARCHERS", "method_names", "get_searcher_class", "get_presets", "tune_config"]
