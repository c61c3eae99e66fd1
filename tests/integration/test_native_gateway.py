"""The gateway with ``data_plane: native``: the Rust plane owns the gRPC port, forwards a
plain Triton route itself, and passes everything else to the Python gateway behind it (a
Unix socket); ``INFERGW_NATIVE=0`` keeps the Python plane. Real Triton, unmodified
tritonclient."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tgrpc

from infergw.deploy.triton.launcher import TritonEndpoints
from infergw.gateway.core.config import GatewayConfig, parse_config
from infergw.wire.server_timing import parse_server_timing
from tests.integration.conftest import GatewayThread, model_infer, scrape

pytest.importorskip("infergw._native")
pytestmark = pytest.mark.integration


def native_config(triton: TritonEndpoints, idle_timeout_s: float = 75) -> GatewayConfig:
    return parse_config(
        {
            "listen": {
                "host": "127.0.0.1",
                "grpc_port": 0,
                "http_port": 0,
                "metrics_port": 0,
                "idle_timeout_s": idle_timeout_s,
            },
            "backends": {"triton": {"kind": "triton", "url": triton.grpc, "max_queue": 0}},
            "models": {"identity": "triton", "*": "triton"},  # "*": the lane's
            "data_plane": "native",
        }
    )


@pytest.fixture(scope="module")
def native_gateway(triton: TritonEndpoints) -> Iterator[GatewayThread]:
    gw = GatewayThread(native_config(triton))
    try:
        yield gw
    finally:
        gw.close()


def native_requests(metrics: str) -> dict[tuple[str, ...], float]:
    return scrape(metrics, "infergw_native_requests_total", "backend", "status")


def gateway_requests(metrics: str) -> dict[tuple[str, ...], float]:
    return scrape(metrics, "infergw_requests_total", "model", "backend", "protocol", "status")


def infer(client: tgrpc.InferenceServerClient, model: str, dtype: str) -> tgrpc.InferResult:
    array = np.arange(6, dtype=np.float32 if dtype == "FP32" else np.int64).reshape(1, 6)
    tensor = tgrpc.InferInput("input", [1, 6], dtype)
    tensor.set_data_from_numpy(array)
    result = client.infer(model, [tensor])
    np.testing.assert_array_equal(result.as_numpy("output"), array)
    return result


def test_a_triton_route_is_forwarded_natively_and_the_rest_by_the_lane(
    native_gateway: GatewayThread, triton: TritonEndpoints
) -> None:
    gw = native_gateway
    before = native_requests(gw.metrics)
    gateway_before = gateway_requests(gw.metrics)
    client = tgrpc.InferenceServerClient(gw.grpc)
    direct = tgrpc.InferenceServerClient(triton.grpc)
    try:
        native = infer(client, "identity", "FP32")
        assert (
            native.get_response().outputs
            == infer(direct, "identity", "FP32").get_response().outputs
        )
        infer(client, "identity_int64", "INT64")  # "*": the Python gateway's
        pinned = tgrpc.InferInput("input", [1, 2], "FP32")
        pinned.set_data_from_numpy(np.ones((1, 2), np.float32))
        client.infer("identity", [pinned], headers={"x-infergw-backend": "triton"})  # the lane's
        assert client.is_server_ready() and client.get_model_metadata("identity").name == "identity"
    finally:
        client.close()
        direct.close()
    after = native_requests(gw.metrics)

    def grew(key: tuple[str, ...]) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew(("triton", "0")) == 1  # the identity call, and nothing else
    assert grew(("python_lane", "0")) >= 4  # identity_int64, the pinned one, readiness, metadata
    # The gateway's own series count both planes' requests under the same labels.
    gateway_after = gateway_requests(gw.metrics)
    ok = ("identity", "triton", "grpc", "OK")
    assert gateway_after[ok] - gateway_before.get(ok, 0.0) == 2  # native + pinned (the lane)
    phases = scrape(gw.metrics, "infergw_phase_duration_seconds_count", "phase", "model", "status")
    assert {"decode", "queue", "backend", "total"} <= {
        phase for phase, model, status in phases if (model, status) == ("identity", "OK")
    }


def test_the_native_trailer_names_the_backend_and_the_lanes_pass_through(
    native_gateway: GatewayThread,
) -> None:
    import grpc

    from infergw.proto import grpc_service_pb2 as pb

    def call(model: str, dtype: str, raw: bytes) -> dict[str, object]:
        request = pb.ModelInferRequest(model_name=model)
        request.inputs.add(name="input", datatype=dtype, shape=[1, 4])
        request.raw_input_contents.append(raw)
        with grpc.insecure_channel(native_gateway.grpc) as channel:
            _, info = model_infer(channel).with_call(request, timeout=10)
        trailer = dict(info.trailing_metadata())["server-timing"]
        return {e.name: e for e in parse_server_timing(trailer)}

    native = call("identity", "FP32", np.ones(4, np.float32).tobytes())
    assert list(native) == ["decode", "queue", "backend", "total"]
    assert native["total"].description == "backend=triton"
    assert native["total"].duration_ms >= native["backend"].duration_ms > 0
    lane = call("identity_int64", "INT64", np.ones(4, np.int64).tobytes())
    assert {"decode", "encode"} <= set(lane)  # the Python gateway's own phases


def test_the_python_plane_is_kept_when_switched_off_and_stopping_leaves_nothing(
    triton: TritonEndpoints, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERGW_NATIVE", "0")
    gw = GatewayThread(native_config(triton))
    try:
        client = tgrpc.InferenceServerClient(gw.grpc)
        infer(client, "identity", "FP32")
        client.close()
        assert native_requests(gw.metrics) == {}  # no plane, no collector
    finally:
        gw.close()
    monkeypatch.delenv("INFERGW_NATIVE")
    gw = GatewayThread(native_config(triton))
    front = gw.gateway._native
    assert front is not None
    lane = Path(front.lane_path)
    assert lane.exists()
    host, port = gw.grpc.rsplit(":", 1)
    gw.close()
    assert not lane.parent.exists()  # the lane's socket and its folder are gone
    with pytest.raises(OSError), socket.create_connection((host, int(port)), timeout=2):
        pass  # nothing listens on the gRPC port any more


def test_calls_go_on_after_idle_connections_were_sent_goaway(triton: TritonEndpoints) -> None:
    # Idle past `idle_timeout_s`, the python lane's gRPC server sends the plane GOAWAY (and
    # the plane its client): the next calls must go on new connections on both hops. (The
    # plane also replaces a connection whose GOAWAY came with the socket left open, which
    # h2 keeps while a sender lives; grpc's idle GOAWAY here closes the socket, so this
    # test reaches that path only through the connection's end: upstream.rs's tests hold
    # a socket open after GOAWAY.)
    gw = GatewayThread(native_config(triton, idle_timeout_s=1))
    client = tgrpc.InferenceServerClient(gw.grpc)
    try:
        for _ in range(2):
            infer(client, "identity_int64", "INT64")  # the lane's
            infer(client, "identity", "FP32")  # native
            time.sleep(3)  # past the idle timeout on both hops (grpc's timer is coarse)
        infer(client, "identity_int64", "INT64")
        lane = native_requests(gw.metrics)
        assert lane.get(("python_lane", "0"), 0) >= 3, lane
        assert all(status == "0" for _, status in lane), lane
    finally:
        client.close()
        gw.close()
