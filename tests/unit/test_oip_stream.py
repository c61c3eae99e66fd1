"""The ModelStreamInfer bytes the gateway reads and appends (wire/oip_stream.py), and the
streaming capability through the policy stack (gateway/core/policies.py)."""

from __future__ import annotations

import asyncio

import pytest

from infergw.gateway.core.backend import InferStream, Release
from infergw.gateway.core.config import BackendConfig
from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.policies import DEFAULT_STACK, Admission, build_stack
from infergw.proto import grpc_service_pb2 as pb
from infergw.vocab.errors import QueueFull
from infergw.wire import oip_stream
from infergw.wire.oip_stream import StreamReply
from infergw.wire.protowire import WireError, find_varint
from tests.fakes import EchoBackend


def reply(
    error: str = "",
    response_id: str = "",
    final: bool | None = None,
    outputs: int = 0,
    params: dict[str, pb.InferParameter] | None = None,
) -> bytes:
    msg = pb.ModelStreamInferResponse(error_message=error)
    response = msg.infer_response
    response.id = response_id
    for key, value in (params or {}).items():
        response.parameters[key].CopyFrom(value)
    if final is not None:
        response.parameters[oip_stream.FINAL].bool_param = final
    for i in range(outputs):
        response.outputs.add(name=f"out{i}", datatype="INT32", shape=[1])
        response.raw_output_contents.append(b"\0" * 4)
    return msg.SerializeToString()


OTHER = {"other": pb.InferParameter(bool_param=True)}
CASES = [
    # (what the backend sent, what the gateway reads, completes, empty_final)
    (reply("", "a", False, 1), StreamReply("a", "", False, 1), False, False),
    (reply("", "a", True, 1), StreamReply("a", "", True, 1), True, False),
    (reply("", "a", True, 0), StreamReply("a", "", True, 0), True, True),
    (reply("boom", "a", True), StreamReply("a", "boom", True, 0), True, False),
    (reply("bad dtype", "b"), StreamReply("b", "bad dtype", None, 0), True, False),
    (reply("", "c"), StreamReply("c", "", None, 0), False, False),
    (reply("", "", False, 2, OTHER), StreamReply("", "", False, 2), False, False),
    (b"", StreamReply("", "", None, 0), False, False),
]


@pytest.mark.parametrize(("payload", "expected", "completes", "empty_final"), CASES)
def test_read_reply(
    payload: bytes, expected: StreamReply, completes: bool, empty_final: bool
) -> None:
    info = oip_stream.read_reply(payload)
    assert info == expected
    assert info.completes is completes
    assert info.empty_final is empty_final


def test_a_final_flag_appended_later_wins_as_protobuf_merges() -> None:
    merged = reply("", "a", False, 1) + reply(final=True)
    assert oip_stream.read_reply(merged).final is True
    assert (
        pb.ModelStreamInferResponse.FromString(merged)
        .infer_response.parameters[oip_stream.FINAL]
        .bool_param
    )


@pytest.mark.parametrize("payload", [b"\x0a\x05ab", b"\x0a\x02\xff\xfe", b"\x0b"])
def test_read_reply_rejects_what_is_not_a_message(payload: bytes) -> None:
    with pytest.raises(WireError):
        oip_stream.read_reply(payload)


def test_with_empty_final_keeps_the_request_and_asks_for_the_empty_final() -> None:
    request = pb.ModelInferRequest(model_name="repeat", id="x")
    request.parameters["mine"].int64_param = 7
    request.inputs.add(name="input", datatype="INT32", shape=[1])
    request.raw_input_contents.append(b"\1\0\0\0")
    sent = pb.ModelInferRequest.FromString(oip_stream.with_empty_final(request.SerializeToString()))
    assert sent.parameters[oip_stream.EMPTY_FINAL].bool_param
    del sent.parameters[oip_stream.EMPTY_FINAL]
    assert sent == request


def test_with_reply_parameter_adds_one_parameter_and_changes_nothing_else() -> None:
    original = reply("", "a", True, 2, OTHER)
    out = oip_stream.with_reply_parameter(original, "server-timing", "total;dur=1.000")
    assert out.startswith(original)  # the backend's bytes, unchanged, then ours
    parsed = pb.ModelStreamInferResponse.FromString(out)
    assert parsed.infer_response.parameters["server-timing"].string_param == "total;dur=1.000"
    del parsed.infer_response.parameters["server-timing"]
    assert parsed == pb.ModelStreamInferResponse.FromString(original)
    assert oip_stream.read_reply(out) == oip_stream.read_reply(original)


