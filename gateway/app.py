"""Assemble a running gateway: router, gRPC + REST frontends, metrics endpoint.

``Gateway`` is an async context manager; ports may be 0 (the bound ports are in
``gateway.addresses`` afterwards), which is how the tests run it::

    async with Gateway(config) as gw:
        print(gw.addresses["grpc"])
"""

from __future__ import annotations

import logging

from aiohttp import web

from infergw.gateway.core.config import GatewayConfig, ListenConfig
from infergw.gateway.core.metrics import GatewayMetrics
from infergw.gateway.core.router import Router
from infergw.gateway.core.service import InferenceService
from infergw.gateway.frontends.grpc import GrpcFrontend
from infergw.gateway.frontends.tfserving import add_tfserving_service
from infergw.gateway.lifecycle import AsyncService
from infergw.gateway.sites import AppSite, create_metrics_app, display_host

log = logging.getLogger(__name__)


class Gateway(AsyncService):
    def __init__(self, config: GatewayConfig, router: Router | None = None) -> None:
        self.config = config
        self.router = router or Router.from_config(config)
        self.metrics = GatewayMetrics()
        self.service = InferenceService(self.router, self.metrics, config.limits)
        self.addresses: dict[str, str] = {}
        self._grpc: GrpcFrontend | None = None
        self._sites: list[AppSite] = []

    async def start(self) -> None:
        from infergw.gateway.frontends.rest import create_rest_app

        listen: ListenConfig = self.config.listen
        try:
            self._grpc = GrpcFrontend(self.service, self.config.limits.max_message_bytes)
            add_tfserving_service(self._grpc, self.service)  # same port as OIP
            port = self._grpc.add_port(f"{listen.host}:{listen.grpc_port}")
            self.addresses["grpc"] = f"{display_host(listen.host)}:{port}"
            await self._grpc.start()
            rest = create_rest_app(self.service)
            self.addresses["http"] = await self._serve(rest, listen.http_port)
            metrics = create_metrics_app(self.metrics)
            self.addresses["metrics"] = await self._serve(metrics, listen.metrics_port)
        except BaseException:
            await self.stop()
            raise
        log.info("infergw listening: %s", self.addresses)

    async def _serve(self, app: web.Application, port: int) -> str:
        site = AppSite(app, self.config.listen.host, port)
        await site.start()
        self._sites.append(site)
        return site.address

    async def stop(self) -> None:
        if self._grpc is not None:
            await self._grpc.stop()
            self._grpc = None
        while self._sites:
            await self._sites.pop().stop()
        await self.router.close()


def with_ports(config: GatewayConfig, grpc: int, http: int, metrics: int) -> GatewayConfig:
    listen = config.listen.replace(grpc_port=grpc, http_port=http, metrics_port=metrics)
    return config.replace(listen=listen)
