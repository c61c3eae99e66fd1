"""The request lifecycle (``InferenceService.serve``), its error mapping and metric labels.

Pure unit tests: an in-process fake backend, no sockets. The frontends on real sockets
are covered in tests/integration/test_error_boundary.py.
"""

from __future__ import annotations

import asyncio
import logging
import re

import numpy as np
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client.parser import text_string_to_metric_families

from infergw.gateway.core.config import RouteConfig
from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.router import Router
from infergw.gateway.core.service import InferenceService, Outcome
from infergw.vocab.errors import InferGWError, InvalidArgument, QueueFull
from infergw.vocab.types import InferRequest, InferResponse, Tensor
from tests.fakes import EchoBackend

SECRET = "secret detail /etc/creds"
INTERNAL = re.compile(r"^internal error \(id ([0-9a-f]{16})\)$")


def tensor(name: str = "input") -> Tensor:
    return Tensor(name, "FP32", (1, 2), np.ones(2, np.float32).tobytes())


def request(model: str = "identity", *inputs: Tensor) -> InferRequest:
    return InferRequest(model, inputs or (tensor(),))


def make_service(backend: EchoBackend | None = None) -> InferenceService:
    router = Router(
        {"echo": backend or EchoBackend()}, [RouteConfig(model="identity", backend="echo")]
    )
    return InferenceService(router)


def requests_total(service: InferenceService) -> dict[tuple[str, str, str, str], float]:
    """infergw_requests_total by (model, backend, protocol, status)."""
    out = {}
    for family in text_string_to_metric_families(service.metrics.render().decode()):
        for s in family.samples:
            if s.name == "infergw_requests_total":
                key = (s.labels["model"], s.labels["backend"], s.labels["protocol"])
                out[(*key, s.labels["status"])] = s.value
    return out


def encode_bytes(response: InferResponse, req: InferRequest) -> bytes:
    return b"encoded:" + response.outputs[0].name.encode()


async def serve(service: InferenceService, req: InferRequest) -> Outcome[bytes]:
    ctx = service.new_context("grpc", {})
    return await service.serve(ctx, b"payload", lambda payload: req, encode_bytes)


# -- validation -------------------------------------------------------------------------
def test_validate_refuses_an_input_given_twice() -> None:
    service = make_service()
    service.validate(request("identity", tensor("a"), tensor("b")))  # distinct names: fine
    with pytest.raises(InvalidArgument, match="input 'a' is given more than once"):
        service.validate(request("identity", tensor("a"), tensor("b"), tensor("a")))


async def test_serve_answers_a_duplicate_input_with_invalid_argument() -> None:
    backend = EchoBackend()
    service = make_service(backend)
    result, entries = await serve(service, request("identity", tensor(), tensor()))
    assert isinstance(result, InvalidArgument)
    assert backend.calls == []  # refused before the backend
    assert [e.name for e in entries] == ["decode", "total"]
    assert requests_total(service) == {("identity", "none", "grpc", "INVALID_ARGUMENT"): 1}


# -- metric labels ------------------------------------------------------------------------
def test_a_model_without_a_route_is_counted_as_other() -> None:
    service = make_service()
    for model in ("identity", "nope", "nope-2", ""):
        ctx = service.new_context("rest", {})
        service.finish(model, ctx, "NOT_FOUND")
    assert requests_total(service) == {
        ("identity", "none", "rest", "NOT_FOUND"): 1,
        ("_other", "none", "rest", "NOT_FOUND"): 3,
    }


def test_count_failed_uses_the_same_bounded_label() -> None:
    service = make_service()
    service.count_failed("identity", "grpc", "INTERNAL")
    service.count_failed("no-such-model", "grpc", "INTERNAL")
    assert requests_total(service) == {
        ("identity", "none", "grpc", "INTERNAL"): 1,
        ("_other", "none", "grpc", "INTERNAL"): 1,
    }


# -- the lifecycle ------------------------------------------------------------------------
async def test_serve_ok_times_every_phase_and_counts_once() -> None:
    service = make_service()
    result, entries = await serve(service, request())
    assert result == b"encoded:output"
    assert [e.name for e in entries] == ["decode", "compute", "encode", "total"]
    assert requests_total(service) == {("identity", "none", "grpc", "OK"): 1}


