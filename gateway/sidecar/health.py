"""grpc.health.v1 answering from the upstream's own health, polled in the background.

Probes (Kubernetes' gRPC probes, load balancers) hit the sidecar, which must not
report SERVING while the server behind it is not: the status of "" and of the
protocol's service names follows a periodic check of the upstream:

- oip: ``ServerReady`` (ready = true);
- tfserving: the upstream's own ``grpc.health.v1`` if it has one; otherwise
  ``ModelService/GetModelStatus`` for ``--health-model`` (ready = some version
  AVAILABLE), or, without a model to ask about, whether the server answers at all.

``infergw.Sidecar`` is always SERVING while the sidecar runs: a liveness probe for the
sidecar container that does not restart it because the upstream is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

import grpc
from grpc_health.v1 import health_pb2

from infergw.gateway.sidecar import methods
from infergw.wire.protowire import LEN, VARINT, WireError, iter_fields, len_field

log = logging.getLogger(__name__)

LIVENESS_SERVICE = "infergw.Sidecar"
CHECK_TIMEOUT_S = 1.0
SERVER_READY = f"/{methods.OIP_SERVICE}/ServerReady"
GET_MODEL_STATUS = f"/{methods.TF_MODEL_SERVICE}/GetModelStatus"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
TF_AVAILABLE = 30  # tensorflow.serving.ModelVersionStatus.State.AVAILABLE
_TRANSPORT_FAILURES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def _varint_field(payload: bytes, field: int) -> list[int]:
    fields = iter_fields(payload)
    return [v for n, t, v in fields if n == field and t == VARINT and isinstance(v, int)]


def tf_model_available(reply: bytes) -> bool:
    """GetModelStatusResponse: some model_version_status(1) has state(2) AVAILABLE."""
    for number, wire_type, status in iter_fields(reply):
        if number == 1 and wire_type == LEN:
            assert isinstance(status, memoryview)
            if TF_AVAILABLE in _varint_field(bytes(status), 2):
                return True
    return False


class HealthSink(Protocol):
    """Where statuses go: grpcio's ``HealthServicer``, or the native plane (``native.py``)."""

    async def set(self, service: str, status: int) -> None: ...


class UpstreamHealth:
    """Polls the upstream every ``interval_s`` and publishes the result to ``servicer``."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        protocol: str,
        servicer: HealthSink,
        interval_s: float = 2.0,
        health_model: str | None = None,
    ) -> None:
        self.channel = channel
        self.protocol = protocol
        self.servicer = servicer
        self.interval_s = interval_s
        self.health_model = health_model
        self.ready = False
        self._upstream_has_health: bool | None = None  # unknown until asked
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.servicer.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        await self.refresh()
        self._task = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def refresh(self) -> bool:
        try:
            ready = await self.check()
        except grpc.aio.AioRpcError as exc:
            ready = False
            log.debug("upstream health check failed: %s %s", exc.code(), exc.details())
        if ready != self.ready:
            log.info("upstream is %s", "ready" if ready else "NOT ready")
        self.ready = ready
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else (health_pb2.HealthCheckResponse.NOT_SERVING)
        )
        for name in ("", *methods.HEALTH_SERVICES[self.protocol]):
            await self.servicer.set(name, status)
        return ready

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.refresh()

    async def check(self) -> bool:
        if self.protocol == "oip":
            reply = await self._call(SERVER_READY, b"")
            return _varint_field(reply, 1) == [1]  # ServerReadyResponse.ready(1)
        return await self._check_tfserving()

    async def _check_tfserving(self) -> bool:
        if self._upstream_has_health is not False:
            try:
                reply = await self._call(HEALTH_CHECK, b"")
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise
                self._upstream_has_health = False
            else:
                self._upstream_has_health = True
                return _varint_field(reply, 1) == [health_pb2.HealthCheckResponse.SERVING]
        spec = len_field(1, self.health_model.encode()) if self.health_model else b""
        try:
            reply = await self._call(GET_MODEL_STATUS, len_field(1, spec))
        except grpc.aio.AioRpcError as exc:
            if self.health_model or exc.code() in _TRANSPORT_FAILURES:
                raise
            return True  # no model to ask about: the server answered, so it is up
        if not self.health_model:
            return True
        try:
            return tf_model_available(reply)
        except WireError:
            return False

    async def _call(self, method: str, request: bytes) -> bytes:
        rpc: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = self.channel.unary_unary(method)
        return await rpc(request, timeout=CHECK_TIMEOUT_S)
