"""OIP gRPC clients (``inference.GRPCInferenceService``), sync and asyncio.

Calls go through raw ``unary_unary`` multicallables built from our own generated
messages (kept in a private descriptor pool), so this coexists with tritonclient.
The gateway's ``server-timing`` arrives as *trailing* metadata: the sync client
uses ``with_call`` and the async one awaits ``call.trailing_metadata()``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import grpc
import grpc.aio
from google.protobuf.message import Message

from infergw.clients import _convert
from infergw.clients._errors import from_grpc
from infergw.clients.types import InferResult, ServerMetadata
from infergw.proto import grpc_service_pb2 as pb
from infergw.vocab.errors import NotFound
from infergw.vocab.types import ModelMetadata, ModelStatistics, ParamValue
from infergw.wire import grpc_channel, oip_proto
from infergw.wire.server_timing import server_timing_from_metadata

__all__ = ["DEFAULT_CHANNEL_OPTIONS", "AsyncGrpcClient", "GrpcClient"]

SERVICE = "inference.GRPCInferenceService"
# Message limits (1 GiB) and keepalive shared by every channel infergw opens.
DEFAULT_CHANNEL_OPTIONS: tuple[grpc_channel.Option, ...] = grpc_channel.channel_options()

# RPC name -> (request type, response type).
_METHODS: dict[str, tuple[type[Message], type[Message]]] = {
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
    "ModelStatistics": (pb.ModelStatisticsRequest, pb.ModelStatisticsResponse),
}


class _GrpcBase:
    """Configuration, channel and metadata shared by the sync and async clients."""

    # The asyncio channel must be created inside the running loop, hence lazily.
    _LAZY = False

    def __init__(
        self,
        url: str = "127.0.0.1:8001",
        *,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        channel_options: Sequence[grpc_channel.Option] = (),
    ) -> None:
        """``url`` is ``host:port``; ``timeout`` (seconds) is the default per-call deadline
        (None: none); ``headers`` are sent as metadata on every call; ``credentials``
        switch to TLS; ``channel_options`` override ``DEFAULT_CHANNEL_OPTIONS``."""
        self.url = url
        self.timeout = timeout
        self._headers = dict(headers or {})
        self._credentials = credentials
        self._options = tuple(channel_options)
        self._channel: Any = None
        self._rpc: dict[str, Any] = {}
        if not self._LAZY:
            self._stub("ModelInfer")

    def _open_channel(self) -> Any:
        raise NotImplementedError

    def _stub(self, name: str) -> Any:
        """The multicallable for one RPC, opening the channel on first use."""
        if self._channel is None:
            self._channel = self._open_channel()
            self._rpc = {
                rpc: self._channel.unary_unary(
                    f"/{SERVICE}/{rpc}",
                    request_serializer=req.SerializeToString,
                    response_deserializer=resp.FromString,
                )
                for rpc, (req, resp) in _METHODS.items()
            }
        return self._rpc[name]

    def _metadata(self, backend: str | None = None) -> tuple[tuple[str, str], ...]:
        return tuple(_convert.call_headers(self._headers, backend).items())

    @staticmethod
    def _infer_request(
        model: str,
        inputs: Mapping[str, Any],
        outputs: Sequence[str] | None,
        timeout: float | None,
        request_id: str,
        version: str,
        parameters: Mapping[str, ParamValue] | None,
    ) -> pb.ModelInferRequest:
        request = _convert.build_request(
            model,
            inputs,
            outputs=outputs,
            version=version,
            request_id=request_id,
            parameters=parameters,
            timeout=timeout,
        )
        return oip_proto.request_to_proto(request)


def _result(msg: pb.ModelInferResponse, trailers: Any, started: float) -> InferResult:
    """Result from the response message and the trailers carrying ``server-timing``."""
    timing = server_timing_from_metadata(trailers)
    return _convert.build_result(oip_proto.response_from_proto(msg), started, timing)


def _server_metadata(msg: pb.ServerMetadataResponse) -> ServerMetadata:
    return ServerMetadata(name=msg.name, version=msg.version, extensions=tuple(msg.extensions))


class GrpcClient(_GrpcBase):
    """Blocking OIP gRPC client. Thread-safe: one channel multiplexes all calls.

    >>> with GrpcClient("127.0.0.1:8001") as client:
    ...     result = client.infer("identity", {"input": np.ones((1, 16), np.float32)})
    """

    def _open_channel(self) -> grpc.Channel:
        return grpc_channel.sync_channel(
            self.url, credentials=self._credentials, options=self._options
        )

    def infer(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        outputs: Sequence[str] | None = None,
        backend: str | None = None,
        timeout: float | None = None,
        request_id: str = "",
        version: str = "",
        parameters: Mapping[str, ParamValue] | None = None,
    ) -> InferResult:
        """Run one inference. ``outputs=None`` returns all outputs; ``backend`` pins one
        (if the gateway allows it); ``timeout`` (seconds) overrides the client default
        and becomes both the gRPC deadline and Triton's ``timeout`` parameter."""
        started = time.perf_counter()
        timeout = _convert.timeout_or(timeout, self.timeout)
        request = self._infer_request(
            model, inputs, outputs, timeout, request_id, version, parameters
        )
        try:
            msg, call = self._stub("ModelInfer").with_call(
                request, timeout=timeout, metadata=self._metadata(backend)
            )
        except grpc.RpcError as exc:
            raise from_grpc(exc) from exc
        return _result(msg, call.trailing_metadata(), started)

    def server_live(self) -> bool:
        return bool(self._call("ServerLive", pb.ServerLiveRequest()).live)

    def server_ready(self) -> bool:
        return bool(self._call("ServerReady", pb.ServerReadyRequest()).ready)

    def model_ready(self, model: str, version: str = "") -> bool:
        """False for a model that is not ready *or not known* (as over REST)."""
        try:
            return bool(
                self._call("ModelReady", pb.ModelReadyRequest(name=model, version=version)).ready
            )
        except NotFound:
            return False

    def server_metadata(self) -> ServerMetadata:
        return _server_metadata(self._call("ServerMetadata", pb.ServerMetadataRequest()))

    def model_metadata(self, model: str, version: str = "") -> ModelMetadata:
        msg = self._call("ModelMetadata", pb.ModelMetadataRequest(name=model, version=version))
        return oip_proto.metadata_from_proto(msg)

    def model_statistics(self, model: str = "", version: str = "") -> list[ModelStatistics]:
        """Triton-style aggregate statistics; ``model=""`` asks for every model."""
        msg = self._call("ModelStatistics", pb.ModelStatisticsRequest(name=model, version=version))
        return oip_proto.statistics_from_proto(msg)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, name: str, request: Message) -> Any:
        try:
            return self._stub(name)(request, timeout=self.timeout, metadata=self._metadata())
        except grpc.RpcError as exc:
            raise from_grpc(exc) from exc


