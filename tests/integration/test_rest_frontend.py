"""The REST frontend on a real socket, driven by an unmodified ``tritonclient.http``."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import ml_dtypes  # a dependency of tritonclient
import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from tritonclient.utils import InferenceServerException

from infergw.gateway.core.config import BackendConfig, LimitsConfig, RouteConfig
from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.router import Router, wrap_with_policies
from infergw.gateway.core.service import InferenceService
from infergw.gateway.frontends.rest import SITE_OPTIONS, create_rest_app
from infergw.vocab.types import (
    Duration,
    InferRequest,
    InferResponse,
    ModelStatistics,
)
from infergw.wire.server_timing import parse_server_timing
from tests.fakes import EchoBackend

T = TypeVar("T")
Serve = Callable[..., Awaitable[str]]
INPUT = np.arange(12, dtype=np.float32).reshape(3, 4) / 7


class RecordingEcho(EchoBackend):
    """Keeps each call's context and signals when a call reaches the backend."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.contexts: list[RequestContext] = []
        self.entered = asyncio.Event()

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        self.contexts.append(ctx)
        self.entered.set()
        return await super().infer(request, ctx)


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start the REST app for an EchoBackend on 127.0.0.1; returns ``host:port``."""
    servers: list[TestServer] = []

    async def start(
        backend: EchoBackend | None = None, max_message_bytes: int = 1 << 20, **policy: Any
    ) -> str:
        backend = backend or EchoBackend()
        cfg = BackendConfig(name="echo", kind="echo", **policy)
        router = Router(
            {"echo": wrap_with_policies(backend, cfg)},
            [RouteConfig(model="identity", backend="echo")],
        )
        service = InferenceService(router, limits=LimitsConfig(max_message_bytes=max_message_bytes))
        server = TestServer(create_rest_app(service), host="127.0.0.1", port=0)
        await server.start_server(auto_decompress=SITE_OPTIONS.auto_decompress)
        servers.append(server)
        return f"127.0.0.1:{server.port}"

    yield start
    for server in servers:
        await server.close()


async def triton(url: str, call: Callable[[httpclient.InferenceServerClient], T]) -> T:
    """Run ``call`` with a sync tritonclient in a thread (gevent objects stay in that thread)."""

    def run() -> T:
        client = httpclient.InferenceServerClient(url)
        try:
            return call(client)
        finally:
            client.close()

    return await asyncio.to_thread(run)


def infer_input(array: np.ndarray = INPUT, binary: bool = True, name: str = "input") -> Any:
    tensor = httpclient.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def triton_error(exc_info: pytest.ExceptionInfo[InferenceServerException]) -> tuple[str, str]:
    return exc_info.value.status(), exc_info.value.message()


async def post_infer(
    url: str, body: bytes, headers: dict[str, str] | None = None, model: str = "identity"
) -> tuple[int, dict[str, str], bytes]:
    async with (
        ClientSession() as session,
        session.post(f"http://{url}/v2/models/{model}/infer", data=body, headers=headers) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.read()


def tritonclient_body(binary: bool = True, **kwargs: Any) -> tuple[bytes, dict[str, str]]:
    """A request body exactly as tritonclient.http builds it."""
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        [infer_input(binary=binary)], **kwargs
    )
    headers = {} if json_size is None else {"Inference-Header-Content-Length": str(json_size)}
    return body, headers


# -- inference ----------------------------------------------------------------------------


@pytest.mark.parametrize("binary_in", [True, False])
@pytest.mark.parametrize("binary_out", [True, False])
async def test_tritonclient_infer_round_trip(
    serve: Serve, binary_in: bool, binary_out: bool
) -> None:
    url = await serve()
    outputs = [httpclient.InferRequestedOutput("output", binary_data=binary_out)]
    result = await triton(
        url, lambda c: c.infer("identity", [infer_input(binary=binary_in)], outputs=outputs)
    )
    np.testing.assert_array_equal(result.as_numpy("output"), INPUT)
    assert result.get_response()["model_name"] == "identity"


@pytest.mark.parametrize("compression", ["gzip", "deflate"])
async def test_compressed_request_and_response(serve: Serve, compression: str) -> None:
    url = await serve()
    result = await triton(
        url,
        lambda c: c.infer(
            "identity",
            [infer_input()],
            request_compression_algorithm=compression,
            response_compression_algorithm=compression,
        ),
    )
    np.testing.assert_array_equal(result.as_numpy("output"), INPUT)


async def test_response_compressed_only_when_asked(serve: Serve) -> None:
    url = await serve()
    body, headers = tritonclient_body()
    for accept, encoding in (("gzip", "gzip"), ("identity", None)):
        status, response_headers, payload = await post_infer(
            url, body, {**headers, "Accept-Encoding": accept}
        )
        assert status == 200
        assert response_headers.get("Content-Encoding") == encoding
        result = httpclient.InferenceServerClient.parse_response_body(
            payload, header_length=int(response_headers["Inference-Header-Content-Length"])
        )  # aiohttp has inflated it already
        np.testing.assert_array_equal(result.as_numpy("output"), INPUT)


async def test_aio_client_with_version_and_request_id(serve: Serve) -> None:
    url = await serve()
    async with aioclient.InferenceServerClient(url) as client:
        inputs = [aioclient.InferInput("input", [3, 4], "FP32")]
        inputs[0].set_data_from_numpy(INPUT)
        result = await client.infer("identity", inputs, model_version="1", request_id="r-7")
    np.testing.assert_array_equal(result.as_numpy("output"), INPUT)
    assert result.get_response()["id"] == "r-7"


@pytest.mark.parametrize("binary", [True, False])
async def test_server_timing_on_success(serve: Serve, binary: bool) -> None:
    url = await serve()
    body, headers = tritonclient_body(binary)
    status, response_headers, _ = await post_infer(url, body, headers)
    assert status == 200
    timing = {e.name: e for e in parse_server_timing(response_headers["Server-Timing"])}
    assert {"total", "decode", "queue", "backend", "encode"} <= timing.keys()
    assert timing["backend"].description == "backend=echo;attempt=1"
    parts = sum(timing[name].duration_ms for name in ("decode", "queue", "backend", "encode"))
    assert timing["total"].duration_ms >= parts


async def test_pin_and_traceparent_headers_reach_the_backend(serve: Serve) -> None:
    backend = RecordingEcho()
    url = await serve(backend)
    body, headers = tritonclient_body()
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    status, _, _ = await post_infer(
        url, body, {**headers, "X-InferGW-Backend": "echo", "TraceParent": traceparent}
    )
    assert status == 200
    (ctx,) = backend.contexts
    assert ctx.pinned_backend == "echo"
    assert ctx.headers["traceparent"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"
    status, _, payload = await post_infer(url, body, {**headers, "x-infergw-backend": "nope"})
    assert status == 400
    assert "backend 'nope' is not available" in json.loads(payload)["error"]


# -- errors ------------------------------------------------------------------------------


async def test_unknown_model_is_404(serve: Serve) -> None:
    url = await serve()
    with pytest.raises(InferenceServerException) as exc_info:
        await triton(url, lambda c: c.infer("nope", [infer_input()]))
    assert triton_error(exc_info) == ("404", "unknown model: 'nope'")


async def test_bad_datatype_is_400(serve: Serve) -> None:
    url = await serve()
    # tritonclient sends BF16 (Triton has it); the gateway's datatypes do not (yet).
    tensor = httpclient.InferInput("input", [2], "BF16")
    tensor.set_data_from_numpy(np.zeros(2, ml_dtypes.bfloat16))
    with pytest.raises(InferenceServerException) as exc_info:
        await triton(url, lambda c: c.infer("identity", [tensor]))
    status, message = triton_error(exc_info)
    assert status == "400"
    assert "unsupported datatype 'BF16'" in message


async def test_data_size_not_matching_shape_is_400(serve: Serve) -> None:
    url = await serve()
    tensor = httpclient.InferInput("input", [3, 4], "FP32")
    tensor.set_data_from_numpy(INPUT)
    tensor.set_shape([3, 5])  # 60 bytes declared, 48 sent
    with pytest.raises(InferenceServerException) as exc_info:
        await triton(url, lambda c: c.infer("identity", [tensor]))
    assert triton_error(exc_info) == (
        "400",
        "input 'input': shape [3, 5] with datatype FP32 needs 60 bytes, got 48",
    )


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        (b'{"inputs": [', {}, "malformed JSON"),
        (b'{"inputs": []}', {"Inference-Header-Content-Length": "99"}, "outside the 14-byte body"),
        (b'{"inputs": []}', {"Inference-Header-Content-Length": "x"}, "must be an integer"),
        (b'{"inputs": []}', {}, "request has no inputs"),
    ],
    ids=["malformed-json", "header-beyond-body", "header-not-int", "no-inputs"],
)
async def test_bad_bodies_are_400_with_server_timing(
    serve: Serve, body: bytes, headers: dict[str, str], message: str
) -> None:
    url = await serve()
    status, response_headers, payload = await post_infer(url, body, headers)
    assert status == 400
    assert message in json.loads(payload)["error"]
    names = {e.name for e in parse_server_timing(response_headers["Server-Timing"])}
    assert {"total", "decode"} <= names
    assert "backend" not in names


async def test_over_the_size_limit_is_413_naming_the_limit(serve: Serve) -> None:
    url = await serve(max_message_bytes=100_000)
    big = np.zeros((100, 300), np.float32)  # 120 kB
    with pytest.raises(InferenceServerException) as exc_info:
        await triton(url, lambda c: c.infer("identity", [infer_input(big)]))
    status, message = triton_error(exc_info)
    assert status == "413"
    assert message.endswith("exceeds the limit of 100000 bytes")
    # Still serving on the same server afterwards.
    result = await triton(url, lambda c: c.infer("identity", [infer_input()]))
    np.testing.assert_array_equal(result.as_numpy("output"), INPUT)


async def test_compressed_body_inflating_past_the_limit_is_413(serve: Serve) -> None:
    url = await serve(max_message_bytes=100_000)
    body, headers = tritonclient_body()
    padded = body + b" " * 200_000  # compresses to far below the limit
    status, _, payload = await post_infer(
        url, gzip.compress(padded), {**headers, "Content-Encoding": "gzip"}
    )
    assert status == 413
    assert json.loads(payload) == {"error": "request body exceeds the limit of 100000 bytes"}


async def test_queue_full_is_429_with_retry_after(serve: Serve) -> None:
    backend = RecordingEcho(delay_s=0.5)
    url = await serve(backend, max_concurrency=1, max_queue=0, queue_timeout_ms=2500)
    body, headers = tritonclient_body()
    first = asyncio.create_task(post_infer(url, body, headers))
    await asyncio.wait_for(backend.entered.wait(), 5)

    status, response_headers, payload = await post_infer(url, body, headers)

    assert status == 429
    assert response_headers["Retry-After"] == "3"
    assert "at its limit of 1 in flight" in json.loads(payload)["error"]
    assert "queue" in {e.name for e in parse_server_timing(response_headers["Server-Timing"])}
    assert (await first)[0] == 200


async def test_timeout_parameter_is_a_deadline_and_cancels_the_backend(serve: Serve) -> None:
    backend = EchoBackend(delay_s=5.0)
    url = await serve(backend)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(InferenceServerException) as exc_info:
        await triton(url, lambda c: c.infer("identity", [infer_input()], timeout=100_000))
    status, message = triton_error(exc_info)
    assert status == "504"
    assert "did not answer within the deadline" in message
    assert loop.time() - started < 2.0
    assert backend.cancelled == 1


async def test_unexpected_backend_error_is_500_without_details(serve: Serve) -> None:
    url = await serve(EchoBackend(error=RuntimeError("secret detail")))
    body, headers = tritonclient_body()
    status, response_headers, payload = await post_infer(url, body, headers)
    assert status == 500
    (message,) = json.loads(payload).values()  # {"error": "internal error (id <hex>)"}
    assert re.fullmatch(r"internal error \(id [0-9a-f]+\)", message), message
    assert "Server-Timing" in response_headers


# -- health, metadata, statistics, repository ---------------------------------------------


async def test_health_and_metadata(serve: Serve) -> None:
    url = await serve()

    def check(c: httpclient.InferenceServerClient) -> tuple[Any, ...]:
        return (
            c.is_server_live(),
            c.is_server_ready(),
            c.is_model_ready("identity"),
            c.is_model_ready("identity", "1"),
            c.get_server_metadata(),
            c.get_model_metadata("identity", "1"),
        )

    live, ready, model_ready, version_ready, server, model = await triton(url, check)
    assert live and ready and model_ready and version_ready
    assert server["name"] == "infergw"
    assert "binary_tensor_data" in server["extensions"]
    assert model == {
        "name": "identity",
        "versions": ["1"],
        "platform": "fake",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, -1]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, -1]}],
    }


async def test_unknown_model_metadata_and_readiness(serve: Serve) -> None:
    url = await serve()
    assert not await triton(url, lambda c: c.is_model_ready("nope"))
    with pytest.raises(InferenceServerException) as exc_info:
        await triton(url, lambda c: c.get_model_metadata("nope"))
    assert triton_error(exc_info) == ("404", "unknown model: 'nope'")


async def test_repository_index(serve: Serve) -> None:
    url = await serve()
    index = await triton(url, lambda c: c.get_model_repository_index())
    assert index == [{"name": "identity", "state": "READY"}]


class StatsEcho(EchoBackend):
    async def model_statistics(self, model: str, version: str = "") -> list[ModelStatistics]:
        return [ModelStatistics(model, "1", 1234, 3, 2, success=Duration(3, 3000))]


async def test_statistics_in_triton_shape(serve: Serve) -> None:
    url = await serve(StatsEcho())
    for model in ("identity", ""):
        stats = await triton(url, lambda c, m=model: c.get_inference_statistics(m))
        (entry,) = stats["model_stats"]
        assert (entry["name"], entry["version"], entry["last_inference"]) == ("identity", "1", 1234)
        assert (entry["inference_count"], entry["execution_count"]) == (3, 2)
        assert entry["inference_stats"]["success"] == {"count": 3, "ns": 3000}
        assert entry["inference_stats"]["queue"] == {"count": 0, "ns": 0}


async def test_statistics_unimplemented_by_backend_is_501(serve: Serve) -> None:
    url = await serve()
    for model in ("identity", ""):  # "" is /v2/models/stats, not metadata of model "stats"
        with pytest.raises(InferenceServerException) as exc_info:
            await triton(url, lambda c, m=model: c.get_inference_statistics(m))
        assert triton_error(exc_info) == ("501", "backend 'echo' does not report statistics")


async def test_unknown_route_in_oip_error_shape(serve: Serve) -> None:
    url = await serve()
    async with ClientSession() as session, session.get(f"http://{url}/v2/nothing") as resp:
        assert resp.status == 404
        assert await resp.json() == {"error": "Not Found"}
