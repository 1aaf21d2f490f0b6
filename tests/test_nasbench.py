"""NAS-Bench-201 / NATS-Bench import (raynas.nasbench): files in the real formats, built here with
the official packages' own classes, read back and compared with the official APIs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("nas_201_api")
pytest.importorskip("nats_bench")

from raynas.cli import main  # noqa: E402
from raynas.spaces import get_space  # noqa: E402
from raynas.spaces.nb201 import NUM_ARCHS, NB201Arch  # noqa: E402

SPACE = get_space("nb201")
META = [str(NB201Arch.from_benchmark_index(i)) for i in range(NUM_ARCHS)]
HELD = [0, 9, 123, 4321]
EVAL_SETS = {"cifar10-valid": ["x-valid", "ori-test"], "cifar10": ["ori-test"],
             "cifar100": ["ori-test", "x-valid", "x-test"], "ImageNet16-120": ["ori-test", "x-valid", "x-test"]}


def _result(api, dataset, seed, epochs, arch_str, rng):
    """One trial as exps/NAS-Bench-201/statistics.py makes it (new-format evals, every epoch)."""
    acc = {i: rng.uniform(10, 99) for i in range(epochs)}
    run = api.ResultsCount(dataset, None, acc, {i: rng.random() for i in range(epochs)}, rng.uniform(0.1, 1.5),
                           rng.uniform(10, 200), {"channel": 16, "num_cells": 5, "arch_str": arch_str, "class_num": 10},
                           seed, epochs, [rng.uniform(0.005, 0.02)])
    run.update_train_info(acc, None, {i: rng.random() for i in range(epochs)}, {i: 2.0 for i in range(epochs)})
    accs, losses, times = {}, {}, {}
    for name in EVAL_SETS[dataset]:
        for i in range(epochs):
            accs[f"{name}@{i}"], losses[f"{name}@{i}"], times[f"{name}@{i}"] = rng.uniform(10, 99), rng.random(), 1.0
    run.update_eval(accs, losses, times)
    return run


def _arch_results(api, index, hps, rng):
    out = {}
    for hp, epochs in hps.items():
        results = api.ArchResults(index, META[index])
        for dataset in EVAL_SETS if epochs == 200 else ["cifar10-valid"]:
            for seed in (777, 888) if index % 2 == 0 else (777,):
                results.update(dataset, seed, _result(api, dataset, seed, epochs, META[index], rng))
        out[hp] = results.state_dict()
    return out


def _nb201_dict(rng, held=HELD) -> dict:
    import nas_201_api as api

    return {"meta_archs": list(META), "total_archs": NUM_ARCHS, "evaluated_indexes": sorted(held),
            "arch2infos": {i: _arch_results(api, i, {"less": 12, "full": 200}, rng) for i in held}}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A NAS-Bench-201 v1.1 .pth (torch legacy format, as the 2020 files), the same in torch's zip
    format, and a NATS-Bench topology simple folder."""
    import nats_bench
    import torch

    root = tmp_path_factory.mktemp("bench")
    data = _nb201_dict(random.Random(0))
    legacy, zipped = root / "NAS-Bench-201-v1_1-096897.pth", root / "zip.pth"
    torch.save(data, legacy, _use_new_zipfile_serialization=False)
    torch.save(data, zipped)
    nats = root / "NATS-tss-v1_0-3ffb9-simple"
    nats.mkdir()
    nats_bench.pickle_save({"meta_archs": list(META), "evaluated_indexes": set(HELD)}, str(nats / "meta.pickle"))
    rng = random.Random(1)
    for i in HELD:
        nats_bench.pickle_save(_arch_results(nats_bench, i, {"12": 12, "200": 200}, rng), str(nats / f"{i:06d}.pickle"))
    return {"legacy": legacy, "zip": zipped, "nats": nats, "root": root}


@pytest.fixture(scope="module")
def truth(files):
    """The NAS-Bench-201 file imported by `raynas truth --from-benchmark`."""
    out = files["root"] / "nb201.parquet"
    assert main(["truth", "--from-benchmark", str(files["legacy"]), "--output", str(out), "-q"]) == 0
    return out


