"""Connecting to Ray: a wrong address fails in seconds without Ray; a private local Ray listens on
loopback only and refuses a client without its token."""
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from nasfpn.search.connect import (check_address, connect_ray, current_cluster_file, is_loopback,
                                   listening_sockets, resolve_address)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Listener:
    """A TCP server on 127.0.0.1 that answers HTTP/2's opening with a SETTINGS frame, as a gRPC
    server does (``grpc=True``), or says nothing at all."""

    def __init__(self, grpc: bool):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.grpc = grpc
        self.accepted = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)
            if self.grpc:
                conn.settimeout(2)
                try:
                    conn.recv(64)
                    conn.sendall(bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
                except OSError:
                    pass

    def close(self):
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def grpc_server():
    server = Listener(grpc=True)
    yield server
    server.close()


@pytest.fixture
def no_auto(monkeypatch, tmp_path):
    """No RAY_ADDRESS and an empty Ray temp folder: "auto" finds nothing."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    return tmp_path


def test_closed_port_fails_in_seconds_saying_what_to_do():
    port = closed_port()
    address = f"127.0.0.1:{port}"
    start = time.monotonic()
    with pytest.raises(ValueError) as error:
        check_address(address)
    assert time.monotonic() - start < 5
    message = str(error.value)
    assert f"ray.address {address!r}" in message and "no Ray cluster answers there" in message
    assert "connection refused" in message
    assert "scripts/cluster/start_head.sh" in message and f"ray start --head --port={port}" in message
    assert "drop --address" in message


def test_a_grpc_server_passes_and_a_silent_listener_fails(grpc_server):
    check_address(f"127.0.0.1:{grpc_server.port}")
    check_address(f"localhost:{grpc_server.port}")
    silent = Listener(grpc=False)
    try:
        start = time.monotonic()
        with pytest.raises(ValueError, match="no gRPC answer within 1 s"):
            check_address(f"127.0.0.1:{silent.port}", timeout=1)
        assert time.monotonic() - start < 3
    finally:
        silent.close()


def test_nothing_to_check_for_a_private_ray():
    check_address(None)
    assert resolve_address(None) is None


@pytest.mark.parametrize("address", ["6379", "headnode", "host:", ":6379", "host:port", "host:0", "host:70000",
                                     "a:b:c", "::1:6379", "[::1]", "ray://", "ray://host:x", "my host:6379"])
def test_bad_syntax_names_the_setting_and_the_value(address):
    with pytest.raises(ValueError) as error:
        check_address(address)
    assert f"ray.address {address!r}: not HOST:PORT" in str(error.value)


def test_client_and_ipv6_addresses_parse():
    assert resolve_address("ray://head:10001") == "ray://head:10001"
    assert resolve_address("[::1]:6379") == "[::1]:6379"
    port = closed_port()
    with pytest.raises(ValueError, match=f"ray-client-server-port={port}"):
        check_address(f"ray://127.0.0.1:{port}")


def test_auto_without_a_cluster_fails_clearly(no_auto):
    assert current_cluster_file() == no_auto / "ray" / "ray_current_cluster"
    start = time.monotonic()
    with pytest.raises(ValueError) as error:
        check_address("auto")
    assert time.monotonic() - start < 1
    message = str(error.value)
    assert "ray.address 'auto': no running Ray cluster found" in message
    assert "RAY_ADDRESS is not set" in message and str(current_cluster_file()) in message


def test_auto_reads_rays_current_cluster_file_then_checks_it(no_auto, grpc_server):
    record = current_cluster_file()
    record.parent.mkdir()
    record.write_text(f"127.0.0.1:{grpc_server.port}\n")
    assert resolve_address("auto") == f"127.0.0.1:{grpc_server.port}"
    check_address("auto")
    stale = closed_port()
    record.write_text(f"127.0.0.1:{stale}")
    with pytest.raises(ValueError) as error:
        check_address("auto")
    assert f"ray.address 'auto' (= '127.0.0.1:{stale}' from {record}): no Ray cluster" in str(error.value)


def test_auto_prefers_ray_address(no_auto, monkeypatch, grpc_server):
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{grpc_server.port}")
    assert resolve_address("auto") == f"127.0.0.1:{grpc_server.port}"
    check_address("auto")
    monkeypatch.setenv("RAY_ADDRESS", "not-an-address")
    with pytest.raises(ValueError, match="from RAY_ADDRESS"):
        check_address("auto")


def test_loopback_addresses():
    assert all(map(is_loopback, ["127.0.0.1", "127.0.1.1", "::1", "::ffff:127.0.0.1"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.0.2.2", "::ffff:192.0.2.2", "fe80::1%eth0"]))


def test_module_does_not_import_ray():
    code = "import sys, nasfpn.search.connect; assert 'ray' not in sys.modules and 'psutil' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


GCS_CLIENT = """
import sys
from ray._raylet import GcsClient
try:
    client = GcsClient(address=sys.argv[1])
    client.internal_kv_get(b"session_name", b"session", timeout=5)
    print("ANSWERED")
except Exception as error:
    print("REFUSED", type(error).__name__, str(error).splitlines()[0][:200])
"""


def gcs_client(address: str, home, **env) -> str:
    """What a separate process with only ``env`` as Ray settings gets from the GCS."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    clean.update(HOME=str(home), RAY_py_gcs_connect_timeout_s="5", RAY_NUM_REDIS_GET_RETRIES="1", **env)
    done = subprocess.run([sys.executable, "-c", GCS_CLIENT, address], env=clean, capture_output=True,
                          text=True, timeout=120)
    return done.stdout.strip()


@pytest.mark.ray
def test_private_ray_listens_on_loopback_only_and_wants_its_token(tmp_path):
    """Run in a process of its own: a Ray driver keeps some settings (token authentication) for
    the life of its process, and a later plain ``ray.init`` in this one would inherit them."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp",
                           str(tmp_path / "child"), f"{__file__}::test_private_ray_in_this_process"],
                          env={**os.environ, "NASFPN_ISOLATED": "1"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout[-4000:] + done.stderr[-2000:]


@pytest.mark.ray
@pytest.mark.skipif(os.environ.get("NASFPN_ISOLATED") != "1", reason="run by the test above in its own process")
def test_private_ray_in_this_process(monkeypatch, tmp_path):
    import ray
    import ray._private.ray_constants as ray_constants
    import psutil                   # Ray's own copy, on sys.path once Ray is imported

    for name in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
                 "RAY_ADDRESS"):
        monkeypatch.setenv(name, "")            # so that monkeypatch puts back what connect_ray sets
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))       # where Ray would write a token file
    cluster_mode = ray_constants.ENABLE_RAY_CLUSTER
    assert not ray.is_initialized()
    line = connect_ray(None, 1, False)
    try:
        assert line == "Ray: local, 1 CPU"
        assert ray_constants.ENABLE_RAY_CLUSTER == cluster_mode  # as it was, for a later ray.init

        @ray.remote(num_cpus=1)
        def pid() -> int:
            return os.getpid()

        worker = ray.get(pid.remote(), timeout=120)         # a worker process listens too
        driver = psutil.Process()
        processes = [driver.pid] + [p.pid for p in driver.children(recursive=True)]
        assert worker in processes
        sockets = listening_sockets(processes)
        gcs = ray._private.worker.global_worker.node.gcs_address
        gcs_host, gcs_port = gcs.rsplit(":", 1)
        assert gcs_host == "127.0.0.1"
        names = {name for _, name, _, _ in sockets}
        assert {"gcs_server", "raylet"} <= names and int(gcs_port) in {port for *_, port in sockets}
        assert {driver.pid, worker} <= {pid for pid, *_ in sockets}
        exposed = [s for s in sockets if not is_loopback(s[2])]
        assert not exposed, f"listening beyond this machine: {exposed}"

        check_address(gcs)                                  # a real GCS answers the check
        assert gcs_client(gcs, tmp_path, RAY_AUTH_MODE="disabled").startswith("REFUSED AuthenticationError")
        assert gcs_client(gcs, tmp_path, RAY_AUTH_MODE="token",
                          RAY_AUTH_TOKEN="0" * 64).startswith("REFUSED AuthenticationError")
        assert gcs_client(gcs, tmp_path, RAY_AUTH_MODE="token",
                          RAY_AUTH_TOKEN=os.environ["RAY_AUTH_TOKEN"]) == "ANSWERED"
        assert not (tmp_path / "home" / ".ray").exists()    # the token never went to disk
    finally:
        ray.shutdown()
