"""Assemble a running gateway: router, gRPC + REST frontends, metrics endpoint.

``Gateway`` is an async context manager; ports may be 0 (the bound ports are in
``gateway.addresses`` afterwards), which is how the tests run it::

    async with Gateway(config) as gw:
        print(gw.addresses["grpc"])

Stopping drains, as an orchestrator expects of SIGTERM: readiness goes false at once
(grpc.health.v1 NOT_SERVING, ``/v2/health/ready`` 503) while everything is still served
for ``listen.drain_delay_s``; then both frontends stop accepting and give the calls in
flight up to ``listen.drain_grace_s``, together, before cancelling what is left.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from infergw.gateway.core.config import GatewayConfig, ListenConfig
from infergw.gateway.core.metrics import GatewayMetrics
from infergw.gateway.core.router import Router
from infergw.gateway.core.service import InferenceService
from infergw.gateway.frontends.grpc import GrpcFrontend
from infergw.gateway.frontends.tfserving import add_tfserving_service
from infergw.gateway.lifecycle import AsyncService
from infergw.gateway.sites import AppSite, SiteOptions, create_metrics_app, display_host

log = logging.getLogger(__name__)
DEFAULT_SITE = SiteOptions()


class Gateway(AsyncService):
    def __init__(self, config: GatewayConfig, router: Router | None = None) -> None:
        self.config = config
        self.router = router or Router.from_config(config)
        self.metrics = GatewayMetrics()
        self.service = InferenceService(self.router, self.metrics, config.limits)
        self.addresses: dict[str, str] = {}
        self._grpc: GrpcFrontend | None = None
        self._sites: list[AppSite] = []
        self._serving = False  # started: stopping drains

    async def start(self) -> None:
        from infergw.gateway.frontends.rest import SITE_OPTIONS, create_rest_app

        listen: ListenConfig = self.config.listen
        try:
            self._grpc = GrpcFrontend(self.service, self.config.limits.max_message_bytes)
            add_tfserving_service(self._grpc, self.service)  # same port as OIP
            port = self._grpc.add_port(f"{listen.host}:{listen.grpc_port}")
            self.addresses["grpc"] = f"{display_host(listen.host)}:{port}"
            await self._grpc.start()
            rest = create_rest_app(self.service)
            self.addresses["http"] = await self._serve(rest, listen.http_port, SITE_OPTIONS)
            metrics = create_metrics_app(self.metrics)
            self.addresses["metrics"] = await self._serve(metrics, listen.metrics_port)
        except BaseException:
            await self.stop()
            raise
        self._serving = True
        log.info("infergw listening: %s", self.addresses)

    async def _serve(
        self, app: web.Application, port: int, options: SiteOptions = DEFAULT_SITE
    ) -> str:
        listen = self.config.listen
        site = AppSite(
            app,
            listen.host,
            port,
            idle_timeout_s=listen.idle_timeout_s,
            body_timeout_s=listen.body_timeout_s,
            max_connections=listen.max_connections,
            shutdown_timeout_s=listen.drain_grace_s,
            auto_decompress=options.auto_decompress,
            error_response=options.error_response,
        )
        await site.start()
        self._sites.append(site)
        return site.address

    async def stop(self) -> None:
        """Drain (see the module's docstring), then close the backends. Idempotent."""
        listen = self.config.listen
        serving, self._serving = self._serving, False
        grpc, self._grpc = self._grpc, None
        sites, self._sites = self._sites, []
        self.service.draining = True
        if grpc is not None:
            await grpc.drain()
        if serving and listen.drain_delay_s:
            log.info("draining: not ready; serving on for %g s", listen.drain_delay_s)
            await asyncio.sleep(listen.drain_delay_s)
        if serving:
            log.info("draining: in-flight calls have up to %g s", listen.drain_grace_s)
        # The REST site (sites[0]) drains with gRPC; metrics stay up until both are done.
        stops = [s.stop() for s in sites[:1]]
        if grpc is not None:
            stops.append(grpc.stop(listen.drain_grace_s))
        try:
            await asyncio.gather(*stops)
        finally:
            for site in sites[1:]:
                await site.stop()
            await self.router.close()


def with_ports(config: GatewayConfig, grpc: int, http: int, metrics: int) -> GatewayConfig:
    listen = config.listen.replace(grpc_port=grpc, http_port=http, metrics_port=metrics)
    return config.replace(listen=listen)
