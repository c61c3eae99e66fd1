"""An SDK client chosen by protocol name, for callers that take ``--protocol`` from a user.

    with connect(Protocol.REST_BINARY, "127.0.0.1:8000") as client: ...

gRPC clients go to a gRPC address, REST ones to an HTTP address; the caller knows
which address is which (the protocol does not change the port).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from infergw.clients.grpc_client import AsyncGrpcClient, GrpcClient
from infergw.clients.http_client import AsyncHttpClient, HttpClient
from infergw.wire.protocols import Protocol

SyncClient = GrpcClient | HttpClient
AsyncClient = AsyncGrpcClient | AsyncHttpClient

_SYNC: Mapping[Protocol, Callable[[str, float], SyncClient]] = {
    Protocol.GRPC: lambda address, timeout: GrpcClient(address, timeout=timeout),
    Protocol.REST: lambda address, timeout: HttpClient(address, timeout=timeout),
    Protocol.REST_BINARY: lambda address, timeout: HttpClient(
        address, binary=True, timeout=timeout
    ),
}
_ASYNC: Mapping[Protocol, Callable[[str, float], AsyncClient]] = {
    Protocol.GRPC: lambda address, timeout: AsyncGrpcClient(address, timeout=timeout),
    Protocol.REST: lambda address, timeout: AsyncHttpClient(address, timeout=timeout),
    Protocol.REST_BINARY: lambda address, timeout: AsyncHttpClient(
        address, binary=True, timeout=timeout
    ),
}


def connect(protocol: Protocol | str, address: str, *, timeout: float = 60.0) -> SyncClient:
    """A synchronous client speaking ``protocol`` to ``address``."""
    return _SYNC[Protocol.parse(protocol)](address, timeout)


def connect_async(protocol: Protocol | str, address: str, *, timeout: float = 60.0) -> AsyncClient:
    """An asyncio client speaking ``protocol`` to ``address``."""
    return _ASYNC[Protocol.parse(protocol)](address, timeout)
