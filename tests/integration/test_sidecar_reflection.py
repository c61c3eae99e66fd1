"""Server reflection through the sidecar answers what Triton answers, every time.

Triton does not serve reflection: it ends the call with UNIMPLEMENTED as soon as the
headers arrive, often while the sidecar is still forwarding the client's first
message. grpc.aio's request-iterator writer then replaced Triton's status with
INTERNAL "Internal error from Core" in about half of the calls (grpc/grpc#36066).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha

from tests.integration.test_sidecar import PLANES, sidecar_thread

pytestmark = pytest.mark.integration

TRIES = 30
METHODS = [
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
]
# list_services (field 7) is the same message in v1 and v1alpha.
LIST_SERVICES = v1alpha.ServerReflectionRequest(list_services="").SerializeToString()


@pytest.fixture(scope="module", params=PLANES)
def endpoints(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    from infergw.deploy.triton.launcher import TritonServer

    with TritonServer(models=["identity"]) as server:
        side = sidecar_thread(server.endpoints.grpc, data_plane=request.param)
        try:
            yield server.endpoints.grpc, side.grpc
        finally:
            side.close()


def _answers(address: str, method: str) -> collections.Counter[tuple[Any, str]]:
    seen: collections.Counter[tuple[Any, str]] = collections.Counter()
    with grpc.insecure_channel(address) as channel:
        call = channel.stream_stream(method)
        for _ in range(TRIES):
            try:
                list(call(iter([LIST_SERVICES]), timeout=10))
                seen[("OK", "")] += 1
            except grpc.RpcError as exc:
                seen[(exc.code(), exc.details() or "")] += 1
    return seen


@pytest.mark.parametrize("method", METHODS)
def test_reflection_is_deterministic_and_matches_triton(
    endpoints: tuple[str, str], method: str
) -> None:
    direct, sidecar = endpoints
    expected = _answers(direct, method)
    assert expected == {(grpc.StatusCode.UNIMPLEMENTED, ""): TRIES}
    assert _answers(sidecar, method) == expected
