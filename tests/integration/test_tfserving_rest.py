"""TF Serving's REST API on the gateway, in front of the real tritonserver, driven by
``requests`` as TF Serving's REST users drive it; and ``infergw sidecar --protocol
tfserving --http-upstream`` forwarding that API unchanged.

Requests are TF Serving's documented forms (row ``instances``, columnar ``inputs``,
``{"b64": ...}``); answers are checked against the same inference made direct to
Triton with ``tritonclient.grpc``. Besides the bundled models, a small python-backend
model ``pair`` (two inputs, three outputs, one named ``*_bytes``) exercises named
tensors. No TF Serving binary exists for this machine: the sidecar's upstream is the
gateway's own TF Serving REST (a chain), and a small aiohttp server answering as TF
Serving does, for byte-for-byte checks.
"""

from __future__ import annotations

import base64
import json
import shutil
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as tgrpc
from aiohttp import web

from infergw.deploy.triton.launcher import BUNDLED_REPOSITORY, TritonEndpoints, TritonServer
from infergw.gateway.sites import AppSite
from infergw.wire.server_timing import parse_server_timing
from tests.integration.conftest import GatewayThread, ServiceThread, free_ports_config

pytestmark = pytest.mark.integration

PAIR_CONFIG = """
name: "pair"
backend: "python"
max_batch_size: 0
input [
  { name: "a", data_type: TYPE_FP32, dims: [ -1, 2 ] },
  { name: "tag", data_type: TYPE_STRING, dims: [ -1 ] }
]
output [
  { name: "doubled", data_type: TYPE_FP32, dims: [ -1, 2 ] },
  { name: "tag_bytes", data_type: TYPE_STRING, dims: [ -1 ] },
  { name: "length", data_type: TYPE_INT64, dims: [ -1 ] }
]
instance_group [ { count: 1, kind: KIND_CPU } ]
"""
PAIR_MODEL = '''
"""Two inputs, three outputs: a * 2, the tags echoed (as bytes), each tag's length."""
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "a").as_numpy()
            tag = pb_utils.get_input_tensor_by_name(request, "tag").as_numpy()
            length = np.array([len(t) for t in tag.reshape(-1)], np.int64).reshape(tag.shape)
            outputs = [
                pb_utils.Tensor("doubled", (a * 2).astype(np.float32)),
                pb_utils.Tensor("tag_bytes", tag.astype(np.object_)),
                pb_utils.Tensor("length", length),
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses
'''
SENTENCES = ["a cat sat on the mat", "gateways"]


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonEndpoints]:
    repository = tmp_path_factory.mktemp("tfs-rest-models")
    for name in ("identity", "identity_int64", "minilm"):
        shutil.copytree(
            BUNDLED_REPOSITORY / name,
            repository / name,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    (repository / "pair" / "1").mkdir(parents=True)
    (repository / "pair" / "config.pbtxt").write_text(PAIR_CONFIG)
    (repository / "pair" / "1" / "model.py").write_text(PAIR_MODEL)
    with TritonServer(model_repository=repository) as server:
        yield server.endpoints


@pytest.fixture(scope="module")
def gateway(triton: TritonEndpoints) -> Iterator[GatewayThread]:
    gw = GatewayThread(free_ports_config(triton))
    try:
        yield gw
    finally:
        gw.close()


@pytest.fixture(scope="module")
def http(gateway: GatewayThread) -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture(scope="module")
def direct(triton: TritonEndpoints) -> Iterator[tgrpc.InferenceServerClient]:
    client = tgrpc.InferenceServerClient(triton.grpc)
    yield client
    client.close()


def url(gw: GatewayThread | ServiceThread, path: str) -> str:
    return f"http://{gw.http}{path}"


def predict(session: requests.Session, base: str, body: Any) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body)
    return session.post(base, data=data, headers={"Content-Type": "application/json"})


def triton_infer(client: tgrpc.InferenceServerClient, model: str, **arrays: np.ndarray) -> Any:
    inputs = []
    for name, array in arrays.items():
        datatype = "BYTES" if array.dtype == np.object_ else tgrpc.np_to_triton_dtype(array.dtype)
        tensor = tgrpc.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return client.infer(model, inputs)


def error_of(response: requests.Response) -> str:
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"], body
    return str(body["error"])


# -- predict ----------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["instances", "inputs"])
def test_identity_row_and_columnar(
    gateway: GatewayThread, http: requests.Session, form: str
) -> None:
    values = (np.arange(12, dtype=np.float32).reshape(3, 4) / 7).tolist()
    response = predict(http, url(gateway, "/v1/models/identity:predict"), {form: values})
    assert response.status_code == 200, response.text
    key = "predictions" if form == "instances" else "outputs"
    assert list(response.json()) == [key]
    np.testing.assert_array_equal(np.array(response.json()[key], np.float32), np.float32(values))


