"""The sidecar on the native data plane (issue 13): its gRPC half and its REST half.

``data_plane: native`` in ``SidecarConfig`` (``--data-plane native``) or ``INFERGW_NATIVE=1``
(``INFERGW_NATIVE=0`` always keeps the Python proxies) puts the Rust plane on both ports,
one plane each. On the gRPC port (``native/src/passthrough.rs``) every RPC is forwarded as bytes to
the upstream, frame by frame (any cardinality, streaming included), with the Python
proxy's ``server-timing`` trailer and errors of its own, and its spans (the plane continues
the client's ``traceparent``; ``native_traces.py`` exports them). Python keeps the control plane:
the health poller (``health.py``) pushes its verdicts into the plane, which answers
``grpc.health.v1`` Check and Watch natively; metrics are the plane's counters, read at
scrape time under the Python sidecar's names. On the REST port
(``native/src/http_passthrough.rs``) every HTTP/1.1 request goes to ``http_upstream`` as
the Python proxy (``http_proxy.py``) forwards it, with its ``Server-Timing``, errors and
metrics. With ``tls`` each plane terminates TLS (mutual too) with the files Python reads,
and is handed them again when they change.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from infergw.gateway import native_plane
from infergw.gateway.reloading import Follower
from infergw.gateway.sidecar import methods
from infergw.gateway.tls import LoadedTls, ServerTls

if TYPE_CHECKING:
    from infergw.gateway.sidecar.app import SidecarConfig

log = logging.getLogger(__name__)
NOT_SERVING = 2  # grpc.health.v1.HealthCheckResponse.NOT_SERVING


def why_not(config: SidecarConfig) -> str | None:
    """Why the native plane cannot serve the sidecar's gRPC port (None: it can)."""
    if not native_plane.available():
        return f"{native_plane.MODULE} is not built"
    return None


def wanted(config: SidecarConfig) -> bool:
    """Whether the sidecar runs on the native plane: asked for (``auto``: whenever it can)
    and allowed; if not, the Python proxies (said once in the log)."""
    return native_plane.use_native(config.data_plane, why_not(config), "sidecar")


class _NativePort:
    """One port of the sidecar served by a plane of its own: started, stopped."""

    def __init__(
        self,
        config: SidecarConfig,
        port: int,
        sidecar: native_plane.NativeSidecar,
        tls: ServerTls | None,
    ) -> None:
        """InvalidArgument for ``tls`` files the plane cannot use."""
        host = config.host
        listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        plane_config = native_plane.NativeConfig(
            listen=listen, sidecar=sidecar, tls=tls is not None
        )
        self.plane = native_plane.NativePlane(plane_config, stop_grace_s=config.drain_grace_s)
        # The certificates, handed over now and whenever they change (reloading.follow).
        self.followers: list[Follower[LoadedTls]] = []
        if tls is not None:
            self.followers.append(native_plane.tls_follower(self.plane, tls))
        native_plane.hand_over(self.followers)

    def start(self) -> int:
        """Bind and serve; the bound port."""
        return self.plane.start()

    def stop(self, grace_s: float) -> None:
        """Drain (calls in flight finish for at most ``grace_s``). Blocks: run it in a
        thread."""
        self.plane.stop(grace_s)

    def stats(self) -> dict[str, Any]:
        """The plane's sidecar counters (``{}`` before it started)."""
        return dict(self.plane.stats().get("sidecar") or {})


class NativeGrpc(_NativePort):
    """The plane as the sidecar's gRPC port: started, health pushed in, stopped."""

    def __init__(self, config: SidecarConfig, tls: ServerTls | None = None) -> None:
        sidecar = native_plane.NativeSidecar(config.upstream, config.max_message_bytes)
        super().__init__(config, config.grpc_port, sidecar, tls)
        # Not SERVING until the poller has asked the upstream (never NOT_FOUND for these).
        for service in ("", *methods.HEALTH_SERVICES[config.protocol]):
            self.plane.set_health(service, NOT_SERVING)

    async def set(self, service: str, status: int) -> None:
        """``UpstreamHealth``'s sink: what ``grpc.health.v1`` answers for ``service``."""
        self.plane.set_health(service, status)

    def stop(self, grace_s: float) -> None:
        """Health NOT_SERVING for good, then drain (GOAWAY, calls in flight finish for at
        most ``grace_s``). Blocks: run it in a thread."""
        self.plane.enter_graceful_shutdown()
        super().stop(grace_s)


class NativeRest(_NativePort):
    """The plane as the sidecar's REST port (``http_upstream``, HTTP/1.1)."""

    def __init__(self, config: SidecarConfig, tls: ServerTls | None = None) -> None:
        if not config.http_upstream:
            raise ValueError("a REST port needs http_upstream")
        sidecar = native_plane.NativeSidecar(
            config.http_upstream, config.max_message_bytes, protocol="http"
        )
        super().__init__(config, config.http_port, sidecar, tls)
