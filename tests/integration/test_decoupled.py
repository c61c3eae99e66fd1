"""Decoupled models through the gateway's ModelStreamInfer, against the real Triton.

Driven with unmodified ``tritonclient.grpc`` (``start_stream`` / ``async_stream_infer``)
direct and through the gateway: the bundled ``repeat`` model answers an INT32 ``input``
of shape [n] with n responses, then its final flag. Every wait is on a reply or a state
the gateway reaches, bounded; nothing is timed.
"""

from __future__ import annotations

import asyncio
import queue
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from tritonclient.utils import InferenceServerException

from infergw.backends.triton import TritonBackend
from infergw.deploy.local.stack import local_config
from infergw.deploy.triton.launcher import TritonEndpoints, TritonServer
from infergw.gateway.core.config import parse_config
from infergw.gateway.core.policies import Admission
from infergw.gateway.frontends.oip_stream import MAX_UPSTREAMS
from infergw.proto import grpc_service_pb2 as pb
from infergw.wire.server_timing import parse_server_timing
from tests.integration.conftest import GatewayThread, ServiceThread, wait_until

pytestmark = pytest.mark.integration

WAIT_S = 30.0  # bound on every wait for a reply or a state
STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
LISTEN = {"grpc_port": 0, "http_port": 0, "metrics_port": 0}
Reply = tuple[Any, InferenceServerException | None]  # (InferResult | None, error | None)


@pytest.fixture(scope="module")
def triton() -> Iterator[TritonEndpoints]:
    """A Triton of this module's own: Triton 2.51 crashes (SIGSEGV in
    TRITONBACKEND_ResponseSend) when a non-decoupled model's stream runs beside a
    decoupled one's. The gateway no longer streams non-decoupled models upstream
    (``test_only_decoupled_models_stream_upstream``), but should a crash come back it must
    not take the session's Triton down with it. The teardown says so if it happened."""
    with TritonServer(models=["repeat", "identity"]) as server:
        yield server.endpoints
        assert server.running(), (
            "tritonserver died during the decoupled tests:\n" + server.log_tail()
        )


@pytest.fixture(scope="module")
def gateway(triton: TritonEndpoints) -> Iterator[GatewayThread]:
    gw = GatewayThread(local_config(triton.grpc, LISTEN))
    try:
        yield gw
    finally:
        gw.close()


def repeat_inputs(values: list[int], delay_ms: int | None = None) -> list[tgrpc.InferInput]:
    data = tgrpc.InferInput("input", [len(values)], "INT32")
    data.set_data_from_numpy(np.array(values, dtype=np.int32))
    if delay_ms is None:
        return [data]
    delay = tgrpc.InferInput("delay_ms", [1], "INT32")
    delay.set_data_from_numpy(np.array([delay_ms], dtype=np.int32))
    return [data, delay]


def identity_inputs(value: float) -> list[tgrpc.InferInput]:
    data = tgrpc.InferInput("input", [1, 2], "FP32")
    data.set_data_from_numpy(np.full((1, 2), value, np.float32))
    return [data]


class Stream:
    """One tritonclient stream; its callback queues what the client saw, in order."""

    def __init__(self, url: str, **options: Any) -> None:
        self.client = tgrpc.InferenceServerClient(url)
        self.replies: queue.Queue[Reply] = queue.Queue()
        self.client.start_stream(
            callback=lambda result, error: self.replies.put((result, error)), **options
        )

    def send(self, model: str, inputs: list[tgrpc.InferInput], request_id: str, **kw: Any) -> None:
        self.client.async_stream_infer(model, inputs, request_id=request_id, **kw)

    def take(self, count: int) -> list[Reply]:
        return [self.replies.get(timeout=WAIT_S) for _ in range(count)]

    def close(self, cancel: bool = False) -> list[Reply]:
        """Stop the stream (half-close, or cancel); returns whatever came after ``take``."""
        try:
            self.client.stop_stream(cancel_requests=cancel)
        finally:
            self.client.close()
        left = []
        while not self.replies.empty():
            left.append(self.replies.get_nowait())
        return left


