"""The gRPC half of the sidecar: one generic handler forwarding every method as bytes.

Requests and replies are never decoded (no (de)serializers on either side), so what
the upstream receives is byte-for-byte what the client sent and vice versa. Per call
the sidecar passes on: invocation metadata minus transport headers, the deadline
(``time_remaining``), cancellation (a client cancel cancels the upstream call), the
upstream's initial metadata, status code, details and trailing metadata. It adds a
``server-timing`` trailer of its own after the upstream's (``total``; ``backend`` =
the upstream call from start to status; ``decode`` = reading the model name, for
inference methods), a SERVER span
continuing the client's ``traceparent`` with a CLIENT span injected upstream, and
metrics.

Errors of its own: the upstream unreachable -> UNAVAILABLE naming the upstream; a
message over ``max_message_bytes`` -> RESOURCE_EXHAUSTED naming the limit. Every other
status is the upstream's, unchanged (a dropped upstream connection gives what gRPC
gives a direct client: UNAVAILABLE).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractContextManager, nullcontext, suppress
from typing import Any, NoReturn

import grpc
from grpc._cython import cygrpc  # type: ignore[attr-defined]  # no stubs; see _send

from infergw.gateway.core import tracing
from infergw.gateway.sidecar import methods
from infergw.gateway.sidecar.metrics import SidecarMetrics
from infergw.gateway.sidecar.spans import TRACE_KEYS, proxy_spans
from infergw.vocab.errors import PayloadTooLarge
from infergw.vocab.timing import Timings
from infergw.wire.protowire import WireError, find_string
from infergw.wire.server_timing import append_server_timing, format_server_timing
from infergw.wire.status import grpc_status

log = logging.getLogger(__name__)

# Metadata the transport sets itself on each hop; everything else travels on.
HOP_BY_HOP = frozenset(
    {
        "user-agent",
        "te",
        "content-type",
        "grpc-accept-encoding",
        "grpc-encoding",
        "grpc-timeout",
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    }
)
MAX_CACHED_METHODS = 1024  # unknown method names come from clients: bound the cache

Metadata = tuple[tuple[str, str | bytes], ...]
_NOOP: AbstractContextManager[object] = nullcontext()


def forward_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> Metadata:
    """The client's metadata minus pseudo and hop-by-hop headers."""
    return tuple((k, v) for k, v in metadata or () if k not in HOP_BY_HOP and not k.startswith(":"))


def is_connect_failure(exc: grpc.aio.AioRpcError) -> bool:
    """The upstream could not be reached at all (vs. a status the upstream sent)."""
    details = exc.details() or ""
    return exc.code() == grpc.StatusCode.UNAVAILABLE and "failed to connect" in details


class _Rpc:
    """One forwarded call's bookkeeping: timings, model, spans, metrics, trailer."""

    __slots__ = ("context", "inference", "metadata", "method", "model", "proxy", "timings")

    def __init__(self, proxy: GrpcProxy, method: str, context: grpc.aio.ServicerContext) -> None:
        self.proxy = proxy
        self.method = method
        self.inference = methods.INFERENCE.get(method)
        self.context = context
        self.timings = Timings()
        self.model: str | None = None
        self.metadata = forward_metadata(context.invocation_metadata())

    def timeout(self) -> float | None:
        return self.context.time_remaining()

    def check_size(self, message: bytes) -> None:
        limit = self.proxy.max_message_bytes
        if len(message) > limit:
            raise PayloadTooLarge("request message", len(message), limit)

    def peek_model(self, message: bytes) -> None:
        """Read the model name for metrics labels (a few us, whatever the size)."""
        if self.inference is None or self.model is not None:
            return
        t0 = time.perf_counter()
        try:
            self.model = find_string(message, self.inference.model_path) or ""
        except WireError:
            self.model = ""  # malformed: the upstream will say so; we only lose the label
        self.timings.add_since("decode", t0)

    def spans(self) -> AbstractContextManager[object]:
        """SERVER + CLIENT span; with tracing on, the upstream gets the CLIENT's context."""
        if not tracing.enabled():
            return _NOOP
        carrier = {k: v for k, v in self.metadata if k in TRACE_KEYS and isinstance(v, str)}
        name = methods.short_name(self.method)
        service, _, rpc_method = name.partition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc_method}
        injected: dict[str, str] = {}
        spans = proxy_spans(name, carrier, attributes, self.model, injected)
        if injected:
            kept = tuple((k, v) for k, v in self.metadata if k not in TRACE_KEYS)
            self.metadata = kept + tuple(injected.items())
        return spans

    def finish(self, status: str) -> str:
        """Record ``total`` and metrics; returns the ``server-timing`` value."""
        timings = self.timings
        timings.add("total", timings.elapsed_ms())
        entries = timings.entries
        metrics = self.proxy.metrics
        metrics.observe_call(self.method, status)
        if self.inference is not None:
            protocol = "grpc-stream" if methods.cardinality(self.method).server_streams else "grpc"
            metrics.observe_inference(self.model, protocol, status, entries)
        return format_server_timing(entries)

    def succeed(self, trailing: Iterable[tuple[str, str | bytes]] | None) -> None:
        self.context.set_trailing_metadata(append_server_timing(trailing, self.finish("OK")))

    async def fail(self, exc: grpc.aio.AioRpcError) -> NoReturn:
        """Answer with the upstream's status, details and trailers (plus ours)."""
        code, details = exc.code(), exc.details() or ""
        if is_connect_failure(exc):
            details = f"infergw sidecar: upstream {self.proxy.upstream} is unreachable: {details}"
        trailing = append_server_timing(exc.trailing_metadata(), self.finish(code.name))
        await self.context.abort(code, details, trailing)
        raise AssertionError("abort() returned")  # pragma: no cover

    async def reject(self, exc: PayloadTooLarge) -> NoReturn:
        trailing = append_server_timing((), self.finish(exc.grpc_code))
        await self.context.abort(grpc_status(exc), exc.message, trailing)
        raise AssertionError("abort() returned")  # pragma: no cover

    async def pass_initial_metadata(self, call: grpc.aio.Call) -> None:
        initial = await call.initial_metadata()
        if initial:
            await self.context.send_initial_metadata(tuple(initial))


