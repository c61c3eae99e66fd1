"""SIGTERM drains `infergw serve` (issue 9, item 5): the installed command, a real config,
a slow OIP gRPC backend on 127.0.0.1 standing in for Triton.

After SIGTERM the gateway reports not ready (REST 503, grpc.health.v1 NOT_SERVING) for
``drain_delay_s`` while still serving, then stops accepting; gRPC and REST calls in
flight finish within ``drain_grace_s``, one past it is cancelled, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from infergw.gateway.sidecar.app import Sidecar, SidecarConfig
from infergw.proto import grpc_service_pb2 as pb
from tests.integration.conftest import wait_until
from tests.integration.test_serve_cli import FREE_PORTS, SERVING, TIMEOUT_S, serve

pytestmark = pytest.mark.integration

SLOW_S = 2.5  # how long "slow" takes in the backend: beyond the delay, within delay + grace
DRAIN_DELAY_S = 1.0
DRAIN_GRACE_S = 3.0
WAIT_S = 10.0  # bound on every wait for a state change

CONFIG = """\
listen: {{host: 127.0.0.1, drain_delay_s: {delay}, drain_grace_s: {grace}}}
backends:
  slow: {{kind: triton, url: "127.0.0.1:{port}", timeout_ms: 60000}}
models:
  "*": slow
"""


class SlowTriton:
    """ServerReady/ModelReady true; ModelInfer of "slow" takes SLOW_S, "stuck" never ends.

    ``arrived`` counts ModelInfer calls that reached it, so the test waits on that
    instead of sleeping; ``release`` ends the stuck ones when the test is done.
    """

    def __init__(self) -> None:
        self.arrived = 0
        self.cond = threading.Condition()
        self.release = threading.Event()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
        methods: dict[str, Callable[[bytes, grpc.ServicerContext], bytes]] = {
            "ServerReady": lambda _, __: pb.ServerReadyResponse(ready=True).SerializeToString(),
            "ModelReady": lambda _, __: pb.ModelReadyResponse(ready=True).SerializeToString(),
            "ModelInfer": self._infer,
        }
        handlers = {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in methods.items()}
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("inference.GRPCInferenceService", handlers),)
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def _infer(self, payload: bytes, context: grpc.ServicerContext) -> bytes:
        request = pb.ModelInferRequest.FromString(payload)
        with self.cond:
            self.arrived += 1
            self.cond.notify_all()
        if request.model_name == "slow":
            time.sleep(SLOW_S)  # the slow model being simulated
        else:
            self.release.wait(TIMEOUT_S)
        reply = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
        reply.outputs.add(name="output", datatype="FP32", shape=[1])
        reply.raw_output_contents.append(np.array([7], np.float32).tobytes())
        return reply.SerializeToString()

    def wait_arrived(self, n: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: self.arrived >= n, WAIT_S), self.arrived


@pytest.fixture
def backend() -> Iterator[SlowTriton]:
    fake = SlowTriton()
    fake.server.start()
    try:
        yield fake
    finally:
        fake.release.set()
        fake.server.stop(0)


class Call(threading.Thread):
    """One blocking call in a thread: its outcome and when it came back."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None
        self.ended = 0.0
        self.start()

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # the outcome under test
            self.error = exc
        self.ended = time.monotonic()


def grpc_infer(address: str, model: str) -> Callable[[], Any]:
    def call() -> Any:
        client = tgrpc.InferenceServerClient(address)
        try:
            tensor = tgrpc.InferInput("input", [1], "FP32")
            tensor.set_data_from_numpy(np.array([1], np.float32))
            return client.infer(model, [tensor], client_timeout=TIMEOUT_S).as_numpy("output")
        finally:
            client.close()

    return call


