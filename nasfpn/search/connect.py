"""Connecting a search to Ray: a private local Ray that only this machine can reach, or a cluster
that is checked to answer before anything is prepared.

``check_address`` and ``resolve_address`` need no Ray and take at most a few seconds, so a wrong
``--address`` fails at once; ``ray_environment`` runs before ``import ray``; ``connect_ray`` then
starts or joins Ray. This module imports Ray only inside functions.

What Ray 2.60 does here, read in its source and measured:

- ``address="auto"`` is ``RAY_ADDRESS`` if set, else the GCS address in
  ``<RAY_TMPDIR or TMPDIR or /tmp>/ray/ray_current_cluster`` (written by ``ray start``;
  ``ray._private.services.get_ray_address_from_environment``). When that file is missing Ray
  falls back to any raylet process on the machine, which may be another search's private Ray;
  ``resolve_address`` does not follow that fallback, and ``connect_ray`` passes Ray the address it
  checked, not "auto".
- Joining a GCS that does not answer: 20 tries (``RAY_NUM_REDIS_GET_RETRIES``) of about 41 s
  each (a 5 s channel connect, a 5 s pubsub connect, ``RAY_py_gcs_connect_timeout_s`` = 30), so
  about 14 minutes. ``RAY_gcs_server_port_wait_time_s`` sets the number of tries (read at each
  ``ray.init``) and ``RAY_py_gcs_connect_timeout_s`` the last wait (read when Ray's config is
  loaded, reloaded by ``Config.initialize``); ``connect_ray`` uses 2 tries and 10 s: at most about
  42 s once the TCP check has passed.
- A loopback address (127.0.0.1, localhost) is turned into the machine's own network address
  before Ray dials it (``services.resolve_ip_for_localhost``); a head that listens on loopback
  only therefore passes ``check_address`` and still cannot be joined.
- Listening sockets follow the node's IP address, and ``ray.init(_node_ip_address="127.0.0.1")``
  alone is turned back into the machine's network address: the GCS, raylet and workers then
  listen on every interface and the runtime-env agent on the network address. Ray keeps loopback
  only where it treats the machine as no cluster (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, its
  default on macOS and Windows): then every listener of a private Ray is on 127.0.0.1.
- A new local Ray turns token authentication on by default and, when no token exists, writes one
  to ``~/.ray/auth_token``. A private Ray here gets a fresh random token in ``RAY_AUTH_TOKEN``
  instead (the environment of this process and of the Ray processes it starts; never a file).
"""
from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

TOKEN_HINT = ("if the cluster uses token authentication, copy its ~/.ray/auth_token to this machine or set "
              "RAY_AUTH_TOKEN")
LOOPBACK = "127.0.0.1"
CLIENT_PORT = 10001                 # Ray Client's port when a ray:// address names none
CONNECT_TRIES = "2"                 # RAY_gcs_server_port_wait_time_s: tries to reach the GCS
GCS_CONNECT_TIMEOUT_S = "10"        # RAY_py_gcs_connect_timeout_s: last wait of each try


# ---------------------------------------------------------------------------------------------
# Addresses, without Ray


def resolve_address(address: str | None) -> str | None:
    """The address Ray would join for ``address``: None for a private local Ray, "auto" resolved
    the way Ray resolves it (``RAY_ADDRESS``, else its current-cluster file), anything else
    checked for syntax and returned as given. Raises ValueError naming ``ray.address``."""
    return _resolve(address)[0]