def summary(result: Any) -> tuple[str, list[int] | None, bool]:
    """(id, output values or None, triton_final_response) of one streamed response."""
    response = result.get_response()
    output = result.as_numpy("output")
    values = None if output is None else [int(v) for v in output.ravel()]
    return response.id, values, response.parameters["triton_final_response"].bool_param


# (request id, values, enable_empty_final_response) -> what each request gets back
REQUESTS = [("a", [4, 5, 6], False), ("b", [], True), ("c", [7, 8], True), ("d", [9], False)]
EXPECTED = {
    "a": [([4], False), ([5], False), ([6], False)],  # the final flag alone is not sent
    "b": [(None, True)],
    "c": [([7], False), ([8], False), (None, True)],  # asked for: the empty final response
    "d": [([9], False)],
}


def run_repeat_requests(url: str) -> tuple[dict[str, list[tuple[list[int] | None, bool]]], list]:
    stream = Stream(url)
    try:
        for request_id, values, empty_final in REQUESTS:
            stream.send(
                "repeat",
                repeat_inputs(values),
                request_id,
                enable_empty_final_response=empty_final,
            )
        replies = stream.take(sum(len(v) for v in EXPECTED.values()))
    finally:
        left = stream.close()
    assert left == []  # nothing more: the gateway's own empty finals never reach the client
    by_id: dict[str, list[tuple[list[int] | None, bool]]] = {}
    results = []
    for result, error in replies:
        assert error is None, error
        request_id, values, final = summary(result)
        by_id.setdefault(request_id, []).append((values, final))
        results.append(result)
    return by_id, results


def test_every_response_streams_through_as_direct(
    triton: TritonEndpoints, gateway: ServiceThread
) -> None:
    direct, _ = run_repeat_requests(triton.grpc)
    through, results = run_repeat_requests(gateway.grpc)
    assert direct == EXPECTED
    assert through == direct  # per request: same outputs, same order, same final flags
    # Each response carries its own split: its request's phases, backend up to it, total.
    per_request: dict[str, list[str]] = {}
    for result in results:
        response = result.get_response()
        entries = parse_server_timing(response.parameters["server-timing"].string_param)
        assert {"decode", "queue", "backend", "total"} <= {e.name for e in entries}
        backend = next(e for e in entries if e.name == "backend")
        per_request.setdefault(response.id, []).append(backend.description)
    assert per_request["a"] == [f"backend=triton;response={n}" for n in (1, 2, 3)]


def answers(url: str, requests: list[tuple[str, list[tgrpc.InferInput], str]], count: int) -> list:
    """What one stream of ``requests`` gets: error messages and (id, values, final), sorted."""
    stream = Stream(url)
    try:
        for model, inputs, request_id in requests:
            stream.send(model, inputs, request_id, enable_empty_final_response=True)
        replies = stream.take(count)
    finally:
        assert stream.close() == []
    seen = [f"error: {error.message()}" for _, error in replies if error is not None]
    seen += [str(summary(result)) for result, error in replies if error is None]
    return sorted(seen)


def test_errors_come_per_response_and_the_stream_goes_on(
    triton: TritonEndpoints, gateway: ServiceThread
) -> None:
    wrong = tgrpc.InferInput("input", [1], "FP32")
    wrong.set_data_from_numpy(np.ones(1, np.float32))
    requests = [("repeat", [wrong], "wrong-dtype"), ("repeat", repeat_inputs([3]), "good")]
    direct = answers(triton.grpc, requests, 3)
    assert direct[:2] == ["('good', None, True)", "('good', [3], False)"]
    assert direct[2].endswith("data-type is 'FP32', but model 'repeat' expects 'INT32'")
    assert answers(gateway.grpc, requests, 3) == direct  # Triton's own answers, unchanged
    # An unknown model on its own stream (Triton 2.51 aborts when a stream mixes it, as a
    # model that is not decoupled, with a decoupled one; through the gateway it may).
    unknown = [("no_such_model", repeat_inputs([1]), "unknown")]
    assert answers(gateway.grpc, unknown, 1) == answers(triton.grpc, unknown, 1)
    mixed = [*unknown, *requests]
    assert answers(gateway.grpc, mixed, 4) == sorted(direct + answers(triton.grpc, unknown, 1))