def model_config_reply(**config: object) -> bytes:
    from tritonclient.grpc import model_config_pb2, service_pb2

    return service_pb2.ModelConfigResponse(
        config=model_config_pb2.ModelConfig(name="m", **config)  # type: ignore[arg-type]
    ).SerializeToString()


@pytest.mark.parametrize(
    ("config", "decoupled"),
    [
        ({}, False),
        ({"model_transaction_policy": {"decoupled": False}}, False),
        ({"model_transaction_policy": {"decoupled": True}}, True),
        ({"model_transaction_policy": {"decoupled": True}, "max_batch_size": 8}, True),
    ],
)
def test_is_decoupled_reads_tritons_model_config(config: dict, decoupled: bool) -> None:
    assert oip_stream.is_decoupled(model_config_reply(**config)) is decoupled


def test_is_decoupled_takes_the_last_occurrence_as_protobuf_does() -> None:
    on = model_config_reply(model_transaction_policy={"decoupled": True})
    off = model_config_reply(model_transaction_policy={"decoupled": False}, max_batch_size=1)
    assert oip_stream.is_decoupled(off + on) and oip_stream.is_decoupled(on + off) is True
    # ("decoupled: false" is not sent at all: merging keeps the true one.)


def test_find_varint_reads_nested_scalars_and_rejects_garbage() -> None:
    payload = model_config_reply(max_batch_size=7)
    assert find_varint(payload, (1, 4)) == 7  # ModelConfig.max_batch_size
    assert find_varint(payload, (1, 19, 1)) is None
    assert find_varint(payload, (9,)) is None
    with pytest.raises(WireError):
        oip_stream.is_decoupled(b"\x0a\x05ab")


# -- the capability through the policies ----------------------------------------------------


class StreamingEcho(EchoBackend):
    """Implements ``StreamingBackend``; records what it admitted and released."""

    encoding = "oip-grpc"

    def __init__(self) -> None:
        super().__init__("streamer")
        self.admitted = 0
        self.released = 0

    async def open_stream(self, ctx: RequestContext) -> InferStream:
        raise NotImplementedError  # not reached by these tests

    async def needs_stream(self, model: str) -> bool:
        return True

    async def admit(self, ctx: RequestContext) -> Release:
        self.admitted += 1

        def release() -> None:
            self.released += 1

        return release


def stack(backend: EchoBackend, max_concurrency: int = 1, max_queue: int = 0) -> Admission:
    cfg = BackendConfig(
        name=backend.name,
        kind="echo",
        max_concurrency=max_concurrency,
        max_queue=max_queue,
        queue_timeout_ms=50,
    )
    wrapped = build_stack(backend, cfg, DEFAULT_STACK)
    assert isinstance(wrapped, Admission)
    return wrapped


def test_a_backend_that_does_not_stream_has_no_capability_through_the_stack() -> None:
    assert EchoBackend().streaming is None
    assert stack(EchoBackend()).streaming is None


async def test_each_admitted_request_holds_a_slot_until_released_once() -> None:
    backend = StreamingEcho()
    admission = stack(backend)
    capability = admission.streaming
    assert capability is not None
    assert (capability.name, capability.encoding) == ("streamer", "oip-grpc")
    ctx = RequestContext("grpc-stream")
    release = await capability.admit(ctx)
    assert admission.in_flight == 1 and backend.admitted == 1
    assert "queue" in {e.name for e in ctx.timings.entries}
    with pytest.raises(QueueFull):  # the one slot is held: a unary call is refused too
        await capability.admit(RequestContext("grpc-stream"))
    release()
    release()  # a second release frees nothing more
    assert admission.in_flight == 0 and backend.released == 1
    (await capability.admit(RequestContext("grpc-stream")))()
    assert admission.in_flight == 0


async def test_a_queued_request_gets_the_slot_a_stream_releases() -> None:
    admission = stack(StreamingEcho(), max_queue=1)
    capability = admission.streaming
    assert capability is not None
    release = await capability.admit(RequestContext("grpc-stream"))
    waiting = asyncio.ensure_future(capability.admit(RequestContext("grpc-stream")))
    await asyncio.sleep(0)
    assert admission.queued == 1
    release()
    (await asyncio.wait_for(waiting, 5))()
    assert admission.in_flight == 0 and admission.queued == 0
