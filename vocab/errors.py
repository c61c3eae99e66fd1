"""One exception tree for the whole gateway.

Every error knows its gRPC status code name and HTTP status; each frontend
translates it once, at its boundary. Backends map their dependency's errors into
this tree once, at theirs, with ``raise ... from exc``::

    InferGWError                    (INTERNAL, 500)
    ├── InvalidArgument             (INVALID_ARGUMENT, 400)
    ├── FailedPrecondition          (FAILED_PRECONDITION, 400)  valid, but not in this state
    ├── Unauthenticated             (UNAUTHENTICATED, 401)
    ├── PermissionDenied            (PERMISSION_DENIED, 403)
    ├── NotFound                    (NOT_FOUND, 404)
    │   └── ModelNotFound
    ├── ResourceExhausted           (RESOURCE_EXHAUSTED, 429)
    │   ├── PayloadTooLarge         (RESOURCE_EXHAUSTED, 413)  names the limit
    │   └── QueueFull               (RESOURCE_EXHAUSTED, 429)  carries Retry-After
    │       └── Throttled           (RESOURCE_EXHAUSTED, 429)  the backend's own: retryable
    ├── Unavailable                 (UNAVAILABLE, 503)  may carry Retry-After (ejected)
    ├── DeadlineExceeded            (DEADLINE_EXCEEDED, 504)
    ├── Cancelled                   (CANCELLED, 499)
    ├── Unimplemented               (UNIMPLEMENTED, 501)
    └── BackendError                (INTERNAL, 500)  the model/backend failed the request

Messages are meant for clients: they never contain payloads or secrets.
"""

from __future__ import annotations

from typing import ClassVar


class InferGWError(Exception):
    grpc_code: ClassVar[str] = "INTERNAL"
    http_status: ClassVar[int] = 500
    retry_after_s: float | None = None  # when to try again: Retry-After, if set

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(InferGWError):
    grpc_code = "INVALID_ARGUMENT"
    http_status = 400


class FailedPrecondition(InferGWError):
    grpc_code = "FAILED_PRECONDITION"
    http_status = 400


class Unauthenticated(InferGWError):
    grpc_code = "UNAUTHENTICATED"
    http_status = 401


class PermissionDenied(InferGWError):
    grpc_code = "PERMISSION_DENIED"
    http_status = 403


class NotFound(InferGWError):
    grpc_code = "NOT_FOUND"
    http_status = 404


class ModelNotFound(NotFound):
    def __init__(self, model: str, version: str = "") -> None:
        label = f"{model!r} version {version!r}" if version else repr(model)
        super().__init__(f"unknown model: {label}")
        self.model = model


class ResourceExhausted(InferGWError):
    grpc_code = "RESOURCE_EXHAUSTED"
    http_status = 429


class PayloadTooLarge(ResourceExhausted):
    http_status = 413

    def __init__(self, what: str, size: int | None, limit: int) -> None:
        # size None: not known (a chunked or compressed body), only that it passed the limit
        amount = "" if size is None else f" of {size} bytes"
        super().__init__(f"{what}{amount} exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class QueueFull(ResourceExhausted):
    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Throttled(QueueFull):
    """The backend itself refused for capacity (Lambda's 429 ``TooManyRequestsException``).

    Unlike the gateway's own ``QueueFull`` (admission), trying again later may succeed,
    so the ``Retry`` policy retries it. ``retry_after_hint_s`` is the backend's own
    Retry-After, None when it sent none (clients then get the default).
    """

    def __init__(self, message: str, retry_after_hint_s: float | None = None) -> None:
        super().__init__(message, 1.0 if retry_after_hint_s is None else retry_after_hint_s)
        self.retry_after_hint_s = retry_after_hint_s


class Unavailable(InferGWError):
    grpc_code = "UNAVAILABLE"
    http_status = 503

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(InferGWError):
    grpc_code = "DEADLINE_EXCEEDED"
    http_status = 504


class Cancelled(InferGWError):
    grpc_code = "CANCELLED"
    http_status = 499


class Unimplemented(InferGWError):
    grpc_code = "UNIMPLEMENTED"
    http_status = 501


class BackendError(InferGWError):
    """The backend received the request and failed it (model error, bad output)."""
