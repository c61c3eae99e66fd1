"""The one client used for every target: pre-serialized ModelInfer bytes over Python grpc.

Requests are serialized once and replies are not parsed on the measured path (the
identity (bytes) deserializer), so the client's own cost is small and the same for
direct Triton, nginx and the gateway. A non-OK grpc status raises in both the sync and
the aio API, so every counted reply had status OK; replies are also checked for size.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import grpc
import numpy as np

from infergw.proto import grpc_service_pb2 as pb
from infergw.wire import grpc_channel

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


@dataclass(frozen=True)
class Payload:
    """One pre-serialized identity request and what its reply must look like."""

    name: str
    data: bytes  # the FP32 tensor's raw bytes
    request: bytes  # serialized ModelInferRequest

    @property
    def min_reply_bytes(self) -> int:
        return len(self.data)


def identity_payload(name: str, columns: int, seed: int = 0) -> Payload:
    """FP32 ``input`` [1, columns] for the ``identity`` model, raw_input_contents form."""
    data = np.random.default_rng(seed).random((1, columns), dtype=np.float32).tobytes()
    request = pb.ModelInferRequest(
        model_name="identity",
        inputs=[
            pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, columns])
        ],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="output")],
        raw_input_contents=[data],
    )
    return Payload(name=name, data=data, request=request.SerializeToString())


class BadReply(RuntimeError):
    """A reply with status OK whose content is not the echoed tensor."""


def check_echo(payload: Payload, reply: bytes) -> None:
    """Full check (used in warm-up): the identity model returned exactly the input."""
    response = pb.ModelInferResponse.FromString(reply)
    if list(response.raw_output_contents) != [payload.data]:
        raise BadReply(f"{payload.name}: identity reply does not echo the input")


def check_size(payload: Payload, reply: bytes) -> None:
    """Cheap check on the measured path: the reply carries at least the tensor's bytes."""
    if len(reply) < payload.min_reply_bytes:
        raise BadReply(f"{payload.name}: reply of {len(reply)} B is too short")


class SyncClient:
    """One channel to one target; sequential calls timed with ``perf_counter_ns``."""

    def __init__(self, address: str) -> None:
        # One private connection per channel, never shared between targets.
        self.channel = grpc_channel.sync_channel(address, private=True)
        self.infer = self.channel.unary_unary(MODEL_INFER)  # bytes in, bytes out

    def call(self, payload: Payload) -> bytes:
        reply: bytes = self.infer(payload.request, timeout=60.0)
        return reply

    def latencies_ms(self, payload: Payload, n: int) -> list[float]:
        out = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            reply = self.infer(payload.request, timeout=60.0)
            out.append((time.perf_counter_ns() - t0) / 1e6)
            check_size(payload, reply)
        return out

    def close(self) -> None:
        self.channel.close()


@dataclass(frozen=True)
class Throughput:
    ok: int
    errors: int
    seconds: float
    first_error: str | None = None

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


async def _closed_loop(
    address: str, payload: Payload, concurrency: int, seconds: float
) -> Throughput:
    """``concurrency`` tasks, each sending the next request as soon as its reply arrives."""
    ok = errors = 0
    first_error: str | None = None
    async with grpc_channel.aio_channel(address, private=True) as channel:
        infer = channel.unary_unary(MODEL_INFER)
        await infer(payload.request, timeout=60.0)  # connect before the clock starts
        start = time.perf_counter()
        deadline = start + seconds

        async def worker() -> None:
            nonlocal ok, errors, first_error
            while time.perf_counter() < deadline:
                try:
                    check_size(payload, await infer(payload.request, timeout=60.0))
                    ok += 1
                except (grpc.aio.AioRpcError, BadReply) as exc:
                    errors += 1
                    first_error = first_error or repr(exc)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return Throughput(ok=ok, errors=errors, seconds=elapsed, first_error=first_error)


def throughput(address: str, payload: Payload, concurrency: int, seconds: float) -> Throughput:
    """Closed loop with ``concurrency`` requests in flight for ``seconds`` (grpc.aio)."""
    return asyncio.run(_closed_loop(address, payload, concurrency, seconds))
