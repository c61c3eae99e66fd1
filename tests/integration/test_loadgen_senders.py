"""The REST sender against a server that compresses whenever a client lets it (the
gateway does): the load generator must not let it, or it measures gzip, not the protocol."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio
from aiohttp import web

from infergw.gateway.sites import AppSite
from infergw.loadgen.targets import make_sender
from infergw.wire.protocols import Protocol

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server() -> AsyncIterator[tuple[str, list[str]]]:
    seen: list[str] = []

    async def infer(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Accept-Encoding", ""))
        await request.read()
        response = web.Response(body=b"0" * 65536, headers={"Server-Timing": "compute;dur=1"})
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            response.enable_compression()
        return response

    app = web.Application()
    app.router.add_post("/v2/models/{model}/infer", infer)
    async with AppSite(app, "127.0.0.1", 0) as site:
        yield site.address, seen


@pytest.mark.parametrize("protocol", [Protocol.REST, Protocol.REST_BINARY])
async def test_rest_sender_asks_for_uncompressed_replies(
    server: tuple[str, list[str]], protocol: Protocol
) -> None:
    address, seen = server
    sender = make_sender(protocol, address, "identity", {"input": np.ones((1, 4), np.float32)})
    await sender.open()
    try:
        error, timing, received = await sender.send()
    finally:
        await sender.close()
    assert error is None and timing == "compute;dur=1" and received == 65536
    assert seen[-1] == "identity"