def check_address(address: str | None, timeout: float = 5.0) -> None:
    """Fail within ``timeout`` seconds, with a ValueError saying what to do, when no Ray answers at
    ``address``: a TCP connect and HTTP/2 opening (see ``_refusal``) to the GCS port (HOST:PORT,
    or what "auto" resolves to) or to the Ray Client server port (``ray://HOST[:PORT]``, 10001 by
    default). None (a private local Ray) needs no check. Other ``scheme://`` addresses are left to
    Ray, which rejects unknown ones at once."""
    resolved, shown = _resolve(address)
    if resolved is None:
        return
    scheme, client = _scheme(resolved)
    if scheme is not None and not client:
        return
    host, port = _split(resolved, shown)
    reason = _refusal(host, port, timeout)
    if reason is None:
        return
    start = (f"`ray start --head --ray-client-server-port={port}`" if client
             else f"`ray start --head --port={port}`")
    raise ValueError(f"ray.address {shown}: no Ray cluster answers there ({reason}); start a head there "
                     f"(scripts/cluster/start_head.sh, or {start}) or drop --address to run a private "
                     f"local Ray")


def _resolve(address: str | None) -> Tuple[Optional[str], str]:
    """(the address to join, how to show it in a message)."""
    if address is None or address == "":
        return None, ""
    if address != "auto":
        _split(address, repr(address))
        return address, repr(address)
    found, source = _auto_address()
    if found is None:
        raise ValueError(
            f"ray.address 'auto': no running Ray cluster found (RAY_ADDRESS is not set and {source}, "
            f"where `ray start` records one, names none); start a head (scripts/cluster/start_head.sh, "
            f"or `ray start --head`), give its HOST:PORT, or drop --address to run a private local Ray")
    if found == "local":
        raise ValueError("ray.address 'auto': RAY_ADDRESS=local asks for a new local Ray; drop --address "
                         "to run a private local Ray, or set RAY_ADDRESS to the cluster's HOST:PORT")
    shown = f"'auto' (= {found!r} from {source})"
    _split(found, shown)
    return found, shown


def current_cluster_file() -> Path:
    """Where ``ray start`` records the latest cluster's GCS address (Ray's
    ``get_default_ray_temp_dir()/ray_current_cluster``)."""
    if "RAY_TMPDIR" in os.environ:
        base = os.environ["RAY_TMPDIR"]
    elif sys.platform.startswith("linux") and "TMPDIR" in os.environ:
        base = os.environ["TMPDIR"]
    elif sys.platform.startswith(("linux", "darwin")):
        base = "/tmp"
    else:
        base = tempfile.gettempdir()
    return Path(base) / "ray" / "ray_current_cluster"


def _auto_address() -> Tuple[Optional[str], str]:
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env and env != "auto":
        return env, "RAY_ADDRESS"
    path = current_cluster_file()
    try:
        text = path.read_text().strip()
    except OSError:
        return None, str(path)
    return (text or None), str(path)


def _scheme(address: str) -> Tuple[Optional[str], bool]:
    if "://" not in address:
        return None, False
    scheme = address.split("://", 1)[0].lower()
    return scheme, scheme == "ray"


def _split(address: str, shown: str) -> Tuple[str, int]:
    """(host, port) of HOST:PORT, [IPv6]:PORT or ray://HOST[:PORT] (port 10001 by default);
    ValueError naming ray.address. Other ``scheme://`` addresses are Ray's business: ("", 0)."""
    scheme, client = _scheme(address)
    if scheme is not None and not client:
        return "", 0
    rest = address.split("://", 1)[1].rstrip("/") if client else address
    bad = ValueError(f"ray.address {shown}: not HOST:PORT (e.g. 10.0.0.5:6379), 'auto', ray://HOST[:PORT], "
                     f"or none for a private local Ray")
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        if tail and not tail.startswith(":"):
            raise bad
        port_text = tail[1:]
    elif rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
    elif ":" not in rest and client:
        host, port_text = rest, ""
    else:
        raise bad
    if not port_text and client:
        port_text = str(CLIENT_PORT)
    if not host or any(c.isspace() or c in "/@?#" for c in host) or not port_text.isdigit():
        raise bad
    port = int(port_text)
    if not 0 < port < 65536:
        raise bad
    return host, port


