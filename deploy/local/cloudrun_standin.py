"""A local Cloud Run: an h2c front forwarding OIP gRPC to our container, in real processes.

Each instance is ``python -m infergw.deploy.cloudrun.server`` — the container's own
code — run by an ``InstancePool``: a cold start is a real process start plus a real
model load. The front is a grpc.aio server with one generic handler that forwards
every unary ``/inference.GRPCInferenceService/*`` call as raw bytes (never
re-encoded) with its metadata, deadline and trailing metadata, as Cloud Run's
front end does. Like Cloud Run:

- an instance takes up to ``concurrency`` requests at once (default 80), between
  ``min_instances`` and ``max_instances`` exist, idle ones stop after
  ``idle_timeout_s`` (scale to zero);
- at max instances a request waits up to ``queue_timeout_s`` (Cloud Run: 60 s),
  then fails with HTTP 429, which a gRPC client sees as UNAVAILABLE
  ("Received http2 header with status: 429");
- an instance that fails mid-request (crash, broken connection) gives UNAVAILABLE
  (Cloud Run's 503); the next request gets a healthy or new instance;
- a request running longer than ``request_timeout_s`` (Cloud Run: 300 s) is cut
  with UNAVAILABLE (Cloud Run's 504);
- with ``tls`` (certificate and key files) the front speaks TLS, as ``https://`` services
  do; with ``authenticate`` it requires authentication, as a service without public
  access: a call whose ``authorization: Bearer`` token ``authenticate`` refuses gets
  UNAUTHENTICATED (Cloud Run's 401; ``google_tokens.GoogleTokenStandIn.verifier`` checks
  ID tokens as IAM does), and the header is not passed to the container.

Stand-in-only admin (no Cloud Run equivalent; for tests and benchmarks), over HTTP
on a port of its own (``admin_endpoint``), shaped like the Lambda and SageMaker
stand-ins' admin routes: ``POST /_infergw/services/{service}/scale-to-zero`` stops
the idle instances now, ``GET /_infergw/services/{service}`` answers pool statistics.
``scale_to_zero(url)`` posts to such a URL; in-process, ``CloudRunStandIn.scale_to_zero()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from aiohttp import web

from infergw.deploy.local.instances import Instance, InstancePool, InstanceStartError, Throttled
from infergw.gateway.lifecycle import AsyncService
from infergw.gateway.sites import AppSite
from infergw.wire import grpc_channel

SERVICE = "/inference.GRPCInferenceService/"
ADMIN_PREFIX = "/_infergw/services"
UNARY_METHODS = frozenset(
    SERVICE + m
    for m in (
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "ModelStatistics",
        "RepositoryIndex",
    )
)
# Connection-level metadata the transport sets itself; everything else is passed on.
_HOP_BY_HOP = frozenset({"user-agent", "te", "content-type", "grpc-accept-encoding"})
_INSTANCE_FAILURE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.CANCELLED,
    }
)
CONNECTION_ERROR = (
    "The request failed because either the HTTP response was malformed "
    "or connection to the instance had an error."
)
UNAUTHENTICATED = (
    "The request was not authenticated. Either allow unauthenticated invocations "
    "or set the proper Authorization header."
)
_OPTIONS = grpc_channel.server_options()  # the message limits every channel has


def _identity(payload: bytes) -> bytes:
    return payload


class CloudRunStandIn(AsyncService):
    """``async with CloudRunStandIn() as run: client.connect(run.endpoint)``."""

    def __init__(
        self,
        models: Sequence[str] | None = None,
        *,
        service: str = "infergw",
        concurrency: int = 80,
        min_instances: int = 0,
        max_instances: int = 100,
        idle_timeout_s: float = 900.0,
        queue_timeout_s: float = 60.0,
        request_timeout_s: float = 300.0,
        start_timeout_s: float = 120.0,
        host: str = "127.0.0.1",
        port: int = 0,
        admin_port: int = 0,
        env: Mapping[str, str] | None = None,
        tls: tuple[str, str] | None = None,
        authenticate: Callable[[str], bool] | None = None,
    ) -> None:
        # (certificate, key) PEM, read now: a missing file fails here, not at start
        self._tls = tuple(Path(f).read_bytes() for f in tls) if tls is not None else None
        self.authenticate = authenticate
        worker_env = {
            "PORT": "0",
            "INFERGW_HOST": "127.0.0.1",
            "INFERGW_MODELS": ",".join(models or ()),
            "K_SERVICE": service,  # what Cloud Run sets in every container
            **(env or {}),
        }
        self.pool = InstancePool(
            f"cloudrun:{service}",
            [sys.executable, "-m", "infergw.deploy.cloudrun.server"],
            worker_env,
            concurrency=concurrency,
            max_instances=max_instances,
            min_instances=min_instances,
            idle_timeout_s=idle_timeout_s,
            queue_timeout_s=queue_timeout_s,
            start_timeout_s=start_timeout_s,
        )
        self.request_timeout_s = request_timeout_s
        self.service = service
        self.host = host
        self.port = port
        self.admin_port = admin_port
        self._admin: AppSite | None = None
        self._server: grpc.aio.Server | None = None
        self._channels: dict[int, grpc.aio.Channel] = {}

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        server = grpc.aio.server(options=(*_OPTIONS, ("grpc.so_reuseport", 0)))
        server.add_generic_rpc_handlers((_Handler(self),))
        address = f"{self.host}:{self.port}"
        if self._tls is None:
            self.port = server.add_insecure_port(address)
        else:
            cert, key = self._tls
            self.port = server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
        if self.port == 0:
            raise OSError(f"cannot bind the Cloud Run stand-in to {self.host}")
        self._server = server
        try:
            await self.pool.start()
            await server.start()
            self._admin = AppSite(self._admin_app(), self.host, self.admin_port)
            await self._admin.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self._admin is not None:
            await self._admin.stop()
            self._admin = None
        if self._server is not None:
            await self._server.stop(1.0)
            self._server = None
        await self._prune_channels(keep=())
        await self.pool.close()

    async def scale_to_zero(self) -> int:
        """Stop every idle instance now, as Cloud Run does after idling; returns how many."""
        stopped = await self.pool.scale_to_zero()
        await self._prune_channels()
        return stopped

    def stats(self) -> dict[str, int]:
        return self.pool.stats()

    # -- admin (stand-in only) -----------------------------------------------------------
    @property
    def admin_endpoint(self) -> str:
        """``http://host:port`` of the admin routes (while started)."""
        if self._admin is None:
            raise RuntimeError("the Cloud Run stand-in is not started")
        return self._admin.url

    def scale_to_zero_url(self) -> str:
        return f"{self.admin_endpoint}{ADMIN_PREFIX}/{self.service}/scale-to-zero"

    def _admin_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(ADMIN_PREFIX + "/{name}/scale-to-zero", self._scale_to_zero_route)
        app.router.add_get(ADMIN_PREFIX + "/{name}", self._stats_route)
        return app

    def _known(self, request: web.Request) -> web.Response | None:
        name = request.match_info["name"]
        if name == self.service:
            return None
        return web.json_response({"error": f"service {name!r} not found"}, status=404)

    async def _scale_to_zero_route(self, request: web.Request) -> web.Response:
        unknown = self._known(request)
        if unknown is not None:
            return unknown
        return web.json_response({"service": self.service, "stopped": await self.scale_to_zero()})

    async def _stats_route(self, request: web.Request) -> web.Response:
        return self._known(request) or web.json_response({"service": self.service, **self.stats()})

    # -- forwarding ------------------------------------------------------------------
    async def forward(
        self, method: str, payload: bytes, context: grpc.aio.ServicerContext
    ) -> bytes:
        received = tuple(context.invocation_metadata() or ())
        if self.authenticate is not None:
            bearer = next((str(v) for k, v in received if k == "authorization"), "")
            scheme, _, token = bearer.partition(" ")
            if scheme.lower() != "bearer" or not self.authenticate(token):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED)
        metadata = tuple(
            (k, v)
            for k, v in received
            if k not in _HOP_BY_HOP and k != "authorization" and not k.startswith(":")
        )
        remaining = context.time_remaining()  # None: the client set no deadline
        timeout = (
            self.request_timeout_s if remaining is None else min(remaining, self.request_timeout_s)
        )
        cut_by_request_timeout = timeout == self.request_timeout_s
        try:
            async with self.pool.lease() as lease:
                channel = await self._channel(lease.instance)
                rpc = channel.unary_unary(
                    method, request_serializer=_identity, response_deserializer=_identity
                )
                call = rpc(payload, timeout=timeout, metadata=metadata)
                try:
                    reply: bytes = await call
                except grpc.aio.AioRpcError as exc:
                    await self._fail(exc, lease.instance, cut_by_request_timeout, context)
                context.set_trailing_metadata(tuple(await call.trailing_metadata() or ()))
                return reply
        except Throttled as exc:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"Received http2 header with status: 429 (no available instance: {exc}; "
                f"waited {self.pool.queue_timeout_s:g} s)",
            )
        except InstanceStartError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"instance failed to start: {exc}")
        raise AssertionError("unreachable")  # abort() always raises

    async def _fail(
        self,
        exc: grpc.aio.AioRpcError,
        instance: Instance,
        cut_by_request_timeout: bool,
        context: grpc.aio.ServicerContext,
    ) -> None:
        """Answer the client for a failed instance call: pass it on, or as Cloud Run would."""
        code = exc.code()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and cut_by_request_timeout:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"upstream request timeout (request timeout {self.request_timeout_s:g} s)",
            )
        # An answer of the container's own carries trailers; a broken connection has none.
        broken = code in _INSTANCE_FAILURE_CODES and not exc.trailing_metadata()
        if broken and await _exited(instance):
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"{CONNECTION_ERROR} (instance exited with {instance.process.returncode})",
            )
        await context.abort(code, exc.details() or "", tuple(exc.trailing_metadata() or ()))

    async def _channel(self, instance: Instance) -> grpc.aio.Channel:
        channel = self._channels.get(instance.id)
        if channel is None:
            await self._prune_channels()  # a new instance: drop those of reaped ones
            channel = self._channels[instance.id] = grpc_channel.aio_channel(
                f"127.0.0.1:{instance.port}"
            )
        return channel

    async def _prune_channels(self, keep: Sequence[int] | None = None) -> None:
        """Close channels of instances that no longer exist."""
        live = {i.id for i in self.pool.instances if i.alive} if keep is None else set(keep)
        gone = [iid for iid in self._channels if iid not in live]
        await asyncio.gather(*(self._channels.pop(iid).close() for iid in gone))


