"""TF Serving's own client stubs against the gateway's PredictionService, in front of Triton.

Outputs must be identical to the OIP path (tritonclient.grpc on the same gateway).
Then the ``tfserving`` backend kind: a second gateway whose backend is the first
gateway's TF Serving frontend (gateway -> gateway -> Triton) gives the same outputs,
both when a TF client's Predict bytes are forwarded and when an OIP request is
converted. Needs the ``tfserving`` extra (tensorflow-serving-api, i.e. TensorFlow);
TensorFlow is imported here only, never by the gateway.
"""

from __future__ import annotations

import os
import socket
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from tritonclient.utils import InferenceServerException

from infergw.backends.tfserving import TfServingBackend
from infergw.gateway.core.config import parse_config
from infergw.gateway.core.context import RequestContext
from infergw.vocab.datatypes import tensor_from_numpy
from infergw.vocab.errors import Unavailable
from infergw.vocab.types import InferRequest
from infergw.wire.server_timing import parse_server_timing
from tests.integration.conftest import GatewayThread

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
pytest.importorskip(
    "tensorflow_serving.apis.prediction_service_pb2_grpc",
    reason="TF Serving client stubs not installed (pip install 'infergw[tfserving]')",
)
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

pytestmark = pytest.mark.integration

CASES = [
    ("identity", "input", "output", np.random.default_rng(0).random((3, 16), np.float32)),
    ("identity_int64", "input", "output", np.arange(-5, 7, dtype=np.int64).reshape(2, 6)),
    ("minilm", "text", "embedding", np.array([b"a cat sat on the mat", b"gateways"], np.object_)),
]
OIP_DATATYPE = {"float32": "FP32", "int64": "INT64", "object": "BYTES"}


def predict_request(model: str, inputs: dict[str, Any], **spec: Any) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    for key, value in spec.items():
        setattr(request.model_spec, key, value)
    for name, value in inputs.items():  # arrays, or TensorProtos (passed through as is)
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


def oip_infer(client: tgrpc.InferenceServerClient, model: str, name: str, array: np.ndarray) -> Any:
    tensor = tgrpc.InferInput(name, list(array.shape), OIP_DATATYPE[array.dtype.name])
    tensor.set_data_from_numpy(array)
    return client.infer(model, [tensor])


