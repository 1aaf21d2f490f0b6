"""Every method's user-settable searcher arguments, declared without Ray, torch or the searchers.

One frozen dataclass per method (the ``searcher`` section of a configuration, ``--set
searcher.KEY=VALUE``), built like :class:`raynas.settings.SupernetSettings`: each field is a
keyword-only argument of the method's searcher constructor with its default, its check (type and
bound) and a one-line description. The classes share bases as the searchers do
(:class:`WorkUnitArguments` <- :class:`SupernetArguments` <- :class:`OneShotArguments`, like
``WorkUnitSearcher`` <- ``SupernetSearcher`` <- ``OneShotSearcher`` in :mod:`raynas.searchers.base`),
and carry the searcher's traits that :func:`raynas.settings.make_config` needs (``uses_supernet``,
``takes_candidates``, ``supports_few_shot``), so a bad searcher setting is refused in a fresh
process in well under a second, before the searcher module (``ray.tune``, torch) is imported.

What this checks: known keys (the nearest valid one named), each value's type and bound. What it
does not: rules between fields (``top_k <= num_candidates``...), the arch strings and edges
themselves, a standalone recipe's keys: :func:`raynas.settings.check_searcher` constructs the
searcher once after these checks pass. The arguments the driver passes itself
(:data:`raynas.settings.DRIVER_KEYS`: ``space``, ``seed``, ``max_concurrent``, ``total_steps``) are
not declared. tests/test_searcher_arguments.py keeps each declaration equal to its searcher's
constructor (names and defaults) and the presets (:mod:`raynas.searchers.presets`) valid under it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

from raynas.errors import UsageError
from raynas.settings import (DRIVER_KEYS, _Bad, _bool, _choice, _expecting, _int, _number, _optional, _Section,
                             setting, short_repr, unknown_key)


# --- value checks the searchers need beyond raynas.settings' --------------------------------------
def _dict(value):
    if not isinstance(value, dict):
        raise _Bad("a dict of KEY: VALUE")
    return value


_expecting(_dict, "a dict of KEY: VALUE")


def _name_or_spec(value):
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        return value
    raise _Bad("a policy name (str) or a spec dict with a 'name'")


_expecting(_name_or_spec, "a policy name (str) or a spec dict with a 'name'")


def _archs(value):
    if isinstance(value, (list, tuple)) and value and all(isinstance(a, str) for a in value):
        return list(value)
    raise _Bad("a non-empty list of arch strings")


_expecting(_archs, "a non-empty list of arch strings")


def _edges(value):
    """Edges of a few-shot split as the space parses them (``"1<-0,3<-2"``, ``"0,5"`` or a list of
    names/indices); the space's ``parse_edges`` checks them in full."""
    if isinstance(value, str) or (isinstance(value, (list, tuple)) and value
                                  and all(isinstance(e, str) or (isinstance(e, int) and not isinstance(e, bool))
                                          for e in value)):
        return value
    raise _Bad("edges, e.g. '1<-0,3<-2' or '0,5' or [0, 5]")


_expecting(_edges, "edges, e.g. '1<-0,3<-2' or '0,5' or [0, 5]")


def _pair(inner: Callable[[Any], Any]) -> Callable[[Any], tuple]:
    expected = f"two numbers, each {getattr(inner, 'expected', 'a value')}"

    def check(value):
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise _Bad(expected)
        try:
            return tuple(inner(v) for v in value)
        except _Bad:
            raise _Bad(expected) from None
    return _expecting(check, expected)


def _standalone():
    return setting(None, _optional(_dict, "the benchmark's recipe"),
                   "recipe of the standalone trainings (C, N, epochs, batch_size, lr...), over the benchmark's; "
                   "seeds: [777, ...] (each final pick once per seed, --final-seeds), train_split: 'train' or "
                   "'train+valid' (--final-train full)")


def _budget(value):
    if value == "equal":
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not value > 0:
        raise _Bad("'equal' or a fraction > 0")
    return float(value)


_expecting(_budget, "'equal' or a fraction > 0")


def _score_batches(default: int | None):
    return setting(default, _optional(_int(1), "the whole valid split"), "valid batches each candidate is scored on")


