"""The files in cluster/ are what Ray's own tools accept, and they start a cluster.

No cloud, no GPU, no internet: the launcher YAMLs go through Ray's config preparation and
validation (what ``ray up`` does before it contacts the cloud), their head and worker commands
start a real authenticated 2-node cluster on this machine (each node with a fresh HOME, its own
``--temp-dir`` and free ports), Ray's autoscaler scheduler picks their node types for a search's
resource demands, the KubeRay manifests go through Ray's own RayCluster -> autoscaler translation,
and the RayJob's entrypoint through raynas's CLI parser.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster"
LAUNCHERS = ("aws.yaml", "gcp.yaml")
BIN = Path(sys.executable).parent
RAY_VERSION = "2.60.0"

#: demands a search makes with --gpus 1: a supernet actor / standalone training, a light trial
GPU_UNIT = {"CPU": 1, "GPU": 1}
LIGHT_TRIAL = {"CPU": 0.25}


def _launcher(name: str) -> dict:
    """The launcher file as ``ray up`` has it before contacting the cloud: parsed, merged with
    the provider's defaults (setup commands merged, docker checked, min/max workers filled) and
    validated against Ray's schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load((CLUSTER / name).read_text()))
    validate_config(config)
    return config


def _is_gpu(node_type: dict) -> bool:
    return node_type["resources"].get("GPU", 0) > 0


def _is_spot(provider: str, node_config: dict) -> bool:
    if provider == "aws":
        return node_config.get("InstanceMarketOptions", {}).get("MarketType") == "spot"
    scheduling = node_config.get("scheduling", {})
    return scheduling.get("provisioningModel") == "SPOT" or scheduling.get("preemptible") is True


# -- 1. Ray's own preparation and validation -----------------------------------------------------


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_file_passes_rays_preparation_and_validation(name):
    config = _launcher(name)
    provider = config["provider"]["type"]
    assert provider == name.split(".")[0]
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    # declared, not detected: Ray's GCP provider detects nothing, AWS detection needs the cloud
    assert all(t["resources"] for t in types.values())
    assert head["resources"] == {"CPU": 0}, "no work on the head"
    gpu = {n: t for n, t in types.items() if _is_gpu(t)}
    assert gpu and all(t["min_workers"] == 0 for t in gpu.values()), "GPU workers scale from zero"
    assert any(_is_spot(provider, t["node_config"]) for t in gpu.values()), "a spot GPU worker type"
    assert any(_is_spot(provider, t["node_config"]) for t in types.values() if not _is_gpu(t) and t is not head)
    for t in gpu.values():
        assert "--gpus all" in t["docker"]["worker_run_options"]
        if provider == "gcp":
            (accelerator,) = t["node_config"]["guestAccelerators"]
            assert accelerator["acceleratorCount"] == t["resources"]["GPU"]
            assert t["node_config"]["scheduling"]["onHostMaintenance"] == "TERMINATE"
            items = {i["key"]: i["value"] for i in t["node_config"]["metadata"]["items"]}
            assert items["install-nvidia-driver"] == "True"
    # Ray pinned: the image and what the setup installs
    assert re.fullmatch(rf"rayproject/ray:{re.escape(RAY_VERSION)}-py311-(gpu|cu\d+)", config["docker"]["image"])
    assert any(f"ray[default,tune]=={RAY_VERSION}" in c and "raynas[cluster]" in c for c in config["setup_commands"])
    # the upload is the code: no venv, runs, git, caches
    assert {f"**/{folder}" for folder in (".venv", "runs", ".git", "__pycache__")} <= set(config["rsync_exclude"])
    assert ".gitignore" in config["rsync_filter"]
    # the token goes to every node (file_mounts reach each worker through the head)
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        (start,) = [c for c in commands if "ray start" in c]
        assert "RAY_AUTH_MODE=token ray start" in start


# -- 2. the head and worker commands start an authenticated cluster ------------------------------


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


#: commands that need the cloud or the internet (package installs, docker, root)
_CLOUD_ONLY = re.compile(r"\b(pip|apt-get|apt|sudo|docker|curl|wget|gcloud|aws)\b")
#: options of `ray start` that the local run sets itself (ports, autoscaler bootstrap file)
_REPLACED = re.compile(r"\s--(port|object-manager-port|autoscaling-config)[= ]\S+")


