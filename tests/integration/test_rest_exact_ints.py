"""64-bit integers over REST JSON are exact, end to end (issue 9 item 1, issue 10 item 6).

Unmodified ``tritonclient.http`` with ``binary_data=False`` against a real Triton, direct
and through the gateway. The bundled repository has no UINT64 model, so this module's
Triton serves a repository made here: UINT64 and INT64 echo models in Triton's python
backend. The cases that broke: a UINT64 ``data`` array mixing values below and at or
above 2**63 was a 400 ("got floats"; numpy had read it as float64), and an integer literal
beyond 64 bits, which orjson reads as a float, was accepted as a double parameter.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from infergw.deploy.triton.launcher import TritonEndpoints, TritonServer
from tests.integration.conftest import GatewayThread, free_ports_config

pytestmark = pytest.mark.integration

ECHO_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        inputs = [pb_utils.get_input_tensor_by_name(r, "input").as_numpy() for r in requests]
        return [pb_utils.InferenceResponse([pb_utils.Tensor("output", x)]) for x in inputs]
"""
ECHO_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "input", data_type: TYPE_{datatype}, dims: [ -1 ] }} ]
output [ {{ name: "output", data_type: TYPE_{datatype}, dims: [ -1 ] }} ]
instance_group [ {{ count: 1, kind: KIND_CPU }} ]
"""
MODELS = {"echo_uint64": "UINT64", "echo_int64": "INT64"}

MIXED_UINT64 = [
    [0, 7, 2**64 - 1],  # issue 10 item 6
    [2**63, 2**63 - 1, 1, 2**64 - 2],
    np.random.default_rng(6).integers(0, 2**64, 1000, dtype=np.uint64, endpoint=False).tolist(),
]
INT64_EDGES = [[-(2**63), 0, 2**63 - 1], [-1, 2**62, -(2**63) + 1]]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(direct, gateway) HTTP addresses: this module's Triton and a gateway in front of it."""
    repository = tmp_path_factory.mktemp("exact_ints_models")
    for name, datatype in MODELS.items():
        (repository / name / "1").mkdir(parents=True)
        (repository / name / "1" / "model.py").write_text(ECHO_MODEL)
        config = ECHO_CONFIG.format(name=name, datatype=datatype)
        (repository / name / "config.pbtxt").write_text(config)
    with TritonServer(Path(repository)) as triton:
        endpoints: TritonEndpoints = triton.endpoints
        gateway = GatewayThread(free_ports_config(endpoints))
        try:
            yield endpoints.http, gateway.http
        finally:
            gateway.close()


def echo_json(url: str, model: str, values: np.ndarray) -> tuple[np.ndarray, str]:
    """tritonclient.http, JSON both ways; the output and its datatype."""
    datatype = MODELS[model]
    client = thttp.InferenceServerClient(url)
    try:
        tensor = thttp.InferInput("input", list(values.shape), datatype)
        tensor.set_data_from_numpy(values, binary_data=False)
        wanted = [thttp.InferRequestedOutput("output", binary_data=False)]
        result = client.infer(model, [tensor], outputs=wanted)
        return result.as_numpy("output"), result.get_output("output")["datatype"]
    finally:
        client.close()


@pytest.mark.parametrize("values", MIXED_UINT64, ids=["issue-10-6", "both-halves", "random"])
def test_uint64_json_data_round_trips_exactly(servers: tuple[str, str], values: list[int]) -> None:
    direct, gateway = servers
    array = np.array(values, dtype=np.uint64)
    via, datatype = echo_json(gateway, "echo_uint64", array)
    assert datatype == "UINT64" and via.dtype == np.uint64
    assert via.tolist() == values  # no float on the way: exact to the last bit
    np.testing.assert_array_equal(via, echo_json(direct, "echo_uint64", array)[0])


@pytest.mark.parametrize("values", INT64_EDGES, ids=["bounds", "mixed"])
def test_int64_json_data_round_trips_exactly(servers: tuple[str, str], values: list[int]) -> None:
    _, gateway = servers
    via, _ = echo_json(gateway, "echo_int64", np.array(values, dtype=np.int64))
    assert via.tolist() == values


def post(url: str, doc: str) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://{url}/v2/models/echo_uint64/infer", data=doc.encode(), method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("[0, 18446744073709551616]", "input 'input': 'data' has values out of range for UINT64"),
        ("[-1, 18446744073709551615]", "input 'input': 'data' has values out of range for UINT64"),
    ],
    ids=["past-uint64", "negative"],
)
def test_uint64_data_outside_its_range_is_a_400_naming_the_input(
    servers: tuple[str, str], data: str, message: str
) -> None:
    _, gateway = servers
    doc = f'{{"inputs":[{{"name":"input","datatype":"UINT64","shape":[2],"data":{data}}}]}}'
    status, body = post(gateway, doc)
    assert (status, body) == (400, {"error": message})


def test_an_integer_parameter_past_uint64_is_a_400_naming_it(servers: tuple[str, str]) -> None:
    """tritonclient writes the Python int as it is; orjson would have read a double."""
    _, gateway = servers
    client = thttp.InferenceServerClient(gateway)
    try:
        tensor = thttp.InferInput("input", [1], "UINT64")
        tensor.set_data_from_numpy(np.array([1], np.uint64), binary_data=False)
        with pytest.raises(InferenceServerException) as caught:
            client.infer("echo_uint64", [tensor], parameters={"big": 2**64})
        assert caught.value.status() == "400"
        assert "parameter 'big' is outside the 64-bit signed integer range" in str(caught.value)
        # ... while a double of that size is a double, and the connection serves on
        result = client.infer("echo_uint64", [tensor], parameters={"big": 1.8446744073709552e19})
        assert result.as_numpy("output").tolist() == [1]
    finally:
        client.close()


@pytest.mark.parametrize("compression", [None, "gzip", "deflate"])
def test_binary_uint64_round_trips_compressed_or_not(
    servers: tuple[str, str], compression: str | None
) -> None:
    """A binary response leaves as its parts (JSON header, then the backend's buffers),
    also through aiohttp's compression when the client asks for it."""
    _, gateway = servers
    values = np.array(MIXED_UINT64[2] * 300, dtype=np.uint64)  # 2.4 MB, over the inline size
    client = thttp.InferenceServerClient(gateway)
    try:
        tensor = thttp.InferInput("input", list(values.shape), "UINT64")
        tensor.set_data_from_numpy(values, binary_data=True)
        result = client.infer(
            "echo_uint64",
            [tensor],
            outputs=[thttp.InferRequestedOutput("output", binary_data=True)],
            response_compression_algorithm=compression,
        )
        np.testing.assert_array_equal(result.as_numpy("output"), values)
    finally:
        client.close()