# --- the declarations --------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkUnitArguments(_Section):
    """Shared by every method (``WorkUnitSearcher``): no user settings of its own; the driver sets
    ``space``, ``seed`` and ``max_concurrent``."""

    section = "searcher"
    #: the method's name (a key of raynas.searchers.SEARCHERS)
    method = ""
    #: the searcher trains a supernet (``supernet.*`` settings apply)
    uses_supernet = True
    #: the searcher scores a given list of archs (``candidates=[...]``, ``raynas search --candidates``)
    takes_candidates = False
    #: the searcher has a few-shot variant (``few_shot=EDGES``, ``raynas search --few-shot``)
    supports_few_shot = False
    #: the method learns on the score split while training (SETN's alpha step): it may not score on
    #: test nor train its weights on train+valid (raynas.settings refuses both)
    learns_on_score_split = False
    #: constructor arguments a user may not set for this method: name -> why (one line)
    refused = {}

    @classmethod
    def check(cls, values: dict | None) -> dict:
        """The keys first (a driver's key, a refused one, an unknown one: the nearest valid key and
        all of them, sorted), then each value's type and bound."""
        values = dict(values or {})
        for key, value in values.items():
            if key in DRIVER_KEYS:
                raise UsageError(f"searcher.{key} is not a searcher setting: the search sets it from {DRIVER_KEYS[key]}")
            if key in cls.refused:
                raise UsageError(f"searcher.{key}={short_repr(value)}: not a {cls.method} setting; {cls.refused[key]}")
            if key not in cls.keys():
                raise UsageError(unknown_key(cls.section, key, sorted(cls.keys())))
        return super().check(values)

    @classmethod
    def describe(cls) -> list[dict]:
        """One row per setting: ``name``, ``type``, ``default``, ``expected`` (the check), ``doc``."""
        return [{"name": f.name, "type": f.type, "default": f.default,
                 "expected": getattr(f.metadata["check"], "expected", ""), "doc": f.metadata["doc"]}
                for f in dataclasses.fields(cls)]


@dataclass(frozen=True)
class SupernetArguments(WorkUnitArguments):
    """The one-shot pipeline's shared arguments (``SupernetSearcher``)."""

    standalone: dict | None = _standalone()


@dataclass(frozen=True)
class OneShotArguments(SupernetArguments):
    """Train, score candidates in cohorts, train the best standalone (``OneShotSearcher``)."""

    supports_few_shot = True
    chunk_steps: int = setting(500, _int(1), "supernet steps per train unit")
    num_candidates: int = setting(100, _int(1), "archs scored on the trained supernet")
    cohort_size: int = setting(100, _int(1), "candidates per score unit")
    score_batches: int | None = _score_batches(1)
    top_k: int = setting(1, _int(0), "best scored candidates trained standalone (0: score only, a ranking run)")
    few_shot: list | str | None = setting(None, _optional(_edges, "one-shot"),
                                          "few-shot NAS: split the supernet on these edges, one sub-supernet per region")
    few_shot_steps: int | None = setting(None, _optional(_int(1), "from sub_supernet_budget"),
                                         "training steps of each few-shot sub-supernet")
    sub_supernet_budget: float | str = setting("equal", _budget,
                                               "each sub-supernet's steps: 'equal' (total_steps / regions: few-shot "
                                               "costs what one-shot costs) or this fraction of total_steps each "
                                               "(the official few-shot code: 0.5)")
    few_shot_variant: str = setting("continue", _choice("continue", "independent"),
                                    "sub-supernets start from the trained one-shot supernet ('continue'), or each "
                                    "is its own search from scratch ('independent': the official few-shot SETN)")


@dataclass(frozen=True)
class RSPSArguments(OneShotArguments):
    """RSPS (``RSPSSearcher``): uniform single paths, random (or given) candidates."""

    method = "rsps"
    takes_candidates = True
    # OneShotSearcher's ``policy``, declared here: SETN trains with its own (SETNArguments.refused)
    policy: dict | str = setting("uniform", _name_or_spec, "the supernet's training policy (name or spec dict)")
    candidates: list | None = setting(None, _optional(_archs, "num_candidates random archs"),
                                      "the archs to score instead of random ones")
    num_candidates: int | None = setting(100, _optional(_int(1), "the number of candidates given"),
                                         "random archs scored on the trained supernet")


@dataclass(frozen=True)
class SETNArguments(OneShotArguments):
    """SETN (``SETNSearcher``): uniform weight steps and Adam steps on alpha; template top-K scored."""

    method = "setn"
    learns_on_score_split = True
    refused = {"policy": "SETN trains with its own policy 'setn': leave it out"}
    arch_lr: float = setting(3e-4, _number(above=0), "Adam learning rate of alpha")
    arch_betas: tuple = setting((0.5, 0.999), _pair(_number(at_least=0, below=1)), "Adam betas of alpha")
    arch_weight_decay: float = setting(1e-3, _number(at_least=0), "Adam weight decay of alpha")
    arch_eps: float = setting(1e-8, _number(above=0), "Adam epsilon of alpha")


@dataclass(frozen=True)
class EvNASArguments(SupernetArguments):
    """EvNAS (``EvNASSearcher``): a population evolved on a shared supernet."""

    method = "evnas"
    population_size: int = setting(50, _int(1), "individuals per generation")
    generations: int = setting(50, _int(1), "generations (each trains total_steps / generations steps)")
    tournament_size: int = setting(10, _int(1), "individuals per tournament, <= population_size")
    num_elites: int = setting(1, _int(0), "fittest kept unchanged, < population_size")
    mutation_rate: float = setting(0.1, _number(at_least=0, at_most=1), "chance that an edge's genes are redrawn")
    score_batches: int | None = _score_batches(None)
    supernet: int = setting(0, _int(0), "id of the supernet it trains and scores")


