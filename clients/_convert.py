"""Everything the four clients share except I/O: requests, results, headers, metadata.

Transports go numpy -> ``build_request`` -> (their codec) -> wire -> (their codec)
-> ``build_result``; both gRPC and REST metadata arrive here as plain dicts (gRPC
via ``MessageToDict``) so each is parsed exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from opentelemetry import propagate

from infergw.clients.timing import TimingBreakdown
from infergw.clients.types import InferResult, ServerMetadata
from infergw.vocab.datatypes import tensor_from_numpy, tensor_to_numpy
from infergw.vocab.errors import InvalidArgument
from infergw.vocab.types import (
    Duration,
    InferRequest,
    InferResponse,
    ModelMetadata,
    ModelStatistics,
    ParamValue,
    RequestedOutput,
    TensorSpec,
)

PIN_HEADER = "x-infergw-backend"
TIMING_HEADER = "server-timing"
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


def join_server_timing(values: Iterable[str | bytes]) -> str | None:
    """One Server-Timing value from repeated headers/trailers (RFC 9110 list syntax)."""
    parts = [v.decode() if isinstance(v, bytes) else v for v in values]
    return ", ".join(p for p in parts if p) or None


def timeout_or(timeout: float | None, default: float | None) -> float | None:
    return default if timeout is None else timeout


# --- metadata, from the OIP JSON shape (gRPC messages are converted to it first) ---


def server_metadata_from_dict(d: Mapping[str, Any]) -> ServerMetadata:
    return ServerMetadata(
        name=str(d.get("name", "")),
        version=str(d.get("version", "")),
        extensions=tuple(str(x) for x in d.get("extensions", ())),
    )


def model_metadata_from_dict(d: Mapping[str, Any]) -> ModelMetadata:
    def specs(items: Iterable[Mapping[str, Any]]) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(str(s["name"]), str(s["datatype"]), tuple(int(x) for x in s["shape"]))
            for s in items
        )

    return ModelMetadata(
        name=str(d.get("name", "")),
        versions=tuple(str(v) for v in d.get("versions", ())),
        platform=str(d.get("platform", "")),
        inputs=specs(d.get("inputs", ())),
        outputs=specs(d.get("outputs", ())),
    )


def statistics_from_dict(d: Mapping[str, Any]) -> list[ModelStatistics]:
    """Triton's statistics shape: ``{"model_stats": [{..., "inference_stats": {...}}]}``."""

    def dur(stats: Mapping[str, Any], key: str) -> Duration:
        value = stats.get(key) or {}
        return Duration(count=int(value.get("count", 0)), ns=int(value.get("ns", 0)))

    out = []
    for s in d.get("model_stats", ()):
        st = s.get("inference_stats") or {}
        out.append(
            ModelStatistics(
                name=str(s.get("name", "")),
                version=str(s.get("version", "")),
                last_inference_ms=int(s.get("last_inference", 0)),
                inference_count=int(s.get("inference_count", 0)),
                execution_count=int(s.get("execution_count", 0)),
                success=dur(st, "success"),
                fail=dur(st, "fail"),
                queue=dur(st, "queue"),
                compute_input=dur(st, "compute_input"),
                compute_infer=dur(st, "compute_infer"),
                compute_output=dur(st, "compute_output"),
            )
        )
    return out