async def _exited(instance: Instance, wait_s: float = 0.5) -> bool:
    """Whether the instance's process has exited (waiting briefly: a kill is racing us)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(wait_s):
            await instance.process.wait()
    return not instance.alive


class _Handler(grpc.GenericRpcHandler):
    """Routes OIP unary methods to ``forward``."""

    def __init__(self, standin: CloudRunStandIn) -> None:
        self.standin = standin
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = details.method
        handler = self._handlers.get(method)
        if handler is None:
            handler = self._make(method)
            if handler is not None:
                self._handlers[method] = handler
        return handler

    def _make(self, method: str) -> grpc.RpcMethodHandler | None:
        if method not in UNARY_METHODS:
            return None  # UNIMPLEMENTED, as for any unknown method
        standin = self.standin

        async def forward(payload: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await standin.forward(method, payload, context)

        return grpc.unary_unary_rpc_method_handler(
            forward, request_deserializer=_identity, response_serializer=_identity
        )


async def scale_to_zero(url: str, timeout_s: float = 30.0) -> int:
    """POST a stand-in's ``scale_to_zero_url()`` (e.g. one ``infergw local up`` started);
    returns how many instances stopped."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as reply,
    ):
        reply.raise_for_status()
        body: dict[str, Any] = await reply.json()
    return int(body["stopped"])