@dataclass(frozen=True)
class NAOArguments(SupernetArguments):
    """Balanced one-shot NAO (``NAOSearcher``): size-balanced training, EPD-generated pools."""

    method = "nao"
    iterations: int = setting(4, _int(1), "train/score/generate iterations (= supernet.lr_restarts)")
    seed_archs: int = setting(1000, _int(1), "uniform archs of the first pool")
    new_archs: int = setting(300, _int(1), "archs the EPD generates per iteration")
    top_archs: int = setting(100, _int(1), "best archs the EPD moves from")
    max_step_size: int = setting(50, _int(1), "largest lambda of the EPD's gradient steps")
    chunk_steps: int = setting(500, _int(1), "supernet steps per train unit")
    cohort_size: int = setting(100, _int(1), "archs per score unit")
    score_batches: int | None = _score_batches(1)
    rescore: bool = setting(True, _bool, "score the whole cumulative pool each iteration (else only new archs)")
    size_floor: float | None = setting(None, _optional(_number(at_least=0), "the smallest parametric arch's size"),
                                       "parameter-count floor of the balanced sampling weights")
    top_k: int = setting(5, _int(1), "best scored archs trained standalone, <= seed_archs")
    epd_epochs: int = setting(1000, _int(0), "Adam epochs of each EPD fit")
    epd_batch_size: int = setting(100, _int(1), "EPD mini-batch")
    epd_lr: float = setting(1e-3, _number(above=0), "EPD Adam learning rate")
    epd_grad_clip: float = setting(5.0, _number(above=0), "EPD gradient norm clip")
    trade_off: float = setting(0.8, _number(at_least=0, at_most=1), "EPD loss: trade_off * MSE + (1 - trade_off) * NLL")
    valid_fraction: float = setting(0.1, _number(at_least=0, below=1), "share of the EPD's pairs held out to measure it")
    expand: int = setting(10, _int(1), "isomorphic copies per arch in the EPD's data, itself included")
    emb_size: int = setting(32, _int(1), "EPD embedding width")
    hidden_size: int = setting(64, _int(1), "EPD LSTM width")


@dataclass(frozen=True)
class RandomArguments(WorkUnitArguments):
    """Random search (``RandomSearcher``): archs trained standalone, no supernet."""

    method = "random"
    uses_supernet = False
    num_samples: int = setting(100, _int(1), "distinct random archs trained standalone")
    standalone: dict | None = _standalone()


#: TE-NAS's proxy-network inits (raynas.proxies.INITS, which imports torch)
TENAS_INITS = ("default", "kaiming")


@dataclass(frozen=True)
class TENASArguments(WorkUnitArguments):
    """TE-NAS (``TENASSearcher``): training-free pruning by NTK and linear-region proxies, no supernet."""

    method = "tenas"
    uses_supernet = False
    repeats: int = setting(3, _int(1), "inits and batches each proxy is averaged over")
    ntk_batch: int = setting(72, _int(2), "train images of the NTK batch")
    region_samples: int = setting(1000, _int(1), "crops per linear-region batch")
    region_batches: int = setting(3, _int(1), "linear-region batches")
    ntk_C: int = setting(3, _int(1), "channels of the NTK network")
    ntk_N: int = setting(1, _int(1), "cells per stage of the NTK network")
    precision: int = setting(3, _int(1), "significant figures the proxies are ranked on")
    init: str = setting("default", _choice(*TENAS_INITS),
                        "init of the proxies' networks: PyTorch's module defaults (what the official code ran, "
                        "behind the paper's 93.9) or the paper's Kaiming normal")
    masks_per_unit: int | None = setting(None, _optional(_int(1), "spread each round over max_concurrent units"),
                                         "pruned supernets per proxy unit")
    standalone: dict | None = _standalone()


#: method -> its declaration (the keys of raynas.searchers.SEARCHERS)
ARGUMENTS: dict[str, type[WorkUnitArguments]] = {
    cls.method: cls for cls in (RSPSArguments, RandomArguments, TENASArguments, EvNASArguments, SETNArguments,
                                NAOArguments)
}


def get_arguments(method: str) -> type[WorkUnitArguments]:
    """The declaration of ``method``'s searcher arguments (``ValueError`` if it has none)."""
    if method not in ARGUMENTS:
        raise ValueError(f"no searcher arguments declared for method {method!r}; expected one of: "
                         f"{', '.join(sorted(ARGUMENTS))}")
    return ARGUMENTS[method]


__all__ = ["ARGUMENTS", "get_arguments", "WorkUnitArguments", "SupernetArguments", "OneShotArguments",
           "RSPSArguments", "SETNArguments", "EvNASArguments", "NAOArguments", "RandomArguments", "TENASArguments"]