def test_decoupled_and_other_models_share_a_client_stream(gateway: ServiceThread) -> None:
    # Triton 2.51 aborts when one of its streams mixes decoupled and other models; the
    # gateway keeps them apart upstream, and each model's answers keep their order.
    stream = Stream(gateway.grpc)
    try:
        for i in range(20):
            stream.send("repeat", repeat_inputs([i, i]), f"r{i}")
            stream.send("identity", identity_inputs(float(i)), f"i{i}")
        replies = stream.take(20 * 3)
    finally:
        assert stream.close() == []
    identity_ids, repeats = [], 0
    for result, error in replies:
        assert error is None, error
        response = result.get_response()
        if response.model_name == "identity":
            identity_ids.append(response.id)
            value = float(response.id[1:])
            np.testing.assert_array_equal(result.as_numpy("output"), np.full((1, 2), value))
            assert response.parameters["triton_final_response"].bool_param
        else:
            repeats += 1
    assert identity_ids == [f"i{i}" for i in range(20)]
    assert repeats == 40


def test_a_call_opens_a_bounded_number_of_upstream_streams(gateway: ServiceThread) -> None:
    stream = Stream(gateway.grpc)
    try:
        for i in range(MAX_UPSTREAMS + 1):  # a new model per message: a stream per model
            stream.send(f"no_such_model_{i}", repeat_inputs([1]), str(i))
        replies = stream.take(MAX_UPSTREAMS + 1)
    finally:
        assert stream.close() == []
    messages = [error.message() for _, error in replies if error is not None]
    triton_says = [m for m in messages if m.startswith("Request for unknown model")]
    assert len(triton_says) == MAX_UPSTREAMS  # each model's own stream, Triton's answer
    assert set(messages) - set(triton_says) == {
        f"a stream carries requests for at most {MAX_UPSTREAMS} models; open another stream"
    }


def test_the_trailer_has_the_call_totals(gateway: ServiceThread) -> None:
    request = pb.ModelInferRequest(model_name="repeat", id="t")
    request.inputs.add(name="input", datatype="INT32", shape=[2])
    request.raw_input_contents.append(np.array([1, 2], np.int32).tobytes())
    with grpc.insecure_channel(gateway.grpc) as channel:
        rpc = channel.stream_stream(
            STREAM_INFER, response_deserializer=pb.ModelStreamInferResponse.FromString
        )
        call = rpc(iter([request.SerializeToString()]), timeout=WAIT_S)
        replies = list(call)
        trailer = dict(call.trailing_metadata() or ())["server-timing"]
    assert [r.infer_response.parameters["triton_final_response"].bool_param for r in replies] == [
        False,
        False,
    ]
    names = [e.name for e in parse_server_timing(trailer)]
    assert names[0] == "total" and {"decode", "queue", "backend"} <= set(names)


def test_modelinfer_on_a_decoupled_model_answers_as_triton(
    triton: TritonEndpoints, gateway: ServiceThread
) -> None:
    messages = []
    for url in (triton.grpc, gateway.grpc):
        with (
            tgrpc.InferenceServerClient(url) as client,
            pytest.raises(InferenceServerException) as info,
        ):
            client.infer("repeat", repeat_inputs([1]))
        messages.append((info.value.status(), info.value.message()))
    assert messages[0] == messages[1]
    assert "decoupled transaction policy" in messages[0][1]


def test_only_decoupled_models_stream_upstream(triton: TritonEndpoints) -> None:
    # Triton 2.51 crashes when a non-decoupled model's stream runs beside a decoupled
    # one's: the backend reads each model's transaction policy from Triton's config, and
    # only a decoupled model's requests (or one Triton does not know) go on a stream.
    async def ask() -> list[bool]:
        backend = TritonBackend("triton", triton.grpc)
        try:
            return [await backend.needs_stream(m) for m in ("repeat", "identity", "nope")]
        finally:
            await backend.close()

    assert asyncio.run(ask()) == [True, False, True]


