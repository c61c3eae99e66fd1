"""The OIP REST protocol without I/O, shared by the sync and async HTTP clients.

Each client operation is ``Call`` (what to send) -> transport -> ``Reply`` (what came
back) -> an interpreting function here. The two transports only move bytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from infergw.clients import _convert
from infergw.clients._errors import ResponseHeaders, from_http
from infergw.clients.types import InferResult
from infergw.vocab.errors import BackendError
from infergw.vocab.types import ParamValue
from infergw.wire.oip_json import (
    HEADER_LENGTH,
    decode_infer_response,
    encode_infer_request,
)

__all__ = ["Call", "Endpoint", "Reply"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the server is: ``host:port`` or ``http[s]://host:port[/prefix]``."""

    scheme: str
    host: str
    port: int
    prefix: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected host:port or http(s)://host:port, got {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 8000)
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))

    @property
    def origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Call:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None = None
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: ResponseHeaders
    body: bytes
    server_timing: str | None = None

    def json(self) -> Any:
        """The body as JSON, raising the mapped error for any non-2xx status."""
        raise_for_status(self)
        try:
            return json.loads(self.body) if self.body else {}
        except ValueError as exc:
            raise BackendError(f"malformed JSON from the server: {exc}") from exc


def raise_for_status(reply: Reply) -> None:
    if not 200 <= reply.status < 300:
        raise from_http(reply.status, reply.body, reply.headers)


def model_path(model: str, version: str = "") -> str:
    path = f"/v2/models/{quote(model, safe='')}"
    return f"{path}/versions/{quote(version, safe='')}" if version else path


def get(path: str, headers: Mapping[str, str], timeout: float | None) -> Call:
    return Call("GET", path, _convert.call_headers(headers, None), timeout=timeout)


def infer_call(
    prefix: str,
    base_headers: Mapping[str, str],
    model: str,
    inputs: Mapping[str, Any],
    *,
    binary: bool,
    outputs: Sequence[str] | None,
    backend: str | None,
    timeout: float | None,
    request_id: str,
    version: str,
    parameters: Mapping[str, ParamValue] | None,
) -> Call:
    request = _convert.build_request(
        model,
        inputs,
        outputs=outputs,
        version=version,
        request_id=request_id,
        parameters=parameters,
        timeout=timeout,
    )
    body, header_length = encode_infer_request(request, binary_inputs=binary, binary_outputs=binary)
    headers = _convert.call_headers(base_headers, backend)
    if header_length is None:
        headers["content-type"] = "application/json"
    else:
        headers["content-type"] = "application/octet-stream"
        headers[HEADER_LENGTH.lower()] = str(header_length)
    path = f"{prefix}{model_path(model, version)}/infer"
    return Call("POST", path, headers, body, timeout)


def infer_result(reply: Reply, started: float) -> InferResult:
    raise_for_status(reply)
    value = reply.headers.get(HEADER_LENGTH)
    header_length = None
    if value is not None:
        try:
            header_length = int(value)
        except ValueError as exc:
            raise BackendError(f"bad {HEADER_LENGTH} from the server: {value[:32]!r}") from exc
    response = decode_infer_response(reply.body, header_length)
    return _convert.build_result(response, started, reply.server_timing)


def ready_result(reply: Reply) -> bool:
    """OIP health/readiness is the status code: 200 yes; 4xx or 503 no; else an error."""
    if reply.status == 200:
        return True
    if 400 <= reply.status < 500 or reply.status == 503:
        return False
    raise from_http(reply.status, reply.body, reply.headers)


def statistics_path(model: str, version: str) -> str:
    """Triton's ``/v2/models[/m[/versions/v]]/stats``; no model means all models."""
    return (model_path(model, version) if model else "/v2/models") + "/stats"