async def test_an_unexpected_exception_is_internal_with_an_id_that_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = make_service(EchoBackend(error=RuntimeError(SECRET)))
    with caplog.at_level(logging.ERROR, logger="infergw"):
        result, entries = await serve(service, request())
    assert type(result) is InferGWError and result.grpc_code == "INTERNAL"
    match = INTERNAL.match(result.message)
    assert match, result.message
    (record,) = [r for r in caplog.records if match[1] in r.getMessage()]
    assert record.levelno == logging.ERROR and "'identity'" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError
    assert SECRET not in record.getMessage()  # the text is in the traceback only
    assert "total" in {e.name for e in entries}
    assert requests_total(service) == {("identity", "none", "grpc", "INTERNAL"): 1}


async def test_each_internal_error_gets_its_own_id() -> None:
    service = make_service(EchoBackend(error=KeyError(SECRET)))
    first, _ = await serve(service, request())
    second, _ = await serve(service, request())
    assert isinstance(first, InferGWError) and isinstance(second, InferGWError)
    assert first.message != second.message


async def test_our_errors_keep_their_status_and_message() -> None:
    service = make_service(EchoBackend(error=QueueFull("full", retry_after_s=3)))
    result, _ = await serve(service, request())
    assert isinstance(result, QueueFull) and result.message == "full"
    assert requests_total(service) == {("identity", "none", "grpc", "RESOURCE_EXHAUSTED"): 1}


async def test_a_failing_decoder_or_encoder_is_internal_too() -> None:
    service = make_service()
    ctx = service.new_context("tfserving", {})

    def broken_decode(payload: bytes) -> InferRequest:
        raise KeyError(SECRET)

    result, entries = await service.serve(ctx, b"x", broken_decode, encode_bytes)
    assert isinstance(result, InferGWError) and INTERNAL.match(result.message)
    assert [e.name for e in entries] == ["decode", "total"]

    def broken_encode(response: InferResponse, req: InferRequest) -> bytes:
        raise ValueError(SECRET)

    ctx = service.new_context("tfserving", {})
    result, _ = await service.serve(ctx, b"x", lambda payload: request(), broken_encode)
    assert isinstance(result, InferGWError) and INTERNAL.match(result.message)
    assert requests_total(service) == {
        ("_other", "none", "tfserving", "INTERNAL"): 1,  # the model was never decoded
        ("identity", "none", "tfserving", "INTERNAL"): 1,
    }


class Entered(EchoBackend):
    """Signals when a call reaches the backend, then waits to be cancelled."""

    def __init__(self) -> None:
        super().__init__(delay_s=30)
        self.entered = asyncio.Event()

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        self.entered.set()
        return await super().infer(request, ctx)


async def test_a_cancelled_request_is_counted_and_the_cancellation_goes_on() -> None:
    backend = Entered()
    service = make_service(backend)
    task = asyncio.ensure_future(serve(service, request()))
    await backend.entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert backend.cancelled == 1
    assert requests_total(service) == {("identity", "none", "grpc", "CANCELLED"): 1}


async def test_an_error_whose_code_is_cancelled_is_counted_once() -> None:
    from infergw.vocab.errors import Cancelled

    service = make_service(EchoBackend(error=Cancelled("the backend cancelled it")))
    result, _ = await serve(service, request())
    assert isinstance(result, Cancelled)
    assert requests_total(service) == {("identity", "none", "grpc", "CANCELLED"): 1}


# -- spans ---------------------------------------------------------------------------------
async def test_the_server_span_covers_decoding_and_is_marked_without_the_text(
    span_exporter: InMemorySpanExporter,
) -> None:
    service = make_service(EchoBackend(error=RuntimeError(SECRET)))
    ctx = service.new_context("grpc", {"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"})
    await service.serve(ctx, b"x", lambda payload: request(), encode_bytes)
    (span,) = span_exporter.get_finished_spans()
    assert span.name == "infer identity" and span.attributes["infergw.model"] == "identity"
    assert span.context.trace_id == int("ab" * 16, 16)
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes["error.type"] == "RuntimeError"
    assert SECRET not in str(span.to_json())

    def bad_input(payload: bytes) -> InferRequest:
        raise InvalidArgument("bad input")

    span_exporter.clear()
    await service.serve(service.new_context("grpc", {}), b"x", bad_input, encode_bytes)
    (span,) = span_exporter.get_finished_spans()
    assert span.name == "infer" and span.attributes["error.type"] == "InvalidArgument"


def test_span_exporter_fixture_leaves_no_sdk_behind(
    span_exporter: InMemorySpanExporter,
) -> None:
    from opentelemetry import trace

    from infergw.gateway.core import tracing
    from tests.conftest import reset_trace_globals

    assert tracing.enabled()
    reset_trace_globals()  # what the fixture does afterwards
    assert not tracing.enabled()
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
