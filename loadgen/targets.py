"""Request senders: one pre-encoded request, sent again and again as cheaply as possible.

- ``grpc``: serialized ``ModelInferRequest`` bytes over ``grpc.aio`` with identity
  (de)serializers, so neither side of the measured path touches protobuf; the
  ``server-timing`` trailer is read from the finished call.
- ``rest`` / ``rest-binary``: OIP JSON, or the binary tensor extension, over one
  aiohttp connection pool; the body and headers are built once.

Bytes per request are the message bodies on the wire (plus gRPC's 5-byte frame
prefix), headers excluded. All of them work against the gateway, Triton, or any
Open Inference Protocol endpoint; ``backend`` adds the ``x-infergw-backend`` pin.
``trace(ids)`` makes every request carry a ``traceparent`` of its own (``splits``), and
``send`` then returns the request's sequence number as a fourth item of the outcome.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from functools import partial
from typing import Any

import grpc
import grpc.aio
import numpy as np

from infergw.loadgen.recorder import Outcome, PlainOutcome
from infergw.loadgen.splits import TraceIds
from infergw.vocab.datatypes import tensor_from_numpy
from infergw.vocab.errors import InferGWError
from infergw.vocab.types import InferRequest, RequestedOutput
from infergw.wire import grpc_channel
from infergw.wire.protocols import Protocol
from infergw.wire.server_timing import HEADER, join_server_timing, server_timing_from_metadata
from infergw.wire.status import ERROR_FOR_HTTP

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
PIN_HEADER = "x-infergw-backend"
GRPC_FRAME = 5


def infer_request(
    model: str, inputs: Mapping[str, np.ndarray], outputs: tuple[str, ...] = ()
) -> InferRequest:
    """The core request both encoders start from."""
    return InferRequest(
        model=model,
        inputs=tuple(tensor_from_numpy(name, np.asarray(a)) for name, a in inputs.items()),
        outputs=tuple(RequestedOutput(name) for name in outputs),
    )


class GrpcSender:
    """OIP gRPC ``ModelInfer`` with a pre-serialized request."""

    protocol = Protocol.GRPC

    def __init__(
        self,
        address: str,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        backend: str | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        from infergw.wire import oip_proto

        self.address = address
        self.request = oip_proto.encode_request(infer_request(model, inputs))
        self.sent_bytes = len(self.request) + GRPC_FRAME
        self.metadata = ((PIN_HEADER, backend),) if backend else None
        self.timeout_s = timeout_s
        self.trace_ids: TraceIds | None = None
        self._seq = 0
        self._channel: Any = None
        self._infer: Any = None

    def trace(self, ids: TraceIds) -> None:
        self.trace_ids = ids

    async def open(self) -> None:
        # A private connection, never shared with another sender's.
        self._channel = grpc_channel.aio_channel(self.address, private=True)
        self._infer = self._channel.unary_unary(MODEL_INFER)  # bytes in, bytes out

    async def send(self) -> Outcome:
        if self.trace_ids is not None:
            return await self._send_traced(self.trace_ids)
        call = self._infer(self.request, timeout=self.timeout_s, metadata=self.metadata)
        try:
            reply = await call
        except grpc.aio.AioRpcError as exc:
            return exc.code().name, None, 0
        except Exception as exc:  # the client itself failed: count it, keep going
            return type(exc).__name__, None, 0
        timing = server_timing_from_metadata(await call.trailing_metadata())
        return None, timing, len(reply) + GRPC_FRAME

    async def _send_traced(self, ids: TraceIds) -> Outcome:
        seq = self._seq = self._seq + 1
        metadata = (*(self.metadata or ()), ("traceparent", ids.traceparent(seq)))
        call = self._infer(self.request, timeout=self.timeout_s, metadata=metadata)
        try:
            reply = await call
        except grpc.aio.AioRpcError as exc:
            return exc.code().name, None, 0, seq
        except Exception as exc:
            return type(exc).__name__, None, 0, seq
        timing = server_timing_from_metadata(await call.trailing_metadata())
        return None, timing, len(reply) + GRPC_FRAME, seq

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


class RestSender:
    """OIP REST ``POST /v2/models/{model}/infer``, JSON or binary tensors."""

    def __init__(
        self,
        address: str,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        binary: bool,
        backend: str | None = None,
        timeout_s: float = 60.0,
        pool: int = 256,
    ) -> None:
        from urllib.parse import quote

        from infergw.wire.oip_json import HEADER_LENGTH, encode_infer_request

        self.protocol = Protocol.REST_BINARY if binary else Protocol.REST
        origin = address if "://" in address else f"http://{address}"
        self.url = f"{origin.rstrip('/')}/v2/models/{quote(model, safe='')}/infer"
        body, header_length = encode_infer_request(
            infer_request(model, inputs), binary_inputs=binary, binary_outputs=binary
        )
        self.body = body
        self.sent_bytes = len(body)
        self.headers = {"content-type": "application/json"}
        if header_length is not None:
            self.headers = {
                "content-type": "application/octet-stream",
                HEADER_LENGTH: str(header_length),
            }
        # aiohttp asks for gzip by default, and a server that honours it (the gateway
        # does) spends the measured time compressing: ask for the bytes as they are.
        self.headers["accept-encoding"] = "identity"
        if backend:
            self.headers[PIN_HEADER] = backend
        self.timeout_s = timeout_s
        self.pool = pool
        self.trace_ids: TraceIds | None = None
        self._seq = 0
        self._session: Any = None
        self._timeout: Any = None

    def trace(self, ids: TraceIds) -> None:
        self.trace_ids = ids

    async def open(self) -> None:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=self.pool)
        self._session = aiohttp.ClientSession(connector=connector, read_bufsize=1 << 20)
        self._timeout = aiohttp.ClientTimeout(total=self.timeout_s)

    async def send(self) -> Outcome:
        if self.trace_ids is None:
            return await self._post(self.headers)
        seq = self._seq = self._seq + 1
        headers = {**self.headers, "traceparent": self.trace_ids.traceparent(seq)}
        error, timing, received = await self._post(headers)
        return error, timing, received, seq

    async def _post(self, headers: Mapping[str, str]) -> PlainOutcome:
        try:
            async with self._session.post(
                self.url, data=self.body, headers=headers, timeout=self._timeout
            ) as response:
                body = await response.read()
                status = response.status
                timing = join_server_timing(response.headers.getall(HEADER, ()))
        except TimeoutError:
            return "DEADLINE_EXCEEDED", None, 0
        except OSError:
            return "UNAVAILABLE", None, 0
        except Exception as exc:  # aiohttp.ClientError and friends
            return _transport_code(exc), None, 0
        if status != 200:
            return _http_code(status), None, len(body)
        return None, timing, len(body)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _http_code(status: int) -> str:
    """The gRPC code name for an HTTP status (the one table the SDK maps it by), with it."""
    return f"{ERROR_FOR_HTTP.get(status, InferGWError).grpc_code} (HTTP {status})"


def _transport_code(exc: Exception) -> str:
    import aiohttp

    if isinstance(exc, aiohttp.ClientConnectionError):
        return "UNAVAILABLE"
    return type(exc).__name__


Sender = GrpcSender | RestSender


class SenderFactory(typing.Protocol):
    def __call__(
        self,
        address: str,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        backend: str | None,
        timeout_s: float,
    ) -> Sender: ...


SENDERS: Mapping[Protocol, SenderFactory] = {
    Protocol.GRPC: GrpcSender,
    Protocol.REST: partial(RestSender, binary=False),
    Protocol.REST_BINARY: partial(RestSender, binary=True),
}


def make_sender(
    protocol: Protocol | str,
    address: str,
    model: str,
    inputs: Mapping[str, np.ndarray],
    *,
    backend: str | None = None,
    timeout_s: float = 60.0,
) -> Sender:
    """The sender for ``protocol`` (a ``ValueError`` names the valid ones)."""
    factory = SENDERS[Protocol.parse(protocol)]
    return factory(address, model, inputs, backend=backend, timeout_s=timeout_s)
