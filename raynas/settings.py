"""Typed settings of a search, checked before anything expensive starts (no Ray, no torch here).

A search's configuration has three user sections, each overridable with ``--set SECTION.KEY=VALUE``:

- ``supernet``: :class:`SupernetSettings`, what the supernet actor trains with (the keyword
  arguments of :class:`raynas.worker.SupernetWorker` a user may set);
- ``resources``: :class:`ResourcesSettings`, what the search asks of the cluster;
- ``searcher``: the method's constructor arguments, declared (name, type, default, bound, doc) in
  :mod:`raynas.searchers.arguments` without importing the searcher (tests keep each declaration
  equal to its class's keyword-only parameters, :func:`searcher_parameters`), then checked as a
  whole by constructing the searcher once (:func:`check_searcher`).

:func:`make_config` merges the defaults, the method's preset and the user's overrides, checks every
value and returns the configuration dict the lifecycle runs (``raynas.json``). Every bad input
raises :class:`raynas.errors.UsageError` with one line naming the setting, its value and what is
expected; an unknown key names the nearest valid one.

Cost: the ``supernet``/``resources``/data checks and the searcher section's keys, types and bounds
(and the presets, :mod:`raynas.searchers.presets`) import neither torch nor Ray: a bad one is
refused in a fresh process in well under a second. Only once those pass does the last step, the
searcher's own cross-field rules (``top_k <= num_candidates``...), import the method's module, which
imports ``ray.tune`` (and torch for some methods): seconds in a fresh process, nothing once they
are imported. Ray is never started here.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from raynas.errors import UsageError

#: user sections of a configuration
SECTIONS = ("supernet", "searcher", "resources")
#: searcher arguments the lifecycle passes itself: not user settings (value: where to set it instead)
DRIVER_KEYS = {"space": "--space", "seed": "--seed", "max_concurrent": "resources.max_concurrent",
               "total_steps": "supernet.epochs or supernet.total_steps"}
#: a nominal supernet budget for checking a searcher's arguments (the real one is the actor's)
NOMINAL_TOTAL_STEPS = 10**6
#: SPREAD: sub-supernet actors over the nodes (Ray's SPREAD scheduling); PACK: Ray's default (fill a node first)
PLACEMENT_STRATEGIES = ("SPREAD", "PACK")
BN_MODES = ("batch", "running")  # raynas.worker.BN_MODES (the worker imports torch)
OFFPATH_MODES = ("decay", "frozen")  # raynas.worker.OFFPATH_MODES
#: data roles (raynas.data.TRAIN_SPLITS / SCORE_SPLITS): what weights train on, what candidates are scored on
TRAIN_SPLITS = ("train", "train+valid")
SCORE_SPLITS = ("valid", "test")
#: the supernet settings that are data roles: the driver hands them to the data layer, not the worker
DATA_ROLE_KEYS = ("train_split", "score_split")


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to about ``limit`` characters (user input may be kilobytes long)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 4]}...{text[-1]}"


# --- value checks: each returns the normalised value or raises _Bad(what was expected) -------------
# (each check's ``expected`` attribute says what it takes, for listings; the searcher declarations in
# raynas.searchers.arguments use these too)
class _Bad(Exception):
    pass


def _expecting(check: Callable[[Any], Any], expected: str) -> Callable[[Any], Any]:
    check.expected = expected  # type: ignore[attr-defined]
    return check


def _int(minimum: int | None = None) -> Callable[[Any], int]:
    expected = f"an int{'' if minimum is None else f' >= {minimum}'}"

    def check(value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(expected)
        if minimum is not None and value < minimum:
            raise _Bad(expected)
        return value
    return _expecting(check, expected)


def _number(*, above: float | None = None, at_least: float | None = None, below: float | None = None,
            at_most: float | None = None) -> Callable[[Any], float]:
    bounds = [f"{op} {b:g}" for op, b in ((">", above), (">=", at_least), ("<", below), ("<=", at_most)) if b is not None]
    expected = "a finite number" + (" " + " and ".join(bounds) if bounds else "")

    def check(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _Bad(expected)
        if ((above is not None and not value > above) or (at_least is not None and not value >= at_least)
                or (below is not None and not value < below) or (at_most is not None and not value <= at_most)):
            raise _Bad(expected)
        return float(value)
    return _expecting(check, expected)


def _bool(value):
    if not isinstance(value, bool):
        raise _Bad("True or False")
    return value


_expecting(_bool, "True or False")


def _choice(*choices: str) -> Callable[[Any], str]:
    expected = f"one of {', '.join(map(repr, choices))}"

    def check(value):
        if value not in choices:
            raise _Bad(expected)
        return value
    return _expecting(check, expected)


def _optional(inner: Callable[[Any], Any], meaning: str) -> Callable[[Any], Any]:
    def check(value):
        if value is None:
            return None
        try:
            return inner(value)
        except _Bad as bad:
            raise _Bad(f"{bad}, or None ({meaning})") from None
    return _expecting(check, f"{getattr(inner, 'expected', 'a value')}, or None ({meaning})")


def setting(default: Any, check: Callable[[Any], Any], doc: str) -> Any:
    """A dataclass field with its check and a one-line description."""
    return field(default=default, metadata={"check": check, "doc": doc})


class _Section:
    """Shared by the typed sections: build from a dict, checking keys and values."""

    section: str = ""

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def check(cls, values: dict | None) -> dict:
        """Each key known (else the nearest valid one is named) and each value of its type and
        bound, one field at a time (no cross-field rules): the normalised values. Raises
        :class:`UsageError` with one line for the first bad one. Imports nothing."""
        values = dict(values or {})
        for key in values:
            if key not in cls.keys():
                raise UsageError(unknown_key(cls.section, key, cls.keys()))
        fields = {f.name: f for f in dataclasses.fields(cls)}
        checked = {}
        for key, value in values.items():
            f = fields[key]
            try:
                checked[key] = f.metadata["check"](value)
            except _Bad as bad:
                raise UsageError(f"{cls.section}.{key}={short_repr(value)}: expected {bad}; "
                                 f"{key}: {f.metadata['doc']}") from None
        return checked

    @classmethod
    def from_dict(cls, values: dict | None):
        out = cls(**cls.check(values))
        out._check()
        return out

    def _check(self) -> None:
        pass

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SupernetSettings(_Section):
    """The supernet actor's training settings (defaults: :class:`raynas.worker.SupernetWorker`'s)."""

    section = "supernet"
    C: int = setting(16, _int(1), "channels of the first stage")
    N: int = setting(5, _int(1), "cells per stage")
    bn_mode: str = setting("batch", _choice(*BN_MODES), "BN of the cell ops: batch statistics or running ones")
    offpath: str = setting("decay", _choice(*OFFPATH_MODES),
                           "the weights off a step's path: weight decay and momentum move them every step (decay, "
                           "the official code's PyTorch 1.x zero_grad) or they stay untouched (frozen)")
    batch_size: int = setting(64, _int(1), "training mini-batch")
    valid_batch_size: int = setting(512, _int(1), "scoring mini-batch")
    lr: float = setting(0.025, _number(above=0), "SGD learning rate at the start of the cosine")
    lr_min: float = setting(0.001, _number(at_least=0), "learning rate at the end of the cosine, <= lr")
    momentum: float = setting(0.9, _number(at_least=0), "SGD momentum")
    nesterov: bool = setting(True, _bool, "Nesterov momentum")
    weight_decay: float = setting(5e-4, _number(at_least=0), "SGD weight decay")
    grad_clip: float | None = setting(5.0, _optional(_number(above=0), "no clipping"), "gradient norm clip")
    epochs: float | None = setting(None, _optional(_number(above=0), "set total_steps"),
                                   "schedule length in epochs of the train split (or total_steps)")
    total_steps: int | None = setting(None, _optional(_int(1), "set epochs"), "schedule length in optimizer steps (or epochs)")
    lr_restarts: int = setting(1, _int(1), "equal cosine cycles over the schedule (warm restarts)")
    snapshot_every: int | None = setting(None, _optional(_int(1), "at the end of each train unit only"),
                                         "snapshot the weights every this many steps")
    train_split: str = setting("train", _choice(*TRAIN_SPLITS),
                               "what the weights train on: the train split, or train and valid joined (the whole "
                               "train set, as the few-shot NAS code)")
    score_split: str = setting("valid", _choice(*SCORE_SPLITS),
                               "what candidates are scored on (and SETN's alpha learns on): valid, or test (the "
                               "few-shot paper's Kendall-tau protocol)")

    def _check(self) -> None:
        if self.train_split == "train+valid" and self.score_split == "valid":
            raise UsageError("supernet.train_split='train+valid' with supernet.score_split='valid' scores candidates "
                             "on images the supernet trained on; expected supernet.score_split='test' "
                             "(or supernet.train_split='train')")
        if (self.epochs is None) == (self.total_steps is None):
            raise UsageError(f"supernet.epochs={self.epochs!r}, supernet.total_steps={self.total_steps!r}: "
                             "expected exactly one of them (the schedule's length)")
        if self.lr_min > self.lr:
            raise UsageError(f"supernet.lr_min={self.lr_min!r} > supernet.lr={self.lr!r}: expected lr_min <= lr "
                             "(the cosine anneals from lr down to lr_min)")


@dataclass(frozen=True)
class ResourcesSettings(_Section):
    """What a search asks of the cluster. GPUs: ``gpus`` (``raynas search --gpus N``) is what each
    supernet actor and each standalone training asks for, whether or not a node has one yet (an
    autoscaler adds GPU nodes for them); ``actor_gpus`` / ``standalone_gpus`` set one role alone;
    all ``None``: 1 each if the cluster has GPUs when the search starts, else CPU only. CPU shares
    are upper bounds: the driver shrinks them so that the search fits the cluster's nodes
    (:func:`raynas.plan.plan_resources`)."""

    section = "resources"
    actor_cpus: float = setting(1.0, _number(at_least=0), "CPUs of each supernet actor (at most: shrunk to fit the nodes)")
    gpus: float | None = setting(None, _optional(_number(at_least=0), "1 if the cluster has GPUs now, else 0"),
                                 "GPUs of each supernet actor and standalone training, asked for even before a "
                                 "node has one (an autoscaler adds them)")
    actor_gpus: float | None = setting(None, _optional(_number(at_least=0), "resources.gpus"),
                                       "GPUs of each supernet actor")
    trial_cpus: float = setting(0.25, _number(at_least=0), "CPUs of a light trial (train/score unit)")
    standalone_cpus: float = setting(1.0, _number(at_least=0),
                                     "CPUs of a standalone training or proxy unit (at most: shrunk to fit a node)")
    standalone_gpus: float | None = setting(None, _optional(_number(at_least=0), "resources.gpus"),
                                            "GPUs of a standalone training or proxy unit")
    max_concurrent: int = setting(2, _int(1), "work units running at once")
    max_actors: int | None = setting(None, _optional(_int(1), "as many as the cluster holds at once"),
                                     "supernet actors alive at once (few-shot: the others wait their turn)")
    max_failures: int = setting(2, _int(-1), "Tune retries of a failed trial (-1: forever)")
    max_restarts: int = setting(3, _int(-1), "Ray restarts of a dead supernet actor (-1: forever)")
    placement_strategy: str = setting("SPREAD", _choice(*PLACEMENT_STRATEGIES),
                                      "placement of the few-shot sub-supernet actors over the nodes")
    placement_timeout_s: float | None = setting(None, _optional(_number(above=0), "120; 900 where an autoscaler "
                                                                 "can add nodes"),
                                                "seconds an actor may take to start, or a unit wait for a node "
                                                "the cluster lacks, before the run fails")


def unknown_key(section: str, key: Any, valid: list[str]) -> str:
    """The one line for an unknown setting: the nearest valid key, then all of them."""
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
    hint = f" (did you mean {section}.{close[0]}?)" if close else ""
    return f"unknown setting {section}.{short_repr(str(key))[1:-1]}{hint}; expected one of: {', '.join(valid)}"


# --- the searcher section ---------------------------------------------------------------------------
def _kwonly(cls) -> dict:
    """name -> :class:`inspect.Parameter`: the keyword-only arguments a call ``cls(...)`` accepts,
    the ``__init__`` of each class along the MRO (the most derived wins) as long as the one before
    passes ``**kwargs`` on (a base's argument that a subclass does not forward is not accepted)."""
    import inspect

    params: dict = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            signature = inspect.signature(init)
        except (TypeError, ValueError):  # a builtin's slot wrapper
            break
        for p in signature.parameters.values():
            if p.kind is inspect.Parameter.KEYWORD_ONLY:
                params.setdefault(p.name, p)
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
            break
    return params


def searcher_parameters(method: str) -> dict:
    """The method's searcher constructor arguments: name -> :class:`inspect.Parameter`, the
    keyword-only arguments its class accepts (:func:`_kwonly`), less :data:`DRIVER_KEYS`. Imports
    the method's module (``ray.tune``; no Ray start): the fast checks read
    :mod:`raynas.searchers.arguments` instead, which tests keep equal to this."""
    from raynas.searchers import get_searcher_class

    return {name: p for name, p in _kwonly(get_searcher_class(method)).items() if name not in DRIVER_KEYS}


def searcher_arguments(method: str):
    """The declaration of the method's searcher arguments
    (:class:`raynas.searchers.arguments.WorkUnitArguments` subclass; no Ray, no torch), or ``None``
    for a method registered without one (then only the constructor checks it)."""
    from raynas.searchers.arguments import ARGUMENTS

    return ARGUMENTS.get(method)


def _traits(method: str):
    """What make_config asks of a method (``uses_supernet``, ``takes_candidates``,
    ``supports_few_shot``): its declaration's, else its searcher class's (an import)."""
    declared = searcher_arguments(method)
    if declared is not None:
        return declared
    from raynas.searchers import get_searcher_class

    return get_searcher_class(method)


_TYPES = {"int": int, "float": float, "bool": bool, "str": str, "dict": dict, "None": type(None),
          "list": list, "tuple": tuple, "Sequence": (list, tuple)}


def _type_ok(value: Any, annotation: Any) -> bool:
    """Whether ``value`` fits a simple annotation (``"int | None"``, ``"Sequence[int]"``...);
    True when the annotation is something this does not read (the constructor checks it)."""
    if not isinstance(annotation, str):
        return True
    allowed: list[type] = []
    for part in annotation.split("|"):
        name = part.strip().split("[", 1)[0]
        if name not in _TYPES:
            return True
        kind = _TYPES[name]
        allowed += list(kind) if isinstance(kind, tuple) else [kind]
    if isinstance(value, bool):
        return bool in allowed
    if isinstance(value, int) and float in allowed:
        return True
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return isinstance(value, tuple(allowed))


def check_fast_searcher(method: str, values: dict | None) -> None:
    """The searcher section's keys (a driver's key, an unknown one: the nearest valid key), each
    value's type and bound, from the method's declaration: no Ray, no torch, no searcher import.
    A method without a declaration is left to :func:`check_searcher`."""
    declared = searcher_arguments(method)
    if declared is not None:
        declared.check(values)


def check_searcher(method: str, values: dict, *, space: str, seed: int, max_concurrent: int) -> None:
    """Check the searcher section: first, fast, its keys, types and bounds
    (:func:`check_fast_searcher`); then the method's own checks (the rules between arguments) by
    constructing it once (a nominal ``total_steps``), which imports the searcher module; any
    ``ValueError`` becomes a :class:`UsageError` naming the setting."""
    check_fast_searcher(method, values)
    if searcher_arguments(method) is None:  # undeclared: the simple types from the signature
        params = searcher_parameters(method)
        for key, value in values.items():
            if key in DRIVER_KEYS:
                raise UsageError(f"searcher.{key} is not a searcher setting: the search sets it from {DRIVER_KEYS[key]}")
            if key not in params:
                raise UsageError(unknown_key("searcher", key, sorted(params)))
            if not _type_ok(value, params[key].annotation):
                raise UsageError(f"searcher.{key}={short_repr(value)}: expected {params[key].annotation} ({method})")
    from raynas.searchers import get_searcher_class

    cls = get_searcher_class(method)
    kwargs = dict(values, space=space, seed=seed, max_concurrent=max_concurrent)
    if "total_steps" in _kwonly(cls):
        kwargs["total_steps"] = NOMINAL_TOTAL_STEPS
    try:
        cls(**kwargs)
    except (ValueError, TypeError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        name = message.split("=", 1)[0]
        if name in values:
            raise UsageError(f"searcher.{message}") from None
        raise UsageError(f"searcher ({method}): {message}") from None


# --- paths and counts the CLI takes -----------------------------------------------------------------
#: the URI schemes pyarrow's filesystems open (``--storage``, ``--resume``, ``--data-dir``)
URI_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")


def check_storage(storage: str | os.PathLike, *, flag: str = "--storage") -> None:
    """``storage`` must be (or be creatable as) a writable folder; checked without writing
    anything. URIs other than ``file://`` are left to their filesystem."""
    text = str(storage) if not isinstance(storage, os.PathLike) else os.fspath(storage)
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        if scheme != "file":
            if scheme not in URI_SCHEMES:
                raise UsageError(f"{flag} {short_repr(text)[1:-1]}: unknown storage scheme {scheme}://; expected a "
                                 f"local folder or one of {', '.join(s + '://' for s in URI_SCHEMES)}")
            if not text.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0]:
                raise UsageError(f"{flag} {short_repr(text)[1:-1]}: no bucket; expected e.g. {scheme}://BUCKET/runs")
            return  # reached (and its credentials checked) when the run directory is made, before Ray starts
        text = text[len("file://"):]
    if not text:
        raise UsageError(f"{flag} '': expected a folder for the run directories")
    path = Path(text).expanduser()
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        what = "is a file" if probe == path else f"is inside {probe}, a file"
        raise UsageError(f"{flag} {short_repr(text)[1:-1]}: {what}; expected a folder for the run directories")
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "" if probe == path else f" ({probe} would hold it)"
        raise UsageError(f"{flag} {short_repr(text)[1:-1]}: not writable{where}; expected a folder you can write "
                         "the run directories in")


def check_name(name: str | None, *, flag: str = "--name") -> None:
    """A run directory name: one plain path component."""
    if name is None:
        return
    if not name.strip() or name in (".", "..") or "/" in name or os.sep in name or "\0" in name:
        raise UsageError(f"{flag} {short_repr(name)}: expected a plain directory name (no '/'), e.g. rsps-digits-s0")


# --- the whole configuration ------------------------------------------------------------------------
def _merge(base: dict, extra: dict | None) -> dict:
    out = copy.deepcopy(base)
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def check_sections(overrides: dict | None, *, allowed: tuple[str, ...] = SECTIONS) -> dict:
    """Overrides must be ``{section: {key: value}}`` of known sections."""
    overrides = dict(overrides or {})
    for section, values in overrides.items():
        if section not in SECTIONS:
            close = difflib.get_close_matches(str(section), SECTIONS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UsageError(f"unknown settings section {short_repr(section)}{hint}; expected one of: {', '.join(SECTIONS)}")
        if section not in allowed:
            raise UsageError(f"settings section {section!r} cannot be changed here; expected only: {', '.join(allowed)}")
        if not isinstance(values, dict):
            raise UsageError(f"settings section {section}={short_repr(values)}: expected a dict of KEY: VALUE")
    return overrides


def resume_overrides(overrides: dict | None) -> dict:
    """What a resume may change: the ``resources`` section only (not what the search means);
    checked key by key. Returns the checked overrides (``{}`` or ``{"resources": {...}}``)."""
    overrides = check_sections(overrides)
    other = sorted(s for s, v in overrides.items() if s != "resources" and v)
    if other:
        raise UsageError(f"--resume continues a run with its own settings; only resources.* may change, not "
                         f"{', '.join(f'{s}.{k}' for s in other for k in overrides[s])}")
    values = overrides.get("resources") or {}
    for key in values:
        if key not in ResourcesSettings.keys():
            raise UsageError(unknown_key("resources", key, ResourcesSettings.keys()))
    ResourcesSettings.from_dict(values)  # each value's type and bound
    return {"resources": dict(values)} if values else {}


def _check_traits(method: str, traits: Any, searcher: dict) -> None:
    """``candidates`` and ``few_shot`` only for the methods that take them (the CLI's flags)."""
    from raynas.searchers import method_names

    if searcher.get("candidates") is not None and not getattr(traits, "takes_candidates", False):
        raise UsageError(f"--candidates: method {method!r} chooses its own candidates; expected one of: "
                         f"{', '.join(m for m in method_names() if getattr(_traits(m), 'takes_candidates', False))}")
    if searcher.get("few_shot") is not None and not getattr(traits, "supports_few_shot", False):
        raise UsageError(f"--few-shot: method {method!r} has no few-shot variant; expected one of the one-shot "
                         f"methods: {', '.join(m for m in method_names() if getattr(_traits(m), 'supports_few_shot', False))}")


#: the standalone recipe's keys that are not training settings: which seeds, on which data
FINAL_KEYS = ("seeds", "train_split")


def check_standalone(recipe: dict | None, *, where: str = "searcher.standalone") -> None:
    """The final trainings' own keys of a standalone recipe (:data:`FINAL_KEYS`): ``seeds`` a
    non-empty list of distinct ints >= 0, ``train_split`` one of :data:`TRAIN_SPLITS`; one line."""
    recipe = recipe or {}
    seeds = recipe.get("seeds")
    if seeds is not None and (not isinstance(seeds, (list, tuple)) or not seeds or len(set(seeds)) != len(seeds)
                              or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in seeds)):
        raise UsageError(f"{where}.seeds={short_repr(seeds)}: expected a non-empty list of distinct ints >= 0 "
                         "(the seeds each final pick trains with; --final-seeds N)")
    if "seed" in recipe and seeds is not None:
        raise UsageError(f"{where}: seed={short_repr(recipe['seed'])} and seeds={short_repr(seeds)}; give one of them")
    split = recipe.get("train_split", "train")
    if split not in TRAIN_SPLITS:
        raise UsageError(f"{where}.train_split={short_repr(split)}: expected one of "
                         f"{', '.join(map(repr, TRAIN_SPLITS))} (--final-train half|full)")


def _check_data_roles(method: str, traits: Any, supernet: dict) -> None:
    """A method whose training learns on the score split (SETN's alpha) may neither score on test
    nor train its weights on train+valid: either would fit it to held-out images."""
    if getattr(traits, "learns_on_score_split", False) and supernet and (
            supernet.get("score_split") == "test" or supernet.get("train_split") == "train+valid"):
        raise UsageError(f"supernet.train_split={supernet.get('train_split')!r}, supernet.score_split="
                         f"{supernet.get('score_split')!r}: {method} learns on the score split (its arch step), so it "
                         "would learn on the test set or on images its weights trained on; expected the defaults "
                         "'train' and 'valid'")


def make_config(method: str, *, space: str = "nb201", dataset: str = "digits", data_dir: str | None = None,
                data_options: dict | None = None, preset: str = "small", seed: int = 0,
                overrides: dict | None = None) -> dict:
    """The full, checked configuration of a search: the defaults, under the method's preset, under
    the user's ``overrides`` (``{section: {key: value}}``). Raises :class:`UsageError` on any bad
    input, before Ray or an actor starts."""
    from raynas.data import DatasetError, check_options, dataset_names
    from raynas.searchers import get_presets, method_names
    from raynas.spaces import get_space, space_names

    if method not in method_names():
        raise UsageError(f"unknown method {short_repr(method)}; expected one of: {', '.join(method_names())}")
    if space not in space_names():
        raise UsageError(f"unknown space {short_repr(space)}; expected one of: {', '.join(space_names())}")
    if dataset not in dataset_names():
        raise UsageError(f"unknown dataset {short_repr(dataset)}; expected one of: {', '.join(dataset_names())}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise UsageError(f"--seed {short_repr(seed)}: expected an int in 0..2**63-1")
    overrides = check_sections(overrides)
    # the cheap checks first (no searcher import): each override's key, type and bound
    for section_cls in (SupernetSettings, ResourcesSettings):
        section_cls.check(overrides.get(section_cls.section))
    traits = _traits(method)
    user_searcher = overrides.get("searcher") or {}
    _check_traits(method, traits, user_searcher)
    check_fast_searcher(method, user_searcher)
    data_options = dict(data_options or {})
    try:
        check_options(dataset, data_options)
    except DatasetError as err:
        raise UsageError(f"--data-option: {err}") from None
    if data_dir is not None and "://" in str(data_dir) and not str(data_dir).startswith("file://"):
        check_storage(data_dir, flag="--data-dir")  # its scheme; the files are read where the data is loaded
    elif data_dir is not None and not Path(str(data_dir).removeprefix("file://")).is_dir():
        raise UsageError(f"--data-dir {short_repr(str(data_dir))[1:-1]}: no such directory; expected the folder "
                         f"holding the {dataset} files")

    presets = get_presets(method)
    if preset not in presets:
        raise UsageError(f"unknown preset {short_repr(preset)} for method {method!r}; expected one of: {', '.join(sorted(presets))}")
    chosen = presets[preset]
    supernet = dict(chosen.get("supernet") or {})
    user_supernet = overrides.get("supernet") or {}
    # the schedule's length is epochs or total_steps: the user's choice replaces the preset's
    if "total_steps" in user_supernet and "epochs" not in user_supernet:
        supernet.pop("epochs", None)
    if "epochs" in user_supernet and "total_steps" not in user_supernet:
        supernet.pop("total_steps", None)
    supernet.update(user_supernet)
    if getattr(traits, "uses_supernet", True):
        supernet_settings = SupernetSettings.from_dict(supernet).to_dict()
    else:
        if user_supernet:
            raise UsageError(f"supernet.{next(iter(user_supernet))}: method {method!r} trains no supernet; "
                             "drop the supernet.* settings")
        supernet_settings = {}
    resources = ResourcesSettings.from_dict(_merge(chosen.get("resources") or {}, overrides.get("resources"))).to_dict()
    searcher = _merge(chosen.get("searcher") or {}, overrides.get("searcher"))

    _check_traits(method, traits, searcher)
    if "num_candidates" in searcher and searcher["num_candidates"] is None and searcher.get("candidates") is None:
        raise UsageError(f"preset {preset!r} scores given archs; add --candidates FILE "
                         "(e.g. truth/fashion-mnist16.parquet) or --set searcher.num_candidates=N")
    check_fast_searcher(method, searcher)  # the preset's values too (cheap)
    check_standalone(searcher.get("standalone"))
    _check_data_roles(method, traits, supernet_settings)
    few_shot = searcher.get("few_shot")
    if few_shot is not None:
        try:
            searcher["few_shot"] = get_space(space).parse_edges(few_shot)
        except ValueError as err:
            raise UsageError(f"--few-shot {short_repr(few_shot)}: {err}") from None
    # last, the searcher's own rules between its arguments: imports its module (seconds when cold)
    check_searcher(method, searcher, space=space, seed=seed, max_concurrent=resources["max_concurrent"])

    return {
        "supernet": supernet_settings,
        "searcher": searcher,
        "resources": resources,
        "method": method, "space": space, "dataset": dataset, "data_dir": data_dir,
        "data_options": data_options, "preset": preset, "seed": int(seed),
    }


__all__ = ["SECTIONS", "DRIVER_KEYS", "SupernetSettings", "ResourcesSettings", "make_config", "resume_overrides",
           "check_searcher", "check_fast_searcher", "check_sections", "check_storage", "check_name",
           "searcher_parameters", "searcher_arguments", "short_repr"]
