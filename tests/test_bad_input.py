"""Bad input: exit 2, one stderr line naming the input and what was expected, fast, before Ray
starts, nothing written (in-process ``raynas.cli.main``, no Ray; and a few cold ``raynas search``
processes timed: a bad setting is refused before ray.tune or torch is imported)."""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from raynas import cli, settings
from raynas.searchers import get_searcher_class, method_names

GOOD = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
LONG = "|bogus~0|" * 1200  # ~10 KB


@pytest.fixture(scope="module", autouse=True)
def imported():
    """The searcher modules (ray.tune, torch) imported once: the time limit measures the checks,
    not a fresh interpreter's first imports (a cold `raynas search` with a bad searcher.* key or
    value imports neither: test_a_cold_search_refuses_bad_searcher_settings_fast; one that breaks
    a rule between arguments, top_k=500, pays ray.tune's import once)."""
    for method in method_names():
        get_searcher_class(method)


def _tree(path):
    return sorted((str(p.relative_to(path)), p.is_dir()) for p in path.rglob("*")) if path.exists() else None


def _run(argv, capsys, storage):
    before = _tree(storage)
    capsys.readouterr()
    started = time.perf_counter()
    code = cli.main(argv)
    elapsed = time.perf_counter() - started
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert _tree(storage) == before, "the storage folder changed"
    return code, lines, elapsed


