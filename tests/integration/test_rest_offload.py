"""Large REST bodies are decoded and encoded off the event loop (issue 9 item 8).

The REST app on 127.0.0.1 (port 0) in front of an in-process echo backend: the codec's
calls are wrapped to record the thread they run on. A body over 1 MB of JSON must not be
parsed on the loop's thread (a 16 MB JSON body held a tiny gRPC call 0.9 s); a small one
stays there (a worker thread costs more than it saves), and so does a binary one of any
size: its tensors are views of the body, ~10 us to decode, while the hop to a worker and
back cost ~0.1-0.3 ms of the 1 MB binary request. Timing figures: bench/rest_json.py.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from infergw.gateway.core.config import BackendConfig, RouteConfig
from infergw.gateway.core.router import Router, wrap_with_policies
from infergw.gateway.core.service import InferenceService
from infergw.gateway.frontends import rest
from tests.fakes import EchoBackend

pytestmark = pytest.mark.integration


@pytest.fixture
async def url() -> AsyncIterator[str]:
    cfg = BackendConfig(name="echo", kind="echo")
    router = Router(
        {"echo": wrap_with_policies(EchoBackend(), cfg)},
        [RouteConfig(model="identity", backend="echo")],
    )
    server = TestServer(rest.create_rest_app(InferenceService(router)), host="127.0.0.1", port=0)
    await server.start_server(auto_decompress=rest.SITE_OPTIONS.auto_decompress)
    try:
        yield f"http://127.0.0.1:{server.port}/v2/models/identity/infer"
    finally:
        await server.close()


@pytest.mark.parametrize(
    ("columns", "binary", "off_loop"),
    [(16, False, False), (16, True, False), (1 << 19, False, True), (1 << 19, True, False)],
)
async def test_large_json_bodies_are_decoded_and_encoded_off_the_loop(
    url: str, monkeypatch: pytest.MonkeyPatch, columns: int, off_loop: bool, binary: bool
) -> None:
    threads: dict[str, int] = {}

    def recording(name: str, function: Any) -> Any:
        def wrapper(*args: Any) -> Any:
            threads[name] = threading.get_ident()
            return function(*args)

        return wrapper

    monkeypatch.setattr(
        rest, "decode_infer_request", recording("decode", rest.decode_infer_request)
    )
    monkeypatch.setattr(
        rest,
        "encode_infer_response_parts",
        recording("encode", rest.encode_infer_response_parts),
    )
    array = np.ones((1, columns), np.float32)  # 2 MiB raw at 1 << 19 columns
    tensor = httpclient.InferInput("input", list(array.shape), "FP32")
    tensor.set_data_from_numpy(array, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("output", binary_data=binary)]
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        [tensor], outputs=outputs
    )
    headers = {} if json_size is None else {"Inference-Header-Content-Length": str(json_size)}
    async with ClientSession() as session, session.post(url, data=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        await resp.read()
    loop_thread = threading.get_ident()  # the test and the server share this loop
    assert set(threads) == {"decode", "encode"}
    assert {name: ident != loop_thread for name, ident in threads.items()} == {
        "decode": off_loop,
        "encode": off_loop,
    }
