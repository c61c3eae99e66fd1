"""The gRPC port on the native data plane: which routes it forwards itself, and the
Python gateway behind it as its lane (issue 13).

``data_plane`` in the config (``auto``, the default: when the plane forwards some route
itself; ``native``; ``python``; ``INFERGW_NATIVE=0``/``=1`` overrides) puts the Rust plane
(``native_plane.py``) on the configured gRPC port. A *native backend* is a Triton (h2c, or
TLS with its ``tls`` options, mutual too) or a Cloud Run service (h2c, or ``https`` with
the Google ID token Python fetches and ``CredentialKeeper`` hands the plane), with nothing
the plane does not implement (retry, outlier ejection, autoscaling). A Cloud Run route's trailer and
metrics get the container's ``coldstart``/``backend_queue``/``compute`` as on the Python
plane, and its answers feed the warm-state estimator and keep-warm (``feed_warmth``). A
model routed to one native backend, or by a ``weighted`` or ``fallback`` policy among
native backends, or by a ``spillover`` policy whose primary is native (overflow members
native, or served by the lane through a pin, ``native_routes``), is admitted and forwarded
by the plane with the backends' limits and the gateway's policy semantics; every other
model, and every call that is not ``ModelInfer``, goes as bytes to the Python gateway's
gRPC frontend, which then listens on a Unix socket of its own (the lane). With
``listen.tls`` the plane terminates TLS (mutual too) with the files Python reads and
re-reads, and with ``auth`` it refuses a ``ModelInfer`` call without an accepted key
before reading it (the lane's interceptor judges every other call, as the Python plane
does); it is handed the keys' digests only. A request pinned to a backend (``x-infergw-backend``)
goes to the lane, which honours it. The plane's counts, decisions and spans join the
gateway's (``series``, ``decisions``, ``native_traces.py``). A backend that native routes
and lane routes (``*``, a hedge, a pinned spill-over) share has two admission pools, the
plane's and the gateway's, each of ``max_concurrency``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from infergw.gateway import native_plane
from infergw.gateway.core.backend import Backend, CallCredential, CredentialedBackend
from infergw.gateway.core.config import WILDCARD, BackendConfig, GatewayConfig, RouteConfig
from infergw.gateway.core.metrics import BUCKETS, Decision, Series, cumulative_buckets
from infergw.gateway.core.routing.config import FallbackConfig, SpilloverConfig, WeightedConfig
from infergw.gateway.core.warmth import Observation
from infergw.gateway.reloading import Follower
from infergw.gateway.sites import default_max_connections
from infergw.gateway.tls import ServerTls
from infergw.wire import grpc_channel
from infergw.wire.protocols import Protocol

log = logging.getLogger(__name__)

CREDENTIAL_EVERY_S = 30.0  # ID tokens live an hour and are refreshed 5 minutes early
CREDENTIAL_RETRY_S = 2.0
CREDENTIAL_FIRST_TIMEOUT_S = 10.0


@dataclasses.dataclass(frozen=True)
class Upstream:
    """Where the plane sends a backend's calls, how (``tls`` None: h2c), and the header of
    the credential each carries (``CredentialKeeper`` keeps it fresh), if any."""

    address: str
    tls: native_plane.NativeTls | None = None
    credential_header: str | None = None


@dataclasses.dataclass(frozen=True)
class NativeKind:
    """A backend kind the plane forwards to: the upstream its options name (None: these
    options need what the plane lacks), and whether it is ``serverless`` (reports its own
    phases, scales to zero: ``NativeBackend.serverless``)."""

    upstream: Callable[[Mapping[str, Any]], Upstream | None]
    serverless: bool = False


def _triton_upstream(options: Mapping[str, Any]) -> Upstream:
    tls = options.get("tls")  # checked by TritonBackend.from_config (ClientTls)
    if not isinstance(tls, Mapping):
        return Upstream(str(options["url"]))
    fields = {f.name for f in dataclasses.fields(native_plane.NativeTls)}
    return Upstream(
        str(options["url"]),
        native_plane.NativeTls(
            **{k: str(v) for k, v in tls.items() if k in fields and v is not None}
        ),
    )


def _cloudrun_upstream(options: Mapping[str, Any]) -> Upstream | None:
    """h2c, or TLS with the system's roots and a Google ID token on every call (``https``:
    the Python backend fetches it, ``CredentialKeeper`` hands it to the plane)."""
    try:
        target, tls, _ = grpc_channel.parse_target_url(str(options["url"]))
    except ValueError:
        return None  # the backend's own config check says why
    if not tls:
        return Upstream(target)
    return Upstream(target, native_plane.NativeTls(), credential_header="authorization")


NATIVE_KINDS = {
    "triton": NativeKind(_triton_upstream),
    "cloudrun": NativeKind(_cloudrun_upstream, serverless=True),
}


@dataclasses.dataclass(frozen=True)
class NativeRoutes:
    """What the plane serves itself: its backends and the models routed to them."""

    backends: Mapping[str, native_plane.NativeBackend]
    routes: Mapping[str, str | native_plane.NativePolicy]
    max_message_bytes: int
    max_connections: int  # the gRPC port's listen limits, as the Python plane applies them
    idle_timeout_ms: float


def why_not(config: GatewayConfig) -> str | None:
    """Why the native plane cannot own the gRPC port (None: it can)."""
    if not native_plane.available():
        return f"{native_plane.MODULE} is not built"
    return None


def native_routes(config: GatewayConfig) -> NativeRoutes:
    """The routes the plane can forward itself (possibly none: then it only passes calls
    to the lane)."""
    native = {b.name for b in config.backends if _native(b)}
    routes: dict[str, str | native_plane.NativePolicy] = {}
    for route in config.routes:
        served = _served(route, native, config)
        if served is not None:
            routes[route.model] = served
    used = {
        m for r in routes.values() for m in ((r,) if isinstance(r, str) else r.native_members())
    }
    return NativeRoutes(
        {b.name: _backend(b) for b in config.backends if b.name in used},
        routes,
        config.limits.max_message_bytes,
        max_connections=config.listen.max_connections or default_max_connections(),
        idle_timeout_ms=config.listen.idle_timeout_s * 1000.0,
    )


def _native(cfg: BackendConfig) -> bool:
    """A backend the plane implements: a kind of ``NATIVE_KINDS`` whose options it can
    serve, with only admission and a timeout (no retry, outlier ejection, autoscaling)."""
    kind = NATIVE_KINDS.get(cfg.kind)
    return (
        kind is not None
        and kind.upstream(cfg.options) is not None
        and cfg.retry is None
        and cfg.outlier is None
        and cfg.autoscale is None
    )


def _served(
    route: RouteConfig, native: set[str], config: GatewayConfig
) -> str | native_plane.NativePolicy | None:
    """How the plane serves ``route``, or None (the lane's): ``*`` (the plane knows only
    the names it is given), hedging, and any member it does not implement stay with the
    lane, but a spill-over's overflow the lane may serve pinned (``_pinnable``)."""
    policy = route.policy
    if route.model == WILDCARD:
        return None
    if policy is None:
        return route.primary if route.primary in native else None
    if isinstance(policy, WeightedConfig):
        weighted = [(name, w) for name, w in policy.weights.items() if w > 0]
        if not all(name in native for name, _ in weighted):
            return None
        names, weights = zip(*weighted, strict=True)
        return native_plane.NativePolicy("weighted", tuple(names), tuple(weights))
    if isinstance(policy, FallbackConfig):
        if not all(name in native for name in policy.order):
            return None
        return native_plane.NativePolicy("fallback", tuple(policy.order))
    if isinstance(policy, SpilloverConfig):
        lane = frozenset(name for name in policy.overflow if name not in native)
        if policy.primary not in native or not all(_pinnable(n, route, config) for n in lane):
            return None
        return native_plane.NativePolicy(
            "spillover",
            (policy.primary, *policy.overflow),
            max_queue_wait_ms=policy.max_queue_wait_ms,
            lane=lane,
        )
    return None  # hedge: concurrent attempts and a latency budget, the lane's