def _local_commands(config: dict, head: bool) -> list[str]:
    """What the launcher runs on a node (setup, then ray start), minus `ray stop` and what needs
    the cloud; nothing else is changed here."""
    setup = config["head_setup_commands" if head else "worker_setup_commands"]
    start = config["head_start_ray_commands" if head else "worker_start_ray_commands"]
    out = [c for c in setup if not _CLOUD_ONLY.search(c)]
    out += [c for c in start if c.strip() != "ray stop"]
    return out


def _rewrite_for_one_machine(command: str, temp_dir: str, gcs_port: int, head: bool) -> str:
    """Two nodes on one machine: the head's port (and the worker's address) become a free port,
    every node gets its own --temp-dir and free ports; the autoscaler's bootstrap file (written
    by `ray up`, naming the cloud provider) is left out."""
    if "ray start" not in command:
        return command
    command = _REPLACED.sub("", command)
    command = re.sub(r"\$RAY_HEAD_IP:\d+", f"$RAY_HEAD_IP:{gcs_port}", command)
    ports = _free_ports(7)
    flags = [f"--temp-dir={temp_dir}", "--node-ip-address=127.0.0.1", "--object-store-memory=100000000",
             f"--object-manager-port={ports[0]}", f"--node-manager-port={ports[1]}",
             f"--metrics-export-port={ports[2]}", f"--dashboard-agent-listen-port={ports[3]}",
             f"--dashboard-agent-grpc-port={ports[4]}", f"--runtime-env-agent-port={ports[5]}",
             "--min-worker-port=0", "--max-worker-port=0"]
    if head:
        flags += [f"--port={gcs_port}", f"--dashboard-port={ports[6]}", "--dashboard-host=127.0.0.1",
                  f"--ray-client-server-port={_free_ports(1)[0]}"]
    return command.replace("ray start", "ray start " + " ".join(flags), 1)


