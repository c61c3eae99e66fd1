"""Request senders: one pre-encoded request, sent again and again as cheaply as possible.

- ``grpc``: serialized ``ModelInferRequest`` bytes over ``grpc.aio`` with identity
  (de)serializers, so neither side of the measured path touches protobuf; the
  ``server-timing`` trailer is read from the finished call.
- ``rest`` / ``rest-binary``: OIP JSON, or the binary tensor extension, over one
  aiohttp connection pool; the body and headers are built once.

Bytes per request are the message bodies on the wire (plus gRPC's 5-byte frame
prefix), headers excluded. All of them work against the gateway, Triton, or any
Open Inference Protocol endpoint; ``backend`` adds the ``x-infergw-backend`` pin.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
import grpc.aio
import numpy as np

from infergw.loadgen.recorder import Outcome
from infergw.vocab.datatypes import tensor_from_numpy
from infergw.vocab.types import InferRequest, RequestedOutput

PROTOCOLS = ("grpc", "rest", "rest-binary")
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
PIN_HEADER = "x-infergw-backend"
GRPC_FRAME = 5
MAX_MESSAGE = 256 * 1024 * 1024
GRPC_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.use_local_subchannel_pool", 1),  # a private connection, never shared
)


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

    protocol = "grpc"

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
        self._channel: Any = None
        self._infer: Any = None

    async def open(self) -> None:
        self._channel = grpc.aio.insecure_channel(self.address, options=GRPC_OPTIONS)
        self._infer = self._channel.unary_unary(MODEL_INFER)  # bytes in, bytes out

    async def send(self) -> Outcome:
        call = self._infer(self.request, timeout=self.timeout_s, metadata=self.metadata)
        try:
            reply = await call
        except grpc.aio.AioRpcError as exc:
            return exc.code().name, None, 0
        except Exception as exc:  # the client itself failed: count it, keep going
            return type(exc).__name__, None, 0
        timing = None
        for key, value in await call.trailing_metadata() or ():
            if key == "server-timing":
                timing = value if timing is None else f"{timing}, {value}"
        return None, timing, len(reply) + GRPC_FRAME

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

        self.protocol = "rest-binary" if binary else "rest"
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
        if backend:
            self.headers[PIN_HEADER] = backend
        self.timeout_s = timeout_s
        self.pool = pool
        self._session: Any = None
        self._timeout: Any = None

    async def open(self) -> None:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=self.pool)
        self._session = aiohttp.ClientSession(connector=connector, read_bufsize=1 << 20)
        self._timeout = aiohttp.ClientTimeout(total=self.timeout_s)

    async def send(self) -> Outcome:
        try:
            async with self._session.post(
                self.url, data=self.body, headers=self.headers, timeout=self._timeout
            ) as response:
                body = await response.read()
                status = response.status
                timing = response.headers.getall("Server-Timing", None)
        except TimeoutError:
            return "DEADLINE_EXCEEDED", None, 0
        except OSError:
            return "UNAVAILABLE", None, 0
        except Exception as exc:  # aiohttp.ClientError and friends
            return _transport_code(exc), None, 0
        if status != 200:
            return _http_code(status), None, len(body)
        return None, ", ".join(timing) if timing else None, len(body)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _http_code(status: int) -> str:
    """The gRPC code name for an HTTP status (as the SDK maps it), with the status."""
    from infergw.clients._errors import HTTP_ERRORS

    cls = HTTP_ERRORS.get(status)
    return f"{cls.grpc_code if cls else 'INTERNAL'} (HTTP {status})"


def _transport_code(exc: Exception) -> str:
    import aiohttp

    if isinstance(exc, aiohttp.ClientConnectionError):
        return "UNAVAILABLE"
    return type(exc).__name__


def make_sender(
    protocol: str,
    address: str,
    model: str,
    inputs: Mapping[str, np.ndarray],
    *,
    backend: str | None = None,
    timeout_s: float = 60.0,
) -> GrpcSender | RestSender:
    if protocol == "grpc":
        return GrpcSender(address, model, inputs, backend=backend, timeout_s=timeout_s)
    if protocol in ("rest", "rest-binary"):
        return RestSender(
            address,
            model,
            inputs,
            binary=protocol == "rest-binary",
            backend=backend,
            timeout_s=timeout_s,
        )
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