def _pinnable(name: str, route: RouteConfig, config: GatewayConfig) -> bool:
    """Whether the lane honours a pin of ``route``'s requests to ``name``
    (``Router.backend_name``), and the pin loses nothing: a pinned request goes to the
    backend's stack past outlier ejection, so a backend with ``outlier`` stays unpinned."""
    backend = next((b for b in config.backends if b.name == name), None)
    return (
        backend is not None
        and backend.outlier is None
        and config.allow_backend_pinning
        and (not route.backends or name in route.backends)
    )


def _backend(cfg: BackendConfig) -> native_plane.NativeBackend:
    kind = NATIVE_KINDS[cfg.kind]
    upstream = kind.upstream(cfg.options)
    assert upstream is not None  # only native backends (``_native``) get here
    return native_plane.NativeBackend(
        address=upstream.address,
        tls=upstream.tls,
        credential_header=upstream.credential_header,
        max_concurrency=cfg.max_concurrency,
        max_queue=cfg.max_queue,
        queue_timeout_ms=cfg.queue_timeout_ms,
        timeout_ms=cfg.timeout_ms,
        serverless=kind.serverless,
    )


class NativeFront:
    """The plane on the gRPC port, and the Unix socket its Python lane listens on."""

    def __init__(self, routes: NativeRoutes) -> None:
        self.routes = routes
        self._dir = Path(tempfile.mkdtemp(prefix="infergw-lane-"))
        self.lane_path = self._dir / "grpc.sock"
        self._plane: native_plane.NativePlane | None = None
        # The port's certificates and the API keys' digests, handed over as they change.
        self.followers: list[Follower[Any]] = []
        self._credentials: dict[str, CallCredential] = {}  # the newest, for a (re)start

    @property
    def credentialed(self) -> frozenset[str]:
        """The native backends whose calls carry a credential (``CredentialKeeper``)."""
        return frozenset(n for n, b in self.routes.backends.items() if b.credential_header)

    def set_credential(self, backend: str, credential: CallCredential) -> None:
        """What ``backend``'s calls carry from now (and from the start, if not started).
        ValueError for a credential in another header than the one the plane sends it in
        (its ``credential_header``): sent under that name it would be the wrong header."""
        native = self.routes.backends.get(backend)
        configured = native.credential_header if native is not None else None
        if configured is None or credential.header.lower() != configured:
            raise ValueError(
                f"backend {backend!r}: the plane sends a credential in {configured!r}, "
                f"not {credential.header!r}"
            )
        self._credentials[backend] = credential
        if self._plane is not None:
            self._plane.set_credential(backend, credential.value, credential.good_until)

    @classmethod
    def of(cls, config: GatewayConfig) -> NativeFront | None:
        """The front the config asks for and allows, or None (the Python plane, said once
        in the log). ``auto`` is native when the plane forwards some route itself."""
        wanted = native_plane.requested(config.data_plane)
        if wanted == "python":
            return None
        routes = native_routes(config)
        obstacle = why_not(config)
        if obstacle is None and not routes.routes and wanted == "auto":
            obstacle = "no route it forwards itself (auto: the lane would only add a hop)"
        if not native_plane.use_native(wanted, obstacle, "gateway"):
            return None
        log.info("data plane: native; forwarded natively: %s", sorted(routes.routes) or "none")
        return cls(routes)

    @property
    def lane(self) -> str:
        return f"unix:{self.lane_path}"

    def start(
        self,
        listen: str,
        trace_all: bool = False,
        *,
        tls: ServerTls | None = None,
        key_digests: Callable[[], tuple[bytes, ...]] | None = None,
    ) -> int:
        """Serve ``listen`` (``HOST:PORT``, port 0 allowed), over ``tls`` only if given,
        and natively served calls only with a key of ``key_digests()`` (``ApiKeys.digests``);
        the bound port. Keep the files followed with ``reloading.follow(front.followers)``.
        InvalidArgument for certificates the plane cannot use."""
        config = native_plane.NativeConfig(
            listen=listen,
            python_lane=self.lane,
            backends=self.routes.backends,
            routes=self.routes.routes,
            max_message_bytes=self.routes.max_message_bytes,
            trace_all=trace_all,
            max_connections=self.routes.max_connections,
            idle_timeout_ms=self.routes.idle_timeout_ms,
            tls=tls is not None,
            api_keys=key_digests is not None,
        )
        plane = native_plane.NativePlane(config)
        for backend, credential in self._credentials.items():
            plane.set_credential(backend, credential.value, credential.good_until)
        followers: list[Follower[Any]] = []
        if tls is not None:
            followers.append(native_plane.tls_follower(plane, tls))
        if key_digests is not None:
            followers.append(Follower("API keys", key_digests, plane.set_api_keys))
        native_plane.hand_over(followers)
        self.followers = followers
        port = plane.start()
        self._plane = plane
        return port

    def stop(self, grace_s: float) -> None:
        """Drain the plane for at most ``grace_s``, then remove the lane's socket. Blocks
        (the gateway runs it in a thread); idempotent."""
        try:
            if self._plane is not None:  # kept: its counters and spans outlive the stop
                self._plane.stop(grace_s)
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)

    def stats(self) -> dict[str, Any]:
        return self._plane.stats() if self._plane is not None else {}

    def take_spans(self) -> tuple[list[tuple[Any, ...]], int]:
        return self._plane.take_spans() if self._plane is not None else ([], 0)

    def set_trace_all(self, all: bool) -> None:
        if self._plane is not None:
            self._plane.set_trace_all(all)

    def feed_warmth(self, observe: Callable[[str, Observation], None]) -> int:
        """Hands the serverless backends' answers since the last call to ``observe``
        (``KeepWarmSet.observe``: the estimator and keep-warm see every answer, as
        ``ObservedWarmth`` shows them the Python plane's); how many there were."""
        if self._plane is None:
            return 0
        answers, dropped = self._plane.take_observations()
        if dropped:
            log.warning("native plane: %d serverless answers dropped (drained late)", dropped)
        now = time.monotonic()
        for a in answers:
            cold = a.coldstart_s is not None and a.coldstart_s > 0
            at = now - a.age_s
            observe(a.backend, Observation(at, cold, a.coldstart_s, a.backend_s, a.compute_s))
        return len(answers)

    def collector(self) -> NativeCollector:
        return NativeCollector(self)

    def series(self) -> Iterator[Series]:
        """The natively routed models' requests and phases, under the gateway's labels
        (``GatewayMetrics.sources``): the backend that answered (or was tried last;
        ``none``), protocol ``grpc``, status by name."""
        stats = self.stats()
        if [float(b) for b in stats.get("bounds_s") or BUCKETS] != list(BUCKETS):
            raise RuntimeError("the native plane's histogram bounds are not the gateway's")
        for model, route in (stats.get("models") or {}).items():
            for backend, outcomes in (route.get("backends") or {}).items():
                for code, outcome in outcomes.items():
                    labels = (
                        str(model),
                        str(backend),
                        Protocol.GRPC.value,
                        native_plane.status_name(int(code)),
                    )
                    phases = {
                        phase: ([int(c) for c in h["counts"]], float(h["sum_s"]))
                        for phase, h in outcome.items()
                        if phase != "count"
                    }
                    yield Series(labels, int(outcome["count"]), phases)

    def decisions(self) -> Iterator[Decision]:
        """The route policies' attempts on the plane, for
        ``infergw_route_decisions_total{route, backend, reason}`` (``GatewayMetrics``);
        a request spilled to the lane is counted here only (the lane serves it pinned)."""
        for model, route in (self.stats().get("models") or {}).items():
            for backend, reasons in (route.get("decisions") or {}).items():
                for reason, n in reasons.items():
                    yield Decision((str(model), str(backend), str(reason)), int(n))