SEARCH = [
    (["--set", "searcher.bogus=1"], "unknown setting searcher.bogus; expected one of"),
    (["--set", "supernet.bogus=1"], "unknown setting supernet.bogus; expected one of"),
    (["--set", "resources.actor_cpu=2"], "unknown setting resources.actor_cpu (did you mean resources.actor_cpus?)"),
    (["--set", "bogus.x=1"], "unknown settings section 'bogus'"),
    (["--set", "supernet.epochs=0"], "supernet.epochs=0: expected a finite number > 0"),
    (["--set", "supernet.epochs=-3"], "supernet.epochs=-3"),
    (["--set", "supernet.lr=1e999"], "supernet.lr=inf: expected a finite number > 0"),
    (["--set", "supernet.lr=nan"], "supernet.lr='nan'"),
    (["--set", "supernet.C=abc"], "supernet.C='abc': expected an int >= 1"),
    (["--set", "supernet.C=True"], "supernet.C=True: expected an int"),
    (["--set", "supernet.C=2.5"], "supernet.C=2.5: expected an int"),
    (["--set", "supernet.bn_mode=bogus"], "supernet.bn_mode='bogus': expected one of 'batch', 'running'"),
    (["--set", "supernet.nesterov=1"], "supernet.nesterov=1: expected True or False"),
    (["--set", "supernet.lr_min=1.0"], "supernet.lr_min=1.0 > supernet.lr=0.025"),
    (["--set", "supernet.epochs=3", "--set", "supernet.total_steps=5"], "expected exactly one of them"),
    (["--set", "searcher.num_candidates=0"], "searcher.num_candidates=0: expected an int >= 1"),
    (["--set", "searcher.top_k=-1"], "searcher.top_k=-1: expected an int >= 0"),
    (["--set", "searcher.top_k=2.5"], "searcher.top_k=2.5: expected an int"),
    (["--set", "searcher.top_kk=1"], "unknown setting searcher.top_kk (did you mean searcher.top_k?)"),
    (["--set", "searcher.max_unit_retries=1"], "unknown setting searcher.max_unit_retries"),
    (["--set", "searcher.policy=3"], "searcher.policy=3: expected a policy name"),
    (["--method", "setn", "--set", "searcher.policy='uniform'"], "searcher.policy='uniform': not a setn setting"),
    (["--method", "nao", "--set", "searcher.trade_off=2"], "searcher.trade_off=2: expected a finite number >= 0 and <= 1"),
    (["--set", "searcher.chunk_steps=-5"], "searcher.chunk_steps=-5"),
    (["--set", "searcher.top_k=500"], "searcher.top_k=500 > num_candidates=30"),
    (["--set", "searcher.seed=3"], "searcher.seed is not a searcher setting"),
    (["--method", "evnas", "--set", "searcher.population_size=0"], "searcher.population_size=0"),
    (["--method", "random", "--set", "searcher.num_samples=-1"], "searcher.num_samples=-1"),
    (["--method", "random", "--set", "supernet.epochs=3"], "trains no supernet"),
    (["--set", "resources.max_concurrent=0"], "resources.max_concurrent=0: expected an int >= 1"),
    (["--set", "resources.actor_cpus=-1"], "resources.actor_cpus=-1: expected a finite number >= 0"),
    (["--set", "resources.actor_gpus=abc"], "resources.actor_gpus='abc'"),
    (["--set", "resources.placement_strategy=ANY"], "resources.placement_strategy='ANY'"),
    (["--set", "supernet.epochs"], "expected SECTION.KEY=VALUE"),
    (["--set", ".epochs=3"], "expected SECTION.KEY=VALUE"),
    (["--num-cpus", "0"], "argument --num-cpus: '0': expected an int >= 1"),
    (["--num-cpus", "-2"], "argument --num-cpus: '-2': expected an int >= 1"),
    (["--num-cpus", "1.5"], "argument --num-cpus: '1.5'"),
    (["--num-cpus", "\u0663"], "argument --num-cpus"),
    (["--seed", "-1"], "argument --seed: '-1': expected an int >= 0"),
    (["--few-shot", "9"], "--few-shot '9'"),
    (["--few-shot", ""], "--few-shot ''"),
    (["--few-shot", "0,0"], "expected distinct edge indices"),
    (["--few-shot", "\u0663"], "--few-shot '\u0663'"),
    (["--method", "random", "--few-shot", "0"], "has no few-shot variant"),
    (["--data-option", "resolution=16"], "digits: unknown option 'resolution'; digits takes: train_size"),
    (["--data-option", "train_siz=5"], "(did you mean train_size?)"),
    (["--method", "darts"], "unknown method 'darts'; expected one of:"),
    (["--dataset", "mnist"], "unknown dataset 'mnist'; expected one of:"),
    (["--space", "nb101"], "unknown space 'nb101'; expected one of: nb201"),
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--data-dir", "/nonexistent"], "--data-dir /nonexistent: no such directory"),
    (["--dataset", "cifar10", "--data-dir", "/nonexistent"], "--data-dir /nonexistent: no such directory"),
    (["--dataset", "cifar10"], "cifar10"),
    (["--name", "a/b"], "--name 'a/b': expected a plain directory name"),
    (["--resume", "somewhere", "--set", "supernet.epochs=3"], "only resources.* may change"),
    (["--resume", "somewhere", "--set", "resources.actor_cpu=2"], "did you mean resources.actor_cpus?"),
    (["--resume", "somewhere", "--set", "resources.max_concurrent=0"], "resources.max_concurrent=0"),
]


@pytest.mark.parametrize("args, message", SEARCH, ids=[" ".join(a) for a, _ in SEARCH])
def test_bad_search_input(args, message, tmp_path, capsys, monkeypatch):
    import ray

    def no_ray(*args, **kwargs):  # the check comes before any start-up (another test may have a Ray up)
        raise AssertionError("ray.init was called for a bad input")

    monkeypatch.setattr(ray, "init", no_ray)
    storage = tmp_path / "runs"
    storage.mkdir()
    (storage / "keep.txt").write_text("mine")
    code, lines, elapsed = _run(["search", "--storage", str(storage), *args], capsys, storage)
    assert code == 2 and len(lines) == 1 and message in lines[0], lines
    assert elapsed < 2.0


