"""Unmodified tritonclient.http through the gateway vs. straight to Triton."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from infergw.deploy.triton.launcher import TritonEndpoints
from infergw.wire.server_timing import parse_server_timing
from tests.integration.conftest import GatewayThread

pytestmark = pytest.mark.integration

CASES = [
    ("identity", "input", np.random.default_rng(1).random((2, 8), np.float32), "FP32"),
    ("identity_int64", "input", np.arange(12, dtype=np.int64).reshape(3, 4) - 6, "INT64"),
    ("minilm", "text", np.array([b"one sentence", b"and another"], np.object_), "BYTES"),
]


@pytest.fixture(scope="module")
def clients(
    gateway: GatewayThread, triton: TritonEndpoints
) -> Iterator[tuple[thttp.InferenceServerClient, thttp.InferenceServerClient]]:
    via = thttp.InferenceServerClient(gateway.http)
    direct = thttp.InferenceServerClient(triton.http)
    yield via, direct
    via.close()
    direct.close()


def infer(client: thttp.InferenceServerClient, case, binary: bool):  # type: ignore[no-untyped-def]
    model, name, array, datatype = case
    tensor = thttp.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    out_name = "embedding" if model == "minilm" else "output"
    wanted = [thttp.InferRequestedOutput(out_name, binary_data=binary)]
    return client.infer(model, [tensor], outputs=wanted), out_name


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_outputs_identical_to_direct(clients, case, binary: bool) -> None:  # type: ignore[no-untyped-def]
    via, direct = clients
    a, out = infer(via, case, binary)
    b, _ = infer(direct, case, binary)
    np.testing.assert_array_equal(a.as_numpy(out), b.as_numpy(out))
    assert a.get_output(out)["shape"] == b.get_output(out)["shape"]
    assert a.get_output(out)["datatype"] == b.get_output(out)["datatype"]


def test_health_and_metadata_match_triton(clients) -> None:  # type: ignore[no-untyped-def]
    via, direct = clients
    assert via.is_server_live() and via.is_server_ready()
    assert via.is_model_ready("minilm") and not via.is_model_ready("nope")
    for model in ("identity", "minilm"):
        assert via.get_model_metadata(model) == direct.get_model_metadata(model)
    stats = via.get_inference_statistics("identity")["model_stats"][0]
    assert stats["name"] == "identity" and stats["inference_count"] >= 0


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_server_timing_header_on_success_and_error(gateway: GatewayThread) -> None:
    body = json.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}
    ).encode()
    url = f"http://{gateway.http}/v2/models/identity/infer"
    status, headers, reply = _post(url, body, {"Content-Type": "application/json"})
    assert status == 200
    assert json.loads(reply)["outputs"][0]["data"] == [1.0, 2.0]
    phases = {e.name for e in parse_server_timing(headers["Server-Timing"])}
    assert {"total", "decode", "queue", "backend", "encode"} <= phases

    bad = body.replace(b'"FP32"', b'"FP33"')
    status, headers, reply = _post(url, bad, {"Content-Type": "application/json"})
    assert status == 400 and "unsupported datatype" in json.loads(reply)["error"]
    assert "total" in headers["Server-Timing"]


def test_unknown_model_is_404_and_triton_errors_keep_their_message(clients) -> None:  # type: ignore[no-untyped-def]
    via, _ = clients
    tensor = thttp.InferInput("input", [1, 1], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 1), np.float32))
    with pytest.raises(InferenceServerException) as info:
        via.infer("nope", [tensor])
    assert "unknown model" in info.value.message()
    # The model exists but the input name is wrong: Triton itself rejects it.
    wrong = thttp.InferInput("not_an_input", [1, 1], "FP32")
    wrong.set_data_from_numpy(np.ones((1, 1), np.float32))
    with pytest.raises(InferenceServerException) as info:
        via.infer("identity", [wrong])
    assert info.value.status() == "400"
    assert "not_an_input" in info.value.message()