class CredentialKeeper:
    """The plane's call credentials kept fresh (an ``https`` Cloud Run's ID tokens): every
    ``every_s`` each backend is asked for its current one (it refreshes it before it
    expires, ``CredentialedBackend``), ``retry_s`` after a failure; the plane sends the
    last one it got until that one's ``good_until``. A failure is logged by the backend,
    and here by its type only."""

    def __init__(
        self,
        backends: Mapping[str, CredentialedBackend],
        push: Callable[[str, CallCredential], None],
        *,
        every_s: float = CREDENTIAL_EVERY_S,
        retry_s: float = CREDENTIAL_RETRY_S,
        first_timeout_s: float = CREDENTIAL_FIRST_TIMEOUT_S,
    ) -> None:
        self.backends = dict(backends)
        self.push = push
        self.every_s = every_s
        self.retry_s = retry_s
        self.first_timeout_s = first_timeout_s

    @classmethod
    def of(
        cls, front: NativeFront, backends: Mapping[str, Backend], **timing: float
    ) -> CredentialKeeper:
        """For ``front``'s credentialed backends, found in ``backends`` (the router's, without
        their policies); TypeError for one that has no credential to give."""
        found: dict[str, CredentialedBackend] = {}
        for name in sorted(front.credentialed):
            backend = backends.get(name)
            if not isinstance(backend, CredentialedBackend):
                raise TypeError(f"backend {name!r} hands out no call credential")
            found[name] = backend
        return cls(found, front.set_credential, **timing)

    async def refresh(self) -> bool:
        """One round, every backend at once; whether each gave its credential."""
        got = await asyncio.gather(*(self._refresh(n, b) for n, b in self.backends.items()))
        return all(got)

    async def first(self) -> bool:
        """The first round, for at most ``first_timeout_s`` (the plane answers UNAVAILABLE
        for a backend until its first credential comes)."""
        try:
            return await asyncio.wait_for(self.refresh(), self.first_timeout_s)
        except TimeoutError:
            log.warning("native plane: no call credential within %g s", self.first_timeout_s)
            return False

    async def run(self, ok: bool = True) -> None:
        """Until cancelled; ``ok``: whether the last round gave every credential. After
        failures the wait doubles from ``retry_s`` up to ``every_s``."""
        failures = 0 if ok else 1
        while self.backends:
            wait = self.retry_s * 2 ** (failures - 1) if failures else self.every_s
            await asyncio.sleep(min(wait, self.every_s))
            failures = 0 if await self.refresh() else failures + 1

    async def _refresh(self, name: str, backend: CredentialedBackend) -> bool:
        try:
            credential = await backend.call_credential()
        except Exception as exc:  # the plane keeps the last one until its time runs out
            log.warning(
                "native plane: backend %r: no fresh credential: %s", name, type(exc).__name__
            )
            return False
        self.push(name, credential)
        return True


