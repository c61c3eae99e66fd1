"""Assemble a running gateway: router, gRPC + REST frontends, metrics endpoint.

``Gateway`` is an async context manager; ports may be 0 (the bound ports are in
``gateway.addresses`` afterwards), which is how the tests run it::

    async with Gateway(config) as gw:
        print(gw.addresses["grpc"])

Stopping drains, as an orchestrator expects of SIGTERM: readiness goes false at once
(grpc.health.v1 NOT_SERVING, ``/v2/health/ready`` 503) while everything is still served
for ``listen.drain_delay_s``; then both frontends stop accepting and give the calls in
flight up to ``listen.drain_grace_s``, together, before cancelling what is left.

With ``listen.tls`` every port (gRPC, REST, metrics) speaks TLS only (``tls.py``); with
``auth`` calls need an API key (``auth.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from infergw.gateway import native_front
from infergw.gateway.auth import Authenticator
from infergw.gateway.core.config import GatewayConfig, ListenConfig
from infergw.gateway.core.metrics import GatewayMetrics
from infergw.gateway.core.router import Router
from infergw.gateway.core.service import InferenceService
from infergw.gateway.core.warmth import WarmthCollector
from infergw.gateway.frontends.grpc import GrpcFrontend
from infergw.gateway.frontends.tfserving import add_tfserving_service
from infergw.gateway.lifecycle import AsyncService
from infergw.gateway.native_traces import NATIVE_TRACES_INTERVAL_S, NativeTraces
from infergw.gateway.reloading import follow
from infergw.gateway.sites import (
    AppSite,
    SiteOptions,
    create_metrics_app,
    default_max_connections,
    display_host,
)
from infergw.gateway.tls import ServerTls
from infergw.gateway.triton_traces import (
    SPLITS_PATH,
    TRACED_KINDS,
    TRACES_PATH,
    TritonSplits,
    receiver_site,
    splits_handler,
    trace_attempts,
)
from infergw.wire import grpc_channel

log = logging.getLogger(__name__)
DEFAULT_SITE = SiteOptions()
CUT_UNWIND_S = 1.0  # a second SIGTERM: how long cancelled calls get to unwind


class Gateway(AsyncService):
    def __init__(self, config: GatewayConfig, router: Router | None = None) -> None:
        self.config = config
        self.metrics = GatewayMetrics()
        # Triton's spans -> per-request backend_queue/compute (triton_traces.py), if received.
        receiver = config.tracing.triton_receiver
        self.splits = None if receiver is None else TritonSplits(receiver, self.metrics)
        if router is None:
            router = Router.from_config(config, decisions=self.metrics)
            if self.splits is not None:
                trace_attempts(router, config, self.splits)
        self.router = router
        self.metrics.outliers = router.outliers
        if router.estimators:
            self.metrics.registry.register(WarmthCollector(router.estimators))
        if router.keep_warm.runners:
            self.metrics.registry.register(router.keep_warm.collector())
        if router.autoscalers.scalers:
            self.metrics.registry.register(router.autoscalers.collector())
        self.service = InferenceService(self.router, self.metrics, config.limits)
        if self.splits is not None:
            self.splits.model_label = self.service.model_label
        self.addresses: dict[str, str] = {}
        self._grpc: GrpcFrontend | None = None
        self._native: native_front.NativeFront | None = None  # the Rust plane on the gRPC port
        self._native_traces: tuple[NativeTraces, asyncio.Task[None]] | None = None
        # The native plane's: CredentialKeeper.run, and the TLS and key files followed.
        self._background: list[asyncio.Task[None]] = []
        self._sites: list[AppSite] = []
        self._tls: ServerTls | None = None
        self._serving = False  # started: stopping drains

    async def start(self) -> None:
        from infergw.gateway.frontends.rest import SITE_OPTIONS, create_rest_app

        listen: ListenConfig = self.config.listen
        # Bound first: Triton was told its fixed port, which a port-0 bind could otherwise take.
        receiver = receiver_site(self.splits) if self.splits is not None else None
        try:
            if receiver is not None:
                await receiver.start()
                self.addresses["triton_traces"] = receiver.url + TRACES_PATH
            # Files first: a bad certificate or keys file fails before anything binds.
            tls = listen.tls
            if tls is not None:
                self._tls = ServerTls(tls.cert_file, tls.key_file, tls.client_ca_file)
            auth = Authenticator(self.config.auth) if self.config.auth is not None else None
            self._grpc = GrpcFrontend(
                self.service,
                self.config.limits.max_message_bytes,
                interceptors=[auth.grpc_interceptor()] if auth is not None else (),
                options=grpc_connection_options(listen),
            )
            add_tfserving_service(self._grpc, self.service)  # same port as OIP
            credentials = self._tls.grpc_credentials() if self._tls is not None else None
            front = self._native = native_front.NativeFront.of(self.config)
            if front is None:
                port = self._grpc.add_port(f"{listen.host}:{listen.grpc_port}", credentials)
                await self._grpc.start()
            else:  # the plane owns the port; Python serves its lane on a Unix socket
                self._grpc.add_port(front.lane, None)
                await self._grpc.start()
                keeper = native_front.CredentialKeeper.of(front, self.router.unwrapped)
                ok = await keeper.first()  # before the plane serves its backends' calls
                digests = auth.keys.digests if auth is not None else None
                port = self._start_native(front, f"{listen.host}:{listen.grpc_port}", digests)
                self._background = [
                    asyncio.create_task(keeper.run(ok)),
                    asyncio.create_task(follow(front.followers)),
                ]
            self.addresses["grpc"] = f"{display_host(listen.host)}:{port}"
            guard = [auth.rest_middleware()] if auth is not None else []
            rest = create_rest_app(self.service, guard)
            self.addresses["http"] = await self._serve(rest, listen.http_port, SITE_OPTIONS)
            guard = [auth.rest_middleware(metrics=True)] if auth is not None else []
            metrics = create_metrics_app(self.metrics, guard)
            if self.splits is not None:
                metrics.router.add_get(SPLITS_PATH, splits_handler(self.splits))
            self.addresses["metrics"] = await self._serve(metrics, listen.metrics_port)
            if receiver is not None:
                self._sites.append(receiver)  # stopped after the frontends, with metrics
            await self.router.start()  # keep-warm pings; stopped by router.close()
        except BaseException:
            if receiver is not None and receiver not in self._sites:
                await receiver.stop()
            await self.stop()
            raise
        self._serving = True
        log.info("infergw listening: %s", self.addresses)

    def _start_native(
        self,
        front: native_front.NativeFront,
        listen: str,
        key_digests: Callable[[], tuple[bytes, ...]] | None,
    ) -> int:
        """The plane on ``listen`` (its port), its metrics on the gateway's, its traced
        requests drained into the SDK and the Triton splits, its serverless backends'
        answers into the warm-state estimator and keep-warm; TLS with ``self._tls`` and API
        keys checked against ``key_digests()`` if set."""
        triton = {b.name for b in self.config.backends if b.kind in TRACED_KINDS}

        def feed_warmth() -> int:
            return front.feed_warmth(self.router.keep_warm.observe)

        traces = NativeTraces(
            front, self.splits, traced_backends=triton.__contains__, also=(feed_warmth,)
        )
        port = front.start(
            listen, trace_all=traces.trace_all(), tls=self._tls, key_digests=key_digests
        )
        self.metrics.registry.register(front.collector())
        self.metrics.sources.append(front)
        if self.splits is not None:
            self.splits.feeds.append(traces.drain)
        self._native_traces = (traces, traces.start(NATIVE_TRACES_INTERVAL_S))
        return port

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
            tls=self._tls,
        )
        await site.start()
        self._sites.append(site)
        return site.address

    async def stop(self) -> None:
        """Drain (see the module's docstring), then close the backends. Idempotent."""
        listen = self.config.listen
        serving, self._serving = self._serving, False
        grpc, self._grpc = self._grpc, None
        native, self._native = self._native, None
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
        stops: list[Awaitable[None]] = [s.stop() for s in sites[:1]]
        if native is not None:  # its lane calls finish at Python, which drains beside it
            stops.append(asyncio.to_thread(native.stop, listen.drain_grace_s))
        if grpc is not None:
            # Shielded: cancelling this drain (a second SIGTERM) must not leave gRPC's
            # shutdown half done; a stop with no grace then ends the calls left.
            stops.append(asyncio.shield(grpc.stop(listen.drain_grace_s)))
        try:
            await asyncio.gather(*stops)
        except asyncio.CancelledError:
            if native is not None:
                native.stop(0)
            if grpc is not None:
                await grpc.stop(0)
            await _unwind(CUT_UNWIND_S)
            raise
        finally:
            background, self._background = self._background, []
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            traces, self._native_traces = self._native_traces, None
            if traces is not None:  # the last records, once the plane has stopped
                await traces[0].stop(traces[1])
            for site in sites[1:]:
                await site.stop()
            await self.router.close()


def grpc_connection_options(listen: ListenConfig) -> tuple[grpc_channel.Option, ...]:
    """The gRPC port's share of ``listen``: a connection with no call for
    ``idle_timeout_s`` is sent GOAWAY (clients reconnect on their next call), and
    connections beyond ``max_connections`` are refused, as on the REST port."""
    limit = listen.max_connections or default_max_connections()
    return (
        ("grpc.max_connection_idle_ms", round(listen.idle_timeout_s * 1000)),
        ("grpc.max_allowed_incoming_connections", limit),
    )


async def _unwind(timeout_s: float) -> None:
    """After a cut drain: the calls just cancelled finish their cancellation (so gRPC's
    own tasks end before the loop closes, instead of being killed mid-way and logged)."""
    others = asyncio.all_tasks() - {asyncio.current_task()}
    if others:
        await asyncio.wait(others, timeout=timeout_s)


def with_ports(config: GatewayConfig, grpc: int, http: int, metrics: int) -> GatewayConfig:
    listen = config.listen.replace(grpc_port=grpc, http_port=http, metrics_port=metrics)
    return config.replace(listen=listen)
