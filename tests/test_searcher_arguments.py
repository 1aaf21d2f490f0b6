"""The Ray-free declaration of the searchers' arguments (raynas.searchers.arguments) agrees with the
searcher classes, registry-parametrised: the same names, defaults and traits; every preset passes
it; and importing it (with raynas.settings and the presets) loads neither ray nor torch. The
comparisons import the searcher classes (ray.tune); nothing starts Ray."""

from __future__ import annotations

import dataclasses
import inspect
import json
import subprocess
import sys

import pytest

from raynas import settings
from raynas.errors import UsageError
from raynas.searchers import SEARCHERS, get_presets, get_searcher_class, method_names
from raynas.searchers.arguments import ARGUMENTS, WorkUnitArguments, get_arguments
from raynas.searchers.presets import PRESETS

#: the searcher base -> the declaration base it mirrors
BASES = {"WorkUnitSearcher": "WorkUnitArguments", "SupernetSearcher": "SupernetArguments",
         "OneShotSearcher": "OneShotArguments"}


def test_every_method_is_declared_and_has_presets():
    assert sorted(ARGUMENTS) == method_names() == sorted(SEARCHERS)
    assert sorted(PRESETS) == method_names()
    for method in method_names():
        assert get_arguments(method).method == method
    with pytest.raises(ValueError, match="no searcher arguments declared"):
        get_arguments("darts")


@pytest.mark.parametrize("method", method_names())
def test_declared_fields_are_the_constructor_arguments(method):
    declared = get_arguments(method)
    params = settings.searcher_parameters(method)  # keyword-only, along the MRO, less the driver's keys
    fields = {f.name: f for f in dataclasses.fields(declared)}
    assert not set(fields) & set(settings.DRIVER_KEYS)
    assert set(fields) | set(declared.refused) == set(params), method
    assert not set(fields) & set(declared.refused)
    for name, f in fields.items():
        default = params[name].default
        assert default is not inspect.Parameter.empty, f"{method}: {name} has no default in the constructor"
        assert f.default == default and type(f.default) is type(default), (method, name, f.default, default)
        # the default passes its own check, and the doc is one line
        assert f.metadata["check"](f.default) == f.default or f.default is None, (method, name)
        doc = f.metadata["doc"]
        assert doc and "\n" not in doc, (method, name)
        assert getattr(f.metadata["check"], "expected", ""), (method, name)


@pytest.mark.parametrize("method", method_names())
def test_declared_traits_are_the_searchers(method):
    declared, cls = get_arguments(method), get_searcher_class(method)
    assert getattr(cls, "method", method) == method
    for trait, default in (("uses_supernet", True), ("takes_candidates", False), ("supports_few_shot", False)):
        assert getattr(declared, trait) == getattr(cls, trait, default), (method, trait)


@pytest.mark.parametrize("method", method_names())
def test_declarations_share_bases_as_the_searchers_do(method):
    declared, cls = get_arguments(method), get_searcher_class(method)
    searcher_bases = [k.__name__ for k in cls.__mro__ if k.__name__ in BASES]
    declared_bases = [k.__name__ for k in declared.__mro__ if k.__name__ in BASES.values()]
    assert [BASES[b] for b in searcher_bases] == declared_bases, method
    assert issubclass(declared, WorkUnitArguments)


@pytest.mark.parametrize("method", method_names())
def test_presets_pass_the_declared_checks(method):
    presets = get_presets(method)
    assert presets and presets is PRESETS[method]
    assert get_searcher_class(method).__module__ and presets is sys.modules[get_searcher_class(method).__module__].PRESETS
    declared = get_arguments(method)
    for name, preset in presets.items():
        searcher = preset.get("searcher") or {}
        declared.check(searcher)  # raises UsageError on a bad key or value
        assert not set(searcher) & set(settings.DRIVER_KEYS), (method, name)
        if not declared.uses_supernet:
            assert not preset.get("supernet"), (method, name)