def rest_infer(address: str, model: str) -> Callable[[], Any]:
    body = {"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": [1.0]}]}

    def call() -> Any:
        request = urllib.request.Request(
            f"http://{address}/v2/models/{model}/infer",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as reply:
            return json.loads(reply.read())["outputs"][0]["data"]

    return call


def rest_ready(address: str) -> int:
    try:
        with urllib.request.urlopen(f"http://{address}/v2/health/ready", timeout=5) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def health_status(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status)


def until(predicate: Callable[[], bool], what: str) -> float:
    """``predicate`` polled until it holds (bounded by WAIT_S); the time it first held."""
    return wait_until(predicate, what, WAIT_S)


def refuses_connections(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) != 0


def grpc_refuses(address: str) -> bool:
    try:
        health_status(address)
    except grpc.RpcError as exc:
        return exc.code() == grpc.StatusCode.UNAVAILABLE
    return False


def test_sigterm_drains_in_flight_grpc_and_rest_calls_then_cancels_and_exits_0(
    tmp_path: Path, backend: SlowTriton
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG.format(delay=DRAIN_DELAY_S, grace=DRAIN_GRACE_S, port=backend.port))
    stderr = tmp_path / "stderr.log"
    with serve("--config", config, *FREE_PORTS, stderr=stderr) as (group, lines):
        line = lines.get(timeout=TIMEOUT_S)
        assert line.startswith(SERVING), line + stderr.read_text()
        addresses = json.loads(line.removeprefix(SERVING))
        grpc_at, http_at = addresses["grpc"], addresses["http"]
        assert rest_ready(http_at) == 200
        calls = ((grpc_infer, grpc_at), (rest_infer, http_at))
        until(lambda: health_status(grpc_at) == health_pb2.HealthCheckResponse.SERVING, "SERVING")

        slow = [Call(infer(at, "slow")) for infer, at in calls * 2]
        stuck = [Call(infer(at, "stuck")) for infer, at in calls]
        backend.wait_arrived(6)  # all six are in flight in the backend

        sigterm = time.monotonic()
        group.send_signal(signal.SIGTERM)
        # Not ready at once, while still answering (new connections too) during the delay.
        until(lambda: rest_ready(http_at) == 503, "503 on /v2/health/ready")
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        until(lambda: health_status(grpc_at) == not_serving, "NOT_SERVING")
        assert time.monotonic() - sigterm < DRAIN_DELAY_S
        # Then neither port takes anything new.
        stopped = until(lambda: refuses_connections(http_at), "refusing REST connections")
        until(lambda: grpc_refuses(grpc_at), "refusing gRPC calls")
        assert stopped - sigterm >= DRAIN_DELAY_S * 0.9

        exit_code = group.wait(TIMEOUT_S)
        exited = time.monotonic()
        for call in slow + stuck:
            call.join(WAIT_S)
        assert exit_code == 0, stderr.read_text()

    for call in slow:  # finished after the ports closed, within the grace: answered
        assert call.error is None, repr(call.error)
        assert np.asarray(call.result).ravel().tolist() == [7.0]
        assert call.ended - sigterm > DRAIN_DELAY_S
    for call in stuck:  # still running when the grace ran out: cancelled
        assert call.error is not None, call.result
        assert call.ended - sigterm >= (DRAIN_DELAY_S + DRAIN_GRACE_S) * 0.9
    assert exited - sigterm < DRAIN_DELAY_S + DRAIN_GRACE_S + 5.0
    log = stderr.read_text()
    assert "Traceback" not in log, log
    assert "draining" in log


async def test_the_sidecar_lets_an_in_flight_call_finish_within_its_grace(
    backend: SlowTriton,
) -> None:
    """The sidecar cut calls after a hard 1 s too: a SLOW_S call now finishes on stop."""
    config = SidecarConfig(
        upstream=f"127.0.0.1:{backend.port}",
        host="127.0.0.1",
        grpc_port=0,
        http_port=0,
        metrics_port=0,
        drain_grace_s=DRAIN_GRACE_S + SLOW_S,
    )
    request = pb.ModelInferRequest(model_name="slow")
    async with (
        Sidecar(config) as sidecar,
        grpc.aio.insecure_channel(sidecar.addresses["grpc"]) as channel,
    ):
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        call = asyncio.ensure_future(infer(request, timeout=TIMEOUT_S))
        await asyncio.to_thread(backend.wait_arrived, 1)
        started = time.monotonic()
        await sidecar.stop()  # returns once the call is done: within the grace
        reply = await call
        assert reply.model_name == "slow" and len(reply.raw_output_contents) == 1
        assert time.monotonic() - started < DRAIN_GRACE_S + SLOW_S


def test_a_second_sigterm_cuts_the_drain_short(tmp_path: Path, backend: SlowTriton) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG.format(delay=0, grace=60, port=backend.port))
    stderr = tmp_path / "stderr.log"
    with serve("--config", config, *FREE_PORTS, stderr=stderr) as (group, lines):
        line = lines.get(timeout=TIMEOUT_S)
        assert line.startswith(SERVING), line + stderr.read_text()
        addresses = json.loads(line.removeprefix(SERVING))
        stuck = [
            Call(grpc_infer(addresses["grpc"], "stuck")),
            Call(rest_infer(addresses["http"], "stuck")),
        ]
        backend.wait_arrived(2)
        group.send_signal(signal.SIGTERM)
        until(lambda: refuses_connections(addresses["http"]), "draining")  # the 60 s grace began
        second = time.monotonic()
        group.send_signal(signal.SIGTERM)
        exit_code = group.wait(WAIT_S)  # far less than the grace
        for call in stuck:
            call.join(WAIT_S)
            assert call.error is not None and call.ended - second < WAIT_S
        assert exit_code == 0, stderr.read_text()
    log = stderr.read_text()
    assert "second signal" in log and "Traceback" not in log, log