def test_int64_extremes_are_exact(gateway: GatewayThread, http: requests.Session) -> None:
    values = [[-(2**63), -1, 0, 2**63 - 1]]
    response = predict(http, url(gateway, "/v1/models/identity_int64:predict"), {"inputs": values})
    assert response.status_code == 200, response.text
    assert json.loads(response.content) == {"outputs": values}  # stdlib: exact ints


def test_strings_and_b64_match_triton_direct(
    gateway: GatewayThread, http: requests.Session, direct: tgrpc.InferenceServerClient
) -> None:
    expected = triton_infer(
        direct, "minilm", text=np.array([s.encode() for s in SENTENCES], np.object_)
    ).as_numpy("embedding")
    base = url(gateway, "/v1/models/minilm:predict")
    as_text = predict(http, base, {"instances": SENTENCES})
    b64 = [{"b64": base64.b64encode(s.encode()).decode()} for s in SENTENCES]
    as_b64 = predict(http, base, {"signature_name": "serving_default", "instances": b64})
    for response in (as_text, as_b64):
        assert response.status_code == 200, response.text
        found = np.array(response.json()["predictions"], np.float32)
        assert found.shape == (2, 384)
        np.testing.assert_array_equal(found, expected)  # float32 written shortest: exact


def test_named_inputs_and_outputs(
    gateway: GatewayThread, http: requests.Session, direct: tgrpc.InferenceServerClient
) -> None:
    """The REST page's row example with objects, and its columnar twin, through ``pair``."""
    tags = ["x", "h\u00e9llo"]
    row = {"instances": [{"a": [1.5, -2.0], "tag": tags[0]}, {"a": [0.25, 8.0], "tag": tags[1]}]}
    columnar = {"inputs": {"a": [[1.5, -2.0], [0.25, 8.0]], "tag": tags}}
    base = url(gateway, "/v1/models/pair/versions/1:predict")
    direct_result = triton_infer(
        direct,
        "pair",
        a=np.array(columnar["inputs"]["a"], np.float32),
        tag=np.array([t.encode() for t in tags], np.object_),
    )
    doubled = direct_result.as_numpy("doubled").tolist()
    lengths = direct_result.as_numpy("length").tolist()
    b64 = [{"b64": base64.b64encode(t.encode()).decode()} for t in tags]  # "*_bytes": binary

    by_rows = predict(http, base, row)
    assert by_rows.status_code == 200, by_rows.text
    assert by_rows.json() == {
        "predictions": [
            {"doubled": doubled[i], "length": lengths[i], "tag_bytes": b64[i]} for i in range(2)
        ]
    }
    by_columns = predict(http, base, columnar)
    assert by_columns.status_code == 200, by_columns.text
    assert by_columns.json() == {
        "outputs": {"doubled": doubled, "length": lengths, "tag_bytes": b64}
    }


def test_a_large_body_is_served(gateway: GatewayThread, http: requests.Session) -> None:
    """Over 1 MB: parsed and built off the event loop, same answer."""
    values = np.random.default_rng(1).random((100, 2000), np.float32)
    body = json.dumps({"inputs": values.tolist()}).encode()
    assert len(body) > 1 << 20
    response = predict(http, url(gateway, "/v1/models/identity:predict"), body)
    assert response.status_code == 200, response.text[:200]
    np.testing.assert_array_equal(np.array(response.json()["outputs"], np.float32), values)


def test_server_timing_and_metrics(gateway: GatewayThread, http: requests.Session) -> None:
    ok = predict(http, url(gateway, "/v1/models/identity:predict"), {"instances": [[1.0]]})
    bad = predict(http, url(gateway, "/v1/models/identity:predict"), {"instances": [["x"]]})
    assert (ok.status_code, bad.status_code) == (200, 400)
    phases = {e.name for e in parse_server_timing(ok.headers["Server-Timing"])}
    assert {"total", "decode", "backend", "encode"} <= phases
    assert "total" in {e.name for e in parse_server_timing(bad.headers["Server-Timing"])}
    text = requests.get(f"http://{gateway.metrics}/metrics", timeout=10).text
    ok_line = 'model="identity",protocol="tfserving-rest",status="OK"'
    bad_line = 'model="identity",protocol="tfserving-rest",status="INVALID_ARGUMENT"'
    requests_lines = [line for line in text.splitlines() if line.startswith("infergw_requests")]
    assert any(ok_line in line for line in requests_lines), requests_lines
    assert any(bad_line in line for line in requests_lines), requests_lines


# -- status and metadata ----------------------------------------------------------------


