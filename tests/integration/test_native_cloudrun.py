"""A Cloud Run route over h2c on the native plane: the gateway (``data_plane: native``) in
front of the local Cloud Run stand-in, whose instances are real container processes
(``infergw.deploy.cloudrun.server``). The container's own phases reach the client's trailer
and the metrics as on the Python plane, and its answers feed the warm-state estimate."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from infergw.deploy.local.cloudrun_standin import CloudRunStandIn
from infergw.gateway.core.config import parse_config
from infergw.gateway.lifecycle import ThreadedService
from infergw.proto import grpc_service_pb2 as pb
from infergw.vocab.timing import TimingEntry
from infergw.wire.server_timing import parse_server_timing
from tests.integration.conftest import GatewayThread, model_infer, scrape, wait_until

pytest.importorskip("infergw._native")
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def standin() -> Iterator[CloudRunStandIn]:
    run = ThreadedService(CloudRunStandIn(("identity",), concurrency=4, max_instances=1))
    try:
        yield run.service
    finally:
        run.close()


@pytest.fixture(scope="module")
def gateway(standin: CloudRunStandIn) -> Iterator[GatewayThread]:
    config = parse_config(
        {
            "listen": {"host": "127.0.0.1", "grpc_port": 0, "http_port": 0, "metrics_port": 0},
            "backends": {"run": {"kind": "cloudrun", "url": f"h2c://{standin.endpoint}"}},
            "models": {"identity": "run"},
            "data_plane": "native",
        }
    )
    gw = GatewayThread(config)
    try:
        yield gw
    finally:
        gw.close()


def infer(gw: GatewayThread, values: np.ndarray) -> dict[str, TimingEntry]:
    request = pb.ModelInferRequest(model_name="identity")
    request.inputs.add(name="input", datatype="FP32", shape=list(values.shape))
    request.raw_input_contents.append(values.tobytes())
    with grpc.insecure_channel(gw.grpc) as channel:
        response, call = model_infer(channel).with_call(request, timeout=60)
    got = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(values.shape)
    np.testing.assert_array_equal(got, values)
    timings = [value for key, value in call.trailing_metadata() if key == "server-timing"]
    assert len(timings) == 1  # the container's entries are in the gateway's, not beside it
    return {entry.name: entry for entry in parse_server_timing(str(timings[0]))}


def warm_state(gw: GatewayThread) -> dict[str, float]:
    return {
        estimate: value
        for (backend, estimate), value in scrape(
            gw.metrics, "infergw_warm_state", "backend", "estimate"
        ).items()
        if backend == "run"
    }


def test_a_cloud_run_route_is_native_and_reports_the_containers_phases(
    gateway: GatewayThread, standin: CloudRunStandIn
) -> None:
    front = gateway.gateway._native
    assert front is not None and front.routes.routes == {"identity": "run"}
    post = urllib.request.Request(standin.scale_to_zero_url(), method="POST")
    urllib.request.urlopen(post, timeout=30).close()  # the next request starts an instance

    cold = infer(gateway, np.arange(8, dtype=np.float32).reshape(2, 4))
    assert list(cold) == ["decode", "queue", "coldstart", "compute", "backend", "total"]
    assert cold["total"].description == "backend=run"
    assert cold["backend"].duration_ms > cold["coldstart"].duration_ms > 0
    warm = infer(gateway, np.ones((1, 4), np.float32))
    assert list(warm) == ["decode", "queue", "compute", "backend", "total"]

    phases = scrape(
        gateway.metrics, "infergw_phase_duration_seconds_count", "phase", "model", "status"
    )
    assert phases[("coldstart", "identity", "OK")] >= 1
    assert phases[("compute", "identity", "OK")] >= 2
    # The estimator saw both answers (within the plane's 0.1 s draining tick): an instance
    # is warm, and the cold start it learnt is the container's.
    wait_until(lambda: warm_state(gateway).get("warm_instances") == 1, "the warm state", 5)
    learnt = warm_state(gateway)["coldstart_seconds"]
    assert learnt == pytest.approx(cold["coldstart"].duration_ms / 1000, abs=1e-3)


def test_an_error_of_the_container_passes_through_with_the_gateways_trailer(
    gateway: GatewayThread,
) -> None:
    request = pb.ModelInferRequest(model_name="identity")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 1])  # identity's input is "input"
    request.raw_input_contents.append(b"\x00" * 4)
    with grpc.insecure_channel(gateway.grpc) as channel, pytest.raises(grpc.RpcError) as caught:
        model_infer(channel)(request, timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    trailers = dict(caught.value.trailing_metadata() or ())
    entries = {e.name: e for e in parse_server_timing(str(trailers["server-timing"]))}
    assert "backend" in entries  # the container judged it, not the plane's own checks
    assert entries["total"].description == ""  # no backend answered