class _RequestPump:
    """Feeds a client stream upstream, checking sizes and reading the model name.

    It writes each message itself instead of handing grpc.aio a request iterator: when
    the upstream ends a call while a write is in flight (Triton answering UNIMPLEMENTED
    to reflection before reading the request), grpc.aio's own write replaces the
    upstream's status with INTERNAL "Internal error from Core" (grpc/grpc#36066; about
    half of such calls). Here a failed write only stops the feed, as in grpc's sync API,
    and the upstream's status reaches the client unchanged.
    """

    def __init__(self, rpc: _Rpc, requests: AsyncIterator[bytes]) -> None:
        self.rpc = rpc
        self.requests = requests
        self.too_large: PayloadTooLarge | None = None

    async def feed(self, call: Any) -> None:
        """Relay the client's messages, then half-close; stops when the call ends."""
        try:
            await call.wait_for_connection()
            async for message in self.requests:
                try:
                    self.rpc.check_size(message)
                except PayloadTooLarge as exc:
                    self.too_large = exc
                    call.cancel()
                    return
                self.rpc.peek_model(message)
                if call.done() or not await _send(call, message):
                    return
            await call.done_writing()
        except (grpc.aio.AioRpcError, cygrpc.InternalError):
            return  # the call has ended: its status is the reader's to report
        except Exception:  # the client's stream broke: end the upstream call with it
            log.debug("client request stream failed", exc_info=True)
            call.cancel()

    def start(self, call: Any) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(self.feed(call))


