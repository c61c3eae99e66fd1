"""The gateway the fuzzers attack, and how they keep score.

One real gateway on 127.0.0.1 (free ports) with two in-process backends: ``echo`` (the
fake) serves model ``echo``, and ``proto`` serves ``identity`` after encoding every
request as a ``ModelInferRequest`` and decoding the echoed reply from protobuf, as the
Triton and Cloud Run backends do, so inputs that only break on the way to a protobuf
backend are found without starting Triton.

A fuzzer sends each input once, bounded by ``CALL_TIMEOUT_S``, and records what went
wrong in a ``Findings`` instead of raising: the whole budget runs (no shrinking, which
would be unbounded), and the report lists every kind of failure with its first inputs.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from dataclasses import dataclass, field

from infergw.gateway.app import Gateway
from infergw.gateway.core.config import parse_config
from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.router import Router
from infergw.proto import grpc_service_pb2 as pb
from infergw.vocab.errors import InvalidArgument
from infergw.vocab.types import InferRequest, InferResponse
from infergw.wire import oip_proto
from tests.fakes import EchoBackend
from tests.integration.conftest import ServiceThread

CALL_TIMEOUT_S = 5.0  # a hang is a call that takes longer; the fuzzers expect milliseconds
MAX_MESSAGE_BYTES = 1 << 20  # small, so size limits are reachable by fuzzed shapes
EXAMPLES_SHOWN = 3


class StrictEcho(EchoBackend):
    """The echo fake checking names as a real ``identity`` model does: one input ``input``,
    only ``output`` may be requested (else the fake would echo a tensor nobody asked for
    and the gateway would rightly call the missing output a backend error)."""

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        if [t.name for t in request.inputs] != ["input"]:
            raise InvalidArgument("identity takes one input, 'input'")
        if any(o.name != "output" for o in request.outputs):
            raise InvalidArgument("identity has one output, 'output'")
        return await super().infer(request, ctx)


class ProtoEchoBackend(StrictEcho):
    """``StrictEcho`` behind a protobuf round trip both ways, like an OIP gRPC backend."""

    async def infer(self, request: InferRequest, ctx: RequestContext) -> InferResponse:
        request = oip_proto.request_from_proto(
            pb.ModelInferRequest.FromString(oip_proto.encode_request(request))
        )
        response = await super().infer(request, ctx)
        reply = oip_proto.encode_response(response)
        return oip_proto.response_from_proto(pb.ModelInferResponse.FromString(reply))


def start_gateway(proto: EchoBackend | None = None) -> ServiceThread:
    """The fuzzers' gateway; ``proto`` replaces the backend of ``identity``."""
    config = parse_config(
        {
            "listen": {"host": "127.0.0.1", "grpc_port": 0, "http_port": 0, "metrics_port": 0},
            "limits": {"max_message_bytes": MAX_MESSAGE_BYTES},
            "backends": {"proto": {"kind": "fake"}, "echo": {"kind": "fake"}},
            "models": {"identity": {"backend": "proto"}, "echo": {"backend": "echo"}},
        }
    )
    backends = {"proto": proto or ProtoEchoBackend("proto"), "echo": StrictEcho()}
    router = Router(backends, config.routes)
    return ServiceThread(Gateway(config, router))


def gateway_fixture() -> Iterator[ServiceThread]:
    gw = start_gateway()
    try:
        yield gw
    finally:
        gw.close()


@dataclass
class Findings:
    """Failures by kind, with the first few inputs of each; ``sent`` counts every input."""

    sent: int = 0
    answers: collections.Counter[str] = field(default_factory=collections.Counter)  # by status
    kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    examples: dict[str, list[str]] = field(default_factory=lambda: collections.defaultdict(list))

    def add(self, kind: str, example: object) -> None:
        self.kinds[kind] += 1
        if len(self.examples[kind]) < EXAMPLES_SHOWN:
            self.examples[kind].append(repr(example)[:400])

    def report(self) -> str:
        lines = [
            f"{sum(self.kinds.values())} failures in {self.sent} inputs; answers {self.answers}"
        ]
        for kind, n in self.kinds.most_common():
            lines.append(f"  {n} x {kind}")
            lines.extend(f"      e.g. {example}" for example in self.examples[kind])
        return "\n".join(lines)