def _refusal(host: str, port: int, timeout: float) -> str | None:
    """None when a gRPC server answers at host:port within ``timeout`` seconds (name lookup
    included), else why not, in words. A TCP connect, then HTTP/2's opening: the GCS and the Ray
    Client server are gRPC servers and send their SETTINGS frame back, so another service on the
    port (Redis's 6379, say) fails here too. With Ray's TLS on (RAY_USE_TLS) only TCP is checked."""
    deadline = time.monotonic() + timeout
    infos: list = []

    def lookup() -> None:
        try:
            infos.extend(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError:
            pass

    thread = threading.Thread(target=lookup, daemon=True, name="check_address-lookup")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return f"the host name {host!r} did not resolve within {timeout:g} s"
    if not infos:
        return f"unknown host {host!r}"
    reason = "no address"
    for family, kind, proto, _, sockaddr in infos:
        left = deadline - time.monotonic()
        if left <= 0:
            return f"no answer within {timeout:g} s"
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(left)
            try:
                sock.connect(sockaddr)
            except socket.timeout:
                reason = f"no answer within {timeout:g} s"
                continue
            except ConnectionRefusedError:
                reason = "connection refused"
                continue
            except OSError as exc:
                reason = exc.strerror or type(exc).__name__
                continue
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
                return None
            return _grpc_refusal(sock, deadline, timeout)
    return reason


_HTTP2_OPENING = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # + empty SETTINGS


def _grpc_refusal(sock: socket.socket, deadline: float, timeout: float) -> str | None:
    head = b""
    try:
        sock.sendall(_HTTP2_OPENING)
        while len(head) < 9:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            chunk = sock.recv(9 - len(head))
            if not chunk:
                return "a program accepts connections there but closed this one without a gRPC answer"
            head += chunk
    except socket.timeout:
        return f"a program accepts connections there but gave no gRPC answer within {timeout:g} s"
    except OSError as exc:
        return f"a program accepts connections there but the exchange failed: {exc.strerror or exc}"
    if head[3] != 4:                            # an HTTP/2 frame header; type 4 is SETTINGS
        return "a program listens there, but it does not speak gRPC"
    return None


# ---------------------------------------------------------------------------------------------
# Environment, before ``import ray``


def ray_environment(verbose: bool, address: str | None) -> None:
    """Set before ``import ray``: Ray's own output off by default, no usage statistics; for a
    private local Ray (``address`` None) loopback-only listeners, for a cluster token
    authentication when a token is here and a bounded connect time."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "0")
    if not verbose:
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "1000")
    if address:
        cluster_auth_environment(address)
        _bounded_connect_environment()
    else:
        # Read once, when Ray's constants are imported; connect_ray makes sure of it again.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


def cluster_auth_environment(address: str | None) -> None:
    """Before ``import ray``: Ray sends a cluster its token by itself only when it resolves
    "auto" itself; ``connect_ray`` passes the resolved HOST:PORT, for which Ray sends it only
    when told (and the head then refuses us after half a minute of retries)."""
    if address and "RAY_AUTH_MODE" not in os.environ and auth_token_available():
        os.environ["RAY_AUTH_MODE"] = "token"


def auth_token_available() -> bool:
    """Whether this machine holds a Ray auth token where Ray looks for one."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token"
    return Path(path).is_file()


def quiet_ray_loggers(verbose: bool) -> None:
    """After ``import ray`` (which sets its loggers up): its driver-side notices, such as that
    its default token authentication is on, only with ``--verbose``."""
    if not verbose:
        logging.getLogger("ray").setLevel(logging.ERROR)


def _bounded_connect_environment() -> None:
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", CONNECT_TRIES)
    os.environ.setdefault("RAY_py_gcs_connect_timeout_s", GCS_CONNECT_TIMEOUT_S)


# ---------------------------------------------------------------------------------------------
# Connecting


def connect_ray(address: str | None, num_cpus: int | None, verbose: bool) -> str:
    """A private local Ray that listens on 127.0.0.1 only and wants a fresh token, or the cluster
    at ``address`` (checked first, joined within about a minute at worst); returns a line saying
    which, for the progress view. For the private Ray this process's environment gets
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, RAY_AUTH_MODE=token and a new RAY_AUTH_TOKEN, which the
    Ray processes inherit."""
    level = "INFO" if verbose else "ERROR"
    if not address:
        return _connect_private(num_cpus, verbose, level)

    check_address(address)
    target = resolve_address(address)
    cluster_auth_environment(target)
    _bounded_connect_environment()
    import ray
    from ray._raylet import Config

    Config.initialize("")           # the connect timeout above, if Ray was imported before it was set
    try:
        ray.init(address=target, log_to_driver=verbose, logging_level=level)
    except ConnectionError as error:
        raise RuntimeError(f"ray.address {address!r}: {error}; {TOKEN_HINT}") from None

    # A driver whose authentication mode differs from the cluster's connects fine, and then
    # every trial dies "cancelled before it started": find out now, with one tiny actor.
    @ray.remote(num_cpus=0)
    class Probe:
        def ping(self) -> bool:
            return True

    try:
        ray.get(Probe.remote().ping.remote(), timeout=120)
    except Exception as error:  # noqa: BLE001 - any failure here means the same to the user
        mode = os.environ.get("RAY_AUTH_MODE", "disabled")
        ray.shutdown()
        detail = (str(error).strip().splitlines() or [""])[0][:200]
        raise RuntimeError(f"ray.address {address!r}: connected, but the cluster cannot run this driver's actors "
                           f"({type(error).__name__}: {detail}); the usual cause is an authentication mode that "
                           f"differs from the cluster's: this driver's RAY_AUTH_MODE is {mode!r}; set the cluster's "
                           f"(RAY_AUTH_MODE=token or disabled) and try again") from None
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    resources = ray.cluster_resources()
    where = address if target == address else f"{target} ({address})"
    return (f"Ray: cluster at {where}, {len(nodes)} node(s), {resources.get('CPU', 0):g} CPU, "
            f"{resources.get('GPU', 0):g} GPU")


def _connect_private(num_cpus: int | None, verbose: bool, level: str) -> str:
    os.environ.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
                       "RAY_AUTH_TOKEN": secrets.token_hex(32)})
    import ray
    import ray._private.ray_constants as ray_constants
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")                           # token mode, if Ray read its config before
    AuthenticationTokenLoader.instance().reset_cache()
    # Ray read RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it was imported; if that was before the
    # variable was set, say it now, for this ray.init only (once started, Ray asks its node).
    cluster_mode = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=verbose,
                 logging_level=level, _node_ip_address=LOOPBACK)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = cluster_mode
    return f"Ray: local, {ray.cluster_resources().get('CPU', 0):g} CPU"


# ---------------------------------------------------------------------------------------------
# Sockets


def listening_sockets(pids: Iterable[int]) -> List[Tuple[int, str, str, int]]:
    """(pid, process name, ip, port) of every listening TCP socket of these processes; processes
    that have gone or cannot be read are skipped."""
    try:
        import psutil
    except ImportError:             # Ray ships its own, on sys.path once Ray is imported
        import ray  # noqa: F401
        import psutil

    found = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            name = process.name()
            connections = process.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        found += [(pid, name, c.laddr.ip, c.laddr.port) for c in connections
                  if c.status == psutil.CONN_LISTEN]
    return sorted(set(found))


def is_loopback(ip: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback (::ffff:127.0.0.1, as gRPC binds it)."""
    try:
        parsed = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(parsed, "ipv4_mapped", None)
    return parsed.is_loopback or bool(mapped and mapped.is_loopback)


def cluster_resources() -> dict:
    """What the connected Ray has in all (``CPU``, ``GPU``, ...)."""
    import ray

    return ray.cluster_resources()


def disconnect_ray() -> None:
    """Leave the cluster, or stop the private Ray this driver started."""
    import ray

    ray.shutdown()