def test_the_benchmark_order_is_the_official_one():
    # the asserts of the official exps/NAS-Bench-201/main.py, after random.seed(88); random.shuffle
    assert META[0] == "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|"
    assert META[9] == "|avg_pool_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|nor_conv_3x3~2|"
    assert META[123] == "|avg_pool_3x3~0|+|avg_pool_3x3~0|nor_conv_1x1~1|+|none~0|avg_pool_3x3~1|nor_conv_3x3~2|"
    assert len(set(META)) == NUM_ARCHS
    arch = SPACE.parse(META[123])
    assert SPACE.benchmark_index(arch) == 123 and SPACE.arch_from_benchmark_index(123) == arch
    assert SPACE.index_of(arch) == arch.index != 123  # raynas's base-5 code stays apart


def test_an_imported_pth_matches_the_official_api(files, truth):
    from nas_201_api import NASBench201API

    table = pd.read_parquet(truth)
    meta = json.loads(truth.with_suffix(".json").read_text())
    api = NASBench201API(str(files["legacy"]), verbose=False)
    assert sorted(table["arch_index"].unique()) == HELD
    assert (table["arch"] == [META[i] for i in table["arch_index"]]).all()
    assert (table["arch_code"] == [NB201Arch.from_string(a).index for a in table["arch"]]).all()
    # 2 seeds for even indexes: 200 epochs x 4 datasets, 12 epochs x cifar10-valid
    assert len(table) == sum((2 if i % 2 == 0 else 1) * 5 for i in HELD) == meta["rows"]
    for row in table.itertuples():
        info = api.get_more_info(int(row.arch_index), row.dataset, hp=str(row.epochs), is_random=int(row.seed))
        assert row.train_acc == pytest.approx(info["train-accuracy"] / 100)
        assert row.test_acc == pytest.approx(info["test-accuracy"] / 100)
        if row.dataset == "cifar10":
            assert pd.isna(row.valid_acc)  # trained on train+valid: nothing held out
        else:
            assert row.valid_acc == pytest.approx(info["valid-accuracy"] / 100)
        cost = api.get_cost_info(int(row.arch_index), row.dataset, hp=str(row.epochs))  # the mean over seeds
        same = table[(table["arch_index"] == row.arch_index) & (table["dataset"] == row.dataset)
                     & (table["epochs"] == row.epochs)]
        assert same["params"].mean() == pytest.approx(cost["params"] * 1e6, abs=1)
        assert same["latency_s"].mean() == pytest.approx(cost["latency"])
    assert meta["kind"] == "benchmark" and meta["source"]["version"] == "v1.1" and not meta["complete"]
    assert meta["source"]["bytes"] == files["legacy"].stat().st_size and len(meta["source"]["sha256"]) == 64
    assert {(h["dataset"], h["epochs"]) for h in meta["held"]} == {(d, 200) for d in EVAL_SETS} | {("cifar10-valid", 12)}
    # the zip format reads to the same rows
    from raynas.nasbench import read_benchmark

    pd.testing.assert_frame_equal(read_benchmark(files["zip"])[0], table)


def test_a_nats_folder_matches_the_official_api(files, tmp_path):
    import nats_bench

    out = tmp_path / "nats.parquet"
    assert main(["truth", "--from-benchmark", str(files["nats"]), "--output", str(out), "-q"]) == 0
    table = pd.read_parquet(out)
    api = nats_bench.create(str(files["nats"]), "tss", fast_mode=True, verbose=False)
    assert sorted(table["arch_index"].unique()) == HELD
    for row in table.sample(12, random_state=0).itertuples():
        info = api.get_more_info(int(row.arch_index), row.dataset, hp=str(row.epochs), is_random=int(row.seed))
        assert row.test_acc == pytest.approx(info["test-accuracy"] / 100)
    assert json.loads(out.with_suffix(".json").read_text())["source"]["format"] == "nats-tss-simple"


def _bad_files(root: Path) -> dict[str, tuple[Path, str]]:
    import torch

    out = {}
    text = root / "notes.pth"
    text.write_text("not a benchmark\n")
    out["another format"] = (text, "not a torch-saved file")
    good = root / "good.pth"
    torch.save(_nb201_dict(random.Random(2), held=[0, 9]), good, _use_new_zipfile_serialization=False)
    truncated = root / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    out["truncated"] = (truncated, "truncated or damaged")
    missing = _nb201_dict(random.Random(3), held=[0, 9])
    missing["evaluated_indexes"] = [0, 9, 123]
    torch.save(missing, root / "missing.pth")
    out["a missing arch"] = (root / "missing.pth", "disagree on 1 arch(s), e.g. index 123")
    short = _nb201_dict(random.Random(4), held=[0])
    short["meta_archs"] = META[:-1]
    torch.save(short, root / "short.pth")
    out["meta_archs short of an arch"] = (root / "short.pth", "meta_archs lists 15624 archs")
    wrong = _nb201_dict(random.Random(5), held=[9])
    wrong["arch2infos"][10] = wrong["arch2infos"].pop(9)
    wrong["evaluated_indexes"] = [10]
    torch.save(wrong, root / "wrong.pth")
    out["a record at the wrong index"] = (root / "wrong.pth", "record 10 is arch")
    folder = root / "folder"
    folder.mkdir()
    out["a folder"] = (folder, "a folder without meta.pickle.pbz2")
    return out


