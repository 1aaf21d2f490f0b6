"""Joining a Ray cluster, or saying in one line why not.

``ray.init(address=HOST:PORT)`` on its own takes 20 s to give up on a cluster that refuses its
token (a bare ``ConnectionError``, after a screenful of the C++ client's retries), and hangs for
minutes on an address where nothing listens. :func:`check_address` asks the cluster's GCS the
very first question ``ray.init`` asks (its cluster id), once, with the token ``ray.init`` would
send and a timeout of a few seconds, and turns each way that fails into a
:class:`~raynas.errors.UsageError` that names what happened and what to do (the CLI prints it on
one line and exits 2). It starts nothing and leaves nothing behind.

Ray 2.60's token authentication, as the probe sees it: the token comes from ``RAY_AUTH_TOKEN``,
the file ``RAY_AUTH_TOKEN_PATH`` names, or ``~/.ray/auth_token``; it is sent only when
``RAY_AUTH_MODE=token`` (an explicit address never turns the mode on by itself; ``auto`` does
when a token is there); a GCS with token auth on answers a call without the right token with
gRPC's ``UNAUTHENTICATED``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from typing import Callable, Iterator

from raynas.errors import UsageError

#: seconds the probe waits for the GCS (a TCP connect, then one gRPC call)
CONNECT_TIMEOUT_S = 5.0

_FIX_ADDRESS = ("check --address: it is the head's GCS address, HOST:PORT as `ray start --head` printed it "
                "(port 6379 by default), and the head must be up")


def _token_source() -> str | None:
    """Where this process's token would come from (Ray's own order), or None."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        return f"RAY_AUTH_TOKEN_PATH={path}" if os.path.isfile(os.path.expanduser(path)) else None
    default = os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
    return default if os.path.isfile(default) else None


def _token_mode() -> bool:
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    return is_token_auth_enabled()


def resolve(address: str) -> str:
    """``address`` as ``ray.init`` would use it: ``HOST:PORT``, ``auto`` found on this machine
    (turning token auth on when a token is there, as ``ray.init`` does for ``auto``)."""
    from ray._private import services

    if address == "auto":
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )

        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
        if os.environ.get("RAY_ADDRESS", "").startswith("ray://"):
            return os.environ["RAY_ADDRESS"]  # Ray Client: joined as it is
        try:
            return services.canonicalize_bootstrap_address_or_die("auto")
        except ConnectionError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else "no running Ray instance found"
            raise UsageError(f"--address auto: {first.rstrip('.')}; start one with `ray start --head` "
                             "or pass --address HOST:PORT") from None
    try:
        canonical = services.canonicalize_bootstrap_address(address)
    except (ValueError, OSError) as err:
        raise UsageError(f"--address {address}: {err}; expected HOST:PORT, e.g. 10.0.0.5:6379, or auto") from None
    return canonical or address


def check_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> str:
    """Probe the Ray cluster at ``address`` (``HOST:PORT`` or ``auto``) as ``ray.init`` would
    join it; return the address to join (``HOST:PORT``). Raises :class:`UsageError`, within
    about ``2 * timeout`` seconds, when nothing answers there, when what answers is not a Ray
    GCS, or when it refuses this process's token (or lack of one)."""
    if address.startswith("ray://") or address == "local":
        return address  # Ray Client (its own protocol), or a new local instance: joined as they are
    target = resolve(address)
    if target.startswith("ray://"):
        return target
    where = f"cannot connect to the Ray cluster at {target}" + (f" (--address {address})" if target != address else "")
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except socket.gaierror as err:
        raise UsageError(f"{where}: no such host ({err.strerror}); {_FIX_ADDRESS}") from None
    except ConnectionRefusedError:
        raise UsageError(f"{where}: nothing listens there (connection refused): the head is down, "
                         f"or the address is wrong; {_FIX_ADDRESS}") from None
    except (socket.timeout, TimeoutError):
        raise UsageError(f"{where}: no answer within {timeout:g} s (a host that is down, or a firewall); "
                         f"{_FIX_ADDRESS}") from None
    except OSError as err:
        raise UsageError(f"{where}: {err.strerror or err}; {_FIX_ADDRESS}") from None
    if _token_mode() and _token_source() is None:
        raise UsageError(f"{where}: RAY_AUTH_MODE=token but no token is set here; set RAY_AUTH_TOKEN "
                         "(or RAY_AUTH_TOKEN_PATH) to the cluster's token (`ray get-auth-token` on the head)")
    _ask_cluster_id(target, where, timeout)
    return target


def _ask_cluster_id(target: str, where: str, timeout: float) -> None:
    import grpc
    from ray._private.grpc_utils import init_grpc_channel
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    channel = init_grpc_channel(target)  # TLS (RAY_USE_TLS) and the token exactly as Ray's clients
    try:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=timeout)
    except grpc.RpcError as err:
        code = err.code() if hasattr(err, "code") else None
        if code == grpc.StatusCode.UNAUTHENTICATED:
            source = _token_source()
            if not _token_mode():
                found = f" (a token is there, in {source}, but Ray sends it only in token mode)" if source else ""
                raise UsageError(
                    f"{where}: it requires a token (token auth is on there) and RAY_AUTH_MODE is not 'token' "
                    f"here{found}; set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the "
                    "cluster's token (`ray get-auth-token` on the head)") from None
            raise UsageError(
                f"{where}: it rejects this token (from {source}); set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) "
                "to the cluster's token (`ray get-auth-token` on the head)") from None
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise UsageError(f"{where}: it accepts connections but its GCS gave no answer within {timeout:g} s "
                             f"(a head still starting, or not a Ray GCS port); {_FIX_ADDRESS}") from None
        details = (err.details() if hasattr(err, "details") else str(err)) or ""
        raise UsageError(f"{where}: what listens there is not a Ray GCS ({code.name if code else 'gRPC error'}: "
                         f"{details.splitlines()[0] if details else 'no details'}); {_FIX_ADDRESS}") from None
    finally:
        channel.close()


