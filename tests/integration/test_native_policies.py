"""Route policies on the native plane (docs/native.md, Route policies): weighted, fallback
and spill-over among native backends, spill-over to the python lane, with the real
tritonserver, real gRPC servers as dead, refusing and lane backends, and the real gateway.

Which backend answered, and why, is read where a client reads it: the ``backend`` entries
of the ``server-timing`` trailer (``backend=NAME;attempt=N;reason=...``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from infergw.deploy.triton.launcher import TritonEndpoints
from infergw.gateway.core.config import parse_config
from infergw.gateway.core.routing.weighted import _score
from infergw.gateway.native_plane import NativeBackend, NativeConfig, NativePlane, NativePolicy
from infergw.proto import grpc_service_pb2 as pb
from infergw.wire import grpc_channel
from tests.integration.conftest import GatewayThread, scrape

pytest.importorskip("infergw._native", reason="the native extension is not built")
pytestmark = pytest.mark.integration

INFER = "/inference.GRPCInferenceService/ModelInfer"
ATTEMPT = re.compile(r'backend;dur=[0-9.]+;desc="backend=([^;"]+);attempt=(\d+)(?:;reason=(\w+))?"')
TOTAL = re.compile(r'total;dur=[0-9.]+(?:;desc="backend=([^"]+)")?')


def dead_address() -> str:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def request(request_id: str = "", values: int = 4) -> bytes:
    message = pb.ModelInferRequest(model_name="identity", id=request_id)
    message.inputs.add(name="input", datatype="FP32", shape=[1, values])
    message.raw_input_contents.append(np.arange(values, dtype=np.float32).tobytes())
    return message.SerializeToString()


class Client:
    """Raw OIP gRPC on one channel: the reply, the attempts and the answering backend its
    trailer names."""

    def __init__(self, address: str) -> None:
        self.channel = grpc_channel.sync_channel(address, private=True)
        self.infer = self.channel.unary_unary(INFER)

    def call(self, payload: bytes) -> tuple[pb.ModelInferResponse, list[tuple[str, int, str]]]:
        reply, rpc = self.infer.with_call(payload, timeout=30)
        return pb.ModelInferResponse.FromString(reply), attempts(rpc)

    def close(self) -> None:
        self.channel.close()


def timing(rpc: Any) -> str:
    return str(dict(rpc.trailing_metadata() or ()).get("server-timing", ""))


def attempts(rpc: Any) -> list[tuple[str, int, str]]:
    return [(b, int(n), r or "") for b, n, r in ATTEMPT.findall(timing(rpc))]


def answered(rpc: Any) -> str | None:
    found = TOTAL.findall(timing(rpc))
    return found[-1] or None if found else None


def outputs(reply: pb.ModelInferResponse) -> list[float]:
    return np.frombuffer(reply.raw_output_contents[0], np.float32).tolist()


class Refusing(grpc.GenericRpcHandler):
    """A real gRPC backend that reads each request and refuses it with ``code`` (a
    trailers-only answer, as Triton's errors are), counting what it saw."""

    def __init__(self, code: grpc.StatusCode, trailers: tuple[tuple[str, str], ...] = ()) -> None:
        self.code = code
        self.trailers = trailers
        self.seen: list[int] = []

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        def refuse(payload: bytes, context: grpc.ServicerContext) -> bytes:
            self.seen.append(len(payload))
            context.set_trailing_metadata(self.trailers)
            context.abort(self.code, f"refused with {self.code.name}")

        return grpc.unary_unary_rpc_method_handler(refuse)


class FakeLane(grpc.GenericRpcHandler):
    """A real gRPC server standing for the python lane: it answers ModelInfer after
    ``delay_s`` with the gateway's own trailer for a request pinned to ``x-infergw-backend``
    (a pinned request goes to that backend's stack: no reason in its entries)."""

    def __init__(self, delay_s: float = 0.002) -> None:
        self.delay_s = delay_s
        self.pins: list[str | None] = []
        self.lock = threading.Lock()

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        def answer(payload: bytes, context: grpc.ServicerContext) -> bytes:
            pin = dict(context.invocation_metadata()).get("x-infergw-backend")
            with self.lock:
                self.pins.append(pin if isinstance(pin, str) else None)
            time.sleep(self.delay_s)
            name = pin or "lane"
            context.set_trailing_metadata(
                (
                    (
                        "server-timing",
                        f'decode;dur=0.050, queue;dur=0.010;desc="backend={name}", '
                        f'backend;dur=2.000;desc="backend={name};attempt=1", '
                        f'encode;dur=0.010, total;dur=2.100;desc="backend={name}"',
                    ),
                ),
            )
            request = pb.ModelInferRequest.FromString(payload)
            reply = pb.ModelInferResponse(model_name=request.model_name, id="lane")
            reply.raw_output_contents.extend(request.raw_input_contents)
            return reply.SerializeToString()

        return grpc.unary_unary_rpc_method_handler(answer)


@contextlib.contextmanager
def serve(handler: grpc.GenericRpcHandler) -> Iterator[str]:
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


@contextlib.contextmanager
def plane(
    backends: dict[str, NativeBackend], route: str | NativePolicy, lane: str | None = None
) -> Iterator[tuple[NativePlane, Client]]:
    config = NativeConfig(python_lane=lane, backends=backends, routes={"identity": route})
    with NativePlane(config) as running:
        client = Client(running.address)
        try:
            yield running, client
        finally:
            client.close()


def decisions(running: NativePlane) -> dict[str, dict[str, int]]:
    return dict(running.stats()["models"]["identity"]["decisions"])


def ok_by_backend(running: NativePlane) -> dict[str, int]:
    backends = running.stats()["models"]["identity"]["backends"]
    return {name: int(outcomes.get(0, {}).get("count", 0)) for name, outcomes in backends.items()}


def test_weighted_splits_as_the_gateway_does_and_sticks_to_the_request_id(
    triton: TritonEndpoints,
) -> None:
    weights = {"a": 80, "b": 20}
    policy = NativePolicy("weighted", ("a", "b"), (80, 20))
    backends = {"a": NativeBackend(triton.grpc), "b": NativeBackend(triton.grpc)}
    with plane(backends, policy) as (running, client):
        answered_by: Counter[str] = Counter()
        for i in range(600):
            reply, tried = client.call(request(f"req-{i}"))
            assert outputs(reply) == [0, 1, 2, 3]
            ((backend, attempt, reason),) = tried
            assert (attempt, reason) == (1, "")  # a route's first choice names no reason
            # The very member the gateway's Weighted.choose picks for this id.
            expected = max(weights, key=lambda m: _score(f"req-{i}", m, weights[m]))
            assert backend == expected, i
            answered_by[backend] += 1
        assert 0.74 <= answered_by["a"] / 600 <= 0.86, answered_by
        without_id: Counter[str] = Counter(client.call(request())[1][0][0] for _ in range(400))
        assert 0.72 <= without_id["a"] / 400 <= 0.88, without_id
        total = answered_by + without_id
        assert decisions(running) == {n: {"weighted": total[n]} for n in ("a", "b")}
        assert ok_by_backend(running) == {"a": total["a"], "b": total["b"]}


def test_fallback_moves_on_from_a_dead_backend_resending_the_whole_request(
    triton: TritonEndpoints,
) -> None:
    policy = NativePolicy("fallback", ("dead", "triton"))
    backends = {"dead": NativeBackend(dead_address()), "triton": NativeBackend(triton.grpc)}
    with plane(backends, policy) as (running, client):
        for values in (4, 262_144):  # a tiny request and a 1 MiB one (many chunks)
            reply, tried = client.call(request("r", values))
            assert outputs(reply) == list(range(values))
            assert tried == [("dead", 1, ""), ("triton", 2, "fallback")]
        assert decisions(running) == {"dead": {"primary": 2}, "triton": {"fallback": 2}}
        assert ok_by_backend(running) == {"triton": 2}
        stats = running.stats()["backends"]
        assert stats["dead"]["requests"] == {14: 2} and stats["triton"]["requests"] == {0: 2}


@pytest.mark.parametrize(
    ("code", "trailers", "moves_on"),
    [
        (grpc.StatusCode.UNAVAILABLE, (), True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, (("retry-after", "1"),), True),
        (grpc.StatusCode.INVALID_ARGUMENT, (), False),  # the client's own: never moved on
        (grpc.StatusCode.INTERNAL, (), False),  # a fault: the request may be what fails
    ],
    ids=["unavailable", "throttled", "invalid", "internal"],
)
def test_fallback_moves_on_for_what_the_gateway_moves_on_for(
    triton: TritonEndpoints,
    code: grpc.StatusCode,
    trailers: tuple[tuple[str, str], ...],
    moves_on: bool,
) -> None:
    refusing = Refusing(code, trailers)
    with serve(refusing) as address:
        policy = NativePolicy("fallback", ("first", "triton"))
        backends = {"first": NativeBackend(address), "triton": NativeBackend(triton.grpc)}
        with plane(backends, policy) as (_, client):
            payload = request("r", 4096)
            if moves_on:
                reply, tried = client.call(payload)
                assert outputs(reply) == list(range(4096))
                assert tried == [("first", 1, ""), ("triton", 2, "fallback")]
            else:
                with pytest.raises(grpc.RpcError) as failed:
                    client.call(payload)
                assert failed.value.code() == code
                assert attempts(failed.value) == [("first", 1, "")]
                assert answered(failed.value) is None  # total names no backend on an error
    assert refusing.seen == [len(payload)]  # the first backend had the whole message


def burst(client: Client, n: int, threads: int = 16) -> list[list[tuple[str, int, str]]]:
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return [tried for _, tried in pool.map(lambda _: client.call(request()), range(n))]


def test_spillover_overflows_a_burst_natively_and_returns_to_the_primary(
    triton: TritonEndpoints,
) -> None:
    policy = NativePolicy("spillover", ("triton", "other"), max_queue_wait_ms=1)
    backends = {
        "triton": NativeBackend(triton.grpc, max_concurrency=1),
        "other": NativeBackend(triton.grpc),
    }
    with plane(backends, policy) as (running, client):
        for _ in range(30):  # the primary's service time is known before the burst
            assert client.call(request())[1] == [("triton", 1, "")]
        tried = burst(client, 400)
        served = Counter(t[-1][0] for t in tried)
        assert served["other"] > 0 and served["triton"] > 0, served
        assert all(t == [("other", 1, "spill")] for t in tried if t[-1][0] == "other")
        after = [client.call(request())[1] for _ in range(30)]  # the burst is over
        assert all(t == [("triton", 1, "")] for t in after), after
        counted = decisions(running)
        assert counted["other"] == {"spill": served["other"]}
        assert counted["triton"] == {"primary": 60 + served["triton"]}


def test_spillover_to_the_lane_pins_the_overflow_backend_and_counts_once(
    triton: TritonEndpoints,
) -> None:
    lane = FakeLane()
    with serve(lane) as lane_address:
        policy = NativePolicy(
            "spillover", ("triton", "lam"), max_queue_wait_ms=1, lane=frozenset({"lam"})
        )
        backends = {"triton": NativeBackend(triton.grpc, max_concurrency=1)}
        with plane(backends, policy, lane=lane_address) as (running, client):
            for _ in range(30):
                assert client.call(request())[1] == [("triton", 1, "")]
            tried = burst(client, 300)
            to_lane = [t for t in tried if t[-1][0] == "lam"]
            assert to_lane and len(to_lane) < 300, len(to_lane)
            # The lane's entries name the spill, as the gateway's spill-over writes them.
            assert all(t == [("lam", 1, "spill")] for t in to_lane)
            assert lane.pins == ["lam"] * len(to_lane)  # every one pinned: not routed again
            counted = decisions(running)
            assert counted["lam"] == {"spill": len(to_lane)}
            # The plane's series count only what it served: the lane counts its own.
            assert ok_by_backend(running) == {"triton": 330 - len(to_lane)}


def gateway(
    triton: TritonEndpoints, models: dict[str, Any], backends: dict[str, Any] | None = None
) -> GatewayThread:
    listen = {"host": "127.0.0.1", "grpc_port": 0, "http_port": 0, "metrics_port": 0}
    default = {
        "triton": {"kind": "triton", "url": triton.grpc},
        "triton2": {"kind": "triton", "url": triton.grpc},
        "dead": {"kind": "triton", "url": dead_address(), "timeout_ms": 2000},
        "runtime": {"kind": "runtime", "models": ["identity"], "preload": True},
    }
    for name, extra in (backends or {}).items():
        default[name] = {**default[name], **extra}
    doc = {"listen": listen, "backends": default, "models": models, "data_plane": "native"}
    return GatewayThread(parse_config(doc))


def test_the_gateway_serves_policies_natively_and_its_metrics_show_the_decisions(
    triton: TritonEndpoints,
) -> None:
    weighted = {"kind": "weighted", "weights": {"triton": 80, "triton2": 20}}
    fallback = {"kind": "fallback", "order": ["dead", "triton"]}
    gw = gateway(triton, {"identity": {"policy": weighted}, "identity_int64": {"policy": fallback}})
    client = Client(gw.grpc)
    try:
        front = gw.gateway._native
        assert front is not None and set(front.routes.routes) == {"identity", "identity_int64"}
        served: Counter[str] = Counter(client.call(request(f"id-{i}"))[1][0][0] for i in range(200))
        int64 = pb.ModelInferRequest(model_name="identity_int64", id="x")
        int64.inputs.add(name="input", datatype="INT64", shape=[1, 2])
        int64.raw_input_contents.append(np.arange(2, dtype=np.int64).tobytes())
        for _ in range(3):
            _, tried = client.call(int64.SerializeToString())
            assert tried == [("dead", 1, ""), ("triton", 2, "fallback")]
    finally:
        client.close()
    try:
        counted = scrape(gw.metrics, "infergw_route_decisions_total", "route", "backend", "reason")
        assert counted[("identity", "triton", "weighted")] == served["triton"]
        assert counted[("identity", "triton2", "weighted")] == served["triton2"]
        assert counted[("identity_int64", "dead", "primary")] == 3
        assert counted[("identity_int64", "triton", "fallback")] == 3
        requests = scrape(gw.metrics, "infergw_requests_total", "model", "backend", "status")
        assert requests[("identity", "triton", "OK")] == served["triton"]
        assert requests[("identity", "triton2", "OK")] == served["triton2"]
        assert requests[("identity_int64", "triton", "OK")] == 3  # labelled by who answered
        phases = scrape(
            gw.metrics, "infergw_phase_duration_seconds_count", "phase", "model", "backend"
        )
        # Both attempts' queue and backend entries, as the gateway observes them.
        assert phases[("backend", "identity_int64", "triton")] == 6
    finally:
        gw.close()


def test_the_gateway_spills_a_burst_to_its_lane_pinned_and_counts_each_request_once(
    triton: TritonEndpoints,
) -> None:
    spill = {"kind": "spillover", "primary": "triton", "overflow": ["runtime"]}
    models = {"identity": {"policy": {**spill, "max_queue_wait_ms": 1}}}
    gw = gateway(triton, models, {"triton": {"max_concurrency": 1}})
    client = Client(gw.grpc)
    try:
        for _ in range(30):
            assert client.call(request())[1] == [("triton", 1, "")]
        tried = burst(client, 300)
    finally:
        client.close()
    try:
        served = Counter(t[-1][0] for t in tried)
        assert served["runtime"] > 0 and served["triton"] > 0, served
        assert all(t == [("runtime", 1, "spill")] for t in tried if t[-1][0] == "runtime")
        counted = scrape(gw.metrics, "infergw_route_decisions_total", "route", "backend", "reason")
        assert counted[("identity", "runtime", "spill")] == served["runtime"]
        assert counted[("identity", "triton", "primary")] == 30 + served["triton"]
        assert ("identity", "triton", "spill") not in counted  # the lane decided nothing
        requests = scrape(gw.metrics, "infergw_requests_total", "model", "backend", "status")
        mine = {k: v for k, v in requests.items() if k[0] == "identity"}
        assert mine == {
            ("identity", "triton", "OK"): 30 + served["triton"],
            ("identity", "runtime", "OK"): served["runtime"],  # the lane's, once
        }
    finally:
        gw.close()