def test_bad_storage(tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    code, lines, elapsed = _run(["search", "--storage", str(a_file)], capsys, tmp_path)
    assert code == 2 and len(lines) == 1 and f"--storage {a_file}: is a file" in lines[0] and elapsed < 2.0
    code, lines, _ = _run(["search", "--storage", str(a_file / "below")], capsys, tmp_path)
    assert code == 2 and len(lines) == 1 and "a file" in lines[0]
    assert a_file.read_text() == "x"

    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o555)
    real_access = os.access
    if os.geteuid() == 0:  # root writes anywhere: pretend the folder is on a read-only mount
        monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(locked) else real_access(p, mode))
    try:
        for target in (locked, locked / "new"):
            code, lines, elapsed = _run(["search", "--storage", str(target)], capsys, tmp_path)
            assert code == 2 and len(lines) == 1 and "not writable" in lines[0] and elapsed < 2.0, lines
            assert list(locked.iterdir()) == []
    finally:
        os.chmod(locked, 0o755)


OTHER = [
    (["data", "digits", "--data-option", "resolution=16"], "digits: unknown option 'resolution'; digits takes:"),
    (["data", "mnist"], "unknown dataset 'mnist'"),
    (["space", "nb201", "--arch", ""], "NB201 arch string '' is empty"),
    (["space", "nb201", "--arch", "   "], "is empty"),
    (["space", "nb201", "--arch", "\u0663"], "NB201 arch string '\u0663'"),
    (["space", "nb201", "--arch", GOOD.replace("~0|+", "~\u0660|+", 1)], "bad input 'nor_conv_3x3~\u0660'"),
    (["space", "nb201", "--arch", "|bogus~0|"], "NB201 arch string '|bogus~0|'"),
    (["space", "nb201", "--arch", "-1"], "NB201 arch index -1; expected an int in 0..15624"),
    (["space", "nb201", "--arch", "99999"], "0..15624"),
    (["space", "nb201", "--arch", GOOD, "--C", "0"], "argument --C: '0': expected an int >= 1"),
    (["space", "nb999"], "unknown space"),
    (["rank", "RUN", "--truth", "RUN/nothing.parquet"], "no such file"),
    (["rank", "RUN", "--truth", "RUN/candidates.parquet"], "is a run's table of supernet scores"),
    (["rank", "RUN", "--truth", "TRUTH", "--top-k", "0"], "argument --top-k: '0'"),
    (["compare", "/nonexistent"], "no summary.parquet"),
    (["truth", "--archs", "0"], "argument --archs: '0'"),
    (["truth", "--weak-fraction", "1.5"], "argument --weak-fraction: '1.5': expected a number in 0..1"),
    (["truth", "--num-cpus", "0"], "argument --num-cpus: '0'"),
    (["truth", "--dataset", "digits", "--data-option", "resolution=16", "--output", "x.parquet"], "unknown option 'resolution'"),
]