def test_repeat_cannot_be_pinned_to_a_serverless_backend(triton: TritonEndpoints) -> None:
    # The local stack's routes: repeat is Triton's only (the serverless runtimes answer one
    # response per request). The Cloud Run backend is configured but never reached here.
    serverless = {"cloudrun": {"kind": "cloudrun", "url": "h2c://127.0.0.1:9"}}
    gw = GatewayThread(local_config(triton.grpc, LISTEN, serverless))
    try:
        stream = Stream(gw.grpc, headers={"x-infergw-backend": "cloudrun"})
        try:
            stream.send("repeat", repeat_inputs([1]), "pinned")
            ((result, error),) = stream.take(1)
        finally:
            assert stream.close() == []
    finally:
        gw.close()
    assert result is None and error is not None
    assert error.message() == "backend 'cloudrun' is not available for model 'repeat'"


# -- admission: one slot per request in flight ------------------------------------------------


@pytest.fixture(scope="module")
def one_slot(triton: TritonEndpoints) -> Iterator[GatewayThread]:
    """A gateway whose Triton takes one request at a time and queues none."""
    backend = {"kind": "triton", "url": triton.grpc, "max_concurrency": 1, "max_queue": 0}
    config = parse_config(
        {
            "listen": {"host": "127.0.0.1", **LISTEN},
            "backends": {"triton": backend},
            "models": {"*": {"backend": "triton"}},
        }
    )
    gw = GatewayThread(config)
    try:
        yield gw
    finally:
        gw.close()


def admission_of(gw: GatewayThread) -> Admission:
    admission = gw.gateway.router.backends["triton"]
    assert isinstance(admission, Admission)
    return admission


async def stream_tasks() -> list[str]:
    return [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("infergw-stream")]


def assert_released(gw: GatewayThread) -> None:
    """The slot comes back and no task of the call is left (the client has gone)."""
    admission = admission_of(gw)
    wait_until(lambda: admission.in_flight == 0, "the stream's slot released")
    wait_until(lambda: gw.run(stream_tasks()) == [], "the stream's tasks ended")
    with tgrpc.InferenceServerClient(gw.grpc) as client:  # the one slot is free again
        assert client.infer("identity", identity_inputs(1.0)).as_numpy("output") is not None


def counted(gw: GatewayThread, *labels: str) -> float:
    """``infergw_requests_total`` summed over the series carrying all ``labels``."""
    with urllib.request.urlopen(f"http://{gw.metrics}/metrics", timeout=WAIT_S) as reply:
        text = reply.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("infergw_requests_total{") and all(label in line for label in labels)
    )


def test_a_request_in_a_stream_holds_a_slot_until_cancelled(one_slot: GatewayThread) -> None:
    stream = Stream(one_slot.grpc)
    try:
        stream.send("repeat", repeat_inputs(list(range(100)), delay_ms=100), "long")
        ((first, error),) = stream.take(1)  # in flight: it holds the one slot
        assert error is None and summary(first) == ("long", [0], False)
        assert admission_of(one_slot).in_flight == 1
        client = tgrpc.InferenceServerClient(one_slot.grpc)
        with client, pytest.raises(InferenceServerException) as info:
            client.infer("identity", identity_inputs(1.0))
        assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        other = Stream(one_slot.grpc)
        try:
            other.send("repeat", repeat_inputs([1]), "second")
            ((_, refused),) = other.take(1)
        finally:
            other.close()
        assert refused is not None and "at its limit of 1 in flight" in refused.message()
    finally:
        stream.close(cancel=True)  # mid-stream: 99 responses still to come
    assert_released(one_slot)
    assert counted(one_slot, 'protocol="grpc-stream"', 'status="CANCELLED"') >= 1


def test_the_deadline_ends_the_stream_and_releases_its_slot(one_slot: GatewayThread) -> None:
    stream = Stream(one_slot.grpc, stream_timeout=1.0)
    try:
        stream.send("repeat", repeat_inputs(list(range(100)), delay_ms=100), "late")
        replies = [stream.replies.get(timeout=WAIT_S)]
        while replies[-1][1] is None or replies[-1][1].status() is None:
            replies.append(stream.replies.get(timeout=WAIT_S))
    finally:
        stream.close()
    error = replies[-1][1]
    assert error is not None and error.status() == "StatusCode.DEADLINE_EXCEEDED"
    outputs = [summary(result)[1] for result, error in replies if error is None]
    assert outputs == [[i] for i in range(len(outputs))] and len(outputs) < 100  # mid-stream
    assert_released(one_slot)
