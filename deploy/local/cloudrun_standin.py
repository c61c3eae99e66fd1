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
  with UNAVAILABLE (Cloud Run's 504).

Stand-in-only admin, on the same port (no Cloud Run equivalent; for tests and
benchmarks): unary ``/infergw.local.CloudRunAdmin/ScaleToZero`` and ``.../Stats``
take any bytes and answer JSON text; ``scale_to_zero(endpoint)`` calls the first.
In-process, ``CloudRunStandIn.scale_to_zero()`` does the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from infergw.deploy.local.instances import Instance, InstancePool, InstanceStartError, Throttled
from infergw.gateway.lifecycle import AsyncService

SERVICE = "/inference.GRPCInferenceService/"
ADMIN = "/infergw.local.CloudRunAdmin/"
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
MAX_MESSAGE = 1 << 30
_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
)


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
        env: Mapping[str, str] | None = None,
    ) -> None:
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
        self.host = host
        self.port = port
        self._server: grpc.aio.Server | None = None
        self._channels: dict[int, grpc.aio.Channel] = {}

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        server = grpc.aio.server(options=(*_OPTIONS, ("grpc.so_reuseport", 0)))
        server.add_generic_rpc_handlers((_Handler(self),))
        self.port = server.add_insecure_port(f"{self.host}:{self.port}")
        if self.port == 0:
            raise OSError(f"cannot bind the Cloud Run stand-in to {self.host}")
        self._server = server
        try:
            await self.pool.start()
            await server.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
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

    # -- forwarding ------------------------------------------------------------------
    async def forward(
        self, method: str, payload: bytes, context: grpc.aio.ServicerContext
    ) -> bytes:
        metadata = tuple(
            (k, v)
            for k, v in context.invocation_metadata() or ()
            if k not in _HOP_BY_HOP and not k.startswith(":")
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
            channel = self._channels[instance.id] = grpc.aio.insecure_channel(
                f"127.0.0.1:{instance.port}", options=_OPTIONS
            )
        return channel

    async def _prune_channels(self, keep: Sequence[int] | None = None) -> None:
        """Close channels of instances that no longer exist."""
        live = {i.id for i in self.pool.instances if i.alive} if keep is None else set(keep)
        gone = [iid for iid in self._channels if iid not in live]
        await asyncio.gather(*(self._channels.pop(iid).close() for iid in gone))

    async def admin(self, method: str, context: grpc.aio.ServicerContext) -> bytes:
        if method == ADMIN + "ScaleToZero":
            return json.dumps({"stopped": await self.scale_to_zero()}).encode()
        return json.dumps(self.stats()).encode()


async def _exited(instance: Instance, wait_s: float = 0.5) -> bool:
    """Whether the instance's process has exited (waiting briefly: a kill is racing us)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(wait_s):
            await instance.process.wait()
    return not instance.alive


class _Handler(grpc.GenericRpcHandler):
    """Routes OIP unary methods to ``forward`` and the admin methods to ``admin``."""

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
        standin = self.standin
        if method in UNARY_METHODS:

            async def forward(payload: bytes, context: grpc.aio.ServicerContext) -> bytes:
                return await standin.forward(method, payload, context)

            fn: Any = forward
        elif method in (ADMIN + "ScaleToZero", ADMIN + "Stats"):

            async def admin(_: bytes, context: grpc.aio.ServicerContext) -> bytes:
                return await standin.admin(method, context)

            fn = admin
        else:
            return None  # UNIMPLEMENTED, as for any unknown method
        return grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=_identity, response_serializer=_identity
        )


async def scale_to_zero(endpoint: str, timeout_s: float = 30.0) -> int:
    """Ask a running stand-in (e.g. one started by ``infergw local up``) to scale to zero."""
    async with grpc.aio.insecure_channel(endpoint) as channel:
        rpc = channel.unary_unary(
            ADMIN + "ScaleToZero", request_serializer=_identity, response_deserializer=_identity
        )
        reply = json.loads(await rpc(b"", timeout=timeout_s))
    return int(reply["stopped"])
