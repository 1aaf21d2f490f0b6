"""``raynas export``: a finished search's final network, loaded without raynas, reproduces the
run's test accuracy; its state dict loads into raynas's network; bad inputs are refused."""

import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch

from raynas.cli import main
from raynas.data import load_dataset
from raynas.results import read_parquet, write_parquet
from raynas.spaces import get_space
from raynas.storage import Location
from tests.conftest import make_bucket

# the smallest search that ends in a final training: random search (no supernet: the fastest
# method to finish) over 2 archs, so the export must pick the winner's training; 3 epochs, so the
# network is no constant predictor and reproducing its accuracy means something
TINY_SEARCH = ["--method", "random", "--dataset", "digits", "--set", "searcher.num_samples=2",
               "--set", "searcher.standalone={'C': 4, 'N': 1, 'epochs': 3, 'batch_size': 128}"]

# torch only: any import of raynas fails, so the export must stand on its own
LOAD_WITHOUT_RAYNAS = r"""
import importlib.abc, json, sys
class NoRaynas(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("raynas", "spaces", "searchers"):
            raise ImportError("raynas is not installed here: " + name)
sys.meta_path.insert(0, NoRaynas())
import torch
export, data = sys.argv[1], sys.argv[2]
meta = json.load(open(export + "/export.json"))
net = torch.export.load(export + "/" + meta["files"]["program"]).module()
split = torch.load(data, weights_only=True)
correct = 0
with torch.no_grad():
    for i in range(0, len(split["labels"]), 512):  # as raynas evaluates: in order, batches of 512
        logits = net(split["images"][i:i + 512])
        correct += (logits.argmax(1) == split["labels"][i:i + 512]).sum().item()
print(json.dumps({"accuracy": correct / len(split["labels"]), "logits": net(split["images"][:4]).tolist(),
                  "raynas": sorted(m for m in sys.modules if m.split(".")[0] == "raynas")}))
"""


@pytest.fixture(scope="module")
def finished_run(ray_session, tmp_path_factory):
    storage = tmp_path_factory.mktemp("runs")
    assert main(["search", "--storage", str(storage), "--name", "exp", "-q", *TINY_SEARCH]) == 0
    return storage / "exp"


@pytest.fixture(scope="module")
def exported(finished_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "final"
    assert main(["export", str(finished_run), "--output", str(out)]) == 0
    return out


def test_export_reproduces_the_test_accuracy_without_raynas(finished_run, exported, tmp_path):
    summary = pd.read_parquet(finished_run / "summary.parquet").iloc[0]
    meta = json.loads((exported / "export.json").read_text())
    splits = load_dataset("digits")
    data = tmp_path / "test.pt"
    torch.save({"images": splits.test.images, "labels": splits.test.labels}, data)
    done = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_RAYNAS, str(exported), str(data)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["raynas"] == []
    assert got["accuracy"] == summary["standalone_test_acc"] == meta["accuracy"]["test"] == meta["accuracy"]["table_test"]
    assert 0.15 < got["accuracy"] < 1.0  # 3 epochs on digits: better than chance, a real network

    # what the JSON says is what the run did
    space = get_space("nb201")
    arch = space.parse(summary["final_arch"])
    assert meta["arch"] == summary["final_arch"] and meta["ops"] == [space.op_names[o] for o in arch.ops]
    assert meta["benchmark_index"] == space.benchmark_index(arch) == summary["final_arch_index"]
    assert meta["arch_code"] == arch.index != meta["benchmark_index"]
    assert set(meta["benchmark"]) == {"bench_dataset", "bench_valid_acc", "bench_test_acc"}  # none looked up: nulls
    assert meta["input"]["mean"] == list(splits.info.mean) and meta["input"]["std"] == list(splits.info.std)
    assert meta["input"]["shape"] == ["batch", 1, 8, 8]
    recipe = meta["recipe"]
    assert (recipe["C"], recipe["N"], recipe["epochs"], recipe["batch_size"], recipe["seed"]) == (4, 1, 3, 128, 777)
    assert recipe["optimizer"]["name"] == "SGD" and recipe["optimizer"]["lr"] == 0.1
    manifest = json.loads((finished_run / "manifest.json").read_text())
    assert recipe["data"]["fingerprint"] == manifest["dataset"]["fingerprint"] == splits.fingerprint()
    assert recipe["data"]["name"] == "digits" and recipe["train_size"] == len(splits.train)
    # two trainings, two checkpoints: the export holds the winner's
    assert len(list((finished_run / "checkpoints").iterdir())) == 2
    assert meta["source"]["unit_key"] == f"standalone/{summary['final_arch']}"
    assert (finished_run / meta["source"]["checkpoint"]).is_file()

    # the state dict loads into raynas's own network class and computes what the program does
    net = space.build_network(arch, C=4, N=1, num_classes=10, in_channels=1)
    net.load_state_dict(torch.load(exported / "state_dict.pt", weights_only=True))
    with torch.no_grad():
        expected = net.eval()(splits.test.images[:4])
    assert torch.allclose(expected, torch.tensor(got["logits"]), atol=1e-5)


def test_export_refuses_bad_inputs_and_leaves_nothing(finished_run, exported, tmp_path, capsys):
    def refused(run, out) -> str:
        capsys.readouterr()
        assert main(["export", str(run), "--output", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("raynas export: error:")
        return err

    # an existing non-empty output is never touched
    before = sorted(p.name for p in exported.iterdir())
    assert "not an empty folder" in refused(finished_run, exported)
    assert sorted(p.name for p in exported.iterdir()) == before
    out = tmp_path / "out"
    assert "not a raynas run directory" in refused(tmp_path, out)

    # a run that is not complete: its summary says interrupted
    interrupted = tmp_path / "interrupted"
    shutil.copytree(finished_run, interrupted, ignore=shutil.ignore_patterns("tune", "supernets"))
    summary = read_parquet(interrupted / "summary.parquet")
    summary["status"] = "interrupted"
    write_parquet(interrupted / "summary.parquet", summary)
    assert "interrupted, not complete" in refused(interrupted, out)

    # a complete run whose final checkpoint is gone
    lost = tmp_path / "lost"
    shutil.copytree(finished_run, lost, ignore=shutil.ignore_patterns("tune", "supernets"))
    shutil.rmtree(lost / "checkpoints")
    assert "no final checkpoint" in refused(lost, out)
    assert main(["export", str(finished_run), "--output", str(out), "--train-seed", "5"]) == 2
    assert not out.exists()


def test_export_between_buckets(finished_run, exported, s3_server):
    """A run directory in object storage exports into object storage (runs on a cluster live there)."""
    from raynas.export import export_run

    bucket = make_bucket("export-test")
    run = Location(f"{bucket}/runs/exp")
    for path in finished_run.rglob("*"):
        relative = path.relative_to(finished_run)
        if path.is_file() and relative.parts[0] not in ("tune", "supernets"):
            (run / str(relative)).write_bytes(path.read_bytes())
    done = export_run(str(run), f"{bucket}/exports/final")
    assert done["files"] == [f"{bucket}/exports/final/{name}" for name in ("model.pt2", "state_dict.pt", "export.json")]
    local = json.loads((exported / "export.json").read_text())
    remote = json.loads(Location(f"{bucket}/exports/final/export.json").read_text())
    assert remote["source"].pop("run_dir") == str(run) and local["source"].pop("run_dir") == str(finished_run)
    assert remote == local
    assert Location(f"{bucket}/exports/final/state_dict.pt").read_bytes() == (exported / "state_dict.pt").read_bytes()
