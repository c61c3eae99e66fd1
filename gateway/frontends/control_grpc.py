"""Triton's control methods on the gateway's gRPC port, forwarded (``core/control.py``).

Requests and replies stay bytes: the model name is read off the request with
``protowire`` (nothing decoded), and the backend's reply goes back as it came, so
every field Triton sends reaches the client. Calls about every model (statistics
with no name, the repository index) merge the routed backends' replies, each keeping
the models routed to it; a backend without a control plane answers those through the
Backend contract, as before.

``methods`` is the table ``grpc.generic_handler`` registers behind the error boundary.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from infergw.gateway.core.control import ControlRouter
from infergw.gateway.core.service import PIN_HEADER, InferenceService
from infergw.proto import grpc_service_pb2 as pb
from infergw.vocab.errors import BackendError, InvalidArgument, Unimplemented
from infergw.wire import oip_proto
from infergw.wire.protowire import LEN, WireError, find_string, iter_fields

Context = grpc.aio.ServicerContext
RawHandler = Callable[[bytes, Context], Awaitable[bytes]]
ModelOf = Callable[[bytes], str]
M = TypeVar("M", bound=Message)


@dataclass(frozen=True, slots=True)
class ModelCall:
    """A method about one model: where its request names the model, what to call it."""

    what: str
    model_field: int
    model_control: bool = False  # load/unload: needs allow_model_control


@dataclass(frozen=True, slots=True)
class ControlMethod:
    handler: RawHandler
    model_of: ModelOf | None = None


MODEL_CALLS = {
    "ModelConfig": ModelCall("model configuration", 1),
    "RepositoryModelLoad": ModelCall("model load", 2, model_control=True),
    "RepositoryModelUnload": ModelCall("model unload", 2, model_control=True),
}
SERVER_CALLS = {
    "LogSettings": "log settings",
    "SystemSharedMemoryStatus": "system shared memory status",
    "SystemSharedMemoryRegister": "system shared memory registration",
    "SystemSharedMemoryUnregister": "system shared memory unregistration",
    "CudaSharedMemoryStatus": "CUDA shared memory status",
    "CudaSharedMemoryRegister": "CUDA shared memory registration",
    "CudaSharedMemoryUnregister": "CUDA shared memory unregistration",
}
TRACE_MODEL_FIELD = 2  # TraceSettingRequest.model_name; empty: the server's settings


class _Bytes:
    """A ``bytes`` field in a ``Shape`` (any content; other length-delimited fields are
    strings, which must be UTF-8, unless the shape names them as messages)."""


BYTES = _Bytes()
Shape = Mapping[int, "Shape | _Bytes"]
_SETTINGS: Shape = {1: {2: {}}}  # field 1: map<string, SettingValue> (key 1, value 2)
_REPOSITORY: Shape = {3: {2: {4: BYTES}}}  # parameters: map<string, ModelRepositoryParameter>
# The forwarded requests' message structure (Triton's grpc_service.proto), checked before
# forwarding: Triton answers INTERNAL to a request it cannot parse, the client's mistake.
REQUEST_SHAPES: Mapping[str, Shape] = {
    "ModelConfig": {},
    "RepositoryModelLoad": _REPOSITORY,
    "RepositoryModelUnload": _REPOSITORY,
    "TraceSetting": _SETTINGS,
    "LogSettings": _SETTINGS,
    "SystemSharedMemoryStatus": {},
    "SystemSharedMemoryRegister": {},
    "SystemSharedMemoryUnregister": {},
    "CudaSharedMemoryStatus": {},
    "CudaSharedMemoryRegister": {2: BYTES},  # raw_handle
    "CudaSharedMemoryUnregister": {},
}


class ControlServicer:
    def __init__(self, service: InferenceService) -> None:
        self.service = service
        self.router = service.router
        self.control = ControlRouter(service.router)

    def methods(self) -> dict[str, ControlMethod]:
        table = {
            method: ControlMethod(self._model_call(method, call), _model_field(call.model_field))
            for method, call in MODEL_CALLS.items()
        }
        table |= {
            method: ControlMethod(self._server_call(method, what))
            for method, what in SERVER_CALLS.items()
        }
        table["TraceSetting"] = ControlMethod(self.trace_setting, _model_field(TRACE_MODEL_FIELD))
        table["ModelStatistics"] = ControlMethod(self.model_statistics, _model_field(1))
        table["RepositoryIndex"] = ControlMethod(self.repository_index)
        return table

    def _model_call(self, method: str, call: ModelCall) -> RawHandler:
        async def handle(payload: bytes, context: Context) -> bytes:
            check_request(method, payload)
            model = _read_model(payload, call.model_field, method)
            if call.model_control:
                self.control.check_model_control(call.what)
            plane = self.control.for_model(model, _pinned(context), call.what)
            return await plane.grpc_control(method, payload, context.time_remaining())

        return handle

    def _server_call(self, method: str, what: str) -> RawHandler:
        async def handle(payload: bytes, context: Context) -> bytes:
            check_request(method, payload)
            plane = self.control.for_server(_pinned(context), what)
            return await plane.grpc_control(method, payload, context.time_remaining())

        return handle

    async def trace_setting(self, payload: bytes, context: Context) -> bytes:
        check_request("TraceSetting", payload)
        model = _read_model(payload, TRACE_MODEL_FIELD, "TraceSetting")
        pinned = _pinned(context)
        if model:
            plane = self.control.for_model(model, pinned, "trace settings")
        else:
            plane = self.control.for_server(pinned, "trace settings")
        return await plane.grpc_control("TraceSetting", payload, context.time_remaining())

    async def model_statistics(self, payload: bytes, context: Context) -> bytes:
        request = _parse(pb.ModelStatisticsRequest, payload)
        timeout = context.time_remaining()
        if request.name:
            backend = self.router.backend_name(request.name, _pinned(context))
            plane = self.control.plane(backend)
            if plane is not None:
                return await plane.grpc_control("ModelStatistics", payload, timeout)
            stats = await self.router.backends[backend].model_statistics(
                request.name, request.version
            )
            return oip_proto.statistics_to_proto(stats).SerializeToString()
        merged = pb.ModelStatisticsResponse()
        missing: list[Unimplemented] = []
        for source in self.control.sources():
            if source.plane is not None:
                reply = await source.plane.grpc_control("ModelStatistics", payload, timeout)
                found = _reply(pb.ModelStatisticsResponse, reply, source.backend)
                merged.model_stats.extend(
                    s for s in found.model_stats if self.control.owns(source.backend, s.name)
                )
                continue
            try:
                stats = await self.control.contract_statistics(source)
            except Unimplemented as exc:
                missing.append(exc)  # a backend without statistics adds none...
                continue
            merged.model_stats.extend(oip_proto.statistics_to_proto(stats).model_stats)
        if missing and len(missing) == len(self.control.sources()):
            raise missing[0]  # ...unless no backend has any
        return merged.SerializeToString()

    async def repository_index(self, payload: bytes, context: Context) -> bytes:
        request = _parse(pb.RepositoryIndexRequest, payload)
        timeout = context.time_remaining()
        merged = pb.RepositoryIndexResponse()
        for source in self.control.sources():
            if source.plane is not None:
                reply = await source.plane.grpc_control("RepositoryIndex", payload, timeout)
                found = _reply(pb.RepositoryIndexResponse, reply, source.backend)
                merged.models.extend(
                    m for m in found.models if self.control.owns(source.backend, m.name)
                )
                continue
            for model in source.routed:
                ready = await self.router.model_ready(model)
                if ready or not request.ready:
                    merged.models.add(name=model, state="READY" if ready else "UNAVAILABLE")
        return merged.SerializeToString()


def check_request(method: str, payload: bytes) -> None:
    """INVALID_ARGUMENT for a request that is not a well-formed ``{method}Request``."""
    try:
        _check(memoryview(payload), REQUEST_SHAPES[method])
    except (WireError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"malformed {method}Request") from exc


def _check(payload: memoryview, shape: Shape) -> None:
    for number, wire_type, value in iter_fields(payload):
        if wire_type != LEN:
            continue
        assert isinstance(value, memoryview)
        nested = shape.get(number)
        if nested is None:
            str(value, "utf-8")  # a string field: protobuf refuses one that is not UTF-8
        elif not isinstance(nested, _Bytes):
            _check(value, nested)


def _model_field(number: int) -> ModelOf:
    """The model a request names, for the metric label of a failed call ("" if unreadable)."""

    def model_of(payload: bytes) -> str:
        try:
            return find_string(payload, (number,)) or ""
        except WireError:
            return ""

    return model_of


def _read_model(payload: bytes, number: int, method: str) -> str:
    try:
        return find_string(payload, (number,)) or ""
    except WireError as exc:
        raise InvalidArgument(f"malformed {method}Request") from exc


def _parse(request_cls: type[M], payload: bytes) -> M:
    try:
        return request_cls.FromString(payload)
    except DecodeError as exc:
        raise InvalidArgument(f"malformed {request_cls.DESCRIPTOR.name}") from exc


def _reply(reply_cls: type[M], payload: bytes, backend: str) -> M:
    try:
        return reply_cls.FromString(payload)
    except DecodeError as exc:
        raise BackendError(
            f"backend {backend!r} sent a malformed {reply_cls.DESCRIPTOR.name}"
        ) from exc


def _pinned(context: Context) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key.lower() == PIN_HEADER and isinstance(value, str):
            return value
    return None
