"""Triton Inference Server over the Open Inference Protocol gRPC API.

Everything but the config and the channel is the shared OIP gRPC client
(``oip_grpc``): the fast path that forwards a request's original bytes and returns
Triton's response undecoded when the frontend can send it on, W3C trace context as
gRPC metadata (which Triton's OpenTelemetry mode continues), and errors mapped once.
Triton's control calls (config, statistics, repository, trace, log, shared memory) are
forwarded as they are (``core/control.py``): gRPC ones on the same channel, REST ones
to Triton's HTTP API at ``http_url`` (``triton_control.py`` says why).

Config (``tls`` for a Triton started with ``--grpc-use-ssl``; ``cert_file``/``key_file``
when it also sets ``--grpc-use-ssl-mutual``; ``server_name`` when the certificate names
another host than ``url``)::

    backends:
      triton: {kind: triton, url: "127.0.0.1:8001", http_url: "http://127.0.0.1:8000"}
      triton-tls:
        kind: triton
        url: triton.internal:8001
        tls: {ca_file: ca.pem, cert_file: client.pem, key_file: client.key}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import grpc
from pydantic import Field, model_validator

from infergw.backends.oip_grpc import OipGrpcStreamingBackend
from infergw.backends.triton_control import CONTROL_TIMEOUT_S, TritonHttpControl
from infergw.gateway.core.config import validate_section
from infergw.gateway.core.context import RequestContext
from infergw.gateway.core.control import HttpCall, HttpReply
from infergw.gateway.core.sections import Section
from infergw.proto import grpc_service_pb2 as pb
from infergw.vocab.errors import FailedPrecondition, InvalidArgument
from infergw.vocab.types import InferRequest
from infergw.wire import grpc_channel, oip_proto

NonEmpty = Annotated[str, Field(min_length=1)]
TIMEOUT_COPY_LIMIT_BYTES = 1 << 20


class ClientTls(Section):
    ca_file: NonEmpty | None = None  # None: the system's root certificates
    cert_file: NonEmpty | None = None
    key_file: NonEmpty | None = None
    server_name: NonEmpty | None = None

    @model_validator(mode="after")
    def _pair(self) -> ClientTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (mutual TLS)")
        return self


class TritonOptions(Section):
    url: NonEmpty  # host:port of Triton's gRPC endpoint
    tls: ClientTls | None = None
    # Triton's HTTP endpoint, for the REST control calls the gateway forwards
    # (triton_control.py); without it those answer FAILED_PRECONDITION.
    http_url: Annotated[str, Field(pattern=r"^https?://[^/\s]+/?$")] | None = None


class TritonBackend(OipGrpcStreamingBackend):
    """An OIP gRPC backend with Triton's control plane (``core.control.ControlPlane``).

    It streams (``StreamingBackend``): a client's ModelStreamInfer is forwarded as one,
    so decoupled models answer through the gateway.
    """

    def __init__(
        self, name: str, url: str, tls: ClientTls | None = None, http_url: str | None = None
    ) -> None:
        super().__init__(name, url)
        self._http: TritonHttpControl | None = None
        if http_url is not None:
            self._http = TritonHttpControl(
                name,
                http_url,
                ca_file=tls.ca_file if tls is not None else None,
                cert_file=tls.cert_file if tls is not None else None,
                key_file=tls.key_file if tls is not None else None,
            )
        self._credentials: grpc.ChannelCredentials | None = None
        self._options = grpc_channel.FAST_RECONNECT
        if tls is not None:
            try:
                self._credentials = grpc_channel.tls_credentials(
                    tls.ca_file, tls.cert_file, tls.key_file
                )
            except OSError as exc:
                raise InvalidArgument(
                    f"backend {name!r}: tls: cannot read {exc.filename}: {exc.strerror}"
                ) from exc
            if tls.server_name is not None:
                override = ("grpc.ssl_target_name_override", tls.server_name)
                self._options = (*self._options, override)

    @classmethod
    def from_config(cls, name: str, options: Mapping[str, Any]) -> TritonBackend:
        config = validate_section(TritonOptions, dict(options), f"backend {name!r}")
        return cls(name, config.url, config.tls, config.http_url)

    def _payload(self, request: InferRequest, ctx: RequestContext) -> bytes:
        """The request, carrying the time left as Triton's ``timeout`` parameter: Triton
        then drops a request its queue holds past the deadline (for models whose
        scheduler honours it, e.g. the dynamic batcher) instead of running it for a
        caller that is gone. Up to ``TIMEOUT_COPY_LIMIT_BYTES``: beyond it the copy that
        appending takes costs more than an early failure saves (the gRPC deadline still
        ends the call)."""
        payload = oip_proto.encode_request(request)
        remaining = ctx.remaining()
        if remaining is None or len(payload) > TIMEOUT_COPY_LIMIT_BYTES:
            return payload
        timeout_us = max(round(remaining * 1e6), 1)
        asked = request.parameters.get(oip_proto.TIMEOUT_PARAMETER)
        if isinstance(asked, int) and not isinstance(asked, bool) and 0 < asked <= timeout_us:
            return payload  # the client's own timeout is the tighter one
        return oip_proto.with_timeout_us(payload, timeout_us)

    def _open_channel(self) -> grpc.aio.Channel:
        return grpc_channel.aio_channel(
            self.url, credentials=self._credentials, options=self._options
        )

    # -- the control plane (core.control.ControlPlane) ----------------------------------
    async def grpc_control(self, method: str, payload: bytes, timeout_s: float | None) -> bytes:
        return await self.forward_unary(method, payload, timeout_s or CONTROL_TIMEOUT_S)

    async def http_control(self, call: HttpCall) -> HttpReply:
        if self._http is None:
            raise FailedPrecondition(
                f"backend {self.name!r} has no http_url: REST control calls are forwarded to "
                f"Triton's HTTP API (set backends.{self.name}.http_url), or use gRPC"
            )
        return await self._http.send(call)

    @property
    def serves_http(self) -> bool:
        return self._http is not None

    async def extensions(self) -> tuple[str, ...]:
        reply = await self._call(
            "ServerMetadata", pb.ServerMetadataRequest(), pb.ServerMetadataResponse, 2.0
        )
        return tuple(reply.extensions)

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            if self._http is not None:
                await self._http.close()
