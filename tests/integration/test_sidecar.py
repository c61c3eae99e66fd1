"""``infergw sidecar`` in front of the real tritonserver, driven by unmodified tritonclient.

Every check compares the sidecar with the same call made direct: outputs, errors (status
and message), statistics, model config (a method infergw itself does not implement),
repository index, streaming; plus what the sidecar adds (Server-Timing, health, metrics)
and faults: upstream down, upstream slower than the deadline, upstream dying mid-stream,
a message over the limit, a client cancelling.

Some faults need an upstream that misbehaves on purpose: this module doubles as that
fake upstream (``python test_sidecar.py --fake-upstream PORT MARKER``), run as a child
process so that it can die like a real server does.

Every sidecar here runs on both data planes (the ``plane`` fixture: the Python proxy, and
the Rust plane when the extension is built; ``-k python`` / ``-k native`` picks one). A
check that the native plane does not do yet is skipped there, naming what is missing.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import queue
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import numpy as np
import pytest

from infergw.gateway.processes import ProcessGroup

if TYPE_CHECKING:  # this file also runs as a script (the fake upstream): no test imports
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from tests.integration.conftest import ServiceThread

T = TypeVar("T")

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
SERVER_READY = "/inference.GRPCInferenceService/ServerReady"
FAKE_ECHO = "/infergw.test.Fake/Echo"
FAKE_SLOW = "/infergw.test.Fake/Slow"
FAKE_SLEEP = "/infergw.test.Fake/Sleep"
LIMIT = 2 * 1024 * 1024
SENTENCES = ["A man is eating food.", "The quick brown fox jumps over the lazy dog.", ""]


# -- the fake upstream (runs in a child process) ------------------------------------------


async def _fake_upstream(port: int, marker: Path) -> None:
    """Echo (metadata, deadline, status passthrough), Slow (cancel), a stream that dies."""

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.send_initial_metadata((("x-initial", "first"),))
        context.set_trailing_metadata((("x-trailer", "last"), ("x-trailer-bin", b"\x00\xff")))
        if request == b"fail":
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "told to fail", (("x-why", "asked"),)
            )
        seen = [[k, v if isinstance(v, str) else v.hex()] for k, v in context.invocation_metadata()]
        return json.dumps({"metadata": seen, "remaining": context.time_remaining()}).encode()

    async def slow(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            marker.write_text("cancelled")  # noqa: ASYNC240 - a tiny file in a test fake
            raise
        return b""

    async def sleep(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(float(request.decode()))
        return b"slept"

    async def stream(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        async for message in requests:
            yield message
            await asyncio.sleep(0.1)  # let the reply leave, then die like a crashed server
            os._exit(0)

    async def ready(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return b"\x08\x01"

    handlers = {
        FAKE_ECHO: grpc.unary_unary_rpc_method_handler(echo),
        FAKE_SLOW: grpc.unary_unary_rpc_method_handler(slow),
        FAKE_SLEEP: grpc.unary_unary_rpc_method_handler(sleep),
        SERVER_READY: grpc.unary_unary_rpc_method_handler(ready),
        STREAM_INFER: grpc.stream_stream_rpc_method_handler(stream),
    }

    class Handler(grpc.GenericRpcHandler):
        def service(self, details: Any) -> Any:
            return handlers.get(details.method)

    server = grpc.aio.server(options=(("grpc.so_reuseport", 0),))
    server.add_generic_rpc_handlers((Handler(),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


class FakeUpstream:
    def __init__(self, port: int, marker: Path) -> None:
        self.address = f"127.0.0.1:{port}"
        self.port, self.marker = port, marker
        self.proc: ProcessGroup | None = None

    def start(self) -> FakeUpstream:
        self.stop()
        args = [sys.executable, __file__, "--fake-upstream", str(self.port), str(self.marker)]
        log = self.marker.with_name("fake-upstream.log")
        self.proc = ProcessGroup.start(args, log=log, name="fake upstream")
        with grpc.insecure_channel(self.address) as channel:
            ready = channel.unary_unary(SERVER_READY)
            self.proc.wait_ready(functools.partial(_answers, ready), timeout_s=20)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


def _answers(call: grpc.UnaryUnaryMultiCallable) -> bool:
    try:
        call(b"", timeout=1)
    except grpc.RpcError:
        return False
    return True


# -- fixtures ---------------------------------------------------------------------------

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sidecar_thread(upstream: str, **config: Any) -> ServiceThread:
    """A ``Sidecar`` on a background loop, on free ports unless ``config`` says otherwise."""
    from infergw.gateway.sidecar.app import Sidecar, SidecarConfig
    from tests.integration.conftest import ServiceThread

    ports = {"host": "127.0.0.1", "grpc_port": 0, "http_port": 0, "metrics_port": 0}
    side = ServiceThread(Sidecar(SidecarConfig(upstream=upstream, **{**ports, **config})))
    wanted = config.get("data_plane")
    if wanted == "native" and os.environ.get("INFERGW_NATIVE", "").strip() != "0":
        assert side.service.data_plane == "native", "the native plane was asked for"
    return side


def _native_built() -> bool:
    from infergw.gateway import native_plane

    return native_plane.available()


PLANES = [
    "python",
    pytest.param(
        "native",
        marks=pytest.mark.skipif(
            not _native_built(), reason="infergw._native is not built (or INFERGW_NATIVE=0)"
        ),
    ),
]


@pytest.fixture(scope="module", params=PLANES)
def plane(request: pytest.FixtureRequest) -> str:
    """The sidecar's data plane for this module's run (``SidecarConfig.data_plane``)."""
    return str(request.param)


def on_native(side: ServiceThread) -> bool:
    """The sidecar's gRPC port is the Rust plane's (asked for, or INFERGW_NATIVE=1)."""
    return bool(side.service.data_plane == "native")


@pytest.fixture(scope="module")
def triton() -> Iterator[Any]:
    from infergw.deploy.triton.launcher import TritonServer

    with TritonServer(models=["identity", "identity_int64", "minilm"]) as server:
        yield server.endpoints


@pytest.fixture(scope="module")
def sidecar(triton: Any, plane: str) -> Iterator[ServiceThread]:
    side = sidecar_thread(
        triton.grpc, http_upstream=triton.http, max_message_bytes=LIMIT, data_plane=plane
    )
    try:
        yield side
    finally:
        side.close()


@pytest.fixture(scope="module")
def grpc_pair(triton: Any, sidecar: ServiceThread) -> Iterator[tuple[Any, Any]]:
    import tritonclient.grpc as tgrpc

    direct, proxied = (
        tgrpc.InferenceServerClient(triton.grpc),
        tgrpc.InferenceServerClient(sidecar.grpc),
    )
    yield direct, proxied
    direct.close()
    proxied.close()


@pytest.fixture(scope="module")
def http_pair(triton: Any, sidecar: ServiceThread) -> Iterator[tuple[Any, Any]]:
    import tritonclient.http as thttp

    direct, proxied = (
        thttp.InferenceServerClient(triton.http),
        thttp.InferenceServerClient(sidecar.http),
    )
    yield direct, proxied
    direct.close()
    proxied.close()


def _inputs(module: Any, model: str, binary: bool | None = None) -> list[Any]:
    kwargs = {} if binary is None else {"binary_data": binary}
    if model == "minilm":
        data = np.array([s.encode() for s in SENTENCES], dtype=np.object_)
        tensor = module.InferInput("text", [len(SENTENCES)], "BYTES")
    else:
        dtype, name = (np.int64, "INT64") if model == "identity_int64" else (np.float32, "FP32")
        data = (np.arange(12).reshape(3, 4) * 1.5).astype(dtype)
        tensor = module.InferInput("input", [3, 4], name)
    tensor.set_data_from_numpy(data, **kwargs)
    return [tensor]


def _status(call: Any) -> tuple[str | None, str]:
    from tritonclient.utils import InferenceServerException

    try:
        call()
    except InferenceServerException as exc:
        return exc.status(), exc.message()
    raise AssertionError("the call did not fail")


# -- gRPC through the sidecar equals direct ------------------------------------------------


@pytest.mark.parametrize("model", ["identity", "identity_int64", "minilm"])
def test_grpc_infer_identical(grpc_pair: tuple[Any, Any], model: str) -> None:
    import tritonclient.grpc as tgrpc

    output = "embedding" if model == "minilm" else "output"
    direct, proxied = (c.infer(model, _inputs(tgrpc, model)) for c in grpc_pair)
    np.testing.assert_array_equal(direct.as_numpy(output), proxied.as_numpy(output))
    assert direct.get_response() == proxied.get_response()  # the whole message, byte for byte


def test_grpc_errors_identical(grpc_pair: tuple[Any, Any]) -> None:
    import tritonclient.grpc as tgrpc

    cases = {
        "unknown model": lambda c: c.infer("no_such_model", _inputs(tgrpc, "identity")),
        "bad dtype": lambda c: c.infer("identity", _inputs(tgrpc, "identity_int64")),
        "unknown config": lambda c: c.get_model_config("no_such_model"),
    }
    for what, call in cases.items():
        direct, proxied = (_status(functools.partial(call, c)) for c in grpc_pair)
        assert direct == proxied, what
        assert direct[0] and direct[0] != "StatusCode.UNAVAILABLE", what


def test_grpc_management_calls_identical(grpc_pair: tuple[Any, Any]) -> None:
    """Statistics, config, repository, metadata: Triton's answers, not infergw's."""
    calls = {
        "statistics": lambda c: c.get_inference_statistics("identity"),
        "config": lambda c: c.get_model_config("minilm"),
        "repository": lambda c: c.get_model_repository_index(),
        "server metadata": lambda c: c.get_server_metadata(),
        "model metadata": lambda c: c.get_model_metadata("identity_int64"),
        "trace settings": lambda c: c.get_trace_settings(),
    }
    for what, call in calls.items():
        direct, proxied = (call(c) for c in grpc_pair)
        assert direct == proxied, what
    assert grpc_pair[1].get_server_metadata().name == "triton"


def test_grpc_stream_identical(grpc_pair: tuple[Any, Any]) -> None:
    import tritonclient.grpc as tgrpc

    outputs = []
    for client in grpc_pair:
        results: queue.Queue[Any] = queue.Queue()
        client.start_stream(callback=lambda result, error, q=results: q.put(error or result))
        try:
            for i in range(3):
                client.async_stream_infer("identity", _inputs(tgrpc, "identity"), request_id=str(i))
            got = [results.get(timeout=10) for _ in range(3)]
        finally:
            client.stop_stream()
        assert all(isinstance(r, tgrpc.InferResult) for r in got), got
        outputs.append([(r.get_response().id, r.as_numpy("output").tolist()) for r in got])
    assert outputs[0] == outputs[1]


def test_grpc_server_timing_trailer(sidecar: ServiceThread) -> None:
    from infergw.proto import grpc_service_pb2 as pb

    request = pb.ModelInferRequest(
        model_name="identity",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 1])],
        raw_input_contents=[np.float32(1).tobytes()],
    )
    with grpc.insecure_channel(sidecar.grpc) as channel:
        _, call = channel.unary_unary(MODEL_INFER).with_call(request.SerializeToString())
        timing = dict(call.trailing_metadata())["server-timing"]
        names = [item.split(";")[0].strip() for item in timing.split(",")]
        assert names == ["decode", "backend", "total"], timing
        _, call = channel.unary_unary("/inference.GRPCInferenceService/ServerLive").with_call(b"")
        assert dict(call.trailing_metadata())["server-timing"].startswith("backend;dur=")


# -- REST through the sidecar equals direct ------------------------------------------------


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("model", ["identity", "identity_int64", "minilm"])
def test_http_infer_identical(http_pair: tuple[Any, Any], model: str, binary: bool) -> None:
    import tritonclient.http as thttp

    output = "embedding" if model == "minilm" else "output"
    requested = [thttp.InferRequestedOutput(output, binary_data=binary)]
    direct, proxied = (
        c.infer(model, _inputs(thttp, model, binary), outputs=requested) for c in http_pair
    )
    np.testing.assert_array_equal(direct.as_numpy(output), proxied.as_numpy(output))
    assert direct.get_response() == proxied.get_response()


def test_http_errors_and_management_identical(http_pair: tuple[Any, Any]) -> None:
    import tritonclient.http as thttp

    errors = {
        "unknown model": lambda c: c.infer("no_such_model", _inputs(thttp, "identity")),
        "bad dtype": lambda c: c.infer("identity", _inputs(thttp, "identity_int64")),
    }
    for what, call in errors.items():
        direct, proxied = (_status(functools.partial(call, c)) for c in http_pair)
        assert direct == proxied, what
    calls = {
        "statistics": lambda c: c.get_inference_statistics("identity"),
        "config": lambda c: c.get_model_config("minilm"),
        "repository": lambda c: c.get_model_repository_index(),
        "server metadata": lambda c: c.get_server_metadata(),
    }
    for what, call in calls.items():
        direct, proxied = (call(c) for c in http_pair)
        assert direct == proxied, what


def _http(url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        return urllib.request.urlopen(request, timeout=10)
    except urllib.error.HTTPError as exc:
        return exc


def test_http_raw_bytes_and_server_timing(triton: Any, sidecar: ServiceThread) -> None:
    body = json.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2], "data": [1.5, 2]}]}
    ).encode()
    path = "/v2/models/identity/infer"
    direct = _http(f"http://{triton.http}{path}", body)
    proxied = _http(f"http://{sidecar.http}{path}", body)
    assert (direct.status, direct.read()) == (proxied.status, proxied.read())
    timing = proxied.headers["Server-Timing"]
    assert [i.split(";")[0].strip() for i in timing.split(",")] == ["backend", "total"]
    ready = _http(f"http://{sidecar.http}/v2/health/ready")
    assert ready.status == 200 and "Server-Timing" in ready.headers


# -- what the sidecar adds: health and metrics -----------------------------------------------


def test_health_and_metrics(sidecar: ServiceThread, grpc_pair: tuple[Any, Any]) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(sidecar.grpc) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService", "infergw.Sidecar"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    grpc_pair[1].get_model_config("identity")
    metrics_url = f"http://{sidecar.metrics}/metrics"
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    assert 'phase="backend",protocol="grpc",status="OK"' in text
    assert 'model="identity"' in text and 'protocol="rest"' in text
    assert 'method="/inference.GRPCInferenceService/ModelConfig",status="OK"' in text


def test_health_watch_follows_the_upstream(sidecar: ServiceThread) -> None:
    """Watch streams the current status (and SERVICE_UNKNOWN for a service never set)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(sidecar.grpc) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service, expected in (
            ("", health_pb2.HealthCheckResponse.SERVING),
            ("no.such.Service", health_pb2.HealthCheckResponse.SERVICE_UNKNOWN),
        ):
            stream = stub.Watch(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert next(stream).status == expected, service
            stream.cancel()
        with pytest.raises(grpc.RpcError) as err:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_native_plane_forwards(sidecar: ServiceThread, grpc_pair: tuple[Any, Any]) -> None:
    """On the native plane the calls are the plane's: its own counters move, by method
    and model, and the metrics port shows them under the Python sidecar's names."""
    import tritonclient.grpc as tgrpc

    if not on_native(sidecar):
        pytest.skip("the Python proxy: no native plane to look at")
    before = sidecar.service.plane_stats()
    infer = "/inference.GRPCInferenceService/ModelInfer"
    sent = 5
    for _ in range(sent):
        grpc_pair[1].infer("identity", _inputs(tgrpc, "identity"))
    after = sidecar.service.plane_stats()
    ok = grpc.StatusCode.OK.value[0]

    def calls(stats: dict[str, Any]) -> int:
        return int(stats.get("methods", {}).get(infer, {}).get(ok, 0))

    assert calls(after) - calls(before) == sent
    key = ("identity", "grpc", ok)
    rows = [r for r in after["inference"] if (r["model"], r["protocol"], r["status"]) == key]
    assert len(rows) == 1 and rows[0]["requests"] >= sent
    assert set(rows[0]["phases"]) == {"decode", "backend", "total"}
    text = urllib.request.urlopen(f"http://{sidecar.metrics}/metrics", timeout=5).read().decode()
    assert f'infergw_sidecar_rpcs_total{{method="{infer}",status="OK"}} {calls(after)}.0' in text
    labels = 'backend="upstream",model="identity",phase="total",protocol="grpc",status="OK"'
    assert f"infergw_phase_duration_seconds_count{{{labels}}}" in text  # (labels sorted)


# -- faults ---------------------------------------------------------------------------------


def test_upstream_down_is_unavailable_and_sidecar_stays_up(plane: str) -> None:
    import tritonclient.grpc as tgrpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    dead = f"127.0.0.1:{free_port()}"
    side = sidecar_thread(dead, http_upstream=dead, health_interval_s=0.2, data_plane=plane)
    try:
        client = tgrpc.InferenceServerClient(side.grpc)
        for _ in range(2):  # and again: the sidecar is still there
            t0 = time.monotonic()
            code, message = _status(lambda: client.infer("identity", _inputs(tgrpc, "identity")))
            assert time.monotonic() - t0 < 3
            assert code == "StatusCode.UNAVAILABLE" and f"upstream {dead} is unreachable" in message
        reply = _http(f"http://{side.http}/v2/health/ready")
        assert reply.status == 503 and dead in json.loads(reply.read())["error"]
        with grpc.insecure_channel(side.grpc) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            status = stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        client.close()
    finally:
        side.close()


def test_upstream_slower_than_deadline(grpc_pair: tuple[Any, Any]) -> None:
    import tritonclient.grpc as tgrpc

    text = tgrpc.InferInput("text", [64], "BYTES")
    text.set_data_from_numpy(np.array([b"a fairly long sentence to embed"] * 64, dtype=np.object_))
    for client in grpc_pair:
        code, _ = _status(lambda c=client: c.infer("minilm", [text], client_timeout=0.02))
        assert code == "StatusCode.DEADLINE_EXCEEDED"
    assert grpc_pair[1].infer("identity", _inputs(tgrpc, "identity")).as_numpy("output") is not None


def test_over_the_limit(sidecar: ServiceThread, grpc_pair: tuple[Any, Any]) -> None:
    import tritonclient.grpc as tgrpc

    big = tgrpc.InferInput("input", [1, LIMIT // 4 + 1000], "FP32")
    big.set_data_from_numpy(np.zeros((1, LIMIT // 4 + 1000), dtype=np.float32))
    code, message = _status(lambda: grpc_pair[1].infer("identity", [big]))
    assert code == "StatusCode.RESOURCE_EXHAUSTED" and f"limit of {LIMIT} bytes" in message
    with grpc.insecure_channel(sidecar.grpc) as channel:  # a stream message over the limit
        replies = channel.stream_stream(STREAM_INFER)(iter([b"\x0a" + b"x" * LIMIT]), timeout=10)
        with pytest.raises(grpc.RpcError) as err:
            list(replies)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"limit of {LIMIT} bytes" in err.value.details()
    reply = _http(f"http://{sidecar.http}/v2/models/identity/infer", b"{" + b" " * LIMIT + b"}")
    assert reply.status == 413 and f"limit of {LIMIT} bytes" in json.loads(reply.read())["error"]
    assert grpc_pair[1].is_server_live()


@pytest.fixture(scope="module")
def fake(
    tmp_path_factory: pytest.TempPathFactory, plane: str
) -> Iterator[tuple[FakeUpstream, ServiceThread]]:
    upstream = FakeUpstream(free_port(), tmp_path_factory.mktemp("fake") / "cancelled")
    try:  # the upstream is stopped even if the sidecar fails to start
        upstream.start()
        side = sidecar_thread(upstream.address, data_plane=plane)
        try:
            yield upstream, side
        finally:
            side.close()
    finally:
        upstream.stop()


def test_metadata_deadline_status_pass_through(fake: tuple[FakeUpstream, ServiceThread]) -> None:
    _, side = fake
    sent = (
        ("x-custom", "value"),
        ("x-thing-bin", b"\x01\x02"),
        ("traceparent", "00-" + "a" * 32 + "-" + "b" * 16 + "-01"),
    )
    with grpc.insecure_channel(side.grpc) as channel:
        echo = channel.unary_unary(FAKE_ECHO)
        reply, call = echo.with_call(b"hi", metadata=sent, timeout=5)
        seen = json.loads(reply)
        # No SDK is installed here (tests/conftest.py's span_exporter resets it after each
        # test that uses one): the client's traceparent reaches the upstream unchanged.
        expected = [["x-custom", "value"], ["x-thing-bin", "0102"], list(sent[2])]
        keys = ("x-custom", "x-thing-bin", "traceparent")
        assert sorted(m for m in seen["metadata"] if m[0] in keys) == sorted(expected)
        assert 3.5 < seen["remaining"] < 5.1  # the deadline, not a fresh or no timeout
        assert ("x-initial", "first") in call.initial_metadata()
        trailers = dict(call.trailing_metadata())
        assert trailers["x-trailer"] == "last" and trailers["x-trailer-bin"] == b"\x00\xff"
        assert "server-timing" in trailers
        with pytest.raises(grpc.RpcError) as err:
            echo(b"fail", timeout=5)
        assert (err.value.code(), err.value.details()) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "told to fail",
        )
        assert ("x-why", "asked") in err.value.trailing_metadata()


def test_client_cancel_cancels_upstream(fake: tuple[FakeUpstream, ServiceThread]) -> None:
    upstream, side = fake
    with grpc.insecure_channel(side.grpc) as channel:
        future = channel.unary_unary(FAKE_SLOW).future(b"", timeout=20)
        time.sleep(0.5)
        future.cancel()
    deadline = time.monotonic() + 5
    while not upstream.marker.exists():
        assert time.monotonic() < deadline, "the upstream call was not cancelled"
        time.sleep(0.05)


def test_stop_drains_calls_in_flight(fake: tuple[FakeUpstream, ServiceThread], plane: str) -> None:
    """On stop, a call in flight finishes (within ``drain_grace_s``); new calls are refused."""
    import concurrent.futures

    upstream, _ = fake
    side = sidecar_thread(upstream.address, drain_grace_s=10, data_plane=plane)
    address = side.grpc
    with grpc.insecure_channel(address) as channel:
        future = channel.unary_unary(FAKE_SLEEP).future(b"1.0", timeout=20)
        time.sleep(0.3)  # the call is at the upstream
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            t0 = time.monotonic()
            stopped = pool.submit(side.close)
            assert future.result(timeout=15) == b"slept"
            stopped.result(timeout=15)
            assert time.monotonic() - t0 < 5
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as err:
        channel.unary_unary(FAKE_ECHO)(b"", timeout=2)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def _stream_until_failure(address: str) -> grpc.StatusCode:
    with grpc.insecure_channel(address) as channel:
        replies = channel.stream_stream(STREAM_INFER)(iter([b"one", b"two", b"three"]), timeout=10)
        got = []
        with pytest.raises(grpc.RpcError) as err:
            for reply in replies:
                got.append(reply)
        assert got == [b"one"]
        return err.value.code()


def test_upstream_dies_mid_stream(fake: tuple[FakeUpstream, ServiceThread]) -> None:
    upstream, side = fake
    direct = _stream_until_failure(upstream.address)
    upstream.start()
    proxied = _stream_until_failure(side.grpc)
    assert direct == proxied == grpc.StatusCode.UNAVAILABLE
    upstream.start()  # the sidecar reconnects by itself (backoff <= 2 s) and serves again
    with grpc.insecure_channel(side.grpc) as channel:
        deadline = time.monotonic() + 10
        while True:
            try:
                assert channel.unary_unary(FAKE_ECHO)(b"", timeout=5)
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
                assert time.monotonic() < deadline, "the sidecar did not reconnect"
                time.sleep(0.1)


def test_trace_continues_through_the_sidecar(
    fake: tuple[FakeUpstream, ServiceThread], span_exporter: InMemorySpanExporter
) -> None:
    """The SDK is installed for this test only (``span_exporter``, tests/conftest.py)."""
    from tests.integration.conftest import wait_for_native_tracing, wait_until

    exporter = span_exporter
    trace_id, parent = "c" * 32, "d" * 16
    _, side = fake
    native = side.service._native  # type: ignore[attr-defined]
    wait_for_native_tracing(native.plane.stats if native is not None else None)
    with grpc.insecure_channel(side.grpc) as channel:
        reply = channel.unary_unary(FAKE_ECHO)(
            b"", metadata=(("traceparent", f"00-{trace_id}-{parent}-01"),), timeout=5
        )
    upstream_tp = dict(json.loads(reply)["metadata"])["traceparent"]

    def spans() -> dict[str, Any]:
        finished = exporter.get_finished_spans()
        return {s.kind.name: s for s in finished if s.context.trace_id == int(trace_id, 16)}

    # The native plane hands its span records over in batches (every 0.1 s).
    wait_until(lambda: {"SERVER", "CLIENT"} <= set(spans()), "the sidecar's two spans", 5)
    server, client = spans()["SERVER"], spans()["CLIENT"]
    assert server.name == "infergw.test.Fake/Echo" and server.parent.span_id == int(parent, 16)
    assert client.parent.span_id == server.context.span_id
    assert upstream_tp == f"00-{trace_id}-{client.context.span_id:016x}-01"


if __name__ == "__main__" and sys.argv[1:2] == ["--fake-upstream"]:
    asyncio.run(_fake_upstream(int(sys.argv[2]), Path(sys.argv[3])))
