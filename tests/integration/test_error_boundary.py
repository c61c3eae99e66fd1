"""The error boundary of every gRPC method and REST route, on a real gateway.

A gateway on 127.0.0.1 (free ports) in front of in-process fake backends: one whose
every call raises ``RuntimeError`` with a secret in its text, one that works. Each
surface (OIP gRPC unary and stream, TF Serving, REST) must answer INTERNAL / 500 with
a generic message whose error id is the one logged (with the exception), never the
secret, and count the call. Also: unknown models share the ``_other`` label, an input
given twice is INVALID_ARGUMENT / 400 on both wires, and grpc.health.v1 follows the
backends' readiness.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client.parser import text_string_to_metric_families

from infergw.gateway.app import Gateway
from infergw.gateway.core.config import RouteConfig, parse_config
from infergw.gateway.core.router import Router
from infergw.gateway.core.service import InferenceService
from infergw.gateway.frontends.grpc import SERVICE_NAME, GrpcFrontend
from infergw.proto import grpc_service_pb2 as pb
from infergw.proto.tfs import get_model_metadata_pb2
from infergw.vocab.types import InferRequest, ModelMetadata, ModelStatistics, Tensor
from infergw.wire import tfserving as tfs_codec
from tests.fakes import EchoBackend
from tests.integration.conftest import ServiceThread

pytestmark = pytest.mark.integration

SECRET = "secret detail /etc/creds"
INTERNAL_MESSAGE = re.compile(r"internal error \(id ([0-9a-f]+)\)")
OIP = "/inference.GRPCInferenceService/"
TFS = "/tensorflow.serving.PredictionService/"


class BrokenBackend(EchoBackend):
    """Serves ``identity``, and every call raises an exception that is not ours."""

    def __init__(self) -> None:
        super().__init__("broken", error=RuntimeError(SECRET))

    async def model_ready(self, model: str, version: str = "") -> bool:
        raise RuntimeError(SECRET)

    async def model_metadata(self, model: str, version: str = "") -> ModelMetadata:
        raise KeyError(SECRET)

    async def model_statistics(self, model: str, version: str = "") -> list[ModelStatistics]:
        raise RuntimeError(SECRET)


@pytest.fixture(scope="module")
def gateway() -> Iterator[ServiceThread]:
    config = parse_config(
        {
            "listen": {"host": "127.0.0.1", "grpc_port": 0, "http_port": 0, "metrics_port": 0},
            "backends": {"broken": {"kind": "fake"}, "echo": {"kind": "fake"}},
            "models": {"identity": {"backend": "broken"}, "echo": {"backend": "echo"}},
        }
    )
    router = Router({"broken": BrokenBackend(), "echo": EchoBackend()}, config.routes)
    gw = ServiceThread(Gateway(config, router))
    try:
        yield gw
    finally:
        gw.close()


@pytest.fixture(scope="module")
def channel(gateway: ServiceThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(gateway.grpc) as ch:
        yield ch


def requests_total(gw: ServiceThread) -> dict[tuple[str, str, str], float]:
    """infergw_requests_total by (model, protocol, status), scraped from /metrics."""
    text = urllib.request.urlopen(f"http://{gw.metrics}/metrics", timeout=5).read().decode()
    counts: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "infergw_requests_total":
                key = (s.labels["model"], s.labels["protocol"], s.labels["status"])
                counts[key] = counts.get(key, 0.0) + s.value
    return counts


def counted(gw: ServiceThread, before: dict[tuple[str, str, str], float]) -> dict[tuple, float]:
    after = requests_total(gw)
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


def oip_request(model: str = "identity", names: tuple[str, ...] = ("input",)) -> bytes:
    msg = pb.ModelInferRequest(model_name=model)
    for name in names:
        msg.inputs.add(name=name, datatype="FP32", shape=[1, 4])
        msg.raw_input_contents.append(np.ones(4, np.float32).tobytes())
    return msg.SerializeToString()


def rest_infer_body(names: tuple[str, ...] = ("input",)) -> bytes:
    inputs = [{"name": n, "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]} for n in names]
    return json.dumps({"inputs": inputs}).encode()


# -- one call per surface; each returns (status, message, everything the client got) --------
@dataclass(frozen=True)
class Answer:
    status: str  # gRPC code name, or the HTTP status as text
    message: str
    seen: str  # all the client received (details, trailers, headers, body)


def grpc_unary(channel: grpc.Channel, method: str, payload: bytes) -> Answer:
    try:
        reply, call = channel.unary_unary(method).with_call(payload, timeout=10)
    except grpc.RpcError as exc:
        seen = f"{exc.details()} {exc.trailing_metadata()} {exc.initial_metadata()}"
        return Answer(exc.code().name, exc.details() or "", seen)
    return Answer("OK", "", f"{reply!r} {call.trailing_metadata()}")


def grpc_stream(channel: grpc.Channel, payload: bytes) -> Answer:
    call = channel.stream_stream(
        OIP + "ModelStreamInfer", response_deserializer=pb.ModelStreamInferResponse.FromString
    )(iter([payload]), timeout=10)
    (reply,) = list(call)
    # Per-message errors travel in the stream (as Triton does); the stream itself is OK.
    status = "INTERNAL" if reply.error_message else call.code().name
    return Answer(status, reply.error_message, f"{reply} {call.trailing_metadata()}")


def rest(gw: ServiceThread, path: str, body: bytes | None = None) -> Answer:
    request = urllib.request.Request(f"http://{gw.http}{path}", data=body)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return Answer(str(resp.status), "", f"{resp.headers} {resp.read()!r}")
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        message = json.loads(payload).get("error", "")
        return Answer(str(exc.code), message, f"{exc.headers} {payload!r}")


def tfs_predict_request(model: str = "identity") -> bytes:
    tensor = Tensor("input", "FP32", (1, 4), np.ones(4, np.float32).tobytes())
    msg = tfs_codec.request_to_proto(InferRequest(model, (tensor,)), tfs_codec.DEFAULT_SIGNATURE)
    return msg.SerializeToString()


def tfs_metadata_request(model: str = "identity") -> bytes:
    msg = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    msg.model_spec.name = model
    return msg.SerializeToString()


Call = Callable[[ServiceThread, grpc.Channel], Answer]
CALLS: dict[str, tuple[Call, str, str]] = {  # name: (call, answered status, metric protocol)
    "grpc ModelInfer": (
        lambda gw, ch: grpc_unary(ch, OIP + "ModelInfer", oip_request()),
        "INTERNAL",
        "grpc",
    ),
    "grpc ModelStreamInfer": (
        lambda gw, ch: grpc_stream(ch, oip_request()),
        "INTERNAL",
        "grpc-stream",
    ),
    "grpc ModelMetadata": (
        lambda gw, ch: grpc_unary(
            ch, OIP + "ModelMetadata", pb.ModelMetadataRequest(name="identity").SerializeToString()
        ),
        "INTERNAL",
        "grpc",
    ),
    "grpc ModelReady": (
        lambda gw, ch: grpc_unary(
            ch, OIP + "ModelReady", pb.ModelReadyRequest(name="identity").SerializeToString()
        ),
        "INTERNAL",
        "grpc",
    ),
    "grpc ModelStatistics": (
        lambda gw, ch: grpc_unary(
            ch,
            OIP + "ModelStatistics",
            pb.ModelStatisticsRequest(name="identity").SerializeToString(),
        ),
        "INTERNAL",
        "grpc",
    ),
    "tfserving Predict": (
        lambda gw, ch: grpc_unary(ch, TFS + "Predict", tfs_predict_request()),
        "INTERNAL",
        "tfserving",
    ),
    "tfserving GetModelMetadata": (
        lambda gw, ch: grpc_unary(ch, TFS + "GetModelMetadata", tfs_metadata_request()),
        "INTERNAL",
        "tfserving",
    ),
    "rest infer": (
        lambda gw, ch: rest(gw, "/v2/models/identity/infer", rest_infer_body()),
        "500",
        "rest",
    ),
    "rest metadata": (lambda gw, ch: rest(gw, "/v2/models/identity"), "500", "rest"),
    "rest ready": (lambda gw, ch: rest(gw, "/v2/models/identity/ready"), "500", "rest"),
    "rest stats": (lambda gw, ch: rest(gw, "/v2/models/identity/stats"), "500", "rest"),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_unexpected_error_is_internal_with_the_logged_id_and_counted(
    name: str, gateway: ServiceThread, channel: grpc.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    call, expected_status, protocol = CALLS[name]
    before = requests_total(gateway)
    with caplog.at_level(logging.ERROR):
        answer = call(gateway, channel)

    assert answer.status == expected_status, answer
    match = INTERNAL_MESSAGE.fullmatch(answer.message)
    assert match, answer.message
    assert SECRET not in answer.seen and "RuntimeError" not in answer.seen
    assert "KeyError" not in answer.seen

    logged = [r for r in caplog.records if match[1] in r.getMessage()]
    assert len(logged) == 1, [r.getMessage() for r in caplog.records]
    record = logged[0]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and record.exc_info[0] in (RuntimeError, KeyError)
    assert SECRET not in record.getMessage()  # the exception's text: in the traceback only

    assert counted(gateway, before) == {("identity", protocol, "INTERNAL"): 1}


def test_server_timing_travels_with_an_internal_error(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary(OIP + "ModelInfer")(oip_request(), timeout=10)
    trailers = dict(info.value.trailing_metadata() or ())
    assert {"decode", "total"} <= {e.split(";")[0] for e in trailers["server-timing"].split(", ")}


def test_malformed_messages_are_invalid_argument_in_our_words(
    gateway: ServiceThread, channel: grpc.Channel
) -> None:
    before = requests_total(gateway)
    answer = grpc_unary(channel, OIP + "ModelMetadata", b"\xff\xff\xff")
    assert (answer.status, answer.message) == ("INVALID_ARGUMENT", "malformed ModelMetadataRequest")
    answer = grpc_unary(channel, TFS + "Classify", b"\xff\xff\xff")  # not parsed: unimplemented
    assert answer.status == "UNIMPLEMENTED" and "use Predict" in answer.message
    assert counted(gateway, before) == {
        ("_other", "grpc", "INVALID_ARGUMENT"): 1,
        ("_other", "tfserving", "UNIMPLEMENTED"): 1,
    }


def test_failed_calls_are_marked_on_their_spans(
    gateway: ServiceThread, channel: grpc.Channel, span_exporter: InMemorySpanExporter
) -> None:
    grpc_unary(
        channel, OIP + "ModelMetadata", pb.ModelMetadataRequest(name="identity").SerializeToString()
    )
    rest(gateway, "/v2/models/identity/stats")
    grpc_stream(channel, oip_request())
    rest(gateway, "/v2/models/echo/infer", rest_infer_body())
    finished = span_exporter.get_finished_spans()
    # REST infer: one SERVER span, the lifecycle's (the boundary opens none of its own)
    assert [s.name for s in finished if "/infer" in s.name or s.name == "infer echo"] == [
        "infer echo"
    ]
    spans = {s.name: s for s in finished}
    for name, error_type in (
        ("ModelMetadata", "KeyError"),
        ("GET /v2/models/{model}/stats", "RuntimeError"),
        ("infer identity", "RuntimeError"),  # the stream's message
    ):
        span = spans[name]
        assert span.kind == SpanKind.SERVER
        assert span.status.status_code == StatusCode.ERROR, name
        assert span.attributes["error.type"] == error_type
        assert SECRET not in span.to_json()
    assert spans["ModelStreamInfer"].status.status_code != StatusCode.ERROR  # answered in-band


# -- metric labels: a model without a route is `_other` -----------------------------------------
def test_unknown_models_are_counted_as_other(gateway: ServiceThread, channel: grpc.Channel) -> None:
    before = requests_total(gateway)
    answer = grpc_unary(channel, OIP + "ModelInfer", oip_request("no-such-model-1"))
    assert answer.status == "NOT_FOUND"
    answer = rest(gateway, "/v2/models/no-such-model-2/infer", rest_infer_body())
    assert answer.status == "404"
    assert counted(gateway, before) == {
        ("_other", "grpc", "NOT_FOUND"): 1,
        ("_other", "rest", "NOT_FOUND"): 1,
    }


# -- an input given twice -------------------------------------------------------------------
def test_an_input_given_twice_is_refused_on_both_wires(
    gateway: ServiceThread, channel: grpc.Channel
) -> None:
    before = requests_total(gateway)
    ok = grpc_unary(channel, OIP + "ModelInfer", oip_request("echo", ("a", "b")))
    assert ok.status == "OK"
    twice = grpc_unary(channel, OIP + "ModelInfer", oip_request("echo", ("input", "input")))
    assert twice.status == "INVALID_ARGUMENT"
    assert twice.message == "input 'input' is given more than once"
    answer = rest(gateway, "/v2/models/echo/infer", rest_infer_body(("input", "input")))
    assert (answer.status, answer.message) == ("400", "input 'input' is given more than once")
    assert counted(gateway, before) == {
        ("echo", "grpc", "OK"): 1,
        ("echo", "grpc", "INVALID_ARGUMENT"): 1,
        ("echo", "rest", "INVALID_ARGUMENT"): 1,
    }


# -- grpc.health.v1 follows readiness -------------------------------------------------------
class ReadyWhenTold(EchoBackend):
    def __init__(self) -> None:
        super().__init__("flaky")
        self.is_ready = False
        self.fail = False

    async def ready(self) -> bool:
        if self.fail:
            raise RuntimeError(SECRET)
        return self.is_ready


@pytest.fixture
async def health() -> AsyncIterator[tuple[ReadyWhenTold, health_pb2_grpc.HealthStub]]:
    backend = ReadyWhenTold()
    router = Router({"flaky": backend}, [RouteConfig(model="identity", backend="flaky")])
    frontend = GrpcFrontend(InferenceService(router), 1 << 20, health_poll_s=0.01)
    port = frontend.add_port("127.0.0.1:0")
    await frontend.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            yield backend, health_pb2_grpc.HealthStub(ch)
    finally:
        await frontend.stop(0)


async def until(watch: AsyncIterator[health_pb2.HealthCheckResponse], status: int) -> None:
    """Read the Watch stream until it reports ``status`` (bounded: 5 s)."""

    async def read() -> None:
        async for reply in watch:
            if reply.status == status:
                return

    await asyncio.wait_for(read(), 5)


async def test_health_follows_backend_readiness(health) -> None:  # type: ignore[no-untyped-def]
    backend, stub = health
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    for service in ("", SERVICE_NAME):
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=service))
        await until(watch, not_serving)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == not_serving
        backend.is_ready = True
        await until(watch, serving)
        backend.fail = True  # a readiness check that raises: not serving, and still polled
        await until(watch, not_serving)
        backend.fail = False
        await until(watch, serving)
        backend.is_ready = False
        watch.cancel()
