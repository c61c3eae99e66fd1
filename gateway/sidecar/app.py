"""Assemble a running sidecar: gRPC proxy + health, optional REST proxy, metrics endpoint.

Both halves are the Python proxies (``grpc_proxy.py``, ``http_proxy.py``) or, with
``data_plane: native`` / ``INFERGW_NATIVE=1`` (and by default where it is built), the Rust
plane, one per port (``native.py``); the metrics port is Python's either way.

``Sidecar`` is an async context manager; ports may be 0 (the bound ports are in
``sidecar.addresses`` afterwards)::

    async with Sidecar(SidecarConfig(upstream="127.0.0.1:9001")) as sidecar:
        print(sidecar.addresses["grpc"])
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2_grpc

from infergw.gateway.core.config import TlsConfig
from infergw.gateway.lifecycle import AsyncService
from infergw.gateway.native_plane import DATA_PLANES, DataPlane
from infergw.gateway.native_traces import NATIVE_TRACES_INTERVAL_S, NativeTraces
from infergw.gateway.reloading import follow
from infergw.gateway.sidecar.grpc_proxy import GrpcProxy
from infergw.gateway.sidecar.health import UpstreamHealth
from infergw.gateway.sidecar.http_proxy import HttpProxy
from infergw.gateway.sidecar.methods import PROTOCOLS
from infergw.gateway.sidecar.metrics import SidecarMetrics, http_status_label
from infergw.gateway.sidecar.native import NativeGrpc, NativeRest, wanted
from infergw.gateway.sites import AppSite, create_metrics_app, display_host
from infergw.gateway.tls import ServerTls
from infergw.wire import grpc_channel

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SidecarConfig:
    upstream: str  # HOST:PORT of the upstream's gRPC endpoint
    protocol: str = "oip"  # oip | tfserving
    http_upstream: str | None = None  # HOST:PORT of its REST: OIP's, or TF Serving's (tfserving)
    host: str = "0.0.0.0"
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    health_interval_s: float = 2.0
    health_model: str | None = None  # tfserving: the model whose status means "ready"
    drain_grace_s: float = 30.0  # on stop: how long calls in flight may take to finish
    tls: TlsConfig | None = None  # TLS (and with a client CA, mTLS) on every port
    # Who serves the gRPC and REST ports: the Python proxies, or the Rust plane (native.py;
    # auto: the plane when it is built; INFERGW_NATIVE=0/1 overrides).
    data_plane: DataPlane = "auto"

    def __post_init__(self) -> None:
        if self.data_plane not in DATA_PLANES:
            raise ValueError(f"data_plane must be one of {DATA_PLANES}, not {self.data_plane!r}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, not {self.protocol!r}")
        if self.max_message_bytes <= 0:
            raise ValueError("max_message_bytes must be positive")
        if self.drain_grace_s < 0:
            raise ValueError("drain_grace_s must be >= 0")


class Sidecar(AsyncService):
    def __init__(self, config: SidecarConfig) -> None:
        self.config = config
        self.metrics = SidecarMetrics()
        self.addresses: dict[str, str] = {}
        self.health: UpstreamHealth | None = None
        self._health_servicer: health.aio.HealthServicer | None = None
        self._channel: grpc.aio.Channel | None = None
        self._server: grpc.aio.Server | None = None
        self._http: HttpProxy | None = None
        self._sites: list[AppSite] = []
        self._tls: ServerTls | None = None
        self._native: NativeGrpc | None = None
        self._native_rest: NativeRest | None = None
        self._native_traces: list[tuple[NativeTraces, asyncio.Task[None]]] = []
        self._follow: asyncio.Task[None] | None = None  # the planes' TLS files followed

    @property
    def data_plane(self) -> str:
        """Who serves the gRPC and REST ports: ``native`` (the Rust plane) or ``python``."""
        return "native" if self._native is not None else "python"

    def plane_stats(self) -> dict[str, Any]:
        """The native gRPC plane's sidecar counters (``{}`` on the Python proxy)."""
        return self._native.stats() if self._native is not None else {}

    def rest_plane_stats(self) -> dict[str, Any]:
        """The native REST plane's counters (``{}`` on the Python proxy or without REST)."""
        return self._native_rest.stats() if self._native_rest is not None else {}

    async def start(self) -> None:
        try:
            tls = self.config.tls
            if tls is not None:
                self._tls = ServerTls(tls.cert_file, tls.key_file, tls.client_ca_file)
            if wanted(self.config):
                await self._start_native()
            else:
                await self._start_grpc()
            if self.config.http_upstream and self._native is None:
                self._http = HttpProxy(
                    self.config.http_upstream, self.metrics, self.config.max_message_bytes
                )
                await self._http.start()
                self.addresses["http"] = await self._serve(
                    self._http.app(), self.config.http_port, handler_cancellation=True
                )
            self.addresses["metrics"] = await self._serve(
                create_metrics_app(self.metrics.gateway), self.config.metrics_port
            )
        except BaseException:
            await self.stop()
            raise
        log.info(
            "infergw sidecar listening: %s -> %s (data plane: %s)",
            self.addresses,
            self.config.upstream,
            self.data_plane,
        )

    def _open_channel(self) -> grpc.aio.Channel:
        # The sidecar adds no message limit of its own toward the upstream.
        self._channel = grpc_channel.aio_channel(
            self.config.upstream,
            max_message_bytes=grpc_channel.UNLIMITED,
            private=True,
            options=grpc_channel.FAST_RECONNECT,  # e.g. started before its upstream
        )
        return self._channel

    async def _start_native(self) -> None:
        """A plane serves gRPC, another REST; the health poller (on a channel of its own)
        feeds the gRPC one."""
        config = self.config
        host = display_host(config.host)
        grpc_port = self._native = NativeGrpc(config, self._tls)
        rest = None
        if config.http_upstream:
            rest = self._native_rest = NativeRest(config, self._tls)
        channel = self._open_channel()
        self.addresses["grpc"] = f"{host}:{grpc_port.start()}"
        self.metrics.attach(grpc_port.stats)
        if rest is not None:
            self.addresses["http"] = f"{host}:{rest.start()}"
            self.metrics.attach(rest.stats, http_status_label)
        ports = [grpc_port] if rest is None else [grpc_port, rest]
        self._follow = asyncio.create_task(follow([f for p in ports for f in p.followers]))
        for port in ports:
            traces = NativeTraces(port.plane, None, traced_backends=lambda _: False)
            self._native_traces.append((traces, traces.start(NATIVE_TRACES_INTERVAL_S)))
        self.health = UpstreamHealth(
            channel, config.protocol, grpc_port, config.health_interval_s, config.health_model
        )
        await self.health.start()

    async def _start_grpc(self) -> None:
        config = self.config
        channel = self._open_channel()
        server = self._server = grpc.aio.server(
            options=grpc_channel.limited_server_options(config.max_message_bytes)
        )
        # Health first: handlers are consulted in order, and the proxy takes any method.
        servicer = self._health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        proxy = GrpcProxy(channel, config.upstream, self.metrics, config.max_message_bytes)
        server.add_generic_rpc_handlers((proxy,))
        address = f"{config.host}:{config.grpc_port}"
        if self._tls is not None:
            port = server.add_secure_port(address, self._tls.grpc_credentials())
        else:
            port = server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"cannot bind gRPC to {config.host}:{config.grpc_port}")
        self.addresses["grpc"] = f"{display_host(config.host)}:{port}"
        self.health = UpstreamHealth(
            channel, config.protocol, servicer, config.health_interval_s, config.health_model
        )
        await server.start()
        await self.health.start()

    async def _serve(
        self, app: web.Application, port: int, handler_cancellation: bool = False
    ) -> str:
        site = AppSite(
            app,
            self.config.host,
            port,
            handler_cancellation=handler_cancellation,  # a client gone cancels upstream
            auto_decompress=False,  # bodies are forwarded as sent, compressed or not
            shutdown_timeout_s=self.config.drain_grace_s,
            tls=self._tls,
        )
        await site.start()
        self._sites.append(site)
        return site.address

    async def stop(self) -> None:
        """Drain: NOT_SERVING, refuse new calls, give those in flight ``drain_grace_s``."""
        if self.health is not None:
            await self.health.stop()
            self.health = None
        if self._health_servicer is not None:
            await self._health_servicer.enter_graceful_shutdown()
            self._health_servicer = None
        server, self._server = self._server, None
        sites, self._sites = self._sites, []
        grace = self.config.drain_grace_s
        # gRPC and the REST proxy drain together; metrics (the last site) stay up until then.
        stops = [site.stop() for site in sites[:-1]]
        if server is not None:
            stops.append(server.stop(grace))
        for plane in (self._native, self._native_rest):  # kept for a last scrape
            if plane is not None:
                stops.append(asyncio.to_thread(plane.stop, grace))
        await asyncio.gather(*stops)
        following, self._follow = self._follow, None
        if following is not None:
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)
        traced, self._native_traces = self._native_traces, []
        for traces, task in traced:  # the last span records, once the planes have stopped
            await traces.stop(task)
        for site in sites[-1:]:
            await site.stop()
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
