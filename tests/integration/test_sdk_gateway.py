"""Our SDK against the gateway in front of the real Triton: all four clients."""

from __future__ import annotations

import numpy as np
import pytest

from infergw.clients import (
    AsyncGrpcClient,
    AsyncHttpClient,
    GrpcClient,
    HttpClient,
    InvalidArgument,
    NotFound,
)
from tests.integration.conftest import GatewayThread

pytestmark = pytest.mark.integration
X = np.random.default_rng(2).random((1, 64), np.float32)
TEXT = np.array([b"timing is the product"], np.object_)


def check(result, phases: set[str]) -> None:  # type: ignore[no-untyped-def]
    np.testing.assert_array_equal(result.outputs["output"], X)
    server = result.timing.server
    assert phases <= set(server)
    assert result.timing.end_to_end_ms >= server["total"] >= server["backend"] > 0
    assert result.timing.protocol_ms == pytest.approx(result.timing.end_to_end_ms - server["queue"])


def phases(gateway: GatewayThread, kind: str) -> set[str]:
    rest = {"total", "decode", "queue", "backend", "encode"}
    return gateway.grpc_phases("identity") if kind == "grpc" else rest


@pytest.mark.parametrize("kind", ["grpc", "rest-binary", "rest-json"])
def test_sync_clients(gateway: GatewayThread, kind: str) -> None:
    client = (
        GrpcClient(gateway.grpc)
        if kind == "grpc"
        else HttpClient(gateway.http, binary=kind == "rest-binary")
    )
    with client:
        check(client.infer("identity", {"input": X}), phases(gateway, kind))
        emb = client.infer("minilm", {"text": TEXT}).outputs["embedding"]
        assert emb.shape == (1, 384)
        assert np.linalg.norm(emb[0]) == pytest.approx(1.0, abs=1e-4)
        with pytest.raises(NotFound):
            client.infer("nope", {"input": X})
        with pytest.raises(InvalidArgument):
            client.infer("identity", {"input": X.astype(np.float64)})  # Triton wants FP32
        stats = client.model_statistics("identity")
        assert stats[0].name == "identity" and stats[0].success.count > 0


@pytest.mark.parametrize("kind", ["grpc", "rest-binary"])
async def test_async_clients(gateway: GatewayThread, kind: str) -> None:
    client = (
        AsyncGrpcClient(gateway.grpc)
        if kind == "grpc"
        else AsyncHttpClient(gateway.http, binary=True)
    )
    async with client:
        assert await client.server_ready()
        check(await client.infer("identity", {"input": X}), phases(gateway, kind))
        meta = await client.model_metadata("minilm")
        assert [t.name for t in meta.inputs] == ["text"]