@pytest.mark.parametrize("args, message", OTHER, ids=[" ".join(a)[:60] for a, _ in OTHER])
def test_bad_input_of_other_commands(args, message, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame({"run_id": ["r"] * 2, "method": ["rsps"] * 2, "seed": [0, 0], "arch": [GOOD, "x"],
                  "supernet_version": [4, 4], "valid_acc": [0.5, 0.4], "unit": [1, 1],
                  "position": [0, 1]}).to_parquet(run / "candidates.parquet")
    pd.DataFrame({"arch": [GOOD], "seed": [0], "valid_acc": [0.5]}).to_parquet(tmp_path / "truth.parquet")
    argv = [a.replace("RUN", str(run)).replace("TRUTH", str(tmp_path / "truth.parquet")) for a in args]
    if argv[0] == "truth":
        argv += ["--storage", str(tmp_path / "runs")]
    code, lines, elapsed = _run(argv, capsys, tmp_path)
    assert code == 2 and len(lines) == 1 and message in lines[0], lines
    assert elapsed < 2.0


def test_a_long_bad_arch_is_quoted_short(capsys, tmp_path):
    code, lines, _ = _run(["space", "nb201", "--arch", LONG], capsys, tmp_path)
    assert code == 2 and len(lines) == 1 and "..." in lines[0]
    assert len(lines[0]) < 400 and LONG[:200] not in lines[0]


def test_a_bug_is_a_traceback_and_exit_1(monkeypatch, capsys, tmp_path):
    def broken(*args, **kwargs):
        raise TypeError("a bug, not bad input")

    monkeypatch.setattr(settings, "make_config", broken)
    code, lines, _ = _run(["search", "--storage", str(tmp_path)], capsys, tmp_path)
    assert code == 1
    assert lines[0].startswith("Traceback") and "TypeError: a bug, not bad input" in lines[-1]
    # a ValueError that is not a usage error is a bug too
    monkeypatch.setattr(settings, "make_config", lambda *a, **k: (_ for _ in ()).throw(ValueError("internal")))
    code, lines, _ = _run(["search", "--storage", str(tmp_path)], capsys, tmp_path)
    assert code == 1 and "ValueError: internal" in lines[-1]


def test_good_settings_pass_and_resources_may_change_on_resume():
    config = settings.make_config("rsps", overrides={"supernet": {"total_steps": 7}, "resources": {"actor_cpus": 2}})
    assert config["supernet"]["total_steps"] == 7 and config["supernet"]["epochs"] is None
    assert config["resources"]["actor_cpus"] == 2.0 and config["resources"]["max_concurrent"] == 2
    assert settings.resume_overrides({"resources": {"actor_gpus": 0.5}}) == {"resources": {"actor_gpus": 0.5}}
    assert settings.resume_overrides({}) == {}


def test_supernet_defaults_are_the_workers():
    """One place for the defaults: the dataclass must agree with SupernetWorker's signature."""
    from raynas.worker import BN_MODES, SupernetWorker

    signature = inspect.signature(SupernetWorker.__init__).parameters
    for key in settings.SupernetSettings.keys():
        if key in settings.DATA_ROLE_KEYS:  # which split the supernet trains and scores on: the data's options
            continue
        assert key in signature, key
        assert getattr(settings.SupernetSettings(epochs=1), key) == (1 if key == "epochs" else signature[key].default), key
    assert settings.BN_MODES == BN_MODES


@pytest.mark.parametrize("method", method_names())
def test_every_method_lists_its_settings(method):
    params = settings.searcher_parameters(method)
    assert params and not set(params) & set(settings.DRIVER_KEYS)
    for preset in __import__("raynas.searchers", fromlist=["get_presets"]).get_presets(method):
        settings.make_config(method, preset=preset, overrides={"searcher": {"num_candidates": 5}}
                             if method == "rsps" and preset == "rank" else None)


def _raynas_command() -> list[str]:
    script = Path(sys.executable).with_name("raynas")
    if script.exists():
        return [str(script)]
    found = shutil.which("raynas")
    return [found] if found else [sys.executable, "-m", "raynas.cli"]


COLD = [
    (["--set", "searcher.bogus=1"], "unknown setting searcher.bogus; expected one of"),
    (["--set", "searcher.top_k=-1"], "searcher.top_k=-1: expected an int >= 0"),
]


@pytest.mark.parametrize("args, message", COLD, ids=[" ".join(a) for a, _ in COLD])
def test_a_cold_search_refuses_bad_searcher_settings_fast(args, message, tmp_path):
    """A fresh ``raynas search`` process with a bad searcher key or value: exit 2, one stderr
    line, under 2 s of wall time (the faster of two runs: the machine may be loaded), nothing
    created under --storage; the declaration checks it, before ray.tune or torch is imported."""
    storage = tmp_path / "runs"
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    times = []
    for _ in range(2):
        started = time.perf_counter()
        out = subprocess.run([*_raynas_command(), "search", "--storage", str(storage), *args],
                             capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
        times.append(time.perf_counter() - started)
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert out.returncode == 2 and len(lines) == 1 and message in lines[0], (out.returncode, out.stderr)
        assert not storage.exists() and sorted(p.name for p in tmp_path.iterdir()) == []
    assert min(times) < 2.0, times
