"""A real multi-node Ray cluster on one machine, made of ``ray start`` processes (not a test file).

Each node is one ``ray start --block`` process started in a session of its own: every process of
the node (its raylet, GCS, agents, and its workers, which the raylet puts in process groups of
their own) is in that session, so :meth:`RayCluster.kill` SIGKILLs the whole node at once (a
machine lost), and :meth:`RayCluster.shutdown` ends every node this cluster started and nothing
else (never ``ray stop``, which ends every Ray on the machine). Every node gets its own short
``--temp-dir`` under /tmp and free ports (1 CPU, no GPU, no dashboard by default); token
authentication is on with a generated token, and ``HOME`` is a fresh folder, so no node or
driver reads or writes the user's ``~/.ray``.

    cluster = RayCluster(tmp_path / "cluster")          # nothing started yet
    head = cluster.start_head()                         # 1 CPU
    cluster.add_node()                                  # 1 CPU, joins by address
    cluster.wait_for_nodes(2)
    subprocess.run([...], env=cluster.env())            # a driver with the cluster's token
    cluster.kill(head); cluster.start_head()            # a fresh head (a new cluster)
    cluster.shutdown()

``pytest`` fixtures should call :meth:`shutdown` in a finalizer; it is idempotent and also
runs at interpreter exit for a cluster that was never shut down.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")

#: what every node and driver of a test cluster runs with (besides the token)
BASE_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
}


def free_port() -> int:
    """A TCP port nothing listens on now (the kernel's pick; free until someone binds it)."""
    return free_ports(1)[0]


def free_ports(count: int, avoid: set[int] | frozenset = frozenset()) -> list[int]:
    """``count`` distinct free TCP ports, none in ``avoid`` (the sockets stay open until all are
    picked, so the kernel cannot hand one out twice)."""
    sockets, ports = [], []
    try:
        while len(ports) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(s)
            s.bind(("0.0.0.0", 0))
            port = s.getsockname()[1]
            if port not in avoid:
                ports.append(port)
    finally:
        for s in sockets:
            s.close()
    return ports


def node_ip() -> str:
    """The address Ray's nodes on this machine advertise (what ``ray start`` prints)."""
    from ray._private.services import get_node_ip_address

    return get_node_ip_address()


@dataclass
class Node:
    """One ``ray start --block`` process group."""

    name: str
    head: bool
    process: subprocess.Popen
    temp_dir: Path
    log: Path
    address: str  # the cluster's GCS address (IP:PORT) this node started or joined
    started_s: float = 0.0
    killed: bool = False

    @property
    def sid(self) -> int:
        return self.process.pid  # start_new_session: the leader's pid is the session's id

    def alive(self) -> bool:
        return self.process.poll() is None

    def pids(self) -> list[int]:
        """Every live process of this node (its raylet, GCS, agents, workers: one session)."""
        return _session_pids(self.sid)


@dataclass
class RayCluster:
    """Real ``ray start`` nodes on this machine (see the module docstring)."""

    root: Path
    num_cpus: int = 1
    token: str | None = field(default_factory=lambda: secrets.token_hex(32))
    nodes: list[Node] = field(default_factory=list)
    address: str | None = None  # the current head's GCS address
    _ports: set = field(default_factory=set, repr=False)  # every port handed to a node

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        (self.root / "home").mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        atexit.register(self.shutdown)

    # -- environment -------------------------------------------------------------------------
    def env(self, *, token: str | None | bool = True, **extra: str) -> dict:
        """The environment of a node or a driver of this cluster: a fresh HOME (never the
        user's ``~/.ray``), token auth on with this cluster's token (``token=False``: no token
        at all, auth mode unset; a string: that token instead)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
        env.update(BASE_ENV, HOME=str(self.root / "home"))
        if token is True:
            token = self.token
        if token:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
        env.update(extra)
        return env

    # -- nodes -------------------------------------------------------------------------------
    def _temp_dir(self, name: str) -> Path:
        # short: Ray's unix socket paths live under it (108 bytes at most)
        return Path(tempfile.mkdtemp(prefix=f"rn{name}-", dir="/tmp"))

    def _start(self, name: str, args: list[str], *, head: bool, num_cpus: int | None,
               port: int | None = None) -> Node:
        temp_dir = self._temp_dir(name)
        log = self.root / "logs" / f"{name}.log"
        names = ["--node-manager-port", "--object-manager-port", "--metrics-export-port",
                 "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port"]
        if head:
            names += ["--port", "--dashboard-port", "--ray-client-server-port"]
        # distinct, and none handed to an earlier node (which may not have bound it yet)
        picked = free_ports(len(names), avoid=self._ports)
        self._ports.update(picked)
        ports = dict(zip(names, picked))
        if head and port:
            ports["--port"] = port
        command = [RAY, "start", "--block", "--disable-usage-stats", f"--temp-dir={temp_dir}",
                   f"--num-cpus={self.num_cpus if num_cpus is None else num_cpus}", "--num-gpus=0",
                   "--min-worker-port=0", "--max-worker-port=0",
                   *(f"{k}={v}" for k, v in ports.items()), *args]
        with open(log, "w") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=self.env(), start_new_session=True, cwd=self.root)
        node = Node(name=name, head=head, process=process, temp_dir=temp_dir, log=log,
                    address=f"{node_ip()}:{ports['--port']}" if head else self.address, started_s=time.time())
        self.nodes.append(node)
        return node

    def start_head(self, *, num_cpus: int | None = None, wait: bool = True, port: int | None = None) -> Node:
        """A new head (a new cluster: a fresh GCS, nothing of an earlier head's state)."""
        node = self._start(f"head{sum(n.head for n in self.nodes)}", ["--head", "--include-dashboard=false"],
                           head=True, num_cpus=num_cpus, port=port)
        self.address = node.address
        if wait:
            self.wait_started(node)
        return node

    def add_node(self, *, num_cpus: int | None = None, wait: bool = True) -> Node:
        """A worker node joining the current head by address."""
        assert self.address, "start a head first"
        node = self._start(f"w{sum(not n.head for n in self.nodes)}", [f"--address={self.address}"], head=False,
                           num_cpus=num_cpus)
        if wait:
            self.wait_started(node)
        return node

    def wait_started(self, node: Node, timeout: float = 120) -> None:
        """Until ``ray start`` says the node runs (it blocks from then on)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if "This command will now block forever" in node.log.read_text(errors="replace"):
                return
            if not node.alive():
                raise RuntimeError(f"`ray start` of node {node.name} exited {node.process.returncode}:\n"
                                   + node.log.read_text(errors="replace")[-3000:])
            time.sleep(0.1)
        raise TimeoutError(f"node {node.name} did not start within {timeout} s:\n"
                           + node.log.read_text(errors="replace")[-3000:])

    def wait_for_nodes(self, count: int, timeout: float = 120) -> list[str]:
        """Until the current head's GCS sees ``count`` alive nodes; returns their node ids."""
        script = (
            "import sys, time\n"
            "from ray._raylet import GcsClient\n"
            "client = GcsClient(address=sys.argv[1])\n"
            "deadline = time.time() + float(sys.argv[3])\n"
            "while True:\n"
            "    alive = [i.hex() for i, n in client.get_all_node_info(timeout=5).items() if n.state == 0]\n"
            "    if len(alive) >= int(sys.argv[2]) or time.time() > deadline: break\n"
            "    time.sleep(0.2)\n"
            "print(' '.join(alive))\n"
        )
        done = subprocess.run([sys.executable, "-c", script, self.address, str(count), str(timeout)],
                              env=self.env(), capture_output=True, text=True, timeout=timeout + 60)
        alive = done.stdout.split()
        if done.returncode or len(alive) < count:
            raise TimeoutError(f"the cluster at {self.address} has {len(alive)} alive node(s), not {count}, "
                               f"after {timeout} s: {done.stderr[-2000:]}")
        return alive

    def kill(self, node: Node) -> None:
        """SIGKILL every process of the node at once: the machine is gone, nothing shuts down cleanly."""
        left = _kill_session(node.sid)
        node.process.wait(timeout=30)
        node.killed = True
        if left:
            raise RuntimeError(f"processes of node {node.name} survive SIGKILL: {left}")

    def shutdown(self) -> None:
        """End every node this cluster started (SIGKILL, each node's session), remove their temp
        dirs, and check that none of their processes is left (by session and by temp dir)."""
        left = []
        for node in self.nodes:
            left += _kill_session(node.sid)
            try:
                node.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                left.append(node.process.pid)
            for pid in _pids_with(str(node.temp_dir)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        left += self.leftovers()
        for node in self.nodes:
            shutil.rmtree(node.temp_dir, ignore_errors=True)
        self.nodes = []
        self.address = None
        if left:
            raise RuntimeError(f"processes of the test cluster still alive after shutdown: {sorted(set(left))}")

    def leftovers(self) -> list[int]:
        """Processes of this cluster still alive (by process group and by temp dir)."""
        return sorted({p for node in self.nodes for p in node.pids() + _pids_with(str(node.temp_dir))})


def _kill_session(sid: int, timeout: float = 15) -> list[int]:
    """SIGKILL every process of session ``sid`` until none is left; returns those still alive."""
    deadline = time.time() + timeout
    while True:
        pids = _session_pids(sid)
        if not pids or time.time() > deadline:
            return pids
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.05)


def _session_pids(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid``: a node's ``ray start`` leads its session,
    and its raylet puts each worker in a process group of its own, inside that session."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state ppid pgrp session ...
        if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            out.append(int(entry))
    return out


def _pids_with(text: str) -> list[int]:
    """Live processes whose command line names ``text`` (what ``pgrep -f`` finds)."""
    out = []
    needle = text.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if needle in f.read():
                    out.append(int(entry))
        except OSError:
            continue
    return out