@pytest.mark.parametrize("method", method_names())
def test_bad_values_are_refused_by_the_declaration(method):
    declared = get_arguments(method)
    with pytest.raises(UsageError, match=rf"unknown setting searcher\.bogus; expected one of: "):
        declared.check({"bogus": 1})
    with pytest.raises(UsageError, match="is not a searcher setting"):
        declared.check({"seed": 3})
    for f in dataclasses.fields(declared):
        with pytest.raises(UsageError, match=rf"^searcher\.{f.name}=.*: expected .*; {f.name}: "):
            declared.check({f.name: float("nan")})
    for key, why in declared.refused.items():
        with pytest.raises(UsageError, match=f"searcher.{key}=.*not a {method} setting"):
            declared.check({key: "x"})


def test_a_few_declared_bounds():
    rsps, setn, nao = get_arguments("rsps"), get_arguments("setn"), get_arguments("nao")
    for values, message in (({"top_k": -1}, "searcher.top_k=-1: expected an int >= 0"),
                            ({"num_candidates": 0}, "searcher.num_candidates=0: expected an int >= 1"),
                            ({"top_k": 2.5}, "searcher.top_k=2.5: expected an int"),
                            ({"top_k": True}, "searcher.top_k=True: expected an int"),
                            ({"candidates": []}, "expected a non-empty list of arch strings"),
                            ({"policy": 3}, "expected a policy name"),
                            ({"max_unit_retries": 1}, "unknown setting searcher.max_unit_retries")):
        with pytest.raises(UsageError, match=message.replace(".", r"\.").replace("(", r"\(")):
            rsps.check(values)
    assert rsps.check({"num_candidates": None, "candidates": ["a"], "few_shot": "0,5"})["candidates"] == ["a"]
    with pytest.raises(UsageError, match="arch_betas"):
        setn.check({"arch_betas": (0.5, 1.0)})
    with pytest.raises(UsageError, match="searcher.policy='uniform': not a setn setting"):
        setn.check({"policy": "uniform"})
    with pytest.raises(UsageError, match="trade_off=1.5: expected a finite number >= 0 and <= 1"):
        nao.check({"trade_off": 1.5})
    with pytest.raises(UsageError, match=r"unknown setting searcher.top_kk \(did you mean searcher.top_k\?\)"):
        nao.check({"top_kk": 1})


def test_the_declaration_is_checked_before_the_constructor(monkeypatch):
    """make_config refuses a bad key or value without the searcher module; the constructor's
    rules between arguments still come after."""
    import raynas.searchers as registry

    def no_import(method):
        raise AssertionError(f"the searcher module of {method} was imported for a bad setting")

    monkeypatch.setattr(registry, "get_searcher_class", no_import)
    monkeypatch.setattr(registry, "_module", no_import)
    for method, values, message in (("rsps", {"bogus": 1}, "unknown setting searcher.bogus"),
                                    ("rsps", {"top_k": -1}, "searcher.top_k=-1: expected an int >= 0"),
                                    ("nao", {"trade_off": 2}, "searcher.trade_off=2: expected a finite number >= 0 and <= 1"),
                                    ("random", {"few_shot": "0"}, "has no few-shot variant"),
                                    ("tenas", {"candidates": ["x"]}, "chooses its own candidates")):
        with pytest.raises(UsageError, match=message.replace(".", r"\.")):
            settings.make_config(method, overrides={"searcher": values})
    monkeypatch.undo()
    with pytest.raises(UsageError, match=r"searcher\.top_k=500 > num_candidates=30"):
        settings.make_config("rsps", overrides={"searcher": {"top_k": 500}})


IMPORTS = """
import json, sys
import raynas.settings, raynas.searchers.arguments, raynas.searchers.presets
from raynas.errors import UsageError
from raynas.searchers import get_presets, method_names
from raynas.settings import make_config
for method in method_names():
    get_presets(method)
    for values in ({"bogus": 1}, {"seed": 1}):
        try:
            make_config(method, overrides={"searcher": values})
        except UsageError:
            pass
        else:
            raise SystemExit(f"{method}: {values} passed")
try:
    make_config("rsps", overrides={"searcher": {"top_k": -1}})
except UsageError:
    pass
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "torch"))))
"""


def test_the_declarations_and_presets_load_no_ray_and_no_torch():
    out = subprocess.run([sys.executable, "-c", IMPORTS], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
