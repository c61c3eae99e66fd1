"""Processes the overhead benchmark starts: nginx, the grpc.aio passthrough, the gateway CLI.

Each leads its own process group (``ProcessGroup``) with its log in a private temp dir,
so stopping it reaps the whole group and Ctrl-C in the terminal reaches only the
benchmark, which then stops everything itself.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import grpc

from infergw.gateway.processes import ProcessGroup, ProcessStartError, group_members
from infergw.wire import grpc_channel

SERVER_READY = "/inference.GRPCInferenceService/ServerReady"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
STOP_GRACE_S = 10.0
NGINX_INSTALL_HINT = "apt-get install -y --no-install-recommends nginx-light"


class StartError(RuntimeError):
    """A server did not become ready; the message carries the tail of its log."""


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free TCP ports (held open together so they cannot collide)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


def server_ready_probe(channel: grpc.Channel) -> bool:
    """OIP ``ServerReady`` answers ``ready: true``."""
    ready: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(SERVER_READY)
    with contextlib.suppress(grpc.RpcError):
        # ServerReadyResponse{ready: true} is field 1, varint 1: b"\x08\x01".
        return ready(b"", timeout=1.0) == b"\x08\x01"
    return False


def model_infer_probe(channel: grpc.Channel) -> bool:
    """An empty ``ModelInfer`` got an answer from upstream through the proxy.

    For a proxy that implements nothing but ModelInfer: Triton rejects the empty request
    (no model name) with a non-transport status, which the proxy passes back; UNAVAILABLE
    or a deadline means the proxy or its upstream is not there yet.
    """
    infer: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(MODEL_INFER)
    try:
        infer(b"", timeout=1.0)
    except grpc.RpcError as err:
        code = err.code()
        return code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    return True


def wait_grpc_ready(
    address: str,
    proc: ProcessGroup,
    log: Path,
    timeout_s: float = 60.0,
    probe: Callable[[grpc.Channel], bool] = server_ready_probe,
) -> None:
    """Poll ``probe`` (default: OIP ``ServerReady``) on ``address`` until it says ready;
    ``StartError`` with the tail of ``log`` if ``proc`` exits first or time runs out."""
    with grpc_channel.sync_channel(address) as channel:
        try:
            proc.wait_ready(lambda: probe(channel), timeout_s)
        except ProcessStartError as exc:
            if exc.returncode is None:
                what = f"{address} not ready after {timeout_s:.0f} s"
            else:
                what = f"{proc.name} exited with {exc.returncode}"
            raise StartError(f"{what}:\n{tail(log)}") from exc


def tail(path: Path, chars: int = 3000) -> str:
    if not path.exists():
        return ""
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - chars))
        return f.read().decode(errors="replace")


def group_alive(pgid: int) -> bool:
    """True while any live process of the group ``pgid`` still exists."""
    return bool(group_members(pgid))


class ManagedProcess:
    """A child leading its own process group; its stdout/stderr go to ``<tmp>/<name>.log``."""

    def __init__(self, name: str, registry: list[int] | None = None) -> None:
        self.name = name
        self.registry = registry  # receives the child's pgid as soon as it exists
        self.tmp = Path(tempfile.mkdtemp(prefix=f"infergw-bench-{name}-"))
        self.log = self.tmp / f"{name}.log"
        self.proc: ProcessGroup | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not running"
        return self.proc.pid

    def spawn(self, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.proc = ProcessGroup.start(
            args, env=env, cwd=self.tmp, log=self.log, name=self.name, grace_s=STOP_GRACE_S
        )
        if self.registry is not None:
            self.registry.append(self.proc.pid)

    def stop(self) -> None:
        """Idempotent; also safe after a failed start."""
        proc, self.proc = self.proc, None
        try:
            if proc is not None:
                proc.stop()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


# One nginx worker in front of Triton (``upstream triton``); each proxy adds its server.
NGINX_PROLOGUE = """\
worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {prefix}/access.log combined buffer=64k flush=1s;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    client_max_body_size 0;
    keepalive_requests 10000000;
    keepalive_timeout 600s;
    upstream triton {{
        server {upstream};
        keepalive 32;
        keepalive_requests 10000000;
        keepalive_timeout 600s;
    }}
"""
NGINX_CONF = (
    NGINX_PROLOGUE
    + """\
    server {{
        # nginx 1.22 syntax; ``http2 on;`` only exists from 1.25.1.
        listen {listen} http2;
        location / {{
            grpc_pass grpc://triton;
            grpc_read_timeout 600s;
            grpc_send_timeout 600s;
        }}
    }}
}}
"""
)


# nginx as a REST reverse proxy, tuned for latency as one would for inference: HTTP/1.1
# keep-alive upstream connections, and bodies streamed both ways (no request or response
# buffering, so no temp files for large tensors).
NGINX_HTTP_CONF = (
    NGINX_PROLOGUE
    + """\
    server {{
        listen {listen};
        location / {{
            proxy_pass http://triton;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_read_timeout 600s;
            proxy_send_timeout 600s;
        }}
    }}
}}
"""
)


def nginx_binary() -> str | None:
    """nginx on PATH, or in the sbin dirs a non-root PATH often lacks."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def nginx_version(binary: str) -> str:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    return (out.stderr or out.stdout).strip()


