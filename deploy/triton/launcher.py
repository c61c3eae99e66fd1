"""Start and stop the real ``tritonserver`` binary that ships inside the nvidia-pytriton wheel.

PyTriton itself is not used: it adds a proxy hop (~2 ms per call) and locks protocol groups
behind a token. The wheel's binary runs fine on its own once it is given what PyTriton
would set up (verified on these machines, see DESIGN.md section 8):

* a private copy of the wheel's backends dir whose ``python/triton_python_backend_stub``
  is the stub built for *this* Python's minor version;
* ``LD_LIBRARY_PATH`` starting with this Python's LIBDIR (else the stub embeds the system
  libpython and fails) plus ``nvidia_pytriton.libs`` (copied binaries lose their RPATH);
* ``PATH`` starting with this interpreter's bin dir (the stub runs the first ``python3``)
  and no foreign ``PYTHONPATH``/``PYTHONHOME`` (a second numpy made inputs read as zeros).

The server leads its own process group (``ProcessGroup``), so stopping it also stops the
stub processes: those that outlive the server are SIGKILLed with the group, and the
python-backend shared memory a killed server cannot remove is unlinked here.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib.util
import os
import re
import shutil
import socket
import sys
import sysconfig
import tempfile
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from infergw.gateway.processes import ProcessGroup, ProcessStartError

BUNDLED_REPOSITORY = Path(__file__).resolve().parent / "model_repository"
STOP_GRACE_S = 10.0
PORT_ATTEMPTS = 3
LOG_TAIL_LINES = 30
LOG_READ_BYTES = 256 * 1024  # startup logs are far smaller; bounds the read of a huge log
TRACE_QUEUE_SPANS = 65536  # Triton's span exporter queue (OpenTelemetry's default: 2048)
TRACE_EXPORT_BATCH_SPANS = 2048  # spans per export (default 512)


class TritonStartError(RuntimeError):
    """tritonserver did not become ready; the message carries the tail of its log."""


@dataclass(frozen=True)
class TritonEndpoints:
    """Where a running server listens, each as ``"HOST:PORT"`` (tritonclient's url form)."""

    grpc: str
    http: str
    metrics: str


@dataclass(frozen=True)
class TritonDist:
    """The pieces of the nvidia-pytriton wheel needed to run its server."""

    binary: Path
    backends: Path
    stub: Path
    caches: Path
    libs: Path

    @classmethod
    def find(cls) -> TritonDist:
        spec = importlib.util.find_spec("pytriton")  # locates the wheel without importing it
        if spec is None or not spec.submodule_search_locations:
            raise TritonStartError("nvidia-pytriton is not installed (pip install infergw[local])")
        root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        dist = cls(
            binary=root / "bin" / "tritonserver",
            backends=root / "backends",
            stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
            caches=root / "caches",
            libs=root.parent.parent / "nvidia_pytriton.libs",
        )
        for path in (dist.binary, dist.backends, dist.stub, dist.caches):
            if not path.exists():
                raise TritonStartError(f"nvidia-pytriton wheel is missing {path}")
        return dist


class TritonServer:
    """A ``tritonserver`` child process serving a model repository on loopback.

    Use as a context manager or call ``start()``/``stop()``. ``stop()`` is idempotent and
    safe after a failed ``start()``; an ``atexit`` hook stops a server left running.
    ``start()`` after ``stop()`` (a restart, as the local stack's supervisor does) binds
    the ports the first start chose.
    """

    def __init__(
        self,
        model_repository: Path | None = None,
        *,
        host: str = "127.0.0.1",
        grpc_port: int = 0,
        http_port: int = 0,
        metrics_port: int = 0,
        otlp_traces_url: str | None = None,
        trace_rate: int = 0,
        trace_export_delay_ms: int | None = None,
        service_name: str = "triton",
        startup_timeout_s: float = 120.0,
        models: Sequence[str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.model_repository = Path(model_repository or BUNDLED_REPOSITORY).resolve()
        self.host = host
        self.ports = (grpc_port, http_port, metrics_port)
        self.otlp_traces_url = otlp_traces_url
        self.trace_rate = trace_rate
        self.trace_export_delay_ms = trace_export_delay_ms
        self.service_name = service_name
        self.startup_timeout_s = startup_timeout_s
        self.models = list(models) if models is not None else None
        self.extra_args = list(extra_args)
        self._group: ProcessGroup | None = None
        self._tmp: Path | None = None
        self._endpoints: TritonEndpoints | None = None
        self._shm_prefix: str | None = None

    # -- public API ---------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._group.pid if self._group is not None else None

    def running(self) -> bool:
        """Started and not exited since (a crash, a kill)."""
        return self._group is not None and self._group.poll() is None

    @property
    def endpoints(self) -> TritonEndpoints:
        if self._endpoints is None:
            raise RuntimeError("tritonserver is not running")
        return self._endpoints

    @property
    def log_path(self) -> Path | None:
        """The server's combined stdout/stderr; removed by ``stop()``."""
        return self._tmp / "tritonserver.log" if self._tmp is not None else None

    def start(self) -> TritonEndpoints:
        """Launch the server and block until ``/v2/health/ready`` answers 200."""
        if self._group is not None:
            raise RuntimeError("tritonserver already started")
        atexit.register(self.stop)
        try:
            attempt = 1
            while True:
                try:
                    return self._start()
                except TritonStartError as exc:
                    # A free port picked here can be taken by someone else before Triton binds it.
                    lost_race = 0 in self.ports and "already in use" in str(exc)
                    if not lost_race or attempt == PORT_ATTEMPTS:
                        raise
                    self._cleanup()
                    attempt += 1
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after a grace period, remove the temp dir."""
        try:
            self._cleanup()
        finally:
            atexit.unregister(self.stop)

    def _cleanup(self) -> None:
        group, self._group, self._endpoints = self._group, None, None
        try:
            if group is not None:
                group.stop()  # stubs that outlive the server die with the group
        finally:
            if self._shm_prefix is not None:
                _remove_shm_regions(self._shm_prefix)
                self._shm_prefix = None
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
                self._tmp = None

    def wait(self, timeout: float | None = None) -> int:
        """Block until the server exits on its own; returns its exit code."""
        if self._group is None:
            raise RuntimeError("tritonserver is not running")
        return self._group.wait(timeout)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the log, with Triton's padded tables squeezed."""
        return "\n".join(self._log_lines()[-lines:])

    def _log_lines(self) -> list[str]:
        path = self.log_path
        if path is None or not path.exists():
            return []
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - LOG_READ_BYTES))
            text = f.read().decode(errors="replace")
        return [_squeeze(line) for line in text.splitlines() if line.strip()]

    def _startup_error(self, what: str) -> TritonStartError:
        """``what`` plus the log's error lines (the cause is rarely in the last lines)."""
        lines = self._log_lines()
        errors = [line for line in lines if _is_error_line(line)]
        return TritonStartError(
            f"{what}\nerrors in its log:\n"
            + "\n".join(errors[-LOG_TAIL_LINES:])
            + "\nlog tail:\n"
            + "\n".join(lines[-LOG_TAIL_LINES:])
        )

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals ----------------------------------------------------------------------

    def _start(self) -> TritonEndpoints:
        dist = TritonDist.find()
        if not self.model_repository.is_dir():
            raise TritonStartError(f"model repository {self.model_repository} does not exist")
        self._tmp = Path(tempfile.mkdtemp(prefix="infergw-triton-"))
        self._shm_prefix = f"{self._tmp.name}-"
        backends = self._tmp / "backends"
        shutil.copytree(dist.backends, backends, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(dist.stub, backends / "python" / "triton_python_backend_stub")

        grpc_port, http_port, metrics_port = _free_ports(self.host, self.ports)
        endpoints = TritonEndpoints(
            grpc=f"{self.host}:{grpc_port}",
            http=f"{self.host}:{http_port}",
            metrics=f"{self.host}:{metrics_port}",
        )
        args = [
            str(dist.binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backends}",
            f"--cache-directory={dist.caches}",
            f"--grpc-address={self.host}",
            f"--grpc-port={grpc_port}",
            f"--http-address={self.host}",
            f"--http-port={http_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={metrics_port}",
            "--allow-metrics=true",
            "--allow-gpu-metrics=false",
            "--allow-cpu-metrics=true",
            "--exit-on-error=true",
            "--strict-readiness=true",
            "--exit-timeout-secs=5",
            # Room for MB-sized tensors up front instead of growing the shm region 1 MB at a time.
            "--backend-config=python,shm-default-byte-size=16777216",
            "--backend-config=python,shm-growth-byte-size=16777216",
            # A per-server prefix lets stop() find regions a killed server leaves in /dev/shm.
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
            *self._model_args(),
            *self._trace_args(),
            *self.extra_args,
        ]
        self._group = ProcessGroup.start(
            args,
            env=_server_env(dist),
            cwd=self._tmp,
            log=self._tmp / "tritonserver.log",
            name="tritonserver",
            grace_s=STOP_GRACE_S,
        )
        ready = functools.partial(_http_ready, f"http://{endpoints.http}/v2/health/ready")
        try:
            self._group.wait_ready(ready, self.startup_timeout_s)
        except ProcessStartError as exc:
            if exc.returncode is None:
                what = f"tritonserver not ready after {self.startup_timeout_s:.0f} s"
            else:
                what = f"tritonserver exited with code {exc.returncode} during startup"
            raise self._startup_error(what) from exc
        self._endpoints = endpoints
        # A restart (start after stop) keeps these, so clients' addresses stay valid.
        self.ports = (grpc_port, http_port, metrics_port)
        return endpoints

    def _model_args(self) -> list[str]:
        if self.models is None:
            return []
        return ["--model-control-mode=explicit", *(f"--load-model={m}" for m in self.models)]

    def _trace_args(self) -> list[str]:
        """OpenTelemetry tracing: ``rate=0`` traces exactly the requests carrying a
        ``traceparent`` (the gateway sends one per attempt to get their splits).

        ``trace_export_delay_ms`` is the exporter's batch delay (OpenTelemetry's default
        is 5 s): short, so per-request timings reach the gateway soon after the response.
        Its queue is then made room for a few seconds of spans at thousands of requests
        per second (three spans each), as the default 2048 drops spans beyond that.
        """
        if not self.otlp_traces_url:
            return []
        items = [
            "mode=opentelemetry",
            f"rate={self.trace_rate}",
            "level=TIMESTAMPS",
            "count=-1",
            f"opentelemetry,url={self.otlp_traces_url}",
            f"opentelemetry,resource=service.name={self.service_name}",
        ]
        if self.trace_export_delay_ms is not None:
            items += [
                f"opentelemetry,bsp_schedule_delay={self.trace_export_delay_ms}",
                f"opentelemetry,bsp_max_queue_size={TRACE_QUEUE_SPANS}",
                f"opentelemetry,bsp_max_export_batch_size={TRACE_EXPORT_BATCH_SPANS}",
            ]
        return [f"--trace-config={item}" for item in items]


def _http_ready(url: str) -> bool:
    # Refused or not ready yet (urllib's HTTPError is an OSError too).
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1.0) as reply:
        return bool(reply.status == 200)
    return False


def _squeeze(line: str) -> str:
    """Collapse the padding of Triton's ASCII tables so a log excerpt stays readable."""
    return re.sub(r"-{4,}", "---", re.sub(r" {2,}", " ", line.rstrip()))


def _is_error_line(line: str) -> bool:
    # glog error lines ("E1124 00:48:46 ..."), protobuf parse errors and the final "error: ...".
    return bool(re.match(r"E\d{4} ", line)) or "ERROR" in line or line.startswith("error:")


def _server_env(dist: TritonDist) -> dict[str, str]:
    """The environment the binary and its python-backend stubs need (see module docstring)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    libdir = sysconfig.get_config_var("LIBDIR") or str(Path(sys.base_prefix) / "lib")
    lib_path = [libdir, str(dist.libs)]
    if env.get("LD_LIBRARY_PATH"):
        lib_path.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(lib_path)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # Each model instance is its own stub process; BLAS thread pools inside every one of
    # them oversubscribe the cores (minilm p95 went from ~60 to ~270 ms). One thread per
    # instance unless the user says otherwise; scale with instance_group count instead.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    return env


def _free_ports(host: str, wanted: Sequence[int]) -> list[int]:
    """Resolve 0s to distinct free ports (held open together so they cannot collide)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for port in wanted:
            if port:
                ports.append(port)
                continue
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


def _remove_shm_regions(prefix: str) -> None:
    """Unlink python-backend shared memory a SIGKILLed server could not clean up itself."""
    shm = Path("/dev/shm")
    if shm.is_dir():
        for region in shm.glob(f"{prefix}*"):
            with contextlib.suppress(OSError):
                region.unlink()
