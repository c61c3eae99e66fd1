"""Map a gRPC status from a backend into the gateway's exception tree, once."""

from __future__ import annotations

import grpc

from infergw.vocab import errors

_BY_CODE: dict[grpc.StatusCode, type[errors.InferGWError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    grpc.StatusCode.CANCELLED: errors.Cancelled,
    grpc.StatusCode.UNIMPLEMENTED: errors.Unimplemented,
    grpc.StatusCode.FAILED_PRECONDITION: errors.Unavailable,
}


def map_rpc_error(exc: grpc.aio.AioRpcError, backend: str) -> errors.InferGWError:
    """The backend's own message is kept: it is what the user needs to fix the request."""
    cls = _BY_CODE.get(exc.code(), errors.BackendError)
    details = exc.details() or exc.code().name
    if cls is errors.Unavailable:
        return cls(f"backend {backend!r} is unavailable: {details}")
    return cls(details)