class AsyncGrpcClient(_GrpcBase):
    """asyncio OIP gRPC client. Safe to share between tasks of one event loop.

    The channel is created on first use (or ``async with``), inside the running
    loop, so constructing a client outside any loop is fine.
    """

    _LAZY = True

    def _open_channel(self) -> grpc.aio.Channel:
        return grpc_channel.aio_channel(
            self.url, credentials=self._credentials, options=self._options
        )

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        outputs: Sequence[str] | None = None,
        backend: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - sent as the deadline, as in the sync API
        request_id: str = "",
        version: str = "",
        parameters: Mapping[str, ParamValue] | None = None,
    ) -> InferResult:
        """See ``GrpcClient.infer``."""
        started = time.perf_counter()
        timeout = _convert.timeout_or(timeout, self.timeout)
        request = self._infer_request(
            model, inputs, outputs, timeout, request_id, version, parameters
        )
        call = self._stub("ModelInfer")(request, timeout=timeout, metadata=self._metadata(backend))
        try:
            msg = await call
            trailers = await call.trailing_metadata()
        except grpc.RpcError as exc:
            raise from_grpc(exc) from exc
        return _result(msg, trailers, started)

    async def server_live(self) -> bool:
        return bool((await self._call("ServerLive", pb.ServerLiveRequest())).live)

    async def server_ready(self) -> bool:
        return bool((await self._call("ServerReady", pb.ServerReadyRequest())).ready)

    async def model_ready(self, model: str, version: str = "") -> bool:
        """False for a model that is not ready *or not known* (as over REST)."""
        try:
            msg = await self._call("ModelReady", pb.ModelReadyRequest(name=model, version=version))
        except NotFound:
            return False
        return bool(msg.ready)

    async def server_metadata(self) -> ServerMetadata:
        return _server_metadata(await self._call("ServerMetadata", pb.ServerMetadataRequest()))

    async def model_metadata(self, model: str, version: str = "") -> ModelMetadata:
        msg = await self._call(
            "ModelMetadata", pb.ModelMetadataRequest(name=model, version=version)
        )
        return oip_proto.metadata_from_proto(msg)

    async def model_statistics(self, model: str = "", version: str = "") -> list[ModelStatistics]:
        """Triton-style aggregate statistics; ``model=""`` asks for every model."""
        request = pb.ModelStatisticsRequest(name=model, version=version)
        return oip_proto.statistics_from_proto(await self._call("ModelStatistics", request))

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel, self._rpc = self._channel, None, {}
            await channel.close()

    async def __aenter__(self) -> Self:
        self._stub("ModelInfer")  # open the channel now, inside the loop
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(self, name: str, request: Message) -> Any:
        try:
            return await self._stub(name)(request, timeout=self.timeout, metadata=self._metadata())
        except grpc.RpcError as exc:
            raise from_grpc(exc) from exc