async def _send(call: Any, message: bytes) -> bool:
    """Write one message upstream; False once the upstream has ended the call.

    The private ``_cython_call`` is the layer grpc.aio's ``write`` calls, minus the step
    that overwrites the upstream's status on failure (see ``_RequestPump``).
    """
    cython_call = getattr(call, "_cython_call", None)
    try:
        if cython_call is None:  # a grpcio without that layer: its public write
            await call.write(message)
        else:
            await cython_call.send_serialized_message(message)
    except cygrpc.InternalError:
        return False
    return True


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancel the feed if it still runs and wait for it (it never raises)."""
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task


class GrpcProxy(grpc.GenericRpcHandler):
    """Forwards any method to ``channel``; see the module docstring for what passes."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        upstream: str,
        metrics: SidecarMetrics,
        max_message_bytes: int,
    ) -> None:
        self.channel = channel
        self.upstream = upstream
        self.metrics = metrics
        self.max_message_bytes = max_message_bytes
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None:
            handler = self._make(method)
            if len(self._handlers) < MAX_CACHED_METHODS:
                self._handlers[method] = handler
        return handler

    def _make(self, method: str) -> grpc.RpcMethodHandler:
        kind = methods.cardinality(method)
        channel = self.channel
        if kind is methods.Cardinality.UNARY_UNARY:
            stub_uu: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)

            async def unary_unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
                return await self._unary_unary(stub_uu, method, request, context)

            return grpc.unary_unary_rpc_method_handler(unary_unary)
        if kind is methods.Cardinality.UNARY_STREAM:
            stub_us: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(method)

            async def unary_stream(request: bytes, context: grpc.aio.ServicerContext) -> None:
                await self._streaming(stub_us, method, request, context)

            return grpc.unary_stream_rpc_method_handler(unary_stream)
        if kind is methods.Cardinality.STREAM_UNARY:
            stub_su: grpc.aio.StreamUnaryMultiCallable[bytes, bytes] = channel.stream_unary(method)

            async def stream_unary(requests: Any, context: grpc.aio.ServicerContext) -> bytes:
                return await self._stream_unary(stub_su, method, requests, context)

            return grpc.stream_unary_rpc_method_handler(stream_unary)
        stub_ss: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(method)

        async def stream_stream(requests: Any, context: grpc.aio.ServicerContext) -> None:
            await self._streaming(stub_ss, method, requests, context)

        return grpc.stream_stream_rpc_method_handler(stream_stream)

    # -- the four cardinalities ---------------------------------------------------------
    async def _unary_unary(
        self,
        stub: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes],
        method: str,
        request: bytes,
        context: grpc.aio.ServicerContext,
    ) -> bytes:
        rpc = _Rpc(self, method, context)
        try:
            rpc.check_size(request)
        except PayloadTooLarge as exc:
            await rpc.reject(exc)
        rpc.peek_model(request)
        with rpc.spans():
            t0 = time.perf_counter()
            call = stub(request, timeout=rpc.timeout(), metadata=rpc.metadata)
            try:
                reply: bytes = await call
            except grpc.aio.AioRpcError as exc:
                rpc.timings.add_since("backend", t0)
                await rpc.fail(exc)
            except asyncio.CancelledError:
                call.cancel()
                rpc.finish("CANCELLED")
                raise
            rpc.timings.add_since("backend", t0)
            await rpc.pass_initial_metadata(call)
            rpc.succeed(await call.trailing_metadata())
        return reply

    async def _stream_unary(
        self,
        stub: grpc.aio.StreamUnaryMultiCallable[bytes, bytes],
        method: str,
        requests: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext,
    ) -> bytes:
        rpc = _Rpc(self, method, context)
        pump = _RequestPump(rpc, requests)
        with rpc.spans():
            t0 = time.perf_counter()
            call = stub(timeout=rpc.timeout(), metadata=rpc.metadata)
            feed = pump.start(call)
            try:
                reply: bytes = await call
            except grpc.aio.AioRpcError as exc:
                rpc.timings.add_since("backend", t0)
                await rpc.fail(exc)
            except asyncio.CancelledError:
                call.cancel()
                if pump.too_large is not None:
                    await rpc.reject(pump.too_large)
                rpc.finish("CANCELLED")
                raise
            finally:
                await _stop(feed)
            rpc.timings.add_since("backend", t0)
            await rpc.pass_initial_metadata(call)
            rpc.succeed(await call.trailing_metadata())
        return reply

    async def _streaming(
        self,
        stub: Callable[..., Any],
        method: str,
        request: bytes | AsyncIterator[bytes],
        context: grpc.aio.ServicerContext,
    ) -> None:
        """Unary-stream and stream-stream: relay replies as they come (``context.write``)."""
        rpc = _Rpc(self, method, context)
        pump: _RequestPump | None = None
        if isinstance(request, bytes):
            try:
                rpc.check_size(request)
            except PayloadTooLarge as exc:
                await rpc.reject(exc)
            rpc.peek_model(request)
        else:
            pump = _RequestPump(rpc, request)
        with rpc.spans():
            t0 = time.perf_counter()
            if pump is None:
                call = stub(request, timeout=rpc.timeout(), metadata=rpc.metadata)
                feed = None
            else:
                call = stub(timeout=rpc.timeout(), metadata=rpc.metadata)
                feed = pump.start(call)
            first = True
            try:
                async for reply in call:
                    if first:  # initial metadata has arrived with (or before) the first reply
                        first = False
                        await rpc.pass_initial_metadata(call)
                    await context.write(reply)
            except grpc.aio.AioRpcError as exc:
                rpc.timings.add_since("backend", t0)
                await rpc.fail(exc)
            except asyncio.CancelledError:
                call.cancel()
                if pump is not None and pump.too_large is not None:
                    await rpc.reject(pump.too_large)
                rpc.finish("CANCELLED")
                raise
            finally:
                if feed is not None:
                    await _stop(feed)
            rpc.timings.add_since("backend", t0)
            if pump is not None and pump.too_large is not None:
                await rpc.reject(pump.too_large)
            rpc.succeed(await call.trailing_metadata())
