"""Triton Inference Server over the Open Inference Protocol gRPC API.

Everything but the config is the shared OIP gRPC client (``oip_grpc``, on the
default plaintext channel of ``infergw.wire.grpc_channel``): the fast path that
forwards a request's original bytes and returns Triton's response undecoded when
the frontend can send it on, W3C trace context as gRPC metadata (which Triton's
OpenTelemetry mode continues), and errors mapped once.

Config::

    backends:
      triton: {kind: triton, url: "127.0.0.1:8001"}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from infergw.backends.oip_grpc import OipGrpcBackend
from infergw.vocab.errors import InvalidArgument


class TritonBackend(OipGrpcBackend):
    @classmethod
    def from_config(cls, name: str, options: Mapping[str, Any]) -> TritonBackend:
        url = options.get("url")
        if not isinstance(url, str) or not url:
            raise InvalidArgument(
                f"backend {name!r}: 'url' (host:port of Triton's gRPC) is required"
            )
        unknown = set(options) - {"url"}
        if unknown:
            raise InvalidArgument(f"backend {name!r}: unknown options {sorted(unknown)}")
        return cls(name, url)
