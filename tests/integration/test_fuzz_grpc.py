"""Bounded fuzzing of the gRPC frontends: OIP ModelInfer and TF Serving Predict messages.

A seeded mutator (the same messages every run) starts from well-formed requests and
changes them the way a broken or hostile client would: field values at their edges
(shapes, datatypes, names, parameters at int64/uint64 limits, lone-surrogate-free but
odd strings), contents that do not match, fields dropped or repeated, and raw bytes
cut, flipped or spliced. Every call is bounded by ``CALL_TIMEOUT_S``; the answer to
client input must never be INTERNAL, UNKNOWN, DATA_LOSS, UNAVAILABLE (the server went
away) or DEADLINE_EXCEEDED (a hang). After each run a well-formed request still succeeds.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Iterator
from typing import Any, cast

import grpc
import numpy as np
import pytest

from infergw.gateway.core.context import RequestContext
from infergw.proto import grpc_service_pb2 as pb
from infergw.proto.tfs import predict_pb2, tensor_pb2, types_pb2
from infergw.vocab.types import InferRequest, InferResponse
from tests.integration.conftest import ServiceThread
from tests.integration.fuzz_gateway import (
    CALL_TIMEOUT_S,
    Findings,
    ProtoEchoBackend,
    gateway_fixture,
    start_gateway,
)

pytestmark = pytest.mark.integration

SEED = 9
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
PREDICT = "/tensorflow.serving.PredictionService/Predict"
NOT_FOR_CLIENT_INPUT = {
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"]
DATATYPES += ["FP16", "FP32", "FP64", "BF16", "BYTES", "", "fp32", "FP33"]
EDGE_INTS = [0, -1, 1, 2**31 - 1, -(2**31), 2**32, 2**53 + 1, 2**63 - 1, -(2**63)]
EDGE_UINTS = [0, 1, 2**63, 2**64 - 1]
NAMES = ["input", "output", "", "é", "\0", "💩", "a" * 300, "input\0"]
TF_DTYPES = [0, 1, 2, 3, 7, 9, 10, 19, 23, 30, 99, 101, -1, 2**31 - 1]  # incl. unknown values


@pytest.fixture(scope="module")
def gateway() -> Iterator[ServiceThread]:
    yield from gateway_fixture()


@pytest.fixture(scope="module")
def channel(gateway: ServiceThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(gateway.grpc) as ch:
        yield ch


# -- the mutator ----------------------------------------------------------------------------
class Mutator(random.Random):
    def int64(self) -> int:
        return self.choice([self.randint(-5, 5), self.choice(EDGE_INTS)])

    def name(self) -> str:
        return self.choice([*NAMES, "".join(chr(self.randrange(1, 0xD800)) for _ in range(4))])

    def blob(self) -> bytes:
        return self.randbytes(self.choice([0, 1, 3, 4, 7, 8, 16, 17, 64]))

    def mangle(self, data: bytes) -> bytes:
        """Byte-level damage: cut, flip a bit, splice random bytes, or a length that lies."""
        if not data:
            return self.blob()
        at = self.randrange(len(data))
        pick = self.randrange(4)
        if pick == 0:
            return data[:at]
        if pick == 1:
            return data[:at] + bytes([data[at] ^ (1 << self.randrange(8))]) + data[at + 1 :]
        if pick == 2:
            return data[:at] + self.randbytes(self.randint(1, 8)) + data[at:]
        # field 1 (model_name / model_spec) as a length-delimited field claiming too much
        return b"\x0a" + bytes([0xFF, 0xFF, 0xFF, 0x7F]) + data

    def parameter(self, target: Any) -> None:
        key = self.choice(["timeout", "priority", "sequence_id", "binary_data", "x", self.name()])
        p = target[key]
        pick = self.randrange(4)
        if pick == 0:
            p.int64_param = self.int64()
        elif pick == 1:
            p.uint64_param = self.choice(EDGE_UINTS)
        elif pick == 2:
            p.double_param = self.choice([float("nan"), float("inf"), -1.0, 1e300, 0.5])
        else:
            p.string_param = self.name()


def seed_infer_requests() -> list[pb.ModelInferRequest]:
    """Well-formed ModelInfer requests: raw and typed contents, BYTES, requested outputs."""
    raw = pb.ModelInferRequest(model_name="identity")
    raw.inputs.add(name="input", datatype="FP32", shape=[2, 3])
    raw.raw_input_contents.append(np.arange(6, dtype=np.float32).tobytes())
    raw.outputs.add(name="output")
    typed = pb.ModelInferRequest(model_name="echo", id="req-1")
    t = typed.inputs.add(name="input", datatype="INT64", shape=[1, 4])
    t.contents.int64_contents.extend([1, -2, 2**62, 0])
    strings = pb.ModelInferRequest(model_name="identity")
    strings.inputs.add(name="input", datatype="BYTES", shape=[2])
    strings.raw_input_contents.append(b"".join(struct.pack("<I", len(s)) + s for s in (b"a", b"")))
    fp16 = pb.ModelInferRequest(model_name="identity", model_version="1")
    fp16.inputs.add(name="input", datatype="FP16", shape=[1, 2])
    fp16.raw_input_contents.append(np.ones(2, np.float16).tobytes())
    return [raw, typed, strings, fp16]


def mutated_infer(m: Mutator, seeds: list[pb.ModelInferRequest]) -> bytes:
    msg = pb.ModelInferRequest()
    msg.CopyFrom(m.choice(seeds))
    for _ in range(m.choice([0, 1, 1, 2, 3])):
        pick = m.randrange(12)
        tensor = m.choice(msg.inputs) if msg.inputs else msg.inputs.add(name="input")
        if pick == 0:
            msg.model_name = m.choice(["identity", "echo", "nope", m.name()])
        elif pick == 1:
            msg.model_version = m.choice(["1", "2", "-1", m.name()])
        elif pick == 2:
            tensor.datatype = m.choice(DATATYPES)
        elif pick == 3:
            del tensor.shape[:]
            tensor.shape.extend(m.int64() for _ in range(m.randint(0, 4)))
        elif pick == 4:
            tensor.name = m.name()
        elif pick == 5:
            m.parameter(m.choice([msg.parameters, tensor.parameters]))
        elif pick == 6:
            if msg.raw_input_contents:
                msg.raw_input_contents[0] = m.blob()
            else:
                msg.raw_input_contents.append(m.blob())
        elif pick == 7:
            msg.raw_input_contents.append(m.blob())  # more contents than inputs
        elif pick == 8:
            tensor.contents.fp32_contents.extend([1.0] * m.randint(1, 7))  # both kinds
        elif pick == 9:
            extra = msg.inputs.add()
            extra.CopyFrom(tensor)  # the same input twice
        elif pick == 10:
            out = msg.outputs.add(name=m.choice(["output", m.name()]))
            if m.randrange(2):
                m.parameter(out.parameters)
        else:
            msg.id = m.name()
    data = msg.SerializeToString()
    return m.mangle(data) if m.randrange(5) == 0 else data


def seed_predict_requests() -> list[predict_pb2.PredictRequest]:
    content = predict_pb2.PredictRequest()
    content.model_spec.name = "identity"
    t = content.inputs["input"]
    t.dtype = types_pb2.DT_FLOAT
    t.tensor_shape.dim.add(size=2)
    t.tensor_shape.dim.add(size=2)
    t.tensor_content = np.arange(4, dtype=np.float32).tobytes()
    vals = predict_pb2.PredictRequest()
    vals.model_spec.name = "echo"
    vals.model_spec.signature_name = "serving_default"
    v = vals.inputs["input"]
    v.dtype = types_pb2.DT_INT64
    v.tensor_shape.dim.add(size=3)
    v.int64_val.extend([1, 2, 3])
    strings = predict_pb2.PredictRequest()
    strings.model_spec.name = "identity"
    strings.output_filter.append("output")
    s = strings.inputs["input"]
    s.dtype = types_pb2.DT_STRING
    s.tensor_shape.dim.add(size=2)
    s.string_val.extend([b"a", b"\xff"])
    return [content, vals, strings]


def mutated_predict(m: Mutator, seeds: list[predict_pb2.PredictRequest]) -> bytes:
    msg = predict_pb2.PredictRequest()
    msg.CopyFrom(m.choice(seeds))
    for _ in range(m.choice([0, 1, 1, 2, 3])):
        name = m.choice(list(msg.inputs) or ["input"])
        tensor: tensor_pb2.TensorProto = msg.inputs[name]
        pick = m.randrange(10)
        if pick == 0:
            msg.model_spec.name = m.choice(["identity", "echo", "nope", m.name()])
        elif pick == 1:
            msg.model_spec.version.value = m.int64()
        elif pick == 2:
            msg.model_spec.version_label = m.name()
        elif pick == 3:
            msg.model_spec.signature_name = m.choice(["serving_default", "", m.name()])
        elif pick == 4:
            tensor.dtype = cast(types_pb2.DataType, m.choice(TF_DTYPES))  # open enum: any int
        elif pick == 5:
            del tensor.tensor_shape.dim[:]
            for _ in range(m.randint(0, 4)):
                tensor.tensor_shape.dim.add(size=m.int64())
            tensor.tensor_shape.unknown_rank = m.randrange(4) == 0
        elif pick == 6:
            tensor.tensor_content = m.blob()
        elif pick == 7:
            tensor.float_val.extend([m.random()] * m.randint(1, 5))
            tensor.half_val.extend([m.randint(0, 2**31 - 1)] * m.randint(0, 3))
        elif pick == 8:
            msg.inputs[m.name()].CopyFrom(tensor)
        else:
            msg.output_filter.append(m.name())
    data = msg.SerializeToString()
    return m.mangle(data) if m.randrange(5) == 0 else data


# -- the runs -------------------------------------------------------------------------------
TRACEPARENTS = ["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "00-zz", "x" * 8000]


def metadata(m: Mutator) -> list[tuple[str, str]]:
    """Sometimes odd (ASCII: gRPC clients refuse anything else) trace and pinning metadata."""
    md = []
    if m.randrange(8) == 0:
        md.append(("traceparent", m.choice([*TRACEPARENTS, m.randbytes(8).hex()])))
    if m.randrange(8) == 0:
        md.append(("x-infergw-backend", m.choice(["echo", "proto", "nope", ""])))
    return md


def check(code: grpc.StatusCode, details: str, findings: Findings, what: Any) -> None:
    findings.answers[code.name] += 1
    if code in NOT_FOR_CLIENT_INPUT:
        findings.add(code.name, (what, details[:200]))


def run(
    channel: grpc.Channel, method: str, make: Callable[[Mutator], bytes], count: int
) -> Findings:
    call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
    findings = Findings()
    m = Mutator(SEED)
    for _ in range(count):
        payload, md = make(m), metadata(m)
        findings.sent += 1
        try:
            call(payload, timeout=CALL_TIMEOUT_S, metadata=tuple(md))
            check(grpc.StatusCode.OK, "", findings, payload)
        except grpc.RpcError as err:
            check(err.code(), err.details() or "", findings, (payload[:300], md))
    return findings


def good_infer(channel: grpc.Channel) -> None:
    request = seed_infer_requests()[0]
    call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(MODEL_INFER)
    reply = pb.ModelInferResponse.FromString(
        call(request.SerializeToString(), timeout=CALL_TIMEOUT_S)
    )
    assert list(reply.raw_output_contents) == list(request.raw_input_contents)


def test_mutated_model_infer_gets_client_errors_and_the_server_keeps_serving(
    channel: grpc.Channel,
) -> None:
    seeds = seed_infer_requests()
    findings = run(channel, MODEL_INFER, lambda m: mutated_infer(m, seeds), 4000)
    assert not findings.kinds, findings.report()
    assert findings.answers["OK"] >= 400, findings.report()  # the mutations reach the backend
    good_infer(channel)


def test_mutated_tf_serving_predict_gets_client_errors_and_the_server_keeps_serving(
    channel: grpc.Channel,
) -> None:
    seeds = seed_predict_requests()
    findings = run(channel, PREDICT, lambda m: mutated_predict(m, seeds), 2000)
    assert not findings.kinds, findings.report()
    assert findings.answers["OK"] >= 200, findings.report()
    good_infer(channel)


class FragileBackend(ProtoEchoBackend):
    """Breaks on any request parameter, as the int64 bugs of issue 9 did on some routes."""

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        if request.parameters:
            raise RuntimeError("a bug in the backend")
        return await super().infer(request, ctx)


def test_the_fuzzer_finds_a_backend_bug() -> None:
    """The same run against a gateway with a bug reports INTERNAL: the fuzzer can fail."""
    gateway = start_gateway(FragileBackend("proto"))
    try:
        with grpc.insecure_channel(gateway.grpc) as channel:
            seeds = seed_infer_requests()
            findings = run(channel, MODEL_INFER, lambda m: mutated_infer(m, seeds), 300)
    finally:
        gateway.close()
    assert findings.kinds["INTERNAL"] > 0, findings.report()
    assert set(findings.kinds) == {"INTERNAL"}, findings.report()


def test_the_verdicts_can_fail() -> None:
    findings = Findings()
    check(grpc.StatusCode.INVALID_ARGUMENT, "bad shape", findings, "client error")
    check(grpc.StatusCode.NOT_FOUND, "no model", findings, "unknown model")
    assert not findings.kinds
    for code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        check(code, "boom", findings, "server error")
    check(grpc.StatusCode.DEADLINE_EXCEEDED, "", findings, "hang")
    assert findings.kinds == {"INTERNAL": 1, "UNKNOWN": 1, "DEADLINE_EXCEEDED": 1}
