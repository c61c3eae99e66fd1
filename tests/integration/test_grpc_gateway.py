"""Unmodified tritonclient.grpc through the gateway vs. straight to Triton."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from tritonclient.utils import InferenceServerException

from infergw.deploy.local.stack import local_config
from infergw.deploy.triton.launcher import TritonEndpoints
from infergw.gateway.core.config import LimitsConfig
from infergw.proto import grpc_service_pb2 as pb
from infergw.wire.server_timing import parse_server_timing
from tests.integration.conftest import GatewayThread, free_ports_config

pytestmark = pytest.mark.integration
INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def clients(
    gateway: GatewayThread, triton: TritonEndpoints
) -> Iterator[tuple[tgrpc.InferenceServerClient, tgrpc.InferenceServerClient]]:
    via = tgrpc.InferenceServerClient(gateway.grpc)
    direct = tgrpc.InferenceServerClient(triton.grpc)
    yield via, direct
    via.close()
    direct.close()


def infer_input(name: str, array: np.ndarray, datatype: str) -> tgrpc.InferInput:
    tensor = tgrpc.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def test_health_and_metadata_match_triton(clients) -> None:  # type: ignore[no-untyped-def]
    via, direct = clients
    assert via.is_server_live() and via.is_server_ready()
    assert via.is_model_ready("identity") and via.is_model_ready("minilm")
    assert not via.is_model_ready("no_such_model")
    for model in ("identity", "identity_int64", "minilm"):
        assert via.get_model_metadata(model) == direct.get_model_metadata(model)
    meta = via.get_server_metadata()
    assert meta.name == "infergw" and "binary_tensor_data" in meta.extensions


@pytest.mark.parametrize(
    ("model", "name", "array", "datatype"),
    [
        ("identity", "input", np.random.default_rng(0).random((3, 16), np.float32), "FP32"),
        ("identity_int64", "input", np.arange(-5, 7, dtype=np.int64).reshape(2, 6), "INT64"),
        ("minilm", "text", np.array([b"a cat sat on the mat", b"gateways"], np.object_), "BYTES"),
    ],
)
def test_infer_outputs_identical_to_direct(clients, model, name, array, datatype) -> None:  # type: ignore[no-untyped-def]
    via, direct = clients
    a = via.infer(model, [infer_input(name, array, datatype)])
    b = direct.infer(model, [infer_input(name, array, datatype)])
    out = a.get_response().outputs[0].name
    assert a.get_response().outputs == b.get_response().outputs
    np.testing.assert_array_equal(a.as_numpy(out), b.as_numpy(out))
    if model != "minilm":
        np.testing.assert_array_equal(a.as_numpy(out), array)


def test_server_timing_trailer_has_the_core_phases(gateway: GatewayThread) -> None:
    request = pb.ModelInferRequest(model_name="identity")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(np.ones(16, np.float32).tobytes())
    with grpc.insecure_channel(gateway.grpc) as channel:
        rpc = channel.unary_unary(
            INFER,
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        reply, call = rpc.with_call(request, timeout=10)
    assert np.frombuffer(reply.raw_output_contents[0], np.float32).tolist() == [1.0] * 16
    trailer = dict(call.trailing_metadata())["server-timing"]
    entries = {e.name: e for e in parse_server_timing(trailer)}
    assert gateway.grpc_phases("identity") <= set(entries)
    assert entries["backend"].description == "backend=triton;attempt=1"
    assert entries["total"].duration_ms >= entries["backend"].duration_ms > 0


def test_statistics_come_from_triton(clients) -> None:  # type: ignore[no-untyped-def]
    via, direct = clients
    before = via.get_inference_statistics("identity").model_stats[0].inference_count
    via.infer("identity", [infer_input("input", np.ones((1, 4), np.float32), "FP32")])
    after_via = via.get_inference_statistics("identity").model_stats[0]
    after_direct = direct.get_inference_statistics("identity").model_stats[0]
    assert after_via.inference_count == before + 1
    assert after_via.inference_stats.compute_infer.ns > 0
    assert after_direct.inference_count == after_via.inference_count


@pytest.mark.parametrize(
    ("inputs", "code", "message"),
    [
        ([("input", [1, 4], "FP32", b"\0" * 12)], "INVALID_ARGUMENT", "needs 16 bytes, got 12"),
        ([("input", [1, 1], "FLOAT7", b"\0" * 4)], "INVALID_ARGUMENT", "unsupported datatype"),
        ([("input", [-3, 1], "FP32", b"")], "INVALID_ARGUMENT", "negative dimension"),
        ([("input", [1 << 31, 1 << 31], "FP32", b"")], "INVALID_ARGUMENT", "too large"),
    ],
)
def test_bad_input_is_invalid_argument(gateway: GatewayThread, inputs, code, message) -> None:  # type: ignore[no-untyped-def]
    request = pb.ModelInferRequest(model_name="identity")
    for name, shape, datatype, data in inputs:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(data)
    err = _call_raw(gateway.grpc, request.SerializeToString())
    assert err.code().name == code
    assert message in err.details()
    assert "server-timing" in dict(err.trailing_metadata() or ())


def test_malformed_protobuf_is_invalid_argument(gateway: GatewayThread) -> None:
    err = _call_raw(gateway.grpc, b"\x0a\xff\xff\xff\xff\x0f")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed ModelInferRequest" in err.details()


def test_unknown_model_is_not_found_from_gateway(clients) -> None:  # type: ignore[no-untyped-def]
    via, _ = clients
    with pytest.raises(InferenceServerException) as info:
        via.infer("no_such_model", [infer_input("input", np.ones((1, 1), np.float32), "FP32")])
    assert info.value.status() == "StatusCode.NOT_FOUND"


def test_over_the_size_limit_names_the_limit(triton: TritonEndpoints) -> None:
    config = free_ports_config(triton).replace(limits=LimitsConfig(max_message_bytes=1 << 20))
    gw = GatewayThread(config)
    try:
        client = tgrpc.InferenceServerClient(gw.grpc)
        big = np.zeros((1, 300_000), np.float32)  # 1.2 MB
        with pytest.raises(InferenceServerException) as info:
            client.infer("identity", [infer_input("input", big, "FP32")])
        assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert "limit of 1048576 bytes" in info.value.message()
        small = np.zeros((1, 1000), np.float32)
        assert client.infer("identity", [infer_input("input", small, "FP32")]) is not None
        client.close()
    finally:
        gw.close()


def test_backend_down_is_unavailable_quickly() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    gw = GatewayThread(local_config(dead, {"grpc_port": 0, "http_port": 0, "metrics_port": 0}))
    try:
        client = tgrpc.InferenceServerClient(gw.grpc)
        with pytest.raises(InferenceServerException) as info:
            client.infer(
                "identity",
                [infer_input("input", np.ones((1, 1), np.float32), "FP32")],
                client_timeout=5.0,
            )
        assert info.value.status() == "StatusCode.UNAVAILABLE"
        assert "triton" in info.value.message()
        assert not client.is_server_ready()
        client.close()
    finally:
        gw.close()


def test_client_deadline_is_deadline_exceeded(clients) -> None:  # type: ignore[no-untyped-def]
    via, _ = clients
    texts = np.array([b"word " * 200] * 64, np.object_)  # seconds of CPU work for minilm
    with pytest.raises(InferenceServerException) as info:
        via.infer("minilm", [infer_input("text", texts, "BYTES")], client_timeout=0.05)
    assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert via.is_server_ready()  # the gateway keeps serving


def _call_raw(address: str, payload: bytes) -> grpc.RpcError:
    with grpc.insecure_channel(address) as channel:
        rpc = channel.unary_unary(INFER)
        with pytest.raises(grpc.RpcError) as info:
            rpc(payload, timeout=10)
    return info.value  # type: ignore[return-value]


def test_grpc_health_follows_backends_and_reflection_lists_services(gateway: GatewayThread) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(gateway.grpc) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="inference.GRPCInferenceService"
            ),
        ]
        replies = list(stub.ServerReflectionInfo(iter(requests), timeout=5))
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names
    files = replies[1].file_descriptor_response.file_descriptor_proto
    assert files and b"ModelInfer" in files[0]