@pytest.fixture(scope="module")
def channel(gateway: GatewayThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(gateway.grpc) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def oip(gateway: GatewayThread) -> Iterator[tgrpc.InferenceServerClient]:
    client = tgrpc.InferenceServerClient(gateway.grpc)
    yield client
    client.close()


@pytest.fixture(scope="module")
def chained(gateway: GatewayThread) -> Iterator[GatewayThread]:
    """A second gateway whose only backend is the first gateway's TF Serving frontend."""
    config = parse_config(
        {
            "listen": {"host": "127.0.0.1", "grpc_port": 0, "http_port": 0, "metrics_port": 0},
            "backends": {"tfs": {"kind": "tfserving", "url": gateway.grpc}},
            "models": {"*": {"backend": "tfs"}},
        }
    )
    gw = GatewayThread(config)
    try:
        yield gw
    finally:
        gw.close()


# -- the frontend ------------------------------------------------------------------------
@pytest.mark.parametrize(("model", "name", "out", "array"), CASES)
def test_predict_identical_to_oip_path(stub, oip, model, name, out, array) -> None:  # type: ignore[no-untyped-def]
    reply, call = stub.Predict.with_call(predict_request(model, {name: array}), timeout=30)
    got = tf.make_ndarray(reply.outputs[out])
    expected = oip_infer(oip, model, name, array).as_numpy(out)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    if model != "minilm":
        np.testing.assert_array_equal(got, array)
    assert reply.model_spec.name == model
    timing = {e.name for e in parse_server_timing(dict(call.trailing_metadata())["server-timing"])}
    assert {"total", "decode", "queue", "backend", "encode"} <= timing


def test_typed_fields_and_one_value_filling_the_shape(stub) -> None:  # type: ignore[no-untyped-def]
    scalar = tf.make_tensor_proto(1.5, dtype=tf.float32, shape=[2, 3])
    assert len(scalar.float_val) == 1 and not scalar.tensor_content
    reply = stub.Predict(predict_request("identity", {"input": scalar}), timeout=30)
    np.testing.assert_array_equal(tf.make_ndarray(reply.outputs["output"]), np.full((2, 3), 1.5))
    typed = predict_request("identity_int64", {})
    typed.inputs["input"].dtype = tf.int64.as_datatype_enum
    typed.inputs["input"].tensor_shape.dim.add(size=1)
    typed.inputs["input"].tensor_shape.dim.add(size=3)
    typed.inputs["input"].int64_val.extend([7, -8, 2**40])
    reply = stub.Predict(typed, timeout=30)
    assert tf.make_ndarray(reply.outputs["output"]).tolist() == [[7, -8, 2**40]]


def test_output_filter_and_version(stub) -> None:  # type: ignore[no-untyped-def]
    request = predict_request("identity", {"input": np.ones((1, 2), np.float32)})
    request.model_spec.version.value = 1
    request.output_filter.append("output")
    reply = stub.Predict(request, timeout=30)
    assert list(reply.outputs) == ["output"] and reply.model_spec.version.value == 1
    request.output_filter[0] = "no_such_output"
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("model", "inputs", "outputs"),
    [
        ("identity", {"input": ("DT_FLOAT", [-1, -1])}, {"output": ("DT_FLOAT", [-1, -1])}),
        ("minilm", {"text": ("DT_STRING", [-1])}, {"embedding": ("DT_FLOAT", [-1, 384])}),
    ],
)
def test_get_model_metadata_signature(stub, model, inputs, outputs) -> None:  # type: ignore[no-untyped-def]
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = model
    reply = stub.GetModelMetadata(request, timeout=10)
    assert reply.model_spec.name == model and reply.model_spec.version.value == 1
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    assert reply.metadata["signature_def"].Unpack(sig_map)
    sig = sig_map.signature_def["serving_default"]
    assert sig.method_name == "tensorflow/serving/predict"

    def described(infos: Any) -> dict[str, tuple[str, list[int]]]:
        return {
            k: (_dt_name(v.dtype), [d.size for d in v.tensor_shape.dim]) for k, v in infos.items()
        }

    assert described(sig.inputs) == inputs and described(sig.outputs) == outputs


def _dt_name(dtype: int) -> str:
    from tensorflow.core.framework import types_pb2

    return types_pb2.DataType.Name(dtype)


def _error(rpc: Any, request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        rpc(request, timeout=10)
    return info.value  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("request_factory", "code", "message"),
    [
        (
            lambda: predict_request("no_such_model", {"input": np.ones((1, 1), np.float32)}),
            "NOT_FOUND",
            "",
        ),
        (
            lambda: predict_request("identity", {"input": np.ones((1, 2), np.complex64)}),
            "INVALID_ARGUMENT",
            "unsupported dtype DT_COMPLEX64",
        ),
        (
            lambda: predict_request(
                "identity", {"input": np.ones((1, 2), np.float32)}, signature_name="other"
            ),
            "INVALID_ARGUMENT",
            "signature 'other' not found",
        ),
    ],
)
def test_predict_errors(stub, request_factory, code, message) -> None:  # type: ignore[no-untyped-def]
    err = _error(stub.Predict, request_factory())
    assert err.code().name == code and message in (err.details() or "")
    assert "server-timing" in dict(err.trailing_metadata() or ())


def test_other_errors(stub, channel) -> None:  # type: ignore[no-untyped-def]
    raw = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
    err = _error(raw, b"\x0a\xff\xff\xff\xff\x0f")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "malformed" in err.details()
    empty = get_model_metadata_pb2.GetModelMetadataRequest()
    empty.model_spec.name = "identity"
    assert _error(stub.GetModelMetadata, empty).code() == grpc.StatusCode.INVALID_ARGUMENT
    missing = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    missing.model_spec.name = "no_such_model"
    assert _error(stub.GetModelMetadata, missing).code() == grpc.StatusCode.NOT_FOUND
    classify = channel.unary_unary("/tensorflow.serving.PredictionService/Classify")
    assert _error(classify, b"").code() == grpc.StatusCode.UNIMPLEMENTED


