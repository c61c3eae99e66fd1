"""The time left travels to Triton as its per-request ``timeout`` parameter (microseconds)."""

from __future__ import annotations

import numpy as np
import pytest

from infergw.backends.triton import TIMEOUT_COPY_LIMIT_BYTES, TritonBackend
from infergw.gateway.core.context import RequestContext
from infergw.proto import grpc_service_pb2 as pb
from infergw.vocab.datatypes import tensor_from_numpy
from infergw.vocab.types import InferRequest, RawMessage
from infergw.wire import oip_proto

BACKEND = TritonBackend("triton", "127.0.0.1:1")  # no channel is opened by _payload


def ctx(timeout_s: float | None) -> RequestContext:
    c = RequestContext("grpc")
    if timeout_s is not None:
        c.with_timeout(timeout_s)
    return c


def sent(request: InferRequest, timeout_s: float | None) -> pb.ModelInferRequest:
    return pb.ModelInferRequest.FromString(BACKEND._payload(request, ctx(timeout_s)))


def request(elements: int = 4, **parameters: object) -> InferRequest:
    data = tensor_from_numpy("input", np.ones((1, elements), np.float32))
    return InferRequest("identity", (data,), parameters=parameters)  # type: ignore[arg-type]


def test_the_time_left_becomes_tritons_timeout_and_the_tensors_are_unchanged() -> None:
    message = sent(request(), 2.0)
    assert 1.9e6 < message.parameters["timeout"].int64_param <= 2.0e6
    assert message.raw_input_contents == [np.ones(4, np.float32).tobytes()]


def test_a_raw_request_keeps_its_bytes_and_gets_the_parameter_appended() -> None:
    original = pb.ModelInferRequest(model_name="identity", id="r")
    original.parameters["priority"].int64_param = 3
    raw = original.SerializeToString()
    req = InferRequest("identity", (), id="r", raw=RawMessage(oip_proto.ENCODING, raw))
    payload = BACKEND._payload(req, ctx(1.0))
    assert payload.startswith(raw)
    message = pb.ModelInferRequest.FromString(payload)
    assert message.parameters["priority"].int64_param == 3 and message.id == "r"
    assert 0.9e6 < message.parameters["timeout"].int64_param <= 1.0e6


@pytest.mark.parametrize(
    ("client_us", "expected_max_us"),
    [(500_000, 500_000), (5_000_000, 2_000_000), (0, 2_000_000)],
)
def test_the_tighter_of_the_clients_timeout_and_the_deadline_wins(
    client_us: int, expected_max_us: int
) -> None:
    original = pb.ModelInferRequest(model_name="identity")
    original.parameters["timeout"].int64_param = client_us
    raw = RawMessage(oip_proto.ENCODING, original.SerializeToString())
    req = InferRequest("identity", (), parameters={"timeout": client_us}, raw=raw)
    timeout = pb.ModelInferRequest.FromString(BACKEND._payload(req, ctx(2.0))).parameters["timeout"]
    assert expected_max_us * 0.95 < timeout.int64_param <= expected_max_us


def test_no_deadline_or_a_large_payload_is_sent_as_it_is() -> None:
    assert "timeout" not in sent(request(), None).parameters
    big = request(TIMEOUT_COPY_LIMIT_BYTES // 4 + 1)
    assert "timeout" not in sent(big, 5.0).parameters  # the gRPC deadline still holds it
