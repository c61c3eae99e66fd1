"""The native data plane (issue 13): the Rust forwarding core ``infergw._native``, driven
from Python.

The plane listens for gRPC over h2c on its own threads (tokio + hyper; the GIL is never
taken on the request path). ``ModelInfer`` for a model with a native route is checked as
the gateway checks it, admitted (concurrency limit + bounded queue + queue timeout, the
semantics of the gateway's ``Admission``), forwarded as bytes to that route's backend (or
by its policy) with the remaining deadline, and answered with the gateway's
``server-timing`` trailer (``decode``, ``queue``, ``backend``, ``total``). Everything else
is forwarded as bytes to the *python lane* (the Python gateway's gRPC address,
``HOST:PORT`` or ``unix:/path``) and its answer passes through. With ``sidecar`` set the
plane is ``infergw sidecar``'s gRPC port instead (every call to one upstream).

    with NativePlane(NativeConfig(python_lane=gw_grpc,
                                  backends={"triton": NativeBackend("127.0.0.1:8001")},
                                  routes={"identity": "triton"})) as plane:
        channel = grpc.insecure_channel(plane.address)

``available()`` tells whether the extension is built and not switched off with
``INFERGW_NATIVE=0``. See docs/native.md for the configuration and the figures.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from types import ModuleType, TracebackType
from typing import Any, Literal, NamedTuple

from infergw.gateway.reloading import Follower
from infergw.gateway.tls import LoadedTls, ServerTls
from infergw.vocab.errors import InvalidArgument

log = logging.getLogger(__name__)
ENV = "INFERGW_NATIVE"  # "0": the Python data plane, "1": the native one, whatever the config
MODULE = "infergw._native"
# gRPC status codes' names by number (the gRPC spec's table).
_STATUS_NAMES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)  # fmt: skip


def status_name(code: int) -> str:
    """The name of a gRPC status code the plane reports (``INVALID_ARGUMENT`` for 3), as
    the gateway's metrics and spans name statuses."""
    return _STATUS_NAMES[code] if 0 <= code < len(_STATUS_NAMES) else "UNKNOWN"


class NativeUnavailable(RuntimeError):
    """The extension is not built, or ``INFERGW_NATIVE=0`` switched it off."""


def disabled() -> bool:
    return os.environ.get(ENV, "").strip() == "0"


def _module() -> ModuleType | None:
    if disabled():
        return None
    try:
        return importlib.import_module(MODULE)
    except ImportError:
        return None


DataPlane = Literal["auto", "python", "native"]
DATA_PLANES: tuple[DataPlane, ...] = ("auto", "python", "native")


def requested(data_plane: DataPlane) -> DataPlane:
    """The data plane asked for: ``INFERGW_NATIVE=0`` (python) or ``=1`` (native) wins over
    the config's ``data_plane``."""
    env = os.environ.get(ENV, "").strip()
    return "python" if env == "0" else "native" if env == "1" else data_plane


def use_native(data_plane: DataPlane, obstacle: str | None, what: str) -> bool:
    """Whether ``what`` (the gateway, the sidecar) runs on the native plane: asked for, or
    ``auto``, and nothing in the way (``obstacle`` says what is). A fallback is logged
    once: a warning when ``native`` was asked for, else for information."""
    wanted = requested(data_plane)
    if wanted == "python":
        return False
    if obstacle is not None:
        level = logging.WARNING if wanted == "native" else logging.INFO
        log.log(level, "%s data plane: python, not native: %s", what, obstacle)
        return False
    return True


def available() -> bool:
    """The extension is built and importable, and not switched off by ``INFERGW_NATIVE=0``."""
    return _module() is not None


