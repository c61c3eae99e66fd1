"""The native data plane (infergw._native) with real parts: the real tritonserver behind it,
unmodified tritonclient.grpc and grpcio clients in front, the real gateway (or a real gRPC
server) as its python lane."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc

from infergw.deploy.triton.launcher import TritonEndpoints
from infergw.gateway import native_plane
from infergw.gateway.native_plane import NativeBackend, NativeConfig, NativePlane
from infergw.proto import grpc_service_pb2 as pb
from infergw.wire.server_timing import parse_server_timing, server_timing_from_metadata
from tests.integration.conftest import GatewayThread, free_ports_config, wait_until

pytest.importorskip("infergw._native", reason="the native extension is not built")
pytestmark = pytest.mark.integration

INFER = "/inference.GRPCInferenceService/ModelInfer"
READY = "/inference.GRPCInferenceService/ServerReady"
LANE_TRAILER = ("x-lane", "yes")


class Upstream(grpc.GenericRpcHandler):
    """A real gRPC server answering every method with bytes: it records what it saw (the
    deadline it was given, cancellations), sleeps ``x-sleep-ms`` if asked, and ends with
    trailers of its own (a ``server-timing`` and ``x-lane``)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.started = threading.Event()
        self.cancelled = threading.Event()

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method
        return grpc.unary_unary_rpc_method_handler(
            lambda request, context: self._answer(method, request, context)
        )

    def _answer(self, method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        metadata = dict(context.invocation_metadata())
        call = {"method": method, "remaining": context.time_remaining(), "metadata": metadata}
        self.calls.append(call)
        self.started.set()
        until = time.monotonic() + float(metadata.get("x-sleep-ms", 0)) / 1000.0
        while time.monotonic() < until:
            if not context.is_active():
                self.cancelled.set()
                return b""
            time.sleep(0.005)
        context.set_trailing_metadata((("server-timing", "lane;dur=1.500"), LANE_TRAILER))
        return b"echo:" + request


@contextlib.contextmanager
def serve(upstream: Upstream, address: str) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((upstream,))
    port = server.add_insecure_port(address)
    server.start()
    try:
        yield address if address.startswith("unix:") else f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


@pytest.fixture
def upstream() -> Iterator[tuple[Upstream, str]]:
    fake = Upstream()
    with serve(fake, "127.0.0.1:0") as address:
        yield fake, address


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def plane_for(
    triton: TritonEndpoints, lane: str | None, workers: int = 1, **backends: NativeBackend
) -> NativePlane:
    backends = {"triton": NativeBackend(triton.grpc), **backends}
    routes = {"identity": "triton", **{name: name for name in backends if name != "triton"}}
    config = NativeConfig(python_lane=lane, backends=backends, routes=routes)
    return NativePlane(dataclasses.replace(config, worker_threads=workers))


def infer_request(model: str, array: np.ndarray | None = None) -> bytes:
    request = pb.ModelInferRequest(model_name=model)
    if array is not None:
        request.inputs.add(name="input", datatype="FP32", shape=list(array.shape))
        request.raw_input_contents.append(array.tobytes())
    return request.SerializeToString()


def call(
    address: str,
    payload: bytes,
    method: str = INFER,
    timeout: float = 10.0,
    metadata: tuple[tuple[str, str], ...] = (),
) -> tuple[bytes | None, grpc.Call | grpc.RpcError]:
    """One raw call: (response bytes, the call) or (None, the error)."""
    with grpc.insecure_channel(address) as channel:
        stub = channel.unary_unary(method)
        try:
            response, rpc = stub.with_call(payload, timeout=timeout, metadata=metadata)
            return response, rpc
        except grpc.RpcError as err:
            return None, err


def trailer(rpc: grpc.Call | grpc.RpcError, key: str) -> str | None:
    for k, v in rpc.trailing_metadata() or ():
        if k == key:
            return str(v)
    return None


def test_available_and_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert native_plane.available()
    monkeypatch.setenv("INFERGW_NATIVE", "0")
    assert not native_plane.available()
    with pytest.raises(native_plane.NativeUnavailable, match="INFERGW_NATIVE=0"):
        NativePlane(NativeConfig())


def test_bad_config_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not in backends"):
        NativePlane(NativeConfig(routes={"identity": "nowhere"}))


def test_tritonclient_outputs_equal_direct_with_server_timing(triton: TritonEndpoints) -> None:
    array = np.random.default_rng(7).random((3, 16), np.float32)
    with plane_for(triton, None) as plane:
        results = []
        for address in (plane.address, triton.grpc):
            client = tgrpc.InferenceServerClient(address)
            tensor = tgrpc.InferInput("input", list(array.shape), "FP32")
            tensor.set_data_from_numpy(array)
            results.append(client.infer("identity", [tensor]))
            client.close()
        via, direct = results
        np.testing.assert_array_equal(via.as_numpy("output"), direct.as_numpy("output"))
        np.testing.assert_array_equal(via.as_numpy("output"), array)
        # The bytes are Triton's, unchanged; the trailer is the gateway's vocabulary.
        raw_via, rpc = call(plane.address, infer_request("identity", array))
        raw_direct, _ = call(triton.grpc, infer_request("identity", array))
        assert raw_via is not None and raw_via == raw_direct
        timing = server_timing_from_metadata(rpc.trailing_metadata())
        assert timing is not None
        entries = {e.name: e for e in parse_server_timing(timing)}
        assert list(entries) == ["decode", "queue", "backend", "total"]  # the gateway's order
        assert entries["total"].description == "backend=triton"
        assert entries["queue"].description == "backend=triton"
        assert entries["backend"].description == "backend=triton;attempt=1"
        assert 0 < entries["backend"].duration_ms <= entries["total"].duration_ms
        assert 0 < entries["decode"].duration_ms < entries["backend"].duration_ms
        stats = plane.stats()["backends"]["triton"]
        assert stats["requests"] == {0: 2}
        assert sum(stats["total"]["counts"]) == 2 and stats["in_flight"] == 0


def test_other_models_and_methods_go_to_the_python_lane(
    triton: TritonEndpoints, gateway: GatewayThread
) -> None:
    with plane_for(triton, gateway.grpc) as plane:
        client = tgrpc.InferenceServerClient(plane.address)
        assert client.is_server_ready()  # ServerReady: the gateway's
        assert client.get_server_metadata().name == "infergw"
        data = np.arange(6, dtype=np.int64).reshape(1, 6)
        tensor = tgrpc.InferInput("input", [1, 6], "INT64")
        tensor.set_data_from_numpy(data)
        result = client.infer("identity_int64", [tensor])  # no native route
        np.testing.assert_array_equal(result.as_numpy("output"), data)
        client.close()
        # The gateway's own trailers pass through unchanged (its decode/encode phases).
        request = pb.ModelInferRequest(model_name="identity_int64")
        request.inputs.add(name="input", datatype="INT64", shape=[1, 6])
        request.raw_input_contents.append(data.tobytes())
        _, rpc = call(plane.address, request.SerializeToString())
        names = [e.name for e in parse_server_timing(trailer(rpc, "server-timing") or "")]
        assert "decode" in names and "total" in names
        lane = plane.stats()["python_lane"]
        assert lane["requests"][0] >= 4


def test_python_lane_over_a_unix_socket_passes_trailers_through(triton: TritonEndpoints) -> None:
    fake = Upstream()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lane.sock"
        with serve(fake, f"unix:{path}") as lane, plane_for(triton, lane) as plane:
            response, rpc = call(plane.address, b"\x01\x02", method=READY)
            assert response == b"echo:\x01\x02"
            assert trailer(rpc, "x-lane") == "yes"
            assert trailer(rpc, "server-timing") == "lane;dur=1.500"  # nothing of ours added
            assert fake.calls[0]["method"] == READY


def test_admission_full_is_resource_exhausted_with_retry_after(
    triton: TritonEndpoints, upstream: tuple[Upstream, str]
) -> None:
    fake, address = upstream
    slow = NativeBackend(address, max_concurrency=1, max_queue=0, queue_timeout_ms=2500)
    with plane_for(triton, None, slow=slow) as plane:
        first: list[Any] = []
        holder = threading.Thread(
            target=lambda: first.append(
                call(plane.address, infer_request("slow"), metadata=(("x-sleep-ms", "1500"),))
            )
        )
        holder.start()
        assert fake.started.wait(10)
        response, err = call(plane.address, infer_request("slow"))
        holder.join()
        assert response is None and isinstance(err, grpc.RpcError)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at its limit of 1 in flight and 0 queued" in (err.details() or "")
        assert trailer(err, "retry-after") == "3"  # ceil(max(1 s, queue timeout))
        ((held_response, held_rpc),) = first
        assert held_response is not None and held_response.startswith(b"echo:")
        # The backend's own trailers come through, ours appended after them.
        assert trailer(held_rpc, "x-lane") == "yes"
        timing = server_timing_from_metadata(held_rpc.trailing_metadata()) or ""
        assert timing.startswith("lane;dur=1.500, decode;dur=")
        stats = plane.stats()["backends"]["slow"]
        assert stats["requests"] == {0: 1, 8: 1}


def test_deadline_is_passed_on_and_enforced(
    triton: TritonEndpoints, upstream: tuple[Upstream, str]
) -> None:
    fake, address = upstream
    with plane_for(triton, None, slow=NativeBackend(address)) as plane:
        response, _ = call(plane.address, infer_request("slow"), timeout=5.0)
        assert response is not None
        remaining = fake.calls[-1]["remaining"]
        # The client's deadline minus the hop (grpc rounds the timeout it sends up a little).
        assert 3.0 < remaining <= 5.05
        _, err = call(
            plane.address, infer_request("slow"), timeout=0.3, metadata=(("x-sleep-ms", "3000"),)
        )
        assert isinstance(err, grpc.RpcError)
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert fake.calls[-1]["remaining"] <= 0.31


def cancel_once_started(plane: NativePlane, fake: Upstream, model: str) -> None:
    """A slow call of ``model`` through ``plane``, cancelled by its client once ``fake``
    (a backend or the lane) has it; returns when ``fake`` saw the cancel."""
    with grpc.insecure_channel(plane.address) as channel:
        future = channel.unary_unary(INFER).future(
            infer_request(model), timeout=30, metadata=(("x-sleep-ms", "20000"),)
        )
        assert fake.started.wait(10)
        future.cancel()
    assert fake.cancelled.wait(10), "the upstream never saw the cancel"


def test_upstream_sees_the_cancel_when_the_client_goes_away(
    triton: TritonEndpoints, upstream: tuple[Upstream, str]
) -> None:
    fake, address = upstream
    with plane_for(triton, None, slow=NativeBackend(address)) as plane:
        cancel_once_started(plane, fake, "slow")
        wait_until(lambda: plane.stats()["backends"]["slow"]["in_flight"] == 0, "slot freed")
        assert plane.stats()["backends"]["slow"]["requests"] == {1: 1}


def test_a_client_gone_before_the_lanes_answer_is_counted_cancelled(
    triton: TritonEndpoints, upstream: tuple[Upstream, str]
) -> None:
    fake, address = upstream  # here the python lane
    with plane_for(triton, address) as plane:
        cancel_once_started(plane, fake, "not-native")
        counted = lambda: plane.stats()["python_lane"]["requests"] == {1: 1}  # noqa: E731
        wait_until(counted, "the lane's call counted CANCELLED")


def test_upstream_down_is_unavailable(triton: TritonEndpoints) -> None:
    down = NativeBackend(f"127.0.0.1:{closed_port()}")
    with plane_for(triton, f"127.0.0.1:{closed_port()}", down=down) as plane:
        _, err = call(plane.address, infer_request("down"))
        assert isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.UNAVAILABLE
        assert "unreachable" in (err.details() or "")
        _, err = call(plane.address, b"", method=READY)  # the lane is down too
        assert isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.UNAVAILABLE
        response, _ = call(plane.address, infer_request("identity", np.ones((1, 16), np.float32)))
        assert response is not None  # the plane is still serving


def test_bad_bytes_never_kill_the_plane(triton: TritonEndpoints, gateway: GatewayThread) -> None:
    tiny = infer_request("identity", np.ones((1, 16), np.float32))
    cases = [
        infer_request("identity") + b"\x42\xff\xff",  # native route, truncated tensor field
        b"\x0a\x08identity\x42\x7f\x00",  # a length that lies
        b"\x0a\xff\xff\xff\xff\x0f",  # unscannable: to the lane (the gateway judges)
        b"\xff" * 64,
        b"",
    ]
    with plane_for(triton, gateway.grpc) as plane:
        for payload in cases:
            _, err = call(plane.address, payload)
            assert isinstance(err, grpc.RpcError), payload
            assert err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN)
            response, _ = call(plane.address, tiny)
            assert response is not None, f"the plane stopped answering after {payload!r}"
        _, err = call(plane.address, b"\x0a\xff\xff\xff\xff\x0f")
        assert isinstance(err, grpc.RpcError)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    with plane_for(triton, None) as plane:  # no lane: the plane says INVALID_ARGUMENT itself
        _, err = call(plane.address, b"\x0a\xff\xff\xff\xff\x0f")
        assert isinstance(err, grpc.RpcError)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def _tensor_request(
    inputs: list[tuple[str, str, list[int]]], raw: list[bytes], **contents: list[float]
) -> bytes:
    request = pb.ModelInferRequest(model_name="identity")
    for name, datatype, shape in inputs:
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        for field, values in contents.items():
            getattr(tensor.contents, field).extend(values)
    request.raw_input_contents.extend(raw)
    return request.SerializeToString()