def test_what_is_not_a_benchmark_is_refused_in_one_line_leaving_nothing(tmp_path, capsys):
    for what, (path, message) in _bad_files(tmp_path).items():
        out = tmp_path / f"{path.stem}.parquet"
        assert main(["truth", "--from-benchmark", str(path), "--output", str(out), "-q"]) == 2, what
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (what, err)
        assert not out.exists() and not out.with_suffix(".json").exists(), what
        assert not list(tmp_path.glob(f".{out.name}*"))


def test_rank_against_a_benchmark_truth_and_the_file_itself(files, truth, tmp_path, capsys):
    table = pd.read_parquet(truth)
    run = tmp_path / "run"
    run.mkdir()
    valid = table[(table["dataset"] == "cifar100") & (table["epochs"] == 200)].groupby("arch")["valid_acc"].mean()
    pd.DataFrame({"arch": valid.index, "valid_acc": valid.values}).to_parquet(run / "candidates.parquet")
    assert main(["rank", str(run), "--truth", str(truth)]) == 2  # several truths: say which
    err = capsys.readouterr().err
    assert "cifar10-valid/12, cifar10-valid/200, cifar100/200" in err and len(err.strip().splitlines()) == 1
    for source in (truth, files["legacy"], files["zip"]):
        assert main(["rank", str(run), "--truth", str(source), "--truth-dataset", "cifar100", "--truth-epochs", "200",
                     "--format", "json"]) == 0
        ranked = json.loads(capsys.readouterr().out)[0]
        assert ranked["n"] == len(HELD) and ranked["kendall_tau"] == pytest.approx(1.0)  # scores = the truth
    assert main(["rank", str(run), "--truth", str(truth), "--truth-dataset", "cifar100", "--truth-epochs", "12"]) == 2
    assert "holds no --truth-dataset cifar100 --truth-epochs 12" in capsys.readouterr().err


def test_a_search_with_benchmark_adds_its_accuracies(files, truth, ray_session, tmp_path, capsys):
    archs = tmp_path / "archs.txt"
    archs.write_text("\n".join(META[i] for i in HELD) + "\n")
    args = ["search", "--storage", str(tmp_path), "--name", "bench", "-q", "--candidates", str(archs),
            "--benchmark", str(truth), "--set", "supernet.epochs=1", "--set", "supernet.valid_batch_size=64",
            "--set", "searcher.chunk_steps=20", "--set", "searcher.cohort_size=4", "--set", "searcher.num_candidates=None", "--set", "searcher.top_k=1",
            "--set", "searcher.standalone={'C': 4, 'N': 1, 'epochs': 1, 'batch_size': 128}"]
    assert main(args) == 2  # digits has no benchmark dataset
    assert "--benchmark-dataset" in capsys.readouterr().err and not (tmp_path / "bench").exists()
    assert main(args + ["--benchmark-dataset", "cifar10"]) == 0
    candidates = pd.read_parquet(tmp_path / "bench" / "candidates.parquet")
    summary = pd.read_parquet(tmp_path / "bench" / "summary.parquet").iloc[0]
    table = pd.read_parquet(truth).set_index(["arch", "dataset", "epochs"]).sort_index()
    for row in candidates.itertuples():
        assert row.arch_index == META.index(row.arch) and row.arch_code == NB201Arch.from_string(row.arch).index
        assert row.bench_valid_acc == pytest.approx(table.loc[(row.arch, "cifar10-valid", 200), "valid_acc"].mean())
        assert row.bench_test_acc == pytest.approx(table.loc[(row.arch, "cifar10", 200), "test_acc"].mean())
    assert summary["final_arch_index"] == META.index(summary["final_arch"]) and summary["bench_dataset"] == "cifar10"
    assert summary["bench_test_acc"] == pytest.approx(table.loc[(summary["final_arch"], "cifar10", 200), "test_acc"].mean())
