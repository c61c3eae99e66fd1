"""Translate transport failures into the core exception tree, once, for all clients.

Callers ``raise from_grpc(exc) from exc`` (or the HTTP/transport equivalents) so
the original error stays attached. Codes and statuses map through the one table in
``infergw.wire.status``; the server's message is kept verbatim: it is written for
clients (design brief §7) and is the most useful thing to show.
"""

from __future__ import annotations

import json
from typing import Protocol

import aiohttp
import grpc

from infergw.vocab.errors import DeadlineExceeded, InferGWError, Unavailable
from infergw.wire.status import error_from_http, error_from_rpc


class ResponseHeaders(Protocol):
    """Case-insensitive response headers: ``http.client``'s HTTPMessage, aiohttp's CIMultiDict."""

    def get(self, name: str, /) -> str | None: ...


def from_grpc(exc: grpc.RpcError) -> InferGWError:
    """Map a failed gRPC call (sync ``grpc.RpcError`` or ``grpc.aio.AioRpcError``)."""
    return error_from_rpc(exc)


def from_http(status: int, body: bytes, headers: ResponseHeaders) -> InferGWError:
    """Map an HTTP error response; ``headers`` must be case-insensitive (both clients' are)."""
    return error_from_http(status, _error_message(status, body), headers.get("Retry-After"))


def from_transport(exc: BaseException) -> InferGWError:
    """Map a socket-level failure: timeouts -> DeadlineExceeded, the rest -> Unavailable."""
    if isinstance(exc, TimeoutError):  # socket.timeout and asyncio.TimeoutError alias it
        return DeadlineExceeded(f"no response before the client timeout ({exc or 'timed out'})")
    if isinstance(exc, OSError | aiohttp.ClientError | ConnectionError):
        return Unavailable(f"cannot reach the server: {exc}")
    return InferGWError(f"transport failure: {exc!r}")


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
