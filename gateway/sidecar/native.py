"""The sidecar's gRPC half on the native data plane (issue 13).

``data_plane: native`` in ``SidecarConfig`` (``--data-plane native``) or ``INFERGW_NATIVE=1``
(``INFERGW_NATIVE=0`` always keeps the Python proxy) puts the Rust plane on the gRPC
port as the sidecar (``native/src/passthrough.rs``): every RPC is forwarded as bytes to
the upstream, frame by frame (any cardinality, streaming included), with the Python
proxy's ``server-timing`` trailer and errors of its own, and its spans (the plane continues
the client's ``traceparent``; ``native_traces.py`` exports them). Python keeps the control plane:
the health poller (``health.py``) pushes its verdicts into the plane, which answers
``grpc.health.v1`` Check and Watch natively; metrics are the plane's counters, read at
scrape time under the Python sidecar's names. The plane terminates no TLS, so with
``tls`` the Python proxy keeps the port, and the log says why (once).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from infergw.gateway import native_plane
from infergw.gateway.sidecar import methods

if TYPE_CHECKING:
    from infergw.gateway.sidecar.app import SidecarConfig

log = logging.getLogger(__name__)
NOT_SERVING = 2  # grpc.health.v1.HealthCheckResponse.NOT_SERVING


def why_not(config: SidecarConfig) -> str | None:
    """Why the native plane cannot serve the sidecar's gRPC port (None: it can)."""
    if not native_plane.available():
        return f"{native_plane.MODULE} is not built"
    if config.tls is not None:
        return "tls is set and the native plane terminates no TLS"
    return None


class NativeGrpc:
    """The plane as the sidecar's gRPC port: started, health pushed in, stopped."""

    def __init__(self, config: SidecarConfig) -> None:
        host = config.host
        listen = f"[{host}]:{config.grpc_port}" if ":" in host else f"{host}:{config.grpc_port}"
        plane_config = native_plane.NativeConfig(
            listen=listen,
            sidecar=native_plane.NativeSidecar(config.upstream, config.max_message_bytes),
        )
        self.plane = native_plane.NativePlane(plane_config, stop_grace_s=config.drain_grace_s)
        # Not SERVING until the poller has asked the upstream (never NOT_FOUND for these).
        for service in ("", *methods.HEALTH_SERVICES[config.protocol]):
            self.plane.set_health(service, NOT_SERVING)

    @classmethod
    def of(cls, config: SidecarConfig) -> NativeGrpc | None:
        """The native gRPC half the config asks for (``auto``: whenever it can) and allows,
        or None (the Python proxy; said once in the log)."""
        if not native_plane.use_native(config.data_plane, why_not(config), "sidecar"):
            return None
        return cls(config)

    def start(self) -> int:
        """Bind and serve; the bound port."""
        return self.plane.start()

    async def set(self, service: str, status: int) -> None:
        """``UpstreamHealth``'s sink: what ``grpc.health.v1`` answers for ``service``."""
        self.plane.set_health(service, status)

    def stop(self, grace_s: float) -> None:
        """Health NOT_SERVING for good, then drain (GOAWAY, calls in flight finish for at
        most ``grace_s``). Blocks: run it in a thread."""
        self.plane.enter_graceful_shutdown()
        self.plane.stop(grace_s)

    def stats(self) -> dict[str, Any]:
        """The plane's sidecar counters (``{}`` before it started)."""
        return dict(self.plane.stats().get("sidecar") or {})