class NginxGrpcProxy(ManagedProcess):
    """nginx (one worker, foreground) proxying gRPC on ``listen`` to ``upstream``."""

    CONF = NGINX_CONF

    def __init__(
        self, binary: str, listen: str, upstream: str, registry: list[int] | None = None
    ) -> None:
        super().__init__("nginx", registry)
        self.binary = binary
        self.listen = listen
        self.upstream = upstream

    def wait_ready(self) -> None:
        assert self.proc is not None
        wait_grpc_ready(self.listen, self.proc, self.tmp / "error.log")

    def start(self) -> str:
        # A root master hands temp dirs to an unprivileged worker, which must traverse here.
        self.tmp.chmod(0o755)
        conf = self.tmp / "nginx.conf"
        conf.write_text(
            self.CONF.format(prefix=self.tmp, listen=self.listen, upstream=self.upstream)
        )
        # -e: the startup error log, before the config is read (default is stderr here).
        args = [self.binary, "-p", str(self.tmp), "-c", str(conf)]
        self.spawn([*args, "-e", str(self.tmp / "error.log")])
        self.wait_ready()
        return self.listen


class NginxHttpProxy(NginxGrpcProxy):
    """nginx (one worker, foreground) proxying HTTP/1.1 on ``listen`` to ``upstream``."""

    CONF = NGINX_HTTP_CONF

    def wait_ready(self) -> None:
        assert self.proc is not None
        wait_http_ready(self.listen, self.proc, self.tmp / "error.log")


def wait_http_ready(address: str, proc: ProcessGroup, log: Path, timeout_s: float = 60.0) -> None:
    """Until OIP's ``GET /v2/health/ready`` answers 200 at ``address``; ``StartError`` with
    the tail of ``log`` if ``proc`` exits first or time runs out."""

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://{address}/v2/health/ready", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    try:
        proc.wait_ready(ready, timeout_s)
    except ProcessStartError as exc:
        if exc.returncode is None:
            what = f"{address} not ready after {timeout_s:.0f} s"
        else:
            what = f"{proc.name} exited with {exc.returncode}"
        raise StartError(f"{what}:\n{tail(log)}") from exc


GATEWAY_CONF = """\
listen: {{host: 127.0.0.1}}
backends:
  triton: {{kind: triton, url: "{triton}"}}
models:
  "*": {{backend: triton}}
"""


class GatewayProcess(ManagedProcess):
    """``infergw serve`` on free loopback ports, as a separate process; ``grpc`` and
    ``http`` are its addresses once started.

    By default every model routes to the Triton at ``triton_grpc``; ``config`` (YAML with
    no ports: the command line gives them) replaces that. ``env`` adds to the
    environment (``PYTHONPATH`` runs another tree's gateway). ``wait=False`` returns
    without the plaintext readiness probe (a TLS gateway: the caller waits on a real call).
    """

    def __init__(
        self,
        triton_grpc: str = "",
        registry: list[int] | None = None,
        *,
        config: str | None = None,
        env: Mapping[str, str] | None = None,
        wait: bool = True,
    ) -> None:
        super().__init__("infergw", registry)
        self.config = config if config is not None else GATEWAY_CONF.format(triton=triton_grpc)
        self.env = dict(env or {})
        self.wait = wait
        self.grpc = self.http = ""

    def start(self) -> str:
        conf = self.tmp / "gateway.yaml"
        conf.write_text(self.config)
        grpc_port, http_port, metrics_port = free_ports(3)
        cli = Path(sys.executable).parent / "infergw"
        args = [str(cli), "serve", "--config", str(conf), "--grpc-port", str(grpc_port)]
        args += ["--http-port", str(http_port), "--metrics-port", str(metrics_port)]
        self.spawn(args, env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env})
        self.grpc, self.http = f"127.0.0.1:{grpc_port}", f"127.0.0.1:{http_port}"
        assert self.proc is not None
        if self.wait:
            wait_grpc_ready(self.grpc, self.proc, self.log)
        return self.grpc


class AioPassthrough(ManagedProcess):
    """``bench/aio_passthrough.py``: the grpc.aio floor, a bytes-only Python gRPC proxy."""

    def __init__(self, upstream: str, registry: list[int] | None = None) -> None:
        super().__init__("aio_passthrough", registry)
        self.upstream = upstream
        self.grpc = ""

    def start(self) -> str:
        self.grpc = f"127.0.0.1:{free_ports(1)[0]}"
        script = Path(__file__).resolve().parent / "aio_passthrough.py"
        args = [sys.executable, str(script), "--listen", self.grpc, "--upstream", self.upstream]
        self.spawn(args, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self.proc is not None
        wait_grpc_ready(self.grpc, self.proc, self.log, probe=model_infer_probe)
        return self.grpc


def vm_rss_mib(pid: int) -> float:
    """Resident set size of ``pid`` from /proc/PID/status, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def group_cpu_s(pgid: int) -> float:
    """User + system CPU seconds used so far by the live processes of group ``pgid``."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # Fields after the parenthesised command: state ppid pgrp ... utime(14) stime(15).
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def client_cpu_s() -> float:
    """CPU seconds used so far by this (client) process."""
    times = os.times()
    return times.user + times.system
