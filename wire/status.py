"""The one table between the error tree and gRPC codes / HTTP statuses, both ways.

Each class in ``infergw.vocab.errors`` names its gRPC code and HTTP status, so the
way out is the class itself (``grpc_status(exc)``, ``exc.http_status``). The way in
(``ERROR_FOR_GRPC``, ``ERROR_FOR_HTTP``) is derived here from the tree: a new class
with a code of its own is mapped without anyone touching this file, and a code that
several classes share must be given an explicit choice in ``_CHOSEN_GRPC`` /
``_CHOSEN_HTTP`` or importing this module fails. What a code alone cannot tell is
refined by the builders: a ``retry-after`` (trailer or header) makes ``QueueFull``,
a size-limit message ``PayloadTooLarge`` with its size and limit restored.

``error_from_rpc`` is the translation of a failed gRPC call for the SDK (the
server's message verbatim; a code outside the tree is the base ``InferGWError``)
and, with ``backend=NAME``, for backends: there a code outside the tree, or plain
INTERNAL, is ``BackendError``; unavailability and refused credentials name the
backend.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import TypeAlias, TypeVar

import grpc

from infergw.vocab import errors
from infergw.vocab.errors import (
    BackendError,
    InferGWError,
    PayloadTooLarge,
    QueueFull,
    ResourceExhausted,
    Unavailable,
)

__all__ = [
    "ERROR_FOR_GRPC",
    "ERROR_FOR_HTTP",
    "build_tables",
    "error_classes",
    "error_from_grpc",
    "error_from_http",
    "error_from_rpc",
    "grpc_status",
    "retry_after_seconds",
]

ErrorClass: TypeAlias = type[InferGWError]
Metadata: TypeAlias = Iterable[tuple[str, str | bytes]]
K = TypeVar("K", str, int)

# Codes and statuses several classes share: the one a received code becomes. The
# base of a family is the honest choice; the builders refine it when they can.
_CHOSEN_GRPC: Mapping[str, ErrorClass] = {
    "INTERNAL": InferGWError,  # not BackendError: the client cannot tell whose fault
    "NOT_FOUND": errors.NotFound,  # ModelNotFound needs a model name
    "RESOURCE_EXHAUSTED": ResourceExhausted,  # QueueFull / PayloadTooLarge: see builders
}
_CHOSEN_HTTP: Mapping[int, ErrorClass] = {
    400: errors.InvalidArgument,  # FailedPrecondition shares 400 (gRPC keeps them apart)
    404: errors.NotFound,
    429: ResourceExhausted,  # QueueFull when a Retry-After says when to retry
    500: InferGWError,
}
# A backend refusing the gateway's own credentials is not the client's 401/403.
_CREDENTIAL_CODES = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})

# The message PayloadTooLarge builds; parsed back to restore its fields.
_TOO_LARGE = re.compile(r"^(?P<what>.*) of (?P<size>\d+) bytes exceeds the limit of (?P<limit>\d+)")
# gRPC's own message-size check (client or server side): "... larger than max (N vs. M)".
_GRPC_TOO_LARGE = re.compile(r"larger than max \((?P<size>\d+) vs\. (?P<limit>\d+)\)")
RETRY_AFTER = "retry-after"
DEFAULT_RETRY_AFTER_S = 1.0  # QueueFull's own default


def error_classes(root: ErrorClass = InferGWError) -> Iterator[ErrorClass]:
    """``root`` and every subclass, depth first."""
    yield root
    for sub in root.__subclasses__():
        yield from error_classes(sub)


def build_tables(
    root: ErrorClass = InferGWError,
) -> tuple[dict[grpc.StatusCode, ErrorClass], dict[int, ErrorClass]]:
    """Derive code -> class and status -> class from the tree under ``root``."""
    by_code: dict[str, list[ErrorClass]] = {}
    by_status: dict[int, list[ErrorClass]] = {}
    for cls in error_classes(root):
        if cls.grpc_code not in grpc.StatusCode.__members__:
            raise TypeError(f"{cls.__qualname__}.grpc_code {cls.grpc_code!r} is not a gRPC code")
        by_code.setdefault(cls.grpc_code, []).append(cls)
        by_status.setdefault(cls.http_status, []).append(cls)
    grpc_table = {
        grpc.StatusCode[code]: _choose(code, classes, _CHOSEN_GRPC)
        for code, classes in by_code.items()
    }
    http_table = {
        status: _choose(status, classes, _CHOSEN_HTTP) for status, classes in by_status.items()
    }
    return grpc_table, http_table


def _choose(key: K, classes: list[ErrorClass], chosen: Mapping[K, ErrorClass]) -> ErrorClass:
    if len(classes) == 1:
        return classes[0]
    choice = chosen.get(key)
    if choice is None or choice not in classes:
        names = ", ".join(c.__qualname__ for c in classes)
        raise TypeError(f"{key!r} is shared by {names}: choose one in infergw.wire.status")
    return choice


_grpc_table, _http_table = build_tables()
ERROR_FOR_GRPC: Mapping[grpc.StatusCode, ErrorClass] = MappingProxyType(_grpc_table)
ERROR_FOR_HTTP: Mapping[int, ErrorClass] = MappingProxyType(_http_table)


def grpc_status(exc: InferGWError | ErrorClass) -> grpc.StatusCode:
    """The gRPC status an error is answered with (its HTTP status is ``exc.http_status``)."""
    return grpc.StatusCode[exc.grpc_code]


def error_from_grpc(
    code: grpc.StatusCode | None, message: str, trailers: Metadata = ()
) -> InferGWError:
    """The error for a gRPC status; a code outside the tree gives the base class."""
    cls = ERROR_FOR_GRPC.get(code, InferGWError) if code is not None else InferGWError
    if cls is ResourceExhausted:
        # gRPC has no 413/429: a retry-after trailer means QueueFull, a size-limit
        # message (ours or gRPC's own) PayloadTooLarge.
        retry_after = _lookup(trailers, RETRY_AFTER)
        if retry_after is None and (_TOO_LARGE.match(message) or _GRPC_TOO_LARGE.search(message)):
            return _payload_too_large(message)
        return _refine(cls, message, retry_after)
    return _refine(cls, message, None)


def error_from_http(status: int, message: str, retry_after: str | None = None) -> InferGWError:
    """The error for an HTTP status and its ``Retry-After`` header, if any."""
    return _refine(ERROR_FOR_HTTP.get(status, InferGWError), message, retry_after)


def error_from_rpc(exc: grpc.RpcError, backend: str | None = None) -> InferGWError:
    """A failed call (sync ``grpc.RpcError`` or ``grpc.aio.AioRpcError``) as an error.

    The peer's message is kept: it is written for clients (or, from a backend, it is
    what the user needs to fix the request). ``backend`` names the backend that
    answered, for the gateway's side (see the module docstring).
    """
    status = _call(exc, "code")
    code = status if isinstance(status, grpc.StatusCode) else None
    details = _call(exc, "details")
    message = details if isinstance(details, str) and details else (code.name if code else str(exc))
    metadata = _call(exc, "trailing_metadata")
    trailers: Metadata = metadata if isinstance(metadata, Iterable) else ()
    if backend is None:
        return error_from_grpc(code, message, trailers)
    if code in _CREDENTIAL_CODES:
        return Unavailable(f"backend {backend!r} refused the gateway's credentials: {message}")
    error = error_from_grpc(code, message, trailers)
    if type(error) is InferGWError:
        return BackendError(message)
    if isinstance(error, Unavailable):
        return Unavailable(f"backend {backend!r} is unavailable: {message}")
    return error


def retry_after_seconds(value: str) -> float:
    """A Retry-After value in seconds (an HTTP-date, rare here, gives the default)."""
    try:
        return max(0.0, float(value))
    except ValueError:
        return DEFAULT_RETRY_AFTER_S


def _refine(cls: ErrorClass, message: str, retry_after: str | None) -> InferGWError:
    if cls is ResourceExhausted and retry_after is not None:
        return QueueFull(message, retry_after_seconds(retry_after))
    if cls is PayloadTooLarge:
        return _payload_too_large(message)
    return cls(message)


def _payload_too_large(message: str) -> PayloadTooLarge:
    """PayloadTooLarge takes (what, size, limit); recover them from its own message.

    A message in another shape (gRPC's own check, a proxy's page) keeps its text
    verbatim, with ``size`` and ``limit`` taken from it when it names them, else -1.
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


def _call(exc: grpc.RpcError, name: str) -> object:
    """``exc.name()``: a failed call's RpcError is also a ``grpc.Call``, others are not."""
    method = getattr(exc, name, None)
    return method() if callable(method) else None


def _lookup(metadata: Metadata, key: str) -> str | None:
    for k, v in metadata:
        if k == key:
            return v.decode() if isinstance(v, bytes) else str(v)
    return None