BIG = 4 * 1024 * 1024  # spans many HTTP/2 frames: checked while it streams to Triton
INVALID_TENSORS = {
    "short raw data": _tensor_request([("input", "FP32", [1, 16])], [b"\0" * 60]),
    "no data": _tensor_request([("input", "FP32", [1, 16])], []),
    "extra raw data": _tensor_request([("input", "FP32", [1, 4])], [b"\0" * 16, b"\0" * 4]),
    "twice": _tensor_request([("input", "FP32", [1, 1])] * 2, [b"\0" * 4] * 2),
    "negative dim": _tensor_request([("input", "FP32", [-1, 4])], [b"\0" * 16]),
    "datatype": _tensor_request([("input", "FP8", [1, 4])], [b"\0" * 4]),
    "bytes count": _tensor_request([("input", "BYTES", [1, 2])], [b"\1\0\0\0a"]),
    "typed count": _tensor_request([("input", "FP32", [1, 3])], [], fp32_contents=[1.0, 2.0]),
    "big, a float short": _tensor_request([("input", "FP32", [1, BIG // 4])], [b"\0" * (BIG - 4)]),
    "truncated message": infer_request("identity", np.ones((1, 16), np.float32))[:-3],
}


def test_invalid_tensors_are_refused_as_the_gateway_refuses_them(
    triton: TritonEndpoints, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same bytes to the plane and to the Python gateway: the same INVALID_ARGUMENT and
    message, and Triton never sees one of them (its statistics count only the valid
    calls made between them; a mismatched tensor kills Triton's python-backend stub)."""
    monkeypatch.setenv(native_plane.ENV, "0")  # the reference: the Python data plane
    reference = GatewayThread(free_ports_config(triton))
    monkeypatch.delenv(native_plane.ENV)
    tiny = infer_request("identity", np.ones((1, 16), np.float32))
    with tgrpc.InferenceServerClient(triton.grpc) as direct, plane_for(triton, None) as plane:

        def executions() -> int:
            stats = direct.get_inference_statistics("identity", as_json=True)
            return sum(int(s.get("execution_count", 0)) for s in stats["model_stats"])

        try:
            before = executions()
            for case, payload in INVALID_TENSORS.items():
                _, native_err = call(plane.address, payload)
                _, python_err = call(reference.grpc, payload)
                assert isinstance(native_err, grpc.RpcError), case
                assert isinstance(python_err, grpc.RpcError), case
                assert native_err.code() == grpc.StatusCode.INVALID_ARGUMENT, case
                if case != "truncated message":  # protobuf's words differ; the status not
                    assert native_err.details() == python_err.details(), case
                assert python_err.code() == grpc.StatusCode.INVALID_ARGUMENT, case
                timing = parse_server_timing(trailer(native_err, "server-timing") or "")
                # a streamed one is refused once admitted: it waited in the queue first
                queued = ["queue"] if case.startswith("big") else []
                assert [e.name for e in timing] == ["decode", *queued, "total"], case
                response, _ = call(plane.address, tiny)
                assert response is not None, f"Triton or the plane broke after {case}"
            assert executions() == before + len(INVALID_TENSORS)  # only the tiny ones ran
        finally:
            reference.close()


def test_a_message_over_the_limit_is_resource_exhausted(triton: TritonEndpoints) -> None:
    config = NativeConfig(
        backends={"triton": NativeBackend(triton.grpc)},
        routes={"identity": "triton"},
        max_message_bytes=1024 * 1024,
    )
    payload = infer_request("identity", np.ones((1, 300_000), np.float32))
    with NativePlane(config) as plane:
        _, err = call(plane.address, payload)
        assert isinstance(err, grpc.RpcError)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert err.details() == (
            f"request message of {len(payload)} bytes exceeds the limit of 1048576 bytes"
        )


def native_threads() -> list[str]:
    """This process's threads named by the plane (``/proc/self/task/*/comm``)."""
    names = []
    for comm in Path("/proc/self/task").glob("*/comm"):
        with contextlib.suppress(OSError):  # a thread that just ended
            name = comm.read_text().strip()
            if name.startswith("infergw-native"):
                names.append(f"{comm.parent.name}:{name}")
    return names


@pytest.mark.parametrize("workers", [1, 2])
def test_stop_closes_the_port_and_the_threads(triton: TritonEndpoints, workers: int) -> None:
    others = set(native_threads())  # another plane's (the gateway's, with INFERGW_NATIVE=1)
    plane = plane_for(triton, None, workers=workers)
    port = plane.start()
    assert plane.start() == port  # idempotent while running
    wait_until(lambda: len(set(native_threads()) - others) > 0, "the plane's threads named")
    response, _ = call(plane.address, infer_request("identity", np.ones((1, 16), np.float32)))
    assert response is not None
    plane.stop(1.0)
    plane.stop(1.0)  # idempotent
    assert plane.port is None
    with contextlib.suppress(AssertionError):
        wait_until(lambda: set(native_threads()) <= others, "the plane's threads gone", timeout_s=5)
    assert set(native_threads()) <= others
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("127.0.0.1", port))
    assert plane.stats()["backends"]["triton"]["requests"] == {0: 1}  # kept after stop


def test_stop_drains_requests_in_flight(
    triton: TritonEndpoints, upstream: tuple[Upstream, str]
) -> None:
    fake, address = upstream
    plane = plane_for(triton, None, slow=NativeBackend(address))
    plane.start()
    target = plane.address
    done: list[Any] = []
    in_flight = threading.Thread(
        target=lambda: done.append(
            call(target, infer_request("slow"), metadata=(("x-sleep-ms", "800"),))
        )
    )
    in_flight.start()
    assert fake.started.wait(10)
    t0 = time.monotonic()
    plane.stop(10.0)  # returns once the request in flight has been answered
    in_flight.join()
    assert time.monotonic() - t0 < 5.0
    ((response, rpc),) = done
    assert response is not None and response.startswith(b"echo:"), rpc
    _, err = call(target, infer_request("slow"), timeout=2.0)
    assert isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.UNAVAILABLE
