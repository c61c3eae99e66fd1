"""gRPC frontend + admission/deadline policies, driven by a real grpc client.

A slow in-process backend makes queueing and deadlines deterministic; the
Triton-backed paths are covered in test_grpc_gateway.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import grpc
import numpy as np
import pytest

from infergw.gateway.core.config import BackendConfig, RouteConfig
from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.router import Router, wrap_with_policies
from infergw.gateway.core.service import InferenceService
from infergw.gateway.frontends import oip_stream as oip_stream_frontend
from infergw.gateway.frontends.grpc import GrpcFrontend
from infergw.proto import grpc_service_pb2 as pb
from infergw.vocab.types import InferRequest, InferResponse
from infergw.wire.server_timing import parse_server_timing
from tests.fakes import EchoBackend

pytestmark = pytest.mark.integration
B = TypeVar("B", bound=EchoBackend)


def request_bytes(model: str = "identity") -> bytes:
    msg = pb.ModelInferRequest(model_name=model)
    msg.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    msg.raw_input_contents.append(np.ones(4, np.float32).tobytes())
    return msg.SerializeToString()


@contextlib.asynccontextmanager
async def serving(backend: B, max_concurrency: int, max_queue: int) -> AsyncIterator[tuple[str, B]]:
    """A gRPC frontend on port 0 routing ``identity`` to ``backend`` behind admission."""
    cfg = BackendConfig(
        name="echo", kind="echo", max_concurrency=max_concurrency, max_queue=max_queue
    )
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


@pytest.fixture
async def slow() -> AsyncIterator[tuple[str, EchoBackend]]:
    async with serving(EchoBackend(delay_s=0.5), max_concurrency=1, max_queue=0) as served:
        yield served


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


class GatedEcho(EchoBackend):
    """Holds each request with id ``held...`` until ``gate`` opens (``held`` counts them);
    ``arrived`` is notified whenever a request arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.held = 0
        self.arrived = asyncio.Condition()

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        is_held = request.id.startswith("held")
        self.held += is_held
        async with self.arrived:
            self.arrived.notify_all()
        if is_held:
            await self.gate.wait()
        return await super().infer(request, ctx)

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(condition), WAIT_S)


@pytest.fixture
async def gated() -> AsyncIterator[tuple[str, GatedEcho]]:
    async with serving(GatedEcho(), max_concurrency=8, max_queue=8) as served:
        yield served


def with_id(payload: bytes, request_id: str) -> bytes:
    msg = pb.ModelInferRequest.FromString(payload)
    msg.id = request_id
    return msg.SerializeToString()


async def open_stream(address: str, channel: grpc.aio.Channel) -> grpc.aio.StreamStreamCall:
    rpc = channel.stream_stream(
        "/inference.GRPCInferenceService/ModelStreamInfer",
        response_deserializer=pb.ModelStreamInferResponse.FromString,
    )
    return rpc(timeout=WAIT_S)


async def test_stream_requests_run_side_by_side_and_answer_in_request_order(gated) -> None:  # type: ignore[no-untyped-def]
    address, backend = gated
    async with grpc.aio.insecure_channel(address) as channel:
        call = await open_stream(address, channel)
        for request_id in ("held-1", "fast-2", "fast-3"):
            await call.write(with_id(request_bytes(), request_id))
        # The two after it are served while the first is held (one at a time would hang).
        await backend.wait_for(lambda: backend.held == 1 and len(backend.calls) == 2)
        backend.gate.set()
        await call.done_writing()
        replies = [r async for r in call]
    assert [r.infer_response.id for r in replies] == ["held-1", "fast-2", "fast-3"]
    assert all(r.infer_response.parameters["triton_final_response"].bool_param for r in replies)


async def test_a_stream_runs_at_most_max_calls_at_once(gated, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(oip_stream_frontend, "MAX_CALLS", 2)
    address, backend = gated
    async with grpc.aio.insecure_channel(address) as channel:
        call = await open_stream(address, channel)
        for n in range(3):
            await call.write(with_id(request_bytes(), f"held-{n}"))
        await backend.wait_for(lambda: backend.held == 2)
        # The third waits for room: the reader does not take it while two calls run.
        other = await open_stream(address, channel)  # another stream's call is not held up
        await other.write(with_id(request_bytes(), "fast-other"))
        assert (await other.read()).infer_response.id == "fast-other"
        assert backend.held == 2
        backend.gate.set()
        await call.done_writing()
        await other.done_writing()
        replies = [r.infer_response.id async for r in call]
    assert replies == ["held-0", "held-1", "held-2"]