def test_metrics_carry_the_tfserving_protocol(stub, gateway: GatewayThread) -> None:  # type: ignore[no-untyped-def]
    stub.Predict(predict_request("identity", {"input": np.ones((1, 1), np.float32)}), timeout=30)
    with urllib.request.urlopen(f"http://{gateway.metrics}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert 'protocol="tfserving"' in text


# -- the tfserving backend kind (gateway -> gateway's TF Serving frontend -> Triton) -----
@pytest.mark.parametrize(("model", "name", "out", "array"), CASES)
def test_backend_kind_gives_the_same_outputs(chained, oip, model, name, out, array) -> None:  # type: ignore[no-untyped-def]
    expected = oip_infer(oip, model, name, array)
    # A TF client through both gateways: its Predict bytes are forwarded unchanged.
    with grpc.insecure_channel(chained.grpc) as ch:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        reply, call = stub.Predict.with_call(predict_request(model, {name: array}), timeout=30)
    np.testing.assert_array_equal(tf.make_ndarray(reply.outputs[out]), expected.as_numpy(out))
    entries = {
        e.name: e for e in parse_server_timing(dict(call.trailing_metadata())["server-timing"])
    }
    assert entries["backend"].description == "backend=tfs;attempt=1"
    # An OIP client through both gateways: converted to a PredictRequest and back.
    client = tgrpc.InferenceServerClient(chained.grpc)
    try:
        got = oip_infer(client, model, name, array)
        assert got.get_response().outputs == expected.get_response().outputs
        np.testing.assert_array_equal(got.as_numpy(out), expected.as_numpy(out))
    finally:
        client.close()


def test_backend_kind_metadata_readiness_and_errors(chained, oip) -> None:  # type: ignore[no-untyped-def]
    client = tgrpc.InferenceServerClient(chained.grpc)
    try:
        assert client.is_server_ready()
        assert client.is_model_ready("minilm") and not client.is_model_ready("no_such_model")
        meta, direct = client.get_model_metadata("minilm"), oip.get_model_metadata("minilm")
        assert meta.inputs == direct.inputs and meta.outputs == direct.outputs
        with pytest.raises(InferenceServerException) as info:
            oip_infer(client, "no_such_model", "input", np.ones((1, 1), np.float32))
        assert info.value.status() == "StatusCode.NOT_FOUND"
    finally:
        client.close()


async def test_backend_kind_upstream_down_is_unavailable() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    backend = TfServingBackend.from_config("tfs", {"url": dead})
    try:
        assert not await backend.ready()
        request = InferRequest("identity", (tensor_from_numpy("input", np.ones((1, 1))),))
        ctx = RequestContext("test")
        ctx.with_timeout(5.0)
        with pytest.raises(Unavailable, match="backend 'tfs' is unavailable"):
            await backend.infer(request, ctx)
    finally:
        await backend.close()


def test_reflection_lists_the_tf_serving_service(gateway) -> None:  # type: ignore[no-untyped-def]
    import grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(gateway.grpc) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = stub.ServerReflectionInfo(iter([request]), timeout=5)
    names = {s.name for s in reply.list_services_response.service}
    assert {"tensorflow.serving.PredictionService", "inference.GRPCInferenceService"} <= names


@pytest.fixture(scope="module")
def tfs_sidecar(gateway: GatewayThread) -> Iterator[Any]:
    """``infergw sidecar --protocol tfserving`` in front of the gateway's TF Serving frontend."""
    from infergw.gateway.sidecar.app import Sidecar, SidecarConfig
    from tests.integration.conftest import ServiceThread

    ports = {"host": "127.0.0.1", "grpc_port": 0, "http_port": 0, "metrics_port": 0}
    side = ServiceThread(
        Sidecar(SidecarConfig(upstream=gateway.grpc, protocol="tfserving", **ports))
    )
    try:
        yield side
    finally:
        side.close()


@pytest.mark.parametrize(("model", "name", "out", "array"), CASES)
def test_predict_through_a_sidecar_matches_the_gateway(
    tfs_sidecar, stub, model, name, out, array
) -> None:  # type: ignore[no-untyped-def]
    request = predict_request(model, {name: array})
    with grpc.insecure_channel(tfs_sidecar.grpc) as channel:
        via = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        reply, call = via.Predict.with_call(request, timeout=30)
    direct = stub.Predict(request, timeout=30)
    np.testing.assert_array_equal(
        tf.make_ndarray(reply.outputs[out]), tf.make_ndarray(direct.outputs[out])
    )
    trailer = [v for k, v in call.trailing_metadata() if k == "server-timing"]
    assert len(trailer) == 2  # the gateway's split, then the sidecar's own entries
