"""Translate transport failures into the core exception tree, once, for all clients.

Callers ``raise from_grpc(exc) from exc`` (or the HTTP/transport equivalents) so
the original error stays attached. The server's message is kept verbatim: it is
written for clients (design brief §7) and is the most useful thing to show.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping

import aiohttp
import grpc

from infergw.vocab.errors import (
    Cancelled,
    DeadlineExceeded,
    InferGWError,
    InvalidArgument,
    NotFound,
    PayloadTooLarge,
    QueueFull,
    ResourceExhausted,
    Unavailable,
    Unimplemented,
)

GRPC_ERRORS: dict[grpc.StatusCode, type[InferGWError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
}

HTTP_ERRORS: dict[int, type[InferGWError]] = {
    400: InvalidArgument,
    404: NotFound,
    413: PayloadTooLarge,
    429: ResourceExhausted,  # QueueFull when the server says when to retry
    499: Cancelled,
    501: Unimplemented,
    503: Unavailable,
    504: DeadlineExceeded,
}

# The message core.errors.PayloadTooLarge builds; parsed back to restore its fields.
_TOO_LARGE = re.compile(r"^(?P<what>.*) of (?P<size>\d+) bytes exceeds the limit of (?P<limit>\d+)")
# gRPC's own message-size check (client or server side): "... larger than max (N vs. M)".
_GRPC_TOO_LARGE = re.compile(r"larger than max \((?P<size>\d+) vs\. (?P<limit>\d+)\)")


def from_grpc(exc: grpc.RpcError) -> InferGWError:
    """Map a failed gRPC call (sync ``grpc.RpcError`` or ``grpc.aio.AioRpcError``)."""
    code = exc.code() if hasattr(exc, "code") else None
    message = (exc.details() if hasattr(exc, "details") else None) or str(exc)
    cls = GRPC_ERRORS.get(code, InferGWError) if isinstance(code, grpc.StatusCode) else InferGWError
    retry_after = None
    if cls is ResourceExhausted:
        # gRPC has no 413/429: a retry-after trailer means QueueFull, a size-limit
        # message (ours or gRPC's own) PayloadTooLarge.
        if hasattr(exc, "trailing_metadata"):
            retry_after = _lookup(exc.trailing_metadata() or (), "retry-after")
        if retry_after is None and (_TOO_LARGE.match(message) or _GRPC_TOO_LARGE.search(message)):
            cls = PayloadTooLarge
    return _make(cls, message, retry_after)


def from_http(status: int, body: bytes, headers: Mapping[str, str]) -> InferGWError:
    """Map an HTTP error response; ``headers`` must be case-insensitive (both clients' are)."""
    cls = HTTP_ERRORS.get(status, InferGWError)
    return _make(cls, _error_message(status, body), headers.get("Retry-After"))


def from_transport(exc: BaseException) -> InferGWError:
    """Map a socket-level failure: timeouts -> DeadlineExceeded, the rest -> Unavailable."""
    if isinstance(exc, TimeoutError):  # socket.timeout and asyncio.TimeoutError alias it
        return DeadlineExceeded(f"no response before the client timeout ({exc or 'timed out'})")
    if isinstance(exc, OSError | aiohttp.ClientError | ConnectionError):
        return Unavailable(f"cannot reach the server: {exc}")
    return InferGWError(f"transport failure: {exc!r}")


def _make(cls: type[InferGWError], message: str, retry_after: str | None) -> InferGWError:
    if cls is ResourceExhausted and retry_after is not None:
        return QueueFull(message, _seconds(retry_after))
    if cls is PayloadTooLarge:
        return _payload_too_large(message)
    return cls(message)


def _payload_too_large(message: str) -> PayloadTooLarge:
    """PayloadTooLarge only takes (what, size, limit); recover them from its own message.

    A message in another shape (gRPC's own check, a proxy) keeps its text verbatim,
    with ``size`` and ``limit`` taken from it when it names them, else -1 (unknown).
    """
    match = _TOO_LARGE.match(message)
    if match:
        exc = PayloadTooLarge(match["what"], int(match["size"]), int(match["limit"]))
        if exc.message == message:
            return exc
    match = match or _GRPC_TOO_LARGE.search(message)
    exc = PayloadTooLarge.__new__(PayloadTooLarge)
    InferGWError.__init__(exc, message)
    exc.size, exc.limit = (int(match["size"]), int(match["limit"])) if match else (-1, -1)
    return exc


def _error_message(status: int, body: bytes) -> str:
    """The OIP ``{"error": msg}`` text, else the body itself, else the status."""
    text = body.decode("utf-8", "replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        return str(parsed["error"])
    return text[:500] if text else f"HTTP {status}"


def _lookup(metadata: Iterable[tuple[str, str | bytes]], key: str) -> str | None:
    for k, v in metadata:
        if k == key:
            return v.decode() if isinstance(v, bytes) else str(v)
    return None


def _seconds(value: str) -> float:
    try:
        return max(0.0, float(value))
    except ValueError:
        return 1.0  # an HTTP-date: rare here; core's QueueFull default
