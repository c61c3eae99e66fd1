"""Everything the four clients share except I/O: requests, results, headers.

Transports go numpy -> ``build_request`` -> (their codec) -> wire -> (their codec)
-> ``build_result``. Metadata and statistics are the wire codecs' own converters
(``oip_proto`` / ``oip_json``); only the SDK's ``ServerMetadata`` is built here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from opentelemetry import propagate

from infergw.clients.timing import TimingBreakdown
from infergw.clients.types import InferResult, ServerMetadata
from infergw.vocab.datatypes import tensor_from_numpy, tensor_to_numpy
from infergw.vocab.errors import BackendError, InvalidArgument
from infergw.vocab.types import InferRequest, InferResponse, ParamValue, RequestedOutput

PIN_HEADER = "x-infergw-backend"
# Triton's convention: a request parameter "timeout" in microseconds, so a server
# (or a gateway forwarding to Triton) can drop a request its client gave up on.
TIMEOUT_PARAMETER = "timeout"


def build_request(
    model: str,
    inputs: Mapping[str, Any],
    *,
    outputs: Sequence[str] | None = None,
    version: str = "",
    request_id: str = "",
    parameters: Mapping[str, ParamValue] | None = None,
    timeout: float | None = None,
) -> InferRequest:
    """Core request from numpy-like inputs; unsupported dtypes fail here, before I/O."""
    if not inputs:
        raise InvalidArgument("infer needs at least one input")
    params: dict[str, ParamValue] = dict(parameters or {})
    if timeout is not None:
        params.setdefault(TIMEOUT_PARAMETER, max(1, int(timeout * 1_000_000)))
    return InferRequest(
        model=model,
        version=version,
        id=request_id,
        inputs=tuple(tensor_from_numpy(name, np.asarray(a)) for name, a in inputs.items()),
        outputs=tuple(RequestedOutput(name) for name in outputs or ()),
        parameters=params,
    )


def build_result(response: InferResponse, started: float, server_timing: str | None) -> InferResult:
    """Decode outputs to numpy, then stop the end-to-end clock started at ``started``."""
    outputs = {t.name: tensor_to_numpy(t) for t in response.outputs}
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    return InferResult(
        model=response.model,
        version=response.version,
        id=response.id,
        outputs=outputs,
        parameters=response.parameters,
        timing=TimingBreakdown.from_server_timing(elapsed_ms, server_timing),
    )


def call_headers(base: Mapping[str, str], backend: str | None) -> dict[str, str]:
    """Per-call headers/metadata: the client's own, the backend pin, the trace context.

    Keys are lower-case because gRPC metadata requires it. ``traceparent`` comes
    from the *current* OpenTelemetry context, so a caller's span becomes the parent
    of the gateway's server span (no-op when no span is active).
    """
    headers = {k.lower(): v for k, v in base.items()}
    if backend:
        headers[PIN_HEADER] = backend
    propagate.inject(headers)
    return headers


def timeout_or(timeout: float | None, default: float | None) -> float | None:
    return default if timeout is None else timeout


def server_metadata_from_json(d: Any) -> ServerMetadata:
    """``GET /v2``'s body (the gRPC client builds it from the message directly)."""
    if not isinstance(d, Mapping):
        raise BackendError("malformed server metadata: expected a JSON object")
    extensions = d.get("extensions") or []
    if not isinstance(extensions, list):
        raise BackendError("malformed server metadata: 'extensions' must be an array")
    return ServerMetadata(
        name=str(d.get("name", "")),
        version=str(d.get("version", "")),
        extensions=tuple(str(x) for x in extensions),
    )