@dataclasses.dataclass(frozen=True)
class NativeTls:
    """TLS to a backend, as ``backends/triton.py``'s ``ClientTls``: the CA file that signs
    the server (None: the system's roots), a client certificate and key (mutual TLS), and
    the name its certificate must carry (None: the address's host). ALPN ``h2``."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None


@dataclasses.dataclass(frozen=True)
class NativeBackend:
    """One native backend: a single upstream (``HOST:PORT`` or ``unix:/path``; h2c, or TLS
    as ``tls`` says) with the
    admission settings of ``gateway/core/config.py``'s ``BackendConfig`` (same defaults).
    ``serverless``: it scales to zero and reports ``coldstart``/``backend_queue``/``compute``
    in its ``server-timing`` trailer (Cloud Run's container); those join the plane's
    trailer and metrics, and its answers are kept for ``NativePlane.take_observations``.
    ``credential_header``: every call carries the credential ``NativePlane.set_credential``
    keeps (Cloud Run's ``authorization`` ID token); without one the call is UNAVAILABLE."""

    address: str
    max_concurrency: int = 64
    max_queue: int = 256
    queue_timeout_ms: float = 5000.0
    timeout_ms: float | None = 30000.0  # None: the client's deadline only
    serverless: bool = False
    tls: NativeTls | None = None  # None: h2c
    credential_header: str | None = None


class NativeAnswer(NamedTuple):
    """A serverless backend's successful answer on the plane: ``age_s`` seconds before it
    was taken, its round trip, and the cold start and compute time it reported."""

    backend: str
    age_s: float
    backend_s: float
    coldstart_s: float | None
    compute_s: float | None


@dataclasses.dataclass(frozen=True)
class NativePolicy:
    """A route policy the plane serves among native backends (docs/native.md: Route
    policies), with the gateway's semantics: ``weighted`` over ``members`` by ``weights``,
    ``fallback`` in ``members``' order, ``spillover`` from ``members[0]`` (the primary) to
    ``members[1:]`` in order, those in ``lane`` served by the python lane (pinned there)."""

    kind: Literal["weighted", "fallback", "spillover"]
    members: tuple[str, ...]
    weights: tuple[int, ...] = ()
    max_queue_wait_ms: float = 20.0
    lane: frozenset[str] = frozenset()

    def native_members(self) -> tuple[str, ...]:
        return tuple(m for m in self.members if m not in self.lane)

    def to_json(self) -> dict[str, Any]:
        if self.kind == "weighted":
            return {
                "kind": "weighted",
                "weights": [list(p) for p in zip(self.members, self.weights, strict=True)],
            }
        if self.kind == "fallback":
            return {"kind": "fallback", "order": list(self.members)}
        primary, *overflow = self.members
        return {
            "kind": "spillover",
            "primary": primary,
            "overflow": [{"lane" if m in self.lane else "native": m} for m in overflow],
            "max_queue_wait_ms": self.max_queue_wait_ms,
        }


@dataclasses.dataclass(frozen=True)
class NativeSidecar:
    """The plane as a port of ``infergw sidecar``. ``protocol="grpc"``: every call
    forwarded as bytes to ``upstream`` (``HOST:PORT`` or ``unix:/path``, h2c),
    ``grpc.health.v1`` answered from what ``NativePlane.set_health`` pushes, messages over
    ``max_message_bytes`` refused. ``protocol="http"``: the REST port, every HTTP/1.1
    request forwarded to ``upstream`` (``HOST:PORT``), bodies over the limit refused."""

    upstream: str
    max_message_bytes: int = 64 * 1024 * 1024
    protocol: Literal["grpc", "http"] = "grpc"


@dataclasses.dataclass(frozen=True)
class NativeConfig:
    """What the plane needs: where to listen, the python lane, native backends, and the
    models routed to them (model name -> backend name, or a policy among them)."""

    listen: str = "127.0.0.1:0"
    python_lane: str | None = None
    backends: Mapping[str, NativeBackend] = dataclasses.field(default_factory=dict)
    routes: Mapping[str, str | NativePolicy] = dataclasses.field(default_factory=dict)
    worker_threads: int = 1  # 1: one thread runs everything (cheapest per request)
    max_message_bytes: int = 64 * 1024 * 1024  # the gateway's limits.max_message_bytes
    trace_all: bool = False  # trace every request, not only those with a traceparent
    max_connections: int | None = None  # listen.max_connections (None: no limit)
    idle_timeout_ms: float | None = None  # listen.idle_timeout_s: GOAWAY after this idle
    sidecar: NativeSidecar | None = None  # set: a sidecar (no backends, routes or lane)
    tls: bool = False  # TLS only; certificates from set_server_tls (tls_follower) first
    api_keys: bool = False  # native calls need a key (set_api_keys: the digests)

    def to_json(self) -> str:
        config: dict[str, Any] = {
            "listen": self.listen,
            "python_lane": self.python_lane,
            "backends": {n: dataclasses.asdict(b) for n, b in self.backends.items()},
            "routes": {
                model: route if isinstance(route, str) else route.to_json()
                for model, route in self.routes.items()
            },
            "worker_threads": self.worker_threads,
            "max_message_bytes": self.max_message_bytes,
            "trace_all": self.trace_all,
            "max_connections": self.max_connections,
            "idle_timeout_ms": self.idle_timeout_ms,
            "tls": self.tls,
            "api_keys": self.api_keys,
        }
        if self.sidecar is not None:
            config["sidecar"] = dataclasses.asdict(self.sidecar)
        return json.dumps(config)


def bind(listen: str) -> socket.socket:
    """A listening TCP socket on ``HOST:PORT`` (``[V6]:PORT``; port 0: any free one), as
    Python's servers bind one (``SO_REUSEADDR``; ``[::]`` dual-stack). OSError names
    ``listen``."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server(
            (host, int(port)),
            family=family,
            backlog=socket.SOMAXCONN,
            dualstack_ipv6=host == "::" and socket.has_dualstack_ipv6(),
        )
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen on {listen}: {exc.strerror or exc}") from exc


class NativePlane:
    """A started-and-stopped native plane; also a context manager (start, then stop).

    ``ValueError`` at construction for a config the plane rejects; ``NativeUnavailable``
    if the extension cannot be used; ``OSError`` from ``start`` if it cannot listen.
    """

    def __init__(self, config: NativeConfig, *, stop_grace_s: float = 5.0) -> None:
        module = _module()
        if module is None:
            why = f"{ENV}=0" if disabled() else f"{MODULE} is not built"
            raise NativeUnavailable(f"the native data plane is unavailable ({why})")
        self.config = config
        self.stop_grace_s = stop_grace_s
        self._plane: Any = module.Plane(config.to_json())
        self._host = config.listen.rpartition(":")[0] or "127.0.0.1"

    def start(self) -> int:
        """Bind ``listen`` here and hand the socket to the plane (``native/src/handover.rs``),
        which serves it; the bound port (``listen`` may ask for port 0). Running: its port."""
        if self.port is not None:
            return self.port
        with bind(self.config.listen) as listener:
            inbox = self._plane.listener_inbox()
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM, fileno=inbox) as sending:
                socket.send_fds(sending, [b"listener"], [listener.fileno()])
            return int(self._plane.start())  # the plane's copy of the socket from now

    def stop(self, grace_s: float | None = None) -> None:
        """Drain (GOAWAY; requests in flight finish) for at most ``grace_s``, then close
        every connection and thread. Idempotent."""
        self._plane.stop(self.stop_grace_s if grace_s is None else grace_s)

    @property
    def port(self) -> int | None:
        port = self._plane.port
        return None if port is None else int(port)

    @property
    def address(self) -> str:
        """``HOST:PORT`` clients dial (while running)."""
        if self.port is None:
            raise RuntimeError("the native plane is not running")
        host = "127.0.0.1" if self._host in ("0.0.0.0", "") else self._host.strip("[]")
        return f"{host}:{self.port}" if ":" not in host else f"[{host}]:{self.port}"

    def stats(self) -> dict[str, Any]:
        """Counters and histograms since the last start (docs/native.md: stats)."""
        return dict(self._plane.stats())

    def take_spans(self) -> tuple[list[tuple[Any, ...]], int]:
        """The traced requests' span records since the last call, and how many were
        dropped since the start (``gateway/native_traces.py`` reads them)."""
        records, dropped = self._plane.take_spans()
        return list(records), int(dropped)

    def take_observations(self) -> tuple[list[NativeAnswer], int]:
        """The serverless backends' answers since the last call, oldest first, and how
        many were dropped since the last call (the warm-state estimator reads them)."""
        rows, dropped = self._plane.take_observations()
        return [NativeAnswer(*row) for row in rows], int(dropped)

    def set_credential(self, backend: str, value: str | None, good_until: float = 0.0) -> None:
        """Every later call to ``backend`` carries ``value`` (in its ``credential_header``)
        until ``good_until`` (unix time), then is UNAVAILABLE until a new one comes; None
        forgets it. Works before ``start`` too. ValueError (never naming the value) for a
        backend without a credential or a value no header can carry."""
        self._plane.set_credential(backend, value, good_until)

    def set_server_tls(self, chain: bytes, key: bytes, client_ca: bytes | None = None) -> None:
        """New connections are served TLS with ``chain`` and ``key`` (PEM) and, with
        ``client_ca``, must present a certificate it signed; established ones keep theirs.
        Before ``start`` too (with ``tls`` it does not start without). ValueError, saying
        which part and never what it holds, keeps the previous set."""
        self._plane.set_server_tls(chain, key, client_ca)

    def set_api_keys(self, digests: Sequence[bytes]) -> None:
        """The SHA-256 digests of the keys natively served calls are admitted with (with
        ``api_keys``; none set, none is admitted), in place of the previous ones."""
        self._plane.set_api_keys(list(digests))

    def set_trace_all(self, all: bool) -> None:
        """Trace every request (True) or only those carrying a valid ``traceparent``."""
        self._plane.set_trace_all(all)

    def set_health(self, service: str, status: int) -> None:
        """What a sidecar plane answers ``grpc.health.v1.Health`` with for ``service``
        (a ``HealthCheckResponse.ServingStatus``); works before ``start`` too."""
        self._plane.set_health(service, int(status))

    def enter_graceful_shutdown(self) -> None:
        """Every health status NOT_SERVING for good; open ``Watch`` streams end."""
        self._plane.enter_graceful_shutdown()

    def __enter__(self) -> NativePlane:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def tls_follower(plane: NativePlane, tls: ServerTls) -> Follower[LoadedTls]:
    """Hands ``tls``'s files to ``plane`` now and whenever they change (``follow``)."""

    def push(files: LoadedTls) -> None:
        plane.set_server_tls(files.chain, files.key, files.client_ca)

    return Follower("TLS certificate", tls.current, push)


def hand_over(followers: Sequence[Follower[Any]]) -> None:
    """Each follower's first sync, before the plane starts: InvalidArgument for what the
    plane cannot use, naming it and why (never its content)."""
    for follower in followers:
        try:
            follower.sync()
        except ValueError as exc:
            raise InvalidArgument(
                f"the native plane cannot use the {follower.what} ({exc}); "
                "data_plane: python serves it"
            ) from exc