AVAILABLE = {"state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}


@pytest.mark.parametrize("path", ["/v1/models/identity", "/v1/models/identity/versions/1"])
def test_model_status(gateway: GatewayThread, http: requests.Session, path: str) -> None:
    response = http.get(url(gateway, path))
    assert response.status_code == 200, response.text
    assert response.json() == {"model_version_status": [{"version": "1", **AVAILABLE}]}


def test_model_metadata(gateway: GatewayThread, http: requests.Session) -> None:
    response = http.get(url(gateway, "/v1/models/pair/metadata"))
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["model_spec"] == {"name": "pair", "signature_name": "", "version": "1"}
    signature = doc["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    assert {k: v["dtype"] for k, v in signature["inputs"].items()} == {
        "a": "DT_FLOAT",
        "tag": "DT_STRING",
    }
    assert {k: v["dtype"] for k, v in signature["outputs"].items()} == {
        "doubled": "DT_FLOAT",
        "length": "DT_INT64",
        "tag_bytes": "DT_STRING",
    }
    dims = signature["inputs"]["a"]["tensor_shape"]["dim"]
    assert [d["size"] for d in dims] == ["-1", "2"]
    versioned = http.get(url(gateway, "/v1/models/pair/versions/1/metadata"))
    assert versioned.json()["model_spec"]["version"] == "1"


# -- errors: TF Serving's shape and codes, never a 500 ------------------------------------

ERRORS = [
    # (method, path, body, status, a part of the message)
    ("POST", "/v1/models/nope:predict", {"instances": [1.0]}, 404, "nope"),
    ("POST", "/v1/models/identity:predict", b"{not json", 400, "JSON Parse error"),
    ("POST", "/v1/models/identity:predict", b"", 400, "The document is empty"),
    ("POST", "/v1/models/identity:predict", {"instances": [["a"]]}, 400, "expected type: float"),
    ("POST", "/v1/models/identity:predict", {"inputs": [1.0]}, 400, "input"),  # Triton: rank
    ("POST", "/v1/models/identity:predict", {"instances": []}, 400, "No values in 'instances'"),
    ("POST", "/v1/models/identity:predict", {"examples": []}, 400, "Missing 'inputs' or"),
    ("POST", "/v1/models/pair:predict", {"instances": [[1.0, 2.0]]}, 400, "plain list"),
    ("POST", "/v1/models/pair:predict", {"inputs": {"a": [[1.0, 2.0]]}}, 400, "Missing named"),
    (
        "POST",
        "/v1/models/identity:predict",
        {"signature_name": "other", "instances": [[1.0]]},
        400,
        "signature 'other' not found",
    ),
    ("POST", "/v1/models/identity/versions/9:predict", {"instances": [[1.0]]}, 404, "version 9"),
    ("POST", "/v1/models/identity/labels/stable:predict", {"inputs": [[1.0]]}, 400, "stable"),
    ("GET", "/v1/models/identity/labels/stable", None, 404, "Could not find version stable"),
    ("POST", "/v1/models/identity:classify", {"examples": [{"x": 1}]}, 501, "classify"),
    ("POST", "/v1/models/identity:regress", {"examples": [{"x": 1}]}, 501, "regress"),
    ("POST", "/v1/models/identity:explain", {}, 400, "Malformed request: POST"),
    ("POST", "/v1/models/identity/versions/x:predict", {}, 400, "Malformed request"),
    ("GET", "/v1/models", None, 400, "Missing model name in request."),
    ("GET", "/v1/models/identity/versions/7", None, 404, "Could not find version 7"),
    ("GET", "/v1/models/nope", None, 404, "nope"),
    ("GET", "/v1/models/nope/metadata", None, 404, "nope"),
    ("GET", f"/v1/models/identity/versions/{2**63}", None, 400, "Failed to convert version"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "message"), ERRORS)
def test_errors(
    gateway: GatewayThread,
    http: requests.Session,
    method: str,
    path: str,
    body: Any,
    status: int,
    message: str,
) -> None:
    data = body if isinstance(body, bytes | None) else json.dumps(body)
    response = http.request(method, url(gateway, path), data=data)
    assert response.status_code == status, response.text
    assert message in error_of(response)
    # The connection stays usable after an error (keep-alive, the session reuses it).
    again = predict(http, url(gateway, "/v1/models/identity:predict"), {"inputs": [[2.0]]})
    assert again.json() == {"outputs": [[2.0]]}


# -- the sidecar forwards TF Serving's REST API unchanged -----------------------------------


class FakeTfServingRest:
    """Answers as TF Serving's REST port does (pretty-printed, NaN), recording requests."""

    PREDICT = b'{\n    "predictions": [3.5, 4.0, NaN]\n}'
    NOT_FOUND = b'{ "error": "Servable not found for request: Latest(half)" }'

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bytes, dict[str, str]]] = []
        self.lock = threading.Lock()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self.lock:
            self.seen.append((request.method, request.raw_path, body, dict(request.headers)))
        if request.path == "/v1/models/half_plus_three:predict":
            return web.Response(body=self.PREDICT, content_type="application/json")
        return web.Response(body=self.NOT_FOUND, status=404, content_type="application/json")