class NativeCollector(Collector):
    """The plane's counters and histograms at scrape time: requests by backend (the lane
    is ``python_lane``) and gRPC status, and its total/queue/backend durations."""

    def __init__(self, front: NativeFront) -> None:
        self.front = front

    def collect(self) -> Iterator[Metric]:
        stats = self.front.stats()
        requests = CounterMetricFamily(
            "infergw_native_requests",
            "gRPC calls the native plane answered, by backend (python_lane: passed on) and status",
            labels=("backend", "status"),
        )
        phases = HistogramMetricFamily(
            "infergw_native_phase_duration_seconds",
            "The native plane's total, queue and backend time per call",
            labels=("phase", "backend"),
        )
        bounds = [float(b) for b in stats.get("bounds_s") or []]
        lanes = dict(stats.get("backends") or {})
        if stats.get("python_lane"):
            lanes["python_lane"] = stats["python_lane"]
        for backend, lane in lanes.items():
            for status, n in (lane.get("requests") or {}).items():
                requests.add_metric([backend, str(status)], float(n))
            for phase in ("total", "queue", "backend"):
                histogram = lane.get(phase)
                if histogram:
                    counts = [int(c) for c in histogram.get("counts") or []]
                    buckets = cumulative_buckets(bounds, counts)
                    phases.add_metric([phase, backend], buckets, float(histogram.get("sum_s", 0)))
        yield requests
        yield phases