@contextlib.contextmanager
def joined(target: str) -> Iterator[None]:
    """``ray.init`` to a cluster the probe found answering: what can still go wrong there (the head
    died in between, a version mismatch) as one line too."""
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as err:
        raise UsageError(f"cannot connect to the Ray cluster at {target}: {err.message}") from None
    except ConnectionError as err:
        raise UsageError(f"cannot connect to the Ray cluster at {target}: {err}; {_FIX_ADDRESS}") from None
    except RuntimeError as err:
        if "version mismatch" not in str(err).lower():
            raise
        first = " ".join(str(err).split())
        raise UsageError(f"cannot join the Ray cluster at {target}: {first}") from None


#: seconds without an answer from the head's GCS before the session is given up (Ray's own
#: drivers give up after 60 s, killing the process, a message on stderr and nothing written);
#: ``RAYNAS_HEAD_LOST_AFTER_S`` overrides it, 0 turns the watch off
HEAD_LOST_AFTER_S = 15.0
#: the exit code of a process whose cluster was lost: the run is interrupted, and resumable
EXIT_HEAD_LOST = 130

_watch: "HeadWatch | None" = None


class HeadWatch(threading.Thread):
    """Asks the head's GCS every ``poll_s`` whether it is there; when it has not answered for
    ``lost_after_s`` seconds the cluster is lost for this driver (every Ray call now blocks until
    Ray kills the process, 60 s after the loss): the handlers registered with :meth:`on_lost`
    record what they can (Ray is of no use to them any more), one line goes to stderr, and the
    process exits :data:`EXIT_HEAD_LOST`. The watch ends by itself once this process's Ray is
    shut down (or joined to another cluster)."""

    def __init__(self, target: str, *, lost_after_s: float, poll_s: float = 1.0) -> None:
        super().__init__(name="raynas-head-watch", daemon=True)
        import ray

        self.target, self.lost_after_s, self.poll_s = target, float(lost_after_s), float(poll_s)
        # this connection: a ray.shutdown, or a ray.init to another cluster, ends the watch
        self._node = getattr(ray._private.worker.global_worker, "node", None)
        self._handlers: list[Callable[[str], "str | None"]] = []
        self._stop = threading.Event()
        self.lost: str | None = None

    def on_lost(self, handler: Callable[[str], "str | None"]) -> None:
        """``handler(message)`` runs in the watch's thread when the head is lost, before the
        process exits; it may return the line that says how to continue (a resume command)."""
        self._handlers.append(handler)

    def stop(self) -> None:
        self._stop.set()

    def _connected(self) -> bool:
        import ray

        return ray.is_initialized() and getattr(ray._private.worker.global_worker, "node", None) is self._node

    def run(self) -> None:
        import grpc
        from ray._private.grpc_utils import init_grpc_channel
        from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

        # one channel, reconnecting at once: the GCS that comes back is seen within a poll
        channel = init_grpc_channel(self.target, options=[("grpc.max_reconnect_backoff_ms", int(self.poll_s * 1000)),
                                                          ("grpc.initial_reconnect_backoff_ms", 100)])
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        request = gcs_service_pb2.GetClusterIdRequest()
        last_answer = time.monotonic()
        try:
            while not self._stop.wait(self.poll_s):
                if not self._connected():
                    return
                try:
                    stub.GetClusterId(request, timeout=max(1.0, self.poll_s))
                    last_answer = time.monotonic()
                except grpc.RpcError:
                    silent = time.monotonic() - last_answer
                    if silent >= self.lost_after_s and self._connected():
                        self._give_up(silent)
                        return
        finally:
            channel.close()

    def _give_up(self, silent: float) -> None:
        self.lost = (f"lost the Ray cluster: its head at {self.target} has not answered for {silent:.0f} s "
                     "(the head node died, or the network to it is gone)")
        hint = None
        for handler in self._handlers:
            try:
                hint = handler(self.lost) or hint
            except BaseException as err:  # noqa: BLE001 - the process exits next; say what was not recorded
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                sys.stderr.write(f"raynas: could not record the interruption: {first}\n")
        hint = hint or ("the run is resumable: `raynas search --resume RUN_DIR --address HOST:PORT` "
                        "on a live cluster continues it")
        sys.stdout.flush()
        sys.stderr.write(f"raynas: interrupted: {self.lost}; {hint}\n")
        sys.stderr.flush()
        os._exit(EXIT_HEAD_LOST)


def watch_head(target: str, *, lost_after_s: float | None = None) -> "HeadWatch | None":
    """Start the watch over the head of the cluster this process joined at ``target`` (see
    :class:`HeadWatch`); returns it (None: watching is off, a Ray Client address, or ``local``)."""
    global _watch
    if lost_after_s is None:
        try:
            lost_after_s = float(os.environ.get("RAYNAS_HEAD_LOST_AFTER_S", HEAD_LOST_AFTER_S))
        except ValueError:
            lost_after_s = HEAD_LOST_AFTER_S
    if _watch is not None:
        _watch.stop()
        _watch = None
    if lost_after_s <= 0 or target.startswith("ray://") or target == "local":
        return None
    _watch = HeadWatch(target, lost_after_s=lost_after_s)
    _watch.start()
    return _watch


def head_watch() -> "HeadWatch | None":
    """The watch of the cluster this process joined, while it runs."""
    return _watch if _watch is not None and _watch.is_alive() else None
