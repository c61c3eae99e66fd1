"""In-process fakes for unit tests only (integration tests use real servers)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import grpc

from infergw.gateway.core.backend import BackendBase
from infergw.gateway.core.context import RequestContext
from infergw.vocab.errors import ModelNotFound
from infergw.vocab.types import (
    InferRequest,
    InferResponse,
    ModelMetadata,
    Tensor,
    TensorSpec,
)


class EchoBackend(BackendBase):
    """Echoes ``input`` as ``output`` for model ``identity``; optional delay and failure."""

    def __init__(self, name: str = "echo", delay_s: float = 0.0, error: Exception | None = None):
        self.name = name
        self.delay_s = delay_s
        self.error = error
        self.calls: list[InferRequest] = []
        self.cancelled = 0
        self.closed = False
        # Set when a call reaches the backend / when one is cancelled there: tests wait on
        # these instead of sleeping.
        self.started = asyncio.Event()
        self.cancelled_event = asyncio.Event()

    @classmethod
    def from_config(cls, name: str, options: Mapping[str, Any]) -> EchoBackend:
        return cls(name, float(options.get("delay_s", 0.0)))

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        self.calls.append(request)
        self.started.set()
        if request.model not in ("identity", "echo"):
            raise ModelNotFound(request.model)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.cancelled += 1
            self.cancelled_event.set()
            raise
        if self.error is not None:
            raise self.error
        outputs = tuple(
            Tensor("output" if t.name == "input" else t.name, t.datatype, t.shape, t.data)
            for t in request.inputs
        )
        ctx.timings.add("compute", 0.001)
        return InferResponse(model=request.model, outputs=outputs, id=request.id, version="1")

    async def ready(self) -> bool:
        return True

    async def model_ready(self, model: str, version: str = "") -> bool:
        return model in ("identity", "echo")

    async def model_metadata(self, model: str, version: str = "") -> ModelMetadata:
        if model not in ("identity", "echo"):
            raise ModelNotFound(model)
        spec = TensorSpec("input", "FP32", (-1, -1))
        out = TensorSpec("output", "FP32", (-1, -1))
        return ModelMetadata(model, ("1",), "fake", (spec,), (out,))

    async def close(self) -> None:
        self.closed = True


class FakeRpcError(grpc.RpcError):
    """A failed gRPC call as the clients see one: code, details and trailers."""

    def __init__(self, code: grpc.StatusCode, details: str, trailers: Any = ()) -> None:
        self._code, self._details, self._trailers = code, details, trailers

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Any:
        return self._trailers