def _clean_env(home: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", RAY_USAGE_STATS_ENABLED="0")
    env.update(extra)
    return env


def _session_pids(sid: int) -> list[int]:
    """Live processes of session ``sid`` (each node command runs in a session of its own; the
    Ray processes `ray start` leaves behind stay in it)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            out.append(int(entry))
    return out


def _pids_with(text: str) -> list[int]:
    """Live processes whose command line names ``text`` (what ``pgrep -f text`` finds)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if text.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                out.append(int(entry))
        except OSError:
            continue
    return out


class _Nodes:
    """The processes this test starts, and their end (SIGTERM, then SIGKILL; by session and by
    temp dir), checked: nothing of them may be left."""

    def __init__(self):
        self.sessions: list[int] = []
        self.temp_dirs: list[str] = []

    def run(self, command: str, env: dict, log: Path, timeout: float = 120) -> None:
        with open(log, "a") as out:
            out.write(f"$ {command}\n")
            out.flush()
            process = subprocess.Popen(["bash", "-c", f"source ~/.bashrc 2>/dev/null; {command}"], env=env,
                                       stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
            self.sessions.append(process.pid)
            try:
                code = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                raise
        if code:
            raise AssertionError(f"exit {code}: {command}\n{log.read_text(errors='replace')[-4000:]}")

    def pids(self) -> list[int]:
        return sorted({p for s in self.sessions for p in _session_pids(s)}
                      | {p for d in self.temp_dirs for p in _pids_with(d)})

    def end(self) -> None:
        for sig, wait_s in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            deadline = time.time() + wait_s
            while self.pids() and time.time() < deadline:
                time.sleep(0.1)
        left = self.pids()
        for d in self.temp_dirs:
            shutil.rmtree(d, ignore_errors=True)
        assert not left, f"processes of the test cluster left: {left}"
        assert not any(_pids_with(d) for d in self.temp_dirs)


_CLIENT = r"""
import json, sys
import ray
ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False)
print("NODES", json.dumps(sorted(n["Alive"] for n in ray.nodes())))
ray.shutdown()
"""


def _client(address: str, env: dict, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _CLIENT, address], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _http_status(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def _start_node(nodes: _Nodes, config: dict, head: bool, laptop: Path, root: Path, gcs_port: int) -> None:
    role = "head" if head else "worker"
    home = root / role
    home.mkdir()
    # the launcher's file mounts that are not the code (here already): the token
    for remote, local in config["file_mounts"].items():
        if remote.startswith("~/.ray/"):
            target = home / remote[2:]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local.replace("~", str(laptop), 1), target)
    temp_dir = tempfile.mkdtemp(prefix=f"rnc{role[0]}", dir="/tmp")
    nodes.temp_dirs.append(temp_dir)
    resources = config["available_node_types"][config["head_node_type"]]["resources"] if head else {"CPU": 1}
    # as the launcher runs them: RAY_HEAD_IP exported, the node type's resources in
    # RAY_OVERRIDE_RESOURCES (1 CPU for the worker here)
    env = _clean_env(home, RAY_HEAD_IP="127.0.0.1", RAY_OVERRIDE_RESOURCES=json.dumps(resources))
    commands = _local_commands(config, head)
    assert any("ray start" in c for c in commands)
    for command in commands:
        nodes.run(_rewrite_for_one_machine(command, temp_dir, gcs_port, head), env, root / f"{role}.log")
    assert "export RAY_AUTH_MODE=token" in (home / ".bashrc").read_text()


@pytest.mark.timeout(300)
def test_launcher_commands_start_an_authenticated_two_node_cluster(tmp_path):
    configs = {name: _launcher(name) for name in LAUNCHERS}
    # aws.yaml and gcp.yaml run the same node commands here (they differ in what needs the cloud):
    # one cluster checks both
    local = {name: (_local_commands(c, True), _local_commands(c, False), c["file_mounts"]["~/.ray/auth_token"],
                    c["available_node_types"][c["head_node_type"]]["resources"]) for name, c in configs.items()}
    assert len({json.dumps(v) for v in local.values()}) == 1, local
    config = configs[LAUNCHERS[0]]

    laptop = tmp_path / "laptop"  # where `ray up` runs: the token is made there, once
    laptop.mkdir()
    subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=_clean_env(laptop), check=True,
                   capture_output=True, timeout=60)
    token = (laptop / ".ray" / "auth_token").read_text().strip()
    assert len(token) >= 32

    nodes = _Nodes()
    gcs_port = _free_ports(1)[0]
    address = f"127.0.0.1:{gcs_port}"
    try:
        _start_node(nodes, config, True, laptop, tmp_path, gcs_port)
        _start_node(nodes, config, False, laptop, tmp_path, gcs_port)

        # a driver with the token (RAY_AUTH_MODE=token, ~/.ray/auth_token) sees both nodes
        deadline = time.time() + 60
        while True:  # the worker's raylet registers a moment after `ray start` returns
            done = _client(address, _clean_env(laptop, RAY_AUTH_MODE="token"))
            assert done.returncode == 0, done.stderr[-3000:]
            alive = json.loads(done.stdout.split("NODES", 1)[1])
            if alive == [True, True] or time.time() > deadline:
                break
            time.sleep(1)
        assert alive == [True, True]

        # refused: a driver without a token, and one with a wrong token (both at once; 3 connection
        # attempts each instead of Ray's ~20, one a second)
        stranger = tmp_path / "stranger"
        stranger.mkdir()
        refused = [subprocess.Popen([sys.executable, "-c", _CLIENT, address], text=True,
                                    env={**env, "RAY_gcs_server_port_wait_time_s": "3"},
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                   for env in (_clean_env(stranger),
                               _clean_env(stranger, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 32))]
        try:
            # meanwhile: the dashboard (what `ray job submit` talks to) wants the token too
            (dashboard,) = re.findall(r"--dashboard-port=(\d+)", (tmp_path / "head.log").read_text())
            url = f"http://127.0.0.1:{dashboard}/api/jobs/"
            deadline = time.time() + 60
            while _http_status(url, token) != 200 and time.time() < deadline:
                time.sleep(1)
            assert _http_status(url, token) == 200
            assert _http_status(url) == 401
            assert _http_status(url, "0" * 32) == 403
            for process in refused:
                out, err = process.communicate(timeout=120)
                assert process.returncode != 0 and "NODES" not in out
                assert re.search(r"(?i)authentication|token", err), err[-3000:]
        finally:
            for process in refused:
                if process.poll() is None:
                    process.kill()
                    process.wait()
    finally:
        nodes.end()


# -- 3. the autoscaler launches the GPU worker type for a search's demands -----------------------


def _nodes_for(node_types: dict, head_type: str, demands: list[dict], max_to_add: int = 100):
    """Ray's own bin-packing of pending demands onto node types to launch (v1 autoscaler)."""
    from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
    from ray.autoscaler._private.resource_demand_scheduler import _default_utilization_scorer, get_nodes_for

    scorer = functools.partial(_default_utilization_scorer,
                               node_availability_summary=NodeAvailabilitySummary(node_availabilities={}))
    to_add, residual = get_nodes_for(node_types, {head_type: 1}, head_type, max_to_add, demands, scorer)
    return dict(to_add), residual


def _check_scheduling(node_types: dict, head_type: str, spot_gpu: str):
    gpu_types = {n for n, t in node_types.items() if _is_gpu(t)}
    # one supernet actor and its light trials (and a standalone training later): one GPU node
    to_add, residual = _nodes_for(node_types, head_type, [GPU_UNIT] + [LIGHT_TRIAL] * 4)
    assert to_add == {spot_gpu: 1} and not residual
    # a standalone training alone
    assert _nodes_for(node_types, head_type, [GPU_UNIT]) == ({spot_gpu: 1}, [])
    # few-shot: 5 sub-supernet actors -> 5 GPU nodes, spot first
    to_add, residual = _nodes_for(node_types, head_type, [GPU_UNIT] * 5 + [LIGHT_TRIAL] * 5)
    assert set(to_add) <= gpu_types and sum(to_add.values()) == 5 and to_add[spot_gpu] == 5 and not residual
    # more GPU demand than spot allows: the on-demand GPU type takes the rest
    spot_max = node_types[spot_gpu]["max_workers"]
    to_add, residual = _nodes_for(node_types, head_type, [GPU_UNIT] * (spot_max + 1))
    assert to_add[spot_gpu] == spot_max and sum(to_add.values()) == spot_max + 1 and not residual
    # CPU-only demand never launches a GPU node
    for demands in ([LIGHT_TRIAL] * 4, [LIGHT_TRIAL] * 40, [{"CPU": 1}]):
        to_add, residual = _nodes_for(node_types, head_type, demands)
        assert to_add and not set(to_add) & gpu_types and not residual
    # nothing fits on the head (0 CPUs): every demand goes to a worker
    assert head_type not in _nodes_for(node_types, head_type, [LIGHT_TRIAL])[0]


@pytest.mark.parametrize("name", LAUNCHERS)
def test_autoscaler_launches_the_gpu_worker_type_for_a_search(name):
    config = _launcher(name)
    _check_scheduling(config["available_node_types"], config["head_node_type"], "gpu_spot")


def _raynas_demands(node_types: dict, head_type: str, method: str, gpus: float, few_shot: str | None = None):
    """The requests raynas itself makes for a search on this cluster file (each phase at once)."""
    from raynas.settings import make_config
    from raynas.cluster import ClusterView
    from raynas.plan import demands

    overrides = {"resources": {"gpus": gpus}}
    if few_shot:
        overrides["searcher"] = {"few_shot": few_shot}
    config = make_config(method, dataset="digits", preset="paper", overrides=overrides)
    view = ClusterView.from_node_types(node_types, head_type)
    return {phase: demands(config, view, phase=phase) for phase in ("supernets", "standalone")}


@pytest.mark.parametrize("name", LAUNCHERS)
def test_autoscaler_places_what_raynas_asks_for(name):
    config = _launcher(name)
    types, head = config["available_node_types"], config["head_node_type"]
    gpu_types = {n for n, t in types.items() if _is_gpu(t)}
    for method, few_shot in (("rsps", None), ("setn", None), ("rsps", "1<-0")):
        for phase, asks in _raynas_demands(types, head, method, 1, few_shot).items():
            assert asks and any(a.get("GPU") == 1 for a in asks), (method, phase, asks)
            to_add, residual = _nodes_for(types, head, asks)
            assert not residual and set(to_add) <= gpu_types and to_add.get("gpu_spot"), (method, phase, to_add)
        # --gpus 0: a CPU-only search never starts a GPU node
        for phase, asks in _raynas_demands(types, head, method, 0, few_shot).items():
            to_add, residual = _nodes_for(types, head, asks)
            assert to_add and not residual and not set(to_add) & gpu_types, (method, phase, to_add)


# -- 4. KubeRay ---------------------------------------------------------------------------------


def _manifests() -> dict[str, dict]:
    out = {}
    for path in sorted((CLUSTER / "kuberay").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            out[doc["kind"]] = doc
    return out


def test_kuberay_raycluster_has_token_auth_pinned_ray_and_autoscaled_gpu_groups():
    assert not (CLUSTER / "kuberay.yaml").exists()
    docs = _manifests()
    cr = docs["RayCluster"]
    spec = cr["spec"]
    assert spec["rayVersion"] == RAY_VERSION
    assert spec["authOptions"] == {"mode": "token"}
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    images = {c["image"] for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
              for c in g["template"]["spec"]["containers"]}
    assert len(images) == 1
    gpu_groups = [g for g in spec["workerGroupSpecs"] if "num-gpus" in g["rayStartParams"]]
    assert gpu_groups
    for g in gpu_groups:
        (container,) = g["template"]["spec"]["containers"]
        limits = container["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) == int(g["rayStartParams"]["num-gpus"]) >= 1
        assert int(limits["cpu"]) == int(g["rayStartParams"]["num-cpus"])
        assert g["minReplicas"] == 0 and g["maxReplicas"] >= 1
    # pods reach the bucket as a ServiceAccount of the manifests (no shared volume)
    assert docs["ServiceAccount"]["metadata"]["name"] == "raynas"
    assert all(g["template"]["spec"]["serviceAccountName"] == "raynas"
               for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]])
    assert "PersistentVolumeClaim" not in docs

    # Ray's own translation of the RayCluster into the autoscaler's node types, and its scheduling
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    cr = copy.deepcopy(cr)
    cr["metadata"].setdefault("namespace", "default")
    autoscaling = _derive_autoscaling_config_from_ray_cr(cr)
    types = autoscaling["available_node_types"]
    assert types["headgroup"]["resources"]["CPU"] == 0
    assert types["gpu-spot"]["resources"]["GPU"] == 1 and types["gpu-spot"]["priority"] > types["gpu"]["priority"]
    _check_scheduling(types, autoscaling["head_node_type"], "gpu-spot")


def test_kuberay_rayjob_runs_a_raynas_search_the_cli_accepts():
    docs = _manifests()
    job = docs["RayJob"]["spec"]
    assert job["clusterSelector"] == {"ray.io/cluster": docs["RayCluster"]["metadata"]["name"]}
    argv = shlex.split(job["entrypoint"])
    assert argv[:2] == ["raynas", "search"]
    from raynas.cli import build_parser

    args = build_parser().parse_args(argv[1:])  # exits 2 (SystemExit) on an argument it doesn't know
    assert args.command == "search" and args.address == "auto"
    assert args.storage.startswith("s3://") and args.data_dir.startswith("s3://")
    assert args.gpus == 1


# -- 5. the Dockerfile --------------------------------------------------------------------------


def test_dockerfile_pins_ray_and_installs_the_cluster_extra():
    lines = []
    for raw in (CLUSTER / "Dockerfile").read_text().splitlines():  # join continuation lines
        raw = raw.strip()
        if lines and lines[-1].endswith("\\"):
            lines[-1] = lines[-1][:-1] + " " + raw
        elif raw and not raw.startswith("#"):
            lines.append(raw)
    froms = [ln.split()[1] for ln in lines if ln.upper().startswith("FROM ")]
    assert froms == [f"rayproject/ray:{RAY_VERSION}-py311-gpu"]
    runs = " ".join(ln for ln in lines if ln.upper().startswith("RUN "))
    assert re.search(r"pip install [^&]*-c /tmp/ray-constraint\.txt [^&]*\"\.\[cluster\]\"", runs)
    assert f'echo "ray=={RAY_VERSION}" > /tmp/ray-constraint.txt' in runs
    assert "--index-url" in runs and "torch" in runs  # torch once, from the CUDA wheel index
    copied = {ln.split()[-2] for ln in lines if ln.upper().startswith("COPY ")}
    assert {"raynas", "spaces", "searchers"} <= copied


def test_docs_name_the_cluster_files():
    readme = (ROOT / "README.md").read_text()
    assert "cluster/" in readme
    guide = (CLUSTER / "README.md").read_text()
    for needle in ("ray up cluster/aws.yaml", "kubectl apply -f cluster/kuberay/", "ray get-auth-token --generate",
                   "ray job submit", "--gpus 1", "--storage s3://", "raynas status s3://", "read_parquet"):
        assert needle in guide, needle
    assert "ray submit " not in guide
