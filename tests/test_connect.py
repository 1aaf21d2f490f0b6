"""raynas.connect without a cluster: the probe's one-line refusals (nothing listening, a silent
port, something that is not a Ray GCS, a GCS that wants a token) and the head watch's end of a
driver whose head stopped answering, against stand-ins: a port nobody listens on, a socket that
never speaks, an HTTP server, and a gRPC server that answers Ray's GCS call (or refuses it as a
GCS with token auth on does). The same against real ``ray start`` nodes: tests/test_multinode.py.
"""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from raynas.connect import check_address, joined
from raynas.errors import UsageError
from tests.multinode import free_port

#: a stand-in GCS in a process of its own: ``python -c FAKE_GCS PORT MODE`` (ok | unauthenticated)
FAKE_GCS = textwrap.dedent(
    """
    import sys, time
    from concurrent import futures
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    class NodeInfo(gcs_service_pb2_grpc.NodeInfoGcsServiceServicer):
        def GetClusterId(self, request, context):
            if sys.argv[2] == "unauthenticated":
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "InvalidAuthToken: token missing or incorrect")
            return gcs_service_pb2.GetClusterIdReply(cluster_id=b"x" * 28)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    gcs_service_pb2_grpc.add_NodeInfoGcsServiceServicer_to_server(NodeInfo(), server)
    server.add_insecure_port(f"0.0.0.0:{sys.argv[1]}")  # Ray joins 127.0.0.1 as the node's own address
    server.start()
    print("READY", flush=True)
    server.wait_for_termination()
    """
)


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    return {**env, "RAY_USAGE_STATS_ENABLED": "0", **extra}


@pytest.fixture
def fake_gcs():
    """Start a stand-in GCS (``mode``: ok | unauthenticated); yields a starter, stops them all."""
    servers = []

    def start(mode: str = "ok") -> tuple[str, subprocess.Popen]:
        port = free_port()
        server = subprocess.Popen([sys.executable, "-c", FAKE_GCS, str(port), mode], stdout=subprocess.PIPE,
                                  text=True, env=_env())
        servers.append(server)
        assert server.stdout.readline().strip() == "READY"
        return f"127.0.0.1:{port}", server

    yield start
    for server in servers:
        server.kill()
        server.wait()


def _quick(call, limit: float = 8.0):
    started = time.monotonic()
    with pytest.raises(UsageError) as refused:
        call()
    assert time.monotonic() - started < limit
    message = str(refused.value)
    assert "\n" not in message
    return message


def test_nothing_listening_is_refused_at_once():
    port = free_port()
    message = _quick(lambda: check_address(f"127.0.0.1:{port}"), limit=3)
    assert "nothing listens there (connection refused)" in message and f":{port}" in message
    assert "check --address" in message


def test_a_bad_address_is_refused_before_any_connection():
    assert "expected HOST:PORT" in _quick(lambda: check_address("nonsense"), limit=2)
    assert "no such host" in _quick(lambda: check_address("no-such-host.invalid:6379"))


def test_a_port_that_never_answers_is_refused_after_the_timeout():
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never speaks
        silent.bind(("0.0.0.0", 0))  # every address: Ray joins 127.0.0.1 as the node's own address
        silent.listen(8)
        port = silent.getsockname()[1]
        message = _quick(lambda: check_address(f"127.0.0.1:{port}", timeout=1.0), limit=6)
    assert "gave no answer within 1 s" in message


def _serve_http():
    server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_something_else_listening_is_not_a_ray_gcs():
    server = _serve_http()
    try:
        message = _quick(lambda: check_address(f"127.0.0.1:{server.server_address[1]}", timeout=2.0))
    finally:
        server.shutdown()
    assert "is not a Ray GCS" in message, message


def test_a_gcs_that_answers_is_joined(fake_gcs):
    address, _ = fake_gcs("ok")
    host, port = address.split(":")
    assert check_address(address).endswith(f":{port}")
    assert check_address("ray://10.0.0.5:10001") == "ray://10.0.0.5:10001"  # Ray Client: its own protocol


PROBE = ("import sys\nfrom raynas.connect import check_address\nfrom raynas.errors import UsageError\n"
         "try:\n    check_address(sys.argv[1])\nexcept UsageError as err:\n    print(err)\n")


def test_a_gcs_that_wants_a_token_says_which_setting_is_missing(fake_gcs, tmp_path):
    address, _ = fake_gcs("unauthenticated")
    home = tmp_path / "home"
    home.mkdir()
    cases = {  # this process's token settings -> the one line
        "none": (_env(HOME=str(home)),
                 "it requires a token (token auth is on there) and RAY_AUTH_MODE is not 'token' here;"),
        "a token, no mode": (_env(HOME=str(home), RAY_AUTH_TOKEN="a" * 64), "a token is there, in RAY_AUTH_TOKEN"),
        "mode, no token": (_env(HOME=str(home), RAY_AUTH_MODE="token"), "RAY_AUTH_MODE=token but no token is set here"),
        "mode and a token": (_env(HOME=str(home), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="a" * 64),
                             "it rejects this token (from RAY_AUTH_TOKEN)"),
    }
    probes = {case: subprocess.Popen([sys.executable, "-c", PROBE, address], env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
              for case, (env, _) in cases.items()}
    for case, probe in probes.items():
        out, err = probe.communicate(timeout=120)
        assert probe.returncode == 0, err
        assert cases[case][1] in out, (case, out)
        assert "`ray get-auth-token` on the head" in out and "cannot connect to the Ray cluster at" in out
        assert err.strip() == "", (case, err)  # nothing of Ray's on stderr either


def test_connection_errors_of_ray_init_are_one_line_too():
    with pytest.raises(UsageError, match=r"^cannot connect to the Ray cluster at 1.2.3.4:5: Failed to connect"):
        with joined("1.2.3.4:5"):
            raise ConnectionError("Failed to connect to Ray cluster at 1.2.3.4:5")
    with pytest.raises(RuntimeError, match="something else"):  # anything else is not ours to reword
        with joined("1.2.3.4:5"):
            raise RuntimeError("something else")


WATCH = textwrap.dedent(
    """
    import sys, time
    from raynas import connect

    class Watch(connect.HeadWatch):
        def _connected(self):  # stands in for a driver joined to the cluster
            return True

    watch = Watch(sys.argv[1], lost_after_s=1.0, poll_s=0.2)
    watch.on_lost(lambda message: open(sys.argv[2], "w").write(message) and "the run is resumable: `--resume R`")
    watch.start()
    print("WATCHING", flush=True)
    time.sleep(60)
    print("still running", flush=True)
    """
)


def test_a_head_that_stops_answering_ends_the_driver_in_one_line(fake_gcs, tmp_path):
    address, server = fake_gcs("ok")
    record = tmp_path / "recorded"
    driver = subprocess.Popen([sys.executable, "-c", WATCH, address, str(record)], env=_env(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert driver.stdout.readline().strip() == "WATCHING"
    time.sleep(1.5)  # answering: the watch keeps quiet
    assert driver.poll() is None
    server.kill()
    lost = time.monotonic()
    out, err = driver.communicate(timeout=60)
    assert driver.returncode == 130, (out, err)
    assert time.monotonic() - lost < 10
    assert "still running" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"raynas: interrupted: lost the Ray cluster: its head at {address} has not answered")
    assert lines[0].endswith("; the run is resumable: `--resume R`")
    assert record.read_text().startswith("lost the Ray cluster")  # the handler ran before the exit