class FakeUpstreamThread(ServiceThread):
    def __init__(self, fake: FakeTfServingRest) -> None:
        self.site = AppSite(fake.app(), "127.0.0.1", 0)
        super().__init__(self.site)

    @property
    def http(self) -> str:
        return self.site.address


def sidecar_for(http_upstream: str) -> ServiceThread:
    from infergw.gateway.sidecar.app import Sidecar, SidecarConfig

    config = SidecarConfig(
        upstream="127.0.0.1:9",  # TF Serving's gRPC port: not under test here
        protocol="tfserving",
        http_upstream=http_upstream,
        host="127.0.0.1",
        grpc_port=0,
        http_port=0,
        metrics_port=0,
        drain_grace_s=1.0,
    )
    return ServiceThread(Sidecar(config))


@pytest.fixture(scope="module")
def fake_upstream() -> Iterator[tuple[FakeTfServingRest, ServiceThread]]:
    fake = FakeTfServingRest()
    upstream = FakeUpstreamThread(fake)
    try:
        side = sidecar_for(upstream.http)
    except BaseException:
        upstream.close()
        raise
    try:
        yield fake, side
    finally:
        try:
            side.close()
        finally:
            upstream.close()


def test_sidecar_forwards_bytes_unchanged(
    fake_upstream: tuple[FakeTfServingRest, ServiceThread],
) -> None:
    fake, side = fake_upstream
    body = b'{"instances": [1.0, 2.0, NaN]}'
    response = requests.post(
        url(side, "/v1/models/half_plus_three:predict?x=1"),
        data=body,
        headers={"Content-Type": "application/json", "X-Custom": "kept"},
        timeout=10,
    )
    assert response.status_code == 200
    assert response.content == FakeTfServingRest.PREDICT
    method, raw_path, seen_body, headers = fake.seen[-1]
    assert (method, raw_path, seen_body) == ("POST", "/v1/models/half_plus_three:predict?x=1", body)
    assert headers["X-Custom"] == "kept"
    assert {"total", "backend"} <= {
        e.name for e in parse_server_timing(response.headers["Server-Timing"])
    }

    missing = requests.post(url(side, "/v1/models/half:predict"), data=b"{}", timeout=10)
    assert (missing.status_code, missing.content) == (404, FakeTfServingRest.NOT_FOUND)
    status = requests.get(url(side, "/v1/models/half_plus_three/versions/3"), timeout=10)
    assert status.status_code == 404 and fake.seen[-1][:2] == (
        "GET",
        "/v1/models/half_plus_three/versions/3",
    )

    metrics = requests.get(f"http://{side.metrics}/metrics", timeout=10).text
    lines = [line for line in metrics.splitlines() if line.startswith("infergw_requests")]
    ok = 'model="half_plus_three",protocol="tfserving-rest",status="OK"'
    not_found = 'model="_other",protocol="tfserving-rest",status="NOT_FOUND"'  # unknown name
    assert any(ok in line for line in lines), lines
    assert any(not_found in line for line in lines), lines


def test_sidecar_in_front_of_the_gateway_equals_the_gateway(
    gateway: GatewayThread, http: requests.Session
) -> None:
    """A real TF Serving REST implementation behind the sidecar: the gateway's own."""
    side = sidecar_for(gateway.http)
    try:
        for method, path, body in [
            ("POST", "/v1/models/pair:predict", {"inputs": {"a": [[1.0, 2.0]], "tag": ["t"]}}),
            ("POST", "/v1/models/identity:predict", {"instances": [["bad"]]}),
            ("GET", "/v1/models/identity", None),
            ("GET", "/v1/models/minilm/metadata", None),
            ("GET", "/v1/models/nope", None),
        ]:
            data = None if body is None else json.dumps(body)
            through = requests.request(method, url(side, path), data=data, timeout=30)
            there = http.request(method, url(gateway, path), data=data)
            assert (through.status_code, through.json()) == (there.status_code, there.json())
            # The sidecar's breakdown after the gateway's (which times predict calls only).
            timing = [e.name for e in parse_server_timing(through.headers["Server-Timing"])]
            assert timing.count("total") == (2 if method == "POST" else 1)
    finally:
        side.close()
