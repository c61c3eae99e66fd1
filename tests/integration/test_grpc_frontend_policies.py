"""gRPC frontend + admission/deadline policies, driven by a real grpc client.

A slow in-process backend makes queueing and deadlines deterministic; the
Triton-backed paths are covered in test_grpc_gateway.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest

from infergw.gateway.core.config import BackendConfig, RouteConfig
from infergw.gateway.core.router import Router, wrap_with_policies
from infergw.gateway.core.service import InferenceService
from infergw.gateway.frontends.grpc import GrpcFrontend
from infergw.proto import grpc_service_pb2 as pb
from infergw.wire.server_timing import parse_server_timing
from tests.fakes import EchoBackend

pytestmark = pytest.mark.integration


def request_bytes(model: str = "identity") -> bytes:
    msg = pb.ModelInferRequest(model_name=model)
    msg.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    msg.raw_input_contents.append(np.ones(4, np.float32).tobytes())
    return msg.SerializeToString()


@pytest.fixture
async def slow() -> AsyncIterator[tuple[str, EchoBackend]]:
    backend = EchoBackend(delay_s=0.5)
    cfg = BackendConfig(name="echo", kind="echo", max_concurrency=1, max_queue=0)
    router = Router(
        {"echo": wrap_with_policies(backend, cfg)}, [RouteConfig(model="identity", backend="echo")]
    )
    frontend = GrpcFrontend(InferenceService(router), 1 << 20)
    port = frontend.add_port("127.0.0.1:0")
    await frontend.start()
    try:
        yield f"127.0.0.1:{port}", backend
    finally:
        await frontend.stop(0)


WAIT_S = 5.0  # bound on every wait for an event below


async def test_queue_full_is_resource_exhausted_with_retry_after(slow) -> None:  # type: ignore[no-untyped-def]
    address, backend = slow
    async with grpc.aio.insecure_channel(address) as channel:
        rpc = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        first = asyncio.ensure_future(rpc(request_bytes(), timeout=5))
        await asyncio.wait_for(backend.started.wait(), WAIT_S)  # the one slot is taken
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await rpc(request_bytes(), timeout=5)
        assert await first
    err = info.value
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "at its limit of 1 in flight" in (err.details() or "")
    trailers = dict(err.trailing_metadata() or ())
    assert int(trailers["retry-after"]) >= 1
    assert "queue" in {e.name for e in parse_server_timing(trailers["server-timing"])}


async def test_deadline_cancels_backend_call(slow) -> None:  # type: ignore[no-untyped-def]
    address, backend = slow
    async with grpc.aio.insecure_channel(address) as channel:
        rpc = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await rpc(request_bytes(), timeout=0.1)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.wait_for(backend.cancelled_event.wait(), WAIT_S)
        assert backend.cancelled == 1
        # the slot was released: the next request is admitted and answered
        assert await rpc(request_bytes(), timeout=5)


async def test_client_cancel_cancels_backend_call(slow) -> None:  # type: ignore[no-untyped-def]
    address, backend = slow
    async with grpc.aio.insecure_channel(address) as channel:
        rpc = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        call = rpc(request_bytes(), timeout=5)
        await asyncio.wait_for(backend.started.wait(), WAIT_S)
        call.cancel()
        await asyncio.wait_for(backend.cancelled_event.wait(), WAIT_S)
        assert backend.cancelled == 1
        assert await rpc(request_bytes(), timeout=5)


async def test_stream_infer_answers_in_order_with_errors_inline(slow) -> None:  # type: ignore[no-untyped-def]
    address, backend = slow
    backend.delay_s = 0.0
    async with grpc.aio.insecure_channel(address) as channel:
        rpc = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )
        replies = [r async for r in rpc(iter([request_bytes(), request_bytes("nope")]))]
    assert replies[0].error_message == ""
    assert replies[0].infer_response.outputs[0].name == "output"
    assert "server-timing" in replies[0].infer_response.parameters
    assert replies[1].error_message == "unknown model: 'nope'"
