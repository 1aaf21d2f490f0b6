"""A search on a real multi-node Ray cluster (``ray start`` nodes, token auth on, 1 CPU each; see
tests/multinode.py), and what it survives: a few-shot search over ``--address`` spreads its
sub-supernets over both nodes; a worker node lost mid-run (SIGKILL of its every process) is
survived in the same session; a head lost with its driver is resumed on a new cluster; and each
run equals the uninterrupted one. A cluster that cannot be joined (no token, a wrong one, a wrong
address, a dead head) is refused in one line, exit 2, leaving no run directory; a head that dies
under a running driver ends it in one line, the run resumable.

The drivers are ``raynas`` processes (as a user runs them; a driver must be able to die with its
head); the storage is a local folder every node of this machine sees.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.multinode import RayCluster, free_port

RAYNAS = [sys.executable, "-m", "raynas.cli"]
#: ``raynas ARGS`` timed from ``main()`` on (after the imports, which a loaded machine slows):
#: prints the seconds as the last line of stdout, exits with main's code
TIMED = [sys.executable, "-c", (
    "import sys, time\n"
    "import raynas.cli, raynas.connect, raynas.driver, raynas.lifecycle\n"
    "started = time.monotonic()\n"
    "code = raynas.cli.main(sys.argv[1:])\n"
    "print(f'SECONDS {time.monotonic() - started:.2f}', flush=True)\n"
    "sys.exit(code)\n")]
SEED = 1
#: a tiny few-shot rsps (edge 1<-0: 5 sub-supernets), default resources
FEW = {
    "supernet": {"epochs": 2, "valid_batch_size": 64, "C": 4, "N": 1},
    "searcher": {"chunk_steps": 16, "num_candidates": 10, "cohort_size": 5, "top_k": 1, "few_shot_steps": 8,
                 "standalone": {"C": 4, "N": 1, "epochs": 1, "batch_size": 128}},
}
#: the same search, scoring only (no standalone training): the kills below happen before its
#: standalone phase, and its candidates must equal the reference's (the phase comes after them);
#: ~50 s less per run on 2 cores
SCORE_ONLY = {"supernet": FEW["supernet"], "searcher": {**FEW["searcher"], "top_k": 0}}
#: the candidates' columns two equal runs share (wall and device seconds differ)
COLUMNS = ["arch", "supernet", "supernet_version", "valid_acc", "valid_loss", "batches", "samples"]

pytestmark = pytest.mark.slow


def _set_args(settings: dict) -> list[str]:
    return [a for section, values in settings.items() for key, value in values.items()
            for a in ("--set", f"{section}.{key}={value!r}")]


def _search(storage: Path, name: str, address: str, settings: dict = FEW, few_shot: bool = True) -> list[str]:
    return ["search", "--method", "rsps", *(["--few-shot", "0"] if few_shot else []), "--seed", str(SEED),
            "--storage", str(storage), "--name", name, "--address", address, "-q", *_set_args(settings)]


class Driver:
    """A ``raynas`` process in a session of its own (killed with everything it started)."""

    def __init__(self, args: list[str], env: dict, log_dir: Path, name: str) -> None:
        self.out, self.err = log_dir / f"{name}.out", log_dir / f"{name}.err"
        self.started = time.monotonic()
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.process = subprocess.Popen(RAYNAS + args, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                            start_new_session=True)

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the driver did not end within {timeout:.0f} s:\n{self.stderr[-3000:]}")

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)

    @property
    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def running(self) -> bool:
        return self.process.poll() is None


@pytest.fixture
def driver_factory(tmp_path):
    """Start drivers; any still running at the end of the test is killed."""
    drivers: list[Driver] = []

    def start(args: list[str], env: dict, name: str = "driver") -> Driver:
        drivers.append(Driver(args, env, tmp_path, f"{name}-{len(drivers)}"))
        return drivers[-1]

    yield start
    for d in drivers:
        if d.running():
            d.kill()


def _unit_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "rows.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # the line being written
        if "event" not in row:
            rows.append(row)
    return rows


def _sub_supernets_train(rows: list[dict]) -> bool:
    return any(r.get("kind") == "train" and r.get("supernet", 0) >= 1 for r in rows)


def _first_train(rows: list[dict]) -> bool:
    return any(r.get("kind") == "train" for r in rows)


def _wait_for(driver: Driver, run_dir: Path, moment, timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and driver.running():
        if moment(_unit_rows(run_dir)):
            return
        time.sleep(0.05)
    assert driver.running(), f"the search ended before {moment.__name__}:\n{driver.stderr[-3000:]}"
    pytest.fail(f"no {moment.__name__} within {timeout:.0f} s")


def _candidates(run_dir: Path) -> pd.DataFrame:
    table = pd.read_parquet(run_dir / "candidates.parquet")
    return table[COLUMNS].sort_values(["supernet", "arch"]).reset_index(drop=True)


def _manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def _two_nodes(cluster: RayCluster) -> list[str]:
    """The cluster as the tests want it: a live head and one live worker (a head lost takes its
    workers with it: a new cluster then)."""
    head = next((n for n in reversed(cluster.nodes) if n.head and n.alive()), None)
    if head is None or head.address != cluster.address:
        for node in cluster.nodes:
            if node.alive():
                cluster.kill(node)
        cluster.start_head()
    workers = [n for n in cluster.nodes if not n.head and n.alive() and n.address == cluster.address]
    if not workers:
        cluster.add_node()
    return cluster.wait_for_nodes(2)


def _seconds(stdout: str) -> float:
    return float(stdout.strip().splitlines()[-1].split()[1])


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr[-3000:]}"
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = RayCluster(tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start_head()
        cluster.add_node()
        cluster.wait_for_nodes(2)
        yield cluster
    finally:
        temp_dirs = [str(n.temp_dir) for n in cluster.nodes]
        cluster.shutdown()  # raises if a process of a node survives it
        if temp_dirs:
            left = subprocess.run(["pgrep", "-f", "|".join(temp_dirs)], capture_output=True, text=True).stdout.split()
            assert not left, f"processes of the test cluster left: {left}"


@pytest.fixture(scope="module")
def reference(cluster, tmp_path_factory):
    """One uninterrupted few-shot search on the 2-node cluster (the runs below must equal it)."""
    storage = tmp_path_factory.mktemp("reference")
    nodes = _two_nodes(cluster)
    driver = Driver(_search(storage, "ref", cluster.address), cluster.env(), storage, "ref")
    code = driver.wait(timeout=600)  # a search that cannot be placed hangs: fail, with its stderr
    return {"run_dir": storage / "ref", "code": code, "stderr": driver.stderr, "nodes": nodes,
            "seconds": time.monotonic() - driver.started}


# --- joining: one line, exit 2, nothing left ---------------------------------------------------------
def test_a_cluster_that_refuses_the_token_is_one_line_and_leaves_nothing(cluster, tmp_path):
    _two_nodes(cluster)
    wrong = "0" * 64
    cases = {  # what the driver's environment lacks -> what the one line must say
        "no token, no auth mode": (cluster.env(token=False), "RAY_AUTH_MODE"),
        "auth mode token, no token": (cluster.env(token=False, RAY_AUTH_MODE="token"), "no token"),
        "a wrong token": (cluster.env(token=wrong), "rejects this token"),
    }  # the token without the auth mode, and the rest: tests/test_connect.py
    runs = {}
    for i, (case, (env, _)) in enumerate(cases.items()):  # all at once: each is a Python start-up
        storage = tmp_path / f"storage{i}"
        storage.mkdir()
        runs[case] = (storage, subprocess.Popen(TIMED + _search(storage, "r", cluster.address), env=env, text=True,
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for case, (storage, process) in runs.items():
        out, err = process.communicate(timeout=180)
        assert process.returncode == 2, (case, out, err)
        seconds = _seconds(out)
        line = _one_line(err)
        assert line.startswith(f"raynas search: error: cannot connect to the Ray cluster at {cluster.address}: "), line
        assert cases[case][1] in line and "ray get-auth-token" in line, (case, line)
        assert list(storage.iterdir()) == [], (case, list(storage.iterdir()))
        assert seconds < 10, (case, seconds)  # Ray alone: 20 s of retries, then a bare ConnectionError


def test_an_address_where_nothing_listens_is_one_line_and_leaves_nothing(cluster, tmp_path):
    address = f"127.0.0.1:{free_port()}"
    done = subprocess.run(TIMED + _search(tmp_path / "storage", "r", address), env=cluster.env(), capture_output=True,
                          text=True, timeout=180)
    line = _one_line(done.stderr)
    assert done.returncode == 2 and "nothing listens there (connection refused)" in line, line
    assert "check --address" in line
    assert not (tmp_path / "storage").exists() or list((tmp_path / "storage").iterdir()) == []
    assert _seconds(done.stdout) < 10  # Ray alone: minutes


# --- a few-shot search on two nodes ---------------------------------------------------------------------
def test_few_shot_search_over_address_spreads_sub_supernets_over_both_nodes(reference):
    assert reference["code"] == 0, reference["stderr"][-3000:]
    run_dir = reference["run_dir"]
    manifest = _manifest(run_dir)
    assert manifest["status"] == "complete"
    few = manifest["few_shot"]
    assert few["sub_supernets"] == 5
    sub_nodes = [n for n in few["nodes"][1:] if n]
    assert len(sub_nodes) == 5 and set(sub_nodes) == set(reference["nodes"]), (few["nodes"], reference["nodes"])
    candidates = _candidates(run_dir)
    assert len(candidates) == 10 and candidates["supernet"].between(1, 5).all()
    assert pd.read_parquet(run_dir / "summary.parquet").iloc[0]["final_arch"] in set(candidates["arch"])


def test_a_worker_node_lost_mid_run_is_survived_and_the_run_equals_the_uninterrupted_one(
        cluster, reference, driver_factory, tmp_path):
    assert reference["code"] == 0, reference["stderr"][-3000:]
    _two_nodes(cluster)
    worker = next(n for n in reversed(cluster.nodes) if not n.head and n.alive())
    driver = driver_factory(_search(tmp_path, "lost-worker", cluster.address, SCORE_ONLY), cluster.env(), "lost-worker")
    run_dir = tmp_path / "lost-worker"
    _wait_for(driver, run_dir, _sub_supernets_train)
    cluster.kill(worker)  # every process of the node at once: a machine lost
    cluster.add_node(wait=False)  # its replacement (an autoscaler's new node)
    assert driver.wait(timeout=600) == 0, driver.stderr[-3000:]
    assert _manifest(run_dir)["status"] == "complete"
    assert _manifest(run_dir)["sessions"] == 1
    pd.testing.assert_frame_equal(_candidates(run_dir), _candidates(reference["run_dir"]))


def test_a_head_lost_with_its_driver_resumes_on_a_new_head_and_equals_the_uninterrupted_one(
        cluster, reference, driver_factory, tmp_path):
    assert reference["code"] == 0, reference["stderr"][-3000:]
    _two_nodes(cluster)
    old = [n for n in cluster.nodes if n.alive()]
    driver = driver_factory(_search(tmp_path, "lost-head", cluster.address, SCORE_ONLY), cluster.env(), "lost-head")
    run_dir = tmp_path / "lost-head"
    _wait_for(driver, run_dir, _sub_supernets_train)
    head = next(n for n in old if n.head)
    driver.kill()  # the driver ran on the head machine: both gone at once
    cluster.kill(head)
    for node in old:  # its workers cannot join another head: they go too
        if node.alive():
            cluster.kill(node)
    dead_head = head.address

    # the dead head is refused in one line; the run directory is untouched
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    done = subprocess.run(RAYNAS + ["search", "--resume", str(run_dir), "--address", dead_head, "-q"],
                          env=cluster.env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "nothing listens there" in _one_line(done.stderr), done.stderr
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before

    cluster.start_head()
    cluster.add_node()
    cluster.wait_for_nodes(2)
    resumed = driver_factory(["search", "--resume", str(run_dir), "--address", cluster.address, "-q"], cluster.env(),
                             "resumed")
    assert resumed.wait(timeout=600) == 0, resumed.stderr[-3000:]
    manifest = _manifest(run_dir)
    assert manifest["status"] == "complete" and manifest["sessions"] == 2
    pd.testing.assert_frame_equal(_candidates(run_dir), _candidates(reference["run_dir"]))
    ref_summary = pd.read_parquet(reference["run_dir"] / "summary.parquet").iloc[0]
    summary = pd.read_parquet(run_dir / "summary.parquet").iloc[0]
    for column in ("candidates", "supernet_steps"):
        assert summary[column] == ref_summary[column], column


# --- a head that dies --------------------------------------------------------------------------------
def test_a_head_that_dies_under_a_running_search_ends_it_in_one_line_resumable(cluster, driver_factory, tmp_path,
                                                                               capsys):
    _two_nodes(cluster)
    head = next(n for n in reversed(cluster.nodes) if n.head and n.alive())
    settings = {"supernet": {"epochs": 3, "valid_batch_size": 64, "C": 4, "N": 1},
                "searcher": {"chunk_steps": 8, "num_candidates": 4, "cohort_size": 4, "top_k": 0}}
    env = cluster.env(RAYNAS_HEAD_LOST_AFTER_S="3")
    driver = driver_factory(_search(tmp_path, "dying", cluster.address, settings, few_shot=False), env, "dying")
    run_dir = tmp_path / "dying"
    _wait_for(driver, run_dir, _first_train)
    cluster.kill(head)
    lost = time.monotonic()
    code = driver.wait(timeout=120)
    seconds = time.monotonic() - lost
    lines = [line for line in driver.stderr.splitlines() if line.startswith("raynas")]
    assert code == 130, driver.stderr[-3000:]
    assert "Traceback" not in driver.stderr
    assert len(lines) == 1 and lines[0] == driver.stderr.strip().splitlines()[-1], driver.stderr[-3000:]
    assert f"lost the Ray cluster: its head at {head.address} has not answered" in lines[0]
    assert "--resume" in lines[0] and str(run_dir) in lines[0], lines[0]
    assert seconds < 45  # before Ray's own end of the process (60 s), which writes nothing
    manifest = _manifest(run_dir)
    assert manifest["status"] == "interrupted"
    from raynas.cli import main  # status reads the run's files alone: no process of its own needed

    capsys.readouterr()
    assert main(["status", str(run_dir), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "interrupted"


def test_a_dead_head_is_one_line_and_leaves_nothing(cluster, tmp_path):
    head = next((n for n in reversed(cluster.nodes) if n.head), None)
    if head is None:
        head = cluster.start_head()
    if head.alive():
        cluster.kill(head)
    storage = tmp_path / "storage"
    storage.mkdir()
    done = subprocess.run(TIMED + _search(storage, "r", head.address), env=cluster.env(), capture_output=True,
                          text=True, timeout=180)
    line = _one_line(done.stderr)
    assert done.returncode == 2, done.stderr
    assert line == (f"raynas search: error: cannot connect to the Ray cluster at {head.address}: nothing listens "
                    "there (connection refused): the head is down, or the address is wrong; check --address: it is "
                    "the head's GCS address, HOST:PORT as `ray start --head` printed it (port 6379 by default), and "
                    "the head must be up"), line
    assert list(storage.iterdir()) == []
    assert _seconds(done.stdout) < 10  # Ray alone: 60 s, and its own message
