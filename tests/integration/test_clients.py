"""SDK round trips (the units are in tests/unit/test_sdk_units.py).

The round trips run the four clients against tiny real servers on 127.0.0.1 (a
grpc.aio server built from the generated messages, and an aiohttp server using the
OIP JSON codec) in a background thread, so sync clients can block freely.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import grpc.aio
import numpy as np
import pytest
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider

from infergw.clients import (
    AsyncGrpcClient,
    AsyncHttpClient,
    GrpcClient,
    HttpClient,
)
from infergw.proto import grpc_service_pb2 as pb
from infergw.vocab import errors
from infergw.vocab.errors import (
    DeadlineExceeded,
    InferGWError,
    NotFound,
    PayloadTooLarge,
    QueueFull,
    Unavailable,
)
from infergw.vocab.types import (
    Duration,
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelStatistics,
    Tensor,
    TensorSpec,
)
from infergw.wire import oip_json, oip_proto

# --- tiny real servers ----------------------------------------------------------------

TIMING_TRAILER = (
    'total;dur=5, decode;dur=0.5, queue;dur=1, backend;dur=3;desc="backend=b1;attempt=1", '
    "compute;dur=2"
)
IDENTITY_META = ModelMetadata(
    name="identity",
    versions=("1",),
    platform="python",
    inputs=(TensorSpec("input", "FP32", (-1, -1)),),
    outputs=(TensorSpec("output", "FP32", (-1, -1)),),
)
IDENTITY_STATS = ModelStatistics(
    name="identity", version="1", inference_count=7, execution_count=5, queue=Duration(7, 1000)
)


def echo(request: InferRequest, metadata: dict[str, str]) -> InferResponse:
    """``identity``: every input comes back (``input`` as ``output``), with the request's
    parameters and a few received headers echoed as response parameters."""
    if request.model == "busy":
        raise QueueFull("admission queue full", retry_after_s=2)
    if request.model == "huge":
        raise PayloadTooLarge("request", request.payload_bytes, 8)
    if request.model != "identity":
        raise errors.ModelNotFound(request.model)
    outputs = [
        Tensor("output" if t.name == "input" else t.name, t.datatype, t.shape, bytes(t.data))
        for t in request.inputs
    ]
    if request.outputs:
        wanted = {o.name for o in request.outputs}
        outputs = [t for t in outputs if t.name in wanted]
    params = {k: v for k, v in request.parameters.items() if k not in oip_json.WIRE_PARAMETERS}
    for key in ("x-infergw-backend", "traceparent"):
        if key in metadata:
            params[key] = metadata[key]
    return InferResponse("identity", tuple(outputs), "1", request.id, params)


async def slow_down(model: str) -> None:
    if model == "slow":
        await asyncio.sleep(2.0)


class GrpcEcho:
    """The OIP gRPC service over raw method handlers and the generated messages."""

    async def infer(self, msg: pb.ModelInferRequest, ctx: grpc.aio.ServicerContext) -> Any:
        await slow_down(msg.model_name)
        metadata = {k: v for k, v in ctx.invocation_metadata() or () if isinstance(v, str)}
        try:
            request = oip_proto.request_from_proto(msg)
            if request.model == "slow":
                request = dataclasses.replace(request, model="identity")
            response = echo(request, metadata)
        except InferGWError as exc:
            trailers: tuple[tuple[str, str], ...] = (("server-timing", "total;dur=0.1"),)
            if isinstance(exc, QueueFull):
                trailers += (("retry-after", str(int(exc.retry_after_s))),)
            await ctx.abort(grpc.StatusCode[exc.grpc_code], exc.message, trailers)
        ctx.set_trailing_metadata((("server-timing", TIMING_TRAILER),))
        return oip_proto.response_to_proto(response)

    async def live(self, msg: Any, ctx: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ready(self, msg: Any, ctx: Any) -> Any:
        return pb.ServerReadyResponse(ready=True)

    async def model_ready(self, msg: Any, ctx: grpc.aio.ServicerContext) -> Any:
        if msg.name != "identity":
            await ctx.abort(grpc.StatusCode.NOT_FOUND, f"unknown model: {msg.name!r}")
        return pb.ModelReadyResponse(ready=True)

    async def server_metadata(self, msg: Any, ctx: Any) -> Any:
        return pb.ServerMetadataResponse(name="echo", version="0.1", extensions=["statistics"])

    async def model_metadata(self, msg: Any, ctx: grpc.aio.ServicerContext) -> Any:
        if msg.name != "identity":
            await ctx.abort(grpc.StatusCode.NOT_FOUND, f"unknown model: {msg.name!r}")
        return oip_proto.metadata_to_proto(IDENTITY_META)

    async def statistics(self, msg: Any, ctx: Any) -> Any:
        return oip_proto.statistics_to_proto([IDENTITY_STATS])

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(fn: Any, req: Any, resp: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=req.FromString, response_serializer=resp.SerializeToString
            )

        return grpc.method_handlers_generic_handler(
            "inference.GRPCInferenceService",
            {
                "ModelInfer": unary(self.infer, pb.ModelInferRequest, pb.ModelInferResponse),
                "ServerLive": unary(self.live, pb.ServerLiveRequest, pb.ServerLiveResponse),
                "ServerReady": unary(self.ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
                "ModelReady": unary(self.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
                "ServerMetadata": unary(
                    self.server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse
                ),
                "ModelMetadata": unary(
                    self.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse
                ),
                "ModelStatistics": unary(
                    self.statistics, pb.ModelStatisticsRequest, pb.ModelStatisticsResponse
                ),
            },
        )


def rest_app(peers: list[Any]) -> web.Application:
    """The OIP REST endpoints over the same ``echo``; ``peers`` records connections."""

    def error(exc: InferGWError) -> web.Response:
        response = web.json_response({"error": exc.message}, status=exc.http_status)
        if isinstance(exc, QueueFull):
            response.headers["Retry-After"] = str(int(exc.retry_after_s))
        return response

    async def infer(req: web.Request) -> web.Response:
        model = req.match_info["model"]
        await slow_down(model)
        raw_length = req.headers.get(oip_json.HEADER_LENGTH)
        body = await req.read()
        try:
            request = oip_json.decode_infer_request(
                "identity" if model == "slow" else model,
                "",
                body,
                None if raw_length is None else int(raw_length),
            )
            response = echo(request, {k.lower(): v for k, v in req.headers.items()})
            out, length = oip_json.encode_infer_response(response, request)
        except InferGWError as exc:
            return error(exc)
        headers = {"Server-Timing": TIMING_TRAILER}
        if length is not None:
            headers[oip_json.HEADER_LENGTH] = str(length)
        return web.Response(body=out, headers=headers, content_type="application/json")

    async def ok(req: web.Request) -> web.Response:
        peers.append(req.transport.get_extra_info("peername") if req.transport else None)
        return web.Response()

    async def model_ready(req: web.Request) -> web.Response:
        if req.match_info["model"] != "identity":
            return error(errors.ModelNotFound(req.match_info["model"]))
        return web.Response()

    async def server_metadata(req: web.Request) -> web.Response:
        return web.json_response({"name": "echo", "version": "0.1", "extensions": ["statistics"]})

    async def model_metadata(req: web.Request) -> web.Response:
        if req.match_info["model"] != "identity":
            return error(errors.ModelNotFound(req.match_info["model"]))
        return web.json_response(
            {
                "name": "identity",
                "versions": ["1"],
                "platform": "python",
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, -1]}],
                "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, -1]}],
            }
        )

    async def statistics(req: web.Request) -> web.Response:
        dur = {"count": 0, "ns": 0}
        stats = {
            "name": "identity",
            "version": "1",
            "last_inference": 0,
            "inference_count": 7,
            "execution_count": 5,
            "inference_stats": {"success": dur, "fail": dur, "queue": {"count": 7, "ns": 1000}},
        }
        return web.json_response({"model_stats": [stats]})

    app = web.Application(client_max_size=64 << 20)
    app.router.add_get("/v2/health/live", ok)
    app.router.add_get("/v2/health/ready", ok)
    app.router.add_get("/v2", server_metadata)
    app.router.add_get("/v2/models/{model}", model_metadata)
    app.router.add_get("/v2/models/{model}/ready", model_ready)
    app.router.add_get("/v2/models/{model}/stats", statistics)
    app.router.add_post("/v2/models/{model}/infer", infer)
    return app


class Servers:
    """Runs the gRPC and REST servers on an event loop in a background thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.peers: list[Any] = []
        self.idle_peers: list[Any] = []

    async def _start(self) -> None:
        self.grpc = grpc.aio.server()
        self.grpc.add_generic_rpc_handlers((GrpcEcho().handler(),))
        self.grpc_port = self.grpc.add_insecure_port("127.0.0.1:0")
        await self.grpc.start()
        self.rest, self.rest_port = await self._site(rest_app(self.peers))
        # Closes connections idle for 50 ms, as a server or proxy with a short
        # keep-alive timeout does: the sync HTTP client must reconnect.
        self.idle, self.idle_port = await self._site(rest_app(self.idle_peers), 0.05)

    async def _site(
        self, app: web.Application, keepalive: float = 75.0
    ) -> tuple[web.AppRunner, int]:
        runner = web.AppRunner(app, keepalive_timeout=keepalive, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, runner.addresses[0][1]

    async def _stop(self) -> None:
        await self.grpc.stop(None)
        await self.rest.cleanup()
        await self.idle.cleanup()

    def __enter__(self) -> Servers:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    with Servers() as running:
        yield running


KINDS = ["grpc", "grpc-async", "http-json", "http-binary", "http-async-json", "http-async-binary"]


def make_client(kind: str, grpc_port: int, rest_port: int, **kwargs: Any) -> Any:
    grpc_url = f"127.0.0.1:{grpc_port}"
    http_url = f"127.0.0.1:{rest_port}"
    binary = kind.endswith("-binary")
    if kind == "grpc":
        return GrpcClient(grpc_url, **kwargs)
    if kind == "grpc-async":
        return AsyncGrpcClient(grpc_url, **kwargs)
    if kind.startswith("http-async"):
        return AsyncHttpClient(http_url, binary=binary, **kwargs)
    return HttpClient(http_url, binary=binary, **kwargs)


@pytest.fixture(params=KINDS)
async def client(request: pytest.FixtureRequest, servers: Servers) -> AsyncIterator[Any]:
    instance = make_client(request.param, servers.grpc_port, servers.rest_port)
    if "async" in request.param:
        async with instance:
            yield instance
    else:
        with instance:
            yield instance


async def call(client: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    """Call a sync or async client method alike (the servers run in another thread)."""
    result = getattr(client, method)(*args, **kwargs)
    return await result if inspect.isawaitable(result) else result


# --- round trips ---------------------------------------------------------------------


async def test_infer_identity_round_trip(client: Any) -> None:
    data = np.arange(32, dtype=np.float32).reshape(2, 16)
    started = time.perf_counter()
    result = await call(client, "infer", "identity", {"input": data}, request_id="r-1")
    elapsed_ms = (time.perf_counter() - started) * 1000.0

    output = result.outputs["output"]
    assert output.dtype == np.float32
    np.testing.assert_array_equal(output, data)
    assert (result.model, result.version, result.id) == ("identity", "1", "r-1")

    timing = result.timing
    assert [e.name for e in timing.entries] == ["total", "decode", "queue", "backend", "compute"]
    assert timing.entries[3].description == "backend=b1;attempt=1"
    assert timing.server["compute"] == pytest.approx(2.0)
    assert 0 < timing.end_to_end_ms <= elapsed_ms
    assert timing.protocol_ms == pytest.approx(timing.end_to_end_ms - 1.0 - 2.0)


async def test_infer_bytes_and_selected_outputs(client: Any) -> None:
    inputs = {
        "input": np.ones((1, 4), np.float32),
        "text": np.array([[b"hello", b""], [b"w\xc3\xb6rld", b"x" * 300]], dtype=np.object_),
    }
    result = await call(client, "infer", "identity", inputs, outputs=["text"])
    assert list(result.outputs) == ["text"]
    text = result.outputs["text"]
    assert text.dtype == np.object_
    assert text.shape == (2, 2)
    assert text.tolist() == [[b"hello", b""], [b"w\xc3\xb6rld", b"x" * 300]]


async def test_pin_trace_context_and_timeout_reach_the_server(client: Any) -> None:
    tracer = TracerProvider().get_tracer(__name__)  # not installed globally
    with tracer.start_as_current_span("caller") as span:
        result = await call(
            client,
            "infer",
            "identity",
            {"input": np.ones((1, 2), np.float32)},
            backend="b1",
            timeout=5.0,
        )
    assert result.parameters["x-infergw-backend"] == "b1"
    trace_id = format(span.get_span_context().trace_id, "032x")
    assert result.parameters["traceparent"].split("-")[1] == trace_id
    assert result.parameters["timeout"] == 5_000_000


async def test_unknown_model_raises_not_found(client: Any) -> None:
    with pytest.raises(NotFound) as info:
        await call(client, "infer", "nope", {"input": np.ones((1, 2), np.float32)})
    assert "nope" in info.value.message
    if "Grpc" in type(client).__name__:
        assert isinstance(info.value.__cause__, grpc.RpcError)


async def test_queue_full_carries_retry_after(client: Any) -> None:
    with pytest.raises(QueueFull) as info:
        await call(client, "infer", "busy", {"input": np.ones((1, 2), np.float32)})
    assert info.value.retry_after_s == 2.0
    assert info.value.message == "admission queue full"


async def test_payload_too_large(client: Any) -> None:
    with pytest.raises(PayloadTooLarge) as info:
        await call(client, "infer", "huge", {"input": np.ones((1, 4), np.float32)})
    assert info.value.message == "request of 16 bytes exceeds the limit of 8 bytes"
    assert (info.value.size, info.value.limit) == (16, 8)


async def test_client_timeout_raises_deadline_exceeded(client: Any) -> None:
    started = time.perf_counter()
    with pytest.raises(DeadlineExceeded):
        await call(client, "infer", "slow", {"input": np.ones((1, 2), np.float32)}, timeout=0.2)
    assert time.perf_counter() - started < 1.5


async def test_health_metadata_and_statistics(client: Any) -> None:
    assert await call(client, "server_live") is True
    assert await call(client, "server_ready") is True
    assert await call(client, "model_ready", "identity") is True
    assert await call(client, "model_ready", "nope") is False

    server = await call(client, "server_metadata")
    assert (server.name, server.version, server.extensions) == ("echo", "0.1", ("statistics",))
    assert await call(client, "model_metadata", "identity") == IDENTITY_META
    with pytest.raises(NotFound):
        await call(client, "model_metadata", "nope")

    (stats,) = await call(client, "model_statistics", "identity")
    assert (stats.name, stats.inference_count, stats.execution_count) == ("identity", 7, 5)
    assert stats.queue == Duration(7, 1000)


@pytest.mark.parametrize("kind", KINDS)
async def test_connection_refused_is_unavailable(kind: str) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    instance = make_client(kind, port, port, timeout=5.0)
    try:
        with pytest.raises(Unavailable):
            await call(instance, "infer", "identity", {"input": np.ones((1, 2), np.float32)})
    finally:
        await call(instance, "close")


def test_sync_http_reconnects_after_idle_close(servers: Servers) -> None:
    with HttpClient(f"127.0.0.1:{servers.idle_port}") as client:
        assert client.server_live()
        time.sleep(0.3)  # the server closes the kept-alive connection meanwhile
        assert client.server_live()
        result = client.infer("identity", {"input": np.ones((1, 2), np.float32)})
        assert result.outputs["output"].shape == (1, 2)
    # Two different connections prove the first one really was dropped and replaced.
    assert len(servers.idle_peers) == 2
    assert servers.idle_peers[0] != servers.idle_peers[1]


def test_sync_http_reuses_its_connection(servers: Servers) -> None:
    before = len(servers.peers)
    with HttpClient(f"127.0.0.1:{servers.rest_port}") as client:
        for _ in range(3):
            assert client.server_live()
    peers = servers.peers[before:]
    assert len(peers) == 3
    assert len(set(peers)) == 1
