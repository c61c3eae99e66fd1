"""Where an input's data comes from, and what is checked first: as Triton does (issue 10).

``oip_proto.request_from_proto`` finds each input's data as Triton's server does (shared
memory, ``contents``, or the next ``raw_input_contents`` entry) with Triton's messages;
``InferenceService.validate`` checks the model's route before anything about inputs.
"""

from __future__ import annotations

import numpy as np
import pytest

from infergw.gateway.core.config import RouteConfig
from infergw.gateway.core.control import HttpCall, HttpReply
from infergw.gateway.core.router import Router
from infergw.gateway.core.service import InferenceService
from infergw.proto import grpc_service_pb2 as pb
from infergw.vocab.errors import InvalidArgument, ModelNotFound
from infergw.vocab.types import InferRequest, Tensor
from infergw.wire import oip_proto
from tests.fakes import EchoBackend

PAIR = np.array([1.0, 2.0], np.float32).tobytes()


def message(*inputs: dict[str, object], raw: int = 0) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name="simple")
    for spec in inputs:
        tensor = msg.inputs.add(name=str(spec["name"]), datatype="FP32", shape=[1, 2])
        if spec.get("contents"):
            tensor.contents.fp32_contents.extend([1.0, 2.0])
        if spec.get("shm"):
            tensor.parameters["shared_memory_region"].string_param = "region"
            tensor.parameters["shared_memory_byte_size"].int64_param = 8
    msg.raw_input_contents.extend([PAIR] * raw)
    return msg


@pytest.mark.parametrize(
    ("inputs", "raw", "data"),
    [
        ([{"name": "A"}, {"name": "B"}], 2, [PAIR, PAIR]),
        ([{"name": "A", "contents": True}], 0, [PAIR]),
        # Inputs in shared memory take no raw entry: the others take theirs in order.
        ([{"name": "A", "shm": True}, {"name": "B"}], 1, [b"", PAIR]),
    ],
    ids=["raw", "contents", "shared-memory"],
)
def test_where_input_data_comes_from(
    inputs: list[dict[str, object]], raw: int, data: list[bytes]
) -> None:
    request = oip_proto.request_from_proto(message(*inputs, raw=raw))
    assert [bytes(t.data) for t in request.inputs] == data


@pytest.mark.parametrize(
    ("inputs", "raw", "text"),
    [
        (
            [{"name": "A", "contents": True}, {"name": "B"}],
            1,
            "contents field must not be specified when using raw_input_contents for 'A' "
            "for model 'simple'",
        ),
        (
            [{"name": "A", "contents": True, "shm": True}],
            0,
            "unexpected 'content' provided when using shared memory for input tensor 'A' "
            "for model 'simple'",
        ),
        (
            [{"name": "A"}, {"name": "B"}],
            1,
            "unable to find data for input tensor 'B' for model 'simple' in request.",
        ),
        ([{"name": "A"}], 2, "2 raw_input_contents for 1 inputs that take raw data"),
    ],
    ids=["contents-and-raw", "contents-and-shm", "missing-data", "extra-raw"],
)
def test_input_data_errors(inputs: list[dict[str, object]], raw: int, text: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        oip_proto.request_from_proto(message(*inputs, raw=raw))
    assert info.value.message.startswith(text)


class ControlEcho(EchoBackend):
    """An echo backend with a control plane: it validates requests itself, as Triton does."""

    async def grpc_control(self, method: str, payload: bytes, timeout_s: float | None) -> bytes:
        return b""

    async def http_control(self, call: HttpCall) -> HttpReply:
        return HttpReply(200, b"{}")

    @property
    def serves_http(self) -> bool:
        return False

    async def extensions(self) -> tuple[str, ...]:
        return ()


def service(*routes: tuple[str, str]) -> InferenceService:
    backends = {"echo": EchoBackend(), "triton": ControlEcho("triton")}
    return InferenceService(Router(backends, [RouteConfig(model=m, backend=b) for m, b in routes]))


def test_an_unknown_model_is_404_before_its_inputs_are_checked() -> None:
    with pytest.raises(ModelNotFound):
        service(("identity", "echo")).validate(InferRequest("nope", ()))


@pytest.mark.parametrize(("backend", "accepted"), [("echo", False), ("triton", True)])
def test_an_empty_request_is_the_control_plane_s_to_answer(backend: str, accepted: bool) -> None:
    validate = service(("*", backend)).validate
    if accepted:
        validate(InferRequest("nope", ()))  # Triton answers: 404 unknown, or its own 400
    else:
        with pytest.raises(InvalidArgument, match="request has no inputs"):
            validate(InferRequest("nope", ()))


def test_an_input_in_shared_memory_is_for_triton_to_read() -> None:
    in_region = Tensor("input", "FP32", (1, 2), b"", {"shared_memory_region": "region"})
    service(("*", "triton")).validate(InferRequest("identity", (in_region,)))
    with pytest.raises(InvalidArgument, match="needs 8 bytes, got 0"):
        empty = Tensor("input", "FP32", (1, 2), b"")
        service(("*", "triton")).validate(InferRequest("identity", (empty,)))
    with pytest.raises(InvalidArgument, match="only a Triton backend reads"):
        service(("*", "echo")).validate(InferRequest("identity", (in_region,)))
