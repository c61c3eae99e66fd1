"""infergw SDK: OIP clients over gRPC and REST, sync and asyncio.

Every ``infer`` returns an ``InferResult`` whose ``timing`` splits the client's
end-to-end time using the gateway's Server-Timing breakdown (design brief §2)::

    from infergw.clients import GrpcClient

    with GrpcClient("127.0.0.1:8001") as client:
        result = client.infer("identity", {"input": np.ones((1, 16), np.float32)})
        result.outputs["output"], result.timing.protocol_ms

Failures raise the core exception tree (``infergw.vocab.errors``), re-exported
here: ``NotFound``, ``InvalidArgument``, ``Unavailable``, ``DeadlineExceeded``...
"""

from infergw.clients.factory import connect, connect_async
from infergw.clients.grpc_client import AsyncGrpcClient, GrpcClient
from infergw.clients.http_client import AsyncHttpClient, HttpClient
from infergw.clients.timing import TimingBreakdown, TimingEntry
from infergw.clients.types import InferResult, ServerMetadata
from infergw.vocab.errors import (
    BackendError,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    InferGWError,
    InvalidArgument,
    ModelNotFound,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    QueueFull,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from infergw.vocab.types import ModelMetadata, ModelStatistics, TensorSpec
from infergw.wire.protocols import Protocol

__all__ = [
    "AsyncGrpcClient",
    "AsyncHttpClient",
    "BackendError",
    "Cancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
    "GrpcClient",
    "HttpClient",
    "InferGWError",
    "InferResult",
    "InvalidArgument",
    "ModelMetadata",
    "ModelNotFound",
    "ModelStatistics",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "Protocol",
    "QueueFull",
    "ResourceExhausted",
    "ServerMetadata",
    "TensorSpec",
    "TimingBreakdown",
    "TimingEntry",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "connect",
    "connect_async",
]
